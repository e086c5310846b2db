// Tests for relative_residual (r_b = max_t max_d |y − ŷ| / (max_d |ŷ| + eps)): the ATen composite against a
// plain loop, NaN propagation, argument checks; on a GPU, the CUDA kernel against the composite bit for bit
// (bfloat16, float16, float32, float64; rows of whole 16-byte chunks and not; misaligned storage).
#include "fprnn/ops/residual.h"
#include "testing.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace fprnn::ops {
namespace {

using fprnn::testing::randn;

// The formula as loops over a float64 copy.
std::vector<double> loop_residual(const torch::Tensor& y, const torch::Tensor& y_new, double eps) {
  const torch::Tensor a = y.to(torch::kFloat64).contiguous(), b = y_new.to(torch::kFloat64).contiguous();
  const int64_t B = a.size(0), T = a.size(1), D = a.size(2);
  const double* pa = a.data_ptr<double>();
  const double* pb = b.data_ptr<double>();
  std::vector<double> r(static_cast<size_t>(B), 0.0);
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t t = 0; t < T; ++t) {
      double diff = 0, ymax = 0;
      bool nan = false;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t k = (i * T + t) * D + d;
        const double dd = std::abs(pa[k] - pb[k]), yy = std::abs(pb[k]);
        nan = nan || std::isnan(dd) || std::isnan(yy);
        diff = std::max(diff, dd);
        ymax = std::max(ymax, yy);
      }
      const double v = nan ? std::numeric_limits<double>::quiet_NaN() : diff / (ymax + eps);
      if (std::isnan(v) || std::isnan(r[static_cast<size_t>(i)]))
        r[static_cast<size_t>(i)] = std::numeric_limits<double>::quiet_NaN();
      else
        r[static_cast<size_t>(i)] = std::max(r[static_cast<size_t>(i)], v);
    }
  }
  return r;
}

TEST(RelativeResidualTest, CompositeMatchesLoops) {
  for (const torch::Dtype dtype : {torch::kFloat64, torch::kFloat32}) {
    const torch::Tensor y = randn({3, 7, 19}, 1, dtype), y_new = (y + randn({3, 7, 19}, 2, dtype) * 0.01).contiguous();
    const torch::Tensor r = relative_residual(y, y_new, 1e-8);
    ASSERT_EQ(r.scalar_type(), torch::kFloat64);
    ASSERT_EQ(r.sizes(), torch::IntArrayRef({3}));
    const std::vector<double> want = loop_residual(y, y_new, 1e-8);
    const double tol = dtype == torch::kFloat64 ? 1e-15 : 1e-6;
    for (int64_t b = 0; b < 3; ++b) EXPECT_NEAR(r[b].item<double>(), want[b], tol * want[b]) << "b = " << b;
  }
}

TEST(RelativeResidualTest, NanMakesItsSampleNan) {
  torch::Tensor y = randn({3, 5, 8}, 3), y_new = randn({3, 5, 8}, 4);
  y_new[1][2][6] = std::numeric_limits<double>::quiet_NaN();
  const torch::Tensor r = relative_residual(y, y_new, 1e-8);
  EXPECT_FALSE(std::isnan(r[0].item<double>()));
  EXPECT_TRUE(std::isnan(r[1].item<double>()));
  EXPECT_FALSE(std::isnan(r[2].item<double>()));
}

TEST(RelativeResidualTest, BadArgumentsThrow) {
  const torch::Tensor y = randn({2, 3, 4}, 5);
  EXPECT_THROW(relative_residual(y, randn({2, 3, 5}, 6), 1e-8), c10::Error);
  EXPECT_THROW(relative_residual(y.view({6, 4}), y.view({6, 4}), 1e-8), c10::Error);
  EXPECT_THROW(relative_residual(y, y.to(torch::kFloat32), 1e-8), c10::Error);
  EXPECT_THROW(relative_residual(y.to(torch::kInt64), y.to(torch::kInt64), 1e-8), c10::Error);
  const torch::Tensor empty = torch::zeros({0, 3, 4}, torch::kFloat64);
  EXPECT_THROW(relative_residual(empty, empty, 1e-8), c10::Error);
}

