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
#include "fprnn/nn/layer.h"
#include "fprnn/nn/mixer.h"
#include "fprnn/ops/fp_step.h"
#include "fprnn/ops/fp_step_cuda.h"
#include "fprnn/solver/fixed_point.h"

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace fprnn::nn {

using torch::Tensor;

class FPRNNLayerImpl : public SequenceLayerImpl {
 public:
  FPRNNLayerImpl(const LayerConfig& cfg, const SolverConfig& solver);

  // Input-only quantities of one forward call (B, T, D each).
  struct Inputs {
    Tensor x, z, x_mix, bx, lambda, one_minus_lambda;
    // On a GPU with an h-dependent Householder/DPLR mixer of single-stage projections: the mixer's padded
    // projection of the x part, raw_base = b + x_mix W_xᵀ (B·T, padded rows), and W_h, the matrix of the shifted
    // iterate's part, so that raw(h) = raw_base + shift(h) W_hᵀ: both the solve and the differentiable steps
    // start from this one projection of x (undefined elsewhere).
    Tensor raw_base, w_h;
  };

  // h_star, when given, receives the detached fixed point the output was computed from.
  Tensor forward(const Tensor& u, Tensor* h_star = nullptr) override;
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
  void set_max_iter(int64_t max_iter) override { max_iter_override_ = max_iter; }
  // After a device-loop solve the statistics are read from the GPU here, on each call (after a CUDA graph
  // replay they describe the replayed solve).
  const solver::SolveStats& last_stats() const override;
  void graph_replayed() override {
    if (recorded_) pending_ = recorded_;
  }
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
  struct PendingStats {  // a device-loop solve's state, read on demand
    ops::DeviceSolverState state;
    double quantile, threshold;
  };
  std::optional<PendingStats> pending_;
  std::optional<PendingStats> recorded_;  // the solve of the last CUDA graph capture
  mutable solver::SolveStats stats_;
};

// The statistics of a device-loop solve (reads its state from the GPU).
solver::SolveStats device_solve_stats(const ops::DeviceSolverState& state, double quantile, double threshold);
// The solver options as the device loop's kernels take them (the same fields).
ops::DeviceSolverOptions device_solver_options(const solver::SolverOptions& opt);
TORCH_MODULE(FPRNNLayer);

// The no-grad map F with the mixer projection split into a part computed once per solve (from x_mix)
// and a part recomputed per iteration (from h): one GEMM per iteration, on width D instead of 2D.
//
// Fused path (Householder and DPLR mixers with single-stage projections, float32/float64, CPU): the GEMM
// runs on h itself (z = h·W_hᵀ, no shift copy) and ops::fp_step does the rest of the iteration, the
// solver's residual included, in one pass; the iterate lives in two output buffers reused across calls, so
// an iteration allocates nothing. A returned tensor stays valid while the caller holds it: a buffer is
// overwritten only when nothing outside this object references its storage, otherwise a new one replaces
// it. Generic path (low-rank projections, mixer_proj_rank > 0; the Kronecker and non-selective mixers;
// bfloat16): the GEMM on shift(h), then the mixer's `apply` and linrec, allocating as it goes.
class FastStep {
 public:
  FastStep(FPRNNLayerImpl& layer, const FPRNNLayerImpl::Inputs& in);
  Tensor operator()(const Tensor& h);
  // (F(h), r) with r_b = solver::relative_residual(h, F(h), eps), from the fused kernel when it applies.
  std::pair<Tensor, std::vector<double>> step_with_residual(const Tensor& h, double eps);
  // The mixer's raw projections for iterate h (exposed for tests: equals mixer->project(mixer_param(h))).
  Tensor raw(const Tensor& h);
  // Whether the fused kernel serves iterates shaped like x.
  bool fused() const { return fused_; }
  // Whether the whole solve can run on the GPU without host synchronisation (a CUDA build, CUDA inputs, a
  // Householder/DPLR mixer with single-stage h-dependent projections, float32 or bfloat16 compute).
  bool device_loop() const { return device_loop_; }
  // The solve on the GPU (ops/fp_step_cuda.h): the host queues `check_every` iterations between reads of
  // the device's stop flag (≤ 0: all up to the cap, never reading it, as a CUDA graph capture needs); the
  // result is that of solver::solve on the same map, in the compute dtype, and device_state() then holds
  // the solve's counters and residuals (device_solve_stats turns them into solver::SolveStats).
  Tensor solve_device(const solver::SolverOptions& opt, int64_t check_every);
  const ops::DeviceSolverState& device_state() const { return state_; }

 private:
  // Applies the second stages of low-rank projections to the stacked first-stage output z (N, rows0).
  Tensor finish(const Tensor& z) const;
  bool use_fused(const Tensor& h) const;
  // Fused F(h) into a reused buffer; with_stats also fills stats_ with the residual maxima.
  Tensor fused_step(const Tensor& h, bool with_stats);
  // An output buffer (B, T, D) that nothing outside this object references (allocated if none is free).
  Tensor take_output();

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

  bool fused_ = false;
  bool device_loop_ = false;
  ops::FpStepConfig fp_cfg_;
  ops::FpStepInputs fp_in_;  // base (B, T, rows0) and contiguous bx, λ; z and h set per call
  Tensor z_;                 // h·W_hᵀ for every token (B·T, rows0), reused
  Tensor stats_;             // (B, T, 2) residual maxima, reused
  Tensor out_[2];            // the iterate buffers, used in turn
  int next_out_ = 0;
  ops::DeviceSolverState state_;  // of the last solve_device
};

}  // namespace fprnn::nn
