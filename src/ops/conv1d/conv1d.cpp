// causal_conv1d entry: y_t = act(bias + Σ_k w_k ⊙ x_{t−K+1+k}) with autograd (saves x, weight, bias; the
// backward recomputes the pre-activation), checks and dispatch (CPU: fused kernels; other devices: ATen ops).
// Layout contract: x (B, T, C), weight (C, K) or (C, 1, K), bias (C) or undefined; any strides (made
// contiguous here).
#include "fprnn/ops/conv1d.h"

#include "ops/conv1d/conv1d_common.h"

#include <torch/autograd.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace fprnn::ops {

namespace detail {

Conv1dSizes conv1d_check_args(const char* fn, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& grad, bool cpu_contiguous) {
  TORCH_CHECK(x.defined(), fn, ": x is undefined");
  TORCH_CHECK(weight.defined(), fn, ": weight is undefined");
  TORCH_CHECK(x.dim() == 3, fn, ": x must be (B, T, C), got sizes ", x.sizes());
  Conv1dSizes s{x.size(0), x.size(1), x.size(2), weight.size(-1)};
  const bool weight_2d = weight.dim() == 2 && weight.size(0) == s.C;
  const bool weight_3d = weight.dim() == 3 && weight.size(0) == s.C && weight.size(1) == 1;
  TORCH_CHECK(weight_2d || weight_3d, fn, ": weight must be (C, K) or (C, 1, K) with C = ", s.C,
              " (the channels of x ", x.sizes(), "), got ", weight.sizes());
  TORCH_CHECK(s.K >= 1, fn, ": the kernel width K must be at least 1, got weight ", weight.sizes());
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == s.C, fn, ": bias must be (C) = (", s.C, "), got ",
                bias.sizes());
  }
  if (grad.defined()) {
    TORCH_CHECK(grad.sizes() == x.sizes(), fn, ": grad must have the sizes of x ", x.sizes(), ", got ",
                grad.sizes());
  }
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16, fn,
              ": x must be float32, float64 or bfloat16, got ", dtype);
  struct Named {
    const char* name;
    const at::Tensor& t;
  };
  for (const Named& a : {Named{"x", x}, Named{"weight", weight}, Named{"bias", bias}, Named{"grad", grad}}) {
    if (!a.t.defined()) continue;
    TORCH_CHECK(a.t.scalar_type() == dtype, fn, ": ", a.name, " must have the dtype of x (", dtype, "), got ",
                a.t.scalar_type());
    TORCH_CHECK(a.t.device() == x.device(), fn, ": ", a.name, " is on ", a.t.device(), " but x is on ", x.device());
    if (cpu_contiguous) {
      TORCH_CHECK(a.t.device().is_cpu(), fn, ": ", a.name, " must be a CPU tensor, got ", a.t.device());
      TORCH_CHECK(a.t.is_contiguous(), fn, ": ", a.name, " must be contiguous, got sizes ", a.t.sizes(),
                  " and strides ", a.t.strides(), " (causal_conv1d() makes its arguments contiguous)");
    }
  }
  return s;
}

