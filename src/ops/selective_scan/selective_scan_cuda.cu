// selective_scan CUDA kernels: the Mamba-1 recurrence s_t = exp(Δ_t A) s_{t−1} + Δ_t B_t u_t,
// y_t = C_t·s_t + D_skip u_t, and its backward (formulas in include/fprnn/ops/selective_scan.h).
// Layout contract: u, dt, y, grad (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D); contiguous, one
// dtype (float32 or float64), one CUDA device; N ≤ 64.
//
// Parallelisation: one thread per channel (b, d), its N states in registers (N rounded up to a compiled
// size kN ∈ {4, 8, 16, 32, 64}, the extra states idle). A block holds kThreads channels of one b (a batch
// element spans ⌈D / kThreads⌉ blocks), so B_t, C_t are shared by the whole block and u, dt, y are coalesced
// across d.
// Forward: the block stages kTile steps of B_t and C_t in shared memory at a time (one coalesced load of a
// contiguous (kTile, N) slab each, instead of 2N loads per thread and step), each thread loads the next step's
// u and dt before the current step's arithmetic, and in float32 the decays are exp2f(Δ log2(e) · A): the
// hardware 2^x (2 ulp) instead of expf's range reduction. The loop is then bound by its N exps and 4N flops
// per (b, t, d): at the length-128 FP-Mamba1 shape (512, 128, 1024, 16), 1.07 G exps per call.
//
// Backward: each thread re-runs its forward, keeping only the state at the start of every chunk of kChunk
// steps (a (B, T/kChunk, N, D) buffer), then walks the chunks from last to first: re-runs the chunk's
// forward into a per-thread (kChunk, kN) array (local memory, cached), and scans back through it. Sums over
// channels (dB, dC) are reduced within a warp by a butterfly reduce-scatter (the 2·16 sums of a step in 31
// shuffles, where one sum after another takes 5 each) and written as one partial per warp (deterministic: no
// atomics), summed over warps afterwards; sums over the batch (dA, dD_skip, ddt_bias) are written per b and
// summed afterwards.
#include "fprnn/ops/selective_scan.h"

#include "ops/selective_scan/selective_scan_common.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 16;  // backward: steps between saved states
constexpr int kTile = 32;   // forward: steps of B_t, C_t staged in shared memory at a time

template <typename T>
__device__ __forceinline__ T softplus_thresh(T z) {
  return z <= T(20) ? log1p(exp(z)) : z;
}

template <typename T>
__device__ __forceinline__ T softplus_grad(T z) {
  return z <= T(20) ? T(1) / (T(1) + exp(-z)) : T(1);
}

// The decays exp(Δ A[d, n]) of one step. float32: exp2f(Δ log2(e) · A), one multiplication by log2(e) per step
// and the hardware 2^x per state instead of expf's range reduction (the argument moves by ≤ 2 ulp, the
// result by a few ulp, which the recurrence does not amplify: |exp(ΔA)| < 1); float64: exp.
template <typename T>
struct StepDecay;

template <>
struct StepDecay<float> {
  float scaled;
  __device__ __forceinline__ explicit StepDecay(float delta) : scaled(delta * 1.4426950408889634f) {}
  __device__ __forceinline__ float operator()(float a) const { return exp2f(scaled * a); }
};

template <>
struct StepDecay<double> {
  double delta;
  __device__ __forceinline__ explicit StepDecay(double d) : delta(d) {}
  __device__ __forceinline__ double operator()(double a) const { return exp(delta * a); }
};

// One round after another of a butterfly reduce-scatter over the warp: at offset O the lanes with bit O set
// keep the upper half of their M values and the others the lower half, each adding its partner's copy of the
// half it keeps; once one value is left the rounds just add. Afterwards v[0] of lane l is the warp's sum of
// value l / (32 / V) (V ≤ 32 values in, V − 1 + log2(32 / V) shuffles instead of 5 V).
template <int M, int O, typename T, int V>
__device__ __forceinline__ void reduce_scatter_round(T (&v)[V], int lane) {
  if constexpr (O > 0) {
    if constexpr (M > 1) {
      constexpr int H = M / 2;
      const bool upper = (lane & O) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const T send = upper ? v[i] : v[i + H];
        const T keep = upper ? v[i + H] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
      }
      reduce_scatter_round<H, O / 2>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
      reduce_scatter_round<1, O / 2>(v, lane);
    }
  }
}

