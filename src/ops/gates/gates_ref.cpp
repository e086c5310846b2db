// References of input_gates and gated_rmsnorm (include/fprnn/ops/gates.h): plain loops in float64 over rows of
// D channels, never optimised. Any strides, device and dtype in; float64 CPU tensors out.
#include "fprnn/ops/gates.h"

#include <cmath>

namespace fprnn::ops {

namespace {

torch::Tensor rows64(const torch::Tensor& t, int64_t D) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().reshape({-1, D});
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
double silu(double v) { return v * sigmoid(v); }
double silu_grad(double v) {
  const double s = sigmoid(v);
  return s * (1.0 + v * (1.0 - s));
}

void check_same(const char* fn, const torch::Tensor& ref, const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), fn, ": ", name, " must have the sizes ", ref.sizes(), ", got ", t.sizes());
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> input_gates_fwd_ref(const torch::Tensor& b,
                                                                            const torch::Tensor& x,
                                                                            const torch::Tensor& l,
                                                                            const torch::Tensor& l_bias) {
  check_same("input_gates_fwd_ref", b, x, "x");
  check_same("input_gates_fwd_ref", b, l, "l");
  const int64_t D = b.size(-1);
  const torch::Tensor b64 = rows64(b, D), x64 = rows64(x, D), l64 = rows64(l, D), lb = rows64(l_bias, D);
  torch::Tensor bx = torch::empty_like(b64), lam = torch::empty_like(b64), oml = torch::empty_like(b64);
  const auto B = b64.accessor<double, 2>(), X = x64.accessor<double, 2>(), L = l64.accessor<double, 2>();
  const auto LB = lb.accessor<double, 2>();
  auto BX = bx.accessor<double, 2>(), LA = lam.accessor<double, 2>(), OM = oml.accessor<double, 2>();
  for (int64_t n = 0; n < b64.size(0); ++n) {
    for (int64_t d = 0; d < D; ++d) {
      BX[n][d] = silu(B[n][d]) * X[n][d];
      LA[n][d] = sigmoid(L[n][d] + LB[0][d]);
      OM[n][d] = 1.0 - LA[n][d];
    }
  }
  return {bx.reshape(b.sizes()), lam.reshape(b.sizes()), oml.reshape(b.sizes())};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> input_gates_bwd_ref(
    const torch::Tensor& g_bx, const torch::Tensor& g_lambda, const torch::Tensor& g_one_minus, const torch::Tensor& b,
    const torch::Tensor& x, const torch::Tensor& l, const torch::Tensor& l_bias) {
  const int64_t D = b.size(-1);
  const auto zeros = torch::zeros(b.sizes(), torch::kFloat64);
  const torch::Tensor gb64 = rows64(g_bx.defined() ? g_bx : zeros, D);
  const torch::Tensor gl64 = rows64(g_lambda.defined() ? g_lambda : zeros, D);
  const torch::Tensor go64 = rows64(g_one_minus.defined() ? g_one_minus : zeros, D);
  const torch::Tensor b64 = rows64(b, D), x64 = rows64(x, D), l64 = rows64(l, D), lb = rows64(l_bias, D);
  torch::Tensor db = torch::empty_like(b64), dx = torch::empty_like(b64), dl = torch::empty_like(b64);
  torch::Tensor dlb = torch::zeros({D}, torch::kFloat64);
  const auto GB = gb64.accessor<double, 2>(), GL = gl64.accessor<double, 2>(), GO = go64.accessor<double, 2>();
  const auto B = b64.accessor<double, 2>(), X = x64.accessor<double, 2>(), L = l64.accessor<double, 2>();
  const auto LB = lb.accessor<double, 2>();
  auto DB = db.accessor<double, 2>(), DX = dx.accessor<double, 2>(), DL = dl.accessor<double, 2>();
  auto DLB = dlb.accessor<double, 1>();
  for (int64_t n = 0; n < b64.size(0); ++n) {
    for (int64_t d = 0; d < D; ++d) {
      DB[n][d] = GB[n][d] * X[n][d] * silu_grad(B[n][d]);
      DX[n][d] = GB[n][d] * silu(B[n][d]);
      const double lam = sigmoid(L[n][d] + LB[0][d]);
      DL[n][d] = (GL[n][d] - GO[n][d]) * lam * (1.0 - lam);
      DLB[d] += DL[n][d];
    }
  }
  return {db.reshape(b.sizes()), dx.reshape(b.sizes()), dl.reshape(b.sizes()), dlb};
}

torch::Tensor gated_rmsnorm_fwd_ref(const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
                                    const torch::Tensor& weight, double eps) {
  check_same("gated_rmsnorm_fwd_ref", z, c, "c");
  check_same("gated_rmsnorm_fwd_ref", z, h, "h");
  const int64_t D = z.size(-1);
  const torch::Tensor z64 = rows64(z, D), c64 = rows64(c, D), h64 = rows64(h, D), w64 = rows64(weight, D);
  torch::Tensor y = torch::empty_like(z64);
  const auto Z = z64.accessor<double, 2>(), C = c64.accessor<double, 2>(), H = h64.accessor<double, 2>();
  const auto W = w64.accessor<double, 2>();
  auto Y = y.accessor<double, 2>();
  for (int64_t n = 0; n < z64.size(0); ++n) {
    double ss = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      const double g = silu(Z[n][d]) * silu(C[n][d]) * H[n][d];
      ss += g * g;
    }
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + eps);
    for (int64_t d = 0; d < D; ++d) Y[n][d] = W[0][d] * silu(Z[n][d]) * silu(C[n][d]) * H[n][d] * r;
  }
  return y.reshape(z.sizes());
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> gated_rmsnorm_bwd_ref(
    const torch::Tensor& gy, const torch::Tensor& z, const torch::Tensor& c, const torch::Tensor& h,
    const torch::Tensor& weight, double eps) {
  check_same("gated_rmsnorm_bwd_ref", z, gy, "gy");
  const int64_t D = z.size(-1);
  const torch::Tensor gy64 = rows64(gy, D), z64 = rows64(z, D), c64 = rows64(c, D), h64 = rows64(h, D);
  const torch::Tensor w64 = rows64(weight, D);
  torch::Tensor dz = torch::empty_like(z64), dc = torch::empty_like(z64), dh = torch::empty_like(z64);
  torch::Tensor dw = torch::zeros({D}, torch::kFloat64);
  const auto GY = gy64.accessor<double, 2>(), Z = z64.accessor<double, 2>(), C = c64.accessor<double, 2>();
  const auto H = h64.accessor<double, 2>(), W = w64.accessor<double, 2>();
  auto DZ = dz.accessor<double, 2>(), DC = dc.accessor<double, 2>(), DH = dh.accessor<double, 2>();
  auto DW = dw.accessor<double, 1>();
  for (int64_t n = 0; n < z64.size(0); ++n) {
    double ss = 0.0, s = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      const double g = silu(Z[n][d]) * silu(C[n][d]) * H[n][d];
      ss += g * g;
      s += GY[n][d] * W[0][d] * g;
    }
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + eps);
    for (int64_t d = 0; d < D; ++d) {
      const double sz = silu(Z[n][d]), sc = silu(C[n][d]), g = sz * sc * H[n][d];
      const double dg = r * W[0][d] * GY[n][d] - r * r * r * s / static_cast<double>(D) * g;
      DW[d] += r * g * GY[n][d];
      DZ[n][d] = dg * sc * H[n][d] * silu_grad(Z[n][d]);
      DC[n][d] = dg * sz * H[n][d] * silu_grad(C[n][d]);
      DH[n][d] = dg * sz * sc;
    }
  }
  return {dz.reshape(z.sizes()), dc.reshape(z.sizes()), dh.reshape(z.sizes()), dw};
}

}  // namespace fprnn::ops
