// Public entries of the Householder/DPLR op: checks, dtype/device dispatch and the autograd Function.
// u (N, r, D), alpha (N, r), v (N, D), any strides → Q v (N, D); bfloat16 is computed in float32.
#include "fprnn/ops/householder.h"

#include "ops/householder/householder_common.h"

#include <torch/torch.h>

namespace fprnn::ops {
namespace detail {

HouseholderSizes check_inputs(const char* op, const torch::Tensor& u, const torch::Tensor& alpha,
                              const torch::Tensor& v) {
  TORCH_CHECK(u.defined() && alpha.defined() && v.defined(), op, ": u, alpha and v must be defined");
  TORCH_CHECK(u.dim() == 3, op, ": u must be (N, r, D), got ", u.sizes());
  HouseholderSizes s{u.size(0), u.size(1), u.size(2)};
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == s.N && alpha.size(1) == s.r, op, ": alpha must be (N, r) = (",
              s.N, ", ", s.r, ") to match u ", u.sizes(), ", got ", alpha.sizes());
  TORCH_CHECK(v.dim() == 2 && v.size(0) == s.N && v.size(1) == s.D, op, ": v must be (N, D) = (", s.N, ", ", s.D,
              ") to match u ", u.sizes(), ", got ", v.sizes());
  const auto dt = u.scalar_type();
  TORCH_CHECK(dt == torch::kFloat32 || dt == torch::kFloat64 || dt == torch::kBFloat16, op,
              ": dtype must be float32, float64 or bfloat16, got ", dt);
  TORCH_CHECK(alpha.scalar_type() == dt && v.scalar_type() == dt, op, ": u, alpha and v must share a dtype, got ",
              dt, ", ", alpha.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(alpha.device() == u.device() && v.device() == u.device(), op,
              ": u, alpha and v must be on one device, got ", u.device(), ", ", alpha.device(), ", ", v.device());
#ifndef FPRNN_WITH_CUDA
  TORCH_CHECK(!u.is_cuda(), op, ": CUDA tensors need a build with CUDA (this build has no CUDA kernels); ",
              "run on the CPU");
#endif
  TORCH_CHECK(u.is_cpu() || u.is_cuda(), op, ": no kernel for device ", u.device());
  return s;
}

HouseholderSizes check_cpu_inputs(const char* op, const torch::Tensor& u, const torch::Tensor& alpha,
                                  const torch::Tensor& v, const torch::Tensor& grad) {
  const HouseholderSizes s = check_inputs(op, u, alpha, v);
  TORCH_CHECK(u.scalar_type() == torch::kFloat32 || u.scalar_type() == torch::kFloat64, op,
              ": the CPU kernel takes float32 or float64, got ", u.scalar_type());
  TORCH_CHECK(u.is_contiguous() && alpha.is_contiguous() && v.is_contiguous(), op,
              ": the CPU kernel needs contiguous u, alpha and v");
  if (grad.defined()) {
    TORCH_CHECK(grad.dim() == 2 && grad.size(0) == s.N && grad.size(1) == s.D, op, ": grad must be (N, D) = (",
                s.N, ", ", s.D, "), got ", grad.sizes());
    TORCH_CHECK(grad.scalar_type() == u.scalar_type(), op, ": grad must be ", u.scalar_type(), ", got ",
                grad.scalar_type());
    TORCH_CHECK(grad.is_cpu() && grad.is_contiguous(), op, ": the CPU kernel needs a contiguous CPU grad");
  }
  return s;
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One Function for both ops: sum_form = false is the ordered product (householder), true the sum (dplr).
class HouseholderFunction : public torch::autograd::Function<HouseholderFunction> {
 public:
  // u (N, r, D), alpha (N, r), v (N, D): contiguous, float32 or float64, on the CPU or a GPU.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& u, const torch::Tensor& alpha,
                               const torch::Tensor& v, bool sum_form) {
    ctx->save_for_backward({u, alpha, v});
    ctx->saved_data["sum_form"] = sum_form;
    if (u.is_cuda()) return sum_form ? dplr_fwd_cuda(u, alpha, v) : householder_fwd_cuda(u, alpha, v);
    return sum_form ? dplr_fwd_cpu(u, alpha, v) : householder_fwd_cpu(u, alpha, v);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &u = saved[0], &alpha = saved[1], &v = saved[2];
    const bool sum_form = ctx->saved_data["sum_form"].toBool();
    torch::Tensor du, dalpha, dv;
    if (torch::GradMode::is_enabled()) {
      // create_graph: the kernels are not differentiable, so take the ATen reference backward (float64).
      std::tie(du, dalpha, dv) = sum_form ? detail::dplr_bwd_ref(u, alpha, v, grads[0])
                                          : detail::householder_bwd_ref(u, alpha, v, grads[0]);
      return {du.to(u.scalar_type()), dalpha.to(u.scalar_type()), dv.to(u.scalar_type()), torch::Tensor()};
    }
    const torch::Tensor g = grads[0].to(v.scalar_type()).contiguous();
    if (u.is_cuda()) {
      std::tie(du, dalpha, dv) = sum_form ? dplr_bwd_cuda(u, alpha, v, g) : householder_bwd_cuda(u, alpha, v, g);
    } else {
      std::tie(du, dalpha, dv) = sum_form ? dplr_bwd_cpu(u, alpha, v, g) : householder_bwd_cpu(u, alpha, v, g);
    }
    return {du, dalpha, dv, torch::Tensor()};
  }
};

torch::Tensor apply_entry(const char* op, const torch::Tensor& u, const torch::Tensor& alpha,
                          const torch::Tensor& v, bool sum_form) {
  detail::check_inputs(op, u, alpha, v);
  if (u.scalar_type() == torch::kBFloat16) {
    const auto f = torch::kFloat32;
    return HouseholderFunction::apply(u.to(f).contiguous(), alpha.to(f).contiguous(), v.to(f).contiguous(),
                                      sum_form)
        .to(torch::kBFloat16);
  }
  return HouseholderFunction::apply(u.contiguous(), alpha.contiguous(), v.contiguous(), sum_form);
}

}  // namespace

#ifndef FPRNN_WITH_CUDA
// Without CUDA the CUDA entry points exist (so callers and tests link) but refuse to run.
namespace {
[[noreturn]] void no_cuda(const char* op) { TORCH_CHECK(false, op, ": this build has no CUDA kernels"); }
}  // namespace
torch::Tensor householder_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  no_cuda("householder_fwd_cuda");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> householder_bwd_cuda(const torch::Tensor&, const torch::Tensor&,
                                                                             const torch::Tensor&, const torch::Tensor&) {
  no_cuda("householder_bwd_cuda");
}
torch::Tensor dplr_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  no_cuda("dplr_fwd_cuda");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> dplr_bwd_cuda(const torch::Tensor&, const torch::Tensor&,
                                                                      const torch::Tensor&, const torch::Tensor&) {
  no_cuda("dplr_bwd_cuda");
}
#endif

torch::Tensor householder_apply(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v) {
  return apply_entry("householder", u, alpha, v, /*sum_form=*/false);
}

torch::Tensor dplr_apply(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v) {
  return apply_entry("dplr", u, alpha, v, /*sum_form=*/true);
}

}  // namespace fprnn::ops
