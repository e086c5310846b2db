// The FP-Mamba2 layer and the one-pass Mamba-2 baseline: the map G against a hand-written composition, the gate
// applied once and untransposed (spec §16 items 1–2, fixed), the fixed point against a sequential recurrence
// computed token by token, the damped solve against a manual loop, the one-step gradient against finite
// differences, initialisation, parameter counts, shapes, dtypes and errors. There are no reference fixtures
// for FP-Mamba2 (the reference's layer crashes unless T == d_inner, spec §16.1).
#include "mamba_layer_testing.h"

#include "fprnn/common.h"
#include "fprnn/nn/fpmamba2_layer.h"
#include "fprnn/ops/ssd.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace fprnn::testing {
namespace {

SolverConfig mamba2_solver() { return fp_mamba_solver(0.1); }

// A float64 layer (d_model 4 → D 8, headdim 4 → 2 heads unless given), seeded.
nn::FPMamba2Layer make_mamba2(const MambaCase& c, int64_t d_model = 4, uint64_t seed = 17) {
  torch::manual_seed(seed);
  nn::FPMamba2Layer layer(mamba_layer_config(c, d_model), mamba2_solver());
  layer->to(torch::kFloat64);
  return layer;
}

// Undamped, never-stopping iteration options (k applications of G exactly).
solver::SolverOptions picard(int64_t iterations) {
  solver::SolverOptions opt;
  opt.max_iter = iterations;
  opt.threshold = -1.0;
  opt.stepsize = 1.0;
  opt.stepsize_decay = 1.0;
  opt.stepsize_thresh = 0.0;
  return opt;
}

Tensor rms_norm(const Tensor& o, const Tensor& w, double eps) { return o / torch::sqrt(o.pow(2).mean(-1, true) + eps) * w; }

class FPMamba2Test : public ::testing::TestWithParam<MambaCase> {};

TEST_P(FPMamba2Test, OneStepGradientAgainstFiniteDifferences) {
  auto layer = make_mamba2(GetParam());
  check_one_step_gradient(layer, 4, GetParam().name);  // through the SSD kernel's backward
}

TEST_P(FPMamba2Test, ForwardShapesIncludingTOne) {
  auto layer = make_mamba2(GetParam());
  check_forward_shapes(layer);
}

TEST_P(FPMamba2Test, Float32MatchesFloat64) {
  auto layer = make_mamba2(GetParam());
  check_float32_step(layer, GetParam().name);
}

// The layer on a GPU (float64) against the same layer on the CPU (the CUDA scan kernels, the damped solver's
// step sizes on the device). Skipped without a GPU.
TEST_P(FPMamba2Test, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto cpu = make_mamba2(GetParam());
  auto gpu = make_mamba2(GetParam());
  fprnn::testing::expect_gpu_layer_matches_cpu(cpu, gpu, 4, GetParam().name);
}

INSTANTIATE_TEST_SUITE_P(Modes, FPMamba2Test, ::testing::ValuesIn(mamba_cases("fpmamba2", "mamba2", true)),
                         mamba_case_name);

// ---- G and the output against their definitions (spec §6, §16 items 1–2 fixed) ---------------------------

// The projections of prepare(), written out with plain ATen ops: z, x, B_x, C_x, dt (B, T, ·).
struct Projected {
  Tensor z, x, B_x, C_x, dt;
};

Projected project(nn::FPMamba2LayerImpl& layer, const Tensor& u) {
  const int64_t D = layer.D, GN = layer.G * layer.N;
  const Tensor zxbcdt = torch::matmul(u, layer.in_proj->weight().t());
  Projected p;
  p.z = zxbcdt.narrow(2, 0, D);
  Tensor xBC = zxbcdt.narrow(2, D, D + 2 * GN);
  if (layer.cfg.use_short_conv) xBC = torch::silu(layer.conv1d->forward(xBC));
  p.x = xBC.narrow(2, 0, D);
  p.B_x = xBC.narrow(2, D, GN);
  p.C_x = xBC.narrow(2, D + GN, GN);
  p.dt = zxbcdt.narrow(2, 2 * D + 2 * GN, layer.H);
  return p;
}

// Unit vectors over d_state per group: (B, T, G·N) → (B, T, G, N).
Tensor unit_per_group(const Tensor& t, int64_t G, int64_t N) {
  const Tensor v = t.reshape({t.size(0), t.size(1), G, N});
  return v / v.norm(2, -1, true);
}

// G(y) written out from the spec with the reference scan and plain ATen ops (FP-Mamba2, h-dependent
// concatenated mixer parameters).
Tensor expected_step(nn::FPMamba2LayerImpl& layer, const Tensor& u, const Tensor& y) {
  const int64_t B = u.size(0), T = u.size(1), D = layer.D, H = layer.H, P = layer.P, G = layer.G, N = layer.N;
  const Projected p = project(layer, u);
  const Tensor s = shift(y, 1, 1);
  const Tensor x_tilde = layer.mixer->forward(torch::cat({p.x, s}, -1), p.x - y) + y;
  const Tensor bc = torch::matmul(s, layer.bc_y_proj->weight().t());
  const Tensor Bp = unit_per_group(p.B_x + bc.narrow(2, 0, G * N), G, N);
  const Tensor Cp = unit_per_group(p.C_x + bc.narrow(2, G * N, G * N), G, N);
  Tensor o = ops::ssd_fwd_ref(x_tilde.reshape({B, T, H, P}), p.dt, -torch::exp(layer.A_log), Bp, Cp, layer.D_skip,
                              layer.dt_bias)
                 .reshape({B, T, D});
  if (layer.cfg.glu_in_loop) o = o * torch::silu(p.z);
  return rms_norm(o, layer.norm->weight, 1e-5);
}

TEST(FPMamba2MapTest, StepAndOutputEqualTheSpecComposition) {
  // T = D = 8: the only length at which the reference's transposed gate runs at all (spec §16.1), and where it
  // would silently mix time and channels; the expected values use z untransposed.
  torch::NoGradGuard g;
  const Tensor u = randn({2, 8, 4}, 7);
  const Tensor y = randn({2, 8, 8}, 8) * 0.5;
  for (bool glu : {false, true}) {
    MambaCase c{"h", "fpmamba2"};
    c.headdim = 2;
    c.ngroups = 2;
    c.glu = glu;
    auto layer = make_mamba2(c);
    const auto in = layer->prepare(u);
    const std::string mode = glu ? "glu_in_loop: " : "";
    // Without glu_in_loop, G(y) = RMSNorm(o) (no gate in the loop; the reference gates there too, §16.2);
    // with it, G(y) = RMSNorm(o ⊙ SiLU(z)).
    expect_close(layer->step(in, y), expected_step(*layer, u, y), 1e-12, mode + "G(y)");
    const Projected p = project(*layer, u);
    if (glu) {
      expect_close(layer->output(in, y), torch::matmul(y, layer->out_proj->weight().t()), 1e-12, mode + "output");
    } else {
      // out = W_out (SiLU(z + W_zy shift(y)) ⊙ y), z as (B, T, D).
      const Tensor z = p.z + torch::matmul(shift(y, 1, 1), layer->z_y_proj->weight().t());
      expect_close(layer->output(in, y), torch::matmul(torch::silu(z) * y, layer->out_proj->weight().t()), 1e-12,
                   "output");
    }
  }
}

TEST(FPMamba2MapTest, GateIsAppliedOnce) {
  // Without glu_in_loop, G does not see z and the output gates once; with glu_in_loop, G gates (inside its
  // RMSNorm) and the output is W_out y, independent of z. The reference gates in the loop in both modes.
  torch::NoGradGuard g;
  const Tensor u = randn({2, 6, 4}, 9);
  const Tensor y = randn({2, 6, 8}, 10) * 0.5;
  for (bool glu : {false, true}) {
    MambaCase c{"h", "fpmamba2"};
    c.glu = glu;
    auto layer = make_mamba2(c);
    const auto in = layer->prepare(u);
    auto other = in;
    other.z = in.z + randn(in.z.sizes(), 11);
    const double step_change = rms_ratio(layer->step(other, y), layer->step(in, y));
    const double out_change = rms_ratio(layer->output(other, y), layer->output(in, y));
    if (glu) {
      EXPECT_GT(step_change, 1e-3) << "glu_in_loop: G gates with SiLU(z)";
      EXPECT_EQ(out_change, 0.0) << "glu_in_loop: the output must not gate again";
    } else {
      EXPECT_EQ(step_change, 0.0) << "G must not gate without glu_in_loop";
      EXPECT_GT(out_change, 1e-3) << "the output gates with SiLU(z + W_zy shift(y))";
    }
  }
}

TEST(FPMamba2MapTest, OnePassIsTheBlockAtZero) {
  // mamba2 = FP-Mamba2's block with y_prev = 0 and no mixer: y = RMSNorm(SSD(x; B_x, C_x)), out = W_out(SiLU(z) ⊙
  // y); with glu_in_loop and bc_norm off it is mamba_ssm's Mamba2: W_out RMSNorm(SSD(x; B, C) ⊙ SiLU(z)).
  torch::NoGradGuard g;
  const Tensor u = randn({2, 6, 4}, 12);
  for (bool glu : {false, true}) {
    MambaCase c{"one", "mamba2"};
    c.headdim = 2;
    c.ngroups = 2;
    c.glu = glu;
    c.bc_norm = !glu;
    auto layer = make_mamba2(c);
    EXPECT_TRUE(layer->one_pass());
    EXPECT_TRUE(layer->mixer == nullptr);
    EXPECT_TRUE(layer->bc_y_proj.is_empty());
    EXPECT_TRUE(layer->z_y_proj.is_empty());
    const Projected p = project(*layer, u);
    const Tensor Bp = glu ? p.B_x.reshape({2, 6, 2, 3}) : unit_per_group(p.B_x, 2, 3);
    const Tensor Cp = glu ? p.C_x.reshape({2, 6, 2, 3}) : unit_per_group(p.C_x, 2, 3);
    Tensor o = ops::ssd_fwd_ref(p.x.reshape({2, 6, 4, 2}), p.dt, -torch::exp(layer->A_log), Bp, Cp, layer->D_skip,
                                layer->dt_bias)
                   .reshape({2, 6, 8});
    const Tensor W_out = layer->out_proj->weight().t();
    const Tensor expected = glu ? torch::matmul(rms_norm(o * torch::silu(p.z), layer->norm->weight, 1e-5), W_out)
                                : torch::matmul(torch::silu(p.z) * rms_norm(o, layer->norm->weight, 1e-5), W_out);
    expect_close(layer->forward(u), expected, 1e-12, glu ? "mamba_ssm Mamba2 form" : "mamba2 output");
    EXPECT_EQ(layer->last_stats().iterations, 0);
    EXPECT_EQ(layer->last_stats().recorded(), 1);
  }
}

// ---- the fixed point as a recurrence over tokens -----------------------------------------------------------

// The fixed point of G, computed token by token as an RNN whose state is (S_{t−1} per head, y_{t−1}): at token
// t everything but y_t is known (B', C' and the mixer see y_{t−1}); y_t solves
//   y_t = RMSNorm(C'_t·(a_t S_{t−1} + Δ_t x̃_t ⊗ B'_t) + D x̃_t [⊙ SiLU(z_t)]),  x̃_t = Q_t (x_t − y_t) + y_t,
// found by iterating this one-token map until it moves by less than 1e-13 (values are O(1); rounding in the
// RMSNorm keeps the last bits moving). Independent of step() and the SSD kernels: the state recursion is
// written here with ATen ops on (B, H, P, N).
Tensor sequential_fixed_point(nn::FPMamba2LayerImpl& layer, const Tensor& u, int64_t* max_inner = nullptr) {
  torch::NoGradGuard g;
  const int64_t B = u.size(0), T = u.size(1), D = layer.D, H = layer.H, P = layer.P, G = layer.G, N = layer.N;
  const Projected p = project(layer, u);
  const Tensor A = -torch::exp(layer.A_log);
  const Tensor W_bc = layer.bc_y_proj->weight();
  Tensor S = torch::zeros({B, H, P, N}, u.options());
  Tensor y_prev = torch::zeros({B, D}, u.options());
  std::vector<Tensor> ys;
  int64_t most = 0;
  for (int64_t t = 0; t < T; ++t) {
    const Tensor x_t = p.x.select(1, t), z_t = p.z.select(1, t);
    const Tensor delta = torch::softplus(p.dt.select(1, t) + layer.dt_bias);  // (B, H)
    const Tensor a = torch::exp(delta * A).view({B, H, 1, 1});
    const Tensor bc = torch::matmul(y_prev, W_bc.t());
    auto heads = [&](const Tensor& v) {  // (B, G·N) → unit per group, repeated to (B, H, 1, N)
      const Tensor w = v.view({B, G, N});
      return (w / w.norm(2, -1, true)).repeat_interleave(H / G, 1).unsqueeze(2);
    };
    const Tensor Bh = heads(p.B_x.select(1, t) + bc.narrow(1, 0, G * N));
    const Tensor Ch = heads(p.C_x.select(1, t) + bc.narrow(1, G * N, G * N));
    const Tensor param = torch::cat({x_t, y_prev}, -1).unsqueeze(1);  // (B, 1, 2D)
    Tensor v = y_prev, S_t;
    int64_t it = 0;
    for (; it < 2000; ++it) {
      const Tensor x_tilde = layer.mixer->forward(param, (x_t - v).unsqueeze(1)).squeeze(1) + v;
      const Tensor xh = x_tilde.view({B, H, P});
      S_t = a * S + (delta.view({B, H, 1}) * xh).unsqueeze(-1) * Bh;
      Tensor o = ((S_t * Ch).sum(-1) + layer.D_skip.view({1, H, 1}) * xh).reshape({B, D});
      if (layer.cfg.glu_in_loop) o = o * torch::silu(z_t);
      const Tensor v_new = rms_norm(o, layer.norm->weight, 1e-5);
      const double change = (v_new - v).abs().max().item<double>();
      v = v_new;
      if (change < 1e-13) break;
    }
    EXPECT_LT(it, 2000) << "token " << t << ": the one-token map did not converge";
    most = std::max(most, it + 1);
    S = S_t;
    y_prev = v;
    ys.push_back(v);
  }
  if (max_inner != nullptr) *max_inner = most;
  return torch::stack(ys, 1);
}

TEST(FPMamba2FixedPointTest, IdentityMixerGivesASequentialRecurrenceInTSteps) {
  // Mixer = identity (every reflection's α = σ(−10⁴) = 0): x̃ = x, and G(y)_t depends on y only through y_{t−1}
  // (B', C', the mixer's parameters). The fixed point is then the nonlinear recurrence y_t = f(S_{t−1}, y_{t−1},
  // x_t), reached exactly by T undamped iterations from 0 (token t is final after t + 1 of them).
  for (bool glu : {false, true}) {
    MambaCase c{"h", "fpmamba2"};
    c.headdim = 2;
    c.ngroups = 2;
    c.glu = glu;
    auto layer = make_mamba2(c);
    {
      torch::NoGradGuard g;
      auto* mixer = layer->mixer->as<nn::HouseholderMixerImpl>();
      ASSERT_NE(mixer, nullptr);
      mixer->alpha_proj->stages.back()->bias.fill_(-1e4);
    }
    const Tensor u = randn({3, 9, 4}, 13);
    int64_t inner = 0;
    const Tensor expected = sequential_fixed_point(*layer, u, &inner);
    // One pass gives y_t, a second sees no change beyond rounding ((x − v) + v): Q = I, no dependence on y_t.
    EXPECT_LE(inner, 2) << "with Q = I the token map does not depend on y_t";
    torch::NoGradGuard g;
    const auto in = layer->prepare(u);
    const Tensor y_T = layer->solve_with(in, picard(9));
    expect_close(y_T, expected, 1e-13, glu ? "glu: T iterations" : "T iterations");
    // After k iterations the first k tokens are final; the others are not yet (the test can fail: one
    // iteration from 0 feeds y = 0 to B', C' and the mixer of every token).
    const Tensor y_3 = layer->solve_with(in, picard(3));
    expect_close(y_3.narrow(1, 0, 3), expected.narrow(1, 0, 3), 1e-13, "first 3 tokens after 3 iterations");
    const Tensor y_1 = layer->solve_with(in, picard(1));
    EXPECT_GT(rms_ratio(y_1.narrow(1, 1, 8), expected.narrow(1, 1, 8)), 1e-4);
  }
}

TEST(FPMamba2FixedPointTest, FixedPointEqualsTheTokenByTokenSolve) {
  // A selective, h-dependent Householder mixer with small reflections (α ≈ σ(−5) ≈ 0.007: ∂y_t/∂y_t is about
  // 2α / rms(o) ≈ 0.07 at init, so G is contractive token by token): the whole-sequence iteration converges,
  // and its limit must equal the token-by-token solve above. (With α ≈ 0.1 it does not contract at init:
  // the RMSNorm divides by rms(o) ≈ 0.2.)
  for (bool glu : {false, true}) {
    MambaCase c{"h", "fpmamba2"};
    c.glu = glu;
    auto layer = make_mamba2(c);
    {
      torch::NoGradGuard g;
      layer->mixer->as<nn::HouseholderMixerImpl>()->alpha_proj->stages.back()->bias.fill_(-5.0);
    }
    const Tensor u = randn({2, 7, 4}, 14);
    int64_t inner = 0;
    const Tensor expected = sequential_fixed_point(*layer, u, &inner);
    EXPECT_GT(inner, 3) << "the token map depends on y_t (the test would be the identity case otherwise)";
    torch::NoGradGuard g;
    const auto in = layer->prepare(u);
    const Tensor y = layer->solve_with(in, picard(200));
    const auto r = solver::relative_residual(y, layer->step(in, y), 1e-8);
    for (double v : r) ASSERT_LT(v, 1e-13) << "the whole-sequence iteration did not converge";
    expect_close(y, expected, 1e-12, glu ? "glu: fixed point" : "fixed point");
    // The damped solver of the layer (its own stopping rule, evaluation mode) lands near it.
    layer->eval();
    Tensor y_star;
    layer->forward(u, &y_star);
    EXPECT_LT(rms_ratio(y_star, expected), 0.1);
  }
}

// ---- the solve (spec §8 with FP-Mamba2's damping) ---------------------------------------------------------

TEST(FPMamba2SolveTest, SolveIsTheDampedIteration) {
  auto layer = make_mamba2(MambaCase{"h", "fpmamba2"});
  check_damped_solve(layer, 15);
}

TEST(FPMamba2SolveTest, TrainingCapAndOverride) {
  auto layer = make_mamba2(MambaCase{"h", "fpmamba2"});
  check_training_cap_and_override(layer, 16);
}

TEST(FPMamba2SolveTest, OutputComesFromOneMoreStepThanTheFixedPoint) {
  // forward = output(G(y*)) with y* the detached solve (n_backwards = 1).
  auto layer = make_mamba2(MambaCase{"h", "fpmamba2"});
  layer->eval();
  const Tensor u = randn({2, 5, 4}, 18);
  Tensor y_star;
  const Tensor out = layer->forward(u, &y_star);
  torch::NoGradGuard g;
  const auto in = layer->prepare(u);
  expect_close(out, layer->output(in, layer->step(in, y_star)), 1e-14, "output");
}

// ---- initialisation and parameters (spec §6) ---------------------------------------------------------------

TEST(FPMamba2InitTest, ReferenceInitialisation) {
  LayerConfig lc = mamba_layer_config(MambaCase{"h", "fpmamba2"}, 32);
  lc.d_state = 16;
  lc.headdim = 8;
  torch::manual_seed(3);
  nn::FPMamba2Layer layer(lc, mamba2_solver());
  const int64_t D = 64, H = 8, N = 16;
  EXPECT_EQ(layer->H, H);
  EXPECT_EQ(layer->in_proj->out_features, 2 * D + 2 * N + H);
  EXPECT_EQ(layer->conv1d->channels, D + 2 * N);
  // A_log = ln U[1, 16] per head, float32; D = 1; dt_bias = softplus⁻¹(Δ), Δ in [dt_min, dt_max] = [1e-3, 0.1].
  EXPECT_EQ(layer->A_log.scalar_type(), torch::kFloat32);
  ASSERT_EQ(layer->A_log.sizes(), c10::IntArrayRef({H}));
  EXPECT_GE(layer->A_log.min().item<double>(), 0.0);
  EXPECT_LE(layer->A_log.max().item<double>(), std::log(16.0) + 1e-6);
  EXPECT_GT(layer->A_log.std().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(layer->D_skip, torch::ones({H})));
  ASSERT_EQ(layer->dt_bias.sizes(), c10::IntArrayRef({H}));
  const Tensor delta = torch::softplus(layer->dt_bias.to(torch::kFloat64));
  EXPECT_GE(delta.min().item<double>(), 1e-3 * (1 - 1e-6));
  EXPECT_LE(delta.max().item<double>(), 0.1 * (1 + 1e-6));
  // RMSNorm weight 1; weight-normed bc_y_proj and z_y_proj (g = row norms at init).
  EXPECT_TRUE(torch::equal(layer->norm->weight, torch::ones({D})));
  EXPECT_TRUE(layer->bc_y_proj->weight_norm);
  EXPECT_TRUE(layer->z_y_proj->weight_norm);
  expect_close(layer->bc_y_proj->weight_g, layer->bc_y_proj->weight_v.norm(2, 1, true), 1e-6, "bc_y g");
  EXPECT_EQ(layer->no_weight_decay(), (std::vector<std::string>{"A_log", "D", "dt_bias"}));
  const auto params = layer->named_parameters();
  for (const auto& name : layer->no_weight_decay()) EXPECT_NE(params.find(name), nullptr) << name;
}

int64_t param_count(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

TEST(FPMamba2InitTest, ParameterCountsFollowTheHeaderFormulas) {
  const int64_t d = 16, D = 32, N = 4, K = 4, r = 2, P2 = 2 * D;
  for (int64_t G : {1, 2}) {
    for (bool glu : {false, true}) {
      MambaCase fp{"fp", "fpmamba2", "householderproduct", r};
      MambaCase one{"one", "mamba2"};
      fp.glu = one.glu = glu;
      fp.headdim = one.headdim = 8;  // H = 4
      fp.ngroups = one.ngroups = G;
      LayerConfig lfp = mamba_layer_config(fp, d), lone = mamba_layer_config(one, d);
      lfp.d_state = lone.d_state = N;
      nn::FPMamba2Layer a(lfp, mamba2_solver()), b(lone, mamba2_solver());
      const int64_t H = 4;
      const int64_t mamba2 = d * (2 * D + 2 * G * N + H) + (K + 1) * (D + 2 * G * N) + 3 * H + D + D * d;
      const int64_t mixer = P2 * r * D + r * D + P2 * r + r + r;
      EXPECT_EQ(param_count(*b), mamba2) << "G " << G << " glu " << glu;
      EXPECT_EQ(param_count(*a), mamba2 + 2 * G * N * D + 2 * G * N + (glu ? 0 : D * D + D) + mixer)
          << "G " << G << " glu " << glu;
      EXPECT_EQ(param_count(*a->mixer), mixer);
    }
  }
}

TEST(FPMamba2InitTest, BadInputsThrow) {
  auto layer = make_mamba2(MambaCase{"h", "fpmamba2"});
  try {
    layer->forward(randn({2, 5, 3}, 1));
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("FPMamba2: input must be (B, T, 4), got [2, 5, 3]"),
              std::string::npos)
        << e.what_without_backtrace();
  }
  auto expect_ctor_error = [](const LayerConfig& lc, const std::string& fragment) {
    try {
      nn::FPMamba2Layer l(lc, mamba2_solver());
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find(fragment), std::string::npos) << e.what_without_backtrace();
    }
  };
  LayerConfig lc = mamba_layer_config(MambaCase{"h", "fpmamba2"}, 4);
  lc.headdim = 3;
  expect_ctor_error(lc, "FPMamba2: headdim = 3 must divide d_inner = 8");
  lc = mamba_layer_config(MambaCase{"h", "fpmamba2"}, 4);
  lc.ngroups = 3;
  expect_ctor_error(lc, "FPMamba2: ngroups = 3 must divide nheads = 2");
  lc = mamba_layer_config(MambaCase{"one", "mamba2"}, 4);
  lc.d_state = 0;
  expect_ctor_error(lc, "Mamba2: d_state must be positive");
  lc = mamba_layer_config(MambaCase{"h", "fpmamba2"}, 4);
  lc.A_init_min = 0;
  expect_ctor_error(lc, "A_init_min");
  lc = mamba_layer_config(MambaCase{"h", "fpmamba2"}, 4);
  lc.layer = "fpmamba1";
  expect_ctor_error(lc, "layer must be fpmamba2 or mamba2");
}

// ---- the factory ---------------------------------------------------------------------------------------

TEST(LayerFactoryTest, BuildsEveryLayerAndNamesTheValidOnes) {
  for (const std::string name : {"fpmamba2", "mamba2"}) {
    LayerConfig lc = mamba_layer_config(MambaCase{"f", name}, 4);
    const auto layer = nn::make_layer(lc, mamba2_solver());
    auto* m2 = layer->as<nn::FPMamba2LayerImpl>();
    ASSERT_NE(m2, nullptr) << name;
    EXPECT_EQ(m2->one_pass(), name == "mamba2");
  }
  LayerConfig lc = mamba_layer_config(MambaCase{"f", "fpmamba2"}, 4);
  lc.layer = "mamba3";
  try {
    nn::make_layer(lc, mamba2_solver());
    ADD_FAILURE() << "no error for an unknown layer";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace())
                  .find("unknown layer 'mamba3' (valid: fprnn, fpmamba1, mamba1, fpmamba2, mamba2)"),
              std::string::npos)
        << e.what_without_backtrace();
  }
}

}  // namespace
}  // namespace fprnn::testing
