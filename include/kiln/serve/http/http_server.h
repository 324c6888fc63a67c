// Kiln's HTTP frontend: KServe v2 REST with Triton's extensions (binary tensors,
// classification, statistics, repository), the reference project's /predict, /health, /stats,
// /metrics and the web page at /. It sees the engine only through kiln/serve/engine/engine.h.
//
//   HttpOptions o;  o.port = 8000;
//   KILN_ASSIGN_OR_RETURN(auto http, HttpServer::Create(o, engine.get(), &registry, &admission));
//   http->Start();                               // serves on its own threads
//   ...                                          // the command waits for SIGTERM
//   http->Stop(std::chrono::seconds(30));        // drain, then close everything
//   engine->Shutdown();
//
// Networking is asynchronous (Boost.Beast/Asio): a few network threads serve every connection,
// so idle keep-alive connections cost no thread. JSON parsing, image decoding and response
// formatting run on a worker pool, model loads and observation (/metrics, /stats, statistics)
// on threads of their own; inference runs on the engine's instance threads. Each request is
// admitted against `admission` as soon as its header is read (Content-Length known): over
// budget it is answered 503 with Retry-After at once, before its body is read.
//
// Draining (Stop): no new connection is accepted (those already in the listen backlog are), the
// readiness endpoints say "not ready", and every request that arrives on an open connection is
// still served, answered with `Connection: close`, until none is in flight; only after `drain`
// are the rest cut. Signals are the caller's business.
//
// Ownership: `engine`, `registry` and `admission` are not owned and must outlive the server;
// when Stop timed out with inference still queued, shut the engine down before destroying the
// server (its callbacks answer through the server).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kiln/core/status.h"
#include "kiln/data/image.h"
#include "kiln/serve/engine/admission.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/metrics/metrics.h"

namespace kiln::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";  // 0.0.0.0 to listen on every interface
  int port = 8000;
  int metrics_port = 8002;          // /metrics only; 0 = off
  int network_threads = 1;          // Asio threads serving connections
  int worker_threads = 2;           // JSON parsing, image decoding, response formatting
  int64_t max_body_bytes = 32 << 20;
  int64_t max_header_bytes = 16 << 10;
  int64_t max_json_bytes = 16 << 20;
  int max_json_depth = 32;
  int max_connections = 4096;
  int idle_timeout_s = 60;   // keep-alive connection waiting for its next request
  int read_timeout_s = 30;   // a request's body (and a response write) must finish within this
  int drain_timeout_s = 30;  // SIGTERM: longest wait for requests in flight
  data::ImageLimits image_limits;
  int default_top_k = 5;

  Status Validate() const;
};

class HttpServer {
 public:
  // Validates `options` and binds the HTTP port (and the metrics port unless 0). Unavailable,
  // naming the address, when a port cannot be bound. Serving starts with Start().
  static Result<std::unique_ptr<HttpServer>> Create(const HttpOptions& options, Engine* engine,
                                                    metrics::Registry* registry,
                                                    Admission* admission);
  virtual ~HttpServer() = default;  // Stop(0) when still serving

  virtual int port() const = 0;          // the HTTP port actually bound
  virtual int metrics_port() const = 0;  // 0 when off

  // Starts the network threads. Once.
  virtual void Start() = 0;
  // Drains (see above) for at most `drain`, then closes every connection and joins every
  // thread. Blocks; idempotent; callable from any thread.
  virtual void Stop(std::chrono::milliseconds drain) = 0;
  // Ends a drain in progress at once (a second SIGTERM). Any thread.
  virtual void Abort() = 0;
};

// The page served at "/" (embedded at build time from src/serve/web/index.html).
std::string_view WebPage();

}  // namespace kiln::serve
