#include "serve_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <onnx/onnx_pb.h>
#include <signal.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "../test_util.h"
#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/data/image.h"
#include "kiln/export/onnx_export.h"
#include "kiln/export/torchscript_export.h"
#include "kiln/train/checkpoint.h"

extern char** environ;

namespace kiln::testing {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

size_t Append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

size_t Header(char* data, size_t size, size_t n, void* out) {
  std::string line(data, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    std::string value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ')) value.erase(value.begin());
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n')) value.pop_back();
    (*static_cast<std::map<std::string, std::string>*>(out))[name] = value;
  }
  return size * n;
}

struct CurlInit {
  CurlInit() { curl_global_init(CURL_GLOBAL_ALL); }
};

}  // namespace

HttpResult Http(const std::string& url, const HttpRequest& r) {
  static CurlInit init;
  // One handle per thread: its connection stays alive between calls (keep-alive).
  thread_local std::unique_ptr<CURL, void (*)(CURL*)> handle(curl_easy_init(), curl_easy_cleanup);
  CURL* c = handle.get();
  curl_easy_reset(c);
  HttpResult out;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &out.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, Header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &out.headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, r.timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (r.fresh_connection) {
    curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
  }
  curl_slist* headers = nullptr;
  for (const auto& h : r.headers) headers = curl_slist_append(headers, h.c_str());
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_mime* mime = nullptr;
  if (!r.form.empty()) {
    mime = curl_mime_init(c);
    for (const auto& f : r.form) {
      curl_mimepart* part = curl_mime_addpart(mime);
      curl_mime_name(part, f.name.c_str());
      curl_mime_data(part, f.value.data(), f.value.size());
      if (!f.filename.empty()) curl_mime_filename(part, f.filename.c_str());
    }
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
  } else if (r.method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, r.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
  } else if (r.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, r.method.c_str());
  }
  const CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK) {
    out.error = curl_easy_strerror(rc);
  } else {
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out.status);
  }
  curl_slist_free_all(headers);
  if (mime != nullptr) curl_mime_free(mime);
  return out;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

Spawned SpawnUntilAnswering(std::vector<std::string> args, const std::filesystem::path& log,
                            const std::string& url, std::chrono::seconds timeout) {
  Spawned out;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  if (posix_spawnp(&out.pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) out.pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  if (out.pid < 0) return out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(out.pid, &status, WNOHANG) == out.pid) {
      out.pid = -1;
      return out;
    }
    HttpRequest probe;
    probe.timeout_ms = 1000;
    probe.fresh_connection = true;
    if (Http(url, probe).status == 200) {
      out.answering = true;
      return out;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return out;
}

ServerProcess::ServerProcess(const std::filesystem::path& repository,
                             const std::vector<std::string>& extra, const ServerPorts& ports,
                             bool grpc_port) {
  port_ = ports.http > 0 ? ports.http : FreePort();
  metrics_port_ = ports.metrics;
  while (metrics_port_ <= 0 || metrics_port_ == port_) metrics_port_ = FreePort();
  if (grpc_port) {
    grpc_port_ = ports.grpc;
    while (grpc_port_ <= 0 || grpc_port_ == port_ || grpc_port_ == metrics_port_) {
      grpc_port_ = FreePort();
    }
  }
  log_ = std::filesystem::temp_directory_path() /
         ("kiln-serve-" + std::to_string(getpid()) + "-" + std::to_string(port_) + ".log");
  std::vector<std::string> args = {KilnBinary(),      "serve",
                                   "--models",        repository.string(),
                                   "--port",          std::to_string(port_),
                                   "--metrics-port",  std::to_string(metrics_port_)};
  if (grpc_port) args.insert(args.end(), {"--grpc-port", std::to_string(grpc_port_)});
  args.insert(args.end(), extra.begin(), extra.end());
  const Spawned spawned = SpawnUntilAnswering(args, log_, url() + "/v2/health/live",
                                              std::chrono::seconds(120));
  pid_ = spawned.pid;
  started_ = spawned.answering;
}

ServerProcess::~ServerProcess() {
  // A clean stop, so that a sanitized server (KILN_BINARY) is checked through its shutdown too.
  if (pid_ > 0) Terminate(60);
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  CheckSanitizerReport();
  std::error_code ec;
  std::filesystem::remove(log_, ec);
}

std::string ServerProcess::Log() const {
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int ServerProcess::Terminate(int timeout_s) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  return Wait(timeout_s);
}

int ServerProcess::Wait(int timeout_s) {
  if (pid_ <= 0) return -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      CheckSanitizerReport();
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

void ServerProcess::CheckSanitizerReport() {
  if (checked_ || log_.empty()) return;
  checked_ = true;
  const std::string report = SanitizerReport(Log());
  EXPECT_TRUE(report.empty()) << "sanitizer report from `kiln serve` (port " << port_ << "):\n"
                              << report;
}

// ---------------------------------------------------------------------------------------------
// A small model repository.

const std::vector<std::string> kClasses = {"airplane", "automobile", "bird", "cat", "deer",
                                           "dog",      "frog",       "horse", "ship", "truck"};

namespace {

// An untrained seed-cnn (seeded): the server must give exactly what the engine gives, so the
// weights need not be trained.
train::Checkpoint TinyModel() {
  torch::manual_seed(11);
  auto model = train::CreateModel("seed-cnn", {});
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  train::Checkpoint ckpt;
  ckpt.meta.arch = "seed-cnn";
  ckpt.meta.class_names = kClasses;
  ckpt.meta.normalization.mean = {0.49f, 0.48f, 0.45f};
  ckpt.meta.normalization.std = {0.25f, 0.24f, 0.26f};
  ckpt.model = *model;
  ckpt.model->eval();
  return ckpt;
}

constexpr const char* kCifarConfig = R"(
name: "cifar"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 3000 }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
)";

// A queue that holds two requests for 5 s: the third must be refused at once.
constexpr const char* kQueueConfig = R"(
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching {
  max_queue_delay_microseconds: 5000000
  default_queue_policy { max_queue_size: 2 }
}
)";

