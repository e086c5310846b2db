// One fused no-grad fixed-point iteration of the FPRNN layer for the Householder-product and DPLR mixers
// (spec §4.3, §7.1–7.2), with the solver's residual statistics (§8):
//
//   raw_t = base_t + z_{t−1}  (base_0 alone; z = h·W_hᵀ for every token, so the shift costs no copy)
//   u_i = normalize(act(raw_u,i), eps),  α_i = σ(raw_α,i),  δ = bx − h
//   Qδ = H_{r−1}⋯H_0 δ (householder) | δ − 2 Σ_i α_i u_i (u_iᵀ δ) (dplr),  H_i = I − 2 α_i u_i u_iᵀ
//   y = linrec((1 − λ) ⊙ (Qδ + h), λ)
//   stats[b, t] = (max_d |y − h|, max_d |y|)   →   r_b = max_t stats₀ / (stats₁ + eps)
//
// Layout contract: base and z (B, T, R) with R = r·D + r, columns [u_0 | … | u_{r−1} | α_0 … α_{r−1}]
// (the mixer's raw layout, biases included in base); h, bx, lambda, y (B, T, D); stats (B, T, 2). One dtype,
// float32 or float64; CPU. z may be undefined (a mixer that does not depend on h: raw = base). The low-rank
// (mixer_proj_rank > 0), Kronecker and non-selective mixers are not covered: the layer keeps its generic
// path for them.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fprnn::ops {

enum class MixerAc { kIdentity, kRelu, kSilu };

// "identity" | "relu" | "silu"; anything else throws, listing the valid names.
MixerAc mixer_ac_from_name(const std::string& name);

struct FpStepConfig {
  int64_t rank = 1;          // r, the number of reflections
  MixerAc ac = MixerAc::kSilu;
  double norm_eps = 1e-5;    // F.normalize's eps: u / max(‖u‖, eps)
  bool sum_form = false;     // false: householder (ordered product), true: dplr (sum form)
};

struct FpStepInputs {
  torch::Tensor base, z, h, bx, lambda;  // 1 − λ is formed in the kernel (one stream less to read)
};

// How the CPU kernel spreads the work; kAuto picks by batch size and thread count.
//   kPerSequence: one task per sequence, mixer and scan fused token by token (one pass over memory).
//   kTwoPass: mixer parallel over tokens into y, then the scan in place over (batch × column blocks).
enum class FpStepSchedule { kAuto, kPerSequence, kTwoPass };

// Allocating entry with checks: y (B, T, D); any strides. With `stats` non-null it receives (B, T, 2).
torch::Tensor fp_step(const FpStepInputs& in, const FpStepConfig& cfg, torch::Tensor* stats = nullptr);

// Reference (ATen ops in float64, never optimised): returns (y, stats) in float64.
std::pair<torch::Tensor, torch::Tensor> fp_step_ref(const FpStepInputs& in, const FpStepConfig& cfg);

// CPU kernel on contiguous inputs: writes y (B, T, D) and, when defined, stats (B, T, 2), both
// preallocated and contiguous, of the inputs' dtype. y must not alias any input.
void fp_step_fwd_cpu(const FpStepInputs& in, const FpStepConfig& cfg, torch::Tensor& y, torch::Tensor& stats,
                     FpStepSchedule schedule = FpStepSchedule::kAuto);

// r_b = max_t stats[b, t, 0] / (stats[b, t, 1] + eps) for stats (B, T, 2), computed in the stats' dtype
// exactly as solver::relative_residual computes it (NaN propagates) → B doubles.
std::vector<double> fp_step_residual(const torch::Tensor& stats, double eps);

}  // namespace fprnn::ops
