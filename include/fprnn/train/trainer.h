// Training and evaluation runs: word problems, copying and the formal-language tasks (task.name).
//
// A run directory holds: config.json (the resolved config), metrics.jsonl (one JSON object per logged
// step and per validation), checkpoints/last.safetensors (latest, for resuming) and model.safetensors
// (final weights), eval.csv + eval_table.txt (the length sweep), eval.png/.svg (+ .gp/.dat) and
// summary.json. Files are replaced atomically; nothing is half-written if a run is interrupted.
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/nn/backbone.h"
#include "fprnn/tasks/word_problem.h"
#include "fprnn/train/evaluate.h"

#include <string>
#include <vector>

namespace fprnn::train {

struct TrainOptions {
  std::string out_dir;
  bool resume = false;       // continue from out_dir/checkpoints/last.safetensors
  int64_t stop_after = -1;   // stop (with a checkpoint) after this many optimiser steps in total
  bool skip_final_eval = false;
  bool quiet = false;        // no progress output
};

struct TrainSummary {
  int64_t steps_done = 0;
  bool finished = false;     // reached cfg.train.steps (not stopped early)
  double final_loss = 0;
  double seconds = 0;
  double tokens_per_second = 0;
  std::vector<EvalResult> validation;  // last validation (length k)
  std::vector<EvalResult> lengths;     // the final sweep
};

// Trains per cfg into opts.out_dir. Throws one-line errors for bad configs, an existing run without
// --resume, a missing checkpoint to resume from, or a diverged loss.
TrainSummary run_training(const RunConfig& cfg, const TrainOptions& opts);

// The device cfg.device names; "cuda" without a usable GPU throws one clear line.
torch::Device run_device(const TrainConfig& cfg);

// Builds the model a config describes (seeded by cfg.train.seed, on its device) for `vocab_size` tokens.
nn::FPLM build_model(const RunConfig& cfg, int64_t vocab_size);

// Sets LibTorch's intra-op threads when cfg.train.threads > 0.
void apply_threads(const TrainConfig& cfg);

// Writes eval.csv, eval_table.txt and the plot for a length sweep into `dir`; returns the image paths.
std::vector<std::string> write_sweep(const std::string& dir, const std::vector<EvalResult>& sweep,
                                     const RunConfig& cfg, const std::string& title);

}  // namespace fprnn::train
