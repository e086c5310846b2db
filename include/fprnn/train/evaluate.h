// Scoring a model on word-problem sequences: cross-entropy, token accuracy, full-sequence accuracy and
// the fixed-point iterations each layer used, per length (spec §13.1: prefixes of one long test set,
// the model rerun from scratch for every prefix length).
#pragma once

#include "fprnn/nn/backbone.h"
#include "fprnn/tasks/word_problem.h"

#include <torch/torch.h>

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

// logits (B, T, V), labels (B, T) → the batch's score (no autograd).
BatchScore score_batch(const torch::Tensor& logits, const torch::Tensor& labels, int64_t pad, bool count_padding);

struct EvalResult {
  int64_t length = 0;             // elements per sequence (BOS not counted); −1 = whole sequences
  int64_t sequences = 0;
  double sequence_accuracy = 0, token_accuracy = 0, loss = 0;
  std::vector<double> iters_mean; // recorded iterations per layer, mean over batches
  std::vector<double> iters_max;
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

// CSV with a header: length,sequences,sequence_accuracy,token_accuracy,loss,iters_mean_layer0,...
std::string eval_csv(const std::vector<EvalResult>& results);
// Parses eval_csv output back (for `fprnn report`); throws on a malformed file.
std::vector<EvalResult> parse_eval_csv(const std::string& text, const std::string& source);

// An aligned text table of the sweep (length, sequence accuracy, token accuracy, loss, iterations).
std::string eval_table(const std::vector<EvalResult>& results);

}  // namespace fprnn::train