template <typename T, int V>
__device__ __forceinline__ void warp_reduce_scatter(T (&v)[V], int lane) {
  static_assert(V >= 1 && V <= 32 && (V & (V - 1)) == 0, "warp_reduce_scatter: V must be a power of two ≤ 32");
  reduce_scatter_round<V, 16>(v, lane);
}

struct Dims {
  int64_t B, T, D, N;
  int64_t dblocks;  // blocks per batch element: ⌈D / kThreads⌉ (a block never spans two b)
};

// Block → (b, first channel); thread → (b, d). d ≥ D marks an idle lane (it still takes part in block barriers
// and warp reductions, with zeros).
__device__ __forceinline__ void channel_of(const Dims& g, int64_t& b, int64_t& d) {
  b = blockIdx.x / g.dblocks;
  d = (blockIdx.x % g.dblocks) * kThreads + threadIdx.x;
}

// out[n] = row[n], n < kN, from a 16-byte-aligned shared-memory row: float4 / double2 reads.
template <int kN>
__device__ __forceinline__ void load_row(const float* row, float (&out)[kN]) {
  static_assert(kN % 4 == 0, "load_row: kN must be a multiple of 4");
#pragma unroll
  for (int c = 0; c < kN / 4; ++c) {
    const float4 v = reinterpret_cast<const float4*>(row)[c];
    out[4 * c] = v.x, out[4 * c + 1] = v.y, out[4 * c + 2] = v.z, out[4 * c + 3] = v.w;
  }
}

template <int kN>
__device__ __forceinline__ void load_row(const double* row, double (&out)[kN]) {
  static_assert(kN % 2 == 0, "load_row: kN must be even");
#pragma unroll
  for (int c = 0; c < kN / 2; ++c) {
    const double2 v = reinterpret_cast<const double2*>(row)[c];
    out[2 * c] = v.x, out[2 * c + 1] = v.y;
  }
}

template <typename T, int kN>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const T* __restrict__ u, const T* __restrict__ dt,
                                                        const T* __restrict__ A, const T* __restrict__ Bm,
                                                        const T* __restrict__ Cm, const T* __restrict__ Ds,
                                                        const T* __restrict__ bias, T* __restrict__ y, Dims g) {
  // kTile steps of B_t and C_t, rows padded to kN with zeros.
  __shared__ __align__(16) T sB[kTile * kN];
  __shared__ __align__(16) T sC[kTile * kN];
  int64_t b, d;
  channel_of(g, b, d);
  const bool live = d < g.D;
  const int64_t dc = live ? d : 0;
  T a_row[kN], s[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    a_row[n] = (live && n < g.N) ? A[dc * g.N + n] : T(0);
    s[n] = T(0);
  }
  const T dskip = live ? Ds[dc] : T(0), db = live ? bias[dc] : T(0);
  const int64_t first = b * g.T * g.D + dc;  // (b, 0, d)
  // The next step's u and dt are loaded before the current step's arithmetic.
  T u_next = live ? u[first] : T(0), dt_next = live ? dt[first] : T(0);
  for (int64_t t0 = 0; t0 < g.T; t0 += kTile) {
    const int steps = static_cast<int>(min(static_cast<int64_t>(kTile), g.T - t0));
    __syncthreads();  // every thread is done with the previous tile
    const T* Bsrc = Bm + (b * g.T + t0) * g.N;
    const T* Csrc = Cm + (b * g.T + t0) * g.N;
    for (int k = threadIdx.x; k < steps * kN; k += kThreads) {
      const int j = k / kN, n = k % kN;
      sB[k] = n < g.N ? Bsrc[j * g.N + n] : T(0);
      sC[k] = n < g.N ? Csrc[j * g.N + n] : T(0);
    }
    __syncthreads();
    if (!live) continue;
    for (int j = 0; j < steps; ++j) {
      const int64_t t = t0 + j;
      const T uu = u_next, dtt = dt_next;
      if (t + 1 < g.T) {
        u_next = u[first + (t + 1) * g.D];
        dt_next = dt[first + (t + 1) * g.D];
      }
      const T delta = softplus_thresh(dtt + db);
      const T du = delta * uu;
      const StepDecay<T> decay(delta);
      T bt[kN], ct[kN];
      load_row<kN>(sB + j * kN, bt);
      load_row<kN>(sC + j * kN, ct);
      T acc = dskip * uu;
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < g.N) {
          s[n] = decay(a_row[n]) * s[n] + du * bt[n];
          acc += ct[n] * s[n];
        }
      }
      y[first + t * g.D] = acc;
    }
  }
}

