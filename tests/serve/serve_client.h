// Test helpers for the serving tests: a real `kiln serve` process on loopback and a small
// libcurl HTTP client.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

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

// A free TCP port on 127.0.0.1 (bound, then released).
int FreePort();

// `kiln serve --models <repo> --port P --metrics-port Q <extra>`, waited for until
// /v2/health/live answers. The destructor stops it (SIGKILL if still running).
class ServerProcess {
 public:
  ServerProcess(const std::filesystem::path& repository, const std::vector<std::string>& extra);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool started() const { return started_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string metrics_url() const { return "http://127.0.0.1:" + std::to_string(metrics_port_); }
  std::string Log() const;  // stderr + stdout so far
  // SIGTERM, then waits; returns the exit code (-1 when killed by a signal or timed out).
  int Terminate(int timeout_s = 60);
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0, metrics_port_ = 0;
  std::filesystem::path log_;
  bool started_ = false;
};

}  // namespace kiln::testing
