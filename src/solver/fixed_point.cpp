// The fixed-point solver of spec §8: per-sample controller, residual, driver loop, randomised cap.
#include "fprnn/solver/fixed_point.h"

#include "fprnn/ops/residual.h"
#include "fprnn/random.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fprnn::solver {

SolverOptions SolverOptions::training(const SolverConfig& cfg, int64_t max_iter_override) {
  SolverOptions o;
  o.max_iter = max_iter_override > 0 ? max_iter_override : cfg.max_iter;
  // A negative configured cap means "randomised per batch" and must be overridden by the caller;
  // without an override it behaves as the reference: one iteration.
  if (o.max_iter < 0) o.max_iter = 1;
  o.quantile = 1.0 - cfg.outlier_quantile;
  o.threshold = cfg.threshold;
  o.stepsize = cfg.stepsize;
  o.stepsize_decay = cfg.stepsize_decay;
  o.decay_patience = cfg.decay_patience;
  o.stepsize_thresh = cfg.stepsize_thresh;
  o.eps = cfg.eps;
  return o;
}

SolverOptions SolverOptions::evaluation(const SolverConfig& cfg) {
  SolverOptions o = training(cfg, cfg.eval_max_iter);
  o.quantile = 1.0 - cfg.eval_outlier_quantile;
  return o;
}

double quantile(std::vector<double> values, double q) {
  TORCH_CHECK(!values.empty(), "quantile: no values");
  TORCH_CHECK(q >= 0.0 && q <= 1.0, "quantile: q must be in [0, 1], got ", q);
  // NaN sorts last, as in torch.sort; a NaN in the interpolation makes the result NaN (torch.quantile).
  std::sort(values.begin(), values.end(), [](double a, double b) {
    if (std::isnan(a)) return false;
    if (std::isnan(b)) return true;
    return a < b;
  });
  const double pos = q * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const auto hi = static_cast<size_t>(std::ceil(pos));
  const double a = values[lo], b = values[hi];
  if (lo == hi || a == b) return a;
  const double w = pos - static_cast<double>(lo);
  return w < 0.5 ? a + w * (b - a) : b - (1.0 - w) * (b - a);  // torch.lerp's two-sided form
}

FixedPointController::FixedPointController(int64_t batch, const SolverOptions& opt)
    : opt_(opt),
      best_(static_cast<size_t>(batch), std::numeric_limits<double>::infinity()),
      last_(static_cast<size_t>(batch), std::numeric_limits<double>::infinity()),
      stepsize_(static_cast<size_t>(batch), opt.stepsize),
      patience_(static_cast<size_t>(batch), opt.decay_patience) {
  TORCH_CHECK(batch > 0, "fixed-point solver: empty batch");
  TORCH_CHECK(opt.max_iter > 0, "fixed-point solver: max_iter must be positive, got ", opt.max_iter);
}

bool FixedPointController::should_continue() const {
  if (iter_ == 0) return true;
  if (iter_ >= opt_.max_iter) return false;
  const double q = quantile(best_, opt_.quantile);
  if (!(q >= opt_.threshold)) return false;  // NaN stops too, as in the reference's comparison
  return *std::max_element(stepsize_.begin(), stepsize_.end()) >= opt_.stepsize_thresh;
}

bool FixedPointController::all_unit_steps() const {
  return std::all_of(stepsize_.begin(), stepsize_.end(), [](double s) { return s == 1.0; });
}

void FixedPointController::record(const std::vector<double>& residual) {
  TORCH_CHECK(residual.size() == best_.size(), "fixed-point solver: ", residual.size(), " residuals for a batch of ",
              best_.size());
  for (size_t b = 0; b < residual.size(); ++b) {
    const bool improved = residual[b] < best_[b];
    // best ← min(best, r) with torch.minimum's NaN propagation: a NaN residual poisons the sample, the
    // quantile becomes NaN and the loop stops instead of iterating on NaNs.
    if (improved || std::isnan(residual[b])) best_[b] = residual[b];
    patience_[b] = improved ? opt_.decay_patience : patience_[b] - 1;
    if (patience_[b] == 0) {
      patience_[b] += opt_.decay_patience;
      stepsize_[b] *= opt_.stepsize_decay;
    }
  }
  last_ = residual;
  ++iter_;
}

std::vector<double> relative_residual(const Tensor& y, const Tensor& y_new, double eps) {
  TORCH_CHECK(y.dim() == 3 && y.sizes() == y_new.sizes(), "relative_residual: expected two equal (B, T, D) tensors, got ",
              y.sizes(), " and ", y_new.sizes());
  // One pass over both on the GPU (src/ops/residual), the ATen composite elsewhere; the same bits either way.
  // Two dtypes (not what the layers hand in): both widened to y_new's arithmetic first.
  Tensor r;
  if (y.scalar_type() == y_new.scalar_type()) {
    r = ops::relative_residual(y, y_new, eps);
  } else {
    const auto acc = y_new.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
    r = ops::relative_residual(y.to(acc), y_new.to(acc), eps);
  }
  r = r.cpu().contiguous();
  const double* p = r.data_ptr<double>();
  return std::vector<double>(p, p + r.numel());
}

std::pair<Tensor, SolveStats> solve_with_residual(const StepWithResidual& F, Tensor y0, const SolverOptions& opt) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(y0.dim() == 3, "fixed-point solver: the iterate must be (B, T, D), got ", y0.sizes());
  FixedPointController ctl(y0.size(0), opt);
  Tensor y = std::move(y0);
  while (ctl.should_continue()) {
    auto [y_new, r] = F(y);
    TORCH_CHECK(y_new.sizes() == y.sizes(), "fixed-point solver: F returned ", y_new.sizes(), " for an iterate of ",
                y.sizes());
    if (ctl.all_unit_steps()) {
      y = y_new;
    } else {
      const auto& s = ctl.stepsizes();
      // On the iterate's device and dtype (a CPU (B, 1, 1) tensor does not broadcast against CUDA ones).
      const Tensor st = torch::tensor(std::vector<double>(s.begin(), s.end()), torch::kFloat64)
                            .to(y_new.options())
                            .view({-1, 1, 1});
      y = st * y_new + (1 - st) * y;
    }
    ctl.record(r);
  }
  SolveStats stats;
  stats.iterations = ctl.iterations();
  stats.last_residual_max = *std::max_element(ctl.last().begin(), ctl.last().end());
  stats.best_residual_max = *std::max_element(ctl.best().begin(), ctl.best().end());
  stats.best_residual_quantile = quantile(ctl.best(), opt.quantile);
  stats.converged = stats.best_residual_quantile < opt.threshold;
  return {y, stats};
}

std::pair<Tensor, SolveStats> solve(const std::function<Tensor(const Tensor&)>& F, Tensor y0,
                                    const SolverOptions& opt) {
  return solve_with_residual(
      [&](const Tensor& y) {
        Tensor y_new = F(y);
        std::vector<double> r = relative_residual(y, y_new, opt.eps);
        return std::make_pair(std::move(y_new), std::move(r));
      },
      std::move(y0), opt);
}

int64_t random_max_iter(uint64_t seed, int64_t step, int64_t layer, int64_t train_length) {
  SplitMix64 rng(seed, 0x6d61786974ULL, static_cast<uint64_t>(step), static_cast<uint64_t>(layer));
  const double scale = static_cast<double>(train_length) / 16.0 + 1.0;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(rng.gamma(4.0, scale))));
}

}  // namespace fprnn::solver
