// causal_conv1d reference: y_t = act(bias + Σ_k w_k x_{t−K+1+k}) and its backward, plain loops in float64
// (never optimised).
// Layout contract: x, grad (B, T, C), weight (C, K) or (C, 1, K), bias (C) or undefined; any strides and device
// (computed on the CPU); results in x's dtype and device.
#include "fprnn/ops/conv1d.h"

#include "ops/conv1d/conv1d_common.h"

#include <cmath>

namespace fprnn::ops {

namespace {

using detail::conv1d_sigmoid;
using detail::conv1d_silu;
using detail::conv1d_silu_grad;

torch::Tensor cpu_float64(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
}

// z[b][t][c] = bias[c] + Σ_k w[c][k] x[b][t−K+1+k][c] (terms at negative time left out): (B, T, C) float64.
torch::Tensor pre_activation(const torch::Tensor& x64, const torch::Tensor& w64, const torch::Tensor& bias64) {
  const int64_t B = x64.size(0), T = x64.size(1), C = x64.size(2), K = w64.size(1);
  torch::Tensor z_t = torch::zeros_like(x64);
  const auto x = x64.accessor<double, 3>();
  const auto w = w64.accessor<double, 2>();
  auto z = z_t.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        double acc = bias64.defined() ? bias64.accessor<double, 1>()[c] : 0.0;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t - K + 1 + k;
          if (s >= 0) acc += w[c][k] * x[b][s][c];
        }
        z[b][t][c] = acc;
      }
    }
  }
  return z_t;
}

}  // namespace

// x (B, T, C), weight (C, K) or (C, 1, K), bias (C) or undefined → y (B, T, C).
torch::Tensor causal_conv1d_fwd_ref(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                    bool silu) {
  const auto sz = detail::conv1d_check_args("causal_conv1d_fwd_ref", x, weight, bias, torch::Tensor(), false);
  const torch::Tensor bias64 = bias.defined() ? cpu_float64(bias) : torch::Tensor();
  torch::Tensor y_t = pre_activation(cpu_float64(x), cpu_float64(weight).view({sz.C, sz.K}), bias64);
  if (silu) {
    auto y = y_t.accessor<double, 3>();
    for (int64_t b = 0; b < sz.B; ++b) {
      for (int64_t t = 0; t < sz.T; ++t) {
        for (int64_t c = 0; c < sz.C; ++c) {
          const double z = y[b][t][c];
          y[b][t][c] = conv1d_silu(z, conv1d_sigmoid(std::exp(-z)));
        }
      }
    }
  }
  return y_t.to(x.device(), x.scalar_type());
}

// grad, x (B, T, C), weight (C, K) or (C, 1, K), bias (C) or undefined → (dx, dweight, dbias).
// gz_t = g_t act'(z_t); dx_s = Σ_k w_k gz_{s+K−1−k} (t < T only); dw_k = Σ_{b,t} gz_t x_{t−K+1+k}; db = Σ_{b,t} gz_t.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_ref(const torch::Tensor& grad,
                                                                              const torch::Tensor& x,
                                                                              const torch::Tensor& weight,
                                                                              const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(grad.defined(), "causal_conv1d_bwd_ref: grad is undefined");
  const auto sz = detail::conv1d_check_args("causal_conv1d_bwd_ref", x, weight, bias, grad, false);
  const int64_t B = sz.B, T = sz.T, C = sz.C, K = sz.K;
  const torch::Tensor x64 = cpu_float64(x);
  const torch::Tensor w64 = cpu_float64(weight).view({C, K});
  const torch::Tensor bias64 = bias.defined() ? cpu_float64(bias) : torch::Tensor();
  const torch::Tensor z_t = pre_activation(x64, w64, bias64);
  torch::Tensor gz_t = cpu_float64(grad).clone();
  torch::Tensor dx_t = torch::zeros_like(x64);
  torch::Tensor dw_t = torch::zeros({C, K}, torch::kFloat64);
  torch::Tensor db_t = torch::zeros({C}, torch::kFloat64);
  const auto xa = x64.accessor<double, 3>();
  const auto w = w64.accessor<double, 2>();
  const auto z = z_t.accessor<double, 3>();
  auto gz = gz_t.accessor<double, 3>();
  auto dx = dx_t.accessor<double, 3>();
  auto dw = dw_t.accessor<double, 2>();
  auto db = db_t.accessor<double, 1>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        if (silu) gz[b][t][c] = conv1d_silu_grad(gz[b][t][c], z[b][t][c], conv1d_sigmoid(std::exp(-z[b][t][c])));
      }
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        db[c] += gz[b][t][c];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t - K + 1 + k;  // y_t reads x_s through tap k
          if (s < 0) continue;
          dw[c][k] += gz[b][t][c] * xa[b][s][c];
          dx[b][s][c] += w[c][k] * gz[b][t][c];
        }
      }
    }
  }
  const auto opts = x.options();
  return {dx_t.to(opts), dw_t.view(weight.sizes()).to(opts), bias.defined() ? db_t.to(opts) : torch::Tensor()};
}

}  // namespace fprnn::ops
