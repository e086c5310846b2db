// The fixed-point solver of spec §8 (the reference's FixedPointOptimizer), as a per-sample state machine
// plus a driver loop.
//
// From y⁰, repeat while the continue test holds:
//   ŷ = F(y);  r_b = max_t ‖y_bt − ŷ_bt‖∞ / (‖ŷ_bt‖∞ + eps)
//   y ← s_b ŷ + (1 − s_b) y                                   (damped update with the current step sizes)
//   improved_b = r_b < best_b;  best_b ← min(best_b, r_b)
//   patience_b ← decay_patience if improved_b else patience_b − 1;  at 0: reset, s_b ← s_b · stepsize_decay
// Continue test (checked before every step): always at iteration 0; afterwards
//   quantile_q(best over the batch) ≥ threshold  and  max_b s_b ≥ stepsize_thresh  and  iterations < max_iter.
// The reference logs iterations + 1 (the no-grad steps plus the differentiable one): `SolveStats::recorded()`.
#pragma once

#include "fprnn/io/config.h"

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace fprnn::solver {

using torch::Tensor;

// Everything one solve needs, resolved for training or evaluation.
struct SolverOptions {
  int64_t max_iter = 1000;
  double quantile = 1.0;          // of the per-sample best residuals; 1.0 = every sample must converge
  double threshold = 0.1;
  double stepsize = 1.0;
  double stepsize_decay = 1.0;
  int64_t decay_patience = 15;
  double stepsize_thresh = 1e-3;
  double eps = 1e-8;

  // Training: cap = max_iter (a positive override replaces cfg.max_iter), quantile = 1 − outlier_quantile.
  static SolverOptions training(const SolverConfig& cfg, int64_t max_iter_override = 0);
  // Evaluation: cap = eval_max_iter, quantile = 1 − eval_outlier_quantile.
  static SolverOptions evaluation(const SolverConfig& cfg);
};

// Linear-interpolation quantile (torch.quantile's default) of `values`, 0 ≤ q ≤ 1. Infinite values sort
// last; equal neighbours (also both infinite) return that value.
double quantile(std::vector<double> values, double q);

// The per-sample state machine. Residuals and step sizes are host-side doubles (one per sample).
class FixedPointController {
 public:
  FixedPointController(int64_t batch, const SolverOptions& opt);

  bool should_continue() const;
  // Step sizes to use for the update of the step whose residual is recorded next.
  const std::vector<double>& stepsizes() const { return stepsize_; }
  bool all_unit_steps() const;
  // Records the residual (one per sample) of the step just taken and updates best/patience/step size.
  void record(const std::vector<double>& residual);

  int64_t iterations() const { return iter_; }
  const std::vector<double>& best() const { return best_; }
  const std::vector<double>& last() const { return last_; }

 private:
  SolverOptions opt_;
  int64_t iter_ = 0;
  std::vector<double> best_, last_, stepsize_;
  std::vector<int64_t> patience_;
};

struct SolveStats {
  int64_t iterations = 0;                       // applications of F under no_grad
  int64_t recorded() const { return iterations + 1; }
  double last_residual_max = 0;                 // max over samples of the last residual
  double best_residual_max = 0;                 // max over samples of the best residual
  double best_residual_quantile = 0;            // the quantile the stop test used
  bool converged = false;                       // the stop came from the residual test, not a cap
};

// r_b = max_t ‖y_bt − ŷ_bt‖∞ / (‖ŷ_bt‖∞ + eps) for (B, T, D) tensors → B doubles.
std::vector<double> relative_residual(const Tensor& y, const Tensor& y_new, double eps);

// Runs the loop above from y0 with the map F (called under NoGradGuard). Returns the final iterate.
std::pair<Tensor, SolveStats> solve(const std::function<Tensor(const Tensor&)>& F, Tensor y0,
                                    const SolverOptions& opt);

// A map that also returns the residual of its own step: for the iterate y, (ŷ = F(y), r) with r (B doubles)
// equal to relative_residual(y, ŷ, opt.eps). A fused map computes r in the pass that writes ŷ; ŷ may be a
// buffer the map reuses once the caller has let go of it (the loop keeps only y).
using StepWithResidual = std::function<std::pair<Tensor, std::vector<double>>(const Tensor&)>;

// The same loop as `solve` with the residual taken from F; `solve` is this with relative_residual.
std::pair<Tensor, SolveStats> solve_with_residual(const StepWithResidual& F, Tensor y0, const SolverOptions& opt);

// The reference's randomised training cap ⌈Gamma(shape 4, scale k/16 + 1)⌉ (mean k/4 + 4), drawn from
// a generator keyed by (seed, step, layer) so that a resumed run draws the same caps.
int64_t random_max_iter(uint64_t seed, int64_t step, int64_t layer, int64_t train_length);

}  // namespace fprnn::solver
