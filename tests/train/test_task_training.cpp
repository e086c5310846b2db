// Training on the generated tasks (copy and formal languages): short CPU runs that learn parity and
// modular arithmetic without brackets at the training length, the masked loss, per-length sweeps and run
// directories, bit-exact resume, and the shipped configs.
#include "testing.h"

#include "fprnn/io/config.h"
#include "fprnn/tasks/sequence_task.h"
#include "fprnn/train/evaluate.h"
#include "fprnn/train/trainer.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace fprnn::testing {
namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

train::TrainOptions quiet_run(const std::string& dir) {
  train::TrainOptions o;
  o.out_dir = dir;
  o.quiet = true;
  return o;
}

// A one-layer FP-RNN and a formal task with training lengths 3..k.
RunConfig formal_config(const std::string& task, int64_t k) {
  RunConfig c;
  c.model.layer.d_model = 32;
  c.model.layer.mixer_rank = 2;
  c.solver.max_iter = 12;
  c.solver.eval_max_iter = 100;
  c.task.name = task;
  c.task.min_train_length = 3;
  c.task.train_length = k;
  c.task.val_min_length = k;
  c.task.val_max_length = k;
  c.task.val_samples = 256;
  c.task.eval_min_length = k;
  c.task.eval_max_length = k;
  c.task.eval_samples = 512;
  c.train.steps = 20;
  c.train.batch_size = 64;
  c.train.lr = 3e-3;
  c.train.log_every = 1;
  c.train.eval_every = 0;
  c.train.checkpoint_every = 0;
  c.train.eval_batch_size = 512;
  return c;
}

TEST(TaskTrainingTest, LearnsParityAtTheTrainingLength) {
  // Parity of up to 7 bits (sizes 3..8); chance is 50 %. Calibrated on 2 cores (CLI run with the same
  // settings and validation every 100 steps): 59 % at step 100, 100 % from step 200 on, on fresh samples of
  // length 8. At training length 10 the same model was still at chance after 400 steps, so 8 it is. (At
  // length 6 the model limited to one iteration also reached 100 %: this test checks that training on the
  // generated data works, not the advantage of the fixed point.)
  RunConfig c = formal_config("parity", 8);
  c.train.steps = 300;
  c.train.log_every = 50;
  const auto s = train::run_training(c, quiet_run(temp_dir("parity") + "/run"));
  ASSERT_TRUE(s.finished);
  ASSERT_EQ(s.lengths.size(), 1u);
  EXPECT_EQ(s.lengths[0].length, 8);
  EXPECT_EQ(s.lengths[0].sequences, 512);
  EXPECT_GE(s.lengths[0].sequence_accuracy, 0.95) << "fresh parity sequences of the training length";
  ASSERT_EQ(s.validation.size(), 1u);
  EXPECT_GE(s.validation[0].sequence_accuracy, 0.95);
}

TEST(TaskTrainingTest, LearnsModularArithmeticAtTheTrainingLength) {
  // Modular arithmetic without brackets (mod 5), sizes 3 and 5: `a =` and `a op b =` with op ∈ {+, −, *}.
  // Chance is 20 %. Calibrated on 2 cores: 100 % on fresh samples from step 100 on. Size 7 (two operators,
  // `*` before `+`/`−`) needs more than this test's budget: 63–83 % after 400–1000 steps in the calibration.
  RunConfig c = formal_config("modular_arithmetic", 5);
  c.train.steps = 200;
  c.train.log_every = 50;
  const auto s = train::run_training(c, quiet_run(temp_dir("arith") + "/run"));
  ASSERT_TRUE(s.finished);
  ASSERT_EQ(s.lengths.size(), 1u);
  EXPECT_EQ(s.lengths[0].length, 5);
  EXPECT_GE(s.lengths[0].sequence_accuracy, 0.95) << "fresh expressions of the training length";
}

