// causal_conv1d CPU kernels: y_t = act(bias + Σ_k w_k ⊙ x_{t−K+1+k}) and its backward, one pass each.
// Layout contract: x, y, grad, dx: (B, T, C) contiguous; weight (C, K) (or (C, 1, K)); bias (C) or undefined;
// one dtype (bfloat16 is computed in float32).
//
// Napkin math: per element the forward moves 2 values (reads x, writes y) with K multiply-adds (+ one exp and
// one division for SiLU); the backward moves 3 (reads x, g; writes dx) with 3K multiply-adds (recomputing the
// pre-activation, the dx gather, the dweight sum) plus, per (batch group, block), K + 1 partial-sum rows. At
// the layer's shape (B, T, C) = (128, 17, 256) float32 a tensor is 2.2 MB, so the forward moves 4.5 MB and the
// backward 6.7 MB, where the ATen composition (pad, then K × (narrow, mul, add), then silu) moved about ten
// tensors forward and more backward. One task walks one (batch element or group, block of ≤ 1 KiB of
// channels) along T; every row it touches is one contiguous run per stream, and the K input rows a step reads
// were (but for one) read by the steps before, so they come from L1.
#include "fprnn/ops/conv1d.h"

#include "ops/conv1d/conv1d_common.h"
#include "ops/fast_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

// Tells the compiler that the channel loop below has no loop-carried dependence (its pointers never overlap),
// so that it vectorises without runtime alias checks over a dozen streams.
#if defined(__clang__)
#define FPRNN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FPRNN_IVDEP _Pragma("GCC ivdep")
#else
#define FPRNN_IVDEP
#endif

// On x86-64 with GCC or Clang the task loops are also compiled for AVX2 and chosen at run time (see below).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPRNN_CONV1D_AVX2 1
#else
#define FPRNN_CONV1D_AVX2 0
#endif

