#include "kiln/serve/engine/model_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include <sstream>

namespace kiln::serve {

namespace {

// Well-formed UTF-8 (RFC 3629: shortest forms only, no surrogates, at most U+10FFFF).
bool IsUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xe  ? 3
                     : (c >> 3) == 0x1e ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      if ((t & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (t & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

// The path of the first string field of `m` (nested messages and map entries included) that is
// not valid UTF-8, or "". The text format takes any bytes in a string ("\300" escapes too), but
// proto3 strings must be UTF-8: the config is printed as JSON by GET .../config and serialized
// by the gRPC frontend.
std::string InvalidUtf8Field(const google::protobuf::Message& m, const std::string& prefix) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int i = 0; i < n; ++i) {
      if (f->type() == FieldDescriptor::TYPE_STRING) {
        const std::string v = f->is_repeated() ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
        if (!IsUtf8(v)) return path;
      } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        const std::string bad = InvalidUtf8Field(
            f->is_repeated() ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f), path);
        if (!bad.empty()) return bad;
      }
    }
  }
  return "";
}

class Collector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (error.empty()) {
      error = "config.pbtxt line " + std::to_string(line + 1) + ", column " +
              std::to_string(column + 1) + ": " + message;
    }
  }
  void AddWarning(int line, google::protobuf::io::ColumnNumber column,
                  const std::string& message) override {
    warnings.push_back("config.pbtxt line " + std::to_string(line + 1) + ": " + message +
                       " (ignored: Kiln does not use this Triton field)");
  }
  std::string error;
  std::vector<std::string> warnings;
};

