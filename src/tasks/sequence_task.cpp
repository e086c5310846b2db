// Copy and formal-language batches from per-sample random streams (see sequence_task.h).
#include "fprnn/tasks/sequence_task.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace fprnn::tasks {
namespace {

// The smallest `min` length each formal generator accepts.
int64_t smallest_length(const std::string& name) {
  if (name == "modular_arithmetic_with_brackets") return 1;
  if (name == "modular_arithmetic") return 3;
  return 2;
}

// The longest sample (in tokens) a formal generator makes for lengths up to max_len.
int64_t longest_sample(const std::string& name, int64_t max_len) {
  if (name == "modular_arithmetic_with_brackets") return std::max<int64_t>(max_len, 5);
  if (name == "modular_arithmetic") return 2 * ((max_len + 1) / 2) - 1;
  return max_len;
}

void check_range(const std::string& task, const char* what, int64_t lo, int64_t hi, int64_t smallest) {
  TORCH_CHECK(lo >= smallest && hi >= lo, task, ": task.", what, " lengths must satisfy ", smallest,
              " ≤ min ≤ max, got ", lo, " and ", hi);
}

}  // namespace

std::vector<std::string> sequence_task_names() {
  std::vector<std::string> names = {"copy"};
  for (const auto& n : formal_task_names()) names.push_back(n);
  return names;
}

SequenceTask::SequenceTask(const TaskConfig& cfg) : cfg_(cfg) {
  const std::string& n = cfg_.name;
  copy_ = n == "copy";
  if (!copy_) {
    std::string list;
    for (const auto& v : sequence_task_names()) list += (list.empty() ? "" : ", ") + v;
    TORCH_CHECK(is_formal_task(n), "task.name = '", n, "' is not a generated sequence task (valid: ", list, ")");
    formal_ = formal_task_vocab(n);
  }
  TORCH_CHECK(cfg_.val_samples >= 1 && cfg_.eval_samples >= 1, n,
              ": task.val_samples and task.eval_samples must be ≥ 1, got ", cfg_.val_samples, " and ",
              cfg_.eval_samples);
  TORCH_CHECK(cfg_.eval_length_step >= 1, n, ": task.eval_length_step must be ≥ 1, got ", cfg_.eval_length_step);
  TORCH_CHECK(cfg_.context_length >= 0, n, ": task.context_length must be ≥ 0, got ", cfg_.context_length);
  const int64_t smallest = copy_ ? 1 : smallest_length(n);
  check_range(n, "min_train_length/train_length", cfg_.min_train_length, cfg_.train_length, smallest);
  check_range(n, "val_min_length/val_max_length", cfg_.val_min_length, cfg_.val_max_length, smallest);
  check_range(n, "eval_min_length/eval_max_length", cfg_.eval_min_length, cfg_.eval_max_length, smallest);
  if (copy_) {
    copy_vocab_ = CopyVocab{cfg_.alphabet_size};
    TORCH_CHECK(cfg_.alphabet_size >= 1 && cfg_.alphabet_size <= 26, "copy: task.alphabet_size must be in 1..26, got ",
                cfg_.alphabet_size);
    TORCH_CHECK(cfg_.context_length > 2 * cfg_.train_length + 2, "copy: task.context_length (", cfg_.context_length,
                ") must exceed 2·task.train_length + 2 = ", 2 * cfg_.train_length + 2);
    const int64_t longest = std::max(cfg_.val_max_length, cfg_.eval_max_length);
    TORCH_CHECK(cfg_.context_length >= 2 * longest + 3, "copy: task.context_length (", cfg_.context_length,
                ") must be at least 2·", longest, " + 3 to hold the longest validation/evaluation example");
  } else if (cfg_.context_length > 0) {
    const int64_t longest = longest_sample(
        n, std::max({cfg_.train_length, cfg_.val_max_length, cfg_.eval_max_length}));
    TORCH_CHECK(longest <= cfg_.context_length, n, ": samples reach ", longest,
                " tokens, more than task.context_length = ", cfg_.context_length,
                " (raise it, or 0 to pad each batch to its longest sample)");
  }
}

int64_t SequenceTask::vocab_size() const { return copy_ ? copy_vocab_.size() : formal_.size; }

double SequenceTask::chance() const {
  return 1.0 / static_cast<double>(copy_ ? copy_vocab_.alphabet : formal_.answer_classes);
}

std::vector<int64_t> SequenceTask::eval_lengths() const {
  std::vector<int64_t> out;
  for (int64_t l = cfg_.eval_min_length; l <= cfg_.eval_max_length; l += cfg_.eval_length_step) out.push_back(l);
  return out;
}

FormalSample SequenceTask::formal_sample(uint64_t stream, uint64_t substream, uint64_t index, int64_t min_len,
                                         int64_t max_len) const {
  SplitMix64 rng(cfg_.seed, stream, substream, index);
  return generate_formal(cfg_.name, min_len, max_len, rng);
}

