// Tests for input_gates (bx = silu(b) x, λ = σ(l + l_bias), 1 − λ) and gated_rmsnorm (y = w g / rms(g),
// g = silu(z) silu(c) h): the float64 references against a hand-computed row and finite differences, the ATen
// composites (the CPU path) against the references, forward and backward, argument checks; on a GPU the CUDA
// kernels against the references in float64, float32 and bfloat16, with vectorised and element-wise rows, a
// strided z, undefined upstream gradients, more rows than one grid pass, and a deterministic dweight.
#include "fprnn/ops/gates.h"
#include "testing.h"

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

namespace fprnn::ops {
namespace {

using fprnn::testing::check_gradients;
using fprnn::testing::expect_close;
using fprnn::testing::numerical_grad;
using fprnn::testing::randn;

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// Tolerance on the RMS ratio of a result in `dtype` against the float64 reference fed the same rounded inputs.
double tolerance(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat64: return 1e-12;  // the same formulas up to summation order
    case torch::kFloat32: return 2e-6;   // float32 accumulation over D ≤ 1024 terms
    default: return 8e-3;                // bfloat16 outputs (unit roundoff 2^-9): rounding of the last bit
  }
}

struct GateArgs {
  torch::Tensor b, x, l, l_bias;
};
GateArgs gate_args(int64_t N, int64_t D, uint64_t seed, torch::Dtype dtype = torch::kFloat64) {
  return {randn({N, D}, seed, dtype), randn({N, D}, seed + 1, dtype), randn({N, D}, seed + 2, dtype),
          (0.5 * randn({D}, seed + 3)).to(dtype)};
}

struct NormArgs {
  torch::Tensor z, c, h, w;
};
NormArgs norm_args(std::vector<int64_t> shape, uint64_t seed, torch::Dtype dtype = torch::kFloat64) {
  const int64_t D = shape.back();
  return {randn(shape, seed, dtype), randn(shape, seed + 1, dtype), randn(shape, seed + 2, dtype),
          (1.0 + 0.3 * randn({D}, seed + 3))};  // the weight stays float64 here; converted where needed
}

// ---- references -------------------------------------------------------------------------------------

TEST(GatesRef, HandRow) {
  const auto b = torch::tensor({0.5, -1.0}, torch::kFloat64).view({1, 2});
  const auto x = torch::tensor({2.0, 3.0}, torch::kFloat64).view({1, 2});
  const auto l = torch::tensor({0.0, 1.0}, torch::kFloat64).view({1, 2});
  const auto lb = torch::tensor({0.25, -2.0}, torch::kFloat64);
  auto [bx, lam, oml] = input_gates_fwd_ref(b, x, l, lb);
  EXPECT_NEAR(bx[0][0].item<double>(), 0.5 * sigmoid(0.5) * 2.0, 1e-15);
  EXPECT_NEAR(bx[0][1].item<double>(), -1.0 * sigmoid(-1.0) * 3.0, 1e-15);
  EXPECT_NEAR(lam[0][0].item<double>(), sigmoid(0.25), 1e-15);
  EXPECT_NEAR(lam[0][1].item<double>(), sigmoid(-1.0), 1e-15);
  EXPECT_NEAR(oml[0][1].item<double>(), 1.0 - sigmoid(-1.0), 1e-15);

  // gated_rmsnorm on one row of two: g = silu(z) silu(c) h, y = w g / √(mean g² + eps).
  const auto z = torch::tensor({1.0, -0.5}, torch::kFloat64).view({1, 2});
  const auto c = torch::tensor({0.3, 2.0}, torch::kFloat64).view({1, 2});
  const auto h = torch::tensor({-1.5, 0.7}, torch::kFloat64).view({1, 2});
  const auto w = torch::tensor({2.0, 0.5}, torch::kFloat64);
  const double eps = 1e-3;
  double g[2];
  for (int d = 0; d < 2; ++d) {
    const double zd = z[0][d].item<double>(), cd = c[0][d].item<double>();
    g[d] = zd * sigmoid(zd) * cd * sigmoid(cd) * h[0][d].item<double>();
  }
  const double r = 1.0 / std::sqrt((g[0] * g[0] + g[1] * g[1]) / 2.0 + eps);
  const auto y = gated_rmsnorm_fwd_ref(z, c, h, w, eps);
  EXPECT_NEAR(y[0][0].item<double>(), 2.0 * g[0] * r, 1e-15);
  EXPECT_NEAR(y[0][1].item<double>(), 0.5 * g[1] * r, 1e-15);
}

// The references' backward against finite differences of their forward.
TEST(GatesRef, BackwardMatchesFiniteDifferences) {
  const GateArgs a = gate_args(3, 5, 10);
  const auto gb = randn({3, 5}, 20), gl = randn({3, 5}, 21), go = randn({3, 5}, 22);
  auto [db, dx, dl, dlb] = input_gates_bwd_ref(gb, gl, go, a.b, a.x, a.l, a.l_bias);
  for (int which = 0; which < 4; ++which) {
    std::vector<torch::Tensor> v{a.b.clone(), a.x.clone(), a.l.clone(), a.l_bias.clone()};
    const torch::Tensor num = numerical_grad(
        [&] {
          auto [bx, lam, oml] = input_gates_fwd_ref(v[0], v[1], v[2], v[3]);
          return (bx * gb).sum() + (lam * gl).sum() + (oml * go).sum();
        },
        v[which]);
    expect_close(std::vector<torch::Tensor>{db, dx, dl, dlb}[which], num, 1e-8,
                 "input_gates_bwd_ref d" + std::to_string(which));
  }

  const NormArgs n = norm_args({2, 3, 6}, 30);
  const auto gy = randn({2, 3, 6}, 31);
  auto [dz, dc, dh, dw] = gated_rmsnorm_bwd_ref(gy, n.z, n.c, n.h, n.w, 1e-2);
  const std::vector<torch::Tensor> grads{dz, dc, dh, dw};
  for (int which = 0; which < 4; ++which) {
    std::vector<torch::Tensor> v{n.z.clone(), n.c.clone(), n.h.clone(), n.w.clone()};
    const torch::Tensor num =
        numerical_grad([&] { return gated_rmsnorm_fwd_ref(v[0], v[1], v[2], v[3], 1e-2) * gy; }, v[which]);
    expect_close(grads[which], num, 1e-8, "gated_rmsnorm_bwd_ref d" + std::to_string(which));
  }
}

// ---- the CPU path (ATen composites) -----------------------------------------------------------------

TEST(GatesEntry, CpuCompositesMatchTheReferences) {
  const GateArgs a = gate_args(4, 7, 40);
  std::vector<torch::Tensor> in{a.b.clone().requires_grad_(), a.x.clone().requires_grad_(),
                                a.l.clone().requires_grad_(), a.l_bias.clone().requires_grad_()};
  auto [bx, lam, oml] = input_gates(in[0], in[1], in[2], in[3]);
  auto [rbx, rlam, roml] = input_gates_fwd_ref(a.b, a.x, a.l, a.l_bias);
  expect_close(bx, rbx, 1e-14, "bx");
  expect_close(lam, rlam, 1e-14, "lambda");
  expect_close(oml, roml, 1e-14, "1 - lambda");
  const auto gb = randn({4, 7}, 41), gl = randn({4, 7}, 42), go = randn({4, 7}, 43);
  ((bx * gb).sum() + (lam * gl).sum() + (oml * go).sum()).backward();
  auto [db, dx, dl, dlb] = input_gates_bwd_ref(gb, gl, go, a.b, a.x, a.l, a.l_bias);
  expect_close(in[0].grad(), db, 1e-13, "db");
  expect_close(in[1].grad(), dx, 1e-13, "dx");
  expect_close(in[2].grad(), dl, 1e-13, "dl");
  expect_close(in[3].grad(), dlb, 1e-13, "dl_bias");

  const NormArgs n = norm_args({3, 4, 9}, 50);
  check_gradients([&] { return gated_rmsnorm(n.z, n.c, n.h, n.w, 1e-3); }, {n.z, n.c, n.h, n.w}, 1e-7,
                  "gated_rmsnorm (CPU) vs finite differences");
  expect_close(gated_rmsnorm(n.z, n.c, n.h, n.w, 1e-3), gated_rmsnorm_fwd_ref(n.z, n.c, n.h, n.w, 1e-3), 1e-14,
               "gated_rmsnorm (CPU) vs ref");
}

TEST(GatesEntry, BadInputsThrow) {
  const GateArgs a = gate_args(2, 4, 60);
  const auto& expect_throw = fprnn::testing::expect_throws_with;
  expect_throw([&] { input_gates(a.b, a.x.narrow(1, 0, 3), a.l, a.l_bias); }, "x must have the sizes of b");
  expect_throw([&] { input_gates(a.b, a.x, a.l, torch::zeros({5}, torch::kFloat64)); }, "l_bias must be (D)");
  expect_throw([&] { input_gates(a.b, a.x.to(torch::kFloat32), a.l, a.l_bias); }, "x must have the dtype of b");
  expect_throw([&] { input_gates(a.b.to(torch::kInt64), a.x.to(torch::kInt64), a.l.to(torch::kInt64), a.l_bias); },
               "expected float32, float64 or bfloat16");
  const NormArgs n = norm_args({2, 4}, 61);
  expect_throw([&] { gated_rmsnorm(n.z, n.c, n.h, n.w, 0.0); }, "eps must be positive");
  expect_throw([&] { gated_rmsnorm(n.z, n.c, n.h.view({4, 2}), n.w, 1e-3); }, "h must have the sizes of z");
  expect_throw([&] { gated_rmsnorm(n.z, n.c, n.h, torch::ones({3}, torch::kFloat64), 1e-3); }, "weight must be (D)");
  expect_throw([&] { gated_rmsnorm(n.z, n.c, n.h, torch::Tensor(), 1e-3); }, "weight must be (D)");
}

// ---- CUDA kernels -----------------------------------------------------------------------------------

struct CudaCase {
  int64_t N, D;
  torch::Dtype dtype;
};

// Rows of 24 take the vectorised kernels in every dtype; 13 the element-wise ones; 5000 rows are more than one
// pass of the grid (the per-block dweight partials sum several rows per warp).
std::vector<CudaCase> cuda_cases() {
  std::vector<CudaCase> cases;
  for (const auto dtype : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
    for (const auto& [N, D] : std::vector<std::pair<int64_t, int64_t>>{{7, 24}, {9, 13}, {5000, 24}, {64, 1024}}) {
      cases.push_back({N, D, dtype});
    }
  }
  return cases;
}

std::string case_name(const CudaCase& c) {
  return std::to_string(c.N) + "x" + std::to_string(c.D) + " " + std::string(c10::toString(c.dtype));
}

TEST(GatesCuda, InputGatesMatchTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto& cs : cuda_cases()) {
    const std::string what = "input_gates " + case_name(cs);
    const GateArgs a = gate_args(cs.N, cs.D, 70, cs.dtype);
    auto [bx, lam, oml] = input_gates_fwd_cuda(a.b.cuda(), a.x.cuda(), a.l.cuda(), a.l_bias.cuda());
    auto [rbx, rlam, roml] = input_gates_fwd_ref(a.b, a.x, a.l, a.l_bias);
    const double tol = tolerance(cs.dtype);
    expect_close(bx.cpu().to(torch::kFloat64), rbx, tol, what + ": bx");
    expect_close(lam.cpu().to(torch::kFloat64), rlam, tol, what + ": lambda");
    expect_close(oml.cpu().to(torch::kFloat64), roml, tol, what + ": 1 - lambda");
    const auto gb = randn({cs.N, cs.D}, 71, cs.dtype), gl = randn({cs.N, cs.D}, 72, cs.dtype),
               go = randn({cs.N, cs.D}, 73, cs.dtype);
    auto [db, dx, dl, dlb] = input_gates_bwd_cuda(gb.cuda(), gl.cuda(), go.cuda(), a.b.cuda(), a.x.cuda(), lam);
    // The reference recomputes λ from l; the kernel takes the forward's (rounded) λ: feed the reference the same
    // λ through l = logit(λ) − l_bias would add its own rounding, so compare at the dtype's tolerance.
    auto [rdb, rdx, rdl, rdlb] = input_gates_bwd_ref(gb, gl, go, a.b, a.x, a.l, a.l_bias);
    expect_close(db.cpu().to(torch::kFloat64), rdb, tol, what + ": db");
    expect_close(dx.cpu().to(torch::kFloat64), rdx, tol, what + ": dx");
    expect_close(dl.cpu().to(torch::kFloat64), rdl, cs.dtype == torch::kBFloat16 ? 3e-2 : 10 * tol, what + ": dl");
    expect_close(dlb.cpu().to(torch::kFloat64), rdlb, cs.dtype == torch::kBFloat16 ? 3e-2 : 10 * tol,
                 what + ": dl_bias");
    // Undefined upstream gradients count as zeros.
    auto [db0, dx0, dl0, dlb0] =
        input_gates_bwd_cuda(torch::Tensor(), gl.cuda(), torch::Tensor(), a.b.cuda(), a.x.cuda(), lam);
    EXPECT_EQ(db0.abs().max().item<double>(), 0.0) << what;
    EXPECT_EQ(dx0.abs().max().item<double>(), 0.0) << what;
    auto [rdb1, rdx1, rdl1, rdlb1] = input_gates_bwd_ref(torch::Tensor(), gl, torch::Tensor(), a.b, a.x, a.l, a.l_bias);
    expect_close(dl0.cpu().to(torch::kFloat64), rdl1, cs.dtype == torch::kBFloat16 ? 3e-2 : 10 * tol,
                 what + ": dl with only g_lambda");
  }
}

