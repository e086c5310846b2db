// Tests for causal_conv1d (y_t = act(bias + Σ_k w_k ⊙ x_{t−K+1+k}); x (B, T, C), weight (C, K) or (C, 1, K),
// bias (C) or none; act = SiLU or identity): CPU kernels vs the float64 reference, the reference vs a
// hand-computed example, PyTorch's conv1d and finite differences, the autograd entry vs finite differences for
// x, weight and bias, double backward, non-contiguous inputs, empty tensors, determinism across thread counts,
// and argument checks.
#include "fprnn/common.h"
#include "fprnn/ops/conv1d.h"
#include "ops/conv1d/conv1d_common.h"
#include "testing.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

namespace fprnn::ops {
namespace {

using fprnn::testing::check_gradients;
using fprnn::testing::expect_close;
using fprnn::testing::numerical_grad;
using fprnn::testing::randn;

struct Shape {
  int64_t B, T, C, K;
};

std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_C" + std::to_string(s.C) + "_K" +
         std::to_string(s.K);
}

// Lets GoogleTest print a Shape parameter in failure messages.
void PrintTo(const Shape& s, std::ostream* os) {
  *os << "(B, T, C, K) = (" << s.B << ", " << s.T << ", " << s.C << ", " << s.K << ")";
}

// Inputs of one call, drawn from `seed`: x, grad (B, T, C), weight (C, 1, K) scaled like PyTorch's init
// (U(±1/√K) has standard deviation 1/√(3K)), bias (C) or undefined.
struct Args {
  torch::Tensor x, weight, bias, grad;
};

Args make_args(const Shape& s, uint64_t seed, torch::Dtype dtype, bool with_bias) {
  Args a;
  a.x = randn({s.B, s.T, s.C}, seed, dtype);
  a.weight = (randn({s.C, 1, s.K}, seed + 1) / std::sqrt(3.0 * static_cast<double>(s.K))).to(dtype);
  if (with_bias) a.bias = (0.5 * randn({s.C}, seed + 2)).to(dtype);
  a.grad = randn({s.B, s.T, s.C}, seed + 3, dtype);
  return a;
}

// Tolerance on ‖out − ref‖/‖ref‖ between a kernel in `dtype` and the float64 reference fed the same (already
// rounded) values.
double tolerance(torch::Dtype dtype) {
  switch (dtype) {
    // Same operations as the reference up to the order of a few additions (the dx taps, the dweight sums over
    // batch groups) and the same std::exp: ~1e-16, so 1e-12 catches any real difference.
    case torch::kFloat64: return 1e-12;
    // float32 accumulation (unit roundoff 6e-8) over K taps forward and over ≤ B·T = 100 terms for dweight, and
    // an exp polynomial good to 1.4 ulp: observed ~1e-7.
    case torch::kFloat32: return 1e-5;
    // bfloat16 storage (unit roundoff 2^-9 ≈ 2e-3): both sides round their final values to bfloat16, so they
    // differ only where the float32 and float64 results fall on different sides of a rounding boundary.
    default: return 5e-3;
  }
}

// ---- CPU kernels vs the reference -------------------------------------------------------------------

using KernelParam = std::tuple<Shape, bool, bool, torch::Dtype>;  // shape, silu, bias, dtype

class Conv1dTest : public ::testing::TestWithParam<KernelParam> {
 protected:
  Shape shape() const { return std::get<0>(GetParam()); }
  bool silu() const { return std::get<1>(GetParam()); }
  bool with_bias() const { return std::get<2>(GetParam()); }
  torch::Dtype dtype() const { return std::get<3>(GetParam()); }
};

TEST_P(Conv1dTest, CpuFwdMatchesRef) {
  const Args a = make_args(shape(), 1, dtype(), with_bias());
  const torch::Tensor y = causal_conv1d_fwd_cpu(a.x, a.weight, a.bias, silu());
  const torch::Tensor y_ref = causal_conv1d_fwd_ref(a.x, a.weight, a.bias, silu());
  ASSERT_EQ(y.scalar_type(), dtype());
  expect_close(y, y_ref, tolerance(dtype()), "y");
}

TEST_P(Conv1dTest, CpuBwdMatchesRef) {
  const Args a = make_args(shape(), 5, dtype(), with_bias());
  const auto [dx, dw, db] = causal_conv1d_bwd_cpu(a.grad, a.x, a.weight, a.bias, silu());
  const auto [dx_ref, dw_ref, db_ref] = causal_conv1d_bwd_ref(a.grad, a.x, a.weight, a.bias, silu());
  ASSERT_EQ(dx.scalar_type(), dtype());
  ASSERT_EQ(dw.sizes(), a.weight.sizes());
  expect_close(dx, dx_ref, tolerance(dtype()), "dx");
  expect_close(dw, dw_ref, tolerance(dtype()), "dweight");
  ASSERT_EQ(db.defined(), with_bias());
  if (with_bias()) expect_close(db, db_ref, tolerance(dtype()), "dbias");
}

// Shapes: T = 1; T < K (and T < K − 1, where some steps of the backward neither read grad nor write dx); odd
// and non-power-of-two T and C; C below, at and above a SIMD vector, with a tail; C over several channel
// blocks with a partial last one (600); B = 1; B above the 16 batch groups of the dweight sum, split unevenly
// (20); K = 1, 2, 3, 4 (compile-time kernels) and 5 (the run-time one).
const std::vector<Shape> kShapes = {{1, 1, 1, 4},  {1, 1, 19, 4},  {1, 2, 3, 4},   {2, 3, 5, 4},
                                    {3, 7, 13, 4}, {2, 33, 37, 3}, {1, 9, 600, 4}, {5, 20, 130, 2},
                                    {2, 6, 17, 1}, {2, 11, 9, 5},  {20, 5, 40, 4}};

std::string kernel_param_name(const ::testing::TestParamInfo<KernelParam>& info) {
  const auto& [shape, silu, bias, dtype] = info.param;
  return shape_name(shape) + (silu ? "_silu" : "_id") + (bias ? "_bias_" : "_nobias_") + dtype_name(dtype);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Conv1dTest,
                         ::testing::Combine(::testing::ValuesIn(kShapes), ::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(torch::kFloat64, torch::kFloat32,
                                                              torch::kBFloat16)),
                         kernel_param_name);

// ---- gradients by finite differences (float64, tiny shapes) ------------------------------------------

using GradParam = std::tuple<Shape, bool>;  // shape, silu

class Conv1dGradTest : public ::testing::TestWithParam<GradParam> {
 protected:
  Shape shape() const { return std::get<0>(GetParam()); }
  bool silu() const { return std::get<1>(GetParam()); }
};

// Central differences with step 1e-6 of a smooth function of O(1) values: truncation ~1e-12, cancellation
// ~1e-16/1e-6 = 1e-10, so 1e-7 leaves room while any wrong index or sign gives O(1).
constexpr double kFiniteDiffTol = 1e-7;

// Every gradient (x, weight, bias) of the autograd entry, with weight as (C, 1, K) and as (C, K), and without
// bias (x, weight).
TEST_P(Conv1dGradTest, AutogradMatchesFiniteDifferences) {
  const Shape s = shape();
  const bool act = silu();
  const Args a = make_args(s, 10, torch::kFloat64, true);
  torch::Tensor x = a.x.clone(), w = a.weight.clone(), b = a.bias.clone();
  check_gradients([&] { return causal_conv1d(x, w, b, act); }, {x, w, b}, kFiniteDiffTol, "causal_conv1d (C, 1, K)");
  torch::Tensor w2 = a.weight.view({s.C, s.K}).clone();
  check_gradients([&] { return causal_conv1d(x, w2, b, act); }, {x, w2, b}, kFiniteDiffTol, "causal_conv1d (C, K)");
  check_gradients([&] { return causal_conv1d(x, w, torch::Tensor(), act); }, {x, w}, kFiniteDiffTol,
                  "causal_conv1d without bias");
}

TEST_P(Conv1dGradTest, RefBwdMatchesFiniteDifferences) {
  const Shape s = shape();
  const bool act = silu();
  Args a = make_args(s, 12, torch::kFloat64, true);
  auto loss = [&] { return causal_conv1d_fwd_ref(a.x, a.weight, a.bias, act) * a.grad; };
  const auto [dx, dw, db] = causal_conv1d_bwd_ref(a.grad, a.x, a.weight, a.bias, act);
  expect_close(dx, numerical_grad(loss, a.x), kFiniteDiffTol, "dx");
  expect_close(dw, numerical_grad(loss, a.weight), kFiniteDiffTol, "dweight");
  expect_close(db, numerical_grad(loss, a.bias), kFiniteDiffTol, "dbias");
}

const std::vector<Shape> kTinyShapes = {{1, 1, 1, 4}, {2, 5, 3, 4}, {1, 6, 2, 2}, {2, 3, 7, 3}, {1, 4, 3, 1}};

std::string grad_param_name(const ::testing::TestParamInfo<GradParam>& info) {
  const auto& [shape, silu] = info.param;
  return shape_name(shape) + (silu ? "_silu" : "_id");
}

INSTANTIATE_TEST_SUITE_P(TinyShapes, Conv1dGradTest,
                         ::testing::Combine(::testing::ValuesIn(kTinyShapes), ::testing::Bool()), grad_param_name);

// ---- a hand-computed example ----------------------------------------------------------------------------

// (B, T, C, K) = (1, 3, 2, 2): y_t = b + w_0 x_{t−1} + w_1 x_t; rows are time steps. Every value is a short
// binary fraction, so all backends must reproduce it exactly in float32 and float64.
//   channel 0: x = (1, 2, 3), w = (0.5, 2), b = 1, g = (1, −1, 2)
//     y  = (1 + 2·1, 1 + 0.5·1 + 2·2, 1 + 0.5·2 + 2·3) = (3, 5.5, 8)
//     dx_s = w_1 g_s + w_0 g_{s+1} = (2 − 0.5, −2 + 1, 4) = (1.5, −1, 4)
//     dw_0 = Σ g_t x_{t−1} = −1·1 + 2·2 = 3,  dw_1 = Σ g_t x_t = 1 − 2 + 6 = 5,  db = 1 − 1 + 2 = 2
//   channel 1: x = (−1, 0.5, 4), w = (−1, 0.25), b = −0.5, g = (0.5, 0, −1)
//     y  = (−0.5 − 0.25, −0.5 + 1 + 0.125, −0.5 − 0.5 + 1) = (−0.75, 0.625, 0)
//     dx = (0.25·0.5 + (−1)·0, 0.25·0 + (−1)(−1), 0.25·(−1)) = (0.125, 1, −0.25)
//     dw_0 = 0·(−1) + (−1)·0.5 = −0.5,  dw_1 = 0.5·(−1) + 0 + (−1)·4 = −4.5,  db = −0.5
struct HandExample {
  torch::Tensor x, w, b, g, y, dx, dw, db;
};

HandExample hand_example(torch::Dtype dtype) {
  auto t = [dtype](std::vector<double> v, std::vector<int64_t> sizes) {
    return torch::tensor(v, torch::kFloat64).view(sizes).to(dtype);
  };
  HandExample e;
  e.x = t({1, -1, 2, 0.5, 3, 4}, {1, 3, 2});
  e.w = t({0.5, 2, -1, 0.25}, {2, 1, 2});
  e.b = t({1, -0.5}, {2});
  e.g = t({1, 0.5, -1, 0, 2, -1}, {1, 3, 2});
  e.y = t({3, -0.75, 5.5, 0.625, 8, 0}, {1, 3, 2});
  e.dx = t({1.5, 0.125, -1, 1, 4, -0.25}, {1, 3, 2});
  e.dw = t({3, 5, -0.5, -4.5}, {2, 1, 2});
  e.db = t({2, -0.5}, {2});
  return e;
}

void expect_exact(const torch::Tensor& out, const torch::Tensor& expected, const std::string& what) {
  ASSERT_TRUE(out.defined()) << what << ": undefined";
  ASSERT_EQ(out.sizes(), expected.sizes()) << what;
  EXPECT_EQ(max_abs_diff(out, expected), 0.0) << what << ":\n" << out << "\nexpected\n" << expected;
}

TEST(Conv1dHandExample, RefMatches) {
  const HandExample e = hand_example(torch::kFloat64);
  expect_exact(causal_conv1d_fwd_ref(e.x, e.w, e.b, false), e.y, "y");
  const auto [dx, dw, db] = causal_conv1d_bwd_ref(e.g, e.x, e.w, e.b, false);
  expect_exact(dx, e.dx, "dx");
  expect_exact(dw, e.dw, "dweight");
  expect_exact(db, e.db, "dbias");
}

TEST(Conv1dHandExample, CpuMatches) {
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    const HandExample e = hand_example(dtype);
    const std::string what = dtype_name(dtype) + " ";
    expect_exact(causal_conv1d_fwd_cpu(e.x, e.w, e.b, false), e.y, what + "y");
    const auto [dx, dw, db] = causal_conv1d_bwd_cpu(e.g, e.x, e.w, e.b, false);
    expect_exact(dx, e.dx, what + "dx");
    expect_exact(dw, e.dw, what + "dweight");
    expect_exact(db, e.db, what + "dbias");
  }
}

