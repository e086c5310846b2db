// CUDA kernels of mix_step (formulas and layout: include/fprnn/ops/mix_step.h). The forward in float32 and
// bfloat16 runs the warp-per-token kernel at the end of this file, the backward the row kernel below (8
// consecutive channels per thread) where rows are 16-byte aligned; everything else one block of 256 threads per
// token: thread k holds channels d = k + j·256 (j < CPT ≤ 8) of every per-channel vector in registers, so each
// reflection costs one block reduction forward (‖a_i‖², a_iᵀw) and one more backward (u_iᵀg). The backward
// recomputes the forward (the vectors w_{i−1} it needs go to shared memory, r·D floats; each thread reads back
// only its own channels). Accumulation in float32 (float64 for float64 inputs).
// Napkin math at the A5 shape (8704 tokens, D = 1024, r = 1, bfloat16): forward reads raw (2 KB) and b⊙x, h,
// 1 − λ (6 KB) per token and writes y (2 KB): 87 MB ≈ 22 µs at 4 TB/s; backward reads those and gy, writes
// d raw, d(b⊙x), dh, d(1 − λ): ≈ 140 MB ≈ 35 µs. The ATen ops they replace made ~10 passes forward (≈ 190 µs
// measured) and more backward, with float32 copies for the Householder kernels.
#include "fprnn/ops/mix_step.h"

#include "ops/cuda_math.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxRank = 16;
enum Act : int { kIdentity = 0, kRelu = 1, kSilu = 2 };

using cuda_math::AccType;
using cuda_math::ex;
using cuda_math::load8;
using cuda_math::store8;

template <typename A>
__device__ __forceinline__ A act_value(A x, int ac) {
  if (ac == kSilu) return x / (A(1) + ex(-x));
  if (ac == kRelu) return x > A(0) ? x : A(0);
  return x;
}
template <typename A>
__device__ __forceinline__ A act_grad(A x, int ac) {
  if (ac == kSilu) {
    const A s = A(1) / (A(1) + ex(-x));
    return s * (A(1) + x * (A(1) - s));
  }
  if (ac == kRelu) return x > A(0) ? A(1) : A(0);
  return A(1);
}

// Block sums of two values; every thread gets both. Barriers before (scratch may still be read) and after.
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b, A* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  A ra = A(0), rb = A(0);
  for (int w = 0; w < kThreads / 32; ++w) {
    ra += scratch[w];
    rb += scratch[32 + w];
  }
  a = ra;
  b = rb;
}

// One token's forward: v = b⊙x − h into w, then the r reflections. Records, per reflection, the norm's
// denominator, α_i and s_i (and w_{i−1} into `hist` when it is not null). Returns with w = Q v.
template <typename T, typename A, int CPT>
__device__ __forceinline__ void forward_token(const T* rn, const T* bxn, const T* hn, int64_t D, int r, int ac,
                                              A eps, bool sum_form, A (&v)[CPT], A (&w)[CPT], A* hist, A* den_out,
                                              A* alpha_out, A* s_out, A* scratch) {
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    v[j] = d < D ? static_cast<A>(bxn[d]) - static_cast<A>(hn[d]) : A(0);
    w[j] = v[j];
  }
  for (int i = 0; i < r; ++i) {
    A a[CPT];
    A uu = A(0), sw = A(0);
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      a[j] = A(0);
      if (d < D) {
        if (hist != nullptr) hist[i * D + d] = w[j];
        a[j] = act_value(static_cast<A>(rn[i * D + d]), ac);
        uu += a[j] * a[j];
        sw += a[j] * (sum_form ? v[j] : w[j]);
      }
    }
    block_sum2(uu, sw, scratch);
    const A norm = sqrt(uu);
    const A den = norm > eps ? norm : eps;
    const A alpha = A(1) / (A(1) + ex(-static_cast<A>(rn[static_cast<int64_t>(r) * D + i])));
    const A s = sw / den;  // u_iᵀ w_{i−1} (or u_iᵀ v)
    if (den_out != nullptr) {
      den_out[i] = norm > eps ? norm : -eps;  // the sign records which branch of the normalisation was taken
      alpha_out[i] = alpha;
      s_out[i] = s;
    }
    const A c = A(-2) * alpha * s / den;  // w ← w − 2 α s u, u = a / den
