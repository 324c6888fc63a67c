// The real `kiln` binary, run the way a user runs it.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "../test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::RunKiln;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(CliTest, EveryCommandHasHelp) {
  for (const char* cmd :
       {"", "data", "data verify", "data fetch", "data images", "train", "eval", "export",
        "predict", "optimize", "bench", "pipeline", "serve", "loadgen", "version"}) {
    auto r = RunKiln(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    EXPECT_TRUE(Contains(r.output, "Usage")) << cmd << "\n" << r.output;
  }
}

TEST(CliTest, WrongArgumentsExitNonZeroWithAHelpfulMessage) {
  struct Case {
    const char* args;
    int code;
    const char* message;
  };
  const Case cases[] = {
      {"", 2, "A subcommand is required"},
      {"frobnicate", 2, "frobnicate"},
      {"train --arch vgg", 2, "vgg"},
      {"train --epochs 0", 2, "--epochs must be positive"},
      {"train --optimizer rmsprop", 2, "rmsprop"},
      {"train --precision fp16", 2, "fp16"},
      {"train --epochs many", 2, "--epochs"},
      {"eval", 2, "give exactly one of --checkpoint or --model"},
      {"eval --model m.onnx --backend tensorrt", 2, "tensorrt"},
      {"data", 2, "A subcommand is required"},
      {"data verify --data /nonexistent/cifar.tar.gz", 1,
       "/nonexistent/cifar.tar.gz: no such file"},
      {"eval --checkpoint /nonexistent.ckpt", 1, "no such checkpoint"},
  };
  for (const auto& c : cases) {
    auto r = RunKiln(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.output;
    EXPECT_TRUE(Contains(r.output, c.message)) << c.args << "\n" << r.output;
  }
}

TEST(CliTest, DataVerifyPrintsASummary) {
  auto r = RunKiln("data verify --json --data '" + testing::DataArchive().string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j.at("train_images").get<int>(), 50000);
  EXPECT_EQ(j.at("classes").at(3).at("name"), "cat");
  EXPECT_EQ(j.at("classes").at(3).at("test").get<int>(), 1000);
  auto text = RunKiln("data verify --data '" + testing::DataArchive().string() + "'");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_TRUE(Contains(text.output, "airplane        5000    1000")) << text.output;
}

// kiln data images writes real test images as files, named by index and class, with the data
// set's exact pixels (PNG is lossless).
TEST(CliTest, DataImagesWritesTestImagesAsFiles) {
  testing::TempDir dir;
  auto r = RunKiln("data images --count 5 --first 3 --out '" + dir.path().string() + "' --data '" +
                   testing::DataArchive().string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const data::ImageSet& test = testing::SharedDataset().test;
  const auto& names = testing::SharedDataset().class_names;
  for (int64_t i = 3; i < 8; ++i) {
    char stem[16];
    std::snprintf(stem, sizeof stem, "%05lld_", static_cast<long long>(i));
    const auto file = dir.path() / (stem + names[test.labels[i]] + ".png");
    const cv::Mat img = cv::imread(file.string(), cv::IMREAD_COLOR);  // BGR
    ASSERT_FALSE(img.empty()) << file;
    ASSERT_EQ(img.rows, 32);
    for (int c = 0; c < 3; ++c) {
      for (int p = 0; p < 1024; ++p) {
        ASSERT_EQ(img.data[p * 3 + (2 - c)], test.image(i)[c * 1024 + p]) << file;
      }
    }
  }
  EXPECT_EQ(RunKiln("data images --first 99999 --out '" + dir.path().string() + "' --data '" +
                    testing::DataArchive().string() + "'")
                .exit_code,
            2);
}

TEST(CliTest, VersionReportsTheEngines) {
  auto r = RunKiln("version");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "libtorch 1.")) << r.output;
  EXPECT_TRUE(Contains(r.output, "onnxruntime 1.")) << r.output;
  EXPECT_TRUE(Contains(r.output, "openvino 2026.")) << r.output;
}

