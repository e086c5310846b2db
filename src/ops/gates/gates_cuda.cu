// CUDA kernels of input_gates and gated_rmsnorm (formulas and layout: include/fprnn/ops/gates.h).
// All memory-bound: each reads its operands once and writes its results once, 16-byte vectors where the rows
// allow (VEC elements per load: 8 in bfloat16, 4 in float32, 2 in float64), accumulation in float32 (float64
// for float64 inputs).
//   input_gates:   one thread per VEC elements, forward 3 reads + 3 writes, backward up to 6 reads + 3 writes;
//                  dl_bias = Σ_rows dl by column_sum_cuda over the written dl (deterministic).
//   gated_rmsnorm: a block per row where the row is 32–512 threads of 16 bytes (else one warp per row), the
//                  row's sums by warp shuffles (and the warps' partials), forward 3 reads + 1 write, backward
//                  4 reads + 3 writes; dw accumulated per thread (block kernel) or per warp in shared memory
//                  (warp kernel), each block writing one partial row, summed in a fixed order (deterministic
//                  for a given device).
// Napkin math at the A5 shape (8704 rows × 1024, bf16, 17.8 MB per tensor): input_gates forward ≈ 107 MB ≈
// 27 µs, gated_rmsnorm forward ≈ 71 MB ≈ 18 µs at 4 TB/s; the ATen composites they replace made 5 and 11
// full passes (≈ 75 and 195 µs measured).
#include "fprnn/ops/gates.h"

#include "ops/cuda_math.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace fprnn::ops {
namespace {

constexpr int kWarps = 4;  // gated_rmsnorm: rows in flight per block (one per warp)
constexpr int kThreads = 256;
// gated_rmsnorm's block-per-row kernels: at most this many threads (16 bytes of the row each), so that the
// backward may keep 128 registers (at 1024 threads it spilled).
constexpr int kMaxRowThreads = 512;

using cuda_math::AccType;
using cuda_math::ex;
// σ(v). In float32 (float32 and bfloat16 storage) as __expf and __fdividef: the kernels are issue-bound, and
// expf plus an IEEE division cost about twenty instructions per sigmoid, with four sigmoids per element in
// gated_rmsnorm's backward (ncu at the A5 shape: gated_rmsnorm backward 55 µs for 89 MB). __expf is within
// 2 + ⌊1.16·|v|⌋ ulp and __fdividef within 2 ulp; where 1 + e^{−v} exceeds 2^126 (v < −87) the quotient is 0,
// σ's limit (as the fp_step kernels' SiLU). float64 keeps exp and the division.
__device__ __forceinline__ float sigm(float v) { return __fdividef(1.0f, 1.0f + __expf(-v)); }
__device__ __forceinline__ double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }

// gated_rmsnorm's per-element formulas, shared by its warp and block kernels: g = silu(z) silu(c) h, and the
// backward of one element given the row's r = (mean(g²) + eps)^{-1/2} and coef = r³ S / D (S = Σ gy w g):
// dg = r w gy − coef g, dw += r g gy, dz = dg silu(c) h silu'(z), dc = dg silu(z) h silu'(c), dh = dg silu(z) silu(c).
template <typename A>
__device__ __forceinline__ A gate(A z, A c, A h) {
  return z * sigm(z) * (c * sigm(c)) * h;
}
// gate_grad with σ(z) and σ(c) given (the block kernel keeps them from its first pass).
template <typename A>
__device__ __forceinline__ void gate_grad_s(A z, A c, A h, A sgz, A sgc, A gy, A w, A r, A coef, A& dw, A& dz, A& dc,
                                            A& dh) {
  const A sz = z * sgz, sc = c * sgc, g = sz * sc * h;
  const A dg = r * w * gy - coef * g;
  dw += r * g * gy;
  dz = dg * sc * h * (sgz * (A(1) + z * (A(1) - sgz)));
  dc = dg * sz * h * (sgc * (A(1) + c * (A(1) - sgc)));
  dh = dg * sz * sc;
}
template <typename A>
__device__ __forceinline__ void gate_grad(A z, A c, A h, A gy, A w, A r, A coef, A& dw, A& dz, A& dc, A& dh) {
  gate_grad_s(z, c, h, sigm(z), sigm(c), gy, w, r, coef, dw, dz, dc, dh);
}

