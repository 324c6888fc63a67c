// The HTTP frontend's routes: KServe v2 (health, metadata, config, inference, statistics,
// repository), Triton's extensions, Kiln's drift report, the reference project's /predict,
// /health and /stats, /metrics and the web page. The transport (http_server.cc) hands it
// parsed requests; it answers through `Reply`, on its own threads for anything that blocks:
//   - workers (HttpOptions::worker_threads): inference and /predict (JSON, images, formatting);
//   - one control thread: model load / unload (slow, and never in the way of inference);
//   - one observer thread: /metrics, /stats, /health, statistics and the repository index (they
//     take engine locks or read /proc), so neither a scrape nor a slow load stalls the network
//     thread.
// No exception leaves Dispatch or a posted task: it becomes a 500.
#pragma once

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>

#include "kiln/serve/engine/engine.h"
#include "kiln/serve/http/http_server.h"
#include "kiln/serve/metrics/metrics.h"
#include "message.h"

namespace kiln::serve::rest {

// Recent inference requests, for /stats (images/s and latency percentiles over the last minute).
class RequestWindow {
 public:
  void Add(double latency_s, int64_t images);
  json Summary();

 private:
  using Clock = std::chrono::steady_clock;
  struct Sample {
    Clock::time_point at;
    double latency_s;
    int64_t images;
  };
  void Trim(Clock::time_point now);
  std::mutex mu_;
  std::deque<Sample> samples_;
  const Clock::time_point started_ = Clock::now();
};

class Router {
 public:
  Router(const HttpOptions& options, Engine* engine, metrics::Registry* registry);
  ~Router();  // Join()
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Routes one request. Sets *handler (the metrics label of the route) before it returns;
  // `reply` is called exactly once, possibly later and from another thread. `metrics_only`:
  // the request came to the metrics port.
  void Dispatch(Request req, Reply reply, bool metrics_only, std::string* handler);

  // Readiness turns false (shutting down); requests are still served.
  void BeginDrain() { draining_ = true; }
  bool draining() const { return draining_.load(); }

  // One answered request, for /metrics and /stats.
  void RecordHttp(const std::string& handler, const std::string& method, unsigned code,
                  double seconds);

  // Waits for every posted task. Call it after the transport stopped taking requests.
  void Join();

 private:
  using Clock = std::chrono::steady_clock;
  // Runs `f(reply)` on `pool`; f answers through the reply (now or later); an exception that
  // escapes f becomes a 500.
  template <class F>
  void Spawn(boost::asio::thread_pool& pool, Reply reply, F f);
  // The same for an f() that returns the Response.
  template <class F>
  void Post(boost::asio::thread_pool& pool, Reply reply, F f);

  void Infer(Request req, const std::string& model, const std::string& version, Reply reply);
  void Predict(Request req, Reply reply);
  Response Health();
  Response Stats();
  Response RepositoryIndex(const std::string& body);
  Response RepositoryControl(const std::string& name, bool load, const std::string& body);
  Response ModelStatsJson(const std::string& model, const std::string& version);
  Response ModelDriftJson(const std::string& model, const std::string& version);
  json DriftSummary(const std::string& model, const std::string& version);
  Response ModelMetadata(const std::string& model, const std::string& version);
  JsonLimits json_limits() const { return {opt_.max_json_bytes, opt_.max_json_depth}; }

  const HttpOptions opt_;
  Engine* const engine_;
  metrics::Registry* const registry_;
  RequestWindow window_;
  std::atomic<uint64_t> requests_{0}, errors_{0}, client_errors_{0};
  std::atomic<bool> draining_{false};
  const Clock::time_point started_ = Clock::now();
  boost::asio::thread_pool workers_, control_{1}, observer_{1};
};

// The name of class `c`: the model's label, else the index.
std::string Label(const ModelInfo& m, int64_t c);

// The page's icon (an SVG kiln).
std::string_view Favicon();

}  // namespace kiln::serve::rest