Conv1dChunks conv1d_cuda_chunks(int64_t B, int64_t T, int64_t C, int64_t per_thread, int64_t sms,
                                 int64_t threads_per_sm, int64_t max_count) {
  Conv1dChunks ch;
  if (T <= 0) return ch;
  const int64_t threads = std::max<int64_t>(1, B * C / std::max<int64_t>(1, per_thread));
  const int64_t want = (2 * sms * threads_per_sm + threads - 1) / threads;
  const int64_t count = std::max<int64_t>(1, std::min<int64_t>({want, T / 16, max_count}));
  ch.length = (T + count - 1) / count;
  ch.count = (T + ch.length - 1) / ch.length;  // ≤ count; chunk count − 1 starts before T
  return ch;
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The pre-activation z = bias + Σ_k w_k ⊙ x_{t−K+1+k} in ATen ops (differentiable, any device).
// x (B, T, C); weight (C, K) or (C, 1, K); bias (C) or undefined → z (B, T, C).
torch::Tensor pre_aten(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t T = x.size(1), C = x.size(2), K = weight.size(-1);
  const torch::Tensor w = weight.reshape({C, K});
  const torch::Tensor xp = torch::constant_pad_nd(x, {0, 0, K - 1, 0});  // xp_{t+k} = x_{t−K+1+k}
  torch::Tensor z = bias.defined() ? bias.expand_as(x) : torch::zeros_like(x);
  for (int64_t k = 0; k < K; ++k) z = z + xp.narrow(1, k, T) * w.select(1, k);
  return z;
}

// The forward in ATen ops, differentiable through ATen's autograd: the backend for devices without a fused
// kernel (CUDA, until one lands), as the module computed it before this op existed.
torch::Tensor fwd_aten(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, bool silu) {
  const torch::Tensor z = pre_aten(x, weight, bias);
  return silu ? torch::silu(z) : z;
}

#ifndef FPRNN_WITH_CUDA
// The forward on a GPU in a build without the CUDA kernels: ATen's depthwise conv1d (cuDNN), differentiable
// through ATen's autograd. The tap loop above costs 2K strided elementwise kernels forward and more backward;
// this is one convolution.
// conv1d is a cross-correlation: with K−1 zeros on both sides, output t = Σ_k w_k x_{t−K+1+k} for t < T.
torch::Tensor fwd_device(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, bool silu) {
  const int64_t T = x.size(1), C = x.size(2), K = weight.size(-1);
  const torch::Tensor xt = x.transpose(1, 2).contiguous();  // (B, C, T)
  const torch::Tensor z = torch::conv1d(xt, weight.reshape({C, 1, K}), bias, /*stride=*/1, /*padding=*/K - 1,
                                        /*dilation=*/1, /*groups=*/C)
                              .narrow(2, 0, T)
                              .transpose(1, 2)
                              .contiguous();
  return silu ? torch::silu(z) : z;
}
#endif

// The backward in ATen ops, differentiable (for create_graph, i.e. double backward); the formulas of the
// kernels. grad, x: (B, T, C); weight (C, K) or (C, 1, K); bias (C) or undefined → {dx, dweight, dbias}.
variable_list bwd_aten(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias, bool silu) {
  const int64_t T = x.size(1), C = x.size(2), K = weight.size(-1);
  const torch::Tensor w = weight.reshape({C, K});
  torch::Tensor gz = grad;
  if (silu) {
    const torch::Tensor z = pre_aten(x, weight, bias);
    const torch::Tensor s = torch::sigmoid(z);
    gz = grad * (s * (1 + z * (1 - s)));
  }
  const torch::Tensor xp = torch::constant_pad_nd(x, {0, 0, K - 1, 0});    // xp_{t+k} = x_{t−K+1+k}
  const torch::Tensor gp = torch::constant_pad_nd(gz, {0, 0, 0, K - 1});   // gp_t = gz_t, zero for t ≥ T
  torch::Tensor dx = torch::zeros_like(x);
  std::vector<torch::Tensor> dw_taps;
  for (int64_t k = 0; k < K; ++k) {
    dx = dx + gp.narrow(1, K - 1 - k, T) * w.select(1, k);  // dx_s += w_k gz_{s+K−1−k}
    dw_taps.push_back((gz * xp.narrow(1, k, T)).sum(at::IntArrayRef{0, 1}));
  }
  const torch::Tensor dw = torch::stack(dw_taps, 1).reshape(weight.sizes());
  return {dx, dw, bias.defined() ? gz.sum(at::IntArrayRef{0, 1}) : torch::Tensor()};
}

// Autograd inputs must be defined tensors, so "no bias" travels as a 0-element placeholder and has_bias = false.
struct CausalConv1dFunction : public torch::autograd::Function<CausalConv1dFunction> {
  // x (B, T, C), weight (C, K) or (C, 1, K), bias (C) (or the placeholder): contiguous CPU → y (B, T, C).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, bool has_bias, bool silu) {
    const torch::Tensor b = has_bias ? bias : torch::Tensor();
    ctx->save_for_backward({x, weight, b});
    ctx->saved_data["silu"] = silu;
    return x.is_cuda() ? causal_conv1d_fwd_cuda(x, weight, b, silu) : causal_conv1d_fwd_cpu(x, weight, b, silu);
  }

  // grad_outputs[0]: (B, T, C), any strides → {dx, dweight, dbias (undefined without bias), none, none}.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const torch::Tensor& grad = grad_outputs[0];
    if (!grad.defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const bool silu = ctx->saved_data["silu"].toBool();
    const torch::Tensor g = grad.to(x.scalar_type());
    variable_list d;
    if (torch::GradMode::is_enabled()) {
      // create_graph: the kernel is not differentiable, so take the same formulas in ATen ops.
      d = bwd_aten(g, x, weight, bias, silu);
    } else {
      auto [dx, dw, db] = x.is_cuda() ? causal_conv1d_bwd_cuda(g.contiguous(), x, weight, bias, silu)
                                      : causal_conv1d_bwd_cpu(g.contiguous(), x, weight, bias, silu);
      d = {dx, dw, db};
    }
    d.push_back(torch::Tensor());
    d.push_back(torch::Tensor());
    return d;
  }
};

