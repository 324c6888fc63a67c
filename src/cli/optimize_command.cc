// kiln optimize
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "kiln/optimize/optimizer.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

struct OptimizeArgs {
  optimize::OptimizeOptions opt;
  std::string model;
  std::string checkpoint;
  std::string out_dir;
  std::string data = DefaultDataPath();
  std::string method = "percentile";
  std::string activations = "uint8";
  bool no_peers = false;
};

int RunOptimize(OptimizeArgs a) {
  optimize::OptimizeOptions& o = a.opt;
  o.model = a.model;
  o.checkpoint = a.checkpoint;
  o.data = a.data;
  o.out_dir = a.out_dir.empty() ? fs::path(a.model).parent_path().parent_path() / "optimized"
                                : fs::path(a.out_dir);
  auto method = optimize::ParseCalibrationMethod(a.method);
  if (!method.ok()) {
    std::cerr << "kiln optimize: " << method.status().message() << "\n";
    return kExitUsage;
  }
  o.quantize.method = *method;
  o.quantize.uint8_activations = a.activations == "uint8";
  if (a.no_peers) o.peer_quantizers.clear();
  if (o.checkpoint.empty()) {
    // `kiln export` writes <run>/export/model.onnx beside <run>/best.ckpt.
    const fs::path guess = fs::path(a.model).parent_path().parent_path() / "best.ckpt";
    if (fs::exists(guess)) o.checkpoint = guess;
  }
  if (Status s = o.Validate(); !s.ok()) {
    std::cerr << "kiln optimize: " << s.message() << "\n";
    return kExitUsage;
  }
  torch::set_num_threads(o.threads);
  auto r = optimize::Optimize(o, &std::cerr, &StopRequested());
  if (!r.ok()) {
    std::cerr << "kiln optimize: " << r.status().ToString() << "\n";
    return r.status().code() == StatusCode::kCancelled ? kExitInterrupted : kExitFailure;
  }
  std::printf("%-20s %-8s %12s %12s %14s %9s %9s %9s  %s\n", "variant", "status", "bytes",
              "params", "FLOPs/image", "accuracy", "delta", "agree", "file");
  for (const auto& v : r->manifest["variants"]) {
    if (v.value("status", "") != "ok" && !v.contains("test_accuracy")) {
      std::printf("%-20s %-8s %s\n", v.value("name", "?").c_str(),
                  v.value("status", "failed").c_str(), v.value("error", "").c_str());
      continue;
    }
    std::printf("%-20s %-8s %12lld %12lld %14lld %8.2f%% %+8.2f %8.2f%%  %s\n",
                v.value("name", "?").c_str(), v.value("status", "?").c_str(),
                static_cast<long long>(v.value("size_bytes", int64_t{0})),
                static_cast<long long>(v.value("parameters", int64_t{0})),
                static_cast<long long>(v.value("flops_per_image", int64_t{0})),
                100 * v.value("test_accuracy", 0.0), v.value("accuracy_delta_points", 0.0),
                100 * v.value("agreement_with_fp32", 0.0),
                (v.value("file", "") + (v.contains("peer") ? "  (peer: " +
                                                                 v["peer"].value("tool", "?") + " " +
                                                                 v["peer"].value("version", "") + ")"
                                                           : std::string()))
                    .c_str());
  }
  std::printf("manifest: %s\n", (o.out_dir / "manifest.json").c_str());
  if (r->gate_failed) {
    std::cerr << "kiln optimize: accuracy gate failed:\n";
    for (const auto& f : r->failures) std::cerr << "  " << f << "\n";
    std::cerr << "raise the budget with --int8-budget / --prune-budget to accept these variants\n";
    return kExitFailure;
  }
  return 0;
}

}  // namespace

void RegisterOptimizeCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<OptimizeArgs>();
  optimize::OptimizeOptions& o = a->opt;
  auto* cmd = app.add_subcommand(
      "optimize",
      "Build optimized variants of an exported model (INT8 static/dynamic, pruned, graph-"
      "optimized), measure each on the test set and write manifest.json");
  cmd->add_option("--model", a->model, "Exported FP32 model (model.onnx from kiln export)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--checkpoint", a->checkpoint,
                  "Checkpoint the model came from (pruning; default: ../best.ckpt beside the "
                  "export folder)");
  cmd->add_option("--output,-o", a->out_dir, "Output folder (default: <run>/optimized)");
  cmd->add_option("--data,--archive", a->data, "cifar-10-binary.tar.gz or its extracted folder")
      ->capture_default_str();
  cmd->add_option("--variants", o.variants,
                  "Variants to build: fp32-opt int8-static int8-dynamic pruned pruned-int8")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--calibration-images", o.calibration_images,
                  "Training images used to calibrate INT8 activations")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{50000}));
  cmd->add_option("--calibration", a->method, "Calibration method: minmax, percentile, entropy")
      ->capture_default_str()
      ->check(CLI::IsMember({"minmax", "percentile", "entropy"}));
  cmd->add_option("--percentile", o.quantize.percentile, "Percentile kept by --calibration percentile")
      ->capture_default_str();
  cmd->add_option("--activations", a->activations,
                  "INT8 activation type: uint8 (asymmetric; ONNX Runtime's fast U8S8 path) or int8")
      ->capture_default_str()
      ->check(CLI::IsMember({"uint8", "int8"}));
  cmd->add_option("--prune-ratio", o.prune.ratio, "Share of convolution channels to remove")
      ->capture_default_str();
  cmd->add_option("--prune-norm", o.prune.norm, "Filter ranking: l1 or l2")
      ->capture_default_str()
      ->check(CLI::IsMember({"l1", "l2"}));
  cmd->add_option("--prune-scope", o.prune.scope,
                  "layer (same ratio everywhere) or global (rank all channels together)")
      ->capture_default_str()
      ->check(CLI::IsMember({"layer", "global"}));
  cmd->add_option("--channel-multiple", o.prune.multiple,
                  "Round kept channel counts to a multiple of this")
      ->capture_default_str();
  cmd->add_option("--finetune-epochs", o.finetune_epochs,
                  "Epochs of fine-tuning after pruning (0 = none)")
      ->capture_default_str();
  cmd->add_option("--finetune-lr-scale", o.finetune_lr_scale,
                  "Fine-tuning peak learning rate as a fraction of the architecture's default")
      ->capture_default_str();
  cmd->add_option("--finetune-limit", o.finetune_train_limit,
                  "Fine-tune on the first N training images only (0 = all; for quick runs)")
      ->capture_default_str();
  cmd->add_option("--int8-budget", o.int8_budget,
                  "Max accuracy loss in points for INT8 and fp32-opt variants")
      ->capture_default_str();
  cmd->add_option("--prune-budget", o.prune_budget,
                  "Max accuracy loss in points for pruned variants (pruned-int8 gets both)")
      ->capture_default_str();
  cmd->add_option("--test-limit", o.test_limit,
                  "Evaluate on the first N test images only (0 = all; for quick runs)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed choosing the calibration images")->capture_default_str();
  cmd->add_option("--peer-quantizers", o.peer_quantizers,
                  "The field's INT8 quantizers to run on the same model and calibration images, "
                  "as peers of int8-static (bench/peer_quantizers.py in .venv): ort-minmax, "
                  "ort-entropy, nncf")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_flag("--no-peers", a->no_peers, "Run no peer quantizer");
  cmd->add_option("--python", o.python,
                  "Python that runs the peer quantizers (default: the source tree's "
                  ".venv/bin/python)");
  cmd->add_option("--threads", o.threads, "Threads for ONNX Runtime and libtorch")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->callback([run, a] { *run = [a] { return RunOptimize(*a); }; });
}

}  // namespace kiln::cli
