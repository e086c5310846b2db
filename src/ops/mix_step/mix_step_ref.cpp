// mix_step reference (include/fprnn/ops/mix_step.h): plain float64 loops per token, never optimised, the
// backward by the formulas of the header. Any strides, device and dtype in; float64 CPU tensors out.
#include "fprnn/ops/mix_step.h"

#include <cmath>
#include <vector>

namespace fprnn::ops {

namespace {

torch::Tensor rows64(const torch::Tensor& t, int64_t cols) {
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().reshape({-1, cols});
}

double act_value(double x, const std::string& ac) {
  if (ac == "silu") return x / (1.0 + std::exp(-x));
  if (ac == "relu") return x > 0.0 ? x : 0.0;
  return x;
}
double act_grad(double x, const std::string& ac) {
  if (ac == "silu") {
    const double s = 1.0 / (1.0 + std::exp(-x));
    return s * (1.0 + x * (1.0 - s));
  }
  if (ac == "relu") return x > 0.0 ? 1.0 : 0.0;
  return 1.0;
}

void check_ref(const char* fn, const torch::Tensor& raw, const torch::Tensor& bx, const MixStepSpec& spec) {
  TORCH_CHECK(raw.dim() == 2 && bx.dim() == 2 && raw.size(0) == bx.size(0), fn, ": raw must be (N, ld) and bx (N, D), got ",
              raw.sizes(), " and ", bx.sizes());
  TORCH_CHECK(spec.rank >= 1 && raw.size(1) >= spec.rank * bx.size(1) + spec.rank, fn, ": raw has ", raw.size(1),
              " columns, fewer than r·D + r = ", spec.rank * bx.size(1) + spec.rank);
  TORCH_CHECK(spec.act == "identity" || spec.act == "relu" || spec.act == "silu", fn, ": unknown act '", spec.act, "'");
}

// One token's forward quantities: a_i, ‖a_i‖, α_i, s_i and the vectors w_{i−1} (w[0] = v) and Q v (w[r]).
struct Token {
  std::vector<std::vector<double>> a, w;
  std::vector<double> norm, alpha, s;
};

Token forward_token(const double* raw, const double* bx, const double* h, int64_t D, const MixStepSpec& spec) {
  const int64_t r = spec.rank;
  Token k;
  std::vector<double> v(D);
  for (int64_t d = 0; d < D; ++d) v[d] = bx[d] - h[d];
  k.w.push_back(v);
  for (int64_t i = 0; i < r; ++i) {
    std::vector<double> a(D);
    double nn = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      a[d] = act_value(raw[i * D + d], spec.act);
      nn += a[d] * a[d];
    }
    const double norm = std::sqrt(nn), den = std::max(norm, spec.eps);
    const std::vector<double>& src = spec.sum_form ? v : k.w.back();
    double s = 0.0;
    for (int64_t d = 0; d < D; ++d) s += a[d] / den * src[d];
    const double alpha = 1.0 / (1.0 + std::exp(-raw[r * D + i]));
    std::vector<double> next = k.w.back();
    for (int64_t d = 0; d < D; ++d) next[d] -= 2.0 * alpha * s * a[d] / den;
    k.a.push_back(a);
    k.norm.push_back(norm);
    k.alpha.push_back(alpha);
    k.s.push_back(s);
    k.w.push_back(next);
  }
  return k;
}

}  // namespace

