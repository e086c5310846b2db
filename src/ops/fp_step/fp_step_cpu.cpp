// fp_step CPU kernel: y = linrec((1 − λ) ⊙ (Q(raw) (bx − h) + h), λ), raw_t = base_t + z_{t−1}, and the
// residual maxima stats[b, t] = (max_d |y − h|, max_d |y|), float32 or float64.
// Layout contract: base, z (B, T, R = r·D + r); h, bx, lambda, y (B, T, D); stats (B, T, 2); all contiguous;
// z may be absent (raw = base).
//
// Napkin math per token (float32, D = 1024, r = 1): reads base and z (2·(r·D + r) values), h, bx, λ (3·D;
// 1 − λ is formed here) and writes y (D): 6·D values ≈ 24 KB, against the 2·D·(r·D + r) ≈ 2.1 Mflop of the
// projection GEMM that produced z; the mixer itself is ≈ 30·r·D flops (activation with its exp, norm, dot,
// axpy). Measured on the 2-core dev VM the kernel runs at DRAM speed (≈ 10 GB/s per core), i.e. about one
// pass over memory on top of the GEMM.
//
// Schedules (see FpStepSchedule): per sequence, every token runs the mixer into L1 scratch (the activated
// directions a_i, never normalised, and the reflected δ; fp_step_common.h) and then the scan step and the
// residual maxima in the same last loop, so each (B, T, ·) stream is touched once. With fewer sequences than
// threads can share, the mixer runs parallel over tokens writing v into y, and the scan then runs in place
// over (batch × column block) tasks, as linrec's kernel does.
//
// The loops use 32-byte GCC/Clang vector extensions (8 floats, 4 doubles) and a polynomial exp, so they
// vectorise without -mavx2; on x86-64 every loop is compiled twice, for the baseline ISA and for AVX2 + FMA,
// and the AVX2 copy is taken when the CPU has it (this build has no -mavx2, and at::vec would run scalar).
// Vectors are passed by reference between the always-inlined helpers: by value they would change the ABI
// between the two copies.
#include "fprnn/ops/fp_step.h"

#include "ops/fp_step/fp_step_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPRNN_FP_STEP_AVX2 1
#endif

#define FPRNN_INLINE inline __attribute__((always_inline))

