// Fuzz target: POST /predict end to end in the process: rest::Router over a real Engine (ONNX
// Runtime) serving a tiny image classifier, written once by LLVMFuzzerInitialize into a
// temporary Triton-layout repository:
//   <tmp>/tiny/config.pbtxt        max_batch_size 8, dynamic batching, labels.txt
//   <tmp>/tiny/labels.txt
//   <tmp>/tiny/1/model.onnx        input [N,3,8,8] -> Flatten -> Gemm -> logits [N,10]
// Each input is a Content-Type (up to the first '\n'; e.g. "multipart/form-data; boundary=x",
// "image/png" or anything) and the body. Checks beyond "no crash, no sanitizer report":
//   - the reply comes, exactly once, within 8 s (libFuzzer's -timeout is 10 s): a request the
//     router or the engine drops is a bug;
//   - a JSON reply is valid JSON; 200 carries "predictions" (1 to 10 of them, probabilities in
//     [0, 1]); any other status is 4xx/5xx with an "error" string.
// The engine and the router live for the whole process (they are never destroyed: libFuzzer
// exits without unwinding, and a static destructor would race the engine's threads).
#include <onnx/onnx_pb.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <unistd.h>

#include "../onnx_value_info.h"
#include "../../src/serve/http/router.h"
#include "fuzz_check.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/metrics/metrics.h"

namespace {

namespace fs = std::filesystem;
namespace rest = kiln::serve::rest;

constexpr int kClasses = 10, kSide = 8, kInputs = 3 * kSide * kSide;

std::string TinyClassifier() {
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.set_producer_name("kiln-fuzz");
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(13);
  onnx::GraphProto* g = model.mutable_graph();
  g->set_name("tiny");
  ::kiln::testing::SetFloatTensorType(g->add_input(), "input", {-1, 3, kSide, kSide});
  ::kiln::testing::SetFloatTensorType(g->add_output(), "logits", {-1, kClasses});
  auto add_init = [&](const std::string& name, std::initializer_list<int64_t> dims, int64_t n) {
    onnx::TensorProto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    for (int64_t i = 0; i < n; ++i) t->add_float_data(static_cast<float>((i * 37) % 19 - 9) / 50);
  };
  add_init("W", {kClasses, kInputs}, int64_t{kClasses} * kInputs);
  add_init("B", {kClasses}, kClasses);
  onnx::NodeProto* flat = g->add_node();
  flat->set_op_type("Flatten");
  flat->add_input("input");
  flat->add_output("flat");
  onnx::NodeProto* gemm = g->add_node();
  gemm->set_op_type("Gemm");
  gemm->add_input("flat");
  gemm->add_input("W");
  gemm->add_input("B");
  gemm->add_output("logits");
  onnx::AttributeProto* a = gemm->add_attribute();
  a->set_name("transB");
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(1);
  return model.SerializeAsString();
}

void Write(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
  KILN_FUZZ_CHECK(out.good(), "cannot write " + p.string());
}

rest::Router* router = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/kiln-fuzz-predict-XXXXXX";
  KILN_FUZZ_CHECK(mkdtemp(tmpl) != nullptr, "mkdtemp");
  const fs::path repo = tmpl;
  fs::create_directories(repo / "tiny" / "1");
  Write(repo / "tiny" / "1" / "model.onnx", TinyClassifier());
  Write(repo / "tiny" / "labels.txt",
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n");
  Write(repo / "tiny" / "config.pbtxt", R"(platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
dynamic_batching { max_queue_delay_microseconds: 0 }
instance_group [ { count: 1 kind: KIND_CPU } ]
)");
  kiln::serve::EngineOptions eo;
  eo.repository = repo.string();
  eo.threads = 1;
  eo.request_timeout_ms = 5000;
  auto* registry = new kiln::serve::metrics::Registry();
  auto engine = kiln::serve::Engine::Create(eo, registry);
  KILN_FUZZ_CHECK(engine.ok(), engine.status().ToString());
  auto model = (*engine)->Find("tiny", "");
  KILN_FUZZ_CHECK(model.ok(), model.status().ToString());
  kiln::serve::HttpOptions ho;
  ho.worker_threads = 1;
  ho.image_limits.max_encoded_bytes = 64 << 10;
  ho.image_limits.max_pixels = 256 * 256;
  router = new rest::Router(ho, engine->release(), registry);
  // The repository is read at load; nothing needs it afterwards.
  std::error_code ec;
  fs::remove_all(repo, ec);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nl = in.find('\n');
  rest::Request req;
  req.method = "POST";
  req.path = "/predict";
  if (nl != std::string_view::npos) {
    req.headers.emplace_back("Content-Type", std::string(in.substr(0, nl)));
    req.body = std::string(in.substr(nl + 1));
  } else {
    req.body = std::string(in);
  }
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    int replies = 0;
    rest::Response response;
  };
  auto st = std::make_shared<State>();
  std::string handler;
  router->Dispatch(std::move(req), [st](rest::Response r) {
    std::lock_guard<std::mutex> lock(st->mu);
    KILN_FUZZ_CHECK(++st->replies == 1, "reply called twice");
    st->response = std::move(r);
    st->cv.notify_all();
  }, false, &handler);
  std::unique_lock<std::mutex> lock(st->mu);
  KILN_FUZZ_CHECK(st->cv.wait_for(lock, std::chrono::seconds(8), [&] { return st->replies > 0; }),
                  "no reply within 8 s");
  const rest::Response& r = st->response;
  if (std::getenv("KILN_FUZZ_PRINT") != nullptr) {  // to see what the seeds reach
    std::fprintf(stderr, "predict: %u %.160s\n", r.status, r.body.c_str());
  }
  KILN_FUZZ_CHECK(!handler.empty(), "no handler label");
  if (r.status != 200) {
    kiln::fuzz::CheckErrorResponse(r);
    return 0;
  }
  KILN_FUZZ_CHECK(r.content_type == "application/json", r.content_type);
  const nlohmann::json j = kiln::fuzz::MustParseJson(r.body);
  KILN_FUZZ_CHECK(j.contains("predictions") && j["predictions"].is_array(), r.body);
  const auto& preds = j["predictions"];
  KILN_FUZZ_CHECK(!preds.empty() && preds.size() <= kClasses, r.body);
  for (const auto& p : preds) {
    KILN_FUZZ_CHECK(p["probability"].is_number(), r.body);
    const double prob = p["probability"].get<double>();
    KILN_FUZZ_CHECK(prob >= 0 && prob <= 1, r.body);
  }
  return 0;
}
