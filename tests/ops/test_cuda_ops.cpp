// CUDA kernels against the CPU references: the scan (single-pass and chunked paths, both directions,
// every dtype), the Householder/DPLR application and the fused Kronecker mixer, forward and backward. Skipped without a GPU; run on
// the GPU machine before a CUDA change lands.
#include "testing.h"

#include "fprnn/common.h"
#include "fprnn/ops/conv1d.h"
#include "fprnn/ops/fp_step.h"
#include "fprnn/ops/householder.h"
#include "fprnn/ops/kronecker.h"
#include "fprnn/ops/linrec.h"
#ifdef FPRNN_WITH_CUDA
#include "fprnn/ops/fp_step_cuda.h"
#endif

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace fprnn::testing {
namespace {

#define FPRNN_REQUIRE_GPU() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

struct ScanShape {
  int64_t B, T, D;
};

// Tolerances: float64 kernels agree with the float64 reference to round-off; float32 accumulates T
// products (≈ T·6e-8); bfloat16 rounds every stored value (≈ 4e-3 relative).
double tol_for(torch::Dtype dt) { return dt == torch::kFloat64 ? 1e-12 : dt == torch::kFloat32 ? 1e-5 : 8e-3; }

class LinrecCudaTest : public ::testing::TestWithParam<std::tuple<ScanShape, torch::Dtype, bool>> {};

TEST_P(LinrecCudaTest, FwdAndBwdMatchReference) {
  FPRNN_REQUIRE_GPU();
  const auto [s, dt, reverse] = GetParam();
  const Tensor u = randn({s.B, s.T, s.D}, 1).to(dt);
  // Coefficients in (0, 1) with some negative ones, as the layer's λ may be after training.
  Tensor c = torch::sigmoid(randn({s.B, s.T, s.D}, 2) + 1.0);
  c = torch::where(randn({s.B, s.T, s.D}, 3) > 1.0, -c, c).to(dt);
  const Tensor g = randn({s.B, s.T, s.D}, 4).to(dt);
  const Tensor y_ref = ops::linrec_fwd_ref(u, c, reverse);
  const Tensor y = ops::linrec_fwd_cuda(u.cuda(), c.cuda(), reverse).cpu();
  expect_close(y.to(torch::kFloat64), y_ref.to(torch::kFloat64), tol_for(dt), "fwd");
  const auto [du_ref, dc_ref] = ops::linrec_bwd_ref(g, c, y_ref, reverse);
  const auto [du, dc] = ops::linrec_bwd_cuda(g.cuda(), c.cuda(), y_ref.cuda(), reverse);
  expect_close(du.cpu().to(torch::kFloat64), du_ref.to(torch::kFloat64), tol_for(dt), "du");
  expect_close(dc.cpu().to(torch::kFloat64), dc_ref.to(torch::kFloat64), tol_for(dt), "dc");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinrecCudaTest,
    ::testing::Combine(::testing::Values(ScanShape{1, 1, 1}, ScanShape{3, 17, 33}, ScanShape{2, 700, 5},
                                         ScanShape{1, 4099, 7}, ScanShape{64, 17, 1024}, ScanShape{2, 700, 6},
                                         ScanShape{1, 4099, 8}),
                       ::testing::Values(torch::kFloat64, torch::kFloat32, torch::kBFloat16), ::testing::Bool()));

// Two channels per thread (D even, pointers pair-aligned: bfloat16 and float32) against one (the same tensors
// one element into their storage): bit for bit the same, forward and backward, one chunk (A5-like) and several
// (long T, few channels).
TEST(LinrecCuda, PairedChannelsAgreeBitwiseWithSingle) {
  FPRNN_REQUIRE_GPU();
  const auto shifted = [](const Tensor& t) {  // same values, data pointer one element past a pair boundary
    Tensor buf = torch::empty({t.numel() + 2}, t.options());
    Tensor view = buf.narrow(0, 1, t.numel()).view(t.sizes());
    view.copy_(t);
    return view;
  };
  for (const auto& sh : {ScanShape{64, 17, 1024}, ScanShape{2, 700, 6}}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
      for (bool reverse : {false, true}) {
        const Tensor u = randn({sh.B, sh.T, sh.D}, 21).to(dt).cuda();
        const Tensor c = torch::sigmoid(randn({sh.B, sh.T, sh.D}, 22) + 1.0).to(dt).cuda();
        const Tensor g = randn({sh.B, sh.T, sh.D}, 23).to(dt).cuda();
        const std::string what = "T " + std::to_string(sh.T) + " " + dtype_name(dt) + (reverse ? " reverse" : "");
        const Tensor y2 = ops::linrec_fwd_cuda(u, c, reverse), y1 = ops::linrec_fwd_cuda(shifted(u), shifted(c), reverse);
        EXPECT_TRUE(torch::equal(y2, y1)) << what << ": y";
        const auto [du2, dc2] = ops::linrec_bwd_cuda(g, c, y2, reverse);
        const auto [du1, dc1] = ops::linrec_bwd_cuda(shifted(g), shifted(c), shifted(y2), reverse);
        EXPECT_TRUE(torch::equal(du2, du1)) << what << ": du";
        EXPECT_TRUE(torch::equal(dc2, dc1)) << what << ": dc";
      }
    }
  }
}

TEST(LinrecCuda, AutogradEntryMatchesCpu) {
  FPRNN_REQUIRE_GPU();
  Tensor u = randn({2, 300, 6}, 5), c = torch::sigmoid(randn({2, 300, 6}, 6));
  for (bool reverse : {false, true}) {
    Tensor uc = u.clone().requires_grad_(true), cc = c.clone().requires_grad_(true);
    Tensor ug = u.cuda().requires_grad_(true), cg = c.cuda().requires_grad_(true);
    const Tensor w = randn({2, 300, 6}, 7);
    (ops::linrec(uc, cc, reverse) * w).sum().backward();
    (ops::linrec(ug, cg, reverse) * w.cuda()).sum().backward();
    expect_close(ug.grad().cpu(), uc.grad(), 1e-12, "du");
    expect_close(cg.grad().cpu(), cc.grad(), 1e-12, "dc");
  }
}

class HouseholderCudaTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, bool>> {};

TEST_P(HouseholderCudaTest, FwdAndBwdMatchReference) {
  FPRNN_REQUIRE_GPU();
  const auto [N, r, D, sum_form] = GetParam();
  const Tensor u = torch::nn::functional::normalize(randn({N, r, D}, 8),
                                                    torch::nn::functional::NormalizeFuncOptions().dim(-1));
  const Tensor a = torch::sigmoid(randn({N, r}, 9));
  const Tensor v = randn({N, D}, 10);
  const Tensor g = randn({N, D}, 11);
  for (auto dt : {torch::kFloat64, torch::kFloat32}) {
    const Tensor ref = sum_form ? ops::dplr_fwd_ref(u, a, v) : ops::householder_fwd_ref(u, a, v);
    const Tensor out = (sum_form ? ops::dplr_fwd_cuda : ops::householder_fwd_cuda)(u.to(dt).cuda(), a.to(dt).cuda(),
                                                                                  v.to(dt).cuda());
    expect_close(out.cpu().to(torch::kFloat64), ref, tol_for(dt), "fwd");
    // Backward against autograd through the float64 reference.
    Tensor ur = u.clone().requires_grad_(true), ar = a.clone().requires_grad_(true), vr = v.clone().requires_grad_(true);
    ((sum_form ? ops::dplr_fwd_ref(ur, ar, vr) : ops::householder_fwd_ref(ur, ar, vr)) * g).sum().backward();
    const auto [du, da, dv] = (sum_form ? ops::dplr_bwd_cuda : ops::householder_bwd_cuda)(
        u.to(dt).cuda(), a.to(dt).cuda(), v.to(dt).cuda(), g.to(dt).cuda());
    expect_close(du.cpu().to(torch::kFloat64), ur.grad(), tol_for(dt), "du");
    expect_close(da.cpu().to(torch::kFloat64), ar.grad(), tol_for(dt), "dalpha");
    expect_close(dv.cpu().to(torch::kFloat64), vr.grad(), tol_for(dt), "dv");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, HouseholderCudaTest,
                         ::testing::Combine(::testing::Values(1, 37), ::testing::Values(1, 2, 4),
                                            ::testing::Values(1, 5, 130, 1024), ::testing::Bool()));

TEST(HouseholderCuda, AutogradEntryOnCudaTensors) {
  FPRNN_REQUIRE_GPU();
  Tensor u = torch::nn::functional::normalize(randn({6, 2, 9}, 12),
                                              torch::nn::functional::NormalizeFuncOptions().dim(-1));
  Tensor a = torch::sigmoid(randn({6, 2}, 13)), v = randn({6, 9}, 14);
  Tensor ug = u.cuda().requires_grad_(true), ag = a.cuda().requires_grad_(true), vg = v.cuda().requires_grad_(true);
  Tensor uc = u.clone().requires_grad_(true), ac = a.clone().requires_grad_(true), vc = v.clone().requires_grad_(true);
  ops::householder_apply(ug, ag, vg).pow(2).sum().backward();
  ops::householder_apply(uc, ac, vc).pow(2).sum().backward();
  expect_close(ug.grad().cpu(), uc.grad(), 1e-12, "du");
  expect_close(ag.grad().cpu(), ac.grad(), 1e-12, "dalpha");
  expect_close(vg.grad().cpu(), vc.grad(), 1e-12, "dv");
}

TEST(CausalConv1dCuda, KernelsMatchTheReferenceInEveryDtype) {
  FPRNN_REQUIRE_GPU();
  // (B, T, C, K): one time chunk; two chunks (2·300 channels leave the GPU room to split T = 37); many
  // chunks (T = 700 over 40 channels); kernel widths on both sides of the 4/8/16-tap windows.
  struct Case {
    int64_t B, T, C, K;
  };
  for (const Case cs : {Case{3, 5, 70, 4}, Case{2, 37, 300, 4}, Case{2, 700, 40, 4}, Case{2, 37, 300, 1},
                        Case{2, 700, 40, 3}, Case{2, 37, 300, 6}, Case{1, 90, 33, 16}}) {
    for (auto dt : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
      for (bool silu : {false, true}) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "B " << cs.B << " T " << cs.T << " C " << cs.C << " K " << cs.K
                                            << " dtype " << dt << " silu " << silu << " bias " << with_bias);
          const Tensor x = randn({cs.B, cs.T, cs.C}, 30).to(dt), w = randn({cs.C, cs.K}, 31).to(dt),
                       g = randn({cs.B, cs.T, cs.C}, 33).to(dt);
          const Tensor b = with_bias ? randn({cs.C}, 32).to(dt) : Tensor();
          const Tensor y_ref = ops::causal_conv1d_fwd_ref(x, w, b, silu);
          const Tensor y = ops::causal_conv1d_fwd_cuda(x.cuda(), w.cuda(), with_bias ? b.cuda() : Tensor(), silu).cpu();
          expect_close(y.to(torch::kFloat64), y_ref.to(torch::kFloat64), tol_for(dt), "conv fwd");
          const auto [dx_ref, dw_ref, db_ref] = ops::causal_conv1d_bwd_ref(g, x, w, b, silu);
          const auto [dx, dw, db] =
              ops::causal_conv1d_bwd_cuda(g.cuda(), x.cuda(), w.cuda(), with_bias ? b.cuda() : Tensor(), silu);
          expect_close(dx.cpu().to(torch::kFloat64), dx_ref.to(torch::kFloat64), tol_for(dt), "conv dx");
          expect_close(dw.cpu().to(torch::kFloat64), dw_ref.to(torch::kFloat64), tol_for(dt), "conv dw");
          EXPECT_EQ(db.defined(), with_bias);
          if (with_bias) expect_close(db.cpu().to(torch::kFloat64), db_ref.to(torch::kFloat64), tol_for(dt), "conv db");
        }
      }
    }
  }
}