namespace fprnn::ops {
namespace {

using detail::reflect_coeff_unnormalised;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef uint32_t VI __attribute__((vector_size(32)));
  using SI = uint32_t;
  static constexpr int64_t kLanes = 8;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef uint64_t VI __attribute__((vector_size(32)));
  using SI = uint64_t;
  static constexpr int64_t kLanes = 4;
};

// X is a scalar T or its vector V throughout; loads and stores are unaligned.
template <typename X, typename T>
FPRNN_INLINE void load(X& x, const T* p) {
  std::memcpy(&x, p, sizeof(X));
}
template <typename X, typename T>
FPRNN_INLINE void store(T* p, const X& x) {
  std::memcpy(p, &x, sizeof(X));
}
template <typename To, typename From>
FPRNN_INLINE void bitcast(To& to, const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bitcast between different sizes");
  std::memcpy(&to, &from, sizeof(To));
}

// x ← eˣ, x clamped to [−87, 88] (eˣ stays a normal float); NaN stays NaN. Cephes' expf: n = round(x log₂e)
// by the 1.5·2²³ trick, r = x − n ln2 with ln2 in two parts, a degree-6 polynomial, 2ⁿ from exponent bits.
template <typename X, typename I>
FPRNN_INLINE void exp_f32(X& x) {
  constexpr float kMagic = 12582912.0f;  // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits
  constexpr uint32_t kMagicBits = 0x4b400000u;
  x = x < -87.0f ? X{} - 87.0f : x;
  x = x > 88.0f ? X{} + 88.0f : x;
  const X m = x * 1.44269504088896341f + kMagic;
  const X n = m - kMagic;
  const X r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  X p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  I bits;
  bitcast(bits, m);
  bits = (bits - kMagicBits + 127u) << 23;
  X scale;
  bitcast(scale, bits);
  x = p * scale;
}

// x ← eˣ, x clamped to [−708, 709]; NaN stays NaN. n = round(x log₂e) by the 1.5·2⁵² trick, r = x − n ln2
// (|r| ≤ ln2/2) and the Taylor series to r¹³ (truncation below 5e-18 relative): ≈ 1 ulp.
template <typename X, typename I>
FPRNN_INLINE void exp_f64(X& x) {
  constexpr double kMagic = 6755399441055744.0;  // 1.5·2⁵²
  constexpr uint64_t kMagicBits = 0x4338000000000000ull;
  x = x < -708.0 ? X{} - 708.0 : x;
  x = x > 709.0 ? X{} + 709.0 : x;
  const X m = x * 1.4426950408889634074 + kMagic;
  const X n = m - kMagic;
  const X r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  X p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  I bits;
  bitcast(bits, m);
  bits = (bits - kMagicBits + 1023u) << 52;
  X scale;
  bitcast(scale, bits);
  x = p * scale;
}

// x ← act(x): identity | relu | silu = x / (1 + e^{−x}) (ATen's formula).
template <typename T, MixerAc kAc, typename X, typename I>
FPRNN_INLINE void activate(X& x) {
  if constexpr (kAc == MixerAc::kRelu) {
    x = x < T(0) ? X{} : x;  // NaN passes through, as in torch.relu
  } else if constexpr (kAc == MixerAc::kSilu) {
    X e = -x;
    if constexpr (std::is_same_v<T, float>) {
      exp_f32<X, I>(e);
    } else {
      exp_f64<X, I>(e);
    }
    x = x / (e + T(1));
  }
}

// Horizontal sum and NaN-propagating max of a vector's lanes plus a scalar tail value.
template <typename T, typename V>
FPRNN_INLINE T lane_sum(const V& v, T tail) {
  for (int64_t k = 0; k < static_cast<int64_t>(sizeof(V) / sizeof(T)); ++k) tail += v[k];
  return tail;
}
// m and s are the running max and sum of non-negative values; the sum is NaN exactly when a value was, and
// then so is the result (torch.amax).
template <typename T, typename V>
FPRNN_INLINE T finish_max(const V& mv, T m, const V& sv, T s) {
  for (int64_t k = 0; k < static_cast<int64_t>(sizeof(V) / sizeof(T)); ++k) m = mv[k] > m ? mv[k] : m;
  return std::isnan(lane_sum(sv, s)) ? std::numeric_limits<T>::quiet_NaN() : m;
}

// Everything one call reads and writes; z and stats may be null.
template <typename T>
struct Kernel {
  const T *base, *z, *h, *bx, *lambda;
  T *y, *stats;
  int64_t B, S, D, r, R;
  T eps;
};

// Per-task scratch: δ (then the reflected vector), the activated directions (all r for dplr, two rows in
// turn for householder), a zero row standing in for z_{−1}, and the coefficients.
template <typename T>
struct Scratch {
  Scratch(const Kernel<T>& k, bool sum_form)
      : w(static_cast<size_t>(k.D)),
        a(static_cast<size_t>((sum_form ? k.r : std::min<int64_t>(k.r, 2)) * k.D)),
        zeros(static_cast<size_t>(k.R), T(0)),
        coef(static_cast<size_t>(k.r)) {}
  std::vector<T> w, a, zeros, coef;
};

// The first pass of a token at column d: δ = bx − h into w, a_0 = act(raw + z) into a, ‖a_0‖² and a_0ᵀδ.
template <typename T, MixerAc kAc, typename X, typename I>
FPRNN_INLINE void first_elem(int64_t d, const T* raw, const T* zp, const T* bx, const T* h, T* w, T* a, X& n2,
                             X& s) {
  X rv, zv, bv, hv;
  load(rv, raw + d);
  load(zv, zp + d);
  load(bv, bx + d);
  load(hv, h + d);
  const X delta = bv - hv;
  X av = rv + zv;
  activate<T, kAc, X, I>(av);
  store(w + d, delta);
  store(a + d, av);
  n2 += av * av;
  s += av * delta;
}

// Pass i ≥ 1 at column d: householder first applies reflection i − 1 (w += c a_{i−1}); then a_i, ‖a_i‖²
// and a_iᵀw (w = δ for dplr).
template <typename T, MixerAc kAc, bool kSum, typename X, typename I>
FPRNN_INLINE void next_elem(int64_t d, const T* raw, const T* zp, T* w, const T* a_prev, T c_prev, T* a, X& n2,
                            X& s) {
  X rv, zv, wv;
  load(rv, raw + d);
  load(zv, zp + d);
  load(wv, w + d);
  if constexpr (!kSum) {
    X ap;
    load(ap, a_prev + d);
    wv = wv + c_prev * ap;
    store(w + d, wv);
  }
  X av = rv + zv;
  activate<T, kAc, X, I>(av);
  store(a + d, av);
  n2 += av * av;
  s += av * wv;
}

// One scan step at column d from v, λ (lv) and h (hv): y = v (first step) or λ y_prev + v, stored, with the
// residual maxima (md, my) and the sums that detect NaN (sd, sy).
template <bool kFirst, typename T, typename X>
FPRNN_INLINE void scan_elem(int64_t d, const X& v, const X& lv, const X& hv, const T* y_prev, T* y, X& md, X& my,
                            X& sd, X& sy) {
  X yv = v;
  if constexpr (!kFirst) {
    X pv;
    load(pv, y_prev + d);
    yv = lv * pv + v;
  }
  store(y + d, yv);
  X diff = yv - hv;
  diff = diff < T(0) ? -diff : diff;
  const X mag = yv < T(0) ? -yv : yv;
  md = diff > md ? diff : md;
  my = mag > my ? mag : my;
  sd += diff;
  sy += mag;
}

// The last pass of a token at column d: x̃ = w + Σ c_j a_j + h (the remaining reflection for householder,
// every term for dplr), v = (1 − λ) x̃; then the scan step (kScan) or v stored into y.
template <bool kScan, bool kFirst, typename T, typename X>
FPRNN_INLINE void last_elem(int64_t d, const T* w, const T* a, int64_t n_terms, int64_t a_stride, const T* coef,
                            const T* h, const T* lam, const T* y_prev, T* y, X& md, X& my, X& sd, X& sy) {
  X x;
  load(x, w + d);
  for (int64_t j = 0; j < n_terms; ++j) {
    X av;
    load(av, a + j * a_stride + d);
    x = x + coef[j] * av;
  }
  X hv, lv;
  load(hv, h + d);
  load(lv, lam + d);
  const X v = (T(1) - lv) * (x + hv);  // 1 − λ rounds as the layer's `1 - lambda` does
  if constexpr (kScan) {
    scan_elem<kFirst, T, X>(d, v, lv, hv, y_prev, y, md, my, sd, sy);
  } else {
    store(y + d, v);
  }
}

template <bool kScan, bool kFirst, typename T>
FPRNN_INLINE void last_pass(const Kernel<T>& k, int64_t n, const T* w, const T* a, int64_t n_terms,
                            const T* coef) {
  using V = typename Simd<T>::V;
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t D = k.D;
  const T *h = k.h + n * D, *lam = k.lambda + n * D;
  T* y = k.y + n * D;
  const T* y_prev = kFirst ? nullptr : y - D;
  V md{}, my{}, sd{}, sy{};
  T mds = 0, mys = 0, sds = 0, sys = 0;
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    last_elem<kScan, kFirst, T, V>(d, w, a, n_terms, D, coef, h, lam, y_prev, y, md, my, sd, sy);
  }
  for (; d < D; ++d) {
    last_elem<kScan, kFirst, T, T>(d, w, a, n_terms, D, coef, h, lam, y_prev, y, mds, mys, sds, sys);
  }
  if (kScan && k.stats != nullptr) {
    k.stats[2 * n] = finish_max(md, mds, sd, sds);
    k.stats[2 * n + 1] = finish_max(my, mys, sy, sys);
  }
}