using cuda_math::load_vec;
using cuda_math::store_vec;
using cuda_math::Vec;

template <typename T, int VEC, typename A>
__device__ __forceinline__ void load_or_zero(const T* p, A (&out)[VEC]) {
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = A(0);
  } else {
    load_vec<T, VEC, A>(p, out);
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- input_gates ------------------------------------------------------------------------------------

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    input_gates_fwd_kernel(const T* __restrict__ b, const T* __restrict__ x, const T* __restrict__ l,
                           const T* __restrict__ bias, T* __restrict__ bx, T* __restrict__ lam, T* __restrict__ oml,
                           int64_t N, int64_t D) {
  using A = typename AccType<T>::type;
  const int64_t vecs = N * D / VEC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < vecs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * VEC, d = e % D;
    A vb[VEC], vx[VEC], vl[VEC], vbias[VEC], o_bx[VEC], o_lam[VEC], o_oml[VEC];
    load_vec<T, VEC, A>(b + e, vb);
    load_vec<T, VEC, A>(x + e, vx);
    load_vec<T, VEC, A>(l + e, vl);
    load_vec<T, VEC, A>(bias + d, vbias);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      o_bx[k] = vb[k] * sigm(vb[k]) * vx[k];
      o_lam[k] = sigm(vl[k] + vbias[k]);
      o_oml[k] = A(1) - o_lam[k];
    }
    store_vec<T, VEC, A>(bx + e, o_bx);
    store_vec<T, VEC, A>(lam + e, o_lam);
    store_vec<T, VEC, A>(oml + e, o_oml);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    input_gates_bwd_kernel(const T* __restrict__ g_bx, const T* __restrict__ g_lam, const T* __restrict__ g_oml,
                           const T* __restrict__ b, const T* __restrict__ x, const T* __restrict__ lam,
                           T* __restrict__ db, T* __restrict__ dx, T* __restrict__ dl, int64_t N, int64_t D) {
  using A = typename AccType<T>::type;
  const int64_t vecs = N * D / VEC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < vecs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * VEC;
    A gb[VEC], gl[VEC], go[VEC], vb[VEC], vx[VEC], vlam[VEC], o_db[VEC], o_dx[VEC], o_dl[VEC];
    load_or_zero<T, VEC, A>(g_bx != nullptr ? g_bx + e : nullptr, gb);
    load_or_zero<T, VEC, A>(g_lam != nullptr ? g_lam + e : nullptr, gl);
    load_or_zero<T, VEC, A>(g_oml != nullptr ? g_oml + e : nullptr, go);
    load_vec<T, VEC, A>(b + e, vb);
    load_vec<T, VEC, A>(x + e, vx);
    load_vec<T, VEC, A>(lam + e, vlam);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A s = sigm(vb[k]);
      o_db[k] = gb[k] * vx[k] * (s * (A(1) + vb[k] * (A(1) - s)));
      o_dx[k] = gb[k] * vb[k] * s;
      o_dl[k] = (gl[k] - go[k]) * vlam[k] * (A(1) - vlam[k]);
    }
    store_vec<T, VEC, A>(db + e, o_db);
    store_vec<T, VEC, A>(dx + e, o_dx);
    store_vec<T, VEC, A>(dl + e, o_dl);
  }
}

// ---- gated_rmsnorm ----------------------------------------------------------------------------------

// One warp per row n (rows n = block·kWarps + warp, stepping by the grid): the row's Σ g² by shuffles, then g
// recomputed (the row is in L1) and written normalised.
template <typename T, int VEC>
__global__ void __launch_bounds__(kWarps * 32)
    gated_rmsnorm_fwd_kernel(const T* __restrict__ z, int64_t ldz, const T* __restrict__ c, const T* __restrict__ h,
                             const typename AccType<T>::type* __restrict__ w, T* __restrict__ y, int64_t N, int64_t D,
                             double eps) {
  using A = typename AccType<T>::type;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < N;
       n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T *zn = z + n * ldz, *cn = c + n * D, *hn = h + n * D;
    A ss = A(0);
    for (int64_t d = static_cast<int64_t>(lane) * VEC; d < D; d += 32 * VEC) {
      A vz[VEC], vc[VEC], vh[VEC];
      load_vec<T, VEC, A>(zn + d, vz);
      load_vec<T, VEC, A>(cn + d, vc);
      load_vec<T, VEC, A>(hn + d, vh);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const A g = gate(vz[k], vc[k], vh[k]);
        ss += g * g;
      }
    }
    ss = warp_sum(ss);
    const A r = A(1) / sqrt(ss / static_cast<A>(D) + static_cast<A>(eps));
    for (int64_t d = static_cast<int64_t>(lane) * VEC; d < D; d += 32 * VEC) {
      A vz[VEC], vc[VEC], vh[VEC], vw[VEC], out[VEC];
      load_vec<T, VEC, A>(zn + d, vz);
      load_vec<T, VEC, A>(cn + d, vc);
      load_vec<T, VEC, A>(hn + d, vh);
      load_vec<A, VEC, A>(w + d, vw);
#pragma unroll
      for (int k = 0; k < VEC; ++k) out[k] = vw[k] * gate(vz[k], vc[k], vh[k]) * r;
      store_vec<T, VEC, A>(y + n * D + d, out);
    }
  }
}

