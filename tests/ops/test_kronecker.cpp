// Fused Kronecker op: the CPU kernels against the ATen reference (forward, and backward against autograd of
// the reference), the autograd entry against finite differences, dtypes, the 'spectral' no-backward rule,
// degenerate rows and input checks. The CUDA kernels are compared with these in test_cuda_ops.cpp.
#include "fprnn/ops/kronecker.h"

#include "testing.h"

#include <torch/torch.h>

#include <ostream>
#include <string>

namespace fprnn::ops {
namespace {

using fprnn::testing::check_gradients;
using fprnn::testing::expect_close;
using fprnn::testing::randn;
using torch::Tensor;

struct Case {
  int64_t m1, m2;
  bool symmetric;
  const char* act;
  bool spectral;
  int64_t N;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.m1 << "x" << c.m2 << (c.symmetric ? " symmetric " : " square ") << c.act
      << (c.spectral ? " spectral" : " column-wise") << " N=" << c.N;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return "m" + std::to_string(c.m1) + "x" + std::to_string(c.m2) + (c.symmetric ? "_sym_" : "_square_") + c.act +
         (c.spectral ? "_spectral" : "_colwise") + "_N" + std::to_string(c.N);
}

KroneckerSpec spec_of(const Case& c) {
  KroneckerSpec s;
  s.m1 = c.m1;
  s.m2 = c.m2;
  s.symmetric = c.symmetric;
  s.act = c.act;
  s.spectral = c.spectral;
  s.eps = 1e-5;
  return s;
}

class KroneckerOpTest : public ::testing::TestWithParam<Case> {};

TEST_P(KroneckerOpTest, CpuFwdMatchesRef) {
  const Case c = GetParam();
  const KroneckerSpec s = spec_of(c);
  const Tensor raw = randn({c.N, s.raw_size()}, 1), v = randn({c.N, c.m1 * c.m2}, 2);
  const Tensor ref = kronecker_fwd_ref(raw, v, s);
  // float64: only the summation order differs from the reference.
  expect_close(kronecker_fwd_cpu(raw, v, s), ref, 1e-12, "float64");
  // float32: dots of length ≤ 2m accumulate a few 2⁻²⁴ relative errors; the power iteration adds a few more.
  const auto f = torch::kFloat32;
  expect_close(kronecker_fwd_cpu(raw.to(f), v.to(f), s), ref, 1e-5, "float32");
}

// The backward covers 'column-wise' only ('spectral' gradients go through the reference; see
// EntryRefusesSpectralGradient).
class KroneckerGradTest : public ::testing::TestWithParam<Case> {};

// The CPU backward against autograd of the reference, float64 (and float32 when asked).
void check_cpu_bwd(const Case& c, uint64_t seed, bool float32) {
  const KroneckerSpec s = spec_of(c);
  const Tensor raw = randn({c.N, s.raw_size()}, seed).requires_grad_(true);
  const Tensor v = randn({c.N, c.m1 * c.m2}, seed + 1).requires_grad_(true);
  const Tensor g = randn({c.N, c.m1 * c.m2}, seed + 2);
  (kronecker_fwd_ref(raw, v, s) * g).sum().backward();
  torch::NoGradGuard no_grad;
  const auto [graw, gv] = kronecker_bwd_cpu(raw.detach(), v.detach(), g, s);
  expect_close(graw, raw.grad(), 1e-11, "d raw");
  expect_close(gv, v.grad(), 1e-12, "d v");
  if (!float32) return;
  const auto f = torch::kFloat32;
  const auto [graw32, gv32] = kronecker_bwd_cpu(raw.detach().to(f), v.detach().to(f), g.to(f), s);
  expect_close(graw32, raw.grad(), 2e-5, "float32 d raw");
  expect_close(gv32, v.grad(), 1e-5, "float32 d v");
}

TEST_P(KroneckerGradTest, CpuBwdMatchesAutogradOfRef) { check_cpu_bwd(GetParam(), 3, /*float32=*/true); }

TEST_P(KroneckerGradTest, EntryGradientsMatchFiniteDifferences) {
  const Case c = GetParam();
  const KroneckerSpec s = spec_of(c);
  const Tensor raw = randn({c.N, s.raw_size()}, 6), v = randn({c.N, c.m1 * c.m2}, 7);
  check_gradients([&] { return kronecker_apply(raw, v, s); }, {raw, v}, 1e-6, "kronecker_apply");
}

// Factor sizes from 1×1 (a scalar mixer) to the layers' 32×32 (n = 1024) and an oblong 16×32 (n = 512).
INSTANTIATE_TEST_SUITE_P(
    Cases, KroneckerOpTest,
    ::testing::Values(Case{1, 1, true, "silu", false, 3}, Case{2, 3, true, "silu", false, 5},
                      Case{3, 5, true, "relu", false, 4}, Case{4, 4, true, "identity", false, 6},
                      Case{3, 2, false, "silu", false, 5}, Case{4, 4, false, "identity", false, 3},
                      Case{2, 3, true, "silu", true, 5}, Case{4, 4, true, "identity", true, 6},
                      Case{3, 4, false, "silu", true, 4}, Case{32, 32, true, "silu", false, 9},
                      Case{32, 32, true, "silu", true, 9}, Case{16, 32, true, "silu", false, 7}),
    case_name);

// Small enough for finite differences (every element of raw and v).
INSTANTIATE_TEST_SUITE_P(
    Cases, KroneckerGradTest,
    ::testing::Values(Case{1, 1, true, "silu", false, 3}, Case{2, 3, true, "silu", false, 5},
                      Case{3, 5, true, "relu", false, 4}, Case{4, 4, true, "identity", false, 6},
                      Case{3, 2, false, "silu", false, 5}, Case{4, 4, false, "identity", false, 3}),
    case_name);

// The layers' size against autograd of the reference (no finite differences).
class KroneckerLargeGradTest : public ::testing::TestWithParam<Case> {};

TEST_P(KroneckerLargeGradTest, CpuBwdMatchesAutogradOfRef) { check_cpu_bwd(GetParam(), 20, /*float32=*/false); }

INSTANTIATE_TEST_SUITE_P(Cases, KroneckerLargeGradTest,
                         ::testing::Values(Case{32, 32, true, "silu", false, 9}, Case{16, 32, true, "silu", false, 7},
                                           Case{8, 8, false, "relu", false, 5}),
                         case_name);

TEST(KroneckerOp, EntryMatchesRefInEveryDtypeAndShape) {
  KroneckerSpec s;
  s.m1 = 4;
  s.m2 = 6;
  s.eps = 1e-5;
  // (B, T, ·) inputs, non-contiguous v, float64 raw with float32 v (promoted to float64, output float32).
  const Tensor raw = randn({2, 5, s.raw_size()}, 8), v = randn({2, 24, 5}, 9).transpose(1, 2);
  const Tensor ref = kronecker_fwd_ref(raw, v, s);
  expect_close(kronecker_apply(raw, v, s), ref, 1e-12, "float64");
  const Tensor mixed = kronecker_apply(raw, v.to(torch::kFloat32), s);
  EXPECT_EQ(mixed.scalar_type(), torch::kFloat32);
  expect_close(mixed, ref, 1e-6, "float64 raw, float32 v");
  // bfloat16: computed in float32 from the rounded inputs; the output's rounding (2⁻⁹ relative) remains.
  const auto bf = torch::kBFloat16;
  const Tensor out_bf = kronecker_apply(raw.to(bf), v.to(bf), s);
  EXPECT_EQ(out_bf.scalar_type(), bf);
  expect_close(out_bf, kronecker_fwd_ref(raw.to(bf).to(torch::kFloat64), v.to(bf).to(torch::kFloat64), s), 5e-3,
               "bfloat16");
}

TEST(KroneckerOp, CpuKernelsRefuseReducedPrecision) {
  // bfloat16 goes straight into the GPU kernels only; the CPU kernels say so (the entry casts for them).
  KroneckerSpec s;
  s.m1 = 2;
  s.m2 = 2;
  const Tensor raw = randn({3, s.raw_size()}, 12).to(torch::kBFloat16), v = randn({3, 4}, 13).to(torch::kBFloat16);
  try {
    kronecker_fwd_cpu(raw, v, s);
    ADD_FAILURE() << "kronecker_fwd_cpu took bfloat16";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("on a GPU"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kronecker_bwd_cpu(raw, v, v, s), c10::Error);
}

TEST(KroneckerOp, EntryRefusesSpectralGradient) {
  KroneckerSpec s;
  s.m1 = 2;
  s.m2 = 2;
  s.spectral = true;
  const Tensor raw = randn({3, s.raw_size()}, 10).requires_grad_(true), v = randn({3, 4}, 11);
  EXPECT_THROW(kronecker_apply(raw, v, s), c10::Error);
  {
    torch::NoGradGuard no_grad;  // the layers' no-grad iterations
    expect_close(kronecker_apply(raw, v, s), kronecker_fwd_ref(raw, v, s), 1e-12, "no-grad spectral");
  }
}

TEST(KroneckerOp, ZeroRowsTakeTheClampedBranch) {
  // relu of negative entries leaves L = 0: every row norm is below eps, the clamp is active, U = V = 0 and
  // Q = I; the gradient of the diagonal still flows (through U = diag(d) · 0 it is zero) and must match.
  KroneckerSpec s;
  s.m1 = 3;
  s.m2 = 2;
  s.act = "relu";
  Tensor raw = randn({4, s.raw_size()}, 12);
  raw.narrow(1, 0, s.k1() + s.k2()).copy_(-raw.narrow(1, 0, s.k1() + s.k2()).abs() - 0.1);
  const Tensor v = randn({4, 6}, 13), g = randn({4, 6}, 14);
  expect_close(kronecker_fwd_cpu(raw, v, s), v, 1e-15, "Q = I");
  Tensor r = raw.clone().requires_grad_(true), x = v.clone().requires_grad_(true);
  (kronecker_fwd_ref(r, x, s) * g).sum().backward();
  const auto [graw, gv] = kronecker_bwd_cpu(raw, v, g, s);
  expect_close(graw, r.grad(), 1e-12, "d raw");
  expect_close(gv, x.grad(), 1e-12, "d v");
}

TEST(KroneckerOp, DoubleBackwardUsesTheReference) {
  KroneckerSpec s;
  s.m1 = 2;
  s.m2 = 3;
  const Tensor raw = randn({2, s.raw_size()}, 15).requires_grad_(true), v = randn({2, 6}, 16).requires_grad_(true);
  const Tensor w = randn({2, 6}, 17);
  auto grads_of = [&](const std::function<Tensor(const Tensor&, const Tensor&)>& f) {
    const Tensor y = (f(raw, v) * w).sum();
    const auto g = torch::autograd::grad({y}, {raw, v}, {}, /*retain_graph=*/true, /*create_graph=*/true);
    return torch::autograd::grad({(g[0] * g[0]).sum() + (g[1] * g[1]).sum()}, {raw, v});
  };
  const auto ours = grads_of([&](const Tensor& a, const Tensor& b) { return kronecker_apply(a, b, s); });
  const auto ref = grads_of([&](const Tensor& a, const Tensor& b) { return kronecker_fwd_ref(a, b, s); });
  expect_close(ours[0], ref[0], 1e-12, "second derivative, raw");
  expect_close(ours[1], ref[1], 1e-12, "second derivative, v");
}

TEST(KroneckerOp, BadInputsAreRefused) {
  KroneckerSpec s;
  s.m1 = 2;
  s.m2 = 2;
  const Tensor raw = randn({3, s.raw_size()}, 18), v = randn({3, 4}, 19);
  EXPECT_THROW(kronecker_apply(raw.narrow(1, 0, s.raw_size() - 1), v, s), c10::Error);
  EXPECT_THROW(kronecker_apply(raw, v.narrow(1, 0, 3), s), c10::Error);
  EXPECT_THROW(kronecker_apply(raw.narrow(0, 0, 2), v, s), c10::Error);
  EXPECT_THROW(kronecker_apply(raw.to(torch::kInt64), v.to(torch::kInt64), s), c10::Error);
  EXPECT_THROW(kronecker_fwd_cpu(raw.to(torch::kFloat32), v, s), c10::Error);  // mixed dtypes at the kernel
  KroneckerSpec bad = s;
  bad.act = "tanh";
  EXPECT_THROW(kronecker_apply(raw, v, bad), c10::Error);
  bad = s;
  bad.eps = 0;
  EXPECT_THROW(kronecker_apply(raw, v, bad), c10::Error);
}

}  // namespace
}  // namespace fprnn::ops
