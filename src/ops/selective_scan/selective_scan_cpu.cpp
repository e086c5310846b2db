// selective_scan CPU kernels: the Mamba-1 recurrence s_t = exp(Δ_t A) s_{t−1} + Δ_t B_t u_t,
// y_t = C_t·s_t + D_skip u_t, and its backward (formulas in include/fprnn/ops/selective_scan.h).
// Layout contract: u, dt, y (B, T, D); A (D, N); Bm, Cm (B, T, N); D_skip, dt_bias (D); contiguous, one dtype
// (float32 or float64).
//
// Napkin math: per (b, t, d) the forward reads u, dt and writes y (12 bytes in float32) but does N exps and
// 4N flops (N = d_state = 16): compute-bound on the exps, so the forward runs SIMD across channels (a
// vectorisable exp, src/ops/fast_math.h; at::vec's exp is scalar libm calls in our build) with the N states
// of a block of kBlock channels in a local buffer. One task = one (b, channel block); B_t, C_t (N values) are
// broadcast to the block.
// The backward (run once per training step, not once per fixed-point iteration) re-runs the forward of its
// block into a (T, N, kBlock) buffer (kBlock·N·T values: 2 MiB at T = 1024 in float32, per thread) instead of
// saving (B, T, D, N) states, then scans back, vectorised across the block's channels like the forward.
#include "fprnn/ops/selective_scan.h"

#include "ops/fast_math.h"
#include "ops/selective_scan/selective_scan_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace fprnn::ops {

namespace {

using detail::selective_scan_softplus_grad;
using detail::kernel_exp;
using detail::kernel_softplus;

// Channels per task. Fixed (not derived from the thread count) so that the partial sums of dB and dC over
// channel blocks, and hence the results, do not depend on the number of threads.
constexpr int64_t kBlock = 32;
constexpr int64_t kGrainElems = 1 << 14;  // (t, d, n) elements below which a task does not pay for a thread

// The forward of one (b, channel block [d0, d0 + width)) down T.
// u, dt, y: (T, D) rows of batch element b; At: A transposed (N, D); Bm, Cm: (T, N) rows of b; y may be null
// (backward recompute); states, if given, receives s_t as (T, N, kBlock). s: scratch (N, kBlock); Ablk: scratch
// (N, kBlock), A of the block with zero-padded lanes.
// The inner loops run over all kBlock lanes of fixed-size local arrays (lanes past `width` hold zeros and stay
// zero: exp(0·0) s + 0 = s = 0), so the compiler vectorises them, exp included (kernel_exp, fast_math.h).
template <typename scalar_t, bool kSaveStates>
FPRNN_AVX2_CLONE void fwd_block(const scalar_t* u, const scalar_t* dt, const scalar_t* At, const scalar_t* Bm,
                                const scalar_t* Cm, const scalar_t* Ds, const scalar_t* bias, scalar_t* y,
                                scalar_t* states, scalar_t* s, scalar_t* Ablk, int64_t T, int64_t D, int64_t N,
                                int64_t d0, int64_t width) {
  std::fill_n(s, N * kBlock, scalar_t(0));
  std::fill_n(Ablk, N * kBlock, scalar_t(0));
  for (int64_t n = 0; n < N; ++n) std::copy_n(At + n * D + d0, width, Ablk + n * kBlock);
  scalar_t delta[kBlock] = {}, du[kBlock] = {}, acc[kBlock] = {};
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * D + d0;
    const scalar_t* Bt = Bm + t * N;
    const scalar_t* Ct = Cm + t * N;
    for (int64_t j = 0; j < width; ++j) {
      delta[j] = kernel_softplus(dt[row + j] + bias[d0 + j]);
      du[j] = delta[j] * u[row + j];
      acc[j] = Ds[d0 + j] * u[row + j];
    }
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t bn = Bt[n], cn = Ct[n];
      scalar_t* sn = s + n * kBlock;
      const scalar_t* an = Ablk + n * kBlock;
      for (int64_t j = 0; j < kBlock; ++j) {
        const scalar_t sv = kernel_exp(delta[j] * an[j]) * sn[j] + du[j] * bn;
        sn[j] = sv;
        acc[j] += cn * sv;
      }
      if (kSaveStates) std::copy_n(sn, kBlock, states + (t * N + n) * kBlock);
    }
    if (y != nullptr) std::copy_n(acc, width, y + row);
  }
}