template <typename T, int kN>
__global__ void __launch_bounds__(kThreads)
    bwd_kernel(const T* __restrict__ grad, const T* __restrict__ u, const T* __restrict__ dt, const T* __restrict__ A,
               const T* __restrict__ Bm, const T* __restrict__ Cm, const T* __restrict__ Ds,
               const T* __restrict__ bias, T* __restrict__ ckpt, T* __restrict__ du_out, T* __restrict__ ddt_out,
               T* __restrict__ dB_part, T* __restrict__ dC_part, T* __restrict__ dA_part, T* __restrict__ dD_part,
               T* __restrict__ dbias_part, Dims g) {
  int64_t b, d;
  channel_of(g, b, d);
  const bool live = d < g.D;  // idle lanes run along with zeros: the warp's shuffles stay full
  const int64_t dc = live ? d : 0;  // a valid address for idle lanes, whose values are zeroed
  const int64_t n_chunks = (g.T + kChunk - 1) / kChunk;
  const int64_t warps_per_b = g.dblocks * (kThreads / 32), warp = d / 32;
  const int lane = threadIdx.x % 32;
  T a_row[kN], s[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    a_row[n] = (live && n < g.N) ? A[dc * g.N + n] : T(0);
    s[n] = T(0);
  }
  const T dskip = live ? Ds[dc] : T(0), db = live ? bias[dc] : T(0);
  auto load = [&](const T* p, int64_t t) { return live ? p[(b * g.T + t) * g.D + dc] : T(0); };
  // Pass 1: the forward, keeping the state entering each chunk: ckpt[b, c, n, d].
  for (int64_t t = 0; t < g.T; ++t) {
    if (t % kChunk == 0) {
      const int64_t c = t / kChunk;
#pragma unroll
      for (int n = 0; n < kN; ++n)
        if (n < g.N && live) ckpt[((b * n_chunks + c) * g.N + n) * g.D + dc] = s[n];
    }
    const T* Bt = Bm + (b * g.T + t) * g.N;
    const T delta = softplus_thresh(load(dt, t) + db);
    const T du = delta * load(u, t);
    const StepDecay<T> decay(delta);
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < g.N) s[n] = decay(a_row[n]) * s[n] + du * Bt[n];
  }
  // Pass 2: chunks from last to first.
  T carry[kN], dA_acc[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) carry[n] = dA_acc[n] = T(0);
  T dD_acc = 0, dbias_acc = 0;
  T states[kChunk][kN];  // s_t of the chunk's steps
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, len = min(static_cast<int64_t>(kChunk), g.T - t0);
    T s0[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n) s0[n] = (n < g.N && live) ? ckpt[((b * n_chunks + c) * g.N + n) * g.D + dc] : T(0);
