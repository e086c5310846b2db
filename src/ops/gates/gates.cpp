// input_gates and gated_rmsnorm entries (include/fprnn/ops/gates.h): checks, the ATen composites, and the
// autograd functions over the CUDA kernels.
#include "fprnn/ops/gates.h"

#include <torch/autograd.h>

namespace fprnn::ops {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool is_float(torch::Dtype t) { return t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kBFloat16; }

// Activations: one shape (…, D) with D > 0, one dtype (float32/float64/bfloat16), one device; the vector (D).
void check_args(const char* fn, std::initializer_list<std::pair<const char*, const torch::Tensor*>> acts,
                const char* vec_name, const torch::Tensor& vec) {
  const torch::Tensor& first = *acts.begin()->second;
  const char* first_name = acts.begin()->first;
  for (const auto& [name, t] : acts) {
    TORCH_CHECK(t->defined(), fn, ": ", name, " is undefined");
    TORCH_CHECK(t->dim() >= 1 && t->size(-1) > 0, fn, ": ", name, " must be (…, D) with D > 0, got ", t->sizes());
    TORCH_CHECK(t->sizes() == first.sizes(), fn, ": ", name, " must have the sizes of ", first_name, " ",
                first.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == first.scalar_type(), fn, ": ", name, " must have the dtype of ", first_name, " (",
                first.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == first.device(), fn, ": ", name, " is on ", t->device(), " but ", first_name, " on ",
                first.device());
  }
  TORCH_CHECK(is_float(first.scalar_type()), fn, ": expected float32, float64 or bfloat16 tensors, got ",
              first.scalar_type());
  TORCH_CHECK(vec.defined() && vec.dim() == 1 && vec.size(0) == first.size(-1), fn, ": ", vec_name,
              " must be (D) = (", first.size(-1), "), got ", vec.defined() ? vec.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(is_float(vec.scalar_type()), fn, ": ", vec_name, " must be float32, float64 or bfloat16, got ",
              vec.scalar_type());
  TORCH_CHECK(vec.device() == first.device(), fn, ": ", vec_name, " is on ", vec.device(), " but ", first_name,
              " on ", first.device());
}

torch::Dtype acc_dtype(torch::Dtype t) { return t == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32; }

// (…, D) → (N, D) with unit column stride and one row stride ≥ D: a view where the leading dimensions collapse
// (reshape; a column slice of a wider tensor does), a contiguous copy otherwise.
torch::Tensor as_rows(const torch::Tensor& t) {
  const torch::Tensor r = t.reshape({-1, t.size(-1)});
  return r.stride(1) == 1 && r.stride(0) >= r.size(1) ? r : r.contiguous();
}

struct InputGatesFunction : public torch::autograd::Function<InputGatesFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& b, const torch::Tensor& x,
                               const torch::Tensor& l, const torch::Tensor& l_bias) {
    auto [bx, lam, oml] = input_gates_fwd_cuda(b, x, l, l_bias);
    ctx->save_for_backward({b, x, lam});
    return {bx, lam, oml};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &b = saved[0], &x = saved[1], &lam = saved[2];
    auto prep = [&](const torch::Tensor& g) { return g.defined() ? g.to(b.scalar_type()).contiguous() : g; };
    TORCH_CHECK(!torch::GradMode::is_enabled(), "input_gates: double backward is not supported on CUDA");
    auto [db, dx, dl, dlb] = input_gates_bwd_cuda(prep(grads[0]), prep(grads[1]), prep(grads[2]), b, x, lam);
    return {db, dx, dl, dlb.to(b.scalar_type())};  // l_bias entered in the activations' dtype
  }
};

struct LinearRowsFunction : public torch::autograd::Function<LinearRowsFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
    ctx->save_for_backward({x, w});
    return torch::addmm(b, x, w.t());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1];
    const torch::Tensor g = grads[0].contiguous();
    TORCH_CHECK(!torch::GradMode::is_enabled(), "linear_rows: double backward is not supported on CUDA");
    torch::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = torch::mm(g, w);
    if (ctx->needs_input_grad(1)) dw = torch::mm(g.t(), x);
    if (ctx->needs_input_grad(2)) db = column_sum_cuda(g).to(g.scalar_type());
    return {dx, dw, db};
  }
};