TEST(TaskTrainingTest, LossAndMetricsCountOnlyTheAnswer) {
  // With one answer per sequence, token and sequence accuracy coincide, and the per-position counts are
  // the number of sequences.
  RunConfig c = formal_config("cycle_navigation", 8);
  c.solver.eval_max_iter = 20;
  c.task.val_samples = 64;
  c.task.eval_min_length = 4;
  c.task.eval_max_length = 12;
  c.task.eval_length_step = 4;
  c.task.eval_samples = 64;
  const std::string dir = temp_dir("cycle") + "/run";
  const auto s = train::run_training(c, quiet_run(dir));
  ASSERT_EQ(s.lengths.size(), 3u);
  for (const auto& r : s.lengths) {
    EXPECT_EQ(r.sequences, 64);
    EXPECT_DOUBLE_EQ(r.sequence_accuracy, r.token_accuracy) << "length " << r.length;
  }
  EXPECT_EQ(s.lengths[0].length, 4);
  EXPECT_EQ(s.lengths[2].length, 12);
  for (const char* f : {"config.json", "metrics.jsonl", "model.safetensors", "eval.csv", "eval_table.txt", "eval.gp",
                        "summary.json"})
    EXPECT_TRUE(fs::exists(dir + "/" + f)) << f;
  const auto csv = train::parse_eval_csv(read_text(dir + "/eval.csv"), "eval.csv");
  ASSERT_EQ(csv.size(), 3u);
  EXPECT_EQ(csv[1].length, 8);
  const Json summary = Json::parse(read_text(dir + "/summary.json"));
  EXPECT_DOUBLE_EQ(summary["chance_token_acc"].get<double>(), 1.0 / 6);
  const double acc = summary["lengths"][0]["seq_acc"].get<double>();
  EXPECT_NEAR(summary["lengths"][0]["normalised_acc"].get<double>(), (acc - 1.0 / 6) / (5.0 / 6), 1e-12);
}

TEST(TaskTrainingTest, ScoringSkipsIgnoredLabels) {
  // Two rows, one scored position each (−1 elsewhere): row 0 right, row 1 wrong.
  Tensor labels = torch::full({2, 3}, tasks::kIgnoreLabel, torch::kInt64);
  labels[0][1] = 2;
  labels[1][2] = 1;
  Tensor logits = torch::zeros({2, 3, 4});
  logits[0][1][2] = 5;
  logits[1][2][3] = 5;
  const train::BatchScore s = train::score_batch(logits, labels, tasks::kIgnoreLabel, false);
  EXPECT_EQ(s.positions, 2);
  EXPECT_EQ(s.correct_positions, 1);
  EXPECT_EQ(s.correct_sequences, 1);
  // The loss is the mean cross-entropy over the two scored positions only.
  const double right = std::log(3 + std::exp(5.0)) - 5, wrong = std::log(3 + std::exp(5.0));
  EXPECT_NEAR(s.loss(), (right + wrong) / 2, 1e-5);
}

TEST(TaskTrainingTest, CopyRunSweepsLengthsWithTeacherForcing) {
  RunConfig c;
  c.model.layer.d_model = 16;
  c.solver.max_iter = 4;
  c.solver.eval_max_iter = 20;
  c.task.name = "copy";
  c.task.alphabet_size = 8;
  c.task.min_train_length = 2;
  c.task.train_length = 6;
  c.task.context_length = 40;
  c.task.val_min_length = 3;
  c.task.val_max_length = 6;
  c.task.val_samples = 16;
  c.task.eval_min_length = 4;
  c.task.eval_max_length = 8;
  c.task.eval_length_step = 2;
  c.task.eval_samples = 24;
  c.train.steps = 3;
  c.train.batch_size = 4;
  c.train.eval_every = 0;
  c.train.checkpoint_every = 0;
  c.train.eval_batch_size = 8;
  const std::string dir = temp_dir("copyrun") + "/run";
  const auto s = train::run_training(c, quiet_run(dir));
  ASSERT_TRUE(s.finished);
  ASSERT_EQ(s.lengths.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(s.lengths[i].length, 4 + 2 * static_cast<int64_t>(i));
    EXPECT_EQ(s.lengths[i].sequences, 24);
    // String accuracy ≤ character accuracy (an exact copy has every character right).
    EXPECT_LE(s.lengths[i].sequence_accuracy, s.lengths[i].token_accuracy + 1e-12);
  }
  const Json summary = Json::parse(read_text(dir + "/summary.json"));
  EXPECT_DOUBLE_EQ(summary["chance_token_acc"].get<double>(), 1.0 / 8);
}

