// Mixers (spec §7): apply(raw, v) = matrix(raw) v; matrix(raw) against explicitly built matrices
// (ordered reflections, DPLR sum, I − 2 Uᵀ⊗V, orthogonal); norm bounds; Kronecker sizes, fill order and
// spectral estimate; gradients of project+apply against finite differences; names and errors.
#include "fprnn/nn/mixer.h"

#include "testing.h"

#include <torch/torch.h>

#include <array>
#include <cmath>
#include <tuple>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace fprnn::nn {
namespace {

using fprnn::testing::check_gradients;
using fprnn::testing::expect_close;
using fprnn::testing::randn;
using torch::Tensor;

constexpr int64_t kP = 3;  // parameter width of the small test mixers

// Builds modules in float64 from the start (so the nonselective base is orthogonal to float64 precision).
class Float64Default {
 public:
  Float64Default() : saved_(c10::get_default_dtype()) { c10::set_default_dtype(caffe2::TypeMeta::Make<double>()); }
  ~Float64Default() { c10::set_default_dtype(saved_); }

 private:
  caffe2::TypeMeta saved_;
};

struct MixerCase {
  std::string type;  // householderproduct | dplr | kronecker | nonselective
  int64_t n = 5;
  int64_t rank = 1;
  std::string ac = "silu";
  std::string normalization = "spectral";
  int64_t proj_rank = -1;
  bool weight_norm = true;
  bool symmetric = true;
};

std::string describe(const MixerCase& c) {
  std::string s = c.type + "_n" + std::to_string(c.n) + "_r" + std::to_string(c.rank) + "_" + c.ac;
  if (c.type == "kronecker") s += (c.normalization == "spectral" ? "_spectral" : "_colwise");
  if (c.type == "kronecker" && !c.symmetric) s += "_nonsym";
  if (c.proj_rank > 0) s += "_lowrank" + std::to_string(c.proj_rank);
  if (!c.weight_norm) s += "_plain";
  return s;
}

std::string case_name(const ::testing::TestParamInfo<MixerCase>& info) { return describe(info.param); }
void PrintTo(const MixerCase& c, std::ostream* os) { *os << describe(c); }

LayerConfig config_of(const MixerCase& c) {
  LayerConfig cfg;
  cfg.mixer_type = c.type;
  cfg.mixer_rank = c.rank;
  cfg.mixer_ac = c.ac;
  cfg.mixer_proj_rank = c.proj_rank;
  cfg.kronecker_normalization = c.normalization;
  cfg.weight_norm = c.weight_norm;
  cfg.norm_eps = 1e-5;
  return cfg;
}

// A seeded float64 mixer for the case.
std::shared_ptr<MixerImpl> build(const MixerCase& c, uint64_t seed, int64_t in_features = kP) {
  Float64Default f64;
  torch::manual_seed(seed);
  const LayerConfig cfg = config_of(c);
  if (c.type == "kronecker" && !c.symmetric)
    return std::make_shared<KroneckerMixerImpl>(in_features, c.n, c.ac, c.proj_rank, cfg.norm_eps, c.weight_norm,
                                                c.normalization, /*symmetric=*/false);
  return make_mixer(cfg, in_features, c.n);
}

// The reference's activations and F.normalize, written out independently of the library.
Tensor act(const Tensor& x, const std::string& name) {
  if (name == "silu") return x / (1 + torch::exp(-x));
  if (name == "relu") return torch::where(x > 0, x, torch::zeros_like(x));
  return x;
}
Tensor normalize(const Tensor& x, double eps) { return x / torch::clamp_min(x.norm(2, -1, true), eps); }

// ---- apply vs matrix and gradients, for every mixer type -------------------------------------------

class MixerTest : public ::testing::TestWithParam<MixerCase> {};

TEST_P(MixerTest, ApplyMatchesMatrix) {
  const MixerCase c = GetParam();
  auto mixer = build(c, 1);
  const Tensor param = randn({2, 3, kP}, 2), v = randn({2, 3, c.n}, 3);
  const Tensor raw = mixer->project(param);
  ASSERT_EQ(raw.sizes(), (c10::IntArrayRef{2, 3, mixer->raw_size()}));
  const Tensor Q = mixer->matrix(raw);
  ASSERT_EQ(Q.sizes(), (c10::IntArrayRef{2, 3, c.n, c.n}));
  const Tensor want = torch::matmul(Q, v.unsqueeze(-1)).squeeze(-1);
  expect_close(mixer->apply(raw, v), want, 1e-12, "apply vs matrix");
  expect_close(mixer->forward(param, v), want, 1e-12, "forward vs matrix");
}

TEST_P(MixerTest, GradientsMatchFiniteDifferences) {
  const MixerCase c = GetParam();
  auto mixer = build(c, 4);
  const Tensor param = randn({1, 2, kP}, 5), v = randn({1, 2, c.n}, 6);
  std::vector<Tensor> inputs{v};
  if (c.type != "nonselective") inputs.push_back(param);  // the nonselective mixer ignores param
  for (const auto& p : mixer->named_parameters()) inputs.push_back(p.value());
  ASSERT_GE(inputs.size(), 2u);
  // Central differences in float64, step 1e-6: the error is O(h²·f''') + O(1e-16/h), far below 1e-6.
  check_gradients([&] { return mixer->forward(param, v); }, inputs, 1e-6, case_name({c, 0}));
}

TEST_P(MixerTest, Float32MatchesFloat64) {
  const MixerCase c = GetParam();
  auto mixer = build(c, 7);
  const Tensor param = randn({2, 3, kP}, 8), v = randn({2, 3, c.n}, 9);
  const Tensor want = mixer->forward(param, v);
  mixer->to(torch::kFloat32);
  const Tensor got = mixer->forward(param.to(torch::kFloat32), v.to(torch::kFloat32));
  EXPECT_EQ(got.scalar_type(), torch::kFloat32);
  // float32 rounding through a few small matmuls and normalisations (and 16 power steps): ~1e-6.
  expect_close(got, want, 1e-5, "float32");
}

INSTANTIATE_TEST_SUITE_P(
    Types, MixerTest,
    ::testing::Values(MixerCase{"householderproduct", 5, 1}, MixerCase{"householderproduct", 5, 2},
                      MixerCase{"householderproduct", 7, 3, "identity"}, MixerCase{"householderproduct", 6, 2, "relu"},
                      MixerCase{"householderproduct", 5, 2, "silu", "spectral", 2},
                      MixerCase{"householderproduct", 5, 2, "silu", "spectral", -1, false},
                      MixerCase{"dplr", 5, 1}, MixerCase{"dplr", 5, 2}, MixerCase{"dplr", 7, 3, "identity"},
                      MixerCase{"dplr", 6, 2, "relu", "spectral", 2},
                      MixerCase{"kronecker", 6, 1, "silu", "spectral"},
                      MixerCase{"kronecker", 16, 1, "identity", "spectral"},
                      MixerCase{"kronecker", 13, 1, "relu", "spectral"},
                      MixerCase{"kronecker", 12, 1, "silu", "column-wise"},
                      MixerCase{"kronecker", 6, 1, "silu", "column-wise", 2},
                      MixerCase{"kronecker", 6, 1, "silu", "spectral", -1, false},
                      MixerCase{"kronecker", 6, 1, "silu", "spectral", -1, true, false},
                      MixerCase{"kronecker", 6, 1, "identity", "column-wise", -1, true, false},
                      MixerCase{"nonselective", 5}),
    case_name);

// ---- explicit matrices ------------------------------------------------------------------------------

// raw (N, r·n + r) → per-token Q (N, n, n) built from the spec's formulas alone.
Tensor explicit_householder(const Tensor& raw, int64_t n, int64_t r, const std::string& ac, double eps,
                            bool sum_form) {
  const int64_t N = raw.size(0);
  const Tensor eye = torch::eye(n, torch::kFloat64);
  Tensor out = torch::empty({N, n, n}, torch::kFloat64);
  for (int64_t t = 0; t < N; ++t) {
    Tensor Q = eye.clone();
    for (int64_t i = 0; i < r; ++i) {
      const Tensor u = normalize(act(raw[t].slice(0, i * n, (i + 1) * n), ac), eps);
      const double alpha = 1.0 / (1.0 + std::exp(-raw[t][r * n + i].item<double>()));
      const Tensor P = 2 * alpha * torch::outer(u, u);
      Q = sum_form ? Q - P : torch::matmul(eye - P, Q);  // Q = H_i ⋯ H_0
    }
    out[t] = Q;
  }
  return out;
}

TEST(Mixer, HouseholderIsOrderedProductOfReflections) {
  for (int64_t r : {1, 2, 3}) {
    for (const std::string ac : {"silu", "identity"}) {
      auto mixer = build({"householderproduct", 5, r, ac}, 10 + r);
      const Tensor raw = mixer->project(randn({2, 3, kP}, 11)).reshape({6, -1});
      expect_close(mixer->matrix(raw), explicit_householder(raw, 5, r, ac, 1e-5, false), 1e-12,
                   "householder r=" + std::to_string(r) + " " + ac);
    }
  }
}

TEST(Mixer, DplrIsSumForm) {
  for (int64_t r : {1, 2, 3}) {
    auto mixer = build({"dplr", 5, r}, 20 + r);
    const Tensor raw = mixer->project(randn({6, kP}, 21));
    expect_close(mixer->matrix(raw), explicit_householder(raw, 5, r, "silu", 1e-5, true), 1e-12,
                 "dplr r=" + std::to_string(r));
  }
}

TEST(Mixer, DplrRankOneEqualsHouseholder) {
  auto h = build({"householderproduct", 7, 1}, 30);
  auto d = build({"dplr", 7, 1}, 30);
  const Tensor raw = h->project(randn({2, 4, kP}, 31)), v = randn({2, 4, 7}, 32);
  expect_close(d->apply(raw, v), h->apply(raw, v), 1e-14, "r = 1");
}

TEST(Mixer, HouseholderIsContraction) {
  // ‖Q‖₂ ≤ 1 for every token and r (product of reflections with eigenvalues 1 and 1 − 2α).
  for (int64_t r : {1, 2, 3, 5}) {
    auto mixer = build({"householderproduct", 8, r}, 40 + r);
    const Tensor Q = mixer->matrix(mixer->project(randn({4, 8, kP}, 41)));
    EXPECT_LE(torch::linalg_svdvals(Q).max().item<double>(), 1.0 + 1e-12) << "r = " << r;
  }
  // DPLR with r ≥ 2 has no such bound (eigenvalues in [1 − 2r, 1]); only r = 1 is checked.
  auto dplr = build({"dplr", 8, 1}, 45);
  EXPECT_LE(torch::linalg_svdvals(dplr->matrix(dplr->project(randn({4, 8, kP}, 46)))).max().item<double>(),
            1.0 + 1e-12);
}

TEST(Mixer, NonSelectiveIsOrthogonal) {
  auto mixer = build({"nonselective", 6}, 50);
  auto& ns = dynamic_cast<NonSelectiveMixerImpl&>(*mixer);
  {
    torch::NoGradGuard no_grad;
    ns.skew.copy_(randn({6, 6}, 51));  // away from the zero init; only the strictly lower part counts
  }
  const Tensor eye = torch::eye(6, torch::kFloat64);
  const Tensor Q = ns.orthogonal();
  expect_close(torch::matmul(Q.t(), Q), eye, 1e-12, "QᵀQ");
  EXPECT_NEAR(torch::linalg_svdvals(Q).max().item<double>(), 1.0, 1e-12);
  // Q = base · exp(A − Aᵀ) with A the strictly lower triangle.
  const Tensor A = randn({6, 6}, 51).tril(-1);
  expect_close(Q, torch::matmul(ns.base, torch::matrix_exp(A - A.t())), 1e-12, "Q formula");
  // At init (skew = 0) Q is the base; matrix() repeats Q for every token, and param is ignored.
  auto fresh = build({"nonselective", 6}, 52);
  auto& f = dynamic_cast<NonSelectiveMixerImpl&>(*fresh);
  expect_close(f.orthogonal(), f.base, 0.0, "init");
  expect_close(torch::matmul(f.base.t(), f.base), eye, 1e-12, "base orthogonal");
  const Tensor raw = fresh->project(randn({2, 3, kP}, 53));
  EXPECT_EQ(raw.sizes(), (c10::IntArrayRef{2, 3, 0}));
  expect_close(fresh->matrix(raw), f.base.expand({2, 3, 6, 6}), 1e-15, "matrix");
  const auto buffers = fresh->named_buffers();
  EXPECT_NE(buffers.find("base"), nullptr);
  EXPECT_EQ(fresh->named_parameters().size(), 1u);
}

// ---- Kronecker -----------------------------------------------------------------------------------

TEST(Mixer, KroneckerFactorSizes) {
  const std::vector<std::array<int64_t, 3>> cases{{1024, 32, 32}, {256, 16, 16}, {512, 16, 32}, {16, 4, 4},
                                                 {13, 1, 13},     {6, 2, 3},     {12, 3, 4},    {1, 1, 1},
                                                 {18, 3, 6},      {2, 1, 2}};
  for (const auto& [n, m1, m2] : cases) {
    EXPECT_EQ(kronecker_factors(n), std::make_pair(m1, m2)) << "n = " << n;
  }
  auto mixer = build({"kronecker", 512}, 60);
  auto& k = dynamic_cast<KroneckerMixerImpl&>(*mixer);
  EXPECT_EQ(k.m1, 16);
  EXPECT_EQ(k.m2, 32);
  EXPECT_EQ(k.raw_size(), 16 * 17 / 2 + 32 * 33 / 2 + 48);
}

// Builds L (m×m) upper-triangular from p by an explicit row-major loop over i ≤ j.
Tensor fill_upper(const Tensor& p, int64_t m) {
  Tensor L = torch::zeros({m, m}, torch::kFloat64);
  int64_t k = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = i; j < m; ++j) L[i][j] = p[k++];
  return L;
}