// The reverse sweep of one (b, channel block) (formulas in include/fprnn/ops/selective_scan.h), after
// fwd_block<…, true> has left the block's states s_t in `states` (T, N, kBlock) and its zero-padded A in Ablk.
// carry, dA_acc (N, kBlock) and dD_acc, dbias_acc (kBlock) are zeroed by the caller; dB_t, dC_t are the
// block's (T, N) partial sums over its channels, du, ddt the (T, D) rows of batch element b.
// Vectorised like the forward: the inner loops run over all kBlock lanes (padding lanes carry zeros: g = u = Δ
// = 0 there, so every product they add is 0); the sums over channels for dB and dC are taken lane by lane in
// channel order afterwards, the order of a scalar loop, so results do not depend on the vector width.
template <typename scalar_t>
FPRNN_AVX2_CLONE void bwd_sweep_block(const scalar_t* g, const scalar_t* u, const scalar_t* dt, const scalar_t* Bm,
                                      const scalar_t* Cm, const scalar_t* Ds, const scalar_t* bias,
                                      const scalar_t* states, const scalar_t* Ablk, scalar_t* carry, scalar_t* dA_acc,
                                      scalar_t* dD_acc, scalar_t* dbias_acc, scalar_t* dB_t, scalar_t* dC_t,
                                      scalar_t* du, scalar_t* ddt, int64_t T, int64_t D, int64_t N, int64_t d0,
                                      int64_t width) {
  scalar_t z[kBlock] = {}, delta[kBlock] = {}, gt[kBlock] = {}, ut[kBlock] = {};
  scalar_t d_delta[kBlock], d_u[kBlock], dc[kBlock], db[kBlock];
  const scalar_t zeros[kBlock] = {};
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t row = t * D + d0;
    const scalar_t* Bt = Bm + t * N;
    const scalar_t* Ct = Cm + t * N;
    for (int64_t j = 0; j < width; ++j) {
      z[j] = dt[row + j] + bias[d0 + j];
      delta[j] = kernel_softplus(z[j]);
      gt[j] = g[row + j];
      ut[j] = u[row + j];
      dD_acc[j] += gt[j] * ut[j];
    }
    for (int64_t j = 0; j < kBlock; ++j) {
      d_delta[j] = 0;
      d_u[j] = (j < width ? Ds[d0 + j] : scalar_t(0)) * gt[j];
    }
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t bn = Bt[n], cn = Ct[n];
      const scalar_t* an = Ablk + n * kBlock;
      const scalar_t* s_t = states + (t * N + n) * kBlock;
      const scalar_t* s_prev = t > 0 ? s_t - N * kBlock : zeros;
      scalar_t* cy = carry + n * kBlock;
      scalar_t* dA = dA_acc + n * kBlock;
      for (int64_t j = 0; j < kBlock; ++j) {
        const scalar_t a = kernel_exp(delta[j] * an[j]);
        const scalar_t ds = gt[j] * cn + cy[j];
        const scalar_t da_a = ds * s_prev[j] * a;  // ∂L/∂a_t · a_t
        d_delta[j] += da_a * an[j] + ds * bn * ut[j];
        dA[j] += da_a * delta[j];
        d_u[j] += ds * delta[j] * bn;
        cy[j] = a * ds;
        dc[j] = gt[j] * s_t[j];
        db[j] = ds * delta[j] * ut[j];
      }
      scalar_t dc_sum = dC_t[t * N + n], db_sum = dB_t[t * N + n];
      for (int64_t j = 0; j < width; ++j) {
        dc_sum += dc[j];
        db_sum += db[j];
      }
      dC_t[t * N + n] = dc_sum;
      dB_t[t * N + n] = db_sum;
    }
    for (int64_t j = 0; j < width; ++j) {
      du[row + j] = d_u[j];
      const scalar_t d = d_delta[j] * selective_scan_softplus_grad(z[j]);
      ddt[row + j] = d;
      dbias_acc[j] += d;
    }
  }
}

