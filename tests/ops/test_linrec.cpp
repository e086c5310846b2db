// Tests for linrec (y_t = c_t·y_{t∓1} + u_t, inputs/coeffs (B, T, D), scan along T): CPU kernels vs the
// float64 reference, the reference vs a hand-computed example and finite differences, the autograd entry vs
// finite differences, non-contiguous inputs, and argument checks.
#include "fprnn/common.h"
#include "fprnn/ops/linrec.h"
#include "testing.h"

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
  int64_t B, T, D;
};

std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_D" + std::to_string(s.D);
}

// Lets GoogleTest print a Shape parameter in failure messages.
void PrintTo(const Shape& s, std::ostream* os) { *os << "(B, T, D) = (" << s.B << ", " << s.T << ", " << s.D << ")"; }

// Coefficients in the range FPRNN uses (λ = sigmoid(·) in (0, 1), often near 1) with about a quarter of
// them negated, so that sign changes along T are exercised too. |c| < 1 keeps the scan bounded.
torch::Tensor make_coeffs(const Shape& s, uint64_t seed, torch::Dtype dtype) {
  const torch::Tensor lambda = torch::sigmoid(randn({s.B, s.T, s.D}, seed) + 1.0);
  const torch::Tensor sign = torch::where(randn({s.B, s.T, s.D}, seed + 1) < -0.7, -1.0, 1.0);
  return (lambda * sign).to(dtype);
}

// Tolerance on ‖out − ref‖/‖ref‖ between a kernel in `dtype` and the float64 reference fed the same
// (already rounded) values.
double tolerance(torch::Dtype dtype) {
  switch (dtype) {
    // Same operations in the same order as the reference; at most FMA contraction changes the last bit, and
    // with |c| < 1 such errors do not grow along T: ~1e-16, so 1e-12 catches any real difference.
    case torch::kFloat64: return 1e-12;
    // float32 accumulation: unit roundoff 6e-8 per step, not amplified since |c| < 1; observed ~1e-7.
    case torch::kFloat32: return 1e-5;
    // bfloat16 storage (unit roundoff 2^-9 ≈ 2e-3): both sides round their final values to bfloat16, so they
    // differ only where float32 and float64 accumulation fall on different sides of a rounding boundary.
    default: return 5e-3;
  }
}

// ---- CPU kernels vs the reference -------------------------------------------------------------------

using KernelParam = std::tuple<Shape, bool, torch::Dtype>;  // shape, reverse, dtype

class LinrecTest : public ::testing::TestWithParam<KernelParam> {
 protected:
  Shape shape() const { return std::get<0>(GetParam()); }
  bool reverse() const { return std::get<1>(GetParam()); }
  torch::Dtype dtype() const { return std::get<2>(GetParam()); }
  torch::Tensor inputs(uint64_t seed) const {
    const Shape s = shape();
    return randn({s.B, s.T, s.D}, seed, dtype());
  }
};

TEST_P(LinrecTest, CpuFwdMatchesRef) {
  const torch::Tensor u = inputs(1);
  const torch::Tensor c = make_coeffs(shape(), 2, dtype());
  const torch::Tensor y = linrec_fwd_cpu(u, c, reverse());
  const torch::Tensor y_ref = linrec_fwd_ref(u, c, reverse());
  ASSERT_EQ(y.scalar_type(), dtype());
  expect_close(y, y_ref, tolerance(dtype()), "outputs");
}

TEST_P(LinrecTest, CpuBwdMatchesRef) {
  const torch::Tensor u = inputs(3);
  const torch::Tensor c = make_coeffs(shape(), 4, dtype());
  const torch::Tensor g = inputs(5);
  const torch::Tensor y = linrec_fwd_ref(u, c, reverse());
  const auto [du, dc] = linrec_bwd_cpu(g, c, y, reverse());
  const auto [du_ref, dc_ref] = linrec_bwd_ref(g, c, y, reverse());
  ASSERT_EQ(du.scalar_type(), dtype());
  ASSERT_EQ(dc.scalar_type(), dtype());
  expect_close(du, du_ref, tolerance(dtype()), "d_inputs");
  expect_close(dc, dc_ref, tolerance(dtype()), "d_coeffs");
}

