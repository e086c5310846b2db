// Copy-task rows: packed training contexts and single evaluation examples (spec §12.2).
#include "fprnn/tasks/copy.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace fprnn::tasks {
namespace {

void check_vocab(const CopyVocab& vocab) {
  TORCH_CHECK(vocab.alphabet >= 1 && vocab.alphabet <= 26, "copy: task.alphabet_size must be in 1..26, got ",
              vocab.alphabet);
}

// Appends `$ s | s .` (|s| = len) to ids and its loss mask (0 on `$ s |`, 1 on the copy and `.`).
void append_example(const CopyVocab& vocab, int64_t len, SplitMix64& rng, std::vector<int64_t>& ids,
                    std::vector<uint8_t>& mask) {
  std::vector<int64_t> s(len);
  for (auto& c : s) c = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab.alphabet)));
  ids.push_back(vocab.bos());
  ids.insert(ids.end(), s.begin(), s.end());
  ids.push_back(vocab.sep());
  ids.insert(ids.end(), s.begin(), s.end());
  ids.push_back(vocab.eos());
  mask.insert(mask.end(), len + 2, 0);
  mask.insert(mask.end(), len + 1, 1);
}

}  // namespace

CopyRow copy_training_row(const CopyVocab& vocab, int64_t min_len, int64_t max_len, int64_t context_length,
                          SplitMix64& rng) {
  check_vocab(vocab);
  TORCH_CHECK(min_len >= 1 && max_len >= min_len, "copy: training lengths must satisfy 1 ≤ min ≤ max, got ", min_len,
              " and ", max_len);
  TORCH_CHECK(context_length > 2 * max_len + 2, "copy: task.context_length (", context_length,
              ") must exceed 2·max length + 2 = ", 2 * max_len + 2, " so that a whole example fits");
  CopyRow row;
  row.ids.reserve(context_length + 2 * max_len + 3);
  row.mask.reserve(context_length + 2 * max_len + 3);
  while (static_cast<int64_t>(row.ids.size()) < context_length) {
    const int64_t len = min_len + static_cast<int64_t>(rng.below(static_cast<uint64_t>(max_len - min_len + 1)));
    const size_t start = row.ids.size();
    append_example(vocab, len, rng, row.ids, row.mask);
    if (static_cast<int64_t>(row.ids.size()) > context_length) {
      // Cut off by the end of the context: kept as input, never a target.
      std::fill(row.mask.begin() + static_cast<int64_t>(start), row.mask.end(), 0);
    } else {
      row.lengths.push_back(len);
    }
  }
  row.ids.resize(context_length);
  row.mask.resize(context_length);
  return row;
}

CopyRow copy_eval_row(const CopyVocab& vocab, int64_t length, int64_t context_length, SplitMix64& rng) {
  check_vocab(vocab);
  TORCH_CHECK(length >= 1, "copy: evaluation length must be ≥ 1, got ", length);
  TORCH_CHECK(context_length >= 2 * length + 3, "copy: task.context_length (", context_length,
              ") must be at least 2·length + 3 = ", 2 * length + 3, " to hold an example of length ", length);
  CopyRow row;
  append_example(vocab, length, rng, row.ids, row.mask);
  row.mask.back() = 0;  // the final `.` is trained on but not scored (the reference compares s only)
  row.lengths.push_back(length);
  row.ids.resize(context_length, vocab.eos());
  row.mask.resize(context_length, 0);
  return row;
}

}  // namespace fprnn::tasks
