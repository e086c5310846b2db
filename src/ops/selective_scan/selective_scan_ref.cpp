// selective_scan reference: the Mamba-1 recurrence and its backward as plain loops in float64 (never
// optimised). The backward keeps every state s_t (B, T, D, N) and walks time backwards.
// Layout contract: u, dt (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D); any strides and device
// (computed on the CPU); results in the inputs' dtype and device.
#include "fprnn/ops/selective_scan.h"

#include "ops/selective_scan/selective_scan_common.h"

#include <algorithm>
#include <vector>

namespace fprnn::ops {

namespace {

torch::Tensor cpu_float64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64).contiguous(); }

using detail::selective_scan_softplus;
using detail::selective_scan_softplus_grad;

}  // namespace

torch::Tensor selective_scan_fwd_ref(const torch::Tensor& u_in, const torch::Tensor& dt_in, const torch::Tensor& A_in,
                                     const torch::Tensor& B_in, const torch::Tensor& C_in, const torch::Tensor& D_in,
                                     const torch::Tensor& bias_in) {
  detail::selective_scan_check_args("selective_scan_fwd_ref", u_in, dt_in, A_in, B_in, C_in, D_in, bias_in,
                                    torch::Tensor(), false);
  const torch::Tensor u_t = cpu_float64(u_in), dt_t = cpu_float64(dt_in), A_t = cpu_float64(A_in);
  const torch::Tensor B_t = cpu_float64(B_in), C_t = cpu_float64(C_in), D_t = cpu_float64(D_in);
  const torch::Tensor bias_t = cpu_float64(bias_in);
  const auto u = u_t.accessor<double, 3>(), dt = dt_t.accessor<double, 3>();
  const auto A = A_t.accessor<double, 2>();
  const auto Bm = B_t.accessor<double, 3>(), Cm = C_t.accessor<double, 3>();
  const auto Ds = D_t.accessor<double, 1>(), bias = bias_t.accessor<double, 1>();
  const int64_t B = u_t.size(0), T = u_t.size(1), D = u_t.size(2), N = A_t.size(1);
  torch::Tensor y_t = torch::zeros_like(u_t);
  auto y = y_t.accessor<double, 3>();
  std::vector<double> s(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      std::fill(s.begin(), s.end(), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const double delta = selective_scan_softplus(dt[b][t][d] + bias[d]);
        double out = Ds[d] * u[b][t][d];
        for (int64_t n = 0; n < N; ++n) {
          s[n] = std::exp(delta * A[d][n]) * s[n] + delta * Bm[b][t][n] * u[b][t][d];
          out += Cm[b][t][n] * s[n];
        }
        y[b][t][d] = out;
      }
    }
  }
  return y_t.to(u_in.device(), u_in.scalar_type());
}

SelectiveScanGrads selective_scan_bwd_ref(const torch::Tensor& grad_in, const torch::Tensor& u_in,
                                          const torch::Tensor& dt_in, const torch::Tensor& A_in,
                                          const torch::Tensor& B_in, const torch::Tensor& C_in,
                                          const torch::Tensor& D_in, const torch::Tensor& bias_in) {
  detail::selective_scan_check_args("selective_scan_bwd_ref", u_in, dt_in, A_in, B_in, C_in, D_in, bias_in, grad_in,
                                    false);
  TORCH_CHECK(grad_in.defined(), "selective_scan_bwd_ref: grad is undefined");
  const torch::Tensor g_t = cpu_float64(grad_in), u_t = cpu_float64(u_in), dt_t = cpu_float64(dt_in);
  const torch::Tensor A_t = cpu_float64(A_in), B_t = cpu_float64(B_in), C_t = cpu_float64(C_in);
  const torch::Tensor D_t = cpu_float64(D_in), bias_t = cpu_float64(bias_in);
  const auto g = g_t.accessor<double, 3>(), u = u_t.accessor<double, 3>(), dt = dt_t.accessor<double, 3>();
  const auto A = A_t.accessor<double, 2>();
  const auto Bm = B_t.accessor<double, 3>(), Cm = C_t.accessor<double, 3>();
  const auto Ds = D_t.accessor<double, 1>(), bias = bias_t.accessor<double, 1>();
  const int64_t B = u_t.size(0), T = u_t.size(1), D = u_t.size(2), N = A_t.size(1);

  // Forward, keeping every state: s[b, t, d, n].
  torch::Tensor s_t = torch::zeros({B, T, D, N}, u_t.options());
  auto s = s_t.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t t = 0; t < T; ++t) {
        const double delta = selective_scan_softplus(dt[b][t][d] + bias[d]);
        for (int64_t n = 0; n < N; ++n) {
          const double prev = t > 0 ? s[b][t - 1][d][n] : 0.0;
          s[b][t][d][n] = std::exp(delta * A[d][n]) * prev + delta * Bm[b][t][n] * u[b][t][d];
        }
      }

  SelectiveScanGrads out;
  out.du = torch::zeros_like(u_t);
  out.ddt = torch::zeros_like(u_t);
  out.dA = torch::zeros_like(A_t);
  out.dB = torch::zeros_like(B_t);
  out.dC = torch::zeros_like(C_t);
  out.dD_skip = torch::zeros_like(D_t);
  out.ddt_bias = torch::zeros_like(bias_t);
  auto du = out.du.accessor<double, 3>(), ddt = out.ddt.accessor<double, 3>();
  auto dA = out.dA.accessor<double, 2>();
  auto dB = out.dB.accessor<double, 3>(), dC = out.dC.accessor<double, 3>();
  auto dD = out.dD_skip.accessor<double, 1>(), dbias = out.ddt_bias.accessor<double, 1>();
  std::vector<double> carry(static_cast<size_t>(N));  // a_{t+1} ds_{t+1}
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      std::fill(carry.begin(), carry.end(), 0.0);
      for (int64_t t = T - 1; t >= 0; --t) {
        const double z = dt[b][t][d] + bias[d];
        const double delta = selective_scan_softplus(z);
        const double gt = g[b][t][d], ut = u[b][t][d];
        double d_delta = 0.0, d_u = Ds[d] * gt;
        dD[d] += gt * ut;
        for (int64_t n = 0; n < N; ++n) {
          const double a = std::exp(delta * A[d][n]);
          const double prev = t > 0 ? s[b][t - 1][d][n] : 0.0;
          dC[b][t][n] += gt * s[b][t][d][n];
          const double ds = gt * Cm[b][t][n] + carry[n];
          const double da_a = ds * prev * a;  // ∂L/∂a_t · a_t
          d_delta += da_a * A[d][n] + ds * Bm[b][t][n] * ut;
          dA[d][n] += da_a * delta;
          dB[b][t][n] += ds * delta * ut;
          d_u += ds * delta * Bm[b][t][n];
          carry[n] = a * ds;
        }
        du[b][t][d] = d_u;
        ddt[b][t][d] = d_delta * selective_scan_softplus_grad(z);
        dbias[d] += ddt[b][t][d];
      }
    }
  }
  auto back = [&](const torch::Tensor& t, const torch::Tensor& like) { return t.to(like.device(), like.scalar_type()); };
  out.du = back(out.du, u_in);
  out.ddt = back(out.ddt, dt_in);
  out.dA = back(out.dA, A_in);
  out.dB = back(out.dB, B_in);
  out.dC = back(out.dC, C_in);
  out.dD_skip = back(out.dD_skip, D_in);
  out.ddt_bias = back(out.ddt_bias, bias_in);
  return out;
}

}  // namespace fprnn::ops
