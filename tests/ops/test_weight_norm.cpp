// Tests for weight_norm_blocks (W = [g ⊙ v/‖v‖ …; 0] cast and cut into column blocks): the float64 references
// against a hand-computed row and finite differences, the ATen composite (the CPU path) against them forward and
// backward, argument checks; on a GPU the CUDA kernels against the references in float64, float32 → float32 /
// bfloat16 / float16, with zero rows, undefined block gradients, plain weights (no g), deterministic bits, and
// the differentiable entry against finite differences.
#include "fprnn/ops/weight_norm.h"
#include "testing.h"

#include <cmath>
#include <string>
#include <vector>

namespace fprnn::ops {
namespace {

using fprnn::testing::check_gradients;
using fprnn::testing::expect_close;
using fprnn::testing::expect_throws_with;
using fprnn::testing::randn;

struct Args {
  std::vector<torch::Tensor> v, g;
};
// Two matrices of K columns (5 and 1 rows, as the directions and α of a rank-1 mixer), g as (rows, 1) like
// Linear's weight_g, positive.
Args args(int64_t rows0, int64_t rows1, int64_t K, uint64_t seed, torch::Dtype dtype = torch::kFloat64) {
  return {{randn({rows0, K}, seed, dtype), randn({rows1, K}, seed + 1, dtype)},
          {(1.0 + 0.3 * randn({rows0, 1}, seed + 2)).to(dtype), (1.0 + 0.3 * randn({rows1, 1}, seed + 3)).to(dtype)}};
}

std::vector<torch::Tensor> to_device(const std::vector<torch::Tensor>& ts, const torch::Device& d) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.to(d));
  return out;
}

torch::Tensor joined(const std::vector<torch::Tensor>& blocks) { return torch::cat(blocks, 1); }