// Shapes: T = 1; odd and non-power-of-two T and D; D below, at and above one SIMD vector, with a scalar
// tail; D over several column blocks (600, 1030); B = 1.
const std::vector<Shape> kShapes = {{1, 1, 1},  {1, 1, 19},  {2, 7, 5},   {3, 33, 17},
                                    {2, 64, 130}, {1, 9, 600}, {3, 20, 1030}};

std::string kernel_param_name(const ::testing::TestParamInfo<KernelParam>& info) {
  const auto& [shape, reverse, dtype] = info.param;
  return shape_name(shape) + (reverse ? "_rev_" : "_fwd_") + dtype_name(dtype);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinrecTest,
                         ::testing::Combine(::testing::ValuesIn(kShapes), ::testing::Bool(),
                                            ::testing::Values(torch::kFloat64, torch::kFloat32,
                                                              torch::kBFloat16)),
                         kernel_param_name);

// ---- gradients by finite differences (float64, tiny shapes) ------------------------------------------

using GradParam = std::tuple<Shape, bool>;  // shape, reverse

class LinrecGradTest : public ::testing::TestWithParam<GradParam> {
 protected:
  Shape shape() const { return std::get<0>(GetParam()); }
  bool reverse() const { return std::get<1>(GetParam()); }
};

// Central differences with step 1e-6 on a polynomial of low degree: truncation ~1e-12, cancellation
// ~1e-16/1e-6 = 1e-10, so 1e-7 leaves room while any wrong index or sign gives O(1).
constexpr double kFiniteDiffTol = 1e-7;

TEST_P(LinrecGradTest, AutogradMatchesFiniteDifferences) {
  const Shape s = shape();
  const torch::Tensor u = randn({s.B, s.T, s.D}, 10);
  const torch::Tensor c = make_coeffs(s, 11, torch::kFloat64);
  const bool rev = reverse();
  check_gradients([&] { return linrec(u, c, rev); }, {u, c}, kFiniteDiffTol, "linrec");
}

TEST_P(LinrecGradTest, RefBwdMatchesFiniteDifferences) {
  const Shape s = shape();
  torch::Tensor u = randn({s.B, s.T, s.D}, 12);
  torch::Tensor c = make_coeffs(s, 13, torch::kFloat64);
  const torch::Tensor w = randn({s.B, s.T, s.D}, 14);
  const bool rev = reverse();
  auto loss = [&] { return linrec_fwd_ref(u, c, rev) * w; };
  const auto [du, dc] = linrec_bwd_ref(w, c, linrec_fwd_ref(u, c, rev), rev);
  expect_close(du, numerical_grad(loss, u), kFiniteDiffTol, "d_inputs");
  expect_close(dc, numerical_grad(loss, c), kFiniteDiffTol, "d_coeffs");
}

const std::vector<Shape> kTinyShapes = {{1, 1, 1}, {2, 5, 3}, {1, 6, 2}, {1, 3, 9}};

std::string grad_param_name(const ::testing::TestParamInfo<GradParam>& info) {
  const auto& [shape, reverse] = info.param;
  return shape_name(shape) + (reverse ? "_rev" : "_fwd");
}

INSTANTIATE_TEST_SUITE_P(TinyShapes, LinrecGradTest,
                         ::testing::Combine(::testing::ValuesIn(kTinyShapes), ::testing::Bool()), grad_param_name);

// ---- a hand-computed example ----------------------------------------------------------------------------

// (B, T, D) = (1, 3, 2); rows are time steps. Every value is a short binary fraction, so all backends must
// reproduce it exactly in float32 and float64.
//   channel 0: u = (1, 2, 3), c = (0.5, 2, −0.5), g = (1, −1, 2)
//     forward:  y = (1, 2·1 + 2, −0.5·4 + 3) = (1, 4, 1)
//               du = (1 + 2·(−2), −1 + (−0.5)·2, 2) = (−3, −2, 2),  dc = (0, du_1·y_0, du_2·y_1) = (0, −2, 8)
//     reverse:  y = (0.5·8 + 1, 2·3 + 2, 3) = (5, 8, 3)
//               du = (1, −1 + 0.5·1, 2 + 2·(−0.5)) = (1, −0.5, 1),  dc = (du_0·y_1, du_1·y_2, 0) = (8, −1.5, 0)
//   channel 1: u = (1, 0, −1), c = (3, 0.5, 0.5), g = (0, 1, 1)
//     forward:  y = (1, 0.5, −0.75),  du = (0.5·1.5, 1 + 0.5·1, 1) = (0.75, 1.5, 1),  dc = (0, 1.5, 0.5)
//     reverse:  y = (3·(−0.5) + 1, 0.5·(−1) + 0, −1) = (−0.5, −0.5, −1)
//               du = (0, 1 + 3·0, 1 + 0.5·1) = (0, 1, 1.5),  dc = (0·(−0.5), 1·(−1), 0) = (0, −1, 0)
struct HandExample {
  torch::Tensor u, c, g, y, du, dc;
};

