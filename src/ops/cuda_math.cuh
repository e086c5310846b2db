// Small device helpers shared by the CUDA kernels: the accumulation type of a storage type (float32 for
// bfloat16, float16 and float32; float64 for float64), exp overloaded for both accumulation types, and the
// pieces of the warp-per-token kernels (fp_step, mix_step): 8-channel chunk loads and stores, warp sums and a
// barrier over a token's warps.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>

namespace fprnn::ops::cuda_math {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return exp(v); }

// Eight consecutive values from p (chunk c of a row covers elements 8c … 8c + 7) as floats: one 16-byte load for
// bfloat16, two for float32 when `vec` (p 16-byte aligned and all eight inside the row), else element by element
// with those at or past `valid` read as 0. The same values either way.
template <typename T>
__device__ __forceinline__ void load8(const T* p, int64_t valid, bool vec, float (&out)[8]) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (vec) {
      const uint4 u = *reinterpret_cast<const uint4*>(p);
      const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // bfloat16 → float32 is the 16 bits placed high: exact
        out[2 * j] = __uint_as_float(words[j] << 16);
        out[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
      }
      return;
    }
  } else if constexpr (std::is_same_v<T, float>) {
    if (vec) {
      const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
      out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) out[j] = j < valid ? static_cast<float>(p[j]) : 0.0f;
}

// The inverse: eight floats stored (rounded to T as static_cast rounds) at p, as vectors when `vec`, else those
// before `valid` one by one.
template <typename T>
__device__ __forceinline__ void store8(T* p, int64_t valid, bool vec, const float (&in)[8]) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (vec) {
      unsigned words[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const unsigned lo = static_cast<c10::BFloat16>(in[2 * j]).x, hi = static_cast<c10::BFloat16>(in[2 * j + 1]).x;
        words[j] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
      return;
    }
  } else if constexpr (std::is_same_v<T, float>) {
    if (vec) {
      reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
      reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j < valid) p[j] = static_cast<T>(in[j]);
}

__device__ __forceinline__ float2 warp_sum2(float a, float b) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  return make_float2(a, b);
}

// A barrier over `threads` threads (whole warps) under hardware barrier `id` (1 … 15; 0 is __syncthreads').
__device__ __forceinline__ void group_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Sums of two values over a token's WPT warps (warp `sub` of the token in block slot `slot`); every lane gets
// both. `partial` is the token's [2][WPT] scratch in shared memory, used alternately by consecutive calls
// (`parity`), so one barrier per call suffices: a buffer is written again only after both warps have passed the
// next call's barrier. The warps' partials are added in warp order.
template <int WPT>
__device__ __forceinline__ float2 token_sum2(float a, float b, float2 (*partial)[WPT], int parity, int sub, int slot) {
  float2 s = warp_sum2(a, b);
  if constexpr (WPT > 1) {
    float2* buf = partial[parity & 1];
    if ((threadIdx.x & 31) == 0) buf[sub] = s;
    group_barrier(1 + slot, 32 * WPT);
    s = buf[0];
#pragma unroll
    for (int w = 1; w < WPT; ++w) s = make_float2(s.x + buf[w].x, s.y + buf[w].y);
  }
  return s;
}

}  // namespace fprnn::ops::cuda_math
