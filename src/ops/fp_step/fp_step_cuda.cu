// The fixed-point iteration's kernels on CUDA: the fused mixer step (Householder / DPLR), the scan with
// the residual maxima and the damped update, and the device-side controller (spec §8).
// Layout contract: see include/fprnn/ops/fp_step_cuda.h.
//
// Napkin math at the A5 shape (B, T, D) = (512, 17, 1024), rank 1, bf16 GEMM: per iteration the GEMM is
// 8704 × 1024 × 1025 ≈ 18 GFLOP (~25 µs at ~750 TFLOP/s); fp_mix reads z and base (2 × 18 MB in bf16)
// and bx, λ in the compute dtype (2 × 18 MB) and h (36 MB) and writes v (36 MB): ~144 MB ≈ 36 µs at 4 TB/s;
// fp_scan reads v, h (fp32) and λ (bf16) and writes y (fp32) and its bf16 copy: ~126 MB ≈ 32 µs. So about 0.1 ms per iteration, memory-bound outside the GEMM.
#include "fprnn/ops/fp_step_cuda.h"

#include "ops/cuda_math.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;
enum Activation : int { kIdentity = 0, kRelu = 1, kSilu = 2 };

Activation parse_activation(const std::string& name) {
  if (name == "identity") return kIdentity;
  if (name == "relu") return kRelu;
  if (name == "silu") return kSilu;
  TORCH_CHECK(false, "fp_mix_cuda: unknown mixer_ac '", name, "' (valid: identity, relu, silu)");
}

__device__ __forceinline__ float activate(float x, int ac) {
  // SiLU divides by __fdividef (an approximate reciprocal and a product, ≤ 2 ulp) instead of an IEEE division
  // (about ten instructions and a slow path, once per channel, token and reflection; in the mix + scan kernel
  // that path also held 10 more registers). Where 1 + e^{−x} > 2^126 (x < −87) the quotient is 0, the limit.
  if (ac == kSilu) return __fdividef(x, 1.0f + __expf(-x));
  if (ac == kRelu) return x > 0.0f ? x : 0.0f;
  return x;
}

// The residual maxima are taken over non-negative floats (|·|), whose bit patterns order like the values as
// unsigned integers, with a NaN (positive after fabsf) above +inf: an integer maximum keeps a NaN (fmaxf would
// drop it), so a NaN iterate reaches the residual and stops the solver. As integers a warp reduces them in one
// redux.sync instead of five shuffle-and-compare rounds.
__device__ __forceinline__ unsigned abs_bits(float v) { return __float_as_uint(fabsf(v)); }

// Block-wide sums of two values; every thread receives both. `scratch` holds 2 × 64 floats used alternately
// by consecutive calls (`parity`: the call's count mod 2), so one barrier per call suffices: a buffer is written
// again only two calls later, after every thread has passed the barrier of the call in between, and so has
// finished reading it.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* scratch, int parity) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  float* buf = scratch + 64 * (parity & 1);
  if (lane == 0) {
    buf[warp] = a;
    buf[32 + warp] = b;
  }
  __syncthreads();
  // The partial sums read four at a time where they come in fours (a quarter of the shared-memory loads), added
  // in the same order as one at a time.
  float ra = 0.0f, rb = 0.0f;
  int w = 0;
  for (; w + 4 <= warps; w += 4) {
    const float4 pa = *reinterpret_cast<const float4*>(buf + w);
    const float4 pb = *reinterpret_cast<const float4*>(buf + 32 + w);
    ra += pa.x;
    ra += pa.y;
    ra += pa.z;
    ra += pa.w;
    rb += pb.x;
    rb += pb.y;
    rb += pb.z;
    rb += pb.w;
  }
  for (; w < warps; ++w) {
    ra += buf[w];
    rb += buf[32 + w];
  }
  return make_float2(ra, rb);
}

// One block per token n = b·T + t. Shared memory: w (D), and for the sum form the input δ (D).
template <typename zt>
__global__ void fp_mix_kernel(const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx,
                              const float* __restrict__ h, const zt* __restrict__ lambda, float* __restrict__ v,
                              int64_t T, int64_t D, int64_t ld, int r, int ac, float eps, bool sum_form,
                              const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  extern __shared__ float smem[];
  float* w = smem;
  float* delta = smem + D;
  __shared__ __align__(16) float scratch[128];
  const int64_t n = blockIdx.x;
  const int64_t t = n % T;
  const zt* bn = base + n * ld;
  const zt* zp = (t > 0 && z != nullptr) ? z + (n - 1) * ld : nullptr;  // raw[b, t] = base[b, t] + z[b, t − 1]
  auto raw = [&](int64_t j) { return static_cast<float>(bn[j]) + (zp != nullptr ? static_cast<float>(zp[j]) : 0.0f); };
  const float* hn = h != nullptr ? h + n * D : nullptr;  // nullptr: the zero iterate (the solve's first step)
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float x = static_cast<float>(bx[n * D + d]) - (hn != nullptr ? hn[d] : 0.0f);
    w[d] = x;
    if (sum_form) delta[d] = x;
  }
  __syncthreads();
  for (int i = 0; i < r; ++i) {
    const float* src = sum_form ? delta : w;  // DPLR: every dot product against the input δ
    float uu = 0.0f, uw = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float a = activate(raw(i * D + d), ac);
      uu += a * a;
      uw += a * src[d];
    }
    const float2 s = block_sum2(uu, uw, scratch, i);
    const float inv = 1.0f / fmaxf(sqrtf(s.x), eps);  // u = a / max(‖a‖, eps)
    const float alpha = 1.0f / (1.0f + __expf(-raw(r * D + i)));
    const float c = -2.0f * alpha * s.y * inv * inv;  // −2 α (uᵀw) u = c · a
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) w[d] += c * activate(raw(i * D + d), ac);
    __syncthreads();
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    v[n * D + d] = (1.0f - static_cast<float>(lambda[n * D + d])) * (w[d] + (hn != nullptr ? hn[d] : 0.0f));
}

// fp_mix_kernel with WPT warps per token (one or two; kWarpsPerBlock / WPT tokens per block) instead of a
// block: every operand of the token requested at once, and the dot products are warp sums (plus, for two warps,
// one exchange through shared memory under a barrier of just those 64 threads). Lane l of the token's warp s holds
// chunks c = (l + 32s) + 32·WPT·k (k < KV) of 8 channels each in registers, so D ≤ 256·WPT·KV; wider rows keep
// the one-block kernel. Two warps per token beyond 4 chunks per lane: held in one warp, KV = 6 needed 144
// registers (one block per SM) and re-reading the directions instead of holding them made the compiler hoist
// the loads, 225. `vec`: rows and pointers 16-byte aligned and D a multiple of 8, so chunks load as 16-byte
// vectors; otherwise element by element, the same lanes summing the same channels in the same order, so both
// give the same bits (FpStepCuda.PaddedRowsAndRoundedIterate). At the LM shape (B, T, D) = (8, 2048, 1536) in
// bfloat16 the block-per-token kernel took 199 µs per call, bound by its barriers and the latency of each
// block's few loads.
constexpr int kWarpsPerBlock = 8;
using cuda_math::load8;
using cuda_math::load_row;
using cuda_math::store_row;
using cuda_math::token_sum2;

template <typename zt, int KV, int WPT, bool kSum>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    fp_mix_warp_kernel(const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx,
                       const float* __restrict__ h, const zt* __restrict__ lambda, float* __restrict__ v, int64_t N,
                       int64_t T, int64_t D, int64_t ld, int r, int ac, float eps, bool vec,
                       const int64_t* __restrict__ counters) {
  static_assert(WPT == 1 || WPT == 2, "one or two warps per token");
  constexpr int kTokens = kWarpsPerBlock / WPT;
  __shared__ float2 partial[kTokens][2][WPT];  // token_sum2's scratch
  if (counters[1] == 0) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slot = warp / WPT, sub = warp % WPT;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kTokens + slot;
  if (n >= N) return;  // both warps of the token: nothing below synchronises more than the token's warps
  const int64_t t = n % T;
  const zt* bn = base + n * ld;
  const zt* zp = (t > 0 && z != nullptr) ? z + (n - 1) * ld : nullptr;  // raw[b, t] = base[b, t] + z[b, t − 1]
  const float* hn = h != nullptr ? h + n * D : nullptr;  // nullptr: the zero iterate (the solve's first step)
  const int slane = lane + 32 * sub;
  auto load_h = [&](int64_t d0, bool v8, float (&hv)[8]) {
    if (hn != nullptr) {
      load8(hn + d0, D - d0, v8, hv);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) hv[j] = 0.0f;
    }
  };
  auto first = [&](int k) { return 8 * (slane + 32 * WPT * static_cast<int64_t>(k)); };  // chunk k's channel
  float w[KV][8], delta[kSum ? KV : 1][8];
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int64_t d0 = first(k);
    float hv[8], xv[8];
    load_h(d0, vec && d0 < D, hv);
    load8(bx + n * D + d0, D - d0, vec && d0 < D, xv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      w[k][j] = xv[j] - hv[j];
      if constexpr (kSum) delta[k][j] = w[k][j];
    }
  }
  for (int i = 0; i < r; ++i) {
    float a[KV][8];
    float uu = 0.0f, uw = 0.0f;
    const int64_t col = static_cast<int64_t>(i) * D;
#pragma unroll
    for (int k = 0; k < KV; ++k) {
      const int64_t d0 = first(k);
      float zv[8];
      load8(bn + col + d0, D - d0, vec && d0 < D, a[k]);
      if (zp != nullptr) {
        load8(zp + col + d0, D - d0, vec && d0 < D, zv);
#pragma unroll
        for (int j = 0; j < 8; ++j) a[k][j] += zv[j];
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        a[k][j] = d0 + j < D ? activate(a[k][j], ac) : 0.0f;
        uu += a[k][j] * a[k][j];
        uw += a[k][j] * (kSum ? delta[k][j] : w[k][j]);  // DPLR: every dot product against the input δ
      }
    }
    const float2 sums = token_sum2<WPT>(uu, uw, partial[slot], i, sub, slot);
    const int64_t ja = static_cast<int64_t>(r) * D + i;
    const float raw_alpha = static_cast<float>(bn[ja]) + (zp != nullptr ? static_cast<float>(zp[ja]) : 0.0f);
    const float inv = 1.0f / fmaxf(sqrtf(sums.x), eps);  // u = a / max(‖a‖, eps)
    const float alpha = 1.0f / (1.0f + __expf(-raw_alpha));
    const float c = -2.0f * alpha * sums.y * inv * inv;  // −2 α (uᵀw) u = c · a
#pragma unroll
    for (int k = 0; k < KV; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) w[k][j] += c * a[k][j];
  }
#pragma unroll
  for (int k = 0; k < KV; ++k) {
    const int64_t d0 = first(k);
    if (d0 >= D) continue;
    float hv[8], lv[8], out[8];
    load_h(d0, vec, hv);  // again: a cache hit, cheaper than holding it in registers
    load8(lambda + n * D + d0, D - d0, vec, lv);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = (1.0f - lv[j]) * (w[k][j] + hv[j]);
    float* vn = v + n * D + d0;
    if (vec) {
      reinterpret_cast<float4*>(vn)[0] = make_float4(out[0], out[1], out[2], out[3]);
      reinterpret_cast<float4*>(vn)[1] = make_float4(out[4], out[5], out[6], out[7]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (d0 + j < D) vn[j] = out[j];
    }
  }
}

