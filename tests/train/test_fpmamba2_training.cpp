// The FP-Mamba2 and one-pass Mamba-2 layers inside the backbone: a tiny model trains a few steps on S3 without
// NaNs and its loss goes down; the optimiser groups leave A_log, D and dt_bias undecayed; the backbone
// initialisation keeps dt_bias and rescales out_proj.
#include "testing.h"

#include "fprnn/nn/backbone.h"
#include "fprnn/nn/fpmamba2_layer.h"
#include "fprnn/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <fstream>

namespace fprnn::testing {
namespace {

std::vector<double> train_losses(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const Json j = Json::parse(line);
    if (j["split"] == "train") out.push_back(j["loss"].get<double>());
  }
  return out;
}

// A tiny S3 run: d_model 16 (D 32), 4 heads of 8, d_state 8, 60 steps of 32 sequences of lengths 2..4.
RunConfig tiny(const std::string& layer) {
  RunConfig c = default_run_config(layer);
  c.model.layer.d_model = 16;
  c.model.layer.d_state = 8;
  c.model.layer.headdim = 8;
  c.solver.max_iter = 8;
  c.solver.eval_max_iter = 50;
  c.task.group = "S3";
  c.task.train_length = 4;
  c.task.samples_per_length = 1000;
  c.task.eval_min_length = 2;
  c.task.eval_max_length = 4;
  c.task.eval_length_step = 2;
  c.task.eval_samples = 32;
  c.train.steps = 60;
  c.train.batch_size = 32;
  c.train.lr = 3e-3;
  c.train.log_every = 1;
  c.train.eval_every = 0;
  c.train.checkpoint_every = 0;
  c.train.eval_batch_size = 64;
  return c;
}

class Mamba2TrainingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Mamba2TrainingTest, LossGoesDownWithoutNaNs) {
  const RunConfig c = tiny(GetParam());
  validate(c);
  const std::string dir = temp_dir("mamba2_train_" + GetParam());
  train::TrainOptions o;
  o.out_dir = dir + "/run";
  o.quiet = true;
  o.skip_final_eval = true;
  const train::TrainSummary s = train::run_training(c, o);
  EXPECT_TRUE(s.finished);
  const auto losses = train_losses(o.out_dir);
  ASSERT_EQ(losses.size(), 60u);
  for (double l : losses) ASSERT_TRUE(std::isfinite(l));
  // Mean of the first and last five logged losses: at initialisation the loss is ≈ ln(vocab) ≈ 2.6; a model
  // that learns nothing stays there, a broken gradient makes it wander or grow. 60 steps rather than the
  // FP-Mamba1 test's 30: at lr 3e-3 both FP-Mamba layers (1 and 2) show one loss spike of ≈ 0.5–0.7 somewhere
  // in the first 40 steps of this tiny setup (seen with 8 and with 100 iterations, so not the iteration cap),
  // after which the loss falls again; measured here: 2.68 → 1.92 (fpmamba2), so 0.3 leaves room.
  const double first = (losses[0] + losses[1] + losses[2] + losses[3] + losses[4]) / 5;
  const double last = (losses[55] + losses[56] + losses[57] + losses[58] + losses[59]) / 5;
  EXPECT_LT(last, first - 0.3) << "first " << first << ", last " << last;
}

INSTANTIATE_TEST_SUITE_P(Layers, Mamba2TrainingTest, ::testing::Values("fpmamba2", "mamba2"));

TEST(Mamba2BackboneTest, NoDecayGroupsAndInitialisation) {
  RunConfig c = tiny("fpmamba2");
  c.model.n_layers = 2;
  torch::manual_seed(0);
  nn::FPLM m(c.model, c.solver, 10);
  const auto [decay, no_decay] = m->decay_groups();
  auto has = [](const std::vector<std::string>& v, const std::string& n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  for (const char* n : {"layers.0.mixer.A_log", "layers.1.mixer.D", "layers.0.mixer.dt_bias",
                        "layers.0.mixer.norm.weight", "layers.0.norm.weight", "layers.1.mixer.conv1d.bias"})
    EXPECT_TRUE(has(no_decay, n)) << n;
  for (const char* n : {"layers.0.mixer.in_proj.weight", "layers.1.mixer.conv1d.weight",
                        "layers.0.mixer.bc_y_proj.weight_v", "layers.0.mixer.z_y_proj.weight_g",
                        "layers.0.mixer.out_proj.weight"})
    EXPECT_TRUE(has(decay, n)) << n;
  EXPECT_EQ(decay.size() + no_decay.size(), m->named_parameters().size());
  auto* layer = m->layers[0]->as<nn::FPMamba2LayerImpl>();
  ASSERT_NE(layer, nullptr);
  // dt_bias is not a Linear bias: the backbone's zeroing leaves it at its log-uniform draw ...
  const Tensor delta = torch::softplus(layer->dt_bias);
  EXPECT_GE(delta.min().item<double>(), 1e-3 * (1 - 1e-5));
  EXPECT_LE(delta.max().item<double>(), 0.1 * (1 + 1e-5));
  // ... and out_proj.weight is U(±1/√D) / √n_layers.
  EXPECT_LE(layer->out_proj->weight().abs().max().item<double>(), 1.0 / std::sqrt(32.0) / std::sqrt(2.0) + 1e-7);
  EXPECT_GT(layer->out_proj->weight().abs().max().item<double>(), 0.8 / std::sqrt(32.0) / std::sqrt(2.0));
}

}  // namespace
}  // namespace fprnn::testing
