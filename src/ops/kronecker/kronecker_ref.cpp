// The Kronecker op's reference: the reference mixer's computation (spec §7.3) in ATen ops, as the layers ran it
// before the fused kernels; autograd differentiates it (the kernels' backward is tested against that).
#include "fprnn/ops/kronecker.h"

#include <torch/torch.h>

#include <cmath>
#include <vector>

namespace fprnn::ops {
namespace {

// F.normalize's default eps, used by the reference's power iteration.
constexpr double kPowerIterEps = 1e-12;
constexpr int64_t kPowerIters = 16;

torch::Tensor normalize_rows(const torch::Tensor& x, double eps) {
  return x / x.norm(2, -1, /*keepdim=*/true).clamp_min(eps);
}

torch::Tensor activation(const torch::Tensor& x, const std::string& act) {
  if (act == "silu") return torch::silu(x);
  if (act == "relu") return torch::relu(x);
  TORCH_CHECK(act == "identity", "kronecker: unknown activation '", act, "' (valid: identity, relu, silu)");
  return x;
}

// m (…, k, k), x (…, k) → m x (…, k).
torch::Tensor matvec(const torch::Tensor& m, const torch::Tensor& x) {
  return torch::matmul(m, x.unsqueeze(-1)).squeeze(-1);
}

// The reference's dominant-eigenvalue estimate of m (…, k, k) → (…, 1, 1): v = 1/√n, then alternately
// u = normalize(m v) (even steps) and v = normalize(m u) (odd steps), σ̂ = uᵀ m v. Differentiable.
torch::Tensor power_iteration(const torch::Tensor& m, int64_t n, int64_t iters) {
  std::vector<int64_t> shape(m.sizes().begin(), m.sizes().end() - 1);
  torch::Tensor v = torch::full(shape, 1.0 / std::sqrt(static_cast<double>(n)), m.options());
  torch::Tensor u = v;
  for (int64_t k = 0; k < iters; ++k) {
    if (k % 2 == 0) {
      u = normalize_rows(matvec(m, v), kPowerIterEps);
    } else {
      v = normalize_rows(matvec(m, u), kPowerIterEps);
    }
  }
  return (u * matvec(m, v)).sum(-1).unsqueeze(-1).unsqueeze(-1);
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> kronecker_factors_ref(const torch::Tensor& raw, const KroneckerSpec& spec) {
  const int64_t R = spec.raw_size(), m1 = spec.m1, m2 = spec.m2, k1 = spec.k1(), k2 = spec.k2();
  TORCH_CHECK(raw.dim() >= 1 && raw.size(-1) == R, "kronecker: raw must be (…, ", R, "), got ", raw.sizes());
  const std::vector<int64_t> lead(raw.sizes().begin(), raw.sizes().end() - 1);
  const torch::Tensor p = activation(raw.narrow(-1, 0, k1 + k2), spec.act);
  const torch::Tensor d = torch::sigmoid(raw.narrow(-1, k1 + k2, m1 + m2));

  // p_part (…, K) → the (…, m, m) factor before normalisation: L Lᵀ (symmetric) or the square itself.
  auto build = [&](const torch::Tensor& p_part, int64_t m) {
    std::vector<int64_t> square = lead;
    square.push_back(m);
    square.push_back(m);
    if (!spec.symmetric) return p_part.reshape(square);
    const torch::Tensor idx =
        torch::triu_indices(m, m, 0, torch::TensorOptions().dtype(torch::kLong).device(raw.device()));
    const torch::Tensor flat = idx[0] * m + idx[1];
    std::vector<int64_t> flat_shape = lead;
    flat_shape.push_back(m * m);
    const torch::Tensor L =
        torch::zeros(flat_shape, p_part.options()).index_copy(p_part.dim() - 1, flat, p_part).reshape(square);
    return torch::matmul(L, L.transpose(-1, -2));
  };
  torch::Tensor U = normalize_rows(build(p.narrow(-1, 0, k1), m1), spec.eps);
  torch::Tensor V = normalize_rows(build(p.narrow(-1, k1, k2), m2), spec.eps);
  if (spec.spectral) {
    U = U / (power_iteration(U, m1 * m2, kPowerIters) + spec.eps);
    V = V / (power_iteration(V, m1 * m2, kPowerIters) + spec.eps);
  }
  U = d.narrow(-1, 0, m1).unsqueeze(-1) * U;   // diag(d₁) U
  V = d.narrow(-1, m1, m2).unsqueeze(-1) * V;  // diag(d₂) V
  return {U, V};
}

torch::Tensor kronecker_fwd_ref(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec) {
  const int64_t n = spec.m1 * spec.m2;
  TORCH_CHECK(v.dim() >= 1 && v.size(-1) == n, "kronecker: v must be (…, ", n, "), got ", v.sizes());
  TORCH_CHECK(raw.dim() == v.dim() && raw.sizes().slice(0, raw.dim() - 1) == v.sizes().slice(0, v.dim() - 1),
              "kronecker: raw ", raw.sizes(), " and v ", v.sizes(), " must share their leading dimensions");
  const auto [U, V] = kronecker_factors_ref(raw, spec);
  const auto dt = torch::promote_types(raw.scalar_type(), v.scalar_type());
  std::vector<int64_t> mat(v.sizes().begin(), v.sizes().end() - 1);
  mat.push_back(spec.m1);
  mat.push_back(spec.m2);
  const torch::Tensor M = v.to(dt).reshape(mat);
  const torch::Tensor out =
      M - 2 * torch::matmul(torch::matmul(U.to(dt).transpose(-1, -2), M), V.to(dt).transpose(-1, -2));
  return out.reshape(v.sizes()).to(v.scalar_type());
}

}  // namespace fprnn::ops
