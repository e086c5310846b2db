// CUDA kernels of causal_conv1d and causal_conv1d_multi (see include/fprnn/ops/conv1d.h for the formulas and
// layout): n ≤ 4 depthwise convolutions that read the same x, each with its own weight, bias and output:
//   forward:  y_j = act(bias_j + Σ_k w_jk x_{t−K+1+k})
//   backward: gz_j = g_j · act'(z_j) (z_j recomputed), dx_s = Σ_j Σ_k w_jk gz_j,{s+K−1−k},
//             dw_j and db_j as partial sums per block (fixed order), then summed in a fixed order (no atomics:
//             the result does not depend on scheduling).
// Accumulation in float32 (float64 for float64 inputs).
//
// Work split: a thread owns V (1 or 2) consecutive channels of one sample and a chunk of consecutive time steps,
// and walks it in order with the K taps' window in registers, so every row is loaded and every activation
// computed once (a first version split time into 4-step tiles with their look-back/look-ahead rows recomputed
// per tile: 2–4× slower, bound by the redundant SiLU work). Rows are loaded U steps at a time, before any is used,
// so that a thread has U·(n + 1) loads in flight instead of one round trip per step (the earlier one-row-per-step
// walk, one convolution per call, reached ≈ 1.6 TB/s forward and 1 TB/s backward at T = 17). With V = 2 each load
// is a 4-byte (bfloat16) or 8-byte (float32) pair, twice the bytes in flight per thread (vec_width says where).
// A block is 32·V channels × kLanes samples: a warp's loads are rows of 32·V consecutive channels, and the
// backward sums the block's kLanes weight-gradient partials in shared memory before writing one row per block.
// Where K ≤ 4 and 32-channel rows are 16-byte aligned (bfloat16, float32), staged kernels replace the walk: see
// "Staged kernels" below.
#include "fprnn/ops/conv1d.h"

#include "ops/conv1d/conv1d_common.h"
#include "ops/cuda_math.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fprnn::ops {
namespace {

constexpr int kMaxK = 16;
constexpr int kMaxConvs = 4;
constexpr int kChannels = 32;  // threads of a block along channels (one warp row)
constexpr int kLanes = 8;      // samples per block (threadIdx.y)
constexpr int kUnroll = 4;     // U: time steps loaded together

template <typename scalar_t>
struct Outs {
  scalar_t* p[kMaxConvs];
};
template <typename scalar_t>
struct Ins {
  const scalar_t* p[kMaxConvs];
};

// Where the input x (and its gradient dx) lives: channels c < C1 in p1, rows of C1 channels; channels C1 … C − 1
// in p2, rows of C − C1 (the pair entry: the concatenation [x1, x2] along channels, never formed). One tensor:
// p2 null and C1 = C.
template <typename P>
struct Split {
  P* p1;
  P* p2;
  int C1;
  // The element (b, 0, c) and the row stride of channel c.
  __device__ __forceinline__ P* at(int b, int T, int C, int c, int& stride) const {
    if (c < C1) {
      stride = C1;
      return p1 + static_cast<int64_t>(b) * T * C1 + c;
    }
    stride = C - C1;
    return p2 + static_cast<int64_t>(b) * T * (C - C1) + (c - C1);
  }
};

// σ(z): the exact exp for float64, the hardware approximation for float32 (≈ 2 ulp; the bfloat16 outputs and the
// float32 tolerance of the tests are far coarser).
__device__ __forceinline__ float sigmoid(float z) { return __fdividef(1.0f, 1.0f + __expf(-z)); }
__device__ __forceinline__ double sigmoid(double z) { return detail::conv1d_sigmoid(exp(-z)); }

template <typename acc_t>
__device__ __forceinline__ acc_t act_fwd(acc_t z, bool silu) {
  return silu ? detail::conv1d_silu(z, sigmoid(z)) : z;
}

// V consecutive channels of a row (the caller aligns p to V elements) as acc_t, in one 2V- or 4V-byte access for
// bfloat16 and float32; float64 (and V = 1) element by element.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_v(const scalar_t* p, acc_t (&v)[V]) {
  if constexpr (std::is_same_v<acc_t, float>) {
    cuda_math::load_row<V>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = static_cast<acc_t>(p[i]);
  }
}
// The inverse, rounded as static_cast rounds.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_v(scalar_t* p, const acc_t (&v)[V]) {
  if constexpr (std::is_same_v<acc_t, float> && V > 1) {
    cuda_math::store_row<V>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = static_cast<scalar_t>(v[i]);
  }
}

// Loads the weights of conv j (< n) for the thread's V channels c … c + V − 1, right-aligned in a window of KW
// taps: wpad[j][KW − K + k][i] = w[j, c + i, k].
template <typename scalar_t, typename acc_t, int KW, int N, int V>
__device__ __forceinline__ void load_taps(const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias, int c,
                                          int C, int K, int n, acc_t (&wpad)[N][KW][V], acc_t (&b0)[N][V]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
#pragma unroll
      for (int m = 0; m < KW; ++m) {
        const int tap = m - (KW - K);
        wpad[j][m][i] =
            (j < n && tap >= 0) ? static_cast<acc_t>(w[(static_cast<int64_t>(j) * C + c + i) * K + tap]) : acc_t(0);
      }
      b0[j][i] = (j < n && bias != nullptr) ? static_cast<acc_t>(bias[static_cast<int64_t>(j) * C + c + i]) : acc_t(0);
    }
  }
}

// The thread's sample b, first channel c (of V) and chunk [t0, t1) of time (blockIdx.y = sample group · NC + chunk).
template <int V>
struct Walk {
  int b, c, t0, t1;
  bool active;
  __device__ Walk(int B, int T, int C, int NC, int L) {
    c = (blockIdx.x * kChannels + threadIdx.x) * V;
    b = (blockIdx.y / NC) * kLanes + threadIdx.y;
    t0 = (blockIdx.y % NC) * L;
    t1 = min(T, t0 + L);
    active = c < C && b < B;
  }
};