#pragma unroll
    for (int j = 0; j < CPT; ++j) w[j] += c * a[j];
  }
}

template <typename T, int CPT>
__global__ void __launch_bounds__(kThreads)
    mix_step_fwd_kernel(const T* __restrict__ raw, int64_t ld, const T* __restrict__ bx, const T* __restrict__ h,
                        const T* __restrict__ oml, T* __restrict__ y, int64_t D, int r, int ac, double eps,
                        bool sum_form) {
  using A = typename AccType<T>::type;
  __shared__ A scratch[64];
  const int64_t n = blockIdx.x;
  A v[CPT], w[CPT];
  forward_token<T, A, CPT>(raw + n * ld, bx + n * D, h + n * D, D, r, ac, static_cast<A>(eps), sum_form, v, w,
                           nullptr, nullptr, nullptr, nullptr, scratch);
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (d < D) y[n * D + d] = static_cast<T>(static_cast<A>(oml[n * D + d]) * (w[j] + static_cast<A>(h[n * D + d])));
  }
}

// Shared memory: hist (r·D accumulators, the product form's w_{i−1}).
template <typename T, int CPT>
__global__ void __launch_bounds__(kThreads)
    mix_step_bwd_kernel(const T* __restrict__ gy, const T* __restrict__ raw, int64_t ld, const T* __restrict__ bx,
                        const T* __restrict__ h, const T* __restrict__ oml, T* __restrict__ draw, int64_t dld,
                        T* __restrict__ dbx, T* __restrict__ dh, T* __restrict__ doml, int64_t D, int r, int ac,
                        double eps_d, bool sum_form) {
  using A = typename AccType<T>::type;
  extern __shared__ __align__(16) unsigned char hist_mem[];
  A* hist = reinterpret_cast<A*>(hist_mem);
  __shared__ A scratch[64];
  const int64_t n = blockIdx.x;
  const T* rn = raw + n * ld;
  const A eps = static_cast<A>(eps_d);
  A v[CPT], w[CPT];
  // The per-reflection scalars (every thread gets the same: the block sums are broadcast).
  A den[kMaxRank], alpha[kMaxRank], s[kMaxRank];
  forward_token<T, A, CPT>(rn, bx + n * D, h + n * D, D, r, ac, eps, sum_form, v, w, sum_form ? nullptr : hist, den,
                           alpha, s, scratch);
  A g[CPT], g_out[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    g[j] = A(0);
    if (d < D) {
      const A gyv = static_cast<A>(gy[n * D + d]), o = static_cast<A>(oml[n * D + d]);
      doml[n * D + d] = static_cast<T>(gyv * (w[j] + static_cast<A>(h[n * D + d])));
      g[j] = gyv * o;
    }
    g_out[j] = g[j];
  }
  // d raw_u for reflection i from du_i = −2 α_i (s_i g + t_i x), x = w_{i−1} (product) or v (sum); and d raw_α.
  auto emit = [&](int i, const A (&gg)[CPT], A ti, bool use_hist) {
    const A dn = den[i] > A(0) ? den[i] : -den[i];
    const A u_du = A(-4) * alpha[i] * s[i] * ti;
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      if (d < D) {
        const A x = use_hist ? hist[i * D + d] : v[j];
        const A rv = static_cast<A>(rn[i * D + d]);
        const A u = act_value(rv, ac) / dn;
        const A du = A(-2) * alpha[i] * (s[i] * gg[j] + ti * x);
        const A da = den[i] > A(0) ? (du - u * u_du) / dn : du / dn;
        draw[n * dld + i * D + d] = static_cast<T>(da * act_grad(rv, ac));
      }
    }
    if (threadIdx.x == 0) {
      draw[n * dld + static_cast<int64_t>(r) * D + i] =
          static_cast<T>(A(-2) * s[i] * ti * alpha[i] * (A(1) - alpha[i]));
    }
  };
  if (sum_form) {
    // t_i = u_iᵀ g for the one g; then dv = g − 2 Σ α_i t_i u_i.
    A dv[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) dv[j] = g[j];
    for (int i = 0; i < r; ++i) {
      A tg = A(0), unused = A(0);
      A u[CPT];
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
        u[j] = A(0);
        if (d < D) {
          const A dn = den[i] > A(0) ? den[i] : -den[i];
          u[j] = act_value(static_cast<A>(rn[i * D + d]), ac) / dn;
          tg += u[j] * g[j];
        }
      }
      block_sum2(tg, unused, scratch);
      emit(i, g, tg, false);
#pragma unroll
      for (int j = 0; j < CPT; ++j) dv[j] -= A(2) * alpha[i] * tg * u[j];
    }
