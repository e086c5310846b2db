// The layer type in the config: fprnn by default, FP-Mamba's solver and Kronecker defaults when model.layer
// names fpmamba1 or mamba1 (spec §5.1, §7.3, §8), explicit keys winning, and one clear error per bad value.
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
}

TEST(ConfigLayerTest, BadValuesGiveOneClearError) {
  expect_invalid(R"({"model": {"layer": "mamba2"}})", "model.layer = 'mamba2' is not known (valid: fprnn, fpmamba1, mamba1)");
  expect_invalid(R"({"model": {"layer": "fpmamba1", "d_state": 0}})", "model.d_state must be positive, got 0");
  expect_invalid(R"({"model": {"layer": "fpmamba1", "dt_rank": -2}})", "model.dt_rank must be -1 (auto) or positive");
  expect_invalid(R"({"model": {"layer": "mamba1", "dt_min": 0.5, "dt_max": 0.1}})", "dt_min");
  expect_invalid(R"({"model": {"layer": "fpmamba1", "dt_init": "uniform"}})", "model.dt_init = 'uniform' is not known");
  EXPECT_THROW(parse(R"({"model": {"layer": "fpmamba1", "d_states": 4}})"), c10::Error);
  EXPECT_THROW(parse(R"({"model": {"layer": "fpmamba1", "d_state": 4.5}})"), c10::Error);
}

}  // namespace
}  // namespace fprnn::testing