// The window before step t0: slot m holds row x_{t0−KW+m} (zero where the taps are, or time is negative); slot 0
// is shifted out at the first step, and slots below KW − K + 1 only ever meet zero taps. xs: row 0 of the thread's
// channels, xc: the row stride.
template <typename scalar_t, typename acc_t, int KW, int V>
__device__ __forceinline__ void init_window(const scalar_t* __restrict__ xs, int t0, int xc, int K,
                                           acc_t (&xwin)[KW][V]) {
#pragma unroll
  for (int m = 0; m < KW; ++m) {
    const int t = t0 - KW + m;
    if (m >= KW - K + 1 && t >= 0) {
      load_v<V>(xs + static_cast<int64_t>(t) * xc, xwin[m]);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) xwin[m][i] = acc_t(0);
    }
  }
}

template <typename acc_t, int KW, int V>
__device__ __forceinline__ void shift_in(acc_t (&win)[KW][V], const acc_t (&row)[V]) {
#pragma unroll
  for (int m = 0; m < KW - 1; ++m)
#pragma unroll
    for (int i = 0; i < V; ++i) win[m][i] = win[m + 1][i];
#pragma unroll
  for (int i = 0; i < V; ++i) win[KW - 1][i] = row[i];
}

// One forward step, shared by the walk and the staged kernels (the same arithmetic in the same order): shifts
// `row` (x_t) into the window and writes y_j,t for the n convolutions at element `off` of each output.
template <typename scalar_t, typename acc_t, int KW, int N, int V>
__device__ __forceinline__ void fwd_step(acc_t (&xwin)[KW][V], const acc_t (&row)[V], const acc_t (&wpad)[N][KW][V],
                                         const acc_t (&b0)[N][V], int n, bool silu, const Outs<scalar_t>& y,
                                         int64_t off) {
  shift_in(xwin, row);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j >= n) break;
    acc_t out[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      acc_t z = b0[j][i];
#pragma unroll
      for (int m = 0; m < KW; ++m) z += wpad[j][m][i] * xwin[m][i];
      out[i] = act_fwd(z, silu);
    }
    store_v<V>(y.p[j] + off, out);
  }
}

// One backward step at time t, shared by the walk and the staged kernels: shifts `xrow` (x_t, zero from T on)
// into the window; for each convolution j, gz_j(t) from `grow[j]` (g_j,t, zero from T on) and the recomputed
// z_j(t); adds gz_j(t) into dw_j, db_j when `own` (t inside the thread's chunk) and wpad[j][m]·gz_j(t) into the
// pending dx of row t − KW + 1 + m; then writes the completed slot 0 (row t − KW + 1) to `dx_row` unless null,
// and shifts the pending rows.
template <typename scalar_t, typename acc_t, int KW, int N, int V>
__device__ __forceinline__ void bwd_step(acc_t (&xwin)[KW][V], acc_t (&dxacc)[KW][V], const acc_t (&xrow)[V],
                                         const acc_t (&grow)[N][V], const acc_t (&wpad)[N][KW][V],
                                         const acc_t (&b0)[N][V], acc_t (&dw)[N][KW][V], acc_t (&db)[N][V], int n,
                                         bool silu, bool own, scalar_t* dx_row) {
  shift_in(xwin, xrow);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j >= n) break;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      acc_t gz = grow[j][i];
      if (silu) {
        acc_t z = b0[j][i];
#pragma unroll
        for (int m = 0; m < KW; ++m) z += wpad[j][m][i] * xwin[m][i];
        gz = detail::conv1d_silu_grad(gz, z, sigmoid(z));
      }
      if (own) {
        db[j][i] += gz;
#pragma unroll
        for (int m = 0; m < KW; ++m) dw[j][m][i] += gz * xwin[m][i];
      }
#pragma unroll
      for (int m = 0; m < KW; ++m) dxacc[m][i] += wpad[j][m][i] * gz;
    }
  }
  if (dx_row != nullptr) store_v<V>(dx_row, dxacc[0]);
#pragma unroll
  for (int m = 0; m < KW - 1; ++m)
#pragma unroll
    for (int i = 0; i < V; ++i) dxacc[m][i] = dxacc[m + 1][i];
#pragma unroll
  for (int i = 0; i < V; ++i) dxacc[KW - 1][i] = 0;
}

// The block's sum of dw, db over its kLanes samples of each channel, in lane order, written as the block's partial
// row: partial[blockIdx.y][j][c][0..K−1] = dw, [K] = db (c: the thread's first channel; every thread calls).
template <typename acc_t, int KW, int N, int V>
__device__ __forceinline__ void block_sum_partials(const acc_t (&dw)[N][KW][V], const acc_t (&db)[N][V],
                                                   acc_t (&red)[kLanes][kChannels * V], int n, int K, int C, int c,
                                                   acc_t* __restrict__ partial) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
#pragma unroll
    for (int m = 0; m <= KW; ++m) {
      if (j >= n || (m < KW && m < KW - K)) continue;  // uniform over the block
#pragma unroll
      for (int i = 0; i < V; ++i) red[threadIdx.y][threadIdx.x * V + i] = m == KW ? db[j][i] : dw[j][m][i];
      __syncthreads();
      if (threadIdx.y == 0 && c < C) {
        const int slot = m == KW ? K : m - (KW - K);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          acc_t sum = 0;
          for (int l = 0; l < kLanes; ++l) sum += red[l][threadIdx.x * V + i];
          partial[((static_cast<int64_t>(blockIdx.y) * n + j) * C + c + i) * (K + 1) + slot] = sum;
        }
      }
      __syncthreads();
    }
  }
}

// A thread's x (and dx) addressing: row 0 of its V channels and the row stride (PAIR: x is two tensors, Split;
// otherwise x.p1 alone with rows of C, the pointer arithmetic of the one-tensor case kept plain).
template <bool PAIR, typename P>
__device__ __forceinline__ P* rows_of(const Split<P>& x, int b, int T, int C, int c, int& stride) {
  if constexpr (PAIR) {
    return x.at(b, T, C, c, stride);
  } else {
    stride = C;
    return x.p1 + static_cast<int64_t>(b) * T * C + c;
  }
}