// train -> eval -> export end to end on a tiny subset; eval reproduces the accuracy train reported.
TEST(CliTest, TrainEvalExport) {
  testing::TempDir dir;
  const std::string data = "--data '" + testing::DataArchive().string() + "'";
  auto t = RunKiln("train " + data +
                   " --arch seed-cnn --epochs 1 --train-limit 1000 --validation-size 500 --out '" +
                   dir.path().string() + "'");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  EXPECT_TRUE(Contains(t.output, "test accuracy")) << t.output;
  EXPECT_TRUE(Contains(t.output, "epoch 1/1")) << t.output;
  auto summary = nlohmann::json::parse(std::ifstream(dir.path() / "summary.json"));

  auto e = RunKiln("eval --json " + data + " --checkpoint '" + (dir.path() / "best.ckpt").string() +
                   "'");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  auto j = nlohmann::json::parse(e.output);
  EXPECT_DOUBLE_EQ(j.at("accuracy").get<double>(), summary.at("test_accuracy").get<double>());
  EXPECT_EQ(j.at("images").get<int>(), 10000);
  int64_t total = 0;
  for (const auto& row : j.at("confusion")) {
    for (const auto& v : row) total += v.get<int64_t>();
  }
  EXPECT_EQ(total, 10000);

  auto text =
      RunKiln("eval " + data + " --checkpoint '" + (dir.path() / "best.ckpt").string() + "'");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_TRUE(Contains(text.output, "confusion matrix")) << text.output;
  // --tta re-evaluates a checkpoint at another test-time-augmentation level: none is what this
  // one carries; seed-cnn has no other, and an exported file computes the one it was written with.
  const std::string best = " --checkpoint '" + (dir.path() / "best.ckpt").string() + "'";
  auto none = RunKiln("eval --json --tta none " + data + best);
  ASSERT_EQ(none.exit_code, 0) << none.output;
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(none.output).at("accuracy").get<double>(),
                   summary.at("test_accuracy").get<double>());
  auto flip = RunKiln("eval --tta flip " + data + best);
  EXPECT_EQ(flip.exit_code, 2) << flip.output;
  EXPECT_TRUE(Contains(flip.output, "seed-cnn has no test-time augmentation")) << flip.output;
  auto on_file = RunKiln("eval --tta flip " + data + " --model '" + (dir.path() / "x.onnx").string() + "'");
  EXPECT_EQ(on_file.exit_code, 2) << on_file.output;
  EXPECT_TRUE(Contains(on_file.output, "--tta applies to --checkpoint")) << on_file.output;

  // export writes model.onnx and model.pt and checks both engines against the checkpoint in
  // libtorch on all 10,000 test images.
  const std::string ckpt = "--checkpoint '" + (dir.path() / "best.ckpt").string() + "'";
  auto x = RunKiln("export " + data + " " + ckpt);
  ASSERT_EQ(x.exit_code, 0) << x.output;
  EXPECT_TRUE(fs::exists(dir.path() / "export" / "model.onnx"));
  EXPECT_TRUE(fs::exists(dir.path() / "export" / "model.pt"));
  EXPECT_TRUE(Contains(x.output, "check on 10000 test images, model.onnx via onnxruntime"))
      << x.output;
  EXPECT_TRUE(Contains(x.output, "check on 10000 test images, model.pt via libtorch")) << x.output;
  size_t agreeing = 0;
  for (size_t at = x.output.find("top-1 mismatches 0,"); at != std::string::npos;
       at = x.output.find("top-1 mismatches 0,", at + 1)) {
    ++agreeing;
  }
  EXPECT_EQ(agreeing, 2U) << x.output;
  // eval runs an exported file through either engine and gets the checkpoint's accuracy.
  for (const char* file : {"model.onnx", "model.pt"}) {
    auto m = RunKiln("eval --json " + data + " --model '" +
                     (dir.path() / "export" / file).string() + "'");
    ASSERT_EQ(m.exit_code, 0) << m.output;
    EXPECT_DOUBLE_EQ(nlohmann::json::parse(m.output).at("accuracy").get<double>(),
                     summary.at("test_accuracy").get<double>())
        << file;
  }
  // And through OpenVINO: the same images classified the same way, up to a borderline image or
  // two (two engines' f32 kernels sum in different orders; 2 of 10,000 = 0.0002).
  auto ov = RunKiln("eval --json " + data + " --backend openvino --model '" +
                    (dir.path() / "export" / "model.onnx").string() + "'");
  ASSERT_EQ(ov.exit_code, 0) << ov.output;
  EXPECT_NEAR(nlohmann::json::parse(ov.output).at("accuracy").get<double>(),
              summary.at("test_accuracy").get<double>(), 0.0002);
  // predict: a folder with two real test images and one broken file.
  const fs::path images = dir.path() / "images";
  fs::create_directories(images);
  const data::ImageSet& test = testing::SharedDataset().test;
  for (int64_t i : {0, 1}) {
    cv::Mat bgr(32, 32, CV_8UC3);
    for (int y = 0; y < 32; ++y) {
      for (int px = 0; px < 32; ++px) {
        for (int c = 0; c < 3; ++c)
          bgr.at<cv::Vec3b>(y, px)[2 - c] = test.image(i)[c * 1024 + y * 32 + px];
      }
    }
    cv::Mat big;
    cv::resize(bgr, big, cv::Size(200, 150));
    cv::imwrite((images / ("img" + std::to_string(i) + (i == 0 ? ".png" : ".jpg"))).string(), big);
  }
  std::ofstream(images / "broken.jpg") << "not a jpeg";
  const std::string onnx = "--model '" + (dir.path() / "export" / "model.onnx").string() + "'";
  auto p =
      RunKiln("predict --json -k 3 " + onnx + " '" + images.string() + "'", /*merge_stderr=*/false);
  EXPECT_EQ(p.exit_code, 1) << p.output;  // one file failed
  auto pj = nlohmann::json::parse(p.output);
  ASSERT_EQ(pj.size(), 3U) << p.output;
  int classified = 0;
  for (const auto& r : pj) {
    if (r.contains("error")) {
      EXPECT_TRUE(Contains(r.at("file").get<std::string>(), "broken.jpg"));
      EXPECT_TRUE(Contains(r.at("error").get<std::string>(), "not a supported image"));
      continue;
    }
    ++classified;
    ASSERT_EQ(r.at("top_k").size(), 3U);
    double total = 0;
    for (const auto& t : r.at("top_k")) total += t.at("probability").get<double>();
    EXPECT_GT(total, 0.0);
    EXPECT_LE(total, 1.0 + 1e-9);
    EXPECT_GE(r.at("top_k").at(0).at("probability").get<double>(),
              r.at("top_k").at(1).at("probability").get<double>());
    EXPECT_GT(r.at("decode_ms").get<double>(), 0.0);
    EXPECT_EQ(r.at("batch_size").get<int>(), 2);
  }
  EXPECT_EQ(classified, 2);
  auto one = RunKiln("predict --model '" + (dir.path() / "export" / "model.pt").string() + "' '" +
                     (images / "img0.png").string() + "'");
  EXPECT_EQ(one.exit_code, 0) << one.output;
  EXPECT_TRUE(Contains(one.output, "decode")) << one.output;

  auto bad = RunKiln("export --skip-check --opset 11 " + ckpt);
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  auto missing = RunKiln("export --checkpoint /nonexistent.ckpt");
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_TRUE(Contains(missing.output, "no such checkpoint")) << missing.output;
}

