// fp_step reference: the iteration written plainly in ATen ops and float64, one formula per line, never
// optimised. Layout contract: base, z (B, T, r·D + r); h, bx, lambda (B, T, D); any strides.
// Returns y (B, T, D) and stats (B, T, 2) = (max_d |y − h|, max_d |y|), both float64.
#include "fprnn/ops/fp_step.h"

#include "ops/fp_step/fp_step_common.h"

#include <vector>

namespace fprnn::ops {
namespace {

using torch::Tensor;

Tensor f64(const Tensor& t) { return t.detach().to(torch::kFloat64); }

Tensor act(const Tensor& x, MixerAc ac) {
  switch (ac) {
    case MixerAc::kIdentity:
      return x;
    case MixerAc::kRelu:
      return torch::relu(x);
    case MixerAc::kSilu:
      return torch::silu(x);
  }
  TORCH_CHECK(false, "fp_step_ref: unknown activation");
}

}  // namespace

std::pair<Tensor, Tensor> fp_step_ref(const FpStepInputs& in, const FpStepConfig& cfg) {
  const auto s = detail::fp_step_check("fp_step_ref", in, cfg, /*contiguous=*/false);
  // raw_t = base_t + z_{t−1}: z shifted one step down T, zero-filled at t = 0.
  Tensor raw = f64(in.base);
  if (in.z.defined()) {
    const Tensor z = f64(in.z);
    raw = raw + torch::cat({torch::zeros({s.B, 1, s.R}, z.options()), z.narrow(1, 0, s.T - 1)}, 1);
  }
  Tensor u = act(raw.narrow(2, 0, s.r * s.D).reshape({s.B, s.T, s.r, s.D}), cfg.ac);
  u = u / u.norm(2, -1, /*keepdim=*/true).clamp_min(cfg.norm_eps);  // F.normalize
  const Tensor alpha = torch::sigmoid(raw.narrow(2, s.r * s.D, s.r));
  const Tensor h = f64(in.h);
  const Tensor delta = f64(in.bx) - h;
  Tensor w = delta;
  for (int64_t i = 0; i < s.r; ++i) {
    const Tensor ui = u.select(2, i);
    const Tensor ai = alpha.select(2, i).unsqueeze(-1);
    const Tensor against = cfg.sum_form ? delta : w;  // dplr: every term against δ; householder: in order
    w = w - 2 * ai * ui * (ui * against).sum(-1, /*keepdim=*/true);
  }
  const Tensor lambda = f64(in.lambda);
  const Tensor v = (1 - lambda) * (w + h);
  // y_t = λ_t ⊙ y_{t−1} + v_t, y_{−1} = 0.
  std::vector<Tensor> ys;
  Tensor prev = torch::zeros({s.B, s.D}, v.options());
  for (int64_t t = 0; t < s.T; ++t) {
    prev = lambda.select(1, t) * prev + v.select(1, t);
    ys.push_back(prev);
  }
  const Tensor y = torch::stack(ys, 1);
  const Tensor stats = torch::stack({(y - h).abs().amax(-1), y.abs().amax(-1)}, -1);
  return {y, stats};
}

}  // namespace fprnn::ops