TEST(TaskTrainingTest, ResumeIsBitExactOnGeneratedData) {
  RunConfig c = formal_config("modular_arithmetic_with_brackets", 12);
  c.solver.max_iter = -1;
  c.train.steps = 8;
  const std::string dir = temp_dir("seqresume");
  auto full = quiet_run(dir + "/full");
  full.skip_final_eval = true;
  train::run_training(c, full);
  auto part = quiet_run(dir + "/part");
  part.skip_final_eval = true;
  part.stop_after = 3;
  train::run_training(c, part);
  part.stop_after = -1;
  part.resume = true;
  ASSERT_TRUE(train::run_training(c, part).finished);
  EXPECT_EQ(read_text(dir + "/full/metrics.jsonl").size() > 0, true);
  std::ifstream a(dir + "/full/metrics.jsonl"), b(dir + "/part/metrics.jsonl");
  std::string la, lb;
  int lines = 0;
  while (std::getline(a, la) && std::getline(b, lb)) {
    const Json ja = Json::parse(la), jb = Json::parse(lb);
    if (ja["split"] != "train") continue;
    EXPECT_EQ(ja["step"], jb["step"]);
    EXPECT_EQ(ja["loss"].get<double>(), jb["loss"].get<double>()) << "step " << ja["step"];
    ++lines;
  }
  EXPECT_EQ(lines, 8);
}

TEST(TaskTrainingTest, BadTaskConfigsFailBeforeWriting) {
  RunConfig c = formal_config("parity", 10);
  c.task.min_train_length = 1;
  const std::string dir = temp_dir("badtask") + "/run";
  EXPECT_THROW(train::run_training(c, quiet_run(dir)), c10::Error);
  EXPECT_FALSE(fs::exists(dir + "/config.json"));
  c = formal_config("parity", 10);
  c.task.name = "dyck";
  try {
    validate(c);
    ADD_FAILURE() << "an unknown task name must be refused";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const char* name : {"word_problem", "copy", "modular_arithmetic_with_brackets", "modular_arithmetic", "parity",
                             "cycle_navigation", "even_pairs"})
      EXPECT_NE(msg.find(name), std::string::npos) << "the error lists the valid names: " << msg;
  }
}

TEST(ShippedConfigsTest, EveryConfigValidates) {
  // Every configs/*.json parses and validates, whatever its layer (FPRNN, FP-Mamba1/2, Mamba-1/2), and its task can
  // be set up. No exceptions: a config naming a layer this build does not have fails here.
  int checked = 0;
  std::map<std::string, int> layers;
  for (const auto& entry : fs::directory_iterator(std::string(FPRNN_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".json") continue;
    const std::string name = entry.path().filename().string();
    const Json j = config::load_file(entry.path().string());
    RunConfig c;
    try {
      c = run_config_from_json(j);
      validate(c);
    } catch (const c10::Error& e) {
      ADD_FAILURE() << name << ": " << e.what_without_backtrace();
      continue;
    }
    if (c.task.name != "word_problem") {
      EXPECT_NO_THROW(tasks::SequenceTask{c.task}) << name;
    }
    ++layers[c.model.layer.layer];
    ++checked;
  }
  EXPECT_GE(checked, 25);
  // Every layer has configs among them (the test would otherwise not cover that layer).
  EXPECT_GE(layers["fprnn"], 1);
  EXPECT_GE(layers["fpmamba1"], 1);
  EXPECT_GE(layers["mamba1"], 1);
  EXPECT_GE(layers["fpmamba2"], 1);
  EXPECT_GE(layers["mamba2"], 1);
  std::printf("validated %d configs: %d fprnn, %d fpmamba1, %d mamba1, %d fpmamba2, %d mamba2\n", checked,
              layers["fprnn"], layers["fpmamba1"], layers["mamba1"], layers["fpmamba2"], layers["mamba2"]);
}

}  // namespace
}  // namespace fprnn::testing