// The scan over one (b, chunk) per blockIdx.y and channels d across blockIdx.x·blockDim.x + threadIdx.x,
// as in linrec_cuda.cu; phase 3 also writes the damped iterate and the residual maxima. Both walks request the
// operands of kScanBatch steps before using any (the loads do not depend on the carried state), so a thread has
// several loads in flight instead of one round trip per step; the output kernel then reduces each step's maxima
// over the block (warp redux, shared memory, one barrier per batch) and sends one atomic maximum per block and
// step, not one per warp: at the LM shape (B, T, D) = (8, 2048, 1536) 6 atomics per token and statistic, not 48.
constexpr int kScanBatch = 8;
template <typename lam_t>
__global__ void __launch_bounds__(kThreads)
    fp_scan_summary_kernel(const float* __restrict__ v, const lam_t* __restrict__ lambda, float* end_state,
                           float* prod, int64_t T, int64_t D, int64_t NC, int64_t L,
                           const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bk = blockIdx.y, b = bk / NC, k = bk % NC;
  if (d >= D) return;
  const int64_t t0 = k * L, t1 = min(T, t0 + L);
  float s = 0.0f, p = 1.0f;
  for (int64_t tb = t0; tb < t1; tb += kScanBatch) {
    float lv[kScanBatch], vv[kScanBatch];
#pragma unroll
    for (int u = 0; u < kScanBatch; ++u) {
      const int64_t i = (b * T + tb + u) * D + d;
      lv[u] = tb + u < t1 ? static_cast<float>(lambda[i]) : 1.0f;  // past the chunk: the identity step
      vv[u] = tb + u < t1 ? v[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kScanBatch; ++u) {
      if (tb + u >= t1) break;
      s = lv[u] * s + vv[u];
      p *= lv[u];
    }
  }
  end_state[bk * D + d] = s;
  prod[bk * D + d] = p;
}

__global__ void fp_scan_carry_kernel(const float* end_state, const float* prod, float* carry_in, int64_t B, int64_t D,
                                     int64_t NC, const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * D) return;
  const int64_t d = idx % D, b = idx / D;
  float carry = 0.0f;
  for (int64_t k = 0; k < NC; ++k) {
    const int64_t i = (b * NC + k) * D + d;
    carry_in[i] = carry;
    carry = prod[i] * carry + end_state[i];
  }
}

template <typename lam_t, typename lt>
__global__ void __launch_bounds__(kThreads)
    fp_scan_output_kernel(const float* __restrict__ v, const lam_t* __restrict__ lambda, const float* __restrict__ h,
                          float* __restrict__ y, lt* __restrict__ y_lowp, const float* carry_in,
                          const double* __restrict__ stepsize, float* diff, float* ymax, int64_t T, int64_t D,
                          int64_t NC, int64_t L, const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  // Per batch: the warps' maxima of each step, [parity][step][statistic][warp]; the two buffers alternate, so a
  // buffer is written again only after every thread has passed the next batch's barrier (and read it).
  __shared__ unsigned red[2][kScanBatch][2][kThreads / 32];
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bk = blockIdx.y, b = bk / NC, k = bk % NC;
  const bool live = d < D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  const float s_b = static_cast<float>(stepsize[b]);
  const int64_t t0 = k * L, t1 = min(T, t0 + L);
  float state = (live && carry_in != nullptr) ? carry_in[bk * D + d] : 0.0f;
  int parity = 0;
  for (int64_t tb = t0; tb < t1; tb += kScanBatch, parity ^= 1) {
    const int n = static_cast<int>(t1 - tb < kScanBatch ? t1 - tb : kScanBatch);
    float lv[kScanBatch], vv[kScanBatch], hv[kScanBatch];
#pragma unroll
    for (int u = 0; u < kScanBatch; ++u) {
      const int64_t i = (b * T + tb + u) * D + d;
      const bool in = live && u < n;
      lv[u] = in ? static_cast<float>(lambda[i]) : 0.0f;
      vv[u] = in ? v[i] : 0.0f;
      hv[u] = in && h != nullptr ? h[i] : 0.0f;  // h nullptr: the zero iterate (the solve's first step)
    }
#pragma unroll
    for (int u = 0; u < kScanBatch; ++u) {
      if (u >= n) break;  // n is the same for the whole block
      unsigned dev = 0, mag = 0;  // |·| as bits (abs_bits)
      if (live) {
        const int64_t i = (b * T + tb + u) * D + d;
        state = lv[u] * state + vv[u];
        const float out = s_b == 1.0f ? state : s_b * state + (1.0f - s_b) * hv[u];
        y[i] = out;
        if (y_lowp != nullptr) y_lowp[i] = static_cast<lt>(out);
        dev = abs_bits(state - hv[u]);
        mag = abs_bits(state);
      }
      dev = __reduce_max_sync(0xffffffffu, dev);
      mag = __reduce_max_sync(0xffffffffu, mag);
      if (lane == 0) {
        red[parity][u][0][warp] = dev;
        red[parity][u][1][warp] = mag;
      }
    }
    __syncthreads();
    if (threadIdx.x < 2 * n) {
      // Non-negative floats order like their bit patterns; a NaN (positive bits) wins the maximum.
      const int u = threadIdx.x >> 1, which = threadIdx.x & 1;
      unsigned m = 0;
      for (int w = 0; w < warps; ++w) m = max(m, red[parity][u][which][w]);
      atomicMax(reinterpret_cast<unsigned*>(which == 0 ? diff : ymax) + b * T + tb + u, m);
    }
  }
}

// What the continue test needs to know of `best` (B values ≥ 0, +inf or NaN), gathered by one block reduction
// instead of a sort: how many are numbers (not NaN), finite, below the threshold; the largest value below the
// threshold and the smallest number at or above it; and the largest step size.
struct QuantileFacts {
  int numbers, finite, below;
  double max_below, min_above, max_step;
};

// The continue test's quantile condition, `quantile(best, q) ≥ threshold` with the linear-interpolation
// quantile of solver::quantile (NaN sorted last; a NaN in the interpolation, or ∞ − ∞, gives NaN, which fails),
// decided exactly from the facts above. With v the values sorted (numbers ascending, then the NaNs),
// lo = ⌊q(B − 1)⌋, hi = ⌈q(B − 1)⌉, a = v[lo], b = v[hi]:
//   * v[hi] is NaN (hi ≥ numbers): the quantile is NaN → false;
//   * lo = hi: the quantile is a, and a ≥ threshold ⇔ fewer than lo + 1 values lie below it;
//   * below > hi: a ≤ b < threshold, and so is every value between them → false;
//   * below = hi: a is the largest value below the threshold, b the smallest at or above it: the
//     interpolation itself, on those two values;
//   * below ≤ lo: threshold ≤ a ≤ b, so the interpolation is ≥ threshold unless it is NaN, which happens only
//     for a finite a and b = +∞ with the weight ≥ 0.5 (∞ − (1 − w)·∞), i.e. when exactly hi values are finite.
__device__ bool quantile_at_least(const QuantileFacts& f, int64_t B, double quantile, double threshold) {
  const double pos = quantile * static_cast<double>(B - 1);
  const int64_t lo = static_cast<int64_t>(floor(pos)), hi = static_cast<int64_t>(ceil(pos));
  if (hi >= f.numbers) return false;
  if (lo == hi) return f.below <= lo;
  const double wgt = pos - static_cast<double>(lo);
  if (f.below > hi) return false;
  if (f.below == hi) {
    const double a = f.max_below, b = f.min_above;  // a < threshold ≤ b, so a ≠ b
    const double q = wgt < 0.5 ? a + wgt * (b - a) : b - (1.0 - wgt) * (b - a);
    return q >= threshold;
  }
  return !(f.finite == hi && wgt >= 0.5);
}

// The per-sample part of the controller (spec §8) for the residual r (r_b of the step just taken), from the
// sample's state before it: best = min(best, r) with NaN poisoning, patience counted down (reset on an
// improvement), the step size decayed when patience runs out. Writes the new state; returns best and step size.
struct SampleState {
  double best, step;
};
__device__ __forceinline__ SampleState update_sample(int64_t b, double r, double old_best, double old_step,
                                                     int64_t old_patience, double* best, double* last,
                                                     double* stepsize, int64_t* patience, int64_t decay_patience,
                                                     double decay) {
  const bool improved = r < old_best;
  double nb = old_best;
  if (improved || isnan(r)) nb = r;  // torch.minimum semantics: NaN poisons the sample
  best[b] = nb;
  int64_t p = improved ? decay_patience : old_patience - 1;
  double s = old_step;
  if (p == 0) {
    p += decay_patience;
    s *= decay;
    stepsize[b] = s;
  }
  patience[b] = p;
  last[b] = r;
  return {nb, s};
}

// One sample's contribution to the facts.
__device__ __forceinline__ void add_fact(QuantileFacts& f, double nb, double s, double threshold) {
  f.max_step = fmax(f.max_step, s);
  if (!isnan(nb)) {
    ++f.numbers;
    if (!isinf(nb)) ++f.finite;
    if (nb < threshold) {
      ++f.below;
      f.max_below = fmax(f.max_below, nb);
    } else {
      f.min_above = fmin(f.min_above, nb);
    }
  }
}

// The block's facts combined (warp shuffles, then `warp_facts`, 32 in shared memory); thread 0 gets them.
__device__ QuantileFacts block_facts(QuantileFacts f, QuantileFacts* warp_facts) {
  for (int o = 16; o > 0; o >>= 1) {
    f.numbers += __shfl_xor_sync(0xffffffffu, f.numbers, o);
    f.finite += __shfl_xor_sync(0xffffffffu, f.finite, o);
    f.below += __shfl_xor_sync(0xffffffffu, f.below, o);
    f.max_below = fmax(f.max_below, __shfl_xor_sync(0xffffffffu, f.max_below, o));
    f.min_above = fmin(f.min_above, __shfl_xor_sync(0xffffffffu, f.min_above, o));
    f.max_step = fmax(f.max_step, __shfl_xor_sync(0xffffffffu, f.max_step, o));
  }
  if ((threadIdx.x & 31) == 0) warp_facts[threadIdx.x >> 5] = f;
  __syncthreads();
  QuantileFacts all = warp_facts[0];
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>((blockDim.x + 31) / 32); ++w) {
      const QuantileFacts& g = warp_facts[w];
      all.numbers += g.numbers;
      all.finite += g.finite;
      all.below += g.below;
      all.max_below = fmax(all.max_below, g.max_below);
      all.min_above = fmin(all.min_above, g.min_above);
      all.max_step = fmax(all.max_step, g.max_step);
    }
  }
  return all;
}

// Counts the iteration and writes the continue test for the next one into counters[1] (thread 0 only).
__device__ __forceinline__ void finish_iteration(const QuantileFacts& all, int64_t* counters, int64_t B,
                                                 double quantile, double threshold, double stepsize_thresh,
                                                 int64_t max_iter) {
  const int64_t iter = counters[0] + 1;
  counters[0] = iter;
  const bool go = iter < max_iter && quantile_at_least(all, B, quantile, threshold) && all.max_step >= stepsize_thresh;
  counters[1] = go ? 1 : 0;
}

// The controller's work folded into the mix + scan kernel (fp_mixscan_cuda with `control`): `best` … `counters`
// of the solver state and the options; counters[2] counts the blocks done this iteration.
struct FusedControl {
  double* best = nullptr;
  double* last = nullptr;
  double* stepsize = nullptr;
  int64_t* patience = nullptr;
  int64_t* counters = nullptr;
  double eps = 0, decay = 1, threshold = 0, quantile = 1, stepsize_thresh = 0;
  int64_t decay_patience = 1, max_iter = 1, B = 0;
};

// After the block's walk of sample b: r_b = max_t diff/(ymax + eps) from the rows its warps' atomics filled
// (each row belongs to this block only), the rows zeroed for the next iteration, the sample's state updated
// (update_sample), and, in the block that finishes last (a ticket in counters[2], taken after a fence that
// publishes the sample's state), the facts of all B samples and the continue test, as fp_controller_kernel
// would decide them. The last block resets the ticket.
__device__ void fused_control(int64_t b, int64_t T, float* diff, float* ymax, const FusedControl& ctl) {
  __shared__ double red[32];
  __shared__ QuantileFacts warp_facts[32];
  __shared__ bool is_last;
  __syncthreads();  // every warp's atomics on this sample's rows are done and visible to the block
  double r = 0.0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    const int64_t i = b * T + t;
    const double q = static_cast<double>(__ldcg(diff + i)) / (static_cast<double>(__ldcg(ymax + i)) + ctl.eps);
    r = (q > r || isnan(q)) ? q : r;
    diff[i] = 0.0f;
    ymax[i] = 0.0f;
  }
  for (int o = 16; o > 0; o >>= 1) {  // the maximum, a NaN winning (as the controller's sequential loop)
    const double x = __shfl_xor_sync(0xffffffffu, r, o);
    r = (x > r || isnan(x)) ? x : r;
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = r;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>((blockDim.x + 31) / 32); ++w) r = (red[w] > r || isnan(red[w])) ? red[w] : r;
    update_sample(b, r, ctl.best[b], ctl.stepsize[b], ctl.patience[b], ctl.best, ctl.last, ctl.stepsize, ctl.patience,
                  ctl.decay_patience, ctl.decay);
    __threadfence();
    const auto done = atomicAdd(reinterpret_cast<unsigned long long*>(ctl.counters + 2), 1ull);
    is_last = done == static_cast<unsigned long long>(ctl.B - 1);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  QuantileFacts f{0, 0, 0, -INFINITY, INFINITY, 0.0};
  for (int64_t s = threadIdx.x; s < ctl.B; s += blockDim.x) add_fact(f, __ldcg(ctl.best + s), __ldcg(ctl.stepsize + s), ctl.threshold);
  const QuantileFacts all = block_facts(f, warp_facts);
  if (threadIdx.x == 0) {
    finish_iteration(all, ctl.counters, ctl.B, ctl.quantile, ctl.threshold, ctl.stepsize_thresh, ctl.max_iter);
    ctl.counters[2] = 0;
  }
}