// Rows as in the forward. Pass 1: Σ g² and S = Σ gy w g; pass 2: the gradients, and r g gy added to the warp's
// dw row in shared memory. At the end the block sums its warps' rows (fixed order) into partial[block].
template <typename T, int VEC>
__global__ void __launch_bounds__(kWarps * 32)
    gated_rmsnorm_bwd_kernel(const T* __restrict__ gy, const T* __restrict__ z, int64_t ldz, const T* __restrict__ c,
                             const T* __restrict__ h, const typename AccType<T>::type* __restrict__ w,
                             T* __restrict__ dz, T* __restrict__ dc, T* __restrict__ dh,
                             typename AccType<T>::type* __restrict__ partial, int64_t N, int64_t D, double eps) {
  using A = typename AccType<T>::type;
  extern __shared__ __align__(32) unsigned char dw_mem[];
  A* dw_all = reinterpret_cast<A*>(dw_mem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A* dw = dw_all + static_cast<int64_t>(warp) * D;
  for (int64_t d = lane; d < D; d += 32) dw[d] = A(0);
  __syncwarp();
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp; n < N;
       n += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T *zn = z + n * ldz, *cn = c + n * D, *hn = h + n * D, *gn = gy + n * D;
    A ss = A(0), s = A(0);
    for (int64_t d = static_cast<int64_t>(lane) * VEC; d < D; d += 32 * VEC) {
      A vz[VEC], vc[VEC], vh[VEC], vg[VEC], vw[VEC];
      load_vec<T, VEC, A>(zn + d, vz);
      load_vec<T, VEC, A>(cn + d, vc);
      load_vec<T, VEC, A>(hn + d, vh);
      load_vec<T, VEC, A>(gn + d, vg);
      load_vec<A, VEC, A>(w + d, vw);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const A g = gate(vz[k], vc[k], vh[k]);
        ss += g * g;
        s += vg[k] * vw[k] * g;
      }
    }
    ss = warp_sum(ss);
    s = warp_sum(s);
    const A r = A(1) / sqrt(ss / static_cast<A>(D) + static_cast<A>(eps));
    const A coef = r * r * r * s / static_cast<A>(D);
    for (int64_t d = static_cast<int64_t>(lane) * VEC; d < D; d += 32 * VEC) {
      A vz[VEC], vc[VEC], vh[VEC], vg[VEC], vw[VEC], o_dz[VEC], o_dc[VEC], o_dh[VEC];
      load_vec<T, VEC, A>(zn + d, vz);
      load_vec<T, VEC, A>(cn + d, vc);
      load_vec<T, VEC, A>(hn + d, vh);
      load_vec<T, VEC, A>(gn + d, vg);
      load_vec<A, VEC, A>(w + d, vw);
      // This lane's VEC channels of the warp's dw row, as one vector (lanes 32·VEC·sizeof(A) bytes apart).
      Vec<A, VEC>& dw_ref = *reinterpret_cast<Vec<A, VEC>*>(dw + d);
      Vec<A, VEC> dwv = dw_ref;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        gate_grad(vz[k], vc[k], vh[k], vg[k], vw[k], r, coef, dwv.v[k], o_dz[k], o_dc[k], o_dh[k]);
      dw_ref = dwv;
      store_vec<T, VEC, A>(dz + n * D + d, o_dz);
      store_vec<T, VEC, A>(dc + n * D + d, o_dc);
      store_vec<T, VEC, A>(dh + n * D + d, o_dh);
    }
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    A acc = A(0);
#pragma unroll
    for (int i = 0; i < kWarps; ++i) acc += dw_all[static_cast<int64_t>(i) * D + d];
    partial[static_cast<int64_t>(blockIdx.x) * D + d] = acc;
  }
}