TEST(GatesCuda, GatedRmsNormMatchesTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto& cs : cuda_cases()) {
    for (const bool strided : {false, true}) {
      const std::string what = "gated_rmsnorm " + case_name(cs) + (strided ? " strided z" : "");
      const NormArgs n = norm_args({cs.N, cs.D}, 80, cs.dtype);
      const auto acc = cs.dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
      const torch::Tensor w = n.w.to(acc).cuda();
      // z as the second half of a (N, 2D) tensor: rows 2D apart.
      torch::Tensor z = n.z.cuda();
      if (strided) z = torch::cat({randn({cs.N, cs.D}, 81, cs.dtype).cuda(), z}, 1).narrow(1, cs.D, cs.D);
      const double eps = 1e-5;
      const auto y = gated_rmsnorm_fwd_cuda(z, n.c.cuda(), n.h.cuda(), w, eps);
      const double tol = tolerance(cs.dtype);
      expect_close(y.cpu().to(torch::kFloat64), gated_rmsnorm_fwd_ref(n.z, n.c, n.h, w.cpu(), eps), tol, what + ": y");
      const auto gy = randn({cs.N, cs.D}, 82, cs.dtype);
      auto [dz, dc, dh, dw] = gated_rmsnorm_bwd_cuda(gy.cuda(), z, n.c.cuda(), n.h.cuda(), w, eps);
      auto [rdz, rdc, rdh, rdw] = gated_rmsnorm_bwd_ref(gy, n.z, n.c, n.h, w.cpu(), eps);
      // The backward's dg = r w gy − (r³ S / D) g is a difference: in bfloat16 its rounding is relative to the
      // larger of the two terms.
      const double btol = cs.dtype == torch::kBFloat16 ? 2e-2 : 10 * tol;
      expect_close(dz.cpu().to(torch::kFloat64), rdz, btol, what + ": dz");
      expect_close(dc.cpu().to(torch::kFloat64), rdc, btol, what + ": dc");
      expect_close(dh.cpu().to(torch::kFloat64), rdh, btol, what + ": dh");
      expect_close(dw.cpu().to(torch::kFloat64), rdw, btol, what + ": dweight");
      // dweight is summed in a fixed order: a second call gives the same bits.
      auto again = gated_rmsnorm_bwd_cuda(gy.cuda(), z, n.c.cuda(), n.h.cuda(), w, eps);
      EXPECT_TRUE(torch::equal(std::get<3>(again), dw)) << what << ": dweight not deterministic";
    }
  }
}