// Ctrl-C saves a resumable checkpoint and exits cleanly; --resume finishes the run.
TEST(CliTest, SigintSavesAndResumeFinishes) {
  testing::TempDir dir;
  const std::string args =
      "train --data '" + testing::DataArchive().string() +
      "' --arch seed-cnn --epochs 4 --train-limit 4000 --validation-size 500 --out '" +
      dir.path().string() + "'";
  const std::string bin = testing::KilnBinary();
  const fs::path log = dir.path() / "log";
  // Start in the background, interrupt as soon as epoch 2 starts, report the exit status.
  const fs::path script = dir.path() / "interrupt.sh";
  std::ofstream(script) << "'" << bin << "' " << args << " > '" << log.string() << "' 2>&1 &\n"
                        << "pid=$!\n"
                        << "for i in $(seq 1 600); do grep -q 'epoch 2/' '" << log.string()
                        << "' && break; sleep 0.05; done\n"
                        << "kill -INT $pid\nwait $pid\necho rc=$?\n";
  FILE* p = popen(("bash '" + script.string() + "'").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {};
  std::string out;
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  pclose(p);
  std::ifstream log_in(log);
  std::string text((std::istreambuf_iterator<char>(log_in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(Contains(out, "rc=130")) << out << text;
  // The signal lands in epoch 2, or a little later on a busy machine.
  const bool in_time = Contains(text, "interrupted at epoch 2") ||
                       Contains(text, "interrupted at epoch 3") ||
                       Contains(text, "interrupted at epoch 4");
  EXPECT_TRUE(in_time) << text;
  EXPECT_TRUE(Contains(text, "continue with --resume")) << text;
  ASSERT_TRUE(fs::exists(dir.path() / "resume.ckpt")) << text;
  EXPECT_FALSE(fs::exists(dir.path() / "summary.json"));

  auto r = RunKiln(args + " --resume");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "resumed at epoch ")) << r.output;
  EXPECT_TRUE(fs::exists(dir.path() / "summary.json"));
  std::ifstream csv(dir.path() / "metrics.csv");
  std::string line;
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 5);  // header + 4 epochs: the one before the interruption is kept
}

}  // namespace
}  // namespace kiln