#ifdef FPRNN_WITH_CUDA
// n convolutions of one x on CUDA (1 ≤ n ≤ 4): one forward kernel, one backward kernel (dx summed over the
// convolutions in it). weight (n, C, K), bias (n, C) (or the placeholder), contiguous → n outputs (B, T, C).
struct CausalConv1dMultiFunction : public torch::autograd::Function<CausalConv1dMultiFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, bool has_bias, bool silu) {
    const torch::Tensor b = has_bias ? bias : torch::Tensor();
    ctx->save_for_backward({x, weight, b});
    ctx->saved_data["silu"] = silu;
    return causal_conv1d_multi_fwd_cuda(x, weight, b, silu);
  }

  // grad_outputs: n tensors (B, T, C), any strides (undefined ones arrive as zeros) → {dx, dweight, dbias, none,
  // none}.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const bool silu = ctx->saved_data["silu"].toBool();
    std::vector<torch::Tensor> grads;
    for (const auto& g : grad_outputs) grads.push_back(g.to(x.scalar_type()).contiguous());
    torch::Tensor dx, dw, db;
    if (torch::GradMode::is_enabled()) {
      // create_graph: the kernel is not differentiable, so take the same formulas in ATen ops.
      std::vector<torch::Tensor> dws, dbs;
      for (size_t j = 0; j < grads.size(); ++j) {
        const auto d = bwd_aten(grads[j], x, weight[j], bias.defined() ? bias[j] : torch::Tensor(), silu);
        dx = dx.defined() ? dx + d[0] : d[0];
        dws.push_back(d[1]);
        if (bias.defined()) dbs.push_back(d[2]);
      }
      dw = torch::stack(dws);
      if (bias.defined()) db = torch::stack(dbs);
    } else {
      std::tie(dx, dw, db) = causal_conv1d_multi_bwd_cuda(grads, x, weight, bias, silu);
    }
    return {dx, dw, db, torch::Tensor(), torch::Tensor()};
  }
};

