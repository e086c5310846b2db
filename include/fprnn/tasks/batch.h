// A batch of token sequences for a model that predicts one label per input position.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace fprnn::tasks {

struct Batch {
  torch::Tensor input_ids;  // (B, T) int64, right-padded with the task's pad id
  torch::Tensor labels;     // (B, T) int64: word problems right-pad with PAD; other tasks mark
                            // unscored positions with kIgnoreLabel (−1)
  int64_t tokens = 0;       // input tokens that belong to samples (not padding)
};

}  // namespace fprnn::tasks
