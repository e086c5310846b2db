// ssd CPU kernels: the Mamba-2 recurrence S_t = exp(Δ_t A) S_{t−1} + Δ_t x_t ⊗ B_t, y_t = S_t C_t + D x_t per head
// (S: P × N), and its backward (formulas in include/fprnn/ops/ssd.h, derivation in README.md).
// Layout contract: x, y (B, T, H, P); dt (B, T, H); A, D_skip, dt_bias (H); Bm, Cm (B, T, G, N); contiguous, one
// dtype (float32 or float64).
//
// Napkin math (FP-Mamba2 defaults: P = headdim = 64, N = d_state = 128): the state of one head is P·N = 8 192
// values (32 KiB in float32), which stays in L1/L2 for the whole sweep over T. Per (b, t, h) the forward does
// one exp and 2·P·N FMAs (S ← a S + Δx ⊗ B, y ← S C) against (2P + 2N) values of input/output traffic:
// compute-bound, so the inner loop runs SIMD along N over whole vectors (rows padded to Np, pad lanes stay
// zero; B_t, C_t copied into padded buffers once per step). A chunked (matmul) form of SSD does ~1.7× more
// flops at these sizes for the sake of tensor cores; on a CPU the direct loop is simpler and not slower.
// The backward does 6 FMAs per state element and step; it runs once per training step (the forward once per
// fixed-point iteration).
#include "fprnn/ops/ssd.h"

#include "ops/ssd/ssd_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace fprnn::ops {

namespace {

using detail::ssd_softplus;
using detail::ssd_softplus_grad;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

constexpr int64_t kGrainElems = 1 << 14;  // state updates below which a task does not pay for a thread

// N rounded up to whole SIMD vectors.
template <typename scalar_t>
int64_t padded(int64_t N) {
  constexpr int64_t kLanes = Vec<scalar_t>::size();
  return (N + kLanes - 1) / kLanes * kLanes;
}

// Sum of the lanes in a fixed order.
template <typename scalar_t>
inline scalar_t hsum(const Vec<scalar_t>& v) {
  __at_align__ scalar_t buf[Vec<scalar_t>::size()];
  v.store(buf);
  scalar_t s = 0;
  for (int64_t i = 0; i < Vec<scalar_t>::size(); ++i) s += buf[i];
  return s;
}

// dst[p] = a · src[p] + (Δ x[p]) · Bp for p < P; rows of Np values (dst may equal src).
template <typename scalar_t>
inline void state_step(scalar_t* dst, const scalar_t* src, const scalar_t* x, const scalar_t* Bp, scalar_t a,
                       scalar_t delta, int64_t P, int64_t Np) {
  using V = Vec<scalar_t>;
  const V va(a);
  for (int64_t p = 0; p < P; ++p) {
    const V vx(delta * x[p]);
    const scalar_t* s_in = src + p * Np;
    scalar_t* s_out = dst + p * Np;
    for (int64_t n = 0; n < Np; n += V::size())
      at::vec::fmadd(va, V::loadu(s_in + n), vx * V::loadu(Bp + n)).store(s_out + n);
  }
}

// The same update in place, fused with the output y[p] = S[p]·Cp + D x[p].
template <typename scalar_t>
inline void state_step_out(scalar_t* S, const scalar_t* x, const scalar_t* Bp, const scalar_t* Cp, scalar_t a,
                           scalar_t delta, scalar_t D, scalar_t* y, int64_t P, int64_t Np) {
  using V = Vec<scalar_t>;
  const V va(a);
  for (int64_t p = 0; p < P; ++p) {
    const V vx(delta * x[p]);
    scalar_t* row = S + p * Np;
    V acc(scalar_t(0));
    for (int64_t n = 0; n < Np; n += V::size()) {
      const V s = at::vec::fmadd(va, V::loadu(row + n), vx * V::loadu(Bp + n));
      s.store(row + n);
      acc = at::vec::fmadd(s, V::loadu(Cp + n), acc);
    }
    y[p] = hsum(acc) + D * x[p];
  }
}

int64_t grain(int64_t work_per_task) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, work_per_task)); }

}  // namespace

