// Building blocks: (weight-normalised) Linear, low-rank Projection, depthwise causal conv, RMSNorm.
#include "fprnn/nn/basic.h"

#include "fprnn/ops/conv1d.h"

#include <cmath>

namespace fprnn::nn {

void default_uniform_(Tensor& t, int64_t fan_in) {
  torch::NoGradGuard no_grad;
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  t.uniform_(-bound, bound);
}

// ---- Linear ----------------------------------------------------------------------------------------

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias, bool weight_norm)
    : in_features(in_features), out_features(out_features), weight_norm(weight_norm) {
  TORCH_CHECK(in_features > 0 && out_features > 0, "Linear: sizes must be positive, got ", in_features, " → ",
              out_features);
  // kaiming_uniform(a=√5) on (out, in) is U(±1/√in), PyTorch's default.
  Tensor w = torch::empty({out_features, in_features});
  default_uniform_(w, in_features);
  if (weight_norm) {
    weight_v = register_parameter("weight_v", w);
    weight_g = register_parameter("weight_g", w.norm(2, /*dim=*/1, /*keepdim=*/true).detach().clone());
  } else {
    weight_plain = register_parameter("weight", w);
  }
  if (bias) {
    Tensor b = torch::empty({out_features});
    default_uniform_(b, in_features);
    this->bias = register_parameter("bias", b);
  }
}

Tensor LinearImpl::weight() {
  if (!weight_norm) return weight_plain;
  return weight_v * (weight_g / weight_v.norm(2, /*dim=*/1, /*keepdim=*/true));
}

Tensor LinearImpl::forward(const Tensor& x) {
  TORCH_CHECK(x.size(-1) == in_features, "Linear: input has ", x.size(-1), " features, expected ", in_features);
  const Tensor w = weight().to(x.scalar_type());
  return bias.defined() ? torch::nn::functional::linear(x, w, bias.to(x.scalar_type()))
                        : torch::nn::functional::linear(x, w);
}

void LinearImpl::load_weight(const Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.size(0) == out_features && w.size(1) == in_features, "Linear: weight must be (",
              out_features, ", ", in_features, "), got ", w.sizes());
  torch::NoGradGuard no_grad;
  if (weight_norm) {
    weight_v.copy_(w);
    weight_g.copy_(w.norm(2, 1, true));
  } else {
    weight_plain.copy_(w);
  }
}

Tensor LinearImpl::effective_weight_grad() {
  if (!weight_norm) return weight_plain.grad();
  TORCH_CHECK(weight_v.grad().defined() && weight_g.grad().defined(), "Linear: no gradient to convert");
  torch::NoGradGuard no_grad;
  const Tensor norm = weight_v.norm(2, 1, true);
  const Tensor v_hat = weight_v / norm;
  // W = g v/‖v‖ ⇒ dg = v̂ᵀdW, dv = (g/‖v‖)(I − v̂v̂ᵀ)dW ⇒ dW = v̂ dg + (‖v‖/g) dv.
  return v_hat * weight_g.grad() + (norm / weight_g) * weight_v.grad();
}

// ---- Projection ------------------------------------------------------------------------------------

ProjectionImpl::ProjectionImpl(int64_t in_features, int64_t out_features, int64_t rank, bool bias, bool weight_norm)
    : in_features(in_features), out_features(out_features) {
  TORCH_CHECK(rank == -1 || rank > 0, "Projection: rank must be -1 (full) or positive, got ", rank);
  if (rank == -1) {
    stages.push_back(register_module("0", Linear(in_features, out_features, bias, weight_norm)));
  } else {
    stages.push_back(register_module("0", Linear(in_features, rank, false, weight_norm)));
    stages.push_back(register_module("1", Linear(rank, out_features, bias, weight_norm)));
  }
}

Tensor ProjectionImpl::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& s : stages) y = s->forward(y);
  return y;
}

// ---- CausalConv1d ----------------------------------------------------------------------------------

