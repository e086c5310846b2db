// Checkpoints: one safetensors file with the model parameters ("model.<name>"), the AdamW state
// ("optim.<name>.exp_avg", "optim.<name>.exp_avg_sq") and, in the metadata, the resolved run config, the
// optimiser step counts and the training step. Everything a resumed run needs to continue bit for bit:
// data order and randomised caps are pure functions of (seed, step).
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/nn/backbone.h"

#include <torch/torch.h>

#include <string>

namespace fprnn::train {

struct CheckpointInfo {
  RunConfig config;
  int64_t step = 0;   // optimiser steps completed
  Json extra;         // free-form (e.g. best validation accuracy)
};

// Writes atomically (temporary file + rename). `optimizer` may be null (a weights-only file).
void save_checkpoint(const std::string& path, nn::FPLMImpl& model, torch::optim::AdamW* optimizer,
                     const CheckpointInfo& info);

// Reads only the metadata (config, step, extra). Throws a one-line error for a missing/corrupt file.
CheckpointInfo read_checkpoint_info(const std::string& path);

// Loads parameters (and, if `optimizer` is given, its state) into an already built model whose config
// matches the file's. Missing or mis-shaped tensors throw naming the tensor.
CheckpointInfo load_checkpoint(const std::string& path, nn::FPLMImpl& model, torch::optim::AdamW* optimizer);

}  // namespace fprnn::train
