// Householder-product and DPLR mixer application, per token (spec §7.1, §7.2).
//
//   householder:  v ← v − 2 α_i u_i (u_iᵀ v)  for i = 0, 1, …, r−1 in order, i.e. Q = H_{r−1}⋯H_0
//   dplr:         Q v = v − 2 Σ_i α_i u_i (u_iᵀ v)
//
// Layout contract: u (N, r, D) — the r directions of every token (unit vectors for the reference mixer,
// but any values are accepted); alpha (N, r); v (N, D). Returns Q v as (N, D). N = B·T tokens. Any
// strides are accepted at the public entry. Float32 and float64 (bfloat16 computed in float32).
// No D×D matrix is ever formed.
#pragma once

#include <torch/torch.h>

#include <tuple>

namespace fprnn::ops {

// Differentiable entries (autograd functions): gradients for u, alpha and v.
torch::Tensor householder_apply(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);
torch::Tensor dplr_apply(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);

// References (ATen ops, float64, never optimised).
torch::Tensor householder_fwd_ref(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);
torch::Tensor dplr_fwd_ref(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);

// CPU kernels on contiguous inputs. Backward returns (du, dalpha, dv) for upstream gradient g.
torch::Tensor householder_fwd_cpu(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> householder_bwd_cpu(const torch::Tensor& u,
                                                                            const torch::Tensor& alpha,
                                                                            const torch::Tensor& v,
                                                                            const torch::Tensor& grad);
torch::Tensor dplr_fwd_cpu(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> dplr_bwd_cpu(const torch::Tensor& u,
                                                                     const torch::Tensor& alpha,
                                                                     const torch::Tensor& v,
                                                                     const torch::Tensor& grad);

// CUDA kernels (contiguous CUDA float32/float64 inputs). In a build without CUDA they throw.
torch::Tensor householder_fwd_cuda(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> householder_bwd_cuda(const torch::Tensor& u,
                                                                             const torch::Tensor& alpha,
                                                                             const torch::Tensor& v,
                                                                             const torch::Tensor& grad);
torch::Tensor dplr_fwd_cuda(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> dplr_bwd_cuda(const torch::Tensor& u,
                                                                      const torch::Tensor& alpha,
                                                                      const torch::Tensor& v,
                                                                      const torch::Tensor& grad);

}  // namespace fprnn::ops