// One token n = b·S + t: v = (1 − λ) ⊙ (Q δ + h); with kScan also y_t = λ_t y_{t−1} + v and the residual
// maxima (tokens of a sequence must then come in order), without it v is written into y.
template <typename T, MixerAc kAc, bool kSum, bool kScan>
FPRNN_INLINE void token(const Kernel<T>& k, Scratch<T>& sc, int64_t b, int64_t t) {
  using V = typename Simd<T>::V;
  using VI = typename Simd<T>::VI;
  using SI = typename Simd<T>::SI;
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t D = k.D, r = k.r, n = b * k.S + t;
  const T* raw = k.base + n * k.R;
  const T* zp = (k.z != nullptr && t > 0) ? k.z + (n - 1) * k.R : sc.zeros.data();
  const T *h = k.h + n * D, *bx = k.bx + n * D;
  T* w = sc.w.data();
  T* a = sc.a.data();
  T* coef = sc.coef.data();
  // α_i = σ(raw_α,i), ATen's 1 / (1 + e^{−x}); then c_i = α_i until the pass that knows s_i and ‖a_i‖².
  for (int64_t i = 0; i < r; ++i) coef[i] = T(1) / (T(1) + std::exp(-(raw[r * D + i] + zp[r * D + i])));
  {
    V n2{}, s{};
    T n2s = 0, ss = 0;
    int64_t d = 0;
    for (; d + L <= D; d += L) first_elem<T, kAc, V, VI>(d, raw, zp, bx, h, w, a, n2, s);
    for (; d < D; ++d) first_elem<T, kAc, T, SI>(d, raw, zp, bx, h, w, a, n2s, ss);
    coef[0] = reflect_coeff_unnormalised(coef[0], lane_sum(s, ss), lane_sum(n2, n2s), k.eps);
  }
  for (int64_t i = 1; i < r; ++i) {
    T* ai = kSum ? a + i * D : a + (i % 2) * D;
    const T* a_prev = a + ((i - 1) % 2) * D;  // householder only
    const T c_prev = kSum ? T(0) : coef[i - 1];
    V n2{}, s{};
    T n2s = 0, ss = 0;
    int64_t d = 0;
    for (; d + L <= D; d += L) {
      next_elem<T, kAc, kSum, V, VI>(d, raw + i * D, zp + i * D, w, a_prev, c_prev, ai, n2, s);
    }
    for (; d < D; ++d) next_elem<T, kAc, kSum, T, SI>(d, raw + i * D, zp + i * D, w, a_prev, c_prev, ai, n2s, ss);
    coef[i] = reflect_coeff_unnormalised(coef[i], lane_sum(s, ss), lane_sum(n2, n2s), k.eps);
  }
  const T* a_last = kSum ? a : a + ((r - 1) % 2) * D;
  const T* c_last = kSum ? coef : coef + (r - 1);
  const int64_t n_terms = kSum ? r : 1;
  if (!kScan || t > 0) {
    last_pass<kScan, false, T>(k, n, w, a_last, n_terms, c_last);
  } else {
    last_pass<kScan, true, T>(k, n, w, a_last, n_terms, c_last);
  }
}

