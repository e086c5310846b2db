// linrec CPU kernels: y_t = c_t·y_{t∓1} + u_t, and its backward as the same scan reversed with dc fused in.
// Layout contract: inputs, coeffs, grad, outputs: (B, T, D), contiguous, one dtype; scan along T.
//
// Napkin math: per element the forward moves 3 values (reads u, c; writes y) and the backward 5 (reads g, c,
// y; writes du, dc), with 2 and 3 flops. At (B, T, D) = (64, 512, 1024) float32 that is 403 MB and 671 MB
// for 67 and 100 Mflop: memory-bound, so the goal is the bandwidth of a tensor copy. One task scans one
// (b, block of ≤ 4 KiB of columns) down T; every row it touches is one contiguous run per stream, and the
// running state stays in L1.
#include "fprnn/ops/linrec.h"

#include "ops/linrec/linrec_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace fprnn::ops {

namespace {

using detail::linrec_acc_t;
using detail::linrec_coeff_grad;
using detail::linrec_step;

// Column-block width in bytes of storage: one 4 KiB page per row and stream, so each row costs one TLB miss
// per stream (256-column blocks of float32 ran at half the speed); narrowed to kMinBlockBytes at the least
// when there are too few tasks for the threads.
constexpr int64_t kBlockBytes = 4096;
constexpr int64_t kMinBlockBytes = 256;
constexpr int64_t kGrainElems = 1 << 15;  // below about this many elements per task, threads do not pay

template <typename scalar_t>
constexpr int64_t kMaxWidth = kBlockBytes / static_cast<int64_t>(sizeof(scalar_t));

template <typename scalar_t>
using Vec = at::vec::Vectorized<linrec_acc_t<scalar_t>>;

// Loads Vec::size() elements into the accumulation type (bfloat16 → float).
template <typename scalar_t>
inline Vec<scalar_t> load_acc(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    Vec<scalar_t> v;
    at::vec::load_to_float(p, v);
    return v;
  } else {
    return Vec<scalar_t>::loadu(p);
  }
}

// Stores Vec::size() elements, rounding to the storage type (float → bfloat16, to nearest even).
template <typename scalar_t>
inline void store_acc(scalar_t* p, const Vec<scalar_t>& v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    at::vec::convert_from_float<c10::BFloat16>(v, v).store(p, Vec<scalar_t>::size());
  } else {
    v.store(p);
  }
}

// One SIMD vector of a time step at column j: h ← a·h + x, out = h, and in the backward dc = h·y_nb.
// kCoeff: a is given (absent at the first backward step, where the shifted coefficient is zero-filled);
// kDc: write dc; kNb: y_nb is given (absent at the last backward step, where dc = 0).
// The pointers are passed by value on purpose: held in a struct or a lambda, they were reloaded after every
// store and the bfloat16 kernel ran at half speed.
template <typename scalar_t, bool kCoeff, bool kDc, bool kNb>
C10_ALWAYS_INLINE void step_vec(linrec_acc_t<scalar_t>* h, const scalar_t* x, const scalar_t* a, scalar_t* out,
                                const scalar_t* y_nb, scalar_t* dc, int64_t j) {
  using acc_t = linrec_acc_t<scalar_t>;
  using V = Vec<scalar_t>;
  V hv = load_acc(x + j);
  if constexpr (kCoeff) hv = linrec_step(load_acc(a + j), V::loadu(h + j), hv);
  hv.store(h + j);
  store_acc(out + j, hv);
  if constexpr (kDc) store_acc(dc + j, kNb ? linrec_coeff_grad(hv, load_acc(y_nb + j)) : V(acc_t(0)));
}

