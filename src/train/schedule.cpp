// Learning-rate schedule: linear warmup, then cosine annealing to lr · min_lr_ratio.
#include "fprnn/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace fprnn::train {

double learning_rate(const TrainConfig& cfg, int64_t step) {
  const double peak = cfg.lr;
  const double floor = cfg.lr * cfg.min_lr_ratio;
  if (cfg.warmup_steps > 0 && step < cfg.warmup_steps)
    return peak * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  const int64_t span = std::max<int64_t>(1, cfg.steps - cfg.warmup_steps);
  const double t = std::clamp(static_cast<double>(step - cfg.warmup_steps) / static_cast<double>(span), 0.0, 1.0);
  return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * t));
}

}  // namespace fprnn::train