TEST(Conv1dHandExample, AutogradMatches) {
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    const HandExample e = hand_example(dtype);
    const std::string what = dtype_name(dtype) + " ";
    const torch::Tensor x = e.x.clone().requires_grad_(true);
    const torch::Tensor w = e.w.clone().requires_grad_(true);
    const torch::Tensor b = e.b.clone().requires_grad_(true);
    const torch::Tensor y = causal_conv1d(x, w, b, false);
    y.backward(e.g);
    expect_exact(y.detach(), e.y, what + "y");
    expect_exact(x.grad(), e.dx, what + "dx");
    expect_exact(w.grad(), e.dw, what + "dweight");
    expect_exact(b.grad(), e.db, what + "dbias");
  }
}

// With SiLU the output is z·σ(z) of the hand-computed z, and the backward is the identity backward applied
// to g ⊙ σ(z)(1 + z(1 − σ(z))) (the chain rule), each computed here independently with ATen ops.
TEST(Conv1dHandExample, SiluIsChainRuleOnTheSameExample) {
  const HandExample e = hand_example(torch::kFloat64);
  const torch::Tensor s = torch::sigmoid(e.y);
  const torch::Tensor gz = e.g * s * (1 + e.y * (1 - s));
  const auto [dx_id, dw_id, db_id] = causal_conv1d_bwd_ref(gz, e.x, e.w, e.b, false);
  for (const bool cpu : {false, true}) {
    const std::string what = cpu ? "cpu " : "ref ";
    const torch::Tensor y =
        cpu ? causal_conv1d_fwd_cpu(e.x, e.w, e.b, true) : causal_conv1d_fwd_ref(e.x, e.w, e.b, true);
    expect_close(y, e.y * s, 1e-15, what + "y");
    const auto [dx, dw, db] = cpu ? causal_conv1d_bwd_cpu(e.g, e.x, e.w, e.b, true)
                                  : causal_conv1d_bwd_ref(e.g, e.x, e.w, e.b, true);
    expect_close(dx, dx_id, 1e-15, what + "dx");
    expect_close(dw, dw_id, 1e-15, what + "dweight");
    expect_close(db, db_id, 1e-15, what + "dbias");
  }
}

