// deploy/nginx/nginx.conf with Debian's real nginx in front of a real `kiln serve`, all on
// loopback ports chosen free at run time (no containers): what a client gets through nginx is
// what it gets from kiln directly (/predict uploads, KServe JSON and binary tensors, gRPC
// unary and streaming); nginx's own answers are JSON (413 over the body limit, 429 + Retry-After
// over the rate, 502 while kiln is down) and it recovers when kiln comes back. Then requests/s
// at concurrency 32 through nginx and direct, in alternating rounds of `kiln loadgen` (printed;
// no threshold). The configuration file is used as committed, with only its addresses and its
// /tmp and /dev/std* paths rewritten (and, for the throughput rounds only, the rate limit
// raised: 200 requests/s per client address is the point of the limit, not of the measurement).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "../serve/serve_client.h"
#include "grpc_service.grpc.pb.h"
#include "kiln/data/image.h"

namespace kiln::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = ::inference;
using json = nlohmann::json;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Replaces every occurrence of `from`, which must occur exactly `count` times: a change to
// nginx.conf that the rewrite no longer matches fails the test instead of testing another file.
void ReplaceExactly(std::string* text, const std::string& from, const std::string& to,
                    int count) {
  int found = 0;
  for (size_t at = text->find(from); at != std::string::npos;
       at = text->find(from, at + to.size())) {
    text->replace(at, from.size(), to);
    ++found;
  }
  EXPECT_EQ(found, count) << "deploy/nginx/nginx.conf: expected '" << from << "' " << count
                          << " times (tests/deploy/nginx_test.cc rewrites it)";
}

// Debian's nginx running deploy/nginx/nginx.conf in the foreground, rewritten to listen on free
// loopback ports and to proxy to the given kiln ports. Stopped (SIGQUIT, then SIGKILL) when it
// dies.
class NginxProcess {
 public:
  NginxProcess(int kiln_http, int kiln_grpc, const std::string& rate = "") {
    http_ = FreePort();
    do grpc_ = FreePort(); while (grpc_ == http_);
    do status_ = FreePort(); while (status_ == http_ || status_ == grpc_);
    std::string conf = ReadFile(fs::path(KILN_SOURCE_DIR) / "deploy" / "nginx" / "nginx.conf");
    const std::string dir = dir_.path().string();
    ReplaceExactly(&conf, "server kiln:8000", "server 127.0.0.1:" + std::to_string(kiln_http), 1);
    ReplaceExactly(&conf, "server kiln:8001", "server 127.0.0.1:" + std::to_string(kiln_grpc), 1);
    ReplaceExactly(&conf, "listen 8080 ", "listen 127.0.0.1:" + std::to_string(http_) + " ", 1);
    ReplaceExactly(&conf, "listen 8081 http2", "listen 127.0.0.1:" + std::to_string(grpc_) +
                   " http2", 1);
    ReplaceExactly(&conf, "listen 8082;", "listen 127.0.0.1:" + std::to_string(status_) + ";", 1);
    ReplaceExactly(&conf, " /tmp/", " " + dir + "/", 6);
    ReplaceExactly(&conf, "/dev/stdout", dir + "/access.log", 1);
    ReplaceExactly(&conf, "/dev/stderr", dir + "/error.log", 1);
    if (!rate.empty()) ReplaceExactly(&conf, "rate=200r/s", "rate=" + rate, 1);
    Write(dir_.path() / "nginx.conf", conf);
    std::vector<std::string> args = {"nginx", "-p", dir + "/", "-c", dir + "/nginx.conf",
                                     "-e", dir + "/error.log", "-g", "daemon off;"};
    const Spawned spawned = SpawnUntilAnswering(args, dir_.path() / "stdout.log", status_url(),
                                                std::chrono::seconds(10));
    pid_ = spawned.pid;
    started_ = spawned.answering;
  }
  ~NginxProcess() {
    if (pid_ <= 0) return;
    kill(pid_, SIGQUIT);  // graceful: finish requests in flight
    for (int i = 0; i < 200; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  NginxProcess(const NginxProcess&) = delete;
  NginxProcess& operator=(const NginxProcess&) = delete;

  bool started() const { return started_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(http_); }
  std::string grpc_address() const { return "127.0.0.1:" + std::to_string(grpc_); }
  std::string status_url() const {
    return "http://127.0.0.1:" + std::to_string(status_) + "/stub_status";
  }
  std::string Log() const {
    return ReadFile(dir_.path() / "error.log") + ReadFile(dir_.path() / "stdout.log");
  }
  std::string AccessLog() const { return ReadFile(dir_.path() / "access.log"); }

 private:
  TempDir dir_;
  pid_t pid_ = -1;
  int http_ = 0, grpc_ = 0, status_ = 0;
  bool started_ = false;
};

HttpRequest Post(const std::string& body, std::vector<std::string> headers = {}) {
  HttpRequest r;
  r.method = "POST";
  r.body = body;
  r.headers = std::move(headers);
  if (r.headers.empty()) r.headers.push_back("Content-Type: application/json");
  return r;
}

// An error answered by nginx itself: the status, a JSON body {"error": "..."}.
void ExpectJsonError(const HttpResult& r, long status, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(r.status, status) << r.error << " " << r.body;
  EXPECT_EQ(r.headers.count("content-type") ? r.headers.at("content-type") : "",
            "application/json");
  json j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.body;
  ASSERT_TRUE(j.contains("error") && j["error"].is_string()) << r.body;
  EXPECT_FALSE(j["error"].get<std::string>().empty());
}

std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 30) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return c;
}

