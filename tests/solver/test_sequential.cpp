// The dense oracle: the fixed point of F (Picard iteration to convergence) equals the per-token exact
// solve of (Λ_t + (1 − Λ_t) Q_t) h_t = Λ_t h_{t−1} + (1 − Λ_t) Q_t (b_t ⊙ x_t), in every mixer mode.
#include "../nn/layer_testing.h"

#include "fprnn/common.h"
#include "fprnn/solver/sequential.h"

namespace fprnn::testing {
namespace {

class SequentialTest : public ::testing::TestWithParam<LayerCase> {};

TEST_P(SequentialTest, FixedPointEqualsDenseOracle) {
  auto layer = make_layer(GetParam());
  layer->eval();
  torch::NoGradGuard g;
  const Tensor u = randn({3, 11, 4}, 21);
  const auto in = layer->prepare(u);
  const Tensor h_oracle = solver::solve_sequential(*layer, in);
  const Tensor h_picard = layer->solve_with(in, exact_options());
  // The Picard iterate must itself be converged for the comparison to mean anything.
  nn::FastStep F(*layer, in);
  ASSERT_LT(rms_ratio(F(h_picard), h_picard), 1e-12) << "Picard iteration did not converge";
  expect_close(h_picard, h_oracle, 1e-10, GetParam().name);
}

// Every mode whose Picard iteration converges from zero. The non-selective mixer's Q is orthogonal, so
// I − Q has norm up to 2 and plain iteration need not converge (spec §4.7); it is covered below by the
// equation check instead.
std::vector<LayerCase> contractive_cases() {
  std::vector<LayerCase> out;
  for (const auto& c : layer_cases())
    if (c.mixer != "nonselective") out.push_back(c);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Modes, SequentialTest, ::testing::ValuesIn(contractive_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& i) { return i.param.name; });

TEST(SequentialSolverTest, OracleSatisfiesTheFixedPointEquationInEveryMode) {
  // The oracle's answer is a fixed point of the plain (differentiable) map, for every mixer, including
  // the non-selective one where Picard iteration does not converge.
  for (const auto& c : layer_cases()) {
    auto layer = make_layer(c);
    torch::NoGradGuard g;
    const auto in = layer->prepare(randn({2, 6, 4}, 22));
    const Tensor h = solver::solve_sequential(*layer, in);
    expect_close(layer->step(in, h), h, 1e-12, c.name + ": F(h_oracle) = h_oracle");
  }
}

TEST(SequentialSolverTest, EvalMethodSequentialMatchesPicard) {
  auto layer = make_layer(LayerCase{"h"});
  layer->eval();
  torch::NoGradGuard g;
  const Tensor u = randn({2, 9, 4}, 23);
  layer->solver_cfg.eval_method = "sequential";
  const Tensor y_seq = layer->forward(u);
  layer->solver_cfg.eval_method = "picard";
  layer->solver_cfg.threshold = 1e-13;
  const Tensor y_pic = layer->forward(u);
  expect_close(y_seq, y_pic, 1e-9, "sequential vs picard outputs");
}

}  // namespace
}  // namespace fprnn::testing