// ---- PyTorch's conv1d as the outside truth ----------------------------------------------------------

// y = Conv1d(C, C, K, groups = C, padding = K − 1) on x transposed to (B, C, T), first T outputs, then SiLU.
torch::Tensor torch_causal_conv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, bool silu) {
  const int64_t T = x.size(1), C = x.size(2), K = w.size(-1);
  const torch::Tensor y =
      torch::conv1d(x.transpose(1, 2), w.view({C, 1, K}), b, 1, K - 1, 1, C).narrow(2, 0, T).transpose(1, 2);
  return silu ? torch::silu(y) : y;
}

TEST(Conv1dEntry, MatchesTorchConv1dAndItsGradients) {
  const Shape s{3, 10, 7, 4};
  for (const bool silu : {false, true}) {
    const std::string what = silu ? "silu " : "identity ";
    const Args a = make_args(s, 30, torch::kFloat64, true);
    const torch::Tensor x = a.x.clone().requires_grad_(true), w = a.weight.clone().requires_grad_(true),
                        b = a.bias.clone().requires_grad_(true);
    const torch::Tensor xt = a.x.clone().requires_grad_(true), wt = a.weight.clone().requires_grad_(true),
                        bt = a.bias.clone().requires_grad_(true);
    const torch::Tensor y = causal_conv1d(x, w, b, silu);
    const torch::Tensor yt = torch_causal_conv(xt, wt, bt, silu);
    expect_close(y, yt, 1e-13, what + "y");
    y.backward(a.grad);
    yt.backward(a.grad);
    expect_close(x.grad(), xt.grad(), 1e-13, what + "dx");
    expect_close(w.grad(), wt.grad(), 1e-13, what + "dweight");
    expect_close(b.grad(), bt.grad(), 1e-13, what + "dbias");
  }
}