Tensor power_estimate(const Tensor& M, int64_t n) {
  // The reference's 16 alternating steps, written out with vectors.
  Tensor v = torch::full({M.size(0)}, 1.0 / std::sqrt(static_cast<double>(n)), torch::kFloat64), u;
  for (int k = 0; k < 16; ++k) {
    if (k % 2 == 0) {
      u = torch::mv(M, v);
      u = u / torch::clamp_min(u.norm(), 1e-12);
    } else {
      v = torch::mv(M, u);
      v = v / torch::clamp_min(v.norm(), 1e-12);
    }
  }
  return torch::dot(u, torch::mv(M, v));
}

// raw (N, raw_size) → per-token Q = I − 2 (Uᵀ ⊗ V) (N, n, n) from the spec alone (symmetric factors).
Tensor explicit_kronecker(const Tensor& raw, int64_t m1, int64_t m2, const std::string& ac,
                          const std::string& normalization, double eps) {
  const int64_t n = m1 * m2, k1 = m1 * (m1 + 1) / 2, k2 = m2 * (m2 + 1) / 2;
  Tensor out = torch::empty({raw.size(0), n, n}, torch::kFloat64);
  for (int64_t t = 0; t < raw.size(0); ++t) {
    const Tensor p = act(raw[t].slice(0, 0, k1 + k2), ac);
    const Tensor d = torch::sigmoid(raw[t].slice(0, k1 + k2, k1 + k2 + m1 + m2));
    Tensor L1 = fill_upper(p.slice(0, 0, k1), m1), L2 = fill_upper(p.slice(0, k1, k1 + k2), m2);
    Tensor U = normalize(torch::matmul(L1, L1.t()), eps), V = normalize(torch::matmul(L2, L2.t()), eps);
    if (normalization == "spectral") {
      U = U / (power_estimate(U, n) + eps);
      V = V / (power_estimate(V, n) + eps);
    }
    U = torch::matmul(torch::diag(d.slice(0, 0, m1)), U);
    V = torch::matmul(torch::diag(d.slice(0, m1, m1 + m2)), V);
    out[t] = torch::eye(n, torch::kFloat64) - 2 * torch::kron(U.t().contiguous(), V);
  }
  return out;
}

