// linrec CUDA kernels: y_t = c_t·y_{t∓1} + u_t, and its backward (the same scan reversed on shifted
// coefficients, dc fused in), parallel over channels AND time.
// Layout contract: inputs, coeffs, grad, outputs: (B, T, D), contiguous, one dtype, on one CUDA device.
//
// Parallelisation: T is cut into NC chunks. With NC = 1 one thread scans one channel (b, d) down T — a
// single pass (forward 3 values per element, backward 5). With few channels (long sequences, small batch)
// the chip would idle, so NC > 1: (1) each (b, chunk, d) thread scans its chunk from state 0 and keeps
// only the chunk's end state and coefficient product; (2) one thread per channel combines the NC chunk
// summaries in order into each chunk's incoming state; (3) each (b, chunk, d) thread rescans its chunk from
// that state, writing the outputs. Phase 1 reads 2 values per element, phase 3 moves 3 (5 in backward):
// 5/3 of the single-pass bytes, in exchange for B·D·NC threads instead of B·D.
// Napkin math (H200, ~4 TB/s): (B, T, D) = (8, 2048, 1536) float32 forward = 302 MB single pass
// → ~75 µs if the chip were full; with 12 288 channels one pass would be latency-bound (2048 dependent
// steps per thread), chunking to NC = 22 gives 270 k threads at ~126 µs of traffic.
#include "fprnn/ops/linrec.h"

#include "ops/cuda_math.cuh"
#include "ops/linrec/linrec_common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fprnn::ops {
namespace {

using detail::linrec_acc_t;

constexpr int kThreads = 256;
// Phases 1 and 3 request the operands of kBatch steps before using any (they do not depend on the carried
// state), so a thread has several loads in flight instead of one round trip per step; the arithmetic and its
// order are unchanged. At the LM shape (8, 2048, 1536) in bfloat16 on an H200 the one-step-at-a-time loops took
// 100 + 99 µs forward and 68 + 180 µs backward (summary + output), 3–5× their bytes' time.
constexpr int kBatch = 8;

// A thread's V consecutive channels of one step are one load or store (cuda_math::Vec; V = 2: 4 bytes in
// bfloat16, 8 in float32), so it moves V channels per instruction; V = 1 is the plain element. The arithmetic per
// channel is the same for any V (each channel's own scan, in the same order): the results are bitwise those of
// V = 1.
using cuda_math::load_vec;
using cuda_math::store_vec;

// The V values at p where `in`, else V copies of `fill` (steps past the chunk, the missing first coefficient).
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_or_fill(bool in, const scalar_t* p, acc_t fill, acc_t (&out)[V]) {
  if (in) {
    load_vec<scalar_t, V>(p, out);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = fill;
  }
}

// Threads the chip should have in flight (132 SMs × 2048 on an H200); read off the device at run time.
int64_t target_threads() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return static_cast<int64_t>(sms) * per_sm;
}

// Number of time chunks: enough (b, chunk, d) threads to fill the chip, chunks of at least 16 steps.
int64_t choose_chunks(int64_t B, int64_t T, int64_t D) {
  const int64_t channels = B * D;  // threads per chunk (D counted in packs of V by the caller)
  const int64_t want = (target_threads() + channels - 1) / channels;
  return std::max<int64_t>(1, std::min<int64_t>(want, T / 16));
}

// The scan visits t in `dir` order (+1 forward in time, −1 backward). The coefficient multiplying the
// carried state at step t is c[t] for a forward scan (kBwd = false) and c[t − dir] — the coefficient of
// the step visited before — for the backward scan of the gradient (kBwd = true).
template <typename scalar_t, bool kBwd>
struct ScanArgs {
  const scalar_t* x;       // u (forward) or g (backward)
  const scalar_t* c;
  const scalar_t* y;       // forward outputs (backward only: dc_t = du_t · y_{t+dir})
  scalar_t* out;           // y (forward) or du (backward)
  scalar_t* dc;            // backward only
  int64_t B, T, D, NC, L;  // L = chunk length
  int dir;
};

// Chunk k's steps in visit order: first = k·L (dir = +1) or T − 1 − k·L (dir = −1), at most L of them.
__device__ __forceinline__ void chunk_range(int64_t k, int64_t L, int64_t T, int dir, int64_t& first,
                                            int64_t& count) {
  const int64_t start = k * L;
  count = start < T ? min(L, T - start) : 0;
  first = dir > 0 ? start : T - 1 - start;
}

