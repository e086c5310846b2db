// causal_conv1d per-element math shared by the reference and the CPU (later CUDA) kernels:
//   z = bias + Σ_k w_k · x_{t−K+1+k},  y = act(z),  gz = g · act'(z),  SiLU: act(z) = z σ(z), act' = σ (1 + z (1 − σ)).
// Layout contract: x, y, grad (B, T, C) contiguous; weight (C, K) (or (C, 1, K), the same memory); bias (C).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace fprnn::ops::detail {

// Accumulation type: float for bfloat16 (the stored outputs are rounded back), the type itself otherwise.
template <typename scalar_t>
using conv1d_acc_t = at::opmath_type<scalar_t>;

// σ(z) from e = exp(−z): the caller picks the exp (exact for float64, a vectorisable polynomial for float).
template <typename T>
C10_HOST_DEVICE inline T conv1d_sigmoid(T exp_neg_z) {
  return T(1) / (T(1) + exp_neg_z);
}

// SiLU from the pre-activation z and s = σ(z).
template <typename T>
C10_HOST_DEVICE inline T conv1d_silu(T z, T s) {
  return z * s;
}

// The pre-activation's gradient through SiLU: g · d(z σ(z))/dz = g · σ (1 + z (1 − σ)).
template <typename T>
C10_HOST_DEVICE inline T conv1d_silu_grad(T g, T z, T s) {
  return g * (s * (T(1) + z * (T(1) - s)));
}

// Sizes of one call; every index is int64_t.
struct Conv1dSizes {
  int64_t B = 0, T = 0, C = 0, K = 0;
};

// Checks every public causal_conv1d function's arguments (host only; defined in conv1d.cpp) and returns the
// sizes. Throws, naming `fn` and the offending sizes or dtypes, unless x is (B, T, C); weight is (C, K) or
// (C, 1, K) with K ≥ 1; bias is undefined or (C); grad (when defined) is (B, T, C); all share one dtype
// (float32, float64 or bfloat16) and one device. With `cpu_contiguous` they must also be contiguous CPU tensors
// (the kernels' contract).
Conv1dSizes conv1d_check_args(const char* fn, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& grad, bool cpu_contiguous);

// How the CUDA kernels split time: `count` chunks of `length` steps per sample (the last one shorter), enough
// (sample, chunk, channel group) threads to fill the GPU twice over (`sms` multiprocessors of `threads_per_sm`;
// a thread owns `per_thread` channels of one sample), chunks of at least 16 steps, at most `max_count` (the
// grid's limit on blockIdx.y over the sample groups). Every chunk starts inside [0, T): the count is recomputed
// from the length, so that no chunk lies past the end (where a kernel would read its look-back rows beyond the
// tensor). Host only; defined in conv1d.cpp.
struct Conv1dChunks {
  int64_t count = 1, length = 0;
};
Conv1dChunks conv1d_cuda_chunks(int64_t B, int64_t T, int64_t C, int64_t per_thread, int64_t sms,
                                 int64_t threads_per_sm, int64_t max_count);

// Test hook: with `on`, the CPU kernels run the baseline-ISA copy of their loops even where AVX2 is available
// (see conv1d_cpu.cpp), so that tests can compare the two copies on one machine. Defined in conv1d_cpu.cpp.
void conv1d_force_baseline_isa(bool on);

}  // namespace fprnn::ops::detail
