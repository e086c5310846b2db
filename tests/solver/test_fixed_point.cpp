// The fixed-point solver's semantics (spec §8) on scripted residual sequences and simple maps.
#include "testing.h"

#include "fprnn/solver/fixed_point.h"
#ifdef FPRNN_WITH_CUDA
#include "fprnn/nn/fprnn_layer.h"
#include "fprnn/ops/fp_step_cuda.h"
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace fprnn::testing {
namespace {

using solver::FixedPointController;
using solver::SolverOptions;

SolverOptions opts(int64_t max_iter, double quantile, double stepsize = 1.0, double decay = 1.0,
                   int64_t patience = 15) {
  SolverOptions o;
  o.max_iter = max_iter;
  o.quantile = quantile;
  o.threshold = 0.1;
  o.stepsize = stepsize;
  o.stepsize_decay = decay;
  o.decay_patience = patience;
  o.stepsize_thresh = 1e-3;
  return o;
}

TEST(FixedPointTest, QuantileIsLinearInterpolation) {
  EXPECT_DOUBLE_EQ(solver::quantile({4, 1, 3, 2}, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(solver::quantile({4, 1, 3, 2}, 1.0), 4.0);
  EXPECT_NEAR(solver::quantile({4, 1, 3, 2}, 0.9), 3.7, 1e-15);  // pos 2.7 between 3 and 4
  EXPECT_NEAR(solver::quantile({4, 1, 3, 2}, 0.5), 2.5, 1e-15);
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(solver::quantile({inf, inf}, 0.5), inf);  // equal neighbours, no inf − inf
  EXPECT_EQ(solver::quantile({1, inf}, 1.0), inf);
  EXPECT_THROW(solver::quantile({}, 0.5), c10::Error);
}

TEST(FixedPointTest, FirstStepAlwaysRuns) {
  FixedPointController c(3, opts(1, 1.0));
  EXPECT_TRUE(c.should_continue());
  c.record({0.0, 0.0, 0.0});
  EXPECT_FALSE(c.should_continue());  // converged and capped
  EXPECT_EQ(c.iterations(), 1);
}

TEST(FixedPointTest, TrainingStopsOnTheQuantileEvaluationNeedsEverySample) {
  // 9 of 10 samples converge; the last does not. Training (q = 0.9): quantile 0.05 + 0.1·0.45 = 0.095 < 0.1.
  std::vector<double> r(10, 0.05);
  r[9] = 0.5;
  FixedPointController train(10, opts(1000, 0.9));
  train.record(r);
  EXPECT_FALSE(train.should_continue());
  FixedPointController eval(10, opts(1000, 1.0));
  eval.record(r);
  EXPECT_TRUE(eval.should_continue());
  // With the outlier just above the interpolation limit the training quantile is ≥ 0.1.
  r[9] = 0.6;
  FixedPointController train2(10, opts(1000, 0.9));
  train2.record(r);
  EXPECT_TRUE(train2.should_continue());  // 0.05 + 0.1·0.55 = 0.105
}

TEST(FixedPointTest, BestSoFarNotCurrentResidual) {
  // A sample that dips below the threshold once counts as converged even if it rises again (spec §16.8).
  FixedPointController c(2, opts(1000, 1.0));
  c.record({0.5, 0.05});
  EXPECT_TRUE(c.should_continue());
  c.record({0.05, 0.9});
  EXPECT_FALSE(c.should_continue());
  EXPECT_DOUBLE_EQ(c.best()[1], 0.05);
  EXPECT_DOUBLE_EQ(c.last()[1], 0.9);
}

TEST(FixedPointTest, CapStopsAndRecordedCountIsIterationsPlusOne) {
  const Tensor y0 = torch::zeros({1, 2, 3}, torch::kFloat64);
  // F(y) = y + 1 never converges: the cap stops it after exactly max_iter applications.
  int64_t calls = 0;
  auto [y, stats] = solver::solve(
      [&](const Tensor& y) {
        ++calls;
        return y + 1;
      },
      y0, opts(7, 1.0));
  EXPECT_EQ(calls, 7);
  EXPECT_EQ(stats.iterations, 7);
  EXPECT_EQ(stats.recorded(), 8);
  EXPECT_FALSE(stats.converged);
  EXPECT_TRUE(torch::allclose(y, y0 + 7));
}

TEST(FixedPointTest, ContractionConvergesWithTheExpectedCount) {
  // F(y) = y/2 + 1 from 0: y_k = 2 − 2^{1−k}; residual after step k is |y_{k−1} − y_k| / |y_k| = 2^{1−k} / (2 − 2^{1−k}).
  // It first drops below 0.1 at k = 4 (0.125/1.875 ≈ 0.067; k = 3 gives 0.25/1.75 ≈ 0.14).
  auto [y, stats] = solver::solve([](const Tensor& y) { return y / 2 + 1; }, torch::zeros({2, 3, 4}, torch::kFloat64),
                                  opts(1000, 1.0));
  EXPECT_EQ(stats.iterations, 4);
  EXPECT_TRUE(stats.converged);
  EXPECT_NEAR(y.max().item<double>(), 2 - 0.125, 1e-15);
}

TEST(FixedPointTest, ResidualIsRelativeInfNormMaxOverTime) {
  const Tensor y = torch::zeros({2, 2, 2}, torch::kFloat64);
  Tensor yn = torch::zeros({2, 2, 2}, torch::kFloat64);
  yn[0][0] = torch::tensor({1.0, -2.0}, torch::kFloat64);  // ‖Δ‖∞ = 2, ‖ŷ‖∞ = 2 → 2/(2 + eps)
  yn[0][1] = torch::tensor({0.5, 4.0}, torch::kFloat64);   // 4/(4 + eps), the larger: max over time
  yn[1][0] = torch::tensor({1e-9, 0.0}, torch::kFloat64);  // 1e-9 / (1e-9 + 1e-8)
  const auto r = solver::relative_residual(y, yn, 1e-8);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_NEAR(r[0], 4.0 / (4.0 + 1e-8), 1e-15);
  EXPECT_NEAR(r[1], 1e-9 / (1e-9 + 1e-8), 1e-15);
}

TEST(FixedPointTest, DampingDecaysAfterPatienceAndStopsBelowThreshold) {
  // Patience 2, decay 0.5: every two non-improving steps halve the step size.
  FixedPointController c(1, opts(1000, 1.0, 1.0, 0.5, 2));
  c.record({1.0});  // improved (from inf), patience reset to 2
  EXPECT_DOUBLE_EQ(c.stepsizes()[0], 1.0);
  c.record({1.0});  // not improved: patience 1
  EXPECT_DOUBLE_EQ(c.stepsizes()[0], 1.0);
  c.record({2.0});  // not improved: patience 0 → reset to 2, step 0.5
  EXPECT_DOUBLE_EQ(c.stepsizes()[0], 0.5);
  c.record({0.9});  // improved
  c.record({0.9});
  c.record({0.9});
  EXPECT_DOUBLE_EQ(c.stepsizes()[0], 0.25);
  // 0.25 · 0.5^8 < 1e-3: after 16 more stale steps every step size is below the threshold → stop.
  for (int i = 0; i < 16; ++i) {
    EXPECT_TRUE(c.should_continue());
    c.record({0.9});
  }
  EXPECT_LT(c.stepsizes()[0], 1e-3);
  EXPECT_FALSE(c.should_continue());
}

TEST(FixedPointTest, DampedUpdateMixesWithThePreviousIterate) {
  // One step with stepsize 0.25 from y0 = 1 under F(y) = 5: y1 = 0.25·5 + 0.75·1 = 2.
  auto [y, stats] = solver::solve([](const Tensor& y) { return torch::full_like(y, 5.0); },
                                  torch::ones({1, 1, 1}, torch::kFloat64), opts(1, 1.0, 0.25));
  EXPECT_DOUBLE_EQ(y.item<double>(), 2.0);
}

TEST(FixedPointTest, DampedUpdateOnTheGpu) {
  // Per-sample step sizes live on the host; the update must happen on the iterate's device.
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto [y, stats] = solver::solve([](const Tensor& y) { return torch::full_like(y, 5.0); },
                                  torch::ones({2, 3, 1}, torch::dtype(torch::kFloat64).device(torch::kCUDA)),
                                  opts(1, 1.0, 0.25));
  ASSERT_TRUE(y.is_cuda());
  EXPECT_TRUE(torch::equal(y.cpu(), torch::full({2, 3, 1}, 2.0, torch::kFloat64)));
}

TEST(FixedPointTest, NaNResidualStopsTheLoop) {
  auto [y, stats] = solver::solve([](const Tensor& y) { return y * std::nan(""); }, torch::ones({1, 2, 2}, torch::kFloat64),
                                  opts(100, 1.0));
  EXPECT_EQ(stats.iterations, 1);  // best becomes NaN (torch.minimum semantics); "NaN ≥ 0.1" is false
}

TEST(FixedPointTest, ResolvedOptionsForTrainingAndEvaluation) {
  SolverConfig cfg;
  cfg.max_iter = 12;
  cfg.eval_max_iter = 1000;
  cfg.outlier_quantile = 0.25;
  const auto t = SolverOptions::training(cfg);
  EXPECT_EQ(t.max_iter, 12);
  EXPECT_DOUBLE_EQ(t.quantile, 0.75);
  EXPECT_EQ(SolverOptions::training(cfg, 5).max_iter, 5);
  const auto e = SolverOptions::evaluation(cfg);
  EXPECT_EQ(e.max_iter, 1000);
  EXPECT_DOUBLE_EQ(e.quantile, 1.0);
  cfg.max_iter = -1;  // randomised cap without an override: one iteration, as the reference
  EXPECT_EQ(SolverOptions::training(cfg).max_iter, 1);
}

TEST(FixedPointTest, RandomCapIsKeyedAndHasTheGammaMean) {
  EXPECT_EQ(solver::random_max_iter(1, 10, 0, 16), solver::random_max_iter(1, 10, 0, 16));
  double sum = 0;
  bool differ = false;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int64_t v = solver::random_max_iter(7, i, 0, 16);
    EXPECT_GE(v, 1);
    sum += static_cast<double>(v);
    differ = differ || v != solver::random_max_iter(7, i, 1, 16);
  }
  EXPECT_TRUE(differ);
  // E⌈X⌉ for X ~ Gamma(4, 2) (k = 16 ⇒ scale 2): mean 8, the ceiling adds about 0.5.
  EXPECT_NEAR(sum / n, 8.5, 0.15);
}

#ifdef FPRNN_WITH_CUDA
// The device controller against the host's FixedPointController, fed the same residuals: every decision of the
// continue test (the quantile test is decided without a sort, from counts and extremes: see
// quantile_at_least), best, last and step sizes, and the scratch zeroed. The residuals come from a small set
// around the threshold (values equal to it, +inf and NaN included) or uniform below and above it, so that
// ties, a quantile falling exactly between a value below and one above the threshold, ∞ − ∞ in the
// interpolation and NaN-poisoned samples all occur; batches from 1 sample to more than the block's threads.
TEST(FpStepCuda, ControllerDecidesAsTheHostController) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const double threshold = 0.125;  // exactly a float: residuals can equal it
  const std::vector<float> discrete = {0.0f, 0.0625f, 0.1f, 0.125f, 0.125f, 0.15f, 0.25f, 1.0f, 3.0f, inf};
  std::mt19937_64 rng(77);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  int64_t trials = 0, stops = 0, ambiguous = 0;
  for (int64_t B : {1, 2, 3, 4, 5, 7, 64, 513, 1500, 10000}) {
    for (double quantile : {0.0, 1.0 / 3.0, 0.5, 0.75, 0.9, 1.0}) {
      for (int mode = 0; mode < 3; ++mode) {  // 0: discrete set, 1: uniform in [0, 2·threshold), 2: mixed, NaN
        // Mostly short rows; every fourth trial long ones (a group of threads per sample walks them when B is
        // small; B ≤ 513 keeps the test quick), with the sample's largest value, or its NaN, anywhere in the row.
        const int64_t T = trials % 4 == 3 && B <= 513 ? 100 + 37 * (trials % 60) : 1 + trials % 5;
        ++trials;
        solver::SolverOptions host_opt;
        host_opt.max_iter = 1000;
        host_opt.quantile = quantile;
        host_opt.threshold = threshold;
        host_opt.stepsize = 1.0;
        host_opt.stepsize_decay = 0.5;
        host_opt.decay_patience = 2;
        host_opt.stepsize_thresh = 0.3;
        host_opt.eps = 1.0;  // with ymax = 0 the device's r_b = max_t diff / (0 + 1) is the residual itself
        const ops::DeviceSolverOptions dev_opt = nn::device_solver_options(host_opt);
        solver::FixedPointController host(B, host_opt);
        auto state = ops::make_device_solver_state(B, T, dev_opt, torch::kCUDA);
        for (int it = 0; it < 6; ++it) {
          std::vector<double> residual(static_cast<size_t>(B));
          Tensor diff = torch::zeros({B, T}, torch::kFloat32);
          float* dp = diff.data_ptr<float>();
          for (int64_t b = 0; b < B; ++b) {
            float r;
            const bool use_discrete = mode == 0 || (mode == 2 && unit(rng) < 0.5f);
            if (mode == 2 && unit(rng) < 0.01f)
              r = nan;
            else if (use_discrete)
              r = discrete[static_cast<size_t>(rng() % discrete.size())];
            else
              r = unit(rng) * static_cast<float>(2.0 * threshold);
            residual[static_cast<size_t>(b)] = r;
            const int64_t where = static_cast<int64_t>(rng() % static_cast<uint64_t>(T));
            for (int64_t t = 0; t < T; ++t) dp[b * T + t] = t == where ? r : (std::isfinite(r) ? r * unit(rng) : 0.0f);
          }
          state.diff.copy_(diff);
          state.counters.narrow(0, 1, 1).fill_(1);  // keep deciding after a stop
          ops::fp_controller_cuda(state, dev_opt);
          host.record(residual);
          const bool host_go = host.should_continue();
          const Tensor counters = state.counters.cpu();
          const std::string what = "B " + std::to_string(B) + " q " + std::to_string(quantile) + " mode " +
                                   std::to_string(mode) + " iteration " + std::to_string(it + 1);
          ASSERT_EQ(counters[1].item<int64_t>() == 1, host_go) << what;
          stops += host_go ? 0 : 1;
          // How often the quantile fell between a value below the threshold and one at or above it.
          {
            std::vector<double> v = host.best();
            std::sort(v.begin(), v.end(), [](double x, double y) { return std::isnan(x) ? false : std::isnan(y) || x < y; });
            const double pos = quantile * static_cast<double>(B - 1);
            const auto lo = static_cast<size_t>(std::floor(pos)), hi = static_cast<size_t>(std::ceil(pos));
            ambiguous += (lo != hi && v[lo] < threshold && v[hi] >= threshold) ? 1 : 0;
          }
          EXPECT_EQ(counters[0].item<int64_t>(), it + 1) << what;
          const auto same = [](const std::vector<double>& want, const Tensor& got) {
            const Tensor g = got.cpu().contiguous();
            const double* p = g.data_ptr<double>();
            for (size_t i = 0; i < want.size(); ++i) {
              const double x = want[i], y = p[i];
              if (!((std::isnan(x) && std::isnan(y)) || x == y)) return false;
            }
            return true;
          };
          EXPECT_TRUE(same(host.best(), state.best)) << "best, " << what;
          EXPECT_TRUE(same(host.last(), state.last)) << "last, " << what;
          EXPECT_TRUE(same(host.stepsizes(), state.stepsize)) << "step sizes, " << what;
          EXPECT_EQ(state.diff.abs().sum().item<double>(), 0.0) << "scratch not zeroed, " << what;
        }
      }
    }
  }
  // The cases the exact decision has to get right did occur.
  EXPECT_GT(stops, 20);
  EXPECT_GT(ambiguous, 20);
}
#endif

}  // namespace
}  // namespace fprnn::testing