// The scan part of one token, for thread k's channels d = k + j·kThreads (j < CPT): from the mixed input w,
// the previous iterate hv and the decay lv, v = (1 − λ)(w + h) rounded as the mix kernel stores it, the scan
// state λ·s + v, the damped output (y and its rounded copy yln) and the residual maxima of the token (one
// atomic maximum per warp).
template <typename lt, int CPT>
__device__ __forceinline__ void scan_token(const float (&w)[CPT], const float (&hv)[CPT], const float (&lv)[CPT],
                                           float (&state)[CPT], float s_b, float* __restrict__ yn,
                                           lt* __restrict__ yln, unsigned* diff_n, unsigned* ymax_n, int64_t D) {
  unsigned dev = 0, mag = 0;  // |·| as bits (abs_bits)
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    if (d < D) {
      const float l = lv[j];
      const float v = __fmul_rn(1.0f - l, w[j] + hv[j]);  // the mix kernel's stored scan input
      state[j] = fmaf(l, state[j], v);
      const float old = hv[j];
      const float out = s_b == 1.0f ? state[j] : s_b * state[j] + (1.0f - s_b) * old;
      yn[d] = out;
      if (yln != nullptr) yln[d] = static_cast<lt>(out);
      dev = max(dev, abs_bits(state[j] - old));
      mag = max(mag, abs_bits(state[j]));
    }
  }
  dev = __reduce_max_sync(0xffffffffu, dev);
  mag = __reduce_max_sync(0xffffffffu, mag);
  if ((threadIdx.x & 31) == 0) {
    // Non-negative floats order like their bit patterns; a NaN (positive bits) wins the maximum.
    atomicMax(diff_n, dev);
    atomicMax(ymax_n, mag);
  }
}

// fp_mix_kernel and the unchunked fp_scan_output_kernel in one: one block of kThreads threads per sample b
// walks its T tokens in order; thread k holds channels d = k + j·kThreads (j < CPT) of the mix in registers
// and carries their scan state from token to token, so the float32 scan input never goes through memory.
// The arithmetic is that of the block-per-token fp_mix_kernel and the scan (the same per-thread channel order
// and block sums for the mix, v = (1 − λ)(w + h) rounded before the scan's λ·s + v); the warp-per-token mix the
// two-kernel path runs for D ≤ 2048 sums the dot products in another order, so the two paths agree to rounding
// (the tests compare them at 1e-6). The residual maxima go out as one atomic maximum per warp and token (the
// controller zeroes them). This strided layout serves the kernel that reads global memory directly (rows not
// 16-byte aligned); the staged kernel gives each thread consecutive channels (mixscan_token_rows).
//
// One token: hn, bxn, ln (D values each), bn (the token's parameter row) and zp (the previous token's GEMM row,
// nullptr at t = 0) in global memory; yn, yln, the token's outputs.
template <typename zt, typename lt, int CPT>
__device__ __forceinline__ void mixscan_token(const float* hn, const zt* bxn, const zt* ln, const zt* bn,
                                              const zt* zp, float (&state)[CPT], float s_b, float* __restrict__ yn,
                                              lt* __restrict__ yln, unsigned* diff_n, unsigned* ymax_n, int64_t D, int r,
                                              int ac, float eps, bool sum_form, float* scratch, int& reductions) {
  // raw[b, t] = base[b, t] + z[b, t − 1], as fp_mix_kernel forms it.
  auto raw = [&](int64_t j) { return static_cast<float>(bn[j]) + (zp != nullptr ? static_cast<float>(zp[j]) : 0.0f); };
  float w[CPT], delta[CPT], hv[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    hv[j] = d < D && hn != nullptr ? hn[d] : 0.0f;  // hn nullptr: the zero iterate
    w[j] = d < D ? static_cast<float>(bxn[d]) - hv[j] : 0.0f;
    delta[j] = w[j];
  }
  for (int i = 0; i < r; ++i) {
    float a[CPT];
    float uu = 0.0f, uw = 0.0f;
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      a[j] = 0.0f;
      if (d < D) {
        a[j] = activate(raw(i * D + d), ac);
        uu += a[j] * a[j];
        uw += a[j] * (sum_form ? delta[j] : w[j]);  // DPLR: every dot product against the input δ
      }
    }
    const float2 sums = block_sum2(uu, uw, scratch, reductions++);
    const float inv = 1.0f / fmaxf(sqrtf(sums.x), eps);  // u = a / max(‖a‖, eps)
    const float alpha = 1.0f / (1.0f + __expf(-raw(static_cast<int64_t>(r) * D + i)));
    const float c = -2.0f * alpha * sums.y * inv * inv;  // −2 α (uᵀw) u = c · a
#pragma unroll
    for (int j = 0; j < CPT; ++j) w[j] += c * a[j];
  }
  float lv[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
    lv[j] = d < D ? static_cast<float>(ln[d]) : 0.0f;
  }
  scan_token<lt, CPT>(w, hv, lv, state, s_b, yn, yln, diff_n, ymax_n, D);
}

// Operands read straight from global memory: any D and leading dimension.
template <typename zt, typename lt, int CPT>
__global__ void __launch_bounds__(kThreads) fp_mixscan_kernel(
    const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx, const float* __restrict__ h,
    const zt* __restrict__ lambda, float* __restrict__ y, lt* __restrict__ y_lowp, const double* __restrict__ stepsize,
    float* __restrict__ diff, float* __restrict__ ymax, int64_t T, int64_t D, int64_t ld, int r, int ac, float eps,
    bool sum_form, const int64_t* counters, FusedControl ctl) {
  if (counters[1] == 0) return;
  __shared__ __align__(16) float scratch[128];
  int reductions = 0;
  const int64_t b = blockIdx.x;
  const float s_b = static_cast<float>(stepsize[b]);
  float state[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) state[j] = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = b * T + t;
    mixscan_token<zt, lt, CPT>(h != nullptr ? h + n * D : nullptr, bx + n * D, lambda + n * D, base + n * ld,
                               (t > 0 && z != nullptr) ? z + (n - 1) * ld : nullptr,
                               state, s_b, y + n * D, y_lowp != nullptr ? y_lowp + n * D : nullptr,
                               reinterpret_cast<unsigned*>(diff) + n, reinterpret_cast<unsigned*>(ymax) + n, D, r, ac, eps,
                               sum_form, scratch, reductions);
  }
  if (ctl.counters != nullptr) fused_control(b, T, diff, ymax, ctl);
}

// 16-byte asynchronous copies global → shared (sm_80+), by the whole block; a group is closed by
// copy_async_commit, and copy_async_wait_all waits for every group this thread committed.
__device__ __forceinline__ void copy_async(void* smem, const void* gmem, int64_t bytes) {
  char* s = static_cast<char*>(smem);
  const char* g = static_cast<const char*>(gmem);
  for (int64_t o = static_cast<int64_t>(threadIdx.x) * 16; o < bytes; o += static_cast<int64_t>(blockDim.x) * 16)
    cuda_math::cp_async16(s + o, g + o);
}
__device__ __forceinline__ void copy_async_commit() { cuda_math::cp_async_commit(); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Bytes of one token's operands in shared memory, each piece a multiple of 16: h (D float32), b⊙x and λ (D
// each), the token's parameter row and the previous token's GEMM row (rows8 = r·D + r rounded up to 8 each).
struct StageLayout {
  int64_t h, bx, lam, base, z, total;
  __host__ __device__ StageLayout(int64_t D, int64_t rows8, int64_t zt_size) {
    h = 0;
    bx = h + D * 4;
    lam = bx + D * zt_size;
    base = lam + D * zt_size;
    z = base + rows8 * zt_size;
    total = z + rows8 * zt_size;
  }
};

// Copies token n's operands (t: its position in the sequence) into the stage `st` by the whole block, without
// closing the commit group: h (unless the zero iterate), b⊙x, λ, its parameter row and, for t > 0, the previous
// token's GEMM row (unless z is the zero iterate's).
template <typename zt>
__device__ __forceinline__ void copy_token_operands(char* st, const StageLayout& L, const float* h, const zt* bx,
                                                    const zt* lambda, const zt* base, const zt* z, int64_t n,
                                                    int64_t t, int64_t D, int64_t ld, int64_t rows8) {
  if (h != nullptr) copy_async(st + L.h, h + n * D, D * 4);
  copy_async(st + L.bx, bx + n * D, D * static_cast<int64_t>(sizeof(zt)));
  copy_async(st + L.lam, lambda + n * D, D * static_cast<int64_t>(sizeof(zt)));
  copy_async(st + L.base, base + n * ld, rows8 * static_cast<int64_t>(sizeof(zt)));
  if (t > 0 && z != nullptr) copy_async(st + L.z, z + (n - 1) * ld, rows8 * static_cast<int64_t>(sizeof(zt)));
}

struct NoOp {
  __device__ void operator()() const {}
};

// The mixer part of one token from its stage (`st`; `has_z`: whether it holds the previous token's GEMM row), for
// thread k's consecutive channels [c0, c0 + CPT), c0 = CPT·k (`live`: c0 < D): w = Q(raw)(b⊙x − h) and the iterate
// hv (zeros without h), each operand one 16-byte (or CPT-element) shared-memory load. `after_first_sum` runs right
// after the first block sum, when every thread of the block has finished the tokens before this one (the staged
// kernel then reuses the previous token's stage).
//
// AC ≥ 0: the activation AC and one reflection in product form (r = 1, not the sum form) known at compile time,
// the arguments ac, r and sum_form ignored; AC = −1: all three at run time.
template <typename zt, int CPT, int AC = -1, typename F = NoOp>
__device__ __forceinline__ void mix_token_rows(const char* st, const StageLayout& L, bool has_h, bool has_z, bool live,
                                               int c0, float (&w)[CPT], float (&hv)[CPT], int D, int r_arg, int ac_arg,
                                               float eps, bool sum_form_arg, float* scratch, int& reductions,
                                               F&& after_first_sum = F{}) {
  const int r = AC >= 0 ? 1 : r_arg;
  const int ac = AC >= 0 ? AC : ac_arg;
  const bool sum_form = AC >= 0 ? false : sum_form_arg;
  const zt* bn = reinterpret_cast<const zt*>(st + L.base);
  const zt* zp = reinterpret_cast<const zt*>(st + L.z);
  float delta[CPT];
  if (live) {
    if (has_h) load_row<CPT>(reinterpret_cast<const float*>(st + L.h) + c0, hv);
    load_row<CPT>(reinterpret_cast<const zt*>(st + L.bx) + c0, w);
  }
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    if (!live || !has_h) hv[j] = 0.0f;
    if (!live) w[j] = 0.0f;
    w[j] -= hv[j];
    delta[j] = w[j];
  }
  for (int i = 0; i < r; ++i) {
    float a[CPT], zr[CPT];
    float uu = 0.0f, uw = 0.0f;
    if (live) {
      load_row<CPT>(bn + i * D + c0, a);
      if (has_z) load_row<CPT>(zp + i * D + c0, zr);
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        a[j] = activate(a[j] + (has_z ? zr[j] : 0.0f), ac);  // raw = base + z of the previous token
        uu += a[j] * a[j];
        uw += a[j] * (sum_form ? delta[j] : w[j]);  // DPLR: every dot product against the input δ
      }
    } else {
#pragma unroll
      for (int j = 0; j < CPT; ++j) a[j] = 0.0f;
    }
    const float2 sums = block_sum2(uu, uw, scratch, reductions++);
    if (i == 0) after_first_sum();
    const float inv = 1.0f / fmaxf(sqrtf(sums.x), eps);  // u = a / max(‖a‖, eps)
    const int ia = r * D + i;
    const float raw_alpha = static_cast<float>(bn[ia]) + (has_z ? static_cast<float>(zp[ia]) : 0.0f);
    const float alpha = 1.0f / (1.0f + __expf(-raw_alpha));
    const float c = -2.0f * alpha * sums.y * inv * inv;  // −2 α (uᵀw) u = c · a
#pragma unroll
    for (int j = 0; j < CPT; ++j) w[j] += c * a[j];
  }
}