CausalConv1dImpl::CausalConv1dImpl(int64_t channels, int64_t kernel_size, bool bias)
    : channels(channels), kernel_size(kernel_size) {
  TORCH_CHECK(channels > 0 && kernel_size > 0, "CausalConv1d: sizes must be positive");
  Tensor w = torch::empty({channels, 1, kernel_size});
  default_uniform_(w, kernel_size);  // fan_in = in_channels/groups · K = K
  weight = register_parameter("weight", w);
  if (bias) {
    Tensor b = torch::empty({channels});
    default_uniform_(b, kernel_size);
    this->bias = register_parameter("bias", b);
  }
}

namespace {

// The module's convolution with or without the fused SiLU; weight and bias are cast to x's dtype.
Tensor causal_conv(const CausalConv1dImpl& m, const Tensor& x, bool silu) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == m.channels, "CausalConv1d: input must be (B, T, ", m.channels, "), got ",
              x.sizes());
  const Tensor w = m.weight.to(x.scalar_type());
  const Tensor b = m.bias.defined() ? m.bias.to(x.scalar_type()) : Tensor();
  return ops::causal_conv1d(x, w, b, silu);
}

}  // namespace

Tensor CausalConv1dImpl::forward(const Tensor& x) { return causal_conv(*this, x, /*silu=*/false); }

Tensor CausalConv1dImpl::forward_silu(const Tensor& x) { return causal_conv(*this, x, /*silu=*/true); }

Tensor CausalConv1dImpl::forward_silu_pair(const Tensor& x1, const Tensor& x2) {
  TORCH_CHECK(x1.dim() == 3 && x2.dim() == 3 && x1.size(2) + x2.size(2) == channels,
              "CausalConv1d: inputs must be (B, T, C1) and (B, T, C2) with C1 + C2 = ", channels, ", got ", x1.sizes(),
              " and ", x2.sizes());
  const Tensor w = weight.to(x1.scalar_type());
  const Tensor b = bias.defined() ? bias.to(x1.scalar_type()) : Tensor();
  return ops::causal_conv1d_pair(x1, x2, w, b, /*silu=*/true);
}

std::vector<Tensor> forward_silu_shared_input(const std::vector<CausalConv1d>& convs, const Tensor& x) {
  TORCH_CHECK(!convs.empty(), "forward_silu_shared_input: no convolutions");
  const CausalConv1dImpl& first = *convs.front();
  bool alike = true;
  for (const auto& m : convs) {
    alike = alike && m->channels == first.channels && m->kernel_size == first.kernel_size &&
            m->bias.defined() == first.bias.defined();
  }
  if (!alike || convs.size() == 1) {
    std::vector<Tensor> ys;
    for (auto m : convs) ys.push_back(m->forward_silu(x));
    return ys;
  }
  TORCH_CHECK(x.dim() == 3 && x.size(2) == first.channels, "CausalConv1d: input must be (B, T, ", first.channels,
              "), got ", x.sizes());
  std::vector<Tensor> w, b;
  for (const auto& m : convs) {
    w.push_back(m->weight);
    if (m->bias.defined()) b.push_back(m->bias);
  }
  return ops::causal_conv1d_multi(x, torch::stack(w).to(x.scalar_type()),
                                  b.empty() ? Tensor() : torch::stack(b).to(x.scalar_type()), /*silu=*/true);
}

// ---- RMSNorm ---------------------------------------------------------------------------------------

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps(eps) {
  TORCH_CHECK(dim > 0 && eps > 0, "RMSNorm: dim and eps must be positive");
  weight = register_parameter("weight", torch::ones({dim}));
}

Tensor RMSNormImpl::forward(const Tensor& x) {
  TORCH_CHECK(x.size(-1) == weight.size(0), "RMSNorm: input has ", x.size(-1), " features, expected ",
              weight.size(0));
  const auto compute = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const Tensor xf = x.to(compute);
  const Tensor y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight.to(compute);
  return y.to(x.scalar_type());
}

// ---- functions -------------------------------------------------------------------------------------

Tensor activation(const Tensor& x, const std::string& name) {
  if (name == "silu") return torch::silu(x);
  if (name == "relu") return torch::relu(x);
  if (name == "identity") return x;
  TORCH_CHECK(false, "unknown activation '", name, "' (valid: identity, relu, silu)");
}

Tensor l2_normalize(const Tensor& x, int64_t dim, double eps) {
  return x / x.norm(2, dim, /*keepdim=*/true).clamp_min(eps);
}

}  // namespace fprnn::nn