#pragma unroll
    for (int j = 0; j < CPT; ++j) g[j] = dv[j];
  } else {
    for (int i = r - 1; i >= 0; --i) {
      A tg = A(0), unused = A(0);
      A u[CPT];
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
        u[j] = A(0);
        if (d < D) {
          const A dn = den[i] > A(0) ? den[i] : -den[i];
          u[j] = act_value(static_cast<A>(rn[i * D + d]), ac) / dn;
          tg += u[j] * g[j];
        }
      }
      block_sum2(tg, unused, scratch);
      emit(i, g, tg, true);
#pragma unroll
      for (int j = 0; j < CPT; ++j) g[j] -= A(2) * alpha[i] * tg * u[j];
    }
  }
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (d < D) {
      dbx[n * D + d] = static_cast<T>(g[j]);
      dh[n * D + d] = static_cast<T>(g_out[j] - g[j]);
    }
  }
  // The padding columns of d raw are zero.
  for (int64_t c = static_cast<int64_t>(r) * D + r + threadIdx.x; c < dld; c += kThreads) draw[n * dld + c] = T(0);
}

// ---- The backward with 8 consecutive channels per thread (float32 and bfloat16, D ≤ 2048, rows aligned) ------
// The block kernel above gives thread k channels k + 256·j, so each of its nine per-channel operands (five read,
// four written) costs CPT scalar loads or stores of 2 bytes; at the A5 shape (8704 tokens, D = 1024, bfloat16) it
// took 103 µs for ≈ 157 MB (38 % of HBM bandwidth). Here a token's block has D/8 threads (rounded up to whole
// warps) and thread k holds channels [8k, 8k + 8): every operand is one 16-byte load or store (load8/store8), the
// product form's w_{i−1} goes to shared memory as two float4 per thread, and a block sum takes one barrier
// (alternating scratch buffers, as fp_step's block_sum2). The formulas, their order per channel and the float32
// accumulation are the block kernel's; only the summation order of the dot products differs.
constexpr int kRowsMaxThreads = 256;

