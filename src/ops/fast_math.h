// exp and softplus for the CPU kernels' inner loops, written so that the compiler vectorises them.
//
// Why: the selective scans do one exp per (token, channel, state) — N times more exps than anything else in the
// fixed-point loop — and libm's expf is a scalar call that stops the loop around it from vectorising (the
// profile of FP-Mamba1 training on the CPU: 36 % of the time in __expf_fma, most of the rest in the scalar
// loop around it). at::vec's exp is Sleef only in LibTorch's own CPU-capability builds; in ours it falls back
// to std::exp per lane.
//
// fast_expf is branch-free: |x| clamped to 87 on the integer bits (so 2ᵏ below stays a normal float and the
// result lies in [1.6e−38, 6.1e37]; an absolute error below 1.7e−38 where the scans multiply it by a state of
// order one), range reduction x = k·ln2 + r with |r| ≤ ln2/2 (ln2 split in two parts so that k·ln2 is exact to
// float precision), a degree-7 polynomial for eʳ (Cephes' expf coefficients), and the scale 2ᵏ built in the
// exponent bits. Within 2 ulp of the correctly rounded value on [−87, 87] (tests/ops/test_fast_math.cpp). A NaN
// x gives a finite value: callers must let NaN reach their result through their other factors (the scans do:
// Δ·u and the softplus below carry it). float64 keeps std::exp: the float64 paths are the ones compared with the
// reference's fixtures to 1e−12.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// On x86-64 with GCC, a kernel marked FPRNN_AVX2_CLONE is compiled twice, for AVX2 and for the baseline
// (SSE2), and the loader picks the one the CPU runs (an ifunc): 8 float lanes instead of 4 where available,
// one binary for every x86-64 machine. Elsewhere the mark is empty.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FPRNN_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define FPRNN_AVX2_CLONE
#endif

namespace fprnn::ops::detail {

inline float fast_expf(float x) {
  std::int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  constexpr std::int32_t kAbsMask = 0x7fffffff;
  constexpr std::int32_t kBits87 = 0x42ae0000;  // 87.0f
  bits = std::min(bits & kAbsMask, kBits87) | (bits & ~kAbsMask);
  std::memcpy(&x, &bits, sizeof x);
  // k = round(x / ln2) with the 1.5·2²³ trick: adding it leaves round-to-nearest(k) in the low mantissa bits.
  constexpr float kRound = 12582912.0f;
  const float k = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t scale_bits = (static_cast<std::int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// log(1 + w) for w in [0, 1], branch-free: 2·atanh(s) with s = w / (2 + w) in [0, 1/3], the odd series to s¹⁹
// (the first term left out is s²¹/21 < 1e−11 of the result); no cancellation for small w.
inline float log1p_unit_f(float w) {
  const float s = w / (2.0f + w);
  const float s2 = s * s;
  float p = 1.0f / 19;
  p = p * s2 + 1.0f / 17;
  p = p * s2 + 1.0f / 15;
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

// softplus(z) = log(1 + eᶻ) = max(z, 0) + log(1 + e^−|z|), and z itself above 20 (mamba's threshold).
inline float fast_softplusf(float z) {
  const float sp = std::max(z, 0.0f) + log1p_unit_f(fast_expf(-std::abs(z)));
  return z > 20.0f ? z : sp;
}

template <typename T>
inline T kernel_exp(T x) {
  return std::exp(x);
}

template <>
inline float kernel_exp<float>(float x) {
  return fast_expf(x);
}

// softplus with mamba's threshold: float → fast_softplusf; other types → log1p(eᶻ) from libm.
template <typename T>
inline T kernel_softplus(T z) {
  return z <= T(20) ? std::log1p(std::exp(z)) : z;
}

template <>
inline float kernel_softplus<float>(float z) {
  return fast_softplusf(z);
}

}  // namespace fprnn::ops::detail
