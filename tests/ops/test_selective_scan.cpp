// Tests for selective_scan (Mamba-1: s_t = exp(Δ_t A) s_{t−1} + Δ_t B_t u_t, y_t = C_t·s_t + D u_t; u, dt
// (B, T, D), A (D, N), B, C (B, T, N), D_skip, dt_bias (D)): CPU kernels vs the float64 reference (forward and
// all seven gradients, float32 and float64), the reference's backward vs finite differences, the autograd entry
// vs finite differences, the ATen-ops path vs the reference, non-contiguous inputs, thread-count independence
// and argument checks; on a GPU, the CUDA kernels against the same reference.
#include "fprnn/common.h"
#include "fprnn/ops/selective_scan.h"
#include "testing.h"

#include <ATen/Parallel.h>

#include <cstdint>
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
  int64_t B, T, D, N;
};

std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + "_T" + std::to_string(s.T) + "_D" + std::to_string(s.D) + "_N" +
         std::to_string(s.N);
}

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "(B, T, D, N) = (" << s.B << ", " << s.T << ", " << s.D << ", " << s.N << ")";
}

// Inputs in the ranges FP-Mamba produces: A = −exp(·) < 0 (S4D-real init is −1..−N), Δ = softplus(dt + bias)
// around 0.05..2, B and C of unit scale. With `threshold`, a few dt are pushed above 20 so that softplus's
// linear branch runs too (not in finite-difference tests: the branch point is a kink).
struct Inputs {
  torch::Tensor u, dt, A, B, C, D_skip, dt_bias;
  std::vector<torch::Tensor> list() const { return {u, dt, A, B, C, D_skip, dt_bias}; }
};

Inputs make_inputs(const Shape& s, uint64_t seed, torch::Dtype dtype, bool threshold = false) {
  Inputs in;
  in.u = randn({s.B, s.T, s.D}, seed);
  in.dt = randn({s.B, s.T, s.D}, seed + 1) * 0.7 - 1.0;
  if (threshold) in.dt = torch::where(randn({s.B, s.T, s.D}, seed + 7) > 1.5, in.dt + 23.0, in.dt);
  in.A = -torch::exp(randn({s.D, s.N}, seed + 2) * 0.5);
  in.B = randn({s.B, s.T, s.N}, seed + 3);
  in.C = randn({s.B, s.T, s.N}, seed + 4);
  in.D_skip = randn({s.D}, seed + 5);
  in.dt_bias = randn({s.D}, seed + 6) * 0.5;
  for (auto* t : {&in.u, &in.dt, &in.A, &in.B, &in.C, &in.D_skip, &in.dt_bias}) *t = t->to(dtype).contiguous();
  return in;
}

