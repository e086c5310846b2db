// The FP-Mamba1 layer (spec §5): a Mamba-1 block whose SSM output y is the fixed point of a map G that mixes
// channels with a structured Q and feeds shift(y) back into B, C and the mixer.
//
//   [x, z] = split(u W_inᵀ);  short conv: x = SiLU(conv1d(x));  [dt_low, B_x, C_x] = split(x W_xᵀ)
//   dt = dt_low W_dtᵀ (bias added inside the scan);  A = −exp(A_log)
//   G(y) = LayerNorm(SSM(x̃; Δ, A, B', C') [⊙ SiLU(z) if glu_in_loop]),
//     x̃ = Q(param(y)) (x − y) + y,  param(y) = [x, shift(y)] | x + shift(y) | x
//     [B_y, C_y] = split(shift(y) W_bcᵀ);  B' = B_x + B_y, C' = C_x + C_y (L2-normalised over N if bc_norm)
//   y* = solve(G) without autograd (damped, quantile stop: spec §8);  y = G^{n_backwards}(y*) with autograd
//   out = W_out(SiLU(z + shift(y) W_zyᵀ) ⊙ y)   (glu_in_loop: out = W_out y)
//
// The one-pass Mamba-1 baseline (layer "mamba1") is the same block with y_prev = 0 and no mixer: y = G(0) with
// x̃ = x, B' = B_x, C' = C_x, out = W_out(SiLU(z) ⊙ y); it has no mixer, bc_y_proj or z_y_proj. Parameter counts
// (D = expand·d_model, N = d_state, R = dt_rank, K = d_conv, conv only with use_short_conv):
//   mamba1:   2dD (in_proj) + (K+1)D (conv) + D(R+2N) (x_proj) + RD + D (dt_proj) + DN (A_log) + D (D)
//             + 2D (out_norm) + Dd (out_proj)
//   fpmamba1: mamba1 + 2N·D + 2N (bc_y_proj, weight-normed: v and g) + D² + D (z_y_proj, unless glu_in_loop)
//             + the mixer's parameters (e.g. Householder rank r, P = 2D: P·rD + rD + P·r + r + r).
//
// Layout: u (B, T, d_model) → (B, T, d_model); D = expand · d_model internally; y (B, T, D).
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/nn/basic.h"
#include "fprnn/nn/layer.h"
#include "fprnn/nn/mixer.h"
#include "fprnn/solver/fixed_point.h"

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace fprnn::nn {

using torch::Tensor;

class FPMamba1LayerImpl : public SequenceLayerImpl {
 public:
  FPMamba1LayerImpl(const LayerConfig& cfg, const SolverConfig& solver);

  // Input-only quantities of one forward call: x, z, dt (B, T, D); B_x, C_x (B, T, N); and the scan's
  // parameters in the compute dtype: A (D, N), D_skip, dt_bias (D).
  // raw_fixed, raw_w: the mixer's projection split for the no-grad iterations (MixerImpl::split_projection;
  // undefined outside a solve, or where it does not apply): raw = raw_fixed + shift(y) raw_wᵀ.
  struct Inputs {
    Tensor x, z, dt, B_x, C_x, A, D_skip, dt_bias;
    Tensor raw_fixed, raw_w;
  };

  Tensor forward(const Tensor& u, Tensor* y_star = nullptr) override;
  // From a detached fixed point: n_backwards differentiable applications of G, then the output.
  Tensor finish(const Inputs& in, const Tensor& y_star);

  Inputs prepare(const Tensor& u);
  // The mixer's parameter input for iterate y.
  Tensor mixer_param(const Inputs& in, const Tensor& y) const;
  // G(y), differentiable. In the one-pass layer, y must be zeros (it is ignored).
  Tensor step(const Inputs& in, const Tensor& y);
  // The gated output for the final SSM output y.
  Tensor output(const Inputs& in, const Tensor& y);
  // The fixed point y* (no autograd) by damped iteration, recording stats.
  Tensor solve(const Inputs& in);
  Tensor solve_with(const Inputs& in, const solver::SolverOptions& opt);

  // The reference's FPMamba lacks set_max_iter (spec §16.6, randomised caps raise there); the evident intent,
  // the same override as FPRNN's, is implemented.
  void set_max_iter(int64_t max_iter) override { max_iter_override_ = max_iter; }
  const solver::SolveStats& last_stats() const override { return stats_; }
  std::vector<std::string> no_weight_decay() const override { return {"A_log", "D"}; }
  void after_backbone_init(int64_t n_layers) override;

  // Re-draws dt_proj (weight and the inverse-softplus bias) as the reference's __init__ does.
  void reset_dt_proj();
  bool one_pass() const { return one_pass_; }
  // Whether solves hoist the x part of the mixer's projection out of their loop (on by default; off, every
  // iteration projects [x, shift(y)] whole: the tests compare the two).
  bool hoist_projection = true;
  int64_t d_inner() const { return D; }

  LayerConfig cfg;
  SolverConfig solver_cfg;
  int64_t D, N, R;  // d_inner, d_state, dt_rank
  Linear in_proj{nullptr}, x_proj{nullptr}, dt_proj{nullptr}, bc_y_proj{nullptr}, z_y_proj{nullptr},
      out_proj{nullptr};
  CausalConv1d conv1d{nullptr};
  torch::nn::LayerNorm out_norm{nullptr};
  Tensor A_log, D_skip;  // registered as "A_log" (D, N) and "D" (D)
  std::shared_ptr<MixerImpl> mixer;  // null in the one-pass layer

 private:
  bool one_pass_;
  int64_t max_iter_override_ = 0;
  solver::SolveStats stats_;
};
TORCH_MODULE(FPMamba1Layer);

}  // namespace fprnn::nn