torch::Tensor mix_step_fwd_ref(const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
                               const torch::Tensor& oml, const MixStepSpec& spec) {
  check_ref("mix_step_fwd_ref", raw, bx, spec);
  const int64_t N = bx.size(0), D = bx.size(1), ld = raw.size(1);
  const torch::Tensor r64 = rows64(raw, ld), b64 = rows64(bx, D), h64 = rows64(h, D), o64 = rows64(oml, D);
  torch::Tensor y = torch::empty({N, D}, torch::kFloat64);
  for (int64_t n = 0; n < N; ++n) {
    const Token k = forward_token(r64[n].data_ptr<double>(), b64[n].data_ptr<double>(), h64[n].data_ptr<double>(), D,
                                  spec);
    const double* hn = h64[n].data_ptr<double>();
    const double* on = o64[n].data_ptr<double>();
    double* yn = y[n].data_ptr<double>();
    for (int64_t d = 0; d < D; ++d) yn[d] = on[d] * (k.w.back()[d] + hn[d]);
  }
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> mix_step_bwd_ref(
    const torch::Tensor& gy, const torch::Tensor& raw, const torch::Tensor& bx, const torch::Tensor& h,
    const torch::Tensor& oml, const MixStepSpec& spec) {
  check_ref("mix_step_bwd_ref", raw, bx, spec);
  const int64_t N = bx.size(0), D = bx.size(1), ld = raw.size(1), r = spec.rank;
  const torch::Tensor r64 = rows64(raw, ld), b64 = rows64(bx, D), h64 = rows64(h, D), o64 = rows64(oml, D);
  const torch::Tensor g64 = rows64(gy, D);
  torch::Tensor draw = torch::zeros({N, ld}, torch::kFloat64), dbx = torch::empty({N, D}, torch::kFloat64);
  torch::Tensor dh = torch::empty({N, D}, torch::kFloat64), doml = torch::empty({N, D}, torch::kFloat64);
  for (int64_t n = 0; n < N; ++n) {
    const double* rn = r64[n].data_ptr<double>();
    const double* hn = h64[n].data_ptr<double>();
    const double* on = o64[n].data_ptr<double>();
    const double* gn = g64[n].data_ptr<double>();
    const Token k = forward_token(rn, b64[n].data_ptr<double>(), hn, D, spec);
    std::vector<double> g(D);
    for (int64_t d = 0; d < D; ++d) {
      doml[n][d] = gn[d] * (k.w.back()[d] + hn[d]);
      g[d] = gn[d] * on[d];
    }
    const std::vector<double> g_out = g;
    std::vector<std::vector<double>> du(r, std::vector<double>(D));
    std::vector<double> dalpha(r), t(r);
    const std::vector<double>& v = k.w[0];
    auto unit = [&](int64_t i, int64_t d) { return k.a[i][d] / std::max(k.norm[i], spec.eps); };
    if (spec.sum_form) {
      std::vector<double> dv = g;
      for (int64_t i = 0; i < r; ++i) {
        t[i] = 0.0;
        for (int64_t d = 0; d < D; ++d) t[i] += unit(i, d) * g[d];
        for (int64_t d = 0; d < D; ++d) {
          du[i][d] = -2.0 * k.alpha[i] * (k.s[i] * g[d] + t[i] * v[d]);
          dv[d] -= 2.0 * k.alpha[i] * t[i] * unit(i, d);
        }
        dalpha[i] = -2.0 * k.s[i] * t[i];
      }
      g = dv;
    } else {
      for (int64_t i = r - 1; i >= 0; --i) {
        t[i] = 0.0;
        for (int64_t d = 0; d < D; ++d) t[i] += unit(i, d) * g[d];
        for (int64_t d = 0; d < D; ++d) du[i][d] = -2.0 * k.alpha[i] * (k.s[i] * g[d] + t[i] * k.w[i][d]);
        dalpha[i] = -2.0 * k.s[i] * t[i];
        for (int64_t d = 0; d < D; ++d) g[d] -= 2.0 * k.alpha[i] * t[i] * unit(i, d);
      }
    }
    for (int64_t i = 0; i < r; ++i) {
      const double den = std::max(k.norm[i], spec.eps);
      const double u_du = -4.0 * k.alpha[i] * k.s[i] * t[i];
      for (int64_t d = 0; d < D; ++d) {
        const double da = k.norm[i] > spec.eps ? (du[i][d] - unit(i, d) * u_du) / den : du[i][d] / den;
        draw[n][i * D + d] = da * act_grad(rn[i * D + d], spec.act);
      }
      draw[n][r * D + i] = dalpha[i] * k.alpha[i] * (1.0 - k.alpha[i]);
    }
    for (int64_t d = 0; d < D; ++d) {
      dbx[n][d] = g[d];
      dh[n][d] = g_out[d] - g[d];
    }
  }
  return {draw, dbx, dh, doml};
}

}  // namespace fprnn::ops