// Phase 1: per (b, chunk, d), the chunk's end state from 0 and the product of its coefficients.
// Thread idx takes channels [V·p, V·p + V) of chunk k of sample b (p = idx mod D/V); its summaries are rows of
// (B, NC, D) at those channels.
template <typename scalar_t, bool kBwd, int V>
__global__ void __launch_bounds__(kThreads)
    scan_summary_kernel(ScanArgs<scalar_t, kBwd> a, linrec_acc_t<scalar_t>* end_state, linrec_acc_t<scalar_t>* prod) {
  using acc_t = linrec_acc_t<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t P = a.D / V;
  if (idx >= a.B * a.NC * P) return;
  const int64_t d = V * (idx % P), k = (idx / P) % a.NC, b = idx / (P * a.NC);
  const int64_t base = b * a.T * a.D + d;
  int64_t first, count;
  chunk_range(k, a.L, a.T, a.dir, first, count);
  // Pointers to the chunk's first step, advanced by `step` per step: the loads need no 64-bit index arithmetic
  // or range tests. The coefficient of step t is c[t] forward and c[t − dir] backward (the step visited
  // before); the latter falls outside [0, T) only at the backward scan's very first step (`c_zero`: 0).
  const int64_t step = a.dir * a.D;
  const scalar_t* xp = a.x + base + first * a.D;
  const scalar_t* cp = a.c + base + (first - (kBwd ? a.dir : 0)) * a.D;
  const bool c_zero = kBwd && k == 0;
  acc_t h[V], p[V];
#pragma unroll
  for (int j = 0; j < V; ++j) h[j] = 0, p[j] = 1;
  for (int64_t s0 = 0; s0 < count; s0 += kBatch) {
    acc_t cv[kBatch][V], xv[kBatch][V];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const bool in = s0 + u < count;
      load_or_fill<V>(in && !(c_zero && s0 + u == 0), cp + (s0 + u) * step, !in ? acc_t(1) : acc_t(0), cv[u]);
      load_or_fill<V>(in, xp + (s0 + u) * step, acc_t(0), xv[u]);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (s0 + u >= count) break;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        h[j] = cv[u][j] * h[j] + xv[u][j];
        p[j] *= cv[u][j];
      }
    }
  }
  const int64_t row = (b * a.NC + k) * a.D + d;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    end_state[row + j] = h[j];
    prod[row + j] = p[j];
  }
}

// Phase 2: per (b, d), the incoming state of every chunk, in visit order.
template <typename acc_t>
__global__ void scan_carry_kernel(const acc_t* end_state, const acc_t* prod, acc_t* carry_in, int64_t B,
                                  int64_t NC, int64_t D) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * D) return;
  const int64_t d = idx % D, b = idx / D;
  acc_t carry = 0;
  for (int64_t k = 0; k < NC; ++k) {
    const int64_t i = (b * NC + k) * D + d;
    carry_in[i] = carry;
    carry = prod[i] * carry + end_state[i];
  }
}

// Phase 3 (or the whole scan when NC = 1): rescan each chunk from its incoming state, writing outputs.
template <typename scalar_t, bool kBwd, int V>
__global__ void __launch_bounds__(kThreads)
    scan_output_kernel(ScanArgs<scalar_t, kBwd> a, const linrec_acc_t<scalar_t>* carry_in) {
  using acc_t = linrec_acc_t<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t P = a.D / V;
  if (idx >= a.B * a.NC * P) return;
  const int64_t d = V * (idx % P), k = (idx / P) % a.NC, b = idx / (P * a.NC);
  const int64_t base = b * a.T * a.D + d;
  int64_t first, count;
  chunk_range(k, a.L, a.T, a.dir, first, count);
  const int64_t step = a.dir * a.D;
  const int64_t first_i = base + first * a.D;
  const scalar_t* xp = a.x + first_i;
  const scalar_t* cp = a.c + base + (first - (kBwd ? a.dir : 0)) * a.D;
  const bool c_zero = kBwd && k == 0;  // the backward scan's very first step has no coefficient
  // dc_t = du_t · y_{t+dir} (y_{t−1} for a forward-in-time recurrence); y_{t+dir} is past the end only at the
  // scan's last step, global step T − 1 (step s of chunk k is global step k·L + s).
  const scalar_t* yp = kBwd ? a.y + first_i + step : nullptr;
  const int64_t y_count = min(count, a.T - 1 - k * a.L);
  acc_t h[V];
  const int64_t row = (b * a.NC + k) * a.D + d;
#pragma unroll
  for (int j = 0; j < V; ++j) h[j] = carry_in != nullptr ? carry_in[row + j] : acc_t(0);
  for (int64_t s0 = 0; s0 < count; s0 += kBatch) {
    acc_t cv[kBatch][V], xv[kBatch][V], yv[kBwd ? kBatch : 1][V];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const bool in = s0 + u < count;
      load_or_fill<V>(in && !(c_zero && s0 + u == 0), cp + (s0 + u) * step, acc_t(0), cv[u]);
      load_or_fill<V>(in, xp + (s0 + u) * step, acc_t(0), xv[u]);
      if constexpr (kBwd) load_or_fill<V>(s0 + u < y_count, yp + (s0 + u) * step, acc_t(0), yv[u]);
    }
    scalar_t* op = a.out + first_i + s0 * step;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (s0 + u >= count) break;
      acc_t dcv[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        h[j] = cv[u][j] * h[j] + xv[u][j];
        if constexpr (kBwd) dcv[j] = h[j] * yv[u][j];
      }
      store_vec<scalar_t, V>(op + u * step, h);
      if constexpr (kBwd) store_vec<scalar_t, V>(a.dc + first_i + (s0 + u) * step, dcv);
    }
  }
}