// The scan step of one token for thread k's channels (mixscan_token_rows, the chunked kernel's second walk): from
// the scan input v, the previous iterate hv and the decay lv, the state λ·s + v, the damped output (y and its
// rounded copy) and the residual maxima of the token over the warp (|·| as bits), in every lane.
template <typename lt, int CPT>
__device__ __forceinline__ void scan_token_values(bool live, int c0, const float (&v)[CPT], const float (&hv)[CPT],
                                                  const float (&lv)[CPT], float (&state)[CPT], float s_b,
                                                  float* __restrict__ yn, lt* __restrict__ yln, unsigned& dev,
                                                  unsigned& mag) {
  dev = 0;  // |·| as bits (abs_bits)
  mag = 0;
  if (live) {
    float out[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      state[j] = fmaf(lv[j], state[j], v[j]);
      out[j] = s_b == 1.0f ? state[j] : s_b * state[j] + (1.0f - s_b) * hv[j];
      dev = max(dev, abs_bits(state[j] - hv[j]));
      mag = max(mag, abs_bits(state[j]));
    }
    store_row<CPT>(yn + c0, out);
    if (yln != nullptr) store_row<CPT>(yln + c0, out);
  }
  dev = __reduce_max_sync(0xffffffffu, dev);
  mag = __reduce_max_sync(0xffffffffu, mag);
}

// scan_token_values with the maxima sent on: one atomic maximum per warp into the token's rows.
template <typename lt, int CPT>
__device__ __forceinline__ void scan_token_rows(bool live, int c0, const float (&v)[CPT], const float (&hv)[CPT],
                                                const float (&lv)[CPT], float (&state)[CPT], float s_b,
                                                float* __restrict__ yn, lt* __restrict__ yln, unsigned* diff_n,
                                                unsigned* ymax_n) {
  unsigned dev, mag;
  scan_token_values<lt, CPT>(live, c0, v, hv, lv, state, s_b, yn, yln, dev, mag);
  if ((threadIdx.x & 31) == 0) {
    // Non-negative floats order like their bit patterns; a NaN (positive bits) wins the maximum.
    atomicMax(diff_n, dev);
    atomicMax(ymax_n, mag);
  }
}

// mixscan_token with thread k holding the consecutive channels [CPT·k, CPT·k + CPT) (D a multiple of CPT), its
// operands read from the stage in 16-byte (or CPT-element) loads and its outputs written the same way: a quarter
// of the shared-memory loads and global stores of the strided layout at CPT = 4, for the same per-element
// arithmetic (the block sums add the channels in another order). `st`: the token's stage; `has_z`: whether it
// holds the previous token's GEMM row.
template <typename zt, typename lt, int CPT, int AC = -1, typename F = NoOp>
__device__ __forceinline__ void mixscan_token_rows(const char* st, const StageLayout& L, bool has_h, bool has_z,
                                                   float (&state)[CPT],
                                                   float s_b, float* __restrict__ yn, lt* __restrict__ yln,
                                                   unsigned* diff_n, unsigned* ymax_n, int D, int r, int ac, float eps,
                                                   bool sum_form, float* scratch, int& reductions,
                                                   F&& after_first_sum = F{}) {
  const int c0 = static_cast<int>(threadIdx.x) * CPT;
  const bool live = c0 < D;
  float w[CPT], hv[CPT], lv[CPT], v[CPT];
  mix_token_rows<zt, CPT, AC>(st, L, has_h, has_z, live, c0, w, hv, D, r, ac, eps, sum_form, scratch, reductions,
                              after_first_sum);
  if (live) {
    load_row<CPT>(reinterpret_cast<const zt*>(st + L.lam) + c0, lv);
#pragma unroll
    for (int j = 0; j < CPT; ++j) v[j] = __fmul_rn(1.0f - lv[j], w[j] + hv[j]);  // the mix kernel's stored scan input
  }
  scan_token_rows<lt, CPT>(live, c0, v, hv, lv, state, s_b, yn, yln, diff_n, ymax_n);
}

// The same walk with the operands staged: while token t is mixed and scanned from shared memory, the copies of
// token t + 1's operands are in flight (two stages), so the walk is no longer a chain of global-memory round
// trips. Needs 16-byte aligned rows and D a multiple of CPT (see fp_mixscan_cuda). At the A5 shape this took the
// kernel from 78 µs (operands prefetched into registers) to 75 µs; three and four stages gave no more (also with
// 8 channels per thread: 53 µs at 2, 3 and 4 stages, results/h200/mixscan_bulk/). Consecutive channels per
// thread (mixscan_token_rows) load and store CPT at a time. The block has D/CPT threads rounded up to whole warps
// (fp_mixscan_cuda picks CPT = 8 for D > 512 where D allows).
//
// `ncu` at 8 channels per thread (results/h200/mixscan_bulk/): an instruction issued on 54 % of the cycles with
// four warps per scheduler, DRAM at 56 %, about 760 instructions per warp and token, some 140 of them each
// thread's share of the 16-byte cp.async copies (address arithmetic and loop control for five rows). On sm_90
// the copy engine takes those over: thread 0 issues one bulk copy per row, completing on the stage's mbarrier,
// which every thread waits on; and with the stage's reuse moved behind the token's first block sum (by then
// every thread has finished the token before), the walk has one barrier per token instead of two.
//
// AC ≥ 0: a variant for one reflection in product form with the activation AC (mix_token_rows).
template <typename zt, typename lt, int CPT, int AC>
__global__ void __launch_bounds__(kThreads) fp_mixscan_staged_kernel(
    const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx, const float* __restrict__ h,
    const zt* __restrict__ lambda, float* __restrict__ y, lt* __restrict__ y_lowp, const double* __restrict__ stepsize,
    float* __restrict__ diff, float* __restrict__ ymax, int64_t T, int64_t D, int64_t ld, int64_t rows8, int r, int ac,
    float eps, bool sum_form, const int64_t* counters, FusedControl ctl) {
  if (counters[1] == 0) return;
  extern __shared__ __align__(16) char stage_mem[];
  __shared__ __align__(16) float scratch[128];
  int reductions = 0;
  const StageLayout L(D, rows8, sizeof(zt));
  const int64_t b = blockIdx.x;
  const float s_b = static_cast<float>(stepsize[b]);
  float state[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) state[j] = 0.0f;
  auto token = [&](int64_t t, auto&& after_first_sum) {
    const int64_t n = b * T + t;
    mixscan_token_rows<zt, lt, CPT, AC>(stage_mem + (t & 1) * L.total, L, h != nullptr, t > 0 && z != nullptr, state,
                                        s_b, y + n * D, y_lowp != nullptr ? y_lowp + n * D : nullptr,
                                        reinterpret_cast<unsigned*>(diff) + n, reinterpret_cast<unsigned*>(ymax) + n,
                                        static_cast<int>(D), r, ac, eps, sum_form, scratch, reductions, after_first_sum);
  };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ __align__(8) uint64_t full[2];  // stage s's barrier: its token's bytes have landed
  if (threadIdx.x == 0) {
    cuda_math::mbarrier_init(&full[0], 1);
    cuda_math::mbarrier_init(&full[1], 1);
    cuda_math::mbarrier_init_fence();
  }
  __syncthreads();
  // Token t's rows into stage t mod 2, by thread 0: h (unless the zero iterate), b⊙x, λ, the parameter row and,
  // for t > 0, the previous token's GEMM row (unless z is the zero iterate's).
  auto issue = [&](int64_t t) {
    if (threadIdx.x != 0 || t >= T) return;
    char* st = stage_mem + (t & 1) * L.total;
    uint64_t* bar = &full[t & 1];
    const int64_t n = b * T + t;
    const bool zrow = t > 0 && z != nullptr;
    const auto row_bytes = static_cast<unsigned>(D * sizeof(zt)), par_bytes = static_cast<unsigned>(rows8 * sizeof(zt));
    const unsigned h_bytes = h != nullptr ? static_cast<unsigned>(D * 4) : 0u;
    cuda_math::mbarrier_arrive_expect(bar, h_bytes + 2 * row_bytes + (zrow ? 2 : 1) * par_bytes);
    if (h != nullptr) cuda_math::bulk_copy(st + L.h, h + n * D, h_bytes, bar);
    cuda_math::bulk_copy(st + L.bx, bx + n * D, row_bytes, bar);
    cuda_math::bulk_copy(st + L.lam, lambda + n * D, row_bytes, bar);
    cuda_math::bulk_copy(st + L.base, base + n * ld, par_bytes, bar);
    if (zrow) cuda_math::bulk_copy(st + L.z, z + (n - 1) * ld, par_bytes, bar);
  };
  issue(0);
  for (int64_t t = 0; t < T; ++t) {
    cuda_math::mbarrier_wait(&full[t & 1], static_cast<unsigned>((t >> 1) & 1));  // token t's rows have landed
    // Token t + 1 goes into token t − 1's stage, once every thread is done with it: after token t's first block sum.
    token(t, [&] { issue(t + 1); });
  }
#else
  // Before sm_90: every thread copies its share of the rows in 16-byte pieces (cp.async), one commit group per
  // token.
  auto issue = [&](int64_t t) {
    if (t < T)
      copy_token_operands<zt>(stage_mem + (t & 1) * L.total, L, h, bx, lambda, base, z, b * T + t, t, D, ld, rows8);
    copy_async_commit();
  };
  issue(0);
  for (int64_t t = 0; t < T; ++t) {
    copy_async_wait_all();  // this thread's copies of token t have landed
    __syncthreads();        // everyone's have, and everyone is done with token t − 1's stage
    issue(t + 1);           // into token t − 1's stage
    token(t, NoOp{});
  }
#endif
  if (ctl.counters != nullptr) fused_control(b, T, diff, ymax, ctl);
}

// fp_mixscan_cuda for batches whose samples alone do not fill the chip (the LM-like shape (B, T, D) = (8, 2048,
// 1536): 8 blocks), in one pass over memory instead of fp_mix_cuda + fp_scan_cuda's three (the scan input v
// written, then read by the chunk summary and by the output pass: 57 of the pass's 84 bytes per channel and token
// in bfloat16). One block of D/4 threads (4 consecutive channels each) takes a chunk of kChunkTokens tokens of
// one sample:
//
//   1. walks the chunk as fp_mixscan_staged_kernel does (operands staged by cp.async one token ahead), but from a
//      zero state, keeping v = (1 − λ)(Qδ + h) of each token in shared memory, the chunk's end state e and the
//      product P of its decays in registers;
//   2. finds the carry into the chunk from what the sample's earlier chunks publish (one flag per chunk, carrying
//      the launch's generation, so no reset between iterations). Chunks come in groups of kChunkGroup: a chunk
//      publishes (e, P) for the later chunks of its group, and a group's last chunk publishes the state at the
//      group's end, S_g. Chunk k of group g composes (e, P) of the group's chunks before it in order into (E, Q)
//      (E = Pⱼ E + eⱼ, Q = Pⱼ Q), then carry = Q ⊙ S_{g−1} + E. The order of every sum is fixed, so the result
//      does not depend on which block finishes first (a decoupled look-back, which takes the nearest published
//      prefix, would: the solve's iterates would differ from run to run), and the chain that orders the blocks
//      is one link per group, not per chunk;
//   3. walks the chunk again from the carry: state = λ·state + v from shared memory, h and λ read again (from L2,
//      kChunkSlots tokens in flight while step 2 waits), y, its rounded copy and the residual maxima as the
//      staged kernel writes them.
//
// A block takes its chunk from a ticket counter (chunk-major: chunk k of every sample before chunk k + 1), so
// every chunk it waits for belongs to a block that started earlier and is resident or done: the waits cannot
// deadlock whatever the scheduler does. The last block to finish resets the tickets and advances the generation.
// The arithmetic per token is the staged kernel's; the carry is composed in another order than fp_scan_cuda's
// carry pass, so the two paths agree to rounding (tests compare them at 1e-6).
constexpr int kChunkTokens = 8;
constexpr int kChunkGroup = 8;   // chunks per group (step 2)
constexpr int kChunkSlots = 4;   // the second walk's ring of (h, λ) stages
constexpr int kChunkCpt = 4;     // channels per thread: D/4 threads, at most kChunkMaxThreads
constexpr int kChunkMaxThreads = 512;

