// Building blocks shared by the layers: (weight-normalised) linears, low-rank projections, the depthwise
// causal convolution, RMSNorm and the mixer activations. Initialisations follow PyTorch's defaults.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace fprnn::nn {

using torch::Tensor;

// y = x Wᵀ + b. With weight_norm, W = g ⊙ v / ‖v_row‖₂ (PyTorch weight_norm, dim 0) with trainable
// weight_g (out, 1) and weight_v (out, in); otherwise a plain trainable `weight` (out, in).
// Init: v (or W) ~ U(±1/√in) and g = ‖v_row‖, so the initial W equals PyTorch's default Linear.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias, bool weight_norm);

  Tensor forward(const Tensor& x);
  // The effective weight (out, in), differentiable with respect to the parameters.
  Tensor weight();
  // Sets the parameters so that the effective weight is `w` (weight norm: v = w, g = ‖w_row‖).
  void load_weight(const Tensor& w);
  // Converts a gradient with respect to the effective weight's parameters into one with respect to
  // the effective weight: dW = v̂·dg + (‖v‖/g)·dv per row (exact inverse of the weight-norm chain rule).
  Tensor effective_weight_grad();

  int64_t in_features, out_features;
  bool weight_norm;
  Tensor weight_g, weight_v, weight_plain, bias;  // bias undefined when bias = false
};
TORCH_MODULE(Linear);

// A parameter projection P → out: one Linear ("0"), or with rank k > 0 two Linears "0": P → k and
// "1": k → out with no nonlinearity (the reference's low-rank factorisation, spec §7). Only the last
// stage has a bias.
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in_features, int64_t out_features, int64_t rank, bool bias, bool weight_norm);

  Tensor forward(const Tensor& x);
  std::vector<Linear> stages;
  int64_t in_features, out_features;
};
TORCH_MODULE(Projection);

// Depthwise causal convolution along time on (B, T, C):
//   y_t[c] = bias[c] + Σ_{k=0..K−1} w[c, k] · x_{t−K+1+k}[c]   (zero for negative time)
// weight (C, 1, K) and bias (C) as PyTorch's Conv1d(C, C, K, groups=C); init U(±1/√K) for both.
// Computed by the fused op ops::causal_conv1d (weight and bias cast to x's dtype).
class CausalConv1dImpl : public torch::nn::Module {
 public:
  CausalConv1dImpl(int64_t channels, int64_t kernel_size, bool bias = true);
  Tensor forward(const Tensor& x);
  // silu(forward(x)), fused into the same pass.
  Tensor forward_silu(const Tensor& x);
  // forward_silu(cat({x1, x2}, -1)) without forming the concatenation on CUDA (ops::causal_conv1d_pair).
  Tensor forward_silu_pair(const Tensor& x1, const Tensor& x2);
  int64_t channels, kernel_size;
  Tensor weight, bias;
};
TORCH_MODULE(CausalConv1d);

// silu(conv(x)) for each of `convs` on the same x: one ops::causal_conv1d_multi call (on CUDA one kernel each
// way, x read once) when they share channels and kernel size and all or none have a bias; else one call each.
std::vector<Tensor> forward_silu_shared_input(const std::vector<CausalConv1d>& convs, const Tensor& x);

// y = x / sqrt(mean(x², last dim) + eps) ⊙ w, computed in float32 at least; w initialised to 1.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  Tensor forward(const Tensor& x);
  double eps;
  Tensor weight;
};
TORCH_MODULE(RMSNorm);

// identity | relu | silu; unknown names throw.
Tensor activation(const Tensor& x, const std::string& name);

// F.normalize: x / max(‖x‖₂, eps) along `dim`.
Tensor l2_normalize(const Tensor& x, int64_t dim, double eps);

// PyTorch's default Linear/Conv init U(±1/√fan_in), drawn from the global generator.
void default_uniform_(Tensor& t, int64_t fan_in);

}  // namespace fprnn::nn