namespace fprnn::ops {

namespace {

using detail::conv1d_acc_t;
using detail::conv1d_sigmoid;
using detail::conv1d_silu;
using detail::conv1d_silu_grad;

// Channel-block width in bytes of the accumulation type: the backward keeps K + 1 such rows of scratch per
// task (ring of gz rows, dbias) besides the K partial dweight rows, ≤ 10 KiB for K = 4, so that all of a
// step's streams stay in L1. Narrowed (down to kMinBlockElems channels) when there are too few tasks for the
// threads.
constexpr int64_t kBlockBytes = 1024;
constexpr int64_t kMinBlockElems = 16;
constexpr int64_t kGrainElems = 1 << 15;  // below about this many elements per task, threads do not pay
// The backward sums dweight and dbias over B in this many fixed, contiguous groups of batch elements (fewer
// when B is smaller), then over the groups in order: the partition depends on B only, never on the threads.
constexpr int64_t kBatchGroups = 16;

// e^x, branch-free so that loops over it vectorise (src/ops/fast_math.h; float64 keeps std::exp). For a NaN
// x it is finite; the callers multiply by z again, so NaN still reaches the output.
C10_ALWAYS_INLINE float exp_vec(float x) { return detail::fast_expf(x); }
inline double exp_vec(double x) { return std::exp(x); }

template <typename scalar_t>
using acc_t = conv1d_acc_t<scalar_t>;

// Storage → accumulation type (bfloat16 → float is a shift of the bits).
template <typename scalar_t>
C10_ALWAYS_INLINE acc_t<scalar_t> load(scalar_t v) {
  return static_cast<acc_t<scalar_t>>(v);
}

// Accumulation → storage type. For bfloat16: round to nearest even and NaN → 0x7FC0, as c10::BFloat16(float),
// but with an integer select instead of c10's branch, so that the loops around it vectorise.
template <typename scalar_t>
C10_ALWAYS_INLINE scalar_t store(acc_t<scalar_t> v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    const uint32_t rounded = (u + ((u >> 16) & 1u) + 0x7fffu) >> 16;
    const uint32_t bits = (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded;
    return c10::BFloat16(static_cast<uint16_t>(bits), c10::BFloat16::from_bits());
  } else {
    return v;
  }
}

// One output row of one channel block, for j < width:
//   out[j] = act(bias[j] + Σ_k w[k·C + j] · xk[k][j]),   xk[k] the row x_{t−K+1+k} (a zero row for negative time).
// kK: K at compile time (1..4), or 0 to use the run-time K.
template <typename scalar_t, int kK, bool kSilu>
C10_ALWAYS_INLINE void fwd_row(const scalar_t* const* xk, const acc_t<scalar_t>* w, int64_t C,
                               const acc_t<scalar_t>* bias, scalar_t* out, int64_t width, int64_t K_runtime) {
  using acc = acc_t<scalar_t>;
  const int64_t K = kK > 0 ? kK : K_runtime;
  FPRNN_IVDEP
  for (int64_t j = 0; j < width; ++j) {
    acc z = bias[j];
    for (int64_t k = 0; k < K; ++k) z += w[k * C + j] * load(xk[k][j]);
    if constexpr (kSilu) z = conv1d_silu(z, conv1d_sigmoid(exp_vec(-z)));
    out[j] = store<scalar_t>(z);
  }
}

// One step t of the backward for one channel block, for j < width; ring[k] = the row of gz_{t−k} (k = 0..K−1,
// zeros before t = 0 and from t = T on). kGz (t < T): gz_t = g · act'(z_t) from g = grad_t and xk[k] = x_{t−K+1+k}
// (a zero row for negative time); it is written to ring[0] (zeros when !kGz), and gz_t · xk[k] is added to
// dw[k·C + ·], gz_t to db. kDx (t ≥ K − 1): writes dx_{t−K+1} = Σ_k w_k · gz_{t−k}, whose last term is now known.
template <typename scalar_t, int kK, bool kSilu, bool kGz, bool kDx>
C10_ALWAYS_INLINE void bwd_row(const scalar_t* const* xk, const scalar_t* g, const acc_t<scalar_t>* w, int64_t C,
                               const acc_t<scalar_t>* bias, acc_t<scalar_t>* const* ring, acc_t<scalar_t>* dw,
                               acc_t<scalar_t>* db, scalar_t* dx, int64_t width, int64_t K_runtime) {
  using acc = acc_t<scalar_t>;
  const int64_t K = kK > 0 ? kK : K_runtime;
  FPRNN_IVDEP
  for (int64_t j = 0; j < width; ++j) {
    acc gz = 0;
    if constexpr (kGz) {
      gz = load(g[j]);
      if constexpr (kSilu) {
        acc z = bias[j];
        for (int64_t k = 0; k < K; ++k) z += w[k * C + j] * load(xk[k][j]);
        gz = conv1d_silu_grad(gz, z, conv1d_sigmoid(exp_vec(-z)));
      }
      db[j] += gz;
      for (int64_t k = 0; k < K; ++k) dw[k * C + j] += gz * load(xk[k][j]);
    }
    ring[0][j] = gz;
    if constexpr (kDx) {
      acc d = kGz ? w[j] * gz : acc(0);
      for (int64_t k = 1; k < K; ++k) d += w[k * C + j] * ring[k][j];
      dx[j] = store<scalar_t>(d);
    }
  }
}

// Channel-block width: kBlockBytes of acc_t, halved (down to kMinBlockElems) while n_outer·⌈C/width⌉ tasks would
// leave threads idle. Only the work split depends on it, never a result.
template <typename scalar_t>
int64_t block_width(int64_t n_outer, int64_t C) {
  int64_t width = kBlockBytes / static_cast<int64_t>(sizeof(acc_t<scalar_t>));
  const int64_t want_tasks = 2 * static_cast<int64_t>(at::get_num_threads());
  while (width > kMinBlockElems && n_outer * ((C + width - 1) / width) < want_tasks) width /= 2;
  return std::min(width, C);
}

// The taps transposed to (K, C) and the bias (C, zeros when undefined), both in acc_t, so that the channel
// loops read them contiguously.
template <typename scalar_t>
struct Taps {
  std::vector<acc_t<scalar_t>> w, bias;
  Taps(const torch::Tensor& weight, const torch::Tensor& bias_t, int64_t C, int64_t K)
      : w(static_cast<size_t>(K * C)), bias(static_cast<size_t>(C), acc_t<scalar_t>(0)) {
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t k = 0; k < K; ++k) w[k * C + c] = static_cast<acc_t<scalar_t>>(wp[c * K + k]);
    }
    if (bias_t.defined()) {
      const scalar_t* bp = bias_t.const_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) bias[c] = static_cast<acc_t<scalar_t>>(bp[c]);
    }
  }
};