//   forward: after the shift at step t, xwin[m] = x_{t−KW+1+m} and z_j = b_j + Σ_m wpad[j][m] xwin[m].
// V channels per thread (see the file comment); U rows loaded before any is used.
template <typename scalar_t, int KW, int N, int V, int U, bool PAIR>
__global__ void __launch_bounds__(kChannels* kLanes)
    conv_fwd_kernel(Split<const scalar_t> x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                    Outs<scalar_t> y, int B, int T, int C, int K, int n, int NC, int L, bool silu) {
  using acc_t = detail::conv1d_acc_t<scalar_t>;
  const Walk<V> wk(B, T, C, NC, L);
  if (!wk.active) return;
  acc_t wpad[N][KW][V], b0[N][V];
  load_taps<scalar_t, acc_t, KW, N, V>(w, bias, wk.c, C, K, n, wpad, b0);
  const int64_t base = static_cast<int64_t>(wk.b) * T * C + wk.c;  // the outputs' row 0
  int xc;
  const scalar_t* xs = rows_of<PAIR>(x, wk.b, T, C, wk.c, xc);
  acc_t xwin[KW][V];
  init_window<scalar_t, acc_t, KW, V>(xs, wk.t0, xc, K, xwin);
  for (int t = wk.t0; t < wk.t1; t += U) {
    acc_t xv[U][V];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (t + u < wk.t1) {
        load_v<V>(xs + static_cast<int64_t>(t + u) * xc, xv[u]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[u][i] = acc_t(0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (t + u >= wk.t1) break;
      fwd_step<scalar_t, acc_t, KW, N, V>(xwin, xv[u], wpad, b0, n, silu, y, base + static_cast<int64_t>(t + u) * C);
    }
  }
}

//   backward: the walk goes K − 1… KW − 1 steps past its chunk (gz of those rows is needed for the chunk's own
//   dx; zero from T on). gz_j(t) adds wpad[j][m]·gz_j(t) to dxacc[m], the pending dx of row t − KW + 1 + m;
//   slot 0 (row t − KW + 1) is then complete and written if it lies in the chunk, and the slots shift.
//   dw_j[m] += gz_j(t) xwin[m] and db_j += gz_j(t) over the chunk's own rows. Each thread's dw, db are summed
//   over the block's kLanes samples in lane order and written as one partial row per block:
//   partial[blockIdx.y][j][c][0..K−1] = dw, [K] = db.
// MinB: blocks per SM the register allocation must allow. For four convolutions with one channel per thread the
// unconstrained kernel takes 102 registers (two blocks, 16 warps per SM) and stalls on its loads: 203 µs at the A5
// shape; three blocks (80 registers, a few spilled to L1) took 146 µs, four (64) 152 µs (ncu,
// results/h200/conv_multi/). With two channels: bwd_launch.
template <typename scalar_t, int KW, int N, int V, int U, int MinB, bool PAIR>
__global__ void __launch_bounds__(kChannels* kLanes, MinB)
    conv_bwd_kernel(Ins<scalar_t> g, Split<const scalar_t> x, const scalar_t* __restrict__ w,
                    const scalar_t* __restrict__ bias, Split<scalar_t> dx,
                    detail::conv1d_acc_t<scalar_t>* __restrict__ partial, int B, int T, int C, int K, int n, int NC,
                    int L, bool silu) {
  using acc_t = detail::conv1d_acc_t<scalar_t>;
  __shared__ acc_t red[kLanes][kChannels * V];
  const Walk<V> wk(B, T, C, NC, L);
  acc_t wpad[N][KW][V], b0[N][V], dw[N][KW][V], db[N][V];
  load_taps<scalar_t, acc_t, KW, N, V>(w, bias, wk.active ? wk.c : 0, C, K, n, wpad, b0);
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int i = 0; i < V; ++i) {
      db[j][i] = 0;
#pragma unroll
      for (int m = 0; m < KW; ++m) dw[j][m][i] = 0;
    }
  if (wk.active) {
    const int64_t base = static_cast<int64_t>(wk.b) * T * C + wk.c;  // the gradients' row 0
    int xc;
    const scalar_t* xs = rows_of<PAIR>(x, wk.b, T, C, wk.c, xc);
    scalar_t* dxs = rows_of<PAIR>(dx, wk.b, T, C, wk.c, xc);
    acc_t xwin[KW][V], dxacc[KW][V];
    init_window<scalar_t, acc_t, KW, V>(xs, wk.t0, xc, K, xwin);
#pragma unroll
    for (int m = 0; m < KW; ++m)
#pragma unroll
      for (int i = 0; i < V; ++i) dxacc[m][i] = 0;
    const int t_end = wk.t1 + KW - 1;   // the walk, look-ahead included
    const int t_rows = min(T, t_end);   // the rows that exist
    for (int t = wk.t0; t < t_end; t += U) {
      acc_t xv[U][V], gv[U][N][V];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const bool live = t + u < t_rows;
        if (live) {
          load_v<V>(xs + static_cast<int64_t>(t + u) * xc, xv[u]);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) xv[u][i] = acc_t(0);
        }
#pragma unroll
        for (int j = 0; j < N; ++j) {
          if (live && j < n) {
            load_v<V>(g.p[j] + base + static_cast<int64_t>(t + u) * C, gv[u][j]);
          } else {
#pragma unroll
            for (int i = 0; i < V; ++i) gv[u][j][i] = acc_t(0);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (t + u >= t_end) break;
        const int s = t + u - KW + 1;
        bwd_step<scalar_t, acc_t, KW, N, V>(xwin, dxacc, xv[u], gv[u], wpad, b0, dw, db, n, silu, t + u < wk.t1,
                                            s >= wk.t0 ? dxs + static_cast<int64_t>(s) * xc : nullptr);
      }
    }
  }
  block_sum_partials<acc_t, KW, N, V>(dw, db, red, n, K, C, wk.c, partial);
}

// ---- Staged kernels (K ≤ 4, bfloat16 and float32, 32-channel row segments 16-byte aligned) ----
// The walk kernels above keep at most U rows per tensor in flight per thread, and measured far from the memory
// bound (0.5–2.3 TB/s: load latency). These copy a block's whole time tile first — the rows of its 32 channels ×
// kLanes samples, with the look-back (and, backward, look-ahead) rows, zeros outside [0, T) and past B — into
// shared memory with 16-byte cp.async copies (everything in flight at once), then walk the tile from shared
// memory through fwd_step / bwd_step: y and dx are bit for bit the walk's (the same arithmetic in the same
// order), dw and db differ only in how the time sum is split into partials.
constexpr int kStageBytesMax = 64 * 1024;  // a tile's stage: at most this much shared memory per block

// Copies rows [r0, r0 + R) of time (zero outside [0, T)) of the 32 channels at `src` (element (b, t) of them at
// src + (b·T + t)·stride) for the block's kLanes samples b0 … (zero from B on) into dst[lane][row][32].
template <typename scalar_t>
__device__ __forceinline__ void stage_rows(scalar_t* dst, const scalar_t* __restrict__ src, int stride, int b0, int B,
                                           int T, int r0, int R) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(scalar_t));  // elements per 16-byte copy
  constexpr int kPerRow = kChannels / kPer;                      // copies per row segment
  const int total = kLanes * R * kPerRow;
  for (int i = threadIdx.y * kChannels + threadIdx.x; i < total; i += kChannels * kLanes) {
    const int q = i % kPerRow, r = (i / kPerRow) % R, l = i / (kPerRow * R);
    const int b = b0 + l, t = r0 + r;
    scalar_t* d = dst + (l * R + r) * kChannels + q * kPer;
    if (b < B && t >= 0 && t < T) {
      cuda_math::cp_async16(d, src + (static_cast<int64_t>(b) * T + t) * stride + q * kPer);
    } else {
      *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
    }
  }
}

