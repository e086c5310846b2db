// selective_scan: the Mamba-1 selective state-space recurrence (spec §5.2, §10), one group of B/C for all
// channels:
//   Δ_t[d]   = softplus(dt_t[d] + dt_bias[d])                       (softplus(z) = z for z > 20, as mamba)
//   s_t[d,n] = exp(Δ_t[d]·A[d,n]) · s_{t−1}[d,n] + Δ_t[d] · B_t[n] · u_t[d]        (s_{−1} = 0)
//   y_t[d]   = Σ_n C_t[n] · s_t[d,n] + D_skip[d] · u_t[d]
//
// Layout contract: u, dt (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D). Any strides are accepted at
// the public entry (made contiguous there). One dtype for all: float32 or float64 (callers computing in
// bfloat16 cast to float32 first). Output y (B, T, D).
//
// Backward for the upstream gradient g (a_t = exp(Δ_t A), per (b, d, n); see src/ops/selective_scan/README.md):
//   ds_t  = g_t C_t + a_{t+1} ds_{t+1}                    (reverse scan, ds_T = 0)
//   dC_t[n]   = Σ_d g_t[d] s_t[d,n]          dB_t[n] = Σ_d ds_t[d,n] Δ_t[d] u_t[d]
//   du_t[d]   = Σ_n ds_t Δ_t B_t[n] + D_skip g_t         dD_skip[d] = Σ_{b,t} g_t u_t
//   dΔ_t[d]   = Σ_n ds_t (s_{t−1} a_t A[d,n] + B_t[n] u_t)
//   ddt_t     = dΔ_t σ(dt_t + dt_bias)      ddt_bias[d] = Σ_{b,t} ddt_t[d]
//   dA[d,n]   = Σ_{b,t} ds_t s_{t−1} a_t Δ_t
#pragma once

#include <torch/torch.h>

namespace fprnn::ops {

// Gradients of the seven inputs, shaped like them.
struct SelectiveScanGrads {
  torch::Tensor du, ddt, dA, dB, dC, dD_skip, ddt_bias;
};

// Differentiable entry (autograd function). CPU tensors run the CPU kernels below, CUDA tensors the CUDA
// kernels (in a CUDA build, d_state ≤ 64); the backward recomputes the states instead of saving (B, T, D, N) of
// them. Anything else runs the recurrence as a loop of ATen ops over T (differentiable by ATen's autograd;
// correct but slow).
torch::Tensor selective_scan(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                             const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                             const torch::Tensor& dt_bias);

// Plain loops in float64, never optimised: the reference the kernels are tested against. Results in the
// inputs' dtype and device.
torch::Tensor selective_scan_fwd_ref(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                     const torch::Tensor& dt_bias);
SelectiveScanGrads selective_scan_bwd_ref(const torch::Tensor& grad, const torch::Tensor& u, const torch::Tensor& dt,
                                          const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                                          const torch::Tensor& D_skip, const torch::Tensor& dt_bias);

// The recurrence as ATen ops (a loop over T on (B, D, N) states), differentiable by autograd: the path for
// devices without a kernel, and a third, independent implementation for the tests.
torch::Tensor selective_scan_aten(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                  const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                  const torch::Tensor& dt_bias);

// CPU kernels: contiguous CPU tensors of one dtype. Parallel over (b, channel block), SIMD across channels,
// the N states of a block in a local buffer. The backward re-runs the forward of its block into a (T, N, block)
// buffer, then scans back; the sums over channels (dB, dC) and over the batch (dA, dD_skip, ddt_bias) are taken
// over fixed partitions in a fixed order, so results do not depend on the number of threads.
torch::Tensor selective_scan_fwd_cpu(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                     const torch::Tensor& dt_bias);
SelectiveScanGrads selective_scan_bwd_cpu(const torch::Tensor& grad, const torch::Tensor& u, const torch::Tensor& dt,
                                          const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                                          const torch::Tensor& D_skip, const torch::Tensor& dt_bias);

// CUDA kernels (one thread per channel, states in registers; the backward re-runs the forward with a
// checkpoint every 16 steps; sums over channels and the batch are taken without atomics, in a fixed order):
// contiguous CUDA tensors, float32 or float64, d_state ≤ 64 (selective_scan_cuda_supports). In a build without
// CUDA they exist but throw, and selective_scan_cuda_supports is false.
bool selective_scan_cuda_supports(int64_t d_state);
torch::Tensor selective_scan_fwd_cuda(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                      const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                      const torch::Tensor& dt_bias);
SelectiveScanGrads selective_scan_bwd_cuda(const torch::Tensor& grad, const torch::Tensor& u, const torch::Tensor& dt,
                                           const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                                           const torch::Tensor& D_skip, const torch::Tensor& dt_bias);

}  // namespace fprnn::ops