// Second derivatives (create_graph): the entry's backward switches to ATen ops, which must agree with
// autograd through PyTorch's conv1d.
TEST(Conv1dEntry, DoubleBackwardMatchesTorchConv1d) {
  const Shape s{2, 6, 5, 3};
  for (const bool silu : {false, true}) {
    const std::string what = silu ? "silu " : "identity ";
    auto second = [&](bool ours) {
      const Args a = make_args(s, 40, torch::kFloat64, true);
      const torch::Tensor x = a.x.requires_grad_(true), w = a.weight.requires_grad_(true),
                          b = a.bias.requires_grad_(true);
      const torch::Tensor y = ours ? causal_conv1d(x, w, b, silu) : torch_causal_conv(x, w, b, silu);
      const auto first = torch::autograd::grad({y}, {x, w, b}, {a.grad}, /*retain_graph=*/true,
                                               /*create_graph=*/true);
      torch::Tensor l2 = torch::zeros({}, torch::kFloat64);
      for (size_t i = 0; i < first.size(); ++i) l2 = l2 + (first[i] * randn(first[i].sizes(), 50 + i)).sum();
      auto d2 = torch::autograd::grad({l2}, {x, w, b}, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                      /*allow_unused=*/true);
      const std::vector<torch::Tensor> inputs = {x, w, b};
      for (size_t i = 0; i < d2.size(); ++i) {
        if (!d2[i].defined()) d2[i] = torch::zeros_like(inputs[i]);
      }
      return d2;
    };
    const auto d2 = second(true);
    const auto d2_torch = second(false);
    expect_close(d2[0], d2_torch[0], 1e-12, what + "d²/dx");
    expect_close(d2[1], d2_torch[1], 1e-12, what + "d²/dweight");
    if (silu) expect_close(d2[2], d2_torch[2], 1e-12, what + "d²/dbias");  // zero without SiLU
  }
}

// ---- non-contiguous inputs, empty tensors ---------------------------------------------------------------

TEST(Conv1dEntry, NonContiguousInputsMatchContiguous) {
  const Shape s{2, 11, 13, 4};
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (const bool silu : {false, true}) {
      const std::string what = dtype_name(dtype) + (silu ? " silu " : " identity ");
      // x: a transposed view of (B, C, T); weight: a transposed (K, C); bias: every other element of (2C).
      const torch::Tensor x = randn({s.B, s.C, s.T}, 60, dtype).transpose(1, 2).requires_grad_(true);
      const torch::Tensor w = (0.5 * randn({s.K, s.C}, 61)).to(dtype).t().requires_grad_(true);
      const torch::Tensor b = randn({2 * s.C}, 62, dtype).slice(0, 0, 2 * s.C, 2).requires_grad_(true);
      ASSERT_FALSE(x.is_contiguous());
      ASSERT_FALSE(w.is_contiguous());
      ASSERT_FALSE(b.is_contiguous());
      // The upstream gradient is a transposed view too, so backward receives a non-contiguous grad.
      const torch::Tensor g = randn({s.B, s.C, s.T}, 63, dtype).transpose(1, 2);

      const torch::Tensor y = causal_conv1d(x, w, b, silu);
      y.backward(g);
      const torch::Tensor xc = x.detach().contiguous(), wc = w.detach().contiguous(), bc = b.detach().contiguous();
      EXPECT_TRUE(torch::equal(y.detach(), causal_conv1d_fwd_cpu(xc, wc, bc, silu))) << what << "y differs";
      const auto [dx, dw, db] = causal_conv1d_bwd_cpu(g.contiguous(), xc, wc, bc, silu);
      EXPECT_TRUE(torch::equal(x.grad(), dx)) << what << "dx differs";
      EXPECT_TRUE(torch::equal(w.grad(), dw)) << what << "dweight differs";
      EXPECT_TRUE(torch::equal(b.grad(), db)) << what << "dbias differs";

      expect_close(y.detach(), causal_conv1d_fwd_ref(x.detach(), w.detach(), b.detach(), silu), tolerance(dtype),
                   what + "y vs ref");
      const auto [dx_ref, dw_ref, db_ref] = causal_conv1d_bwd_ref(g, x.detach(), w.detach(), b.detach(), silu);
      expect_close(x.grad(), dx_ref, tolerance(dtype), what + "dx vs ref");
      expect_close(w.grad(), dw_ref, tolerance(dtype), what + "dweight vs ref");
      expect_close(b.grad(), db_ref, tolerance(dtype), what + "dbias vs ref");
    }
  }
}

