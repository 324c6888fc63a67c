// End-to-end tests of `kiln serve`: a real server process on loopback, started and stopped by
// the tests, spoken to over HTTP.
#include <arpa/inet.h>
#include <gif_lib.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <cstdlib>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "../test_util.h"
#include "serve_client.h"

namespace kiln::serve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::Http;
using testing::HttpRequest;
using testing::HttpResult;
using testing::InferJson;
using testing::kClasses;
using testing::MakeRepository;
using testing::RandomInput;
using testing::Reference;
using testing::Repository;
using testing::ServerProcess;
using testing::Write;

HttpRequest Post(std::string body, std::vector<std::string> headers = {}) {
  HttpRequest r;
  r.method = "POST";
  r.body = std::move(body);
  r.headers = std::move(headers);
  return r;
}

std::string Encode(const std::string& ext, int w, int h, int type = CV_8UC3) {
  cv::Mat img(h, w, type);
  cv::randu(img, 0, 255);
  std::vector<uchar> buf;
  EXPECT_TRUE(cv::imencode(ext, img, buf)) << ext;
  return std::string(buf.begin(), buf.end());
}

// A 3x2 GIF written with giflib (as tests/data/image_test.cc does).
std::string TinyGif() {
  std::string out;
  int error = 0;
  GifFileType* gif = EGifOpen(
      &out,
      [](GifFileType* g, const GifByteType* data, int n) {
        static_cast<std::string*>(g->UserData)
            ->append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
        return n;
      },
      &error);
  GifColorType colors[4] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {9, 9, 9}};
  ColorMapObject* map = GifMakeMapObject(4, colors);
  EGifPutScreenDesc(gif, 3, 2, 2, 0, map);
  EGifPutImageDesc(gif, 0, 0, 3, 2, false, nullptr);
  GifPixelType row0[3] = {0, 1, 2};
  GifPixelType row1[3] = {3, 2, 1};
  EGifPutLine(gif, row0, 3);
  EGifPutLine(gif, row1, 3);
  EGifCloseFile(gif, &error);
  GifFreeMapObject(map);
  return out;
}

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = MakeRepository().release();
    server_ = new ServerProcess(repo_->path(), {"--max-pixels", "100000", "--max-body-bytes",
                                                "2000000", "--max-json-depth", "16"});
    ASSERT_TRUE(server_->started()) << server_->Log();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete repo_;
  }
  void SetUp() override {
    ASSERT_TRUE(server_ != nullptr && server_->started());
  }
  static std::string Url(const std::string& path) { return server_->url() + path; }
  static std::string ModelFile() { return (repo_->path() / "cifar" / "1" / "model.onnx").string(); }

  static Repository* repo_;
  static ServerProcess* server_;
};
Repository* ServeTest::repo_ = nullptr;
ServerProcess* ServeTest::server_ = nullptr;

TEST_F(ServeTest, HealthMetadataAndConfig) {
  EXPECT_EQ(Http(Url("/v2/health/live")).status, 200);
  EXPECT_EQ(Http(Url("/v2/health/ready")).status, 200);
  auto server = Http(Url("/v2"));
  ASSERT_EQ(server.status, 200);
  auto sj = json::parse(server.body);
  EXPECT_EQ(sj["name"], "kiln");
  EXPECT_NE(std::find(sj["extensions"].begin(), sj["extensions"].end(), "binary_tensor_data"),
            sj["extensions"].end());

  EXPECT_EQ(Http(Url("/v2/models/cifar/ready")).status, 200);
  EXPECT_EQ(Http(Url("/v2/models/cifar/versions/1/ready")).status, 200);
  auto not_ready = Http(Url("/v2/models/nope/ready"));
  EXPECT_EQ(not_ready.status, 400);
  EXPECT_TRUE(json::parse(not_ready.body).contains("error"));

  auto meta = Http(Url("/v2/models/cifar"));
  ASSERT_EQ(meta.status, 200) << meta.body;
  auto mj = json::parse(meta.body);
  EXPECT_EQ(mj["name"], "cifar");
  EXPECT_EQ(mj["platform"], "onnxruntime_onnx");
  EXPECT_EQ(mj["versions"], json::array({"1"}));
  EXPECT_EQ(mj["inputs"][0]["name"], "input");
  EXPECT_EQ(mj["inputs"][0]["datatype"], "FP32");
  EXPECT_EQ(mj["inputs"][0]["shape"], json::array({-1, 3, 32, 32}));
  EXPECT_EQ(mj["outputs"][0]["shape"], json::array({-1, 10}));
  EXPECT_EQ(Http(Url("/v2/models/cifar/versions/1")).status, 200);
  auto missing = Http(Url("/v2/models/nope"));
  EXPECT_EQ(missing.status, 404);
  EXPECT_TRUE(json::parse(missing.body)["error"].is_string());
  EXPECT_EQ(Http(Url("/v2/models/cifar/versions/7")).status, 404);

  auto config = Http(Url("/v2/models/cifar/config"));
  ASSERT_EQ(config.status, 200);
  auto cj = json::parse(config.body);
  EXPECT_EQ(cj["max_batch_size"], 8);
  EXPECT_EQ(cj["dynamic_batching"]["preferred_batch_size"], json::array({4, 8}));
  EXPECT_EQ(cj["instance_group"][0]["count"], 2);
  // The TorchScript model has no config.pbtxt: completed from the model file.
  auto torch_config = json::parse(Http(Url("/v2/models/torch/config")).body);
  EXPECT_EQ(torch_config["platform"], "pytorch_libtorch");
  EXPECT_EQ(torch_config["max_batch_size"], 32);
  EXPECT_EQ(torch_config["input"][0]["dims"], json::array({"3", "32", "32"}));

  EXPECT_EQ(Http(Url("/v2/models/cifar/infer")).status, 405);  // GET on a POST endpoint
  EXPECT_EQ(Http(Url("/v2/nothing/here")).status, 404);
  EXPECT_EQ(Http(Url("/not-an-endpoint")).status, 404);
}

