// The fixed-point solver's residual (spec §8) as an op:
//
//   r_b = max_t max_d |y_btd − ŷ_btd| / (max_d |ŷ_btd| + eps)
//
// for y, ŷ (B, T, D) of one dtype, computed in float32 for bfloat16/float16/float32 inputs and in float64 for
// float64 ones (the widening happens element by element; nothing is copied), with NaN propagating into r_b.
// The solver asks for it once per iteration; on the GPU the ATen composite (two casts, a subtraction, two
// absolute values and three reductions over full-size temporaries) took about a tenth of an FP-Mamba1
// training step at length 128, the kernel reads y and ŷ once.
#pragma once

#include <torch/torch.h>

namespace fprnn::ops {

// Entry with checks: (B) float64 on y's device. CUDA tensors (contiguous, a CUDA build) run the kernel, the
// rest the composite below; both give the same bits.
torch::Tensor relative_residual(const torch::Tensor& y, const torch::Tensor& y_new, double eps);

// Reference: the ATen composite (any device, any strides) → (B) float64 on y's device.
torch::Tensor relative_residual_aten(const torch::Tensor& y, const torch::Tensor& y_new, double eps);

// CUDA kernel on contiguous CUDA tensors → (B) float64. Throws in a build without CUDA kernels.
torch::Tensor relative_residual_cuda(const torch::Tensor& y, const torch::Tensor& y_new, double eps);

}  // namespace fprnn::ops
