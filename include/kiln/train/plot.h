// Training-curve PNG: loss (train/validation) and accuracy (train/validation) vs epoch, drawn
// with OpenCV. Fails with an Internal Status if the file cannot be written.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/train/trainer.h"

namespace kiln::train {

Status PlotTrainingCurves(const std::vector<EpochMetrics>& epochs, const std::filesystem::path& png,
                          const std::string& title);

}  // namespace kiln::train
