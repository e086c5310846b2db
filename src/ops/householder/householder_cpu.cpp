// CPU kernels of the Householder/DPLR op: u (N, r, D), alpha (N, r), v and grad (N, D), contiguous,
// float32 or float64. Parallel over tokens (at::parallel_for), vectorised over D (at::vec::Vectorized).
//
// Napkin math per token: forward reads r·D + D and writes D values with 2·r·D FMAs (one dot, one axpy
// per reflection); backward reads 2·r·D + 2·D, writes r·D + D and does ~6·r·D FMAs (forward recompute,
// two dots, du and the gw update). Memory-bound on u for large r·D.
//
// The Householder backward recomputes the reflection inputs w_0..w_{r−1} of a token into a per-chunk
// scratch row block (r·D values per thread) instead of keeping N·r·D values from the forward.
#include "fprnn/ops/householder.h"

#include "ops/householder/householder_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace fprnn::ops {
namespace {

using torch::Tensor;
using detail::reflect_coeff;
using detail::reflect_dalpha;
using detail::reflect_du_coeffs;

// Tokens per parallel task: enough work (≈ 32k multiply-adds) to amortise the task overhead.
int64_t grain(int64_t r, int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, (r + 1) * D)); }

// Σ_d a[d] b[d].
template <typename T>
T dot(const T* a, const T* b, int64_t D) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kW = Vec::size();
  Vec acc(T(0));
  int64_t d = 0;
  for (; d + kW <= D; d += kW) acc = at::vec::fmadd(Vec::loadu(a + d), Vec::loadu(b + d), acc);
  T lanes[kW];
  acc.store(lanes);
  T sum = T(0);
  for (int64_t k = 0; k < kW; ++k) sum += lanes[k];
  for (; d < D; ++d) sum += a[d] * b[d];
  return sum;
}

// y[d] += c · x[d].
template <typename T>
void axpy(T* y, T c, const T* x, int64_t D) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kW = Vec::size();
  const Vec cv(c);
  int64_t d = 0;
  for (; d + kW <= D; d += kW) at::vec::fmadd(cv, Vec::loadu(x + d), Vec::loadu(y + d)).store(y + d);
  for (; d < D; ++d) y[d] += c * x[d];
}

// y[d] = a · x1[d] + b · x2[d].
template <typename T>
void lincomb(T* y, T a, const T* x1, T b, const T* x2, int64_t D) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kW = Vec::size();
  const Vec av(a), bv(b);
  int64_t d = 0;
  for (; d + kW <= D; d += kW) at::vec::fmadd(av, Vec::loadu(x1 + d), bv * Vec::loadu(x2 + d)).store(y + d);
  for (; d < D; ++d) y[d] = a * x1[d] + b * x2[d];
}

template <typename T>
void householder_fwd_kernel(const T* u, const T* alpha, const T* v, T* out, int64_t N, int64_t r, int64_t D) {
  at::parallel_for(0, N, grain(r, D), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* un = u + n * r * D;
      T* w = out + n * D;
      std::memcpy(w, v + n * D, sizeof(T) * D);
      for (int64_t i = 0; i < r; ++i) axpy(w, reflect_coeff(alpha[n * r + i], dot(un + i * D, w, D)), un + i * D, D);
    }
  });
}

template <typename T>
void householder_bwd_kernel(const T* u, const T* alpha, const T* v, const T* g, T* du, T* dalpha, T* dv, int64_t N,
                            int64_t r, int64_t D) {
  at::parallel_for(0, N, grain(2 * r, D), [&](int64_t begin, int64_t end) {
    std::vector<T> ws(static_cast<size_t>(std::max<int64_t>(r, 1) * D));  // w_0..w_{r−1} of one token
    std::vector<T> s(static_cast<size_t>(r));                             // s_i = u_iᵀ w_i
    for (int64_t n = begin; n < end; ++n) {
      const T* un = u + n * r * D;
      const T* an = alpha + n * r;
      // Recompute the forward, keeping every reflection's input.
      if (r > 0) std::memcpy(ws.data(), v + n * D, sizeof(T) * D);
      for (int64_t i = 0; i < r; ++i) {
        const T* wi = ws.data() + i * D;
        s[i] = dot(un + i * D, wi, D);
        if (i + 1 < r) {
          T* next = ws.data() + (i + 1) * D;
          std::memcpy(next, wi, sizeof(T) * D);
          axpy(next, reflect_coeff(an[i], s[i]), un + i * D, D);
        }
      }
      // Walk the reflections in reverse; gw (stored in dv) is the gradient of reflection i's output.
      T* gw = dv + n * D;
      std::memcpy(gw, g + n * D, sizeof(T) * D);
      for (int64_t i = r - 1; i >= 0; --i) {
        const T* ui = un + i * D;
        const T t = dot(ui, gw, D);
        dalpha[n * r + i] = reflect_dalpha(s[i], t);
        const auto [a, b] = reflect_du_coeffs(an[i], s[i], t);
        lincomb(du + (n * r + i) * D, a, gw, b, ws.data() + i * D, D);
        axpy(gw, reflect_coeff(an[i], t), ui, D);
      }
    }
  });
}