// The workspace of step 2: counters [tickets taken, blocks done, generation], one flag per chunk ((generation + 1)
// << 2 | status, status 1: the chunk's (e, P) published, 2: its group's end state S), and per chunk the rows e, P
// and S (3 × D floats).
struct ChunkWorkspace {
  unsigned long long* counters;
  unsigned long long* flags;
  float* data;
  unsigned long long* rmax;  // with fused control: r_b of each sample as the bits of a double ≥ 0 (or NaN), zeroed
};

// Shared-memory layout of the chunked kernel: the first walk's two stages, which the second walk reuses as
// kChunkSlots stages of (h, λ), then the chunk's scan inputs v (kChunkTokens × D float32).
struct ChunkLayout {
  int64_t slot, stages, v, total;
  __host__ __device__ ChunkLayout(const StageLayout& L, int64_t D, int64_t zt_size) {
    slot = D * 4 + D * zt_size;  // h, then λ: multiples of 16 where the staged kernel runs
    stages = 2 * L.total > kChunkSlots * slot ? 2 * L.total : kChunkSlots * slot;
    v = stages;
    total = v + kChunkTokens * D * 4;
  }
};

template <int CPT>
__device__ __forceinline__ void load_row_cg(const float* p, float (&v)[CPT]) {  // L2 only: another block wrote it
#pragma unroll
  for (int j = 0; j < CPT; ++j) v[j] = __ldcg(p + j);
}

template <typename zt, typename lt>
__global__ void __launch_bounds__(kChunkMaxThreads) fp_mixscan_chunked_kernel(
    const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx, const float* __restrict__ h,
    const zt* __restrict__ lambda, float* __restrict__ y, lt* __restrict__ y_lowp, const double* __restrict__ stepsize,
    float* __restrict__ diff, float* __restrict__ ymax, int64_t B, int64_t T, int64_t D, int64_t ld, int64_t rows8,
    int64_t NC, int r, int ac, float eps, bool sum_form, const int64_t* counters, ChunkWorkspace ws, FusedControl ctl) {
  constexpr int CPT = kChunkCpt;
  if (counters[1] == 0) return;
  extern __shared__ __align__(16) char stage_mem[];
  __shared__ __align__(16) float scratch[128];
  __shared__ unsigned long long block_ticket, block_gen;
  if (threadIdx.x == 0) {
    block_ticket = atomicAdd(ws.counters, 1ull);
    block_gen = *reinterpret_cast<volatile unsigned long long*>(ws.counters + 2);
  }
  __syncthreads();
  const StageLayout L(D, rows8, sizeof(zt));
  const ChunkLayout CL(L, D, sizeof(zt));
  const unsigned long long gen = block_gen, epoch = gen + 1;
  const int64_t k = static_cast<int64_t>(block_ticket) / B, b = static_cast<int64_t>(block_ticket) % B;
  const int64_t t0 = k * kChunkTokens, t1 = min(T, t0 + kChunkTokens);
  const int c0 = static_cast<int>(threadIdx.x) * CPT;
  const bool live = c0 < D;
  const float s_b = static_cast<float>(stepsize[b]);
  float* vbuf = reinterpret_cast<float*>(stage_mem + CL.v);
  int reductions = 0;

  // 1. The mix and the chunk's scan from a zero state.
  auto issue = [&](int64_t t) {  // token t's operands into stage (t − t0) mod 2, one commit group per token
    if (t < t1) {
      copy_token_operands<zt>(stage_mem + ((t - t0) & 1) * L.total, L, h, bx, lambda, base, z, b * T + t, t, D, ld,
                              rows8);
    }
    copy_async_commit();
  };
  float e[CPT], p[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    e[j] = 0.0f;
    p[j] = 1.0f;
  }
  issue(t0);
  for (int64_t t = t0; t < t1; ++t) {
    copy_async_wait_all();
    __syncthreads();
    issue(t + 1);
    const char* st = stage_mem + ((t - t0) & 1) * L.total;
    float w[CPT], hv[CPT], lv[CPT], v[CPT];
    mix_token_rows<zt, CPT>(st, L, h != nullptr, t > 0 && z != nullptr, live, c0, w, hv, static_cast<int>(D), r, ac,
                            eps, sum_form, scratch, reductions);
    if (live) {
      load_row<CPT>(reinterpret_cast<const zt*>(st + L.lam) + c0, lv);
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        v[j] = __fmul_rn(1.0f - lv[j], w[j] + hv[j]);  // the mix kernel's stored scan input
        e[j] = fmaf(lv[j], e[j], v[j]);
        p[j] *= lv[j];
      }
      store_row<CPT>(vbuf + (t - t0) * D + c0, v);  // read back by this thread only
    }
  }
  __syncthreads();  // every thread is done with the stages: the second walk's (h, λ) copies may start now
  auto issue_hl = [&](int64_t i) {  // token t0 + i's h and λ into slot i mod kChunkSlots, one group per token
    if (t0 + i < t1) {
      char* sl = stage_mem + (i % kChunkSlots) * CL.slot;
      const int64_t n = b * T + t0 + i;
      if (h != nullptr) copy_async(sl, h + n * D, D * 4);
      copy_async(sl + D * 4, lambda + n * D, D * static_cast<int64_t>(sizeof(zt)));
    }
    copy_async_commit();
  };
#pragma unroll
  for (int i = 0; i < kChunkSlots; ++i) issue_hl(i);

  // 2. The carry into the chunk: (E, Q) of the group's earlier chunks, then Q ⊙ S_{g−1} + E.
  const int64_t g0 = k - k % kChunkGroup;                      // the group's first chunk
  const int n_before = static_cast<int>(k - g0);                // the group's chunks before this one
  const bool group_last = (k + 1) % kChunkGroup == 0;
  const bool has_next = k + 1 < NC;
  const unsigned long long* flags = ws.flags + b * NC;
  const float* rows = ws.data + b * NC * 3 * D;                 // per chunk: e, P, S
  float* row = ws.data + (b * NC + k) * 3 * D;
  auto publish = [&](unsigned long long status) {
    __threadfence();  // this thread's rows are visible device-wide before the flag
    __syncthreads();
    if (threadIdx.x == 0) atomicExch(ws.flags + b * NC + k, (epoch << 2) | status);
  };
  // Spin until chunk j's flag carries this launch's generation (earlier launches' flags carry smaller ones).
  auto await = [&](int64_t j) {
    const volatile unsigned long long* f = flags + j;
    while ((*f >> 2) != epoch) {
    }
    __threadfence();
  };
  if (has_next && !group_last) {
    if (live) {
      store_row<CPT>(row + c0, e);
      store_row<CPT>(row + D + c0, p);
    }
    publish(1);
  }
  float E[CPT], Q[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
    E[j] = 0.0f;
    Q[j] = 1.0f;
  }
  if (n_before > 0) {
    if (static_cast<int>(threadIdx.x) < n_before) await(g0 + threadIdx.x);  // a thread per earlier chunk of the group
    __syncthreads();
    if (live) {
      // The rows two chunks at a time, loaded before they are combined (L2 only: other blocks wrote them); four
      // at a time took the kernel from 60 to 96 registers, one block of 384 threads per SM.
      for (int q0 = 0; q0 < n_before; q0 += 2) {
        float pe[2][CPT], pp[2][CPT];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          if (q0 + u < n_before) {
            const float* pr = rows + (g0 + q0 + u) * 3 * D;
            load_row_cg<CPT>(pr + c0, pe[u]);
            load_row_cg<CPT>(pr + D + c0, pp[u]);
          }
        }
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          if (q0 + u < n_before) {
#pragma unroll
            for (int j = 0; j < CPT; ++j) {
              E[j] = fmaf(pp[u][j], E[j], pe[u][j]);
              Q[j] *= pp[u][j];
            }
          }
        }
      }
    }
  }
  float carry[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) carry[j] = E[j];
  if (g0 > 0) {
    if (threadIdx.x == 0) await(g0 - 1);  // the previous group's last chunk: S_{g−1}
    __syncthreads();
    if (live) {
      float S[CPT];
      load_row_cg<CPT>(rows + (g0 - 1) * 3 * D + 2 * D + c0, S);
#pragma unroll
      for (int j = 0; j < CPT; ++j) carry[j] = fmaf(Q[j], S[j], E[j]);
    }
  }
  if (has_next && group_last) {
    if (live) {
      float S[CPT];
#pragma unroll
      for (int j = 0; j < CPT; ++j) S[j] = fmaf(p[j], carry[j], e[j]);  // the state at the group's end
      store_row<CPT>(row + 2 * D + c0, S);
    }
    publish(2);
  }

  // 3. The chunk again from the carry: y, its rounded copy and the residual maxima. With fused control the block
  // has each token's whole row: its warps' maxima meet in shared memory (red, alternating between two buffers by
  // token, so one barrier per token suffices) and thread 0 keeps the chunk's largest ratio max_d|ŷ − h| / (max_d|ŷ|
  // + eps), in double as fp_controller_kernel computes it, instead of atomics on the (B, T) rows.
  const bool fused = ctl.counters != nullptr;
  __shared__ unsigned red[2][2][kChunkMaxThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  double r_chunk = 0.0;
  auto add_token_ratio = [&](int64_t i) {  // thread 0: token i's maxima over the warps, into r_chunk
    unsigned dev = 0, mag = 0;
    for (int w = 0; w < warps; ++w) {
      dev = max(dev, red[i & 1][0][w]);
      mag = max(mag, red[i & 1][1][w]);
    }
    const double q = static_cast<double>(__uint_as_float(dev)) / (static_cast<double>(__uint_as_float(mag)) + ctl.eps);
    r_chunk = (q > r_chunk || isnan(q)) ? q : r_chunk;
  };
  for (int64_t i = 0; i < t1 - t0; ++i) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kChunkSlots - 1) : "memory");  // token i's group has landed
    __syncthreads();
    if (fused && threadIdx.x == 0 && i > 0) add_token_ratio(i - 1);  // complete since the barrier
    const char* sl = stage_mem + (i % kChunkSlots) * CL.slot;
    float hv[CPT], lv[CPT], v[CPT];
    if (live) {
      if (h != nullptr) {
        load_row<CPT>(reinterpret_cast<const float*>(sl) + c0, hv);
      } else {
#pragma unroll
        for (int j = 0; j < CPT; ++j) hv[j] = 0.0f;
      }
      load_row<CPT>(reinterpret_cast<const zt*>(sl + D * 4) + c0, lv);
      load_row<CPT>(vbuf + i * D + c0, v);
    }
    const int64_t n = b * T + t0 + i;
    if (!fused) {
      scan_token_rows<lt, CPT>(live, c0, v, hv, lv, carry, s_b, y + n * D, y_lowp != nullptr ? y_lowp + n * D : nullptr,
                               reinterpret_cast<unsigned*>(diff) + n, reinterpret_cast<unsigned*>(ymax) + n);
    } else {
      unsigned dev = 0, mag = 0;
      scan_token_values<lt, CPT>(live, c0, v, hv, lv, carry, s_b, y + n * D,
                                 y_lowp != nullptr ? y_lowp + n * D : nullptr, dev, mag);
      if (lane == 0) {
        red[i & 1][0][warp] = dev;
        red[i & 1][1][warp] = mag;
      }
    }
    __syncthreads();  // slot i mod kChunkSlots is free (and, fused, the token's maxima are in red)
    issue_hl(i + kChunkSlots);
  }
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    if (fused) {
      add_token_ratio(t1 - t0 - 1);  // the last token
      // r ≥ 0 or a NaN with the sign bit clear: as unsigned integers these order as the values, a NaN above +∞.
      atomicMax(ws.rmax + b, static_cast<unsigned long long>(__double_as_longlong(r_chunk)));
      __threadfence();
    }
    const auto done = atomicAdd(ws.counters + 1, 1ull);
    is_last = done + 1 == static_cast<unsigned long long>(gridDim.x);  // every ticket is taken
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  if (threadIdx.x == 0) {
    ws.counters[0] = 0;
    ws.counters[1] = 0;
    ws.counters[2] = gen + 1;
  }
  if (!fused) return;
  // The controller's work for all B samples (their r_b are complete: every block has added its chunk's).
  __shared__ QuantileFacts warp_facts[32];
  QuantileFacts f{0, 0, 0, -INFINITY, INFINITY, 0.0};
  for (int64_t s = threadIdx.x; s < B; s += blockDim.x) {
    const double rb = __longlong_as_double(static_cast<long long>(__ldcg(ws.rmax + s)));
    ws.rmax[s] = 0ull;
    const SampleState st = update_sample(s, rb, ctl.best[s], ctl.stepsize[s], ctl.patience[s], ctl.best, ctl.last,
                                         ctl.stepsize, ctl.patience, ctl.decay_patience, ctl.decay);
    add_fact(f, st.best, st.step, ctl.threshold);
  }
  const QuantileFacts all = block_facts(f, warp_facts);
  if (threadIdx.x == 0) finish_iteration(all, ctl.counters, B, ctl.quantile, ctl.threshold, ctl.stepsize_thresh, ctl.max_iter);
}

