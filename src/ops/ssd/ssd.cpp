// ssd entry: the Mamba-2 recurrence with autograd (saves the inputs, the backward recomputes the states),
// checks and dispatch; and the ATen-ops version for devices without a kernel.
// Layout contract: x (B, T, H, P); dt (B, T, H); A (H); Bm, Cm (B, T, G, N); D_skip, dt_bias (H); any strides.
#include "fprnn/ops/ssd.h"

#include "ops/ssd/ssd_common.h"

#include <torch/autograd.h>

#include <vector>

namespace fprnn::ops {

namespace detail {

void ssd_check_args(const char* fn, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                    const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip, const at::Tensor& dt_bias,
                    const at::Tensor& grad, bool cpu_contiguous) {
  struct Arg {
    const char* name;
    const at::Tensor& t;
  };
  const std::vector<Arg> args = {{"x", x},   {"dt", dt},         {"A", A},         {"B", Bm},
                                 {"C", Cm}, {"D_skip", D_skip}, {"dt_bias", dt_bias}};
  for (const Arg& a : args) TORCH_CHECK(a.t.defined(), fn, ": ", a.name, " is undefined");
  TORCH_CHECK(x.dim() == 4, fn, ": x must be (B, T, H, P), got sizes ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  TORCH_CHECK(H > 0 && x.size(3) > 0, fn, ": x needs at least one head and one channel per head, got sizes ",
              x.sizes());
  TORCH_CHECK(dt.dim() == 3 && dt.size(0) == B && dt.size(1) == T && dt.size(2) == H, fn, ": dt must be (", B, ", ",
              T, ", ", H, "), got sizes ", dt.sizes());
  TORCH_CHECK(A.dim() == 1 && A.size(0) == H, fn, ": A must be (", H, "), got sizes ", A.sizes());
  TORCH_CHECK(Bm.dim() == 4 && Bm.size(0) == B && Bm.size(1) == T, fn, ": B must be (", B, ", ", T,
              ", G, N), got sizes ", Bm.sizes());
  const int64_t G = Bm.size(2), N = Bm.size(3);
  TORCH_CHECK(G > 0 && H % G == 0, fn, ": the number of groups G = ", G, " (B's dim 2) must divide the ", H,
              " heads, got B sizes ", Bm.sizes());
  TORCH_CHECK(N > 0, fn, ": B must have at least one state (N > 0), got sizes ", Bm.sizes());
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), fn, ": C must be (B, T, G, N) = ", Bm.sizes(), ", got sizes ", Cm.sizes());
  TORCH_CHECK(D_skip.dim() == 1 && D_skip.size(0) == H, fn, ": D_skip must be (", H, "), got sizes ", D_skip.sizes());
  TORCH_CHECK(dt_bias.dim() == 1 && dt_bias.size(0) == H, fn, ": dt_bias must be (", H, "), got sizes ",
              dt_bias.sizes());
  if (grad.defined())
    TORCH_CHECK(grad.sizes() == x.sizes(), fn, ": grad must be (B, T, H, P) = ", x.sizes(), ", got sizes ",
                grad.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, fn, ": x must be float32 or float64, got ", dtype);
  auto check_like_x = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must have the dtype of x (", dtype, "), got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), fn, ": ", name, " is on ", t.device(), " but x is on ", x.device());
    if (cpu_contiguous) {
      TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got ", t.device());
      TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous, got sizes ", t.sizes(), " and strides ",
                  t.strides(), " (ssd() makes its arguments contiguous)");
    }
  };
  for (const Arg& a : args) check_like_x(a.name, a.t);
  if (grad.defined()) check_like_x("grad", grad);
}

}  // namespace detail

namespace {

struct SsdFunction : public torch::autograd::Function<SsdFunction> {
  // All inputs contiguous CPU tensors of one dtype → y (B, T, H, P).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& dt,
                               const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                               const torch::Tensor& D_skip, const torch::Tensor& dt_bias) {
    ctx->save_for_backward({x, dt, A, Bm, Cm, D_skip, dt_bias});
    return ssd_fwd_cpu(x, dt, A, Bm, Cm, D_skip, dt_bias);
  }

  // grad_outputs[0]: (B, T, H, P), any strides → the seven input gradients.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::Tensor& grad = grad_outputs[0];
    if (!grad.defined()) return torch::autograd::variable_list(7);
    const auto s = ctx->get_saved_variables();
    const SsdGrads g = ssd_bwd_cpu(grad.to(s[0].scalar_type()).contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
    return {g.dx, g.ddt, g.dA, g.dB, g.dC, g.dD_skip, g.ddt_bias};
  }
};

}  // namespace

// x (B, T, H, P); dt (B, T, H); A (H); Bm, Cm (B, T, G, N); D_skip, dt_bias (H) → y (B, T, H, P), by autograd
// on ATen ops.
torch::Tensor ssd_aten(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& Bm,
                       const torch::Tensor& Cm, const torch::Tensor& D_skip, const torch::Tensor& dt_bias) {
  detail::ssd_check_args("ssd_aten", x, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor(), false);
  const int64_t T = x.size(1), H = x.size(2), G = Bm.size(2);
  const torch::Tensor delta = torch::softplus(dt + dt_bias, /*beta=*/1, /*threshold=*/20);  // (B, T, H)
  const torch::Tensor a = torch::exp(delta * A);                                               // (B, T, H)
  const torch::Tensor Bh = Bm.repeat_interleave(H / G, 2);                                     // (B, T, H, N)
  const torch::Tensor Ch = Cm.repeat_interleave(H / G, 2);
  const torch::Tensor dBx = (delta.unsqueeze(-1) * x).unsqueeze(-1) * Bh.unsqueeze(3);       // (B, T, H, P, N)
  torch::Tensor S = torch::zeros({x.size(0), H, x.size(3), Bm.size(3)}, x.options());
  std::vector<torch::Tensor> ys;
  ys.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    S = a.select(1, t).unsqueeze(-1).unsqueeze(-1) * S + dBx.select(1, t);
    ys.push_back(torch::matmul(S, Ch.select(1, t).unsqueeze(-1)).squeeze(-1));  // (B, H, P)
  }
  return torch::stack(ys, 1) + D_skip.unsqueeze(-1) * x;
}

torch::Tensor ssd(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& Bm,
                  const torch::Tensor& Cm, const torch::Tensor& D_skip, const torch::Tensor& dt_bias) {
  detail::ssd_check_args("ssd", x, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor(), false);
  if (!x.device().is_cpu()) return ssd_aten(x, dt, A, Bm, Cm, D_skip, dt_bias);
  return SsdFunction::apply(x.contiguous(), dt.contiguous(), A.contiguous(), Bm.contiguous(), Cm.contiguous(),
                            D_skip.contiguous(), dt_bias.contiguous());
}

}  // namespace fprnn::ops
