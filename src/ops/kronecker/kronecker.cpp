// Public entry of the fused Kronecker op: checks, dtype/device dispatch and the autograd Function.
#include "fprnn/ops/kronecker.h"

#include "ops/kronecker/kronecker_common.h"

#include <torch/torch.h>

namespace fprnn::ops {
namespace kron {

Params make_params(const KroneckerSpec& spec) {
  TORCH_CHECK(spec.m1 >= 1 && spec.m2 >= 1, "kronecker: factor sizes must be positive, got ", spec.m1, " and ",
              spec.m2);
  TORCH_CHECK(spec.m1 <= 256 && spec.m2 <= 256, "kronecker: the fused kernels take factors of at most 256, got ",
              spec.m1, " and ", spec.m2);
  TORCH_CHECK(spec.eps > 0, "kronecker: eps must be positive, got ", spec.eps);
  int act = kIdentity;
  if (spec.act == "silu") {
    act = kSilu;
  } else if (spec.act == "relu") {
    act = kRelu;
  } else {
    TORCH_CHECK(spec.act == "identity", "kronecker: unknown activation '", spec.act,
                "' (valid: identity, relu, silu)");
  }
  return Params{static_cast<int>(spec.m1), static_cast<int>(spec.m2), static_cast<int>(spec.k1()),
                static_cast<int>(spec.k2()), static_cast<int>(spec.raw_size()), static_cast<int>(spec.m1 * spec.m2),
                spec.symmetric ? 1 : 0, spec.spectral ? 1 : 0, act, spec.eps};
}

void check_kernel_inputs(const char* op, const torch::Tensor& raw, const torch::Tensor& v, const torch::Tensor& g,
                         const KroneckerSpec& spec) {
  TORCH_CHECK(raw.dim() == 2 && raw.size(1) == spec.raw_size(), op, ": raw must be (N, ", spec.raw_size(), "), got ",
              raw.sizes());
  TORCH_CHECK(v.dim() == 2 && v.size(0) == raw.size(0) && v.size(1) == spec.m1 * spec.m2, op, ": v must be (",
              raw.size(0), ", ", spec.m1 * spec.m2, "), got ", v.sizes());
  const auto dt = raw.scalar_type();
  const bool reduced = dt == torch::kBFloat16 || dt == torch::kFloat16;
  TORCH_CHECK(dt == torch::kFloat32 || dt == torch::kFloat64 || (reduced && raw.is_cuda()), op,
              ": the kernels take float32 or float64 (and, on a GPU, bfloat16 or float16), got ", dt, " on ",
              raw.device());
  TORCH_CHECK(v.scalar_type() == dt, op, ": raw and v must share a dtype, got ", dt, " and ", v.scalar_type());
  TORCH_CHECK(raw.is_contiguous() && v.is_contiguous(), op, ": the kernels need contiguous raw and v");
  TORCH_CHECK(v.device() == raw.device(), op, ": raw and v must be on one device, got ", raw.device(), " and ",
              v.device());
  if (g.defined()) {
    TORCH_CHECK(g.sizes() == v.sizes() && g.scalar_type() == dt && g.is_contiguous() && g.device() == v.device(), op,
                ": the gradient must be a contiguous ", dt, " tensor shaped like v ", v.sizes(), ", got ", g.sizes(),
                " ", g.scalar_type());
  }
}

}  // namespace kron

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class KroneckerFunction : public torch::autograd::Function<KroneckerFunction> {
 public:
  // raw (N, R), v (N, n): contiguous, one dtype (float32 or float64), on the CPU or a GPU.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& raw, const torch::Tensor& v,
                               const KroneckerSpec& spec) {
    ctx->save_for_backward({raw, v});
    ctx->saved_data["m1"] = spec.m1;
    ctx->saved_data["m2"] = spec.m2;
    ctx->saved_data["symmetric"] = spec.symmetric;
    ctx->saved_data["act"] = spec.act;
    ctx->saved_data["spectral"] = spec.spectral;
    ctx->saved_data["eps"] = spec.eps;
    return raw.is_cuda() ? kronecker_fwd_cuda(raw, v, spec) : kronecker_fwd_cpu(raw, v, spec);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    KroneckerSpec spec;
    spec.m1 = ctx->saved_data["m1"].toInt();
    spec.m2 = ctx->saved_data["m2"].toInt();
    spec.symmetric = ctx->saved_data["symmetric"].toBool();
    spec.act = ctx->saved_data["act"].toStringRef();
    spec.spectral = ctx->saved_data["spectral"].toBool();
    spec.eps = ctx->saved_data["eps"].toDouble();
    const torch::Tensor &raw = saved[0], &v = saved[1];
    if (torch::GradMode::is_enabled()) {
      // create_graph: the kernels are not differentiable; differentiate the reference (on the saved inputs,
      // so that the gradients stay functions of them).
      std::vector<torch::Tensor> wrt;
      if (raw.requires_grad()) wrt.push_back(raw);
      if (v.requires_grad()) wrt.push_back(v);
      const torch::Tensor y = kronecker_fwd_ref(raw, v, spec);
      const auto g = torch::autograd::grad({y}, wrt, {grads[0]}, /*retain_graph=*/true, /*create_graph=*/true,
                                           /*allow_unused=*/true);
      size_t k = 0;
      const torch::Tensor graw = raw.requires_grad() ? g[k++] : torch::Tensor();
      const torch::Tensor gv = v.requires_grad() ? g[k++] : torch::Tensor();
      return {graw, gv, torch::Tensor()};
    }
    const torch::Tensor g = grads[0].to(v.scalar_type()).contiguous();
    const auto [graw, gv] = raw.is_cuda() ? kronecker_bwd_cuda(raw, v, g, spec) : kronecker_bwd_cpu(raw, v, g, spec);
    return {graw, gv, torch::Tensor()};
  }
};

}  // namespace

