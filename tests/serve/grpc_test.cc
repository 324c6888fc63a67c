// End-to-end tests of `kiln serve`'s gRPC frontend: the real server process on loopback (free
// ports), spoken to through the stub generated from proto/grpc_service.proto, checked against
// what the HTTP frontend and ONNX Runtime answer for the same input.
#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "grpc_service.grpc.pb.h"
#include "serve_client.h"

namespace kiln::serve {
namespace {

namespace pb = ::inference;
using json = nlohmann::json;
using testing::Http;
using testing::HttpRequest;
using testing::InferJson;
using testing::kClasses;
using testing::MakeRepository;
using testing::RandomInput;
using testing::Reference;
using testing::Repository;
using testing::ServerProcess;

// A client context with a generous deadline, so that a hung server fails the test instead of
// hanging it.
std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return c;
}

enum class Encoding { kContents, kRaw };

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// An inference request for the cifar model: `batch` samples as fp32_contents or raw bytes.
pb::ModelInferRequest InferRequest(const std::vector<float>& input, int64_t batch,
                                   Encoding encoding, const std::string& id = "") {
  pb::ModelInferRequest r;
  r.set_model_name("cifar");
  r.set_id(id);
  auto* in = r.add_inputs();
  in->set_name("input");
  in->set_datatype("FP32");
  for (int64_t d : {batch, int64_t{3}, int64_t{32}, int64_t{32}}) in->add_shape(d);
  if (encoding == Encoding::kRaw) {
    r.add_raw_input_contents(Bytes(input));
  } else {
    in->mutable_contents()->mutable_fp32_contents()->Add(input.begin(), input.end());
  }
  return r;
}

std::vector<float> Floats(const pb::ModelInferResponse& r) {
  EXPECT_EQ(r.raw_output_contents_size(), 1);
  if (r.raw_output_contents_size() != 1) return {};
  const std::string& raw = r.raw_output_contents(0);
  std::vector<float> out(raw.size() / sizeof(float));
  std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
  return out;
}

// A raw BYTES tensor: each element a 4-byte little-endian length, then the bytes.
std::vector<std::string> Strings(const std::string& raw) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos + 4 <= raw.size()) {
    uint32_t len = 0;
    std::memcpy(&len, raw.data() + pos, 4);
    pos += 4;
    if (pos + len > raw.size()) {
      ADD_FAILURE() << "BYTES element runs past the end";
      break;
    }
    out.push_back(raw.substr(pos, len));
    pos += len;
  }
  EXPECT_EQ(pos, raw.size());
  return out;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

std::string Describe(const grpc::Status& s) {
  return std::to_string(static_cast<int>(s.error_code())) + " " + s.error_message();
}

class GrpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    repo_ = MakeRepository().release();
    server_ = new ServerProcess(repo_->path(), {});
    ASSERT_TRUE(server_->started()) << server_->Log();
    channel_ = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel(server_->grpc_address(), grpc::InsecureChannelCredentials()));
    stub_ = pb::GRPCInferenceService::NewStub(*channel_).release();
  }
  static void TearDownTestSuite() {
    delete stub_;
    delete channel_;
    delete server_;
    delete repo_;
  }
  void SetUp() override { ASSERT_TRUE(server_ != nullptr && server_->started()); }

  static std::string ModelFile() { return (repo_->path() / "cifar" / "1" / "model.onnx").string(); }

  // The logits the HTTP frontend answers for the same input (JSON in, JSON out).
  static std::vector<float> HttpLogits(const std::vector<float>& input, int64_t batch) {
    HttpRequest post;
    post.method = "POST";
    post.body = InferJson(input, batch);
    auto r = Http(server_->url() + "/v2/models/cifar/infer", post);
    EXPECT_EQ(r.status, 200) << r.body;
    if (r.status != 200) return {};
    return json::parse(r.body)["outputs"][0]["data"].get<std::vector<float>>();
  }

  static pb::ModelStatistics CifarStats() {
    pb::ModelStatisticsRequest req;
    req.set_name("cifar");
    pb::ModelStatisticsResponse resp;
    auto s = stub_->ModelStatistics(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << Describe(s);
    EXPECT_EQ(resp.model_stats_size(), 1);
    return resp.model_stats_size() == 1 ? resp.model_stats(0) : pb::ModelStatistics();
  }

  // grpc.health.v1.Health/Check for `service` ("" = the whole server), through a generic stub
  // (grpc++ ships the health service, not its client stubs): the serialized
  // HealthCheckResponse, or the RPC's failure.
  static std::pair<grpc::Status, std::string> HealthCheck(const std::string& service) {
    std::string request;  // HealthCheckRequest{string service = 1}
    if (!service.empty()) {
      request += static_cast<char>(0x0A);
      request += static_cast<char>(service.size());
      request += service;
    }
    grpc::Slice slice(request);
    grpc::ByteBuffer req(&slice, 1), resp;
    grpc::GenericStub generic(*channel_);
    auto ctx = Ctx();
    std::promise<grpc::Status> done;
    generic.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                      [&done](grpc::Status s) { done.set_value(std::move(s)); });
    grpc::Status s = done.get_future().get();
    std::string body;
    if (s.ok()) {
      std::vector<grpc::Slice> slices;
      EXPECT_TRUE(resp.Dump(&slices).ok());
      for (const auto& sl : slices)
        body.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    }
    return {s, body};
  }

  static Repository* repo_;
  static ServerProcess* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static pb::GRPCInferenceService::Stub* stub_;
};
Repository* GrpcTest::repo_ = nullptr;
ServerProcess* GrpcTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* GrpcTest::channel_ = nullptr;
pb::GRPCInferenceService::Stub* GrpcTest::stub_ = nullptr;

// HealthCheckResponse{ServingStatus status = 1}, SERVING = 1.
const std::string kServing("\x08\x01", 2);

