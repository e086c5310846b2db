// The mixer part of FPRNN's differentiable step (spec §4, §7.1, §7.2) as one op, forward and backward:
//
//   y = (1 − λ) ⊙ (Q(raw) (b⊙x − h) + h)        per token (row), then the layer's scan of y with λ
//
//   a_i = act(raw[i·D : (i+1)·D]),  u_i = a_i / max(‖a_i‖, eps),  α_i = σ(raw[r·D + i])    (i < r)
//   Householder product:  Q = H_{r−1} ⋯ H_0,  H_i = I − 2 α_i u_i u_iᵀ  (applied in order i = 0, 1, …)
//   DPLR (sum form):      Q = I − 2 Σ_i α_i u_i u_iᵀ
//
// Layout contract: raw (N, ld) with unit column stride, ld ≥ r·D + r (its row stride may exceed ld: a column
// slice; columns from r·D + r on are padding: never read, and their gradient is zero); bx, h, oml (N, D). One
// dtype: float32, float64 or bfloat16 (computed in float32, outputs rounded once). act: identity, relu, silu.
//
// Backward for the upstream gradient gy (w_i: the vector after reflection i, w_{−1} = v = b⊙x − h;
// s_i = u_iᵀ w_{i−1} (product) or u_iᵀ v (sum); g = gy ⊙ (1 − λ)):
//   d(1 − λ) = gy ⊙ (Q v + h);  product form, i = r−1 … 0: t_i = u_iᵀ g, du_i = −2 α_i (s_i g + t_i w_{i−1}),
//   dα_i = −2 s_i t_i, g ← g − 2 α_i t_i u_i;  sum form: t_i = u_iᵀ g, du_i = −2 α_i (s_i g + t_i v),
//   dα_i = −2 s_i t_i, dv = g − 2 Σ α_i t_i u_i;  then da_i = (du_i − u_i (u_iᵀ du_i)) / ‖a_i‖ (du_i / eps where
//   ‖a_i‖ ≤ eps), with u_iᵀ du_i = −4 α_i s_i t_i;  d raw_u = da ⊙ act'(raw_u), d raw_α = dα α (1 − α);
//   d(b⊙x) = dv, dh = gy ⊙ (1 − λ) − dv.
#pragma once

#include <torch/torch.h>

#include <string>
#include <tuple>

namespace fprnn::ops {

struct MixStepSpec {
  int64_t rank = 1;
  std::string act = "identity";
  double eps = 1e-12;
  bool sum_form = false;
};

// Differentiable entry: gradients for raw, bx, h and oml. On CUDA (D ≤ 2048) the fused kernels; elsewhere the
// ATen composite.
torch::Tensor mix_step(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                       const torch::Tensor& oml, const MixStepSpec& spec);

// The ATen composite (differentiable by ATen's autograd): the path off the GPU.
torch::Tensor mix_step_aten(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                            const torch::Tensor& oml, const MixStepSpec& spec);

// Plain loops in float64, never optimised: the reference. Results float64 on the CPU; the backward returns
// (draw (N, ld), dbx, dh, doml).
torch::Tensor mix_step_fwd_ref(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                               const torch::Tensor& oml, const MixStepSpec& spec);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> mix_step_bwd_ref(
    const torch::Tensor& gy, const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
    const torch::Tensor& oml, const MixStepSpec& spec);

// CUDA kernels (mix_step_cuda.cu): raw (N, ld) as above, bx, h, oml, gy contiguous (N, D), D ≤ 2048, rank ≤ 16.
// One thread block per token (the backward's block: D/8 threads of 8 consecutive channels where D, the row
// strides and the pointers allow 16-byte vectors in float32 and bfloat16, else 256 threads). Without CUDA they
// throw.
torch::Tensor mix_step_fwd_cuda(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                                const torch::Tensor& oml, const MixStepSpec& spec);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> mix_step_bwd_cuda(
    const torch::Tensor& gy, const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
    const torch::Tensor& oml, const MixStepSpec& spec);

// Whether the CUDA kernels take this width and rank.
bool mix_step_cuda_fits(int64_t D, int64_t rank);

}  // namespace fprnn::ops