torch::Tensor ssd_fwd_cpu(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                          const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                          const torch::Tensor& dt_bias) {
  detail::ssd_check_args("ssd_fwd_cpu", x, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor(), true);
  torch::Tensor y = torch::empty(x.sizes(), x.options());
  if (y.numel() == 0) return y;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  const int64_t heads_per_group = H / G;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_fwd_cpu", [&] {
    const int64_t Np = padded<scalar_t>(N);
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    const scalar_t* pdt = dt.const_data_ptr<scalar_t>();
    const scalar_t* pA = A.const_data_ptr<scalar_t>();
    const scalar_t* pB = Bm.const_data_ptr<scalar_t>();
    const scalar_t* pC = Cm.const_data_ptr<scalar_t>();
    const scalar_t* pD = D_skip.const_data_ptr<scalar_t>();
    const scalar_t* pbias = dt_bias.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * H, grain(T * P * N), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> S(static_cast<size_t>(P * Np)), Bp(static_cast<size_t>(Np), 0), Cp(static_cast<size_t>(Np), 0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / H, h = task % H, g = h / heads_per_group;
        std::fill(S.begin(), S.end(), scalar_t(0));
        for (int64_t t = 0; t < T; ++t) {
          const int64_t bt = b * T + t;
          const scalar_t delta = ssd_softplus(pdt[bt * H + h] + pbias[h]);
          const scalar_t a = std::exp(delta * pA[h]);
          std::copy_n(pB + (bt * G + g) * N, N, Bp.data());  // lanes N..Np stay zero
          std::copy_n(pC + (bt * G + g) * N, N, Cp.data());
          state_step_out<scalar_t>(S.data(), px + (bt * H + h) * P, Bp.data(), Cp.data(), a, delta, pD[h],
                                   py + (bt * H + h) * P, P, Np);
        }
      }
    });
  });
  return y;
}

