// Faults end to end, on the real `kiln` binary: kill -9 in the middle of `kiln train` and
// `kiln optimize`, then the same command again, ends with the outputs of an uninterrupted run;
// a disk that fills up during training is a clear error that keeps the last checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "../test_util.h"
#include "kiln/optimize/quantize/onnx_graph.h"
#include "kiln/train/checkpoint.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string Read(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// `kiln <args>` in the background, stdout and stderr to `log`.
class Background {
 public:
  Background(const std::string& args, const fs::path& log) {
    const std::string cmd =
        "exec '" + testing::KilnBinary() + "' " + args + " > '" + log.string() + "' 2>&1";
    pid_ = fork();
    if (pid_ == 0) {
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  // Polls `ready` until it holds (true) or the process exits first (false). The 10-minute cap
  // only keeps a broken build from hanging the suite.
  bool WaitFor(const std::function<bool()>& ready) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    while (std::chrono::steady_clock::now() < give_up) {
      if (ready()) return true;
      if (waitpid(pid_, &status_, WNOHANG) == pid_) {
        reaped_ = true;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  // Sends SIGKILL; true if the process died of it (it had not finished by itself).
  bool Kill9() {
    if (reaped_) return false;
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
    reaped_ = true;
    return WIFSIGNALED(status_) && WTERMSIG(status_) == SIGKILL;
  }
  void Signal(int sig) { kill(pid_, sig); }
  // Waits for the exit; the exit code, or -1 if it died of a signal.
  int Wait() {
    if (!reaped_) waitpid(pid_, &status_, 0);
    reaped_ = true;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
};

// The same weights, buffers and training position (only `created`, a timestamp, may differ).
void ExpectSameCheckpoint(const fs::path& a, const fs::path& b) {
  SCOPED_TRACE(b.string());
  auto ca = train::LoadCheckpoint(a);
  auto cb = train::LoadCheckpoint(b);
  KILN_ASSERT_RESULT_OK(ca);
  KILN_ASSERT_RESULT_OK(cb);
  EXPECT_EQ(ca->meta.epoch, cb->meta.epoch);
  EXPECT_EQ(ca->meta.batch, cb->meta.batch);
  EXPECT_EQ(ca->meta.val_accuracy, cb->meta.val_accuracy);
  EXPECT_EQ(ca->meta.best_val_accuracy, cb->meta.best_val_accuracy);
  EXPECT_EQ(ca->meta.best_epoch, cb->meta.best_epoch);
  // The options, but for the folder of the run (init_from names a file in it).
  auto options = [](const std::string& text) {
    json o = json::parse(text);
    if (o.contains("init_from") && o["init_from"].is_string()) {
      o["init_from"] = fs::path(o["init_from"].get<std::string>()).filename().string();
    }
    return o;
  };
  EXPECT_EQ(options(ca->meta.train_options_json), options(cb->meta.train_options_json));
  EXPECT_EQ(ca->meta.normalization.mean, cb->meta.normalization.mean);
  EXPECT_EQ(ca->meta.normalization.std, cb->meta.normalization.std);
  // Parameters, then buffers: the same names with equal tensors.
  auto expect_same = [](const auto& a, const auto& b) {
    ASSERT_EQ(a.size(), b.size());
    for (const auto& x : a) {
      ASSERT_TRUE(b.contains(x.key())) << x.key();
      EXPECT_TRUE(torch::equal(x.value(), b[x.key()])) << x.key() << " differs";
    }
  };
  expect_same(ca->model->named_parameters(), cb->model->named_parameters());
  expect_same(ca->model->named_buffers(), cb->model->named_buffers());
}

// metrics.csv without the two timing columns (epoch_seconds, train_images_per_second).
std::vector<std::string> MetricsWithoutTimes(const fs::path& file) {
  std::vector<std::string> rows;
  std::istringstream in(Read(file));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::istringstream cs(line);
    std::string cell;
    while (std::getline(cs, cell, ',')) cells.push_back(cell);
    EXPECT_EQ(cells.size(), 8U) << file << ": " << line;
    if (cells.size() == 8) cells.erase(cells.begin() + 6, cells.end());
    std::string joined;
    for (const auto& c : cells) joined += c + ",";
    rows.push_back(joined);
  }
  return rows;
}

json SummaryWithoutTimes(const fs::path& file) {
  json j = json::parse(Read(file));
  for (const char* k : {"wall_seconds", "train_seconds", "train_images_per_second",
                        "data_loading_seconds", "finished"}) {
    EXPECT_TRUE(j.contains(k)) << k;
    j.erase(k);
  }
  return j;
}

// Every output of `kiln train` in `dir` compared with those of the uninterrupted run in `ref`.
void ExpectSameTrainingOutputs(const fs::path& ref, const fs::path& dir) {
  for (const char* ckpt : {"model.ckpt", "best.ckpt", "resume.ckpt"}) {
    ExpectSameCheckpoint(ref / ckpt, dir / ckpt);
  }
  EXPECT_EQ(MetricsWithoutTimes(ref / "metrics.csv"), MetricsWithoutTimes(dir / "metrics.csv"));
  EXPECT_EQ(SummaryWithoutTimes(ref / "summary.json"), SummaryWithoutTimes(dir / "summary.json"));
  EXPECT_EQ(Read(ref / "training_curve.png"), Read(dir / "training_curve.png"))
      << "training_curve.png differs";
}

// Every visible file in `dir` is complete: checkpoints load, JSON parses, CSV rows are whole.
void ExpectOnlyCompleteFiles(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const fs::path& f = e.path();
    if (f.filename().string().front() == '.') continue;  // temporary files of the killed run
    SCOPED_TRACE(f.string());
    if (f.extension() == ".ckpt") {
      auto ckpt = train::LoadCheckpoint(f);
      EXPECT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    }
    if (f.extension() == ".json") {
      EXPECT_TRUE(json::accept(Read(f)));
    }
    if (f.extension() == ".onnx") {
      auto model = optimize::LoadOnnx(f);
      EXPECT_TRUE(model.ok()) << model.status().ToString();
    }
    if (f.extension() == ".csv") {
      const std::string text = Read(f);
      EXPECT_TRUE(!text.empty() && text.back() == '\n');
      MetricsWithoutTimes(f);
    }
  }
}

std::string TrainArgs(const fs::path& out) {
  return "train --data '" + testing::DataArchive().string() +
         "' --arch seed-cnn --epochs 3 --train-limit 2000 --validation-size 500 --out '" +
         out.string() + "'";
}

// kill -9 after the first epoch's checkpoint, then the same command: the run continues from
// that epoch and ends with exactly the uninterrupted run's weights, metrics and summary. Also the
// narrowest window, a kill after the last epoch's resume.ckpt but before the final outputs.
TEST(CrashTest, TrainKilledWithSigkillResumesToTheSameResult) {
  testing::TempDir dir;
  const fs::path a = dir.path() / "a", b = dir.path() / "b", c = dir.path() / "c";
  auto ra = testing::RunKiln(TrainArgs(a));
  ASSERT_EQ(ra.exit_code, 0) << ra.output;

  {
    Background run(TrainArgs(b), dir.path() / "b.log");
    ASSERT_TRUE(run.WaitFor([&] { return fs::exists(b / "resume.ckpt"); }))
        << "finished before resume.ckpt appeared\n" << Read(dir.path() / "b.log");
    ASSERT_TRUE(run.Kill9()) << "finished before the kill\n" << Read(dir.path() / "b.log");
  }
  EXPECT_FALSE(fs::exists(b / "summary.json"));
  ExpectOnlyCompleteFiles(b);
  auto rb = testing::RunKiln(TrainArgs(b));
  ASSERT_EQ(rb.exit_code, 0) << rb.output;
  EXPECT_TRUE(Contains(rb.output, "continuing the run saved in")) << rb.output;
  EXPECT_TRUE(Contains(rb.output, "resumed at epoch ")) << rb.output;
  ExpectSameTrainingOutputs(a, b);

  // What a kill after the last epoch leaves: every epoch's files, no final outputs.
  fs::copy(a, c, fs::copy_options::recursive);
  for (const char* f : {"model.ckpt", "summary.json", "training_curve.png"}) fs::remove(c / f);
  auto rc = testing::RunKiln(TrainArgs(c));
  ASSERT_EQ(rc.exit_code, 0) << rc.output;
  EXPECT_TRUE(Contains(rc.output, "resumed at epoch 4")) << rc.output;
  ExpectSameTrainingOutputs(a, c);

  // --restart ignores the saved run (and, training from scratch, reproduces it).
  auto rr = testing::RunKiln(TrainArgs(c) + " --restart");
  ASSERT_EQ(rr.exit_code, 0) << rr.output;
  EXPECT_FALSE(Contains(rr.output, "resumed at epoch")) << rr.output;
  ExpectSameTrainingOutputs(a, c);
}

// A small tmpfs fills up after the first epoch: `kiln train` fails with "no space left on
// device" naming the file, resume.ckpt from before stays loadable, and once there is room the
// same command finishes the run.
TEST(CrashTest, FullDiskIsAClearErrorAndKeepsTheLastCheckpoint) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  testing::TempDir dir;
  const fs::path mnt = dir.path() / "small";
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
  }
  struct Unmount {
    fs::path dir;
    ~Unmount() { umount2(dir.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const fs::path out = mnt / "run";
  const fs::path log = dir.path() / "train.log";
  Background run(TrainArgs(out), log);
  ASSERT_TRUE(run.WaitFor([&] { return fs::exists(out / "resume.ckpt"); })) << Read(log);
  // Pause training, fill every free byte, resume: its next write cannot fit.
  run.Signal(SIGSTOP);
  {
    std::ofstream filler(mnt / "filler", std::ios::binary);
    const std::string chunk(4096, 'f');
    while (filler.write(chunk.data(), static_cast<std::streamsize>(chunk.size()))) {
      filler.flush();
    }
  }
  run.Signal(SIGCONT);
  const int code = run.Wait();
  const std::string text = Read(log);
  EXPECT_EQ(code, 1) << text;
  EXPECT_TRUE(Contains(text, "no space left on device while writing " + out.string() + "/"))
      << text;
  // The file it names is one of the run's outputs.
  const bool named = Contains(text, "writing " + (out / "best.ckpt").string()) ||
                     Contains(text, "writing " + (out / "resume.ckpt").string()) ||
                     Contains(text, "writing " + (out / "metrics.csv").string());
  EXPECT_TRUE(named) << text;
  auto saved = train::LoadCheckpoint(out / "resume.ckpt");
  KILN_ASSERT_RESULT_OK(saved);
  EXPECT_GE(saved->meta.epoch, 1);
  ExpectOnlyCompleteFiles(out);
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_NE(e.path().filename().string().front(), '.') << "temporary left: " << e.path();
  }

  fs::remove(mnt / "filler");
  auto again = testing::RunKiln(TrainArgs(out));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(fs::exists(out / "summary.json"));
}


// The manifest without what differs between runs: when it was written and how long things took.
json ManifestWithoutTimes(const fs::path& file) {
  json m = json::parse(Read(file));
  m.erase("created");
  m.erase("seconds");
  for (json& v : m["variants"]) {
    v.erase("optimize_seconds");
    // The file's size counts its metadata, which holds the fine-tuning time; the computation
    // itself is compared by OnnxGraph.
    v.erase("size_bytes");
    if (v.contains("settings")) v["settings"].erase("finetune_seconds");
    if (v.contains("peer")) v["peer"].erase("quantize_seconds");  // a peer quantizer's time
  }
  return m;
}

// The computation of an ONNX file: its graph (nodes, weights), without the metadata, which holds
// the fine-tuning time.
std::string OnnxGraph(const fs::path& file) {
  auto m = optimize::LoadOnnx(file);
  EXPECT_TRUE(m.ok()) << file << ": " << m.status().ToString();
  return m.ok() ? m->graph().SerializeAsString() : "";
}

// kill -9 while `kiln optimize` fine-tunes the pruned model, after int8-static is finished: the
// same command reuses int8-static, continues the fine-tuning from its last epoch and writes the
// manifest and models of an uninterrupted run.
TEST(CrashTest, OptimizeKilledWithSigkillReusesFinishedVariants) {
  testing::TempDir dir;
  const std::string data = " --data '" + testing::DataArchive().string() + "'";
  const fs::path run = dir.path() / "run";
  auto t = testing::RunKiln(
      "train --arch seed-cnn --epochs 1 --train-limit 2000 --validation-size 500 --out '" +
      run.string() + "'" + data);
  ASSERT_EQ(t.exit_code, 0) << t.output;
  auto x = testing::RunKiln("export --checkpoint '" + (run / "best.ckpt").string() + "'" + data);
  ASSERT_EQ(x.exit_code, 0) << x.output;
  auto args = [&](const fs::path& out, int calibration = 64) {
    return "optimize --model '" + (run / "export" / "model.onnx").string() + "' --output '" +
           out.string() + "'" + data + " --calibration-images " + std::to_string(calibration) +
           " --variants int8-static,pruned --test-limit 500"
           " --finetune-epochs 3 --finetune-limit 1000 --int8-budget 100 --prune-budget 100";
  };
  const fs::path a = dir.path() / "a", b = dir.path() / "b";
  auto ra = testing::RunKiln(args(a));
  ASSERT_EQ(ra.exit_code, 0) << ra.output;

  const fs::path finetune = b / "pruned-30" / "finetune";
  {
    Background opt(args(b), dir.path() / "b.log");
    ASSERT_TRUE(opt.WaitFor([&] { return fs::exists(finetune / "resume.ckpt"); }))
        << Read(dir.path() / "b.log");
    ASSERT_TRUE(opt.Kill9()) << "finished before the kill\n" << Read(dir.path() / "b.log");
  }
  EXPECT_FALSE(fs::exists(b / "manifest.json"));
  EXPECT_TRUE(fs::exists(b / "int8-static.onnx"));
  ExpectOnlyCompleteFiles(b);
  auto rb = testing::RunKiln(args(b));
  ASSERT_EQ(rb.exit_code, 0) << rb.output;
  EXPECT_TRUE(Contains(rb.output, "reusing int8-static")) << rb.output;
  EXPECT_FALSE(Contains(rb.output, "building int8-static")) << rb.output;
  EXPECT_TRUE(Contains(rb.output, "resumed at epoch 2")) << rb.output;

  EXPECT_EQ(ManifestWithoutTimes(a / "manifest.json"), ManifestWithoutTimes(b / "manifest.json"));
  for (const char* f : {"fp32.onnx", "int8-static.onnx", "pruned-30.onnx"}) {
    EXPECT_EQ(OnnxGraph(a / f), OnnxGraph(b / f)) << f << " differs";
  }
  ExpectSameCheckpoint(a / "pruned-30" / "finetune" / "best.ckpt", finetune / "best.ckpt");

  // Another configuration in the same folder starts afresh instead of reusing.
  auto rc = testing::RunKiln(args(b, 32));
  ASSERT_EQ(rc.exit_code, 0) << rc.output;
  EXPECT_FALSE(Contains(rc.output, "reusing")) << rc.output;
  EXPECT_FALSE(Contains(rc.output, "resumed at epoch")) << rc.output;
}

}  // namespace
}  // namespace kiln
