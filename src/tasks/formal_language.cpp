// Formal-language generators (spec §12.3): tokens of one sample and the position of its answer.
// Each sample draws from the SplitMix64 it is given, so a sample is a pure function of its stream.
#include "fprnn/tasks/formal_language.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace fprnn::tasks {
namespace {

// Uniform integer in lo..hi (inclusive).
int64_t uniform_int(SplitMix64& rng, int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(hi - lo + 1)));
}

// Python's non-negative a mod m.
int64_t pmod(int64_t a, int64_t m) { return ((a % m) + m) % m; }

void check_lengths(const char* task, int64_t min_len, int64_t max_len, int64_t smallest) {
  TORCH_CHECK(min_len >= smallest && max_len >= min_len, task, ": lengths must satisfy ", smallest,
              " ≤ min ≤ max, got min ", min_len, " and max ", max_len);
}

// ---- modular arithmetic with brackets (vocab 12, m = 5) -------------------------------------------
constexpr int64_t kM = kArithmeticModulus;
constexpr int64_t kBrPlus = kM, kBrMinus = kM + 1, kBrTimes = kM + 2, kBrOpen = kM + 3, kBrClose = kM + 4,
                  kBrEquals = kM + 5, kBrPad = kM + 6;

// Appends a random expression of exactly `len` tokens to `out` and returns its value mod m (the
// reference's recursive generator): short lengths are a number, `- t`, `( t )` or `( - t )`; longer ones
// `( left op right )` with the split point uniform.
int64_t bracket_expression(int64_t len, SplitMix64& rng, std::vector<int64_t>& out) {
  if (len < 5) {
    const int64_t t = uniform_int(rng, 0, kM - 1);
    switch (len) {
      case 1:
        out.push_back(t);
        return t;
      case 2:
        out.insert(out.end(), {kBrMinus, t});
        return pmod(-t, kM);
      case 3:
        out.insert(out.end(), {kBrOpen, t, kBrClose});
        return t;
      default:
        out.insert(out.end(), {kBrOpen, kBrMinus, t, kBrClose});
        return pmod(-t, kM);
    }
  }
  const int64_t left_len = uniform_int(rng, 1, len - 4);
  const int64_t right_len = len - left_len - 3;
  const int64_t op = uniform_int(rng, 0, 2);  // +, −, * (mult=True)
  out.push_back(kBrOpen);
  const int64_t l = bracket_expression(left_len, rng, out);
  out.push_back(kBrPlus + op);
  const int64_t r = bracket_expression(right_len, rng, out);
  out.push_back(kBrClose);
  return op == 0 ? pmod(l + r, kM) : op == 1 ? pmod(l - r, kM) : pmod(l * r, kM);
}

// ---- modular arithmetic without brackets (vocab 10) ------------------------------------------------
constexpr int64_t kArPad = 0, kArPlus = 1, kArMinus = 2, kArTimes = 3, kArEquals = 4, kArNumber0 = 5;

}  // namespace

const std::vector<std::string>& formal_task_names() {
  static const std::vector<std::string> names = {"modular_arithmetic_with_brackets", "modular_arithmetic", "parity",
                                                 "cycle_navigation", "even_pairs"};
  return names;
}

