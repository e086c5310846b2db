// linrec: the diagonal linear recurrence  y_t = c_t ⊙ y_{t−1} + u_t  (y_{−1} = 0), spec §9.
// reverse = true runs from the end: y_t = c_t ⊙ y_{t+1} + u_t.
//
// Layout contract: inputs u and coeffs c are (B, T, D); the scan runs along T independently for every
// (b, d). Any strides are accepted at the public entry (made contiguous there). Supported dtypes:
// float32, float64, and bfloat16 (accumulated in float32, output rounded to bfloat16).
//
// Backward (for upstream gradient g):  du_t = g_t + c_{t+1} du_{t+1}  (the same scan, reversed, on the
// coefficients shifted by one step) and dc_t = du_t ⊙ y_{t−1}.
#pragma once

#include <torch/torch.h>

#include <utility>

namespace fprnn::ops {

// Differentiable entry (autograd function); dispatches to the fastest backend for the device.
torch::Tensor linrec(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse = false);

// Plain loops in float64, never optimised: the reference the kernels are tested against.
torch::Tensor linrec_fwd_ref(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse);
// Returns (d_inputs, d_coeffs) for upstream gradient `grad` and the forward `outputs`.
std::pair<torch::Tensor, torch::Tensor> linrec_bwd_ref(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                       const torch::Tensor& outputs, bool reverse);

// CPU kernels: contiguous (B, T, D) inputs; vectorised across D, parallel over (B × D-blocks).
torch::Tensor linrec_fwd_cpu(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse);
std::pair<torch::Tensor, torch::Tensor> linrec_bwd_cpu(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                       const torch::Tensor& outputs, bool reverse);

// CUDA kernels (chunked three-phase scan, float32 accumulation): contiguous CUDA (B, T, D) inputs. In a build
// without CUDA they exist but throw.
torch::Tensor linrec_fwd_cuda(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse);
std::pair<torch::Tensor, torch::Tensor> linrec_bwd_cuda(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                        const torch::Tensor& outputs, bool reverse);

}  // namespace fprnn::ops