TEST(CausalConv1dCuda, ForwardAndGradientsMatchTheCpu) {
  FPRNN_REQUIRE_GPU();
  for (bool silu : {false, true}) {
    for (int64_t T : {1, 3, 17, 300}) {
      const Tensor x = randn({3, T, 10}, 20), w = randn({10, 1, 4}, 21), b = randn({10}, 22), g = randn({3, T, 10}, 23);
      Tensor xc = x.clone().requires_grad_(true), wc = w.clone().requires_grad_(true), bc = b.clone().requires_grad_(true);
      Tensor xg = x.cuda().requires_grad_(true), wg = w.cuda().requires_grad_(true), bg = b.cuda().requires_grad_(true);
      const Tensor yc = ops::causal_conv1d(xc, wc, bc, silu);
      const Tensor yg = ops::causal_conv1d(xg, wg, bg, silu);
      expect_close(yg.cpu(), yc, 1e-12, "conv fwd");
      (yc * g).sum().backward();
      (yg * g.cuda()).sum().backward();
      expect_close(xg.grad().cpu(), xc.grad(), 1e-12, "conv dx");
      expect_close(wg.grad().cpu(), wc.grad(), 1e-12, "conv dw");
      expect_close(bg.grad().cpu(), bc.grad(), 1e-12, "conv db");
    }
  }
}

// n convolutions of one x in one kernel each way: every output against the reference of its own convolution,
// dx against the sum of the n references' dx. Shapes cover several items per thread, partial time tiles
// (T = 1, 5, 17), K on both sides of the 4-tap window, odd channel counts and B large enough for the grid to loop;
// and the staged kernels (bfloat16, float32; C a multiple of 32, K ≤ 4): one tile (T = 17, B = 9: a partial
// sample group), many tiles (T = 300, the last one shorter), two convolutions, K = 1 and 3.
TEST(CausalConv1dCuda, MultiKernelsMatchTheReference) {
  FPRNN_REQUIRE_GPU();
  struct Case {
    int64_t n, B, T, C, K;
  };
  for (const Case cs : {Case{4, 3, 17, 70, 4}, Case{2, 2, 5, 33, 3}, Case{3, 1, 1, 40, 4}, Case{4, 2, 37, 64, 6},
                        Case{4, 700, 3, 5, 2}, Case{1, 2, 19, 31, 16}, Case{4, 9, 17, 64, 4}, Case{4, 2, 300, 32, 4},
                        Case{1, 3, 300, 96, 3}, Case{2, 9, 40, 64, 1}}) {
    for (auto dt : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
      for (bool silu : {false, true}) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "n " << cs.n << " B " << cs.B << " T " << cs.T << " C " << cs.C
                                            << " K " << cs.K << " dtype " << dt << " silu " << silu << " bias "
                                            << with_bias);
          const Tensor x = randn({cs.B, cs.T, cs.C}, 40).to(dt), w = (0.5 * randn({cs.n, cs.C, cs.K}, 41)).to(dt);
          const Tensor b = with_bias ? randn({cs.n, cs.C}, 42).to(dt) : Tensor();
          const auto ys = ops::causal_conv1d_multi_fwd_cuda(x.cuda(), w.cuda(), with_bias ? b.cuda() : Tensor(), silu);
          ASSERT_EQ(static_cast<int64_t>(ys.size()), cs.n);
          std::vector<Tensor> gs, gs_cuda;
          Tensor dx_ref = torch::zeros_like(x, torch::kFloat64);
          for (int64_t j = 0; j < cs.n; ++j) {
            const Tensor bj = with_bias ? b[j] : Tensor();
            expect_close(ys[j].cpu().to(torch::kFloat64),
                         ops::causal_conv1d_fwd_ref(x, w[j], bj, silu).to(torch::kFloat64), tol_for(dt),
                         "multi fwd " + std::to_string(j));
            gs.push_back(randn({cs.B, cs.T, cs.C}, 50 + j).to(dt));
            gs_cuda.push_back(gs.back().cuda());
          }
          const auto [dx, dw, db] =
              ops::causal_conv1d_multi_bwd_cuda(gs_cuda, x.cuda(), w.cuda(), with_bias ? b.cuda() : Tensor(), silu);
          EXPECT_EQ(dw.sizes(), w.sizes());
          EXPECT_EQ(db.defined(), with_bias);
          for (int64_t j = 0; j < cs.n; ++j) {
            const auto [dxj, dwj, dbj] = ops::causal_conv1d_bwd_ref(gs[j], x, w[j], with_bias ? b[j] : Tensor(), silu);
            dx_ref += dxj.to(torch::kFloat64);
            expect_close(dw[j].cpu().to(torch::kFloat64), dwj.to(torch::kFloat64), tol_for(dt),
                         "multi dw " + std::to_string(j));
            if (with_bias) {
              expect_close(db[j].cpu().to(torch::kFloat64), dbj.to(torch::kFloat64), tol_for(dt),
                           "multi db " + std::to_string(j));
            }
          }
          expect_close(dx.cpu().to(torch::kFloat64), dx_ref, tol_for(dt), "multi dx");
        }
      }
    }
  }
}

// A contiguous (B, T, C) CUDA tensor starting one element into its storage (misaligned for pairs and for 16-byte
// copies: the convolutions' one-channel walk kernels).
Tensor offset_copy(const Tensor& t) {
  Tensor buf = torch::empty({t.numel() + 1}, t.options());
  Tensor v = buf.narrow(0, 1, t.numel()).view(t.sizes());
  v.copy_(t);
  return v;
}

// Inputs of the four-convolution op on CUDA (seeds seed … seed + 6), with offset copies of x and the gradients.
struct ConvInputs {
  Tensor x, w, b;
  std::vector<Tensor> gs;
  Tensor x_off;
  std::vector<Tensor> gs_off;
};
ConvInputs conv_inputs(int64_t B, int64_t T, int64_t C, int64_t K, torch::ScalarType dt, uint64_t seed) {
  ConvInputs in{randn({B, T, C}, seed).to(dt).cuda(), (0.5 * randn({4, C, K}, seed + 1)).to(dt).cuda(),
                randn({4, C}, seed + 2).to(dt).cuda(), {}, {}, {}};
  for (uint64_t j = 0; j < 4; ++j) {
    in.gs.push_back(randn({B, T, C}, seed + 3 + j).to(dt).cuda());
    in.gs_off.push_back(offset_copy(in.gs.back()));
  }
  in.x_off = offset_copy(in.x);
  return in;
}