// Requests time out after 200 ms in a queue that would wait 5 s for a batch.
constexpr const char* kTimeoutConfig = R"(
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching {
  max_queue_delay_microseconds: 5000000
  default_queue_policy { default_timeout_microseconds: 200000 }
}
)";

// The classic mistake: max_batch_size > 0 for a model exported with a fixed batch of 1.
constexpr const char* kFixedConfig = R"(
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
)";

}  // namespace

void Write(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary) << text;
}

std::string FixedBatchOnnx(const std::string& bytes) {
  onnx::ModelProto m;
  EXPECT_TRUE(m.ParseFromString(bytes));
  for (auto* list : {m.mutable_graph()->mutable_input(), m.mutable_graph()->mutable_output()}) {
    for (auto& vi : *list) {
      auto* dim = vi.mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0);
      dim->clear_dim_param();
      dim->set_dim_value(1);
    }
  }
  return m.SerializeAsString();
}

// cifar (ONNX, full config, labels), torch (TorchScript, no config), queue, and two broken
// models: fixed (fixed batch + max_batch_size 8) and pickle (a torch.save file, not TorchScript).
std::unique_ptr<Repository> MakeRepository() {
  auto repo = std::make_unique<Repository>();
  const auto ckpt = TinyModel();
  auto bytes = exporter::BuildOnnxModel(ckpt, {});
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  repo->onnx = *bytes;
  const fs::path r = repo->path();
  Write(r / "cifar" / "config.pbtxt", kCifarConfig);
  std::string labels;
  for (const auto& c : kClasses) labels += c + "\n";
  Write(r / "cifar" / "labels.txt", labels);
  Write(r / "cifar" / "1" / "model.onnx", repo->onnx);
  Write(r / "queue" / "config.pbtxt", kQueueConfig);
  Write(r / "queue" / "1" / "model.onnx", repo->onnx);
  Write(r / "timeout" / "config.pbtxt", kTimeoutConfig);
  Write(r / "timeout" / "1" / "model.onnx", repo->onnx);
  Write(r / "fixed" / "config.pbtxt", kFixedConfig);
  Write(r / "fixed" / "1" / "model.onnx", FixedBatchOnnx(repo->onnx));
  Write(r / "pickle" / "1" / "model.pt", std::string("\x80\x02}q\x00(X\x01", 8));
  fs::create_directories(r / "torch" / "1");
  Status s = exporter::ExportTorchScript(ckpt, r / "torch" / "1" / "model.pt", "");
  EXPECT_TRUE(s.ok()) << s.ToString();
  return repo;
}

WebPageRun RunWebPage(const std::string& url, const std::string& model, const fs::path& dir) {
  WebPageRun run;
  const fs::path root = fs::path(KILN_SOURCE_DIR);
  const fs::path script = root / "tests" / "serve" / "web_page_test.mjs";
  if (!fs::exists(root / "node_modules" / "playwright-core") || !fs::exists("/usr/bin/chromium") ||
      std::system("command -v node >/dev/null") != 0) {
    run.skip = "needs node, /usr/bin/chromium and node_modules/playwright-core (setup.sh)";
    return run;
  }
  const data::ImageSet& test = SharedDataset().test;
  auto png = data::EncodeImage(test.image(0), test.channels, test.height, test.width,
                               data::ImageFormat::kPng);
  EXPECT_TRUE(png.ok()) << png.status().ToString();
  run.png = dir / "test0.png";
  Write(run.png, png.ok() ? *png : "");
  const std::string cmd = "cd '" + root.string() + "' && node '" + script.string() + "' '" + url +
                          "' '" + run.png.string() + "' " + model + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return run;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) run.output.append(buf, n);
  run.exit_code = WEXITSTATUS(pclose(p));
  return run;
}

// Logits of `batch` samples computed directly by ONNX Runtime, one sample at a time.
std::vector<float> Reference(const std::string& model_file, const std::vector<float>& input,
                             int64_t batch) {
  backend::BackendOptions o;
  o.model_path = model_file;
  o.intra_op_threads = 1;
  auto engine = backend::CreateBackend("onnxruntime", o);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<float> out(static_cast<size_t>(batch * 10));
  for (int64_t i = 0; i < batch; ++i) {
    Status s = (*engine)->Run(input.data() + i * 3072, 1, out.data() + i * 10);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return out;
}

std::vector<float> RandomInput(int64_t batch, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(static_cast<size_t>(batch * 3072));
  for (auto& x : v) x = d(rng);
  return v;
}

std::string InferJson(const std::vector<float>& input, int64_t batch, const std::string& extra) {
  json j = {{"inputs",
             {{{"name", "input"}, {"shape", {batch, 3, 32, 32}}, {"datatype", "FP32"},
               {"data", input}}}}};
  if (!extra.empty()) j.update(json::parse(extra));
  return j.dump();
}

}  // namespace kiln::testing
