// Run configuration: typed structs with the reference's defaults, read from JSON with dotted overrides.
//
// A config file is a JSON object with the sections below; every key is optional and unknown keys are
// errors. Overrides on the command line use dotted paths: `model.mixer_type=kronecker`, `train.lr=1e-3`.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace fprnn {

using Json = nlohmann::json;

// Fixed-point solver (spec §8). Defaults are the reference FPRNN's.
struct SolverConfig {
  int64_t max_iter = 16;             // training cap on no-grad iterations; < 0 ⇒ random cap ⌈Gamma(4, k/16+1)⌉
  int64_t eval_max_iter = 1000;      // evaluation cap (the reference hard-codes 1000)
  double threshold = 0.1;            // convergence threshold on the relative ∞-norm residual
  double outlier_quantile = 0.1;     // training stops when quantile_{1−q}(best residual) < threshold
  double eval_outlier_quantile = 0;  // evaluation: 0 ⇒ every sample must converge (the reference)
  double stepsize = 1.0;             // damping: y ← s·F(y) + (1−s)·y (FPRNN: 1, FP-Mamba: 0.99)
  double stepsize_decay = 1.0;       // s ← s·decay after `decay_patience` iterations without a new best
  int64_t decay_patience = 15;
  double stepsize_thresh = 1e-3;     // stop when every sample's step size is below this
  double eps = 1e-8;                 // residual denominator ‖F(y)‖∞ + eps
  std::string eval_method = "picard";  // "picard" (iterate F) | "sequential" (dense oracle, spec §4.6)
  bool fused = true;                 // fused no-grad iterations (ops::fp_step on the CPU, the device loop on a
                                     // GPU) where they apply; false: the plain map, for checks and benchmarks
  int64_t device_check_every = 4;    // GPU: iterations queued between host reads of the stop flag (results
                                     // are the same for any value; larger hides more launch latency)
};

// One sequence layer and its mixer (spec §7): FPRNN (spec §4), FP-Mamba1 (spec §5), FP-Mamba2 (spec §6), or the
// one-pass Mamba-1 / Mamba-2 baselines (the FP-Mamba block run once with y_prev = 0: no mixer, no loop, no
// y-dependent projections).
struct LayerConfig {
  std::string layer = "fprnn";        // fprnn | fpmamba1 | mamba1 | fpmamba2 | mamba2
  int64_t d_model = 64;
  int64_t expand = 2;                 // d_inner = expand · d_model
  int64_t d_conv = 4;
  std::string mixer_type = "householderproduct";  // householderproduct | dplr | kronecker | nonselective
  int64_t mixer_rank = 1;
  std::string mixer_ac = "silu";      // identity | relu | silu
  int64_t mixer_proj_rank = -1;       // −1 full projection; k > 0 two-layer rank-k projection
  bool mixer_h_dep = true;
  bool symm_mixer = false;
  std::string kronecker_normalization = "spectral";  // spectral | column-wise
  bool use_short_conv = true;
  int64_t n_backwards = 1;
  double norm_eps = 1e-5;
  bool weight_norm = true;            // mixer projections as weight-normalised linears (g, v), as the reference
  // FP-Mamba1 / Mamba-1 (spec §5.1, the reference's defaults; FP-Mamba2 / Mamba-2 use d_state, dt_min, dt_max,
  // dt_init_floor, bc_norm, glu_in_loop and ssm_params_fp32 too):
  int64_t d_state = 16;               // N, states per channel (FP-Mamba2's default: 128)
  int64_t dt_rank = -1;               // −1 = "auto" = ⌈d_model / 16⌉
  double dt_min = 1e-3;               // dt_proj.bias init: Δ log-uniform in [dt_min, dt_max], ≥ dt_init_floor
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  std::string dt_init = "random";     // dt_proj.weight init: random U(±dt_rank^-½·dt_scale) | constant
  double dt_scale = 1.0;
  bool bc_norm = true;                // L2-normalise B', C' over d_state
  bool glu_in_loop = false;           // gate SiLU(z) inside the map; false: outside, with z + W_zy shift(y)
  bool ssm_params_fp32 = true;        // A, D and dt_proj.bias enter the scan rounded to float32, as in the
                                      // reference (A = −exp(A_log.float()); its scan takes D, delta_bias in
                                      // fp32). A is the float32 nearest to −exp(A_log) (exp in float64).
                                      // Matters only for float64 runs; false keeps them exact.
  // FP-Mamba2 / Mamba-2 only (spec §6, the reference's defaults):
  int64_t headdim = 64;               // P, channels per head; nheads H = expand·d_model / headdim
  int64_t ngroups = 1;                // groups of B, C, each shared by H / ngroups consecutive heads
  double A_init_min = 1.0;            // A_log = ln U[A_init_min, A_init_max] per head (A_init_range)
  double A_init_max = 16.0;
};

struct ModelConfig {
  LayerConfig layer;                  // flattened into the "model" section of the JSON
  int64_t n_layers = 1;
  int64_t pad_vocab_size_multiple = 8;
  double backbone_norm_eps = 1e-5;    // block and final RMSNorm (mamba_ssm default)
};

