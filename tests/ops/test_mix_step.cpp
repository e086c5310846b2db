// Tests for mix_step (y = (1 − λ)(Q(raw)(b⊙x − h) + h), Householder product or DPLR, include/fprnn/ops/mix_step.h):
// the float64 reference against the ATen composite (forward, and the composite's autograd gradients against the
// reference's backward) and against finite differences, the clamped-norm branch, padding columns, argument
// checks; on a GPU the CUDA kernels against the reference in float64, float32 and bfloat16 (1, 2, 4 and 8
// channels per thread, ranks 1–4, both forms, every activation, a padded and strided raw whose pad is NaN), the
// backward's row kernel against its block kernel, and the autograd entry.
#include "fprnn/ops/mix_step.h"
#include "testing.h"

#include <limits>
#include <string>
#include <vector>

namespace fprnn::ops {
namespace {

using fprnn::testing::expect_close;
using fprnn::testing::numerical_grad;
using fprnn::testing::randn;

struct Args {
  torch::Tensor raw, bx, h, oml;
};

// raw (N, ld) with ld = r·D + r + pad; oml in (0, 1) like 1 − λ.
Args make_args(int64_t N, int64_t D, int64_t r, int64_t pad, uint64_t seed, torch::Dtype dtype = torch::kFloat64) {
  return {randn({N, r * D + r + pad}, seed, dtype), randn({N, D}, seed + 1, dtype), randn({N, D}, seed + 2, dtype),
          torch::sigmoid(randn({N, D}, seed + 3)).to(dtype)};
}

std::string spec_name(const MixStepSpec& s) {
  return std::string(s.sum_form ? "dplr" : "householder") + " r" + std::to_string(s.rank) + " " + s.act;
}

std::vector<MixStepSpec> specs() {
  std::vector<MixStepSpec> out;
  for (bool sum_form : {false, true}) {
    for (const char* act : {"identity", "relu", "silu"}) {
      for (int64_t r : {1, 3}) out.push_back({r, act, 1e-6, sum_form});
    }
  }
  return out;
}

TEST(MixStepRef, MatchesTheAtenComposite) {
  for (const auto& spec : specs()) {
    const Args a = make_args(6, 7, spec.rank, 2, 10);
    expect_close(mix_step_aten(a.raw, a.bx, a.h, a.oml, spec), mix_step_fwd_ref(a.raw, a.bx, a.h, a.oml, spec), 1e-13,
                 "forward " + spec_name(spec));
  }
}

// The reference's backward against central differences of its forward, and the composite's autograd gradients
// against the reference's backward; the padding columns get a zero gradient.
TEST(MixStepRef, BackwardMatchesFiniteDifferencesAndTheComposite) {
  for (const auto& spec : specs()) {
    const std::string what = spec_name(spec);
    const Args a = make_args(3, 5, spec.rank, 3, 20);
    const torch::Tensor gy = randn({3, 5}, 21);
    auto [draw, dbx, dh, doml] = mix_step_bwd_ref(gy, a.raw, a.bx, a.h, a.oml, spec);
    const std::vector<torch::Tensor> grads{draw, dbx, dh, doml};
    for (int which = 0; which < 4; ++which) {
      std::vector<torch::Tensor> v{a.raw.clone(), a.bx.clone(), a.h.clone(), a.oml.clone()};
      const torch::Tensor num =
          numerical_grad([&] { return mix_step_fwd_ref(v[0], v[1], v[2], v[3], spec) * gy; }, v[which]);
      // relu is not differentiable at 0; randn never lands there.
      expect_close(grads[which], num, 1e-7, what + ": finite differences, argument " + std::to_string(which));
    }
    const int64_t used = spec.rank * 5 + spec.rank;
    EXPECT_EQ(draw.narrow(1, used, 3).abs().max().item<double>(), 0.0) << what << ": padding gradient";

    std::vector<torch::Tensor> in{a.raw.clone().requires_grad_(), a.bx.clone().requires_grad_(),
                                  a.h.clone().requires_grad_(), a.oml.clone().requires_grad_()};
    (mix_step(in[0], in[1], in[2], in[3], spec) * gy).sum().backward();
    for (int which = 0; which < 4; ++which) {
      expect_close(in[which].grad(), grads[which], 1e-12, what + ": composite autograd, argument " + std::to_string(which));
    }
  }
}

// A reflection whose activations are shorter than eps: u = a / eps, and its gradient skips the projection.
TEST(MixStepRef, ClampedNormBranch) {
  for (bool sum_form : {false, true}) {
    const MixStepSpec spec{2, "identity", 1e-2, sum_form};
    Args a = make_args(2, 4, 2, 0, 30);
    a.raw.narrow(1, 0, 4).mul_(1e-4);  // the first reflection's raw: ‖a‖ ≈ 2e-4 < eps
    const torch::Tensor gy = randn({2, 4}, 31);
    auto [draw, dbx, dh, doml] = mix_step_bwd_ref(gy, a.raw, a.bx, a.h, a.oml, spec);
    torch::Tensor raw = a.raw.clone().requires_grad_();
    (mix_step_aten(raw, a.bx, a.h, a.oml, spec) * gy).sum().backward();
    expect_close(raw.grad(), draw, 1e-12, std::string("clamped norm, sum_form ") + (sum_form ? "1" : "0"));
  }
}

TEST(MixStepEntry, BadInputsThrow) {
  const Args a = make_args(2, 4, 1, 0, 40);
  const MixStepSpec spec{1, "silu", 1e-6, false};
  const auto& expect_throw = fprnn::testing::expect_throws_with;
  expect_throw([&] { mix_step(a.raw.narrow(1, 0, 4), a.bx, a.h, a.oml, spec); }, "fewer than r·D + r");
  expect_throw([&] { mix_step(a.raw, a.bx, a.h.narrow(1, 0, 3), a.oml, spec); }, "must have one shape");
  expect_throw([&] { mix_step(a.raw, a.bx, a.h, a.oml.to(torch::kFloat32), spec); }, "dtype");
  expect_throw([&] { mix_step(a.raw, a.bx, a.h, a.oml, {1, "tanh", 1e-6, false}); }, "unknown act");
  expect_throw([&] { mix_step(a.raw, a.bx, a.h, a.oml, {0, "silu", 1e-6, false}); }, "rank must be");
  expect_throw([&] { mix_step(a.raw, a.bx, a.h, a.oml, {1, "silu", 0.0, false}); }, "eps must be positive");
}

// ---- CUDA kernels -----------------------------------------------------------------------------------

double fwd_tol(torch::Dtype dt) { return dt == torch::kFloat64 ? 1e-12 : dt == torch::kFloat32 ? 2e-6 : 8e-3; }
double bwd_tol(torch::Dtype dt) { return dt == torch::kFloat64 ? 1e-11 : dt == torch::kFloat32 ? 2e-5 : 3e-2; }

TEST(MixStepCuda, KernelsMatchTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto dtype : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
    // The block kernels: 1, 2, 4 and 8 channels per thread (the backward always, the forward in float64); the
    // forward's warp kernel in float32 and bfloat16: one, two and four warps per token (D = 300 element by
    // element, the others in 16-byte vectors).
    for (const auto& [D, ranks] : std::vector<std::pair<int64_t, std::vector<int64_t>>>{
             {24, {1, 2, 4}}, {300, {1, 2}}, {1024, {1, 4}}, {1536, {1, 2}}, {2048, {1}}}) {
      for (const int64_t r : ranks) {
        for (bool sum_form : {false, true}) {
          for (const char* act : {"identity", "relu", "silu"}) {
            const MixStepSpec spec{r, act, 1e-6, sum_form};
            const std::string what = spec_name(spec) + " D " + std::to_string(D) + " " + c10::toString(dtype);
            const int64_t N = 9, ld = (r * D + r + 7) / 8 * 8 + 8;
            const Args a = make_args(N, D, r, ld - (r * D + r), 50, dtype);
            // raw on the GPU as the first ld columns of a wider tensor (row stride ld + 16), its pad NaN.
            torch::Tensor wide = torch::full({N, ld + 16}, std::numeric_limits<double>::quiet_NaN(),
                                             torch::TensorOptions().dtype(dtype).device(torch::kCUDA));
            wide.narrow(1, 0, r * D + r).copy_(a.raw.narrow(1, 0, r * D + r));
            const torch::Tensor raw = wide.narrow(1, 0, ld);
            const torch::Tensor y = mix_step_fwd_cuda(raw, a.bx.cuda(), a.h.cuda(), a.oml.cuda(), spec);
            expect_close(y.cpu().to(torch::kFloat64), mix_step_fwd_ref(a.raw, a.bx, a.h, a.oml, spec), fwd_tol(dtype),
                         what + ": y");
            const torch::Tensor gy = randn({N, D}, 51, dtype);
            auto [draw, dbx, dh, doml] = mix_step_bwd_cuda(gy.cuda(), raw, a.bx.cuda(), a.h.cuda(), a.oml.cuda(), spec);
            auto [rraw, rbx, rh, roml] = mix_step_bwd_ref(gy, a.raw, a.bx, a.h, a.oml, spec);
            ASSERT_EQ(draw.size(1), ld) << what;
            expect_close(draw.cpu().to(torch::kFloat64), rraw, bwd_tol(dtype), what + ": d raw");
            EXPECT_EQ(draw.narrow(1, r * D + r, ld - (r * D + r)).abs().max().item<double>(), 0.0) << what << ": pad";
            expect_close(dbx.cpu().to(torch::kFloat64), rbx, bwd_tol(dtype), what + ": d bx");
            expect_close(dh.cpu().to(torch::kFloat64), rh, bwd_tol(dtype), what + ": dh");
            expect_close(doml.cpu().to(torch::kFloat64), roml, bwd_tol(dtype), what + ": d oml");
          }
        }
      }
    }
  }
}

// The backward's two CUDA kernels on the same tokens: raw 16-byte aligned (the 8-channels-per-thread row kernel)
// and shifted by one element (the block kernel): the same gradients to rounding (the dot products are summed in
// another order), and the pad of d raw zero in both.
TEST(MixStepCuda, BackwardRowKernelMatchesTheBlockKernel) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& [D, r] : std::vector<std::pair<int64_t, int64_t>>{{8, 1}, {1024, 1}, {1024, 4}, {2048, 2}}) {
      for (bool sum_form : {false, true}) {
        const MixStepSpec spec{r, "silu", 1e-6, sum_form};
        const std::string what = spec_name(spec) + " D " + std::to_string(D) + " " + c10::toString(dtype);
        const int64_t N = 37, ld = (r * D + r + 7) / 8 * 8;
        const Args a = make_args(N, D, r, ld - (r * D + r), 70, dtype);
        const auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA);
        torch::Tensor wide = torch::zeros({N, ld + 8}, opts);
        wide.narrow(1, 0, ld).copy_(a.raw);
        torch::Tensor shifted = torch::zeros({N, ld + 8}, opts);
        shifted.narrow(1, 1, ld).copy_(a.raw);
        const torch::Tensor gy = randn({N, D}, 71, dtype).cuda(), bx = a.bx.cuda(), h = a.h.cuda(), oml = a.oml.cuda();
        auto rows = mix_step_bwd_cuda(gy, wide.narrow(1, 0, ld), bx, h, oml, spec);
        auto block = mix_step_bwd_cuda(gy, shifted.narrow(1, 1, ld), bx, h, oml, spec);
        const char* names[] = {"d raw", "d bx", "dh", "d oml"};
        const torch::Tensor got[] = {std::get<0>(rows), std::get<1>(rows), std::get<2>(rows), std::get<3>(rows)};
        const torch::Tensor want[] = {std::get<0>(block), std::get<1>(block), std::get<2>(block), std::get<3>(block)};
        for (int k = 0; k < 4; ++k)
          expect_close(got[k].cpu().to(torch::kFloat64), want[k].cpu().to(torch::kFloat64), bwd_tol(dtype), what + ": " + names[k]);
        if (ld > r * D + r) {
          EXPECT_EQ(std::get<0>(rows).narrow(1, r * D + r, ld - (r * D + r)).abs().max().item<double>(), 0.0) << what;
        }
      }
    }
  }
}