// One block. Records r_b = max_t diff/(ymax + eps), updates best/patience/step size (spec §8), counts the
// iteration, zeroes the scratch and evaluates the continue test for the next step into counters[1]: the
// same decisions as the host's FixedPointController, without sorting `best` (quantile_at_least).
constexpr int kControllerThreads = 512;  // a sample per thread at the usual batch sizes; ≤ 128 registers each
__global__ void __launch_bounds__(kControllerThreads)
    fp_controller_kernel(float* __restrict__ diff, float* __restrict__ ymax, double* __restrict__ best,
                         double* __restrict__ last, double* __restrict__ stepsize, int64_t* __restrict__ patience,
                         int64_t* __restrict__ counters, int64_t B, int64_t T, double eps, int64_t decay_patience,
                         double decay, double threshold, double quantile, double stepsize_thresh, int64_t max_iter) {
  if (counters[1] == 0) return;
  __shared__ QuantileFacts warp_facts[32];
  QuantileFacts f{0, 0, 0, -INFINITY, INFINITY, 0.0};
  // A group of g threads per sample (g a power of two ≤ 32, as many as the block has for B samples: 1 at the
  // usual batch sizes, 32 for the LM shape's 8 samples of 2048 tokens, where one thread walking a sample's
  // rows took 250 µs). The group's lanes take every g-th row and combine their maxima by shuffles; the maximum
  // is exact in any order and a NaN is kept by every combination, so r is the sequential loop's, bit for bit.
  int g = 1;
  while (g < 32 && static_cast<int64_t>(2 * g) * B <= blockDim.x) g *= 2;
  const int lane = threadIdx.x % g, groups = blockDim.x / g;
  for (int64_t b0 = 0; b0 < B; b0 += groups) {  // the same trip count for every thread: the shuffles are warp-wide
    const int64_t b = b0 + threadIdx.x / g;
    const bool live = b < B;  // g divides blockDim.x: every thread is in a group
    // The sample's rows are requested kRows at a time before any is used: a few round trips to memory instead
    // of one per token (the kernel runs once per iteration, on one SM).
    constexpr int kRows = 16;
    double r = 0.0;
    if (live) {
      const float* db = diff + b * T;
      const float* yb = ymax + b * T;
      for (int64_t t0 = 0; t0 < T; t0 += static_cast<int64_t>(kRows) * g) {
        float dv[kRows], ym[kRows];
#pragma unroll
        for (int k = 0; k < kRows; ++k) {
          const int64_t t = t0 + static_cast<int64_t>(k) * g + lane;
          dv[k] = t < T ? db[t] : 0.0f;
          ym[k] = t < T ? yb[t] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < kRows; ++k) {
          if (t0 + static_cast<int64_t>(k) * g + lane >= T) break;
          const double q = static_cast<double>(dv[k]) / (static_cast<double>(ym[k]) + eps);
          r = (q > r || isnan(q)) ? q : r;
        }
      }
    }
    for (int o = 1; o < g; o <<= 1) {
      const double other = __shfl_xor_sync(0xffffffffu, r, o);
      r = (isnan(r) || !(other > r || isnan(other))) ? r : other;
    }
    if (live && lane == 0) {
      const SampleState st = update_sample(b, r, best[b], stepsize[b], patience[b], best, last, stepsize, patience,
                                           decay_patience, decay);
      add_fact(f, st.best, st.step, threshold);
    }
  }
  __syncthreads();  // every thread has read its rows: zero the scratch for the next iteration, coalesced
  for (int64_t i = threadIdx.x; i < B * T; i += blockDim.x) {
    diff[i] = 0.0f;
    ymax[i] = 0.0f;
  }
  const QuantileFacts all = block_facts(f, warp_facts);
  if (threadIdx.x == 0) finish_iteration(all, counters, B, quantile, threshold, stepsize_thresh, max_iter);
}

// make_device_solver_state's initial values in one launch: best and last residuals +∞, every sample's step size
// and patience, the counters [iterations, active, blocks done] = [0, 1, 0], and the residual maxima 0.
__global__ void init_solver_state_kernel(double* best, double* last, double* stepsize, double step0, int64_t* patience,
                                         int64_t patience0, int64_t* counters, float* diff, float* ymax, int64_t B,
                                         int64_t BT) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < B) {
    best[i] = std::numeric_limits<double>::infinity();
    last[i] = std::numeric_limits<double>::infinity();
    stepsize[i] = step0;
    patience[i] = patience0;
  }
  if (i < 3) counters[i] = i == 1 ? 1 : 0;
  if (i < BT) {
    diff[i] = 0.0f;
    ymax[i] = 0.0f;
  }
}

void check_f32(const torch::Tensor& t, const char* name, c10::IntArrayRef sizes) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == torch::kFloat32 && t.sizes() == sizes,
              "fp_step_cuda: ", name, " must be a contiguous float32 CUDA tensor of sizes ", sizes, ", got ",
              t.sizes(), " ", t.scalar_type());
}

// The mixer step's arguments (fp_mix_cuda: out = v; fp_mixscan_cuda: out = y): out float32 (B, T, D); h
// float32 of out's sizes, or undefined (the zero iterate: the solve's first step, which needs no zero fill); bx
// and λ in base's dtype; base (B·T, ld ≥ r·D + r) and z, undefined (the iterate is zero, so its GEMM row is
// too) or of base's dtype and sizes; all contiguous CUDA tensors.
void check_mix_args(const char* fn, const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx,
                    const torch::Tensor& h, const torch::Tensor& lambda, const torch::Tensor& out, int64_t rank) {
  TORCH_CHECK(out.defined() && out.dim() == 3, fn, ": the output must be (B, T, D)");
  const int64_t N = out.size(0) * out.size(1), rows = rank * out.size(2) + rank;
  check_f32(out, "the output", out.sizes());
  if (h.defined()) check_f32(h, "h", out.sizes());
  TORCH_CHECK(base.defined(), fn, ": base is undefined");
  for (const auto& [t, name] : {std::pair<const torch::Tensor&, const char*>{bx, "bx"}, {lambda, "lambda"}})
    TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == base.scalar_type() && t.sizes() == out.sizes(),
                fn, ": ", name, " must be a contiguous CUDA tensor of sizes ", out.sizes(), " in base's dtype ",
                base.scalar_type(), ", got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(rank >= 1, fn, ": rank must be ≥ 1");
  TORCH_CHECK(base.is_cuda() && base.is_contiguous() && base.dim() == 2 && base.size(0) == N && base.size(1) >= rows,
              fn, ": base must be a contiguous (B·T, ld) CUDA tensor with B·T = ", N, " and ld ≥ r·D + r = ", rows,
              ", got ", base.sizes());
  TORCH_CHECK(!z.defined() || (z.is_cuda() && z.is_contiguous() && z.scalar_type() == base.scalar_type() &&
                               z.sizes() == base.sizes()),
              fn, ": z must be undefined or a contiguous CUDA tensor of base's dtype and sizes ", base.sizes(), ", got ",
              z.sizes(), " ", z.scalar_type());
}

template <typename T>
const T* data_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// f(pointer to the rounded copy's data): a null bfloat16 pointer without one (lowp false), else y_lowp's data as
// bfloat16 or float16.
template <typename F>
void with_lowp_ptr(torch::Tensor* y_lowp, bool lowp, F&& f) {
  if (!lowp)
    f(static_cast<at::BFloat16*>(nullptr));
  else if (y_lowp->scalar_type() == torch::kBFloat16)
    f(y_lowp->data_ptr<at::BFloat16>());
  else
    f(y_lowp->data_ptr<at::Half>());
}

int64_t target_threads(const torch::Device& device) {
  int sms = 0, per_sm = 0;
  const int index = device.has_index() ? device.index() : c10::cuda::current_device();  // "cuda" = the current one
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, index));
  return static_cast<int64_t>(sms) * per_sm;
}

}  // namespace

DeviceSolverState make_device_solver_state(int64_t B, int64_t T, const DeviceSolverOptions& opt,
                                           const torch::Device& device) {
  TORCH_CHECK(device.is_cuda(), "fp_step_cuda: the device solver needs a CUDA device");
  TORCH_CHECK(B > 0 && T > 0, "fp_step_cuda: empty batch");
  TORCH_CHECK(opt.max_iter > 0, "fp_step_cuda: max_iter must be positive");
  const c10::cuda::CUDAGuard guard(device);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  DeviceSolverState s;
  s.best = torch::empty({B}, f64);
  s.last = torch::empty({B}, f64);
  s.stepsize = torch::empty({B}, f64);
  s.patience = torch::empty({B}, f64.dtype(torch::kInt64));
  s.counters = torch::empty({3}, f64.dtype(torch::kInt64));
  s.diff = torch::empty({B, T}, f64.dtype(torch::kFloat32));
  s.ymax = torch::empty({B, T}, f64.dtype(torch::kFloat32));
  // Filled on the device by one kernel (eight ATen fills cost ≈ 15 µs of a graphed A5 step); a host-to-device
  // copy would be illegal while the stream is being captured into a CUDA graph.
  const int64_t n = std::max<int64_t>(B * T, 3);
  init_solver_state_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      s.best.data_ptr<double>(), s.last.data_ptr<double>(), s.stepsize.data_ptr<double>(), opt.stepsize,
      s.patience.data_ptr<int64_t>(), opt.decay_patience, s.counters.data_ptr<int64_t>(), s.diff.data_ptr<float>(),
      s.ymax.data_ptr<float>(), B, B * T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return s;
}

