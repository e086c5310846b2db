// mix_step entry (include/fprnn/ops/mix_step.h): checks, the ATen composite, and the autograd function over
// the CUDA kernels.
#include "fprnn/ops/mix_step.h"

#include <torch/autograd.h>

namespace fprnn::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kMaxRank = 16;

// raw (…, ld) and bx, h, oml (…, D) sharing their leading dimensions; one float dtype and device.
void check_args(const char* fn, const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                const torch::Tensor& oml, const MixStepSpec& spec) {
  for (const auto* t : {&raw, &bx, &h, &oml}) TORCH_CHECK(t->defined(), fn, ": undefined tensor");
  TORCH_CHECK(bx.dim() >= 1 && bx.size(-1) > 0, fn, ": bx must be (…, D) with D > 0, got ", bx.sizes());
  TORCH_CHECK(h.sizes() == bx.sizes() && oml.sizes() == bx.sizes(), fn, ": bx, h and oml must have one shape, got ",
              bx.sizes(), ", ", h.sizes(), " and ", oml.sizes());
  TORCH_CHECK(raw.dim() == bx.dim() && raw.sizes().slice(0, raw.dim() - 1) == bx.sizes().slice(0, bx.dim() - 1), fn,
              ": raw ", raw.sizes(), " and bx ", bx.sizes(), " must share their leading dimensions");
  TORCH_CHECK(spec.rank >= 1 && spec.rank <= kMaxRank, fn, ": rank must be in [1, ", kMaxRank, "], got ", spec.rank);
  const int64_t D = bx.size(-1);
  TORCH_CHECK(raw.size(-1) >= spec.rank * D + spec.rank, fn, ": raw has ", raw.size(-1),
              " columns, fewer than r·D + r = ", spec.rank * D + spec.rank);
  TORCH_CHECK(spec.act == "identity" || spec.act == "relu" || spec.act == "silu", fn, ": unknown act '", spec.act,
              "' (valid: identity, relu, silu)");
  TORCH_CHECK(spec.eps > 0, fn, ": eps must be positive, got ", spec.eps);
  const auto dt = bx.scalar_type();
  TORCH_CHECK(dt == torch::kFloat32 || dt == torch::kFloat64 || dt == torch::kBFloat16, fn,
              ": expected float32, float64 or bfloat16, got ", dt);
  for (const auto* t : {&raw, &h, &oml}) {
    TORCH_CHECK(t->scalar_type() == dt, fn, ": every argument must have bx's dtype ", dt, ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == bx.device(), fn, ": every argument must be on ", bx.device(), ", got ", t->device());
  }
}

// (…, ld) → (N, ld) with unit column stride: a view where the leading dimensions collapse (reshape; a column
// slice of a wider tensor does), a contiguous copy otherwise.
torch::Tensor raw_rows(const torch::Tensor& raw) {
  const torch::Tensor r = raw.reshape({-1, raw.size(-1)});
  return r.stride(1) == 1 ? r : r.contiguous();
}

struct MixStepFunction : public torch::autograd::Function<MixStepFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& raw, const torch::Tensor& bx,
                               const torch::Tensor& h, const torch::Tensor& oml, int64_t rank, std::string act,
                               double eps, bool sum_form) {
    const MixStepSpec spec{rank, act, eps, sum_form};
    ctx->save_for_backward({raw, bx, h, oml});
    ctx->saved_data["rank"] = rank;
    ctx->saved_data["act"] = act;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["sum_form"] = sum_form;
    return mix_step_fwd_cuda(raw, bx, h, oml, spec);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const MixStepSpec spec{ctx->saved_data["rank"].toInt(), ctx->saved_data["act"].toStringRef(),
                           ctx->saved_data["eps"].toDouble(), ctx->saved_data["sum_form"].toBool()};
    const variable_list none(8);
    if (!grads[0].defined()) return none;
    TORCH_CHECK(!torch::GradMode::is_enabled(), "mix_step: double backward is not supported on CUDA");
    const torch::Tensor gy = grads[0].to(saved[1].scalar_type()).contiguous();
    auto [draw, dbx, dh, doml] = mix_step_bwd_cuda(gy, saved[0], saved[1], saved[2], saved[3], spec);
    return {draw, dbx, dh, doml, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor mix_step_aten(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                            const torch::Tensor& oml, const MixStepSpec& spec) {
  check_args("mix_step", raw, bx, h, oml, spec);
  const int64_t D = bx.size(-1), r = spec.rank;
  const torch::Tensor v = bx - h;
  std::vector<int64_t> shape(bx.sizes().begin(), bx.sizes().end() - 1);
  shape.push_back(r);
  shape.push_back(D);
  torch::Tensor a = raw.narrow(-1, 0, r * D).reshape(shape);
  if (spec.act == "silu") a = torch::silu(a);
  if (spec.act == "relu") a = torch::relu(a);
  const torch::Tensor u = a / a.norm(2, -1, /*keepdim=*/true).clamp_min(spec.eps);
  const torch::Tensor alpha = torch::sigmoid(raw.narrow(-1, r * D, r));
  torch::Tensor w = v;
  for (int64_t i = 0; i < r; ++i) {
    const torch::Tensor ui = u.select(-2, i);
    const torch::Tensor src = spec.sum_form ? v : w;
    const torch::Tensor s = (ui * src).sum(-1, /*keepdim=*/true);
    w = w - 2.0 * alpha.narrow(-1, i, 1) * s * ui;
  }
  return oml * (w + h);
}

torch::Tensor mix_step(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                       const torch::Tensor& oml, const MixStepSpec& spec) {
  check_args("mix_step", raw, bx, h, oml, spec);
  const int64_t D = bx.size(-1);
  if (!bx.is_cuda() || bx.numel() == 0 || !mix_step_cuda_fits(D, spec.rank)) return mix_step_aten(raw, bx, h, oml, spec);
  const torch::Tensor y = MixStepFunction::apply(raw_rows(raw), bx.contiguous().view({-1, D}),
                                                 h.contiguous().view({-1, D}), oml.contiguous().view({-1, D}),
                                                 spec.rank, spec.act, spec.eps, spec.sum_form);
  return y.view(bx.sizes());
}

bool mix_step_cuda_fits(int64_t D, int64_t rank) { return D >= 1 && D <= 2048 && rank >= 1 && rank <= kMaxRank; }

#ifndef FPRNN_WITH_CUDA
torch::Tensor mix_step_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                const torch::Tensor&, const MixStepSpec&) {
  TORCH_CHECK(false, "mix_step_fwd_cuda: this build has no CUDA kernels");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> mix_step_bwd_cuda(
    const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
    const MixStepSpec&) {
  TORCH_CHECK(false, "mix_step_bwd_cuda: this build has no CUDA kernels");
}
#endif

}  // namespace fprnn::ops