// The same for one column j (the tail of a block that is not a whole vector).
template <typename scalar_t, bool kCoeff, bool kDc, bool kNb>
C10_ALWAYS_INLINE void step_scalar(linrec_acc_t<scalar_t>* h, const scalar_t* x, const scalar_t* a,
                                   scalar_t* out, const scalar_t* y_nb, scalar_t* dc, int64_t j) {
  using acc_t = linrec_acc_t<scalar_t>;
  acc_t hs = static_cast<acc_t>(x[j]);
  if constexpr (kCoeff) hs = linrec_step(static_cast<acc_t>(a[j]), h[j], hs);
  h[j] = hs;
  out[j] = static_cast<scalar_t>(hs);
  if constexpr (kDc) dc[j] = static_cast<scalar_t>(kNb ? linrec_coeff_grad(hs, static_cast<acc_t>(y_nb[j])) : acc_t(0));
}

// One time step of one column block: `width` columns from each pointer. `descending` walks the columns from
// the right, so that in a scan down T from the end every stream's addresses fall monotonically, which the
// hardware prefetchers follow (≈ 1.4× on the backward).
template <typename scalar_t, bool kCoeff, bool kDc, bool kNb>
inline void scan_row(linrec_acc_t<scalar_t>* h, const scalar_t* x, const scalar_t* a, scalar_t* out,
                     const scalar_t* y_nb, scalar_t* dc, int64_t width, bool descending) {
  constexpr int64_t kLanes = Vec<scalar_t>::size();
  const int64_t n_vec = width / kLanes * kLanes;
  if (descending) {
    for (int64_t j = width - 1; j >= n_vec; --j) {
      step_scalar<scalar_t, kCoeff, kDc, kNb>(h, x, a, out, y_nb, dc, j);
    }
    for (int64_t j = n_vec - kLanes; j >= 0; j -= kLanes) {
      step_vec<scalar_t, kCoeff, kDc, kNb>(h, x, a, out, y_nb, dc, j);
    }
  } else {
    for (int64_t j = 0; j < n_vec; j += kLanes) {
      step_vec<scalar_t, kCoeff, kDc, kNb>(h, x, a, out, y_nb, dc, j);
    }
    for (int64_t j = n_vec; j < width; ++j) {
      step_scalar<scalar_t, kCoeff, kDc, kNb>(h, x, a, out, y_nb, dc, j);
    }
  }
}

// Scans `width` (≤ kMaxWidth) columns of one batch element down T; pointers at (b, t = 0, d0), row stride D.
// Forward (kBackward = false): out_t = c_t·out_{t−s} + x_t with s = −1 when `reverse`, +1 otherwise.
// Backward (kBackward = true, `reverse` the direction of this scan, i.e. the opposite of the forward's):
// out_t = x_t + c_{t−s}·out_{t−s} (the coefficient of the step visited before), dc_t = out_t·y_{t+s}.
template <typename scalar_t, bool kBackward>
void scan_block(const scalar_t* x, const scalar_t* c, const scalar_t* y, scalar_t* out, scalar_t* dc, int64_t T,
                int64_t D, int64_t width, bool reverse) {
  alignas(64) linrec_acc_t<scalar_t> h[kMaxWidth<scalar_t>];
  std::fill_n(h, width, linrec_acc_t<scalar_t>(0));
  const int64_t step = reverse ? -D : D;
  const int64_t first = reverse ? (T - 1) * D : 0;
  const bool desc = reverse;  // columns in the direction of time: monotone addresses
  for (int64_t i = 0; i < T; ++i) {
    const int64_t o = first + i * step;
    if constexpr (!kBackward) {
      scan_row<scalar_t, true, false, false>(h, x + o, c + o, out + o, nullptr, nullptr, width, desc);
    } else {
      const scalar_t* c_before = i > 0 ? c + o - step : nullptr;    // coefficient of the step visited before
      const scalar_t* y_after = i + 1 < T ? y + o + step : nullptr;  // output of the step visited next
      if (c_before != nullptr && y_after != nullptr) {
        scan_row<scalar_t, true, true, true>(h, x + o, c_before, out + o, y_after, dc + o, width, desc);
      } else if (c_before != nullptr) {
        scan_row<scalar_t, true, true, false>(h, x + o, c_before, out + o, nullptr, dc + o, width, desc);
      } else if (y_after != nullptr) {
        scan_row<scalar_t, false, true, true>(h, x + o, nullptr, out + o, y_after, dc + o, width, desc);
      } else {
        scan_row<scalar_t, false, true, false>(h, x + o, nullptr, out + o, nullptr, dc + o, width, desc);
      }
    }
  }
}

