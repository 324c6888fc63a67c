#include "kiln/serve/grpc/grpc_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "grpc_service.grpc.pb.h"
#include "kiln/core/version.h"

namespace kiln::serve {

namespace {

// raw_input_contents / raw_output_contents are little-endian; tensors are copied as they lie.
static_assert(std::endian::native == std::endian::little,
              "raw tensor contents assume little-endian");

// How often a ModelInfer waiting for the engine checks whether its client went away.
constexpr auto kCancelPoll = std::chrono::milliseconds(20);

// The one place that maps a kiln::Status to a gRPC status code.
grpc::StatusCode GrpcCodeFromStatus(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return grpc::StatusCode::OK;
    case StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case StatusCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case StatusCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case StatusCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case StatusCode::kUnimplemented:
      return grpc::StatusCode::UNIMPLEMENTED;
    case StatusCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case StatusCode::kInternal:
      break;
  }
  return grpc::StatusCode::INTERNAL;
}

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(GrpcCodeFromStatus(s.code()), s.message());
}

// Runs a handler body; an exception (e.g. bad_alloc) becomes INTERNAL instead of leaving the
// handler.
template <typename F>
grpc::Status Guard(F&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "internal error");
  }
}

void SetDuration(const Duration& d, inference::StatisticDuration* out) {
  out->set_count(d.count);
  out->set_ns(d.ns);
}

// A validated inference request, ready for Engine::Infer.
struct Prepared {
  std::shared_ptr<const ModelInfo> model;
  std::vector<float> input;
  int64_t batch = 1;
  std::string id;
  int64_t classification = 0;  // k > 0: the output as "<value>:<index>[:<label>]" strings
  bool follow_latest = true;   // the client named no version
  std::string routing_key;     // sticky routing between versions ("" = random)
};

// The request's sticky-routing key: its parameter "routing_key" (string_param), else the call's
// metadata x-kiln-routing-key (HTTP's X-Kiln-Routing-Key), else "".
std::string RoutingKey(const grpc::ServerContext* ctx, const inference::ModelInferRequest& req) {
  const auto it = req.parameters().find("routing_key");
  if (it != req.parameters().end() &&
      it->second.parameter_choice_case() == inference::InferParameter::kStringParam) {
    return it->second.string_param();
  }
  if (ctx == nullptr) return "";
  const auto& md = ctx->client_metadata();
  const auto m = md.find("x-kiln-routing-key");
  return m == md.end() ? "" : std::string(m->second.data(), m->second.size());
}

