// The FPRNN layer (spec §4): a dense linear RNN computed as the fixed point of a diagonal scan plus a
// structured channel mixer Q.
//
//   [x, z] = split(u W_inᵀ);  short conv: x_mix, x_b, x_λ, x = SiLU(conv_*(x))  (else all equal x)
//   b = SiLU(W_b x_b);  λ = σ(W_λ x_λ + β)
//   F(h) = Scan_λ((1 − λ) ⊙ [Q(param(h)) (b⊙x − h) + h]),  param(h) = [x_mix, shift(h)] | x_mix + shift(h) | x_mix
//   h* = solve(F) without autograd;  h = F^{n_backwards}(h*) with autograd (one-step gradient)
//   out = W_o RMSNorm(SiLU(z) ⊙ SiLU(W_c x_c) ⊙ h),  x_c = SiLU(conv_c([x, h])) | [x, shift(h)]
//
// Layout: u (B, T, d_model) → (B, T, d_model); D = expand · d_model internally.
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/nn/basic.h"
#include "fprnn/nn/mixer.h"
#include "fprnn/solver/fixed_point.h"

#include <torch/torch.h>

#include <memory>

namespace fprnn::nn {

using torch::Tensor;

class FPRNNLayerImpl : public torch::nn::Module {
 public:
  FPRNNLayerImpl(const LayerConfig& cfg, const SolverConfig& solver);

  // Input-only quantities of one forward call (B, T, D each).
  struct Inputs {
    Tensor x, z, x_mix, bx, lambda, one_minus_lambda;
  };

  // h_star, when given, receives the detached fixed point the output was computed from.
  Tensor forward(const Tensor& u, Tensor* h_star = nullptr);
  // From a detached fixed point: n_backwards differentiable applications of F, then the output.
  Tensor finish(const Inputs& in, const Tensor& h_star);

  Inputs prepare(const Tensor& u);
  // The mixer's parameter input for iterate h.
  Tensor mixer_param(const Inputs& in, const Tensor& h) const;
  // F(h), differentiable (used for the n_backwards steps and as the plain reference of the fast map).
  Tensor step(const Inputs& in, const Tensor& h);
  // The gated, normalised output for the final state h.
  Tensor output(const Inputs& in, const Tensor& h);
  // The fixed point h* (no autograd) by the configured method, recording stats.
  Tensor solve(const Inputs& in);
  // Solves with explicit options (tests, `verify`'s exact run).
  Tensor solve_with(const Inputs& in, const solver::SolverOptions& opt);

  // Training-time cap override (the randomised cap); ≤ 0 restores the configured cap.
  void set_max_iter(int64_t max_iter) { max_iter_override_ = max_iter; }
  const solver::SolveStats& last_stats() const { return stats_; }
  // Parameters of F and of the output, for tests: the fixture loader maps reference names onto these.
  int64_t d_inner() const { return D; }

  LayerConfig cfg;
  SolverConfig solver_cfg;
  int64_t D;
  Linear input_trans{nullptr}, b_proj{nullptr}, lambda_proj{nullptr}, c_proj{nullptr}, output_trans{nullptr};
  CausalConv1d conv1d_x{nullptr}, conv1d_b{nullptr}, conv1d_mixer{nullptr}, conv1d_lambda{nullptr},
      conv1d_c{nullptr};
  RMSNorm output_norm{nullptr};
  std::shared_ptr<MixerImpl> mixer;

 private:
  int64_t max_iter_override_ = 0;
  solver::SolveStats stats_;
};
TORCH_MODULE(FPRNNLayer);

// The no-grad map F with the mixer projection split into a part computed once per solve (from x_mix)
// and a part recomputed per iteration (from shift(h)): one GEMM per iteration, on width D instead of 2D.
class FastStep {
 public:
  FastStep(FPRNNLayerImpl& layer, const FPRNNLayerImpl::Inputs& in);
  Tensor operator()(const Tensor& h);
  // The mixer's raw projections for iterate h (exposed for tests: equals mixer->project(mixer_param(h))).
  Tensor raw(const Tensor& h);

 private:
  // Applies the second stages of low-rank projections to the stacked first-stage output z (N, rows0).
  Tensor finish(const Tensor& z) const;

  FPRNNLayerImpl& layer_;
  const FPRNNLayerImpl::Inputs& in_;
  bool h_dep_;
  Tensor w_h_t_;      // first-stage weights acting on shift(h), transposed (D, rows0)
  Tensor base_;       // first-stage output from x_mix plus first-stage biases, (B·T, rows0)
  Tensor raw_const_;  // raw when the mixer does not depend on h
  struct Part {       // one projection: its rows in the first-stage output, and its second stage if any
    int64_t offset = 0, rows = 0;
    Tensor w1_t, b1;
  };
  std::vector<Part> parts_;
  bool single_stage_ = true;
};

}  // namespace fprnn::nn
