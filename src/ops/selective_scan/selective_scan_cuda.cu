// selective_scan CUDA kernels: the Mamba-1 recurrence s_t = exp(Δ_t A) s_{t−1} + Δ_t B_t u_t,
// y_t = C_t·s_t + D_skip u_t, and its backward (formulas in include/fprnn/ops/selective_scan.h).
// Layout contract: u, dt, y, grad (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D); contiguous, one
// dtype (float32 or float64), one CUDA device; N ≤ 64.
//
// Parallelisation: one thread per channel (b, d), its N states in registers (N rounded up to a compiled
// size kN ∈ {4, 8, 16, 32, 64}, the extra states idle). Threads of a block share b (blocks span channels
// only), so B_t, C_t (N values per step) are one broadcast load per warp and the loads of u, dt, y are
// coalesced across d.
// Napkin math (H200): the forward moves 12 bytes per (b, t, d) in float32 and does N exps and 4N flops — at
// the A5-at-128 shape (256, 128, 256), N = 16: 100 MB and 134 M exps, ~30 µs of traffic; with 65 k threads the
// chip is not full, so the loop over T is latency-bound, ~T × 0.3 µs.
//
// Backward: each thread re-runs its forward, keeping only the state at the start of every chunk of kChunk
// steps (a (B, T/kChunk, N, D) buffer), then walks the chunks from last to first: re-runs the chunk's
// forward into a per-thread (kChunk, kN) array (local memory, cached), and scans back through it. Sums over
// channels (dB, dC) are reduced within a warp by shuffles and written as one partial per warp (deterministic:
// no atomics), summed over warps afterwards; sums over the batch (dA, dD_skip, ddt_bias) are written per b and
// summed afterwards.
#include "fprnn/ops/selective_scan.h"

#include "ops/selective_scan/selective_scan_common.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <type_traits>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 16;

template <typename T>
__device__ __forceinline__ T softplus_thresh(T z) {
  return z <= T(20) ? log1p(exp(z)) : z;
}

template <typename T>
__device__ __forceinline__ T softplus_grad(T z) {
  return z <= T(20) ? T(1) / (T(1) + exp(-z)) : T(1);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct Dims {
  int64_t B, T, D, N, Dpad;  // Dpad: D rounded up to a multiple of 32 (one warp never spans two b)
  bool vec4 = false;         // the forward may read B_t, C_t as float4s (set per call)
};

// Thread → (b, d); d ≥ D marks an idle lane (it still takes part in warp reductions, with zeros).
__device__ __forceinline__ void channel_of(const Dims& g, int64_t& b, int64_t& d) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  b = idx / g.Dpad;
  d = idx % g.Dpad;
}

