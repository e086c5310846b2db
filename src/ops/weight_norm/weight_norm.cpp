// weight_norm_blocks (include/fprnn/ops/weight_norm.h): argument checks, the ATen composite (the CPU path) and
// the autograd function over the CUDA kernels.
#include "fprnn/ops/weight_norm.h"

#include <torch/autograd.h>

namespace fprnn::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool is_out_dtype(torch::Dtype t) {
  return t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kBFloat16 || t == torch::kFloat16;
}

// Sizes, dtypes and devices as the header states; returns Σ rows_i.
int64_t check_args(const std::vector<torch::Tensor>& v, const std::vector<torch::Tensor>& g, int64_t rows,
                   int64_t blocks, torch::Dtype dtype) {
  TORCH_CHECK(!v.empty(), "weight_norm_blocks: no matrices given");
  TORCH_CHECK(g.empty() || g.size() == v.size(), "weight_norm_blocks: ", g.size(), " norms g for ", v.size(),
              " matrices v (give one per matrix, or none)");
  const torch::Tensor& v0 = v.front();
  TORCH_CHECK(v0.defined() && v0.dim() == 2 && v0.size(1) > 0, "weight_norm_blocks: v[0] must be a (rows, K) matrix ",
              "with K > 0, got ", v0.defined() ? v0.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(v0.scalar_type() == torch::kFloat32 || v0.scalar_type() == torch::kFloat64,
              "weight_norm_blocks: v must be float32 or float64, got ", v0.scalar_type());
  const int64_t K = v0.size(1);
  int64_t total = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const torch::Tensor& t = v[i];
    TORCH_CHECK(t.defined() && t.dim() == 2 && t.size(1) == K, "weight_norm_blocks: v[", i, "] must be (rows, ", K,
                "), got ", t.defined() ? t.sizes() : c10::IntArrayRef{});
    TORCH_CHECK(t.scalar_type() == v0.scalar_type() && t.device() == v0.device(), "weight_norm_blocks: v[", i,
                "] is ", t.scalar_type(), " on ", t.device(), ", v[0] ", v0.scalar_type(), " on ", v0.device());
    if (!g.empty()) {
      TORCH_CHECK(g[i].defined() && g[i].numel() == t.size(0) && (g[i].dim() == 1 || (g[i].dim() == 2 && g[i].size(1) == 1)),
                  "weight_norm_blocks: g[", i, "] must be (", t.size(0), ", 1) or (", t.size(0), "), got ",
                  g[i].defined() ? g[i].sizes() : c10::IntArrayRef{});
      TORCH_CHECK(g[i].scalar_type() == v0.scalar_type() && g[i].device() == v0.device(), "weight_norm_blocks: g[",
                  i, "] is ", g[i].scalar_type(), " on ", g[i].device(), ", v ", v0.scalar_type(), " on ",
                  v0.device());
    }
    total += t.size(0);
  }
  TORCH_CHECK(rows >= total, "weight_norm_blocks: rows = ", rows, " is fewer than the matrices' ", total, " rows");
  TORCH_CHECK(blocks >= 1 && K % blocks == 0, "weight_norm_blocks: ", blocks, " column blocks do not divide K = ", K);
  TORCH_CHECK(is_out_dtype(dtype), "weight_norm_blocks: dtype must be float32, float64, bfloat16 or float16, got ",
              dtype);
  return total;
}