// The kernels take two channels per thread where every row starts on an aligned pair (bfloat16, float32, even C,
// K ≤ 4) and one otherwise; both do the same arithmetic in the same order, so an input at an odd element offset
// (the one-channel kernels) gives bit for bit the results of the aligned copy (the paired kernels): the pair's
// forward and backward and the four-convolution backward (the four-convolution forward has one channel per
// thread either way, and is compared too).
TEST(CausalConv1dCuda, PairedAndSingleChannelKernelsAgreeBitwise) {
  FPRNN_REQUIRE_GPU();
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (const int64_t T : {17, 300}) {
      SCOPED_TRACE(::testing::Message() << "dtype " << dt << " T " << T);
      const int64_t B = 3, C = 70, K = 4;
      const auto [x, w, b, gs, xo, gs_off] = conv_inputs(B, T, C, K, dt, 60);
      ASSERT_TRUE(xo.is_contiguous());
      const auto ya = ops::causal_conv1d_multi_fwd_cuda(x, w, b, true);
      const auto yo = ops::causal_conv1d_multi_fwd_cuda(xo, w, b, true);
      for (int j = 0; j < 4; ++j) EXPECT_TRUE(torch::equal(ya[j], yo[j])) << "forward " << j;
      const auto [dxa, dwa, dba] = ops::causal_conv1d_multi_bwd_cuda(gs, x, w, b, true);
      const auto [dxo, dwo, dbo] = ops::causal_conv1d_multi_bwd_cuda(gs_off, xo, w, b, true);
      EXPECT_TRUE(torch::equal(dxa, dxo)) << "four-convolution dx";
      EXPECT_TRUE(torch::equal(dwa, dwo)) << "four-convolution dweight";
      EXPECT_TRUE(torch::equal(dba, dbo)) << "four-convolution dbias";
      const Tensor z = randn({B, T, C}, 70).to(dt).cuda(), wp = w.narrow(0, 0, 2).reshape({2 * C, K}).contiguous(),
                   bp = b.narrow(0, 0, 2).reshape({2 * C}).contiguous(), gp = randn({B, T, 2 * C}, 71).to(dt).cuda();
      const auto pa = ops::causal_conv1d_pair_bwd_cuda(gp, x, z, wp, bp, true);
      const auto po = ops::causal_conv1d_pair_bwd_cuda(offset_copy(gp), xo, offset_copy(z), wp, bp, true);
      EXPECT_TRUE(torch::equal(ops::causal_conv1d_pair_fwd_cuda(x, z, wp, bp, true),
                               ops::causal_conv1d_pair_fwd_cuda(xo, offset_copy(z), wp, bp, true)))
          << "pair forward";
      EXPECT_TRUE(torch::equal(std::get<0>(pa), std::get<0>(po)) && torch::equal(std::get<1>(pa), std::get<1>(po)))
          << "pair dx";
      EXPECT_TRUE(torch::equal(std::get<2>(pa), std::get<2>(po)) && torch::equal(std::get<3>(pa), std::get<3>(po)))
          << "pair dweight, dbias";
    }
  }
}

// The staged kernels (aligned inputs, C a multiple of 32) against the walk kernels (the same inputs one element
// into their storage, so not 16-byte aligned): y and dx bit for bit, dw and db up to the order of their time sums,
// for the four-convolution op, one convolution and the pair; one tile (T = 17) and many (T = 300), B = 9 (a
// partial sample group).
TEST(CausalConv1dCuda, StagedKernelsMatchTheWalkKernels) {
  FPRNN_REQUIRE_GPU();
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    // dw, db: float32 sums in another order, rounded to the dtype.
    const auto close = [dt](const Tensor& a, const Tensor& b, const char* what) {
      expect_close(a.cpu().to(torch::kFloat64), b.cpu().to(torch::kFloat64), dt == torch::kFloat32 ? 1e-5 : 1e-2, what);
    };
    for (const int64_t T : {17, 300}) {
      SCOPED_TRACE(::testing::Message() << "dtype " << dt << " T " << T);
      const int64_t B = 9, C = 64, K = 4;
      const auto [x, w, b, gs, xo, gs_off] = conv_inputs(B, T, C, K, dt, 80);
      const auto ya = ops::causal_conv1d_multi_fwd_cuda(x, w, b, true);
      const auto yo = ops::causal_conv1d_multi_fwd_cuda(xo, w, b, true);
      for (int j = 0; j < 4; ++j) EXPECT_TRUE(torch::equal(ya[j], yo[j])) << "four-convolution forward " << j;
      const auto [dxa, dwa, dba] = ops::causal_conv1d_multi_bwd_cuda(gs, x, w, b, true);
      const auto [dxo, dwo, dbo] = ops::causal_conv1d_multi_bwd_cuda(gs_off, xo, w, b, true);
      EXPECT_TRUE(torch::equal(dxa, dxo)) << "four-convolution dx";
      close(dwa, dwo, "four-convolution dweight");
      close(dba, dbo, "four-convolution dbias");
      const Tensor w1 = w[1].contiguous(), b1 = b[1].contiguous();
      EXPECT_TRUE(torch::equal(ops::causal_conv1d_fwd_cuda(x, w1, b1, false), ops::causal_conv1d_fwd_cuda(xo, w1, b1, false)))
          << "one convolution forward";
      const auto sa = ops::causal_conv1d_bwd_cuda(gs[1], x, w1, b1, false);
      const auto so = ops::causal_conv1d_bwd_cuda(gs_off[1], xo, w1, b1, false);
      EXPECT_TRUE(torch::equal(std::get<0>(sa), std::get<0>(so))) << "one convolution dx";
      close(std::get<1>(sa), std::get<1>(so), "one convolution dweight");
      close(std::get<2>(sa), std::get<2>(so), "one convolution dbias");
      // The pair [x, z]: 64 + 32 channels.
      const Tensor z = randn({B, T, 32}, 90).to(dt).cuda(), zo = offset_copy(z);
      const Tensor wp = (0.5 * randn({96, K}, 91)).to(dt).cuda(), bp = randn({96}, 92).to(dt).cuda();
      const Tensor gp = randn({B, T, 96}, 93).to(dt).cuda();
      EXPECT_TRUE(torch::equal(ops::causal_conv1d_pair_fwd_cuda(x, z, wp, bp, true),
                               ops::causal_conv1d_pair_fwd_cuda(xo, zo, wp, bp, true)))
          << "pair forward";
      const auto pa = ops::causal_conv1d_pair_bwd_cuda(gp, x, z, wp, bp, true);
      const auto po = ops::causal_conv1d_pair_bwd_cuda(offset_copy(gp), xo, zo, wp, bp, true);
      EXPECT_TRUE(torch::equal(std::get<0>(pa), std::get<0>(po)) && torch::equal(std::get<1>(pa), std::get<1>(po)))
          << "pair dx";
      close(std::get<2>(pa), std::get<2>(po), "pair dweight");
      close(std::get<3>(pa), std::get<3>(po), "pair dbias");
    }
  }
}

// The differentiable entry on CUDA tensors against finite differences in float64 (x, weight, bias), and against
// the CPU entry (n separate convolutions) with an unused output (its gradient arrives undefined).
TEST(CausalConv1dCuda, MultiEntryGradients) {
  FPRNN_REQUIRE_GPU();
  const Tensor x = randn({2, 6, 5}, 60).cuda(), w = (0.5 * randn({3, 5, 1, 3}, 61)).cuda(), b = randn({3, 5}, 62).cuda();
  const Tensor wt = randn({3, 2, 6, 5}, 63).cuda();
  const auto loss = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
    return (torch::stack(ops::causal_conv1d_multi(xx, ww, bb, /*silu=*/true)) * wt).sum().cpu();
  };
  Tensor xg = x.clone().requires_grad_(true), wg = w.clone().requires_grad_(true), bg = b.clone().requires_grad_(true);
  loss(xg, wg, bg).backward();
  Tensor xn = x.clone(), wn = w.clone(), bn = b.clone();
  expect_close(xg.grad().cpu(), numerical_grad([&] { return loss(xn, w, b); }, xn).cpu(), 1e-8, "multi dx vs fd");
  expect_close(wg.grad().cpu(), numerical_grad([&] { return loss(x, wn, b); }, wn).cpu(), 1e-8, "multi dw vs fd");
  expect_close(bg.grad().cpu(), numerical_grad([&] { return loss(x, w, bn); }, bn).cpu(), 1e-8, "multi db vs fd");

  Tensor xc = x.cpu().requires_grad_(true), wc = w.cpu().requires_grad_(true), bc = b.cpu().requires_grad_(true);
  Tensor xd = x.clone().requires_grad_(true), wd = w.clone().requires_grad_(true), bd = b.clone().requires_grad_(true);
  const auto yc = ops::causal_conv1d_multi(xc, wc, bc, false);
  const auto yd = ops::causal_conv1d_multi(xd, wd, bd, false);
  ASSERT_EQ(yc.size(), 3u);
  ASSERT_EQ(yd.size(), 3u);
  for (int j = 0; j < 3; ++j) expect_close(yd[j].cpu(), yc[j], 1e-12, "multi fwd vs cpu " + std::to_string(j));
  ((yc[0] * wt[0].cpu()).sum() + (yc[2] * wt[2].cpu()).sum()).backward();  // output 1 unused
  ((yd[0] * wt[0]).sum() + (yd[2] * wt[2]).sum()).backward();
  expect_close(xd.grad().cpu(), xc.grad(), 1e-12, "multi dx vs cpu");
  expect_close(wd.grad().cpu(), wc.grad(), 1e-12, "multi dw vs cpu");
  expect_close(bd.grad().cpu(), bc.grad(), 1e-12, "multi db vs cpu");
}