#pragma unroll
    for (int n = 0; n < kN; ++n) s[n] = s0[n];
    for (int64_t k = 0; k < len; ++k) {
      const T* Bt = Bm + (b * g.T + t0 + k) * g.N;
      const T delta = softplus_thresh(load(dt, t0 + k) + db);
      const T du = delta * load(u, t0 + k);
      const StepDecay<T> decay(delta);
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < g.N) s[n] = decay(a_row[n]) * s[n] + du * Bt[n];
        states[k][n] = s[n];
      }
    }
    for (int64_t k = len - 1; k >= 0; --k) {
      const int64_t t = t0 + k;
      const T* Bt = Bm + (b * g.T + t) * g.N;
      const T* Ct = Cm + (b * g.T + t) * g.N;
      const T z = load(dt, t) + db;
      const T delta = softplus_thresh(z);
      const T gt = load(grad, t), ut = load(u, t);
      T d_delta = 0, d_u = dskip * gt;
      dD_acc += gt * ut;
      T* dB_row = dB_part + ((b * warps_per_b + warp) * g.T + t) * g.N;
      T* dC_row = dC_part + ((b * warps_per_b + warp) * g.T + t) * g.N;
      const StepDecay<T> decay(delta);
      // The step's sums over the warp's channels, kG states at a time: vals[i] = the dC term of state i,
      // vals[kG + i] the dB term; after the reduce-scatter lane l holds value l / (32 / 2kG).
      constexpr int kG = kN < 16 ? kN : 16;
#pragma unroll
      for (int n0 = 0; n0 < kN; n0 += kG) {
        T vals[2 * kG];
#pragma unroll
        for (int i = 0; i < kG; ++i) {
          const int n = n0 + i;
          vals[i] = vals[kG + i] = T(0);
          if (n < g.N) {
            const T a = decay(a_row[n]);
            const T prev = k > 0 ? states[k - 1][n] : s0[n];
            const T ds = gt * Ct[n] + carry[n];
            const T da_a = ds * prev * a;
            d_delta += da_a * a_row[n] + ds * Bt[n] * ut;
            dA_acc[n] += da_a * delta;
            d_u += ds * delta * Bt[n];
            carry[n] = a * ds;
            vals[i] = gt * states[k][n];
            vals[kG + i] = ds * delta * ut;
          }
        }
        warp_reduce_scatter(vals, lane);
        constexpr int kGroup = 32 / (2 * kG);  // lanes holding the same sum
        if (lane % kGroup == 0) {
          const int v = lane / kGroup, n = n0 + v % kG;
          if (n < g.N) (v < kG ? dC_row : dB_row)[n] = vals[0];
        }
      }
      const T ddt = d_delta * softplus_grad(z);
      if (live) {
        const int64_t i = (b * g.T + t) * g.D + d;
        du_out[i] = d_u;
        ddt_out[i] = ddt;
      }
      dbias_acc += ddt;
    }
  }
  if (!live) return;
#pragma unroll
  for (int n = 0; n < kN; ++n)
    if (n < g.N) dA_part[(b * g.D + d) * g.N + n] = dA_acc[n];
  dD_part[b * g.D + d] = dD_acc;
  dbias_part[b * g.D + d] = dbias_acc;
}

int64_t compiled_states(int64_t N) {
  for (const int64_t k : {4, 8, 16, 32, 64})
    if (N <= k) return k;
  return 0;
}

// Calls f(std::integral_constant<int, kN>) for the compiled kN ≥ N.
template <typename F>
void with_kn(int64_t N, F&& f) {
  switch (compiled_states(N)) {
    case 4: return f(std::integral_constant<int, 4>());
    case 8: return f(std::integral_constant<int, 8>());
    case 16: return f(std::integral_constant<int, 16>());
    case 32: return f(std::integral_constant<int, 32>());
    case 64: return f(std::integral_constant<int, 64>());
    default: TORCH_CHECK(false, "selective_scan CUDA: d_state ", N, " exceeds the kernels' 64");
  }
}

Dims dims_of(const torch::Tensor& u, const torch::Tensor& A) {
  Dims g;
  g.B = u.size(0);
  g.T = u.size(1);
  g.D = u.size(2);
  g.N = A.size(1);
  g.dblocks = (g.D + kThreads - 1) / kThreads;
  return g;
}

void check_cuda_args(const char* fn, const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                     const torch::Tensor& dt_bias, const torch::Tensor& grad) {
  detail::selective_scan_check_args(fn, u, dt, A, Bm, Cm, D_skip, dt_bias, grad, false);
  for (const torch::Tensor* t : {&u, &dt, &A, &Bm, &Cm, &D_skip, &dt_bias}) {
    TORCH_CHECK(t->is_cuda() && t->is_contiguous(), fn, ": inputs must be contiguous CUDA tensors");
  }
  TORCH_CHECK(!grad.defined() || (grad.is_cuda() && grad.is_contiguous()), fn,
              ": grad must be a contiguous CUDA tensor");
  TORCH_CHECK(compiled_states(A.size(1)) > 0, fn, ": d_state ", A.size(1), " exceeds the kernels' 64");
}

}  // namespace

