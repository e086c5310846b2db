// Kronecker-product mixer (spec §7.3): Q v = vec(M − 2 Uᵀ M Vᵀ), M the row-major (m1, m2) view of v,
// i.e. Q = I − 2 (Uᵀ ⊗ V). raw (…, K1 + K2 + m1 + m2) = [uv part: factor 1 (K1), factor 2 (K2) | diag part:
// d1 (m1), d2 (m2)], K = m(m+1)/2 upper-triangular entries in row-major (triu_indices) order when symmetric,
// m² row-major entries otherwise; v (…, n).
#include "fprnn/nn/mixer.h"

#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

namespace fprnn::nn {
namespace {

// F.normalize's default eps, used by the reference's power iteration.
constexpr double kPowerIterEps = 1e-12;
constexpr int64_t kPowerIters = 16;

void check_mixer_ac(const std::string& ac) {
  TORCH_CHECK(ac == "identity" || ac == "relu" || ac == "silu", "unknown mixer_ac '", ac,
              "' (valid: identity, relu, silu)");
}

// m (…, k, k), x (…, k) → m x (…, k).
Tensor matvec(const Tensor& m, const Tensor& x) { return torch::matmul(m, x.unsqueeze(-1)).squeeze(-1); }

// The reference's dominant-eigenvalue estimate of m (…, k, k) → (…, 1, 1): v = 1/√n, then alternately
// u = normalize(m v) (even steps) and v = normalize(m u) (odd steps), σ̂ = uᵀ m v. Differentiable.
Tensor power_iteration(const Tensor& m, int64_t n, int64_t iters) {
  std::vector<int64_t> shape(m.sizes().begin(), m.sizes().end() - 1);
  Tensor v = torch::full(shape, 1.0 / std::sqrt(static_cast<double>(n)), m.options());
  Tensor u = v;
  for (int64_t k = 0; k < iters; ++k) {
    if (k % 2 == 0) {
      u = l2_normalize(matvec(m, v), -1, kPowerIterEps);
    } else {
      v = l2_normalize(matvec(m, u), -1, kPowerIterEps);
    }
  }
  return (u * matvec(m, v)).sum(-1).unsqueeze(-1).unsqueeze(-1);
}

}  // namespace

std::pair<int64_t, int64_t> kronecker_factors(int64_t n) {
  TORCH_CHECK(n >= 1, "kronecker mixer: width must be positive, got ", n);
  int64_t root = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (root * root > n) --root;
  while ((root + 1) * (root + 1) <= n) ++root;
  for (int64_t a = root; a >= 1; --a)
    if (n % a == 0) return {a, n / a};
  return {1, n};
}

KroneckerMixerImpl::KroneckerMixerImpl(int64_t in_features, int64_t n, const std::string& ac, int64_t proj_rank,
                                       double eps, bool weight_norm, const std::string& normalization,
                                       bool symmetric)
    : MixerImpl(in_features, n), ac(ac), normalization(normalization), eps(eps), symmetric(symmetric) {
  TORCH_CHECK(in_features > 0 && n > 0, "kronecker mixer: in_features and n must be positive, got ", in_features,
              " and ", n);
  TORCH_CHECK(eps > 0, "kronecker mixer: norm_eps must be positive, got ", eps);
  check_mixer_ac(ac);
  TORCH_CHECK(normalization == "spectral" || normalization == "column-wise", "unknown kronecker_normalization '",
              normalization, "' (valid: spectral, column-wise)");
  std::tie(m1, m2) = kronecker_factors(n);
  const int64_t uv = raw_size() - m1 - m2;
  // Only the factor projection is low-rank; diag stays a full Linear with a bias (reference).
  uv_project = register_module("uv_project", Projection(in_features, uv, proj_rank, /*bias=*/false, weight_norm));
  diag = register_module("diag", Projection(in_features, m1 + m2, -1, /*bias=*/true, weight_norm));
}

int64_t KroneckerMixerImpl::raw_size() const {
  const int64_t k1 = symmetric ? m1 * (m1 + 1) / 2 : m1 * m1;
  const int64_t k2 = symmetric ? m2 * (m2 + 1) / 2 : m2 * m2;
  return k1 + k2 + m1 + m2;
}

Tensor KroneckerMixerImpl::project(const Tensor& param) {
  return torch::cat({uv_project->forward(param), diag->forward(param)}, -1);
}

std::pair<Tensor, Tensor> KroneckerMixerImpl::factors(const Tensor& raw) const {
  const int64_t R = raw_size();
  TORCH_CHECK(raw.dim() >= 1 && raw.size(-1) == R, "kronecker mixer: raw must be (…, ", R, "), got ", raw.sizes());
  const std::vector<int64_t> lead(raw.sizes().begin(), raw.sizes().end() - 1);
  const int64_t k1 = symmetric ? m1 * (m1 + 1) / 2 : m1 * m1;
  const int64_t k2 = symmetric ? m2 * (m2 + 1) / 2 : m2 * m2;
  const Tensor p = activation(raw.narrow(-1, 0, k1 + k2), ac);
  const Tensor d = torch::sigmoid(raw.narrow(-1, k1 + k2, m1 + m2));

  // p_part (…, K) → the (…, m, m) factor before normalisation: L Lᵀ (symmetric) or the square itself.
  auto build = [&](const Tensor& p_part, int64_t m) {
    std::vector<int64_t> square = lead;
    square.push_back(m);
    square.push_back(m);
    if (!symmetric) return p_part.reshape(square);
    const Tensor idx = torch::triu_indices(m, m, 0, torch::TensorOptions().dtype(torch::kLong).device(raw.device()));
    const Tensor flat = idx[0] * m + idx[1];
    std::vector<int64_t> flat_shape = lead;
    flat_shape.push_back(m * m);
    const Tensor L = torch::zeros(flat_shape, p_part.options()).index_copy(p_part.dim() - 1, flat, p_part)
                         .reshape(square);
    return torch::matmul(L, L.transpose(-1, -2));
  };
  Tensor U = l2_normalize(build(p.narrow(-1, 0, k1), m1), -1, eps);
  Tensor V = l2_normalize(build(p.narrow(-1, k1, k2), m2), -1, eps);
  if (normalization == "spectral") {
    U = U / (power_iteration(U, n, kPowerIters) + eps);
    V = V / (power_iteration(V, n, kPowerIters) + eps);
  }
  U = d.narrow(-1, 0, m1).unsqueeze(-1) * U;  // diag(d₁) U
  V = d.narrow(-1, m1, m2).unsqueeze(-1) * V;  // diag(d₂) V
  return {U, V};
}

Tensor KroneckerMixerImpl::apply(const Tensor& raw, const Tensor& v) {
  TORCH_CHECK(v.dim() >= 1 && v.size(-1) == n, "kronecker mixer: v must be (…, ", n, "), got ", v.sizes());
  TORCH_CHECK(raw.dim() == v.dim() && raw.sizes().slice(0, raw.dim() - 1) == v.sizes().slice(0, v.dim() - 1),
              "kronecker mixer: raw ", raw.sizes(), " and v ", v.sizes(), " must share their leading dimensions");
  const auto [U, V] = factors(raw);
  // Computed in the promoted dtype of raw and v; the result has v's dtype.
  const auto dt = torch::promote_types(raw.scalar_type(), v.scalar_type());
  std::vector<int64_t> mat(v.sizes().begin(), v.sizes().end() - 1);
  mat.push_back(m1);
  mat.push_back(m2);
  const Tensor M = v.to(dt).reshape(mat);
  const Tensor out = M - 2 * torch::matmul(torch::matmul(U.to(dt).transpose(-1, -2), M), V.to(dt).transpose(-1, -2));
  return out.reshape(v.sizes()).to(v.scalar_type());
}

}  // namespace fprnn::nn