template <typename T>
void dplr_fwd_kernel(const T* u, const T* alpha, const T* v, T* out, int64_t N, int64_t r, int64_t D) {
  at::parallel_for(0, N, grain(r, D), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* un = u + n * r * D;
      const T* vn = v + n * D;
      T* o = out + n * D;
      std::memcpy(o, vn, sizeof(T) * D);
      for (int64_t i = 0; i < r; ++i) axpy(o, reflect_coeff(alpha[n * r + i], dot(un + i * D, vn, D)), un + i * D, D);
    }
  });
}

template <typename T>
void dplr_bwd_kernel(const T* u, const T* alpha, const T* v, const T* g, T* du, T* dalpha, T* dv, int64_t N,
                     int64_t r, int64_t D) {
  at::parallel_for(0, N, grain(2 * r, D), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* un = u + n * r * D;
      const T* vn = v + n * D;
      const T* gn = g + n * D;
      T* dvn = dv + n * D;
      std::memcpy(dvn, gn, sizeof(T) * D);
      for (int64_t i = 0; i < r; ++i) {
        const T* ui = un + i * D;
        const T ai = alpha[n * r + i];
        const T s = dot(ui, vn, D), t = dot(ui, gn, D);
        dalpha[n * r + i] = reflect_dalpha(s, t);
        const auto [a, b] = reflect_du_coeffs(ai, s, t);
        lincomb(du + (n * r + i) * D, a, gn, b, vn, D);
        axpy(dvn, reflect_coeff(ai, t), ui, D);
      }
    }
  });
}

}  // namespace

Tensor householder_fwd_cpu(const Tensor& u, const Tensor& alpha, const Tensor& v) {
  const auto s = detail::check_cpu_inputs("householder", u, alpha, v);
  Tensor out = torch::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "householder_fwd_cpu", [&] {
    householder_fwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                     out.data_ptr<scalar_t>(), s.N, s.r, s.D);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> householder_bwd_cpu(const Tensor& u, const Tensor& alpha, const Tensor& v,
                                                       const Tensor& grad) {
  TORCH_CHECK(grad.defined(), "householder: grad must be defined");
  const auto s = detail::check_cpu_inputs("householder", u, alpha, v, grad);
  Tensor du = torch::empty_like(u), dalpha = torch::empty_like(alpha), dv = torch::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "householder_bwd_cpu", [&] {
    householder_bwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                     grad.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(),
                                     dalpha.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), s.N, s.r, s.D);
  });
  return {du, dalpha, dv};
}

Tensor dplr_fwd_cpu(const Tensor& u, const Tensor& alpha, const Tensor& v) {
  const auto s = detail::check_cpu_inputs("dplr", u, alpha, v);
  Tensor out = torch::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dplr_fwd_cpu", [&] {
    dplr_fwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                              out.data_ptr<scalar_t>(), s.N, s.r, s.D);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> dplr_bwd_cpu(const Tensor& u, const Tensor& alpha, const Tensor& v,
                                                const Tensor& grad) {
  TORCH_CHECK(grad.defined(), "dplr: grad must be defined");
  const auto s = detail::check_cpu_inputs("dplr", u, alpha, v, grad);
  Tensor du = torch::empty_like(u), dalpha = torch::empty_like(alpha), dv = torch::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dplr_bwd_cpu", [&] {
    dplr_bwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                              grad.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(), dalpha.data_ptr<scalar_t>(),
                              dv.data_ptr<scalar_t>(), s.N, s.r, s.D);
  });
  return {du, dalpha, dv};
}

}  // namespace fprnn::ops