TEST(Conv1dEntry, EmptyTensors) {
  for (const auto& sizes : {std::vector<int64_t>{0, 4, 3}, {2, 0, 3}, {2, 4, 0}}) {
    const int64_t C = sizes[2];
    const torch::Tensor x = torch::zeros(sizes).requires_grad_(true);
    const torch::Tensor w = torch::ones({C, 1, 4}).requires_grad_(true);
    const torch::Tensor b = torch::ones({C}).requires_grad_(true);
    const torch::Tensor y = causal_conv1d(x, w, b, true);
    EXPECT_EQ(y.sizes(), x.sizes());
    y.sum().backward();
    EXPECT_EQ(x.grad().sizes(), x.sizes());
    EXPECT_EQ(w.grad().sizes(), w.sizes());
    EXPECT_EQ(b.grad().sizes(), b.sizes());
    EXPECT_EQ(w.grad().abs().sum().item<double>(), 0.0);
  }
}

// ---- determinism ---------------------------------------------------------------------------------------

// The dweight/dbias sums run over a fixed partition of B in a fixed order, so one thread and several give
// bitwise the same results, and so do two runs with several threads. Big enough for many tasks per thread.
TEST(Conv1dEntry, DeterministicAcrossThreadCounts) {
  const Shape s{64, 33, 300, 4};
  const Args a = make_args(s, 70, torch::kFloat32, true);
  const int saved = at::get_num_threads();
  auto run = [&](int threads) {
    at::set_num_threads(threads);
    const torch::Tensor y = causal_conv1d_fwd_cpu(a.x, a.weight, a.bias, true);
    const auto [dx, dw, db] = causal_conv1d_bwd_cpu(a.grad, a.x, a.weight, a.bias, true);
    return std::vector<torch::Tensor>{y, dx, dw, db};
  };
  const int many = std::max(4, saved);
  const auto one = run(1);
  const auto first = run(many);
  const auto second = run(many);
  at::set_num_threads(saved);
  const std::vector<std::string> names = {"y", "dx", "dweight", "dbias"};
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_TRUE(torch::equal(first[i], second[i]))
        << names[i] << " differs between two runs on " << many << " threads";
    EXPECT_TRUE(torch::equal(one[i], first[i])) << names[i] << " differs between 1 and " << many << " threads";
  }
}

// The kernels' loops exist twice, for the build's baseline ISA and (x86-64) for AVX2, picked at run time; both
// do the same per-element operations, so they must agree bitwise. (Where the CPU has no AVX2 both runs take
// the baseline copy and the test holds trivially.)
TEST(Conv1dEntry, BaselineAndAvx2LoopsAgreeBitwise) {
  for (const auto dtype : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
    for (const Shape& s : {Shape{3, 9, 37, 4}, Shape{2, 5, 300, 3}, Shape{17, 4, 21, 5}}) {
      for (const bool silu : {false, true}) {
        const std::string what = dtype_name(dtype) + " " + shape_name(s) + (silu ? " silu " : " identity ");
        const Args a = make_args(s, 90, dtype, true);
        auto run = [&](bool baseline) {
          detail::conv1d_force_baseline_isa(baseline);
          const torch::Tensor y = causal_conv1d_fwd_cpu(a.x, a.weight, a.bias, silu);
          const auto [dx, dw, db] = causal_conv1d_bwd_cpu(a.grad, a.x, a.weight, a.bias, silu);
          detail::conv1d_force_baseline_isa(false);
          return std::vector<torch::Tensor>{y, dx, dw, db};
        };
        const auto fast = run(false);
        const auto base = run(true);
        const std::vector<std::string> names = {"y", "dx", "dweight", "dbias"};
        for (size_t i = 0; i < names.size(); ++i) {
          EXPECT_TRUE(torch::equal(fast[i], base[i])) << what << names[i] << " differs between the ISA copies";
        }
      }
    }
  }
}

// ---- argument checks --------------------------------------------------------------------------------

// Expects fn() to throw a c10::Error whose message contains every string of `needles`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& needles, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": did not throw";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& needle : needles) EXPECT_NE(msg.find(needle), std::string::npos) << what << ": " << msg;
  }
}