std::string Dims(const google::protobuf::RepeatedField<int64_t>& dims) {
  std::string s = "[";
  for (int i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string Shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Completes and checks one tensor list (inputs or outputs) against the model's tensors.
template <typename Tensor>
Status CheckTensors(const char* kind, const std::vector<backend::TensorInfo>& model,
                    google::protobuf::RepeatedPtrField<Tensor>* config, int max_batch_size,
                    const CompleteOptions& options) {
  const std::string off = " (auto-completion is off: --disable-auto-complete-config)";
  if (config->empty()) {
    if (!options.auto_complete) {
      return InvalidArgumentError("the config lists no " + std::string(kind) + "s" + off +
                                  ": list each with its name, data_type and dims");
    }
    for (const auto& t : model) {
      Tensor* c = config->Add();
      c->set_name(t.name);
      c->set_data_type(ConfigDataType(t.dtype));
      const size_t skip = max_batch_size > 0 ? 1 : 0;
      for (size_t d = skip; d < t.shape.size(); ++d) c->add_dims(t.shape[d]);
    }
    return Status::Ok();
  }
  if (config->size() != static_cast<int>(model.size())) {
    return InvalidArgumentError("the config lists " + std::to_string(config->size()) + " " + kind +
                                "s but the model has " + std::to_string(model.size()));
  }
  for (Tensor& c : *config) {
    const backend::TensorInfo* t = nullptr;
    std::string names;
    for (const auto& m : model) {
      names += (names.empty() ? "" : ", ") + ("'" + m.name + "'");
      if (m.name == c.name()) t = &m;
    }
    if (t == nullptr && options.positional_names) {
      const int i = PositionalIndex(c.name());
      if (i >= 0 && static_cast<size_t>(i) < model.size()) t = &model[static_cast<size_t>(i)];
    }
    if (t == nullptr) {
      return InvalidArgumentError(
          std::string(kind) + " '" + c.name() +
          "' in the config is not a tensor of the model (the model has " + names +
          (options.positional_names ? "; or name it <name>__<index>, e.g. INPUT__0" : "") +
          "): names in config.pbtxt must equal the model's");
    }
    if (c.data_type() == inference::TYPE_INVALID) {
      if (!options.auto_complete) {
        return InvalidArgumentError(std::string(kind) + " '" + c.name() + "' has no data_type" +
                                    off);
      }
      c.set_data_type(ConfigDataType(t->dtype));
    }
    if (c.data_type() != ConfigDataType(t->dtype)) {
      return InvalidArgumentError(std::string(kind) + " '" + c.name() + "': config data_type " +
                                  inference::DataType_Name(c.data_type()) + " but the model has " +
                                  inference::DataType_Name(ConfigDataType(t->dtype)));
    }
    if (max_batch_size > 0) {
      if (t->shape.empty() || t->shape[0] != -1) {
        return InvalidArgumentError(
            "max_batch_size is " + std::to_string(max_batch_size) + " but the model's " + kind +
            " '" + c.name() + "' has shape " + Shape(t->shape) +
            " with a fixed first dimension: the model was exported with a fixed batch. "
            "Export it with a dynamic batch axis (kiln export does), or set max_batch_size: 0 "
            "and give the full shape in dims");
      }
      if (c.dims_size() == 0) {
        if (!options.auto_complete) {
          return InvalidArgumentError(std::string(kind) + " '" + c.name() + "' has no dims" + off +
                                      ": write dims: " +
                                      Shape({t->shape.begin() + 1, t->shape.end()}));
        }
        for (size_t d = 1; d < t->shape.size(); ++d) c.add_dims(t->shape[d]);
      }
      if (static_cast<size_t>(c.dims_size()) == t->shape.size()) {
        return InvalidArgumentError(
            std::string(kind) + " '" + c.name() + "': dims " + Dims(c.dims()) +
            " include the batch dimension; with max_batch_size > 0 the batch is implicit: "
            "write dims: " + Shape({t->shape.begin() + 1, t->shape.end()}));
      }
      if (static_cast<size_t>(c.dims_size()) + 1 != t->shape.size()) {
        return InvalidArgumentError(std::string(kind) + " '" + c.name() + "': dims " +
                                    Dims(c.dims()) + " do not match the model's shape " +
                                    Shape(t->shape) + " (batch first)");
      }
      for (int d = 0; d < c.dims_size(); ++d) {
        const int64_t m = t->shape[static_cast<size_t>(d) + 1];
        if (m != -1 && c.dims(d) != m) {
          return InvalidArgumentError(std::string(kind) + " '" + c.name() + "': dims " +
                                      Dims(c.dims()) + " but the model's shape is " +
                                      Shape(t->shape) + " (batch first)");
        }
      }
    } else {
      if (c.dims_size() == 0) {
        if (!options.auto_complete) {
          return InvalidArgumentError(std::string(kind) + " '" + c.name() + "' has no dims" + off +
                                      ": write dims: " + Shape(t->shape));
        }
        for (int64_t d : t->shape) c.add_dims(d);
      }
      if (static_cast<size_t>(c.dims_size()) != t->shape.size()) {
        return InvalidArgumentError(std::string(kind) + " '" + c.name() + "': dims " +
                                    Dims(c.dims()) + " but the model's shape is " +
                                    Shape(t->shape) + " (with max_batch_size: 0, dims are the "
                                    "full shape)");
      }
      for (int d = 0; d < c.dims_size(); ++d) {
        const int64_t m = t->shape[static_cast<size_t>(d)];
        if (m != -1 && c.dims(d) != m) {
          return InvalidArgumentError(std::string(kind) + " '" + c.name() + "': dims " +
                                      Dims(c.dims()) + " but the model's shape is " +
                                      Shape(t->shape));
        }
      }
    }
    for (int64_t d : c.dims()) {
      if (d <= 0) {
        return InvalidArgumentError(std::string(kind) + " '" + c.name() + "': dims " +
                                    Dims(c.dims()) +
                                    " must be fixed and positive (Kiln serves image "
                                    "classifiers with one fixed sample shape)");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Result<inference::ModelConfig> ParseModelConfig(std::string_view text,
                                                std::vector<std::string>* warnings) {
  inference::ModelConfig config;
  Collector collector;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&collector);
  parser.AllowUnknownField(true);
  if (!parser.ParseFromString(std::string(text), &config)) {
    return InvalidArgumentError(collector.error.empty() ? "config.pbtxt: cannot parse"
                                                        : collector.error);
  }
  if (const std::string bad = InvalidUtf8Field(config, ""); !bad.empty()) {
    return InvalidArgumentError("config.pbtxt: " + bad + " is not valid UTF-8");
  }
  if (warnings != nullptr) {
    warnings->insert(warnings->end(), collector.warnings.begin(), collector.warnings.end());
  }
  return config;
}

Result<inference::ModelConfig> ParseModelConfigJson(std::string_view json) {
  inference::ModelConfig config;
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &config, o);
  if (!status.ok()) {
    return InvalidArgumentError("the configuration is not a valid model configuration in JSON: " +
                                std::string(status.message()));
  }
  if (const std::string bad = InvalidUtf8Field(config, ""); !bad.empty()) {
    return InvalidArgumentError("the configuration's " + bad + " is not valid UTF-8");
  }
  return config;
}

int PositionalIndex(const std::string& name) {
  const size_t sep = name.rfind("__");
  if (sep == std::string::npos || sep == 0 || sep + 2 >= name.size() ||
      name.size() - sep - 2 > 6) {
    return -1;
  }
  int index = 0;
  for (size_t i = sep + 2; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    index = index * 10 + (name[i] - '0');
  }
  return index;
}

Status CompleteModelConfig(const std::vector<backend::TensorInfo>& inputs,
                           const std::vector<backend::TensorInfo>& outputs,
                           const CompleteOptions& options, inference::ModelConfig* config) {
  if (inputs.empty() || outputs.empty()) {
    return InvalidArgumentError("the model has no inputs or no outputs");
  }
  const bool dynamic = inputs[0].shape.size() >= 1 && inputs[0].shape[0] == -1 &&
                       outputs[0].shape.size() >= 1 && outputs[0].shape[0] == -1;
  if (config->max_batch_size() < 0) {
    return InvalidArgumentError("max_batch_size must be >= 0");
  }
  // Auto-complete max_batch_size only when the config says nothing about tensors either.
  if (options.auto_complete && config->max_batch_size() == 0 && config->input().empty() &&
      config->output().empty() && dynamic) {
    config->set_max_batch_size(options.default_max_batch_size);
    if (config->scheduling_choice_case() == inference::ModelConfig::SCHEDULING_CHOICE_NOT_SET) {
      config->mutable_dynamic_batching();
    }
  }
  KILN_RETURN_IF_ERROR(CheckTensors("input", inputs, config->mutable_input(),
                                    config->max_batch_size(), options));
  KILN_RETURN_IF_ERROR(CheckTensors("output", outputs, config->mutable_output(),
                                    config->max_batch_size(), options));
  if (config->input_size() != 1 || config->output_size() != 1) {
    return UnimplementedError("Kiln serves models with one input and one output");
  }
  if (config->input(0).data_type() != inference::TYPE_FP32 ||
      config->output(0).data_type() != inference::TYPE_FP32) {
    return UnimplementedError("Kiln serves FP32 inputs and outputs");
  }
  if (config->has_dynamic_batching()) {
    for (int p : config->dynamic_batching().preferred_batch_size()) {
      if (p <= 0 || (config->max_batch_size() > 0 && p > config->max_batch_size())) {
        return InvalidArgumentError("dynamic_batching.preferred_batch_size " + std::to_string(p) +
                                    " must be in [1, max_batch_size " +
                                    std::to_string(config->max_batch_size()) + "]");
      }
    }
  }
  if (config->instance_group().empty()) {
    auto* g = config->add_instance_group();
    g->set_count(1);
    g->set_kind(inference::ModelInstanceGroup::KIND_CPU);
  }
  for (auto& g : *config->mutable_instance_group()) {
    if (g.count() == 0) g.set_count(1);
    if (g.count() < 0 || g.count() > 64) {
      return InvalidArgumentError("instance_group count " + std::to_string(g.count()) +
                                  " must be in [1, 64]");
    }
    if (g.kind() == inference::ModelInstanceGroup::KIND_GPU) {
      return InvalidArgumentError(
          "instance_group kind KIND_GPU: this server runs on CPU only (and quantized PyTorch "
          "kernels are CPU-only anyway); use kind: KIND_CPU");
    }
    if (g.kind() == inference::ModelInstanceGroup::KIND_AUTO) {
      g.set_kind(inference::ModelInstanceGroup::KIND_CPU);
    }
  }
  return Status::Ok();
}

std::string KServeDataType(inference::DataType type) {
  switch (type) {
    case inference::TYPE_STRING:
      return "BYTES";
    case inference::TYPE_INVALID:
      return "INVALID";
    default:
      return inference::DataType_Name(type).substr(5);  // "TYPE_FP32" -> "FP32"
  }
}

inference::DataType ConfigDataType(backend::DataType type) {
  switch (type) {
    case backend::DataType::kFloat32:
      return inference::TYPE_FP32;
    case backend::DataType::kFloat16:
      return inference::TYPE_FP16;
    case backend::DataType::kInt8:
      return inference::TYPE_INT8;
    case backend::DataType::kUInt8:
      return inference::TYPE_UINT8;
    case backend::DataType::kInt32:
      return inference::TYPE_INT32;
    case backend::DataType::kInt64:
      return inference::TYPE_INT64;
    case backend::DataType::kOther:
      break;
  }
  return inference::TYPE_INVALID;
}

std::string ModelConfigToJson(const inference::ModelConfig& config) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  if (!google::protobuf::util::MessageToJsonString(config, &out, o).ok()) return "{}";
  return out;
}

}  // namespace kiln::serve