TEST_F(GrpcTest, HealthReadinessAndMetadata) {
  pb::ServerLiveResponse live;
  ASSERT_TRUE(stub_->ServerLive(Ctx().get(), {}, &live).ok());
  EXPECT_TRUE(live.live());
  pb::ServerReadyResponse ready;
  ASSERT_TRUE(stub_->ServerReady(Ctx().get(), {}, &ready).ok());
  EXPECT_TRUE(ready.ready());

  // Triton answers an unknown model (or version) with ready: false and status OK.
  struct ReadyCase {
    const char* name;
    const char* version;
    bool ready;
  };
  for (const auto& c : std::vector<ReadyCase>{{"cifar", "", true},
                                              {"cifar", "1", true},
                                              {"cifar", "7", false},
                                              {"nope", "", false},
                                              {"fixed", "", false}}) {
    SCOPED_TRACE(std::string(c.name) + " version '" + c.version + "'");
    pb::ModelReadyRequest req;
    req.set_name(c.name);
    req.set_version(c.version);
    pb::ModelReadyResponse resp;
    auto s = stub_->ModelReady(Ctx().get(), req, &resp);
    ASSERT_TRUE(s.ok()) << Describe(s);
    EXPECT_EQ(resp.ready(), c.ready);
  }

  pb::ServerMetadataResponse server;
  ASSERT_TRUE(stub_->ServerMetadata(Ctx().get(), {}, &server).ok());
  EXPECT_EQ(server.name(), "kiln");
  EXPECT_FALSE(server.version().empty());
  const std::set<std::string> extensions(server.extensions().begin(), server.extensions().end());
  EXPECT_TRUE(extensions.count("classification"));
  EXPECT_TRUE(extensions.count("statistics"));

  pb::ModelMetadataRequest mreq;
  mreq.set_name("cifar");
  pb::ModelMetadataResponse meta;
  auto s = stub_->ModelMetadata(Ctx().get(), mreq, &meta);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(meta.name(), "cifar");
  EXPECT_EQ(std::vector<std::string>(meta.versions().begin(), meta.versions().end()),
            std::vector<std::string>{"1"});
  EXPECT_EQ(meta.platform(), "onnxruntime_onnx");
  ASSERT_EQ(meta.inputs_size(), 1);
  EXPECT_EQ(meta.inputs(0).name(), "input");
  EXPECT_EQ(meta.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(meta.inputs(0).shape().begin(), meta.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 3, 32, 32}));
  ASSERT_EQ(meta.outputs_size(), 1);
  EXPECT_EQ(meta.outputs(0).name(), "logits");
  EXPECT_EQ(meta.outputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(meta.outputs(0).shape().begin(), meta.outputs(0).shape().end()),
            (std::vector<int64_t>{-1, 10}));
  mreq.set_name("nope");
  EXPECT_EQ(stub_->ModelMetadata(Ctx().get(), mreq, &meta).error_code(),
            grpc::StatusCode::NOT_FOUND);

  pb::ModelConfigRequest creq;
  creq.set_name("cifar");
  pb::ModelConfigResponse config;
  s = stub_->ModelConfig(Ctx().get(), creq, &config);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(config.config().name(), "cifar");
  EXPECT_EQ(config.config().max_batch_size(), 8);
  ASSERT_EQ(config.config().input_size(), 1);
  EXPECT_EQ(config.config().input(0).name(), "input");
  EXPECT_EQ(config.config().dynamic_batching().preferred_batch_size_size(), 2);
  // The TorchScript model has no config.pbtxt: the completed config is served.
  creq.set_name("torch");
  s = stub_->ModelConfig(Ctx().get(), creq, &config);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(config.config().platform(), "pytorch_libtorch");
  EXPECT_EQ(config.config().max_batch_size(), 32);
  creq.set_name("nope");
  EXPECT_EQ(stub_->ModelConfig(Ctx().get(), creq, &config).error_code(),
            grpc::StatusCode::NOT_FOUND);

  for (const char* service : {"", "inference.GRPCInferenceService"}) {
    SCOPED_TRACE(std::string("health service '") + service + "'");
    auto [hs, body] = HealthCheck(service);
    ASSERT_TRUE(hs.ok()) << Describe(hs);
    EXPECT_EQ(body, kServing);
  }
  EXPECT_EQ(HealthCheck("no.such.Service").first.error_code(), grpc::StatusCode::NOT_FOUND);
}

// The same engine answers both frontends: gRPC (either encoding) gives what HTTP JSON gives.
TEST_F(GrpcTest, InferMatchesHttpAndOnnxRuntime) {
  const auto input = RandomInput(3, 21);
  const auto http = HttpLogits(input, 3);
  const auto reference = Reference(ModelFile(), input, 3);
  for (Encoding e : {Encoding::kContents, Encoding::kRaw}) {
    const std::string id = e == Encoding::kRaw ? "raw-1" : "contents-1";
    SCOPED_TRACE(id);
    pb::ModelInferResponse resp;
    auto s = stub_->ModelInfer(Ctx().get(), InferRequest(input, 3, e, id), &resp);
    ASSERT_TRUE(s.ok()) << Describe(s);
    EXPECT_EQ(resp.model_name(), "cifar");
    EXPECT_EQ(resp.model_version(), "1");
    EXPECT_EQ(resp.id(), id);
    ASSERT_EQ(resp.outputs_size(), 1);
    EXPECT_EQ(resp.outputs(0).name(), "logits");
    EXPECT_EQ(resp.outputs(0).datatype(), "FP32");
    EXPECT_EQ(std::vector<int64_t>(resp.outputs(0).shape().begin(), resp.outputs(0).shape().end()),
              (std::vector<int64_t>{3, 10}));
    EXPECT_FALSE(resp.outputs(0).has_contents());  // Triton answers with raw_output_contents
    const auto got = Floats(resp);
    ASSERT_EQ(got.size(), 30U);
    EXPECT_LT(MaxAbsDiff(got, http), 1e-6f);
    EXPECT_LT(MaxAbsDiff(got, reference), 1e-5f);
  }
  // Asking for the output by name is the same as asking for every output.
  auto req = InferRequest(input, 3, Encoding::kRaw);
  req.add_outputs()->set_name("logits");
  pb::ModelInferResponse named;
  ASSERT_TRUE(stub_->ModelInfer(Ctx().get(), req, &named).ok());
  EXPECT_LT(MaxAbsDiff(Floats(named), http), 1e-6f);
  // A version may be named.
  req.set_model_version("1");
  ASSERT_TRUE(stub_->ModelInfer(Ctx().get(), req, &named).ok());
  EXPECT_EQ(named.model_version(), "1");
}