pb::ModelInferRequest GrpcInfer(const std::vector<float>& input, int64_t batch,
                                const std::string& id = "") {
  pb::ModelInferRequest r;
  r.set_model_name("cifar");
  r.set_id(id);
  auto* in = r.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {batch, int64_t{3}, int64_t{32}, int64_t{32}}) in->add_shape(d);
  r.add_raw_input_contents(std::string(reinterpret_cast<const char*>(input.data()),
                                       input.size() * sizeof(float)));
  return r;
}

std::vector<float> GrpcFloats(const pb::ModelInferResponse& r) {
  if (r.raw_output_contents_size() != 1) return {};
  const std::string& raw = r.raw_output_contents(0);
  std::vector<float> out(raw.size() / sizeof(float));
  std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
  return out;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// One repository, one kiln and one nginx for the whole suite (starting them is most of the
// time); the 502 test stops kiln and starts it again on the same ports.
class NginxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = MakeRepository().release();
    kiln_ = new ServerProcess(repo_->path(), {});
    ASSERT_TRUE(kiln_->started()) << kiln_->Log();
    nginx_ = new NginxProcess(kiln_->port(), kiln_->grpc_port());
    ASSERT_TRUE(nginx_->started()) << nginx_->Log();
  }
  static void TearDownTestSuite() {
    delete nginx_;
    delete kiln_;
    delete repo_;
  }
  void TearDown() override {
    if (HasFailure() && nginx_ != nullptr) {
      std::cerr << "nginx log:\n" << nginx_->Log() << "\naccess log (tail):\n"
                << nginx_->AccessLog().substr(nginx_->AccessLog().size() > 4000
                                                  ? nginx_->AccessLog().size() - 4000 : 0);
    }
  }
  static std::string Direct(const std::string& path) { return kiln_->url() + path; }
  static std::string Proxied(const std::string& path) { return nginx_->url() + path; }

  static Repository* repo_;
  static ServerProcess* kiln_;
  static NginxProcess* nginx_;
};

Repository* NginxTest::repo_ = nullptr;
ServerProcess* NginxTest::kiln_ = nullptr;
NginxProcess* NginxTest::nginx_ = nullptr;

