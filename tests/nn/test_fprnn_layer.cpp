// The FPRNN layer: the fused no-grad map against the plain map, the one-step gradient against finite
// differences, shapes, modes and dtypes.
#include "layer_testing.h"

#include "fprnn/common.h"

namespace fprnn::testing {
namespace {

class LayerTest : public ::testing::TestWithParam<LayerCase> {};

TEST_P(LayerTest, FastStepEqualsPlainMap) {
  auto layer = make_layer(GetParam());
  torch::NoGradGuard g;
  const Tensor u = randn({3, 7, 4}, 1);
  const auto in = layer->prepare(u);
  nn::FastStep F(*layer, in);
  const Tensor h = randn({3, 7, 8}, 2) * 0.5;
  expect_close(F(h), layer->step(in, h), 1e-13, GetParam().name + ": F");
  if (layer->mixer->raw_size() > 0)
    expect_close(F.raw(h), layer->mixer->project(layer->mixer_param(in, h)), 1e-13, GetParam().name + ": raw");
}

TEST_P(LayerTest, OneStepGradientAgainstFiniteDifferences) {
  // The layer's gradient is the gradient of output(F^n(h*)) with h* held fixed (spec §4.5). Freeze h* and
  // compare autograd with central differences for the input and every parameter.
  auto layer = make_layer(GetParam(), 3);
  layer->train();
  Tensor u = randn({2, 5, 3}, 3);
  Tensor h_star;
  {
    torch::NoGradGuard g;
    const auto in = layer->prepare(u);
    h_star = layer->solve(in).detach();
  }
  auto fn = [&] { return layer->finish(layer->prepare(u), h_star); };
  std::vector<Tensor> inputs{u};
  for (auto& p : layer->parameters()) inputs.push_back(p);
  // Central differences with step 1e-6 in float64 are good to ~1e-8 relative on smooth maps; parameters
  // with tiny gradients (e.g. the non-selective mixer's skew, ‖g‖ ~ 1e-3) sit near 1e-6.
  check_gradients(fn, inputs, 1e-5, GetParam().name);
}

TEST_P(LayerTest, ForwardShapesIncludingTOne) {
  auto layer = make_layer(GetParam());
  for (const auto& shape : std::vector<std::vector<int64_t>>{{1, 1, 4}, {2, 13, 4}, {1, 31, 4}}) {
    const Tensor y = layer->forward(randn(shape, 4));
    EXPECT_EQ(y.sizes(), c10::IntArrayRef(shape));
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, LayerTest, ::testing::ValuesIn(layer_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& i) { return i.param.name; });

TEST(LayerModesTest, NonContiguousInputGivesTheSameOutput) {
  auto layer = make_layer(LayerCase{"h"});
  const Tensor u = randn({2, 4, 6}, 5);              // (B, d_model, T)
  const Tensor view = u.transpose(1, 2);             // (B, T, d_model), non-contiguous
  ASSERT_FALSE(view.is_contiguous());
  torch::NoGradGuard g;
  expect_close(layer->forward(view), layer->forward(view.contiguous()), 1e-15, "non-contiguous");
}

TEST(LayerModesTest, TrainingUsesItsCapEvaluationItsOwn) {
  auto layer = make_layer(LayerCase{"h"});
  layer->solver_cfg.max_iter = 3;
  layer->solver_cfg.threshold = 1e-30;  // never converges: the caps decide
  layer->solver_cfg.eval_max_iter = 9;
  const Tensor u = randn({2, 5, 4}, 6);
  layer->train();
  layer->forward(u);
  EXPECT_EQ(layer->last_stats().iterations, 3);
  EXPECT_EQ(layer->last_stats().recorded(), 4);
  layer->set_max_iter(2);
  layer->forward(u);
  EXPECT_EQ(layer->last_stats().iterations, 2);
  layer->set_max_iter(0);
  layer->eval();
  torch::NoGradGuard g;
  layer->forward(u);
  EXPECT_EQ(layer->last_stats().iterations, 9);
}

TEST(LayerModesTest, OutputComesFromOneMoreStepThanTheFixedPoint) {
  // With n_backwards = 1 the output is computed from F(h*), not from h* (spec §4.5).
  auto layer = make_layer(LayerCase{"h"});
  layer->train();
  const Tensor u = randn({2, 5, 4}, 7);
  Tensor h_star;
  const Tensor y = layer->forward(u, &h_star);
  torch::NoGradGuard g;
  const auto in = layer->prepare(u);
  expect_close(y, layer->output(in, layer->step(in, h_star)), 1e-14, "output of F(h*)");
  EXPECT_GT(rms_ratio(layer->output(in, h_star), y), 1e-8) << "a capped h* is not a fixed point";
}

TEST(LayerModesTest, ZeroBackwardStepsGiveNoGradientToTheMap) {
  LayerCase c{"h"};
  c.n_backwards = 0;
  auto layer = make_layer(c);
  layer->train();
  layer->forward(randn({2, 5, 4}, 8)).sum().backward();
  EXPECT_FALSE(layer->lambda_proj->weight_plain.grad().defined() &&
               layer->lambda_proj->weight_plain.grad().abs().sum().item<double>() > 0);
  EXPECT_TRUE(layer->output_trans->weight_plain.grad().defined());
}

TEST(LayerModesTest, BFloat16FollowsFloat32) {
  auto layer = make_layer(LayerCase{"h"}, 16);
  layer->to(torch::kFloat32);
  layer->eval();
  torch::NoGradGuard g;
  const Tensor u = randn({2, 9, 16}, 9, torch::kFloat32);
  const Tensor y32 = layer->forward(u);
  const Tensor y16 = layer->forward(u.to(torch::kBFloat16));
  EXPECT_EQ(y16.scalar_type(), torch::kBFloat16);
  // bf16 keeps 8 bits of mantissa; through ~10 iterations of a contraction the error stays at a few 1e-2.
  expect_close(y16.to(torch::kFloat32), y32, 5e-2, "bf16 vs fp32");
}

TEST(LayerModesTest, BadInputsThrowNamingTheLayer) {
  auto layer = make_layer(LayerCase{"h"});
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 5}, {2, 5, 3}, {0, 5, 4}}) {
    try {
      layer->forward(torch::zeros(shape, torch::kFloat64));
      ADD_FAILURE() << "no error for " << c10::IntArrayRef(shape);
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find("FPRNN"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace fprnn::testing