TEST(Mixer, KroneckerIsIdentityMinusKron) {
  for (const std::string norm : {"spectral", "column-wise"}) {
    for (int64_t n : {6, 16, 13, 12}) {
      auto mixer = build({"kronecker", n, 1, "silu", norm}, 70 + n);
      auto& k = dynamic_cast<KroneckerMixerImpl&>(*mixer);
      const Tensor raw = mixer->project(randn({5, kP}, 71));
      expect_close(mixer->matrix(raw), explicit_kronecker(raw, k.m1, k.m2, "silu", norm, 1e-5), 1e-12,
                   "kronecker n=" + std::to_string(n) + " " + norm);
    }
  }
}

TEST(Mixer, KroneckerApplyIsRowMajorMatrixProduct) {
  // Q v = vec(M − 2 Uᵀ M Vᵀ) with M[i, j] = v[i·m2 + j], checked element by element.
  auto mixer = build({"kronecker", 6, 1, "silu", "column-wise"}, 80);
  auto& k = dynamic_cast<KroneckerMixerImpl&>(*mixer);
  const Tensor raw = mixer->project(randn({1, kP}, 81)), v = randn({1, 6}, 82);
  const auto [U, V] = k.factors(raw);
  const Tensor out = mixer->apply(raw, v);
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      double acc = 0;
      for (int64_t a = 0; a < 2; ++a)
        for (int64_t b = 0; b < 3; ++b)
          acc += U[0][a][i].item<double>() * v[0][a * 3 + b].item<double>() * V[0][j][b].item<double>();
      EXPECT_NEAR(out[0][i * 3 + j].item<double>(), v[0][i * 3 + j].item<double>() - 2 * acc, 1e-12);
    }
  }
}