SsdGrads ssd_bwd_cpu(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                     const torch::Tensor& dt_bias) {
  detail::ssd_check_args("ssd_bwd_cpu", x, dt, A, Bm, Cm, D_skip, dt_bias, grad, true);
  TORCH_CHECK(grad.defined(), "ssd_bwd_cpu: grad is undefined");
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  const int64_t heads_per_group = H / G;
  SsdGrads out;
  out.dx = torch::empty(x.sizes(), x.options());
  out.ddt = torch::empty(dt.sizes(), dt.options());
  // dB, dC: each (b, group) task adds its heads' contributions in head order; no other task writes there.
  out.dB = torch::zeros(Bm.sizes(), Bm.options());
  out.dC = torch::zeros(Cm.sizes(), Cm.options());
  // Sums over the batch: one slot per (b, h), reduced below in a fixed order.
  torch::Tensor dA_part = torch::zeros({B, H}, x.options());
  torch::Tensor dD_part = torch::zeros({B, H}, x.options());
  torch::Tensor dbias_part = torch::zeros({B, H}, x.options());
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_bwd_cpu", [&] {
      using V = Vec<scalar_t>;
      const int64_t Np = padded<scalar_t>(N);
      const int64_t n_chunks = (T + kSsdChunk - 1) / kSsdChunk;
      const scalar_t* pg = grad.const_data_ptr<scalar_t>();
      const scalar_t* px = x.const_data_ptr<scalar_t>();
      const scalar_t* pdt = dt.const_data_ptr<scalar_t>();
      const scalar_t* pA = A.const_data_ptr<scalar_t>();
      const scalar_t* pB = Bm.const_data_ptr<scalar_t>();
      const scalar_t* pC = Cm.const_data_ptr<scalar_t>();
      const scalar_t* pD = D_skip.const_data_ptr<scalar_t>();
      const scalar_t* pbias = dt_bias.const_data_ptr<scalar_t>();
      scalar_t* pdx = out.dx.mutable_data_ptr<scalar_t>();
      scalar_t* pddt = out.ddt.mutable_data_ptr<scalar_t>();
      scalar_t* pdB = out.dB.mutable_data_ptr<scalar_t>();
      scalar_t* pdC = out.dC.mutable_data_ptr<scalar_t>();
      scalar_t* pdA = dA_part.mutable_data_ptr<scalar_t>();
      scalar_t* pdD = dD_part.mutable_data_ptr<scalar_t>();
      scalar_t* pdbias = dbias_part.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, B * G, grain(3 * heads_per_group * T * P * N), [&](int64_t begin, int64_t end) {
        const size_t state = static_cast<size_t>(P * Np);
        // ckpt[c]: the state before chunk c; chunk[k]: S_{t0+k} of the chunk being walked back.
        std::vector<scalar_t> ckpt(static_cast<size_t>(n_chunks) * state), chunk(static_cast<size_t>(kSsdChunk) * state);
        std::vector<scalar_t> carry(state);  // a_{t+1} dS_{t+1}
        std::vector<scalar_t> Bp(static_cast<size_t>(Np), 0), Cp(static_cast<size_t>(Np), 0);
        std::vector<scalar_t> dBl(static_cast<size_t>(Np)), dCl(static_cast<size_t>(Np));
        auto load_bc = [&](int64_t bt, int64_t g) {
          std::copy_n(pB + (bt * G + g) * N, N, Bp.data());  // lanes N..Np stay zero
          std::copy_n(pC + (bt * G + g) * N, N, Cp.data());
        };
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / G, g = task % G;
          for (int64_t h = g * heads_per_group; h < (g + 1) * heads_per_group; ++h) {
            const scalar_t Ah = pA[h], Dh = pD[h];
            auto step_at = [&](int64_t t, scalar_t* dst, const scalar_t* src) {
              const int64_t bt = b * T + t;
              const scalar_t delta = ssd_softplus(pdt[bt * H + h] + pbias[h]);
              load_bc(bt, g);
              state_step<scalar_t>(dst, src, px + (bt * H + h) * P, Bp.data(), std::exp(delta * Ah), delta, P, Np);
            };
            // Forward sweep: checkpoints only.
            std::fill_n(ckpt.begin(), state, scalar_t(0));
            for (int64_t c = 1; c < n_chunks; ++c) {
              scalar_t* s = ckpt.data() + c * state;
              std::copy_n(ckpt.data() + (c - 1) * state, state, s);
              for (int64_t t = (c - 1) * kSsdChunk; t < c * kSsdChunk; ++t) step_at(t, s, s);
            }
            // Reverse sweep, chunk by chunk from the end.
            std::fill(carry.begin(), carry.end(), scalar_t(0));
            scalar_t dA_acc = 0, dD_acc = 0, dbias_acc = 0;
            for (int64_t c = n_chunks - 1; c >= 0; --c) {
              const int64_t t0 = c * kSsdChunk, t1 = std::min(T, t0 + kSsdChunk);
              for (int64_t t = t0; t < t1; ++t)
                step_at(t, chunk.data() + (t - t0) * state,
                        t == t0 ? ckpt.data() + c * state : chunk.data() + (t - t0 - 1) * state);
              for (int64_t t = t1 - 1; t >= t0; --t) {
                const int64_t bt = b * T + t;
                const scalar_t z = pdt[bt * H + h] + pbias[h];
                const scalar_t delta = ssd_softplus(z);
                const scalar_t a = std::exp(delta * Ah);
                const scalar_t* S_t = chunk.data() + (t - t0) * state;
                const scalar_t* S_prev = t == t0 ? ckpt.data() + c * state : S_t - state;
                const scalar_t* xr = px + (bt * H + h) * P;
                const scalar_t* gr = pg + (bt * H + h) * P;
                scalar_t* dxr = pdx + (bt * H + h) * P;
                load_bc(bt, g);
                std::fill(dBl.begin(), dBl.end(), scalar_t(0));
                std::fill(dCl.begin(), dCl.end(), scalar_t(0));
                const V va(a);
                scalar_t da = 0, x_dSB = 0;
                for (int64_t p = 0; p < P; ++p) {
                  const V vg(gr[p]), vdx(delta * xr[p]);
                  V acc_B(scalar_t(0)), acc_S(scalar_t(0));
                  scalar_t* cr = carry.data() + p * Np;
                  const scalar_t* st = S_t + p * Np;
                  const scalar_t* sp = S_prev + p * Np;
                  for (int64_t n = 0; n < Np; n += V::size()) {
                    const V ds = at::vec::fmadd(vg, V::loadu(Cp.data() + n), V::loadu(cr + n));  // dS_t[p, n]
                    at::vec::fmadd(vg, V::loadu(st + n), V::loadu(dCl.data() + n)).store(dCl.data() + n);
                    at::vec::fmadd(vdx, ds, V::loadu(dBl.data() + n)).store(dBl.data() + n);
                    acc_B = at::vec::fmadd(ds, V::loadu(Bp.data() + n), acc_B);
                    acc_S = at::vec::fmadd(ds, V::loadu(sp + n), acc_S);
                    (va * ds).store(cr + n);
                  }
                  const scalar_t dSB = hsum(acc_B);  // (dS_t B_t)[p]
                  dxr[p] = delta * dSB + Dh * gr[p];
                  x_dSB += xr[p] * dSB;
                  da += hsum(acc_S);
                  dD_acc += gr[p] * xr[p];
                }
                const scalar_t ddt = (da * a * Ah + x_dSB) * ssd_softplus_grad(z);
                pddt[bt * H + h] = ddt;
                dbias_acc += ddt;
                dA_acc += da * a * delta;
                scalar_t* dB_row = pdB + (bt * G + g) * N;
                scalar_t* dC_row = pdC + (bt * G + g) * N;
                for (int64_t n = 0; n < N; ++n) {
                  dB_row[n] += dBl[static_cast<size_t>(n)];
                  dC_row[n] += dCl[static_cast<size_t>(n)];
                }
              }
            }
            pdA[b * H + h] = dA_acc;
            pdD[b * H + h] = dD_acc;
            pdbias[b * H + h] = dbias_acc;
          }
        }
      });
    });
  }
  // Fixed-order reductions over the batch.
  auto sum_in_order = [](const torch::Tensor& t) {
    if (t.size(0) == 0) return t.sum(0);
    torch::Tensor acc = t.select(0, 0).clone();
    for (int64_t i = 1; i < t.size(0); ++i) acc.add_(t.select(0, i));
    return acc;
  };
  out.dA = sum_in_order(dA_part);
  out.dD_skip = sum_in_order(dD_part);
  out.ddt_bias = sum_in_order(dbias_part);
  return out;
}

}  // namespace fprnn::ops
