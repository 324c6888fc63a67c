// kiln eval
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/data/cifar10.h"
#include "kiln/eval/evaluate.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/models.h"
#include "kiln/train/evaluate.h"

namespace kiln::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string model;
  std::string backend = "auto";
  std::string data = DefaultDataPath();
  int64_t batch_size = 500;
  int threads = 2;
  std::string tta;  // empty: the checkpoint's own level
  bool json = false;
};

// Test-set evaluation of an exported model file through an inference backend; normalization
// and labels come from the file's Kiln metadata.
Result<std::pair<EvalResult, std::vector<std::string>>> EvalModelFile(
    const EvalArgs& a, const data::ImageSet& test) {
  KILN_ASSIGN_OR_RETURN(auto engine, OpenModelFile(a.model, a.backend, a.threads));
  KILN_ASSIGN_OR_RETURN(ModelMetadata info, ReadModelMetadata(*engine, a.model));
  if (static_cast<int64_t>(info.labels.size()) != engine->OutputElementsPerSample()) {
    return InvalidArgumentError(a.model + ": " + std::to_string(info.labels.size()) +
                                " labels for " +
                                std::to_string(engine->OutputElementsPerSample()) + " outputs");
  }
  auto r = eval::EvaluateEngine(*engine, test, info.normalization, a.batch_size);
  if (!r.ok()) return r.status().WithContext(a.model);
  return std::make_pair(std::move(r).value(), std::move(info.labels));
}

int RunEval(const EvalArgs& a) {
  torch::set_num_threads(a.threads);
  if (a.checkpoint.empty() == a.model.empty()) {
    std::cerr << "kiln eval: give exactly one of --checkpoint or --model\n";
    return kExitUsage;
  }
  if (!a.tta.empty() && !a.model.empty()) {
    std::cerr << "kiln eval: --tta applies to --checkpoint; an exported model computes the "
                 "test-time augmentation it was exported with\n";
    return kExitUsage;
  }
  // Name a missing model before spending seconds on the data.
  const std::string& file = a.model.empty() ? a.checkpoint : a.model;
  if (!std::filesystem::exists(file)) {
    std::cerr << "kiln eval: not found: " << file << ": no such "
              << (a.model.empty() ? "checkpoint" : "model file") << "\n";
    return kExitFailure;
  }
  auto ds = data::LoadCifar10(a.data);
  if (!ds.ok()) {
    std::cerr << "kiln eval: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  EvalResult r;
  std::vector<std::string> names;
  std::string what;  // what was evaluated, for the report
  if (!a.model.empty()) {
    auto result = EvalModelFile(a, ds->test);
    if (!result.ok()) {
      std::cerr << "kiln eval: " << result.status().ToString() << "\n";
      return kExitFailure;
    }
    r = std::move(result->first);
    names = std::move(result->second);
    what = a.model;
  } else {
    auto ckpt = train::LoadCheckpoint(a.checkpoint);
    if (!ckpt.ok()) {
      std::cerr << "kiln eval: " << ckpt.status().ToString() << "\n";
      return kExitFailure;
    }
    const auto& meta = ckpt->meta;
    if (ds->class_names.size() != meta.class_names.size()) {
      std::cerr << "kiln eval: the checkpoint has " << meta.class_names.size() << " classes but "
                << a.data << " has " << ds->class_names.size() << "\n";
      return kExitFailure;
    }
    if (!a.tta.empty()) {
      auto level = train::ParseTtaLevel(a.tta);
      const Status s = level.ok() ? ckpt->model->set_tta(*level) : level.status();
      if (!s.ok()) {
        std::cerr << "kiln eval: --tta: " << s.ToString() << "\n";
        return kExitUsage;
      }
    }
    train::EvalOptions eo;
    eo.batch_size = a.batch_size;
    auto result =
        train::Evaluate(*ckpt->model, ds->test, meta.normalization, meta.shape.num_classes, eo);
    if (!result.ok()) {
      std::cerr << "kiln eval: " << result.status().ToString() << "\n";
      return kExitFailure;
    }
    r = std::move(result).value();
    names = meta.class_names;
    what = a.checkpoint + " (" + meta.arch + ")";
    if (ckpt->model->tta() != train::TtaLevel::kNone) {
      what += " with " + train::TtaLevelName(ckpt->model->tta()) + " test-time augmentation";
    }
  }
  if (a.json) {
    nlohmann::json j = {{"model", what},          {"images", r.images},
                        {"accuracy", r.accuracy}, {"confusion", r.confusion},
                        {"class_names", names},   {"seconds", r.seconds}};
    if (a.model.empty()) j["loss"] = r.loss;
    for (size_t c = 0; c < names.size(); ++c)
      j["per_class_accuracy"][names[c]] = r.per_class_accuracy[c];
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("%s on %lld test images: accuracy %.2f%% (%.1f s)\n\n", what.c_str(),
              static_cast<long long>(r.images), 100 * r.accuracy, r.seconds);
  std::printf("%-12s %8s\n", "class", "accuracy");
  for (size_t c = 0; c < names.size(); ++c)
    std::printf("%-12s %7.2f%%\n", names[c].c_str(), 100 * r.per_class_accuracy[c]);
  std::printf("\nconfusion matrix (rows: true class, columns: predicted)\n%-12s", "");
  for (size_t c = 0; c < names.size(); ++c) std::printf(" %5.5s", names[c].c_str());
  std::printf("\n");
  for (size_t t = 0; t < names.size(); ++t) {
    std::printf("%-12s", names[t].c_str());
    for (size_t p = 0; p < names.size(); ++p)
      std::printf(" %5lld", static_cast<long long>(r.confusion[t][p]));
    std::printf("\n");
  }
  return 0;
}

}  // namespace

void RegisterEvalCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval",
                                 "Test accuracy, per-class accuracy and confusion matrix of a "
                                 "checkpoint or an exported model");
  cmd->add_option("--checkpoint", a->checkpoint, "A Kiln checkpoint (best.ckpt, model.ckpt)");
  cmd->add_option("--model", a->model,
                  "An exported model (model.onnx, model.pt) run through --backend");
  cmd->add_option("--backend", a->backend,
                  "Engine for --model: auto (by file extension), onnxruntime, libtorch, openvino")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "onnxruntime", "libtorch", "openvino"}));
  cmd->add_option("--data,--archive", a->data, "cifar-10-binary.tar.gz or its extracted folder")
      ->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--tta", a->tta,
                  "With --checkpoint: evaluate with this test-time augmentation (none, flip, "
                  "flip-translate) instead of the one the checkpoint carries")
      ->check(CLI::IsMember({"none", "flip", "flip-translate"}));
  cmd->add_option("--threads", a->threads, "Engine threads (libtorch, ONNX Runtime, OpenVINO)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_flag("--json", a->json, "Machine-readable output");
  cmd->callback([run, a] { *run = [a] { return RunEval(*a); }; });
}

}  // namespace kiln::cli
