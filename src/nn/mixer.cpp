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

bool MixerImpl::split_projection(const Tensor& a, ParamForm form, Tensor& fixed, Tensor& w) {
  fixed = Tensor();
  w = Tensor();
  std::vector<Tensor> weights, biases;
  for (auto& p : projections()) {
    if (p->stages.size() != 1) return false;
    Linear& lin = p->stages[0];
    weights.push_back(lin->weight());
    biases.push_back(lin->bias.defined() ? lin->bias : torch::zeros({lin->out_features}, weights.back().options()));
  }
  const Tensor W = torch::cat(weights, 0).to(a.scalar_type()), bias = torch::cat(biases, 0).to(a.scalar_type());
  TORCH_CHECK(W.size(0) == raw_size(), "split_projection: the projections stack to ", W.size(0), " rows, not ",
              raw_size());
  const int64_t P = W.size(1), Pa = a.size(-1);
  TORCH_CHECK(form == ParamForm::kCat ? Pa < P : Pa == P, "split_projection: a has ", Pa,
              " features for a parameter of width ", P);
  fixed = torch::nn::functional::linear(a, form == ParamForm::kCat ? W.narrow(1, 0, Pa) : W, bias);
  if (form == ParamForm::kCat) w = W.narrow(1, Pa, P - Pa).contiguous();
  if (form == ParamForm::kSum) w = W;
  return true;
}

Tensor MixerImpl::split_raw(const Tensor& fixed, const Tensor& w, const Tensor& b) {
  if (!w.defined()) return fixed;
  const int64_t R = fixed.size(-1);
  return torch::addmm(fixed.reshape({-1, R}), b.reshape({-1, w.size(1)}).to(w.scalar_type()), w.t())
      .view(fixed.sizes());
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
