// kiln serve
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <iostream>
#include <memory>
#include <thread>

#include "commands.h"
#include "kiln/serve/engine/admission.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/grpc/grpc_server.h"
#include "kiln/serve/http/http_server.h"

namespace kiln::cli {

namespace {

struct ServeArgs {
  serve::EngineOptions engine;
  serve::HttpOptions http;
  serve::GrpcOptions grpc;
  serve::AdmissionLimits admission;
  bool grpc_port_given = false;  // --grpc-port on the command line (else the default, 8001)
  std::string control_mode = "none";
};

int RunServe(ServeArgs a) {
  if (a.control_mode == "poll") a.engine.control_mode = serve::ModelControlMode::kPoll;
  if (a.control_mode == "explicit") a.engine.control_mode = serve::ModelControlMode::kExplicit;
  if (Status s = a.http.Validate(); !s.ok()) {
    std::cerr << "kiln serve: " << s.message() << "\n";
    return kExitUsage;
  }
  if (Status s = a.engine.Validate(); !s.ok()) {
    std::cerr << "kiln serve: " << s.message() << "\n";
    return kExitUsage;
  }
  a.grpc.host = a.http.host;
  if (Status s = a.grpc.Validate(); !s.ok()) {
    std::cerr << "kiln serve: " << s.message() << "\n";
    return kExitUsage;
  }
  if (a.grpc.port != 0 && (a.grpc.port == a.http.port || a.grpc.port == a.http.metrics_port)) {
    std::cerr << "kiln serve: --grpc-port must differ from --port and --metrics-port\n";
    return kExitUsage;
  }
  if (Status s = a.admission.Validate(); !s.ok()) {
    std::cerr << "kiln serve: " << s.message() << "\n";
    return kExitUsage;
  }
  if (a.admission.max_bytes < a.http.max_body_bytes) {
    std::cerr << "kiln serve: --max-inflight-bytes must be at least --max-body-bytes\n";
    return kExitUsage;
  }
  // SIGINT/SIGTERM are taken by this thread (sigwait below): blocked before any thread starts,
  // so every thread inherits the mask and none is interrupted.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  serve::metrics::Registry registry;
  serve::metrics::AddSystemGauges(&registry);
  serve::Admission admission(a.admission, &registry);
  auto engine = serve::Engine::Create(a.engine, &registry);
  if (!engine.ok()) {
    std::cerr << "kiln serve: " << engine.status().ToString() << "\n";
    return kExitFailure;
  }
  auto http = serve::HttpServer::Create(a.http, engine->get(), &registry, &admission);
  if (!http.ok()) {
    std::cerr << "kiln serve: " << http.status().ToString() << "\n";
    (*engine)->Shutdown();
    return kExitFailure;
  }
  std::unique_ptr<serve::GrpcServer> grpc;
  if (a.grpc.port != 0) {
    auto started = serve::GrpcServer::Start(a.grpc, engine->get(), &admission);
    if (started.ok()) {
      grpc = std::move(started).value();
      std::cerr << "kiln serve: gRPC listening on " << a.grpc.host << ":" << grpc->port()
                << std::endl;
    } else if (a.grpc_port_given) {
      std::cerr << "kiln serve: " << started.status().ToString() << "\n";
      (*engine)->Shutdown();
      return kExitFailure;
    } else {
      // The default port only: several servers (tests, benchmarks, a second model set) may run
      // side by side with their own --port and no gRPC port of their own. HTTP still serves.
      std::cerr << "kiln serve: warning: no gRPC server: " << started.status().message()
                << "; HTTP serves as usual (--grpc-port 0 turns gRPC off without this warning)\n";
    }
  }
  (*http)->Start();

  int sig = 0;
  sigwait(&signals, &sig);
  // Shutdown order: the frontends stop taking connections and drain (both at once, each within
  // --drain-timeout), then the engine finishes what is queued. A second signal ends the drain.
  const auto drain = std::chrono::seconds(a.http.drain_timeout_s);
  std::atomic<bool> drained{false};
  std::thread stopper([&] {
    std::thread grpc_stop([&] {
      if (grpc) grpc->Shutdown(drain);
    });
    (*http)->Stop(drain);
    grpc_stop.join();
    drained = true;
  });
  const timespec poll = {0, 50'000'000};
  while (!drained.load()) {
    if (sigtimedwait(&signals, nullptr, &poll) > 0) {
      std::cerr << "kiln serve: second signal, stopping now" << std::endl;
      (*http)->Abort();
      if (grpc) grpc->Shutdown(std::chrono::milliseconds(0));
    }
  }
  stopper.join();
  (*engine)->Shutdown();
  std::cerr << "kiln serve: stopped" << std::endl;
  return 0;  // stopped by SIGINT/SIGTERM after draining
}

}  // namespace

void RegisterServeCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve a Triton-layout model repository over HTTP (KServe v2, /predict, /metrics, web page) "
      "and gRPC (KServe v2 / Triton)");
  cmd->add_option("--model-repository,--models", a->engine.repository,
                  "Folder with <model>/config.pbtxt and <model>/<version>/model.onnx|model.pt")
      ->required();
  cmd->add_option("--model-control-mode", a->control_mode,
                  "none: load everything at start; poll: also reload on changes; explicit: only "
                  "--load-model and the repository API")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "poll", "explicit"}));
  cmd->add_option("--load-model", a->engine.startup_models,
                  "explicit mode: model to load at start ('*' = all); repeatable");
  cmd->add_option("--repository-poll-secs", a->engine.poll_seconds, "poll mode: rescan interval")
      ->capture_default_str();
  cmd->add_option("--host", a->http.host,
                  "Address to listen on, HTTP and gRPC (0.0.0.0 = every interface)")
      ->capture_default_str();
  cmd->add_option("--port,--http-port", a->http.port, "HTTP port")->capture_default_str();
  cmd->add_option("--metrics-port", a->http.metrics_port, "Port serving /metrics only (0 = off)")
      ->capture_default_str();
  auto* grpc_port =
      cmd->add_option("--grpc-port", a->grpc.port,
                      "gRPC port (KServe v2 / Triton GRPCInferenceService + grpc.health.v1; 0 = "
                      "off). A busy default port only warns; a busy port given here is an error")
          ->capture_default_str();
  cmd->add_option("--grpc-max-message-bytes", a->grpc.max_message_bytes,
                  "Largest gRPC request or response message")
      ->capture_default_str();
  cmd->add_option("--threads", a->engine.threads,
                  "Engine threads per model, split between its instances (config parameter "
                  "intra_op_thread_count overrides)")
      ->capture_default_str();
  cmd->add_option("--http-threads", a->http.network_threads, "Network (Asio) threads")
      ->capture_default_str();
  cmd->add_option("--worker-threads", a->http.worker_threads,
                  "Threads for JSON parsing, image decoding and response formatting")
      ->capture_default_str();
  cmd->add_option("--default-max-batch-size", a->engine.default_max_batch_size,
                  "max_batch_size given to batching models whose config does not set one")
      ->capture_default_str();
  cmd->add_flag_function(
      "--disable-auto-complete-config",
      [a](int64_t) { a->engine.auto_complete_config = false; },
      "Triton's flag: complete nothing from the model files; every model needs a config.pbtxt "
      "that gives platform, max_batch_size, inputs and outputs (name, data_type, dims)");
  cmd->add_option("--max-queue-size", a->engine.max_queue_size,
                  "Queued requests per model before 503 (when the config sets none)")
      ->capture_default_str();
  cmd->add_option("--request-timeout-ms", a->engine.request_timeout_ms,
                  "Longest wait in a model's queue (config default_timeout_microseconds wins)")
      ->capture_default_str();
  cmd->add_option("--drift-window-size", a->engine.drift_window_size,
                  "Predictions per model version in the drift window compared with the model's "
                  "drift reference (0 = drift tracking off)")
      ->capture_default_str();
  cmd->add_option("--drift-window-seconds", a->engine.drift_window_seconds,
                  "Oldest prediction the drift window keeps, in seconds")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", a->http.max_body_bytes, "Largest request body")
      ->capture_default_str();
  cmd->add_option("--max-header-bytes", a->http.max_header_bytes, "Largest request header")
      ->capture_default_str();
  cmd->add_option("--max-json-bytes", a->http.max_json_bytes, "Largest JSON document")
      ->capture_default_str();
  cmd->add_option("--max-json-depth", a->http.max_json_depth, "Deepest JSON nesting")
      ->capture_default_str();
  cmd->add_option("--max-image-bytes", a->http.image_limits.max_encoded_bytes,
                  "Largest uploaded image file")
      ->capture_default_str();
  cmd->add_option("--max-pixels", a->http.image_limits.max_pixels,
                  "Largest decoded image (width x height), checked from the file header")
      ->capture_default_str();
  cmd->add_option("--max-connections", a->http.max_connections, "Open connections at most")
      ->capture_default_str();
  cmd->add_option("--max-inflight-requests", a->admission.max_requests,
                  "Admission budget: requests in flight over HTTP and gRPC together; more are "
                  "refused at once (HTTP 503 + Retry-After, gRPC RESOURCE_EXHAUSTED)")
      ->capture_default_str();
  cmd->add_option("--max-inflight-bytes", a->admission.max_bytes,
                  "Admission budget: bytes of the requests in flight (bodies / messages)")
      ->capture_default_str();
  cmd->add_option("--grpc-max-threads", a->grpc.max_threads,
                  "gRPC: threads serving RPCs at most (grpc++ resource quota)")
      ->capture_default_str();
  cmd->add_option("--grpc-max-stream-outstanding", a->grpc.max_stream_outstanding,
                  "gRPC ModelStreamInfer: requests of one stream queued or running at most; the "
                  "stream's reads wait beyond that")
      ->capture_default_str();
  cmd->add_option("--idle-timeout", a->http.idle_timeout_s,
                  "Seconds a keep-alive connection may wait for its next request")
      ->capture_default_str();
  cmd->add_option("--read-timeout", a->http.read_timeout_s,
                  "Seconds to receive a request body (and to send a response)")
      ->capture_default_str();
  cmd->add_option("--drain-timeout", a->http.drain_timeout_s,
                  "On SIGTERM/SIGINT: seconds to finish requests in flight")
      ->capture_default_str();
  cmd->footer(
      "Stops on SIGTERM or Ctrl-C: no new connections; every request already sent, or sent on "
      "an open connection during the drain, is answered (HTTP with Connection: close; HTTP and "
      "gRPC drain together, within --drain-timeout); then the engine finishes its queue; exit "
      "code 0. A second signal stops at once.");
  cmd->callback([run, a, grpc_port] {
    a->grpc_port_given = grpc_port->count() > 0;
    *run = [a] { return RunServe(*a); };
  });
}

}  // namespace kiln::cli