// The block-per-row kernels against the warp-per-row loops (the same terms summed in another order) and the
// reference: every width that gives a block of 32 to 512 threads (and some that do not: the loop runs both
// times, bit for bit), a strided z, more rows than the grid (each block walks several), and dweight's partial
// rows summed deterministically.
TEST(GatesCuda, GatedRmsNormBlockKernelsMatchTheWarpKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const int64_t D : {24, 256, 512, 520, 776, 1024, 1536, 2048, 4096, 8192, 2056}) {
      for (const bool strided : {false, true}) {
        const int64_t N = D >= 4096 ? 3000 : 37;  // more rows than the grid at the widest blocks
        const std::string what = "gated_rmsnorm " + std::string(c10::toString(dtype)) + " D = " + std::to_string(D) +
                                 (strided ? " strided z" : "");
        const NormArgs n = norm_args({N, D}, 120, dtype);
        const torch::Tensor w = n.w.to(torch::kFloat32).cuda();
        torch::Tensor z = n.z.cuda();
        if (strided) z = torch::cat({z, randn({N, D}, 121, dtype).cuda()}, 1).narrow(1, 0, D);
        const torch::Tensor c = n.c.cuda(), h = n.h.cuda(), gy = randn({N, D}, 122, dtype).cuda();
        const auto y = gated_rmsnorm_fwd_cuda(z, c, h, w, 1e-5, true);
        const auto y_loop = gated_rmsnorm_fwd_cuda(z, c, h, w, 1e-5, false);
        const auto reg = gated_rmsnorm_bwd_cuda(gy, z, c, h, w, 1e-5, true);
        const auto loop = gated_rmsnorm_bwd_cuda(gy, z, c, h, w, 1e-5, false);
        const int64_t threads = D / (dtype == torch::kBFloat16 ? 8 : 4);
        if (threads % 32 != 0 || threads > 512) {
          EXPECT_TRUE(torch::equal(y, y_loop)) << what << ": y (the warp kernel both times)";
          EXPECT_TRUE(torch::equal(std::get<0>(reg), std::get<0>(loop))) << what << ": dz (the warp kernel both times)";
          EXPECT_TRUE(torch::equal(std::get<3>(reg), std::get<3>(loop))) << what << ": dweight (the warp kernel both times)";
        }
        // Agreement to the rounding of the output dtype (the row sums differ in their last bits).
        const double tight = dtype == torch::kBFloat16 ? 4e-3 : 1e-6;
        expect_close(y.cpu().to(torch::kFloat64), y_loop.cpu().to(torch::kFloat64), tight, what + ": y");
        expect_close(std::get<0>(reg).cpu().to(torch::kFloat64), std::get<0>(loop).cpu().to(torch::kFloat64),
                     dtype == torch::kBFloat16 ? 1e-2 : 1e-5, what + ": dz");
        expect_close(std::get<1>(reg).cpu().to(torch::kFloat64), std::get<1>(loop).cpu().to(torch::kFloat64),
                     dtype == torch::kBFloat16 ? 1e-2 : 1e-5, what + ": dc");
        expect_close(std::get<2>(reg).cpu().to(torch::kFloat64), std::get<2>(loop).cpu().to(torch::kFloat64),
                     dtype == torch::kBFloat16 ? 1e-2 : 1e-5, what + ": dh");
        expect_close(std::get<3>(reg).cpu().to(torch::kFloat64), std::get<3>(loop).cpu().to(torch::kFloat64), 1e-5,
                     what + ": dweight");
        EXPECT_TRUE(torch::equal(std::get<3>(reg), std::get<3>(gated_rmsnorm_bwd_cuda(gy, z, c, h, w, 1e-5, true))))
            << what << ": dweight not deterministic";
        if (D == 1536 || D == 2048 || D == 8192) {
          const double tol = tolerance(dtype), btol = dtype == torch::kBFloat16 ? 2e-2 : 10 * tol;
          expect_close(y.cpu().to(torch::kFloat64), gated_rmsnorm_fwd_ref(n.z, n.c, n.h, w.cpu(), 1e-5), tol,
                       what + ": y against the reference");
          const auto ref = gated_rmsnorm_bwd_ref(gy.cpu(), n.z, n.c, n.h, w.cpu(), 1e-5);
          expect_close(std::get<0>(reg).cpu().to(torch::kFloat64), std::get<0>(ref), btol, what + ": dz against the reference");
          expect_close(std::get<2>(reg).cpu().to(torch::kFloat64), std::get<2>(ref), btol, what + ": dh against the reference");
        }
      }
    }
  }
}