template <typename T, int kN>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const T* __restrict__ u, const T* __restrict__ dt,
                                                        const T* __restrict__ A, const T* __restrict__ Bm,
                                                        const T* __restrict__ Cm, const T* __restrict__ Ds,
                                                        const T* __restrict__ bias, T* __restrict__ y, Dims g) {
  int64_t b, d;
  channel_of(g, b, d);
  if (b >= g.B || d >= g.D) return;
  T a_row[kN], s[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    a_row[n] = n < g.N ? A[d * g.N + n] : T(0);
    s[n] = T(0);
  }
  const T dskip = Ds[d], db = bias[d];
  for (int64_t t = 0; t < g.T; ++t) {
    const int64_t i = (b * g.T + t) * g.D + d;
    const T* Bt = Bm + (b * g.T + t) * g.N;
    const T* Ct = Cm + (b * g.T + t) * g.N;
    // B_t and C_t (the same for every thread of the block): as float4s where the layout allows (float32, N the
    // compiled size, 16-byte aligned rows): a quarter of the load instructions, the same values.
    T bt[kN], ct[kN];
    if constexpr (std::is_same_v<T, float> && kN % 4 == 0) {
      if (g.vec4) {
#pragma unroll
        for (int c = 0; c < kN / 4; ++c) {
          const float4 xb = reinterpret_cast<const float4*>(Bt)[c], xc = reinterpret_cast<const float4*>(Ct)[c];
          bt[4 * c] = xb.x, bt[4 * c + 1] = xb.y, bt[4 * c + 2] = xb.z, bt[4 * c + 3] = xb.w;
          ct[4 * c] = xc.x, ct[4 * c + 1] = xc.y, ct[4 * c + 2] = xc.z, ct[4 * c + 3] = xc.w;
        }
      }
    }
    if (!g.vec4) {
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        bt[n] = n < g.N ? Bt[n] : T(0);
        ct[n] = n < g.N ? Ct[n] : T(0);
      }
    }
    const T delta = softplus_thresh(dt[i] + db);
    const T uu = u[i];
    const T du = delta * uu;
    T acc = dskip * uu;
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      if (n < g.N) {
        s[n] = exp(delta * a_row[n]) * s[n] + du * bt[n];
        acc += ct[n] * s[n];
      }
    }
    y[i] = acc;
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
  if (b >= g.B) return;  // whole warps only (Dpad is a multiple of 32): warp shuffles stay full
  const bool live = d < g.D;
  const int64_t dc = live ? d : 0;  // a valid address for idle lanes, whose values are zeroed
  const int64_t n_chunks = (g.T + kChunk - 1) / kChunk;
  const int64_t warps_per_b = g.Dpad / 32, warp = d / 32;
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
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < g.N) s[n] = exp(delta * a_row[n]) * s[n] + du * Bt[n];
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
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < g.N) s[n] = exp(delta * a_row[n]) * s[n] + du * Bt[n];
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
#pragma unroll
      for (int n = 0; n < kN; ++n) {
        if (n < g.N) {
          const T a = exp(delta * a_row[n]);
          const T prev = k > 0 ? states[k - 1][n] : s0[n];
          const T ds = gt * Ct[n] + carry[n];
          const T da_a = ds * prev * a;
          d_delta += da_a * a_row[n] + ds * Bt[n] * ut;
          dA_acc[n] += da_a * delta;
          d_u += ds * delta * Bt[n];
          carry[n] = a * ds;
          const T dc_sum = warp_sum(gt * states[k][n]);
          const T db_sum = warp_sum(ds * delta * ut);
          if (lane == 0) {
            dC_row[n] = dc_sum;
            dB_row[n] = db_sum;
          }
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
  g.Dpad = (g.D + 31) / 32 * 32;
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
  Dims g = dims_of(u, A);
  if (y.numel() == 0) return y;
  auto aligned16 = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; };
  g.vec4 = u.scalar_type() == torch::kFloat32 && compiled_states(g.N) == g.N && g.N % 4 == 0 && aligned16(Bm) &&
           aligned16(Cm);
  const int64_t blocks = (g.B * g.Dpad + kThreads - 1) / kThreads;
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
  const int64_t warps_per_b = g.Dpad / 32, n_chunks = (g.T + kChunk - 1) / kChunk;
  SelectiveScanGrads out;
  out.du = torch::empty_like(u);
  out.ddt = torch::empty_like(u);
  torch::Tensor dB_part = torch::zeros({g.B, warps_per_b, g.T, g.N}, u.options());
  torch::Tensor dC_part = torch::zeros({g.B, warps_per_b, g.T, g.N}, u.options());
  torch::Tensor dA_part = torch::zeros({g.B, g.D, g.N}, u.options());
  torch::Tensor dD_part = torch::zeros({g.B, g.D}, u.options());
  torch::Tensor dbias_part = torch::zeros({g.B, g.D}, u.options());
  if (u.numel() > 0) {
    torch::Tensor ckpt = torch::empty({g.B, n_chunks, g.N, g.D}, u.options());
    const int64_t blocks = (g.B * g.Dpad + kThreads - 1) / kThreads;
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
