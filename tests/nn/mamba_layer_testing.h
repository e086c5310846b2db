// Shared setup and checks for the FP-Mamba1 and FP-Mamba2 layer tests (and their one-pass Mamba baselines):
// the mode cases, small float64 layer configs, FP-Mamba's damped solver, and the checks every mode of both
// layers must pass (the one-step gradient against finite differences, shapes, float32 against float64, the GPU
// against the CPU).
#pragma once

#include "testing.h"

#include "fprnn/common.h"
#include "fprnn/io/config.h"
#include "fprnn/solver/fixed_point.h"

#include <string>
#include <vector>

namespace fprnn::testing {

struct MambaCase {
  std::string name;
  std::string layer;  // filled by mamba_cases() for the named modes
  std::string mixer = "householderproduct";
  int64_t rank = 1;
  bool short_conv = true, glu = false, h_dep = true, symm = false, bc_norm = true;
  int64_t n_backwards = 1;
  int64_t headdim = 4, ngroups = 1;  // Mamba-2 only
};

// Every FP mode of `fp_layer` ("fpmamba1" / "fpmamba2") and the one-pass baseline `one_pass_layer` with and
// without the in-loop GLU; with `groups`, also four heads in two B/C groups (Mamba-2).
inline std::vector<MambaCase> mamba_cases(const std::string& fp_layer, const std::string& one_pass_layer,
                                          bool groups) {
  auto fp = [&](const std::string& name) {
    MambaCase c;
    c.name = name;
    c.layer = fp_layer;
    return c;
  };
  std::vector<MambaCase> cases{fp("householder_r1")};
  cases.push_back(fp("glu_in_loop"));
  cases.back().glu = true;
  cases.push_back(fp("householder_noconv"));
  cases.back().short_conv = false;
  cases.push_back(fp("kronecker"));
  cases.back().mixer = "kronecker";
  cases.push_back(fp("householder_r2"));
  cases.back().rank = 2;
  cases.push_back(fp("dplr_r2"));
  cases.back().mixer = "dplr";
  cases.back().rank = 2;
  cases.push_back(fp("symm_mixer"));
  cases.back().symm = true;
  cases.push_back(fp("no_h_dep"));
  cases.back().h_dep = false;
  cases.push_back(fp("no_bc_norm"));
  cases.back().bc_norm = false;
  cases.push_back(fp("two_backward_steps"));
  cases.back().n_backwards = 2;
  if (groups) {
    cases.push_back(fp("four_heads_two_groups"));
    cases.back().headdim = 2;
    cases.back().ngroups = 2;
  }
  MambaCase one;
  one.name = one_pass_layer + "_one_pass";
  one.layer = one_pass_layer;
  cases.push_back(one);
  one.name = one_pass_layer + "_glu";
  one.glu = true;
  cases.push_back(one);
  if (groups) {
    one.name = one_pass_layer + "_two_groups";
    one.glu = false;
    one.headdim = 2;
    one.ngroups = 2;
    cases.push_back(one);
  }
  return cases;
}

inline std::string mamba_case_name(const ::testing::TestParamInfo<MambaCase>& i) { return i.param.name; }

inline LayerConfig mamba_layer_config(const MambaCase& c, int64_t d_model) {
  LayerConfig lc;
  lc.layer = c.layer;
  lc.d_model = d_model;
  lc.d_state = 3;
  lc.headdim = c.headdim;
  lc.ngroups = c.ngroups;
  lc.mixer_type = c.mixer;
  lc.mixer_rank = c.rank;
  lc.kronecker_normalization = "column-wise";
  lc.use_short_conv = c.short_conv;
  lc.glu_in_loop = c.glu;
  lc.mixer_h_dep = c.h_dep;
  lc.symm_mixer = c.symm;
  lc.bc_norm = c.bc_norm;
  lc.n_backwards = c.n_backwards;
  lc.ssm_params_fp32 = false;  // exact float64 for the finite-difference checks (tested separately)
  return lc;
}

// FP-Mamba's damped solver: step 0.99, ×0.9 after stalls, ≤ 20 iterations; the outlier quantile is the
// layer's (0.25 for FP-Mamba1, 0.1 for FP-Mamba2).
inline SolverConfig fp_mamba_solver(double outlier_quantile) {
  SolverConfig sc;
  sc.max_iter = 20;
  sc.stepsize = 0.99;
  sc.stepsize_decay = 0.9;
  sc.outlier_quantile = outlier_quantile;
  return sc;
}

// The layer's gradient is that of output(G^n(y*)) with y* held fixed (spec §4.5, §5.2, §6); for the one-pass
// layer it is the whole function. Compares autograd with central differences for the input and every parameter
// (A_log, D, the Δ bias, the weight-normed g and v, the mixer included). Central differences with step 1e-6 in
// float64 are good to ~1e-8 relative on these smooth maps; the normalisations keep the second derivatives
// moderate.
template <typename Layer>
void check_one_step_gradient(Layer& layer, int64_t d_model, const std::string& what) {
  layer->train();
  Tensor u = randn({2, 5, d_model}, 3);
  Tensor y_star;
  {
    torch::NoGradGuard g;
    const auto in = layer->prepare(u);
    y_star = layer->one_pass() ? torch::zeros_like(in.x) : layer->solve(in).detach();
  }
  auto fn = [&] {
    const auto in = layer->prepare(u);
    return layer->one_pass() ? layer->output(in, layer->step(in, y_star)) : layer->finish(in, y_star);
  };
  std::vector<Tensor> inputs{u};
  for (auto& p : layer->parameters()) inputs.push_back(p);
  check_gradients(fn, inputs, 1e-5, what);
}

// forward() on (B, T, 4) inputs, T = 1 included, for a layer of d_model 4 and d_inner 8.
template <typename Layer>
void check_forward_shapes(Layer& layer) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{1, 1, 4}, {2, 13, 4}, {1, 31, 4}}) {
    Tensor y_star;
    const Tensor y = layer->forward(randn(shape, 4), &y_star);
    EXPECT_EQ(y.sizes(), c10::IntArrayRef(shape));
    EXPECT_EQ(y_star.sizes(), c10::IntArrayRef({shape[0], shape[1], 8}));
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
    EXPECT_GE(layer->last_stats().recorded(), 1);
  }
}