// ---- CUDA kernel vs the composite (skipped without a GPU) -----------------------------------------------

bool has_cuda() { return torch::cuda::is_available(); }

torch::Tensor misaligned(const torch::Tensor& t) {  // same values, storage one element past the allocation
  torch::Tensor buf = torch::empty({t.numel() + 1}, t.options());
  torch::Tensor view = buf.narrow(0, 1, t.numel()).view(t.sizes());
  view.copy_(t);
  return view;
}

TEST(RelativeResidualCudaTest, KernelMatchesCompositeBitForBit) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  struct Shape {
    int64_t B, T, D;
  };
  for (const torch::Dtype dtype : {torch::kBFloat16, torch::kHalf, torch::kFloat32, torch::kFloat64}) {
    for (const Shape& s : {Shape{4, 17, 1024}, Shape{3, 9, 37}, Shape{2, 5, 8}, Shape{1, 1, 1}, Shape{5, 33, 96}}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " " + std::to_string(s.B) + "x" + std::to_string(s.T) + "x" +
                   std::to_string(s.D));
      const torch::Tensor y = randn({s.B, s.T, s.D}, 11, torch::kFloat64).to(dtype).cuda();
      // Differences of a few percent, and rows whose scale spans orders of magnitude.
      const torch::Tensor y_new =
          (y.to(torch::kFloat64) * (1 + 0.03 * randn({s.B, s.T, s.D}, 12).cuda()) *
           torch::exp(2 * randn({s.B, s.T, 1}, 13).cuda()))
              .to(dtype);
      for (const double eps : {1e-8, 1e-3}) {
        const torch::Tensor want = relative_residual_aten(y, y_new, eps).cpu();
        EXPECT_TRUE(torch::equal(relative_residual_cuda(y, y_new, eps).cpu(), want)) << "eps " << eps;
        EXPECT_TRUE(torch::equal(relative_residual_cuda(misaligned(y), misaligned(y_new), eps).cpu(), want))
            << "misaligned, eps " << eps;
        EXPECT_TRUE(torch::equal(relative_residual(y, y_new, eps).cpu(), want)) << "entry, eps " << eps;
      }
    }
  }
}

TEST(RelativeResidualCudaTest, NanAndInfinity) {
  if (!has_cuda()) GTEST_SKIP() << "no CUDA device";
  for (const torch::Dtype dtype : {torch::kBFloat16, torch::kFloat32}) {
    torch::Tensor y = randn({4, 6, 64}, 21).to(dtype), y_new = randn({4, 6, 64}, 22).to(dtype);
    y_new[1][3][17] = std::numeric_limits<double>::quiet_NaN();
    y[2][0][63] = std::numeric_limits<double>::quiet_NaN();
    y_new[3][5][0] = std::numeric_limits<double>::infinity();
    const torch::Tensor r = relative_residual_cuda(y.cuda(), y_new.cuda(), 1e-8).cpu();
    const torch::Tensor want = relative_residual_aten(y, y_new, 1e-8);
    EXPECT_FALSE(std::isnan(r[0].item<double>()));
    EXPECT_TRUE(std::isnan(r[1].item<double>()));
    EXPECT_TRUE(std::isnan(r[2].item<double>()));
    // inf / (inf + eps) is NaN in both.
    for (int64_t b = 0; b < 4; ++b) {
      const double got = r[b].item<double>(), ref = want[b].item<double>();
      EXPECT_TRUE((std::isnan(got) && std::isnan(ref)) || got == ref) << "b = " << b << ": " << got << " vs " << ref;
    }
  }
}

}  // namespace
}  // namespace fprnn::ops
