// Formal-language tasks (spec §12.3, §13.3): one answer token at the end of a random sequence, e.g.
//   modular arithmetic with brackets:  ( ( 3 + - 1 ) * 4 ) = 2 [PAD]     (mod 5)
//   parity:                            2 1 2 2 1 | answer = (number of 2s mod 2) + 1
//
// A sample is its tokens (the generator's `size` tokens, answer included, no right padding) and the
// position of the answer. Training reads it as the reference does (enable_mask, then shift by one):
//   input_t  = token_t, except 0 (the reference's pad_idx) at the answer position, for t < T
//   label_t  = token_{t+1} if t+1 is the answer position, else kIgnoreLabel
// so the model sees the sequence up to the answer and predicts the answer one position before it
// (at `=` for the arithmetic tasks, at the last input symbol for the others). Positions past the sample
// are filled with the task's PAD token.
//
// Vocabularies (ids exactly as the reference's generators with their default vocab_size):
//   modular_arithmetic_with_brackets (12): 0..4 numbers, 5 +, 6 -, 7 *, 8 (, 9 ), 10 =, 11 [PAD]
//   modular_arithmetic (10):               0 PAD, 1 +, 2 -, 3 *, 4 =, 5..9 numbers 0..4
//   parity (3):                            0 PAD, 1 bit 0, 2 bit 1; answer (#2s mod 2) + 1
//   cycle_navigation (10):                 0 PAD, 1..3 steps 0, +1, −1; answer (Σ steps mod 6) + 4
//   even_pairs (3):                        0 PAD, 1 a, 2 b; answer |last − first| + 1
#pragma once

#include "fprnn/random.h"

#include <cstdint>
#include <string>
#include <vector>

namespace fprnn::tasks {

// Labels with this value are not scored (the reference's ignore index −1).
constexpr int64_t kIgnoreLabel = -1;

struct FormalSample {
  std::vector<int64_t> tokens;  // size tokens, the answer included
  int64_t answer_pos = 0;       // index of the answer in tokens
};

struct FormalVocab {
  int64_t size;           // vocabulary size (ids 0..size−1)
  int64_t pad;            // right-padding id
  int64_t answer_first;   // answers are ids answer_first .. answer_first + answer_classes − 1
  int64_t answer_classes;
};

// The names accepted by formal_task_vocab / generate_formal (the config's task.name).
const std::vector<std::string>& formal_task_names();
bool is_formal_task(const std::string& name);
// Throws a one-line error listing the valid names for an unknown task.
FormalVocab formal_task_vocab(const std::string& name);

// One sample of `name` with the length drawn from min_len..max_len (each task's own rule, below).
FormalSample generate_formal(const std::string& name, int64_t min_len, int64_t max_len, SplitMix64& rng);

// The generators. Lengths (`size`, the number of tokens):
//   with brackets: n = max(U{min..max}, 5); expression of n − 3 tokens, `=`, result, [PAD]
//   without:       2·U{⌈min/2⌉..⌈max/2⌉} − 1 (odd): numbers and operators alternate, `=`, result
//   parity, cycle_navigation, even_pairs: U{min..max}; size − 1 symbols, then the answer
FormalSample modular_arithmetic_with_brackets(int64_t min_len, int64_t max_len, SplitMix64& rng);
FormalSample modular_arithmetic(int64_t min_len, int64_t max_len, SplitMix64& rng);
FormalSample parity(int64_t min_len, int64_t max_len, SplitMix64& rng);
FormalSample cycle_navigation(int64_t min_len, int64_t max_len, SplitMix64& rng);
FormalSample even_pairs(int64_t min_len, int64_t max_len, SplitMix64& rng);

// The modulus of both arithmetic tasks (vocab_size − 7 with brackets, vocab_size − 5 without).
constexpr int64_t kArithmeticModulus = 5;
// The cycle of cycle_navigation (vocab_size − 2 − 2·max_step_size).
constexpr int64_t kCycleLength = 6;

}  // namespace fprnn::tasks
