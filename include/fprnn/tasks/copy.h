// Copying (spec §12.2, §13.2): an example is `$ s | s .` with s a string of L random letters; the model
// reads it left to right and must reproduce s after `|` (next-token prediction).
//
// Vocabulary: letters 0..V−1 (V = alphabet_size ≤ 26, default 26), then `$` = V (BOS), `|` = V+1,
// `.` = V+2 (EOS), `*` = V+3 (pad/ignore); V + 4 tokens.
//
// Training rows (the reference's CopyDataset): examples with L ~ U{min_len..max_len} packed back to back
// until context_length tokens; the example that crosses the end is truncated and fully masked. The loss
// mask of an example is 0 on `$`, s and `|` (its first L + 2 tokens) and 1 on the copy and the final `.`.
// Next-token form: input = ids[:-1], label_t = ids[t+1] where mask[t+1] = 1 (and ids[t+1] ≠ `*`), else
// kIgnoreLabel.
// Evaluation rows: one example of length exactly L, right-padded with `.` to context_length; labelled
// only at the L positions from `|` onwards, which predict s under teacher forcing (the reference scores the
// argmax there: string accuracy = all L right, character accuracy = the fraction right).
#pragma once

#include "fprnn/random.h"
#include "fprnn/tasks/formal_language.h"

#include <cstdint>
#include <vector>

namespace fprnn::tasks {

struct CopyVocab {
  int64_t alphabet;
  int64_t bos() const { return alphabet; }
  int64_t sep() const { return alphabet + 1; }
  int64_t eos() const { return alphabet + 2; }
  int64_t pad() const { return alphabet + 3; }
  int64_t size() const { return alphabet + 4; }
};

// One row of tokens (context_length) and its loss mask (1 = the next-token target counts).
struct CopyRow {
  std::vector<int64_t> ids;
  std::vector<uint8_t> mask;
  std::vector<int64_t> lengths;  // L of each complete (unmasked-answer) example, in order
};

// A packed training row. Requires context_length > 2·max_len + 2 (the reference's 2·max_len < context_len,
// so that at least one whole example fits).
CopyRow copy_training_row(const CopyVocab& vocab, int64_t min_len, int64_t max_len, int64_t context_length,
                          SplitMix64& rng);

// An evaluation row: `$ s | s .` with |s| = length, padded with `.`; mask 1 exactly on the positions of the
// copied s (so that, shifted, the labels are the L predictions made from `|`, s_1, …, s_{L−1}).
CopyRow copy_eval_row(const CopyVocab& vocab, int64_t length, int64_t context_length, SplitMix64& rng);

}  // namespace fprnn::tasks