// Sequences [b0, b1), token by token: mixer, scan step and residual maxima in one pass.
template <typename T, MixerAc kAc, bool kSum>
FPRNN_INLINE void sequences_body(const Kernel<T>& k, int64_t b0, int64_t b1) {
  Scratch<T> sc(k, kSum);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t t = 0; t < k.S; ++t) token<T, kAc, kSum, true>(k, sc, b, t);
  }
}

// Tokens [n0, n1): the mixer only, v written into y.
template <typename T, MixerAc kAc, bool kSum>
FPRNN_INLINE void tokens_body(const Kernel<T>& k, int64_t n0, int64_t n1) {
  Scratch<T> sc(k, kSum);
  for (int64_t n = n0; n < n1; ++n) token<T, kAc, kSum, false>(k, sc, n / k.S, n % k.S);
}

// The in-place scan step at column d: v is read from y and replaced by y.
template <bool kFirst, typename T, typename X>
FPRNN_INLINE void scan_col(int64_t d, const T* lam, const T* h, const T* y_prev, T* y, X& md, X& my, X& sd, X& sy) {
  X v, lv, hv;
  load(v, y + d);
  load(lv, lam + d);
  load(hv, h + d);
  scan_elem<kFirst, T, X>(d, v, lv, hv, y_prev, y, md, my, sd, sy);
}

