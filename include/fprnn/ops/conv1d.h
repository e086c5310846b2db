// causal_conv1d: depthwise causal convolution along time with an optional SiLU, fused in one pass:
//   y_t[c] = act( bias[c] + Σ_{k=0..K−1} weight[c, k] · x_{t−K+1+k}[c] ),   x_s = 0 for s < 0,
// act = SiLU (z·σ(z)) when `silu`, the identity otherwise.
//
// Layout contract: x (B, T, C), channels innermost; weight (C, K) or (C, 1, K) (PyTorch's Conv1d(C, C, K,
// groups = C) layout); bias (C) or undefined (no bias). Any strides are accepted at the public entry (made
// contiguous there). One dtype for all: float32, float64, or bfloat16 (computed in float32, outputs rounded to
// bfloat16). CPU and CUDA tensors run the fused kernels below; other devices run the same formula in ATen ops
// (differentiable by ATen's autograd).
//
// Backward for the upstream gradient g, with z_t the pre-activation and gz_t = g_t ⊙ act'(z_t):
//   dx_s[c] = Σ_k weight[c, k] · gz_{s+K−1−k}[c]   (gz_t = 0 for t ≥ T),
//   dweight[c, k] = Σ_{b, t} gz_t[c] · x_{t−K+1+k}[c],   dbias[c] = Σ_{b, t} gz_t[c].
#pragma once

#include <torch/torch.h>

#include <tuple>
#include <vector>

namespace fprnn::ops {

// Differentiable entry (autograd function on the CPU kernels; ATen ops elsewhere). Returns y (B, T, C).
torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            bool silu);

// n convolutions of the same x, differentiable: y_j = causal_conv1d(x, weight[j], bias[j], silu) for
// weight (n, C, K) (or (n, C, 1, K)), bias (n, C) or undefined, 1 ≤ n ≤ 4. On CUDA one kernel reads x once and
// writes the n outputs, and one backward kernel reads x and the n gradients once and writes dx = Σ_j dx_j
// (the layer's four input convolutions); elsewhere it is n calls of causal_conv1d.
std::vector<torch::Tensor> causal_conv1d_multi(const torch::Tensor& x, const torch::Tensor& weight,
                                               const torch::Tensor& bias, bool silu);

// causal_conv1d(cat({x1, x2}, -1), weight, bias, silu), differentiable, for x1 (B, T, C1), x2 (B, T, C2) and
// weight (C1 + C2, K): on CUDA without the concatenation (the kernels read channels c < C1 from x1, the rest from
// x2, and the backward writes dx1 and dx2 as two contiguous tensors, where the concatenation's backward gave
// strided slices that every later gradient sum read element by element); elsewhere the concatenation.
torch::Tensor causal_conv1d_pair(const torch::Tensor& x1, const torch::Tensor& x2, const torch::Tensor& weight,
                                 const torch::Tensor& bias, bool silu);

// Plain loops in float64, never optimised: the reference the kernels are tested against. Results are in the
// dtype and on the device of x.
torch::Tensor causal_conv1d_fwd_ref(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                    bool silu);
// Returns (dx (B, T, C), dweight shaped like weight, dbias (C), undefined when bias is) for upstream gradient
// `grad` (B, T, C).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_ref(const torch::Tensor& grad,
                                                                              const torch::Tensor& x,
                                                                              const torch::Tensor& weight,
                                                                              const torch::Tensor& bias, bool silu);

// CPU kernels: contiguous CPU tensors; parallel over (B × channel blocks), vectorised across C. The backward
// recomputes the pre-activation from x (nothing but the inputs is saved) and sums dweight, dbias over a fixed
// partition of B in a fixed order, so results do not depend on the number of threads.
torch::Tensor causal_conv1d_fwd_cpu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                    bool silu);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_cpu(const torch::Tensor& grad,
                                                                              const torch::Tensor& x,
                                                                              const torch::Tensor& weight,
                                                                              const torch::Tensor& bias, bool silu);

// CUDA kernels (conv1d_cuda.cu): contiguous CUDA tensors, the same contract and formulas as the CPU kernels;
// dweight and dbias are summed over fixed row chunks in a fixed order (deterministic). Without CUDA they throw.
torch::Tensor causal_conv1d_fwd_cuda(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                     bool silu);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_cuda(const torch::Tensor& grad,
                                                                               const torch::Tensor& x,
                                                                               const torch::Tensor& weight,
                                                                               const torch::Tensor& bias, bool silu);
// The n-convolution kernels behind causal_conv1d_multi (and, with n = 1, the two above): x (B, T, C)
// contiguous; weight (n, C, K) and bias (n, C) (or undefined) contiguous; 1 ≤ n ≤ 4, 1 ≤ K ≤ 16. The forward
// returns the n outputs; the backward takes the n output gradients (contiguous, like x) and returns
// dx = Σ_j dx_j (B, T, C), dweight (n, C, K) and dbias (n, C) (undefined without bias).
std::vector<torch::Tensor> causal_conv1d_multi_fwd_cuda(const torch::Tensor& x, const torch::Tensor& weight,
                                                        const torch::Tensor& bias, bool silu);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_multi_bwd_cuda(
    const std::vector<torch::Tensor>& grads, const torch::Tensor& x, const torch::Tensor& weight,
    const torch::Tensor& bias, bool silu);
// The pair's kernels: x1 (B, T, C1), x2 (B, T, C2) contiguous; weight (C, K) or (C, 1, K) and bias (C) (or
// undefined) contiguous, C = C1 + C2. The backward returns (dx1, dx2, dweight shaped like weight, dbias).
torch::Tensor causal_conv1d_pair_fwd_cuda(const torch::Tensor& x1, const torch::Tensor& x2,
                                          const torch::Tensor& weight, const torch::Tensor& bias, bool silu);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_pair_bwd_cuda(
    const torch::Tensor& grad, const torch::Tensor& x1, const torch::Tensor& x2, const torch::Tensor& weight,
    const torch::Tensor& bias, bool silu);

}  // namespace fprnn::ops