int64_t n_blocks(int64_t D) { return (D + kBlock - 1) / kBlock; }

int64_t grain(int64_t T, int64_t N) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, T * kBlock * N)); }

}  // namespace

torch::Tensor selective_scan_fwd_cpu(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                                     const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& D_skip,
                                     const torch::Tensor& dt_bias) {
  detail::selective_scan_check_args("selective_scan_fwd_cpu", u, dt, A, Bm, Cm, D_skip, dt_bias, torch::Tensor(),
                                    true);
  torch::Tensor y = torch::empty(u.sizes(), u.options());
  if (y.numel() == 0) return y;
  const int64_t B = u.size(0), T = u.size(1), D = u.size(2), N = A.size(1);
  const torch::Tensor At = A.t().contiguous();
  const int64_t nb = n_blocks(D);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_fwd_cpu", [&] {
    const scalar_t* pu = u.const_data_ptr<scalar_t>();
    const scalar_t* pdt = dt.const_data_ptr<scalar_t>();
    const scalar_t* pB = Bm.const_data_ptr<scalar_t>();
    const scalar_t* pC = Cm.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * nb, grain(T, N), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> s(static_cast<size_t>(N * kBlock)), Ablk(static_cast<size_t>(N * kBlock));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nb, d0 = (task % nb) * kBlock;
        fwd_block<scalar_t, false>(pu + b * T * D, pdt + b * T * D, At.const_data_ptr<scalar_t>(), pB + b * T * N,
                            pC + b * T * N, D_skip.const_data_ptr<scalar_t>(), dt_bias.const_data_ptr<scalar_t>(),
                            py + b * T * D, nullptr, s.data(), Ablk.data(), T, D, N, d0,
                                   std::min(kBlock, D - d0));
      }
    });
  });
  return y;
}

