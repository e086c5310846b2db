// Scoring a model: cross-entropy, token accuracy, full-sequence accuracy and the fixed-point iterations
// each layer used, per length. Word problems (spec §13.1): prefixes of one long test set, the model rerun
// from scratch for every prefix length. Copy and formal-language tasks (spec §12.2, §12.3): fresh samples
// of each length; only labelled positions count (the answer of a formal task, so sequence accuracy =
// answer accuracy; the L copied characters under teacher forcing, so sequence accuracy = the reference's
// string accuracy and token accuracy = its character accuracy).
#pragma once

#include "fprnn/nn/backbone.h"
#include "fprnn/tasks/sequence_task.h"
#include "fprnn/tasks/word_problem.h"

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace fprnn::train {

// Sums over a batch (positions with a PAD label are skipped unless count_padding).
struct BatchScore {
  double loss_sum = 0;        // Σ cross-entropy over counted positions
  int64_t positions = 0;      // counted positions
  int64_t correct_positions = 0;
  int64_t sequences = 0;
  int64_t correct_sequences = 0;  // every counted position correct
  void add(const BatchScore& o);
  double loss() const { return positions ? loss_sum / positions : 0.0; }
  double token_accuracy() const { return positions ? double(correct_positions) / positions : 0.0; }
  double sequence_accuracy() const { return sequences ? double(correct_sequences) / sequences : 0.0; }
};

// logits (B, T, V), labels (B, T) → the batch's score (no autograd). Positions labelled `pad` are skipped
// unless count_padding (pass tasks::kIgnoreLabel as `pad` for the generated tasks).
BatchScore score_batch(const torch::Tensor& logits, const torch::Tensor& labels, int64_t pad, bool count_padding);

struct EvalResult {
  int64_t length = 0;             // elements per sequence (BOS not counted); −1 = whole sequences
  int64_t sequences = 0;
  double sequence_accuracy = 0, token_accuracy = 0, loss = 0;
  std::vector<double> iters_mean; // recorded iterations per layer, mean over batches
  std::vector<double> iters_max;
  int64_t batches = 0;
  int64_t unconverged_batches = 0;  // batches in which some layer's solve stopped unconverged (cap or stall)
  double seconds = 0;
};

// Scores `set` in eval mode, each sequence cut to max_len elements (max_len < 0: whole sequences).
EvalResult evaluate(nn::FPLMImpl& model, const tasks::WordProblem& task, const tasks::SequenceSet& set,
                    int64_t max_len, int64_t batch_size, bool count_padding);

// The length sweep of cfg: prefixes eval_min_length..eval_max_length (step eval_length_step) of the test
// set. `progress` (may be empty) is called after every length.
std::vector<EvalResult> evaluate_lengths(nn::FPLMImpl& model, const tasks::WordProblem& task, const TaskConfig& cfg,
                                         int64_t batch_size,
                                         const std::function<void(const EvalResult&)>& progress = {});

// Generated tasks: `count` samples from make_batch(first, n) (n ≤ batch_size per call), scored in eval
// mode; the result's length is `length`.
EvalResult evaluate_samples(nn::FPLMImpl& model, const std::function<tasks::Batch(int64_t, int64_t)>& make_batch,
                            int64_t count, int64_t batch_size, int64_t length);
// The validation stream of cfg.val_samples samples (length reported as cfg.val_max_length).
EvalResult evaluate_validation(nn::FPLMImpl& model, const tasks::SequenceTask& task, const TaskConfig& cfg,
                               int64_t batch_size);
// The length sweep: cfg.eval_samples fresh samples of every length in task.eval_lengths().
std::vector<EvalResult> evaluate_lengths(nn::FPLMImpl& model, const tasks::SequenceTask& task, const TaskConfig& cfg,
                                         int64_t batch_size,
                                         const std::function<void(const EvalResult&)>& progress = {});

// CSV with a header: length,sequences,sequence_accuracy,token_accuracy,loss,iters_mean_layer0,...
std::string eval_csv(const std::vector<EvalResult>& results);
// Parses eval_csv output back (for `fprnn report`); throws on a malformed file.
std::vector<EvalResult> parse_eval_csv(const std::string& text, const std::string& source);

// An aligned text table of the sweep (length, sequence accuracy, token accuracy, loss, iterations).
std::string eval_table(const std::vector<EvalResult>& results);

// The lengths at which some evaluation batch did not converge, and one line saying so ("" when every batch
// converged): those samples are scored from the last iterate, which a reader of the accuracy should know.
std::vector<int64_t> unconverged_lengths(const std::vector<EvalResult>& results);
std::string convergence_note(const std::vector<EvalResult>& results, int64_t eval_max_iter);

}  // namespace fprnn::train