template <typename scalar_t, bool kBwd, int V>
void run_scan_v(ScanArgs<scalar_t, kBwd> a, const at::Tensor& like) {
  using acc_t = linrec_acc_t<scalar_t>;
  auto stream = c10::cuda::getCurrentCUDAStream();
  a.NC = choose_chunks(a.B, a.T, a.D / V);
  a.L = (a.T + a.NC - 1) / a.NC;
  const int64_t n = a.B * a.NC * (a.D / V);
  if (n == 0) return;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  if (a.NC == 1) {
    scan_output_kernel<scalar_t, kBwd, V><<<blocks, kThreads, 0, stream>>>(a, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const auto acc_opts = like.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor end_state = at::empty({a.B, a.NC, a.D}, acc_opts);
  at::Tensor prod = at::empty({a.B, a.NC, a.D}, acc_opts);
  at::Tensor carry_in = at::empty({a.B, a.NC, a.D}, acc_opts);
  scan_summary_kernel<scalar_t, kBwd, V>
      <<<blocks, kThreads, 0, stream>>>(a, end_state.data_ptr<acc_t>(), prod.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t channels = a.B * a.D;
  scan_carry_kernel<acc_t><<<(channels + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      end_state.data_ptr<acc_t>(), prod.data_ptr<acc_t>(), carry_in.data_ptr<acc_t>(), a.B, a.NC, a.D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scan_output_kernel<scalar_t, kBwd, V><<<blocks, kThreads, 0, stream>>>(a, carry_in.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Two channels per thread in bfloat16 and float32 where D is even and every pointer is aligned to a pair
// (one 4- or 8-byte access per operand and step instead of two); one otherwise and in float64. At the A5 shape
// (512, 17, 1024) in bfloat16 one channel per thread took 23 µs forward and 51 µs backward (ncu), 1.6–2.3× its
// bytes' time, with B·D = 524 288 threads of 17 dependent steps.
template <typename scalar_t, bool kBwd>
void run_scan(ScanArgs<scalar_t, kBwd> a, const at::Tensor& like) {
  const auto paired = [&](const void* ptr) {
    return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % (2 * sizeof(scalar_t)) == 0;
  };
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (a.D % 2 == 0 && paired(a.x) && paired(a.c) && paired(a.y) && paired(a.out) && paired(a.dc)) {
      run_scan_v<scalar_t, kBwd, 2>(a, like);
      return;
    }
  }
  run_scan_v<scalar_t, kBwd, 1>(a, like);
}

}  // namespace

torch::Tensor linrec_fwd_cuda(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse) {
  detail::linrec_check_args("linrec_fwd_cuda", {{"inputs", inputs}, {"coeffs", coeffs}}, /*cpu_contiguous=*/false);
  TORCH_CHECK(inputs.is_cuda() && inputs.is_contiguous() && coeffs.is_contiguous(),
              "linrec_fwd_cuda: inputs and coeffs must be contiguous CUDA tensors");
  const c10::cuda::CUDAGuard guard(inputs.device());
  torch::Tensor out = torch::empty_like(inputs);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, inputs.scalar_type(), "linrec_fwd_cuda", [&] {
    ScanArgs<scalar_t, false> a{inputs.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), nullptr,
                                out.data_ptr<scalar_t>(), nullptr, inputs.size(0), inputs.size(1),
                                inputs.size(2), 1, 1, reverse ? -1 : 1};
    run_scan(a, inputs);
  });
  return out;
}

std::pair<torch::Tensor, torch::Tensor> linrec_bwd_cuda(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                        const torch::Tensor& outputs, bool reverse) {
  detail::linrec_check_args("linrec_bwd_cuda", {{"grad", grad}, {"coeffs", coeffs}, {"outputs", outputs}},
                            /*cpu_contiguous=*/false);
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous() && coeffs.is_contiguous() && outputs.is_contiguous(),
              "linrec_bwd_cuda: grad, coeffs and outputs must be contiguous CUDA tensors");
  const c10::cuda::CUDAGuard guard(grad.device());
  torch::Tensor du = torch::empty_like(grad);
  torch::Tensor dc = torch::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "linrec_bwd_cuda", [&] {
    // The backward of a forward-in-time scan runs backward in time, and vice versa.
    ScanArgs<scalar_t, true> a{grad.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), outputs.data_ptr<scalar_t>(),
                               du.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), grad.size(0), grad.size(1),
                               grad.size(2), 1, 1, reverse ? 1 : -1};
    run_scan(a, grad);
  });
  return {du, dc};
}

}  // namespace fprnn::ops