#ifdef FPRNN_WITH_CUDA
// The device loop's kernels with a padded leading dimension (the pad filled with NaN must never be read)
// and the scan's rounded copy of the iterate (must equal y rounded, and leave y itself unchanged).
TEST(FpStepCuda, PaddedRowsAndRoundedIterate) {
  FPRNN_REQUIRE_GPU();
  const int64_t B = 3, T = 19, D = 24, r = 2, rows = r * D + r, ld = 56;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  const Tensor z = randn({B * T, rows}, 30, torch::kFloat32).cuda(), base = randn({B * T, rows}, 31, torch::kFloat32).cuda();
  const Tensor bx = randn({B, T, D}, 32, torch::kFloat32).cuda(), h = randn({B, T, D}, 33, torch::kFloat32).cuda();
  const Tensor lambda = torch::sigmoid(randn({B, T, D}, 34, torch::kFloat32)).cuda();
  const Tensor nan_pad = torch::full({B * T, ld - rows}, std::numeric_limits<float>::quiet_NaN(), f32);
  const Tensor z_pad = torch::cat({z, nan_pad}, 1), base_pad = torch::cat({base, nan_pad}, 1);
  ops::DeviceSolverOptions opt;
  for (bool sum_form : {false, true}) {
    Tensor v = torch::empty({B, T, D}, f32), v_pad = torch::empty({B, T, D}, f32);
    auto s1 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    auto s2 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    ops::fp_mix_cuda(z, base, bx, h, lambda, v, r, "silu", 1e-6, sum_form, s1);
    ops::fp_mix_cuda(z_pad, base_pad, bx, h, lambda, v_pad, r, "silu", 1e-6, sum_form, s2);
    EXPECT_TRUE(torch::isfinite(v_pad).all().item<bool>()) << "the pad was read";
    EXPECT_TRUE(torch::equal(v, v_pad)) << "padded leading dimension changed the mix (sum_form " << sum_form << ")";

    Tensor y = torch::empty({B, T, D}, f32), y2 = torch::empty({B, T, D}, f32);
    Tensor y_bf16 = torch::empty({B * T, D}, f32.dtype(torch::kBFloat16));
    ops::fp_scan_cuda(v, lambda, h, y, s1);
    ops::fp_scan_cuda(v, lambda, h, y2, s2, &y_bf16);
    EXPECT_TRUE(torch::equal(y, y2)) << "the rounded copy changed the iterate";
    EXPECT_TRUE(torch::equal(y_bf16, y.to(torch::kBFloat16).view({B * T, D}))) << "rounded copy ≠ round(y)";
  }
  // bfloat16 z, base, bx and λ give what float32 copies of the same (rounded) values give.
  {
    const auto bf = torch::kBFloat16;
    const Tensor zb = z.to(bf), bb = base.to(bf), bxb = bx.to(bf), lb = lambda.to(bf);
    Tensor v16 = torch::empty({B, T, D}, f32), v32 = torch::empty({B, T, D}, f32);
    auto s16 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    auto s32 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    ops::fp_mix_cuda(zb, bb, bxb, h, lb, v16, r, "silu", 1e-6, false, s16);
    ops::fp_mix_cuda(zb.to(torch::kFloat32), bb.to(torch::kFloat32), bxb.to(torch::kFloat32), h,
                     lb.to(torch::kFloat32), v32, r, "silu", 1e-6, false, s32);
    expect_close(v16.cpu(), v32.cpu(), 1e-6, "mix with bfloat16 inputs");
    Tensor y16 = torch::empty({B, T, D}, f32), y32 = torch::empty({B, T, D}, f32);
    ops::fp_scan_cuda(v32, lb, h, y16, s16);
    ops::fp_scan_cuda(v32, lb.to(torch::kFloat32), h, y32, s32);
    expect_close(y16.cpu(), y32.cpu(), 1e-6, "scan with bfloat16 lambda");
    Tensor v_bad = torch::empty({B, T, D}, f32);
    EXPECT_THROW(ops::fp_mix_cuda(zb, bb, bx, h, lb, v_bad, r, "silu", 1e-6, false, s16), c10::Error)
        << "bx in another dtype than z";
  }
  Tensor too_narrow = z.narrow(1, 0, rows - 1).contiguous();
  Tensor v = torch::empty({B, T, D}, f32);
  auto s = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
  EXPECT_THROW(ops::fp_mix_cuda(too_narrow, too_narrow, bx, h, lambda, v, r, "silu", 1e-6, false, s), c10::Error);
}

// fp_mix_cuda + fp_scan_cuda against the float64 reference map (ops::fp_step_ref): the warp-per-token mix (one
// warp: D ≤ 1024, two: D ≤ 2048; aligned rows and not) and the block-per-token one (D = 2100), both mixer forms,
// float32 and bfloat16 operands, a chunked scan whose chunks end inside a load batch, and the residual maxima.
// The reference gets the same (rounded) operand values in float64.
TEST(FpStepCuda, TwoKernelPathMatchesTheReferenceMap) {
  FPRNN_REQUIRE_GPU();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  for (int64_t D : {24, 300, 512, 768, 1100, 1536, 2048, 2100}) {
    for (int64_t r : {1, 2}) {
      for (bool sum_form : {false, true}) {
        for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
          const int64_t B = 2, T = 44, rows = r * D + r;
          // Rows padded to a multiple of 8 take the 16-byte loads (D a multiple of 8); rows + 5 is never one
          // here: the element-by-element loads.
          const bool aligned = D % 8 == 0 && (r == 1 || D == 512);
          const int64_t ld = aligned ? (rows + 7) / 8 * 8 : rows + 5;
          const Tensor z = (0.3 * randn({B * T, ld}, 70)).to(dtype), base = randn({B * T, ld}, 71).to(dtype);
          const Tensor bx = randn({B, T, D}, 72).to(dtype), h = randn({B, T, D}, 73).to(torch::kFloat32);
          const Tensor lambda = torch::sigmoid(randn({B, T, D}, 74)).to(dtype);
          ops::DeviceSolverOptions opt;
          auto st = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
          Tensor v = torch::empty({B, T, D}, f32), y = torch::empty({B, T, D}, f32);
          ops::fp_mix_cuda(z.cuda(), base.cuda(), bx.cuda(), h.cuda(), lambda.cuda(), v, r, "silu", 1e-6, sum_form, st);
          ops::fp_scan_cuda(v, lambda.cuda(), h.cuda(), y, st);

          ops::FpStepInputs in;
          const auto f64 = [&](const Tensor& t) { return t.to(torch::kFloat64); };
          in.base = f64(base.narrow(1, 0, rows)).reshape({B, T, rows});
          in.z = f64(z.narrow(1, 0, rows)).reshape({B, T, rows});
          in.h = f64(h);
          in.bx = f64(bx);
          in.lambda = f64(lambda);
          ops::FpStepConfig cfg;
          cfg.rank = r;
          cfg.norm_eps = 1e-6;
          cfg.sum_form = sum_form;
          const auto [y_ref, stats_ref] = ops::fp_step_ref(in, cfg);
          const std::string what = "D " + std::to_string(D) + " r " + std::to_string(r) + " sum_form " +
                                   std::to_string(sum_form) + " " + dtype_name(dtype);
          expect_close(y.cpu(), y_ref, 2e-6, "iterate, " + what);
          expect_close(st.diff.cpu(), stats_ref.select(2, 0), 2e-6, "max |y − h|, " + what);
          expect_close(st.ymax.cpu(), stats_ref.select(2, 1), 2e-6, "max |y|, " + what);
        }
      }
    }
  }
}

// A fused kernel's iterate y, its rounded copy and residual maxima (state s) against fp_mix_cuda + fp_scan_cuda's
// (y_ref, s_ref): the iterate and max |ŷ| at 1e-6, max |ŷ − h| at diff_tol, the copy equal to round(y), and no NaN
// (the rows' pad, filled with NaN, must not have been read).
void expect_same_iteration(const Tensor& y, const Tensor& low, const ops::DeviceSolverState& s, const Tensor& y_ref,
                           const ops::DeviceSolverState& s_ref, double diff_tol, const std::string& what) {
  expect_close(y.cpu(), y_ref.cpu(), 1e-6, "iterate, " + what);
  EXPECT_TRUE(torch::equal(low, y.to(torch::kBFloat16).view(low.sizes()))) << "rounded copy, " << what;
  expect_close(s.diff.cpu(), s_ref.diff.cpu(), diff_tol, "max |ŷ − h|, " + what);
  expect_close(s.ymax.cpu(), s_ref.ymax.cpu(), 1e-6, "max |ŷ|, " + what);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << "the pad was read, " << what;
}