// Everything a task needs. x, y, grad, dx: (B, T, C) contiguous; width: channels per block; zeros: a row of
// `width` zeros that stands in for x at negative time.
template <typename scalar_t>
struct Plan {
  const scalar_t* x = nullptr;
  const scalar_t* grad = nullptr;
  scalar_t* out = nullptr;  // y (forward) or dx (backward)
  const acc_t<scalar_t>* w = nullptr;
  const acc_t<scalar_t>* bias = nullptr;
  int64_t B = 0, T = 0, C = 0, K = 0, width = 0, n_blocks = 0, n_groups = 0;
  const scalar_t* zeros = nullptr;
  acc_t<scalar_t>* part_dw = nullptr;  // (n_groups, K, C)
  acc_t<scalar_t>* part_db = nullptr;  // (n_groups, C)
};

// Forward tasks [begin, end); task = (b, channel block), walked along T.
template <typename scalar_t, int kK, bool kSilu>
C10_ALWAYS_INLINE void fwd_tasks(const Plan<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t T = p.T, C = p.C, K = p.K;
  std::vector<const scalar_t*> xk(static_cast<size_t>(K));
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / p.n_blocks;
    const int64_t c0 = (task % p.n_blocks) * p.width;
    const int64_t w_here = std::min(p.width, C - c0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t s = t - K + 1 + k;
        xk[k] = s >= 0 ? p.x + (b * T + s) * C + c0 : p.zeros;
      }
      fwd_row<scalar_t, kK, kSilu>(xk.data(), p.w + c0, C, p.bias + c0, p.out + (b * T + t) * C + c0, w_here, K);
    }
  }
}

// Backward tasks [begin, end); task = (group of batch elements, channel block), each b walked along T in
// increasing time (every stream ascending: ≈ 2× faster here than walking from the end), dx lagging K − 1
// steps behind gz. The task owns its group's partial dw and db for its channels.
template <typename scalar_t, int kK, bool kSilu>
C10_ALWAYS_INLINE void bwd_tasks(const Plan<scalar_t>& p, int64_t begin, int64_t end) {
  using acc = acc_t<scalar_t>;
  const int64_t B = p.B, T = p.T, C = p.C, K = p.K;
  std::vector<const scalar_t*> xk(static_cast<size_t>(K));
  std::vector<acc*> ring(static_cast<size_t>(K));
  std::vector<acc> ring_rows(static_cast<size_t>(K * p.width));  // row (t mod K) holds gz_t
  for (int64_t task = begin; task < end; ++task) {
    const int64_t group = task / p.n_blocks;
    const int64_t c0 = (task % p.n_blocks) * p.width;
    const int64_t w_here = std::min(p.width, C - c0);
    acc* dw_part = p.part_dw + group * K * C + c0;
    acc* db_part = p.part_db + group * C + c0;
    for (int64_t b = group * B / p.n_groups; b < (group + 1) * B / p.n_groups; ++b) {
      std::fill(ring_rows.begin(), ring_rows.end(), acc(0));
      for (int64_t t = 0; t < T + K - 1; ++t) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t s = t - K + 1 + k;
          xk[k] = s >= 0 && s < T ? p.x + (b * T + s) * C + c0 : p.zeros;
          ring[k] = ring_rows.data() + ((t - k + K) % K) * p.width;
        }
        const scalar_t* g = t < T ? p.grad + (b * T + t) * C + c0 : nullptr;
        scalar_t* dx = t >= K - 1 ? p.out + (b * T + t - K + 1) * C + c0 : nullptr;
        const acc* w = p.w + c0;
        const acc* bias = p.bias + c0;
        if (g != nullptr && dx != nullptr) {
          bwd_row<scalar_t, kK, kSilu, true, true>(xk.data(), g, w, C, bias, ring.data(), dw_part, db_part, dx,
                                                   w_here, K);
        } else if (g != nullptr) {
          bwd_row<scalar_t, kK, kSilu, true, false>(xk.data(), g, w, C, bias, ring.data(), dw_part, db_part, dx,
                                                    w_here, K);
        } else if (dx != nullptr) {
          bwd_row<scalar_t, kK, kSilu, false, true>(xk.data(), g, w, C, bias, ring.data(), dw_part, db_part, dx,
                                                    w_here, K);
        } else {
          bwd_row<scalar_t, kK, kSilu, false, false>(xk.data(), g, w, C, bias, ring.data(), dw_part, db_part, dx,
                                                     w_here, K);
        }
      }
    }
  }
}

