// Structured channel mixers Q(param) applied per token (spec §7). Q is never formed as a D×D matrix
// except by `matrix()`, which exists for tests and the dense oracle.
//
// A mixer is split into two halves so that the fixed-point solver can hoist work out of its loop:
//   raw = project(param)      all parameter projections stacked, (…, P) → (…, raw_size()); affine in param
//   Q(raw) v = apply(raw, v)  the nonlinear part (activations, normalisation) and the application
// forward(param, v) = apply(project(param), v).
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/nn/basic.h"

#include "fprnn/ops/kronecker.h"

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace fprnn::nn {

using torch::Tensor;

class MixerImpl : public torch::nn::Module {
 public:
  // in_features: width P of `param`; n: width of the mixed vectors; eps: normalisation eps.
  MixerImpl(int64_t in_features, int64_t n) : in_features(in_features), n(n) {}
  ~MixerImpl() override = default;

  // (…, P) → (…, raw_size()), differentiable.
  virtual Tensor project(const Tensor& param) = 0;
  // raw (B, T, raw_size()), v (B, T, n) → Q v (B, T, n), differentiable in raw and v.
  virtual Tensor apply(const Tensor& raw, const Tensor& v) = 0;
  virtual int64_t raw_size() const = 0;
  // The projections that make up `project`, in the order their outputs are concatenated in raw.
  virtual std::vector<Projection> projections() = 0;

  Tensor forward(const Tensor& param, const Tensor& v) { return apply(project(param), v); }

  // For the no-grad iterations of a solve, `project` split into a part computed once and one GEMM per
  // iteration (it is affine in param). `a` (…, P_a) is the fixed part of param, b (…, b_width) the part that
  // changes every iteration:
  //   form kCat: param = [a, b] (P_a + b_width = P);  kSum: param = a + b (b_width = P);  kFixed: param = a.
  // Then project(param) = fixed + b wᵀ with fixed (…, raw_size()) and w (raw_size(), b_width), in a's dtype
  // (w undefined for kFixed). Returns false, leaving both undefined, when a projection is low-rank (two
  // stages: nothing to gain). Not differentiable: for solves under NoGradGuard.
  enum class ParamForm { kCat, kSum, kFixed };
  bool split_projection(const Tensor& a, ParamForm form, Tensor& fixed, Tensor& w);
  // fixed + b wᵀ (or fixed alone when w is undefined), the raw of `split_projection`.
  static Tensor split_raw(const Tensor& fixed, const Tensor& w, const Tensor& b);

  // Explicit per-token matrix Q: raw (B, T, raw_size()) → (B, T, n, n), built by applying Q to the
  // identity's columns (Q[..., :, j] = apply(raw, e_j)).
  Tensor matrix(const Tensor& raw);

  int64_t in_features, n;
};

// Registers the mixer named in cfg.mixer_type ("householderproduct" | "dplr" | "kronecker" |
// "nonselective") for width n and parameter width P; unknown names throw, listing the valid ones.
std::shared_ptr<MixerImpl> make_mixer(const LayerConfig& cfg, int64_t in_features, int64_t n);

// The width the GPU pads a projection's `rows` output columns to (zero columns past them), a multiple of 16:
// 8 keeps cuBLAS on its aligned kernels (r·n + r columns would not be), 16 picks faster tiles at the A5 shape.
int64_t padded_projection_rows(int64_t rows);

// --- Householder products (spec §7.1) and DPLR (§7.2) ------------------------------------------------
// raw = [u_proj(param) (r·n), alpha_proj(param) (r)];  u_i = normalize(act(u_i raw)), α_i = σ(raw_α,i).
class HouseholderMixerImpl : public MixerImpl {
 public:
  HouseholderMixerImpl(int64_t in_features, int64_t n, int64_t rank, const std::string& ac, int64_t proj_rank,
                       double eps, bool weight_norm, bool sum_form);
  Tensor project(const Tensor& param) override;
  Tensor apply(const Tensor& raw, const Tensor& v) override;
  int64_t raw_size() const override { return rank * n + rank; }
  std::vector<Projection> projections() override { return {u_proj, alpha_proj}; }
  // On a GPU with single-stage projections: the projection's output with its width padded by zero columns to
  // padded_projection_rows(raw_size()) (project() is its first raw_size() columns); elsewhere project().
  Tensor project_padded(const Tensor& param);
  // The matrix and bias project_padded applies (single-stage projections only): W (padded_projection_rows(
  // raw_size()), in_features) cut into `blocks` contiguous column blocks of equal width (the x and h halves of
  // [x, shift(h)] with 2), and b, in `dtype` on `device`, zero rows and entries past raw_size(); differentiable.
  // Float32/64 parameters on `device` go through one op (ops::weight_norm_blocks), others through
  // Linear::weight().
  std::pair<std::vector<Tensor>, Tensor> padded_projection(torch::Dtype dtype, const torch::Device& device,
                                                           int64_t blocks);

  // raw → (u (B, T, r, n) unit directions, alpha (B, T, r)).
  std::pair<Tensor, Tensor> factors(const Tensor& raw) const;

  int64_t rank;
  std::string ac;
  double eps;
  bool sum_form;  // true: DPLR (I − 2 Σ α u uᵀ); false: ordered product of reflections
  Projection u_proj{nullptr}, alpha_proj{nullptr};
};

// --- Kronecker product (spec §7.3) ------------------------------------------------------------------
// n = m1·m2 (most balanced, m1 ≤ m2). raw = [uv_project(param), diag(param)].
// U = rownorm(L1 L1ᵀ), V = rownorm(L2 L2ᵀ) (L upper-triangular, filled row-major from act(raw)),
// 'spectral' divides each by a 16-step power-iteration estimate (+eps); then U ← diag(σ(d₁)) U,
// V ← diag(σ(d₂)) V; Q v = vec(M − 2 Uᵀ M Vᵀ) with M the row-major m1×m2 view of v. On a GPU apply runs the
// fused op (fprnn/ops/kronecker.h) wherever it has the needed pass; the ATen reference otherwise (on the CPU,
// 'spectral' with a gradient, or factors too large for a GPU block's shared memory).
class KroneckerMixerImpl : public MixerImpl {
 public:
  KroneckerMixerImpl(int64_t in_features, int64_t n, const std::string& ac, int64_t proj_rank, double eps,
                     bool weight_norm, const std::string& normalization, bool symmetric = true);
  Tensor project(const Tensor& param) override;
  Tensor apply(const Tensor& raw, const Tensor& v) override;
  int64_t raw_size() const override;
  std::vector<Projection> projections() override { return {uv_project, diag}; }

  // raw → (U (B, T, m1, m1), V (B, T, m2, m2)) after normalisation and diagonal scaling.
  std::pair<Tensor, Tensor> factors(const Tensor& raw) const;
  // The fused op's description of this mixer.
  ops::KroneckerSpec spec() const;

  int64_t m1, m2;
  std::string ac, normalization;
  double eps;
  bool symmetric;
  Projection uv_project{nullptr}, diag{nullptr};
};

// (m1, m2) with m1·m2 = n, m1 the largest divisor of n not above ⌊√n⌋.
std::pair<int64_t, int64_t> kronecker_factors(int64_t n);

// --- Non-selective (spec §7.6): one orthogonal matrix Q = base · exp(A − Aᵀ), A strictly lower
// triangular and trainable (zero at init), base a fixed random orthogonal matrix. raw is empty.
class NonSelectiveMixerImpl : public MixerImpl {
 public:
  NonSelectiveMixerImpl(int64_t in_features, int64_t n);
  Tensor project(const Tensor& param) override;
  Tensor apply(const Tensor& raw, const Tensor& v) override;
  int64_t raw_size() const override { return 0; }
  std::vector<Projection> projections() override { return {}; }
  Tensor orthogonal();  // (n, n)

  Tensor skew, base;
};

}  // namespace fprnn::nn