// ---- gated_rmsnorm, a block per row --------------------------------------------------------------------

// Where a row is D = blockDim.x · VEC channels (a multiple of 32 threads, at most kMaxRowThreads): thread t
// holds the 16 bytes at channel t·VEC of z, c, h (and gy) in registers, the row's sums are warp shuffles then the warps'
// partials in warp order (shared memory, double-buffered so one barrier per row suffices), and the block walks
// rows n = blockIdx.x, + gridDim.x, …. The warp-per-row loops above read each row twice (the second time mostly
// from L2) and evaluate the sigmoids twice: 42 % of DRAM bandwidth and 71 % of the SM's issue slots forward,
// 48 % / 53 % backward, at (16384, 1536) in bfloat16 on an H200 (ncu); holding a whole row per lane instead
// took 150–255 registers. The sums are the same terms in another order (agreement to rounding).
// The block's sums of a (and of b when TWO) over its warps, each warp's partials added in warp order.
template <bool TWO, typename A>
__device__ __forceinline__ void block_row_sums(A& a, A& b, A (*red_a)[32], A (*red_b)[32], int parity) {
  a = warp_sum(a);
  if (TWO) b = warp_sum(b);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) {
    red_a[parity][warp] = a;
    if (TWO) red_b[parity][warp] = b;
  }
  __syncthreads();  // one barrier for both sums: their partials are written before it
  a = A(0);
  if (TWO) b = A(0);
  for (int w = 0; w < warps; ++w) {
    a += red_a[parity][w];
    if (TWO) b += red_b[parity][w];
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads)
    gated_rmsnorm_fwd_block_kernel(const T* __restrict__ z, int64_t ldz, const T* __restrict__ c,
                                   const T* __restrict__ h, const typename AccType<T>::type* __restrict__ w,
                                   T* __restrict__ y, int64_t N, int64_t D, double eps) {
  using A = typename AccType<T>::type;
  __shared__ A red[2][32];
  const int64_t d = static_cast<int64_t>(threadIdx.x) * VEC;
  A vw[VEC];
  load_vec<A, VEC, A>(w + d, vw);
  int parity = 0;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x, parity ^= 1) {
    A vz[VEC], vc[VEC], vh[VEC], g[VEC];
    load_vec<T, VEC, A>(z + n * ldz + d, vz);
    load_vec<T, VEC, A>(c + n * D + d, vc);
    load_vec<T, VEC, A>(h + n * D + d, vh);
    A ss = A(0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      g[k] = gate(vz[k], vc[k], vh[k]);
      ss += g[k] * g[k];
    }
    A unused = A(0);
    block_row_sums<false>(ss, unused, red, red, parity);
    const A r = A(1) / sqrt(ss / static_cast<A>(D) + static_cast<A>(eps));
    A out[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = vw[k] * g[k] * r;
    store_vec<T, VEC, A>(y + n * D + d, out);
  }
}

