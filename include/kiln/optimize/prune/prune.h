// Structured pruning of a Kiln checkpoint: whole convolution filters are removed, with the
// matching input channels of the layers that read them (the next convolution, the first fully
// connected layer), giving a physically smaller dense model that any engine runs faster.
//
//   kiln::optimize::PruneOptions opt;                  // 30% by L1 norm, per layer, x8
//   KILN_ASSIGN_OR_RETURN(auto pruned, kiln::optimize::PruneCheckpoint(ckpt, opt));
//   // pruned.checkpoint.meta.widths holds the new layer widths; fine-tune, then export.
//
// Filters are ranked by the L1 or L2 norm of their effective weights (for conv + batch norm,
// the weights with the batch-norm scale folded in, since the convolution's own scale is
// arbitrary). Layers whose outputs are added by a residual connection are pruned together
// (one channel set for the group, scored by the sum of the members' normalized norms).
// Scope "layer" removes `ratio` of every group's channels; "global" ranks all channels of all
// groups by normalized norm and removes the lowest `ratio` of them overall. Kept counts are
// rounded to a multiple of `multiple` (8 by default: whole AVX2 vectors, half an AVX-512
// vector; ONNX Runtime's blocked convolutions pad to those sizes anyway).
#pragma once

#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/train/checkpoint.h"

namespace kiln::optimize {

struct PruneOptions {
  double ratio = 0.3;           // share of channels to remove, in [0, 0.95]
  std::string norm = "l1";      // "l1" or "l2"
  std::string scope = "layer";  // "layer" or "global"
  int64_t multiple = 8;         // kept channel counts are multiples of this (1 = exact)

  Status Validate() const;
};

struct PrunedGroup {
  std::string name;                    // width key (see train::ModelWidths)
  std::vector<std::string> producers;  // layers whose output channels are removed
  int64_t before = 0;
  std::vector<int64_t> kept;  // kept channel indices, ascending
};

struct PruneResult {
  train::Checkpoint checkpoint;  // the smaller model (meta.widths set), eval mode
  std::vector<PrunedGroup> groups;
};

// Prunes `source` (which is not modified). Unimplemented for an architecture without a
// pruning plan; InvalidArgument for bad options.
Result<PruneResult> PruneCheckpoint(const train::Checkpoint& source, const PruneOptions& options);

// Makes the channels `groups` removed output exact zeros in `model` (a model of the source's
// widths): zero filters and biases, or zero batch-norm scale and shift. The pruned model
// computes exactly what this model computes (tests check that).
Status ZeroRemovedChannels(train::Classifier& model, const std::string& arch,
                           const std::vector<PrunedGroup>& groups);

}  // namespace kiln::optimize