TEST_F(GrpcTest, ClassificationGivesTheTopKStrings) {
  const auto input = RandomInput(2, 22);
  const auto logits = Reference(ModelFile(), input, 2);
  auto req = InferRequest(input, 2, Encoding::kRaw, "cls");
  auto* out = req.add_outputs();
  out->set_name("logits");
  (*out->mutable_parameters())["classification"].set_int64_param(3);
  pb::ModelInferResponse resp;
  auto s = stub_->ModelInfer(Ctx().get(), req, &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(resp.id(), "cls");
  ASSERT_EQ(resp.outputs_size(), 1);
  EXPECT_EQ(resp.outputs(0).datatype(), "BYTES");
  EXPECT_EQ(std::vector<int64_t>(resp.outputs(0).shape().begin(), resp.outputs(0).shape().end()),
            (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(resp.raw_output_contents_size(), 1);
  const auto strings = Strings(resp.raw_output_contents(0));
  ASSERT_EQ(strings.size(), 6U);
  for (int row = 0; row < 2; ++row) {
    const float* v = logits.data() + row * 10;
    const int64_t best = std::max_element(v, v + 10) - v;
    double previous = INFINITY;
    for (int i = 0; i < 3; ++i) {
      const std::string& e = strings[static_cast<size_t>(row * 3 + i)];
      SCOPED_TRACE(e);
      // "<value>:<index>:<label>"
      const size_t a = e.find(':'), b = e.find(':', a + 1);
      ASSERT_NE(b, std::string::npos);
      const double value = std::stod(e.substr(0, a));
      const int64_t index = std::stoll(e.substr(a + 1, b - a - 1));
      ASSERT_GE(index, 0);
      ASSERT_LT(index, 10);
      EXPECT_EQ(e.substr(b + 1), kClasses[static_cast<size_t>(index)]);
      EXPECT_NEAR(value, v[index], 1e-5);
      EXPECT_LE(value, previous);
      previous = value;
      if (i == 0) {
        EXPECT_EQ(index, best);
      }
    }
  }
}

TEST_F(GrpcTest, InvalidRequestsAreRejectedAndTheServerGoesOn) {
  const auto input = RandomInput(1, 23);
  struct Case {
    const char* name;
    std::function<void(pb::ModelInferRequest*)> change;
    grpc::StatusCode code;
    const char* message;  // part of the error message
  };
  const std::vector<Case> cases = {
      {"unknown model", [](auto* r) { r->set_model_name("nope"); }, grpc::StatusCode::NOT_FOUND,
       "nope"},
      {"unknown version", [](auto* r) { r->set_model_version("7"); }, grpc::StatusCode::NOT_FOUND,
       "7"},
      {"wrong shape", [](auto* r) { r->mutable_inputs(0)->set_shape(3, 31); },
       grpc::StatusCode::INVALID_ARGUMENT, "shape"},
      {"batch over max_batch_size", [](auto* r) { r->mutable_inputs(0)->set_shape(0, 9); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_batch_size"},
      {"wrong datatype", [](auto* r) { r->mutable_inputs(0)->set_datatype("FP64"); },
       grpc::StatusCode::INVALID_ARGUMENT, "datatype"},
      {"wrong input name", [](auto* r) { r->mutable_inputs(0)->set_name("x"); },
       grpc::StatusCode::INVALID_ARGUMENT, "unexpected inference input 'x'"},
      {"two inputs", [](auto* r) { *r->add_inputs() = r->inputs(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "expects 1 input"},
      {"too few values",
       [](auto* r) {
         r->mutable_inputs(0)->mutable_contents()->mutable_fp32_contents()->RemoveLast();
       },
       grpc::StatusCode::INVALID_ARGUMENT, "fp32_contents"},
      {"no data", [](auto* r) { r->mutable_inputs(0)->clear_contents(); },
       grpc::StatusCode::INVALID_ARGUMENT, "neither"},
      {"raw size mismatch",
       [&](auto* r) {
         r->mutable_inputs(0)->clear_contents();
         r->add_raw_input_contents(Bytes(input).substr(4));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "bytes"},
      {"raw and contents mixed", [&](auto* r) { r->add_raw_input_contents(Bytes(input)); },
       grpc::StatusCode::INVALID_ARGUMENT, "raw_input_contents"},
      {"unknown output", [](auto* r) { r->add_outputs()->set_name("probs"); },
       grpc::StatusCode::INVALID_ARGUMENT, "unexpected inference output 'probs'"},
      {"classification 0",
       [](auto* r) {
         auto* o = r->add_outputs();
         o->set_name("logits");
         (*o->mutable_parameters())["classification"].set_int64_param(0);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "classification"},
      {"classification as a string",
       [](auto* r) {
         auto* o = r->add_outputs();
         o->set_name("logits");
         (*o->mutable_parameters())["classification"].set_string_param("3");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "classification"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto req = InferRequest(input, 1, Encoding::kContents);
    c.change(&req);
    pb::ModelInferResponse resp;
    auto s = stub_->ModelInfer(Ctx().get(), req, &resp);
    EXPECT_EQ(s.error_code(), c.code) << Describe(s);
    EXPECT_NE(s.error_message().find(c.message), std::string::npos) << s.error_message();
  }
  // Still serving, on the same channel.
  pb::ModelInferResponse resp;
  auto s = stub_->ModelInfer(Ctx().get(), InferRequest(input, 1, Encoding::kContents), &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_LT(MaxAbsDiff(Floats(resp), Reference(ModelFile(), input, 1)), 1e-5f);
}

TEST_F(GrpcTest, StatisticsCountInferencesAndExecutions) {
  const auto before = CifarStats();
  // Sequential requests: one execution each; inference_count counts batch elements.
  for (int64_t batch : {1, 2, 3}) {
    pb::ModelInferResponse resp;
    auto s = stub_->ModelInfer(Ctx().get(),
                               InferRequest(RandomInput(batch, 24), batch, Encoding::kRaw), &resp);
    ASSERT_TRUE(s.ok()) << Describe(s);
  }
  const auto after = CifarStats();
  EXPECT_EQ(after.name(), "cifar");
  EXPECT_EQ(after.version(), "1");
  EXPECT_EQ(after.inference_count() - before.inference_count(), 6U);
  EXPECT_EQ(after.execution_count() - before.execution_count(), 3U);
  const auto& st = after.inference_stats();
  EXPECT_EQ(st.success().count() - before.inference_stats().success().count(), 3U);
  for (const auto* d :
       {&st.queue(), &st.compute_input(), &st.compute_infer(), &st.compute_output()}) {
    EXPECT_GT(d->ns(), 0U);
    EXPECT_EQ(d->count(), st.success().count());
  }
  EXPECT_GT(after.batch_stats_size(), 0);
  EXPECT_GT(after.last_inference(), 0U);

  pb::ModelStatisticsResponse all;
  ASSERT_TRUE(stub_->ModelStatistics(Ctx().get(), {}, &all).ok());
  EXPECT_GE(all.model_stats_size(), 3);  // cifar, queue, timeout, torch
  pb::ModelStatisticsRequest nope;
  nope.set_name("nope");
  EXPECT_EQ(stub_->ModelStatistics(Ctx().get(), nope, &all).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(GrpcTest, RepositoryIndexAndControl) {
  pb::RepositoryIndexResponse index;
  ASSERT_TRUE(stub_->RepositoryIndex(Ctx().get(), {}, &index).ok());
  std::map<std::string, pb::RepositoryIndexResponse::ModelIndex> by_name;
  for (const auto& m : index.models()) by_name[m.name()] = m;
  EXPECT_EQ(by_name["cifar"].state(), "READY");
  EXPECT_EQ(by_name["cifar"].version(), "1");
  EXPECT_EQ(by_name["fixed"].state(), "UNAVAILABLE");
  EXPECT_FALSE(by_name["fixed"].reason().empty());
  pb::RepositoryIndexRequest ready_only;
  ready_only.set_ready(true);
  ASSERT_TRUE(stub_->RepositoryIndex(Ctx().get(), ready_only, &index).ok());
  EXPECT_GT(index.models_size(), 0);
  for (const auto& m : index.models()) EXPECT_EQ(m.state(), "READY") << m.name();
  // Load/unload are refused unless the server runs in explicit mode (as over HTTP).
  pb::RepositoryModelUnloadRequest unload;
  unload.set_model_name("cifar");
  pb::RepositoryModelUnloadResponse unloaded;
  EXPECT_EQ(stub_->RepositoryModelUnload(Ctx().get(), unload, &unloaded).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(GrpcTest, StreamInferAnswersEveryRequestById) {
  struct Sent {
    std::string id;
    int64_t batch;
    Encoding encoding;
    std::vector<float> input;
  };
  std::vector<Sent> sent = {{"s0", 1, Encoding::kContents, RandomInput(1, 30)},
                            {"s1", 2, Encoding::kRaw, RandomInput(2, 31)},
                            {"s2", 3, Encoding::kContents, RandomInput(3, 32)}};
  auto ctx = Ctx();
  auto stream = stub_->ModelStreamInfer(ctx.get());
  for (const auto& s : sent) {
    ASSERT_TRUE(stream->Write(InferRequest(s.input, s.batch, s.encoding, s.id)));
  }
  // An invalid request answers with error_message; the stream goes on.
  auto bad = InferRequest(RandomInput(1, 33), 1, Encoding::kContents, "bad");
  bad.mutable_inputs(0)->set_datatype("INT8");
  ASSERT_TRUE(stream->Write(bad));
  ASSERT_TRUE(stream->WritesDone());
  std::map<std::string, pb::ModelStreamInferResponse> got;
  pb::ModelStreamInferResponse r;
  while (stream->Read(&r)) got[r.infer_response().id()] = r;
  auto s = stream->Finish();
  ASSERT_TRUE(s.ok()) << Describe(s);
  ASSERT_EQ(got.size(), 4U);
  for (const auto& x : sent) {
    SCOPED_TRACE(x.id);
    ASSERT_TRUE(got.count(x.id));
    const auto& resp = got[x.id];
    EXPECT_TRUE(resp.error_message().empty()) << resp.error_message();
    EXPECT_EQ(resp.infer_response().model_name(), "cifar");
    EXPECT_LT(MaxAbsDiff(Floats(resp.infer_response()), Reference(ModelFile(), x.input, x.batch)),
              1e-5f);
  }
  ASSERT_TRUE(got.count("bad"));
  EXPECT_NE(got["bad"].error_message().find("datatype"), std::string::npos)
      << got["bad"].error_message();
}

// A port bound (and listened on) by the test; -1 when it could not bind (someone else holds it).
class HeldPort {
 public:
  explicit HeldPort(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd_, 4) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~HeldPort() {
    if (fd_ >= 0) close(fd_);
  }
  HeldPort(const HeldPort&) = delete;
  HeldPort& operator=(const HeldPort&) = delete;

 private:
  int fd_ = -1;
};

// The port decision (docs/decisions.md): a busy --grpc-port given on the command line is an
// error; a busy default port (8001) only warns, and HTTP serves; SIGTERM exits 0.
// The load's configuration override over gRPC, as over HTTP: a config string parameter is
// applied; malformed JSON, a non-string config and file overrides are INVALID_ARGUMENT and the
// loaded version goes on serving.
TEST(GrpcRepositoryTest, LoadWithAConfigOverride) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {"--model-control-mode", "explicit", "--load-model", "cifar"});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = pb::GRPCInferenceService::NewStub(
      grpc::CreateChannel(server.grpc_address(), grpc::InsecureChannelCredentials()));
  auto max_batch = [&] {
    pb::ModelConfigRequest req;
    req.set_name("cifar");
    pb::ModelConfigResponse resp;
    EXPECT_TRUE(stub->ModelConfig(Ctx().get(), req, &resp).ok());
    return resp.config().max_batch_size();
  };
  auto load = [&](const std::string& key, const pb::ModelRepositoryParameter& value) {
    pb::RepositoryModelLoadRequest req;
    req.set_model_name("cifar");
    (*req.mutable_parameters())[key] = value;
    pb::RepositoryModelLoadResponse resp;
    return stub->RepositoryModelLoad(Ctx().get(), req, &resp);
  };
  auto text = [](const std::string& s) {
    pb::ModelRepositoryParameter p;
    p.set_string_param(s);
    return p;
  };
  ASSERT_EQ(max_batch(), 8);
  auto applied = load("config", text(R"({"max_batch_size": 2, "dynamic_batching": {}})"));
  ASSERT_TRUE(applied.ok()) << Describe(applied);
  EXPECT_EQ(max_batch(), 2);
  pb::ModelRepositoryParameter number;
  number.set_int64_param(4);
  const std::pair<std::string, pb::ModelRepositoryParameter> bad[] = {
      {"config", text("max_batch_size: 4")}, {"config", number}, {"file:1/model.onnx", text("x")}};
  for (const auto& [key, value] : bad) {
    auto s = load(key, value);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << key << ": " << Describe(s);
    EXPECT_EQ(max_batch(), 2) << key;
  }
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

TEST(GrpcPortTest, BusyPortsAndSigterm) {
  auto repo = MakeRepository();
  {
    const int busy = testing::FreePort();
    HeldPort held(busy);
    ServerProcess server(repo->path(), {"--grpc-port", std::to_string(busy)},
                         /*grpc_port=*/false);
    EXPECT_FALSE(server.started()) << server.Log();
    EXPECT_NE(server.Log().find("cannot listen for gRPC on 127.0.0.1:" + std::to_string(busy)),
              std::string::npos)
        << server.Log();
  }
  {
    HeldPort held(8001);  // if someone else holds 8001, it is just as busy
    ServerProcess server(repo->path(), {}, /*grpc_port=*/false);
    ASSERT_TRUE(server.started()) << server.Log();
    EXPECT_NE(server.Log().find("warning: no gRPC server"), std::string::npos) << server.Log();
    EXPECT_EQ(Http(server.url() + "/v2/health/ready").status, 200);
    EXPECT_EQ(server.Terminate(), 0) << server.Log();
  }
  {
    ServerProcess server(repo->path(), {"--grpc-port", "0"}, /*grpc_port=*/false);
    ASSERT_TRUE(server.started()) << server.Log();
    EXPECT_EQ(server.Log().find("gRPC"), std::string::npos) << server.Log();
    EXPECT_EQ(server.Terminate(), 0) << server.Log();
  }
  ServerProcess server(repo->path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = pb::GRPCInferenceService::NewStub(
      grpc::CreateChannel(server.grpc_address(), grpc::InsecureChannelCredentials()));
  pb::ModelInferResponse resp;
  auto s =
      stub->ModelInfer(Ctx().get(), InferRequest(RandomInput(1, 40), 1, Encoding::kRaw), &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
  EXPECT_NE(server.Log().find("gRPC listening on 127.0.0.1:"), std::string::npos) << server.Log();
}

}  // namespace
}  // namespace kiln::serve
