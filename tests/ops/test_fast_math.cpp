// Tests for the vectorisable exp and softplus of the CPU kernels (src/ops/fast_math.h): fast_expf within 2 ulp of
// the correctly rounded exp on [−87, 87], its clamps (no denormal or zero, no infinity; NaN gives a finite
// value, which is why softplus must still return NaN), log(1 + w) on [0, 1] and softplus to float precision on both sides of mamba's
// threshold, including the far negative side where a naive log(1 + eᶻ) loses every digit.
#include "ops/fast_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace fprnn::ops::detail {
namespace {

// Distance in float ulps between a float and the float64 value it approximates (at the value's magnitude).
double ulps(float got, double want) {
  const float rounded = static_cast<float>(want);
  const double ulp = std::nextafter(std::abs(rounded), std::numeric_limits<float>::infinity()) - std::abs(rounded);
  return std::abs(static_cast<double>(got) - want) / ulp;
}

TEST(FastMath, ExpWithinTwoUlpOverItsRange) {
  double worst = 0, worst_x = 0;
  // Dense sweep of [−87, 87] (every 1e−3, plus offsets that hit the range-reduction boundaries k·ln2 ± ln2/2).
  for (int64_t i = -87000; i <= 87000; ++i) {
    for (const double off : {0.0, 1.7e-4, 3.4657359e-1}) {
      const float x = static_cast<float>(i * 1e-3 + off);
      if (x > 87.0f) continue;
      const double e = ulps(fast_expf(x), std::exp(static_cast<double>(x)));
      if (e > worst) worst = e, worst_x = x;
    }
  }
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
  EXPECT_EQ(fast_expf(0.0f), 1.0f);
}

TEST(FastMath, ExpClampsInsteadOfUnderflowingOrOverflowing) {
  for (const float x : {-87.5f, -100.0f, -1e4f, -std::numeric_limits<float>::infinity()}) {
    const float y = fast_expf(x);
    EXPECT_EQ(y, fast_expf(-87.0f)) << x;
    EXPECT_GE(y, std::numeric_limits<float>::min()) << x;  // a normal float, not a denormal or 0
    EXPECT_LT(y, 1.7e-38f) << x;
  }
  for (const float x : {87.5f, 1e4f, std::numeric_limits<float>::infinity()}) {
    const float y = fast_expf(x);
    EXPECT_EQ(y, fast_expf(87.0f)) << x;
    EXPECT_TRUE(std::isfinite(y)) << x;
    EXPECT_GT(y, 6e37f) << x;
  }
  EXPECT_TRUE(std::isfinite(fast_expf(std::numeric_limits<float>::quiet_NaN())));
}

TEST(FastMath, Log1pOnTheUnitInterval) {
  double worst = 0;
  for (int i = 0; i <= 100000; ++i) {
    const float w = static_cast<float>(i * 1e-5);
    worst = std::max(worst, ulps(log1p_unit_f(w), std::log1p(static_cast<double>(w))));
  }
  EXPECT_LE(worst, 3.0);
  // Tiny w: log(1 + w) ≈ w to full relative precision (no 1 + w rounding).
  EXPECT_NEAR(log1p_unit_f(1e-20f) / 1e-20f, 1.0, 1e-6);
  EXPECT_EQ(log1p_unit_f(0.0f), 0.0f);
}

TEST(FastMath, SoftplusMatchesLog1pExpOnBothSidesOfTheThreshold) {
  double worst = 0, worst_z = 0;
  for (int i = -40000; i <= 40000; ++i) {
    const float z = static_cast<float>(i * 1e-3);
    const double zd = z;
    const double want = zd > 20 ? zd : std::log1p(std::exp(zd));
    const double e = ulps(fast_softplusf(z), want);
    if (e > worst) worst = e, worst_z = z;
  }
  EXPECT_LE(worst, 4.0) << "at z = " << worst_z;
  EXPECT_EQ(fast_softplusf(25.0f), 25.0f);  // mamba's threshold: z itself above 20
  // Far negative: softplus(z) ≈ eᶻ, kept to relative precision (log1p(1 + tiny) would give 0).
  EXPECT_NEAR(fast_softplusf(-60.0f) / std::exp(-60.0), 1.0, 1e-5);
  EXPECT_TRUE(std::isnan(fast_softplusf(std::numeric_limits<float>::quiet_NaN())));
}

TEST(FastMath, Float64KeepsLibm) {
  // The float64 path is compared with the reference's fixtures to 1e−12: it must be libm's exp, bit for bit.
  for (const double x : {-3.7, -0.25, 0.0, 1e-3, 2.5}) {
    EXPECT_EQ(kernel_exp(x), std::exp(x));
    EXPECT_EQ(kernel_softplus(x), std::log1p(std::exp(x)));
  }
  EXPECT_EQ(kernel_softplus(30.0), 30.0);
}

}  // namespace
}  // namespace fprnn::ops::detail
