// The dense oracle: per-token exact solve of (Λ_t + (1 − Λ_t) Q_t) h_t = Λ_t h_{t−1} + (1 − Λ_t) Q_t b_t⊙x_t.
#include "fprnn/solver/sequential.h"

namespace fprnn::solver {

torch::Tensor solve_sequential(nn::FPRNNLayerImpl& layer, const nn::FPRNNLayerImpl::Inputs& in) {
  torch::NoGradGuard no_grad;
  const int64_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  // Solve in float64 at least: the oracle must not be the least accurate part of a comparison.
  const auto dtype = torch::kFloat64;
  auto& mixer = *layer.mixer;
  const auto& cfg = layer.cfg;
  torch::Tensor h_prev = torch::zeros({B, D}, in.x.options().dtype(dtype));
  std::vector<torch::Tensor> out;
  out.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const torch::Tensor x_mix = in.x_mix.select(1, t).to(dtype);
    torch::Tensor param;
    if (!cfg.mixer_h_dep) {
      param = x_mix;
    } else if (cfg.symm_mixer) {
      param = x_mix + h_prev;
    } else {
      param = torch::cat({x_mix, h_prev}, -1);
    }
    // The mixer may hold float32 weights: run it in its own dtype, then solve in float64.
    const auto mixer_dtype = in.x.scalar_type();
    const torch::Tensor raw = mixer.project(param.to(mixer_dtype).unsqueeze(1));
    const torch::Tensor Q = mixer.matrix(raw).squeeze(1).to(dtype);  // (B, D, D)
    const torch::Tensor lam = in.lambda.select(1, t).to(dtype);       // (B, D)
    const torch::Tensor oml = 1 - lam;
    const torch::Tensor bx = in.bx.select(1, t).to(dtype);
    // A = Λ + (1 − Λ) Q  (row i of Q scaled by 1 − λ_i)
    const torch::Tensor A = torch::diag_embed(lam) + oml.unsqueeze(-1) * Q;
    const torch::Tensor rhs = lam * h_prev + oml * torch::matmul(Q, bx.unsqueeze(-1)).squeeze(-1);
    const torch::Tensor h = torch::linalg_solve(A, rhs.unsqueeze(-1)).squeeze(-1);
    out.push_back(h);
    h_prev = h;
  }
  return torch::stack(out, 1).to(in.x.scalar_type());
}

}  // namespace fprnn::solver
