// kiln eval
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/data/cifar10.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/evaluate.h"

namespace kiln::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string data = DefaultDataPath();
  int64_t batch_size = 500;
  int threads = 2;
  bool json = false;
};

int RunEval(const EvalArgs& a) {
  torch::set_num_threads(a.threads);
  auto ckpt = train::LoadCheckpoint(a.checkpoint);
  if (!ckpt.ok()) {
    std::cerr << "kiln eval: " << ckpt.status().ToString() << "\n";
    return kExitFailure;
  }
  auto ds = data::LoadCifar10(a.data);
  if (!ds.ok()) {
    std::cerr << "kiln eval: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  const auto& meta = ckpt->meta;
  if (ds->class_names.size() != meta.class_names.size()) {
    std::cerr << "kiln eval: the checkpoint has " << meta.class_names.size() << " classes but "
              << a.data << " has " << ds->class_names.size() << "\n";
    return kExitFailure;
  }
  train::EvalOptions eo;
  eo.batch_size = a.batch_size;
  auto r = train::Evaluate(*ckpt->model, ds->test, meta.normalization, meta.shape.num_classes, eo);
  if (!r.ok()) {
    std::cerr << "kiln eval: " << r.status().ToString() << "\n";
    return kExitFailure;
  }
  const auto& names = meta.class_names;
  if (a.json) {
    nlohmann::json j = {
        {"checkpoint", a.checkpoint}, {"arch", meta.arch},    {"images", r->images},
        {"accuracy", r->accuracy},    {"loss", r->loss},      {"confusion", r->confusion},
        {"class_names", names},       {"seconds", r->seconds}};
    for (size_t c = 0; c < names.size(); ++c)
      j["per_class_accuracy"][names[c]] = r->per_class_accuracy[c];
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("%s (%s) on %lld test images: accuracy %.2f%%, loss %.4f (%.1f s)\n\n",
              a.checkpoint.c_str(), meta.arch.c_str(), static_cast<long long>(r->images),
              100 * r->accuracy, r->loss, r->seconds);
  std::printf("%-12s %8s\n", "class", "accuracy");
  for (size_t c = 0; c < names.size(); ++c) {
    std::printf("%-12s %7.2f%%\n", names[c].c_str(), 100 * r->per_class_accuracy[c]);
  }
  std::printf("\nconfusion matrix (rows: true class, columns: predicted)\n%-12s", "");
  for (size_t c = 0; c < names.size(); ++c) std::printf(" %5.5s", names[c].c_str());
  std::printf("\n");
  for (size_t t = 0; t < names.size(); ++t) {
    std::printf("%-12s", names[t].c_str());
    for (size_t p = 0; p < names.size(); ++p)
      std::printf(" %5lld", static_cast<long long>(r->confusion[t][p]));
    std::printf("\n");
  }
  return 0;
}

}  // namespace

void RegisterEvalCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand(
      "eval", "Test accuracy, per-class accuracy and confusion matrix of a model");
  cmd->add_option("--checkpoint", a->checkpoint, "A Kiln checkpoint (best.ckpt, model.ckpt)")
      ->required();
  cmd->add_option("--data,--archive", a->data, "cifar-10-binary.tar.gz or its extracted folder")
      ->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--threads", a->threads, "libtorch threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_flag("--json", a->json, "Machine-readable output");
  cmd->callback([run, a] { *run = [a] { return RunEval(*a); }; });
}

}  // namespace kiln::cli