TEST(Conv1dEntry, BadInputsThrow) {
  const torch::Tensor x = torch::ones({2, 3, 4});
  const torch::Tensor w = torch::ones({4, 1, 3});
  const torch::Tensor b = torch::ones({4});
  const std::string op = "causal_conv1d";
  expect_error([&] { causal_conv1d(torch::ones({3, 4}), w, b, false); }, {op, "[3, 4]"}, "x rank 2");
  expect_error([&] { causal_conv1d(torch::ones({1, 2, 3, 4}), w, b, false); }, {op, "[1, 2, 3, 4]"}, "x rank 4");
  expect_error([&] { causal_conv1d(x, torch::ones({5, 1, 3}), b, false); }, {op, "[5, 1, 3]"}, "weight channels");
  expect_error([&] { causal_conv1d(x, torch::ones({4, 2, 3}), b, false); }, {op, "[4, 2, 3]"}, "weight (C, 2, K)");
  expect_error([&] { causal_conv1d(x, torch::ones({4}), b, false); }, {op, "[4]"}, "weight rank 1");
  expect_error([&] { causal_conv1d(x, torch::ones({4, 0}), b, false); }, {op, "at least 1"}, "K = 0");
  expect_error([&] { causal_conv1d(x, w, torch::ones({5}), false); }, {op, "bias", "[5]"}, "bias size");
  expect_error([&] { causal_conv1d(x, w, torch::ones({4, 1}), false); }, {op, "bias", "[4, 1]"}, "bias rank 2");
  expect_error([&] { causal_conv1d(x, w.to(torch::kFloat64), b, false); }, {op, "weight", "Double"},
               "weight dtype");
  expect_error([&] { causal_conv1d(x, w, b.to(torch::kBFloat16), false); }, {op, "bias", "BFloat16"}, "bias dtype");
  expect_error([&] { causal_conv1d(x.to(torch::kLong), w.to(torch::kLong), b.to(torch::kLong), false); },
               {op, "Long"}, "integer dtype");
  expect_error([&] { causal_conv1d(x.to(torch::kHalf), w.to(torch::kHalf), b.to(torch::kHalf), false); },
               {op, "Half"}, "float16");
  expect_error([&] { causal_conv1d(torch::Tensor(), w, b, false); }, {op, "x is undefined"}, "undefined x");
  expect_error([&] { causal_conv1d(x, torch::Tensor(), b, false); }, {op, "weight is undefined"}, "undefined weight");
}

TEST(Conv1dEntry, KernelsRejectWhatTheyDoNotSupport) {
  const torch::Tensor x = torch::ones({2, 3, 4});
  const torch::Tensor w = torch::ones({4, 3});
  const torch::Tensor strided = torch::ones({2, 4, 3}).transpose(1, 2);
  expect_error([&] { causal_conv1d_fwd_cpu(strided, w, torch::Tensor(), false); },
               {"causal_conv1d_fwd_cpu", "x", "contiguous"}, "fwd non-contiguous x");
  expect_error([&] { causal_conv1d_fwd_cpu(x, torch::ones({3, 4}).t(), torch::Tensor(), false); },
               {"causal_conv1d_fwd_cpu", "weight", "contiguous"}, "fwd non-contiguous weight");
  expect_error([&] { causal_conv1d_bwd_cpu(strided, x, w, torch::Tensor(), false); },
               {"causal_conv1d_bwd_cpu", "grad", "contiguous"}, "bwd non-contiguous grad");
  expect_error([&] { causal_conv1d_bwd_cpu(torch::ones({2, 3, 5}), x, w, torch::Tensor(), false); },
               {"causal_conv1d_bwd_cpu", "[2, 3, 5]"}, "bwd grad shape");
  expect_error([&] { causal_conv1d_bwd_ref(torch::ones({2, 2, 4}), x, w, torch::Tensor(), false); },
               {"causal_conv1d_bwd_ref", "[2, 2, 4]"}, "ref grad shape");
}

