// ssd per-element math shared by the reference and the CPU kernels: softplus with mamba's threshold (the same
// as the selective scan's), the argument checks. Layout contract: see include/fprnn/ops/ssd.h.
#pragma once

#include "ops/selective_scan/selective_scan_common.h"

#include <ATen/core/Tensor.h>

namespace fprnn::ops::detail {

// Δ = softplus(z), and z itself above 20 (mamba_chunk_scan_combined's dt_softplus uses the same threshold).
template <typename T>
inline T ssd_softplus(T z) {
  return selective_scan_softplus(z);
}

// dΔ/dz = σ(z) (1 above the threshold).
template <typename T>
inline T ssd_softplus_grad(T z) {
  return selective_scan_softplus_grad(z);
}

// Throws, naming `fn` and the offending sizes, unless x (B, T, H, P), dt (B, T, H), A (H), Bm, Cm (B, T, G, N)
// with G dividing H, D_skip and dt_bias (H) [and grad (B, T, H, P) when defined] agree, are float32 or float64
// of one dtype, on one device. With `cpu_contiguous`, they must also be contiguous CPU tensors.
void ssd_check_args(const char* fn, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                    const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip, const at::Tensor& dt_bias,
                    const at::Tensor& grad, bool cpu_contiguous);

}  // namespace fprnn::ops::detail