// (batch, column block) tasks [task0, task1): y ← linrec(y, λ) in place down T over `width` columns, with
// the block's residual maxima per token in partial (B, n_blocks, S, 2).
template <typename T>
FPRNN_INLINE void scan_body(const Kernel<T>& k, T* partial, int64_t width, int64_t n_blocks, int64_t task0,
                            int64_t task1) {
  using V = typename Simd<T>::V;
  constexpr int64_t L = Simd<T>::kLanes;
  for (int64_t task = task0; task < task1; ++task) {
    const int64_t b = task / n_blocks, blk = task % n_blocks, d0 = blk * width;
    const int64_t cols = std::min(width, k.D - d0);
    for (int64_t t = 0; t < k.S; ++t) {
      const int64_t o = (b * k.S + t) * k.D + d0;
      T* y = k.y + o;
      const T *lam = k.lambda + o, *h = k.h + o, *y_prev = t > 0 ? y - k.D : nullptr;
      V md{}, my{}, sd{}, sy{};
      T mds = 0, mys = 0, sds = 0, sys = 0;
      int64_t d = 0;
      if (t == 0) {
        for (; d + L <= cols; d += L) scan_col<true, T, V>(d, lam, h, y_prev, y, md, my, sd, sy);
        for (; d < cols; ++d) scan_col<true, T, T>(d, lam, h, y_prev, y, mds, mys, sds, sys);
      } else {
        for (; d + L <= cols; d += L) scan_col<false, T, V>(d, lam, h, y_prev, y, md, my, sd, sy);
        for (; d < cols; ++d) scan_col<false, T, T>(d, lam, h, y_prev, y, mds, mys, sds, sys);
      }
      T* p = partial + ((b * n_blocks + blk) * k.S + t) * 2;
      p[0] = finish_max(md, mds, sd, sds);
      p[1] = finish_max(my, mys, sy, sys);
    }
  }
}

// Each body compiled for the baseline ISA and, on x86-64, for AVX2 + FMA.
template <typename T, MixerAc kAc, bool kSum>
void sequences_base(const Kernel<T>& k, int64_t b0, int64_t b1) {
  sequences_body<T, kAc, kSum>(k, b0, b1);
}
template <typename T, MixerAc kAc, bool kSum>
void tokens_base(const Kernel<T>& k, int64_t n0, int64_t n1) {
  tokens_body<T, kAc, kSum>(k, n0, n1);
}
template <typename T>
void scan_base(const Kernel<T>& k, T* partial, int64_t width, int64_t n_blocks, int64_t task0, int64_t task1) {
  scan_body<T>(k, partial, width, n_blocks, task0, task1);
}

