// Householder/DPLR op: CPU kernels vs the float64 reference and explicit matrices, reference backward vs
// autograd, the autograd entry vs finite differences (u, alpha, v), strides, dtypes and input checks.
#include "fprnn/ops/householder.h"

#include "ops/householder/householder_common.h"
#include "testing.h"

#include <torch/torch.h>

#include <ostream>
#include <string>
#include <tuple>

namespace fprnn::ops {
namespace {

using fprnn::testing::check_gradients;
using fprnn::testing::expect_close;
using fprnn::testing::randn;
using torch::Tensor;

struct Case {
  bool sum_form;  // false: householder, true: dplr
  int64_t N, r, D;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << (c.sum_form ? "dplr" : "householder") << " N=" << c.N << " r=" << c.r << " D=" << c.D;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(c.sum_form ? "Dplr" : "Householder") + "_N" + std::to_string(c.N) + "_r" +
         std::to_string(c.r) + "_D" + std::to_string(c.D);
}

// Unit directions and α ∈ (0, 1), as the mixer produces them; float64.
std::tuple<Tensor, Tensor, Tensor> make_inputs(const Case& c, uint64_t seed) {
  Tensor u = randn({c.N, c.r, c.D}, seed);
  u = u / u.norm(2, -1, true);
  const Tensor alpha = torch::sigmoid(randn({c.N, c.r}, seed + 1));
  const Tensor v = randn({c.N, c.D}, seed + 2);
  return {u, alpha, v};
}

Tensor fwd_ref(bool sum_form, const Tensor& u, const Tensor& a, const Tensor& v) {
  return sum_form ? dplr_fwd_ref(u, a, v) : householder_fwd_ref(u, a, v);
}
Tensor fwd_cpu(bool sum_form, const Tensor& u, const Tensor& a, const Tensor& v) {
  return sum_form ? dplr_fwd_cpu(u, a, v) : householder_fwd_cpu(u, a, v);
}
std::tuple<Tensor, Tensor, Tensor> bwd_cpu(bool sum_form, const Tensor& u, const Tensor& a, const Tensor& v,
                                           const Tensor& g) {
  return sum_form ? dplr_bwd_cpu(u, a, v, g) : householder_bwd_cpu(u, a, v, g);
}
std::tuple<Tensor, Tensor, Tensor> bwd_ref(bool sum_form, const Tensor& u, const Tensor& a, const Tensor& v,
                                           const Tensor& g) {
  return sum_form ? detail::dplr_bwd_ref(u, a, v, g) : detail::householder_bwd_ref(u, a, v, g);
}
Tensor entry(bool sum_form, const Tensor& u, const Tensor& a, const Tensor& v) {
  return sum_form ? dplr_apply(u, a, v) : householder_apply(u, a, v);
}

// Q (N, D, D) built from explicit matrices: H_{r−1}⋯H_0 (householder) or I − 2 Σ α u uᵀ (dplr).
Tensor explicit_matrix(bool sum_form, const Tensor& u, const Tensor& alpha) {
  const int64_t N = u.size(0), r = u.size(1), D = u.size(2);
  const Tensor eye = torch::eye(D, torch::kFloat64).expand({N, D, D});
  Tensor Q = eye.clone();
  for (int64_t i = 0; i < r; ++i) {
    const Tensor ui = u.select(1, i);
    const Tensor P = 2 * alpha.select(1, i).view({N, 1, 1}) * ui.unsqueeze(-1) * ui.unsqueeze(-2);
    Q = sum_form ? Q - P : torch::matmul(eye - P, Q);
  }
  return Q;
}

class HouseholderOpTest : public ::testing::TestWithParam<Case> {};

TEST_P(HouseholderOpTest, RefMatchesExplicitMatrix) {
  const Case c = GetParam();
  const auto [u, a, v] = make_inputs(c, 10);
  const Tensor want = torch::matmul(explicit_matrix(c.sum_form, u, a), v.unsqueeze(-1)).squeeze(-1);
  expect_close(fwd_ref(c.sum_form, u, a, v), want, 1e-12, "ref vs explicit matrix");
}

TEST_P(HouseholderOpTest, CpuFwdMatchesRef) {
  const Case c = GetParam();
  const auto [u, a, v] = make_inputs(c, 20);
  const Tensor ref = fwd_ref(c.sum_form, u, a, v);
  // float64: only the summation order differs from the reference.
  expect_close(fwd_cpu(c.sum_form, u, a, v), ref, 1e-12, "float64");
  // float32: r dots of length D accumulate ~√D·2⁻²⁴ relative error each; well under 1e-5.
  const auto f = torch::kFloat32;
  expect_close(fwd_cpu(c.sum_form, u.to(f), a.to(f), v.to(f)), ref, 1e-5, "float32");
  // bfloat16 goes through the entry (computed in float32). Against the reference on the same rounded
  // inputs only the output's rounding to 8 mantissa bits remains: ≤ 2⁻⁹ ≈ 2e-3 relative per element,
  // so 5e-3 on the RMS ratio. (Against the unrounded inputs Q v can cancel, e.g. 1 − 2α ≈ 0 for r = 1,
  // and the input rounding alone exceeds any fixed tolerance.)
  const auto bf = torch::kBFloat16;
  const Tensor ub = u.to(bf), ab = a.to(bf), vb = v.to(bf);
  const Tensor out_bf = entry(c.sum_form, ub, ab, vb);
  EXPECT_EQ(out_bf.scalar_type(), bf);
  expect_close(out_bf, fwd_ref(c.sum_form, ub, ab, vb), 5e-3, "bfloat16");
}

TEST_P(HouseholderOpTest, RefBwdMatchesAutogradOfRef) {
  const Case c = GetParam();
  Tensor u, a, v;
  std::tie(u, a, v) = make_inputs(c, 30);
  const Tensor g = randn({c.N, c.D}, 33);
  u.requires_grad_(true);
  a.requires_grad_(true);
  v.requires_grad_(true);
  (fwd_ref(c.sum_form, u, a, v) * g).sum().backward();
  torch::NoGradGuard no_grad;
  const auto [du, da, dv] = bwd_ref(c.sum_form, u, a, v, g);
  expect_close(du, u.grad(), 1e-12, "du");
  expect_close(da, a.grad(), 1e-12, "dalpha");
  expect_close(dv, v.grad(), 1e-12, "dv");
}

TEST_P(HouseholderOpTest, CpuBwdMatchesRef) {
  const Case c = GetParam();
  const auto [u, a, v] = make_inputs(c, 40);
  const Tensor g = randn({c.N, c.D}, 44);
  const auto [du_ref, da_ref, dv_ref] = bwd_ref(c.sum_form, u, a, v, g);
  {
    const auto [du, da, dv] = bwd_cpu(c.sum_form, u, a, v, g);
    expect_close(du, du_ref, 1e-12, "float64 du");
    expect_close(da, da_ref, 1e-12, "float64 dalpha");
    expect_close(dv, dv_ref, 1e-12, "float64 dv");
  }
  // float32: same rounding argument as the forward.
  const auto f = torch::kFloat32;
  const auto [du, da, dv] = bwd_cpu(c.sum_form, u.to(f), a.to(f), v.to(f), g.to(f));
  expect_close(du, du_ref, 1e-5, "float32 du");
  expect_close(da, da_ref, 1e-5, "float32 dalpha");
  expect_close(dv, dv_ref, 1e-5, "float32 dv");
}

TEST_P(HouseholderOpTest, AutogradMatchesFiniteDifferences) {
  const Case c = GetParam();
  if (c.N * c.r * c.D > 400) GTEST_SKIP() << "finite differences run on the small shapes only";
  Tensor u, a, v;
  std::tie(u, a, v) = make_inputs(c, 50);
  const bool sum_form = c.sum_form;
  // Central differences in float64 with step 1e-6: truncation O(h²) and rounding O(1e-16/h) ≪ 1e-7.
  check_gradients([&] { return entry(sum_form, u, a, v); }, {u, a, v}, 1e-7, case_name({c, 0}));
}

TEST_P(HouseholderOpTest, NonContiguousInputs) {
  const Case c = GetParam();
  const auto [u, a, v] = make_inputs(c, 60);
  // Same values behind other strides: u via a transposed buffer, alpha and v as strided slices.
  const Tensor u_nc = u.transpose(1, 2).contiguous().transpose(1, 2);
  const Tensor a_nc = torch::stack({a, torch::zeros_like(a)}, -1).select(-1, 0);
  const Tensor v_nc = torch::stack({v, torch::zeros_like(v)}, -1).select(-1, 0);
  if (c.r > 1 && c.D > 1) {
    EXPECT_FALSE(u_nc.is_contiguous());
  }
  if (a.numel() > 1) {
    EXPECT_FALSE(a_nc.is_contiguous());
  }
  if (v.numel() > 1) {
    EXPECT_FALSE(v_nc.is_contiguous());
  }
  expect_close(entry(c.sum_form, u_nc, a_nc, v_nc), fwd_ref(c.sum_form, u, a, v), 1e-12, "forward");

  // Gradients through strided inputs equal those through contiguous ones.
  const Tensor g = randn({c.N, c.D}, 66);
  auto grads = [&](const Tensor& uu, const Tensor& aa, const Tensor& vv) {
    const Tensor ul = uu.detach().requires_grad_(true), al = aa.detach().requires_grad_(true),
                 vl = vv.detach().requires_grad_(true);
    (entry(c.sum_form, ul, al, vl) * g).sum().backward();
    return std::make_tuple(ul.grad(), al.grad(), vl.grad());
  };
  const auto [du, da, dv] = grads(u_nc, a_nc, v_nc);
  const auto [du_c, da_c, dv_c] = grads(u, a, v);
  expect_close(du, du_c, 1e-12, "du");
  expect_close(da, da_c, 1e-12, "dalpha");
  expect_close(dv, dv_c, 1e-12, "dv");
}

INSTANTIATE_TEST_SUITE_P(Shapes, HouseholderOpTest,
                         ::testing::Values(Case{false, 1, 1, 1}, Case{false, 1, 1, 5}, Case{false, 3, 2, 7},
                                           Case{false, 4, 3, 16}, Case{false, 2, 3, 33}, Case{false, 257, 3, 67},
                                           Case{true, 1, 1, 1}, Case{true, 1, 1, 5}, Case{true, 3, 2, 7},
                                           Case{true, 4, 3, 16}, Case{true, 2, 3, 33}, Case{true, 257, 3, 67}),
                         case_name);

TEST(HouseholderOp, Bfloat16GradientsAreComputedInFloat32) {
  for (bool sum_form : {false, true}) {
    Tensor u, a, v;
    std::tie(u, a, v) = make_inputs({sum_form, 6, 3, 13}, 120);
    const auto bf = torch::kBFloat16;
    const Tensor ub = u.to(bf).requires_grad_(true), ab = a.to(bf).requires_grad_(true),
                 vb = v.to(bf).requires_grad_(true);
    const Tensor g = randn({6, 13}, 121).to(bf);
    entry(sum_form, ub, ab, vb).backward(g);
    ASSERT_EQ(ub.grad().scalar_type(), bf);
    ASSERT_EQ(vb.grad().scalar_type(), bf);
    // Only the rounding of the gradients to bfloat16 separates them from the float64 reference
    // backward on the same rounded inputs (see CpuFwdMatchesRef).
    const auto [du, da, dv] = bwd_ref(sum_form, ub.detach(), ab.detach(), vb.detach(), g);
    expect_close(ub.grad(), du, 5e-3, "bfloat16 du");
    expect_close(ab.grad(), da, 5e-3, "bfloat16 dalpha");
    expect_close(vb.grad(), dv, 5e-3, "bfloat16 dv");
  }
}

TEST(HouseholderOp, RankOneEqualsDplr) {
  const auto [u, a, v] = make_inputs({false, 5, 1, 9}, 70);
  expect_close(householder_apply(u, a, v), dplr_apply(u, a, v), 1e-14, "r = 1");
}

TEST(HouseholderOp, ContractsUnitDirections) {
  // ‖Q v‖ ≤ ‖v‖ for unit u and α ∈ (0, 1), any r (each H_i has eigenvalues 1 and 1 − 2α_i).
  const auto [u, a, v] = make_inputs({false, 64, 4, 12}, 80);
  const Tensor ratio = householder_apply(u, a, v).norm(2, -1) / v.norm(2, -1);
  EXPECT_LE(ratio.max().item<double>(), 1.0 + 1e-12);
}

TEST(HouseholderOp, ArbitraryDirections) {
  // The op takes any u (not only unit vectors); compare with the explicit matrices.
  const Tensor u = randn({3, 2, 6}, 90), a = randn({3, 2}, 91), v = randn({3, 6}, 92);
  for (bool sum_form : {false, true}) {
    const Tensor want = torch::matmul(explicit_matrix(sum_form, u, a), v.unsqueeze(-1)).squeeze(-1);
    expect_close(entry(sum_form, u, a, v), want, 1e-12, sum_form ? "dplr" : "householder");
    check_gradients([&] { return entry(sum_form, u, a, v); }, {u, a, v}, 1e-7,
                    sum_form ? "dplr grads" : "householder grads");
  }
}

TEST(HouseholderOp, ZeroTokensAndZeroRank) {
  for (bool sum_form : {false, true}) {
    const auto f64 = torch::kFloat64;
    const Tensor empty =
        entry(sum_form, torch::zeros({0, 2, 4}, f64), torch::zeros({0, 2}, f64), torch::zeros({0, 4}, f64));
    EXPECT_EQ(empty.sizes(), (c10::IntArrayRef{0, 4}));
    const Tensor v = randn({3, 4}, 93);
    expect_close(entry(sum_form, torch::zeros({3, 0, 4}, torch::kFloat64), torch::zeros({3, 0}, torch::kFloat64), v),
                 v, 0.0, "r = 0 is the identity");
  }
}

TEST(HouseholderOp, DoubleBackwardMatchesFiniteDifferences) {
  // With create_graph the Function differentiates through the reference backward.
  for (bool sum_form : {false, true}) {
    Tensor u, a, v;
    std::tie(u, a, v) = make_inputs({sum_form, 2, 2, 4}, 100);
    const Tensor w = randn({2, 4}, 101);
    auto first_grads = [&] {
      torch::AutoGradMode enable(true);
      const Tensor loss = (entry(sum_form, u, a, v) * w).sum();
      const auto g = torch::autograd::grad({loss}, {u, a, v}, {}, /*retain_graph=*/true, /*create_graph=*/true);
      return torch::cat({g[0].flatten(), g[1].flatten(), g[2].flatten()});
    };
    check_gradients(first_grads, {u, a, v}, 1e-7, sum_form ? "dplr gradgrad" : "householder gradgrad");
  }
}

// Expects fn to throw a c10::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << *parts.begin() << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg;
  }
}