struct WeightNormBlocksFunction : public torch::autograd::Function<WeightNormBlocksFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList v, at::TensorList g, int64_t rows, int64_t blocks,
                               int64_t dtype) {
    std::vector<torch::Tensor> vc, gc;
    for (const auto& t : v) vc.push_back(t.contiguous());
    for (const auto& t : g) gc.push_back(t.contiguous().view({-1}));
    std::vector<torch::Tensor> saved = vc;
    saved.insert(saved.end(), gc.begin(), gc.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["sources"] = static_cast<int64_t>(v.size());
    ctx->saved_data["dtype"] = dtype;
    std::vector<int64_t> g_numel_dims;
    for (const auto& t : g) g_numel_dims.push_back(t.dim());
    ctx->saved_data["g_dims"] = g_numel_dims;
    return weight_norm_fwd_cuda(vc, gc, rows, blocks, static_cast<torch::Dtype>(dtype));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!torch::GradMode::is_enabled(), "weight_norm_blocks: double backward is not supported on CUDA");
    const auto saved = ctx->get_saved_variables();
    const auto n = static_cast<size_t>(ctx->saved_data["sources"].toInt());
    const auto dtype = static_cast<torch::Dtype>(ctx->saved_data["dtype"].toInt());
    const std::vector<torch::Tensor> v(saved.begin(), saved.begin() + static_cast<std::ptrdiff_t>(n));
    const std::vector<torch::Tensor> g(saved.begin() + static_cast<std::ptrdiff_t>(n), saved.end());
    std::vector<torch::Tensor> dW;
    for (const auto& t : grads) dW.push_back(t.defined() ? t.to(dtype).contiguous() : t);
    const auto d = weight_norm_bwd_cuda(dW, v, g);
    const auto g_dims = ctx->saved_data["g_dims"].toIntVector();
    variable_list out(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(n));
    for (size_t i = 0; i < g.size(); ++i) {
      const torch::Tensor dg = d[n + i];
      out.push_back(g_dims[i] == 2 ? dg.view({-1, 1}) : dg);
    }
    out.insert(out.end(), 3, torch::Tensor());  // rows, blocks, dtype
    return out;
  }
};

}  // namespace

std::vector<torch::Tensor> weight_norm_blocks_aten(const std::vector<torch::Tensor>& v,
                                                   const std::vector<torch::Tensor>& g, int64_t rows, int64_t blocks,
                                                   torch::Dtype dtype) {
  const int64_t total = check_args(v, g, rows, blocks, dtype);
  const auto opt = v.front().options().dtype(dtype);
  // The ops (and their order) of Linear::weight() followed by the cast and the concatenation the mixer made
  // before this op existed.
  std::vector<torch::Tensor> parts;
  for (size_t i = 0; i < v.size(); ++i) {
    const torch::Tensor w = g.empty() ? v[i] : v[i] * (g[i].view({-1, 1}) / v[i].norm(2, /*dim=*/1, /*keepdim=*/true));
    parts.push_back(w.to(dtype));
  }
  if (rows > total) parts.push_back(torch::zeros({rows - total, v.front().size(1)}, opt));
  const torch::Tensor W = torch::cat(parts, 0);
  std::vector<torch::Tensor> out;
  for (const auto& b : W.chunk(blocks, 1)) out.push_back(b.contiguous());
  return out;
}

std::vector<torch::Tensor> weight_norm_blocks(const std::vector<torch::Tensor>& v, const std::vector<torch::Tensor>& g,
                                              int64_t rows, int64_t blocks, torch::Dtype dtype) {
  check_args(v, g, rows, blocks, dtype);
  if (!v.front().is_cuda()) return weight_norm_blocks_aten(v, g, rows, blocks, dtype);
  TORCH_CHECK(v.size() <= static_cast<size_t>(kWeightNormMaxSources) && blocks <= kWeightNormMaxBlocks,
              "weight_norm_blocks: at most ", kWeightNormMaxSources, " matrices and ", kWeightNormMaxBlocks,
              " column blocks on CUDA, got ", v.size(), " and ", blocks);
  return WeightNormBlocksFunction::apply(at::TensorList(v), at::TensorList(g), rows, blocks,
                                         static_cast<int64_t>(dtype));
}

#ifndef FPRNN_WITH_CUDA
std::vector<torch::Tensor> weight_norm_fwd_cuda(const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                                                int64_t, int64_t, torch::Dtype) {
  TORCH_CHECK(false, "weight_norm_fwd_cuda: this build has no CUDA kernels");
}
std::vector<torch::Tensor> weight_norm_bwd_cuda(const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                                                const std::vector<torch::Tensor>&) {
  TORCH_CHECK(false, "weight_norm_bwd_cuda: this build has no CUDA kernels");
}
#endif

}  // namespace fprnn::ops