// The one-block-per-sample kernel against fp_mix_cuda + fp_scan_cuda: iterate, rounded copy and residual
// maxima, for widths below, across and at several multiples of the block (1, 2 and 4 channels per thread),
// both mixer forms, float32 and bfloat16 inputs, damped and undamped, every activation for one reflection in
// product form (the staged kernel's compile-time variants); and nothing written after the stop.
TEST(FpStepCuda, MixScanKernelMatchesTheTwoKernels) {
  FPRNN_REQUIRE_GPU();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  // The staged kernel's blocks: D = 24 and 300 (1 and 2 channels per thread, 256 threads), 1024 and 2048 (8
  // consecutive channels: 128 and 256 threads), 1020 (not a multiple of 8: 4 per thread in float32; its bfloat16
  // rows are not 16-byte multiples, so the direct kernel).
  for (int64_t D : {24, 300, 1020, 1024, 2048}) {
    for (int64_t r : {1, 2}) {
      const int64_t B = 3, T = 19, rows = r * D + r, ld = (rows + 7) / 8 * 8 + 8;
      const Tensor z = randn({B * T, ld}, 40, torch::kFloat32).cuda(), base = randn({B * T, ld}, 41, torch::kFloat32).cuda();
      z.narrow(1, rows, ld - rows).fill_(std::numeric_limits<float>::quiet_NaN());  // the pad must not be read
      base.narrow(1, rows, ld - rows).fill_(std::numeric_limits<float>::quiet_NaN());
      const Tensor bx = randn({B, T, D}, 42, torch::kFloat32).cuda(), h = randn({B, T, D}, 43, torch::kFloat32).cuda();
      const Tensor lambda = torch::sigmoid(randn({B, T, D}, 44, torch::kFloat32)).cuda();
      for (bool sum_form : {false, true}) {
        for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
          // One reflection in product form at 8 channels per thread has a variant per activation (compile time).
          using Names = std::vector<std::string>;
          const Names acs = r == 1 && !sum_form ? Names{"silu", "relu", "identity"} : Names{"silu"};
          for (const auto& ac : acs) {
            for (double step : {1.0, 0.7}) {
              const std::string what = "D " + std::to_string(D) + " r " + std::to_string(r) + " sum_form " +
                                       std::to_string(sum_form) + " " + dtype_name(dtype) + " " + ac + " step " +
                                       std::to_string(step);
              ops::DeviceSolverOptions opt;
              opt.stepsize = step;
              auto s1 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
              auto s2 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
              const Tensor zc = z.to(dtype), bc = base.to(dtype), bxc = bx.to(dtype), lc = lambda.to(dtype);
              Tensor v = torch::empty({B, T, D}, f32), y1 = torch::empty({B, T, D}, f32), y2 = torch::empty({B, T, D}, f32);
              Tensor low1 = torch::empty({B * T, D}, f32.dtype(torch::kBFloat16)), low2 = torch::empty_like(low1);
              ops::fp_mix_cuda(zc, bc, bxc, h, lc, v, r, ac, 1e-6, sum_form, s1);
              ops::fp_scan_cuda(v, lc, h, y1, s1, &low1);
              ops::fp_mixscan_cuda(zc, bc, bxc, h, lc, y2, r, ac, 1e-6, sum_form, s2, &low2);
              expect_same_iteration(y2, low2, s2, y1, s1, 1e-6, what);
            }
          }
        }
      }
      // After the stop (counters[1] = 0) the kernel writes nothing.
      ops::DeviceSolverOptions opt;
      auto stopped = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
      stopped.counters.narrow(0, 1, 1).fill_(0);
      Tensor y = torch::full({B, T, D}, 123.0, f32);
      ops::fp_mixscan_cuda(z, base, bx, h, lambda, y, r, "silu", 1e-6, false, stopped);
      EXPECT_TRUE(torch::equal(y, torch::full({B, T, D}, 123.0, f32))) << "wrote after the stop, D " << D;
    }
  }
  // Rows that are not 16-byte aligned take the kernel that reads global memory directly (aligned ones are
  // staged through shared memory): the same numbers, also for a batch of more blocks than fit on the GPU at once.
  for (const auto& [B, T, r] : {std::tuple<int64_t, int64_t, int64_t>{4, 9, 1}, {600, 5, 2}}) {
    const int64_t D = 1024, ld = (r * D + r + 7) / 8 * 8;
    const auto bf = torch::kBFloat16;
    const auto misaligned = [](const Tensor& t) {  // same values, data pointer one element past a 16-byte boundary
      Tensor buf = torch::empty({t.numel() + 8}, t.options());
      Tensor view = buf.narrow(0, 1, t.numel()).view(t.sizes());
      view.copy_(t);
      return view;
    };
    const Tensor z = randn({B * T, ld}, 45, torch::kFloat32).cuda().to(bf), base = randn({B * T, ld}, 46, torch::kFloat32).cuda().to(bf);
    const Tensor bx = randn({B, T, D}, 47, torch::kFloat32).cuda().to(bf), h = randn({B, T, D}, 48, torch::kFloat32).cuda();
    const Tensor lambda = torch::sigmoid(randn({B, T, D}, 49, torch::kFloat32)).cuda().to(bf);
    ops::DeviceSolverOptions opt;
    auto s1 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    auto s2 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    auto s3 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    Tensor v = torch::empty({B, T, D}, f32), y1 = torch::empty({B, T, D}, f32), y2 = torch::empty({B, T, D}, f32),
           y3 = torch::empty({B, T, D}, f32);
    ops::fp_mix_cuda(z, base, bx, h, lambda, v, r, "silu", 1e-6, false, s1);
    ops::fp_scan_cuda(v, lambda, h, y1, s1);
    ops::fp_mixscan_cuda(z, base, bx, h, lambda, y2, r, "silu", 1e-6, false, s2);
    ops::fp_mixscan_cuda(misaligned(z), misaligned(base), misaligned(bx), misaligned(h), misaligned(lambda), y3, r,
                         "silu", 1e-6, false, s3);
    const std::string what = "B " + std::to_string(B) + " r " + std::to_string(r);
    expect_close(y2.cpu(), y1.cpu(), 1e-6, "iterate, aligned (staged), " + what);
    expect_close(s2.diff.cpu(), s1.diff.cpu(), 1e-6, "max |ŷ − h|, aligned (staged), " + what);
    expect_close(y3.cpu(), y1.cpu(), 1e-6, "iterate, misaligned (direct), " + what);
    expect_close(s3.diff.cpu(), s1.diff.cpu(), 1e-6, "max |ŷ − h|, misaligned (direct), " + what);
    expect_close(s3.ymax.cpu(), s1.ymax.cpu(), 1e-6, "max |ŷ|, misaligned (direct), " + what);
  }
  // Argument checks: a leading dimension below r·D + r, and a width beyond 8 channels per thread.
  const Tensor h = torch::zeros({2, 3, 8}, f32), y = torch::zeros({2, 3, 8}, f32);
  const Tensor narrow = torch::zeros({6, 8}, f32);
  ops::DeviceSolverOptions opt;
  auto st = ops::make_device_solver_state(2, 3, opt, torch::kCUDA);
  Tensor yy = y.clone();
  EXPECT_THROW(ops::fp_mixscan_cuda(narrow, narrow, h, h, h, yy, 1, "silu", 1e-6, false, st), c10::Error);
  const Tensor wide = torch::zeros({1, 1, 2049}, f32), zw = torch::zeros({1, 2 * 2049 + 2}, f32);
  auto sw = ops::make_device_solver_state(1, 1, opt, torch::kCUDA);
  Tensor yw = wide.clone();
  EXPECT_THROW(ops::fp_mixscan_cuda(zw, zw, wide, wide, wide, yw, 1, "silu", 1e-6, false, sw), c10::Error);
}
// The mix + scan kernels with the controller folded in (one block per sample, and the chunked kernel) against the
// same kernel followed by fp_controller_cuda, over several iterations of the solve (h ← y): the same iterates, the
// same per-sample state and counters bit for bit, the residual scratch zeroed and the ticket reset after every
// call. Cases: a sample's NaN iterate, step sizes that decay, a stop by the threshold and one by max_iter (after
// which both write nothing), more blocks than fit on the GPU at once, and rows that are not 16-byte aligned (the
// per-sample kernel without staging; the chunked kernel does not take them).
TEST(FpStepCuda, MixScanWithFusedControlMatchesTheController) {
  FPRNN_REQUIRE_GPU();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  struct Case {
    int64_t B, T, D, r;
    double threshold;
    int64_t max_iter;
    bool nan, misaligned;
  };
  for (const Case cs : {Case{3, 19, 300, 1, 1e-12, 6, false, false}, Case{5, 7, 24, 2, 1e-12, 100, true, false},
                        Case{600, 5, 1024, 1, 1e-12, 4, false, false}, Case{4, 9, 1024, 1, 1e-12, 5, false, true},
                        Case{6, 11, 256, 1, 10.0, 100, false, false}}) {
    for (auto [dtype, chunked] : {std::pair{torch::kFloat32, false}, std::pair{torch::kBFloat16, false},
                                  std::pair{torch::kFloat32, true}, std::pair{torch::kBFloat16, true}}) {
      const int64_t B = cs.B, T = cs.T, D = cs.D, r = cs.r, rows = r * D + r, ld = (rows + 7) / 8 * 8;
      const std::string what = "B " + std::to_string(B) + " T " + std::to_string(T) + " D " + std::to_string(D) +
                               " r " + std::to_string(r) + " threshold " + std::to_string(cs.threshold) + " " +
                               dtype_name(dtype) + (chunked ? " chunked" : " per sample");
      const auto place = [&](const Tensor& t) {  // same values; one element past a 16-byte boundary if asked
        if (!cs.misaligned) return t;
        Tensor buf = torch::empty({t.numel() + 8}, t.options());
        Tensor view = buf.narrow(0, 1, t.numel()).view(t.sizes());
        view.copy_(t);
        return view;
      };
      const Tensor z = place((0.3 * randn({B * T, ld}, 60, torch::kFloat32)).cuda().to(dtype));
      const Tensor base = place((0.3 * randn({B * T, ld}, 61, torch::kFloat32)).cuda().to(dtype));
      const Tensor bx = place(randn({B, T, D}, 62, torch::kFloat32).cuda().to(dtype));
      const Tensor lambda = place(torch::sigmoid(randn({B, T, D}, 63, torch::kFloat32)).cuda().to(dtype));
      if (chunked && (cs.misaligned || !ops::fp_mixscan_chunked_fits(base, D, r))) continue;
      ops::DeviceSolverOptions opt;
      opt.max_iter = cs.max_iter;
      opt.threshold = cs.threshold;
      opt.stepsize = 0.9;
      opt.stepsize_decay = 0.5;
      opt.decay_patience = 2;
      opt.stepsize_thresh = 1e-3;
      auto sa = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
      auto sb = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
      Tensor h0 = randn({B, T, D}, 64, torch::kFloat32).cuda();
      if (cs.nan) h0[1][2][3] = std::numeric_limits<float>::quiet_NaN();
      Tensor ha = place(h0), hb = place(h0.clone());
      Tensor ya = place(torch::zeros({B, T, D}, f32)), yb = place(torch::zeros({B, T, D}, f32));
      const auto same = [](const Tensor& a, const Tensor& b) {  // equal, NaN where the other is NaN
        const Tensor x = a.cpu(), y = b.cpu();
        return torch::equal(torch::isnan(x), torch::isnan(y)) &&
               torch::equal(torch::nan_to_num(x, 0.0), torch::nan_to_num(y, 0.0));
      };
      for (int it = 0; it < 8; ++it) {
        const std::string at = what + ", call " + std::to_string(it + 1);
        if (chunked) {
          ops::fp_mixscan_chunked_cuda(z, base, bx, ha, lambda, ya, r, "silu", 1e-6, false, sa);
          ops::fp_controller_cuda(sa, opt);
          ops::fp_mixscan_chunked_cuda(z, base, bx, hb, lambda, yb, r, "silu", 1e-6, false, sb, nullptr, &opt);
        } else {
          ops::fp_mixscan_cuda(z, base, bx, ha, lambda, ya, r, "silu", 1e-6, false, sa);
          ops::fp_controller_cuda(sa, opt);
          ops::fp_mixscan_cuda(z, base, bx, hb, lambda, yb, r, "silu", 1e-6, false, sb, nullptr, &opt);
        }
        EXPECT_TRUE(same(ya, yb)) << "iterate, " << at;
        EXPECT_TRUE(same(sa.best, sb.best)) << "best, " << at;
        EXPECT_TRUE(same(sa.last, sb.last)) << "last, " << at;
        EXPECT_TRUE(same(sa.stepsize, sb.stepsize)) << "step sizes, " << at;
        EXPECT_TRUE(torch::equal(sa.patience.cpu(), sb.patience.cpu())) << "patience, " << at;
        EXPECT_TRUE(torch::equal(sa.counters.cpu(), sb.counters.cpu())) << "counters, " << at;
        EXPECT_EQ(sb.counters[2].item<int64_t>(), 0) << "ticket not reset, " << at;
        EXPECT_EQ(sb.diff.abs().max().item<float>(), 0.0f) << "scratch not zeroed, " << at;
        EXPECT_EQ(sb.ymax.abs().max().item<float>(), 0.0f) << "scratch not zeroed, " << at;
        std::swap(ha, ya);
        std::swap(hb, yb);
      }
      const Tensor c = sb.counters.cpu();
      EXPECT_EQ(c[1].item<int64_t>(), 0) << "the solve never stopped, " << what;
      if (cs.threshold > 1.0) {
        EXPECT_LT(c[0].item<int64_t>(), cs.max_iter) << "not stopped by the threshold, " << what;
      }
      if (cs.nan) {
        EXPECT_TRUE(std::isnan(sb.best[1].item<double>())) << "NaN did not reach best, " << what;
      }
    }
  }
}