#ifndef FPRNN_WITH_CUDA
// Without CUDA the CUDA entry points exist (so callers and tests link) but refuse to run.
torch::Tensor kronecker_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const KroneckerSpec&) {
  TORCH_CHECK(false, "kronecker_fwd_cuda: this build has no CUDA kernels");
}
std::pair<torch::Tensor, torch::Tensor> kronecker_bwd_cuda(const torch::Tensor&, const torch::Tensor&,
                                                           const torch::Tensor&, const KroneckerSpec&) {
  TORCH_CHECK(false, "kronecker_bwd_cuda: this build has no CUDA kernels");
}
#endif

bool kronecker_fused_fits(const KroneckerSpec& spec, const torch::Tensor& like, torch::Dtype dtype, bool backward) {
  if (like.is_cpu()) return true;
#ifdef FPRNN_WITH_CUDA
  if (!like.is_cuda()) return false;
  const kron::Layout l = kron::make_layout(kron::make_params(spec), backward);
  const int64_t bytes = l.total * (dtype == torch::kFloat64 ? 8 : 4);
  return bytes <= kron::cuda_shared_limit(like.device().index());
#else
  return false;
#endif
}

torch::Tensor kronecker_apply(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec) {
  kron::make_params(spec);  // checks the spec
  const int64_t n = spec.m1 * spec.m2, R = spec.raw_size();
  TORCH_CHECK(raw.defined() && v.defined(), "kronecker: raw and v must be defined");
  TORCH_CHECK(v.dim() >= 1 && v.size(-1) == n, "kronecker: v must be (…, ", n, "), got ", v.sizes());
  TORCH_CHECK(raw.dim() == v.dim() && raw.size(-1) == R &&
                  raw.sizes().slice(0, raw.dim() - 1) == v.sizes().slice(0, v.dim() - 1),
              "kronecker: raw must be (…, ", R, ") with v's leading dimensions ", v.sizes(), ", got ", raw.sizes());
  TORCH_CHECK(raw.device() == v.device(), "kronecker: raw and v must be on one device, got ", raw.device(), " and ",
              v.device());
  TORCH_CHECK(raw.is_cpu() || raw.is_cuda(), "kronecker: no kernel for device ", raw.device());
#ifndef FPRNN_WITH_CUDA
  TORCH_CHECK(!raw.is_cuda(), "kronecker: CUDA tensors need a build with CUDA (this build has no CUDA kernels)");
#endif
  auto dt = torch::promote_types(raw.scalar_type(), v.scalar_type());
  TORCH_CHECK(dt == torch::kFloat32 || dt == torch::kFloat64 || dt == torch::kBFloat16 || dt == torch::kFloat16,
              "kronecker: dtype must be floating point, got ", dt);
  // bfloat16/float16 are computed in float32: on a GPU the kernels widen on load and round on store (the same
  // numbers as casting around a float32 call, without the copies); the CPU kernels take float32 copies.
  if (dt != torch::kFloat64 && !(raw.is_cuda() && dt == raw.scalar_type() && dt == v.scalar_type() &&
                                 (dt == torch::kBFloat16 || dt == torch::kFloat16)))
    dt = torch::kFloat32;
  const bool wants_grad = torch::GradMode::is_enabled() && (raw.requires_grad() || v.requires_grad());
  TORCH_CHECK(!(wants_grad && spec.spectral),
              "kronecker: the fused kernels have no backward for 'spectral' normalisation; use kronecker_fwd_ref");
  const torch::Tensor r2 = raw.reshape({-1, R}).to(dt).contiguous();
  const torch::Tensor v2 = v.reshape({-1, n}).to(dt).contiguous();
  return KroneckerFunction::apply(r2, v2, spec).reshape(v.sizes()).to(v.scalar_type());
}

}  // namespace fprnn::ops