HandExample hand_example(bool reverse, torch::Dtype dtype) {
  auto t = [dtype](std::vector<double> v) { return torch::tensor(v, torch::kFloat64).view({1, 3, 2}).to(dtype); };
  HandExample e;
  e.u = t({1, 1, 2, 0, 3, -1});
  e.c = t({0.5, 3, 2, 0.5, -0.5, 0.5});
  e.g = t({1, 0, -1, 1, 2, 1});
  if (!reverse) {
    e.y = t({1, 1, 4, 0.5, 1, -0.75});
    e.du = t({-3, 0.75, -2, 1.5, 2, 1});
    e.dc = t({0, 0, -2, 1.5, 8, 0.5});
  } else {
    e.y = t({5, -0.5, 8, -0.5, 3, -1});
    e.du = t({1, 0, -0.5, 1, 1, 1.5});
    e.dc = t({8, 0, -1.5, -1, 0, 0});
  }
  return e;
}

void expect_exact(const torch::Tensor& out, const torch::Tensor& expected, const std::string& what) {
  ASSERT_EQ(out.sizes(), expected.sizes()) << what;
  EXPECT_EQ(max_abs_diff(out, expected), 0.0) << what << ":\n" << out << "\nexpected\n" << expected;
}

TEST(LinrecHandExample, RefMatches) {
  for (const bool rev : {false, true}) {
    const HandExample e = hand_example(rev, torch::kFloat64);
    const std::string dir = rev ? "reverse " : "forward ";
    expect_exact(linrec_fwd_ref(e.u, e.c, rev), e.y, dir + "outputs");
    const auto [du, dc] = linrec_bwd_ref(e.g, e.c, e.y, rev);
    expect_exact(du, e.du, dir + "d_inputs");
    expect_exact(dc, e.dc, dir + "d_coeffs");
  }
}

TEST(LinrecHandExample, CpuMatches) {
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (const bool rev : {false, true}) {
      const HandExample e = hand_example(rev, dtype);
      const std::string what = dtype_name(dtype) + (rev ? " reverse " : " forward ");
      expect_exact(linrec_fwd_cpu(e.u, e.c, rev), e.y, what + "outputs");
      const auto [du, dc] = linrec_bwd_cpu(e.g, e.c, e.y, rev);
      expect_exact(du, e.du, what + "d_inputs");
      expect_exact(dc, e.dc, what + "d_coeffs");
    }
  }
}

TEST(LinrecHandExample, AutogradMatches) {
  for (const bool rev : {false, true}) {
    const HandExample e = hand_example(rev, torch::kFloat64);
    const std::string dir = rev ? "reverse " : "forward ";
    const torch::Tensor u = e.u.clone().requires_grad_(true);
    const torch::Tensor c = e.c.clone().requires_grad_(true);
    const torch::Tensor y = linrec(u, c, rev);
    y.backward(e.g);
    expect_exact(y.detach(), e.y, dir + "outputs");
    expect_exact(u.grad(), e.du, dir + "d_inputs");
    expect_exact(c.grad(), e.dc, dir + "d_coeffs");
  }
}

// ---- non-contiguous inputs ----------------------------------------------------------------------------