// The chunked kernel (one block per 8 tokens, the carry composed from the earlier chunks' rows) against
// fp_mix_cuda + fp_scan_cuda: iterate, rounded copy and residual maxima over several calls of the solve (h ← y)
// sharing one workspace, whose tickets must be reset and whose generation must advance after every call, and the
// same bits from a second run. Shapes: the LM-like width with a short last chunk, fewer tokens than a chunk, a
// single token, several groups of chunks per sample with a short last group, and more blocks than the GPU holds
// at once (so that blocks wait on chunks that finished long before, and the ticket order is what keeps them from
// deadlocking), both mixer forms, float32 and bfloat16, damped and not; an undefined z and h (the solve's first
// call) as zeros, bit for bit; nothing written after the stop.
TEST(FpStepCuda, ChunkedMixScanMatchesTheTwoKernels) {
  FPRNN_REQUIRE_GPU();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  struct Case {
    int64_t B, T, D, r;
  };
  for (const Case cs : {Case{2, 44, 1536, 1}, Case{3, 5, 24, 2}, Case{1, 1, 512, 1}, Case{4, 203, 1024, 2},
                        Case{700, 17, 64, 1}, Case{8, 2048, 1536, 1}}) {
    const int64_t B = cs.B, T = cs.T, D = cs.D, r = cs.r, rows = r * D + r, ld = (rows + 7) / 8 * 8;
    const bool big = B * T * D > 10'000'000;  // the LM-like shape: one dtype, one form, two calls
    for (bool sum_form : {false, true}) {
      for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
        if (big && (sum_form || dtype == torch::kFloat32)) continue;
        for (double step : {1.0, 0.7}) {
          if (big && step != 1.0) continue;
          const std::string what = "B " + std::to_string(B) + " T " + std::to_string(T) + " D " + std::to_string(D) +
                                   " r " + std::to_string(r) + " sum_form " + std::to_string(sum_form) + " " +
                                   dtype_name(dtype) + " step " + std::to_string(step);
          const Tensor z = (0.3 * randn({B * T, ld}, 90, torch::kFloat32)).cuda().to(dtype);
          const Tensor base = (0.3 * randn({B * T, ld}, 91, torch::kFloat32)).cuda().to(dtype);
          z.narrow(1, rows, ld - rows).fill_(std::numeric_limits<float>::quiet_NaN());  // the pad must not be read
          base.narrow(1, rows, ld - rows).fill_(std::numeric_limits<float>::quiet_NaN());
          const Tensor bx = randn({B, T, D}, 92, torch::kFloat32).cuda().to(dtype);
          const Tensor lambda = torch::sigmoid(randn({B, T, D}, 93, torch::kFloat32)).cuda().to(dtype);
          ASSERT_TRUE(ops::fp_mixscan_chunked_fits(base, D, r)) << what;
          ops::DeviceSolverOptions opt;
          opt.stepsize = step;
          auto s1 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
          auto s2 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
          Tensor h1 = randn({B, T, D}, 94, torch::kFloat32).cuda(), h2 = h1.clone();
          Tensor v = torch::empty({B, T, D}, f32), y1 = torch::empty({B, T, D}, f32), y2 = torch::empty({B, T, D}, f32);
          Tensor low1 = torch::empty({B * T, D}, f32.dtype(torch::kBFloat16)), low2 = torch::empty_like(low1);
          for (int call = 0; call < (big ? 2 : 3); ++call) {
            const std::string at = what + ", call " + std::to_string(call + 1);
            ops::fp_mix_cuda(z, base, bx, h1, lambda, v, r, "silu", 1e-6, sum_form, s1);
            ops::fp_scan_cuda(v, lambda, h1, y1, s1, &low1);
            ops::fp_mixscan_chunked_cuda(z, base, bx, h2, lambda, y2, r, "silu", 1e-6, sum_form, s2, &low2);
            // |ŷ − h| shrinks as the calls converge, and with it the digits the two carries share: 2e-6 for it.
            expect_same_iteration(y2, low2, s2, y1, s1, 2e-6, at);
            if (call == 0) {  // the same call again: the same bits (the carry's order does not depend on timing)
              Tensor y3 = torch::empty_like(y2), low3 = torch::empty_like(low2);
              auto s3 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
              ops::fp_mixscan_chunked_cuda(z, base, bx, h2, lambda, y3, r, "silu", 1e-6, sum_form, s3, &low3);
              EXPECT_TRUE(torch::equal(y3, y2)) << "a second run gave other bits, " << at;
              EXPECT_TRUE(torch::equal(s3.diff, s2.diff) && torch::equal(s3.ymax, s2.ymax)) << "maxima, " << at;
            }
            const Tensor words = s2.chunk_flags.cpu();
            EXPECT_EQ(words[0].item<int64_t>(), 0) << "tickets not reset, " << at;
            EXPECT_EQ(words[1].item<int64_t>(), 0) << "blocks-done count not reset, " << at;
            EXPECT_EQ(words[2].item<int64_t>(), call + 1) << "generation, " << at;
            for (auto* s : {&s1, &s2}) {  // the controller's zeroing, without its decisions
              s->diff.zero_();
              s->ymax.zero_();
            }
            std::swap(h1, y1);
            std::swap(h2, y2);
          }
        }
      }
    }
  }
  // The solve's first call: undefined z and h give what zeros give, bit for bit.
  {
    const int64_t B = 3, T = 21, D = 256, r = 1, ld = 264;
    const auto bf = torch::kBFloat16;
    const Tensor base = randn({B * T, ld}, 95, torch::kFloat32).cuda().to(bf);
    const Tensor bx = randn({B, T, D}, 96, torch::kFloat32).cuda().to(bf);
    const Tensor lambda = torch::sigmoid(randn({B, T, D}, 97, torch::kFloat32)).cuda().to(bf);
    ops::DeviceSolverOptions opt;
    auto s1 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    auto s2 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
    Tensor y1 = torch::empty({B, T, D}, f32), y2 = torch::empty({B, T, D}, f32);
    ops::fp_mixscan_chunked_cuda(torch::zeros_like(base), base, bx, torch::zeros({B, T, D}, f32), lambda, y1, r, "silu",
                                 1e-6, false, s1);
    ops::fp_mixscan_chunked_cuda(Tensor(), base, bx, Tensor(), lambda, y2, r, "silu", 1e-6, false, s2);
    EXPECT_TRUE(torch::equal(y1, y2)) << "undefined z and h differ from zeros";
    EXPECT_TRUE(torch::equal(s1.diff, s2.diff) && torch::equal(s1.ymax, s2.ymax)) << "residual maxima";
    // After the stop (counters[1] = 0) the kernel writes nothing and takes no ticket.
    s2.counters.narrow(0, 1, 1).fill_(0);
    Tensor y = torch::full({B, T, D}, 123.0, f32);
    ops::fp_mixscan_chunked_cuda(Tensor(), base, bx, Tensor(), lambda, y, r, "silu", 1e-6, false, s2);
    EXPECT_TRUE(torch::equal(y, torch::full({B, T, D}, 123.0, f32))) << "wrote after the stop";
    EXPECT_EQ(s2.chunk_flags[2].item<int64_t>(), 1) << "a stopped call advanced the generation";
  }
  // Sizes the kernel does not take: rows not 16-byte multiples (D = 300 in bfloat16), wider than 2048 channels.
  EXPECT_FALSE(ops::fp_mixscan_chunked_fits(torch::zeros({4, 304}, f32.dtype(torch::kBFloat16)), 300, 1));
  EXPECT_FALSE(ops::fp_mixscan_chunked_fits(torch::zeros({4, 4112}, f32), 2056, 1));
  EXPECT_TRUE(ops::fp_mixscan_chunked_fits(torch::zeros({4, 304}, f32), 300, 1));
  {
    const int64_t B = 2, T = 9, D = 24;
    auto st = ops::make_device_solver_state(B, T, ops::DeviceSolverOptions{}, torch::kCUDA);
    const Tensor rowsz = torch::zeros({B * T, 32}, f32), xs = torch::zeros({B, T, D}, f32);
    Tensor buf = torch::zeros({B * T * D + 1}, f32);
    Tensor off = buf.narrow(0, 1, B * T * D).view({B, T, D});  // 4 bytes past a 16-byte boundary
    expect_throws_with([&] { ops::fp_mixscan_chunked_cuda(rowsz, rowsz, xs, off, xs, off, 1, "silu", 1e-6, false, st); },
                       "16-byte");
  }
}

