// linrec per-element math shared by the CPU (and later CUDA) kernels: h ← c·h + x, dc = du·y_prev.
// Layout contract: every tensor is (B, T, D), contiguous, one dtype; the scan runs along T for every (b, d).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <initializer_list>

namespace fprnn::ops::detail {

// Accumulation type: float for bfloat16 (the stored output is rounded back), the type itself otherwise.
template <typename scalar_t>
using linrec_acc_t = at::opmath_type<scalar_t>;

// One scan step, for a scalar or a SIMD vector T. Forward: x = u_t, c = c_t, h = y_{t∓1}.
// Backward: x = g_t, c = c_{t±1} (the coefficient of the step visited before), h = du_{t±1}.
template <typename T>
C10_HOST_DEVICE inline T linrec_step(const T& c, const T& h, const T& x) {
  return c * h + x;
}

// Coefficient gradient of one step: dc_t = du_t · y_{t∓1} (the output of the step visited next in the
// backward scan; zero at the last one, where y_{−1} = 0).
template <typename T>
C10_HOST_DEVICE inline T linrec_coeff_grad(const T& du, const T& y_prev) {
  return du * y_prev;
}

// Argument checks shared by every public linrec function (host only; defined in linrec.cpp).
struct LinrecArg {
  const char* name;
  const at::Tensor& tensor;
};
// Throws, naming `fn` and the offending sizes or dtypes, unless every tensor is defined, 3-d (B, T, D),
// sized like the first, float32 / float64 / bfloat16 like the first, and on the first one's device.
// With `cpu_contiguous`, they must also be contiguous CPU tensors (the kernels' contract).
void linrec_check_args(const char* fn, std::initializer_list<LinrecArg> args, bool cpu_contiguous);

}  // namespace fprnn::ops::detail