// The backward: dw accumulated per thread over the block's rows (in row order) and written as partial[block].
template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads)
    gated_rmsnorm_bwd_block_kernel(const T* __restrict__ gy, const T* __restrict__ z, int64_t ldz,
                                   const T* __restrict__ c, const T* __restrict__ h,
                                   const typename AccType<T>::type* __restrict__ w, T* __restrict__ dz,
                                   T* __restrict__ dc, T* __restrict__ dh,
                                   typename AccType<T>::type* __restrict__ partial, int64_t N, int64_t D,
                                   double eps) {
  using A = typename AccType<T>::type;
  __shared__ A red_ss[2][32], red_s[2][32];
  const int64_t d = static_cast<int64_t>(threadIdx.x) * VEC;
  A vw[VEC], dwacc[VEC];
  load_vec<A, VEC, A>(w + d, vw);
#pragma unroll
  for (int k = 0; k < VEC; ++k) dwacc[k] = A(0);
  int parity = 0;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x, parity ^= 1) {
    A vz[VEC], vc[VEC], vh[VEC], vg[VEC];
    load_vec<T, VEC, A>(z + n * ldz + d, vz);
    load_vec<T, VEC, A>(c + n * D + d, vc);
    load_vec<T, VEC, A>(h + n * D + d, vh);
    load_vec<T, VEC, A>(gy + n * D + d, vg);
    A ss = A(0), s = A(0), sgz[VEC], sgc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      sgz[k] = sigm(vz[k]);  // each sigmoid once per element: gate() and gate_grad() would take them twice
      sgc[k] = sigm(vc[k]);
      const A g = vz[k] * sgz[k] * (vc[k] * sgc[k]) * vh[k];
      ss += g * g;
      s += vg[k] * vw[k] * g;
    }
    block_row_sums<true>(ss, s, red_ss, red_s, parity);
    const A r = A(1) / sqrt(ss / static_cast<A>(D) + static_cast<A>(eps));
    const A coef = r * r * r * s / static_cast<A>(D);
    A o_dz[VEC], o_dc[VEC], o_dh[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      gate_grad_s(vz[k], vc[k], vh[k], sgz[k], sgc[k], vg[k], vw[k], r, coef, dwacc[k], o_dz[k], o_dc[k], o_dh[k]);
    store_vec<T, VEC, A>(dz + n * D + d, o_dz);
    store_vec<T, VEC, A>(dc + n * D + d, o_dc);
    store_vec<T, VEC, A>(dh + n * D + d, o_dh);
  }
  store_vec<A, VEC, A>(partial + static_cast<int64_t>(blockIdx.x) * D + d, dwacc);
}

// ---- column_sum --------------------------------------------------------------------------------------