// The autograd entries on a GPU: float64 gradients of the fused path against the references, and the same
// outputs as the CPU composites.
TEST(GatesCuda, EntriesMatchTheReferencesThroughAutograd) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const GateArgs a = gate_args(12, 16, 90);
  std::vector<torch::Tensor> in{a.b.cuda().requires_grad_(), a.x.cuda().requires_grad_(),
                                a.l.cuda().requires_grad_(), a.l_bias.to(torch::kFloat32).cuda().requires_grad_()};
  // l_bias as a float32 parameter with float64 activations: the entry converts it (and its gradient back).
  auto [bx, lam, oml] = input_gates(in[0], in[1], in[2], in[3]);
  const auto gb = randn({12, 16}, 91), gl = randn({12, 16}, 92);
  ((bx * gb.cuda()).sum() + (lam * gl.cuda()).sum()).backward();  // 1 − λ unused: its gradient is undefined
  auto [db, dx, dl, dlb] = input_gates_bwd_ref(gb, gl, torch::Tensor(), a.b, a.x, a.l,
                                                a.l_bias.to(torch::kFloat32).to(torch::kFloat64));
  expect_close(in[0].grad().cpu(), db, 1e-12, "entry db");
  expect_close(in[1].grad().cpu(), dx, 1e-12, "entry dx");
  expect_close(in[2].grad().cpu(), dl, 1e-12, "entry dl");
  ASSERT_EQ(in[3].grad().scalar_type(), torch::kFloat32);
  expect_close(in[3].grad().cpu().to(torch::kFloat64), dlb, 1e-6, "entry dl_bias");

  // gated_rmsnorm with (B, T, D) inputs, z a column slice as FPRNN passes it, a float32 weight.
  const NormArgs n = norm_args({3, 5, 16}, 93);
  const torch::Tensor zz = torch::cat({n.z, randn({3, 5, 16}, 94)}, -1).cuda().requires_grad_();
  const torch::Tensor c = n.c.cuda().requires_grad_(), h = n.h.cuda().requires_grad_();
  const torch::Tensor w = n.w.cuda().requires_grad_();
  const auto y = gated_rmsnorm(zz.narrow(-1, 0, 16), c, h, w, 1e-4);
  expect_close(y.cpu(), gated_rmsnorm_aten(n.z, n.c, n.h, n.w, 1e-4), 1e-13, "entry y vs CPU composite");
  const auto gy = randn({3, 5, 16}, 95);
  (y * gy.cuda()).sum().backward();
  auto [dz, dc, dh, dw] = gated_rmsnorm_bwd_ref(gy, n.z, n.c, n.h, n.w, 1e-4);
  expect_close(zz.grad().cpu().narrow(-1, 0, 16), dz, 1e-12, "entry dz");
  EXPECT_EQ(zz.grad().cpu().narrow(-1, 16, 16).abs().max().item<double>(), 0.0);
  expect_close(c.grad().cpu(), dc, 1e-12, "entry dc");
  expect_close(h.grad().cpu(), dh, 1e-12, "entry dh");
  expect_close(w.grad().cpu(), dw, 1e-12, "entry dweight");
}