// Sums of a and b over the block's warps, in warp order; every thread gets both. `scratch`: 2 × 2 × 8 floats
// used alternately by consecutive calls (`parity`), so one barrier per call suffices.
__device__ __forceinline__ float2 rows_block_sum2(float a, float b, float* scratch, int parity) {
  float2 s = cuda_math::warp_sum2(a, b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = static_cast<int>(blockDim.x >> 5);
  float* buf = scratch + 2 * (kRowsMaxThreads / 32) * (parity & 1);
  if (lane == 0) {
    buf[warp] = s.x;
    buf[kRowsMaxThreads / 32 + warp] = s.y;
  }
  __syncthreads();
  float ra = 0.0f, rb = 0.0f;
  for (int k = 0; k < warps; ++k) {
    ra += buf[k];
    rb += buf[kRowsMaxThreads / 32 + k];
  }
  return make_float2(ra, rb);
}

template <typename T>
__global__ void __launch_bounds__(kRowsMaxThreads)
    mix_step_bwd_rows_kernel(const T* __restrict__ gy, const T* __restrict__ raw, int64_t ld, const T* __restrict__ bx,
                             const T* __restrict__ h, const T* __restrict__ oml, T* __restrict__ draw, int64_t dld,
                             T* __restrict__ dbx, T* __restrict__ dh, T* __restrict__ doml, int64_t D, int r, int ac,
                             float eps, bool sum_form) {
  extern __shared__ __align__(16) unsigned char rows_hist_mem[];
  float* hist = reinterpret_cast<float*>(rows_hist_mem);  // r·D floats (product form)
  __shared__ __align__(16) float scratch[4 * (kRowsMaxThreads / 32)];
  int parity = 0;
  const int64_t n = blockIdx.x;
  const int64_t c0 = 8 * static_cast<int64_t>(threadIdx.x);
  const bool live = c0 < D;
  const T* rn = raw + n * ld;
  const int64_t row = n * D + c0;
  float v[8], w[8], hv[8];
  if (live) {
    float xv[8];
    load8(bx + row, 8, true, xv);
    load8(h + row, 8, true, hv);
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = v[j] = xv[j] - hv[j];
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = v[j] = hv[j] = 0.0f;
  }
  // The forward (forward_token's): per reflection its denominator (signed by the branch), α_i and s_i.
  float den[kMaxRank], alpha[kMaxRank], s[kMaxRank];
  for (int i = 0; i < r; ++i) {
    float a[8];
    float uu = 0.0f, sw = 0.0f;
    if (live) {
      if (!sum_form) {
        float4* hp = reinterpret_cast<float4*>(hist + static_cast<int64_t>(i) * D + c0);
        hp[0] = make_float4(w[0], w[1], w[2], w[3]);
        hp[1] = make_float4(w[4], w[5], w[6], w[7]);
      }
      load8(rn + static_cast<int64_t>(i) * D + c0, 8, true, a);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        a[j] = act_value(a[j], ac);
        uu += a[j] * a[j];
        sw += a[j] * (sum_form ? v[j] : w[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) a[j] = 0.0f;
    }
    const float2 sums = rows_block_sum2(uu, sw, scratch, parity++);
    const float norm = sqrtf(sums.x);
    const float dn = norm > eps ? norm : eps;
    alpha[i] = 1.0f / (1.0f + ex(-static_cast<float>(rn[static_cast<int64_t>(r) * D + i])));
    s[i] = sums.y / dn;
    den[i] = norm > eps ? norm : -eps;
    const float c = -2.0f * alpha[i] * s[i] / dn;
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] += c * a[j];
  }
  float g[8], g_out[8];
  if (live) {
    float gyv[8], ov[8], dov[8];
    load8(gy + row, 8, true, gyv);
    load8(oml + row, 8, true, ov);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      dov[j] = gyv[j] * (w[j] + hv[j]);
      g[j] = g_out[j] = gyv[j] * ov[j];
    }
    store8(doml + row, 8, true, dov);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = g_out[j] = 0.0f;
  }
  float dv[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) dv[j] = g[j];
  // Reflections in the backward's order (sum form: any, here 0 … r−1 as the block kernel; product: r−1 … 0).
  for (int k = 0; k < r; ++k) {
    const int i = sum_form ? k : r - 1 - k;
    const float dn = den[i] > 0.0f ? den[i] : -den[i];
    float rv[8], u[8];
    float tg = 0.0f;
    if (live) {
      load8(rn + static_cast<int64_t>(i) * D + c0, 8, true, rv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        u[j] = act_value(rv[j], ac) / dn;
        tg += u[j] * g[j];
      }
    }
    tg = rows_block_sum2(tg, 0.0f, scratch, parity++).x;
    if (live) {
      // d raw_u from du_i = −2 α_i (s_i g + t_i x), x = w_{i−1} (product) or v (sum).
      float x[8];
      if (sum_form) {
#pragma unroll
        for (int j = 0; j < 8; ++j) x[j] = v[j];
      } else {
        const float4* hp = reinterpret_cast<const float4*>(hist + static_cast<int64_t>(i) * D + c0);
        const float4 x0 = hp[0], x1 = hp[1];
        x[0] = x0.x, x[1] = x0.y, x[2] = x0.z, x[3] = x0.w, x[4] = x1.x, x[5] = x1.y, x[6] = x1.z, x[7] = x1.w;
      }
      const float u_du = -4.0f * alpha[i] * s[i] * tg;
      float da[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float du = -2.0f * alpha[i] * (s[i] * g[j] + tg * x[j]);
        da[j] = (den[i] > 0.0f ? (du - u[j] * u_du) / dn : du / dn) * act_grad(rv[j], ac);
      }
      store8(draw + n * dld + static_cast<int64_t>(i) * D + c0, 8, true, da);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (sum_form)
          dv[j] -= 2.0f * alpha[i] * tg * u[j];
        else
          g[j] -= 2.0f * alpha[i] * tg * u[j];
      }
    }
    if (threadIdx.x == 0)
      draw[n * dld + static_cast<int64_t>(r) * D + i] = static_cast<T>(-2.0f * s[i] * tg * alpha[i] * (1.0f - alpha[i]));
  }
  if (sum_form) {
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = dv[j];
  }
  if (live) {
    float dhv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) dhv[j] = g_out[j] - g[j];
    store8(dbx + row, 8, true, g);
    store8(dh + row, 8, true, dhv);
  }
  // The padding columns of d raw are zero.
  for (int64_t c = static_cast<int64_t>(r) * D + r + threadIdx.x; c < dld; c += blockDim.x) draw[n * dld + c] = T(0);
}