// Checks a ModelInferRequest against the model as the HTTP frontend checks a JSON request (one
// FP32 input of the model's name and shape, batch dimension included when max_batch_size > 0)
// and copies its data out of fp32_contents or raw_input_contents.
Result<Prepared> Prepare(Engine* engine, const inference::ModelInferRequest& req) {
  KILN_ASSIGN_OR_RETURN(std::shared_ptr<const ModelInfo> model,
                        engine->Find(req.model_name(), req.model_version()));
  const ModelInfo& m = *model;
  Prepared p;
  p.model = model;
  p.id = req.id();
  p.follow_latest = req.model_version().empty();
  const auto& in = req.inputs_size() > 0
                        ? req.inputs(0)
                        : inference::ModelInferRequest::InferInputTensor::default_instance();
  const std::vector<int64_t> shape(in.shape().begin(), in.shape().end());
  KILN_ASSIGN_OR_RETURN(p.batch, CheckInferInput(m, static_cast<size_t>(req.inputs_size()),
                                                 in.name(), in.datatype(), shape));
  const size_t elements = static_cast<size_t>(p.batch * m.input_elements);
  if (req.raw_input_contents_size() > 0) {
    // Triton's rule: raw_input_contents holds every input, and then no input has contents.
    if (in.has_contents()) {
      return InvalidArgumentError("input '" + m.input_name +
                                  "' has contents while the request uses raw_input_contents: "
                                  "when raw_input_contents is used, every input must use it");
    }
    if (req.raw_input_contents_size() != req.inputs_size()) {
      return InvalidArgumentError("raw_input_contents has " +
                                  std::to_string(req.raw_input_contents_size()) + " entries for " +
                                  std::to_string(req.inputs_size()) + " input(s)");
    }
    const std::string& raw = req.raw_input_contents(0);
    KILN_RETURN_IF_ERROR(
        CheckInferDataSize(m, shape, p.batch, raw.size(), "bytes", "raw_input_contents"));
    p.input.resize(elements);
    std::memcpy(p.input.data(), raw.data(), raw.size());
  } else {
    if (!in.has_contents()) {
      return InvalidArgumentError("input '" + m.input_name +
                                  "' has neither contents nor raw_input_contents");
    }
    const auto& values = in.contents().fp32_contents();
    KILN_RETURN_IF_ERROR(CheckInferDataSize(m, shape, p.batch, static_cast<size_t>(values.size()),
                                            "values", "contents.fp32_contents"));
    p.input.assign(values.begin(), values.end());
  }
  for (const auto& out : req.outputs()) {
    KILN_RETURN_IF_ERROR(CheckInferOutput(m, out.name()));
    const auto it = out.parameters().find("classification");
    if (it == out.parameters().end()) continue;
    const auto& v = it->second;
    int64_t k = 0;
    if (v.parameter_choice_case() == inference::InferParameter::kInt64Param) {
      k = v.int64_param();
    } else if (v.parameter_choice_case() == inference::InferParameter::kUint64Param) {
      k = static_cast<int64_t>(std::min<uint64_t>(v.uint64_param(), INT64_MAX));
    }
    if (k < 1) {
      return InvalidArgumentError(
          "classification must be a positive integer (int64_param) for output '" + out.name() +
          "'");
    }
    p.classification = k;
  }
  return p;
}

// The response to a finished request: the output tensor (or its classification) as
// raw_output_contents, shape with the batch dimension, as the HTTP frontend answers.
void BuildResponse(const Prepared& p, const InferResult& r, inference::ModelInferResponse* out) {
  const ModelInfo& m = *p.model;
  out->set_model_name(m.name);
  out->set_model_version(std::to_string(r.version > 0 ? r.version : m.version));
  out->set_id(p.id);
  auto* tensor = out->add_outputs();
  tensor->set_name(m.output_name);
  std::string* raw = out->add_raw_output_contents();
  const int64_t classes = m.output_elements;
  if (p.classification > 0 && classes > 0) {
    const int64_t k = std::min(p.classification, classes);
    const int64_t rows = static_cast<int64_t>(r.output.size()) / classes;
    for (const std::string& e : ClassificationStrings(m, r.output, k)) {
      const uint32_t len = static_cast<uint32_t>(e.size());
      raw->append(reinterpret_cast<const char*>(&len), sizeof len);
      raw->append(e);
    }
    tensor->set_datatype("BYTES");
    if (m.max_batch_size > 0) tensor->add_shape(rows);
    tensor->add_shape(k);
  } else {
    tensor->set_datatype("FP32");
    if (m.max_batch_size > 0) tensor->add_shape(p.batch);
    for (int64_t d : m.output_dims) tensor->add_shape(d);
    raw->assign(reinterpret_cast<const char*>(r.output.data()), r.output.size() * sizeof(float));
  }
}

// ---------------------------------------------------------------------------------------------

class Service final : public inference::GRPCInferenceService::Service {
 public:
  Service(Engine* engine, Admission* admission, int64_t max_stream_outstanding)
      : engine_(engine), admission_(admission), max_stream_outstanding_(max_stream_outstanding) {}

