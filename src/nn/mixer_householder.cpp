// Householder-product (spec §7.1) and DPLR (§7.2) mixers: raw (…, r·n + r) = [u part, reflection i in
// columns i·n..(i+1)·n | alpha part (r)]; u_i = normalize(act(raw_u,i), eps), α_i = σ(raw_α,i); v (…, n).
#include "fprnn/nn/mixer.h"

#include "fprnn/ops/householder.h"
#include "fprnn/ops/weight_norm.h"

#include <torch/torch.h>

#include <string>
#include <vector>

namespace fprnn::nn {
namespace {

void check_mixer_ac(const std::string& ac) {
  TORCH_CHECK(ac == "identity" || ac == "relu" || ac == "silu", "unknown mixer_ac '", ac,
              "' (valid: identity, relu, silu)");
}

}  // namespace

HouseholderMixerImpl::HouseholderMixerImpl(int64_t in_features, int64_t n, int64_t rank, const std::string& ac,
                                           int64_t proj_rank, double eps, bool weight_norm, bool sum_form)
    : MixerImpl(in_features, n), rank(rank), ac(ac), eps(eps), sum_form(sum_form) {
  const char* name = sum_form ? "dplr" : "householderproduct";
  TORCH_CHECK(in_features > 0 && n > 0, name, " mixer: in_features and n must be positive, got ", in_features,
              " and ", n);
  TORCH_CHECK(rank >= 1, name, " mixer: mixer_rank must be at least 1, got ", rank);
  TORCH_CHECK(eps > 0, name, " mixer: norm_eps must be positive, got ", eps);
  check_mixer_ac(ac);
  // Only the direction projection is low-rank; alpha_proj stays a full Linear with a bias (reference).
  u_proj = register_module("u_proj", Projection(in_features, rank * n, proj_rank, /*bias=*/false, weight_norm));
  alpha_proj = register_module("alpha_proj", Projection(in_features, rank, -1, /*bias=*/true, weight_norm));
}

int64_t padded_projection_rows(int64_t rows) {
  // 16 rather than 8: at the A5 shape (1025 rows) cuBLAS's iteration GEMM takes 1040 columns faster than 1032
  // (29.6 against 31.6 µs back to back, results/h200/mixscan_rows/gemm_shapes.txt; the graphed A5 17-iteration
  // row 2.811 → 2.798 ms, LM-like 5 iterations unchanged: results/h200/mixscan_bulk/ab_variant_pad.txt).
  return (rows + 15) / 16 * 16;
}

std::pair<std::vector<Tensor>, Tensor> HouseholderMixerImpl::padded_projection(torch::Dtype dtype,
                                                                             const torch::Device& device,
                                                                             int64_t blocks) {
  TORCH_CHECK(u_proj->stages.size() == 1, "padded_projection: the direction projection is low-rank");
  // Zero rows up to a multiple of 8: alpha_proj alone (r output columns) and a width of r·n + r both make
  // cuBLAS fall back to unaligned kernels, forward and backward, at several times the cost of the aligned GEMM.
  Linear& u = u_proj->stages.front();
  Linear& a = alpha_proj->stages.front();
  const int64_t rows = raw_size(), padded = padded_projection_rows(rows);
  const auto opt = torch::TensorOptions().dtype(dtype).device(device);
  // [0 (r·n), alpha's bias (r), 0 (pad)]: one cast and one pad (whose backward is a view of the gradient).
  const Tensor bias = at::constant_pad_nd(a->bias.to(opt), {rank * n, padded - rows});
  const Tensor& pv = u->weight_norm ? u->weight_v : u->weight_plain;
  const auto pt = pv.scalar_type();
  if (u->weight_norm == a->weight_norm && pv.device() == device && (pt == torch::kFloat32 || pt == torch::kFloat64)) {
    // One op: both weights normalised, stacked, padded, cast and cut into blocks (ops/weight_norm.h).
    std::vector<Tensor> v{pv, a->weight_norm ? a->weight_v : a->weight_plain}, g;
    if (u->weight_norm) g = {u->weight_g, a->weight_g};
    return {ops::weight_norm_blocks(v, g, padded, blocks, dtype), bias};
  }
  std::vector<Tensor> w{u->weight().to(opt), a->weight().to(opt)};
  if (padded > rows) w.push_back(torch::zeros({padded - rows, in_features}, opt));
  std::vector<Tensor> out;
  for (const auto& blk : torch::cat(w, 0).chunk(blocks, 1)) out.push_back(blk.contiguous());
  return {out, bias};
}

Tensor HouseholderMixerImpl::project_padded(const Tensor& param) {
  if (!param.is_cuda() || u_proj->stages.size() != 1) return project(param);
  // On the GPU one GEMM computes both parts, its output width padded (padded_projection).
  const auto [w, b] = padded_projection(param.scalar_type(), param.device(), 1);
  // As (rows, P) so that the bias is added by the GEMM (a batched input adds it in a separate pass).
  std::vector<int64_t> shape(param.sizes().begin(), param.sizes().end() - 1);
  shape.push_back(w[0].size(0));
  return torch::nn::functional::linear(param.reshape({-1, in_features}), w[0], b).view(shape);
}

Tensor HouseholderMixerImpl::project(const Tensor& param) {
  if (param.is_cuda() && u_proj->stages.size() == 1) return project_padded(param).narrow(-1, 0, raw_size());
  return torch::cat({u_proj->forward(param), alpha_proj->forward(param)}, -1);
}

std::pair<Tensor, Tensor> HouseholderMixerImpl::factors(const Tensor& raw) const {
  TORCH_CHECK(raw.dim() >= 1 && raw.size(-1) == raw_size(), sum_form ? "dplr" : "householderproduct",
              " mixer: raw must be (…, ", raw_size(), "), got ", raw.sizes());
  std::vector<int64_t> shape(raw.sizes().begin(), raw.sizes().end() - 1);
  shape.push_back(rank);
  const Tensor alpha = torch::sigmoid(raw.narrow(-1, rank * n, rank));
  shape.push_back(n);
  const Tensor u = l2_normalize(activation(raw.narrow(-1, 0, rank * n).reshape(shape), ac), -1, eps);
  return {u, alpha};
}

Tensor HouseholderMixerImpl::apply(const Tensor& raw, const Tensor& v) {
  const char* name = sum_form ? "dplr" : "householderproduct";
  TORCH_CHECK(v.dim() >= 1 && v.size(-1) == n, name, " mixer: v must be (…, ", n, "), got ", v.sizes());
  TORCH_CHECK(raw.dim() == v.dim() && raw.sizes().slice(0, raw.dim() - 1) == v.sizes().slice(0, v.dim() - 1),
              name, " mixer: raw ", raw.sizes(), " and v ", v.sizes(), " must share their leading dimensions");
  const auto [u, alpha] = factors(raw);
  // Computed in the promoted dtype of raw and v; the result has v's dtype.
  const auto dt = torch::promote_types(raw.scalar_type(), v.scalar_type());
  const int64_t N = v.numel() / n;
  const Tensor u2 = u.reshape({N, rank, n}).to(dt), a2 = alpha.reshape({N, rank}).to(dt);
  const Tensor v2 = v.reshape({N, n}).to(dt);
  const Tensor out = sum_form ? ops::dplr_apply(u2, a2, v2) : ops::householder_apply(u2, a2, v2);
  return out.reshape(v.sizes()).to(v.scalar_type());
}

}  // namespace fprnn::nn
