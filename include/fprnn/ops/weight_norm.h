// Weight-normalised matrices stacked by rows, zero-padded, cast and cut into column blocks, as one op:
//
//   W = [w_0; w_1; …; 0],   w_i = g_i ⊙ v_i / ‖v_i‖  (each row of v_i scaled by its own g / ‖row‖),
//
// with zero rows appended up to `rows`, cast to `dtype`, and returned as `blocks` column blocks of equal width
// (each contiguous). Without g (an empty list) w_i = v_i: the same stacking for plain weights.
//
// This is how a layer assembles the mixer projection's weight on a GPU (HouseholderMixer::padded_projection):
// two weight-normalised Linears (the directions and the α rows), padded to a multiple of 8 rows for cuBLAS and
// split into the x and h halves of [x_mix, shift(h)]. Written with ATen ops that is a norm, a division, a
// product, a cast, a concatenation and two column slices forward, and a dozen full passes over the weight
// backward (the slices' zero-filled gradients, their sum, the cast, the product, the norm): ≈ 0.26 ms per
// training step at the LM-like shape on an H200, for a 1544 × 3072 weight.
//
// Backward, per row with n = ‖v‖ and s = Σ_j v_j dW_j (dW the row's gradient gathered from the blocks):
//   dg = s / n,   dv = (g / n) (dW − v s / n²);   without g: dv = dW.
// Zero rows get no gradient. Undefined block gradients count as zeros.
//
// Dtypes: v (and g) float32 or float64, one dtype; dtype float32, float64, bfloat16 or float16. Gradients come
// back in v's dtype. On CUDA one kernel forward (a block per row) and one backward; elsewhere the ATen composite.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace fprnn::ops {

// v: matrices (rows_i, K); g: empty, or one (rows_i, 1) or (rows_i) per v; rows ≥ Σ rows_i; blocks ≥ 1 divides K.
// Differentiable in v and g.
std::vector<torch::Tensor> weight_norm_blocks(const std::vector<torch::Tensor>& v, const std::vector<torch::Tensor>& g,
                                              int64_t rows, int64_t blocks, torch::Dtype dtype);

// The ATen composite (differentiable by ATen's autograd): the CPU path.
std::vector<torch::Tensor> weight_norm_blocks_aten(const std::vector<torch::Tensor>& v,
                                                   const std::vector<torch::Tensor>& g, int64_t rows, int64_t blocks,
                                                   torch::Dtype dtype);

// Plain loops in float64, never optimised: the references. The forward returns the whole W (rows, K) in float64
// (before the cast); the backward takes W's gradient (rows, K) (any dtype; its zero rows' part is ignored) and
// returns (dv_i…, dg_i…) in float64, dg_i shaped like g_i.
torch::Tensor weight_norm_fwd_ref(const std::vector<torch::Tensor>& v, const std::vector<torch::Tensor>& g,
                                  int64_t rows);
std::vector<torch::Tensor> weight_norm_bwd_ref(const torch::Tensor& dW, const std::vector<torch::Tensor>& v,
                                               const std::vector<torch::Tensor>& g);

// CUDA kernels (weight_norm_cuda.cu): contiguous v_i (rows_i, K), g_i (rows_i) contiguous or empty list, at most
// kWeightNormMaxSources sources and kWeightNormMaxBlocks blocks; the backward's dW blocks contiguous (rows, K /
// blocks) in `dtype` of the forward or undefined. Returns the blocks / (dv_i…, dg_i… as (rows_i)). Without CUDA
// they throw.
constexpr int kWeightNormMaxSources = 4;
constexpr int kWeightNormMaxBlocks = 4;
std::vector<torch::Tensor> weight_norm_fwd_cuda(const std::vector<torch::Tensor>& v,
                                                const std::vector<torch::Tensor>& g, int64_t rows, int64_t blocks,
                                                torch::Dtype dtype);
std::vector<torch::Tensor> weight_norm_bwd_cuda(const std::vector<torch::Tensor>& dW_blocks,
                                                const std::vector<torch::Tensor>& v,
                                                const std::vector<torch::Tensor>& g);

}  // namespace fprnn::ops
