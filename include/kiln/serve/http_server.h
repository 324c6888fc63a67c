// Kiln's HTTP frontend: KServe v2 REST with Triton's extensions (binary tensors,
// classification, statistics, repository), the reference project's /predict, /health, /stats,
// /metrics, and the web page at /. It sees the engine only through kiln/serve/engine.h.
//
//   HttpOptions o;  o.port = 8000;
//   KILN_RETURN_IF_ERROR(RunHttpServer(o, engine.get(), &registry));   // until SIGINT/SIGTERM
//
// Networking is asynchronous (Boost.Beast/Asio): a few network threads serve every connection,
// so idle keep-alive connections cost no thread. JSON parsing, image decoding and response
// formatting run on a separate worker pool; inference runs on the engine's instance threads.
// On SIGINT/SIGTERM the server stops accepting, answers the requests in flight (bounded by
// drain_timeout_s) and returns OK.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/core/status.h"
#include "kiln/data/image.h"
#include "kiln/serve/engine.h"
#include "kiln/serve/metrics.h"

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

// Runs the server until SIGINT/SIGTERM. Fails (before serving) when a port cannot be bound.
Status RunHttpServer(const HttpOptions& options, Engine* engine, metrics::Registry* registry);

// The page served at "/" (embedded at build time from src/serve/web/index.html).
std::string_view WebPage();

}  // namespace kiln::serve
