// Kiln's gRPC frontend: the KServe v2 / Open Inference Protocol service with Triton's extensions
// (package `inference`, service `GRPCInferenceService`, proto/grpc_service.proto, with Triton's
// field numbers) plus the standard `grpc.health.v1.Health` service. It sees the engine only
// through kiln/serve/engine/engine.h, like the HTTP frontend, and answers what HTTP answers: the
// same metadata, config, statistics, repository index and inference results.
//
//   GrpcOptions o;  o.port = 8001;
//   KILN_ASSIGN_OR_RETURN(auto grpc, GrpcServer::Start(o, engine.get()));
//   ...                                      // serve HTTP until SIGTERM
//   grpc->Shutdown(std::chrono::seconds(30));
//   engine->Shutdown();
//
// Threads: gRPC's synchronous server, one thread per RPC in progress, at most max_threads
// (grpc++'s resource quota; beyond it RPCs wait). ModelInfer queues the request in the engine and waits for its callback; the
// callback only fulfils a promise. ModelStreamInfer reads and queues requests as they arrive
// (so one stream's requests can share a batch) and writes each response when it is done, in
// completion order. Inference answers with `raw_output_contents`, as Triton does. Errors: a
// kiln::Status becomes a gRPC status in one function (InvalidArgument -> INVALID_ARGUMENT,
// NotFound -> NOT_FOUND, Unavailable -> UNAVAILABLE, ...). No exception leaves a handler.
//
// Ownership: `engine` is not owned and must outlive the GrpcServer. Shutdown and the destructor
// may be called from any thread; the other methods are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/core/status.h"
#include "kiln/serve/engine/admission.h"
#include "kiln/serve/engine/engine.h"

namespace kiln::serve {

struct GrpcOptions {
  std::string host = "127.0.0.1";        // 0.0.0.0 to listen on every interface
  int port = 8001;                       // 0 = no gRPC server (the caller does not call Start)
  int64_t max_message_bytes = 32 << 20;  // largest request and response message
  int max_threads = 64;                  // threads serving RPCs (grpc++ resource quota)
  int64_t max_stream_outstanding = 64;   // a stream's requests queued or running at most

  Status Validate() const;
};

class GrpcServer {
 public:
  // Validates `options`, binds host:port and starts serving. Unavailable (naming the address)
  // when the port cannot be bound, e.g. because another process listens on it: SO_REUSEPORT is
  // off, so two servers never share a port.
  // Every inference request is admitted against `admission` (optional; not owned, must outlive
  // the server) as it is received: over budget -> RESOURCE_EXHAUSTED at once.
  static Result<std::unique_ptr<GrpcServer>> Start(const GrpcOptions& options, Engine* engine,
                                                   Admission* admission = nullptr);
  virtual ~GrpcServer() = default;

  // The port actually bound.
  virtual int port() const = 0;

  // Health becomes NOT_SERVING and ServerReady false, new RPCs are refused, RPCs in flight get
  // until `drain` to finish (then they are cancelled). Idempotent; the destructor calls it with
  // no drain time.
  virtual void Shutdown(std::chrono::milliseconds drain) = 0;
};

}  // namespace kiln::serve
