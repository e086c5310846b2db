// Reference Householder/DPLR op in ATen ops and float64, one reflection at a time, never optimised:
// u (N, r, D), alpha (N, r), v (N, D) of any float dtype and strides → float64 results.
#include "fprnn/ops/householder.h"

#include "ops/householder/householder_common.h"

#include <torch/torch.h>

#include <vector>

namespace fprnn::ops {
namespace {

using torch::Tensor;

// u_i (N, D) and alpha_i (N, 1) in float64.
Tensor dir(const Tensor& u, int64_t i) { return u.select(1, i).to(torch::kFloat64); }
Tensor coef(const Tensor& alpha, int64_t i) { return alpha.select(1, i).to(torch::kFloat64).unsqueeze(-1); }
// Row-wise dot product (N, D) · (N, D) → (N, 1).
Tensor rowdot(const Tensor& a, const Tensor& b) { return (a * b).sum(-1, /*keepdim=*/true); }

}  // namespace

Tensor householder_fwd_ref(const Tensor& u, const Tensor& alpha, const Tensor& v) {
  const auto s = detail::check_inputs("householder", u, alpha, v);
  Tensor w = v.to(torch::kFloat64);
  for (int64_t i = 0; i < s.r; ++i) {
    const Tensor ui = dir(u, i);
    w = w - 2 * coef(alpha, i) * ui * rowdot(ui, w);
  }
  return w;
}

Tensor dplr_fwd_ref(const Tensor& u, const Tensor& alpha, const Tensor& v) {
  const auto s = detail::check_inputs("dplr", u, alpha, v);
  const Tensor v64 = v.to(torch::kFloat64);
  Tensor out = v64;
  for (int64_t i = 0; i < s.r; ++i) {
    const Tensor ui = dir(u, i);
    out = out - 2 * coef(alpha, i) * ui * rowdot(ui, v64);
  }
  return out;
}

namespace detail {

std::tuple<Tensor, Tensor, Tensor> householder_bwd_ref(const Tensor& u, const Tensor& alpha, const Tensor& v,
                                                       const Tensor& grad) {
  const auto s = check_inputs("householder", u, alpha, v);
  TORCH_CHECK(grad.defined() && grad.sizes() == v.sizes(), "householder: grad must be ", v.sizes(), ", got ",
              grad.defined() ? grad.sizes() : c10::IntArrayRef{});
  // Forward, keeping the input w_i of every reflection.
  std::vector<Tensor> w{v.to(torch::kFloat64)};
  for (int64_t i = 0; i + 1 < s.r; ++i) {
    const Tensor ui = dir(u, i);
    w.push_back(w.back() - 2 * coef(alpha, i) * ui * rowdot(ui, w.back()));
  }
  // Backward through H_{r−1}, …, H_0.
  std::vector<Tensor> du(s.r), dalpha(s.r);
  Tensor gw = grad.to(torch::kFloat64);
  for (int64_t i = s.r - 1; i >= 0; --i) {
    const Tensor ui = dir(u, i), ai = coef(alpha, i);
    const Tensor sw = rowdot(ui, w[i]), tg = rowdot(ui, gw);
    dalpha[i] = (-2 * sw * tg).squeeze(-1);
    du[i] = -2 * ai * (sw * gw + tg * w[i]);
    gw = gw - 2 * ai * tg * ui;
  }
  if (s.r == 0) return {torch::zeros(u.sizes(), gw.options()), torch::zeros(alpha.sizes(), gw.options()), gw};
  return {torch::stack(du, 1), torch::stack(dalpha, 1), gw};
}

std::tuple<Tensor, Tensor, Tensor> dplr_bwd_ref(const Tensor& u, const Tensor& alpha, const Tensor& v,
                                                const Tensor& grad) {
  const auto s = check_inputs("dplr", u, alpha, v);
  TORCH_CHECK(grad.defined() && grad.sizes() == v.sizes(), "dplr: grad must be ", v.sizes(), ", got ",
              grad.defined() ? grad.sizes() : c10::IntArrayRef{});
  const Tensor v64 = v.to(torch::kFloat64), g64 = grad.to(torch::kFloat64);
  std::vector<Tensor> du(s.r), dalpha(s.r);
  Tensor dv = g64;
  for (int64_t i = 0; i < s.r; ++i) {
    const Tensor ui = dir(u, i), ai = coef(alpha, i);
    const Tensor sv = rowdot(ui, v64), tg = rowdot(ui, g64);
    dalpha[i] = (-2 * sv * tg).squeeze(-1);
    du[i] = -2 * ai * (sv * g64 + tg * v64);
    dv = dv - 2 * ai * tg * ui;
  }
  if (s.r == 0) return {torch::zeros(u.sizes(), dv.options()), torch::zeros(alpha.sizes(), dv.options()), dv};
  return {torch::stack(du, 1), torch::stack(dalpha, 1), dv};
}

}  // namespace detail
}  // namespace fprnn::ops
