// Tests for ssd (Mamba-2: S_t = exp(Δ_t A_h) S_{t−1} + Δ_t x_t ⊗ B_t, y_t = S_t C_t + D_h x_t per head; x
// (B, T, H, P), dt (B, T, H), A, D_skip, dt_bias (H), B, C (B, T, G, N)): CPU kernels vs the float64 reference
// (forward and all seven gradients, float32 and float64), the reference's backward vs finite differences, the
// autograd entry vs finite differences, the ATen-ops path vs the reference, the reference against a
// per-head selective_scan, non-contiguous inputs, thread-count independence and argument checks.
#include "fprnn/common.h"
#include "fprnn/ops/selective_scan.h"
#include "fprnn/ops/ssd.h"
#include "testing.h"

#include <ATen/Parallel.h>

#include <functional>
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
  int64_t B, T, H, P, G, N;
};

std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_H" + std::to_string(s.H) + "_P" +
         std::to_string(s.P) + "_G" + std::to_string(s.G) + "_N" + std::to_string(s.N);
}

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "(B, T, H, P, G, N) = (" << s.B << ", " << s.T << ", " << s.H << ", " << s.P << ", " << s.G << ", " << s.N
      << ")";
}

// Inputs in the ranges FP-Mamba2 produces: A = −exp(A_log) with A_log = ln U[1, 16] at init (here −0.3..−5), Δ =
// softplus(dt + bias) around 0.05..2, B and C of unit norm or scale. With `threshold`, a few dt are pushed
// above 20 so that softplus's linear branch runs too (not in finite-difference tests: the branch point is a
// kink; a·S is then ~exp(−20·|A|) and the state restarts).
struct Inputs {
  torch::Tensor x, dt, A, B, C, D_skip, dt_bias;
  std::vector<torch::Tensor> list() const { return {x, dt, A, B, C, D_skip, dt_bias}; }
};

Inputs make_inputs(const Shape& s, uint64_t seed, torch::Dtype dtype, bool threshold = false) {
  Inputs in;
  in.x = randn({s.B, s.T, s.H, s.P}, seed);
  in.dt = randn({s.B, s.T, s.H}, seed + 1) * 0.7 - 1.0;
  if (threshold) in.dt = torch::where(randn({s.B, s.T, s.H}, seed + 7) > 1.5, in.dt + 23.0, in.dt);
  in.A = -torch::exp(randn({s.H}, seed + 2) * 0.6);
  in.B = randn({s.B, s.T, s.G, s.N}, seed + 3);
  in.C = randn({s.B, s.T, s.G, s.N}, seed + 4);
  in.D_skip = randn({s.H}, seed + 5);
  in.dt_bias = randn({s.H}, seed + 6) * 0.5;
  for (auto* t : {&in.x, &in.dt, &in.A, &in.B, &in.C, &in.D_skip, &in.dt_bias}) *t = t->to(dtype).contiguous();
  return in;
}

torch::Tensor run_ref(const Inputs& in) { return ssd_fwd_ref(in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias); }

const std::vector<std::string> kGradNames = {"dx", "ddt", "dA", "dB", "dC", "dD_skip", "ddt_bias"};

std::vector<torch::Tensor> grad_list(const SsdGrads& g) { return {g.dx, g.ddt, g.dA, g.dB, g.dC, g.dD_skip, g.ddt_bias}; }

// Tolerance on ‖out − ref‖/‖ref‖ between a kernel in `dtype` and the float64 reference on the same values.
double tolerance(torch::Dtype dtype) {
  // float64: the kernel and the reference do the same operations in another order (lane-wise partial sums
  // of the N-dot products, FMA contraction, Sleef-free std::exp): last bits only, and |a| < 1 keeps them from
  // growing along T: 1e-12.
  // float32: unit roundoff 6e-8 per operation; dots of N terms, sums over P·N terms (da, dB) and over B·T
  // terms (dA, dD_skip, dt_bias): observed ≲ 2e-6, 2e-5 leaves room.
  return dtype == torch::kFloat64 ? 1e-12 : 2e-5;
}

// ---- CPU kernels vs the reference -------------------------------------------------------------------

using KernelParam = std::tuple<Shape, torch::Dtype>;

class SsdTest : public ::testing::TestWithParam<KernelParam> {
 protected:
  Shape shape() const { return std::get<0>(GetParam()); }
  torch::Dtype dtype() const { return std::get<1>(GetParam()); }
};

