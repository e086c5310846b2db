// linrec entry: y_t = c_t ⊙ y_{t∓1} + u_t with autograd (saves coeffs and outputs), checks and dispatch.
// Layout contract: inputs, coeffs: (B, T, D), any strides (made contiguous here); scan along T.
#include "fprnn/ops/linrec.h"

#include "ops/linrec/linrec_common.h"

#include <torch/autograd.h>

namespace fprnn::ops {

namespace detail {

void linrec_check_args(const char* fn, std::initializer_list<LinrecArg> args, bool cpu_contiguous) {
  const LinrecArg& first = *args.begin();
  for (const LinrecArg& arg : args) {
    const at::Tensor& t = arg.tensor;
    TORCH_CHECK(t.defined(), fn, ": ", arg.name, " is undefined");
    TORCH_CHECK(t.dim() == 3, fn, ": ", arg.name, " must be (B, T, D), got sizes ", t.sizes());
    const auto dtype = t.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16, fn, ": ", arg.name,
                " must be float32, float64 or bfloat16, got ", dtype);
    if (&arg != &first) {
      const at::Tensor& t0 = first.tensor;
      TORCH_CHECK(t.sizes() == t0.sizes(), fn, ": ", arg.name, " must have the sizes of ", first.name, " ",
                  t0.sizes(), ", got ", t.sizes());
      TORCH_CHECK(dtype == t0.scalar_type(), fn, ": ", arg.name, " must have the dtype of ", first.name, " (",
                  t0.scalar_type(), "), got ", dtype);
      TORCH_CHECK(t.device() == t0.device(), fn, ": ", arg.name, " is on ", t.device(), " but ", first.name,
                  " is on ", t0.device());
    }
    if (cpu_contiguous) {
      TORCH_CHECK(t.device().is_cpu(), fn, ": ", arg.name, " must be a CPU tensor, got ", t.device());
      TORCH_CHECK(t.is_contiguous(), fn, ": ", arg.name, " must be contiguous, got sizes ", t.sizes(),
                  " and strides ", t.strides(), " (linrec() makes its arguments contiguous)");
    }
  }
}

}  // namespace detail

namespace {

// Backend choice by device: explicit errors instead of silent fallbacks.
void check_backend(const torch::Tensor& t) {
#ifndef FPRNN_WITH_CUDA
  TORCH_CHECK(!t.is_cuda(),
              "linrec: CUDA tensors need a build with CUDA (this build has no CUDA kernels); move inputs and "
              "coeffs to the CPU");
#endif
  TORCH_CHECK(t.device().is_cpu() || t.is_cuda(), "linrec: no kernel for device ", t.device());
}

// inputs, coeffs: (B, T, D) contiguous → outputs (B, T, D).
torch::Tensor linrec_fwd(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse) {
  check_backend(inputs);
  if (inputs.is_cuda()) return linrec_fwd_cuda(inputs, coeffs, reverse);
  return linrec_fwd_cpu(inputs, coeffs, reverse);
}

// grad, coeffs, outputs: (B, T, D) contiguous → (d_inputs, d_coeffs), each (B, T, D).
std::pair<torch::Tensor, torch::Tensor> linrec_bwd(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                   const torch::Tensor& outputs, bool reverse) {
  check_backend(grad);
  if (grad.is_cuda()) return linrec_bwd_cuda(grad, coeffs, outputs, reverse);
  return linrec_bwd_cpu(grad, coeffs, outputs, reverse);
}

struct LinrecFunction : public torch::autograd::Function<LinrecFunction> {
  // inputs, coeffs: (B, T, D) contiguous → outputs (B, T, D).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& inputs,
                               const torch::Tensor& coeffs, bool reverse) {
    torch::Tensor outputs = linrec_fwd(inputs, coeffs, reverse);
    ctx->save_for_backward({coeffs, outputs});
    ctx->saved_data["reverse"] = reverse;
    return outputs;
  }

  // grad_outputs[0]: (B, T, D), any strides → {d_inputs, d_coeffs, none (reverse)}.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::Tensor& grad = grad_outputs[0];
    if (!grad.defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& coeffs = saved[0];
    const torch::Tensor& outputs = saved[1];
    const bool reverse = ctx->saved_data["reverse"].toBool();
    auto [d_inputs, d_coeffs] =
        linrec_bwd(grad.to(outputs.scalar_type()).contiguous(), coeffs, outputs, reverse);
    return {d_inputs, d_coeffs, torch::Tensor()};
  }
};

}  // namespace

#ifndef FPRNN_WITH_CUDA
// Without CUDA the CUDA entry points exist (so callers and tests link) but refuse to run.
torch::Tensor linrec_fwd_cuda(const torch::Tensor&, const torch::Tensor&, bool) {
  TORCH_CHECK(false, "linrec_fwd_cuda: this build has no CUDA kernels");
}
std::pair<torch::Tensor, torch::Tensor> linrec_bwd_cuda(const torch::Tensor&, const torch::Tensor&,
                                                        const torch::Tensor&, bool) {
  TORCH_CHECK(false, "linrec_bwd_cuda: this build has no CUDA kernels");
}
#endif

torch::Tensor linrec(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse) {
  detail::linrec_check_args("linrec", {{"inputs", inputs}, {"coeffs", coeffs}}, /*cpu_contiguous=*/false);
  check_backend(inputs);
  return LinrecFunction::apply(inputs.contiguous(), coeffs.contiguous(), reverse);
}

}  // namespace fprnn::ops
