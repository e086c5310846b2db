// Learning-rate schedule: linear warmup from 0, then cosine decay to lr · min_lr_ratio at the last step
// (the reference's CosineAnnealingLR stepped every batch when warmup = 0).
#pragma once

#include "fprnn/io/config.h"

#include <cstdint>

namespace fprnn::train {

// Learning rate for optimiser step `step` (0-based) of `cfg.steps`.
double learning_rate(const TrainConfig& cfg, int64_t step);

}  // namespace fprnn::train