TEST_F(ServeTest, InferJsonBinaryAndClassification) {
  const auto input = RandomInput(3, 1);
  const auto expected = Reference(ModelFile(), input, 3);

  // JSON in, JSON out; the id is echoed; shapes include the batch.
  auto r = Http(Url("/v2/models/cifar/infer"), Post(InferJson(input, 3, R"({"id": "req-7"})")));
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = json::parse(r.body);
  EXPECT_EQ(j["id"], "req-7");
  EXPECT_EQ(j["model_name"], "cifar");
  EXPECT_EQ(j["model_version"], "1");
  EXPECT_EQ(j["outputs"][0]["name"], "logits");
  EXPECT_EQ(j["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(j["outputs"][0]["shape"], json::array({3, 10}));
  auto got = j["outputs"][0]["data"].get<std::vector<float>>();
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-5) << i;

  // Nested data is accepted too.
  json nested = json::array();
  for (int b = 0; b < 3; ++b) {
    json sample = json::array();
    for (int c = 0; c < 3; ++c) {
      json plane = json::array();
      for (int y = 0; y < 32; ++y) {
        plane.push_back(std::vector<float>(input.begin() + b * 3072 + c * 1024 + y * 32,
                                           input.begin() + b * 3072 + c * 1024 + y * 32 + 32));
      }
      sample.push_back(plane);
    }
    nested.push_back(sample);
  }
  json nj = {{"inputs", {{{"name", "input"}, {"shape", {3, 3, 32, 32}}, {"datatype", "FP32"},
                          {"data", nested}}}}};
  auto rn = Http(Url("/v2/models/cifar/infer"), Post(nj.dump()));
  ASSERT_EQ(rn.status, 200) << rn.body;
  EXPECT_EQ(json::parse(rn.body)["outputs"][0]["data"], j["outputs"][0]["data"]);
  EXPECT_FALSE(json::parse(rn.body).contains("id"));

  // Binary tensor extension: binary input and binary output.
  json header = {{"inputs", {{{"name", "input"}, {"shape", {3, 3, 32, 32}}, {"datatype", "FP32"},
                              {"parameters", {{"binary_data_size", input.size() * 4}}}}}},
                 {"outputs", {{{"name", "logits"}, {"parameters", {{"binary_data", true}}}}}}};
  const std::string hs = header.dump();
  std::string body = hs;
  body.append(reinterpret_cast<const char*>(input.data()), input.size() * 4);
  auto rb = Http(Url("/v2/models/cifar/infer"),
                 Post(body, {"Inference-Header-Content-Length: " + std::to_string(hs.size()),
                             "Content-Type: application/octet-stream"}));
  ASSERT_EQ(rb.status, 200) << rb.body;
  EXPECT_EQ(rb.headers["content-type"], "application/octet-stream");
  const size_t json_len = std::stoul(rb.headers["inference-header-content-length"]);
  auto bj = json::parse(rb.body.substr(0, json_len));
  EXPECT_EQ(bj["outputs"][0]["parameters"]["binary_data_size"], 30 * 4);
  ASSERT_EQ(rb.body.size(), json_len + 30 * 4);
  std::vector<float> raw(30);
  std::memcpy(raw.data(), rb.body.data() + json_len, 30 * 4);
  for (size_t i = 0; i < raw.size(); ++i) EXPECT_NEAR(raw[i], expected[i], 1e-5);

  // Header value 0: the whole body is one raw tensor, batch 1.
  std::string one(reinterpret_cast<const char*>(input.data()), 3072 * 4);
  auto r0 = Http(Url("/v2/models/cifar/infer"), Post(one, {"Inference-Header-Content-Length: 0"}));
  ASSERT_EQ(r0.status, 200) << r0.body;
  auto j0 = json::parse(r0.body);
  EXPECT_EQ(j0["outputs"][0]["shape"], json::array({1, 10}));
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(j0["outputs"][0]["data"][i].get<float>(), expected[i], 1e-5);

  // Classification extension: "<value>:<index>:<label>" strings, best first.
  auto rc = Http(Url("/v2/models/cifar/infer"),
                 Post(InferJson(input, 3, R"({"outputs": [{"name": "logits",
                                              "parameters": {"classification": 2}}]})")));
  ASSERT_EQ(rc.status, 200) << rc.body;
  auto cj = json::parse(rc.body)["outputs"][0];
  EXPECT_EQ(cj["datatype"], "BYTES");
  EXPECT_EQ(cj["shape"], json::array({3, 2}));
  for (int b = 0; b < 3; ++b) {
    const float* row = expected.data() + b * 10;
    const auto best = std::max_element(row, row + 10) - row;
    const std::string s = cj["data"][b * 2].get<std::string>();
    EXPECT_NE(s.find(":" + std::to_string(best) + ":" + kClasses[static_cast<size_t>(best)]),
              std::string::npos)
        << s;
  }
}

TEST_F(ServeTest, StatisticsCountInferencesAndExecutions) {
  auto before = json::parse(Http(Url("/v2/models/cifar/stats")).body)["model_stats"][0];
  const auto input = RandomInput(5, 2);
  ASSERT_EQ(Http(Url("/v2/models/cifar/infer"), Post(InferJson(input, 5))).status, 200);
  ASSERT_EQ(Http(Url("/v2/models/cifar/infer"), Post(InferJson(RandomInput(1, 3), 1))).status, 200);
  auto s = Http(Url("/v2/models/cifar/versions/1/stats"));
  ASSERT_EQ(s.status, 200);
  auto after = json::parse(s.body)["model_stats"][0];
  EXPECT_EQ(after["name"], "cifar");
  EXPECT_EQ(after["version"], "1");
  // Sequential requests: one execution each; inference_count counts batch elements.
  EXPECT_EQ(after["inference_count"].get<int>() - before["inference_count"].get<int>(), 6);
  EXPECT_EQ(after["execution_count"].get<int>() - before["execution_count"].get<int>(), 2);
  const auto& st = after["inference_stats"];
  EXPECT_EQ(st["success"]["count"].get<int>() - before["inference_stats"]["success"]["count"].get<int>(), 2);
  for (const char* k : {"queue", "compute_input", "compute_infer", "compute_output"}) {
    EXPECT_GT(st[k]["ns"].get<int64_t>(), 0) << k;
    EXPECT_EQ(st[k]["count"], st["success"]["count"]) << k;
  }
  EXPECT_FALSE(after["batch_stats"].empty());
  auto all = json::parse(Http(Url("/v2/models/stats")).body);
  EXPECT_GE(all["model_stats"].size(), 3U);  // cifar, queue, torch
  EXPECT_EQ(Http(Url("/v2/models/nope/stats")).status, 404);
}

