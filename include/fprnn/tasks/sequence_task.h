// The generated tasks other than word problems — copying (copy.h) and the formal-language tasks
// (formal_language.h) — behind one interface for training and evaluation. Samples are generated on the
// fly: sample i of a stream is a pure function of (task.seed, stream, i), so a batch depends only on the
// seed and its step (or index), never on what was generated before, and a resumed run sees the same data.
//
// Streams and their lengths (config keys of the task section):
//   training   step s, row b → sample s·B + b; lengths min_train_length..train_length
//   validation sample i;      lengths val_min_length..val_max_length (the reference: 40..256)
//   test       length L, sample i; exactly L (one sweep entry per L in eval_min_length..eval_max_length)
// Batches: input_ids and labels (B, T); labels are kIgnoreLabel except where the reference's loss mask is 1.
// T = context_length − 1 when task.context_length > 0 (the reference: 256 − 1 for formal tasks, 220 − 1 for
// copy), else the longest sample in the batch minus one (formal tasks only: the layers are causal, so the
// scored logits do not depend on trailing padding; only the solver's stopping test sees it).
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/tasks/batch.h"
#include "fprnn/tasks/copy.h"
#include "fprnn/tasks/formal_language.h"

#include <string>
#include <vector>

namespace fprnn::tasks {

// The task names SequenceTask accepts ("copy" and the formal-language tasks).
std::vector<std::string> sequence_task_names();

class SequenceTask {
 public:
  // Checks the config (one-line errors naming the key) and sets up the vocabulary.
  explicit SequenceTask(const TaskConfig& cfg);

  const std::string& name() const { return cfg_.name; }
  bool is_copy() const { return copy_; }
  int64_t vocab_size() const;
  // Accuracy of guessing uniformly among the possible answers, per scored token: 1/classes for the formal
  // tasks (the reference's chance level for normalised accuracy), 1/alphabet for copy.
  double chance() const;

  Batch train_batch(int64_t step, int64_t batch_size) const;
  Batch validation_batch(int64_t first, int64_t count) const;
  Batch test_batch(int64_t length, int64_t first, int64_t count) const;

  // The lengths of the sweep: eval_min_length, +eval_length_step, … ≤ eval_max_length.
  std::vector<int64_t> eval_lengths() const;

  // The raw samples behind the batches (for tests and inspection).
  FormalSample formal_sample(uint64_t stream, uint64_t substream, uint64_t index, int64_t min_len,
                             int64_t max_len) const;
  CopyRow copy_train_row(int64_t step, int64_t row, int64_t batch_size) const;

  // Stream ids (the `stream` argument above).
  static constexpr uint64_t kStreamTrain = 11, kStreamValidation = 12, kStreamTest = 13;

 private:
  Batch formal_batch(uint64_t stream, uint64_t substream, uint64_t first, int64_t count, int64_t min_len,
                     int64_t max_len) const;
  Batch copy_batch(const std::vector<CopyRow>& rows) const;

  TaskConfig cfg_;
  bool copy_ = false;
  FormalVocab formal_{};
  CopyVocab copy_vocab_{26};
};

}  // namespace fprnn::tasks