// ---- The forward with one token per WPT warps (float32 and bfloat16, D ≤ 2048) -------------------------
// A token belongs to WPT ∈ {1, 2, 4} warps: lane l of the token's warp s holds chunks c = (l + 32s) + 32·WPT·k
// (k < KV = 2) of 8 channels in registers, every operand of the token is requested at once (16-byte vectors
// when `vec`), and a reduction is a warp sum plus, for WPT > 1, one exchange through shared memory under a
// barrier of the token's warps only (cuda_math::token_sum2). The formulas and float32 accumulation are the
// block kernel's; only the summation order of the dot products differs. On an H200 in bfloat16: 44 µs per call
// at the A5 shape (8704 tokens, D = 1024) against the block kernel's 54, 142 against 147 at the LM shape
// (16 384 tokens, D = 1536). A backward built the same way (the product form's w_{i−1} in shared memory) was
// slower than the block kernel, 137 against 103 µs and 430 against 302 µs, and was not kept
// (results/h200/lm_two_kernel/).
constexpr int kWarpsPerBlock = 8;
constexpr int kKV = 2;
using cuda_math::token_sum2;

struct WarpMixArgs {
  int64_t N, D, ld;  // tokens, channels, raw's row stride
  int r, ac;
  float eps;
  bool sum_form, vec;
};