struct GatedRmsNormFunction : public torch::autograd::Function<GatedRmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& z, const torch::Tensor& c,
                               const torch::Tensor& h, const torch::Tensor& weight, double eps) {
    const torch::Tensor w = weight.to(acc_dtype(z.scalar_type())).contiguous();
    ctx->save_for_backward({z, c, h, w});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return gated_rmsnorm_fwd_cuda(z, c, h, w, eps);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &z = saved[0], &c = saved[1], &h = saved[2], &w = saved[3];
    if (!grads[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    TORCH_CHECK(!torch::GradMode::is_enabled(), "gated_rmsnorm: double backward is not supported on CUDA");
    const torch::Tensor gy = grads[0].to(z.scalar_type()).contiguous().view(c.sizes());
    auto [dz, dc, dh, dw] = gated_rmsnorm_bwd_cuda(gy, z, c, h, w, ctx->saved_data["eps"].toDouble());
    const auto weight_dtype = static_cast<torch::Dtype>(ctx->saved_data["weight_dtype"].toInt());
    return {dz, dc, dh, dw.to(weight_dtype), torch::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_aten(const torch::Tensor& b,
                                                                         const torch::Tensor& x,
                                                                         const torch::Tensor& l,
                                                                         const torch::Tensor& l_bias) {
  check_args("input_gates", {{"b", &b}, {"x", &x}, {"l", &l}}, "l_bias", l_bias);
  const torch::Tensor bx = torch::silu(b) * x;
  const torch::Tensor lam = torch::sigmoid(l + l_bias.to(l.scalar_type()));
  return {bx, lam, 1 - lam};
}

torch::Tensor gated_rmsnorm_aten(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                                 const torch::Tensor& weight, double eps) {
  check_args("gated_rmsnorm", {{"z", &z}, {"c", &c}, {"h", &h}}, "weight", weight);
  TORCH_CHECK(eps > 0, "gated_rmsnorm: eps must be positive, got ", eps);
  // The ops (and their order) of FPRNN's output before this op: RMSNorm(silu(z) ⊙ (silu(c) ⊙ h)), the norm in
  // float32 (float64 for float64 inputs).
  const torch::Tensor g = torch::silu(z) * (torch::silu(c) * h);
  const auto compute = acc_dtype(g.scalar_type());
  const torch::Tensor gf = g.to(compute);
  const torch::Tensor y = gf * torch::rsqrt(gf.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight.to(compute);
  return y.to(g.scalar_type());
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates(const torch::Tensor& b, const torch::Tensor& x,
                                                                    const torch::Tensor& l,
                                                                    const torch::Tensor& l_bias) {
  check_args("input_gates", {{"b", &b}, {"x", &x}, {"l", &l}}, "l_bias", l_bias);
  if (!b.is_cuda() || b.numel() == 0) return input_gates_aten(b, x, l, l_bias);
  const int64_t D = b.size(-1);
  const auto sizes = b.sizes().vec();
  const auto out = InputGatesFunction::apply(b.contiguous().view({-1, D}), x.contiguous().view({-1, D}),
                                             l.contiguous().view({-1, D}),
                                             l_bias.to(b.scalar_type()).contiguous());
  return {out[0].view(sizes), out[1].view(sizes), out[2].view(sizes)};
}

torch::Tensor gated_rmsnorm(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                            const torch::Tensor& weight, double eps) {
  check_args("gated_rmsnorm", {{"z", &z}, {"c", &c}, {"h", &h}}, "weight", weight);
  TORCH_CHECK(eps > 0, "gated_rmsnorm: eps must be positive, got ", eps);
  if (!z.is_cuda() || z.numel() == 0) return gated_rmsnorm_aten(z, c, h, weight, eps);
  const int64_t D = z.size(-1);
  const torch::Tensor y = GatedRmsNormFunction::apply(as_rows(z), c.contiguous().view({-1, D}),
                                                      h.contiguous().view({-1, D}), weight, eps);
  return y.view(z.sizes());
}

torch::Tensor linear_rows(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && b.dim() == 1 && w.size(1) == x.size(1) && b.size(0) == w.size(0),
              "linear_rows: x (N, K), w (M, K) and b (M) expected, got ", x.sizes(), ", ", w.sizes(), " and ",
              b.sizes());
  const bool grads = torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || b.requires_grad());
  if (!x.is_cuda() || !grads || x.size(0) == 0) return torch::addmm(b, x, w.t());
  return LinearRowsFunction::apply(x, w, b);
}

#ifndef FPRNN_WITH_CUDA
torch::Tensor column_sum_cuda(const torch::Tensor&) { TORCH_CHECK(false, "column_sum_cuda: this build has no CUDA kernels"); }
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_fwd_cuda(const torch::Tensor&,
                                                                             const torch::Tensor&,
                                                                             const torch::Tensor&,
                                                                             const torch::Tensor&) {
  TORCH_CHECK(false, "input_gates_fwd_cuda: this build has no CUDA kernels");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> input_gates_bwd_cuda(
    const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
    const torch::Tensor&) {
  TORCH_CHECK(false, "input_gates_bwd_cuda: this build has no CUDA kernels");
}
torch::Tensor gated_rmsnorm_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                     const torch::Tensor&, double, bool) {
  TORCH_CHECK(false, "gated_rmsnorm_fwd_cuda: this build has no CUDA kernels");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> gated_rmsnorm_bwd_cuda(
    const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
    double, bool) {
  TORCH_CHECK(false, "gated_rmsnorm_bwd_cuda: this build has no CUDA kernels");
}
#endif

}  // namespace fprnn::ops