// An undefined z stands for the GEMM row of a zero iterate (the solve's first iteration skips that GEMM), and an
// undefined h for that iterate itself (no zero fill): every kernel (staged, direct; fp_mix, fp_scan) gives
// exactly what tensors of zeros give.
TEST(FpStepCuda, UndefinedZIsAZeroGemmRow) {
  FPRNN_REQUIRE_GPU();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  // (D, dtype, misaligned): aligned rows → the staged kernel (D = 300 in bfloat16 would not be); misaligned →
  // the kernel reading global memory directly.
  for (const auto& [D, dtype, misaligned] :
       {std::tuple<int64_t, torch::Dtype, bool>{1024, torch::kBFloat16, false}, {1024, torch::kFloat32, false},
        {300, torch::kFloat32, false}, {1024, torch::kBFloat16, true}}) {
    const int64_t B = 4, T = 11, r = 2, ld = (r * D + r + 7) / 8 * 8;
    const auto place = [&](const Tensor& t) {
      if (!misaligned) return t;
      Tensor buf = torch::empty({t.numel() + 8}, t.options());
      Tensor view = buf.narrow(0, 1, t.numel()).view(t.sizes());
      view.copy_(t);
      return view;
    };
    const Tensor base = place((0.3 * randn({B * T, ld}, 70, torch::kFloat32)).cuda().to(dtype));
    const Tensor zeros = place(torch::zeros({B * T, ld}, f32.dtype(dtype)));
    const Tensor bx = place(randn({B, T, D}, 71, torch::kFloat32).cuda().to(dtype));
    const Tensor lambda = place(torch::sigmoid(randn({B, T, D}, 72, torch::kFloat32)).cuda().to(dtype));
    const Tensor h = place(torch::zeros({B, T, D}, f32));
    const std::string what = "D " + std::to_string(D) + " " + dtype_name(dtype) + (misaligned ? " misaligned" : "");
    for (bool sum_form : {false, true}) {
      ops::DeviceSolverOptions opt;
      auto s1 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
      auto s2 = ops::make_device_solver_state(B, T, opt, torch::kCUDA);
      Tensor y1 = place(torch::empty({B, T, D}, f32)), y2 = place(torch::empty({B, T, D}, f32));
      ops::fp_mixscan_cuda(zeros, base, bx, h, lambda, y1, r, "silu", 1e-6, sum_form, s1);
      ops::fp_mixscan_cuda(Tensor(), base, bx, h, lambda, y2, r, "silu", 1e-6, sum_form, s2);
      EXPECT_TRUE(torch::equal(y1, y2)) << "mix + scan, " << what << " sum_form " << sum_form;
      EXPECT_TRUE(torch::equal(s1.diff, s2.diff)) << "residual maxima, " << what;
      EXPECT_GT(y1.abs().max().item<float>(), 0.0f) << "nothing computed, " << what;
      Tensor v1 = torch::empty({B, T, D}, f32), v2 = torch::empty({B, T, D}, f32);
      ops::fp_mix_cuda(zeros, base, bx, h, lambda, v1, r, "silu", 1e-6, sum_form, s1);
      ops::fp_mix_cuda(Tensor(), base, bx, h, lambda, v2, r, "silu", 1e-6, sum_form, s2);
      EXPECT_TRUE(torch::equal(v1, v2)) << "mix, " << what << " sum_form " << sum_form;

      // h undefined as well (with and without a bfloat16 copy and damping): mix + scan, then mix and scan.
      for (double step : {1.0, 0.6}) {
        ops::DeviceSolverOptions o;
        o.stepsize = step;
        auto a1 = ops::make_device_solver_state(B, T, o, torch::kCUDA);
        auto a2 = ops::make_device_solver_state(B, T, o, torch::kCUDA);
        Tensor y3 = place(torch::empty({B, T, D}, f32)), y4 = place(torch::empty({B, T, D}, f32));
        Tensor low3 = torch::empty({B * T, D}, f32.dtype(torch::kBFloat16)), low4 = torch::empty_like(low3);
        ops::fp_mixscan_cuda(zeros, base, bx, h, lambda, y3, r, "silu", 1e-6, sum_form, a1, &low3);
        ops::fp_mixscan_cuda(Tensor(), base, bx, Tensor(), lambda, y4, r, "silu", 1e-6, sum_form, a2, &low4);
        const std::string hw = what + " sum_form " + std::to_string(sum_form) + " step " + std::to_string(step);
        EXPECT_TRUE(torch::equal(y3, y4)) << "mix + scan, undefined h, " << hw;
        EXPECT_TRUE(torch::equal(low3, low4)) << "rounded copy, undefined h, " << hw;
        EXPECT_TRUE(torch::equal(a1.diff, a2.diff)) << "residual maxima, undefined h, " << hw;
        EXPECT_TRUE(torch::equal(a1.ymax, a2.ymax)) << "residual maxima, undefined h, " << hw;
        Tensor v3 = torch::empty({B, T, D}, f32), v4 = torch::empty({B, T, D}, f32);
        ops::fp_mix_cuda(zeros, base, bx, h, lambda, v3, r, "silu", 1e-6, sum_form, a1);
        ops::fp_mix_cuda(Tensor(), base, bx, Tensor(), lambda, v4, r, "silu", 1e-6, sum_form, a2);
        EXPECT_TRUE(torch::equal(v3, v4)) << "mix, undefined h, " << hw;
        Tensor y5 = torch::empty({B, T, D}, f32), y6 = torch::empty({B, T, D}, f32);
        ops::fp_scan_cuda(v3, lambda, h, y5, a1, &low3);
        ops::fp_scan_cuda(v3, lambda, Tensor(), y6, a2, &low4);
        EXPECT_TRUE(torch::equal(y5, y6)) << "scan, undefined h, " << hw;
        EXPECT_TRUE(torch::equal(low3, low4)) << "scan's rounded copy, undefined h, " << hw;
        EXPECT_TRUE(torch::equal(a1.diff, a2.diff)) << "scan's residual maxima, undefined h, " << hw;
      }
    }
  }
  // A z of another shape or dtype than base is refused.
  const Tensor base = torch::zeros({6, 8}, f32), h = torch::zeros({2, 3, 2}, f32);
  ops::DeviceSolverOptions opt;
  auto st = ops::make_device_solver_state(2, 3, opt, torch::kCUDA);
  Tensor y = h.clone();
  EXPECT_THROW(ops::fp_mixscan_cuda(torch::zeros({6, 9}, f32), base, h, h, h, y, 1, "silu", 1e-6, false, st), c10::Error);
  EXPECT_THROW(ops::fp_mixscan_cuda(base.to(torch::kBFloat16), base, h, h, h, y, 1, "silu", 1e-6, false, st),
               c10::Error);
}