// The same task loops compiled twice: for the baseline ISA of the build (SSE2 on x86-64) and, on x86-64, for
// AVX2, picked at run time. The loops are elementwise across channels, and no FMA is formed (ISO C++ mode,
// -ffp-contract=off), so both give bitwise the same results; AVX2 runs the SiLU kernels ≈ 2–3× faster.
template <typename scalar_t, int kK, bool kSilu>
void fwd_tasks_base(const Plan<scalar_t>& p, int64_t begin, int64_t end) {
  fwd_tasks<scalar_t, kK, kSilu>(p, begin, end);
}
template <typename scalar_t, int kK, bool kSilu>
void bwd_tasks_base(const Plan<scalar_t>& p, int64_t begin, int64_t end) {
  bwd_tasks<scalar_t, kK, kSilu>(p, begin, end);
}
#if FPRNN_CONV1D_AVX2
template <typename scalar_t, int kK, bool kSilu>
__attribute__((target("avx2"))) void fwd_tasks_avx2(const Plan<scalar_t>& p, int64_t begin, int64_t end) {
  fwd_tasks<scalar_t, kK, kSilu>(p, begin, end);
}
template <typename scalar_t, int kK, bool kSilu>
__attribute__((target("avx2"))) void bwd_tasks_avx2(const Plan<scalar_t>& p, int64_t begin, int64_t end) {
  bwd_tasks<scalar_t, kK, kSilu>(p, begin, end);
}
#endif

std::atomic<bool> g_force_baseline_isa{false};

bool use_avx2() {
#if FPRNN_CONV1D_AVX2
  static const bool supported = __builtin_cpu_supports("avx2");
  return supported && !g_force_baseline_isa.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

template <typename scalar_t, int kK, bool kSilu>
void fwd_all(const Plan<scalar_t>& p) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (p.T * p.width));
  const bool avx2 = use_avx2();
  at::parallel_for(0, p.B * p.n_blocks, grain, [&](int64_t begin, int64_t end) {
#if FPRNN_CONV1D_AVX2
    if (avx2) return fwd_tasks_avx2<scalar_t, kK, kSilu>(p, begin, end);
#endif
    fwd_tasks_base<scalar_t, kK, kSilu>(p, begin, end);
  });
}

template <typename scalar_t, int kK, bool kSilu>
void bwd_all(const Plan<scalar_t>& p) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / ((p.B + p.n_groups - 1) / p.n_groups * p.T * p.width));
  const bool avx2 = use_avx2();
  at::parallel_for(0, p.n_groups * p.n_blocks, grain, [&](int64_t begin, int64_t end) {
#if FPRNN_CONV1D_AVX2
    if (avx2) return bwd_tasks_avx2<scalar_t, kK, kSilu>(p, begin, end);
#endif
    bwd_tasks_base<scalar_t, kK, kSilu>(p, begin, end);
  });
}

// Calls fn(k_tag, silu_tag) with K (1..4; 0 = the run-time K beyond) and silu as compile-time constants
// (std::integral_constant), so that the channel loops are unrolled over the taps.
template <typename Fn>
void dispatch_k_silu(int64_t K, bool silu, Fn&& fn) {
  auto with_k = [&](auto silu_tag) {
    switch (K) {
      case 1: fn(std::integral_constant<int, 1>{}, silu_tag); break;
      case 2: fn(std::integral_constant<int, 2>{}, silu_tag); break;
      case 3: fn(std::integral_constant<int, 3>{}, silu_tag); break;
      case 4: fn(std::integral_constant<int, 4>{}, silu_tag); break;
      default: fn(std::integral_constant<int, 0>{}, silu_tag); break;
    }
  };
  if (silu) {
    with_k(std::true_type{});
  } else {
    with_k(std::false_type{});
  }
}

}  // namespace

namespace detail {

void conv1d_force_baseline_isa(bool on) { g_force_baseline_isa.store(on, std::memory_order_relaxed); }

}  // namespace detail