// Column-block width: kMaxWidth, halved (down to kMinBlockBytes) while B·⌈D/width⌉ tasks would leave threads
// idle.
template <typename scalar_t>
int64_t block_width(int64_t B, int64_t D) {
  constexpr int64_t kMinWidth = kMinBlockBytes / static_cast<int64_t>(sizeof(scalar_t));
  int64_t width = kMaxWidth<scalar_t>;
  const int64_t want_tasks = 2 * static_cast<int64_t>(at::get_num_threads());
  while (width > kMinWidth && B * ((D + width - 1) / width) < want_tasks) width /= 2;
  return std::min(width, D);
}

// Runs scan_block over all (b, column block) tasks in parallel; x, c, out (and y, dc for the backward): (B, T, D).
template <typename scalar_t, bool kBackward>
void scan_all(const scalar_t* x, const scalar_t* c, const scalar_t* y, scalar_t* out, scalar_t* dc, int64_t B,
              int64_t T, int64_t D, bool reverse) {
  const int64_t width = block_width<scalar_t>(B, D);
  const int64_t n_blocks = (D + width - 1) / width;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (T * width));
  at::parallel_for(0, B * n_blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_blocks;
      const int64_t d0 = (task % n_blocks) * width;
      const int64_t base = b * T * D + d0;
      scan_block<scalar_t, kBackward>(x + base, c + base, kBackward ? y + base : nullptr, out + base,
                                      kBackward ? dc + base : nullptr, T, D, std::min(width, D - d0), reverse);
    }
  });
}

}  // namespace

// inputs, coeffs: (B, T, D) contiguous → outputs (B, T, D).
torch::Tensor linrec_fwd_cpu(const torch::Tensor& inputs, const torch::Tensor& coeffs, bool reverse) {
  detail::linrec_check_args("linrec_fwd_cpu", {{"inputs", inputs}, {"coeffs", coeffs}}, true);
  torch::Tensor outputs = torch::empty(inputs.sizes(), inputs.options());
  if (outputs.numel() == 0) return outputs;
  const int64_t B = inputs.size(0), T = inputs.size(1), D = inputs.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, inputs.scalar_type(), "linrec_fwd_cpu", [&] {
    scan_all<scalar_t, false>(inputs.const_data_ptr<scalar_t>(), coeffs.const_data_ptr<scalar_t>(), nullptr,
                              outputs.mutable_data_ptr<scalar_t>(), nullptr, B, T, D, reverse);
  });
  return outputs;
}

// grad, coeffs, outputs: (B, T, D) contiguous → (d_inputs, d_coeffs), each (B, T, D).
std::pair<torch::Tensor, torch::Tensor> linrec_bwd_cpu(const torch::Tensor& grad, const torch::Tensor& coeffs,
                                                       const torch::Tensor& outputs, bool reverse) {
  detail::linrec_check_args("linrec_bwd_cpu", {{"grad", grad}, {"coeffs", coeffs}, {"outputs", outputs}}, true);
  torch::Tensor d_inputs = torch::empty(grad.sizes(), grad.options());
  torch::Tensor d_coeffs = torch::empty(grad.sizes(), grad.options());
  if (grad.numel() == 0) return {d_inputs, d_coeffs};
  const int64_t B = grad.size(0), T = grad.size(1), D = grad.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "linrec_bwd_cpu", [&] {
    scan_all<scalar_t, true>(grad.const_data_ptr<scalar_t>(), coeffs.const_data_ptr<scalar_t>(),
                             outputs.const_data_ptr<scalar_t>(), d_inputs.mutable_data_ptr<scalar_t>(),
                             d_coeffs.mutable_data_ptr<scalar_t>(), B, T, D, !reverse);
  });
  return {d_inputs, d_coeffs};
}

}  // namespace fprnn::ops
