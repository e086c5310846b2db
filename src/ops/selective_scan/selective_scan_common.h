// selective_scan per-element math shared by the reference and the CPU kernels: softplus with mamba's
// threshold, the argument checks. Layout contract: see include/fprnn/ops/selective_scan.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>

namespace fprnn::ops::detail {

// Δ = softplus(z) = log(1 + eᶻ), and z itself above 20 (mamba's kernel and PyTorch's F.softplus threshold).
template <typename T>
inline T selective_scan_softplus(T z) {
  return z <= T(20) ? std::log1p(std::exp(z)) : z;
}

// dΔ/dz = σ(z) (1 above the threshold, where Δ = z).
template <typename T>
inline T selective_scan_softplus_grad(T z) {
  return z <= T(20) ? T(1) / (T(1) + std::exp(-z)) : T(1);
}

// Throws, naming `fn` and the offending sizes, unless u, dt (B, T, D), A (D, N), Bm, Cm (B, T, N), D_skip and
// dt_bias (D) [and grad (B, T, D) when defined] agree, are float32 or float64 of one dtype, on one device.
// With `cpu_contiguous`, they must also be contiguous CPU tensors (the kernels' contract).
void selective_scan_check_args(const char* fn, const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                               const at::Tensor& dt_bias, const at::Tensor& grad, bool cpu_contiguous);

}  // namespace fprnn::ops::detail