// The block's 32 channels cb … cb + 31 of x: element (b, t) of them at the returned pointer + (b·T + t)·stride
// (PAIR: the block lies wholly in x1 or in x2, as C1 is a multiple of 32).
template <bool PAIR, typename P>
__device__ __forceinline__ P* segment_of(const Split<P>& x, int T, int C, int cb, int& stride) {
  return rows_of<PAIR>(x, 0, T, C, cb, stride);
}

// The window before step t0 from a staged column (`col[r · 32]` = x at time t0 − KW + 1 + r), as init_window
// builds it from global memory.
template <typename scalar_t, typename acc_t, int KW>
__device__ __forceinline__ void init_window_staged(const scalar_t* col, int t0, int K, acc_t (&xwin)[KW][1]) {
#pragma unroll
  for (int m = 0; m < KW; ++m) {
    const int t = t0 - KW + m;
    xwin[m][0] = (m >= KW - K + 1 && t >= 0) ? static_cast<acc_t>(col[(m - 1) * kChannels]) : acc_t(0);
  }
}

// Block (32 channels, kLanes samples, tile [t0, t1) of L steps: blockIdx.y = sample group · NT + tile). Stage:
// x rows t0 − KW + 1 … t1 − 1.
template <typename scalar_t, int KW, int N, bool PAIR>
__global__ void __launch_bounds__(kChannels* kLanes)
    conv_fwd_staged_kernel(Split<const scalar_t> x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                           Outs<scalar_t> y, int B, int T, int C, int K, int n, int NT, int L, bool silu) {
  using acc_t = float;
  extern __shared__ __align__(16) unsigned char stage_raw[];
  scalar_t* xs = reinterpret_cast<scalar_t*>(stage_raw);
  const int cb = blockIdx.x * kChannels, c = cb + threadIdx.x;
  const int b0 = (blockIdx.y / NT) * kLanes, b = b0 + threadIdx.y;
  const int t0 = (blockIdx.y % NT) * L, t1 = min(T, t0 + L);
  const int R = t1 - t0 + KW - 1;
  int xc;
  const scalar_t* src = segment_of<PAIR>(x, T, C, cb, xc);
  stage_rows(xs, src, xc, b0, B, T, t0 - KW + 1, R);
  cuda_math::cp_async_wait_all();
  __syncthreads();
  if (b >= B) return;
  acc_t wpad[N][KW][1], b0v[N][1];
  load_taps<scalar_t, acc_t, KW, N, 1>(w, bias, c, C, K, n, wpad, b0v);
  const scalar_t* col = xs + threadIdx.y * R * kChannels + threadIdx.x;
  acc_t xwin[KW][1];
  init_window_staged<scalar_t, acc_t, KW>(col, t0, K, xwin);
  const int64_t base = static_cast<int64_t>(b) * T * C + c;
  for (int t = t0; t < t1; ++t) {
    const acc_t row[1] = {static_cast<acc_t>(col[(t - t0 + KW - 1) * kChannels])};
    fwd_step<scalar_t, acc_t, KW, N, 1>(xwin, row, wpad, b0v, n, silu, y, base + static_cast<int64_t>(t) * C);
  }
}

// Backward of the same tiling: the walk goes KW − 1 steps past the tile (conv_bwd_kernel). Stage: x rows
// t0 − KW + 1 … t1 + KW − 2, then for each convolution j its gradient rows t0 … t1 + KW − 2 (zeros from T on).
template <typename scalar_t, int KW, int N, bool PAIR>
__global__ void __launch_bounds__(kChannels* kLanes)
    conv_bwd_staged_kernel(Ins<scalar_t> g, Split<const scalar_t> x, const scalar_t* __restrict__ w,
                           const scalar_t* __restrict__ bias, Split<scalar_t> dx, float* __restrict__ partial, int B,
                           int T, int C, int K, int n, int NT, int L, bool silu) {
  using acc_t = float;
  __shared__ acc_t red[kLanes][kChannels];
  extern __shared__ __align__(16) unsigned char stage_raw[];
  const int cb = blockIdx.x * kChannels, c = cb + threadIdx.x;
  const int b0 = (blockIdx.y / NT) * kLanes, b = b0 + threadIdx.y;
  const int t0 = (blockIdx.y % NT) * L, t1 = min(T, t0 + L), t_end = t1 + KW - 1;
  const int Rx = t_end - t0 + KW - 1, Rg = t_end - t0;
  scalar_t* xs = reinterpret_cast<scalar_t*>(stage_raw);
  scalar_t* gs = xs + kLanes * Rx * kChannels;  // gradient j at gs + j · kLanes · Rg · 32
  int xc;
  stage_rows(xs, segment_of<PAIR>(x, T, C, cb, xc), xc, b0, B, T, t0 - KW + 1, Rx);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j < n) stage_rows(gs + j * kLanes * Rg * kChannels, g.p[j] + cb, C, b0, B, T, t0, Rg);
  }
  cuda_math::cp_async_wait_all();
  __syncthreads();
  acc_t wpad[N][KW][1], b0v[N][1], dw[N][KW][1], db[N][1];
  load_taps<scalar_t, acc_t, KW, N, 1>(w, bias, c, C, K, n, wpad, b0v);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    db[j][0] = 0;
