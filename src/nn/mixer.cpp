// Mixer factory and the explicit per-token matrix Q(raw)[…, :, j] = apply(raw, e_j): raw (…, raw_size())
// → (…, n, n).
#include "fprnn/nn/mixer.h"

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace fprnn::nn {

Tensor MixerImpl::matrix(const Tensor& raw) {
  const int64_t R = raw_size();
  TORCH_CHECK(raw.dim() >= 1 && raw.size(-1) == R, "mixer matrix: raw must be (…, ", R, "), got ", raw.sizes());
  std::vector<int64_t> shape(raw.sizes().begin(), raw.sizes().end() - 1);
  int64_t N = 1;
  for (int64_t s : shape) N *= s;
  // Token t's raw is repeated n times, once per identity column e_j; apply sees (1, N·n, ·).
  const Tensor raw_rep = raw.reshape({N, 1, R}).expand({N, n, R}).reshape({1, N * n, R});
  const Tensor eye = torch::eye(n, raw.options()).expand({N, n, n}).reshape({1, N * n, n});
  const Tensor cols = apply(raw_rep, eye).reshape({N, n, n});  // cols[t, j, :] = Q_t e_j
  shape.push_back(n);
  shape.push_back(n);
  return cols.transpose(-1, -2).reshape(shape);
}

std::shared_ptr<MixerImpl> make_mixer(const LayerConfig& cfg, int64_t in_features, int64_t n) {
  const std::string& type = cfg.mixer_type;
  if (type == "householderproduct" || type == "dplr") {
    return std::make_shared<HouseholderMixerImpl>(in_features, n, cfg.mixer_rank, cfg.mixer_ac, cfg.mixer_proj_rank,
                                                  cfg.norm_eps, cfg.weight_norm, /*sum_form=*/type == "dplr");
  }
  if (type == "kronecker") {
    return std::make_shared<KroneckerMixerImpl>(in_features, n, cfg.mixer_ac, cfg.mixer_proj_rank, cfg.norm_eps,
                                                cfg.weight_norm, cfg.kronecker_normalization);
  }
  if (type == "nonselective") return std::make_shared<NonSelectiveMixerImpl>(in_features, n);
  TORCH_CHECK(false, "unknown mixer_type '", type, "' (valid: householderproduct, dplr, kronecker, nonselective)");
}

}  // namespace fprnn::nn
