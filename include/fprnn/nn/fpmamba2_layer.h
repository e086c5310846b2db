// The FP-Mamba2 layer (spec §6): a Mamba-2 block whose SSM output y is the fixed point of a map G that mixes
// channels with a structured Q and feeds shift(y) back into B, C and the mixer. H = D / headdim heads of P =
// headdim channels, G = ngroups groups of B, C (head h reads group h / (H/G)), N = d_state.
//
//   [z, xBC, dt] = split(u W_inᵀ)  (widths D, D + 2GN, H);  short conv: xBC = SiLU(conv1d(xBC));
//   [x, B_x, C_x] = split(xBC)  (widths D, GN, GN);  A = −exp(A_log) (H)
//   G(y) = RMSNorm(SSD(x̃; Δ, A, B', C', D_skip) [⊙ SiLU(z) if glu_in_loop]),
//     x̃ = Q(param(y)) (x − y) + y,  param(y) = [x, shift(y)] | x + shift(y) | x
//     [B_y, C_y] = split(shift(y) W_bcᵀ);  B' = B_x + B_y, C' = C_x + C_y, each L2-normalised over N per group
//     (if bc_norm);  Δ_t[h] = softplus(dt_t[h] + dt_bias[h])
//   y* = solve(G) without autograd (damped, quantile stop: spec §8);  y = G^{n_backwards}(y*) with autograd
//   out = W_out(SiLU(z + shift(y) W_zyᵀ) ⊙ y)   (glu_in_loop: out = W_out y)
//
// Deliberate fixes of the reference (spec §16 items 1–2; no fixtures exist for FP-Mamba2): the gate is z, not
// z transposed, and SiLU(z) is applied once — inside the loop's RMSNorm with glu_in_loop, outside the loop
// otherwise (the reference gates inside the loop always, so twice). bc_norm is honoured (the reference always
// normalises: the default, true, is the same).
//
// The one-pass Mamba-2 baseline (layer "mamba2") is the same block with y_prev = 0 and no mixer: y = G(0) with
// x̃ = x, B' = B_x, C' = C_x, out = W_out(SiLU(z) ⊙ y) (glu_in_loop: W_out y); it has no mixer, bc_y_proj or
// z_y_proj. With glu_in_loop = true and bc_norm = false it is mamba_ssm's Mamba2 block (RMSNormGated with
// norm_before_gate = False, ngroups = 1). Parameter counts (D = expand·d_model, K = d_conv, conv only with
// use_short_conv):
//   mamba2:   d(2D + 2GN + H) (in_proj) + (K+1)(D + 2GN) (conv) + 3H (dt_bias, A_log, D) + D (norm) + Dd (out_proj)
//   fpmamba2: mamba2 + 2GN·D + 2GN (bc_y_proj, weight-normed: v and g) + D² + D (z_y_proj, unless glu_in_loop)
//             + the mixer's parameters (e.g. Householder rank r, P = 2D: P·rD + rD + P·r + r + r).
//
// Layout: u (B, T, d_model) → (B, T, d_model); y (B, T, D).
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

class FPMamba2LayerImpl : public SequenceLayerImpl {
 public:
  FPMamba2LayerImpl(const LayerConfig& cfg, const SolverConfig& solver);

  // Input-only quantities of one forward call: x, z (B, T, D); B_x, C_x (B, T, G·N); and in the scan's dtype
  // dt (B, T, H) and the parameters A, D_skip, dt_bias (H).
  struct Inputs {
    Tensor x, z, dt, B_x, C_x, A, D_skip, dt_bias;
  };

  Tensor forward(const Tensor& u, Tensor* y_star = nullptr) override;
  // From a detached fixed point: n_backwards differentiable applications of G, then the output.
  Tensor finish(const Inputs& in, const Tensor& y_star);

  Inputs prepare(const Tensor& u);
  // The mixer's parameter input for iterate y.
  Tensor mixer_param(const Inputs& in, const Tensor& y) const;
  // G(y), differentiable. In the one-pass layer, y is ignored (taken as zero).
  Tensor step(const Inputs& in, const Tensor& y);
  // The gated output for the final SSM output y.
  Tensor output(const Inputs& in, const Tensor& y);
  // The fixed point y* (no autograd) by damped iteration, recording stats.
  Tensor solve(const Inputs& in);
  Tensor solve_with(const Inputs& in, const solver::SolverOptions& opt);

  // The reference's FPMamba2 lacks set_max_iter (spec §16.6); the same override as FPRNN's is implemented.
  void set_max_iter(int64_t max_iter) override { max_iter_override_ = max_iter; }
  const solver::SolveStats& last_stats() const override { return stats_; }
  std::vector<std::string> no_weight_decay() const override { return {"A_log", "D", "dt_bias"}; }
  void after_backbone_init(int64_t n_layers) override;

  bool one_pass() const { return one_pass_; }
  int64_t d_inner() const { return D; }

  LayerConfig cfg;
  SolverConfig solver_cfg;
  int64_t D, N, H, P, G;  // d_inner, d_state, nheads, headdim, ngroups
  Linear in_proj{nullptr}, bc_y_proj{nullptr}, z_y_proj{nullptr}, out_proj{nullptr};
  CausalConv1d conv1d{nullptr};  // over xBC (D + 2GN channels)
  RMSNorm norm{nullptr};
  Tensor A_log, D_skip, dt_bias;  // registered as "A_log", "D", "dt_bias", each (H)
  std::shared_ptr<MixerImpl> mixer;  // null in the one-pass layer

 private:
  bool one_pass_;
  int64_t max_iter_override_ = 0;
  solver::SolveStats stats_;
};
TORCH_MODULE(FPMamba2Layer);

}  // namespace fprnn::nn
