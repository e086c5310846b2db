// Building blocks: weight-normalised Linear, low-rank Projection, causal conv, RMSNorm, shift.
#include "testing.h"

#include "fprnn/common.h"
#include "fprnn/nn/basic.h"

namespace fprnn::testing {
namespace {

TEST(BasicTest, ShiftDelaysAlongTime) {
  const Tensor x = torch::arange(1, 7, torch::kFloat64).view({1, 3, 2});  // t0 = (1,2), t1 = (3,4), t2 = (5,6)
  const Tensor s = shift(x, 1, 1);
  EXPECT_TRUE(torch::equal(s, torch::tensor({0.0, 0.0, 1.0, 2.0, 3.0, 4.0}, torch::kFloat64).view({1, 3, 2})));
  const Tensor a = shift(x, -1, 1);
  EXPECT_TRUE(torch::equal(a, torch::tensor({3.0, 4.0, 5.0, 6.0, 0.0, 0.0}, torch::kFloat64).view({1, 3, 2})));
  EXPECT_TRUE(torch::equal(shift(x, 5, 1), torch::zeros_like(x)));
  EXPECT_TRUE(torch::equal(shift(x.narrow(1, 0, 1), 1, 1), torch::zeros({1, 1, 2}, torch::kFloat64)));  // T = 1
  const Tensor same = shift(x, 0, 1);  // a copy, not a view
  EXPECT_TRUE(torch::equal(same, x));
  EXPECT_NE(same.data_ptr(), x.data_ptr());
  EXPECT_TRUE(torch::equal(shift(x, 1, -1), torch::tensor({0.0, 1.0, 0.0, 3.0, 0.0, 5.0}, torch::kFloat64).view({1, 3, 2})));
  // Differentiable: the gradient of Σ w ⊙ shift(x) is w advanced by one step.
  const Tensor xg = x.clone().requires_grad_();
  const Tensor w = randn({1, 3, 2}, 5);
  (shift(xg, 1, 1) * w).sum().backward();
  EXPECT_TRUE(torch::equal(xg.grad(), shift(w, -1, 1)));
}

// shift copies the tensor flat and zeroes the slices that came from the neighbouring outer index: every dim,
// both directions, several outer indices, a non-contiguous input, and the gradient, against a concatenation.
TEST(BasicTest, ShiftMatchesAConcatenationEverywhere) {
  const Tensor x = randn({3, 4, 5, 2}, 7);
  for (int64_t dim = 0; dim < 4; ++dim) {
    for (int64_t n : {1, 2, -1, -3}) {
      const int64_t len = x.size(dim), k = std::min<int64_t>(std::abs(n), len);
      std::vector<int64_t> pad_shape = x.sizes().vec();
      pad_shape[dim] = k;
      const Tensor pad = torch::zeros(pad_shape, x.options());
      const Tensor want = k == len ? torch::zeros_like(x)
                          : n > 0  ? torch::cat({pad, x.narrow(dim, 0, len - k)}, dim)
                                   : torch::cat({x.narrow(dim, k, len - k), pad}, dim);
      const std::string what = "dim " + std::to_string(dim) + " n " + std::to_string(n);
      EXPECT_TRUE(torch::equal(shift(x, n, dim), want)) << what;
      const Tensor xt = x.transpose(0, 3);  // not contiguous
      const int64_t dt = dim == 0 ? 3 : dim == 3 ? 0 : dim;
      EXPECT_TRUE(torch::equal(shift(xt, n, dt), want.transpose(0, 3))) << what << " (transposed input)";
      if (k == len) continue;  // all zeros, not connected to x
      const Tensor xg = x.clone().requires_grad_();
      const Tensor w = randn(x.sizes().vec(), 8);
      (shift(xg, n, dim) * w).sum().backward();
      EXPECT_TRUE(torch::equal(xg.grad(), shift(w, -n, dim))) << what << " (gradient)";
    }
  }
}

TEST(BasicTest, WeightNormLinearEqualsItsEffectiveWeight) {
  torch::manual_seed(3);
  nn::Linear wn(5, 3, true, true);
  wn->to(torch::kFloat64);
  // g starts at the row norms, so the initial effective weight is v itself (PyTorch's default init);
  // g was computed in float32 before the cast to float64, hence float32 round-off.
  expect_close(wn->weight(), wn->weight_v, 1e-7, "initial effective weight");
  const Tensor x = randn({2, 4, 5}, 1);
  expect_close(wn->forward(x), torch::matmul(x, wn->weight().t()) + wn->bias, 1e-14, "forward");
  // load_weight sets the effective weight exactly.
  const Tensor w = randn({3, 5}, 2);
  wn->load_weight(w);
  expect_close(wn->weight(), w, 1e-15, "loaded weight");
}

TEST(BasicTest, WeightNormGradientsAgainstFiniteDifferences) {
  torch::manual_seed(4);
  nn::Linear wn(4, 3, true, true);
  wn->to(torch::kFloat64);
  const Tensor x = randn({2, 4}, 5);
  check_gradients([&] { return wn->forward(x); }, {wn->weight_g, wn->weight_v, wn->bias}, 1e-7, "weight-norm linear");
}

TEST(BasicTest, EffectiveWeightGradientInvertsTheChainRule) {
  // The gradient w.r.t. W recovered from (dg, dv) equals the gradient of the same loss taken w.r.t. W directly.
  torch::manual_seed(6);
  nn::Linear wn(4, 3, false, true);
  wn->to(torch::kFloat64);
  wn->load_weight(randn({3, 4}, 7));
  const Tensor x = randn({5, 4}, 8);
  const Tensor g = randn({5, 3}, 9);
  (wn->forward(x) * g).sum().backward();
  const Tensor direct = torch::matmul(g.t(), x);  // d/dW Σ g ⊙ (x Wᵀ)
  expect_close(wn->effective_weight_grad(), direct, 1e-13, "effective weight gradient");
}

TEST(BasicTest, LowRankProjectionIsTwoStages) {
  torch::manual_seed(1);
  nn::Projection p(6, 5, 2, true, true);
  p->to(torch::kFloat64);
  ASSERT_EQ(p->stages.size(), 2u);
  EXPECT_FALSE(p->stages[0]->bias.defined());
  EXPECT_TRUE(p->stages[1]->bias.defined());
  const Tensor x = randn({3, 6}, 2);
  const Tensor expect = torch::matmul(torch::matmul(x, p->stages[0]->weight().t()), p->stages[1]->weight().t()) +
                        p->stages[1]->bias;
  expect_close(p->forward(x), expect, 1e-14, "low-rank projection");
  nn::Projection full(6, 5, -1, false, false);
  EXPECT_EQ(full->stages.size(), 1u);
}

TEST(BasicTest, CausalConvAgainstHandComputation) {
  nn::CausalConv1d conv(2, 3);
  conv->to(torch::kFloat64);
  {
    torch::NoGradGuard g;
    conv->weight.copy_(torch::tensor({1.0, 2.0, 3.0, -1.0, 0.5, 0.0}, torch::kFloat64).view({2, 1, 3}));
    conv->bias.copy_(torch::tensor({0.5, -0.5}, torch::kFloat64));
  }
  // channel 0: x = 1, 2, 3, 4; y_t = 0.5 + 1·x_{t−2} + 2·x_{t−1} + 3·x_t
  const Tensor x = torch::stack({torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kFloat64),
                                 torch::tensor({1.0, 1.0, 1.0, 1.0}, torch::kFloat64)}, -1)
                       .unsqueeze(0);
  const Tensor y = conv->forward(x);
  const Tensor y0 = torch::tensor({0.5 + 3, 0.5 + 2 + 6, 0.5 + 1 + 4 + 9, 0.5 + 2 + 6 + 12}, torch::kFloat64);
  const Tensor y1 = torch::tensor({-0.5 + 0, -0.5 + 0.5, -0.5 - 1 + 0.5, -0.5 - 1 + 0.5}, torch::kFloat64);
  expect_close(y.select(2, 0).squeeze(0), y0, 1e-15, "channel 0");
  expect_close(y.select(2, 1).squeeze(0), y1, 1e-15, "channel 1");
  // Equals PyTorch's Conv1d(padding = K−1) truncated to the first T outputs.
  const Tensor xr = randn({2, 7, 2}, 3);
  const Tensor ref = torch::conv1d(xr.transpose(1, 2), conv->weight, conv->bias, 1, 2, 1, 2)
                         .narrow(2, 0, 7)
                         .transpose(1, 2);
  expect_close(conv->forward(xr), ref, 1e-14, "vs conv1d");
  check_gradients([&] { return conv->forward(xr); }, {conv->weight, conv->bias}, 1e-7, "causal conv params");
  Tensor xg = randn({1, 5, 2}, 4);
  check_gradients([&] { return conv->forward(xg); }, {xg}, 1e-7, "causal conv input");
}

TEST(BasicTest, RMSNormAgainstFormula) {
  nn::RMSNorm norm(4, 1e-5);
  norm->to(torch::kFloat64);
  {
    torch::NoGradGuard g;
    norm->weight.copy_(torch::tensor({1.0, 2.0, 0.5, -1.0}, torch::kFloat64));
  }
  const Tensor x = torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kFloat64).view({1, 1, 4});
  const double rms = std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-5);
  const Tensor expect = torch::tensor({1 / rms, 4 / rms, 1.5 / rms, -4 / rms}, torch::kFloat64).view({1, 1, 4});
  expect_close(norm->forward(x), expect, 1e-15, "rmsnorm");
  Tensor xr = randn({2, 3, 4}, 5);
  check_gradients([&] { return norm->forward(xr); }, {xr, norm->weight}, 1e-7, "rmsnorm");
  // bfloat16 input: computed in float32, returned in bfloat16.
  EXPECT_EQ(norm->forward(xr.to(torch::kBFloat16)).scalar_type(), torch::kBFloat16);
}