// One application of G in float32 against float64 (d_model 4, d_inner 8): a few unit roundoffs (6e-8) per
// operation, the output norm divides by a scale of order 1: 1e-5 leaves room.
template <typename Layer>
void check_float32_step(Layer& layer, const std::string& what) {
  layer->eval();
  const Tensor u = randn({2, 6, 4}, 5);
  torch::NoGradGuard g;
  const auto in = layer->prepare(u);
  const Tensor y0 = randn({2, 6, 8}, 6) * 0.5;
  const Tensor ref = layer->step(in, y0);
  layer->to(torch::kFloat32);
  const auto in32 = layer->prepare(u.to(torch::kFloat32));
  const Tensor out = layer->step(in32, y0.to(torch::kFloat32));
  ASSERT_EQ(out.scalar_type(), torch::kFloat32);
  expect_close(out, ref, 1e-5, what + ": G in float32");
}

// With no early stop, k solver iterations are y ← 0.99·G(y) + 0.01·y from y = 0 (no 15-step stall can occur
// within 12 iterations, so the step size stays 0.99).
template <typename Layer>
void check_damped_solve(Layer& layer, uint64_t seed) {
  torch::NoGradGuard g;
  const auto in = layer->prepare(randn({2, 9, 4}, seed));
  solver::SolverOptions opt;
  opt.max_iter = 12;
  opt.threshold = -1.0;
  opt.stepsize = 0.99;
  opt.stepsize_decay = 0.9;
  opt.stepsize_thresh = 0.0;
  const Tensor ours = layer->solve_with(in, opt);
  Tensor y = torch::zeros_like(in.x);
  for (int k = 0; k < 12; ++k) y = 0.99 * layer->step(in, y) + (1 - 0.99) * y;
  expect_close(ours, y, 1e-13, "damped iterate");
  EXPECT_EQ(layer->last_stats().iterations, 12);
  EXPECT_EQ(layer->last_stats().recorded(), 13);
}

// In training the solver stops at the configured cap (20), and set_max_iter overrides it.
template <typename Layer>
void check_training_cap_and_override(Layer& layer, uint64_t seed) {
  layer->train();
  const Tensor u = randn({3, 8, 4}, seed);
  layer->forward(u);
  EXPECT_LE(layer->last_stats().iterations, 20);
  layer->set_max_iter(2);
  layer->forward(u);
  EXPECT_LE(layer->last_stats().iterations, 2);
  EXPECT_GE(layer->last_stats().iterations, 1);
}

}  // namespace fprnn::testing