bool selective_scan_cuda_supports(int64_t d_state) { return compiled_states(d_state) > 0; }

torch::Tensor selective_scan_fwd_cuda(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                      const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                      const torch::Tensor& dt_bias) {
  check_cuda_args("selective_scan_fwd_cuda", u, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor());
  const c10::cuda::CUDAGuard guard(u.device());
  torch::Tensor y = torch::empty_like(u);
  const Dims g = dims_of(u, A);
  if (y.numel() == 0) return y;
  const int64_t blocks = g.B * g.dblocks;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd_cuda", [&] {
    with_kn(g.N, [&](auto kn) {
      fwd_kernel<scalar_t, decltype(kn)::value><<<blocks, kThreads, 0, stream>>>(
          u.const_data_ptr<scalar_t>(), dt.const_data_ptr<scalar_t>(), A.const_data_ptr<scalar_t>(),
          Bm.const_data_ptr<scalar_t>(), Cm.const_data_ptr<scalar_t>(), D_skip.const_data_ptr<scalar_t>(),
          dt_bias.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

SelectiveScanGrads selective_scan_bwd_cuda(const torch::Tensor& grad, const torch::Tensor& u, const torch::Tensor& dt,
                                           const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                                           const torch::Tensor& D_skip, const torch::Tensor& dt_bias) {
  check_cuda_args("selective_scan_bwd_cuda", u, dt, A, Bm, Cm, D_skip, dt_bias, grad);
  const c10::cuda::CUDAGuard guard(u.device());
  const Dims g = dims_of(u, A);
  const int64_t warps_per_b = g.dblocks * (kThreads / 32), n_chunks = (g.T + kChunk - 1) / kChunk;
  SelectiveScanGrads out;
  out.du = torch::empty_like(u);
  out.ddt = torch::empty_like(u);
  // Every entry of the partials is written by the kernel (each warp its (T, N) rows, each live thread its
  // (b, d) entries): no zero fill needed.
  torch::Tensor dB_part = torch::empty({g.B, warps_per_b, g.T, g.N}, u.options());
  torch::Tensor dC_part = torch::empty({g.B, warps_per_b, g.T, g.N}, u.options());
  torch::Tensor dA_part = torch::empty({g.B, g.D, g.N}, u.options());
  torch::Tensor dD_part = torch::empty({g.B, g.D}, u.options());
  torch::Tensor dbias_part = torch::empty({g.B, g.D}, u.options());
  if (u.numel() > 0) {
    torch::Tensor ckpt = torch::empty({g.B, n_chunks, g.N, g.D}, u.options());
    const int64_t blocks = g.B * g.dblocks;
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd_cuda", [&] {
      with_kn(g.N, [&](auto kn) {
        bwd_kernel<scalar_t, decltype(kn)::value><<<blocks, kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(), dt.const_data_ptr<scalar_t>(),
            A.const_data_ptr<scalar_t>(), Bm.const_data_ptr<scalar_t>(), Cm.const_data_ptr<scalar_t>(),
            D_skip.const_data_ptr<scalar_t>(), dt_bias.const_data_ptr<scalar_t>(), ckpt.mutable_data_ptr<scalar_t>(),
            out.du.mutable_data_ptr<scalar_t>(), out.ddt.mutable_data_ptr<scalar_t>(),
            dB_part.mutable_data_ptr<scalar_t>(), dC_part.mutable_data_ptr<scalar_t>(),
            dA_part.mutable_data_ptr<scalar_t>(), dD_part.mutable_data_ptr<scalar_t>(),
            dbias_part.mutable_data_ptr<scalar_t>(), g);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  out.dB = dB_part.sum(1);
  out.dC = dC_part.sum(1);
  out.dA = dA_part.sum(0);
  out.dD_skip = dD_part.sum(0);
  out.ddt_bias = dbias_part.sum(0);
  return out;
}

}  // namespace fprnn::ops