TEST(BasicTest, ActivationsAndNormalize) {
  const Tensor x = torch::tensor({-1.0, 0.0, 2.0}, torch::kFloat64);
  expect_close(nn::activation(x, "relu"), torch::tensor({0.0, 0.0, 2.0}, torch::kFloat64), 0, "relu");
  expect_close(nn::activation(x, "silu"), x * torch::sigmoid(x), 1e-15, "silu");
  EXPECT_TRUE(torch::equal(nn::activation(x, "identity"), x));
  EXPECT_THROW(nn::activation(x, "gelu"), c10::Error);
  const Tensor v = torch::tensor({3.0, 4.0}, torch::kFloat64);
  expect_close(nn::l2_normalize(v, 0, 1e-5), torch::tensor({0.6, 0.8}, torch::kFloat64), 1e-15, "normalize");
  // Below eps the norm is clamped to eps (F.normalize).
  const Tensor tiny = torch::tensor({1e-7, 0.0}, torch::kFloat64);
  expect_close(nn::l2_normalize(tiny, 0, 1e-5), tiny / 1e-5, 1e-15, "normalize below eps");
}

TEST(BasicTest, SizeErrorsNameTheModule) {
  nn::Linear lin(3, 2, false, false);
  try {
    lin->forward(torch::zeros({2, 4}));
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("Linear"), std::string::npos);
  }
  EXPECT_THROW(nn::Linear(0, 2, false, false), c10::Error);
  EXPECT_THROW(nn::Projection(3, 2, 0, false, false), c10::Error);
}

}  // namespace
}  // namespace fprnn::testing