#pragma unroll
    for (int m = 0; m < KW; ++m) dw[j][m][0] = 0;
  }
  if (b < B) {
    const scalar_t* xcol = xs + threadIdx.y * Rx * kChannels + threadIdx.x;
    const scalar_t* gcol = gs + threadIdx.y * Rg * kChannels + threadIdx.x;
    scalar_t* dxs = rows_of<PAIR>(dx, b, T, C, c, xc);
    acc_t xwin[KW][1], dxacc[KW][1];
    init_window_staged<scalar_t, acc_t, KW>(xcol, t0, K, xwin);
#pragma unroll
    for (int m = 0; m < KW; ++m) dxacc[m][0] = 0;
    for (int t = t0; t < t_end; ++t) {
      const acc_t xrow[1] = {static_cast<acc_t>(xcol[(t - t0 + KW - 1) * kChannels])};
      acc_t grow[N][1];
#pragma unroll
      for (int j = 0; j < N; ++j)
        grow[j][0] = j < n ? static_cast<acc_t>(gcol[(j * kLanes * Rg + t - t0) * kChannels]) : acc_t(0);
      const int s = t - KW + 1;
      bwd_step<scalar_t, acc_t, KW, N, 1>(xwin, dxacc, xrow, grow, wpad, b0v, dw, db, n, silu, t < t1,
                                          s >= t0 ? dxs + static_cast<int64_t>(s) * xc : nullptr);
    }
  }
  block_sum_partials<acc_t, KW, N, 1>(dw, db, red, n, K, C, c, partial);
}

// Bytes of a staged block's tile of L steps (the largest tile; the last may be shorter): the forward's x rows, or
// the backward's x rows and n gradients' rows (kLanes samples × 32 channels each; KW = 4).
int64_t staged_bytes(bool backward, int n, int64_t L, int64_t elem) {
  constexpr int64_t kHalo = 3;  // KW − 1
  const int64_t rows = backward ? (L + 2 * kHalo) + n * (L + kHalo) : L + kHalo;
  return rows * kLanes * kChannels * elem;
}

// The staged kernels' tile length (0: not staged): where K ≤ 4, the dtype is bfloat16 or float32, every 32-channel
// segment of every staged tensor starts 16-byte aligned (C and C1 multiples of 32, pointers 16-byte aligned) and
// the grid fits. The tile is the whole sequence, halved (rounding up) while its stage exceeds kStageBytesMax, and
// while (down to 16 steps) the grid has fewer than 4 blocks per multiprocessor.
int64_t staged_tile(bool backward, at::ScalarType dtype, int64_t B, int64_t T, int64_t C, int64_t C1, int64_t K,
                    int n, const std::vector<const void*>& staged_ptrs, const torch::Device& device) {
  if (K > 4 || (dtype != at::kBFloat16 && dtype != at::kFloat)) return 0;
  if (C % kChannels != 0 || C1 % kChannels != 0) return 0;
  for (const void* p : staged_ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 0;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  const int64_t elem = c10::elementSize(dtype), groups = (B + kLanes - 1) / kLanes, cblocks = C / kChannels;
  int64_t L = T;
  while (L > 1 && staged_bytes(backward, n, L, elem) > kStageBytesMax) L = (L + 1) / 2;
  while (L > 16 && cblocks * groups * ((T + L - 1) / L) < 4 * static_cast<int64_t>(sms)) L = (L + 1) / 2;
  if (groups * ((T + L - 1) / L) > 65535) return 0;
  return L;
}

// Calls f(scalar_t{}) for the staged kernels' dtypes: bfloat16 or float32 (staged_tile says where).
template <typename F>
void with_staged_dtype(at::ScalarType dtype, F&& f) {
  if (dtype == at::kBFloat16) {
    f(c10::BFloat16{});
  } else {
    TORCH_INTERNAL_ASSERT(dtype == at::kFloat, "staged convolution kernels: bfloat16 or float32 only");
    f(float{});
  }
}

// Launches a staged kernel with `bytes` of dynamic shared memory (allowing more than the default 48 KB).
template <typename Kernel, typename... Args>
void launch_staged(Kernel kernel, dim3 grid, int64_t bytes, Args... args) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
  kernel<<<grid, dim3(kChannels, kLanes), static_cast<size_t>(bytes), c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(std::integral_constant<int, KW>{}, std::integral_constant<int, N>{}) with the smallest window width
// KW ≥ K (4, 8 or 16) and N = 1 for one convolution, 4 (with the unused ones skipped) for two to four.
template <typename F>
void with_shape(int K, int n, F&& f) {
  const auto pick_n = [&](auto kw) {
    if (n == 1)
      f(kw, std::integral_constant<int, 1>{});
    else
      f(kw, std::integral_constant<int, kMaxConvs>{});
  };
  if (K <= 4)
    pick_n(std::integral_constant<int, 4>{});
  else if (K <= 8)
    pick_n(std::integral_constant<int, 8>{});
  else
    pick_n(std::integral_constant<int, 16>{});
}

// Time chunks per sample (detail::conv1d_cuda_chunks) on this device, with the thread's V channels.
detail::Conv1dChunks chunks_for(int64_t B, int64_t T, int64_t C, int V, const torch::Device& device) {
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device.index()));
  const int64_t groups = (B + kLanes - 1) / kLanes;
  return detail::conv1d_cuda_chunks(B, T, C, V, sms, per_sm, 65535 / std::max<int64_t>(1, groups));
}

// Channels per thread: 2 where the dtype has a paired access (bfloat16: 4 bytes, float32: 8), every row of every
// tensor starts on a pair (C and C1 even, every pointer 2-element aligned) and the taps fit the 4-wide window
// (K ≤ 4: wider windows would double registers that already number 90–225); 1 otherwise. Only where measured
// faster (results/h200/conv_vec/): one convolution each way (the pair 10 % forward, 4 % backward on an H200) and the
// four-convolution backward (the wider loads and U = 4 rows in flight: 198 → 160 µs at the A5 shape, 437 → 375 µs
// at the LM-like one); the four-convolution forward is 20 % slower with pairs (88 registers, two blocks per SM)
// and keeps one channel.
int vec_width(at::ScalarType dtype, int64_t C, int64_t C1, int64_t K, const std::vector<const void*>& ptrs) {
  if (K > 4) return 1;
  if (dtype != at::kBFloat16 && dtype != at::kFloat) return 1;
  if (C % 2 != 0 || C1 % 2 != 0) return 1;
  const size_t align = 2 * c10::elementSize(dtype);
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % align != 0) return 1;
  return 2;
}