TEST(LinrecEntry, NonContiguousInputsMatchContiguous) {
  const Shape s{2, 11, 13};
  for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
    for (const bool rev : {false, true}) {
      const std::string what = dtype_name(dtype) + (rev ? " reverse " : " forward ");
      // inputs: a transposed view of (B, D, T); coeffs: every other column of (B, T, 2D).
      const torch::Tensor u = randn({s.B, s.D, s.T}, 20, dtype).transpose(1, 2).requires_grad_(true);
      const torch::Tensor c_wide = make_coeffs({s.B, s.T, 2 * s.D}, 21, dtype);
      const torch::Tensor c = c_wide.slice(2, 0, 2 * s.D, 2).requires_grad_(true);
      ASSERT_FALSE(u.is_contiguous());
      ASSERT_FALSE(c.is_contiguous());
      // The upstream gradient is a transposed view too, so backward receives a non-contiguous grad.
      const torch::Tensor w = randn({s.B, s.D, s.T}, 22, dtype).transpose(1, 2);

      const torch::Tensor y = linrec(u, c, rev);
      (y * w).sum().backward();
      const torch::Tensor y_contig = linrec_fwd_cpu(u.detach().contiguous(), c.detach().contiguous(), rev);
      EXPECT_TRUE(torch::equal(y.detach(), y_contig)) << what << "outputs differ from the contiguous ones";

      const torch::Tensor y_ref = linrec_fwd_ref(u.detach(), c.detach(), rev);
      expect_close(y.detach(), y_ref, tolerance(dtype), what + "outputs vs ref");
      const auto [du_ref, dc_ref] = linrec_bwd_ref(w, c.detach(), y.detach(), rev);
      expect_close(u.grad(), du_ref, tolerance(dtype), what + "d_inputs vs ref");
      expect_close(c.grad(), dc_ref, tolerance(dtype), what + "d_coeffs vs ref");
    }
  }
}

TEST(LinrecEntry, EmptyTensors) {
  for (const auto& sizes : {std::vector<int64_t>{0, 4, 3}, {2, 0, 3}, {2, 4, 0}}) {
    const torch::Tensor u = torch::zeros(sizes, torch::kFloat32).requires_grad_(true);
    const torch::Tensor c = torch::zeros(sizes, torch::kFloat32).requires_grad_(true);
    const torch::Tensor y = linrec(u, c);
    EXPECT_EQ(y.sizes(), u.sizes());
    y.sum().backward();
    EXPECT_EQ(u.grad().sizes(), u.sizes());
    EXPECT_EQ(c.grad().sizes(), c.sizes());
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

TEST(LinrecEntry, BadInputsThrow) {
  const torch::Tensor ok = torch::ones({2, 3, 4});
  expect_error([&] { linrec(torch::ones({3, 4}), torch::ones({3, 4})); }, {"linrec", "[3, 4]"}, "rank 2");
  expect_error([&] { linrec(torch::ones({1, 2, 3, 4}), torch::ones({1, 2, 3, 4})); }, {"linrec", "[1, 2, 3, 4]"},
               "rank 4");
  expect_error([&] { linrec(ok, torch::ones({2, 3, 5})); }, {"linrec", "[2, 3, 4]", "[2, 3, 5]"}, "shape mismatch");
  expect_error([&] { linrec(ok, torch::ones({2, 3, 4}, torch::kFloat64)); }, {"linrec", "Double"}, "dtype mismatch");
  expect_error([&] { linrec(torch::ones({2, 3, 4}, torch::kLong), torch::ones({2, 3, 4}, torch::kLong)); },
               {"linrec", "Long"}, "integer dtype");
  expect_error([&] { linrec(torch::ones({2, 3, 4}, torch::kHalf), torch::ones({2, 3, 4}, torch::kHalf)); },
               {"linrec", "Half"}, "float16");
  expect_error([&] { linrec(ok, torch::Tensor()); }, {"linrec", "undefined"}, "undefined coeffs");
}

TEST(LinrecEntry, KernelsRejectWhatTheyDoNotSupport) {
  const torch::Tensor ok = torch::ones({2, 3, 4});
  const torch::Tensor strided = torch::ones({2, 4, 3}).transpose(1, 2);
  expect_error([&] { linrec_fwd_cpu(strided, ok, false); }, {"linrec_fwd_cpu", "contiguous"}, "fwd non-contiguous");
  expect_error([&] { linrec_bwd_cpu(ok, ok, strided, false); }, {"linrec_bwd_cpu", "outputs", "contiguous"},
               "bwd non-contiguous");
  expect_error([&] { linrec_bwd_cpu(ok, ok, torch::ones({2, 3, 5}), false); }, {"linrec_bwd_cpu", "[2, 3, 5]"},
               "bwd shape mismatch");
  expect_error([&] { linrec_fwd_ref(ok, torch::ones({2, 2, 4}), false); }, {"linrec_fwd_ref", "[2, 2, 4]"},
               "ref shape mismatch");
}

}  // namespace
}  // namespace fprnn::ops
