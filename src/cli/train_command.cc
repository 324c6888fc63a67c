// kiln train
#include <iostream>
#include <optional>

#include "commands.h"
#include "kiln/data/cifar10.h"
#include "kiln/train/models.h"
#include "kiln/train/trainer.h"

namespace kiln::cli {

namespace {

// Flags whose defaults depend on the architecture stay unset until parsed.
struct TrainArgs {
  std::string data = DefaultDataPath();
  std::string arch = "kiln-resnet";
  std::optional<int64_t> epochs, batch_size, threads, validation_size, train_limit, cutout;
  std::optional<int64_t> pad, whiten_bias_epochs;
  std::optional<double> lr, momentum, weight_decay, warmup, label_smoothing;
  std::optional<double> lr_initial_factor, lr_final_factor, bias_lr_scale;
  std::optional<std::string> optimizer, schedule, precision, tta, pad_mode;
  std::optional<bool> lookahead, alternating_flip, whitening_init, identity_init;
  std::optional<uint64_t> seed;
  std::optional<bool> channels_last;
  bool no_crop = false, no_flip = false;
  std::string out;
  bool resume = false;
  bool restart = false;
};

int RunTrain(const TrainArgs& a) {
  train::TrainOptions o = train::TrainOptions::ForArch(a.arch);
  if (a.epochs) o.epochs = *a.epochs;
  if (a.batch_size) o.batch_size = *a.batch_size;
  if (a.threads) o.threads = *a.threads;
  if (a.validation_size) o.validation_size = *a.validation_size;
  if (a.train_limit) o.train_limit = *a.train_limit;
  if (a.cutout) o.augmentation.cutout = *a.cutout;
  if (a.lr) o.lr = *a.lr;
  if (a.momentum) o.momentum = *a.momentum;
  if (a.weight_decay) o.weight_decay = *a.weight_decay;
  if (a.warmup) o.warmup_fraction = *a.warmup;
  if (a.label_smoothing) o.label_smoothing = *a.label_smoothing;
  if (a.optimizer) o.optimizer = *a.optimizer;
  if (a.schedule) o.schedule = *a.schedule;
  if (a.precision) o.precision = *a.precision;
  if (a.seed) o.seed = *a.seed;
  if (a.channels_last) o.channels_last = *a.channels_last;
  if (a.pad) o.augmentation.pad = *a.pad;
  if (a.pad_mode) {
    if (*a.pad_mode != "zeros" && *a.pad_mode != "reflect") {
      std::cerr << "kiln train: --pad-mode must be 'zeros' or 'reflect'\n";
      return kExitUsage;
    }
    o.augmentation.reflect = *a.pad_mode == "reflect";
  }
  if (a.alternating_flip) o.augmentation.alternating_flip = *a.alternating_flip;
  if (a.lr_initial_factor) o.lr_initial_factor = *a.lr_initial_factor;
  if (a.lr_final_factor) o.lr_final_factor = *a.lr_final_factor;
  if (a.bias_lr_scale) o.bias_lr_scale = *a.bias_lr_scale;
  if (a.whiten_bias_epochs) o.whiten_bias_epochs = *a.whiten_bias_epochs;
  if (a.lookahead) o.lookahead = *a.lookahead;
  if (a.whitening_init) o.whitening_init = *a.whitening_init;
  if (a.identity_init) o.identity_init = *a.identity_init;
  if (a.tta) o.tta = *a.tta;
  o.augmentation.random_crop = !a.no_crop;
  o.augmentation.flip = !a.no_flip;
  o.out_dir = a.out.empty() ? "runs/" + a.arch : a.out;
  o.resume = a.resume;
  if (Status s = o.Validate(); !s.ok()) {
    std::cerr << "kiln train: " << s.message() << "\n";
    return kExitUsage;
  }
  // The same command run again after a crash or kill -9 continues the saved run.
  if (!o.resume && !a.restart && train::CanResume(o)) {
    o.resume = true;
    std::cerr << "continuing the run saved in " << (o.out_dir / "resume.ckpt").string()
              << " (same options; --restart starts over)\n";
  }
  std::cerr << "loading " << a.data << " ...\n";
  auto ds = data::LoadCifar10(a.data);
  if (!ds.ok()) {
    std::cerr << "kiln train: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  auto summary = train::Train(*ds, o, &std::cerr, &StopRequested());
  if (!summary.ok()) {
    std::cerr << "kiln train: " << summary.status().ToString() << "\n";
    return summary.status().code() == StatusCode::kCancelled ? kExitInterrupted : kExitFailure;
  }
  const std::string tta = o.tta == "none" ? "" : " with " + o.tta + " test-time augmentation";
  if (o.validation_size > 0) {
    std::printf("\n%s: test accuracy %.2f%%%s (best validation %.2f%% at epoch %lld)\n",
                o.arch.c_str(), 100 * summary->test_accuracy, tta.c_str(),
                100 * summary->best_val_accuracy, static_cast<long long>(summary->best_epoch));
  } else {
    std::printf("\n%s: test accuracy %.2f%%%s (no validation split: the last epoch's weights)\n",
                o.arch.c_str(), 100 * summary->test_accuracy, tta.c_str());
  }
  std::printf(
      "wall time %.1f s (batch preparation %.1f s), training %.0f images/s (%s), %lld parameters\n",
      summary->wall_seconds, summary->data_seconds, summary->train_images_per_second,
      o.ResolvedPrecision().c_str(), static_cast<long long>(summary->parameters));
  std::printf(
      "outputs in %s (best.ckpt, model.ckpt, metrics.csv, training_curve.png, summary.json)\n",
      o.out_dir.c_str());
  return 0;
}

}  // namespace

void RegisterTrainCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train an image classifier on CIFAR-10 with libtorch");
  std::string archs;
  for (const auto& n : train::ArchitectureNames()) archs += (archs.empty() ? "" : ", ") + n;
  cmd->add_option("--data,--archive", a->data, "cifar-10-binary.tar.gz or its extracted folder")
      ->capture_default_str();
  cmd->add_option("--arch", a->arch, "Architecture: " + archs)
      ->capture_default_str()
      ->check(CLI::IsMember(train::ArchitectureNames()));
  cmd->add_option("--out", a->out, "Output folder (default: runs/<arch>)");
  cmd->add_option("--epochs", a->epochs,
                  "Epochs (default: 14 for kiln-resnet, 15 for seed-cnn, 24 for resnet9, 12 for airbench94)");
  cmd->add_option("--batch-size", a->batch_size,
                  "Mini-batch size (default: 512; 128 for seed-cnn, 1024 for airbench94)");
  cmd->add_option("--optimizer", a->optimizer, "sgd (Nesterov momentum) or adamw (default: sgd)")
      ->check(CLI::IsMember({"sgd", "adamw"}));
  cmd->add_option("--lr", a->lr, "Peak learning rate (default: 0.4; 0.05 for seed-cnn, 1.5 for airbench94)");
  cmd->add_option("--momentum", a->momentum, "SGD momentum / AdamW beta1 (default: 0.9; 0.85 for airbench94)");
  cmd->add_option("--weight-decay", a->weight_decay, "Weight decay (default: 5e-4; 0.00133 for airbench94)");
  cmd->add_option("--schedule", a->schedule,
                  "Learning-rate schedule: onecycle (linear warm-up, linear decay) or cosine "
                  "(linear warm-up, cosine decay) (default: onecycle)")
      ->check(CLI::IsMember({"onecycle", "cosine"}));
  cmd->add_option("--warmup", a->warmup,
                  "Fraction of steps spent warming up (default: 0.25; 0.15 for seed-cnn, 0.23 for airbench94)");
  cmd->add_option("--label-smoothing", a->label_smoothing,
                  "Label smoothing (default: 0.2; 0.1 for seed-cnn)");
  cmd->add_option("--lr-initial-factor", a->lr_initial_factor,
                  "onecycle: warm-up starts at lr x this (default: 0; 0.2 for airbench94)");
  cmd->add_option("--lr-final-factor", a->lr_final_factor,
                  "onecycle: decay ends at lr x this (default: 0; 0.07 for airbench94)");
  cmd->add_option("--bias-lr-scale", a->bias_lr_scale,
                  "Batch-norm parameters train at lr x this, weight decay / this "
                  "(default: 1; 64 for airbench94)");
  cmd->add_option("--pad", a->pad, "Random-crop padding in pixels (default: 4; 2 for airbench94)");
  cmd->add_option("--pad-mode", a->pad_mode,
                  "Crop padding: zeros or reflect (default: zeros; reflect for airbench94)");
  cmd->add_option("--alternating-flip", a->alternating_flip,
                  "true: each image's flip drawn once, mirrored every odd epoch (default: false; "
                  "true for airbench94)");
  cmd->add_option("--lookahead", a->lookahead,
                  "true: weights reset to their moving average every 5 steps (default: false; "
                  "true for airbench94)");
  cmd->add_option("--whitening-init", a->whitening_init,
                  "airbench94: first layer whitens 2x2 patches, frozen (default: true)");
  cmd->add_option("--identity-init", a->identity_init,
                  "airbench94: 3x3 convolutions start as identities (default: true)");
  cmd->add_option("--whiten-bias-epochs", a->whiten_bias_epochs,
                  "airbench94: epochs the whitening layer's bias trains before it is frozen "
                  "(default: 3)");
  cmd->add_option("--tta", a->tta,
                  "Test-time augmentation the model carries into every evaluation and export: "
                  "none, flip or flip-translate (default: none; flip for airbench94)");
  cmd->add_option("--cutout", a->cutout, "Cutout square side in pixels, 0 = off (default: 0)");
  cmd->add_flag("--no-crop", a->no_crop, "Disable random-crop augmentation (pad 4)");
  cmd->add_flag("--no-flip", a->no_flip, "Disable horizontal-flip augmentation");
  cmd->add_option("--validation-size", a->validation_size,
                  "Training images held out for model selection (default: 5000; 0 for airbench94, whose fixed schedule selects nothing)");
  cmd->add_option("--train-limit", a->train_limit,
                  "Use only the first N training images, 0 = all (default: 0)");
  cmd->add_option("--threads", a->threads, "libtorch threads (default: 2)");
  cmd->add_option("--channels-last", a->channels_last,
                  "Channels-last memory format, true/false (default: true)");
  cmd->add_option(
         "--precision", a->precision,
         "Training compute precision: auto (bf16 where the CPU has AVX512-BF16, else fp32), "
         "fp32 or bf16 (autocast; weights stay fp32) (default: auto)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
  cmd->add_option("--seed", a->seed,
                  "Random seed: same seed and threads reproduce a run (default: 1)");
  cmd->add_flag("--resume", a->resume,
                "Continue the run saved in <out>/resume.ckpt (after Ctrl-C), also with more "
                "--epochs; a run with exactly the same options continues without this flag");
  cmd->add_flag("--restart", a->restart,
                "Train from scratch even if <out>/resume.ckpt holds this run")
      ->excludes("--resume");
  cmd->footer(
      "Outputs: best.ckpt, model.ckpt, resume.ckpt, metrics.csv, training_curve.png, "
      "summary.json.\n"
      "Ctrl-C saves resume.ckpt and exits; run the same command with --resume to continue.\n"
      "resume.ckpt is also written after every epoch: after a crash or kill -9 the same command\n"
      "continues from the last finished epoch, to the same result as an uninterrupted run.");
  cmd->callback([run, a] { *run = [a] { return RunTrain(*a); }; });
}

}  // namespace kiln::cli