TEST_F(NginxTest, PredictUploadsAnswerAsDirect) {
  const data::ImageSet& test = SharedDataset().test;
  for (int64_t i = 0; i < 5; ++i) {
    SCOPED_TRACE("test image " + std::to_string(i));
    auto png = data::EncodeImage(test.image(i), test.channels, test.height, test.width,
                                 data::ImageFormat::kPng);
    KILN_ASSERT_RESULT_OK(png);
    HttpRequest form;
    form.method = "POST";
    form.form = {{"file", *png, "test.png"}, {"top_k", "3", ""}, {"model", "cifar", ""}};
    auto direct = Http(Direct("/predict"), form);
    auto proxied = Http(Proxied("/predict"), form);
    ASSERT_EQ(direct.status, 200) << direct.body;
    ASSERT_EQ(proxied.status, 200) << proxied.body;
    auto d = json::parse(direct.body)["predictions"];
    auto p = json::parse(proxied.body)["predictions"];
    ASSERT_EQ(d.size(), 3U);
    ASSERT_EQ(p.size(), d.size());
    for (size_t k = 0; k < d.size(); ++k) {
      EXPECT_EQ(p[k]["label"], d[k]["label"]);
      EXPECT_NEAR(p[k]["probability"].get<double>(), d[k]["probability"].get<double>(), 1e-6);
    }
    // The same upload as a raw body.
    auto raw = Http(Proxied("/predict?model=cifar&top_k=3"), Post(*png, {"Content-Type: image/png"}));
    ASSERT_EQ(raw.status, 200) << raw.body;
    EXPECT_EQ(json::parse(raw.body)["predictions"][0]["label"], d[0]["label"]);
  }
}

TEST_F(NginxTest, KServeJsonAndBinaryAnswerAsDirect) {
  const auto input = RandomInput(4, 7);
  const auto expected = Reference((repo_->path() / "cifar" / "1" / "model.onnx").string(), input, 4);
  auto direct = Http(Direct("/v2/models/cifar/infer"), Post(InferJson(input, 4, R"({"id": "a1"})")));
  auto proxied = Http(Proxied("/v2/models/cifar/infer"), Post(InferJson(input, 4, R"({"id": "a1"})")));
  ASSERT_EQ(direct.status, 200) << direct.body;
  ASSERT_EQ(proxied.status, 200) << proxied.body;
  auto dj = json::parse(direct.body), pj = json::parse(proxied.body);
  EXPECT_EQ(pj["id"], "a1");
  EXPECT_EQ(pj["outputs"][0]["shape"], dj["outputs"][0]["shape"]);
  const auto pd = pj["outputs"][0]["data"].get<std::vector<float>>();
  EXPECT_LT(MaxAbsDiff(pd, dj["outputs"][0]["data"].get<std::vector<float>>()), 1e-5f);
  EXPECT_LT(MaxAbsDiff(pd, expected), 1e-5f);

  // Binary tensors both ways: the header length and raw bytes survive the proxy.
  json header = {{"inputs", {{{"name", "input"}, {"shape", {4, 3, 32, 32}}, {"datatype", "FP32"},
                              {"parameters", {{"binary_data_size", input.size() * 4}}}}}},
                 {"outputs", {{{"name", "logits"}, {"parameters", {{"binary_data", true}}}}}}};
  const std::string hs = header.dump();
  std::string body = hs;
  body.append(reinterpret_cast<const char*>(input.data()), input.size() * 4);
  const std::vector<std::string> headers = {
      "Inference-Header-Content-Length: " + std::to_string(hs.size()),
      "Content-Type: application/octet-stream"};
  auto bd = Http(Direct("/v2/models/cifar/infer"), Post(body, headers));
  auto bp = Http(Proxied("/v2/models/cifar/infer"), Post(body, headers));
  ASSERT_EQ(bd.status, 200) << bd.body;
  ASSERT_EQ(bp.status, 200) << bp.body;
  EXPECT_EQ(bp.headers["content-type"], "application/octet-stream");
  ASSERT_EQ(bp.headers["inference-header-content-length"],
            bd.headers["inference-header-content-length"]);
  const size_t json_len = std::stoul(bp.headers["inference-header-content-length"]);
  ASSERT_EQ(bp.body.size(), json_len + 40 * 4);
  std::vector<float> raw(40);
  std::memcpy(raw.data(), bp.body.data() + json_len, 40 * 4);
  EXPECT_LT(MaxAbsDiff(raw, expected), 1e-5f);

  // Errors kiln writes pass through unchanged (nginx answers only what it answers itself).
  auto nd = Http(Direct("/v2/models/nope/infer"), Post(InferJson(input, 1)));
  auto np = Http(Proxied("/v2/models/nope/infer"), Post(InferJson(input, 1)));
  EXPECT_EQ(np.status, 404);
  EXPECT_EQ(np.body, nd.body);
  EXPECT_EQ(Http(Proxied("/v2/health/ready")).status, 200);
  EXPECT_EQ(Http(Proxied("/v2/models/cifar/ready")).status, 200);
}