// causal_conv1d_multi off CUDA is n calls of causal_conv1d: the same outputs and gradients, (n, C, K) and
// (n, C, 1, K) weights alike, with and without bias; finite differences through the op in float64.
TEST(Conv1dMulti, MatchesSeparateConvolutionsOnTheCpu) {
  for (const bool with_bias : {false, true}) {
    const torch::Tensor x = randn({2, 7, 6}, 90), w = 0.5 * randn({3, 6, 1, 4}, 91), g = randn({3, 2, 7, 6}, 92);
    const torch::Tensor b = with_bias ? randn({3, 6}, 93) : torch::Tensor();
    torch::Tensor xm = x.clone().requires_grad_(true), wm = w.clone().requires_grad_(true);
    torch::Tensor bm = with_bias ? b.clone().requires_grad_(true) : torch::Tensor();
    const auto ys = causal_conv1d_multi(xm, wm, bm, true);
    ASSERT_EQ(ys.size(), 3u);
    (torch::stack(ys) * g).sum().backward();
    torch::Tensor xs = x.clone().requires_grad_(true);
    torch::Tensor loss = torch::zeros({}, torch::kFloat64);
    std::vector<torch::Tensor> ws, bs;
    for (int64_t j = 0; j < 3; ++j) {
      ws.push_back(w[j].clone().requires_grad_(true));
      if (with_bias) bs.push_back(b[j].clone().requires_grad_(true));
      const torch::Tensor y = causal_conv1d(xs, ws[j], with_bias ? bs[j] : torch::Tensor(), true);
      expect_close(ys[j], y, 1e-15, "multi y " + std::to_string(j));
      loss = loss + (y * g[j]).sum();
    }
    loss.backward();
    expect_close(xm.grad(), xs.grad(), 1e-15, "multi dx");
    for (int64_t j = 0; j < 3; ++j) {
      expect_close(wm.grad()[j], ws[j].grad(), 1e-15, "multi dw " + std::to_string(j));
      if (with_bias) expect_close(bm.grad()[j], bs[j].grad(), 1e-15, "multi db " + std::to_string(j));
    }
    torch::Tensor xf = x.clone(), wf = w.clone(), bf = with_bias ? b.clone() : torch::Tensor();
    const auto fn = [&] { return torch::stack(causal_conv1d_multi(xf, wf, bf, true)); };
    check_gradients(fn, with_bias ? std::vector<torch::Tensor>{xf, wf, bf} : std::vector<torch::Tensor>{xf, wf}, 1e-7,
                    "multi fd");
  }
  // (n, C, K) weights give the same as (n, C, 1, K).
  const torch::Tensor x = randn({1, 5, 3}, 94), w = randn({2, 3, 2}, 95);
  const auto a = causal_conv1d_multi(x, w, torch::Tensor(), false);
  const auto c = causal_conv1d_multi(x, w.unsqueeze(2), torch::Tensor(), false);
  for (int j = 0; j < 2; ++j) expect_close(a[j], c[j], 0.0, "multi weight layouts");
}

TEST(Conv1dMulti, BadInputsThrow) {
  const torch::Tensor x = torch::ones({2, 3, 4});
  const std::string op = "causal_conv1d_multi";
  expect_error([&] { causal_conv1d_multi(x, torch::ones({4, 3}), torch::Tensor(), false); }, {op, "(n, C, K)", "[4, 3]"},
               "weight rank 2");
  expect_error([&] { causal_conv1d_multi(x, torch::ones({0, 4, 3}), torch::Tensor(), false); }, {op, "n ≥ 1"},
               "no convolutions");
  expect_error([&] { causal_conv1d_multi(x, torch::ones({2, 4, 2, 3}), torch::Tensor(), false); },
               {op, "[2, 4, 2, 3]"}, "weight (n, C, 2, K)");
  expect_error([&] { causal_conv1d_multi(x, torch::ones({2, 5, 3}), torch::Tensor(), false); }, {op, "[5, 3]"},
               "weight channels");
  expect_error([&] { causal_conv1d_multi(x, torch::ones({2, 4, 3}), torch::ones({3, 4}), false); }, {op, "bias", "[3, 4]"},
               "bias rows");
  expect_error([&] { causal_conv1d_multi(x, torch::ones({2, 4, 3}), torch::ones({2, 5}), false); }, {op, "bias", "[5]"},
               "bias channels");
}

// Tensors on a GPU take the ATen-ops path of the entry; it must agree with the CPU kernels.
TEST(Conv1dEntry, CudaInputsMatchCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Args a = make_args({2, 9, 33, 4}, 80, torch::kFloat32, true);
  for (const bool silu : {false, true}) {
    const torch::Tensor y = causal_conv1d(a.x.cuda(), a.weight.cuda(), a.bias.cuda(), silu);
    expect_close(y.cpu(), causal_conv1d_fwd_cpu(a.x, a.weight, a.bias, silu), tolerance(torch::kFloat32),
                 silu ? "silu y" : "identity y");
  }
}

// causal_conv1d_pair(x1, x2) is the convolution of cat({x1, x2}, -1): on the CPU by construction (checked with
// float64 gradients against finite differences); on a GPU its kernels against the float64 reference of the
// concatenation, forward and backward, in float64, float32 and bfloat16, with C1 a multiple of the block's 32
// channels and not (channel blocks straddling x1 and x2), K = 3, 4 and 7, with and without bias and SiLU, and
// the autograd entry's gradients split back into x1's and x2's.
// The CUDA kernels' time split: every chunk starts inside [0, T) (a chunk past the end read its look-back rows
// beyond the tensor), the chunks cover T, and the bounds hold. The first case is the LM-like shape with two
// channels per thread on an H200, where the count was 88 chunks of 24 steps, the last one starting at 2088.
TEST(Conv1dChunks, EveryChunkStartsInsideTheSequence) {
  const detail::Conv1dChunks lm = detail::conv1d_cuda_chunks(8, 2048, 1536, 2, 132, 2048, 65535);
  EXPECT_LT((lm.count - 1) * lm.length, 2048);
  EXPECT_GE(lm.count * lm.length, 2048);
  for (const int64_t B : {1, 3, 8, 512, 700})
    for (const int64_t T : {1, 5, 16, 17, 37, 300, 700, 2048, 4099})
      for (const int64_t C : {5, 40, 70, 1024, 1536})
        for (const int64_t V : {1, 2})
          for (const int64_t sms : {1, 132})
            for (const int64_t max_count : {int64_t{1}, int64_t{7}, int64_t{65535}}) {
              SCOPED_TRACE(::testing::Message() << "B " << B << " T " << T << " C " << C << " V " << V << " sms "
                                                << sms << " max " << max_count);
              const detail::Conv1dChunks ch = detail::conv1d_cuda_chunks(B, T, C, V, sms, 2048, max_count);
              ASSERT_GE(ch.count, 1);
              ASSERT_GE(ch.length, 1);
              EXPECT_LT((ch.count - 1) * ch.length, T);
              EXPECT_GE(ch.count * ch.length, T);
              EXPECT_LE(ch.count, max_count);
              if (ch.count > 1) {
                EXPECT_GE(ch.length, 16);
              }
            }
  EXPECT_EQ(detail::conv1d_cuda_chunks(2, 0, 8, 1, 132, 2048, 65535).count, 1);
}

