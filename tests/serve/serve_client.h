// Test helpers for the serving tests (HTTP and gRPC): a small model repository, a real
// `kiln serve` process on loopback and a small libcurl HTTP client.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.h"

namespace kiln::testing {

struct HttpResult {
  long status = 0;           // 0: no HTTP answer (see `error`)
  std::string error;         // libcurl's message when the transfer failed
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

struct HttpRequest {
  std::string method = "GET";
  std::string body;
  std::vector<std::string> headers;  // "Name: value"
  // multipart/form-data: (name, value, filename); a non-empty filename makes it a file part.
  struct Field {
    std::string name, value, filename;
  };
  std::vector<Field> form;
  long timeout_ms = 30000;
  bool fresh_connection = false;
};

HttpResult Http(const std::string& url, const HttpRequest& request = {});

// Starts `args` (args[0] looked up in PATH) with stdout and stderr into `log`, then asks `url`
// every 50 ms until it answers 200 or `timeout` passes. `pid` is -1 when the program could not
// start or exited first; `answering` says whether it came up.
struct Spawned {
  pid_t pid = -1;
  bool answering = false;
};
Spawned SpawnUntilAnswering(std::vector<std::string> args, const std::filesystem::path& log,
                            const std::string& url, std::chrono::seconds timeout);

// A free TCP port on 127.0.0.1 (bound, then released).
int FreePort();

// `kiln serve --models <repo> --port P --metrics-port Q --grpc-port G <extra>` (free ports),
// waited for until /v2/health/live answers; started() is false when it exited first. The
// destructor stops it: SIGTERM, SIGKILL after 60 s, so that a sanitized server's shutdown is
// checked too. A sanitizer report in its log fails the test, once the server has exited
// (Terminate or the destructor); the server may be a sanitized build started by unsanitized
// tests (KILN_BINARY).
// The ports of a ServerProcess; 0 = a free one, chosen at start.
struct ServerPorts {
  int http = 0, metrics = 0, grpc = 0;
};

class ServerProcess {
 public:
  ServerProcess(const std::filesystem::path& repository, const std::vector<std::string>& extra)
      : ServerProcess(repository, extra, /*grpc_port=*/true) {}
  // grpc_port false: no --grpc-port of its own (the test passes one in `extra`, or none).
  ServerProcess(const std::filesystem::path& repository, const std::vector<std::string>& extra,
                bool grpc_port)
      : ServerProcess(repository, extra, ServerPorts{}, grpc_port) {}
  // On given ports, e.g. those of a server stopped before, to start it again behind a proxy.
  ServerProcess(const std::filesystem::path& repository, const std::vector<std::string>& extra,
                const ServerPorts& ports, bool grpc_port = true);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool started() const { return started_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string metrics_url() const { return "http://127.0.0.1:" + std::to_string(metrics_port_); }
  std::string grpc_address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  ServerPorts ports() const { return {port_, metrics_port_, grpc_port_}; }
  int port() const { return port_; }
  int grpc_port() const { return grpc_port_; }
  std::string Log() const;  // stderr + stdout so far
  // SIGTERM, then waits; returns the exit code (-1 when killed by a signal or timed out).
  int Terminate(int timeout_s = 60);
  // Waits for the process to exit by itself; the exit code, or 128 + the signal that ended it,
  // or -1 on timeout.
  int Wait(int timeout_s = 60);
  pid_t pid() const { return pid_; }

 private:
  void CheckSanitizerReport();

  pid_t pid_ = -1;
  int port_ = 0, metrics_port_ = 0, grpc_port_ = 0;
  std::filesystem::path log_;
  bool started_ = false;
  bool checked_ = false;  // the log was searched for a sanitizer report
};

// The CIFAR-10 class names (the test models' labels.txt).
extern const std::vector<std::string> kClasses;

// Writes `text` to `file`, creating its folders.
void Write(const std::filesystem::path& file, const std::string& text);

struct Repository {
  TempDir dir;
  std::string onnx;  // the model file's bytes
  std::filesystem::path path() const { return dir.path(); }
};

// One untrained seed-cnn (seeded, so the server must answer exactly what ONNX Runtime computes)
// as: cifar (ONNX, full config, labels, max_batch_size 8), torch (TorchScript, no config), queue
// (a queue of 2 that waits 5 s), timeout (200 ms queue timeout), and two broken models: fixed
// (fixed batch + max_batch_size 8) and pickle (a torch.save file, not TorchScript).
std::unique_ptr<Repository> MakeRepository();

// The ONNX model `bytes` with its batch dimension fixed to 1 (a classic Triton mistake).
std::string FixedBatchOnnx(const std::string& bytes);

// Logits of `batch` samples computed directly by ONNX Runtime, one sample at a time.
std::vector<float> Reference(const std::string& model_file, const std::vector<float>& input,
                             int64_t batch);

// `batch` * 3x32x32 normally distributed floats.
std::vector<float> RandomInput(int64_t batch, uint32_t seed);

// A KServe v2 JSON inference request for the cifar models; `extra` (a JSON object) is merged in.
std::string InferJson(const std::vector<float>& input, int64_t batch,
                      const std::string& extra = "");

// The web page in headless Chromium (tests/serve/web_page_test.mjs, via node and
// playwright-core): writes test image 0 as `dir`/test0.png, uploads it to `model` through the
// page and returns the script's output (JSON {top1, bars, latency, live} on success). `skip`
// says why it could not run (node, /usr/bin/chromium or node_modules/playwright-core missing).
struct WebPageRun {
  std::string skip;
  std::filesystem::path png;
  int exit_code = -1;
  std::string output;
};
WebPageRun RunWebPage(const std::string& url, const std::string& model,
                      const std::filesystem::path& dir);

}  // namespace kiln::testing
