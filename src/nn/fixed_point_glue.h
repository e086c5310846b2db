// The fixed-point glue shared by the FP-Mamba layers (spec §4.5, §5.2, §6): y* = the solve of G(y) = y from
// y = 0 without autograd; the layer's value is output(G^{n_backwards}(y*)) with autograd through those steps
// only (the one-step gradient); the one-pass baselines (mamba1, mamba2) are output(G(0)) with nothing solved.
// A layer provides prepare(u) → Inputs, step(Inputs, y) → G(y), output(Inputs, y) and solve(Inputs).
#pragma once

#include "fprnn/solver/fixed_point.h"

#include <torch/torch.h>

#include <cstdint>

namespace fprnn::nn::detail {

// The solver's options for a layer in training (the training cap, or the randomised override) or evaluation.
inline solver::SolverOptions solve_options(bool training, const SolverConfig& cfg, int64_t max_iter_override) {
  return training ? solver::SolverOptions::training(cfg, max_iter_override) : solver::SolverOptions::evaluation(cfg);
}

// y* of G(y) = y from y = 0, without autograd; `stats` receives the solve's statistics.
template <typename Step>
torch::Tensor solve_from_zero(const Step& G, const torch::Tensor& like, const solver::SolverOptions& opt,
                              solver::SolveStats& stats) {
  torch::NoGradGuard no_grad;
  auto [y, s] = solver::solve([&](const torch::Tensor& y_prev) { return G(y_prev); }, torch::zeros_like(like), opt);
  stats = s;
  return y;
}

// G applied n times from the detached y*, with autograd.
template <typename Step>
torch::Tensor steps_from(const Step& G, const torch::Tensor& y_star, int64_t n) {
  torch::Tensor y = y_star.detach();
  for (int64_t i = 0; i < n; ++i) y = G(y);
  return y;
}

// The layer's forward: one differentiable pass from 0 (one_pass), or solve then finish. y_star, if given,
// receives the (detached) fixed point or pass.
template <typename Layer>
torch::Tensor fixed_point_forward(Layer& layer, const torch::Tensor& u, torch::Tensor* y_star, bool one_pass,
                                  solver::SolveStats& stats) {
  const auto in = layer.prepare(u);
  if (one_pass) {
    const torch::Tensor y = layer.step(in, torch::zeros_like(in.x));
    stats = solver::SolveStats{};
    stats.converged = true;
    if (y_star != nullptr) *y_star = y.detach();
    return layer.output(in, y);
  }
  const torch::Tensor y = layer.solve(in).detach();
  if (y_star != nullptr) *y_star = y;
  return layer.finish(in, y);
}

}  // namespace fprnn::nn::detail
