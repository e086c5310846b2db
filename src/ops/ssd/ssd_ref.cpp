// ssd reference: the Mamba-2 recurrence and its backward as plain loops in float64 (never optimised). The
// backward keeps every state S_t (B, T, H, P, N) and walks time backwards.
// Layout contract: x (B, T, H, P); dt (B, T, H); A (H); Bm, Cm (B, T, G, N); D_skip, dt_bias (H); any strides and
// device (computed on the CPU); results in the inputs' dtype and device.
#include "fprnn/ops/ssd.h"

#include "ops/ssd/ssd_common.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace fprnn::ops {

namespace {

torch::Tensor cpu_float64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64).contiguous(); }

using detail::ssd_softplus;
using detail::ssd_softplus_grad;

}  // namespace

torch::Tensor ssd_fwd_ref(const torch::Tensor& x_in, const torch::Tensor& dt_in, const torch::Tensor& A_in,
                          const torch::Tensor& B_in, const torch::Tensor& C_in, const torch::Tensor& D_in,
                          const torch::Tensor& bias_in) {
  detail::ssd_check_args("ssd_fwd_ref", x_in, dt_in, A_in, B_in, C_in, D_in, bias_in, torch::Tensor(), false);
  const torch::Tensor x_t = cpu_float64(x_in), dt_t = cpu_float64(dt_in), A_t = cpu_float64(A_in);
  const torch::Tensor B_t = cpu_float64(B_in), C_t = cpu_float64(C_in), D_t = cpu_float64(D_in);
  const torch::Tensor bias_t = cpu_float64(bias_in);
  const auto x = x_t.accessor<double, 4>();
  const auto dt = dt_t.accessor<double, 3>();
  const auto A = A_t.accessor<double, 1>();
  const auto Bm = B_t.accessor<double, 4>(), Cm = C_t.accessor<double, 4>();
  const auto Ds = D_t.accessor<double, 1>(), bias = bias_t.accessor<double, 1>();
  const int64_t B = x_t.size(0), T = x_t.size(1), H = x_t.size(2), P = x_t.size(3);
  const int64_t G = B_t.size(2), N = B_t.size(3), heads_per_group = H / G;
  torch::Tensor y_t = torch::zeros_like(x_t);
  auto y = y_t.accessor<double, 4>();
  std::vector<double> S(static_cast<size_t>(P * N));  // S[p * N + n]
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / heads_per_group;
      std::fill(S.begin(), S.end(), 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const double delta = ssd_softplus(dt[b][t][h] + bias[h]);
        const double a = std::exp(delta * A[h]);
        for (int64_t p = 0; p < P; ++p) {
          double out = Ds[h] * x[b][t][h][p];
          for (int64_t n = 0; n < N; ++n) {
            double& s = S[static_cast<size_t>(p * N + n)];
            s = a * s + delta * x[b][t][h][p] * Bm[b][t][g][n];
            out += s * Cm[b][t][g][n];
          }
          y[b][t][h][p] = out;
        }
      }
    }
  }
  return y_t.to(x_in.device(), x_in.scalar_type());
}