// The autograd entry on a GPU with (B, T, ·) inputs and raw as a column slice (as the layer passes it padded):
// float64 gradients against the reference.
TEST(MixStepCuda, EntryMatchesTheReferenceThroughAutograd) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (bool sum_form : {false, true}) {
    const MixStepSpec spec{2, "silu", 1e-6, sum_form};
    const int64_t B = 3, T = 4, D = 16, ld = 2 * D + 2 + 6;
    const Args a = make_args(B * T, D, 2, 6, 60);
    const torch::Tensor wide = torch::cat({a.raw, randn({B * T, 5}, 61)}, 1).view({B, T, ld + 5}).cuda().requires_grad_();
    const torch::Tensor bx = a.bx.view({B, T, D}).cuda().requires_grad_(), h = a.h.view({B, T, D}).cuda().requires_grad_();
    const torch::Tensor oml = a.oml.view({B, T, D}).cuda().requires_grad_();
    const torch::Tensor y = mix_step(wide.narrow(-1, 0, ld), bx, h, oml, spec);
    expect_close(y.cpu().view({B * T, D}), mix_step_fwd_ref(a.raw, a.bx, a.h, a.oml, spec), 1e-12, "entry y");
    const torch::Tensor gy = randn({B * T, D}, 62);
    (y * gy.view({B, T, D}).cuda()).sum().backward();
    auto [draw, dbx, dh, doml] = mix_step_bwd_ref(gy, a.raw, a.bx, a.h, a.oml, spec);
    expect_close(wide.grad().cpu().view({B * T, ld + 5}).narrow(1, 0, ld), draw, 1e-11, "entry d raw");
    EXPECT_EQ(wide.grad().cpu().view({B * T, ld + 5}).narrow(1, ld, 5).abs().max().item<double>(), 0.0);
    expect_close(bx.grad().cpu().view({B * T, D}), dbx, 1e-11, "entry d bx");
    expect_close(h.grad().cpu().view({B * T, D}), dh, 1e-11, "entry dh");
    expect_close(oml.grad().cpu().view({B * T, D}), doml, 1e-11, "entry d oml");
  }
}

}  // namespace
}  // namespace fprnn::ops
