// Kiln checkpoints: model weights plus everything needed to use them without the training run
// (architecture, input shape, label names, normalization) and, for resumable checkpoints, the
// optimizer state and the position in training.
//
//   KILN_ASSIGN_OR_RETURN(kiln::train::Checkpoint ckpt, kiln::train::LoadCheckpoint("best.ckpt"));
//   ckpt.model->eval();
//
// Format: a libtorch serialize archive (zip) with keys "kiln/meta" (a JSON string, see
// CheckpointMeta), "model" (the module's parameters and buffers) and optionally "optimizer".
// Files are written atomically and durably (core/file.h): a crash or kill -9 leaves the old file
// or the complete new one, never half a checkpoint; a full disk is a ResourceExhausted Status
// naming the file, and the old file stays.
// A missing, truncated or foreign file is an InvalidArgument/NotFound Status, never a crash.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/data/loader.h"
#include "kiln/train/models.h"

namespace kiln::train {

struct CheckpointMeta {
  std::string arch;
  ModelShape shape;
  ModelWidths widths;  // layers narrower than the architecture's default (pruned models)
  std::vector<std::string> class_names;
  data::Normalization normalization;
  std::string train_options_json;  // the TrainOptions of the run, as JSON
  // Training position: `epoch` epochs are complete and `batch` batches of the next one are done.
  int64_t epoch = 0;
  int64_t batch = 0;
  double val_accuracy = 0.0;       // of these weights (after the last complete epoch)
  double best_val_accuracy = 0.0;  // best so far in the run
  int64_t best_epoch = 0;
  std::string kiln_version;
  std::string torch_version;
  std::string created;  // ISO-8601 UTC
};

struct Checkpoint {
  CheckpointMeta meta;
  std::shared_ptr<Classifier> model;  // in eval mode, contiguous (NCHW) memory format
};

// Saves `model` (and `optimizer` when not null). The model's memory format is preserved in
// memory; the file always holds contiguous tensors.
Status SaveCheckpoint(const std::filesystem::path& file, const CheckpointMeta& meta,
                      Classifier& model, torch::optim::Optimizer* optimizer);

// Loads a checkpoint and rebuilds its model.
Result<Checkpoint> LoadCheckpoint(const std::filesystem::path& file);

// Restores optimizer state saved by SaveCheckpoint into `optimizer`, which must have been
// built over the parameters of the checkpoint's model. NotFound if the file has none.
Status LoadOptimizerState(const std::filesystem::path& file, torch::optim::Optimizer& optimizer);

// Converts 4-D parameters and buffers of `module` to channels-last (or back to contiguous).
void SetChannelsLast(torch::nn::Module& module, bool channels_last);

// Library versions used for reports ("libtorch 1.13.1").
std::string TorchVersion();

}  // namespace kiln::train
