// Small device helpers shared by the CUDA kernels: the accumulation type of a storage type (float32 for
// bfloat16, float16 and float32; float64 for float64), exp overloaded for both accumulation types, aligned
// VEC-element loads and stores (Vec), and the
// pieces of the warp-per-token kernels (fp_step, mix_step): 8-channel chunk loads and stores, CPT-channel row
// loads and stores (fp_step's mix + scan kernel, the convolutions), warp sums and a barrier over a token's warps,
// 16-byte asynchronous copies into shared memory.
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

// VEC consecutive elements of type T as one aligned access (16 bytes for 8 bfloat16 or 4 float32 values, 4 bytes
// for 2 bfloat16), converted to or from the accumulation type A element by element (the gates, the diagonal
// scan). p must be aligned to VEC elements.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};
template <typename T, int VEC, typename A>
__device__ __forceinline__ void load_vec(const T* p, A (&out)[VEC]) {
  const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<A>(v.v[k]);
}
template <typename T, int VEC, typename A>
__device__ __forceinline__ void store_vec(T* p, const A (&in)[VEC]) {
  Vec<T, VEC> v;
#pragma unroll
  for (int k = 0; k < VEC; ++k) v.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

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

// CPT consecutive values of a row in shared or global memory, as floats: 16-, 8- or 4-byte loads where the type
// allows (the caller aligns p to CPT elements), one value at a time otherwise.
template <int CPT, typename T>
__device__ __forceinline__ void load_row(const T* p, float (&v)[CPT]) {
#pragma unroll
  for (int j = 0; j < CPT; ++j) v[j] = static_cast<float>(p[j]);
}
template <int CPT>
__device__ __forceinline__ void load_row(const float* p, float (&v)[CPT]) {
  if constexpr (CPT % 4 == 0) {
#pragma unroll
    for (int q = 0; q < CPT / 4; ++q) {
      const float4 x = reinterpret_cast<const float4*>(p)[q];
      v[4 * q] = x.x;
      v[4 * q + 1] = x.y;
      v[4 * q + 2] = x.z;
      v[4 * q + 3] = x.w;
    }
  } else if constexpr (CPT == 2) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    v[0] = x.x;
    v[1] = x.y;
  } else {
    v[0] = p[0];
  }
}
// bfloat16 → float is exact: the 16 bits become the high half of the float (element 0 in the low half-word).
__device__ __forceinline__ void unpack_bf16x2(unsigned w, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);
  hi = __uint_as_float(w & 0xffff0000u);
}
template <int CPT>
__device__ __forceinline__ void load_row(const c10::BFloat16* p, float (&v)[CPT]) {
  if constexpr (CPT == 8) {
    const uint4 x = *reinterpret_cast<const uint4*>(p);
    unpack_bf16x2(x.x, v[0], v[1]);
    unpack_bf16x2(x.y, v[2], v[3]);
    unpack_bf16x2(x.z, v[4], v[5]);
    unpack_bf16x2(x.w, v[6], v[7]);
  } else if constexpr (CPT == 4) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    unpack_bf16x2(x.x, v[0], v[1]);
    unpack_bf16x2(x.y, v[2], v[3]);
  } else if constexpr (CPT == 2) {
    unpack_bf16x2(*reinterpret_cast<const unsigned*>(p), v[0], v[1]);
  } else {
    v[0] = static_cast<float>(p[0]);
  }
}

// CPT consecutive outputs: float32 in 16-byte (or smaller) stores; a 16-bit type rounded as static_cast does and
// packed two to a 32-bit word.
template <int CPT>
__device__ __forceinline__ void store_row(float* p, const float (&v)[CPT]) {
  if constexpr (CPT % 4 == 0) {
#pragma unroll
    for (int q = 0; q < CPT / 4; ++q)
      reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  } else if constexpr (CPT == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
    p[0] = v[0];
  }
}
template <int CPT, typename lt>
__device__ __forceinline__ void store_row(lt* p, const float (&v)[CPT]) {
  static_assert(sizeof(lt) == 2, "the rounded copy is a 16-bit type");
  if constexpr (CPT == 1) {
    p[0] = static_cast<lt>(v[0]);
  } else {
    unsigned words[CPT / 2];
#pragma unroll
    for (int q = 0; q < CPT / 2; ++q)
      words[q] = static_cast<unsigned>(static_cast<lt>(v[2 * q]).x) |
                 (static_cast<unsigned>(static_cast<lt>(v[2 * q + 1]).x) << 16);
    if constexpr (CPT == 8)
      *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
    else if constexpr (CPT == 4)
      *reinterpret_cast<uint2*>(p) = make_uint2(words[0], words[1]);
    else
      *reinterpret_cast<unsigned*>(p) = words[0];
  }
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

// One 16-byte asynchronous copy global → shared (cp.async, sm_80+; both addresses 16-byte aligned), and the wait
// for every copy this thread has issued (committed in groups or not).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The copy engine's bulk copies (sm_90+): one thread moves a whole contiguous row global → shared
// (cp.async.bulk; addresses and size multiples of 16 bytes), completing on a shared-memory mbarrier that counts
// the bytes it expects. Waiters spin on the barrier's phase parity (0, 1, 0, … for its successive completions).
__device__ __forceinline__ unsigned smem_addr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
}
// Makes the initialisations visible to the copy engine; a __syncthreads() after it, to the block.
__device__ __forceinline__ void mbarrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// This thread's arrival, announcing `bytes` more to come from bulk copies in this phase.
__device__ __forceinline__ void mbarrier_arrive_expect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_copy(void* smem, const void* gmem, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(smem)),
               "l"(gmem), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
#endif

}  // namespace fprnn::ops::cuda_math
