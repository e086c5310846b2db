// Non-selective mixer (spec §7.6): one orthogonal Q = base · exp(A − Aᵀ) for every token, A the strictly
// lower-triangular part of the trainable `skew` (n, n), zero at init; `base` (n, n) a fixed random
// orthogonal buffer. raw is empty (…, 0); v (…, n) → v Qᵀ (…, n).
#include "fprnn/nn/mixer.h"

#include <torch/torch.h>

#include <vector>

namespace fprnn::nn {

NonSelectiveMixerImpl::NonSelectiveMixerImpl(int64_t in_features, int64_t n) : MixerImpl(in_features, n) {
  TORCH_CHECK(in_features > 0 && n > 0, "nonselective mixer: in_features and n must be positive, got ", in_features,
              " and ", n);
  // A Haar-random orthogonal matrix: QR of a Gaussian with R's diagonal made positive.
  Tensor q, r;
  {
    torch::NoGradGuard no_grad;
    std::tie(q, r) = torch::linalg_qr(torch::randn({n, n}, torch::kFloat64));
    q = q * torch::sign(torch::diagonal(r)).unsqueeze(0);
  }
  const auto dtype = c10::get_default_dtype_as_scalartype();
  base = register_buffer("base", q.to(dtype));
  skew = register_parameter("skew", torch::zeros({n, n}, dtype));
}

Tensor NonSelectiveMixerImpl::orthogonal() {
  const Tensor A = skew.tril(-1);
  return torch::matmul(base.to(skew.scalar_type()), torch::matrix_exp(A - A.transpose(0, 1)));
}

Tensor NonSelectiveMixerImpl::project(const Tensor& param) {
  std::vector<int64_t> shape(param.sizes().begin(), param.sizes().end() - 1);
  shape.push_back(0);
  return torch::empty(shape, param.options());
}

Tensor NonSelectiveMixerImpl::apply(const Tensor& raw, const Tensor& v) {
  TORCH_CHECK(v.dim() >= 1 && v.size(-1) == n, "nonselective mixer: v must be (…, ", n, "), got ", v.sizes());
  const Tensor Q = orthogonal();
  const auto dt = torch::promote_types(Q.scalar_type(), v.scalar_type());
  return torch::matmul(v.to(dt), Q.to(dt).transpose(0, 1)).to(v.scalar_type());
}

}  // namespace fprnn::nn