TEST(Mixer, KroneckerFillOrder) {
  // n = 6 → m1 = 2, m2 = 3; uv raw = 1..9 with the identity activation; diag raw = 40 (σ = 1 in float64).
  auto mixer = build({"kronecker", 6, 1, "identity", "column-wise"}, 90);
  auto& k = dynamic_cast<KroneckerMixerImpl&>(*mixer);
  ASSERT_EQ(k.raw_size(), 3 + 6 + 5);
  Tensor raw = torch::full({1, 14}, 40.0, torch::kFloat64);
  for (int i = 0; i < 9; ++i) raw[0][i] = i + 1;
  const auto [U, V] = k.factors(raw);
  // Row-major triangles: L1 = [[1, 2], [0, 3]], L2 = [[4, 5, 6], [0, 7, 8], [0, 0, 9]].
  const Tensor UU = torch::tensor({5.0, 6.0, 6.0, 9.0}, torch::kFloat64).view({2, 2});
  const Tensor VV =
      torch::tensor({77.0, 83.0, 54.0, 83.0, 113.0, 72.0, 54.0, 72.0, 81.0}, torch::kFloat64).view({3, 3});
  expect_close(U[0], UU / UU.norm(2, 1, true), 1e-15, "U = rownorm(L1 L1ᵀ)");
  expect_close(V[0], VV / VV.norm(2, 1, true), 1e-15, "V = rownorm(L2 L2ᵀ)");
  // The diag part scales rows: σ(0) = 1/2 on the first row of V only.
  raw[0][9 + 2] = 0.0;
  const Tensor V_half = k.factors(raw).second;
  expect_close(V_half[0][0], 0.5 * VV[0] / VV[0].norm(), 1e-15, "diag(d₂) V row 0");
  expect_close(V_half[0][1], VV[1] / VV[1].norm(), 1e-15, "diag(d₂) V row 1");
}