bool is_formal_task(const std::string& name) {
  const auto& n = formal_task_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

FormalVocab formal_task_vocab(const std::string& name) {
  if (name == "modular_arithmetic_with_brackets") return {kM + 7, kBrPad, 0, kM};
  if (name == "modular_arithmetic") return {kM + 5, kArPad, kArNumber0, kM};
  if (name == "parity") return {3, 0, 1, 2};
  if (name == "cycle_navigation") return {kCycleLength + 4, 0, 4, kCycleLength};
  if (name == "even_pairs") return {3, 0, 1, 2};
  std::string list;
  for (const auto& n : formal_task_names()) list += (list.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, "formal language task '", name, "' is not known (valid: ", list, ")");
}

FormalSample generate_formal(const std::string& name, int64_t min_len, int64_t max_len, SplitMix64& rng) {
  if (name == "modular_arithmetic_with_brackets") return modular_arithmetic_with_brackets(min_len, max_len, rng);
  if (name == "modular_arithmetic") return modular_arithmetic(min_len, max_len, rng);
  if (name == "parity") return parity(min_len, max_len, rng);
  if (name == "cycle_navigation") return cycle_navigation(min_len, max_len, rng);
  if (name == "even_pairs") return even_pairs(min_len, max_len, rng);
  (void)formal_task_vocab(name);  // throws the error listing the valid names
  return {};
}

FormalSample modular_arithmetic_with_brackets(int64_t min_len, int64_t max_len, SplitMix64& rng) {
  check_lengths("modular_arithmetic_with_brackets", min_len, max_len, 1);
  const int64_t n = std::max<int64_t>(uniform_int(rng, min_len, max_len), 5);
  FormalSample s;
  s.tokens.reserve(n);
  const int64_t value = bracket_expression(n - 3, rng, s.tokens);
  s.tokens.push_back(kBrEquals);
  s.answer_pos = static_cast<int64_t>(s.tokens.size());
  s.tokens.push_back(value);
  s.tokens.push_back(kBrPad);
  return s;
}

FormalSample modular_arithmetic(int64_t min_len, int64_t max_len, SplitMix64& rng) {
  check_lengths("modular_arithmetic", min_len, max_len, 3);
  const int64_t size = 2 * uniform_int(rng, (min_len + 1) / 2, (max_len + 1) / 2) - 1;
  FormalSample s;
  s.tokens.reserve(size);
  // Value with the usual precedence: a sum of signed terms, each a product of numbers. `term` is the
  // running product, `sum` the terms already closed by a + or −.
  int64_t sum = 0, term = 0, sign = 1;
  for (int64_t t = 0; t < size - 2; ++t) {
    if (t % 2 == 0) {
      const int64_t x = uniform_int(rng, 0, kM - 1);
      s.tokens.push_back(kArNumber0 + x);
      term = (t == 0 || s.tokens[t - 1] != kArTimes) ? x : (term * x) % kM;
    } else {
      const int64_t op = kArPlus + uniform_int(rng, 0, 2);
      s.tokens.push_back(op);
      if (op != kArTimes) {
        sum = pmod(sum + sign * term, kM);
        sign = op == kArPlus ? 1 : -1;
      }
    }
  }
  sum = pmod(sum + sign * term, kM);
  s.tokens.push_back(kArEquals);
  s.answer_pos = size - 1;
  s.tokens.push_back(kArNumber0 + sum);
  return s;
}

FormalSample parity(int64_t min_len, int64_t max_len, SplitMix64& rng) {
  check_lengths("parity", min_len, max_len, 2);
  const int64_t size = uniform_int(rng, min_len, max_len);
  FormalSample s;
  s.tokens.reserve(size);
  int64_t ones = 0;
  for (int64_t t = 0; t < size - 1; ++t) {
    const int64_t bit = uniform_int(rng, 1, 2);
    ones += bit == 2;
    s.tokens.push_back(bit);
  }
  s.answer_pos = size - 1;
  s.tokens.push_back(ones % 2 + 1);
  return s;
}

FormalSample cycle_navigation(int64_t min_len, int64_t max_len, SplitMix64& rng) {
  check_lengths("cycle_navigation", min_len, max_len, 2);
  const int64_t size = uniform_int(rng, min_len, max_len);
  FormalSample s;
  s.tokens.reserve(size);
  int64_t position = 0;
  for (int64_t t = 0; t < size - 1; ++t) {
    const int64_t id = uniform_int(rng, 1, 3);
    position += id <= 2 ? id - 1 : 2 - id;  // ids 1, 2, 3 = steps 0, +1, −1 (max_step_size 1)
    s.tokens.push_back(id);
  }
  s.answer_pos = size - 1;
  s.tokens.push_back(pmod(position, kCycleLength) + 4);
  return s;
}

FormalSample even_pairs(int64_t min_len, int64_t max_len, SplitMix64& rng) {
  check_lengths("even_pairs", min_len, max_len, 2);
  const int64_t size = uniform_int(rng, min_len, max_len);
  FormalSample s;
  s.tokens.reserve(size);
  // Σ of the differences of neighbours telescopes to last − first; its absolute value is 1 exactly when
  // the numbers of "ab" and "ba" pairs differ.
  int64_t difference_sum = 0;
  for (int64_t t = 0; t < size - 1; ++t) {
    const int64_t id = uniform_int(rng, 1, 2);
    if (t > 0) difference_sum += id - s.tokens.back();
    s.tokens.push_back(id);
  }
  s.answer_pos = size - 1;
  s.tokens.push_back(std::abs(difference_sum) + 1);
  return s;
}

}  // namespace fprnn::tasks