#ifdef FPRNN_FP_STEP_AVX2
template <typename T, MixerAc kAc, bool kSum>
__attribute__((target("avx2,fma"))) void sequences_avx2(const Kernel<T>& k, int64_t b0, int64_t b1) {
  sequences_body<T, kAc, kSum>(k, b0, b1);
}
template <typename T, MixerAc kAc, bool kSum>
__attribute__((target("avx2,fma"))) void tokens_avx2(const Kernel<T>& k, int64_t n0, int64_t n1) {
  tokens_body<T, kAc, kSum>(k, n0, n1);
}
template <typename T>
__attribute__((target("avx2,fma"))) void scan_avx2(const Kernel<T>& k, T* partial, int64_t width, int64_t n_blocks,
                                                   int64_t task0, int64_t task1) {
  scan_body<T>(k, partial, width, n_blocks, task0, task1);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
bool cpu_has_avx2() { return false; }
template <typename T, MixerAc kAc, bool kSum>
void sequences_avx2(const Kernel<T>& k, int64_t b0, int64_t b1) {
  sequences_base<T, kAc, kSum>(k, b0, b1);
}
template <typename T, MixerAc kAc, bool kSum>
void tokens_avx2(const Kernel<T>& k, int64_t n0, int64_t n1) {
  tokens_base<T, kAc, kSum>(k, n0, n1);
}
template <typename T>
void scan_avx2(const Kernel<T>& k, T* partial, int64_t width, int64_t n_blocks, int64_t task0, int64_t task1) {
  scan_base<T>(k, partial, width, n_blocks, task0, task1);
}
#endif

// Per sequence when parallel_for's ⌈B / threads⌉-sequence chunks keep at least 80 % of the threads busy.
bool per_sequence_pays(int64_t B) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t used = std::min(threads, B);
  const int64_t chunk = (B + used - 1) / used;
  return 5 * B >= 4 * chunk * threads;
}

// Column-block width of the in-place scan: 4 KiB of storage per row (one page, as linrec), halved down to
// 256 bytes while B·⌈D / width⌉ tasks would leave threads idle.
template <typename T>
int64_t scan_width(int64_t B, int64_t D) {
  int64_t width = 4096 / static_cast<int64_t>(sizeof(T));
  const int64_t min_width = 256 / static_cast<int64_t>(sizeof(T));
  const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
  while (width > min_width && B * ((D + width - 1) / width) < want) width /= 2;
  return std::min(width, D);
}