TEST(Mixer, KroneckerSpectralEstimate) {
  // 'spectral' divides the row-normalised factor by σ̂ + eps; σ̂ (16 alternating power steps) must
  // approximate the dominant eigenvalue of that factor. Positive L entries make L Lᵀ a positive
  // matrix, whose Perron root is well separated; the estimate's error shrinks like (λ₂/λ₁)¹⁵, here
  // ~1e-8 relative, so 1e-6.
  const MixerCase spec{"kronecker", 20, 1, "identity", "spectral"};
  MixerCase colw = spec;
  colw.normalization = "column-wise";
  auto ms = build(spec, 100), mc = build(colw, 100);
  auto& ks = dynamic_cast<KroneckerMixerImpl&>(*ms);
  auto& kc = dynamic_cast<KroneckerMixerImpl&>(*mc);
  ASSERT_EQ(ks.m1, 4);
  ASSERT_EQ(ks.m2, 5);
  Tensor raw = torch::zeros({3, ks.raw_size()}, torch::kFloat64);  // diag raw 0 → d = 1/2
  raw.narrow(1, 0, 10 + 15).copy_(randn({3, 25}, 101).abs() + 0.1);
  const auto [Us, Vs] = ks.factors(raw);
  const auto [Uc, Vc] = kc.factors(raw);
  for (const auto& [s, c, m] : {std::make_tuple(Us, Uc, 4), std::make_tuple(Vs, Vc, 5)}) {
    const Tensor rownorm = 2 * c;  // undo d = 1/2
    const Tensor sigma_plus_eps = (c / s).flatten(1).amax(1);
    expect_close((c / s).flatten(1), sigma_plus_eps.unsqueeze(1).expand({3, m * m}), 1e-12, "one scalar per token");
    const Tensor eig = torch::linalg_eigvals(rownorm);
    EXPECT_LE(torch::imag(eig).abs().max().item<double>(), 1e-10) << "eigenvalues are real";
    EXPECT_GE(torch::real(eig).min().item<double>(), -1e-10) << "and non-negative";
    const Tensor lambda = torch::real(eig).amax(1);
    expect_close(sigma_plus_eps - 1e-5, lambda, 1e-6, "σ̂ vs dominant eigenvalue");
  }
}