// fp_select_cuda copies the buffer of the counted parity, converted: sizes with and without a 4-element tail,
// every output dtype, both parities.
TEST(FpStepCuda, SelectTakesTheBufferOfTheCountedParity) {
  FPRNN_REQUIRE_GPU();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  for (int64_t D : {1024, 7, 1}) {
    const Tensor even = randn({3, 5, D}, 80, torch::kFloat32).cuda(), odd = randn({3, 5, D}, 81, torch::kFloat32).cuda();
    for (auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
      for (int64_t iterations : {0, 1, 4, 7}) {
        ops::DeviceSolverOptions opt;
        auto st = ops::make_device_solver_state(3, 5, opt, torch::kCUDA);
        st.counters.narrow(0, 0, 1).fill_(iterations);
        Tensor out = torch::empty({3, 5, D}, f32.dtype(dtype));
        ops::fp_select_cuda(st, even, odd, out);
        const Tensor want = (iterations % 2 == 0 ? even : odd).to(dtype);
        EXPECT_TRUE(torch::equal(out, want)) << "D " << D << " " << dtype_name(dtype) << " after " << iterations;
      }
    }
  }
  ops::DeviceSolverOptions opt;
  auto st = ops::make_device_solver_state(1, 1, opt, torch::kCUDA);
  const Tensor a = torch::zeros({1, 1, 8}, f32);
  Tensor wrong = torch::empty({1, 1, 8}, f32.dtype(torch::kFloat64));
  EXPECT_THROW(ops::fp_select_cuda(st, a, a, wrong), c10::Error);
}
#endif

// The fused Kronecker op: CUDA kernels against the CPU kernels (which test_kronecker.cpp checks against the
// ATen reference), forward (both normalisations) and backward (column-wise), float64 and float32, from a 1×1
// mixer to the layers' 32×32 and an oblong 16×32; and the autograd entry on the GPU.
struct KronShape {
  int64_t N, m1, m2;
  bool symmetric, spectral;
};

class KroneckerCudaTest : public ::testing::TestWithParam<KronShape> {};

TEST_P(KroneckerCudaTest, FwdAndBwdMatchCpu) {
  FPRNN_REQUIRE_GPU();
  const KronShape k = GetParam();
  ops::KroneckerSpec s;
  s.m1 = k.m1;
  s.m2 = k.m2;
  s.symmetric = k.symmetric;
  s.spectral = k.spectral;
  const Tensor raw = randn({k.N, s.raw_size()}, 30), v = randn({k.N, k.m1 * k.m2}, 31);
  const Tensor g = randn({k.N, k.m1 * k.m2}, 32);
  for (auto dt : {torch::kFloat64, torch::kFloat32}) {
    const double tol = dt == torch::kFloat64 ? 1e-12 : 1e-5;
    const std::string what = std::string(dt == torch::kFloat64 ? "float64" : "float32");
    const Tensor r = raw.to(dt), x = v.to(dt), gy = g.to(dt);
    const Tensor want = ops::kronecker_fwd_cpu(r, x, s);
    expect_close(ops::kronecker_fwd_cuda(r.cuda(), x.cuda(), s).cpu().to(torch::kFloat64), want.to(torch::kFloat64),
                 tol, what + " forward");
    if (k.spectral) continue;
    const auto [graw_cpu, gv_cpu] = ops::kronecker_bwd_cpu(r, x, gy, s);
    const auto [graw, gv] = ops::kronecker_bwd_cuda(r.cuda(), x.cuda(), gy.cuda(), s);
    expect_close(graw.cpu().to(torch::kFloat64), graw_cpu.to(torch::kFloat64), tol, what + " d raw");
    expect_close(gv.cpu().to(torch::kFloat64), gv_cpu.to(torch::kFloat64), tol, what + " d v");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, KroneckerCudaTest,
                         ::testing::Values(KronShape{3, 1, 1, true, false}, KronShape{17, 2, 3, true, false},
                                           KronShape{9, 3, 4, false, false}, KronShape{33, 4, 4, true, true},
                                           KronShape{700, 32, 32, true, false}, KronShape{70, 32, 32, true, true},
                                           KronShape{50, 16, 32, true, false}, KronShape{20, 32, 32, false, false}));

// bfloat16 and float16 tensors go into the kernels as they are (widened on load, rounded on store): the result
// must be the float32 kernels' on the same (rounded) inputs, rounded once, forward and backward. At most one
// unit in the last place apart (a float32 value on a rounding midpoint may go either way); in practice equal.
TEST(KroneckerCuda, ReducedPrecisionIoMatchesFloat32KernelsRounded) {
  FPRNN_REQUIRE_GPU();
  for (const bool symmetric : {true, false}) {
    ops::KroneckerSpec s;
    s.m1 = 32;
    s.m2 = 32;
    s.symmetric = symmetric;
    const int64_t N = 300;
    for (auto io : {torch::kBFloat16, torch::kFloat16}) {
      const std::string what = std::string(io == torch::kBFloat16 ? "bfloat16" : "float16") +
                               (symmetric ? ", symmetric" : ", general");
      const Tensor raw = randn({N, s.raw_size()}, 40).to(io).cuda(), v = randn({N, 1024}, 41).to(io).cuda();
      const Tensor g = randn({N, 1024}, 42).to(io).cuda();
      const Tensor y = ops::kronecker_fwd_cuda(raw, v, s);
      ASSERT_EQ(y.scalar_type(), io) << what;
      const Tensor y32 = ops::kronecker_fwd_cuda(raw.to(torch::kFloat32), v.to(torch::kFloat32), s);
      const double ulp = io == torch::kBFloat16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -10);
      auto expect_rounded = [&](const Tensor& got, const Tensor& want32, const std::string& name) {
        const Tensor want = want32.to(io).to(torch::kFloat64), have = got.to(torch::kFloat64);
        const Tensor bound = want.abs().clamp_min(1e-30) * ulp;
        EXPECT_TRUE(((have - want).abs() <= bound).all().item<bool>())
            << what << " " << name << ": max abs difference " << (have - want).abs().max().item<double>();
        EXPECT_GT((have == want).to(torch::kFloat64).mean().item<double>(), 0.999) << what << " " << name;
      };
      expect_rounded(y, y32, "forward");
      const auto [graw, gv] = ops::kronecker_bwd_cuda(raw, v, g, s);
      ASSERT_EQ(graw.scalar_type(), io);
      const auto [graw32, gv32] =
          ops::kronecker_bwd_cuda(raw.to(torch::kFloat32), v.to(torch::kFloat32), g.to(torch::kFloat32), s);
      expect_rounded(graw, graw32, "d raw");
      expect_rounded(gv, gv32, "d v");
    }
  }
}

TEST(KroneckerCuda, AutogradEntryMatchesCpu) {
  FPRNN_REQUIRE_GPU();
  ops::KroneckerSpec s;
  s.m1 = 4;
  s.m2 = 8;
  const Tensor raw = randn({2, 5, s.raw_size()}, 33), v = randn({2, 5, 32}, 34), w = randn({2, 5, 32}, 35);
  Tensor rc = raw.clone().requires_grad_(true), vc = v.clone().requires_grad_(true);
  Tensor rg = raw.cuda().requires_grad_(true), vg = v.cuda().requires_grad_(true);
  (ops::kronecker_apply(rc, vc, s) * w).sum().backward();
  (ops::kronecker_apply(rg, vg, s) * w.cuda()).sum().backward();
  expect_close(rg.grad().cpu(), rc.grad(), 1e-12, "d raw");
  expect_close(vg.grad().cpu(), vc.grad(), 1e-12, "d v");
  // bfloat16 inputs are computed in float32 on both devices.
  const Tensor yb = ops::kronecker_apply(raw.to(torch::kBFloat16).cuda(), v.to(torch::kBFloat16).cuda(), s);
  EXPECT_EQ(yb.scalar_type(), torch::kBFloat16);
  expect_close(yb.cpu().to(torch::kFloat64),
               ops::kronecker_apply(raw.to(torch::kBFloat16), v.to(torch::kBFloat16), s).to(torch::kFloat64), 1e-2,
               "bfloat16");
  // ... and their gradients come back in bfloat16, as the float32 computation's rounded.
  Tensor rb = raw.to(torch::kBFloat16).cuda().requires_grad_(true);
  Tensor vb = v.to(torch::kBFloat16).cuda().requires_grad_(true);
  (ops::kronecker_apply(rb, vb, s).to(torch::kFloat32) * w.cuda()).sum().backward();
  ASSERT_EQ(rb.grad().scalar_type(), torch::kBFloat16);
  Tensor rf = raw.to(torch::kBFloat16).to(torch::kFloat32).cuda().requires_grad_(true);
  Tensor vf = v.to(torch::kBFloat16).to(torch::kFloat32).cuda().requires_grad_(true);
  (ops::kronecker_apply(rf, vf, s).to(torch::kBFloat16).to(torch::kFloat32) * w.cuda()).sum().backward();
  expect_close(rb.grad().cpu().to(torch::kFloat64), rf.grad().cpu().to(torch::kFloat64), 1e-2, "bfloat16 d raw");
  expect_close(vb.grad().cpu().to(torch::kFloat64), vf.grad().cpu().to(torch::kFloat64), 1e-2, "bfloat16 d v");
}

}  // namespace
}  // namespace fprnn::testing
