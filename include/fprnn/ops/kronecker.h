// Kronecker-product mixer application, per token (spec §7.3), fused: from the mixer's raw projection to Q v.
//
//   p = act(raw[:K1+K2]),  d = σ(raw[K1+K2:])
//   S_f = L_f L_fᵀ (symmetric: L_f upper triangular, filled row-major from p) or the m_f×m_f block of p itself
//   Ŝ_f = rows of S_f scaled to unit 2-norm (x / max(‖x‖, eps)); 'spectral' also divides by (σ̂_f + eps),
//         σ̂_f the reference's 16-step alternating power-iteration estimate
//   U = diag(d[:m1]) Ŝ_1,  V = diag(d[m1:]) Ŝ_2
//   Q v = vec(M − 2 Uᵀ M Vᵀ),  M the row-major (m1, m2) view of v
//
// Layout contract: raw (N, K1 + K2 + m1 + m2), v (N, m1·m2), N tokens; float32 or float64 (the public entry
// takes any strides and bfloat16, computed in float32). No n×n matrix is formed: per token the work is
// O(m1³ + m2³ + n(m1 + m2)).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

namespace fprnn::ops {

struct KroneckerSpec {
  int64_t m1 = 0, m2 = 0;
  bool symmetric = true;
  std::string act = "silu";  // identity | relu | silu
  bool spectral = false;     // false: 'column-wise' (row normalisation only)
  double eps = 1e-5;         // the row-normalisation (and spectral) eps

  int64_t k1() const { return symmetric ? m1 * (m1 + 1) / 2 : m1 * m1; }
  int64_t k2() const { return symmetric ? m2 * (m2 + 1) / 2 : m2 * m2; }
  int64_t raw_size() const { return k1() + k2() + m1 + m2; }
};

// Differentiable entry: raw (N, R), v (N, n) → Q v (N, n) in v's dtype, computed in the promoted dtype of raw
// and v (float32 for bfloat16). Gradients for raw and v with 'column-wise' normalisation; with 'spectral' the
// kernels run only where no gradient is needed (the layers' no-grad iterations) and a gradient request is an
// error: use kronecker_fwd_ref, which autograd differentiates.
torch::Tensor kronecker_apply(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec);

// Whether the fused kernels take this spec for tensors like `like` (device) in the compute dtype `dtype`, with
// (`backward`) or without the gradient pass: always on the CPU; on a GPU when a token's matrices fit the
// device's shared memory per block (32×32 factors need 21 KiB forward, 50 KiB backward in float32).
bool kronecker_fused_fits(const KroneckerSpec& spec, const torch::Tensor& like, torch::Dtype dtype, bool backward);

// Reference (ATen ops, never optimised, differentiable by autograd; any floating dtype): the factors
// U (…, m1, m1), V (…, m2, m2) of raw (…, R), and Q v for v (…, n) with raw's leading dimensions (computed in
// the promoted dtype of raw and v; the result has v's dtype).
std::pair<torch::Tensor, torch::Tensor> kronecker_factors_ref(const torch::Tensor& raw, const KroneckerSpec& spec);
torch::Tensor kronecker_fwd_ref(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec);

// Kernels on contiguous (N, R) and (N, n) inputs of one dtype (float32 or float64). The backward ('column-wise'
// only) returns (d raw, d v) for the upstream gradient g (N, n).
torch::Tensor kronecker_fwd_cpu(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec);
std::pair<torch::Tensor, torch::Tensor> kronecker_bwd_cpu(const torch::Tensor& raw, const torch::Tensor& v,
                                                          const torch::Tensor& g, const KroneckerSpec& spec);
// CUDA kernels (one thread block per token). In a build without CUDA they throw.
torch::Tensor kronecker_fwd_cuda(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec);
std::pair<torch::Tensor, torch::Tensor> kronecker_bwd_cuda(const torch::Tensor& raw, const torch::Tensor& v,
                                                           const torch::Tensor& g, const KroneckerSpec& spec);

}  // namespace fprnn::ops