TEST_F(NginxTest, GrpcThroughNginx) {
  auto channel = grpc::CreateChannel(nginx_->grpc_address(), grpc::InsecureChannelCredentials());
  auto stub = pb::GRPCInferenceService::NewStub(channel);
  pb::ServerReadyResponse ready;
  auto s = stub->ServerReady(Ctx().get(), {}, &ready);
  ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message() << "\n" << nginx_->Log();
  EXPECT_TRUE(ready.ready());
  const auto input = RandomInput(3, 9);
  const auto expected = Reference((repo_->path() / "cifar" / "1" / "model.onnx").string(), input, 3);
  pb::ModelInferResponse resp;
  s = stub->ModelInfer(Ctx().get(), GrpcInfer(input, 3, "g1"), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.id(), "g1");
  EXPECT_LT(MaxAbsDiff(GrpcFloats(resp), expected), 1e-5f);

  // A bidirectional stream of three requests through the proxy.
  auto ctx = Ctx();
  auto stream = stub->ModelStreamInfer(ctx.get());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->Write(GrpcInfer(RandomInput(1, 20 + i), 1, "s" + std::to_string(i))));
  }
  ASSERT_TRUE(stream->WritesDone());
  std::map<std::string, std::vector<float>> got;
  pb::ModelStreamInferResponse r;
  while (stream->Read(&r)) got[r.infer_response().id()] = GrpcFloats(r.infer_response());
  s = stream->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.size(), 3U);
  for (int i = 0; i < 3; ++i) {
    const auto ref = Reference((repo_->path() / "cifar" / "1" / "model.onnx").string(),
                               RandomInput(1, 20 + i), 1);
    EXPECT_LT(MaxAbsDiff(got["s" + std::to_string(i)], ref), 1e-5f) << i;
  }
}

TEST_F(NginxTest, BodyOverTheLimitIs413Json) {
  // 5 MiB: over the 4 MiB KServe limit (nginx.conf says how 4 MiB follows from the model).
  auto r = Http(Proxied("/v2/models/cifar/infer"), Post(std::string(5 << 20, ' ')));
  ExpectJsonError(r, 413, "KServe body of 5 MiB");
  // /predict takes up to kiln's 16 MiB image limit plus the multipart envelope: 18 MiB is over.
  auto p = Http(Proxied("/predict"), Post(std::string(18 << 20, 'x'), {"Content-Type: image/png"}));
  ExpectJsonError(p, 413, "/predict body of 18 MiB");
  // Under the limit, the same route reaches kiln (which refuses a body that is not JSON).
  auto ok = Http(Proxied("/v2/models/cifar/infer"), Post(std::string(3 << 20, ' ')));
  EXPECT_EQ(ok.status, 400) << ok.body;
}

TEST_F(NginxTest, BurstOverTheRateIs429JsonWithRetryAfter) {
  // 8 clients x 250 requests at once from one address: far over 200/s with bursts of 400. The
  // requests are cheap (a body kiln refuses with 400), so the burst arrives within a second or
  // two even on a busy machine.
  std::atomic<int> limited{0}, passed{0}, other{0};
  std::mutex mu;
  HttpResult sample;
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < 250; ++i) {
        auto r = Http(Proxied("/v2/models/cifar/infer"), Post("{}"));
        if (r.status == 429) {
          if (limited++ == 0) {
            std::lock_guard<std::mutex> lock(mu);
            sample = r;
          }
        } else if (r.status == 400) {
          ++passed;
        } else {
          ++other;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  std::cout << "burst of 2000: " << passed << " reached kiln (400), " << limited
            << " limited (429), " << other << " other\n";
  EXPECT_GT(limited.load(), 0);
  EXPECT_GE(passed.load(), 400);  // the burst allowance was served
  EXPECT_EQ(other.load(), 0);
  ExpectJsonError(sample, 429, "rate limited");
  EXPECT_EQ(sample.headers["retry-after"], "1");
  // Health and metadata are never limited, even right after the burst.
  EXPECT_EQ(Http(Proxied("/v2/health/ready")).status, 200);
  // The limit lets requests through again once the client slows down.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(Http(Proxied("/v2/models/cifar/infer"), Post(InferJson(RandomInput(1, 3), 1))).status,
            200);
}