TEST(Mixer, KroneckerEigenvaluesAtMostOne) {
  // U and V are (positive diagonal) × PSD, so Uᵀ⊗V has real eigenvalues ≥ 0 and Q's are real and ≤ 1.
  for (const std::string norm : {"spectral", "column-wise"}) {
    auto mixer = build({"kronecker", 16, 1, "silu", norm}, 110);
    const Tensor eig = torch::linalg_eigvals(mixer->matrix(mixer->project(randn({8, kP}, 111))));
    EXPECT_LE(torch::imag(eig).abs().max().item<double>(), 1e-9) << norm;
    EXPECT_LE(torch::real(eig).max().item<double>(), 1.0 + 1e-9) << norm;
  }
}

// ---- names, projections, errors --------------------------------------------------------------------

std::vector<int64_t> sizes_of(const std::shared_ptr<MixerImpl>& m, const std::string& name) {
  const auto params = m->named_parameters();
  const auto* p = params.find(name);
  if (p == nullptr) return {};
  return p->sizes().vec();
}

TEST(Mixer, ParameterNamesAndLowRankProjection) {
  // Mirrors the fixture fprnn_h2_lowrank: P = 32, n = 16, r = 2, proj_rank = 4.
  auto h = build({"householderproduct", 16, 2, "silu", "spectral", 4}, 120, 32);
  EXPECT_EQ(sizes_of(h, "u_proj.0.weight_v"), (std::vector<int64_t>{4, 32}));
  EXPECT_EQ(sizes_of(h, "u_proj.0.weight_g"), (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(sizes_of(h, "u_proj.1.weight_v"), (std::vector<int64_t>{32, 4}));
  EXPECT_EQ(sizes_of(h, "alpha_proj.0.weight_v"), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(sizes_of(h, "alpha_proj.0.bias"), (std::vector<int64_t>{2}));
  EXPECT_TRUE(sizes_of(h, "u_proj.0.bias").empty());
  EXPECT_TRUE(sizes_of(h, "u_proj.1.bias").empty());
  EXPECT_EQ(h->named_parameters().size(), 7u);  // 3 × (g, v) + alpha bias
  EXPECT_EQ(h->projections().size(), 2u);
  EXPECT_EQ(h->raw_size(), 2 * 16 + 2);

  auto full = build({"dplr", 16, 3}, 121, 32);
  EXPECT_EQ(sizes_of(full, "u_proj.0.weight_v"), (std::vector<int64_t>{48, 32}));
  EXPECT_TRUE(sizes_of(full, "u_proj.0.bias").empty());
  EXPECT_EQ(sizes_of(full, "alpha_proj.0.bias"), (std::vector<int64_t>{3}));

  auto k = build({"kronecker", 16, 1, "silu", "spectral", 4}, 122, 32);
  EXPECT_EQ(sizes_of(k, "uv_project.0.weight_v"), (std::vector<int64_t>{4, 32}));
  EXPECT_EQ(sizes_of(k, "uv_project.1.weight_v"), (std::vector<int64_t>{20, 4}));
  EXPECT_EQ(sizes_of(k, "diag.0.weight_v"), (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(sizes_of(k, "diag.0.bias"), (std::vector<int64_t>{8}));
  EXPECT_TRUE(sizes_of(k, "uv_project.1.bias").empty());

  auto plain = build({"kronecker", 16, 1, "silu", "spectral", -1, false}, 123, 32);
  EXPECT_EQ(sizes_of(plain, "uv_project.0.weight"), (std::vector<int64_t>{20, 32}));
  EXPECT_EQ(sizes_of(plain, "diag.0.weight"), (std::vector<int64_t>{8, 32}));
}

TEST(Mixer, RawLayoutIsProjectionsConcatenated) {
  for (const MixerCase& c : {MixerCase{"householderproduct", 5, 2, "silu", "spectral", 2}, MixerCase{"kronecker", 6}}) {
    auto mixer = build(c, 130);
    const Tensor param = randn({2, 3, kP}, 131);
    std::vector<Tensor> parts;
    for (auto& p : mixer->projections()) parts.push_back(p->forward(param));
    expect_close(mixer->project(param), torch::cat(parts, -1), 0.0, c.type);
  }
}

// Expects fn to throw a one-line c10::Error containing every one of `parts`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << *parts.begin() << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg;
  }
}

TEST(Mixer, UnknownNamesThrow) {
  LayerConfig cfg;
  cfg.mixer_type = "monarch";
  expect_error([&] { make_mixer(cfg, 4, 8); },
               {"unknown mixer_type 'monarch'", "householderproduct, dplr, kronecker, nonselective"});
  for (const std::string type : {"householderproduct", "dplr", "kronecker"}) {
    cfg.mixer_type = type;
    cfg.mixer_ac = "gelu";
    expect_error([&] { make_mixer(cfg, 4, 8); }, {"unknown mixer_ac 'gelu'", "identity, relu, silu"});
  }
  cfg.mixer_ac = "silu";
  cfg.kronecker_normalization = "frobenius";
  expect_error([&] { make_mixer(cfg, 4, 8); },
               {"unknown kronecker_normalization 'frobenius'", "spectral, column-wise"});
  cfg.mixer_type = "householderproduct";
  cfg.mixer_rank = 0;
  expect_error([&] { make_mixer(cfg, 4, 8); }, {"householderproduct", "mixer_rank"});
}

TEST(Mixer, BadShapesThrow) {
  for (const std::string type : {"householderproduct", "dplr", "kronecker", "nonselective"}) {
    auto mixer = build({type, 6}, 140);
    const Tensor raw = mixer->project(randn({2, 3, kP}, 141));
    expect_error([&] { mixer->apply(raw, randn({2, 3, 5}, 142)); }, {type, "v must be (…, 6)"});
    if (type != "nonselective") {
      expect_error([&] { mixer->apply(raw, randn({2, 4, 6}, 143)); }, {type, "leading dimensions"});
      expect_error([&] { mixer->apply(raw.narrow(-1, 0, 1), randn({2, 3, 6}, 144)); }, {type, "raw must be"});
    }
    expect_error([&] { mixer->matrix(randn({2, mixer->raw_size() + 1}, 145)); }, {"mixer matrix", "raw must be"});
  }
}

}  // namespace
}  // namespace fprnn::nn