// The task: word problems (spec §12.1, §13.1), copying (§12.2, §13.2) or a formal-language task (§12.3,
// §13.3). Keys marked WP are read by word problems only, keys marked SEQ by the other tasks only.
struct TaskConfig {
  // word_problem | copy | modular_arithmetic_with_brackets | modular_arithmetic | parity |
  // cycle_navigation | even_pairs
  std::string name = "word_problem";
  std::string group = "S3";           // WP
  int64_t train_length = 8;           // training lengths min_train_length..train_length (WP: k)
  int64_t min_train_length = 2;
  int64_t samples_per_length = 20000; // WP, per length; exhaustive when |G|^L is at most this
  double train_fraction = 0.8;        // WP, of length k (the rest is validation)
  int64_t eval_min_length = 2;
  int64_t eval_max_length = 32;
  int64_t eval_length_step = 2;
  int64_t eval_samples = 1024;        // WP: sequences of length eval_max_length evaluated by prefix;
                                      // SEQ: samples per evaluated length
  bool loss_on_padding = true;        // WP. As the reference: PAD targets count in loss and metrics (spec §16.15).
                                      // false masks them. One run each way is no verdict (length generalisation
                                      // varies a lot between runs): S3 demo on the CPU, length 16: 27.5 % masked,
                                      // 60.7 % counted; S3 on the GPU (results/h200): 47.7 % masked, 20.9 % counted.
  uint64_t seed = 0;                  // data seed (generation and split)
  int64_t context_length = 0;         // SEQ: tokens per row (copy: the packed context, the reference's 220;
                                      // formal tasks: 256 pads every row as the reference, 0 pads each batch
                                      // to its longest sample)
  int64_t alphabet_size = 26;         // SEQ, copy: letters (≤ 26)
  int64_t val_min_length = 2;         // SEQ: validation lengths (the reference's formal tasks: 40..256)
  int64_t val_max_length = 8;
  int64_t val_samples = 1024;         // SEQ: validation samples
};

struct TrainConfig {
  int64_t steps = 1500;
  int64_t batch_size = 256;
  double lr = 3e-3;
  double weight_decay = 0.01;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double adam_eps = 1e-8;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;          // cosine decays to lr · min_lr_ratio
  double grad_clip = 1.0;             // ≤ 0 disables clipping
  uint64_t seed = 0;                  // model init and data order
  std::string dtype = "float32";      // compute dtype: float32 | float64 | bfloat16
  std::string device = "cpu";
  int64_t threads = 0;                // intra-op threads; 0 = LibTorch default
  int64_t log_every = 25;
  int64_t eval_every = 250;           // validation (length k) every this many steps; 0 = only at the end
  int64_t checkpoint_every = 500;     // 0 = only at the end
  int64_t eval_batch_size = 512;
  // GPU: record the first training step's forward and backward as a CUDA graph and replay it for every
  // batch of the same shape (the optimiser step stays eager). FPRNN layers on the device loop only
  // (Householder/DPLR mixers, a fixed solver.max_iter); every solve then runs to its cap's iteration count
  // in launches (those after the stop do nothing).
  bool cuda_graph = false;
};

struct RunConfig {
  ModelConfig model;
  SolverConfig solver;
  TaskConfig task;
  TrainConfig train;
};

Json to_json(const RunConfig& cfg);
// Reads a full config from JSON merged over the defaults; unknown keys and wrong types throw.
// Defaults follow model.layer when the JSON names it: for fpmamba1 and mamba1 the solver defaults are the
// reference FPMamba's (spec §5.1, §8: stepsize 0.99, stepsize_decay 0.9, outlier_quantile 0.25) and
// kronecker_normalization is column-wise (spec §7.3); for fpmamba2 and mamba2 the reference FPMamba2's
// (spec §6, §8: stepsize 0.99, stepsize_decay 0.9, outlier_quantile 0.1, d_state 128, column-wise).
// Keys given in the JSON always win. (The command line moves a model.layer=… override into the JSON before
// resolving, so it picks these defaults too.)
RunConfig run_config_from_json(const Json& j);
// The defaults for a layer type: RunConfig{} with the FP-Mamba changes above for the Mamba layers.
RunConfig default_run_config(const std::string& layer);
// The valid values of model.layer, in the order error messages list them.
const std::vector<std::string>& layer_names();
// Checks sizes and names (throws a one-line error naming the key).
void validate(const RunConfig& cfg);

namespace config {

// Parses a JSON config file; a missing or malformed file throws one clear line.
Json load_file(const std::string& path);
// Recursively merges `user` over `defaults`; a key absent from `defaults` throws, listing the valid keys.
Json merge(const Json& defaults, const Json& user, const std::string& prefix = "");
// Applies "a.b.c=value": the key must exist; the value is parsed as the existing value's type.
void apply_override(Json& cfg, const std::string& assignment);
// Flattened "key value" lines, aligned, for printing a resolved config.
std::string format_table(const Json& cfg);

}  // namespace config
}  // namespace fprnn