torch::Tensor run_ref(const Inputs& in) {
  return selective_scan_fwd_ref(in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
}

const std::vector<std::string> kGradNames = {"du", "ddt", "dA", "dB", "dC", "dD_skip", "ddt_bias"};

std::vector<torch::Tensor> grad_list(const SelectiveScanGrads& g) {
  return {g.du, g.ddt, g.dA, g.dB, g.dC, g.dD_skip, g.ddt_bias};
}

// Tolerance on ‖out − ref‖/‖ref‖ between a kernel in `dtype` and the float64 reference on the same values.
double tolerance(torch::Dtype dtype) {
  // float64: the kernel and the reference do the same operations; Sleef's exp and log1p (1 ulp) and FMA
  // contraction change the last bits only, and |exp(ΔA)| < 1 keeps them from growing along T: 1e-12.
  // float32: unit roundoff 6e-8 per operation, sums of N·T terms for dA and of D terms for dB, dC: observed
  // ≲ 1e-6, 2e-5 leaves room.
  return dtype == torch::kFloat64 ? 1e-12 : 2e-5;
}

// ---- CPU kernels vs the reference -------------------------------------------------------------------

using KernelParam = std::tuple<Shape, torch::Dtype>;

class SelectiveScanTest : public ::testing::TestWithParam<KernelParam> {
 protected:
  Shape shape() const { return std::get<0>(GetParam()); }
  torch::Dtype dtype() const { return std::get<1>(GetParam()); }
};

TEST_P(SelectiveScanTest, CpuFwdMatchesRef) {
  const Inputs in = make_inputs(shape(), 1, dtype(), /*threshold=*/true);
  const torch::Tensor y = selective_scan_fwd_cpu(in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
  ASSERT_EQ(y.scalar_type(), dtype());
  expect_close(y, run_ref(in), tolerance(dtype()), "y");
}

TEST_P(SelectiveScanTest, CpuBwdMatchesRef) {
  const Inputs in = make_inputs(shape(), 11, dtype(), /*threshold=*/true);
  const torch::Tensor g = randn(in.u.sizes(), 19, dtype());
  const auto ours = grad_list(selective_scan_bwd_cpu(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  const auto inputs = in.list();
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(ours[i].scalar_type(), dtype()) << kGradNames[i];
    ASSERT_EQ(ours[i].sizes(), inputs[i].sizes()) << kGradNames[i];
    expect_close(ours[i], ref[i], tolerance(dtype()), kGradNames[i]);
  }
}

TEST_P(SelectiveScanTest, EntryMatchesRefWithAutograd) {
  const Inputs in = make_inputs(shape(), 21, dtype());
  std::vector<torch::Tensor> leaves;
  for (const auto& t : in.list()) leaves.push_back(t.clone().requires_grad_(true));
  const torch::Tensor y = selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
  expect_close(y.detach(), run_ref(in), tolerance(dtype()), "y");
  const torch::Tensor g = randn(y.sizes(), 29, dtype());
  y.backward(g);
  const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  for (size_t i = 0; i < leaves.size(); ++i) {
    ASSERT_TRUE(leaves[i].grad().defined()) << kGradNames[i];
    expect_close(leaves[i].grad(), ref[i], tolerance(dtype()), kGradNames[i]);
  }
}

// Shapes: T = 1; odd and non-power-of-two T, D, N; D below, at and above one channel block (32) with a partial
// SIMD vector at the end; N = 16 (the default d_state); B = 1.
const std::vector<Shape> kShapes = {{1, 1, 1, 1},  {1, 1, 19, 16}, {2, 7, 5, 3},  {3, 33, 17, 16},
                                    {2, 9, 32, 4}, {2, 12, 45, 5}, {1, 20, 70, 16}};

std::string kernel_param_name(const ::testing::TestParamInfo<KernelParam>& info) {
  return shape_name(std::get<0>(info.param)) + "_" + dtype_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, SelectiveScanTest,
                         ::testing::Combine(::testing::ValuesIn(kShapes),
                                            ::testing::Values(torch::kFloat64, torch::kFloat32)),
                         kernel_param_name);

// ---- the ATen path (other devices) vs the reference -------------------------------------------------------

TEST(SelectiveScanAtenTest, MatchesRefForwardAndBackward) {
  const Inputs in = make_inputs({2, 9, 13, 5}, 31, torch::kFloat64, /*threshold=*/true);
  std::vector<torch::Tensor> leaves;
  for (const auto& t : in.list()) leaves.push_back(t.clone().requires_grad_(true));
  const torch::Tensor y =
      selective_scan_aten(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
  expect_close(y.detach(), run_ref(in), 1e-12, "y");
  const torch::Tensor g = randn(y.sizes(), 37);
  y.backward(g);
  const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  for (size_t i = 0; i < leaves.size(); ++i) expect_close(leaves[i].grad(), ref[i], 1e-12, kGradNames[i]);
}

// Central differences with step 1e-6 of a smooth function whose second derivatives are O(1)–O(10): truncation
// ~1e-11, cancellation ~1e-16/1e-6 = 1e-10 relative to the loss, so 1e-6 leaves room while a wrong index,
// sign or factor gives O(1).
constexpr double kFiniteDiffTol = 1e-6;

// ---- CUDA kernels vs the reference (skipped without a GPU) ---------------------------------------------

bool has_cuda() { return torch::cuda::is_available(); }

std::vector<torch::Tensor> to_cuda(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.cuda());
  return out;
}

TEST_P(SelectiveScanTest, CudaFwdAndBwdMatchRef) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  const Inputs in = make_inputs(shape(), 71, dtype(), /*threshold=*/true);
  const auto c = to_cuda(in.list());
  const torch::Tensor y = selective_scan_fwd_cuda(c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
  ASSERT_TRUE(y.is_cuda());
  expect_close(y.cpu(), run_ref(in), tolerance(dtype()), "y (CUDA)");
  const torch::Tensor g = randn(in.u.sizes(), 79, dtype());
  const auto ours = grad_list(selective_scan_bwd_cuda(g.cuda(), c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
  const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  const auto inputs = in.list();
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(ours[i].sizes(), inputs[i].sizes()) << kGradNames[i];
    expect_close(ours[i].cpu(), ref[i], tolerance(dtype()), kGradNames[i] + " (CUDA)");
  }
}

// Longer sequences than the backward's 16-step checkpoint chunks (T = 16, 17, 50), d_state at and just past
// a compiled size (16 → 16, 33 → 64, 64), and channels that leave a partial warp (D = 40).
TEST(SelectiveScanCudaTest, ChunkBoundariesAndStateSizes) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  for (const Shape& s : {Shape{2, 16, 40, 16}, Shape{2, 17, 40, 33}, Shape{3, 50, 64, 64}, Shape{1, 3, 7, 1}}) {
    SCOPED_TRACE(shape_name(s));
    const Inputs in = make_inputs(s, 81, torch::kFloat64, true);
    const auto c = to_cuda(in.list());
    expect_close(selective_scan_fwd_cuda(c[0], c[1], c[2], c[3], c[4], c[5], c[6]).cpu(), run_ref(in), 1e-12, "y");
    const torch::Tensor g = randn(in.u.sizes(), 89);
    const auto ours = grad_list(selective_scan_bwd_cuda(g.cuda(), c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
    const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
    for (size_t i = 0; i < ours.size(); ++i) expect_close(ours[i].cpu(), ref[i], 1e-12, kGradNames[i]);
  }
}

// The forward stages B_t and C_t in shared memory 32 steps at a time and a block holds 128 channels of one
// batch element; the backward reduces dB and dC per warp by a reduce-scatter. Shapes across those
// boundaries (T = 31, 32, 33, 70; D = 127, 129, 150, 260: partial blocks and partial warps; N = 5, 16, 20, 32
// and 64: every reduce-scatter width), in float32 and float64, and B and C stored 4 bytes past 16-byte
// alignment (the staging reads them element by element, whatever their alignment).
TEST(SelectiveScanCudaTest, TilesBlocksAndReductionsAtLargerShapes) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  const std::vector<Shape> shapes = {{2, 70, 150, 16}, {1, 33, 129, 8},  {3, 32, 260, 32},
                                     {2, 31, 127, 5},  {1, 40, 130, 64}, {2, 65, 40, 20}};
  auto misaligned = [](const torch::Tensor& t) {  // same values, storage starting 4 bytes past 16-byte alignment
    torch::Tensor buf = torch::empty({t.numel() + 1}, t.options());
    torch::Tensor view = buf.narrow(0, 1, t.numel()).view(t.sizes());
    view.copy_(t);
    return view;
  };
  for (const torch::Dtype dtype : {torch::kFloat32, torch::kFloat64}) {
    for (const Shape& s : shapes) {
      SCOPED_TRACE(shape_name(s) + "_" + dtype_name(dtype));
      const Inputs in = make_inputs(s, 83, dtype, true);
      auto c = to_cuda(in.list());
      const torch::Tensor g = randn(in.u.sizes(), 87, dtype);
      const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
      const torch::Tensor y = selective_scan_fwd_cuda(c[0], c[1], c[2], c[3], c[4], c[5], c[6]).cpu();
      expect_close(y, run_ref(in), tolerance(dtype), "y");
      const auto ours = grad_list(selective_scan_bwd_cuda(g.cuda(), c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
      for (size_t i = 0; i < ours.size(); ++i) expect_close(ours[i].cpu(), ref[i], tolerance(dtype), kGradNames[i]);
      c[3] = misaligned(c[3]);
      c[4] = misaligned(c[4]);
      ASSERT_NE(reinterpret_cast<uintptr_t>(c[3].const_data_ptr()) % 16, 0u);
      const torch::Tensor y_mis = selective_scan_fwd_cuda(c[0], c[1], c[2], c[3], c[4], c[5], c[6]).cpu();
      EXPECT_TRUE(torch::equal(y, y_mis)) << "the alignment of B and C must not change the values";
    }
  }
}

TEST(SelectiveScanCudaTest, EntryRunsTheKernelsWithAutogradAndFallsBackPast64States) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  for (const int64_t N : {16, 80}) {  // 80 > 64: the ATen path
    SCOPED_TRACE("N = " + std::to_string(N));
    EXPECT_EQ(selective_scan_cuda_supports(N), N <= 64);
    const Inputs in = make_inputs({2, 19, 24, N}, 91, torch::kFloat64);
    std::vector<torch::Tensor> leaves;
    for (const auto& t : in.list()) leaves.push_back(t.cuda().requires_grad_(true));
    const torch::Tensor y = selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
    expect_close(y.detach().cpu(), run_ref(in), 1e-12, "y");
    const torch::Tensor g = randn(y.sizes(), 99);
    y.backward(g.cuda());
    const auto ref = grad_list(selective_scan_bwd_ref(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
    for (size_t i = 0; i < leaves.size(); ++i) expect_close(leaves[i].grad().cpu(), ref[i], 1e-12, kGradNames[i]);
  }
}

TEST(SelectiveScanCudaTest, GradientsMatchFiniteDifferences) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  const Inputs in = make_inputs({2, 18, 35, 3}, 101, torch::kFloat64);
  // CPU leaves moved to the GPU inside the function: autograd carries the gradients back through the copies.
  auto inputs = in.list();
  check_gradients(
      [&]() {
        const auto c = to_cuda(inputs);
        return selective_scan(c[0], c[1], c[2], c[3], c[4], c[5], c[6]).cpu();
      },
      inputs, kFiniteDiffTol, "selective_scan (CUDA kernel)");
}

TEST(SelectiveScanCudaTest, ResultsAreDeterministic) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  const Inputs in = make_inputs({4, 40, 96, 16}, 111, torch::kFloat32);
  const auto c = to_cuda(in.list());
  const torch::Tensor g = randn(in.u.sizes(), 119, torch::kFloat32).cuda();
  const auto a = grad_list(selective_scan_bwd_cuda(g, c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
  const auto b = grad_list(selective_scan_bwd_cuda(g, c[0], c[1], c[2], c[3], c[4], c[5], c[6]));
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << kGradNames[i];
}

// ---- gradients by finite differences (float64, tiny shapes) ------------------------------------------


class SelectiveScanGradTest : public ::testing::TestWithParam<Shape> {};

TEST_P(SelectiveScanGradTest, RefBwdMatchesFiniteDifferences) {
  const Inputs in = make_inputs(GetParam(), 41, torch::kFloat64);
  const torch::Tensor w = randn(in.u.sizes(), 43);
  const auto analytic = grad_list(selective_scan_bwd_ref(w, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  auto inputs = in.list();
  for (size_t i = 0; i < inputs.size(); ++i) {
    const torch::Tensor numeric = numerical_grad(
        [&]() {
          return selective_scan_fwd_ref(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], inputs[6]) *
                 w;
        },
        inputs[i]);
    expect_close(analytic[i], numeric, kFiniteDiffTol, "reference " + kGradNames[i]);
  }
}

TEST_P(SelectiveScanGradTest, EntryGradientsMatchFiniteDifferences) {
  const Inputs in = make_inputs(GetParam(), 51, torch::kFloat64);
  auto inputs = in.list();
  check_gradients(
      [&]() { return selective_scan(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], inputs[6]); },
      inputs, kFiniteDiffTol, "selective_scan (CPU kernel)");
}

INSTANTIATE_TEST_SUITE_P(Tiny, SelectiveScanGradTest,
                         ::testing::Values(Shape{1, 1, 1, 1}, Shape{2, 5, 3, 2}, Shape{1, 4, 35, 2}),
                         [](const ::testing::TestParamInfo<Shape>& i) { return shape_name(i.param); });

// ---- layouts, threads, errors ------------------------------------------------------------------------

TEST(SelectiveScanMiscTest, NonContiguousInputs) {
  const Inputs in = make_inputs({3, 10, 21, 6}, 61, torch::kFloat64);
  // The same values behind transposed storage.
  auto strided = [](const torch::Tensor& t) {
    return t.dim() == 3 ? t.transpose(1, 2).contiguous().transpose(1, 2) : t.t().contiguous().t();
  };
  Inputs s;
  s.u = strided(in.u);
  s.dt = strided(in.dt);
  s.A = strided(in.A);
  s.B = strided(in.B);
  s.C = strided(in.C);
  s.D_skip = in.D_skip.repeat_interleave(2).slice(0, 0, 2 * in.D_skip.size(0), 2);
  s.dt_bias = in.dt_bias.repeat_interleave(2).slice(0, 0, 2 * in.dt_bias.size(0), 2);
  ASSERT_FALSE(s.u.is_contiguous());
  ASSERT_FALSE(s.A.is_contiguous());
  ASSERT_FALSE(s.D_skip.is_contiguous());
  const torch::Tensor y = selective_scan(s.u, s.dt, s.A, s.B, s.C, s.D_skip, s.dt_bias);
  expect_close(y, run_ref(in), 1e-12, "y (strided inputs)");
}

TEST(SelectiveScanMiscTest, ResultsDoNotDependOnThreadCount) {
  const Inputs in = make_inputs({3, 17, 100, 16}, 71, torch::kFloat32);
  const torch::Tensor g = randn(in.u.sizes(), 73, torch::kFloat32);
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const torch::Tensor y1 = selective_scan_fwd_cpu(in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
  const auto g1 = grad_list(selective_scan_bwd_cpu(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  at::set_num_threads(std::max(2, saved));
  const torch::Tensor y2 = selective_scan_fwd_cpu(in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias);
  const auto g2 = grad_list(selective_scan_bwd_cpu(g, in.u, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias));
  at::set_num_threads(saved);
  EXPECT_TRUE(torch::equal(y1, y2));
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_TRUE(torch::equal(g1[i], g2[i])) << kGradNames[i];
}

// The error names the op and the offending sizes.
void expect_error(const std::function<void()>& fn, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    EXPECT_NE(msg.find("selective_scan"), std::string::npos) << msg;
  }
}

TEST(SelectiveScanMiscTest, BadArgumentsThrow) {
  const Inputs in = make_inputs({2, 5, 6, 3}, 81, torch::kFloat64);
  auto call = [](const Inputs& x) { selective_scan(x.u, x.dt, x.A, x.B, x.C, x.D_skip, x.dt_bias); };
  Inputs bad = in;
  bad.u = in.u.reshape({2, 30});
  expect_error([&] { call(bad); }, "u must be (B, T, D), got sizes [2, 30]");
  bad = in;
  bad.A = torch::zeros({5, 3}, in.A.options());
  expect_error([&] { call(bad); }, "A must be (D, N) with D = 6, got sizes [5, 3]");
  bad = in;
  bad.B = torch::zeros({2, 5, 4}, in.B.options());
  expect_error([&] { call(bad); }, "B must be (2, 5, 3), got sizes [2, 5, 4]");
  bad = in;
  bad.C = torch::zeros({2, 4, 3}, in.C.options());
  expect_error([&] { call(bad); }, "C must be (2, 5, 3), got sizes [2, 4, 3]");
  bad = in;
  bad.dt = torch::zeros({2, 5, 7}, in.dt.options());
  expect_error([&] { call(bad); }, "dt must be (B, T, D)");
  bad = in;
  bad.D_skip = torch::zeros({7}, in.u.options());
  expect_error([&] { call(bad); }, "D_skip must be (6), got sizes [7]");
  bad = in;
  bad.dt_bias = torch::zeros({2, 6}, in.u.options());
  expect_error([&] { call(bad); }, "dt_bias must be (6)");
  bad = in;
  bad.C = in.C.to(torch::kFloat32);
  expect_error([&] { call(bad); }, "C must have the dtype of u");
  bad = make_inputs({2, 5, 6, 3}, 81, torch::kBFloat16);
  expect_error([&] { call(bad); }, "u must be float32 or float64");
  // The kernels' contract: contiguous inputs (the entry makes them so).
  const torch::Tensor u_strided = in.u.transpose(1, 2).contiguous().transpose(1, 2);
  expect_error([&] { selective_scan_fwd_cpu(u_strided, in.dt, in.A, in.B, in.C, in.D_skip, in.dt_bias); },
               "u must be contiguous");
}

}  // namespace
}  // namespace fprnn::ops