// Bad requests get a 4xx with {"error"}, and the server keeps serving.
TEST_F(ServeTest, MalformedRequestsAreRejectedCleanly) {
  const auto good = InferJson(RandomInput(1, 3), 1);
  std::string deep(40, '[');
  deep += std::string(40, ']');
  struct Case {
    std::string path, body;
    std::vector<std::string> headers;
    long status;
  };
  const std::vector<Case> cases = {
      {"/v2/models/cifar/infer", "{not json", {}, 400},
      {"/v2/models/cifar/infer", "[1,2]", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": []})", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": [{"name": "x", "shape": [1,3,32,32], "datatype": "FP32", "data": []}]})", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": [{"name": "input", "shape": [1,3,32,32], "datatype": "INT32", "data": []}]})", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": [{"name": "input", "shape": [1,3,16,16], "datatype": "FP32", "data": []}]})", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": [{"name": "input", "shape": [1,3,32,32], "datatype": "FP32", "data": [1,2,3]}]})", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": [{"name": "input", "shape": [9,3,32,32], "datatype": "FP32", "data": []}]})", {}, 400},
      {"/v2/models/cifar/infer", R"({"inputs": [{"name": "input", "shape": [1,3,32,32], "datatype": "FP32", "data": ["a"]}]})", {}, 400},
      {"/v2/models/cifar/infer", "{\"inputs\": " + deep + "}", {}, 400},
      {"/v2/models/cifar/infer", good, {"Inference-Header-Content-Length: 99999999"}, 400},
      {"/v2/models/cifar/infer", "abc", {"Inference-Header-Content-Length: 0"}, 400},
      {"/v2/models/cifar/infer", good, {"Inference-Header-Content-Length: x"}, 400},
      {"/v2/models/nope/infer", good, {}, 404},
      {"/v2/models/cifar/versions/9/infer", good, {}, 404},
      {"/v2/models/cifar/versions/x/infer", good, {}, 400},
      {"/v2/models/fixed/infer", good, {}, 503},
      {"/predict", "hello", {"Content-Type: text/plain"}, 415},
      {"/predict", "hello", {"Content-Type: image/png"}, 400},
      {"/predict", "--x\r\nbroken", {"Content-Type: multipart/form-data; boundary=x"}, 400},
      {"/predict", std::string(3'000'000, 'a'), {"Content-Type: image/png"}, 413},
  };
  for (const auto& c : cases) {
    auto r = Http(Url(c.path), Post(c.body, c.headers));
    EXPECT_EQ(r.status, c.status) << c.path << " " << c.body.substr(0, 120) << " -> " << r.body;
    if (r.status >= 400) {
      auto j = json::parse(r.body, nullptr, false);
      EXPECT_TRUE(j.is_object() && j["error"].is_string()) << r.body;
    }
    // The next request is served normally.
    auto ok = Http(Url("/v2/models/cifar/infer"), Post(good));
    EXPECT_EQ(ok.status, 200) << ok.body;
  }
}

// /predict accepts every supported format as multipart or raw body, and says why it refuses
// broken, non-image and oversized uploads.
TEST_F(ServeTest, PredictEveryImageFormat) {
  struct Image {
    std::string name, bytes, type;
  };
  const std::vector<Image> images = {
      {"png", Encode(".png", 32, 32), "image/png"},
      {"png16", Encode(".png", 40, 30, CV_16UC3), "image/png"},
      {"gray-png", Encode(".png", 32, 32, CV_8UC1), "image/png"},
      {"jpeg", Encode(".jpg", 64, 48), "image/jpeg"},
      {"bmp", Encode(".bmp", 32, 32), "image/bmp"},
      {"webp", Encode(".webp", 32, 32), "image/webp"},
      {"tiff", Encode(".tiff", 32, 32), "image/tiff"},
      {"gif", TinyGif(), "image/gif"},
  };
  for (const auto& img : images) {
    HttpRequest form;
    form.method = "POST";
    form.form = {{"file", img.bytes, img.name + ".img"}, {"top_k", "3", ""}, {"model", "cifar", ""}};
    auto r = Http(Url("/predict"), form);
    ASSERT_EQ(r.status, 200) << img.name << ": " << r.body;
    auto j = json::parse(r.body);
    EXPECT_EQ(j["model_name"], "cifar") << img.name;
    EXPECT_EQ(j["model_version"], "1");
    ASSERT_EQ(j["predictions"].size(), 3U) << img.name;
    double last = 1.0;
    for (const auto& p : j["predictions"]) {
      EXPECT_NE(std::find(kClasses.begin(), kClasses.end(), p["label"].get<std::string>()),
                kClasses.end());
      EXPECT_LE(p["probability"].get<double>(), last);
      last = p["probability"].get<double>();
    }
    for (const char* k : {"decode_ms", "queue_ms", "inference_ms", "total_ms"}) {
      EXPECT_GE(j[k].get<double>(), 0.0) << k;
    }
    // The same image as a raw body, to the TorchScript model.
    auto raw = Http(Url("/predict?model=torch&top_k=1"), Post(img.bytes, {"Content-Type: " + img.type}));
    ASSERT_EQ(raw.status, 200) << img.name << ": " << raw.body;
    EXPECT_EQ(json::parse(raw.body)["model_name"], "torch");
    EXPECT_EQ(json::parse(raw.body)["predictions"].size(), 1U);
  }
  // The served probabilities are the model's softmax of the preprocessed image.
  const std::string png = Encode(".png", 32, 32);
  auto r = Http(Url("/predict?model=cifar&top_k=10"), Post(png, {"Content-Type: image/png"}));
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = json::parse(r.body);
  double sum = 0;
  for (const auto& p : j["predictions"]) sum += p["probability"].get<double>();
  EXPECT_NEAR(sum, 1.0, 1e-6);

  struct Bad {
    std::string name, bytes;
    long status;
    std::string message;
  };
  const std::string jpeg = Encode(".jpg", 32, 32);
  const std::vector<Bad> bad = {
      {"truncated png", png.substr(0, png.size() / 2), 400, "PNG"},
      {"truncated jpeg", jpeg.substr(0, 200), 400, ""},
      {"text", "this is not an image at all", 400, ""},
      {"too many pixels", Encode(".png", 400, 300), 413, "pixels"},
  };
  for (const auto& b : bad) {
    auto br = Http(Url("/predict"), Post(b.bytes, {"Content-Type: image/png"}));
    EXPECT_EQ(br.status, b.status) << b.name << ": " << br.body;
    auto bj = json::parse(br.body, nullptr, false);
    ASSERT_TRUE(bj.is_object() && bj["error"].is_string()) << br.body;
    EXPECT_NE(bj["error"].get<std::string>().find(b.message), std::string::npos) << br.body;
  }
  EXPECT_EQ(Http(Url("/predict?model=nope"), Post(png, {"Content-Type: image/png"})).status, 404);
  EXPECT_EQ(Http(Url("/predict?model=cifar&top_k=0"), Post(png, {"Content-Type: image/png"})).status, 400);
}

