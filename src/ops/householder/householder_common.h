// Shared pieces of the Householder/DPLR op: input checks, the reference backward and the per-token
// scalar math used by every backend. Layout contract: u (N, r, D), alpha (N, r), v and grad (N, D).
//
// One reflection step (w ← H_i w, H_i = I − 2α_i u_i u_iᵀ) with s = u_iᵀ w:   w ← w + c · u_i,  c = −2 α_i s.
// Its backward for the gradient gw of the step's output, with t = u_iᵀ gw (H_i is symmetric):
//   dw = gw − 2 α_i t u_i,   dα_i = −2 s t,   du_i = −2 α_i (s · gw + t · w).
// DPLR uses the same formulas with every s_i and t_i taken against the step-0 vectors v and g.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <tuple>

namespace fprnn::ops::detail {

// Sizes of one call; every index is int64_t.
struct HouseholderSizes {
  int64_t N = 0, r = 0, D = 0;
};

// Checks ranks, matching sizes, dtypes (float32 | float64 | bfloat16, all equal) and devices (CPU, or a
// clear "CUDA is not built" error). `op` ("householder" | "dplr") names the op in every message.
HouseholderSizes check_inputs(const char* op, const torch::Tensor& u, const torch::Tensor& alpha,
                              const torch::Tensor& v);
// check_inputs plus what the CPU kernels need: CPU, contiguous, float32 or float64; grad (if defined)
// must be (N, D) of the same dtype.
HouseholderSizes check_cpu_inputs(const char* op, const torch::Tensor& u, const torch::Tensor& alpha,
                                  const torch::Tensor& v, const torch::Tensor& grad = torch::Tensor());

// Reference backward (ATen ops, float64, never optimised, differentiable so it also serves double
// backward): returns (du (N, r, D), dalpha (N, r), dv (N, D)) in float64 for upstream gradient grad.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> householder_bwd_ref(const torch::Tensor& u,
                                                                            const torch::Tensor& alpha,
                                                                            const torch::Tensor& v,
                                                                            const torch::Tensor& grad);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> dplr_bwd_ref(const torch::Tensor& u,
                                                                     const torch::Tensor& alpha,
                                                                     const torch::Tensor& v,
                                                                     const torch::Tensor& grad);

// Coefficient of u_i in the forward update w ← w + c u_i.
template <typename T>
inline T reflect_coeff(T alpha, T s) {
  return T(-2) * alpha * s;
}

// Gradient of the loss with respect to α_i for s = u_iᵀ w and t = u_iᵀ gw.
template <typename T>
inline T reflect_dalpha(T s, T t) {
  return T(-2) * s * t;
}

// du_i = a · gw + b · w with (a, b) = (−2 α_i s, −2 α_i t).
template <typename T>
inline std::pair<T, T> reflect_du_coeffs(T alpha, T s, T t) {
  return {T(-2) * alpha * s, T(-2) * alpha * t};
}

}  // namespace fprnn::ops::detail