// Partial column sums of a contiguous (N, D) matrix: block (x, y) sums columns x·32·VEC … + 32·VEC − 1 over the
// rows of slab y (rows_per_slab consecutive rows), each warp every 8th row of the slab, lane l its VEC columns;
// the 8 warps' sums are then added in warp order. The grid depends on N and D only: deterministic.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    column_partial_kernel(const T* __restrict__ m, typename AccType<T>::type* __restrict__ partial, int64_t N,
                          int64_t D, int64_t rows_per_slab) {
  using A = typename AccType<T>::type;
  constexpr int kRowWarps = kThreads / 32;
  __shared__ A red[kRowWarps][32 * VEC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t d = (static_cast<int64_t>(blockIdx.x) * 32 + lane) * VEC;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_slab, r1 = min(N, r0 + rows_per_slab);
  A acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = A(0);
  if (d < D) {
    for (int64_t n = r0 + warp; n < r1; n += kRowWarps) {
      A v[VEC];
      load_vec<T, VEC, A>(m + n * D + d, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) red[warp][lane * VEC + k] = acc[k];
  __syncthreads();
  for (int c = threadIdx.x; c < 32 * VEC; c += kThreads) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 * VEC + c;
    if (col >= D) continue;
    A sum = A(0);
#pragma unroll
    for (int w = 0; w < kRowWarps; ++w) sum += red[w][c];
    partial[static_cast<int64_t>(blockIdx.y) * D + col] = sum;
  }
}

// ---- host side --------------------------------------------------------------------------------------

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte vectors when every row start is 16-byte aligned; else one element at a time.
template <typename T>
int vector_width(int64_t D, int64_t ld, std::initializer_list<const void*> ptrs) {
  constexpr int full = 16 / sizeof(T);
  if (D % full != 0 || ld % full != 0) return 1;
  for (const void* p : ptrs) {
    if (!aligned16(p)) return 1;
  }
  return full;
}

// The weight is read as vectors of 16/sizeof(T) accumulators (32 bytes for bfloat16 rows with float32 weights).
template <typename T, typename A>
bool weight_aligned(const torch::Tensor& w) {
  return reinterpret_cast<uintptr_t>(w.data_ptr()) % (16 / sizeof(T) * sizeof(A)) == 0;
}

int sm_count() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

void check_cuda_rows(const char* fn, const torch::Tensor& t, const char* name, int64_t N, int64_t D,
                     torch::Dtype dtype, bool contiguous) {
  TORCH_CHECK(t.is_cuda(), fn, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == D, fn, ": ", name, " must be (", N, ", ", D, "), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(contiguous ? t.is_contiguous() : (t.stride(1) == 1 && t.stride(0) >= D), fn, ": ", name,
              contiguous ? " must be contiguous" : " must have unit column stride and a row stride ≥ D", ", got strides ",
              t.strides());
}

// gated_rmsnorm's operands: z (N, D) with unit column stride, c and h contiguous (N, D), the weight (D) in the
// accumulation dtype, eps > 0.
void check_norm_args(const char* fn, const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                     const torch::Tensor& weight, double eps) {
  TORCH_CHECK(c.dim() == 2, fn, ": c must be (N, D), got ", c.sizes());
  const int64_t N = c.size(0), D = c.size(1);
  const auto dtype = c.scalar_type();
  check_cuda_rows(fn, z, "z", N, D, dtype, false);
  check_cuda_rows(fn, c, "c", N, D, dtype, true);
  check_cuda_rows(fn, h, "h", N, D, dtype, true);
  check_cuda_rows(fn, weight.view({1, -1}), "weight", 1, D, dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32,
                  true);
  TORCH_CHECK(eps > 0, fn, ": eps must be positive, got ", eps);
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_fwd_cuda(const torch::Tensor& b,
                                                                             const torch::Tensor& x,
                                                                             const torch::Tensor& l,
                                                                             const torch::Tensor& l_bias) {
  TORCH_CHECK(b.dim() == 2, "input_gates_fwd_cuda: b must be (N, D), got ", b.sizes());
  const int64_t N = b.size(0), D = b.size(1);
  const auto dtype = b.scalar_type();
  check_cuda_rows("input_gates_fwd_cuda", b, "b", N, D, dtype, true);
  check_cuda_rows("input_gates_fwd_cuda", x, "x", N, D, dtype, true);
  check_cuda_rows("input_gates_fwd_cuda", l, "l", N, D, dtype, true);
  check_cuda_rows("input_gates_fwd_cuda", l_bias.view({1, -1}), "l_bias", 1, D, dtype, true);
  const c10::cuda::CUDAGuard guard(b.device());
  torch::Tensor bx = torch::empty_like(b), lam = torch::empty_like(b), oml = torch::empty_like(b);
  if (N == 0) return {bx, lam, oml};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "input_gates_fwd_cuda", [&] {
    using T = scalar_t;
    const int vec = vector_width<T>(D, D, {b.data_ptr(), x.data_ptr(), l.data_ptr(), l_bias.data_ptr(),
                                           bx.data_ptr(), lam.data_ptr(), oml.data_ptr()});
    const int64_t work = N * D / vec;
    const int grid = static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, sm_count() * 16));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(b.data_ptr<T>(), x.data_ptr<T>(), l.data_ptr<T>(), l_bias.data_ptr<T>(),
                                            bx.data_ptr<T>(), lam.data_ptr<T>(), oml.data_ptr<T>(), N, D);
    };
    constexpr int full = 16 / sizeof(T);
    if (vec == full) {
      launch(input_gates_fwd_kernel<T, full>);
    } else {
      launch(input_gates_fwd_kernel<T, 1>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {bx, lam, oml};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> input_gates_bwd_cuda(
    const torch::Tensor& g_bx, const torch::Tensor& g_lambda, const torch::Tensor& g_one_minus, const torch::Tensor& b,
    const torch::Tensor& x, const torch::Tensor& lambda) {
  TORCH_CHECK(b.dim() == 2, "input_gates_bwd_cuda: b must be (N, D), got ", b.sizes());
  const int64_t N = b.size(0), D = b.size(1);
  const auto dtype = b.scalar_type();
  const char* fn = "input_gates_bwd_cuda";
  check_cuda_rows(fn, b, "b", N, D, dtype, true);
  check_cuda_rows(fn, x, "x", N, D, dtype, true);
  check_cuda_rows(fn, lambda, "lambda", N, D, dtype, true);
  if (g_bx.defined()) check_cuda_rows(fn, g_bx, "g_bx", N, D, dtype, true);
  if (g_lambda.defined()) check_cuda_rows(fn, g_lambda, "g_lambda", N, D, dtype, true);
  if (g_one_minus.defined()) check_cuda_rows(fn, g_one_minus, "g_one_minus", N, D, dtype, true);
  const c10::cuda::CUDAGuard guard(b.device());
  torch::Tensor db = torch::empty_like(b), dx = torch::empty_like(b), dl = torch::empty_like(b);
  const auto acc = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  if (N == 0) return {db, dx, dl, torch::zeros({D}, b.options().dtype(acc))};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto ptr = [](const torch::Tensor& t) -> const void* { return t.defined() ? t.data_ptr() : nullptr; };
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "input_gates_bwd_cuda", [&] {
    using T = scalar_t;
    const int vec = vector_width<T>(D, D, {ptr(g_bx), ptr(g_lambda), ptr(g_one_minus), b.data_ptr(), x.data_ptr(),
                                           lambda.data_ptr(), db.data_ptr(), dx.data_ptr(), dl.data_ptr()});
    const int64_t work = N * D / vec;
    const int grid = static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, sm_count() * 16));
    const auto tp = [](const torch::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(tp(g_bx), tp(g_lambda), tp(g_one_minus), b.data_ptr<T>(), x.data_ptr<T>(),
                                            lambda.data_ptr<T>(), db.data_ptr<T>(), dx.data_ptr<T>(), dl.data_ptr<T>(),
                                            N, D);
    };
    constexpr int full = 16 / sizeof(T);
    if (vec == full) {
      launch(input_gates_bwd_kernel<T, full>);
    } else {
      launch(input_gates_bwd_kernel<T, 1>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {db, dx, dl, column_sum_cuda(dl)};
}

torch::Tensor gated_rmsnorm_fwd_cuda(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                                     const torch::Tensor& weight, double eps, bool block_per_row) {
  check_norm_args("gated_rmsnorm_fwd_cuda", z, c, h, weight, eps);
  const int64_t N = c.size(0), D = c.size(1);
  const auto dtype = c.scalar_type();
  const c10::cuda::CUDAGuard guard(c.device());
  torch::Tensor y = torch::empty_like(c);
  if (N == 0) return y;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t ldz = z.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "gated_rmsnorm_fwd_cuda", [&] {
    using T = scalar_t;
    using A = typename AccType<T>::type;
    const int vec = weight_aligned<T, A>(weight) ? vector_width<T>(D, ldz, {z.data_ptr(), c.data_ptr(), h.data_ptr(), y.data_ptr()}) : 1;
    const int grid = static_cast<int>(std::min<int64_t>((N + kWarps - 1) / kWarps, sm_count() * 16));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kWarps * 32, 0, stream>>>(z.data_ptr<T>(), ldz, c.data_ptr<T>(), h.data_ptr<T>(),
                                               weight.data_ptr<A>(), y.data_ptr<T>(), N, D, eps);
    };
    constexpr int full = 16 / sizeof(T);
    const int64_t threads = D / full;
    if (block_per_row && vec == full && D % full == 0 && threads % 32 == 0 && threads <= kMaxRowThreads) {
      const int grid_b = static_cast<int>(std::min<int64_t>(N, sm_count() * std::max<int64_t>(1, 2048 / threads)));
      gated_rmsnorm_fwd_block_kernel<T, full><<<grid_b, static_cast<unsigned>(threads), 0, stream>>>(
          z.data_ptr<T>(), ldz, c.data_ptr<T>(), h.data_ptr<T>(), weight.data_ptr<A>(), y.data_ptr<T>(), N, D, eps);
    } else if (vec == full) {
      launch(gated_rmsnorm_fwd_kernel<T, full>);
    } else {
      launch(gated_rmsnorm_fwd_kernel<T, 1>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> gated_rmsnorm_bwd_cuda(
    const torch::Tensor& gy, const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
    const torch::Tensor& weight, double eps, bool block_per_row) {
  const char* fn = "gated_rmsnorm_bwd_cuda";
  check_norm_args(fn, z, c, h, weight, eps);
  const int64_t N = c.size(0), D = c.size(1);
  const auto dtype = c.scalar_type();
  const auto acc = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  check_cuda_rows(fn, gy, "gy", N, D, dtype, true);
  const c10::cuda::CUDAGuard guard(c.device());
  torch::Tensor dz = torch::empty_like(c), dc = torch::empty_like(c), dh = torch::empty_like(c);
  if (N == 0) return {dz, dc, dh, torch::zeros({D}, c.options().dtype(acc))};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t ldz = z.stride(0);
  torch::Tensor partial;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "gated_rmsnorm_bwd_cuda", [&] {
    using T = scalar_t;
    using A = typename AccType<T>::type;
    const int vec = weight_aligned<T, A>(weight) ? vector_width<T>(D, ldz, {gy.data_ptr(), z.data_ptr(), c.data_ptr(),
                                                                             h.data_ptr(), dz.data_ptr(), dc.data_ptr(),
                                                                             dh.data_ptr()})
                                                 : 1;
    constexpr int full = 16 / sizeof(T);
    const int64_t threads = D / full;
    if (block_per_row && vec == full && D % full == 0 && threads % 32 == 0 && threads <= kMaxRowThreads) {
      const int grid_b = static_cast<int>(std::min<int64_t>(N, sm_count() * std::max<int64_t>(1, 2048 / threads)));
      partial = torch::empty({grid_b, D}, c.options().dtype(acc));
      gated_rmsnorm_bwd_block_kernel<T, full><<<grid_b, static_cast<unsigned>(threads), 0, stream>>>(
          gy.data_ptr<T>(), z.data_ptr<T>(), ldz, c.data_ptr<T>(), h.data_ptr<T>(), weight.data_ptr<A>(),
          dz.data_ptr<T>(), dc.data_ptr<T>(), dh.data_ptr<T>(), partial.data_ptr<A>(), N, D, eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int grid = static_cast<int>(std::min<int64_t>((N + kWarps - 1) / kWarps, sm_count() * 8));
    partial = torch::empty({grid, D}, c.options().dtype(acc));
    const size_t smem = static_cast<size_t>(kWarps) * D * sizeof(A);
    int max_smem = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, c.get_device()));
    TORCH_CHECK(smem <= static_cast<size_t>(max_smem), fn, ": D = ", D, " needs ", smem,
                " bytes of shared memory per block, more than the device's ", max_smem);
    auto launch = [&](auto kernel) {
      if (smem > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      }
      kernel<<<grid, kWarps * 32, smem, stream>>>(gy.data_ptr<T>(), z.data_ptr<T>(), ldz, c.data_ptr<T>(),
                                                  h.data_ptr<T>(), weight.data_ptr<A>(), dz.data_ptr<T>(),
                                                  dc.data_ptr<T>(), dh.data_ptr<T>(), partial.data_ptr<A>(), N, D, eps);
    };
    if (vec == full) {
      launch(gated_rmsnorm_bwd_kernel<T, full>);
    } else {
      launch(gated_rmsnorm_bwd_kernel<T, 1>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dz, dc, dh, partial.sum(0)};
}

torch::Tensor column_sum_cuda(const torch::Tensor& m) {
  TORCH_CHECK(m.is_cuda() && m.dim() == 2 && m.is_contiguous(), "column_sum_cuda: m must be a contiguous (N, D) CUDA tensor, got ",
              m.sizes(), " on ", m.device());
  const int64_t N = m.size(0), D = m.size(1);
  const auto dtype = m.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64 || dtype == torch::kBFloat16,
              "column_sum_cuda: float32, float64 or bfloat16 expected, got ", dtype);
  const auto acc = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  if (N == 0 || D == 0) return torch::zeros({D}, m.options().dtype(acc));
  const c10::cuda::CUDAGuard guard(m.device());
  // About 64 rows per slab, at most 128 slabs (then a (slabs, D) partial summed by ATen in its fixed order; a
  // kernel with one thread per column walking the slabs took 16 µs against ATen's 9 at (128, 1032), H200).
  const int64_t slabs = std::min<int64_t>(128, (N + 63) / 64), rows_per_slab = (N + slabs - 1) / slabs;
  torch::Tensor partial = torch::empty({slabs, D}, m.options().dtype(acc));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "column_sum_cuda", [&] {
    using T = scalar_t;
    using A = typename AccType<T>::type;
    constexpr int full = 16 / sizeof(T);
    const int vec = vector_width<T>(D, D, {m.data_ptr()});
    auto launch = [&](auto kernel, int v) {
      const dim3 grid(static_cast<unsigned>((D + 32 * v - 1) / (32 * v)), static_cast<unsigned>(slabs));
      kernel<<<grid, kThreads, 0, stream>>>(m.data_ptr<T>(), partial.data_ptr<A>(), N, D, rows_per_slab);
    };
    if (vec == full) {
      launch(column_partial_kernel<T, full>, full);
    } else {
      launch(column_partial_kernel<T, 1>, 1);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return slabs == 1 ? partial.view({D}) : partial.sum(0);
}

}  // namespace fprnn::ops