void fp_mix_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx, const torch::Tensor& h,
                 const torch::Tensor& lambda, torch::Tensor& v, int64_t rank, const std::string& mixer_ac, double eps,
                 bool sum_form, const DeviceSolverState& state) {
  check_mix_args("fp_mix_cuda", z, base, bx, h, lambda, v, rank);
  const int64_t B = v.size(0), T = v.size(1), D = v.size(2), N = B * T;
  const int64_t ld = base.size(1);  // rows padded (e.g. to a multiple of 8 for aligned GEMMs); the pad is unread
  const c10::cuda::CUDAGuard guard(v.device());
  const int ac = parse_activation(mixer_ac);
  const int64_t* counters = state.counters.data_ptr<int64_t>();
  const int64_t kv = (D + 255) / 256;  // chunks of 8 channels per lane in the warp-per-token kernel
  if (kv <= 8 && (base.scalar_type() == torch::kBFloat16 || base.scalar_type() == torch::kFloat32)) {
    const auto aligned = [](const torch::Tensor& t) {
      return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    };
    const bool vec = D % 8 == 0 && ld % 8 == 0 && aligned(z) && aligned(base) && aligned(bx) && aligned(h) &&
                     aligned(lambda) && aligned(v);
    auto stream = c10::cuda::getCurrentCUDAStream();
    auto launch = [&](auto* zero, auto kv_tag, auto wpt_tag, auto sum_tag) {
      using zt = std::remove_pointer_t<decltype(zero)>;
      constexpr int kWpt = decltype(wpt_tag)::value;
      const auto blocks = static_cast<unsigned>((N + kWarpsPerBlock / kWpt - 1) / (kWarpsPerBlock / kWpt));
      fp_mix_warp_kernel<zt, decltype(kv_tag)::value, kWpt, decltype(sum_tag)::value>
          <<<blocks, kWarpsPerBlock * 32, 0, stream>>>(data_or_null<zt>(z), base.data_ptr<zt>(), bx.data_ptr<zt>(),
                                                       data_or_null<float>(h), lambda.data_ptr<zt>(), v.data_ptr<float>(),
                                                       N, T, D, ld, static_cast<int>(rank), ac, static_cast<float>(eps),
                                                       vec, counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    using One = std::integral_constant<int, 1>;
    using Two = std::integral_constant<int, 2>;
    auto with_kv = [&](auto* zero, auto sum_tag) {
      if (kv <= 2) launch(zero, Two{}, One{}, sum_tag);  // D ≤ 512 (and the narrow ones)
      else if (kv <= 4) launch(zero, std::integral_constant<int, 4>{}, One{}, sum_tag);
      else if (kv <= 6) launch(zero, std::integral_constant<int, 3>{}, Two{}, sum_tag);  // the LM shape's D = 1536
      else launch(zero, std::integral_constant<int, 4>{}, Two{}, sum_tag);
    };
    auto with_form = [&](auto* zero) {
      if (sum_form) with_kv(zero, std::true_type{});
      else with_kv(zero, std::false_type{});
    };
    if (base.scalar_type() == torch::kBFloat16) with_form(static_cast<c10::BFloat16*>(nullptr));
    else with_form(static_cast<float*>(nullptr));
    return;
  }
  // Wider rows and float64: one block per token.
  const size_t smem = static_cast<size_t>((sum_form ? 2 : 1) * D) * sizeof(float);
  TORCH_CHECK(smem <= 96 * 1024, "fp_mix_cuda: D = ", D, " is too wide for the fused kernel");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, base.scalar_type(), "fp_mix_cuda", [&] {
    if (smem > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(fp_mix_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    fp_mix_kernel<scalar_t><<<N, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        data_or_null<scalar_t>(z), base.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), data_or_null<float>(h),
        lambda.data_ptr<scalar_t>(), v.data_ptr<float>(), T, D, ld, static_cast<int>(rank), ac, static_cast<float>(eps),
        sum_form, counters);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void fp_scan_cuda(const torch::Tensor& v, const torch::Tensor& lambda, const torch::Tensor& h, torch::Tensor& y,
                  const DeviceSolverState& state, torch::Tensor* y_lowp) {
  TORCH_CHECK(v.dim() == 3, "fp_scan_cuda: v must be (B, T, D), got ", v.sizes());
  check_f32(v, "v", v.sizes());
  check_f32(y, "y", v.sizes());
  if (h.defined()) check_f32(h, "h", v.sizes());  // undefined: the zero iterate
  TORCH_CHECK(lambda.is_cuda() && lambda.is_contiguous() && lambda.sizes() == v.sizes() &&
                  (lambda.scalar_type() == torch::kFloat32 || lambda.scalar_type() == torch::kBFloat16),
              "fp_scan_cuda: lambda must be a contiguous float32 or bfloat16 CUDA tensor of sizes ", v.sizes(), ", got ",
              lambda.sizes(), " ", lambda.scalar_type());
  const int64_t B = v.size(0), T = v.size(1), D = v.size(2);
  TORCH_CHECK(state.diff.size(0) == B && state.diff.size(1) == T, "fp_scan_cuda: solver state is for another shape");
  const bool lowp = y_lowp != nullptr && y_lowp->defined();
  TORCH_CHECK(!lowp || (y_lowp->is_cuda() && y_lowp->is_contiguous() && y_lowp->numel() == v.numel() &&
                        (y_lowp->scalar_type() == torch::kBFloat16 || y_lowp->scalar_type() == torch::kHalf)),
              "fp_scan_cuda: y_lowp must be a contiguous bfloat16/float16 CUDA tensor of ", v.numel(), " elements");
  const c10::cuda::CUDAGuard guard(v.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t want = (target_threads(v.device()) + B * D - 1) / (B * D);
  const int64_t NC = std::max<int64_t>(1, std::min<int64_t>(want, T / 16));
  const int64_t L = (T + NC - 1) / NC;
  const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(B * NC));
  const int64_t* counters = state.counters.data_ptr<int64_t>();
  auto run = [&](auto* lambda_ptr) {
    using lam_t = std::remove_const_t<std::remove_pointer_t<decltype(lambda_ptr)>>;
    torch::Tensor carry_in;
    if (NC > 1) {
      torch::Tensor end_state = torch::empty({B * NC, D}, v.options());
      torch::Tensor prod = torch::empty({B * NC, D}, v.options());
      carry_in = torch::empty({B * NC, D}, v.options());
      fp_scan_summary_kernel<lam_t><<<grid, kThreads, 0, stream>>>(
          v.data_ptr<float>(), lambda_ptr, end_state.data_ptr<float>(), prod.data_ptr<float>(), T, D, NC, L, counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fp_scan_carry_kernel<<<(B * D + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          end_state.data_ptr<float>(), prod.data_ptr<float>(), carry_in.data_ptr<float>(), B, D, NC, counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const float* carry = carry_in.defined() ? carry_in.data_ptr<float>() : nullptr;
    auto launch = [&](auto* lowp_ptr) {
      using lt = std::remove_pointer_t<decltype(lowp_ptr)>;
      fp_scan_output_kernel<lam_t, lt><<<grid, kThreads, 0, stream>>>(
          v.data_ptr<float>(), lambda_ptr, data_or_null<float>(h), y.data_ptr<float>(), lowp_ptr, carry,
          state.stepsize.data_ptr<double>(), state.diff.data_ptr<float>(), state.ymax.data_ptr<float>(), T, D, NC, L,
          counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    with_lowp_ptr(y_lowp, lowp, launch);
  };
  if (lambda.scalar_type() == torch::kFloat32)
    run(lambda.data_ptr<float>());
  else
    run(lambda.data_ptr<at::BFloat16>());
}

namespace {

// out[i] = (counters[0] even ? even : odd)[i], converted to out's dtype; four elements per thread and step
// (16-byte loads), the last n mod 4 by the first threads.
template <typename out_t>
struct alignas(4 * sizeof(out_t)) Pack4 {
  out_t v[4];
};
template <typename out_t>
__global__ void fp_select_kernel(const float* __restrict__ even, const float* __restrict__ odd, out_t* __restrict__ out,
                                 int64_t n, const int64_t* __restrict__ counters) {
  const float* src = (counters[0] & 1) == 0 ? even : odd;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t quads = n / 4;
  for (int64_t q = first; q < quads; q += stride) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(src) + q);
    Pack4<out_t> p;
    p.v[0] = static_cast<out_t>(x.x);
    p.v[1] = static_cast<out_t>(x.y);
    p.v[2] = static_cast<out_t>(x.z);
    p.v[3] = static_cast<out_t>(x.w);
    reinterpret_cast<Pack4<out_t>*>(out)[q] = p;
  }
  if (first < n - 4 * quads) out[4 * quads + first] = static_cast<out_t>(src[4 * quads + first]);
}

}  // namespace

void fp_select_cuda(const DeviceSolverState& state, const torch::Tensor& even, const torch::Tensor& odd,
                    torch::Tensor& out) {
  check_f32(even, "even", even.sizes());
  check_f32(odd, "odd", even.sizes());
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.sizes() == even.sizes() &&
                  (out.scalar_type() == torch::kFloat32 || out.scalar_type() == torch::kBFloat16 ||
                   out.scalar_type() == torch::kHalf),
              "fp_select_cuda: out must be a contiguous float32/bfloat16/float16 CUDA tensor of sizes ", even.sizes(),
              ", got ", out.sizes(), " ", out.scalar_type());
  TORCH_CHECK(state.counters.is_cuda() && state.counters.numel() >= 2, "fp_select_cuda: bad solver state");
  const int64_t n = even.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(even.device());
  // Whole 4-element pieces need 16-byte aligned inputs and an aligned output (tensors from the allocator are).
  const auto misaligned = [](const torch::Tensor& t, int64_t bytes) {
    return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes != 0;
  };
  TORCH_CHECK(!misaligned(even, 16) && !misaligned(odd, 16) && !misaligned(out, 4 * out.element_size()),
              "fp_select_cuda: even, odd and out must start on 16-byte (out: 4-element) boundaries");
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((n / 4 + kThreads - 1) / kThreads, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* counters = state.counters.data_ptr<int64_t>();
  if (out.scalar_type() == torch::kFloat32)
    fp_select_kernel<<<blocks, kThreads, 0, stream>>>(even.data_ptr<float>(), odd.data_ptr<float>(),
                                                      out.data_ptr<float>(), n, counters);
  else if (out.scalar_type() == torch::kBFloat16)
    fp_select_kernel<<<blocks, kThreads, 0, stream>>>(even.data_ptr<float>(), odd.data_ptr<float>(),
                                                      out.data_ptr<at::BFloat16>(), n, counters);
  else
    fp_select_kernel<<<blocks, kThreads, 0, stream>>>(even.data_ptr<float>(), odd.data_ptr<float>(),
                                                      out.data_ptr<at::Half>(), n, counters);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool cuda_stream_capturing(const torch::Device& device) {
  if (!device.is_cuda()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(device.index()), &status));
  return status != cudaStreamCaptureStatusNone;
}

bool fp_mixscan_fits(int64_t B, int64_t T, int64_t D, const torch::Device& device) {
  // One block per sample is enough blocks, and the separate scan would not split T into chunks, when the
  // batch's channels alone fill the chip.
  return device.is_cuda() && B > 0 && T > 0 && D > 0 && D <= 8 * kThreads && B * D >= target_threads(device);
}

namespace {

// The fused control's pointers and options (counters null: no fused control).
FusedControl fused_control_of(const DeviceSolverState& state, const DeviceSolverOptions* control, int64_t B) {
  FusedControl ctl;
  if (control == nullptr) return ctl;
  TORCH_CHECK(state.counters.numel() >= 3 && state.best.size(0) == B,
              "fp_step_cuda: the fused control needs a solver state from make_device_solver_state for this batch");
  ctl.best = state.best.data_ptr<double>();
  ctl.last = state.last.data_ptr<double>();
  ctl.stepsize = state.stepsize.data_ptr<double>();
  ctl.patience = state.patience.data_ptr<int64_t>();
  ctl.counters = state.counters.data_ptr<int64_t>();
  ctl.eps = control->eps;
  ctl.decay = control->stepsize_decay;
  ctl.threshold = control->threshold;
  ctl.quantile = control->quantile;
  ctl.stepsize_thresh = control->stepsize_thresh;
  ctl.decay_patience = control->decay_patience;
  ctl.max_iter = control->max_iter;
  ctl.B = B;
  return ctl;
}

}  // namespace

void fp_mixscan_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx, const torch::Tensor& h,
                     const torch::Tensor& lambda, torch::Tensor& y, int64_t rank, const std::string& mixer_ac, double eps,
                     bool sum_form, const DeviceSolverState& state, torch::Tensor* y_lowp,
                     const DeviceSolverOptions* control) {
  check_mix_args("fp_mixscan_cuda", z, base, bx, h, lambda, y, rank);
  const int64_t B = y.size(0), T = y.size(1), D = y.size(2);
  TORCH_CHECK(D <= 8 * kThreads, "fp_mixscan_cuda: D = ", D, " is wider than ", 8 * kThreads, " channels");
  TORCH_CHECK(state.diff.size(0) == B && state.diff.size(1) == T, "fp_mixscan_cuda: solver state is for another shape");
  const bool lowp = y_lowp != nullptr && y_lowp->defined();
  TORCH_CHECK(!lowp || (y_lowp->is_cuda() && y_lowp->is_contiguous() && y_lowp->numel() == y.numel() &&
                        (y_lowp->scalar_type() == torch::kBFloat16 || y_lowp->scalar_type() == torch::kHalf)),
              "fp_mixscan_cuda: y_lowp must be a contiguous bfloat16/float16 CUDA tensor of ", y.numel(), " elements");
  const int64_t ld = base.size(1);
  const c10::cuda::CUDAGuard guard(y.device());
  const int ac = parse_activation(mixer_ac);
  const FusedControl ctl = fused_control_of(state, control, B);
  auto stream = c10::cuda::getCurrentCUDAStream();
  // Channels per thread: the strided kernel's thread k holds k + j·kThreads (j < cpt). The staged kernel's thread
  // holds consecutive channels, 8 of them where D > 2·kThreads allows (D/8 threads, rounded up to whole warps):
  // at the A5 shape (D = 1024) 128 threads of 8 channels took one graphed iteration from 89.9 to 85.7 µs against
  // 256 threads of 4 (fewer instructions per channel in the issue-bound walk: one block sum, one stage wait and
  // the maxima per 8 channels instead of per 4; results/h200/mixstep_rows/).
  const int cpt = D <= kThreads ? 1 : D <= 2 * kThreads ? 2 : D <= 4 * kThreads ? 4 : 8;
  const int staged_cpt = D > 2 * kThreads && D % 8 == 0 ? 8 : cpt;
  const int staged_threads = static_cast<int>(std::min<int64_t>(kThreads, (D / staged_cpt + 31) / 32 * 32));
  // The staged kernel copies whole rows in 16-byte pieces: every row and pointer 16-byte aligned, and two
  // stages in shared memory. Otherwise the kernel that reads global memory as it goes.
  const int64_t zsize = static_cast<int64_t>(base.element_size()), rows8 = (rank * D + rank + 7) / 8 * 8;
  const StageLayout layout(D, rows8, zsize);
  const auto aligned = [](const torch::Tensor& t) {
    return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  };
  // It also writes staged_cpt consecutive channels of y (and y_lowp) per thread, so those are 16-byte aligned and
  // D is a multiple of staged_cpt.
  const bool staged = (D * 4) % 16 == 0 && (D * zsize) % 16 == 0 && (ld * zsize) % 16 == 0 && rows8 <= ld &&
                      D % staged_cpt == 0 && aligned(z) && aligned(base) && aligned(bx) && aligned(h) && aligned(lambda) &&
                      aligned(y) && (!lowp || aligned(*y_lowp)) && 2 * layout.total <= 200 * 1024;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, base.scalar_type(), "fp_mixscan_cuda", [&] {
    auto launch = [&](auto* lowp_ptr, auto cpt_tag) {
      using lt_ = std::remove_pointer_t<decltype(lowp_ptr)>;
      constexpr int kCpt = decltype(cpt_tag)::value;
      const scalar_t* zp = data_or_null<scalar_t>(z);
      if (staged) {
        // One reflection in product form (the Householder r = 1 mixer) at 8 channels per thread has variants with
        // the activation, the rank and the form fixed at compile time (graphed A5 17-iteration row 2.826 → 2.811
        // ms against the run-time variant in the same run, results/h200/mixscan_bulk/ab_variant_pad.txt).
        auto kernel = fp_mixscan_staged_kernel<scalar_t, lt_, kCpt, -1>;
        if constexpr (kCpt == 8 && !std::is_same_v<scalar_t, double>) {
          if (rank == 1 && !sum_form) {
            kernel = ac == kSilu   ? fp_mixscan_staged_kernel<scalar_t, lt_, kCpt, kSilu>
                     : ac == kRelu ? fp_mixscan_staged_kernel<scalar_t, lt_, kCpt, kRelu>
                                   : fp_mixscan_staged_kernel<scalar_t, lt_, kCpt, kIdentity>;
          }
        }
        const int smem = static_cast<int>(2 * layout.total);
        if (smem > 48 * 1024)
          C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        kernel<<<static_cast<unsigned>(B), staged_threads, smem, stream>>>(
            zp, base.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), data_or_null<float>(h), lambda.data_ptr<scalar_t>(),
            y.data_ptr<float>(), lowp_ptr, state.stepsize.data_ptr<double>(), state.diff.data_ptr<float>(),
            state.ymax.data_ptr<float>(), T, D, ld, rows8, static_cast<int>(rank), ac, static_cast<float>(eps),
            sum_form, state.counters.data_ptr<int64_t>(), ctl);
      } else {
        fp_mixscan_kernel<scalar_t, lt_, kCpt><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
            zp, base.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), data_or_null<float>(h), lambda.data_ptr<scalar_t>(),
            y.data_ptr<float>(), lowp_ptr, state.stepsize.data_ptr<double>(), state.diff.data_ptr<float>(),
            state.ymax.data_ptr<float>(), T, D, ld, static_cast<int>(rank), ac, static_cast<float>(eps), sum_form,
            state.counters.data_ptr<int64_t>(), ctl);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto with_cpt = [&](auto* lowp_ptr) {
      switch (staged ? staged_cpt : cpt) {
        case 1: launch(lowp_ptr, std::integral_constant<int, 1>{}); break;
        case 2: launch(lowp_ptr, std::integral_constant<int, 2>{}); break;
        case 4: launch(lowp_ptr, std::integral_constant<int, 4>{}); break;
        default: launch(lowp_ptr, std::integral_constant<int, 8>{}); break;
      }
    };
    with_lowp_ptr(y_lowp, lowp, with_cpt);
  });
}

namespace {

// Whether the chunked kernel runs for these sizes: its rows are copied in 16-byte pieces (the staged kernel's
// conditions; they make D a multiple of 4, the channels per thread), D/4 threads make a block, and its shared
// memory fits one.
bool chunked_sizes_fit(int64_t D, int64_t ld, int64_t rank, int64_t zsize) {
  if (D < 1 || D > kChunkCpt * kChunkMaxThreads || rank < 1) return false;
  const int64_t rows8 = (rank * D + rank + 7) / 8 * 8;
  const StageLayout layout(D, rows8, zsize);
  return (D * 4) % 16 == 0 && (D * zsize) % 16 == 0 && (ld * zsize) % 16 == 0 && rows8 <= ld &&
         ChunkLayout(layout, D, zsize).total <= 200 * 1024;
}

}  // namespace

bool fp_mixscan_chunked_fits(const torch::Tensor& base, int64_t D, int64_t rank) {
  return base.defined() && base.is_cuda() && base.dim() == 2 &&
         (base.scalar_type() == torch::kBFloat16 || base.scalar_type() == torch::kFloat32 ||
          base.scalar_type() == torch::kFloat64) &&
         chunked_sizes_fit(D, base.size(1), rank, base.element_size());
}

void fp_mixscan_chunked_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx,
                             const torch::Tensor& h, const torch::Tensor& lambda, torch::Tensor& y, int64_t rank,
                             const std::string& mixer_ac, double eps, bool sum_form, DeviceSolverState& state,
                             torch::Tensor* y_lowp, const DeviceSolverOptions* control) {
  check_mix_args("fp_mixscan_chunked_cuda", z, base, bx, h, lambda, y, rank);
  const int64_t B = y.size(0), T = y.size(1), D = y.size(2);
  TORCH_CHECK(fp_mixscan_chunked_fits(base, D, rank), "fp_mixscan_chunked_cuda: D = ", D, ", rank ", rank,
              " and ld = ", base.size(1), " do not fit the chunked kernel (fp_mixscan_chunked_fits)");
  TORCH_CHECK(state.diff.size(0) == B && state.diff.size(1) == T,
              "fp_mixscan_chunked_cuda: solver state is for another shape");
  const bool lowp = y_lowp != nullptr && y_lowp->defined();
  TORCH_CHECK(!lowp || (y_lowp->is_cuda() && y_lowp->is_contiguous() && y_lowp->numel() == y.numel() &&
                        (y_lowp->scalar_type() == torch::kBFloat16 || y_lowp->scalar_type() == torch::kHalf)),
              "fp_mixscan_chunked_cuda: y_lowp must be a contiguous bfloat16/float16 CUDA tensor of ", y.numel(),
              " elements");
  const auto aligned = [](const torch::Tensor& t) {
    return !t.defined() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  };
  TORCH_CHECK(aligned(z) && aligned(base) && aligned(bx) && aligned(h) && aligned(lambda) && aligned(y) &&
                  (!lowp || aligned(*y_lowp)),
              "fp_mixscan_chunked_cuda: every tensor must start on a 16-byte boundary");
  const int64_t NC = (T + kChunkTokens - 1) / kChunkTokens, chunks = B * NC;
  TORCH_CHECK(chunks <= std::numeric_limits<int>::max(), "fp_mixscan_chunked_cuda: ", chunks, " chunks are too many");
  const c10::cuda::CUDAGuard guard(y.device());
  // The workspace, kept in the state across iterations (the flags carry the launch's generation).
  if (!state.chunk_flags.defined() || state.chunk_flags.numel() != 3 + chunks + B || !state.chunk_data.defined() ||
      state.chunk_data.numel() != chunks * 3 * D || state.chunk_flags.device() != y.device()) {
    state.chunk_flags = torch::zeros({3 + chunks + B}, y.options().dtype(torch::kInt64));
    state.chunk_data = torch::empty({chunks, 3, D}, y.options().dtype(torch::kFloat32));
  }
  auto* words = reinterpret_cast<unsigned long long*>(state.chunk_flags.data_ptr<int64_t>());
  const ChunkWorkspace ws{words, words + 3, state.chunk_data.data_ptr<float>(), words + 3 + chunks};
  const FusedControl ctl = fused_control_of(state, control, B);
  const int64_t ld = base.size(1), rows8 = (rank * D + rank + 7) / 8 * 8;
  const int ac = parse_activation(mixer_ac);
  const unsigned threads = static_cast<unsigned>((D / kChunkCpt + 31) / 32 * 32);
  const ChunkLayout layout(StageLayout(D, rows8, base.element_size()), D, base.element_size());
  const int smem = static_cast<int>(layout.total);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, base.scalar_type(), "fp_mixscan_chunked_cuda", [&] {
    auto launch = [&](auto* lowp_ptr) {
      using lt_ = std::remove_pointer_t<decltype(lowp_ptr)>;
      const auto kernel = fp_mixscan_chunked_kernel<scalar_t, lt_>;
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      kernel<<<static_cast<unsigned>(chunks), threads, smem, stream>>>(
          data_or_null<scalar_t>(z), base.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), data_or_null<float>(h),
          lambda.data_ptr<scalar_t>(), y.data_ptr<float>(), lowp_ptr, state.stepsize.data_ptr<double>(),
          state.diff.data_ptr<float>(), state.ymax.data_ptr<float>(), B, T, D, ld, rows8, NC, static_cast<int>(rank),
          ac, static_cast<float>(eps), sum_form, state.counters.data_ptr<int64_t>(), ws, ctl);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    with_lowp_ptr(y_lowp, lowp, launch);
  });
}

void fp_controller_cuda(DeviceSolverState& state, const DeviceSolverOptions& opt) {
  const int64_t B = state.best.size(0), T = state.diff.size(1);
  TORCH_CHECK(B <= std::numeric_limits<int>::max(), "fp_controller_cuda: a batch of ", B, " samples is too large");
  const c10::cuda::CUDAGuard guard(state.best.device());
  fp_controller_kernel<<<1, kControllerThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      state.diff.data_ptr<float>(), state.ymax.data_ptr<float>(), state.best.data_ptr<double>(),
      state.last.data_ptr<double>(), state.stepsize.data_ptr<double>(), state.patience.data_ptr<int64_t>(),
      state.counters.data_ptr<int64_t>(), B, T, opt.eps, opt.decay_patience, opt.stepsize_decay, opt.threshold,
      opt.quantile, opt.stepsize_thresh, opt.max_iter);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fprnn::ops
