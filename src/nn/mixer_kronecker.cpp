// Kronecker-product mixer (spec §7.3): Q v = vec(M − 2 Uᵀ M Vᵀ), M the row-major (m1, m2) view of v,
// i.e. Q = I − 2 (Uᵀ ⊗ V). raw (…, K1 + K2 + m1 + m2) = [uv part: factor 1 (K1), factor 2 (K2) | diag part:
// d1 (m1), d2 (m2)], K = m(m+1)/2 upper-triangular entries in row-major (triu_indices) order when symmetric,
// m² row-major entries otherwise; v (…, n). The computation itself is the op in src/ops/kronecker/.
#include "fprnn/nn/mixer.h"

#include "fprnn/ops/kronecker.h"

#include <torch/torch.h>

#include <cmath>
#include <string>

namespace fprnn::nn {
namespace {

void check_mixer_ac(const std::string& ac) {
  TORCH_CHECK(ac == "identity" || ac == "relu" || ac == "silu", "unknown mixer_ac '", ac,
              "' (valid: identity, relu, silu)");
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

int64_t KroneckerMixerImpl::raw_size() const { return spec().raw_size(); }

Tensor KroneckerMixerImpl::project(const Tensor& param) {
  return torch::cat({uv_project->forward(param), diag->forward(param)}, -1);
}

ops::KroneckerSpec KroneckerMixerImpl::spec() const {
  ops::KroneckerSpec s;
  s.m1 = m1;
  s.m2 = m2;
  s.symmetric = symmetric;
  s.act = ac;
  s.spectral = normalization == "spectral";
  s.eps = eps;
  return s;
}

std::pair<Tensor, Tensor> KroneckerMixerImpl::factors(const Tensor& raw) const {
  return ops::kronecker_factors_ref(raw, spec());
}

Tensor KroneckerMixerImpl::apply(const Tensor& raw, const Tensor& v) {
  TORCH_CHECK(v.dim() >= 1 && v.size(-1) == n, "kronecker mixer: v must be (…, ", n, "), got ", v.sizes());
  TORCH_CHECK(raw.dim() == v.dim() && raw.sizes().slice(0, raw.dim() - 1) == v.sizes().slice(0, v.dim() - 1),
              "kronecker mixer: raw ", raw.sizes(), " and v ", v.sizes(), " must share their leading dimensions");
  const ops::KroneckerSpec s = spec();
  const bool wants_grad = torch::GradMode::is_enabled() && (raw.requires_grad() || v.requires_grad());
  const auto dt = torch::promote_types(raw.scalar_type(), v.scalar_type()) == torch::kFloat64 ? torch::kFloat64
                                                                                               : torch::kFloat32;
  // The fused op runs on a GPU: there it replaces ~15 kernels with one (`fprnn bench kronecker`). On the CPU
  // its per-token loops are slower than ATen's batched GEMMs (same bench), so the CPU keeps the composite. It
  // has no 'spectral' backward, and a GPU block holds a token's matrices only up to a size.
  if (!v.is_cuda() || (wants_grad && s.spectral) || !ops::kronecker_fused_fits(s, v, dt, wants_grad))
    return ops::kronecker_fwd_ref(raw, v, s);
  return ops::kronecker_apply(raw, v, s);
}

}  // namespace fprnn::nn