// x1 (B, T, C1) and x2 (B, T, C2) (or undefined: C2 = 0) contiguous CUDA tensors of one dtype, the input
// [x1, x2] of C = C1 + C2 channels; weight (n, C, K) contiguous, 1 ≤ n ≤ 4, 1 ≤ K ≤ 16; bias (n, C) or
// undefined. Returns C.
int64_t check_cuda(const char* fn, const torch::Tensor& x1, const torch::Tensor& x2, const torch::Tensor& weight,
                   const torch::Tensor& bias) {
  TORCH_CHECK(x1.is_cuda() && x1.is_contiguous() && x1.dim() == 3, fn, ": x must be a contiguous CUDA (B, T, C) tensor");
  if (x2.defined()) {
    TORCH_CHECK(x2.is_cuda() && x2.is_contiguous() && x2.dim() == 3 && x2.size(0) == x1.size(0) &&
                    x2.size(1) == x1.size(1) && x2.scalar_type() == x1.scalar_type() && x2.device() == x1.device(),
                fn, ": x2 must be a contiguous CUDA (B, T, C2) tensor like x1 ", x1.sizes(), " ", x1.scalar_type(),
                ", got ", x2.sizes(), " ", x2.scalar_type(), " on ", x2.device());
  }
  const int64_t C = x1.size(2) + (x2.defined() ? x2.size(2) : 0);
  TORCH_CHECK(weight.dim() == 3 && weight.is_contiguous() && weight.size(1) == C && weight.size(0) >= 1 &&
                  weight.size(0) <= kMaxConvs,
              fn, ": weight must be a contiguous (n, C, K) tensor with 1 ≤ n ≤ ", kMaxConvs, " and C = ", C,
              ", got ", weight.sizes());
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(2) <= kMaxK, fn, ": kernel size must be in [1, ", kMaxK, "], got ",
              weight.size(2));
  TORCH_CHECK(!bias.defined() || (bias.is_contiguous() && bias.dim() == 2 && bias.size(0) == weight.size(0) &&
                                  bias.size(1) == C),
              fn, ": bias must be a contiguous (n, C) tensor, got ", bias.sizes());
  TORCH_CHECK(x1.size(1) < (int64_t{1} << 30) && C < (int64_t{1} << 30) && x1.size(0) <= 65535 * kLanes, fn,
              ": input ", x1.sizes(), " is too large for the kernels (at most ", 65535 * kLanes,
              " samples, 2^30 steps and channels)");
  return C;
}

