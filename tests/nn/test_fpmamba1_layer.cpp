// The FP-Mamba1 layer and the one-pass Mamba-1 baseline: initialisation, the map G against a hand-written
// composition, the damped solve against a manual loop, the one-step gradient against finite differences,
// parameter counts, shapes, dtypes and errors.
#include "mamba_layer_testing.h"

#include "fprnn/common.h"
#include "fprnn/nn/fpmamba1_layer.h"
#include "fprnn/ops/selective_scan.h"

#include <cmath>
#include <string>
#include <vector>

namespace fprnn::testing {
namespace {

SolverConfig mamba_solver() { return fp_mamba_solver(0.25); }

// A float64 layer (d_model 4 → D 8 unless given), seeded.
nn::FPMamba1Layer make_mamba(const MambaCase& c, int64_t d_model = 4, uint64_t seed = 13) {
  torch::manual_seed(seed);
  nn::FPMamba1Layer layer(mamba_layer_config(c, d_model), mamba_solver());
  layer->to(torch::kFloat64);
  return layer;
}

class FPMamba1Test : public ::testing::TestWithParam<MambaCase> {};

TEST_P(FPMamba1Test, OneStepGradientAgainstFiniteDifferences) {
  auto layer = make_mamba(GetParam(), 3);
  check_one_step_gradient(layer, 3, GetParam().name);
}

TEST_P(FPMamba1Test, ForwardShapesIncludingTOne) {
  auto layer = make_mamba(GetParam());
  check_forward_shapes(layer);
}

TEST_P(FPMamba1Test, Float32MatchesFloat64) {
  auto layer = make_mamba(GetParam());
  check_float32_step(layer, GetParam().name);
}

// Solves hoist the x part of the mixer's projection out of their loop (raw = fixed + shift(y) W_yᵀ, or all of
// it for a fixed param): the same iterates as projecting [x, shift(y)] | x + shift(y) | x whole every iteration,
// and so the same forward value and gradients, for every mixer and parameter form.
TEST_P(FPMamba1Test, HoistedProjectionSolvesLikeTheWholeProjection) {
  auto layer = make_mamba(GetParam());
  if (layer->one_pass()) GTEST_SKIP() << "no mixer";
  const Tensor u = randn({2, 7, 4}, 61);
  solver::SolverOptions opt;
  opt.max_iter = 9;
  opt.threshold = -1.0;  // always the nine iterations
  opt.stepsize = 0.99;
  Tensor ys[2];
  for (const bool hoist : {true, false}) {
    torch::NoGradGuard no_grad;
    layer->hoist_projection = hoist;
    const auto in = layer->prepare(u);
    ys[hoist ? 0 : 1] = layer->solve_with(in, opt);
    if (hoist) {
      // The split is in effect (every mixer here has single-stage projections).
      auto split = in;
      const auto form = !GetParam().h_dep ? nn::MixerImpl::ParamForm::kFixed
                        : GetParam().symm ? nn::MixerImpl::ParamForm::kSum
                                          : nn::MixerImpl::ParamForm::kCat;
      ASSERT_TRUE(layer->mixer->split_projection(in.x, form, split.raw_fixed, split.raw_w));
      const Tensor y = randn({2, 7, layer->d_inner()}, 62);
      expect_close(layer->step(split, y), layer->step(in, y), 1e-13, GetParam().name + ": split step");
    }
  }
  expect_close(ys[0], ys[1], 1e-12, GetParam().name + ": solve");
  // Gradients at the fixed point: autograd steps project whole either way.
  layer->train();
  Tensor grads[2];
  for (const bool hoist : {true, false}) {
    layer->hoist_projection = hoist;
    layer->zero_grad();
    Tensor x = u.clone().requires_grad_(true);
    layer->forward(x).pow(2).sum().backward();
    grads[hoist ? 0 : 1] = x.grad();
  }
  expect_close(grads[0], grads[1], 1e-10, GetParam().name + ": input gradient");
}

// The layer on a GPU (float64) against the same layer on the CPU (the CUDA scan kernels, the damped solver's
// step sizes on the device). Skipped without a GPU.
TEST_P(FPMamba1Test, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto cpu = make_mamba(GetParam());
  auto gpu = make_mamba(GetParam());
  fprnn::testing::expect_gpu_layer_matches_cpu(cpu, gpu, 4, GetParam().name);
}

INSTANTIATE_TEST_SUITE_P(Modes, FPMamba1Test, ::testing::ValuesIn(mamba_cases("fpmamba1", "mamba1", false)),
                         mamba_case_name);

// ---- G against its definition (spec §5.2) -----------------------------------------------------------------

TEST(FPMamba1MapTest, StepEqualsTheSpecComposition) {
  auto layer = make_mamba(MambaCase{"h", "fpmamba1"});
  torch::NoGradGuard g;
  const Tensor u = randn({2, 7, 4}, 7);
  const Tensor y = randn({2, 7, 8}, 8) * 0.5;
  const auto in = layer->prepare(u);
  // Written out from the spec with the reference scan and plain ATen ops.
  const int64_t D = 8, N = 3, R = layer->R;
  const Tensor xz = torch::matmul(u, layer->in_proj->weight().t());
  const Tensor x = torch::silu(layer->conv1d->forward(xz.narrow(2, 0, D)));
  const Tensor x_dbl = torch::matmul(x, layer->x_proj->weight().t());
  const Tensor dt = torch::matmul(x_dbl.narrow(2, 0, R), layer->dt_proj->weight().t());
  const Tensor s = shift(y, 1, 1);
  const Tensor x_tilde = layer->mixer->forward(torch::cat({x, s}, -1), x - y) + y;
  const Tensor bc = torch::matmul(s, layer->bc_y_proj->weight().t());
  auto unit = [](const Tensor& t) { return t / t.norm(2, -1, true); };
  const Tensor Bp = unit(x_dbl.narrow(2, R, N) + bc.narrow(2, 0, N));
  const Tensor Cp = unit(x_dbl.narrow(2, R + N, N) + bc.narrow(2, N, N));
  const Tensor o = ops::selective_scan_fwd_ref(x_tilde, dt, -torch::exp(layer->A_log), Bp, Cp, layer->D_skip,
                                               layer->dt_proj->bias);
  const Tensor mean = o.mean(-1, true);
  const Tensor var = (o - mean).pow(2).mean(-1, true);
  const Tensor expected = (o - mean) / torch::sqrt(var + 1e-5) * layer->out_norm->weight + layer->out_norm->bias;
  expect_close(layer->step(in, y), expected, 1e-12, "G(y)");
  // And the output: W_out (SiLU(z + W_zy shift(y)) ⊙ y).
  const Tensor z = xz.narrow(2, D, D) + torch::matmul(s, layer->z_y_proj->weight().t());
  expect_close(layer->output(in, y), torch::matmul(torch::silu(z) * y, layer->out_proj->weight().t()), 1e-12,
               "output");
}

TEST(FPMamba1MapTest, BcNormalisationUsesNormEps) {
  // The reference normalises B' and C' with F.normalize(·, eps=norm_eps): v / max(‖v‖, norm_eps). Make B_x and
  // C_x tiny so that the clamp decides: at t = 0 (shift(y) = 0) B' = B_x / norm_eps, not a unit vector.
  auto layer = make_mamba(MambaCase{"h", "fpmamba1"});
  torch::NoGradGuard g;
  auto in = layer->prepare(randn({1, 1, 4}, 21));
  in.B_x = in.B_x * 1e-9 / in.B_x.norm();
  in.C_x = in.C_x * 1e-9 / in.C_x.norm();
  const Tensor y = torch::zeros_like(in.x);
  const Tensor x_tilde = layer->mixer->forward(torch::cat({in.x, y}, -1), in.x);
  const double eps = layer->cfg.norm_eps;
  const Tensor o = ops::selective_scan_fwd_ref(x_tilde, in.dt, in.A, in.B_x / eps, in.C_x / eps, in.D_skip,
                                               in.dt_bias);
  const Tensor expected = torch::layer_norm(o, {8}, layer->out_norm->weight, layer->out_norm->bias, eps);
  expect_close(layer->step(in, y), expected, 1e-12, "G(0) with tiny B_x, C_x");
}

TEST(FPMamba1MapTest, OnePassIsTheBlockAtZero) {
  // mamba1 = FP-Mamba1's block with y_prev = 0 and no mixer: y = LN(SSM(x; B_x, C_x)), out = W_out(SiLU(z) ⊙ y).
  auto layer = make_mamba(MambaCase{"one", "mamba1"});
  EXPECT_TRUE(layer->one_pass());
  EXPECT_TRUE(layer->mixer == nullptr);
  torch::NoGradGuard g;
  const Tensor u = randn({2, 6, 4}, 9);
  const auto in = layer->prepare(u);
  auto unit = [](const Tensor& t) { return t / t.norm(2, -1, true); };
  const Tensor o = ops::selective_scan_fwd_ref(in.x, in.dt, in.A, unit(in.B_x), unit(in.C_x), in.D_skip, in.dt_bias);
  const Tensor y = torch::layer_norm(o, {8}, layer->out_norm->weight, layer->out_norm->bias, 1e-5);
  const Tensor expected = torch::matmul(torch::silu(in.z) * y, layer->out_proj->weight().t());
  expect_close(layer->forward(u), expected, 1e-12, "mamba1 output");
  EXPECT_EQ(layer->last_stats().iterations, 0);
  EXPECT_EQ(layer->last_stats().recorded(), 1);
}

TEST(FPMamba1MapTest, ScanParametersInFloat32AsTheReference) {
  // ssm_params_fp32: A = the float32 nearest to −exp(A_log) (exp in float64, rounded once: the same on every
  // platform, unlike a float32 exp), D and dt_proj.bias rounded to float32, the rest float64.
  auto layer = make_mamba(MambaCase{"h", "fpmamba1"});
  torch::NoGradGuard g;
  const Tensor u = randn({2, 7, 4}, 12);
  const Tensor y = randn({2, 7, 8}, 13) * 0.5;
  const auto exact_in = layer->prepare(u);
  layer->cfg.ssm_params_fp32 = true;
  const auto in = layer->prepare(u);
  EXPECT_EQ(in.A.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(in.A, (-torch::exp(layer->A_log)).to(torch::kFloat32).to(torch::kFloat64)));
  // Nearest, not just faithful: no float32 lies closer to −exp(A_log) than A does.
  const Tensor exact = -torch::exp(layer->A_log);
  const Tensor err = (in.A - exact).abs();
  const Tensor A32 = in.A.to(torch::kFloat32);
  for (const float towards : {0.0f, -1e30f}) {
    const Tensor neighbour = torch::nextafter(A32, torch::full_like(A32, towards)).to(torch::kFloat64);
    EXPECT_TRUE((err <= (neighbour - exact).abs()).all().item<bool>());
  }
  EXPECT_TRUE(torch::equal(in.D_skip, layer->D_skip.to(torch::kFloat32).to(torch::kFloat64)));
  EXPECT_TRUE(torch::equal(in.dt_bias, layer->dt_proj->bias.to(torch::kFloat32).to(torch::kFloat64)));
  // The map moves by float32 rounding of those parameters: visible, but small.
  const double r = rms_ratio(layer->step(in, y), layer->step(exact_in, y));
  EXPECT_GT(r, 0.0);
  EXPECT_LT(r, 1e-6);
}

// ---- the solve (spec §8 with FP-Mamba's damping) ----------------------------------------------------------

TEST(FPMamba1SolveTest, SolveIsTheDampedIteration) {
  auto layer = make_mamba(MambaCase{"h", "fpmamba1"});
  check_damped_solve(layer, 10);
}

TEST(FPMamba1SolveTest, TrainingCapAndOverride) {
  auto layer = make_mamba(MambaCase{"h", "fpmamba1"});
  check_training_cap_and_override(layer, 11);
}

// ---- initialisation and parameters (spec §5.1) ----------------------------------------------------------

TEST(FPMamba1InitTest, ReferenceInitialisation) {
  LayerConfig lc = mamba_layer_config(MambaCase{"h", "fpmamba1"}, 32);
  lc.d_state = 16;
  torch::manual_seed(3);
  nn::FPMamba1Layer layer(lc, mamba_solver());
  const int64_t D = 64, N = 16, R = 2;  // dt_rank "auto" = ⌈32 / 16⌉
  EXPECT_EQ(layer->R, R);
  EXPECT_EQ(layer->A_log.scalar_type(), torch::kFloat32);
  ASSERT_EQ(layer->A_log.sizes(), c10::IntArrayRef({D, N}));
  for (int64_t n = 0; n < N; ++n)
    EXPECT_NEAR(layer->A_log[5][n].item<double>(), std::log(static_cast<double>(n + 1)), 1e-6);
  EXPECT_TRUE(torch::equal(layer->D_skip, torch::ones({D})));
  // dt_proj.weight ~ U(±R^-½), bias = softplus⁻¹(Δ) with Δ in [dt_min, dt_max] = [1e-3, 0.1].
  EXPECT_LE(layer->dt_proj->weight().abs().max().item<double>(), 1.0 / std::sqrt(2.0));
  const Tensor delta = torch::softplus(layer->dt_proj->bias.to(torch::kFloat64));
  EXPECT_GE(delta.min().item<double>(), 1e-3 * (1 - 1e-6));
  EXPECT_LE(delta.max().item<double>(), 0.1 * (1 + 1e-6));
  EXPECT_GT(delta.std().item<double>(), 0.0);
  // Weight-normed bc_y_proj and z_y_proj (g = row norms at init).
  EXPECT_TRUE(layer->bc_y_proj->weight_norm);
  EXPECT_TRUE(layer->z_y_proj->weight_norm);
  expect_close(layer->bc_y_proj->weight_g, layer->bc_y_proj->weight_v.norm(2, 1, true), 1e-6, "bc_y g");
  // The Kronecker mixer of FP-Mamba is column-wise by default in configs (spec §7.3); here as configured.
  EXPECT_EQ(layer->no_weight_decay(), (std::vector<std::string>{"A_log", "D"}));
  const auto params = layer->named_parameters();
  for (const auto& name : layer->no_weight_decay()) EXPECT_NE(params.find(name), nullptr) << name;
}

int64_t param_count(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

TEST(FPMamba1InitTest, ParameterCountsFollowTheHeaderFormulas) {
  const int64_t d = 16, D = 32, N = 4, R = 1, K = 4, r = 2, P = 2 * D;
  MambaCase fp{"fp", "fpmamba1", "householderproduct", r};
  MambaCase one{"one", "mamba1"};
  LayerConfig lfp = mamba_layer_config(fp, d), lone = mamba_layer_config(one, d);
  lfp.d_state = lone.d_state = N;
  nn::FPMamba1Layer a(lfp, mamba_solver()), b(lone, mamba_solver());
  const int64_t mamba1 = 2 * d * D + (K + 1) * D + D * (R + 2 * N) + R * D + D + D * N + D + 2 * D + D * d;
  const int64_t mixer = P * r * D + r * D + P * r + r + r;
  EXPECT_EQ(param_count(*b), mamba1);
  EXPECT_EQ(param_count(*a), mamba1 + 2 * N * D + 2 * N + D * D + D + mixer);
  EXPECT_EQ(param_count(*a->mixer), mixer);
}

TEST(FPMamba1InitTest, BadInputsThrow) {
  auto layer = make_mamba(MambaCase{"h", "fpmamba1"});
  try {
    layer->forward(randn({2, 5, 3}, 1));
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("FPMamba1: input must be (B, T, 4), got [2, 5, 3]"),
              std::string::npos)
        << e.what_without_backtrace();
  }
  LayerConfig lc = mamba_layer_config(MambaCase{"h", "fpmamba1"}, 4);
  lc.d_state = 0;
  EXPECT_THROW(nn::FPMamba1Layer(lc, mamba_solver()), c10::Error);
  lc = mamba_layer_config(MambaCase{"h", "fpmamba1"}, 4);
  lc.dt_init = "uniform";
  EXPECT_THROW(nn::FPMamba1Layer(lc, mamba_solver()), c10::Error);
  lc = mamba_layer_config(MambaCase{"h", "fpmamba1"}, 4);
  lc.layer = "fprnn";
  EXPECT_THROW(nn::FPMamba1Layer(lc, mamba_solver()), c10::Error);
}

}  // namespace
}  // namespace fprnn::testing
