// The layer type in the config: fprnn by default, FP-Mamba's solver and Kronecker defaults when model.layer
// names fpmamba1 or mamba1 (spec §5.1, §7.3, §8), FP-Mamba2's when it names fpmamba2 or mamba2 (spec §6, §8),
// explicit keys winning, and one clear error per bad value.
#include "testing.h"

#include "fprnn/io/config.h"

#include <string>

namespace fprnn::testing {
namespace {

RunConfig parse(const std::string& text) { return run_config_from_json(Json::parse(text)); }

void expect_invalid(const std::string& text, const std::string& fragment) {
  try {
    validate(parse(text));
    ADD_FAILURE() << "no error for " << text;
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find(fragment), std::string::npos)
        << e.what_without_backtrace();
  }
}

TEST(ConfigLayerTest, DefaultsFollowTheLayer) {
  const RunConfig f = parse("{}");
  EXPECT_EQ(f.model.layer.layer, "fprnn");
  EXPECT_EQ(f.solver.stepsize, 1.0);
  EXPECT_EQ(f.solver.outlier_quantile, 0.1);
  EXPECT_EQ(f.model.layer.kronecker_normalization, "spectral");
  for (const std::string layer : {"fpmamba1", "mamba1"}) {
    const RunConfig m = parse(R"({"model": {"layer": ")" + layer + R"("}})");
    EXPECT_EQ(m.model.layer.layer, layer);
    EXPECT_EQ(m.solver.stepsize, 0.99);
    EXPECT_EQ(m.solver.stepsize_decay, 0.9);
    EXPECT_EQ(m.solver.decay_patience, 15);
    EXPECT_EQ(m.solver.outlier_quantile, 0.25);
    EXPECT_EQ(m.model.layer.kronecker_normalization, "column-wise");
    EXPECT_EQ(m.model.layer.d_state, 16);
    EXPECT_EQ(m.model.layer.dt_rank, -1);
    EXPECT_TRUE(m.model.layer.bc_norm);
    EXPECT_FALSE(m.model.layer.glu_in_loop);
    validate(m);
  }
  for (const std::string layer : {"fpmamba2", "mamba2"}) {
    const RunConfig m = parse(R"({"model": {"layer": ")" + layer + R"("}})");
    EXPECT_EQ(m.model.layer.layer, layer);
    EXPECT_EQ(m.solver.stepsize, 0.99);
    EXPECT_EQ(m.solver.stepsize_decay, 0.9);
    EXPECT_EQ(m.solver.decay_patience, 15);
    EXPECT_EQ(m.solver.outlier_quantile, 0.1);
    EXPECT_EQ(m.model.layer.kronecker_normalization, "column-wise");
    EXPECT_EQ(m.model.layer.d_state, 128);
    EXPECT_EQ(m.model.layer.headdim, 64);
    EXPECT_EQ(m.model.layer.ngroups, 1);
    EXPECT_EQ(m.model.layer.A_init_min, 1.0);
    EXPECT_EQ(m.model.layer.A_init_max, 16.0);
    EXPECT_TRUE(m.model.layer.bc_norm);
    EXPECT_FALSE(m.model.layer.glu_in_loop);
    validate(m);
  }
  // Keys given in the file win over the layer's defaults.
  const RunConfig o = parse(R"({"model": {"layer": "fpmamba1", "kronecker_normalization": "spectral"},
                                "solver": {"stepsize": 1.0, "outlier_quantile": 0.1}})");
  EXPECT_EQ(o.solver.stepsize, 1.0);
  EXPECT_EQ(o.solver.outlier_quantile, 0.1);
  EXPECT_EQ(o.solver.stepsize_decay, 0.9);
  EXPECT_EQ(o.model.layer.kronecker_normalization, "spectral");
}

TEST(ConfigLayerTest, RoundTripKeepsTheMambaOptions) {
  RunConfig a = default_run_config("fpmamba1");
  a.model.layer.d_state = 8;
  a.model.layer.dt_rank = 3;
  a.model.layer.glu_in_loop = true;
  a.model.layer.bc_norm = false;
  a.model.layer.dt_init = "constant";
  const RunConfig b = run_config_from_json(to_json(a));
  EXPECT_EQ(to_json(a), to_json(b));
  EXPECT_EQ(b.model.layer.d_state, 8);
  EXPECT_EQ(b.model.layer.dt_init, "constant");
  RunConfig c = default_run_config("fpmamba2");
  c.model.layer.headdim = 16;
  c.model.layer.ngroups = 2;
  c.model.layer.A_init_max = 4.0;
  const RunConfig d = run_config_from_json(to_json(c));
  EXPECT_EQ(to_json(c), to_json(d));
  EXPECT_EQ(d.model.layer.headdim, 16);
  EXPECT_EQ(d.model.layer.ngroups, 2);
  EXPECT_EQ(d.model.layer.A_init_max, 4.0);
}

TEST(ConfigLayerTest, BadValuesGiveOneClearError) {
  expect_invalid(R"({"model": {"layer": "mamba3"}})",
                 "model.layer = 'mamba3' is not known (valid: fprnn, fpmamba1, mamba1, fpmamba2, mamba2)");
  // d_inner = 2·64 = 128: headdim must divide it, ngroups must divide nheads = 128 / headdim.
  expect_invalid(R"({"model": {"layer": "fpmamba2", "headdim": 48}})",
                 "model.headdim = 48 must divide d_inner = expand·d_model = 128");
  expect_invalid(R"({"model": {"layer": "mamba2", "headdim": 32, "ngroups": 3}})",
                 "model.ngroups = 3 must divide nheads = 4");
  expect_invalid(R"({"model": {"layer": "fpmamba2", "headdim": 0}})", "model.headdim must be positive, got 0");
  expect_invalid(R"({"model": {"layer": "fpmamba2", "A_init_min": 4, "A_init_max": 2}})", "A_init_min");
  expect_invalid(R"({"model": {"layer": "fpmamba2", "d_state": 0}})", "model.d_state must be positive, got 0");
  expect_invalid(R"({"model": {"layer": "fpmamba2"}, "solver": {"eval_method": "sequential"}})",
                 "solver.eval_method = 'sequential' (the FPRNN dense oracle) is not available for model.layer = 'fpmamba2'");
  expect_invalid(R"({"model": {"layer": "fpmamba1", "d_state": 0}})", "model.d_state must be positive, got 0");
  expect_invalid(R"({"model": {"layer": "fpmamba1", "dt_rank": -2}})", "model.dt_rank must be -1 (auto) or positive");
  expect_invalid(R"({"model": {"layer": "mamba1", "dt_min": 0.5, "dt_max": 0.1}})", "dt_min");
  expect_invalid(R"({"model": {"layer": "fpmamba1", "dt_init": "uniform"}})", "model.dt_init = 'uniform' is not known");
  EXPECT_THROW(parse(R"({"model": {"layer": "fpmamba1", "d_states": 4}})"), c10::Error);
  EXPECT_THROW(parse(R"({"model": {"layer": "fpmamba1", "d_state": 4.5}})"), c10::Error);
}

}  // namespace
}  // namespace fprnn::testing