TEST_P(SsdTest, CpuFwdMatchesRef) {
  const Inputs in = make_inputs(shape(), 1, dtype(), /*threshold=*/true);
  const torch::Tensor y = ssd_fwd_cpu(in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
  ASSERT_EQ(y.scalar_type(), dtype());
  ASSERT_EQ(y.sizes(), in.x.sizes());
  expect_close(y, run_ref(in), tolerance(dtype()), "y");
}

TEST_P(SsdTest, CpuBwdMatchesRef) {
  const Inputs in = make_inputs(shape(), 11, dtype(), /*threshold=*/true);
  const torch::Tensor g = randn(in.x.sizes(), 19, dtype());
  const auto ours = grad_list(ssd_bwd_cpu(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  const auto ref = grad_list(ssd_bwd_ref(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  const auto inputs = in.list();
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(ours[i].scalar_type(), dtype()) << kGradNames[i];
    ASSERT_EQ(ours[i].sizes(), inputs[i].sizes()) << kGradNames[i];
    expect_close(ours[i], ref[i], tolerance(dtype()), kGradNames[i]);
  }
}

TEST_P(SsdTest, EntryMatchesRefWithAutograd) {
  const Inputs in = make_inputs(shape(), 21, dtype());
  std::vector<torch::Tensor> leaves;
  for (const auto& t : in.list()) leaves.push_back(t.clone().requires_grad_(true));
  const torch::Tensor y = ssd(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
  expect_close(y.detach(), run_ref(in), tolerance(dtype()), "y");
  const torch::Tensor g = randn(y.sizes(), 29, dtype());
  y.backward(g);
  const auto ref = grad_list(ssd_bwd_ref(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  for (size_t i = 0; i < leaves.size(); ++i) {
    ASSERT_TRUE(leaves[i].grad().defined()) << kGradNames[i];
    expect_close(leaves[i].grad(), ref[i], tolerance(dtype()), kGradNames[i]);
  }
}

// Shapes: T = 1; odd and non-power-of-two T, P, N; one and several groups (G = H: one head per group); N below,
// at and above one SIMD vector and not a multiple of it; T across one and two checkpoint-chunk boundaries
// (kSsdChunk = 64) including T = 64 and 65; B = 1.
const std::vector<Shape> kShapes = {{1, 1, 1, 1, 1, 1},   {1, 1, 2, 3, 1, 16},   {2, 7, 3, 5, 1, 3},
                                    {2, 9, 4, 2, 2, 5},   {3, 33, 2, 8, 1, 16},  {1, 20, 6, 7, 3, 17},
                                    {2, 64, 2, 3, 2, 9},  {1, 65, 2, 4, 1, 8},   {2, 130, 3, 3, 3, 4},
                                    {1, 12, 2, 64, 1, 128}};

std::string kernel_param_name(const ::testing::TestParamInfo<KernelParam>& info) {
  return shape_name(std::get<0>(info.param)) + "_" + dtype_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsdTest,
                         ::testing::Combine(::testing::ValuesIn(kShapes),
                                            ::testing::Values(torch::kFloat64, torch::kFloat32)),
                         kernel_param_name);

// ---- the ATen path (other devices) and an independent formula vs the reference -----------------------

TEST(SsdAtenTest, MatchesRefForwardAndBackward) {
  const Inputs in = make_inputs({2, 9, 4, 3, 2, 5}, 31, torch::kFloat64, /*threshold=*/true);
  std::vector<torch::Tensor> leaves;
  for (const auto& t : in.list()) leaves.push_back(t.clone().requires_grad_(true));
  const torch::Tensor y = ssd_aten(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
  expect_close(y.detach(), run_ref(in), 1e-12, "y");
  const torch::Tensor g = randn(y.sizes(), 37);
  y.backward(g);
  const auto ref = grad_list(ssd_bwd_ref(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  for (size_t i = 0; i < leaves.size(); ++i) expect_close(leaves[i].grad(), ref[i], 1e-12, kGradNames[i]);
}

TEST(SsdAtenTest, EachHeadIsASelectiveScanWithATiedDecay) {
  // Head h of SSD is Mamba-1's selective scan over its P channels with A[d, n] = A_h for every (d, n), Δ shared
  // by the channels of the head, and the group's B, C: an independent check of the head/group indexing.
  const Shape s{2, 11, 4, 3, 2, 5};
  const Inputs in = make_inputs(s, 33, torch::kFloat64);
  const torch::Tensor y = run_ref(in);
  for (int64_t h = 0; h < s.H; ++h) {
    const int64_t g = h / (s.H / s.G);
    const torch::Tensor u = in.x.select(2, h);                                  // (B, T, P)
    const torch::Tensor dt = in.dt.select(2, h).unsqueeze(-1).expand({s.B, s.T, s.P});
    const torch::Tensor A = in.A[h].expand({s.P, s.N});
    const torch::Tensor D = in.D_skip[h].expand({s.P});
    const torch::Tensor bias = in.dt_bias[h].expand({s.P});
    const torch::Tensor expected =
        selective_scan_fwd_ref(u, dt, A, in.B.select(2, g), in.C.select(2, g), D, bias);
    expect_close(y.select(2, h), expected, 1e-13, "head " + std::to_string(h));
  }
}

// ---- gradients by finite differences (float64, tiny shapes) ------------------------------------------

// Central differences with step 1e-6 of a smooth function whose second derivatives are O(1)–O(10): truncation
// ~1e-11, cancellation ~1e-16/1e-6 = 1e-10 relative to the loss, so 1e-6 leaves room while a wrong index,
// sign or factor gives O(1).
constexpr double kFiniteDiffTol = 1e-6;

class SsdGradTest : public ::testing::TestWithParam<Shape> {};

TEST_P(SsdGradTest, RefBwdMatchesFiniteDifferences) {
  const Inputs in = make_inputs(GetParam(), 41, torch::kFloat64);
  const torch::Tensor w = randn(in.x.sizes(), 43);
  const auto analytic = grad_list(ssd_bwd_ref(w, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  auto inputs = in.list();
  for (size_t i = 0; i < inputs.size(); ++i) {
    const torch::Tensor numeric = numerical_grad(
        [&]() { return ssd_fwd_ref(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], inputs[6]) * w; },
        inputs[i]);
    expect_close(analytic[i], numeric, kFiniteDiffTol, "reference " + kGradNames[i]);
  }
}

TEST_P(SsdGradTest, EntryGradientsMatchFiniteDifferences) {
  const Inputs in = make_inputs(GetParam(), 51, torch::kFloat64);
  auto inputs = in.list();
  check_gradients([&]() { return ssd(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], inputs[6]); },
                  inputs, kFiniteDiffTol, "ssd (CPU kernel)");
}

INSTANTIATE_TEST_SUITE_P(Tiny, SsdGradTest,
                         ::testing::Values(Shape{1, 1, 1, 1, 1, 1}, Shape{2, 5, 2, 3, 1, 2}, Shape{1, 4, 4, 2, 2, 3},
                                           Shape{1, 66, 1, 2, 1, 2}),
                         [](const ::testing::TestParamInfo<Shape>& i) { return shape_name(i.param); });

// ---- layouts, threads, errors ------------------------------------------------------------------------

TEST(SsdMiscTest, NonContiguousInputs) {
  const Inputs in = make_inputs({3, 10, 4, 5, 2, 6}, 61, torch::kFloat64);
  // The same values behind permuted storage or every other element of a larger buffer.
  auto permuted = [](const torch::Tensor& t) { return t.transpose(1, 2).contiguous().transpose(1, 2); };
  auto strided = [](const torch::Tensor& t) { return t.repeat_interleave(2, 0).slice(0, 0, 2 * t.size(0), 2); };
  Inputs s;
  s.x = permuted(in.x);
  s.dt = permuted(in.dt);
  s.A = strided(in.A);
  s.B = in.B.permute({3, 0, 1, 2}).contiguous().permute({1, 2, 3, 0});
  s.C = permuted(in.C);
  s.D_skip = strided(in.D_skip);
  s.dt_bias = strided(in.dt_bias);
  for (const auto& t : s.list()) ASSERT_FALSE(t.is_contiguous());
  std::vector<torch::Tensor> leaves;
  for (const auto& t : s.list()) leaves.push_back(t.detach().requires_grad_(true));
  const torch::Tensor y = ssd(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
  expect_close(y.detach(), run_ref(in), 1e-12, "y (strided inputs)");
  const torch::Tensor g = randn(y.sizes(), 63).transpose(1, 2).contiguous().transpose(1, 2);  // strided too
  y.backward(g);
  const auto ref = grad_list(ssd_bwd_ref(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  for (size_t i = 0; i < leaves.size(); ++i) expect_close(leaves[i].grad(), ref[i], 1e-12, kGradNames[i]);
}

TEST(SsdMiscTest, ResultsDoNotDependOnThreadCount) {
  const Inputs in = make_inputs({3, 70, 4, 16, 2, 32}, 71, torch::kFloat32);
  const torch::Tensor g = randn(in.x.sizes(), 73, torch::kFloat32);
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const torch::Tensor y1 = ssd_fwd_cpu(in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
  const auto g1 = grad_list(ssd_bwd_cpu(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  at::set_num_threads(std::max(2, saved));
  const torch::Tensor y2 = ssd_fwd_cpu(in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
  const auto g2 = grad_list(ssd_bwd_cpu(g, in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(y1, y2));
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_TRUE(torch::equal(g1[i], g2[i])) << kGradNames[i];
}

TEST(SsdMiscTest, EmptyBatchAndZeroUpstreamGradient) {
  const Inputs in = make_inputs({0, 5, 2, 3, 1, 4}, 75, torch::kFloat64);
  EXPECT_EQ(ssd(in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias).sizes(), in.x.sizes());
  const Inputs one = make_inputs({2, 5, 2, 3, 1, 4}, 76, torch::kFloat64);
  const auto g = grad_list(ssd_bwd_cpu(torch::zeros_like(one.x), one.x, one.dt, one.A, one.B, one.C, one.D_skip,
                                       one.dt_bias));
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i].abs().max().item<double>(), 0.0) << kGradNames[i];
}

// The error names the op and the offending sizes.
void expect_error(const std::function<void()>& fn, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    EXPECT_NE(msg.find("ssd"), std::string::npos) << msg;
  }
}

TEST(SsdMiscTest, BadArgumentsThrow) {
  const Inputs in = make_inputs({2, 5, 4, 3, 2, 6}, 81, torch::kFloat64);
  auto call = [](const Inputs& x) { ssd(x.x, x.dt, x.A, x.B, x.C, x.D_skip, x.dt_bias); };
  Inputs bad = in;
  bad.x = in.x.reshape({2, 5, 12});
  expect_error([&] { call(bad); }, "x must be (B, T, H, P), got sizes [2, 5, 12]");
  bad = in;
  bad.dt = torch::zeros({2, 5, 3}, in.dt.options());
  expect_error([&] { call(bad); }, "dt must be (2, 5, 4), got sizes [2, 5, 3]");
  bad = in;
  bad.A = torch::zeros({4, 1}, in.A.options());
  expect_error([&] { call(bad); }, "A must be (4), got sizes [4, 1]");
  bad = in;
  bad.B = torch::zeros({2, 5, 3, 6}, in.B.options());
  expect_error([&] { call(bad); }, "the number of groups G = 3 (B's dim 2) must divide the 4 heads");
  bad = in;
  bad.B = torch::zeros({2, 4, 2, 6}, in.B.options());
  expect_error([&] { call(bad); }, "B must be (2, 5, G, N), got sizes [2, 4, 2, 6]");
  bad = in;
  bad.C = torch::zeros({2, 5, 2, 5}, in.C.options());
  expect_error([&] { call(bad); }, "C must be (B, T, G, N) = [2, 5, 2, 6], got sizes [2, 5, 2, 5]");
  bad = in;
  bad.D_skip = torch::zeros({12}, in.x.options());
  expect_error([&] { call(bad); }, "D_skip must be (4), got sizes [12]");
  bad = in;
  bad.dt_bias = torch::zeros({2, 4}, in.x.options());
  expect_error([&] { call(bad); }, "dt_bias must be (4)");
  bad = in;
  bad.C = in.C.to(torch::kFloat32);
  expect_error([&] { call(bad); }, "C must have the dtype of x");
  bad = make_inputs({2, 5, 4, 3, 2, 6}, 81, torch::kBFloat16);
  expect_error([&] { call(bad); }, "x must be float32 or float64");
  // The kernels' contract: contiguous inputs (the entry makes them so), and a grad shaped like x.
  const torch::Tensor x_strided = in.x.transpose(1, 2).contiguous().transpose(1, 2);
  expect_error([&] { ssd_fwd_cpu(x_strided, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias); },
               "x must be contiguous");
  expect_error(
      [&] { ssd_bwd_cpu(torch::zeros({2, 5, 4, 2}, in.x.options()), in.x, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias); },
      "grad must be (B, T, H, P) = [2, 5, 4, 3], got sizes [2, 5, 4, 2]");
}

}  // namespace
}  // namespace fprnn::ops
