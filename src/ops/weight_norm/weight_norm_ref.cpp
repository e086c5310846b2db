// References of weight_norm_blocks (include/fprnn/ops/weight_norm.h): plain loops in float64 over the rows, never
// optimised. Any strides, device and dtype in; float64 CPU tensors out.
#include "fprnn/ops/weight_norm.h"

#include <cmath>

namespace fprnn::ops {

namespace {

torch::Tensor cpu64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64).contiguous(); }

}  // namespace

torch::Tensor weight_norm_fwd_ref(const std::vector<torch::Tensor>& v, const std::vector<torch::Tensor>& g,
                                  int64_t rows) {
  TORCH_CHECK(!v.empty() && (g.empty() || g.size() == v.size()), "weight_norm_fwd_ref: ", v.size(), " v and ",
              g.size(), " g");
  const int64_t K = v.front().size(1);
  torch::Tensor W = torch::zeros({rows, K}, torch::kFloat64);
  auto Wa = W.accessor<double, 2>();
  int64_t r0 = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const torch::Tensor vi = cpu64(v[i]);
    const auto V = vi.accessor<double, 2>();
    const torch::Tensor gi = g.empty() ? torch::Tensor() : cpu64(g[i]).view({-1});
    for (int64_t j = 0; j < vi.size(0); ++j) {
      double scale = 1.0;
      if (gi.defined()) {
        double ss = 0.0;
        for (int64_t k = 0; k < K; ++k) ss += V[j][k] * V[j][k];
        scale = gi[j].item<double>() / std::sqrt(ss);
      }
      for (int64_t k = 0; k < K; ++k) Wa[r0 + j][k] = V[j][k] * scale;
    }
    r0 += vi.size(0);
  }
  TORCH_CHECK(r0 <= rows, "weight_norm_fwd_ref: rows = ", rows, " is fewer than the matrices' ", r0);
  return W;
}

std::vector<torch::Tensor> weight_norm_bwd_ref(const torch::Tensor& dW, const std::vector<torch::Tensor>& v,
                                               const std::vector<torch::Tensor>& g) {
  const torch::Tensor d = cpu64(dW);
  const auto D = d.accessor<double, 2>();
  const int64_t K = d.size(1);
  std::vector<torch::Tensor> dv, dg;
  int64_t r0 = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const torch::Tensor vi = cpu64(v[i]);
    const auto V = vi.accessor<double, 2>();
    torch::Tensor dvi = torch::empty_like(vi);
    auto DV = dvi.accessor<double, 2>();
    torch::Tensor dgi;
    if (!g.empty()) {
      const torch::Tensor gi = cpu64(g[i]).view({-1});
      dgi = torch::empty({vi.size(0)}, torch::kFloat64);
      for (int64_t j = 0; j < vi.size(0); ++j) {
        double ss = 0.0, s = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          ss += V[j][k] * V[j][k];
          s += V[j][k] * D[r0 + j][k];
        }
        const double n = std::sqrt(ss), gj = gi[j].item<double>();
        dgi[j] = s / n;
        for (int64_t k = 0; k < K; ++k) DV[j][k] = gj / n * (D[r0 + j][k] - V[j][k] * s / (n * n));
      }
      dg.push_back(dgi.view(g[i].sizes()));
    } else {
      for (int64_t j = 0; j < vi.size(0); ++j)
        for (int64_t k = 0; k < K; ++k) DV[j][k] = D[r0 + j][k];
    }
    dv.push_back(dvi);
    r0 += vi.size(0);
  }
  dv.insert(dv.end(), dg.begin(), dg.end());
  return dv;
}

}  // namespace fprnn::ops
