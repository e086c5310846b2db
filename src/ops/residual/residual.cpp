// relative_residual entry: checks, dispatch, and the ATen composite (the reference of the CUDA kernel).
#include "fprnn/ops/residual.h"

namespace fprnn::ops {

namespace {

void check_args(const char* fn, const torch::Tensor& y, const torch::Tensor& y_new) {
  TORCH_CHECK(y.defined() && y_new.defined(), fn, ": undefined tensor");
  TORCH_CHECK(y.dim() == 3 && y.sizes() == y_new.sizes(), fn, ": expected two equal (B, T, D) tensors, got ",
              y.sizes(), " and ", y_new.sizes());
  TORCH_CHECK(y.scalar_type() == y_new.scalar_type(), fn, ": y and y_new must have one dtype, got ",
              y.scalar_type(), " and ", y_new.scalar_type());
  TORCH_CHECK(at::isFloatingType(y.scalar_type()), fn, ": expected floating-point tensors, got ", y.scalar_type());
  TORCH_CHECK(y.device() == y_new.device(), fn, ": y is on ", y.device(), " but y_new on ", y_new.device());
  TORCH_CHECK(y.size(0) > 0 && y.size(1) > 0 && y.size(2) > 0, fn, ": empty tensors ", y.sizes());
}

}  // namespace

torch::Tensor relative_residual_aten(const torch::Tensor& y, const torch::Tensor& y_new, double eps) {
  check_args("relative_residual_aten", y, y_new);
  const auto acc = y_new.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Tensor y_new_acc = y_new.to(acc);  // once: a bfloat16 iterate's widening is a full pass
  const torch::Tensor diff = (y.to(acc) - y_new_acc).abs().amax(-1);
  const torch::Tensor scale = y_new_acc.abs().amax(-1) + eps;
  return (diff / scale).amax(-1).to(torch::kFloat64);
}

torch::Tensor relative_residual(const torch::Tensor& y, const torch::Tensor& y_new, double eps) {
  check_args("relative_residual", y, y_new);
#ifdef FPRNN_WITH_CUDA
  if (y.is_cuda() && y.is_contiguous() && y_new.is_contiguous()) return relative_residual_cuda(y, y_new, eps);
#endif
  return relative_residual_aten(y, y_new, eps);
}

#ifndef FPRNN_WITH_CUDA
torch::Tensor relative_residual_cuda(const torch::Tensor&, const torch::Tensor&, double) {
  TORCH_CHECK(false, "relative_residual_cuda: this build has no CUDA kernels");
}
#endif

}  // namespace fprnn::ops
