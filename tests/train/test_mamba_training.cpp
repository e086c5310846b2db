// The FP-Mamba1/FP-Mamba2 layers and their one-pass Mamba-1/Mamba-2 baselines inside the backbone: a tiny
// model trains a few steps on S3 without NaNs and its loss goes down; the optimiser groups leave A_log, D and
// the Δ bias undecayed; the backbone initialisation keeps the Δ bias and rescales out_proj.
#include "testing.h"

#include "fprnn/nn/backbone.h"
#include "fprnn/nn/fpmamba1_layer.h"
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

struct MambaRun {
  std::string layer;
  int64_t d_state;
  int64_t headdim;  // Mamba-2 only (0: the default)
  int64_t steps;
  double min_drop;  // how far the mean of the last five losses must fall below that of the first five
};

// A tiny S3 run: d_model 16 (D 32), 32 sequences of lengths 2..4 per step.
RunConfig tiny(const MambaRun& r) {
  RunConfig c = default_run_config(r.layer);
  c.model.layer.d_model = 16;
  c.model.layer.d_state = r.d_state;
  if (r.headdim > 0) c.model.layer.headdim = r.headdim;
  c.solver.max_iter = 8;
  c.solver.eval_max_iter = 50;
  c.task.group = "S3";
  c.task.train_length = 4;
  c.task.samples_per_length = 1000;
  c.task.eval_min_length = 2;
  c.task.eval_max_length = 4;
  c.task.eval_length_step = 2;
  c.task.eval_samples = 32;
  c.train.steps = r.steps;
  c.train.batch_size = 32;
  c.train.lr = 3e-3;
  c.train.log_every = 1;
  c.train.eval_every = 0;
  c.train.checkpoint_every = 0;
  c.train.eval_batch_size = 64;
  return c;
}

// Mamba-1 blocks: d_state 4, 30 steps. Mamba-2 blocks: 4 heads of 8, d_state 8, 60 steps: at lr 3e-3 both
// FP-Mamba layers (1 and 2) show one loss spike of ≈ 0.5–0.7 somewhere in the first 40 steps of this tiny
// setup (seen with 8 and with 100 iterations, so not the iteration cap), after which the loss falls again;
// measured: 2.68 → 1.92 for fpmamba2, so a drop of 0.3 leaves room.
const MambaRun kMamba1{"", 4, 0, 30, 0.2};
const MambaRun kMamba2{"", 8, 8, 60, 0.3};
MambaRun with_layer(MambaRun r, const std::string& layer) {
  r.layer = layer;
  return r;
}

class MambaTrainingTest : public ::testing::TestWithParam<MambaRun> {};

TEST_P(MambaTrainingTest, LossGoesDownWithoutNaNs) {
  const MambaRun& r = GetParam();
  const RunConfig c = tiny(r);
  validate(c);
  const std::string dir = temp_dir("mamba_train_" + r.layer);
  train::TrainOptions o;
  o.out_dir = dir + "/run";
  o.quiet = true;
  o.skip_final_eval = true;
  const train::TrainSummary s = train::run_training(c, o);
  EXPECT_TRUE(s.finished);
  const auto losses = train_losses(o.out_dir);
  ASSERT_EQ(losses.size(), static_cast<size_t>(r.steps));
  for (double l : losses) ASSERT_TRUE(std::isfinite(l));
  // Mean of the first and last five logged losses: at initialisation the loss is ≈ ln(vocab) ≈ 2.5; a model
  // that learns nothing stays there, a broken gradient makes it wander or grow.
  double first = 0, last = 0;
  for (size_t i = 0; i < 5; ++i) {
    first += losses[i] / 5;
    last += losses[losses.size() - 1 - i] / 5;
  }
  EXPECT_LT(last, first - r.min_drop) << "first " << first << ", last " << last;
}

INSTANTIATE_TEST_SUITE_P(Layers, MambaTrainingTest,
                         ::testing::Values(with_layer(kMamba1, "fpmamba1"), with_layer(kMamba1, "mamba1"),
                                           with_layer(kMamba2, "fpmamba2"), with_layer(kMamba2, "mamba2")),
                         [](const ::testing::TestParamInfo<MambaRun>& i) { return i.param.layer; });

// A two-layer FP-Mamba backbone: the named parameters fall into the expected optimiser groups; the Δ bias
// survives the backbone's zeroing of Linear biases (the reference's _no_reinit), softplus(bias) within
// [dt_min, dt_max] = [1e-3, 0.1]; out_proj.weight is U(±1/√D) / √n_layers.
template <typename Impl, typename DtBias>
void expect_groups_and_init(const MambaRun& r, const std::vector<std::string>& want_no_decay,
                            const std::vector<std::string>& want_decay, DtBias dt_bias) {
  RunConfig c = tiny(r);
  c.model.n_layers = 2;
  torch::manual_seed(0);
  nn::FPLM m(c.model, c.solver, 10);
  const auto [decay, no_decay] = m->decay_groups();
  auto has = [](const std::vector<std::string>& v, const std::string& n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  for (const auto& n : want_no_decay) EXPECT_TRUE(has(no_decay, n)) << n;
  for (const auto& n : want_decay) EXPECT_TRUE(has(decay, n)) << n;
  EXPECT_EQ(decay.size() + no_decay.size(), m->named_parameters().size());
  auto* layer = m->layers[0]->as<Impl>();
  ASSERT_NE(layer, nullptr);
  const Tensor delta = torch::softplus(dt_bias(*layer));
  EXPECT_GE(delta.min().item<double>(), 1e-3 * (1 - 1e-5));
  EXPECT_LE(delta.max().item<double>(), 0.1 * (1 + 1e-5));
  const double bound = 1.0 / std::sqrt(32.0) / std::sqrt(2.0);
  EXPECT_LE(layer->out_proj->weight().abs().max().item().toDouble(), bound + 1e-7);
  EXPECT_GT(layer->out_proj->weight().abs().max().item().toDouble(), 0.8 * bound);
}

TEST(MambaBackboneTest, NoDecayGroupsAndInitialisation) {
  expect_groups_and_init<nn::FPMamba1LayerImpl>(
      with_layer(kMamba1, "fpmamba1"),
      {"layers.0.mixer.A_log", "layers.1.mixer.D", "layers.0.mixer.dt_proj.bias", "layers.0.mixer.out_norm.weight",
       "layers.0.norm.weight"},
      {"layers.0.mixer.in_proj.weight", "layers.1.mixer.x_proj.weight", "layers.0.mixer.bc_y_proj.weight_v",
       "layers.0.mixer.out_proj.weight"},
      [](nn::FPMamba1LayerImpl& l) { return l.dt_proj->bias; });
}

TEST(Mamba2BackboneTest, NoDecayGroupsAndInitialisation) {
  // dt_bias is not a Linear bias: the backbone's zeroing leaves it at its log-uniform draw.
  expect_groups_and_init<nn::FPMamba2LayerImpl>(
      with_layer(kMamba2, "fpmamba2"),
      {"layers.0.mixer.A_log", "layers.1.mixer.D", "layers.0.mixer.dt_bias", "layers.0.mixer.norm.weight",
       "layers.0.norm.weight", "layers.1.mixer.conv1d.bias"},
      {"layers.0.mixer.in_proj.weight", "layers.1.mixer.conv1d.weight", "layers.0.mixer.bc_y_proj.weight_v",
       "layers.0.mixer.z_y_proj.weight_g", "layers.0.mixer.out_proj.weight"},
      [](nn::FPMamba2LayerImpl& l) { return l.dt_bias; });
}

}  // namespace
}  // namespace fprnn::testing
