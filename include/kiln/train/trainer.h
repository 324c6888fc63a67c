// Training an image classifier with libtorch.
//
//   kiln::train::TrainOptions opt = kiln::train::TrainOptions::ForArch("seed-cnn");
//   opt.out_dir = "runs/seed";
//   KILN_RETURN_IF_ERROR(opt.Validate());
//   KILN_ASSIGN_OR_RETURN(auto summary, kiln::train::Train(dataset, opt, &std::cerr, &stop));
//
// Writes into `out_dir`:
//   model.ckpt          final weights (inference checkpoint)
//   best.ckpt           weights with the best validation accuracy (used for the test report)
//   resume.ckpt         weights + optimizer + position; written every epoch and on interruption
//   metrics.csv         one row per epoch
//   training_curve.png  loss and accuracy vs epoch
//   summary.json        test accuracy (of best.ckpt), per-class accuracy, timing, sizes, versions
// The test split is only touched once, at the end, for the report; model selection uses the
// validation split carved from the training data. With no validation split (validation_size 0,
// airbench94's fixed schedule) best.ckpt is the last epoch's weights.
// A model with test-time augmentation (airbench94, `tta`) applies it in every evaluation, the
// test report included; summary.json also gives the test accuracy without it.
//
// Reproducibility: with the same options (seed, threads) the run is bit-for-bit repeatable, and
// a resumed run continues exactly where the interrupted one stopped (order and augmentation of
// every batch depend only on seed, epoch and batch index).
// Interruption: when *stop becomes true, training saves resume.ckpt at the current batch and
// returns a Cancelled status naming the file; Train(... resume=true) continues from it.
// Crashes: every file is written atomically and durably (core/file.h); after each epoch
// best.ckpt (if improved), metrics.csv and then resume.ckpt are written, so a run killed at any
// point resumes from its last finished epoch (CanResume) and ends with the same weights,
// metrics and summary (timings and timestamps aside) as a run that was never interrupted. A
// resume.ckpt of the last epoch only writes the final outputs. Resuming from a Ctrl-C in the
// middle of an epoch continues with the same weights, but that epoch's train loss and accuracy
// in metrics.csv count only the batches after the resume.
// Sets libtorch's global thread count; run one training per process.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"

namespace kiln::train {

struct TrainOptions {
  std::string arch = "kiln-resnet";  // see ArchitectureNames()
  int64_t epochs = 14;
  int64_t batch_size = 512;
  std::string optimizer = "sgd";  // "sgd" (Nesterov momentum) or "adamw"
  double lr = 0.4;                // peak learning rate
  double momentum = 0.9;          // SGD momentum / AdamW beta1
  double weight_decay = 5e-4;
  std::string schedule = "onecycle";  // "onecycle" (linear up, linear down) or "cosine"
  double warmup_fraction = 0.25;      // share of all steps spent warming up
  // onecycle: the warm-up starts at lr * lr_initial_factor and the decay ends at
  // lr * lr_final_factor (airbench94: 0.2 and 0.07).
  double lr_initial_factor = 0.0;
  double lr_final_factor = 0.0;
  // Batch-norm parameters (".bn." in their name) train at lr * bias_lr_scale with weight decay
  // weight_decay / bias_lr_scale, so their decay per step is unchanged (airbench94: 64).
  double bias_lr_scale = 1.0;
  double label_smoothing = 0.2;
  // airbench94's recipe parts, each switchable (the others ignore them):
  bool whitening_init = true;      // first layer = patch whitening of 5,000 training images
                                   // (frozen); off: random and trained
  bool identity_init = true;       // 3x3 convolutions start as identities; off: Kaiming uniform
  int64_t whiten_bias_epochs = 3;  // the whitening layer's bias trains this many epochs, then
                                   // is frozen
  // Lookahead: every 5 steps the weights move to an exponential moving average of themselves,
  // whose decay rises as 0.95^5 * (step / total)^3; the last step ends on the average.
  bool lookahead = false;
  std::string tta = "none";  // test-time augmentation the model carries (TtaLevelName)
  data::AugmentOptions augmentation;  // crop(pad 4) + flip by default; cutout off
  int64_t validation_size = 5000;     // carved from the training split for model selection
  int64_t train_limit = 0;            // use only the first N training images (0 = all); tests
  int64_t threads = 2;                // libtorch intra-op threads
  bool channels_last = true;          // NHWC activations and weights (faster with oneDNN)
  // Compute precision of training steps: "fp32", "bf16" (autocast: convolutions and matrix
  // products in bfloat16, weights, optimizer and loss in float32), or "auto" (bf16 where the CPU
  // has native bfloat16 dot products, AVX512-BF16 or AMX; else fp32). Evaluation, checkpoints and
  // exported models are always float32.
  std::string precision = "auto";
  uint64_t seed = 1;
  std::filesystem::path out_dir = "runs/train";
  bool resume = false;  // continue from out_dir/resume.ckpt
  // Start from this checkpoint's weights (and layer widths and normalization) instead of a
  // fresh model: fine-tuning, e.g. after pruning. Its arch must equal `arch`.
  std::filesystem::path init_from;

  // Recommended settings for an architecture (epochs, batch, lr, ...); other fields default.
  static TrainOptions ForArch(const std::string& arch);
  // "fp32" or "bf16": what `precision` means on this CPU.
  std::string ResolvedPrecision() const;
  Status Validate() const;
  std::string ToJson() const;
};

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  double lr = 0.0;    // at the end of the epoch
  double train_loss = 0.0;
  double train_accuracy = 0.0;
  double val_loss = 0.0;
  double val_accuracy = 0.0;
  double seconds = 0.0;
  double images_per_second = 0.0;
};

struct TrainSummary {
  std::vector<EpochMetrics> epochs;
  double test_accuracy = 0.0;  // of best.ckpt on the test split
  std::vector<double> per_class_test_accuracy;
  int64_t best_epoch = 0;
  double best_val_accuracy = 0.0;
  double wall_seconds = 0.0;   // whole command: load, train, evaluate, write
  double train_seconds = 0.0;  // time inside training steps and validation
  double train_images_per_second = 0.0;
  double data_seconds = 0.0;  // preparing batches (augmentation, normalization)
  int64_t parameters = 0;
  int64_t checkpoint_bytes = 0;
  std::filesystem::path out_dir;
};

// `progress` (may be null) receives a progress bar per epoch; `stop` (may be null) is polled
// before every batch; `on_epoch` (may be empty) is called after each epoch's checkpoints are
// written, on the calling thread.
Result<TrainSummary> Train(const data::Dataset& dataset, const TrainOptions& options,
                           std::ostream* progress, const std::atomic<bool>* stop,
                           const std::function<void(const EpochMetrics&)>& on_epoch = {});

// Whether out_dir/resume.ckpt holds a run with exactly these options (all of them, threads and
// the resolved precision included), so that Train with `resume = true` continues it to the
// outputs an uninterrupted run writes. False when there is none, it cannot be read, or any option
// differs. resume.ckpt is rewritten after every epoch, so a process killed at any moment
// (kill -9, power loss) loses at most the epoch in progress.
bool CanResume(const TrainOptions& options);

// Learning rate at `step` of `total_steps` for the schedule in `options`.
double LearningRateAt(const TrainOptions& options, int64_t step, int64_t total_steps);

}  // namespace kiln::train
