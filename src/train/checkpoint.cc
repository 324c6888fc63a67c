#include "kiln/train/checkpoint.h"

#include <torch/version.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/core/file.h"

namespace kiln::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json MetaToJson(const CheckpointMeta& m) {
  return json{
      {"format", "kiln-checkpoint-1"},
      {"arch", m.arch},
      {"shape",
       {{"channels", m.shape.channels},
        {"height", m.shape.height},
        {"width", m.shape.width},
        {"num_classes", m.shape.num_classes}}},
      {"widths", m.widths},
      {"class_names", m.class_names},
      {"normalization", {{"mean", m.normalization.mean}, {"std", m.normalization.std}}},
      {"train_options", json::parse(m.train_options_json.empty() ? "{}" : m.train_options_json)},
      {"epoch", m.epoch},
      {"batch", m.batch},
      {"val_accuracy", m.val_accuracy},
      {"best_val_accuracy", m.best_val_accuracy},
      {"best_epoch", m.best_epoch},
      {"kiln_version", m.kiln_version},
      {"torch_version", m.torch_version},
      {"created", m.created}};
}

Result<CheckpointMeta> MetaFromJson(const std::string& text) {
  try {
    json j = json::parse(text);
    if (j.value("format", "") != "kiln-checkpoint-1") {
      return InvalidArgumentError("unknown checkpoint format '" + j.value("format", "") + "'");
    }
    CheckpointMeta m;
    m.arch = j.at("arch").get<std::string>();
    const json& s = j.at("shape");
    m.shape = {s.at("channels").get<int64_t>(), s.at("height").get<int64_t>(),
               s.at("width").get<int64_t>(), s.at("num_classes").get<int64_t>()};
    if (j.contains("widths")) m.widths = j.at("widths").get<ModelWidths>();
    m.class_names = j.at("class_names").get<std::vector<std::string>>();
    m.normalization.mean = j.at("normalization").at("mean").get<std::vector<float>>();
    m.normalization.std = j.at("normalization").at("std").get<std::vector<float>>();
    if (static_cast<int64_t>(m.normalization.mean.size()) != m.shape.channels ||
        m.normalization.std.size() != m.normalization.mean.size()) {
      return InvalidArgumentError("normalization does not match the channel count");
    }
    m.train_options_json = j.at("train_options").dump();
    m.epoch = j.at("epoch").get<int64_t>();
    m.batch = j.at("batch").get<int64_t>();
    m.val_accuracy = j.at("val_accuracy").get<double>();
    m.best_val_accuracy = j.at("best_val_accuracy").get<double>();
    m.best_epoch = j.at("best_epoch").get<int64_t>();
    m.kiln_version = j.value("kiln_version", "");
    m.torch_version = j.value("torch_version", "");
    m.created = j.value("created", "");
    return m;
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("checkpoint metadata is invalid: ") + e.what());
  }
}

}  // namespace

std::string TorchVersion() { return "libtorch " TORCH_VERSION; }

void SetChannelsLast(torch::nn::Module& module, bool channels_last) {
  const auto format =
      channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(format));
  }
  for (auto& b : module.buffers()) {
    if (b.dim() == 4) b.set_data(b.data().contiguous(format));
  }
}

Status SaveCheckpoint(const fs::path& file, const CheckpointMeta& meta, Classifier& model,
                      torch::optim::Optimizer* optimizer) {
  std::ostringstream bytes;
  try {
    torch::serialize::OutputArchive archive;
    archive.write("kiln/meta", c10::IValue(MetaToJson(meta).dump()));
    torch::serialize::OutputArchive weights;
    {
      torch::NoGradGuard no_grad;
      for (const auto& p : model.named_parameters()) weights.write(p.key(), p.value().contiguous());
      for (const auto& b : model.named_buffers())
        weights.write(b.key(), b.value().contiguous(), true);
    }
    archive.write("model", weights);
    if (optimizer != nullptr) {
      torch::serialize::OutputArchive opt;
      optimizer->save(opt);
      archive.write("optimizer", opt);
    }
    archive.save_to(bytes);
  } catch (const std::exception& e) {
    return InternalError("cannot write checkpoint " + file.string() + ": " + e.what());
  }
  return WriteFileAtomic(file, bytes.view());
}

Result<Checkpoint> LoadCheckpoint(const fs::path& file) {
  if (!fs::exists(file)) return NotFoundError(file.string() + ": no such checkpoint");
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    c10::IValue meta_value;
    if (!archive.try_read("kiln/meta", meta_value) || !meta_value.isString()) {
      return InvalidArgumentError(file.string() + ": not a Kiln checkpoint (no kiln/meta)");
    }
    auto meta = MetaFromJson(meta_value.toStringRef());
    if (!meta.ok()) return meta.status().WithContext(file.string());
    KILN_ASSIGN_OR_RETURN(auto model, CreateModel(meta->arch, meta->shape, meta->widths));
    torch::serialize::InputArchive weights;
    if (!archive.try_read("model", weights)) {
      return InvalidArgumentError(file.string() + ": checkpoint has no model weights");
    }
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      torch::Tensor t;
      if (!weights.try_read(p.key(), t) || !t.sizes().equals(p.value().sizes())) {
        return InvalidArgumentError(file.string() + ": parameter '" + p.key() +
                                    "' is missing or has the wrong shape for " + meta->arch);
      }
      p.value().copy_(t);
    }
    for (auto& b : model->named_buffers()) {
      torch::Tensor t;
      if (!weights.try_read(b.key(), t, true) || !t.sizes().equals(b.value().sizes())) {
        return InvalidArgumentError(file.string() + ": buffer '" + b.key() +
                                    "' is missing or has the wrong shape for " + meta->arch);
      }
      b.value().copy_(t);
    }
    model->eval();
    return Checkpoint{std::move(meta).value(), std::move(model)};
  } catch (const std::exception& e) {
    return InvalidArgumentError(file.string() + ": not a readable Kiln checkpoint (" +
                                std::string(e.what()).substr(0, 300) + ")");
  }
}

Status LoadOptimizerState(const fs::path& file, torch::optim::Optimizer& optimizer) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.string());
    torch::serialize::InputArchive opt;
    if (!archive.try_read("optimizer", opt)) {
      return NotFoundError(file.string() + ": checkpoint has no optimizer state (not resumable)");
    }
    optimizer.load(opt);
  } catch (const std::exception& e) {
    return InvalidArgumentError(file.string() + ": cannot restore optimizer state (" +
                                std::string(e.what()).substr(0, 300) + ")");
  }
  return Status::Ok();
}

}  // namespace kiln::train
