// ssd: the Mamba-2 state-space recurrence (SSD, spec §6, §10) with a scalar decay per head and B, C shared by
// the heads of a group (head h reads group g(h) = h / (H / G), mamba's layout):
//   Δ_t[h]     = softplus(dt_t[h] + dt_bias[h])                        (softplus(z) = z for z > 20, as mamba)
//   a_t[h]     = exp(Δ_t[h] · A[h])
//   S_t[h]     = a_t[h] · S_{t−1}[h] + Δ_t[h] · x_t[h,:] ⊗ B_t[g(h),:]      (S: P × N per head, S_{−1} = 0)
//   y_t[h,p]   = Σ_n S_t[h][p,n] · C_t[g(h),n] + D_skip[h] · x_t[h,p]
//
// Layout contract: x (B, T, H, P); dt (B, T, H); A (H); Bm, Cm (B, T, G, N) with G dividing H; D_skip, dt_bias
// (H). Any strides are accepted at the public entry (made contiguous there). One dtype for all: float32 or
// float64 (callers computing in bfloat16 cast to float32 first, as mamba's kernels compute in float32).
// Output y (B, T, H, P).
//
// Backward for the upstream gradient g (derivation in src/ops/ssd/README.md), per (b, h):
//   dS_t       = g_t C_tᵀ + a_{t+1} dS_{t+1}                      (reverse scan, P × N, dS_T = 0)
//   dC_t[g]    = Σ_{h∈g} S_tᵀ g_t          dB_t[g] = Σ_{h∈g} Δ_t dS_tᵀ x_t
//   dx_t       = Δ_t dS_t B_t + D_skip g_t                        dD_skip[h] = Σ_{b,t} g_t·x_t
//   da_t       = ⟨dS_t, S_{t−1}⟩            dΔ_t = da_t a_t A + x_tᵀ dS_t B_t
//   ddt_t      = dΔ_t σ(dt_t + dt_bias)    ddt_bias[h] = Σ_{b,t} ddt_t[h]    dA[h] = Σ_{b,t} da_t a_t Δ_t
#pragma once

#include <torch/torch.h>

namespace fprnn::ops {

// Gradients of the seven inputs, shaped like them.
struct SsdGrads {
  torch::Tensor dx, ddt, dA, dB, dC, dD_skip, ddt_bias;
};

// Differentiable entry (autograd function). CPU tensors run the kernels below (the backward recomputes the
// states from checkpoints instead of saving (B, T, H, P, N) of them); other devices run the recurrence as a
// loop of ATen ops over T (differentiable by ATen's autograd; correct but slow).
torch::Tensor ssd(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& Bm,
                  const torch::Tensor& Cm, const torch::Tensor& D_skip, const torch::Tensor& dt_bias);

// Plain loops in float64, never optimised: the reference the kernels are tested against. Results in the
// inputs' dtype and device.
torch::Tensor ssd_fwd_ref(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                          const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                          const torch::Tensor& dt_bias);
SsdGrads ssd_bwd_ref(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                     const torch::Tensor& dt_bias);

// The recurrence as ATen ops (a loop over T on (B, H, P, N) states), differentiable by autograd: the path for
// devices without a kernel, and a third, independent implementation for the tests.
torch::Tensor ssd_aten(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& Bm,
                       const torch::Tensor& Cm, const torch::Tensor& D_skip, const torch::Tensor& dt_bias);

// CPU kernels: contiguous CPU tensors of one dtype.
// Forward: one task per (b, h), a tight loop over T with the P × N state in a local buffer, SIMD along N.
// Backward: one task per (b, group); the heads of the group run one after the other, so that dB and dC (summed
// over the heads of a group) are accumulated in place in a fixed order. Per head, states are checkpointed every
// kSsdChunk steps on a first forward sweep and recomputed chunk by chunk during the reverse sweep. Sums over
// the batch (dA, dD_skip, ddt_bias) go through per-(b, h) partials reduced in a fixed order, so results do
// not depend on the number of threads.
torch::Tensor ssd_fwd_cpu(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                          const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                          const torch::Tensor& dt_bias);
SsdGrads ssd_bwd_cpu(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                     const torch::Tensor& dt_bias);

// Steps between state checkpoints in the CPU backward (exposed for the tests, which cross chunk boundaries).
constexpr int64_t kSsdChunk = 64;

}  // namespace fprnn::ops