// column_sum_cuda against a float64 sum of the same values: vectorised (D = 24, 1024) and element-wise (13)
// columns, one slab (7 rows) and many (5000, with a partial last slab), every dtype; and the same bits twice.
TEST(GatesCuda, ColumnSumMatchesAFloat64Sum) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto& cs : cuda_cases()) {
    const std::string what = "column_sum " + case_name(cs);
    const torch::Tensor m = randn({cs.N, cs.D}, 100, cs.dtype);
    const torch::Tensor got = column_sum_cuda(m.cuda());
    ASSERT_EQ(got.scalar_type(), cs.dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32) << what;
    expect_close(got.cpu().to(torch::kFloat64), m.to(torch::kFloat64).sum(0), cs.dtype == torch::kFloat64 ? 1e-13 : 1e-6,
                 what);
    EXPECT_TRUE(torch::equal(column_sum_cuda(m.cuda()), got)) << what << ": not deterministic";
  }
  EXPECT_EQ(column_sum_cuda(torch::zeros({0, 5}, torch::kCUDA)).abs().sum().item<double>(), 0.0);
  EXPECT_THROW(column_sum_cuda(torch::zeros({4, 6}, torch::kCUDA).t()), c10::Error) << "not contiguous";
}

// linear_rows = b + x wᵀ with its own backward on CUDA: float64 gradients against finite differences and against
// addmm's autograd, w as a column slice (the layer passes a half of the mixer's weight); the CPU entry is addmm.
TEST(GatesCuda, LinearRowsGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Tensor x = randn({37, 6}, 110), wide = randn({9, 12}, 111), b = randn({9}, 112);
  const auto cuda_fn = [&](const std::vector<torch::Tensor>& in) {
    return linear_rows(in[0].cuda(), in[1].cuda().narrow(1, 3, 6), in[2].cuda()).cpu();
  };
  std::vector<torch::Tensor> in{x.clone().requires_grad_(), wide.clone().requires_grad_(), b.clone().requires_grad_()};
  check_gradients([&] { return cuda_fn(in); }, in, 1e-7, "linear_rows on CUDA");
  std::vector<torch::Tensor> ref{x.clone().requires_grad_(), wide.clone().requires_grad_(), b.clone().requires_grad_()};
  std::vector<torch::Tensor> in2{x.clone().requires_grad_(), wide.clone().requires_grad_(), b.clone().requires_grad_()};
  const torch::Tensor g = randn({37, 9}, 113);
  (cuda_fn(in2) * g).sum().backward();
  (torch::addmm(ref[2], ref[0], ref[1].narrow(1, 3, 6).t()) * g).sum().backward();
  for (int k = 0; k < 3; ++k) expect_close(in2[k].grad(), ref[k].grad(), 1e-13, "linear_rows grad " + std::to_string(k));
  expect_close(linear_rows(x, wide.narrow(1, 3, 6), b), torch::addmm(b, x, wide.narrow(1, 3, 6).t()), 0.0, "CPU entry");
  EXPECT_THROW(linear_rows(x, wide, b), c10::Error) << "K mismatch";
}

}  // namespace
}  // namespace fprnn::ops