// x (B, T, C), weight (C, K) or (C, 1, K), bias (C) or undefined; contiguous CPU → y (B, T, C).
torch::Tensor causal_conv1d_fwd_cpu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                    bool silu) {
  const auto sz = detail::conv1d_check_args("causal_conv1d_fwd_cpu", x, weight, bias, torch::Tensor(), true);
  torch::Tensor y = torch::empty(x.sizes(), x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "causal_conv1d_fwd_cpu", [&] {
    const Taps<scalar_t> taps(weight, bias, sz.C, sz.K);
    Plan<scalar_t> p;
    p.x = x.const_data_ptr<scalar_t>();
    p.out = y.mutable_data_ptr<scalar_t>();
    p.w = taps.w.data();
    p.bias = taps.bias.data();
    p.B = sz.B, p.T = sz.T, p.C = sz.C, p.K = sz.K;
    p.width = block_width<scalar_t>(sz.B, sz.C);
    p.n_blocks = (sz.C + p.width - 1) / p.width;
    const std::vector<scalar_t> zeros(static_cast<size_t>(p.width), scalar_t(0));
    p.zeros = zeros.data();
    dispatch_k_silu(sz.K, silu, [&](auto k_tag, auto silu_tag) {
      fwd_all<scalar_t, decltype(k_tag)::value, decltype(silu_tag)::value>(p);
    });
  });
  return y;
}

// grad, x (B, T, C), weight (C, K) or (C, 1, K), bias (C) or undefined; contiguous CPU → (dx, dweight shaped like
// weight, dbias or undefined).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_cpu(const torch::Tensor& grad,
                                                                              const torch::Tensor& x,
                                                                              const torch::Tensor& weight,
                                                                              const torch::Tensor& bias, bool silu) {
  TORCH_CHECK(grad.defined(), "causal_conv1d_bwd_cpu: grad is undefined");
  const auto sz = detail::conv1d_check_args("causal_conv1d_bwd_cpu", x, weight, bias, grad, true);
  torch::Tensor dx = torch::empty(x.sizes(), x.options());
  torch::Tensor dw = torch::zeros(weight.sizes(), weight.options());
  torch::Tensor db = bias.defined() ? torch::zeros(bias.sizes(), bias.options()) : torch::Tensor();
  if (x.numel() == 0) return {dx, dw, db};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "causal_conv1d_bwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const Taps<scalar_t> taps(weight, bias, sz.C, sz.K);
    Plan<scalar_t> p;
    p.x = x.const_data_ptr<scalar_t>();
    p.grad = grad.const_data_ptr<scalar_t>();
    p.out = dx.mutable_data_ptr<scalar_t>();
    p.w = taps.w.data();
    p.bias = taps.bias.data();
    p.B = sz.B, p.T = sz.T, p.C = sz.C, p.K = sz.K;
    p.n_groups = std::min(sz.B, kBatchGroups);
    p.width = block_width<scalar_t>(p.n_groups, sz.C);
    p.n_blocks = (sz.C + p.width - 1) / p.width;
    const std::vector<scalar_t> zeros(static_cast<size_t>(p.width), scalar_t(0));
    p.zeros = zeros.data();
    std::vector<acc> part_dw(static_cast<size_t>(p.n_groups * sz.K * sz.C), acc(0));
    std::vector<acc> part_db(static_cast<size_t>(p.n_groups * sz.C), acc(0));
    p.part_dw = part_dw.data();
    p.part_db = part_db.data();
    dispatch_k_silu(sz.K, silu, [&](auto k_tag, auto silu_tag) {
      bwd_all<scalar_t, decltype(k_tag)::value, decltype(silu_tag)::value>(p);
    });
    // Sum the groups in order (deterministic): dw[c, k] = Σ_group part_dw[group, k, c], db[c] likewise.
    scalar_t* dwp = dw.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = db.defined() ? db.mutable_data_ptr<scalar_t>() : nullptr;
    for (int64_t c = 0; c < sz.C; ++c) {
      for (int64_t k = 0; k < sz.K; ++k) {
        acc sum = 0;
        for (int64_t group = 0; group < p.n_groups; ++group) sum += part_dw[(group * sz.K + k) * sz.C + c];
        dwp[c * sz.K + k] = static_cast<scalar_t>(sum);
      }
      if (dbp != nullptr) {
        acc sum = 0;
        for (int64_t group = 0; group < p.n_groups; ++group) sum += part_db[group * sz.C + c];
        dbp[c] = static_cast<scalar_t>(sum);
      }
    }
  });
  return {dx, dw, db};
}

}  // namespace fprnn::ops