Batch SequenceTask::formal_batch(uint64_t stream, uint64_t substream, uint64_t first, int64_t count, int64_t min_len,
                                 int64_t max_len) const {
  TORCH_CHECK(count >= 1, name(), ": a batch needs at least one sample");
  std::vector<FormalSample> samples;
  samples.reserve(count);
  int64_t longest = 0;
  for (int64_t b = 0; b < count; ++b) {
    samples.push_back(formal_sample(stream, substream, first + static_cast<uint64_t>(b), min_len, max_len));
    longest = std::max(longest, static_cast<int64_t>(samples.back().tokens.size()));
  }
  const int64_t T = (cfg_.context_length > 0 ? cfg_.context_length : longest) - 1;
  Batch batch;
  batch.input_ids = torch::full({count, T}, formal_.pad, torch::kInt64);
  batch.labels = torch::full({count, T}, kIgnoreLabel, torch::kInt64);
  int64_t* in = batch.input_ids.data_ptr<int64_t>();
  int64_t* lab = batch.labels.data_ptr<int64_t>();
  for (int64_t b = 0; b < count; ++b) {
    const FormalSample& s = samples[b];
    const int64_t n = std::min(static_cast<int64_t>(s.tokens.size()), T);
    for (int64_t t = 0; t < n; ++t) in[b * T + t] = s.tokens[t];
    // The reference's enable_mask: the answer's own input slot holds pad_idx = 0 (for the bracket task
    // that is the number 0; harmless, as nothing before the answer sees it).
    if (s.answer_pos < T) in[b * T + s.answer_pos] = 0;
    lab[b * T + s.answer_pos - 1] = s.tokens[s.answer_pos];
    batch.tokens += n;
  }
  return batch;
}

CopyRow SequenceTask::copy_train_row(int64_t step, int64_t row, int64_t batch_size) const {
  SplitMix64 rng(cfg_.seed, kStreamTrain, 0, static_cast<uint64_t>(step * batch_size + row));
  return copy_training_row(copy_vocab_, cfg_.min_train_length, cfg_.train_length, cfg_.context_length, rng);
}

Batch SequenceTask::copy_batch(const std::vector<CopyRow>& rows) const {
  const int64_t B = static_cast<int64_t>(rows.size());
  const int64_t T = cfg_.context_length - 1;
  Batch batch;
  batch.input_ids = torch::empty({B, T}, torch::kInt64);
  batch.labels = torch::full({B, T}, kIgnoreLabel, torch::kInt64);
  int64_t* in = batch.input_ids.data_ptr<int64_t>();
  int64_t* lab = batch.labels.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const CopyRow& r = rows[b];
    for (int64_t t = 0; t < T; ++t) {
      in[b * T + t] = r.ids[t];
      // Next-token targets under the loss mask; `*` is the reference's CE ignore index.
      if (r.mask[t + 1] && r.ids[t + 1] != copy_vocab_.pad()) lab[b * T + t] = r.ids[t + 1];
    }
    batch.tokens += T;
  }
  return batch;
}

Batch SequenceTask::train_batch(int64_t step, int64_t batch_size) const {
  TORCH_CHECK(step >= 0 && batch_size >= 1, name(), ": train_batch needs step ≥ 0 and batch_size ≥ 1");
  if (!copy_)
    return formal_batch(kStreamTrain, 0, static_cast<uint64_t>(step * batch_size), batch_size, cfg_.min_train_length,
                        cfg_.train_length);
  std::vector<CopyRow> rows;
  for (int64_t b = 0; b < batch_size; ++b) rows.push_back(copy_train_row(step, b, batch_size));
  return copy_batch(rows);
}

Batch SequenceTask::validation_batch(int64_t first, int64_t count) const {
  TORCH_CHECK(first >= 0 && count >= 1, name(), ": validation_batch needs first ≥ 0 and count ≥ 1");
  if (!copy_)
    return formal_batch(kStreamValidation, 0, static_cast<uint64_t>(first), count, cfg_.val_min_length,
                        cfg_.val_max_length);
  std::vector<CopyRow> rows;
  for (int64_t i = first; i < first + count; ++i) {
    SplitMix64 rng(cfg_.seed, kStreamValidation, 0, static_cast<uint64_t>(i));
    const int64_t len = cfg_.val_min_length +
                        static_cast<int64_t>(rng.below(static_cast<uint64_t>(cfg_.val_max_length - cfg_.val_min_length + 1)));
    rows.push_back(copy_eval_row(copy_vocab_, len, cfg_.context_length, rng));
  }
  return copy_batch(rows);
}

Batch SequenceTask::test_batch(int64_t length, int64_t first, int64_t count) const {
  TORCH_CHECK(first >= 0 && count >= 1, name(), ": test_batch needs first ≥ 0 and count ≥ 1");
  if (!copy_)
    return formal_batch(kStreamTest, static_cast<uint64_t>(length), static_cast<uint64_t>(first), count, length,
                        length);
  std::vector<CopyRow> rows;
  for (int64_t i = first; i < first + count; ++i) {
    SplitMix64 rng(cfg_.seed, kStreamTest, static_cast<uint64_t>(length), static_cast<uint64_t>(i));
    rows.push_back(copy_eval_row(copy_vocab_, length, cfg_.context_length, rng));
  }
  return copy_batch(rows);
}

}  // namespace fprnn::tasks