TEST(WeightNormRef, HandRows) {
  const auto v = torch::tensor({3.0, 4.0, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  const auto g = torch::tensor({2.0, 0.5}, torch::kFloat64).view({2, 1});
  const torch::Tensor W = weight_norm_fwd_ref({v}, {g}, 3);
  const auto expected = torch::tensor({1.2, 1.6, 0.0, 0.5, 0.0, 0.0}, torch::kFloat64).view({3, 2});
  expect_close(W, expected, 1e-15, "hand rows");
  expect_close(weight_norm_fwd_ref({v}, {}, 2), v, 0.0, "plain weights");
  // dW = (1, 0) on the first row: s = 3, n = 5, dg = 3/5, dv = (2/5)((1, 0) − (3, 4)·3/25).
  const auto dW = torch::tensor({1.0, 0.0, 0.0, 0.0, 7.0, 7.0}, torch::kFloat64).view({3, 2});
  const auto d = weight_norm_bwd_ref(dW, {v}, {g});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[1][0][0].item<double>(), 0.6, 1e-15);
  EXPECT_NEAR(d[0][0][0].item<double>(), 0.4 * (1.0 - 9.0 / 25.0), 1e-15);
  EXPECT_NEAR(d[0][0][1].item<double>(), 0.4 * (0.0 - 12.0 / 25.0), 1e-15);
  EXPECT_EQ(d[0][1].abs().sum().item<double>(), 0.0) << "a zero gradient row";
  EXPECT_EQ(d[1].sizes(), g.sizes());
}

// The backward reference is the derivative of the forward reference (central differences in float64).
TEST(WeightNormRef, BackwardIsTheForwardsDerivative) {
  const Args a = args(5, 1, 12, 10);
  const torch::Tensor w = randn({8, 12}, 14);  // two padding rows
  const auto d = weight_norm_bwd_ref(w, a.v, a.g);
  std::vector<torch::Tensor> leaves{a.v[0].clone(), a.v[1].clone(), a.g[0].clone(), a.g[1].clone()};
  for (size_t k = 0; k < leaves.size(); ++k) {
    const torch::Tensor num = fprnn::testing::numerical_grad(
        [&] { return (weight_norm_fwd_ref({leaves[0], leaves[1]}, {leaves[2], leaves[3]}, 8) * w).sum(); },
        leaves[k]);
    expect_close(d[k], num, 1e-8, "reference gradient " + std::to_string(k));
  }
  // Plain weights: dv is dW's rows.
  const auto p = weight_norm_bwd_ref(w, a.v, {});
  ASSERT_EQ(p.size(), 2u);
  expect_close(p[0], w.narrow(0, 0, 5), 0.0, "plain dv");
  expect_close(p[1], w.narrow(0, 5, 1), 0.0, "plain dv");
}

// The CPU path: the ATen composite matches the references forward (blocks, padding, dtype) and backward.
TEST(WeightNormAten, MatchesTheReferences) {
  for (const bool with_g : {true, false}) {
    const Args a = args(5, 1, 12, 20);
    const std::vector<torch::Tensor> g = with_g ? a.g : std::vector<torch::Tensor>{};
    const std::string what = with_g ? "weight-normalised" : "plain";
    const auto blocks = weight_norm_blocks({a.v[0], a.v[1]}, g, 8, 3, torch::kFloat64);
    ASSERT_EQ(blocks.size(), 3u);
    for (const auto& b : blocks) {
      EXPECT_TRUE(b.is_contiguous());
      EXPECT_EQ(b.sizes(), (std::vector<int64_t>{8, 4}));
    }
    expect_close(joined(blocks), weight_norm_fwd_ref(a.v, g, 8), 1e-15, what + " forward");
    const auto f32 = weight_norm_blocks(to_device(a.v, torch::kCPU), g, 8, 1, torch::kFloat32);
    EXPECT_EQ(f32[0].scalar_type(), torch::kFloat32);

    std::vector<torch::Tensor> leaves;
    for (const auto& t : a.v) leaves.push_back(t.clone().requires_grad_());
    if (with_g)
      for (const auto& t : a.g) leaves.push_back(t.clone().requires_grad_());
    const std::vector<torch::Tensor> gl(leaves.begin() + 2, leaves.end());
    const torch::Tensor w = randn({8, 12}, 24);
    (joined(weight_norm_blocks({leaves[0], leaves[1]}, gl, 8, 3, torch::kFloat64)) * w).sum().backward();
    const auto d = weight_norm_bwd_ref(w, a.v, g);
    ASSERT_EQ(d.size(), leaves.size());
    for (size_t k = 0; k < leaves.size(); ++k)
      expect_close(leaves[k].grad(), d[k], 1e-13, what + " gradient " + std::to_string(k));
  }
}

TEST(WeightNormAten, RejectsBadArguments) {
  const Args a = args(5, 1, 12, 30);
  expect_throws_with([&] { weight_norm_blocks({}, {}, 4, 1, torch::kFloat32); }, "no matrices");
  expect_throws_with([&] { weight_norm_blocks(a.v, {a.g[0]}, 8, 1, torch::kFloat32); }, "1 norms g for 2");
  expect_throws_with([&] { weight_norm_blocks({a.v[0], randn({2, 11}, 1)}, {}, 8, 1, torch::kFloat32); },
                     "v[1] must be (rows, 12)");
  expect_throws_with([&] { weight_norm_blocks(a.v, a.g, 5, 1, torch::kFloat32); }, "fewer than the matrices' 6");
  expect_throws_with([&] { weight_norm_blocks(a.v, a.g, 8, 5, torch::kFloat32); }, "do not divide K = 12");
  expect_throws_with([&] { weight_norm_blocks(a.v, a.g, 8, 1, torch::kInt32); }, "dtype must be");
  expect_throws_with([&] { weight_norm_blocks({a.v[0].to(torch::kBFloat16)}, {}, 8, 1, torch::kFloat32); },
                     "float32 or float64");
  expect_throws_with([&] { weight_norm_blocks(a.v, {a.g[0], randn({2, 1}, 2)}, 8, 1, torch::kFloat32); },
                     "g[1] must be (1, 1)");
}

// ---- CUDA ---------------------------------------------------------------------------------------------

// The kernels against the references: float64 throughout (to summation order), float32 v into float32, bfloat16
// and float16 W (to the output's rounding), with padding rows and 1, 2 or 4 column blocks, K not a multiple of
// the block's threads; the backward with the gradient blocks in the forward's dtype, one of them undefined.
TEST(WeightNormCuda, KernelsMatchTheReferences) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    torch::Dtype v, out;
    double fwd_tol, bwd_tol;
  };
  const std::vector<Case> cases{{torch::kFloat64, torch::kFloat64, 1e-14, 1e-12},
                                {torch::kFloat32, torch::kFloat32, 1e-6, 2e-6},
                                {torch::kFloat32, torch::kBFloat16, 4e-3, 2e-6},
                                {torch::kFloat32, torch::kHalf, 5e-4, 2e-6}};
  for (const auto& cs : cases) {
    for (const int64_t blocks : {1, 2, 4}) {
      for (const bool with_g : {true, false}) {
        const int64_t K = 4 * 300;
        const Args a = args(37, 3, K, 40, cs.v);
        const std::vector<torch::Tensor> g = with_g ? a.g : std::vector<torch::Tensor>{};
        std::vector<torch::Tensor> gflat;
        for (const auto& t : g) gflat.push_back(t.view({-1}).cuda());
        const std::string what = std::string(with_g ? "normalised " : "plain ") + c10::toString(cs.v) + " → " +
                                 c10::toString(cs.out) + ", " + std::to_string(blocks) + " blocks";
        const auto out = weight_norm_fwd_cuda(to_device(a.v, torch::kCUDA), gflat, 48, blocks, cs.out);
        ASSERT_EQ(out.size(), static_cast<size_t>(blocks)) << what;
        for (const auto& b : out) ASSERT_EQ(b.scalar_type(), cs.out) << what;
        const torch::Tensor W = joined(out).cpu().to(torch::kFloat64);
        const torch::Tensor ref = weight_norm_fwd_ref(a.v, g, 48);
        expect_close(W, ref, cs.fwd_tol, what + ": forward");
        EXPECT_EQ(W.narrow(0, 40, 8).abs().max().item<double>(), 0.0) << what << ": padding rows";

        // Gradient blocks in the output dtype; block 0 undefined when there are several.
        std::vector<torch::Tensor> dW;
        for (int64_t b = 0; b < blocks; ++b)
          dW.push_back(b == 0 && blocks > 1 ? torch::Tensor() : randn({48, K / blocks}, 50 + b, cs.out).cuda());
        std::vector<torch::Tensor> dense;
        for (int64_t b = 0; b < blocks; ++b)
          dense.push_back(dW[b].defined() ? dW[b].cpu().to(torch::kFloat64) : torch::zeros({48, K / blocks}, torch::kFloat64));
        const auto d = weight_norm_bwd_cuda(dW, to_device(a.v, torch::kCUDA), gflat);
        const auto dref = weight_norm_bwd_ref(joined(dense), a.v, g);
        ASSERT_EQ(d.size(), dref.size()) << what;
        for (size_t k = 0; k < d.size(); ++k) {
          EXPECT_EQ(d[k].scalar_type(), cs.v) << what;
          expect_close(d[k].cpu().to(torch::kFloat64).view(dref[k].sizes()), dref[k], cs.bwd_tol,
                       what + ": gradient " + std::to_string(k));
        }
        EXPECT_TRUE(torch::equal(weight_norm_bwd_cuda(dW, to_device(a.v, torch::kCUDA), gflat)[0], d[0]))
            << what << ": not deterministic";
      }
    }
  }
}