  void BeginShutdown() { shutting_down_ = true; }
  // The drain is cut short: RPCs waiting for the engine give up now.
  void Abort() { aborting_ = true; }

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse* resp) override {
    resp->set_live(true);
    return grpc::Status::OK;
  }

  // As HTTP's /v2/health/ready: ready until shutdown begins.
  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* resp) override {
    resp->set_ready(!shutting_down_.load());
    return grpc::Status::OK;
  }

  // As Triton: an unknown or unready model is `ready: false` with status OK.
  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest* req,
                          inference::ModelReadyResponse* resp) override {
    return Guard([&] {
      resp->set_ready(engine_->Find(req->name(), req->version()).ok());
      return grpc::Status::OK;
    });
  }

  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse* resp) override {
    resp->set_name("kiln");
    resp->set_version(Version());
    for (const char* e : {"classification", "model_repository",
                          "model_repository(unload_dependents)", "statistics"}) {
      resp->add_extensions(e);
    }
    return grpc::Status::OK;
  }

  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest* req,
                             inference::ModelMetadataResponse* resp) override {
    return Guard([&] {
      auto f = engine_->Find(req->name(), req->version());
      if (!f.ok()) return ToGrpc(f.status());
      const ModelInfo& m = **f;
      resp->set_name(m.name);
      for (const auto& r : engine_->ReadyModels()) {
        if (r->name == m.name) resp->add_versions(std::to_string(r->version));
      }
      resp->set_platform(m.platform);
      auto fill = [&](const std::string& name, inference::DataType type,
                      const std::vector<int64_t>& dims,
                      inference::ModelMetadataResponse::TensorMetadata* t) {
        t->set_name(name);
        t->set_datatype(KServeDataType(type));
        for (int64_t d : BatchedShape(m, dims)) t->add_shape(d);
      };
      fill(m.input_name, m.config.input(0).data_type(), m.input_dims, resp->add_inputs());
      fill(m.output_name, m.config.output(0).data_type(), m.output_dims, resp->add_outputs());
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelInfer(grpc::ServerContext* ctx, const inference::ModelInferRequest* req,
                          inference::ModelInferResponse* resp) override {
    return Guard([&] {
      // Admitted as received: the message is in memory, nothing is queued yet.
      auto ticket = Admit(*req);
      if (!ticket.ok()) return ToGrpc(ticket.status());
      auto p = Prepare(engine_, *req);
      if (!p.ok()) return ToGrpc(p.status());
      struct Outcome {
        Status status;
        InferResult result;
      };
      // The callback runs on an engine thread (or inline): it only fulfils the promise.
      auto done = std::make_shared<std::promise<Outcome>>();
      auto future = done->get_future();
      engine_->Infer(
          p->model, std::move(p->input), p->batch,
          [done](Status s, InferResult r) {
            done->set_value(Outcome{std::move(s), std::move(r)});
          },
          InferOptions{p->follow_latest, RoutingKey(ctx, *req)});
      while (future.wait_for(kCancelPoll) != std::future_status::ready) {
        if (ctx->IsCancelled()) {
          return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
        }
        if (aborting_.load()) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is stopping now");
        }
      }
      Outcome o = future.get();
      if (!o.status.ok()) return ToGrpc(o.status);
      BuildResponse(*p, o.result, resp);
      return grpc::Status::OK;
    });
  }

  // Requests are read and queued as they arrive (a reader thread), responses are written by
  // this thread as they finish; an invalid or failed request answers with error_message and the
  // stream goes on.
  grpc::Status ModelStreamInfer(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<inference::ModelStreamInferResponse, inference::ModelInferRequest>*
          stream) override {
    return Guard([&] {
      auto st = std::make_shared<StreamState>();
      std::thread reader([this, st, stream, ctx] { ReadStream(st, stream, ctx); });
      struct Joiner {  // joins the reader on every way out, exceptions included
        std::thread& t;
        ~Joiner() {
          if (t.joinable()) t.join();
        }
      } joiner{reader};
      bool writable = true;
      for (;;) {
        Finished f;
        {
          std::unique_lock l(st->mu);
          st->cv.wait(l, [&] {
            return !st->finished.empty() || (st->reading_done && st->outstanding == 0);
          });
          if (st->finished.empty()) break;
          f = std::move(st->finished.front());
          st->finished.pop_front();
        }
        st->cv.notify_all();  // the reader may be waiting for room
        if (!writable) continue;  // the client is gone: drain what the engine still answers
        inference::ModelStreamInferResponse resp;
        if (f.status.ok()) {
          BuildResponse(*f.request, f.result, resp.mutable_infer_response());
        } else {
          resp.set_error_message(f.status.message());
          resp.mutable_infer_response()->set_model_name(f.model_name);
          resp.mutable_infer_response()->set_id(f.id);
        }
        writable = stream->Write(resp);
      }
      reader.join();  // at once: reading ended before the last answer
      if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelConfig(grpc::ServerContext*, const inference::ModelConfigRequest* req,
                           inference::ModelConfigResponse* resp) override {
    return Guard([&] {
      auto f = engine_->Find(req->name(), req->version());
      if (!f.ok()) return ToGrpc(f.status());
      *resp->mutable_config() = (*f)->config;
      return grpc::Status::OK;
    });
  }

  grpc::Status ModelStatistics(grpc::ServerContext*, const inference::ModelStatisticsRequest* req,
                               inference::ModelStatisticsResponse* resp) override {
    return Guard([&] {
      auto stats = engine_->Statistics(req->name(), req->version());
      if (!stats.ok()) return ToGrpc(stats.status());
      for (const auto& s : *stats) {
        auto* out = resp->add_model_stats();
        out->set_name(s.name);
        out->set_version(s.version);
        out->set_last_inference(s.last_inference_ms);
        out->set_inference_count(s.inference_count);
        out->set_execution_count(s.execution_count);
        auto* is = out->mutable_inference_stats();
        SetDuration(s.success, is->mutable_success());
        SetDuration(s.fail, is->mutable_fail());
        SetDuration(s.queue, is->mutable_queue());
        SetDuration(s.compute_input, is->mutable_compute_input());
        SetDuration(s.compute_infer, is->mutable_compute_infer());
        SetDuration(s.compute_output, is->mutable_compute_output());
        is->mutable_cache_hit();  // no response cache: zero, present as in Triton's answer
        is->mutable_cache_miss();
        for (const auto& b : s.batch_stats) {
          auto* bs = out->add_batch_stats();
          bs->set_batch_size(static_cast<uint64_t>(b.batch_size));
          SetDuration(b.compute_input, bs->mutable_compute_input());
          SetDuration(b.compute_infer, bs->mutable_compute_infer());
          SetDuration(b.compute_output, bs->mutable_compute_output());
        }
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status RepositoryIndex(grpc::ServerContext*, const inference::RepositoryIndexRequest* req,
                               inference::RepositoryIndexResponse* resp) override {
    return Guard([&] {
      for (const auto& e : engine_->Index()) {
        if (req->ready() && e.state != "READY") continue;
        auto* m = resp->add_models();
        m->set_name(e.name);
        m->set_version(e.version);
        m->set_state(e.state);
        m->set_reason(e.reason);
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status RepositoryModelLoad(grpc::ServerContext*,
                                   const inference::RepositoryModelLoadRequest* req,
                                   inference::RepositoryModelLoadResponse*) override {
    return Guard([&] {
      // Triton's load parameters: "config" (a JSON ModelConfig used instead of config.pbtxt) is
      // applied; "file:<path>" model overrides are refused rather than ignored.
      std::optional<std::string> config;
      for (const auto& [key, value] : req->parameters()) {
        if (key == "config") {
          if (value.parameter_choice_case() != inference::ModelRepositoryParameter::kStringParam) {
            return ToGrpc(InvalidArgumentError(
                "load parameter 'config' must be a string_param holding the model "
                "configuration as JSON"));
          }
          config = value.string_param();
        } else if (key.rfind("file:", 0) == 0) {
          return ToGrpc(InvalidArgumentError(
              "load parameter '" + key + "' is not supported: Kiln loads model files from the "
              "repository (a 'config' override is supported)"));
        } else {
          return ToGrpc(InvalidArgumentError("load parameter '" + key + "' is not supported"));
        }
      }
      return ToGrpc(engine_->Load(req->model_name(), config));
    });
  }

  grpc::Status RepositoryModelUnload(grpc::ServerContext*,
                                     const inference::RepositoryModelUnloadRequest* req,
                                     inference::RepositoryModelUnloadResponse*) override {
    return Guard([&] {
      for (const auto& [key, value] : req->parameters()) {
        // Kiln has no ensembles, so a model has no dependents to unload with it.
        if (key == "unload_dependents" &&
            value.parameter_choice_case() == inference::ModelRepositoryParameter::kBoolParam) {
          continue;
        }
        return ToGrpc(InvalidArgumentError("unload parameter '" + key + "' is not supported"));
      }
      return ToGrpc(engine_->Unload(req->model_name()));
    });
  }

 private:
  struct Finished {
    std::shared_ptr<const Prepared> request;  // null when the request was invalid
    Status status;
    InferResult result;
    std::string model_name, id;  // for error responses
  };
  struct StreamState {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Finished> finished;
    int64_t outstanding = 0;  // queued in the engine, callback not yet called
    bool reading_done = false;
  };

  void ReadStream(const std::shared_ptr<StreamState>& st,
                  grpc::ServerReaderWriter<inference::ModelStreamInferResponse,
                                           inference::ModelInferRequest>* stream,
                  const grpc::ServerContext* ctx) noexcept {
    auto finish = [st](Finished f, bool was_outstanding) {
      std::lock_guard l(st->mu);
      if (was_outstanding) --st->outstanding;
      st->finished.push_back(std::move(f));
      st->cv.notify_all();
    };
    try {
      inference::ModelInferRequest req;
      for (;;) {
        {
          // Back-pressure: a stream has at most max_stream_outstanding requests queued or
          // running (and their answers waiting to be written); beyond that it is not read, so
          // HTTP/2 flow control holds the client.
          std::unique_lock l(st->mu);
          st->cv.wait(l, [&] {
            return st->outstanding + static_cast<int64_t>(st->finished.size()) <
                   max_stream_outstanding_;
          });
        }
        if (!stream->Read(&req)) break;
        auto ticket = Admit(req);
        if (!ticket.ok()) {
          finish({nullptr, ticket.status(), {}, req.model_name(), req.id()}, false);
          continue;
        }
        auto p = Prepare(engine_, req);
        if (!p.ok()) {
          finish({nullptr, p.status(), {}, req.model_name(), req.id()}, false);
          continue;
        }
        std::vector<float> input = std::move(p->input);
        p->routing_key = RoutingKey(ctx, req);
        auto request = std::make_shared<const Prepared>(std::move(*p));
        {
          std::lock_guard l(st->mu);
          ++st->outstanding;
        }
        auto held = std::make_shared<Admission::Ticket>(std::move(ticket).value());
        engine_->Infer(
            request->model, std::move(input), request->batch,
            [finish, request, held](Status s, InferResult r) {
              held->Release();
              finish({request, std::move(s), std::move(r), request->model->name, request->id},
                     true);
            },
            InferOptions{request->follow_latest, request->routing_key});
      }
    } catch (const std::exception& e) {
      finish({nullptr, InternalError(std::string("internal error: ") + e.what()), {}, "", ""},
             false);
    }
    std::lock_guard l(st->mu);
    st->reading_done = true;
    st->cv.notify_all();
  }

  Result<Admission::Ticket> Admit(const inference::ModelInferRequest& req) {
    if (admission_ == nullptr) return Admission::Ticket();
    auto t = admission_->Admit(static_cast<int64_t>(req.ByteSizeLong()), "grpc");
    // gRPC's word for "over budget, retry later" is RESOURCE_EXHAUSTED.
    if (!t.ok() && t.status().code() == StatusCode::kUnavailable) {
      return ResourceExhaustedError(t.status().message());
    }
    return t;
  }

  Engine* engine_;
  Admission* admission_;
  const int64_t max_stream_outstanding_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<bool> aborting_{false};
};

class GrpcServerImpl final : public GrpcServer {
 public:
  GrpcServerImpl(Engine* engine, Admission* admission, const GrpcOptions& o)
      : service_(engine, admission, o.max_stream_outstanding) {}
  ~GrpcServerImpl() override { Shutdown(std::chrono::milliseconds(0)); }

  Status Init(const GrpcOptions& o) {
    // host:port, with brackets for an IPv6 address.
    const std::string address =
        (o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host) + ":" +
        std::to_string(o.port);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(o.max_message_bytes));
    // The synchronous server's threads are capped: past the quota, new RPCs wait in grpc's
    // queue instead of each getting a thread.
    grpc::ResourceQuota quota("kiln-grpc");
    quota.SetMaxThreads(o.max_threads);
    builder.SetResourceQuota(quota);
    // gRPC sets SO_REUSEPORT by default: a second server on the same port would then start and
    // silently take half of the connections. Off, so a taken port is an error.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      server_.reset();
      return UnavailableError("cannot listen for gRPC on " + address +
                              " (is the port in use? choose another with --grpc-port)");
    }
    if (auto* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(true);
      health->SetServingStatus("inference.GRPCInferenceService", true);
    }
    return Status::Ok();
  }

  int port() const override { return port_; }

  void Shutdown(std::chrono::milliseconds drain) override {
    if (drain.count() == 0) service_.Abort();
    // A second call while the first drains (a second signal) only cuts the drain short.
    std::unique_lock l(mu_, std::try_to_lock);
    if (!l.owns_lock()) {
      service_.Abort();
      return;
    }
    if (server_ == nullptr) return;
    service_.BeginShutdown();
    if (auto* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(false);
      health->SetServingStatus("inference.GRPCInferenceService", false);
    }
    server_->Shutdown(std::chrono::system_clock::now() + drain);
    server_->Wait();
    server_.reset();
  }

 private:
  Service service_;
  std::mutex mu_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace

Status GrpcOptions::Validate() const {
  if (port < 0 || port > 65535) return InvalidArgumentError("--grpc-port must be in [0, 65535]");
  if (host.empty()) return InvalidArgumentError("--host must not be empty");
  if (max_message_bytes < 1 || max_message_bytes > INT_MAX) {
    return InvalidArgumentError("--grpc-max-message-bytes must be in [1, " +
                                std::to_string(INT_MAX) + "]");
  }
  if (max_threads < 4) return InvalidArgumentError("--grpc-max-threads must be at least 4");
  if (max_stream_outstanding < 1) {
    return InvalidArgumentError("--grpc-max-stream-outstanding must be positive");
  }
  return Status::Ok();
}

Result<std::unique_ptr<GrpcServer>> GrpcServer::Start(const GrpcOptions& options, Engine* engine,
                                                      Admission* admission) {
  KILN_RETURN_IF_ERROR(options.Validate());
  if (options.port == 0) return InvalidArgumentError("gRPC port 0 means no gRPC server");
  if (engine == nullptr) return InvalidArgumentError("GrpcServer::Start without an engine");
  try {
    auto server = std::make_unique<GrpcServerImpl>(engine, admission, options);
    KILN_RETURN_IF_ERROR(server->Init(options));
    return std::unique_ptr<GrpcServer>(std::move(server));
  } catch (const std::exception& e) {
    return InternalError(std::string("starting the gRPC server: ") + e.what());
  }
}

}  // namespace kiln::serve
