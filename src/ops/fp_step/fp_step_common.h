// fp_step pieces shared by the entry, the reference and the CPU kernel: sizes, checks and the per-token
// scalar formulas. Layout contract: base, z (B, T, R = r·D + r); h, bx, lambda, y (B, T, D); stats (B, T, 2).
//
// Reflection i with the un-normalised direction a_i = act(raw_u,i), m_i = max(‖a_i‖, eps), û_i = a_i / m_i:
//   H_i w = w − 2 α_i û_i (û_iᵀ w) = w + c_i a_i,   c_i = −2 α_i (a_iᵀ w) / m_i²
// so the kernel never writes û_i: it keeps a_i, ‖a_i‖² and a_iᵀ w and scales the coefficient instead.
#pragma once

#include "fprnn/ops/fp_step.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fprnn::ops::detail {

struct FpStepSizes {
  int64_t B = 0, T = 0, D = 0, r = 0, R = 0;
};

// Throws, naming `fn` and the offending tensor, unless base (B, T, r·D + r), z (undefined or like base) and
// h, bx, lambda (B, T, D) share one dtype (float32 | float64) and the CPU, and
// cfg.rank ≥ 1, cfg.norm_eps > 0. With `contiguous` every defined input must be contiguous too.
FpStepSizes fp_step_check(const char* fn, const FpStepInputs& in, const FpStepConfig& cfg, bool contiguous);

// c_i of the header comment from α_i, s_i = a_iᵀ w and n2_i = ‖a_i‖².
template <typename T>
inline T reflect_coeff_unnormalised(T alpha, T s, T n2, T eps) {
  const T m = std::max(std::sqrt(n2), eps);
  return T(-2) * alpha * s / (m * m);
}

// The solver's per-token ratio stats₀ / (stats₁ + eps), in T's arithmetic (as solver::relative_residual).
template <typename T>
inline T residual_ratio(T max_diff, T max_abs, double eps) {
  return max_diff / (max_abs + static_cast<T>(eps));
}

}  // namespace fprnn::ops::detail
