// selective_scan entry: the Mamba-1 recurrence with autograd (saves the inputs, the backward recomputes the
// states), checks and dispatch; and the ATen-ops version for devices without a kernel.
// Layout contract: u, dt (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D); any strides.
#include "fprnn/ops/selective_scan.h"

#include "ops/selective_scan/selective_scan_common.h"

#include <torch/autograd.h>

#include <vector>

namespace fprnn::ops {

namespace detail {

void selective_scan_check_args(const char* fn, const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                               const at::Tensor& dt_bias, const at::Tensor& grad, bool cpu_contiguous) {
  struct Arg {
    const char* name;
    const at::Tensor& t;
  };
  const std::vector<Arg> args = {{"u", u},   {"dt", dt},         {"A", A},         {"B", Bm},
                                 {"C", Cm}, {"D_skip", D_skip}, {"dt_bias", dt_bias}};
  for (const Arg& a : args) TORCH_CHECK(a.t.defined(), fn, ": ", a.name, " is undefined");
  TORCH_CHECK(u.dim() == 3, fn, ": u must be (B, T, D), got sizes ", u.sizes());
  const int64_t B = u.size(0), T = u.size(1), D = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == D, fn, ": A must be (D, N) with D = ", D, ", got sizes ", A.sizes());
  const int64_t N = A.size(1);
  TORCH_CHECK(N > 0, fn, ": A must have at least one state (N > 0), got sizes ", A.sizes());
  TORCH_CHECK(dt.sizes() == u.sizes(), fn, ": dt must be (B, T, D) = ", u.sizes(), ", got sizes ", dt.sizes());
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == B && Bm.size(1) == T && Bm.size(2) == N, fn, ": B must be (", B, ", ",
              T, ", ", N, "), got sizes ", Bm.sizes());
  TORCH_CHECK(Cm.dim() == 3 && Cm.size(0) == B && Cm.size(1) == T && Cm.size(2) == N, fn, ": C must be (", B, ", ",
              T, ", ", N, "), got sizes ", Cm.sizes());
  TORCH_CHECK(D_skip.dim() == 1 && D_skip.size(0) == D, fn, ": D_skip must be (", D, "), got sizes ", D_skip.sizes());
  TORCH_CHECK(dt_bias.dim() == 1 && dt_bias.size(0) == D, fn, ": dt_bias must be (", D, "), got sizes ",
              dt_bias.sizes());
  if (grad.defined())
    TORCH_CHECK(grad.sizes() == u.sizes(), fn, ": grad must be (B, T, D) = ", u.sizes(), ", got sizes ", grad.sizes());
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, fn, ": u must be float32 or float64, got ", dtype);
  auto check_like_u = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must have the dtype of u (", dtype, "), got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == u.device(), fn, ": ", name, " is on ", t.device(), " but u is on ", u.device());
    if (cpu_contiguous) {
      TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got ", t.device());
      TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous, got sizes ", t.sizes(), " and strides ",
                  t.strides(), " (selective_scan() makes its arguments contiguous)");
    }
  };
  for (const Arg& a : args) check_like_u(a.name, a.t);
  if (grad.defined()) check_like_u("grad", grad);
}

}  // namespace detail

namespace {

struct SelectiveScanFunction : public torch::autograd::Function<SelectiveScanFunction> {
  // All inputs contiguous tensors of one dtype on the CPU or one CUDA device → y (B, T, D).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& u, const torch::Tensor& dt,
                               const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D_skip, const torch::Tensor& dt_bias) {
    ctx->save_for_backward({u, dt, A, Bm, Cm, D_skip, dt_bias});
    if (u.is_cuda()) return selective_scan_fwd_cuda(u, dt, A, Bm, Cm, D_skip, dt_bias);
    return selective_scan_fwd_cpu(u, dt, A, Bm, Cm, D_skip, dt_bias);
  }

  // grad_outputs[0]: (B, T, D), any strides → the seven input gradients.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::Tensor& grad = grad_outputs[0];
    if (!grad.defined()) return torch::autograd::variable_list(7);
    const auto s = ctx->get_saved_variables();
    const torch::Tensor g_in = grad.to(s[0].scalar_type()).contiguous();
    const SelectiveScanGrads g = s[0].is_cuda()
                                     ? selective_scan_bwd_cuda(g_in, s[0], s[1], s[2], s[3], s[4], s[5], s[6])
                                     : selective_scan_bwd_cpu(g_in, s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
    return {g.du, g.ddt, g.dA, g.dB, g.dC, g.dD_skip, g.ddt_bias};
  }
};

}  // namespace

// u, dt (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D) → y (B, T, D), by autograd on ATen ops.
torch::Tensor selective_scan_aten(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                  const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                  const torch::Tensor& dt_bias) {
  detail::selective_scan_check_args("selective_scan_aten", u, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor(),
                                    false);
  const int64_t T = u.size(1);
  const torch::Tensor delta = torch::softplus(dt + dt_bias, /*beta=*/1, /*threshold=*/20);  // (B, T, D)
  const torch::Tensor dA = torch::exp(delta.unsqueeze(-1) * A);                              // (B, T, D, N)
  const torch::Tensor dBu = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2);                    // (B, T, D, N)
  torch::Tensor s = torch::zeros({u.size(0), u.size(2), A.size(1)}, u.options());
  std::vector<torch::Tensor> ys;
  ys.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    s = dA.select(1, t) * s + dBu.select(1, t);
    ys.push_back(torch::matmul(s, Cm.select(1, t).unsqueeze(-1)).squeeze(-1));  // (B, D)
  }
  return torch::stack(ys, 1) + D_skip * u;
}

torch::Tensor selective_scan(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                             const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                             const torch::Tensor& dt_bias) {
  detail::selective_scan_check_args("selective_scan", u, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor(), false);
  const bool kernel = u.device().is_cpu() || (u.is_cuda() && selective_scan_cuda_supports(A.size(1)));
  if (!kernel) return selective_scan_aten(u, dt, A, Bm, Cm, D_skip, dt_bias);
  return SelectiveScanFunction::apply(u.contiguous(), dt.contiguous(), A.contiguous(), Bm.contiguous(),
                                      Cm.contiguous(), D_skip.contiguous(), dt_bias.contiguous());
}

#ifndef FPRNN_WITH_CUDA
// Without CUDA the CUDA entry points exist (so callers and tests link) but refuse to run.
bool selective_scan_cuda_supports(int64_t) { return false; }
torch::Tensor selective_scan_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                      const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                      const torch::Tensor&) {
  TORCH_CHECK(false, "selective_scan_fwd_cuda: this build has no CUDA kernels");
}
SelectiveScanGrads selective_scan_bwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                           const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                           const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "selective_scan_bwd_cuda: this build has no CUDA kernels");
}
#endif

}  // namespace fprnn::ops