TEST(Conv1dPair, IsTheConvolutionOfTheConcatenation) {
  const Args a = make_args({2, 7, 10, 4}, 130, torch::kFloat64, true);
  const torch::Tensor x1 = a.x.narrow(2, 0, 6).contiguous(), x2 = a.x.narrow(2, 6, 4).contiguous();
  expect_close(causal_conv1d_pair(x1, x2, a.weight, a.bias, true), causal_conv1d(a.x, a.weight, a.bias, true), 0.0,
               "pair on the CPU");
  fprnn::testing::check_gradients([&] { return causal_conv1d_pair(x1, x2, a.weight, a.bias, true); },
                                  {x1, x2, a.weight, a.bias}, 1e-7, "pair gradients");
  EXPECT_THROW(causal_conv1d_pair(x1, x2.narrow(1, 0, 5), a.weight, a.bias, true), c10::Error);
}

TEST(Conv1dPair, CudaKernelsMatchTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t B, T, C1, C2, K;
  };
  for (const auto dtype : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
    for (const Case& c : {Case{3, 17, 64, 64, 4}, Case{2, 40, 40, 24, 3}, Case{9, 33, 5, 70, 7}, Case{9, 300, 32, 96, 3}}) {
      for (const bool with_bias : {false, true}) {
        for (const bool silu : {false, true}) {
          const std::string what = std::string(c10::toString(dtype)) + " C1 = " + std::to_string(c.C1) +
                                   " C2 = " + std::to_string(c.C2) + " K = " + std::to_string(c.K) +
                                   (with_bias ? " bias" : "") + (silu ? " silu" : "");
          const Args a = make_args({c.B, c.T, c.C1 + c.C2, c.K}, 140, dtype, with_bias);
          const torch::Tensor x1 = a.x.narrow(2, 0, c.C1).contiguous(), x2 = a.x.narrow(2, c.C1, c.C2).contiguous();
          const torch::Tensor b = with_bias ? a.bias.cuda() : torch::Tensor();
          const torch::Tensor y = causal_conv1d_pair_fwd_cuda(x1.cuda(), x2.cuda(), a.weight.cuda(), b, silu);
          const double tol = tolerance(dtype);
          expect_close(y.cpu().to(torch::kFloat64), causal_conv1d_fwd_ref(a.x, a.weight, a.bias, silu).to(torch::kFloat64),
                       tol, what + ": y");
          auto [dx1, dx2, dw, db] = causal_conv1d_pair_bwd_cuda(a.grad.cuda(), x1.cuda(), x2.cuda(), a.weight.cuda(), b, silu);
          auto [rdx, rdw, rdb] = causal_conv1d_bwd_ref(a.grad, a.x, a.weight, a.bias, silu);
          ASSERT_TRUE(dx1.is_contiguous() && dx2.is_contiguous()) << what;
          expect_close(dx1.cpu().to(torch::kFloat64), rdx.narrow(2, 0, c.C1).to(torch::kFloat64), tol, what + ": dx1");
          expect_close(dx2.cpu().to(torch::kFloat64), rdx.narrow(2, c.C1, c.C2).to(torch::kFloat64), tol, what + ": dx2");
          ASSERT_EQ(dw.sizes(), a.weight.sizes()) << what;
          expect_close(dw.cpu().to(torch::kFloat64), rdw.to(torch::kFloat64), dtype == torch::kBFloat16 ? 2e-2 : tol,
                       what + ": dweight");
          if (with_bias)
            expect_close(db.cpu().to(torch::kFloat64), rdb.to(torch::kFloat64), dtype == torch::kBFloat16 ? 2e-2 : tol,
                         what + ": dbias");
        }
      }
    }
  }
  // The entry through autograd in float64 against finite differences, its gradients split back.
  const Args a = make_args({2, 9, 40, 4}, 150, torch::kFloat64, true);
  const torch::Tensor x1 = a.x.narrow(2, 0, 32).contiguous(), x2 = a.x.narrow(2, 32, 8).contiguous();
  fprnn::testing::check_gradients(
      [&] { return causal_conv1d_pair(x1.cuda(), x2.cuda(), a.weight.cuda(), a.bias.cuda(), true).cpu(); },
      {x1, x2, a.weight, a.bias}, 1e-7, "pair gradients on CUDA");
}

}  // namespace
}  // namespace fprnn::ops