TEST_F(NginxTest, KilnDownIs502JsonThenRecovers) {
  const ServerPorts ports = kiln_->ports();
  ASSERT_EQ(kiln_->Terminate(), 0) << kiln_->Log();
  auto r = Http(Proxied("/v2/health/ready"));
  ExpectJsonError(r, 502, "kiln stopped");
  ExpectJsonError(Http(Proxied("/v2/models/cifar/infer"), Post(InferJson(RandomInput(1, 1), 1))),
                  502, "infer while kiln is stopped");
  // gRPC clients get UNAVAILABLE, not an HTTP error page.
  auto stub = pb::GRPCInferenceService::NewStub(
      grpc::CreateChannel(nginx_->grpc_address(), grpc::InsecureChannelCredentials()));
  pb::ServerLiveResponse live;
  auto s = stub->ServerLive(Ctx(10).get(), {}, &live);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  // kiln back on the same ports: nginx serves again without a reload.
  delete kiln_;
  kiln_ = new ServerProcess(repo_->path(), {}, ports);
  ASSERT_TRUE(kiln_->started()) << kiln_->Log();
  long status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    status = Http(Proxied("/v2/health/ready")).status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(status, 200);
  EXPECT_EQ(Http(Proxied("/v2/models/cifar/infer"), Post(InferJson(RandomInput(1, 2), 1))).status,
            200);
  s = stub->ServerLive(Ctx().get(), {}, &live);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// Requests/s at concurrency 32 through nginx and direct, `kiln loadgen --mode binary` (KServe
// binary tensors, batch 1: the cheapest request, where a proxy's cost shows most), three rounds
// each, alternating, in the same run. Printed for docs/deploy.md; no threshold.
TEST_F(NginxTest, ThroughputThroughNginxAndDirect) {
  NginxProcess unlimited(kiln_->port(), kiln_->grpc_port(), "1000000r/s");
  ASSERT_TRUE(unlimited.started()) << unlimited.Log();
  TempDir dir;
  auto measure = [&](const std::string& url, const std::string& name) -> double {
    const fs::path csv = dir.path() / (name + ".csv");
    auto r = RunKiln("loadgen --url " + url + " -m cifar --mode binary --concurrency 32"
                     " --window-ms 1000 --max-windows 6 --csv " + csv.string());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::istringstream in(ReadFile(csv));
    std::string line;
    std::getline(in, line);  // header
    std::getline(in, line);
    return line.empty() ? 0 : std::stod(line.substr(line.find(',') + 1));
  };
  std::vector<double> direct, proxied;
  for (int round = 0; round < 3; ++round) {
    direct.push_back(measure(kiln_->url(), "direct" + std::to_string(round)));
    proxied.push_back(measure(unlimited.url(), "nginx" + std::to_string(round)));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::ostringstream out;
  out << "requests/s at concurrency 32 (kiln loadgen --mode binary, 3 alternating rounds):\n";
  for (const auto* series : {&direct, &proxied}) {
    out << (series == &direct ? "  direct " : "  nginx  ");
    for (double v : *series) out << " " << static_cast<int64_t>(v);
    out << "  median " << static_cast<int64_t>(median(*series)) << " (min "
        << static_cast<int64_t>(*std::min_element(series->begin(), series->end())) << ", max "
        << static_cast<int64_t>(*std::max_element(series->begin(), series->end())) << ")\n";
  }
  out << "  nginx / direct (medians): " << median(proxied) / median(direct) << "\n";
  std::cout << out.str();
  for (double v : direct) EXPECT_GT(v, 0);
  for (double v : proxied) EXPECT_GT(v, 0);
}

}  // namespace
}  // namespace kiln::testing
