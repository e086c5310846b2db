// Word problems (spec §12.1, §13.1): given g_1..g_k, predict at every position the running product
// p_t = g_1·g_2·…·g_t (p_1 = g_1).
//
// Tokens: element ids 0..|G|−1, then 7 specials: PAD = |G|, BOS = |G|+1, UNK, EOS, SEP, CLS, MASK;
// vocabulary size |G| + 7. A sequence of length L becomes input_ids = [BOS, g_1..g_L] and
// labels = [BOS, p_1..p_L] (L + 1 tokens).
//
// Data protocol (the reference's, generated deterministically from a seed instead of CSV files):
//   for every length L in min_train_length..k: all |G|^L sequences in lexicographic order when that is
//   at most samples_per_length, otherwise samples_per_length uniform draws (duplicates removed);
//   training set = lengths < k plus a seeded train_fraction of length k; validation = the rest of
//   length k. Test = eval_samples uniform sequences of length eval_max_length, scored by prefix.
// Details: sampled sets keep the first occurrence of each sequence, in draw order; the training share of
// length k is ⌊train_fraction · count⌋, at least 1, and leaves validation at least 1 sequence when
// train_fraction < 1; both parts keep generation order. The test set follows the same exhaustive-or-sampled
// rule with eval_samples (so it may hold fewer than eval_samples sequences for tiny groups). Every length,
// the split, the test set and each epoch's order draw from their own seeded stream (SplitMix64), so the
// data of a length does not depend on k, and is the same on every machine.
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/tasks/batch.h"
#include "fprnn/tasks/groups.h"

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace fprnn::tasks {

struct WordProblemVocab {
  int64_t n_elements;
  int64_t pad() const { return n_elements; }
  int64_t bos() const { return n_elements + 1; }
  int64_t size() const { return n_elements + 7; }
};

// A set of sequences of possibly different lengths, stored flat.
struct SequenceSet {
  std::vector<int32_t> elements;   // concatenated element indices g (no BOS)
  std::vector<int64_t> offsets;    // sequence i is elements[offsets[i] .. offsets[i+1])
  int64_t size() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  SequenceSet() : offsets{0} {}
  void add(const int32_t* g, int64_t len);
};

class WordProblem {
 public:
  // Builds the training, validation and test sets from cfg (deterministic in cfg.seed).
  WordProblem(const TaskConfig& cfg);

  const Group& group() const { return group_; }
  const WordProblemVocab& vocab() const { return vocab_; }
  const SequenceSet& train() const { return train_; }
  const SequenceSet& validation() const { return validation_; }
  const SequenceSet& test() const { return test_; }

  // Prefix products of g (len) into p (len).
  void prefix_products(const int32_t* g, int64_t len, int32_t* p) const;

  // A padded batch of the sequences `indices` of `set`, each cut to at most `max_len` elements
  // (max_len < 0: whole sequences).
  Batch make_batch(const SequenceSet& set, const std::vector<int64_t>& indices, int64_t max_len = -1) const;

  // The order in which training sequences are visited in `epoch` (a seeded permutation).
  std::vector<int64_t> epoch_order(uint64_t seed, int64_t epoch) const;

 private:
  TaskConfig cfg_;
  Group group_;
  WordProblemVocab vocab_;
  SequenceSet train_, validation_, test_;
};

}  // namespace fprnn::tasks