template <typename T, int WPT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    mix_step_fwd_warp_kernel(const T* __restrict__ raw, const T* __restrict__ bx, const T* __restrict__ h,
                             const T* __restrict__ oml, T* __restrict__ y, WarpMixArgs a) {
  constexpr int kTokens = kWarpsPerBlock / WPT;
  __shared__ float2 partial[kTokens][2][WPT];  // token_sum2's scratch
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slot = warp / WPT, sub = warp % WPT;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kTokens + slot;
  if (n >= a.N) return;  // the token's warps together: nothing below synchronises more than those
  const int64_t D = a.D;
  const int slane = lane + 32 * sub;
  auto first = [&](int k) { return 8 * (slane + 32 * WPT * static_cast<int64_t>(k)); };  // chunk k's channel
  const T* rn = raw + n * a.ld;
  float v[kKV][8], w[kKV][8];
#pragma unroll
  for (int k = 0; k < kKV; ++k) {
    const int64_t d0 = first(k);
    float xv[8], hv[8];
    load8(bx + n * D + d0, D - d0, a.vec && d0 < D, xv);
    load8(h + n * D + d0, D - d0, a.vec && d0 < D, hv);
#pragma unroll
    for (int j = 0; j < 8; ++j) w[k][j] = v[k][j] = xv[j] - hv[j];
  }
  for (int i = 0; i < a.r; ++i) {
    float act[kKV][8];
    float uu = 0.0f, sw = 0.0f;
#pragma unroll
    for (int k = 0; k < kKV; ++k) {
      const int64_t d0 = first(k);
      load8(rn + static_cast<int64_t>(i) * D + d0, D - d0, a.vec && d0 < D, act[k]);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        act[k][j] = d0 + j < D ? act_value(act[k][j], a.ac) : 0.0f;
        uu += act[k][j] * act[k][j];
        sw += act[k][j] * (a.sum_form ? v[k][j] : w[k][j]);
      }
    }
    const float2 sums = token_sum2<WPT>(uu, sw, partial[slot], i, sub, slot);
    const float norm = sqrtf(sums.x);
    const float den = norm > a.eps ? norm : a.eps;
    const float alpha = 1.0f / (1.0f + ex(-static_cast<float>(rn[static_cast<int64_t>(a.r) * D + i])));
    const float s = sums.y / den;  // u_iᵀ w_{i−1} (or u_iᵀ v)
    const float c = -2.0f * alpha * s / den;
#pragma unroll
    for (int k = 0; k < kKV; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) w[k][j] += c * act[k][j];
  }
#pragma unroll
  for (int k = 0; k < kKV; ++k) {
    const int64_t d0 = first(k);
    if (d0 >= D) continue;
    float hv[8], ov[8], out[8];
    load8(h + n * D + d0, D - d0, a.vec, hv);
    load8(oml + n * D + d0, D - d0, a.vec, ov);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = ov[j] * (w[k][j] + hv[j]);
    store8(y + n * D + d0, D - d0, a.vec, out);
  }
}

// Warps per token for the forward warp kernel (2 chunks of 8 channels per lane), or 0: the block kernel.
int warps_per_token(int64_t D, torch::ScalarType dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16) return 0;
  const int64_t chunks = (D + 7) / 8;
  for (int wpt : {1, 2, 4})
    if (chunks <= 32 * wpt * kKV) return wpt;
  return 0;
}