// One convolution of [x1, x2] (channels concatenated) on CUDA, the concatenation never formed: the kernels read
// channels c < C1 from x1 and the rest from x2, and write dx1, dx2 as they are. weight (C, K), bias (C) (or the
// placeholder), contiguous.
struct CausalConv1dPairFunction : public torch::autograd::Function<CausalConv1dPairFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x1, const torch::Tensor& x2,
                               const torch::Tensor& weight, const torch::Tensor& bias, bool has_bias, bool silu) {
    const torch::Tensor b = has_bias ? bias : torch::Tensor();
    ctx->save_for_backward({x1, x2, weight, b});
    ctx->saved_data["silu"] = silu;
    return causal_conv1d_pair_fwd_cuda(x1, x2, weight, b, silu);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x1 = saved[0], &x2 = saved[1], &weight = saved[2], &bias = saved[3];
    const bool silu = ctx->saved_data["silu"].toBool();
    const torch::Tensor g = grad_outputs[0].to(x1.scalar_type()).contiguous();
    if (torch::GradMode::is_enabled()) {
      // create_graph: the kernel is not differentiable, so take the same formulas in ATen ops.
      const auto d = bwd_aten(g, torch::cat({x1, x2}, -1), weight, bias, silu);
      const int64_t C1 = x1.size(2);
      return {d[0].narrow(2, 0, C1), d[0].narrow(2, C1, x2.size(2)), d[1], d[2], torch::Tensor(), torch::Tensor()};
    }
    auto [dx1, dx2, dw, db] = causal_conv1d_pair_bwd_cuda(g, x1, x2, weight, bias, silu);
    return {dx1, dx2, dw, db, torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

#ifndef FPRNN_WITH_CUDA
std::vector<torch::Tensor> causal_conv1d_multi_fwd_cuda(const torch::Tensor&, const torch::Tensor&,
                                                        const torch::Tensor&, bool) {
  TORCH_CHECK(false, "causal_conv1d_multi_fwd_cuda: this build has no CUDA kernels");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_multi_bwd_cuda(const std::vector<torch::Tensor>&,
                                                                                     const torch::Tensor&,
                                                                                     const torch::Tensor&,
                                                                                     const torch::Tensor&, bool) {
  TORCH_CHECK(false, "causal_conv1d_multi_bwd_cuda: this build has no CUDA kernels");
}
torch::Tensor causal_conv1d_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, bool) {
  TORCH_CHECK(false, "causal_conv1d_fwd_cuda: this build has no CUDA kernels");
}
torch::Tensor causal_conv1d_pair_fwd_cuda(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                          const torch::Tensor&, bool) {
  TORCH_CHECK(false, "causal_conv1d_pair_fwd_cuda: this build has no CUDA kernels");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_pair_bwd_cuda(
    const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, bool) {
  TORCH_CHECK(false, "causal_conv1d_pair_bwd_cuda: this build has no CUDA kernels");
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_cuda(const torch::Tensor&,
                                                                               const torch::Tensor&,
                                                                               const torch::Tensor&,
                                                                               const torch::Tensor&, bool) {
  TORCH_CHECK(false, "causal_conv1d_bwd_cuda: this build has no CUDA kernels");
}
#endif

torch::Tensor causal_conv1d(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            bool silu) {
  detail::conv1d_check_args("causal_conv1d", x, weight, bias, torch::Tensor(), /*cpu_contiguous=*/false);
  if (!x.device().is_cpu() && !x.is_cuda()) return fwd_aten(x, weight, bias, silu);
#ifndef FPRNN_WITH_CUDA
  if (x.is_cuda()) return fwd_device(x, weight, bias, silu);  // a build without CUDA kernels: cuDNN
#endif
  const bool has_bias = bias.defined();
  return CausalConv1dFunction::apply(x.contiguous(), weight.contiguous(),
                                     has_bias ? bias.contiguous() : torch::empty({0}, x.options()), has_bias, silu);
}

std::vector<torch::Tensor> causal_conv1d_multi(const torch::Tensor& x, const torch::Tensor& weight,
                                               const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(weight.defined() && (weight.dim() == 3 || (weight.dim() == 4 && weight.size(2) == 1)) &&
                  weight.size(0) >= 1,
              "causal_conv1d_multi: weight must be (n, C, K) or (n, C, 1, K) with n ≥ 1, got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  const int64_t n = weight.size(0);
  TORCH_CHECK(!bias.defined() || (bias.dim() == 2 && bias.size(0) == n), "causal_conv1d_multi: bias must be (n, C) = (",
              n, ", C), got ", bias.defined() ? bias.sizes() : at::IntArrayRef{});
  for (int64_t j = 0; j < n; ++j) {
    detail::conv1d_check_args("causal_conv1d_multi", x, weight[j], bias.defined() ? bias[j] : torch::Tensor(),
                              torch::Tensor(), /*cpu_contiguous=*/false);
  }
#ifdef FPRNN_WITH_CUDA
  if (x.is_cuda() && n <= 4) {
    const int64_t C = x.size(2), K = weight.size(-1);
    const bool has_bias = bias.defined();
    return CausalConv1dMultiFunction::apply(x.contiguous(), weight.reshape({n, C, K}).contiguous(),
                                            has_bias ? bias.contiguous() : torch::empty({0}, x.options()), has_bias,
                                            silu);
  }
#endif
  std::vector<torch::Tensor> ys;
  for (int64_t j = 0; j < n; ++j) ys.push_back(causal_conv1d(x, weight[j], bias.defined() ? bias[j] : bias, silu));
  return ys;
}

torch::Tensor causal_conv1d_pair(const torch::Tensor& x1, const torch::Tensor& x2, const torch::Tensor& weight,
                                 const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(x1.defined() && x2.defined() && x1.dim() == 3 && x2.dim() == 3 && x1.size(0) == x2.size(0) &&
                  x1.size(1) == x2.size(1),
              "causal_conv1d_pair: x1 and x2 must be (B, T, C1) and (B, T, C2), got ",
              x1.defined() ? x1.sizes() : at::IntArrayRef{}, " and ", x2.defined() ? x2.sizes() : at::IntArrayRef{});
  TORCH_CHECK(x2.scalar_type() == x1.scalar_type() && x2.device() == x1.device(), "causal_conv1d_pair: x2 is ",
              x2.scalar_type(), " on ", x2.device(), " but x1 ", x1.scalar_type(), " on ", x1.device());
#ifdef FPRNN_WITH_CUDA
  if (x1.is_cuda()) {
    const int64_t C = x1.size(2) + x2.size(2);
    // The checks of one convolution of C channels (a zero-size stand-in for [x1, x2]).
    detail::conv1d_check_args("causal_conv1d_pair", torch::empty({0, 0, C}, x1.options()), weight, bias,
                              torch::Tensor(), /*cpu_contiguous=*/false);
    TORCH_CHECK(weight.size(-1) <= 16, "causal_conv1d_pair: kernel size must be at most 16 on CUDA, got ",
                weight.size(-1));
    const bool has_bias = bias.defined();
    return CausalConv1dPairFunction::apply(x1.contiguous(), x2.contiguous(),
                                           weight.reshape({C, weight.size(-1)}).contiguous(),
                                           has_bias ? bias.contiguous() : torch::empty({0}, x1.options()), has_bias,
                                           silu);
  }
#endif
  return causal_conv1d(torch::cat({x1, x2}, -1), weight, bias, silu);
}

}  // namespace fprnn::ops