// The n outputs (B, T, C) of the convolutions of [x1, x2].
std::vector<torch::Tensor> fwd_launch(const char* fn, const torch::Tensor& x1, const torch::Tensor& x2,
                                      const torch::Tensor& weight, const torch::Tensor& bias, bool silu) {
  const int64_t C = check_cuda(fn, x1, x2, weight, bias);
  const c10::cuda::CUDAGuard guard(x1.device());
  const int64_t B = x1.size(0), T = x1.size(1);
  const int K = static_cast<int>(weight.size(2)), n = static_cast<int>(weight.size(0));
  std::vector<torch::Tensor> ys;
  for (int j = 0; j < n; ++j) ys.push_back(torch::empty({B, T, C}, x1.options()));
  if (B * T * C == 0) return ys;
  const int64_t staged_L = staged_tile(false, x1.scalar_type(), B, T, C, x1.size(2), K, n,
                                       {x1.data_ptr(), x2.defined() ? x2.data_ptr() : nullptr}, x1.device());
  if (staged_L > 0) {
    const int NT = static_cast<int>((T + staged_L - 1) / staged_L);
    const dim3 grid(static_cast<unsigned>(C / kChannels), static_cast<unsigned>((B + kLanes - 1) / kLanes * NT));
    const int64_t bytes = staged_bytes(false, n, staged_L, x1.element_size());
    with_staged_dtype(x1.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      {
        Outs<scalar_t> out{};
        for (int j = 0; j < n; ++j) out.p[j] = ys[j].data_ptr<scalar_t>();
        const Split<const scalar_t> xin{x1.data_ptr<scalar_t>(), x2.defined() ? x2.data_ptr<scalar_t>() : nullptr,
                                        static_cast<int>(x1.size(2))};
        const auto go = [&](auto kernel) {
          launch_staged(kernel, grid, bytes, xin, weight.data_ptr<scalar_t>(),
                        bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out, static_cast<int>(B),
                        static_cast<int>(T), static_cast<int>(C), K, n, NT, static_cast<int>(staged_L), silu);
        };
        if (x2.defined()) {
          go(conv_fwd_staged_kernel<scalar_t, 4, 1, true>);
        } else if (n == 1) {
          go(conv_fwd_staged_kernel<scalar_t, 4, 1, false>);
        } else {
          go(conv_fwd_staged_kernel<scalar_t, 4, kMaxConvs, false>);
        }
      }
    });
    return ys;
  }
  std::vector<const void*> ptrs{x1.data_ptr(), x2.defined() ? x2.data_ptr() : nullptr};
  for (const auto& y : ys) ptrs.push_back(y.data_ptr());
  const int V = n == 1 ? vec_width(x1.scalar_type(), C, x1.size(2), K, ptrs) : 1;
  const detail::Conv1dChunks ch = chunks_for(B, T, C, V, x1.device());
  const int NC = static_cast<int>(ch.count), L = static_cast<int>(ch.length);
  const dim3 block(kChannels, kLanes);
  const dim3 grid(static_cast<unsigned>((C + kChannels * V - 1) / (kChannels * V)),
                  static_cast<unsigned>((B + kLanes - 1) / kLanes * NC));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x1.scalar_type(), "causal_conv1d_fwd_cuda", [&] {
    Outs<scalar_t> out{};
    for (int j = 0; j < n; ++j) out.p[j] = ys[j].data_ptr<scalar_t>();
    const Split<const scalar_t> xin{x1.data_ptr<scalar_t>(), x2.defined() ? x2.data_ptr<scalar_t>() : nullptr,
                                    static_cast<int>(x1.size(2))};
    with_shape(K, n, [&](auto kw, auto nn) {
      constexpr int kW = decltype(kw)::value, kN = decltype(nn)::value;
      auto launch = [&](auto kernel) {
        kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
            xin, weight.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out,
            static_cast<int>(B), static_cast<int>(T), static_cast<int>(C), K, n, NC, L, silu);
      };
      // V channels per thread; the pair (x2 defined) only with one convolution (causal_conv1d_pair).
      auto pick = [&](auto v) {
        constexpr int kV = decltype(v)::value;
        if constexpr (kN == 1) {
          if (x2.defined()) {
            launch(conv_fwd_kernel<scalar_t, kW, 1, kV, kUnroll, true>);
          } else {
            launch(conv_fwd_kernel<scalar_t, kW, 1, kV, kUnroll, false>);
          }
        } else {
          launch(conv_fwd_kernel<scalar_t, kW, kN, kV, kUnroll, false>);
        }
      };
      if constexpr (!std::is_same_v<scalar_t, double> && kW == 4 && kN == 1) {
        if (V == 2) {
          pick(std::integral_constant<int, 2>{});
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
      }
      pick(std::integral_constant<int, 1>{});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return ys;
}

// (dx1, dx2 (undefined without x2), dweight (n, C, K), dbias (n, C) or undefined) for the n output gradients.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> bwd_launch(
    const char* fn, const std::vector<torch::Tensor>& grads, const torch::Tensor& x1, const torch::Tensor& x2,
    const torch::Tensor& weight, const torch::Tensor& bias, bool silu) {
  const int64_t C = check_cuda(fn, x1, x2, weight, bias);
  const int64_t B = x1.size(0), T = x1.size(1);
  const int K = static_cast<int>(weight.size(2)), n = static_cast<int>(weight.size(0));
  TORCH_CHECK(static_cast<int>(grads.size()) == n, fn, ": ", n, " convolutions but ", grads.size(), " gradients");
  const std::vector<int64_t> shape{B, T, C};
  for (const auto& g : grads) {
    TORCH_CHECK(g.is_contiguous() && g.sizes() == at::IntArrayRef(shape) && g.scalar_type() == x1.scalar_type() &&
                    g.device() == x1.device(),
                fn, ": every gradient must be contiguous, (", B, ", ", T, ", ", C, "), ", x1.scalar_type(), " on ",
                x1.device(), "; got ", g.sizes(), " ", g.scalar_type(), " on ", g.device());
  }
  const c10::cuda::CUDAGuard guard(x1.device());
  torch::Tensor dx1 = torch::empty_like(x1), dx2 = x2.defined() ? torch::empty_like(x2) : torch::Tensor();
  const auto acc_dtype = x1.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const dim3 block(kChannels, kLanes);
  const bool empty = B * T * C == 0;
  std::vector<const void*> ptrs{x1.data_ptr(), x2.defined() ? x2.data_ptr() : nullptr, dx1.data_ptr(),
                                x2.defined() ? dx2.data_ptr() : nullptr};
  for (const auto& g : grads) ptrs.push_back(g.data_ptr());
  std::vector<const void*> staged_ptrs{x1.data_ptr(), x2.defined() ? x2.data_ptr() : nullptr};
  for (const auto& g : grads) staged_ptrs.push_back(g.data_ptr());
  const int64_t staged_L =
      empty ? 0 : staged_tile(true, x1.scalar_type(), B, T, C, x1.size(2), K, n, staged_ptrs, x1.device());
  const int V = empty ? 1 : vec_width(x1.scalar_type(), C, x1.size(2), K, ptrs);
  // Chunks of the walk kernels, or the staged kernels' tiles.
  const detail::Conv1dChunks ch = empty            ? detail::Conv1dChunks{}
                                  : staged_L > 0 ? detail::Conv1dChunks{(T + staged_L - 1) / staged_L, staged_L}
                                                 : chunks_for(B, T, C, V, x1.device());
  const int NC = static_cast<int>(ch.count), L = static_cast<int>(ch.length);
  const unsigned gy = static_cast<unsigned>((B + kLanes - 1) / kLanes * NC);
  // Every block writes all its partials, so no zero fill is needed (empty inputs: see below).
  const auto popt = x1.options().dtype(acc_dtype);
  torch::Tensor partial = !empty ? torch::empty({static_cast<int64_t>(gy), n, C, K + 1}, popt)
                                 : torch::zeros({static_cast<int64_t>(gy), n, C, K + 1}, popt);
  if (staged_L > 0) {
    const dim3 grid(static_cast<unsigned>(C / kChannels), gy);
    const int64_t bytes = staged_bytes(true, n, staged_L, x1.element_size());
    with_staged_dtype(x1.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      {
        Ins<scalar_t> in{};
        for (int j = 0; j < n; ++j) in.p[j] = grads[j].data_ptr<scalar_t>();
        const int C1 = static_cast<int>(x1.size(2));
        const Split<const scalar_t> xin{x1.data_ptr<scalar_t>(), x2.defined() ? x2.data_ptr<scalar_t>() : nullptr,
                                        C1};
        const Split<scalar_t> dxo{dx1.data_ptr<scalar_t>(), x2.defined() ? dx2.data_ptr<scalar_t>() : nullptr, C1};
        const auto go = [&](auto kernel) {
          launch_staged(kernel, grid, bytes, in, xin, weight.data_ptr<scalar_t>(),
                        bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, dxo, partial.data_ptr<float>(),
                        static_cast<int>(B), static_cast<int>(T), static_cast<int>(C), K, n, NC, L, silu);
        };
        if (x2.defined()) {
          go(conv_bwd_staged_kernel<scalar_t, 4, 1, true>);
        } else if (n == 1) {
          go(conv_bwd_staged_kernel<scalar_t, 4, 1, false>);
        } else {
          go(conv_bwd_staged_kernel<scalar_t, 4, kMaxConvs, false>);
        }
      }
    });
  } else if (!empty) {
    const dim3 grid(static_cast<unsigned>((C + kChannels * V - 1) / (kChannels * V)), gy);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x1.scalar_type(), "causal_conv1d_bwd_cuda", [&] {
      Ins<scalar_t> in{};
      for (int j = 0; j < n; ++j) in.p[j] = grads[j].data_ptr<scalar_t>();
      const int C1 = static_cast<int>(x1.size(2));
      const Split<const scalar_t> xin{x1.data_ptr<scalar_t>(), x2.defined() ? x2.data_ptr<scalar_t>() : nullptr, C1};
      const Split<scalar_t> dxo{dx1.data_ptr<scalar_t>(), x2.defined() ? dx2.data_ptr<scalar_t>() : nullptr, C1};
      with_shape(K, n, [&](auto kw, auto nn) {
        constexpr int kW = decltype(kw)::value, kN = decltype(nn)::value;
        auto launch = [&](auto kernel) {
          kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
              in, xin, weight.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, dxo,
              partial.data_ptr<detail::conv1d_acc_t<scalar_t>>(), static_cast<int>(B), static_cast<int>(T),
              static_cast<int>(C), K, n, NC, L, silu);
        };
        // V channels per thread; the four-convolution kernel's register limit: 3 blocks per SM with one channel
        // (see conv_bwd_kernel), 2 with two (128 registers, a few spilled): faster than U = 2 rows in flight at 2
        // blocks, than 3 blocks (more spilled) and than no limit (one block), results/h200/conv_vec/.
        auto pick = [&](auto v) {
          constexpr int kV = decltype(v)::value;
          if constexpr (kN == 1) {
            if (x2.defined()) {
              launch(conv_bwd_kernel<scalar_t, kW, 1, kV, kUnroll, 1, true>);
            } else {
              launch(conv_bwd_kernel<scalar_t, kW, 1, kV, kUnroll, 1, false>);
            }
          } else {
            launch(conv_bwd_kernel<scalar_t, kW, kN, kV, kUnroll, kV == 2 ? 2 : 3, false>);
          }
        };
        if constexpr (!std::is_same_v<scalar_t, double> && kW == 4) {
          if (V == 2) {
            pick(std::integral_constant<int, 2>{});
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            return;
          }
        }
        pick(std::integral_constant<int, 1>{});
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const torch::Tensor sums = partial.sum(0);  // (n, C, K + 1), a fixed reduction order
  torch::Tensor dw = sums.narrow(2, 0, K).to(x1.scalar_type()).contiguous();
  torch::Tensor db = bias.defined() ? sums.select(2, K).to(x1.scalar_type()).contiguous() : torch::Tensor();
  return {dx1, dx2, dw, db};
}

}  // namespace

std::vector<torch::Tensor> causal_conv1d_multi_fwd_cuda(const torch::Tensor& x, const torch::Tensor& weight,
                                                        const torch::Tensor& bias, bool silu) {
  return fwd_launch("causal_conv1d_multi_fwd_cuda", x, torch::Tensor(), weight, bias, silu);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_multi_bwd_cuda(
    const std::vector<torch::Tensor>& grads, const torch::Tensor& x, const torch::Tensor& weight,
    const torch::Tensor& bias, bool silu) {
  auto [dx, unused, dw, db] = bwd_launch("causal_conv1d_multi_bwd_cuda", grads, x, torch::Tensor(), weight, bias, silu);
  return {dx, dw, db};
}

torch::Tensor causal_conv1d_pair_fwd_cuda(const torch::Tensor& x1, const torch::Tensor& x2,
                                          const torch::Tensor& weight, const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(x1.dim() == 3 && x2.dim() == 3, "causal_conv1d_pair_fwd_cuda: x1, x2 must be (B, T, C1), (B, T, C2)");
  const int64_t C = x1.size(2) + x2.size(2);
  return fwd_launch("causal_conv1d_pair_fwd_cuda", x1, x2, weight.reshape({1, C, weight.size(-1)}),
                    bias.defined() ? bias.reshape({1, C}) : bias, silu)[0];
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_pair_bwd_cuda(
    const torch::Tensor& grad, const torch::Tensor& x1, const torch::Tensor& x2, const torch::Tensor& weight,
    const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(x1.dim() == 3 && x2.dim() == 3, "causal_conv1d_pair_bwd_cuda: x1, x2 must be (B, T, C1), (B, T, C2)");
  const int64_t C = x1.size(2) + x2.size(2);
  auto [dx1, dx2, dw, db] = bwd_launch("causal_conv1d_pair_bwd_cuda", {grad}, x1, x2,
                                       weight.reshape({1, C, weight.size(-1)}), bias.defined() ? bias.reshape({1, C}) : bias,
                                       silu);
  return {dx1, dx2, dw.reshape(weight.sizes()), db.defined() ? db.reshape({C}) : db};
}

torch::Tensor causal_conv1d_fwd_cuda(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                     bool silu) {
  TORCH_CHECK(weight.size(-1) >= 1 && weight.size(-1) <= kMaxK, "causal_conv1d_fwd_cuda: kernel size must be in [1, ",
              kMaxK, "], got ", weight.size(-1));
  TORCH_CHECK(x.dim() == 3, "causal_conv1d_fwd_cuda: x must be (B, T, C), got ", x.sizes());
  const int64_t C = x.size(2);
  return causal_conv1d_multi_fwd_cuda(x, weight.reshape({1, C, weight.size(-1)}),
                                      bias.defined() ? bias.reshape({1, C}) : bias, silu)[0];
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_cuda(const torch::Tensor& grad,
                                                                               const torch::Tensor& x,
                                                                               const torch::Tensor& weight,
                                                                               const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(weight.size(-1) >= 1 && weight.size(-1) <= kMaxK, "causal_conv1d_bwd_cuda: kernel size must be in [1, ",
              kMaxK, "], got ", weight.size(-1));
  TORCH_CHECK(x.dim() == 3, "causal_conv1d_bwd_cuda: x must be (B, T, C), got ", x.sizes());
  const int64_t C = x.size(2);
  auto [dx, dw, db] = causal_conv1d_multi_bwd_cuda({grad}, x, weight.reshape({1, C, weight.size(-1)}),
                                                   bias.defined() ? bias.reshape({1, C}) : bias, silu);
  return {dx, dw.reshape(weight.sizes()), db.defined() ? db.reshape({C}) : db};
}

}  // namespace fprnn::ops