// Concurrent requests of mixed batch sizes get exactly their own unbatched results.
TEST_F(ServeTest, ConcurrentMixedBatchesMatchUnbatchedResults) {
  auto before = json::parse(Http(Url("/v2/models/cifar/stats")).body)["model_stats"][0];
  constexpr int kThreads = 8, kPerThread = 12;
  std::atomic<int> failures{0}, mismatches{0};
  std::vector<std::thread> threads;
  int64_t sent = 0;
  std::vector<std::vector<int64_t>> sizes(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      sizes[t].push_back(1 + (t * 7 + i * 3) % 5);
      sent += sizes[t].back();
    }
  }
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t batch = sizes[t][i];
        const auto input = RandomInput(batch, static_cast<uint32_t>(1000 + t * 100 + i));
        const auto expected = Reference(ModelFile(), input, batch);
        auto r = Http(Url("/v2/models/cifar/infer"), Post(InferJson(input, batch)));
        if (r.status != 200) {
          ++failures;
          continue;
        }
        auto got = json::parse(r.body)["outputs"][0]["data"].get<std::vector<float>>();
        if (got.size() != expected.size()) {
          ++mismatches;
          continue;
        }
        for (size_t k = 0; k < got.size(); ++k) {
          if (std::fabs(got[k] - expected[k]) > 1e-5f) {
            ++mismatches;
            break;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  auto after = json::parse(Http(Url("/v2/models/cifar/stats")).body)["model_stats"][0];
  const int64_t inferences =
      after["inference_count"].get<int64_t>() - before["inference_count"].get<int64_t>();
  const int64_t executions =
      after["execution_count"].get<int64_t>() - before["execution_count"].get<int64_t>();
  EXPECT_EQ(inferences, sent);
  EXPECT_LE(executions, kThreads * kPerThread);
  std::cout << "[ info ] " << kThreads * kPerThread << " requests, " << inferences
            << " images in " << executions << " executions (average batch "
            << static_cast<double>(inferences) / static_cast<double>(executions) << ")\n";
}

TEST_F(ServeTest, FullQueueAnswers503AtOnce) {
  // The queue model waits up to 5 s to fill a batch and holds at most two requests.
  const std::string body = InferJson(RandomInput(1, 4), 1);
  std::vector<std::thread> waiting;
  std::vector<long> codes(2, 0);
  for (int i = 0; i < 2; ++i) {
    waiting.emplace_back([&, i] {
      codes[static_cast<size_t>(i)] = Http(Url("/v2/models/queue/infer"), Post(body)).status;
    });
  }
  // Wait until both are queued.
  for (int i = 0; i < 200; ++i) {
    auto s = json::parse(Http(Url("/stats")).body);
    if (s["pending_requests"].get<int>() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // That it is refused at once, before any batch runs, batcher_test checks on a manual clock;
  // here: the HTTP mapping, and the two queued requests still served.
  auto full = Http(Url("/v2/models/queue/infer"), Post(body));
  EXPECT_EQ(full.status, 503) << full.body;
  EXPECT_NE(json::parse(full.body)["error"].get<std::string>().find("queue is full"),
            std::string::npos);
  for (auto& t : waiting) t.join();
  EXPECT_EQ(codes, (std::vector<long>{200, 200}));
}

TEST_F(ServeTest, RequestsTimeOutInTheQueue) {
  // When it times out (exactly at its timeout, not after the 5 s batch window) batcher_test
  // checks on a manual clock; here: the HTTP mapping and the statistics.
  auto r = Http(Url("/v2/models/timeout/infer"), Post(InferJson(RandomInput(1, 12), 1)));
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("timed out"), std::string::npos) << r.body;
  auto stats = json::parse(Http(Url("/v2/models/timeout/stats")).body)["model_stats"][0];
  EXPECT_EQ(stats["inference_stats"]["fail"]["count"], 1);
  EXPECT_EQ(stats["execution_count"], 0);
}

TEST_F(ServeTest, BrokenModelsAreUnavailableWithTheirReason) {
  auto index = Http(Url("/v2/repository/index"), Post(""));
  ASSERT_EQ(index.status, 200);
  std::map<std::string, json> by_name;
  for (const auto& e : json::parse(index.body)) by_name[e["name"]] = e;
  EXPECT_EQ(by_name["cifar"]["state"], "READY");
  EXPECT_EQ(by_name["torch"]["state"], "READY");
  EXPECT_EQ(by_name["fixed"]["state"], "UNAVAILABLE");
  EXPECT_NE(by_name["fixed"]["reason"].get<std::string>().find("exported with a fixed batch"),
            std::string::npos)
      << by_name["fixed"];
  EXPECT_EQ(by_name["pickle"]["state"], "UNAVAILABLE");
  EXPECT_NE(by_name["pickle"]["reason"].get<std::string>().find("torch.save"), std::string::npos)
      << by_name["pickle"];
  auto ready_only = json::parse(Http(Url("/v2/repository/index"), Post(R"({"ready": true})")).body);
  for (const auto& e : ready_only) EXPECT_EQ(e["state"], "READY");
  auto health = json::parse(Http(Url("/health")).body);
  EXPECT_EQ(health["status"], "degraded");
  EXPECT_GT(health["uptime_seconds"].get<double>(), 0.0);
  EXPECT_EQ(health["models"].size(), 6U);
  // Load/unload are refused unless the server runs in explicit mode.
  EXPECT_EQ(Http(Url("/v2/repository/models/cifar/unload"), Post("")).status, 400);
}

TEST_F(ServeTest, MetricsPassPromtoolAndCountTheTraffic) {
  auto before = Http(server_->metrics_url() + "/metrics");
  ASSERT_EQ(before.status, 200);
  auto count = [](const std::string& text, const std::string& series) {
    const size_t at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1.0;
    return std::stod(text.substr(at + series.size() + 2));
  };
  const std::string success = "nv_inference_request_success{model=\"cifar\",version=\"1\"}";
  const std::string images = "nv_inference_count{model=\"cifar\",version=\"1\"}";
  const double s0 = std::max(0.0, count(before.body, success));
  const double i0 = std::max(0.0, count(before.body, images));
  for (int b : {1, 2, 3}) {
    ASSERT_EQ(Http(Url("/v2/models/cifar/infer"), Post(InferJson(RandomInput(b, 5), b))).status, 200);
  }
  ASSERT_EQ(Http(Url("/predict?model=cifar"), Post(Encode(".png", 32, 32), {"Content-Type: image/png"})).status, 200);
  auto after = Http(Url("/metrics"));
  ASSERT_EQ(after.status, 200);
  EXPECT_EQ(count(after.body, success) - s0, 4);
  EXPECT_EQ(count(after.body, images) - i0, 7);
  for (const char* family :
       {"nv_inference_request_failure", "nv_inference_exec_count", "nv_inference_pending_request_count",
        "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us", "nv_model_load_duration_secs",
        "nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes",
        "ml_predictions_total", "ml_inference_duration_seconds_bucket",
        "ml_predictions_by_class_total", "http_request_duration_seconds_bucket",
        "kiln_inference_queue_duration_seconds_bucket",
        "kiln_inference_compute_duration_seconds_bucket"}) {
    EXPECT_NE(after.body.find("\n" + std::string(family)), std::string::npos) << family;
  }
  EXPECT_NE(after.body.find("http_request_duration_seconds_count{handler=\"/predict\",method=\"POST\",code=\"200\"}"),
            std::string::npos);
  // promtool: the text must parse; the only lint findings allowed are on Triton's own nv_*
  // names (Triton's output draws the same findings: no _total suffix, "_us" units).
  testing::TempDir dir;
  const fs::path file = dir.path() / "metrics.txt";
  Write(file, after.body);
  const std::string cmd = "promtool check metrics < '" + file.string() + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = WEXITSTATUS(pclose(p));
  EXPECT_TRUE(rc == 0 || rc == 3) << "promtool rc " << rc << ": " << out;  // 3 = lint findings
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    EXPECT_EQ(line.rfind("nv_", 0), 0U) << "promtool: " << line;
  }
}

TEST_F(ServeTest, WebPageStatsAndHealth) {
  auto page = Http(Url("/"));
  ASSERT_EQ(page.status, 200);
  EXPECT_NE(page.headers["content-type"].find("text/html"), std::string::npos);
  EXPECT_NE(page.body.find("/predict"), std::string::npos);
  EXPECT_EQ(page.body.find("http://"), std::string::npos);  // no CDN
  EXPECT_EQ(page.body.find("https://"), std::string::npos);
  ASSERT_EQ(Http(Url("/predict?model=cifar"), Post(Encode(".png", 32, 32), {"Content-Type: image/png"})).status, 200);
  auto stats = Http(Url("/stats"));
  ASSERT_EQ(stats.status, 200);
  auto s = json::parse(stats.body);
  EXPECT_GT(s["requests_total"].get<int>(), 0);
  EXPECT_GT(s["images_per_second"].get<double>(), 0.0);
  EXPECT_TRUE(s["latency_ms"]["p99"].is_number());
  EXPECT_GT(s["average_batch_size"].get<double>(), 0.0);
  EXPECT_TRUE(s["predictions_by_class"].contains("airplane"));
  EXPECT_EQ(Http(Url("/stats"), Post("")).status, 405);
}

// The web page in headless Chromium (Debian's chromium driven by playwright-core, installed by
// scripts/setup.sh): upload a real test image, see the top-1 label /predict gives.
TEST_F(ServeTest, WebPageShowsTheTopLabelInChromium) {
  // A real CIFAR-10 test image as a PNG, through the page.
  testing::TempDir dir;
  const testing::WebPageRun run = testing::RunWebPage(server_->url(), "cifar", dir.path());
  if (!run.skip.empty()) GTEST_SKIP() << run.skip;
  const std::string& out = run.output;
  ASSERT_EQ(run.exit_code, 0) << out;
  std::ifstream in(run.png, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto expected = Http(Url("/predict?model=cifar&top_k=1"), Post(bytes, {"Content-Type: image/png"}));
  ASSERT_EQ(expected.status, 200) << expected.body;
  const std::string label = json::parse(expected.body)["predictions"][0]["label"];
  auto j = json::parse(out.substr(out.find('{')), nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["top1"], label) << out;
  EXPECT_EQ(j["bars"], 5) << out;
  EXPECT_NE(j["latency"].get<std::string>().find("ms"), std::string::npos) << out;
  // The live panel shows throughput beside the latency percentiles.
  for (const char* row : {"images/s", "p50 ms", "p95 ms", "p99 ms", "requests", "errors"}) {
    EXPECT_TRUE(j["live"].contains(row)) << row << ": " << out;
  }
}

// A byte that is not UTF-8 in a name echoed into an error (%FF decodes to 0xFF) gets a valid
// JSON error body (the byte replaced), and the server goes on serving.
TEST_F(ServeTest, NonUtf8InAnErrorMessageIsValidJson) {
  for (const char* path : {"/v2/models/%FF", "/v2/models/%FF%FE/ready", "/v2/models/a%C3/infer"}) {
    SCOPED_TRACE(path);
    HttpRequest r;
    if (std::string(path).ends_with("/infer")) {
      r.method = "POST";
      r.body = "{}";
    }
    auto res = Http(Url(path), r);
    EXPECT_GE(res.status, 400);
    EXPECT_LT(res.status, 500);
    auto j = json::parse(res.body, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << res.body;
    EXPECT_TRUE(j.contains("error")) << res.body;
  }
  EXPECT_EQ(Http(Url("/v2/health/live")).status, 200);
}

// The browser's own GET /favicon.ico gets an icon, and neither it nor a 404 for an unknown path
// counts as an error in /stats; a failed inference does.
TEST_F(ServeTest, FaviconAndErrorsAsAnOperatorMeansThem) {
  auto icon = Http(Url("/favicon.ico"));
  EXPECT_EQ(icon.status, 200);
  EXPECT_EQ(icon.headers["content-type"], "image/svg+xml");
  EXPECT_NE(icon.body.find("<svg"), std::string::npos);
  auto errors = [&] { return json::parse(Http(Url("/stats")).body)["errors_total"].get<int64_t>(); };
  auto client_errors = [&] {
    return json::parse(Http(Url("/stats")).body)["client_errors_total"].get<int64_t>();
  };
  const int64_t before = errors(), client_before = client_errors();
  EXPECT_EQ(Http(Url("/favicon.ico")).status, 200);
  EXPECT_EQ(Http(Url("/no/such/page")).status, 404);
  EXPECT_EQ(errors(), before);
  EXPECT_EQ(client_errors(), client_before + 1);
  EXPECT_EQ(Http(Url("/v2/models/cifar/infer"), Post("{not json", {})).status, 400);
  EXPECT_EQ(errors(), before + 1);
}

// kiln loadgen against the suite's server: every mode runs, the CSV has perf_analyzer's
// columns and one row per concurrency level.
TEST_F(ServeTest, LoadgenMeasuresEveryMode) {
  testing::TempDir dir;
  Write(dir.path() / "images" / "a.png", Encode(".png", 32, 32));
  const fs::path csv = dir.path() / "out.csv";
  const std::string common = " --url " + server_->url() +
                             " -m cifar --concurrency 1:2:x2 --window-ms 200 --max-windows 4";
  auto r = testing::RunKiln("loadgen" + common + " --mode json --csv '" + csv.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(csv);
  std::string header, row;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("Concurrency,Inferences/Second,Client Send,", 0), 0U) << header;
  EXPECT_NE(header.find("Server Queue,Server Compute Input,Server Compute Infer"), std::string::npos);
  EXPECT_NE(header.find("p99 latency"), std::string::npos);
  int rows = 0;
  while (std::getline(in, row)) {
    ++rows;
    EXPECT_GT(std::stod(row.substr(row.find(',') + 1)), 0.0) << row;  // Inferences/Second
  }
  EXPECT_EQ(rows, 2);
  const std::vector<std::string> modes = {
      "--mode binary -b 2", "--mode image --images '" + (dir.path() / "images").string() + "'"};
  for (const std::string& mode : modes) {
    auto m = testing::RunKiln("loadgen" + common + " " + mode);
    EXPECT_EQ(m.exit_code, 0) << m.output;
    EXPECT_NE(m.output.find("p99 ms"), std::string::npos) << m.output;
  }
  EXPECT_EQ(testing::RunKiln("loadgen -m cifar --concurrency 4:1").exit_code, 2);
}

// Open loop at a fixed request rate: one CSV row per rate with perf_analyzer's "Request Rate"
// column, the achieved rate is the requested one (the server is far from saturated at these
// rates), and the server counted every request loadgen reports.
TEST_F(ServeTest, LoadgenHoldsAFixedRequestRate) {
  testing::TempDir dir;
  Write(dir.path() / "images" / "a.png", Encode(".png", 32, 32));
  const fs::path csv = dir.path() / "rate.csv";
  for (const char* distribution : {"constant", "poisson"}) {
    SCOPED_TRACE(distribution);
    auto r =
        testing::RunKiln("loadgen --url " + server_->url() + " -m cifar --mode image --images '" +
                         (dir.path() / "images").string() +
                         "' --request-rate 40:80:40 --window-ms 1000 --max-windows 4 "
                         "--request-distribution " +
                         distribution + " --csv '" + csv.string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("request/s"), std::string::npos) << r.output;
    std::ifstream in(csv);
    std::string header, row;
    std::getline(in, header);
    EXPECT_EQ(header.rfind("Request Rate,Inferences/Second,", 0), 0U) << header;
    std::vector<std::pair<double, double>> rows;  // requested, achieved
    while (std::getline(in, row)) {
      rows.emplace_back(std::stod(row), std::stod(row.substr(row.find(',') + 1)));
    }
    ASSERT_EQ(rows.size(), 2U) << r.output;
    for (const auto& [requested, achieved] : rows) {
      // Poisson arrivals over 3 s windows at 40/s vary by ~1/sqrt(120) = 9% per window.
      EXPECT_NEAR(achieved, requested, requested * 0.3) << r.output;
    }
  }
  // Rate and concurrency exclude each other; a rate must be positive.
  EXPECT_EQ(testing::RunKiln("loadgen -m cifar --request-rate 10 --concurrency 2").exit_code, 2);
  EXPECT_EQ(testing::RunKiln("loadgen -m cifar --request-rate 0").exit_code, 2);
  EXPECT_EQ(testing::RunKiln("loadgen -m cifar --request-rate abc").exit_code, 2);
}

// A loadgen CSV as rows of column -> value.
std::vector<std::map<std::string, double>> ReadLoadgenCsv(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::vector<std::string> header;
  std::vector<std::map<std::string, double>> rows;
  auto split = [](const std::string& text) {
    std::vector<std::string> out;
    std::stringstream ss(text);
    for (std::string cell; std::getline(ss, cell, ',');) out.push_back(cell);
    return out;
  };
  if (!std::getline(in, line)) return rows;
  header = split(line);
  while (std::getline(in, line)) {
    const auto cells = split(line);
    std::map<std::string, double> row;
    for (size_t i = 0; i < cells.size() && i < header.size(); ++i) {
      row[header[i]] = std::stod(cells[i]);
    }
    rows.push_back(row);
  }
  return rows;
}

// kiln loadgen over gRPC (Triton's GRPCInferenceService, perf_analyzer's -i grpc): raw and typed
// tensors both run, at a concurrency and at a rate; the server's split comes from gRPC
// ModelStatistics (non-zero queue and compute); what gRPC cannot carry is a usage error.
TEST_F(ServeTest, LoadgenMeasuresOverGrpc) {
  testing::TempDir dir;
  const std::string common = " -i grpc --url " + server_->grpc_address() +
                             " -m cifar --window-ms 300 --max-windows 4";
  const std::vector<std::string> loads = {"--mode binary --concurrency 1:2:x2",
                                          "--mode json -b 2 --concurrency 2",
                                          "--mode binary --request-rate 50 --latency-from send"};
  for (size_t i = 0; i < loads.size(); ++i) {
    SCOPED_TRACE(loads[i]);
    const fs::path csv = dir.path() / ("grpc" + std::to_string(i) + ".csv");
    auto r =
        testing::RunKiln("loadgen" + common + " " + loads[i] + " --csv '" + csv.string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto rows = ReadLoadgenCsv(csv);
    ASSERT_FALSE(rows.empty()) << r.output;
    for (const auto& row : rows) {
      EXPECT_GT(row.at("Inferences/Second"), 0.0);
      EXPECT_GT(row.at("Server Compute Infer"), 0.0);  // read over gRPC
      EXPECT_GT(row.at("response wait"), 0.0);
      EXPECT_GT(row.at("p99 latency"), 0.0);
    }
  }
  // /predict is HTTP only; gRPC takes host:port; nothing listening is a failure, not a hang.
  EXPECT_EQ(testing::RunKiln("loadgen" + common + " --mode image --images /tmp").exit_code, 2);
  auto url = testing::RunKiln("loadgen -i grpc --url " + server_->url() + " -m cifar");
  EXPECT_EQ(url.exit_code, 2) << url.output;
  EXPECT_NE(url.output.find("host:port"), std::string::npos) << url.output;
  auto none = testing::RunKiln("loadgen -i grpc --url 127.0.0.1:1 -m cifar --concurrency 1");
  EXPECT_EQ(none.exit_code, 1) << none.output;
  EXPECT_NE(none.output.find("cannot read the metadata"), std::string::npos) << none.output;
  EXPECT_EQ(testing::RunKiln("loadgen -m cifar -i udp").exit_code, 2);
}

// Rate mode's two latency definitions: one sender thread offered far more than the server
// answers falls further behind every second. Counted from each request's due time the latency
// grows with that backlog (seconds); counted from when a request left (perf_analyzer's
// definition) it stays one request's service time. So the first is many times the second.
TEST_F(ServeTest, LoadgenLatencyFromDueTimeCountsTheBacklog) {
  testing::TempDir dir;
  double p50[2] = {0, 0};
  const char* from[2] = {"due", "send"};
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(from[i]);
    const fs::path csv = dir.path() / (std::string(from[i]) + ".csv");
    auto r = testing::RunKiln("loadgen --url " + server_->url() +
                              " -m cifar --mode binary --request-rate 20000 --max-threads 1"
                              " --window-ms 500 --max-windows 4 --latency-from " +
                              from[i] + " --csv '" + csv.string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("cannot keep up"), std::string::npos) << r.output;
    const auto rows = ReadLoadgenCsv(csv);
    ASSERT_EQ(rows.size(), 1U) << r.output;
    p50[i] = rows[0].at("p50 latency");
  }
  // A backlog of at least 0.5 s against a request's service time on this model (milliseconds).
  EXPECT_GT(p50[0], 20 * p50[1]) << "due " << p50[0] << " us, send " << p50[1] << " us";
  EXPECT_EQ(testing::RunKiln("loadgen -m cifar --request-rate 10 --latency-from then").exit_code,
            2);
}

// 1,000 idle keep-alive connections hold no thread: another client is still served.
TEST_F(ServeTest, ThousandIdleConnectionsDoNotBlockOtherClients) {
  std::vector<int> sockets;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(server_->url().substr(server_->url().rfind(':') + 1))));
  for (int i = 0; i < 1000; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << i;
    sockets.push_back(fd);
  }
  // Half of them send a partial request and stall (slow clients).
  for (size_t i = 0; i < sockets.size(); i += 2) {
    const char partial[] = "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n";
    ASSERT_GT(send(sockets[i], partial, sizeof partial - 1, 0), 0);
  }
  HttpRequest fresh;
  fresh.fresh_connection = true;
  fresh.timeout_ms = 5000;
  auto r = Http(Url("/v2/health/live"), fresh);
  EXPECT_EQ(r.status, 200) << r.error;
  HttpRequest infer = Post(InferJson(RandomInput(1, 9), 1));
  infer.fresh_connection = true;
  infer.timeout_ms = 5000;
  EXPECT_EQ(Http(Url("/v2/models/cifar/infer"), infer).status, 200);
  for (int fd : sockets) close(fd);
}

// Explicit model control: load, unload, and a new version loaded under load drops nothing.
TEST(ServeRepositoryTest, LoadUnloadAndNewVersionUnderLoad) {
  auto repo = MakeRepository();
  fs::remove_all(repo->path() / "fixed");
  fs::remove_all(repo->path() / "pickle");
  ServerProcess server(repo->path(), {"--model-control-mode", "explicit", "--load-model", "cifar"});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string u = server.url();
  EXPECT_EQ(Http(u + "/v2/models/cifar/ready").status, 200);
  EXPECT_EQ(Http(u + "/v2/models/torch/ready").status, 400);  // not loaded
  auto load = Http(u + "/v2/repository/models/torch/load", Post(""));
  EXPECT_EQ(load.status, 200) << load.body;
  EXPECT_EQ(Http(u + "/v2/models/torch/ready").status, 200);
  auto unload = Http(u + "/v2/repository/models/torch/unload", Post(""));
  EXPECT_EQ(unload.status, 200) << unload.body;
  EXPECT_EQ(Http(u + "/v2/models/torch/ready").status, 400);
  EXPECT_EQ(Http(u + "/v2/repository/models/nope/load", Post("")).status, 404);

  // Clients keep sending while version 2 is added and loaded.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::mutex mu;
  std::string first_failure;
  std::set<std::string> versions_seen;
  std::vector<std::thread> clients;
  const std::string body = InferJson(RandomInput(2, 6), 2);
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      while (!stop) {
        auto r = Http(u + "/v2/models/cifar/infer", Post(body));
        std::lock_guard l(mu);
        if (r.status == 200) {
          ++ok;
          versions_seen.insert(json::parse(r.body)["model_version"].get<std::string>());
        } else {
          ++failed;
          if (first_failure.empty()) first_failure = std::to_string(r.status) + " " + r.body + r.error;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Write(repo->path() / "cifar" / "2" / "model.onnx", repo->onnx);
  auto reload = Http(u + "/v2/repository/models/cifar/load", Post(""));
  EXPECT_EQ(reload.status, 200) << reload.body;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0) << first_failure;
  EXPECT_GT(ok.load(), 0);
  EXPECT_TRUE(versions_seen.count("2")) << "version 2 never answered";
  auto meta = json::parse(Http(u + "/v2/models/cifar").body);
  EXPECT_EQ(meta["versions"], json::array({"2"}));  // version_policy latest 1
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// Triton's load with a configuration override: applied as a config.pbtxt would be (validated,
// the model reloaded with it), refused with 400 and the reason when it is not a valid config or
// does not load (the loaded version goes on serving), never ignored.
TEST(ServeRepositoryTest, LoadWithAConfigOverride) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {"--model-control-mode", "explicit", "--load-model", "cifar"});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string u = server.url();
  auto config = [&] { return json::parse(Http(u + "/v2/models/cifar/config").body); };
  auto load = [&](const json& body) {
    return Http(u + "/v2/repository/models/cifar/load", Post(body.dump()));
  };
  ASSERT_EQ(config()["max_batch_size"], 8);
  // A JSON ModelConfig: max_batch_size 4, one instance, a new preferred size.
  const json override_config = {
      {"name", "cifar"},
      {"platform", "onnxruntime_onnx"},
      {"max_batch_size", 4},
      {"input", {{{"name", "input"}, {"data_type", "TYPE_FP32"}, {"dims", {3, 32, 32}}}}},
      {"output", {{{"name", "logits"}, {"data_type", "TYPE_FP32"}, {"dims", {10}}}}},
      {"dynamic_batching", {{"preferred_batch_size", {2, 4}}}},
      {"instance_group", {{{"count", 1}, {"kind", "KIND_CPU"}}}}};
  auto applied = load({{"parameters", {{"config", override_config.dump()}}}});
  ASSERT_EQ(applied.status, 200) << applied.body;
  json c = config();
  EXPECT_EQ(c["max_batch_size"], 4);
  EXPECT_EQ(c["dynamic_batching"]["preferred_batch_size"], json::array({2, 4}));
  EXPECT_EQ(c["instance_group"][0]["count"], 1);
  EXPECT_EQ(Http(u + "/v2/models/cifar/infer", Post(InferJson(RandomInput(8, 1), 8))).status, 400);
  EXPECT_EQ(Http(u + "/v2/models/cifar/infer", Post(InferJson(RandomInput(4, 1), 4))).status, 200);
  EXPECT_NE(server.Log().find("loading with the configuration given in the load request"),
            std::string::npos);

  struct Bad {
    json body;
    std::string message;
  };
  const Bad bad[] = {
      {{{"parameters", {{"config", "max_batch_size: 2"}}}}, "not a valid model configuration in JSON"},
      {{{"parameters", {{"config", json{{"max_batch_sise", 2}}.dump()}}}}, "max_batch_sise"},
      {{{"parameters", {{"config", 7}}}}, "must be a string"},
      {{{"parameters", {{"config", json{{"name", "other"}}.dump()}}}}, "names model 'other'"},
      // Valid JSON, but the batch dimension is inside dims: the load fails, version 1 stays.
      {{{"parameters",
         {{"config", json{{"max_batch_size", 8},
                          {"input", {{{"name", "input"}, {"dims", {8, 3, 32, 32}}}}}}
                         .dump()}}}},
       "include the batch dimension"},
      {{{"parameters", {{"file:1/model.onnx", "AAAA"}}}}, "'file:1/model.onnx' is not supported"},
      {{{"parameters", {{"priority", 1}}}}, "'priority' is not supported"},
      {{{"parameters", "config"}}, "'parameters' must be a JSON object"},
  };
  for (const auto& b : bad) {
    auto r = load(b.body);
    EXPECT_EQ(r.status, 400) << b.body << " -> " << r.body;
    EXPECT_NE(r.body.find(b.message), std::string::npos) << b.body << " -> " << r.body;
    EXPECT_EQ(Http(u + "/v2/models/cifar/ready").status, 200) << b.body;
    EXPECT_EQ(config()["max_batch_size"], 4) << b.body;  // the override stays in force
  }
  // A load without parameters reads config.pbtxt again.
  ASSERT_EQ(Http(u + "/v2/repository/models/cifar/load", Post("")).status, 200);
  EXPECT_EQ(config()["max_batch_size"], 8);
  // Unload takes Triton's unload_dependents (Kiln has no ensembles), and nothing else.
  EXPECT_EQ(Http(u + "/v2/repository/models/cifar/unload",
                 Post(R"({"parameters": {"unload_dependents": "yes"}})"))
                .status,
            400);
  EXPECT_EQ(Http(u + "/v2/repository/models/cifar/unload",
                 Post(R"({"parameters": {"unload_dependents": true}})"))
                .status,
            200);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// Poll mode: a model folder that appears is loaded, one that disappears is unloaded.
TEST(ServeRepositoryTest, PollModeFollowsTheRepository) {
  auto repo = MakeRepository();
  for (const char* m : {"fixed", "pickle", "queue", "timeout"}) fs::remove_all(repo->path() / m);
  const fs::path staged = repo->path().parent_path() / (repo->path().filename().string() + "-torch");
  fs::rename(repo->path() / "torch", staged);
  ServerProcess server(repo->path(), {"--model-control-mode", "poll", "--repository-poll-secs", "1"});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string u = server.url();
  EXPECT_EQ(Http(u + "/v2/models/torch/ready").status, 400);
  EXPECT_EQ(Http(u + "/v2/repository/models/torch/load", Post("")).status, 400);  // poll mode
  fs::rename(staged, repo->path() / "torch");
  auto wait_for = [&](long status) {
    for (int i = 0; i < 150; ++i) {
      if (Http(u + "/v2/models/torch/ready").status == status) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  };
  EXPECT_TRUE(wait_for(200)) << server.Log();
  fs::remove_all(repo->path() / "torch");
  EXPECT_TRUE(wait_for(400)) << server.Log();
  EXPECT_EQ(Http(u + "/v2/models/cifar/ready").status, 200);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// SIGTERM under load: requests in flight are answered, later ones are refused, exit code 0.
TEST(ServeShutdownTest, SigtermDuringLoadDrainsAndExitsZero) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string u = server.url();
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, refused{0}, broken{0};
  std::mutex mu;
  std::string broken_example;
  std::vector<std::thread> clients;
  const std::string body = InferJson(RandomInput(4, 8), 4);
  for (int t = 0; t < 6; ++t) {
    clients.emplace_back([&] {
      while (!stop) {
        HttpRequest r = Post(body);
        r.fresh_connection = true;
        auto res = Http(u + "/v2/models/cifar/infer", r);
        if (res.status == 200) {
          ++ok;
        } else if (res.status == 503 || res.error.find("connect") != std::string::npos) {
          ++refused;  // after SIGTERM: "shutting down", or the listener is closed
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        } else {
          ++broken;
          std::lock_guard l(mu);
          broken_example = std::to_string(res.status) + " " + res.body + res.error;
        }
      }
    });
  }
  // Under load, then stopped: at least 500 ms and until some answers came back (a sanitizer
  // build on a busy machine can take longer than that for the first ones).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (int i = 0; i < 300 && ok.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const int before = ok.load();
  const int code = server.Terminate();
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(code, 0) << server.Log();
  EXPECT_GT(before, 0);
  EXPECT_EQ(broken.load(), 0) << broken_example;
  EXPECT_NE(server.Log().find("shutting down"), std::string::npos) << server.Log();
}

}  // namespace
}  // namespace kiln::serve