SelectiveScanGrads selective_scan_bwd_cpu(const torch::Tensor& grad, const torch::Tensor& u, const torch::Tensor& dt,
                                          const torch::Tensor& A, const torch::Tensor& Bm, const torch::Tensor& Cm,
                                          const torch::Tensor& D_skip, const torch::Tensor& dt_bias) {
  detail::selective_scan_check_args("selective_scan_bwd_cpu", u, dt, A, Bm, Cm, D_skip, dt_bias, grad, true);
  TORCH_CHECK(grad.defined(), "selective_scan_bwd_cpu: grad is undefined");
  const int64_t B = u.size(0), T = u.size(1), D = u.size(2), N = A.size(1);
  const int64_t nb = n_blocks(D);
  SelectiveScanGrads out;
  out.du = torch::empty(u.sizes(), u.options());
  out.ddt = torch::empty(u.sizes(), u.options());
  // Partial sums, one slot per task, reduced below in a fixed order.
  torch::Tensor dB_part = torch::zeros({B, nb, T, N}, u.options());
  torch::Tensor dC_part = torch::zeros({B, nb, T, N}, u.options());
  torch::Tensor dA_part = torch::zeros({B, D, N}, u.options());
  torch::Tensor dD_part = torch::zeros({B, D}, u.options());
  torch::Tensor dbias_part = torch::zeros({B, D}, u.options());
  if (u.numel() > 0) {
    const torch::Tensor At = A.t().contiguous();
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_bwd_cpu", [&] {
      const scalar_t* pg = grad.const_data_ptr<scalar_t>();
      const scalar_t* pu = u.const_data_ptr<scalar_t>();
      const scalar_t* pdt = dt.const_data_ptr<scalar_t>();
      const scalar_t* pB = Bm.const_data_ptr<scalar_t>();
      const scalar_t* pC = Cm.const_data_ptr<scalar_t>();
      const scalar_t* pDs = D_skip.const_data_ptr<scalar_t>();
      const scalar_t* pbias = dt_bias.const_data_ptr<scalar_t>();
      scalar_t* pdu = out.du.mutable_data_ptr<scalar_t>();
      scalar_t* pddt = out.ddt.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, B * nb, grain(T, N), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> states(static_cast<size_t>(T * N * kBlock)), s(static_cast<size_t>(N * kBlock));
        std::vector<scalar_t> carry(static_cast<size_t>(N * kBlock)), dA_acc(static_cast<size_t>(N * kBlock));
        std::vector<scalar_t> Ablk(static_cast<size_t>(N * kBlock));
        std::vector<scalar_t> dD_acc(kBlock), dbias_acc(kBlock);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / nb, d0 = (task % nb) * kBlock, width = std::min(kBlock, D - d0);
          const scalar_t* u_b = pu + b * T * D;
          const scalar_t* dt_b = pdt + b * T * D;
          const scalar_t* g_b = pg + b * T * D;
          const scalar_t* B_b = pB + b * T * N;
          const scalar_t* C_b = pC + b * T * N;
          fwd_block<scalar_t, true>(u_b, dt_b, At.const_data_ptr<scalar_t>(), B_b, C_b, pDs, pbias, nullptr,
                                    states.data(), s.data(), Ablk.data(), T, D, N, d0, width);
          scalar_t* dB_t = dB_part.mutable_data_ptr<scalar_t>() + (b * nb + task % nb) * T * N;
          scalar_t* dC_t = dC_part.mutable_data_ptr<scalar_t>() + (b * nb + task % nb) * T * N;
          std::fill(carry.begin(), carry.end(), scalar_t(0));  // a_{t+1} ds_{t+1}
          std::fill(dA_acc.begin(), dA_acc.end(), scalar_t(0));
          std::fill(dD_acc.begin(), dD_acc.end(), scalar_t(0));
          std::fill(dbias_acc.begin(), dbias_acc.end(), scalar_t(0));
          bwd_sweep_block<scalar_t>(g_b, u_b, dt_b, B_b, C_b, pDs, pbias, states.data(), Ablk.data(), carry.data(),
                                    dA_acc.data(), dD_acc.data(), dbias_acc.data(), dB_t, dC_t,
                                    pdu + b * T * D, pddt + b * T * D, T, D, N, d0, width);
          scalar_t* dA_b = dA_part.mutable_data_ptr<scalar_t>() + b * D * N;
          for (int64_t j = 0; j < width; ++j) {
            for (int64_t n = 0; n < N; ++n) dA_b[(d0 + j) * N + n] = dA_acc[n * kBlock + j];
            dD_part.mutable_data_ptr<scalar_t>()[b * D + d0 + j] = dD_acc[j];
            dbias_part.mutable_data_ptr<scalar_t>()[b * D + d0 + j] = dbias_acc[j];
          }
        }
      });
    });
  }
  // Fixed-order reductions: over channel blocks for dB, dC; over the batch for dA, dD_skip, dt_bias.
  auto sum_in_order = [](const torch::Tensor& t, int64_t dim) {
    if (t.size(dim) == 0) return t.sum(dim);
    torch::Tensor acc = t.select(dim, 0).clone();
    for (int64_t i = 1; i < t.size(dim); ++i) acc.add_(t.select(dim, i));
    return acc;
  };
  out.dB = sum_in_order(dB_part, 1);
  out.dC = sum_in_order(dC_part, 1);
  out.dA = sum_in_order(dA_part, 0);
  out.dD_skip = sum_in_order(dD_part, 0);
  out.ddt_bias = sum_in_order(dbias_part, 0);
  return out;
}

}  // namespace fprnn::ops