template <typename T, MixerAc kAc, bool kSum>
void run(const Kernel<T>& k, FpStepSchedule schedule) {
  const bool avx2 = cpu_has_avx2();
  if (schedule == FpStepSchedule::kAuto) {
    schedule = per_sequence_pays(k.B) ? FpStepSchedule::kPerSequence : FpStepSchedule::kTwoPass;
  }
  if (schedule == FpStepSchedule::kPerSequence) {
    at::parallel_for(0, k.B, 1, [&](int64_t b0, int64_t b1) {
      avx2 ? sequences_avx2<T, kAc, kSum>(k, b0, b1) : sequences_base<T, kAc, kSum>(k, b0, b1);
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / ((k.r + 2) * k.D));
  at::parallel_for(0, k.B * k.S, grain, [&](int64_t n0, int64_t n1) {
    avx2 ? tokens_avx2<T, kAc, kSum>(k, n0, n1) : tokens_base<T, kAc, kSum>(k, n0, n1);
  });
  const int64_t width = scan_width<T>(k.B, k.D);
  const int64_t n_blocks = (k.D + width - 1) / width;
  std::vector<T> partial(static_cast<size_t>(k.B * n_blocks * k.S * 2));
  const int64_t scan_grain = std::max<int64_t>(1, (1 << 15) / (k.S * width));
  at::parallel_for(0, k.B * n_blocks, scan_grain, [&](int64_t t0, int64_t t1) {
    avx2 ? scan_avx2<T>(k, partial.data(), width, n_blocks, t0, t1)
         : scan_base<T>(k, partial.data(), width, n_blocks, t0, t1);
  });
  if (k.stats == nullptr) return;
  for (int64_t b = 0; b < k.B; ++b) {
    for (int64_t t = 0; t < k.S; ++t) {
      for (int64_t j = 0; j < 2; ++j) {
        T m = 0;
        for (int64_t blk = 0; blk < n_blocks; ++blk) {
          const T p = partial[static_cast<size_t>(((b * n_blocks + blk) * k.S + t) * 2 + j)];
          if (std::isnan(p) || p > m) m = p;
          if (std::isnan(m)) break;
        }
        k.stats[(b * k.S + t) * 2 + j] = m;
      }
    }
  }
}

template <typename T>
void dispatch(const Kernel<T>& k, const FpStepConfig& cfg, FpStepSchedule schedule) {
  const auto go = [&](auto ac) {
    constexpr MixerAc kAc = decltype(ac)::value;
    cfg.sum_form ? run<T, kAc, true>(k, schedule) : run<T, kAc, false>(k, schedule);
  };
  switch (cfg.ac) {
    case MixerAc::kIdentity:
      go(std::integral_constant<MixerAc, MixerAc::kIdentity>{});
      break;
    case MixerAc::kRelu:
      go(std::integral_constant<MixerAc, MixerAc::kRelu>{});
      break;
    case MixerAc::kSilu:
      go(std::integral_constant<MixerAc, MixerAc::kSilu>{});
      break;
  }
}

}  // namespace

void fp_step_fwd_cpu(const FpStepInputs& in, const FpStepConfig& cfg, torch::Tensor& y, torch::Tensor& stats,
                     FpStepSchedule schedule) {
  const auto s = detail::fp_step_check("fp_step_fwd_cpu", in, cfg, /*contiguous=*/true);
  TORCH_CHECK(y.defined() && y.sizes() == in.h.sizes() && y.scalar_type() == in.h.scalar_type() && y.is_cpu() &&
                  y.is_contiguous(),
              "fp_step_fwd_cpu: y must be a contiguous CPU ", in.h.scalar_type(), " tensor of sizes ", in.h.sizes(),
              ", got ", y.defined() ? y.sizes() : c10::IntArrayRef{});
  for (const torch::Tensor* t : {&in.base, &in.z, &in.h, &in.bx, &in.lambda}) {
    TORCH_CHECK(!t->defined() || !t->is_same(y), "fp_step_fwd_cpu: y must not be one of the inputs");
  }
  if (stats.defined()) {
    TORCH_CHECK(stats.dim() == 3 && stats.size(0) == s.B && stats.size(1) == s.T && stats.size(2) == 2 &&
                    stats.scalar_type() == in.h.scalar_type() && stats.is_cpu() && stats.is_contiguous(),
                "fp_step_fwd_cpu: stats must be a contiguous CPU ", in.h.scalar_type(), " tensor of sizes (", s.B,
                ", ", s.T, ", 2), got ", stats.sizes());
  }
  AT_DISPATCH_FLOATING_TYPES(in.h.scalar_type(), "fp_step_fwd_cpu", [&] {
    const Kernel<scalar_t> k{in.base.const_data_ptr<scalar_t>(),
                             in.z.defined() ? in.z.const_data_ptr<scalar_t>() : nullptr,
                             in.h.const_data_ptr<scalar_t>(),
                             in.bx.const_data_ptr<scalar_t>(),
                             in.lambda.const_data_ptr<scalar_t>(),
                             y.mutable_data_ptr<scalar_t>(),
                             stats.defined() ? stats.mutable_data_ptr<scalar_t>() : nullptr,
                             s.B,
                             s.T,
                             s.D,
                             s.r,
                             s.R,
                             static_cast<scalar_t>(cfg.norm_eps)};
    dispatch(k, cfg, schedule);
  });
}

}  // namespace fprnn::ops
