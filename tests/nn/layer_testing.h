// Shared setup for the FPRNN layer tests: small float64 layers in every configuration.
#pragma once

#include "testing.h"

#include "fprnn/nn/fprnn_layer.h"

namespace fprnn::testing {

struct LayerCase {
  std::string name;
  std::string mixer = "householderproduct";
  int64_t rank = 2;
  bool h_dep = true, symm = false, short_conv = true;
  int64_t proj_rank = -1;
  int64_t n_backwards = 1;
};

inline std::vector<LayerCase> layer_cases() {
  return {
      {"householder_r2"},
      {"householder_r1_nohdep", "householderproduct", 1, false},
      {"householder_r3_symm", "householderproduct", 3, true, true},
      {"householder_lowrank", "householderproduct", 2, true, false, true, 3},
      {"householder_noconv", "householderproduct", 2, true, false, false},
      {"dplr_r2", "dplr", 2},
      {"kronecker", "kronecker", 1},
      {"nonselective", "nonselective", 1},
      {"two_backward_steps", "householderproduct", 1, true, false, true, -1, 2},
  };
}

// A float64 layer (d_model 4, D 8 unless given), seeded.
inline nn::FPRNNLayer make_layer(const LayerCase& c, int64_t d_model = 4, uint64_t seed = 11) {
  torch::manual_seed(seed);
  LayerConfig lc;
  lc.d_model = d_model;
  lc.mixer_type = c.mixer;
  lc.mixer_rank = c.rank;
  lc.mixer_h_dep = c.h_dep;
  lc.symm_mixer = c.symm;
  lc.use_short_conv = c.short_conv;
  lc.mixer_proj_rank = c.proj_rank;
  lc.n_backwards = c.n_backwards;
  SolverConfig sc;
  sc.max_iter = 50;
  nn::FPRNNLayer layer(lc, sc);
  layer->to(torch::kFloat64);
  return layer;
}

inline solver::SolverOptions exact_options(int64_t iterations = 400) {
  solver::SolverOptions o;
  o.max_iter = iterations;
  o.threshold = -1.0;  // never stop early
  o.stepsize_thresh = 0.0;
  return o;
}

}  // namespace fprnn::testing
