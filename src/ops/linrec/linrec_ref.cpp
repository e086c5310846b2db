// linrec reference: y_t = c_t·y_{t∓1} + u_t and its backward, plain loops in float64 (never optimised).
// Layout contract: (B, T, D), any strides and device (computed on the CPU); results in the input's dtype and
// device.
#include "fprnn/ops/linrec.h"

#include "ops/linrec/linrec_common.h"

namespace fprnn::ops {

namespace {

torch::Tensor cpu_float64(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
}

}  // namespace

// inputs, coeffs: (B, T, D) → outputs (B, T, D).
torch::Tensor linrec_fwd_ref(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse) {
  detail::linrec_check_args("linrec_fwd_ref", {{"inputs", inputs}, {"coeffs", coeffs}}, false);
  const torch::Tensor u_t = cpu_float64(inputs);
  const torch::Tensor c_t = cpu_float64(coeffs);
  torch::Tensor y_t = torch::zeros_like(u_t);
  const auto u = u_t.accessor<double, 3>();
  const auto c = c_t.accessor<double, 3>();
  auto y = y_t.accessor<double, 3>();
  const int64_t B = u_t.size(0), T = u_t.size(1), D = u_t.size(2);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      double prev = 0.0;  // y_{−1} (y_T for reverse)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t t = reverse ? T - 1 - i : i;
        y[b][t][d] = c[b][t][d] * prev + u[b][t][d];
        prev = y[b][t][d];
      }
    }
  }
  return y_t.to(inputs.device(), inputs.scalar_type());
}

// grad, coeffs, outputs: (B, T, D) → (d_inputs, d_coeffs), each (B, T, D).
// Forward direction: du_t = g_t + c_{t+1} du_{t+1} (du_{T−1} = g_{T−1}), dc_t = du_t y_{t−1} (dc_0 = 0);
// reverse mirrors the time indices.
std::pair<torch::Tensor, torch::Tensor> linrec_bwd_ref(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                       const torch::Tensor& outputs, bool reverse) {
  detail::linrec_check_args("linrec_bwd_ref", {{"grad", grad}, {"coeffs", coeffs}, {"outputs", outputs}},
                            false);
  const torch::Tensor g_t = cpu_float64(grad);
  const torch::Tensor c_t = cpu_float64(coeffs);
  const torch::Tensor y_t = cpu_float64(outputs);
  torch::Tensor du_t = torch::zeros_like(g_t);
  torch::Tensor dc_t = torch::zeros_like(g_t);
  const auto g = g_t.accessor<double, 3>();
  const auto c = c_t.accessor<double, 3>();
  const auto y = y_t.accessor<double, 3>();
  auto du = du_t.accessor<double, 3>();
  auto dc = dc_t.accessor<double, 3>();
  const int64_t B = g_t.size(0), T = g_t.size(1), D = g_t.size(2);
  const int64_t later = reverse ? -1 : 1;  // the step that reads y_t in the forward pass is t + later
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t i = 0; i < T; ++i) {
        const int64_t t = reverse ? i : T - 1 - i;  // backward order: latest forward step first
        const int64_t next = t + later;
        const int64_t prev = t - later;
        du[b][t][d] = g[b][t][d];
        if (next >= 0 && next < T) du[b][t][d] += c[b][next][d] * du[b][next][d];
        dc[b][t][d] = (prev >= 0 && prev < T) ? du[b][t][d] * y[b][prev][d] : 0.0;
      }
    }
  }
  return {du_t.to(grad.device(), grad.scalar_type()), dc_t.to(grad.device(), grad.scalar_type())};
}

}  // namespace fprnn::ops