TEST(HouseholderOp, BadInputsThrow) {
  const Tensor u = randn({3, 2, 5}, 110), a = randn({3, 2}, 111), v = randn({3, 5}, 112);
  for (bool sum_form : {false, true}) {
    const std::string op = sum_form ? "dplr" : "householder";
    expect_error([&] { entry(sum_form, u.select(1, 0), a, v); }, {op, "u must be (N, r, D)", "[3, 5]"});
    expect_error([&] { entry(sum_form, u, a.narrow(0, 0, 2), v); }, {op, "alpha must be (N, r) = (3, 2)", "[2, 2]"});
    expect_error([&] { entry(sum_form, u, a.narrow(1, 0, 1), v); }, {op, "alpha", "[3, 1]"});
    expect_error([&] { entry(sum_form, u, a, v.narrow(1, 0, 4)); }, {op, "v must be (N, D) = (3, 5)", "[3, 4]"});
    expect_error([&] { entry(sum_form, u, a, v.narrow(0, 0, 1)); }, {op, "v must be", "[1, 5]"});
    expect_error([&] { entry(sum_form, u, a.to(torch::kFloat32), v); }, {op, "share a dtype"});
    expect_error([&] { entry(sum_form, u.to(torch::kInt64), a.to(torch::kInt64), v.to(torch::kInt64)); },
                 {op, "dtype must be float32, float64 or bfloat16"});
    expect_error([&] { entry(sum_form, u.to(torch::kMeta), a.to(torch::kMeta), v.to(torch::kMeta)); },
                 {op, "no kernel for device"});
    // The CPU kernels take contiguous float32/float64 only.
    expect_error([&] { fwd_cpu(sum_form, u.transpose(1, 2).contiguous().transpose(1, 2), a, v); },
                 {op, "contiguous"});
    expect_error([&] { fwd_cpu(sum_form, u.to(torch::kBFloat16), a.to(torch::kBFloat16), v.to(torch::kBFloat16)); },
                 {op, "float32 or float64"});
    expect_error([&] { bwd_cpu(sum_form, u, a, v, v.narrow(1, 0, 4).contiguous()); }, {op, "grad must be (N, D)"});
  }
}

}  // namespace
}  // namespace fprnn::ops