SsdGrads ssd_bwd_ref(const torch::Tensor& grad_in, const torch::Tensor& x_in, const torch::Tensor& dt_in,
                     const torch::Tensor& A_in, const torch::Tensor& B_in, const torch::Tensor& C_in,
                     const torch::Tensor& D_in, const torch::Tensor& bias_in) {
  detail::ssd_check_args("ssd_bwd_ref", x_in, dt_in, A_in, B_in, C_in, D_in, bias_in, grad_in, false);
  TORCH_CHECK(grad_in.defined(), "ssd_bwd_ref: grad is undefined");
  const torch::Tensor g_t = cpu_float64(grad_in), x_t = cpu_float64(x_in), dt_t = cpu_float64(dt_in);
  const torch::Tensor A_t = cpu_float64(A_in), B_t = cpu_float64(B_in), C_t = cpu_float64(C_in);
  const torch::Tensor D_t = cpu_float64(D_in), bias_t = cpu_float64(bias_in);
  const auto gy = g_t.accessor<double, 4>(), x = x_t.accessor<double, 4>();
  const auto dt = dt_t.accessor<double, 3>();
  const auto A = A_t.accessor<double, 1>();
  const auto Bm = B_t.accessor<double, 4>(), Cm = C_t.accessor<double, 4>();
  const auto Ds = D_t.accessor<double, 1>(), bias = bias_t.accessor<double, 1>();
  const int64_t B = x_t.size(0), T = x_t.size(1), H = x_t.size(2), P = x_t.size(3);
  const int64_t G = B_t.size(2), N = B_t.size(3), heads_per_group = H / G;

  // Forward, keeping every state: S[b, t, h, p, n].
  torch::Tensor S_t = torch::zeros({B, T, H, P, N}, x_t.options());
  auto S = S_t.accessor<double, 5>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t g = h / heads_per_group;
        const double delta = ssd_softplus(dt[b][t][h] + bias[h]);
        const double a = std::exp(delta * A[h]);
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) {
            const double prev = t > 0 ? S[b][t - 1][h][p][n] : 0.0;
            S[b][t][h][p][n] = a * prev + delta * x[b][t][h][p] * Bm[b][t][g][n];
          }
      }

  SsdGrads out;
  out.dx = torch::zeros_like(x_t);
  out.ddt = torch::zeros_like(dt_t);
  out.dA = torch::zeros_like(A_t);
  out.dB = torch::zeros_like(B_t);
  out.dC = torch::zeros_like(C_t);
  out.dD_skip = torch::zeros_like(D_t);
  out.ddt_bias = torch::zeros_like(bias_t);
  auto dx = out.dx.accessor<double, 4>();
  auto ddt = out.ddt.accessor<double, 3>();
  auto dA = out.dA.accessor<double, 1>();
  auto dB = out.dB.accessor<double, 4>(), dC = out.dC.accessor<double, 4>();
  auto dD = out.dD_skip.accessor<double, 1>(), dbias = out.ddt_bias.accessor<double, 1>();
  std::vector<double> dS(static_cast<size_t>(P * N)), carry(static_cast<size_t>(P * N));  // carry = a_{t+1} dS_{t+1}
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / heads_per_group;
      std::fill(carry.begin(), carry.end(), 0.0);
      for (int64_t t = T - 1; t >= 0; --t) {
        const double z = dt[b][t][h] + bias[h];
        const double delta = ssd_softplus(z);
        const double a = std::exp(delta * A[h]);
        double da = 0.0, d_delta = 0.0;
        for (int64_t p = 0; p < P; ++p) {
          const double gp = gy[b][t][h][p], xp = x[b][t][h][p];
          double dSB = 0.0;  // (dS_t B_t)[p]
          dD[h] += gp * xp;
          for (int64_t n = 0; n < N; ++n) {
            const size_t i = static_cast<size_t>(p * N + n);
            dS[i] = gp * Cm[b][t][g][n] + carry[i];
            dC[b][t][g][n] += gp * S[b][t][h][p][n];
            dB[b][t][g][n] += delta * dS[i] * xp;
            dSB += dS[i] * Bm[b][t][g][n];
            if (t > 0) da += dS[i] * S[b][t - 1][h][p][n];
            carry[i] = a * dS[i];
          }
          dx[b][t][h][p] = delta * dSB + Ds[h] * gp;
          d_delta += xp * dSB;
        }
        d_delta += da * a * A[h];
        dA[h] += da * a * delta;
        ddt[b][t][h] = d_delta * ssd_softplus_grad(z);
        dbias[h] += ddt[b][t][h];
      }
    }
  }
  auto back = [&](const torch::Tensor& t, const torch::Tensor& like) { return t.to(like.device(), like.scalar_type()); };
  out.dx = back(out.dx, x_in);
  out.ddt = back(out.ddt, dt_in);
  out.dA = back(out.dA, A_in);
  out.dB = back(out.dB, B_in);
  out.dC = back(out.dC, C_in);
  out.dD_skip = back(out.dD_skip, D_in);
  out.ddt_bias = back(out.ddt_bias, bias_in);
  return out;
}

}  // namespace fprnn::ops
