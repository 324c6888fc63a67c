// `kiln repo check`: the reasons a model ends up UNAVAILABLE in Triton, found before Triton
// finds them. Static: ONNX graphs are read with the ONNX protobuf API and TorchScript archives
// listed with libarchive, so any repository can be checked without loading its models.
#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "kiln/serve/engine/model_config.h"
#include "kiln/serve/repo/repo.h"
#include "onnx/onnx_pb.h"

namespace kiln::serve::repo {

namespace {

namespace fs = std::filesystem;

struct Tensor {
  std::string name;
  inference::DataType type = inference::TYPE_INVALID;
  std::vector<int64_t> shape;  // -1 for a symbolic dimension
};

struct OnnxModel {
  std::vector<Tensor> inputs, outputs;
};

inference::DataType FromOnnx(int32_t t) {
  switch (t) {
    case onnx::TensorProto::FLOAT:
      return inference::TYPE_FP32;
    case onnx::TensorProto::FLOAT16:
      return inference::TYPE_FP16;
    case onnx::TensorProto::BFLOAT16:
      return inference::TYPE_BF16;
    case onnx::TensorProto::DOUBLE:
      return inference::TYPE_FP64;
    case onnx::TensorProto::INT8:
      return inference::TYPE_INT8;
    case onnx::TensorProto::UINT8:
      return inference::TYPE_UINT8;
    case onnx::TensorProto::INT16:
      return inference::TYPE_INT16;
    case onnx::TensorProto::UINT16:
      return inference::TYPE_UINT16;
    case onnx::TensorProto::INT32:
      return inference::TYPE_INT32;
    case onnx::TensorProto::UINT32:
      return inference::TYPE_UINT32;
    case onnx::TensorProto::INT64:
      return inference::TYPE_INT64;
    case onnx::TensorProto::UINT64:
      return inference::TYPE_UINT64;
    case onnx::TensorProto::BOOL:
      return inference::TYPE_BOOL;
    case onnx::TensorProto::STRING:
      return inference::TYPE_STRING;
    default:
      return inference::TYPE_INVALID;
  }
}

Result<OnnxModel> ReadOnnx(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  onnx::ModelProto m;
  if (!in || !m.ParseFromIstream(&in)) {
    return InvalidArgumentError(file.string() + " is not an ONNX model (protobuf parse failed)");
  }
  std::set<std::string> initializers;
  for (const auto& i : m.graph().initializer()) initializers.insert(i.name());
  auto tensors = [](const auto& list, const std::set<std::string>& skip) {
    std::vector<Tensor> out;
    for (const auto& v : list) {
      if (skip.count(v.name()) > 0) continue;
      Tensor t{v.name(), FromOnnx(v.type().tensor_type().elem_type()), {}};
      for (const auto& d : v.type().tensor_type().shape().dim()) {
        t.shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
      }
      out.push_back(std::move(t));
    }
    return out;
  };
  return OnnxModel{tensors(m.graph().input(), initializers), tensors(m.graph().output(), {})};
}

struct TorchScriptArchive {
  bool zip = false;
  bool has_code = false;   // a code/ folder: TorchScript (torch.save() archives have none)
  bool quantized = false;  // quantized ops in its code, or quantized tensors in its data
};

TorchScriptArchive ReadTorchScript(const fs::path& file) {
  TorchScriptArchive t;
  archive* a = archive_read_new();
  archive_read_support_format_zip(a);
  if (archive_read_open_filename(a, file.c_str(), 1 << 16) == ARCHIVE_OK) {
    t.zip = true;
    archive_entry* e = nullptr;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
      const std::string path = archive_entry_pathname(e);
      const bool code = path.find("/code/") != std::string::npos;
      const bool pickle = path.ends_with(".pkl");
      t.has_code = t.has_code || code;
      if ((!code || !path.ends_with(".py")) && !pickle) continue;
      std::string text;
      char buf[1 << 14];
      for (la_ssize_t n;
           (n = archive_read_data(a, buf, sizeof buf)) > 0 && text.size() < (64u << 20);) {
        text.append(buf, static_cast<size_t>(n));
      }
      if (text.find("ops.quantized.") != std::string::npos ||
          text.find("quantized::") != std::string::npos ||
          text.find("QInt8Storage") != std::string::npos ||
          text.find("QUInt8Storage") != std::string::npos) {
        t.quantized = true;
      }
    }
  }
  archive_read_free(a);
  return t;
}

std::vector<std::string> ReadLabels(const fs::path& p) {
  std::vector<std::string> lines;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  while (!lines.empty() && (lines.back().empty() || lines.back() == "\r")) lines.pop_back();
  return lines;
}

std::string ShapeText(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

template <typename Dims>
std::vector<int64_t> ToVector(const Dims& d) {
  return std::vector<int64_t>(d.begin(), d.end());
}

class ModelChecker {
 public:
  ModelChecker(const fs::path& dir, const CheckOptions& o, std::vector<Finding>* out)
      : dir_(dir), name_(dir.filename().string()), o_(o), out_(out) {}

  void Run() {
    std::error_code ec;
    std::vector<int64_t> versions;
    std::vector<std::string> not_numeric;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
      if (!e.is_directory(ec)) continue;
      const std::string n = e.path().filename().string();
      if (n == "warmup" || n.empty() || n[0] == '.') continue;
      if (n.size() <= 18 &&
          std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        versions.push_back(std::stoll(n));
      } else {
        not_numeric.push_back(n);
      }
    }
    std::sort(versions.begin(), versions.end());
    const bool has_config = fs::exists(dir_ / "config.pbtxt", ec);
    if (has_config) {
      std::ifstream in(dir_ / "config.pbtxt", std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      std::vector<std::string> warnings;
      auto c = ParseModelConfig(ss.str(), &warnings);
      if (!c.ok()) {
        return Error(c.status().message(),
                     "correct the syntax (protobuf text format of "
                     "inference::ModelConfig)");
      }
      config_ = std::move(c).value();
      if (!config_.name().empty() && config_.name() != name_) {
        Error("config.pbtxt names model '" + config_.name() + "' but the folder is '" + name_ + "'",
              "make name: \"" + name_ + "\" (or drop the name field)");
      }
    }
    if (versions.empty()) {
      std::string also;
      for (const auto& n : not_numeric) also += (also.empty() ? " (found: " : ", ") + n;
      if (!also.empty()) also += ")";
      return Error("no numeric version folder" + also,
                   "put the model file into " + name_ + "/1/ (version folders are numbers)");
    }
    if (config_.version_policy().has_specific()) {
      for (int64_t v : config_.version_policy().specific().versions()) {
        if (!std::binary_search(versions.begin(), versions.end(), v)) {
          Error("version_policy names version " + std::to_string(v) + " but " + name_ + "/" +
                    std::to_string(v) + "/ does not exist",
                "add the folder or drop the version from version_policy");
        }
      }
    }
    std::string platform = config_.platform();
    if (platform.empty() && config_.backend() == kOpenVinoBackend) return CheckOpenVino(versions);
    if (platform.empty() && config_.backend() == "onnxruntime") platform = kOnnxPlatform;
    if (platform.empty() && config_.backend() == "pytorch") platform = kTorchPlatform;
    const fs::path latest = dir_ / std::to_string(versions.back());
    if (platform.empty()) {
      if (o_.strict && has_config) {
        Error("the config names no platform or backend",
              "add platform: \"onnxruntime_onnx\" (or \"pytorch_libtorch\")");
      }
      if (fs::exists(latest / "model.onnx", ec)) platform = kOnnxPlatform;
      if (fs::exists(latest / "model.pt", ec)) platform = kTorchPlatform;
    }
    if (platform != kOnnxPlatform && platform != kTorchPlatform) {
      if (!platform.empty()) {
        Warning("platform '" + platform + "' is not checked by kiln repo check", "");
      } else {
        Error(
            "no config.pbtxt naming a platform and no model.onnx or model.pt in " + latest.string(),
            "add the model file, or a config.pbtxt with platform or backend");
      }
      return;
    }
    const bool torch = platform == kTorchPlatform;
    if (!has_config) {
      if (torch) {
        return Error(
            "no config.pbtxt: Triton's PyTorch backend cannot complete a config from a "
            "TorchScript file",
            "write one (kiln repo write does) with inputs INPUT__0 and outputs OUTPUT__0");
      }
      if (o_.strict) {
        return Error(
            "no config.pbtxt (with --disable-auto-complete-config Triton loads nothing "
            "without one)",
            "write a complete config.pbtxt (kiln repo write does)");
      }
      Warning("no config.pbtxt: the model loads only where Triton auto-completes configs",
              "write a complete config.pbtxt (kiln repo write does)");
    }
    CheckBatching();
    for (int64_t v : versions) {
      const std::string file = config_.default_model_filename().empty()
                                   ? (torch ? "model.pt" : "model.onnx")
                                   : config_.default_model_filename();
      const fs::path path = dir_ / std::to_string(v) / file;
      if (!fs::exists(path, ec)) {
        Error("version " + std::to_string(v) + ": no " + file,
              "put the model file at " + path.string());
        continue;
      }
      torch ? CheckTorchScript(path) : CheckOnnx(path);
    }
  }

 private:
  void Error(std::string problem, std::string fix) {
    out_->push_back({Severity::kError, name_, std::move(problem), std::move(fix)});
  }
  void Warning(std::string problem, std::string fix) {
    out_->push_back({Severity::kWarning, name_, std::move(problem), std::move(fix)});
  }

  void CheckBatching() {
    if (config_.max_batch_size() < 0) Error("max_batch_size is negative", "make it 0 or more");
    if (config_.has_dynamic_batching()) {
      for (int p : config_.dynamic_batching().preferred_batch_size()) {
        if (p < 1 || p > config_.max_batch_size()) {
          Error("dynamic_batching.preferred_batch_size " + std::to_string(p) +
                    " is outside [1, max_batch_size " + std::to_string(config_.max_batch_size()) +
                    "]",
                "drop it, or raise max_batch_size");
        }
      }
    }
    if (!o_.strict) return;
    auto complete = [&](const char* kind, const auto& tensors) {
      if (tensors.empty()) {
        Error(std::string("the config lists no ") + kind + "s",
              std::string("list each ") + kind + " with name, data_type and dims");
      }
      for (const auto& t : tensors) {
        if (t.data_type() == inference::TYPE_INVALID) {
          Error(std::string(kind) + " '" + t.name() + "' has no data_type", "add data_type");
        }
        if (t.dims().empty()) {
          Error(std::string(kind) + " '" + t.name() + "' has no dims", "add dims");
        }
      }
    };
    complete("input", config_.input());
    complete("output", config_.output());
  }

  bool OnGpu() const {
    return std::any_of(
        config_.instance_group().begin(), config_.instance_group().end(),
        [](const auto& g) { return g.kind() == inference::ModelInstanceGroup::KIND_GPU; });
  }

  // Output label files against the classes (the last dim of the output).
  void CheckLabels(const std::string& output, const std::vector<int64_t>& shape,
                   const std::string& label_file) {
    if (label_file.empty() || shape.empty()) return;
    std::error_code ec;
    const fs::path p = dir_ / label_file;
    if (!fs::exists(p, ec)) {
      return Error("output '" + output + "': label_filename '" + label_file + "' not found",
                   "add " + p.string() + " (one label per line) or drop label_filename");
    }
    const int64_t classes = shape.back();
    const auto labels = ReadLabels(p);
    if (classes > 0 && static_cast<int64_t>(labels.size()) != classes) {
      Error("output '" + output + "': " + label_file + " has " + std::to_string(labels.size()) +
                " labels but the output has " + std::to_string(classes) + " classes",
            "write one label per class, in the order of the output");
    }
  }

  template <typename List>
  void CheckTensors(const char* kind, const List& config, const std::vector<Tensor>& model,
                    const std::string& file) {
    std::string names;
    for (const auto& t : model) names += (names.empty() ? "'" : ", '") + t.name + "'";
    for (const auto& c : config) {
      const auto it = std::find_if(model.begin(), model.end(),
                                   [&](const Tensor& t) { return t.name == c.name(); });
      if (it == model.end()) {
        Error(std::string(kind) + " '" + c.name() + "' is not a tensor of " + file + " (it has " +
                  names + ")",
              "use the model's names in config.pbtxt");
        continue;
      }
      const Tensor& t = *it;
      if (c.data_type() != inference::TYPE_INVALID && t.type != inference::TYPE_INVALID &&
          c.data_type() != t.type) {
        Error(std::string(kind) + " '" + c.name() + "': data_type " +
                  inference::DataType_Name(c.data_type()) + " but the model's is " +
                  inference::DataType_Name(t.type),
              "write data_type: " + inference::DataType_Name(t.type));
      }
      const auto dims = ToVector(c.dims());
      if (config_.max_batch_size() > 0) {
        if (t.shape.empty() || t.shape[0] != -1) {
          Error(std::string(kind) + " '" + c.name() + "': max_batch_size is " +
                    std::to_string(config_.max_batch_size()) + " but the model's shape " +
                    ShapeText(t.shape) +
                    " has a fixed first dimension (exported with a fixed "
                    "batch)",
                "export the model with a dynamic batch axis, or set max_batch_size: 0 and give "
                "the full shape in dims");
          continue;
        }
        if (dims.empty()) continue;
        const std::vector<int64_t> want(t.shape.begin() + 1, t.shape.end());
        if (dims.size() == t.shape.size()) {
          Error(std::string(kind) + " '" + c.name() + "': dims " + ShapeText(dims) +
                    " include the batch dimension",
                "with max_batch_size > 0 the batch is implicit: write dims: " + ShapeText(want));
        } else if (!Matches(dims, want)) {
          Error(std::string(kind) + " '" + c.name() + "': dims " + ShapeText(dims) +
                    " differ from the model's " + ShapeText(want) + " (without the batch)",
                "write dims: " + ShapeText(want));
        }
      } else if (!dims.empty() && !Matches(dims, t.shape)) {
        Error(std::string(kind) + " '" + c.name() + "': dims " + ShapeText(dims) +
                  " differ from the model's shape " + ShapeText(t.shape),
              "with max_batch_size: 0, dims are the full shape: write dims: " + ShapeText(t.shape));
      }
    }
  }

  static bool Matches(const std::vector<int64_t>& dims, const std::vector<int64_t>& model) {
    if (dims.size() != model.size()) return false;
    for (size_t i = 0; i < dims.size(); ++i) {
      if (model[i] != -1 && dims[i] != -1 && dims[i] != model[i]) return false;
    }
    return true;
  }

  void CheckOnnx(const fs::path& file) {
    auto m = ReadOnnx(file);
    if (!m.ok()) return Error(m.status().message(), "export the model again");
    CheckTensors("input", config_.input(), m->inputs, file.filename().string());
    CheckTensors("output", config_.output(), m->outputs, file.filename().string());
    for (const auto& c : config_.output()) {
      auto it = std::find_if(m->outputs.begin(), m->outputs.end(),
                             [&](const Tensor& t) { return t.name == c.name(); });
      CheckLabels(c.name(), it != m->outputs.end() ? it->shape : ToVector(c.dims()),
                  c.label_filename());
    }
  }

  // Triton's OpenVINO backend: no platform, model.xml unless default_model_filename says
  // otherwise; ONNX files are checked like the ONNX Runtime backend's, IR is not read here.
  void CheckOpenVino(const std::vector<int64_t>& versions) {
    std::error_code ec;
    CheckBatching();
    const std::string file =
        config_.default_model_filename().empty() ? "model.xml" : config_.default_model_filename();
    for (int64_t v : versions) {
      const fs::path vdir = dir_ / std::to_string(v);
      const fs::path path = vdir / file;
      if (!fs::exists(path, ec)) {
        if (file == "model.xml" && fs::exists(vdir / "model.onnx", ec)) {
          Error("version " + std::to_string(v) +
                    ": backend \"openvino\" looks for model.xml "
                    "(OpenVINO IR) by default, and this version holds model.onnx",
                "add default_model_filename: \"model.onnx\" (Triton's OpenVINO backend reads "
                "ONNX directly)");
        } else {
          Error("version " + std::to_string(v) + ": no " + file,
                "put the model file at " + path.string());
        }
        continue;
      }
      if (path.extension() == ".onnx") {
        CheckOnnx(path);
      } else if (path.extension() == ".xml") {
        if (!fs::exists(fs::path(path).replace_extension(".bin"), ec)) {
          Error("version " + std::to_string(v) + ": " + file + " without its weights file " +
                    fs::path(file).replace_extension(".bin").string(),
                "copy the .bin written beside the .xml");
        }
        Warning(file +
                    ": OpenVINO IR is not read by kiln repo check (tensor names and dims "
                    "are not checked)",
                "");
      }
    }
    if (OnGpu()) {
      Warning("KIND_GPU with backend \"openvino\": Kiln's OpenVINO engine runs on the CPU",
              "use kind: KIND_CPU");
    }
  }

  void CheckTorchScript(const fs::path& file) {
    const TorchScriptArchive t = ReadTorchScript(file);
    if (!t.zip || !t.has_code) {
      return Error(file.filename().string() + " is not a TorchScript archive" +
                       (t.zip ? " (a zip without code/: a torch.save() file)"
                              : " (not a zip: a "
                                "torch.save() pickle)"),
                   "save it with torch.jit.script(model).save() or torch.jit.trace(...).save(), or "
                   "export it with kiln export");
    }
    if (t.quantized && OnGpu()) {
      Error(file.filename().string() +
                " is a quantized TorchScript model on KIND_GPU: "
                "PyTorch's quantized kernels run on CPU only",
            "use kind: KIND_CPU for it, or serve the FP32 model on the GPU");
    }
    auto positional = [&](const char* kind, const auto& list, const char* example) {
      for (const auto& c : list) {
        if (PositionalIndex(c.name()) < 0) {
          Error(std::string("TorchScript ") + kind + " '" + c.name() +
                    "' is not named <name>__<index>: Triton's PyTorch backend finds tensors by "
                    "position",
                std::string("name it ") + example + " (the index is its position)");
        }
      }
    };
    positional("input", config_.input(), "INPUT__0");
    positional("output", config_.output(), "OUTPUT__0");
    for (const auto& c : config_.output()) {
      std::vector<int64_t> shape = ToVector(c.dims());
      CheckLabels(c.name(), shape, c.label_filename());
    }
  }

  const fs::path dir_;
  const std::string name_;
  const CheckOptions& o_;
  std::vector<Finding>* out_;
  inference::ModelConfig config_;
};

}  // namespace

Result<std::vector<Finding>> CheckRepository(const fs::path& dir, const CheckOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFoundError(dir.string() + " is not a folder");
  std::vector<fs::path> models;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory(ec) && !n.empty() && n[0] != '.') models.push_back(e.path());
  }
  std::sort(models.begin(), models.end());
  std::vector<Finding> findings;
  if (models.empty()) {
    findings.push_back({Severity::kError, "", "no model folders in " + dir.string(),
                        "a repository holds one folder per model: <model>/config.pbtxt, "
                        "<model>/1/model.onnx"});
  }
  for (const auto& m : models) ModelChecker(m, options, &findings).Run();
  return findings;
}

}  // namespace kiln::serve::repo