bool aligned16(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

template <typename F>
void with_wpt(int wpt, F&& f) {
  switch (wpt) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

int parse_act(const std::string& name) {
  if (name == "identity") return kIdentity;
  if (name == "relu") return kRelu;
  if (name == "silu") return kSilu;
  TORCH_CHECK(false, "mix_step_cuda: unknown act '", name, "' (valid: identity, relu, silu)");
}

void check_cuda_args(const char* fn, const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                     const torch::Tensor& oml, const MixStepSpec& spec) {
  TORCH_CHECK(bx.dim() == 2 && raw.dim() == 2 && raw.size(0) == bx.size(0), fn, ": raw must be (N, ld), bx (N, D), got ",
              raw.sizes(), " and ", bx.sizes());
  const int64_t D = bx.size(1);
  TORCH_CHECK(mix_step_cuda_fits(D, spec.rank), fn, ": D = ", D, " and rank ", spec.rank,
              " are beyond the kernels (D ≤ 2048, rank ≤ ", kMaxRank, ")");
  TORCH_CHECK(raw.size(1) >= spec.rank * D + spec.rank && raw.stride(1) == 1 && raw.stride(0) >= raw.size(1), fn,
              ": raw must have ≥ r·D + r columns, unit column stride and a row stride ≥ its width, got sizes ",
              raw.sizes(), " strides ", raw.strides());
  for (const auto* t : {&bx, &h, &oml}) {
    TORCH_CHECK(t->sizes() == bx.sizes() && t->is_contiguous() && t->is_cuda() && t->scalar_type() == bx.scalar_type(),
                fn, ": bx, h and oml must be contiguous CUDA tensors of one shape and dtype");
  }
  TORCH_CHECK(raw.is_cuda() && raw.scalar_type() == bx.scalar_type(), fn, ": raw must be a CUDA tensor of bx's dtype");
  TORCH_CHECK(spec.eps > 0, fn, ": eps must be positive");
}

// Whether the backward's row-layout kernel takes these sizes (its pointers must also be 16-byte aligned): D and
// both row strides multiples of 8 elements, float32 or bfloat16.
bool mix_step_bwd_rows_fits(int64_t D, int64_t raw_stride, int64_t draw_stride, torch::ScalarType dtype) {
  return (dtype == torch::kFloat32 || dtype == torch::kBFloat16) && D % 8 == 0 && raw_stride % 8 == 0 &&
         draw_stride % 8 == 0 && D / 8 <= kRowsMaxThreads;
}

int channels_per_thread(int64_t D) { return D <= kThreads ? 1 : D <= 2 * kThreads ? 2 : D <= 4 * kThreads ? 4 : 8; }

template <typename F>
void with_cpt(int cpt, F&& f) {
  switch (cpt) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

}  // namespace

torch::Tensor mix_step_fwd_cuda(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                                const torch::Tensor& oml, const MixStepSpec& spec) {
  check_cuda_args("mix_step_fwd_cuda", raw, bx, h, oml, spec);
  const int64_t N = bx.size(0), D = bx.size(1);
  const c10::cuda::CUDAGuard guard(bx.device());
  torch::Tensor y = torch::empty_like(bx);
  if (N == 0) return y;
  const int ac = parse_act(spec.act);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int wpt = warps_per_token(D, bx.scalar_type());
  if (wpt > 0) {
    const WarpMixArgs a{N, D, raw.stride(0), static_cast<int>(spec.rank), ac, static_cast<float>(spec.eps),
                        spec.sum_form,
                        D % 8 == 0 && raw.stride(0) % 8 == 0 && aligned16(raw) && aligned16(bx) && aligned16(h) &&
                            aligned16(oml) && aligned16(y)};
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, bx.scalar_type(), "mix_step_fwd_cuda", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        with_wpt(wpt, [&](auto wpt_tag) {
          constexpr int kWpt = decltype(wpt_tag)::value;
          const auto blocks = static_cast<unsigned>((N + kWarpsPerBlock / kWpt - 1) / (kWarpsPerBlock / kWpt));
          mix_step_fwd_warp_kernel<scalar_t, kWpt><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
              raw.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), oml.data_ptr<scalar_t>(),
              y.data_ptr<scalar_t>(), a);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
    return y;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, bx.scalar_type(), "mix_step_fwd_cuda", [&] {
    with_cpt(channels_per_thread(D), [&](auto cpt) {
      constexpr int kCpt = decltype(cpt)::value;
      mix_step_fwd_kernel<scalar_t, kCpt><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          raw.data_ptr<scalar_t>(), raw.stride(0), bx.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
          oml.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), D, static_cast<int>(spec.rank), ac, spec.eps,
          spec.sum_form);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> mix_step_bwd_cuda(
    const torch::Tensor& gy, const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
    const torch::Tensor& oml, const MixStepSpec& spec) {
  check_cuda_args("mix_step_bwd_cuda", raw, bx, h, oml, spec);
  TORCH_CHECK(gy.sizes() == bx.sizes() && gy.is_contiguous() && gy.scalar_type() == bx.scalar_type() && gy.is_cuda(),
              "mix_step_bwd_cuda: gy must be a contiguous CUDA tensor like bx");
  const int64_t N = bx.size(0), D = bx.size(1), ld = raw.size(1);
  const c10::cuda::CUDAGuard guard(bx.device());
  torch::Tensor draw = torch::empty({N, ld}, bx.options()), dbx = torch::empty_like(bx), dh = torch::empty_like(bx),
                doml = torch::empty_like(bx);
  if (N == 0) return {draw, dbx, dh, doml};
  const int ac = parse_act(spec.act);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // The 8-channels-per-thread kernel where every row is 16-byte aligned (float32 and bfloat16); the block kernel
  // otherwise and for float64.
  const bool rows_layout = mix_step_bwd_rows_fits(D, raw.stride(0), ld, bx.scalar_type()) && aligned16(raw) &&
                           aligned16(bx) && aligned16(h) && aligned16(oml) && aligned16(gy);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, bx.scalar_type(), "mix_step_bwd_cuda", [&] {
    using A = typename AccType<scalar_t>::type;
    const size_t smem = spec.sum_form ? 0 : static_cast<size_t>(spec.rank * D) * sizeof(A);
    int max_smem = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, bx.get_device()));
    TORCH_CHECK(smem + 1024 <= static_cast<size_t>(max_smem), "mix_step_bwd_cuda: rank ", spec.rank, " × D = ", D,
                " in ", bx.scalar_type(), " needs ", smem, " bytes of shared memory, more than the device's ", max_smem);
    // A generic lambda, so that the float64 instantiation is discarded (the row kernel has none).
    const auto launch_rows = [&](auto* type_tag) {
      using S = std::remove_pointer_t<decltype(type_tag)>;
      if constexpr (!std::is_same_v<S, double>) {
        const auto kernel = mix_step_bwd_rows_kernel<S>;
        if (smem > 48 * 1024)
          C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        const int threads = static_cast<int>((D / 8 + 31) / 32 * 32);
        kernel<<<static_cast<unsigned>(N), threads, smem, stream>>>(
            gy.data_ptr<S>(), raw.data_ptr<S>(), raw.stride(0), bx.data_ptr<S>(), h.data_ptr<S>(), oml.data_ptr<S>(),
            draw.data_ptr<S>(), ld, dbx.data_ptr<S>(), dh.data_ptr<S>(), doml.data_ptr<S>(), D,
            static_cast<int>(spec.rank), ac, static_cast<float>(spec.eps), spec.sum_form);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    if (rows_layout) {
      launch_rows(static_cast<scalar_t*>(nullptr));
      return;
    }
    with_cpt(channels_per_thread(D), [&](auto cpt) {
      constexpr int kCpt = decltype(cpt)::value;
      const auto kernel = mix_step_bwd_kernel<scalar_t, kCpt>;
      if (smem > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      }
      kernel<<<static_cast<unsigned>(N), kThreads, smem, stream>>>(
          gy.data_ptr<scalar_t>(), raw.data_ptr<scalar_t>(), raw.stride(0), bx.data_ptr<scalar_t>(),
          h.data_ptr<scalar_t>(), oml.data_ptr<scalar_t>(), draw.data_ptr<scalar_t>(), ld, dbx.data_ptr<scalar_t>(),
          dh.data_ptr<scalar_t>(), doml.data_ptr<scalar_t>(), D, static_cast<int>(spec.rank), ac, spec.eps,
          spec.sum_form);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {draw, dbx, dh, doml};
}

}  // namespace fprnn::ops
