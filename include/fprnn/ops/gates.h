// The FPRNN layer's elementwise gates around its projections (spec §4), each fused into one pass forward and
// one backward on a GPU:
//
//   input_gates:    bx = silu(b) ⊙ x,   λ = σ(l + l_bias),   1 − λ
//       (b = b_proj(x_b), l = lambda_proj(x_λ) without its bias; the three outputs of FPRNN's prepare)
//   gated_rmsnorm:  g = silu(z) ⊙ silu(c) ⊙ h,   y = w ⊙ g / √(mean_D(g²) + eps)
//       (c = c_proj(x_c) before its SiLU; FPRNN's output norm, RMSNorm(silu(z) ⊙ (c ⊙ h)))
//
// Layout contract: every activation (…, D) with the channels innermost; l_bias and w (D). gated_rmsnorm's z may
// be a column slice of a wider tensor (its rows strided, as FPRNN's z is half of the input projection); every
// other argument is made contiguous at the entry. Dtypes: float32, float64 or bfloat16 activations (one dtype;
// bfloat16 is computed in float32, outputs rounded to bfloat16); w may be float32 for bfloat16 activations (a
// float32 parameter), and its gradient has w's dtype.
//
// Backward, with s(v) = σ(v), silu'(v) = s(v)(1 + v(1 − s(v))):
//   input_gates:   db = g_bx ⊙ x ⊙ silu'(b),   dx = g_bx ⊙ silu(b),   dl = (g_λ − g_{1−λ}) ⊙ λ(1 − λ),
//                  dl_bias = Σ_rows dl
//   gated_rmsnorm: r = (mean(g²) + eps)^{-1/2}, S = Σ_d gy_d w_d g_d (per row):
//                  dg = r w ⊙ gy − (r³ S / D) g,   dw = Σ_rows r g ⊙ gy,
//                  dz = dg ⊙ silu(c) h silu'(z),   dc = dg ⊙ silu(z) h silu'(c),   dh = dg ⊙ silu(z) silu(c)
//
// On the CPU (and wherever there is no kernel) the entries run the ATen composites below, which are the ops the
// layer ran before these existed (so CPU results are unchanged); on CUDA the fused kernels.
#pragma once

#include <torch/torch.h>

#include <tuple>

namespace fprnn::ops {

// Differentiable entries. input_gates returns (bx, λ, 1 − λ); gated_rmsnorm returns y (the dtype of z).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates(const torch::Tensor& b, const torch::Tensor& x,
                                                                    const torch::Tensor& l,
                                                                    const torch::Tensor& l_bias);
torch::Tensor gated_rmsnorm(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                            const torch::Tensor& weight, double eps);

// b + x wᵀ for rows x (N, K), w (M, K) and b (M), differentiable (the layer's mixer projection of x_mix). On CUDA
// the bias gradient Σ_rows g is column_sum_cuda (one pass, fixed order) instead of ATen's reduction, which took
// 30 µs for (8704, 1032) in bfloat16 on an H200; elsewhere, and the forward everywhere, torch::addmm.
torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

// The ATen composites (differentiable by ATen's autograd): the CPU path.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_aten(const torch::Tensor& b,
                                                                         const torch::Tensor& x,
                                                                         const torch::Tensor& l,
                                                                         const torch::Tensor& l_bias);
torch::Tensor gated_rmsnorm_aten(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                                 const torch::Tensor& weight, double eps);

// Plain loops in float64, never optimised: the references. Results in float64 on the CPU. Undefined upstream
// gradients count as zeros.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_fwd_ref(const torch::Tensor& b,
                                                                            const torch::Tensor& x,
                                                                            const torch::Tensor& l,
                                                                            const torch::Tensor& l_bias);
// Returns (db, dx, dl, dl_bias).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> input_gates_bwd_ref(
    const torch::Tensor& g_bx, const torch::Tensor& g_lambda, const torch::Tensor& g_one_minus, const torch::Tensor& b,
    const torch::Tensor& x, const torch::Tensor& l, const torch::Tensor& l_bias);
torch::Tensor gated_rmsnorm_fwd_ref(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                                    const torch::Tensor& weight, double eps);
// Returns (dz, dc, dh, dweight).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> gated_rmsnorm_bwd_ref(
    const torch::Tensor& gy, const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
    const torch::Tensor& weight, double eps);

// CUDA kernels (gates_cuda.cu). input_gates: contiguous b, x, l (N, D) and l_bias (D), one dtype; the backward
// takes λ (the forward's output) instead of l and l_bias, and any of the three upstream gradients may be
// undefined. gated_rmsnorm: z (N, D) with unit column stride and any row stride, c, h, gy contiguous (N, D), w (D)
// contiguous in the accumulation dtype (float32, or float64 for float64 activations); dweight is summed over
// fixed row sets in a fixed order (deterministic) and returned in that dtype. gated_rmsnorm runs a block per row
// (a thread per 16 bytes of the row) where D is 32 to 512 such threads and the rows are 16-byte aligned, else a
// warp per row; `block_per_row = false` forces the warp kernels (the tests compare the two). Without CUDA they
// throw.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_fwd_cuda(const torch::Tensor& b,
                                                                             const torch::Tensor& x,
                                                                             const torch::Tensor& l,
                                                                             const torch::Tensor& l_bias);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> input_gates_bwd_cuda(
    const torch::Tensor& g_bx, const torch::Tensor& g_lambda, const torch::Tensor& g_one_minus, const torch::Tensor& b,
    const torch::Tensor& x, const torch::Tensor& lambda);
torch::Tensor gated_rmsnorm_fwd_cuda(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                                     const torch::Tensor& weight, double eps, bool block_per_row = true);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> gated_rmsnorm_bwd_cuda(
    const torch::Tensor& gy, const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
    const torch::Tensor& weight, double eps, bool block_per_row = true);
// Σ over the rows of a contiguous (N, D) matrix, (D) in the accumulation dtype (float32; float64 for float64):
// partial sums over fixed row slabs, each in a fixed order, then summed in a fixed order (deterministic).
torch::Tensor column_sum_cuda(const torch::Tensor& m);

}  // namespace fprnn::ops