// The entry on a GPU: float64 gradients against finite differences (through the autograd function), the
// outputs and gradients of the CPU composite, and a block left out of the loss (its gradient undefined).
TEST(WeightNormCuda, EntryGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Args a = args(5, 1, 16, 60);
  const torch::Tensor w = randn({8, 8}, 64);
  const auto fn = [&](const std::vector<torch::Tensor>& in) {
    const auto blocks = weight_norm_blocks({in[0].cuda(), in[1].cuda()}, {in[2].cuda(), in[3].cuda()}, 8, 2,
                                           torch::kFloat64);
    return (blocks[1].cpu() * w).sum();  // block 0 unused
  };
  std::vector<torch::Tensor> leaves{a.v[0].clone(), a.v[1].clone(), a.g[0].clone(), a.g[1].clone()};
  check_gradients([&] { return fn(leaves); }, leaves, 1e-7, "weight_norm_blocks on CUDA");
  // Against the CPU composite's autograd.
  std::vector<torch::Tensor> gpu_leaves, cpu_leaves;
  for (const auto& t : leaves) {
    gpu_leaves.push_back(t.detach().cuda().requires_grad_());
    cpu_leaves.push_back(t.detach().clone().requires_grad_());
  }
  const auto gb = weight_norm_blocks({gpu_leaves[0], gpu_leaves[1]}, {gpu_leaves[2], gpu_leaves[3]}, 8, 2,
                                     torch::kFloat64);
  const auto cb = weight_norm_blocks({cpu_leaves[0], cpu_leaves[1]}, {cpu_leaves[2], cpu_leaves[3]}, 8, 2,
                                     torch::kFloat64);
  const torch::Tensor w2 = randn({8, 16}, 65);
  (joined(gb) * w2.cuda()).sum().backward();
  (joined(cb) * w2).sum().backward();
  expect_close(joined(gb).detach().cpu(), joined(cb).detach(), 1e-15, "CUDA vs CPU forward");
  for (size_t k = 0; k < leaves.size(); ++k) {
    ASSERT_EQ(gpu_leaves[k].grad().sizes(), leaves[k].sizes());
    expect_close(gpu_leaves[k].grad().cpu(), cpu_leaves[k].grad(), 1e-13, "CUDA vs CPU gradient " + std::to_string(k));
  }
  expect_throws_with([&] { weight_norm_blocks({a.v[0].cuda(), a.v[1].cuda()}, {}, 8, 8, torch::kFloat32); },
                     "at most");
}

}  // namespace
}  // namespace fprnn::ops
