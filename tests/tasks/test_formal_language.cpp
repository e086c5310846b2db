// Tests of the formal-language tasks: vocabularies, answers recomputed by independent methods (a
// recursive-descent parser, shunting-yard, pair counting), batch layout (shift and mask), determinism,
// length distributions and refusals of impossible configs.
#include "fprnn/tasks/sequence_task.h"
#include "testing.h"

#include <cmath>
#include <map>
#include <set>

namespace fprnn::tasks {
namespace {

using Tokens = std::vector<int64_t>;

int64_t pmod(int64_t a, int64_t m) { return ((a % m) + m) % m; }

// ---- independent evaluators --------------------------------------------------------------------------

// Bracket arithmetic by recursive descent over the grammar the paper describes:
//   unary := '-' primary | primary;  primary := number | '(' unary [op unary] ')'
struct BracketParser {
  const Tokens& tok;
  size_t pos = 0;
  static constexpr int64_t m = 5, plus = 5, minus = 6, times = 7, open = 8, close = 9;
  int64_t unary() {
    if (tok.at(pos) == minus) {
      ++pos;
      return pmod(-primary(), m);
    }
    return primary();
  }
  int64_t primary() {
    const int64_t t = tok.at(pos++);
    if (t >= 0 && t < m) return t;
    EXPECT_EQ(t, open) << "at " << pos - 1;
    int64_t v = unary();
    const int64_t op = tok.at(pos);
    if (op == plus || op == minus || op == times) {
      ++pos;
      const int64_t r = unary();
      v = op == plus ? pmod(v + r, m) : op == minus ? pmod(v - r, m) : pmod(v * r, m);
    }
    EXPECT_EQ(tok.at(pos), close) << "at " << pos;
    ++pos;
    return v;
  }
};

// Arithmetic without brackets by shunting-yard into postfix, then a stack machine (mod 5).
int64_t shunting_yard_value(const Tokens& tok, size_t end) {
  auto prec = [](int64_t op) { return op == 3 ? 2 : 1; };
  std::vector<int64_t> output, ops;  // output: numbers as 100+value, operators as ids 1..3
  for (size_t i = 0; i < end; ++i) {
    const int64_t t = tok[i];
    if (t >= 5) {
      output.push_back(100 + (t - 5));
    } else {
      while (!ops.empty() && prec(ops.back()) >= prec(t)) {
        output.push_back(ops.back());
        ops.pop_back();
      }
      ops.push_back(t);
    }
  }
  while (!ops.empty()) {
    output.push_back(ops.back());
    ops.pop_back();
  }
  std::vector<int64_t> stack;
  for (int64_t x : output) {
    if (x >= 100) {
      stack.push_back(x - 100);
      continue;
    }
    const int64_t r = stack.back();
    stack.pop_back();
    const int64_t l = stack.back();
    stack.pop_back();
    stack.push_back(x == 1 ? pmod(l + r, 5) : x == 2 ? pmod(l - r, 5) : pmod(l * r, 5));
  }
  EXPECT_EQ(stack.size(), 1u);
  return stack.back();
}

TaskConfig config(const std::string& name, int64_t min_len, int64_t max_len, uint64_t seed = 0) {
  TaskConfig c;
  c.name = name;
  c.min_train_length = min_len;
  c.train_length = max_len;
  c.val_min_length = max_len;
  c.val_max_length = 2 * max_len;
  c.eval_min_length = min_len;
  c.eval_max_length = 2 * max_len;
  c.eval_length_step = 1;
  c.seed = seed;
  return c;
}

std::vector<FormalSample> samples(const std::string& name, int64_t min_len, int64_t max_len, int64_t n,
                                  uint64_t seed = 0) {
  const SequenceTask task(config(name, min_len, max_len, seed));
  std::vector<FormalSample> out;
  for (int64_t i = 0; i < n; ++i)
    out.push_back(task.formal_sample(SequenceTask::kStreamTrain, 0, static_cast<uint64_t>(i), min_len, max_len));
  return out;
}

void expect_in_vocab(const std::string& name, const FormalSample& s) {
  const FormalVocab v = formal_task_vocab(name);
  ASSERT_GE(s.answer_pos, 1);
  ASSERT_LT(s.answer_pos, static_cast<int64_t>(s.tokens.size()));
  for (int64_t t : s.tokens) ASSERT_TRUE(t >= 0 && t < v.size) << name << " token " << t;
  const int64_t a = s.tokens[s.answer_pos];
  ASSERT_TRUE(a >= v.answer_first && a < v.answer_first + v.answer_classes) << name << " answer " << a;
}

TEST(FormalLanguageTest, VocabularySizesAndIds) {
  EXPECT_EQ(formal_task_vocab("modular_arithmetic_with_brackets").size, 12);
  EXPECT_EQ(formal_task_vocab("modular_arithmetic_with_brackets").pad, 11);
  EXPECT_EQ(formal_task_vocab("modular_arithmetic").size, 10);
  EXPECT_EQ(formal_task_vocab("modular_arithmetic").pad, 0);
  EXPECT_EQ(formal_task_vocab("parity").size, 3);
  EXPECT_EQ(formal_task_vocab("cycle_navigation").size, 10);
  EXPECT_EQ(formal_task_vocab("cycle_navigation").answer_first, 4);
  EXPECT_EQ(formal_task_vocab("even_pairs").size, 3);
  EXPECT_THROW(formal_task_vocab("dyck"), c10::Error);
  for (const auto& name : formal_task_names())
    EXPECT_EQ(SequenceTask(config(name, 3, 10)).vocab_size(), formal_task_vocab(name).size);
}

TEST(FormalLanguageTest, BracketAnswersMatchAParser) {
  std::set<int64_t> answers, sizes;
  for (const auto& s : samples("modular_arithmetic_with_brackets", 3, 40, 3000)) {
    expect_in_vocab("modular_arithmetic_with_brackets", s);
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    sizes.insert(n);
    ASSERT_EQ(s.answer_pos, n - 2);
    ASSERT_EQ(s.tokens[n - 3], 10) << "`=` before the answer";
    ASSERT_EQ(s.tokens[n - 1], 11) << "[PAD] after the answer";
    BracketParser p{s.tokens};
    const int64_t v = p.unary();
    ASSERT_EQ(p.pos, static_cast<size_t>(n - 3)) << "the expression is exactly n − 3 tokens";
    ASSERT_EQ(s.tokens[s.answer_pos], v);
    answers.insert(v);
    for (int64_t i = 0; i < n - 3; ++i) ASSERT_NE(s.tokens[i], 10);
  }
  EXPECT_EQ(answers.size(), 5u);
  EXPECT_EQ(*sizes.begin(), 5) << "lengths below 5 are raised to 5";
  EXPECT_EQ(*sizes.rbegin(), 40);
}

TEST(FormalLanguageTest, ArithmeticAnswersMatchShuntingYard) {
  std::set<int64_t> answers;
  for (const auto& s : samples("modular_arithmetic", 3, 41, 3000)) {
    expect_in_vocab("modular_arithmetic", s);
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    ASSERT_EQ(n % 2, 1) << "odd total length";
    ASSERT_EQ(s.answer_pos, n - 1);
    ASSERT_EQ(s.tokens[n - 2], 4) << "`=` before the answer";
    for (int64_t i = 0; i < n - 2; ++i) {
      if (i % 2 == 0)
        ASSERT_GE(s.tokens[i], 5) << "numbers at even positions";
      else
        ASSERT_TRUE(s.tokens[i] >= 1 && s.tokens[i] <= 3) << "operators at odd positions";
    }
    ASSERT_EQ(s.tokens[s.answer_pos] - 5, shunting_yard_value(s.tokens, static_cast<size_t>(n - 2)));
    answers.insert(s.tokens[s.answer_pos]);
  }
  EXPECT_EQ(answers.size(), 5u);
  // A hand-made check of the precedence rule: 2 + 3 * 4 − 1 = 13 ≡ 3 (mod 5), not (2+3)·4−1 = 19 ≡ 4.
  const Tokens t = {7, 1, 8, 3, 9, 2, 6, 4, 0};
  EXPECT_EQ(shunting_yard_value(t, 7), 3);
}

TEST(FormalLanguageTest, ParityCycleAndEvenPairsAnswers) {
  for (const auto& s : samples("parity", 2, 30, 2000)) {
    expect_in_vocab("parity", s);
    int64_t ones = 0;
    for (int64_t i = 0; i < s.answer_pos; ++i) {
      ASSERT_TRUE(s.tokens[i] == 1 || s.tokens[i] == 2);
      ones += s.tokens[i] == 2;
    }
    ASSERT_EQ(s.answer_pos, static_cast<int64_t>(s.tokens.size()) - 1);
    ASSERT_EQ(s.tokens[s.answer_pos], ones % 2 == 0 ? 1 : 2);
  }
  const std::map<int64_t, int64_t> step = {{1, 0}, {2, 1}, {3, -1}};
  std::set<int64_t> positions;
  for (const auto& s : samples("cycle_navigation", 2, 30, 2000)) {
    expect_in_vocab("cycle_navigation", s);
    int64_t p = 0;
    for (int64_t i = 0; i < s.answer_pos; ++i) p += step.at(s.tokens[i]);
    ASSERT_EQ(s.tokens[s.answer_pos], pmod(p, 6) + 4);
    positions.insert(s.tokens[s.answer_pos]);
  }
  EXPECT_EQ(positions.size(), 6u);
  for (const auto& s : samples("even_pairs", 2, 30, 2000)) {
    expect_in_vocab("even_pairs", s);
    int64_t ab = 0, ba = 0;
    for (int64_t i = 0; i + 1 < s.answer_pos; ++i) {
      ab += s.tokens[i] == 1 && s.tokens[i + 1] == 2;
      ba += s.tokens[i] == 2 && s.tokens[i + 1] == 1;
    }
    ASSERT_EQ(s.tokens[s.answer_pos], ab == ba ? 1 : 2);
  }
}

TEST(FormalLanguageTest, LengthsAreUniformInTheRange) {
  // Chi-square against the uniform law on the task's possible lengths; 20 000 draws. The 0.1 % critical
  // value of χ²(k−1) for these k is below 70, so a correct generator fails with probability < 0.001 per
  // task, while an off-by-one range (a missing or extra length) adds thousands.
  struct Case {
    std::string name;
    int64_t lo, hi;
    std::map<int64_t, double> expected;  // size → probability
  };
  std::vector<Case> cases;
  {
    Case c{"parity", 3, 20, {}};
    for (int64_t n = 3; n <= 20; ++n) c.expected[n] = 1.0 / 18;
    cases.push_back(c);
  }
  {
    Case c{"modular_arithmetic", 3, 12, {}};  // ⌈3/2⌉..⌈12/2⌉ = 2..6 → sizes 3, 5, 7, 9, 11
    for (int64_t n = 3; n <= 11; n += 2) c.expected[n] = 1.0 / 5;
    cases.push_back(c);
  }
  {
    Case c{"modular_arithmetic_with_brackets", 3, 12, {}};  // 3, 4 and 5 all become 5
    c.expected[5] = 3.0 / 10;
    for (int64_t n = 6; n <= 12; ++n) c.expected[n] = 1.0 / 10;
    cases.push_back(c);
  }
  const int64_t N = 20000;
  for (const auto& c : cases) {
    std::map<int64_t, int64_t> counts;
    for (const auto& s : samples(c.name, c.lo, c.hi, N)) ++counts[static_cast<int64_t>(s.tokens.size())];
    double chi2 = 0;
    for (const auto& [n, count] : counts) {
      ASSERT_TRUE(c.expected.count(n)) << c.name << ": unexpected length " << n;
    }
    for (const auto& [n, p] : c.expected) {
      const double e = p * N;
      const double o = static_cast<double>(counts[n]);
      chi2 += (o - e) * (o - e) / e;
    }
    EXPECT_LT(chi2, 70.0) << c.name;
  }
}

TEST(FormalLanguageTest, BatchesShiftAndMaskAsTheReference) {
  for (const auto& name : formal_task_names()) {
    TaskConfig c = config(name, 3, 16);
    const SequenceTask task(c);
    const Batch b = task.train_batch(3, 32);
    const int64_t B = b.input_ids.size(0), T = b.input_ids.size(1);
    ASSERT_EQ(B, 32);
    const auto in = b.input_ids.accessor<int64_t, 2>();
    const auto lab = b.labels.accessor<int64_t, 2>();
    int64_t longest = 0;
    for (int64_t r = 0; r < B; ++r) {
      const FormalSample s =
          task.formal_sample(SequenceTask::kStreamTrain, 0, static_cast<uint64_t>(3 * 32 + r), 3, 16);
      longest = std::max(longest, static_cast<int64_t>(s.tokens.size()));
      int64_t scored = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (lab[r][t] != kIgnoreLabel) {
          ++scored;
          ASSERT_EQ(t, s.answer_pos - 1) << name;
          ASSERT_EQ(lab[r][t], s.tokens[s.answer_pos]) << name;
        }
        const int64_t want = t == s.answer_pos ? 0
                             : t < static_cast<int64_t>(s.tokens.size()) ? s.tokens[t]
                                                                          : formal_task_vocab(name).pad;
        ASSERT_EQ(in[r][t], want) << name << " row " << r << " position " << t;
      }
      ASSERT_EQ(scored, 1) << name;
    }
    EXPECT_EQ(T, longest - 1) << name << ": without context_length, padded to the longest sample";
    c.context_length = 40;
    const Batch fixed = SequenceTask(c).train_batch(3, 32);
    EXPECT_EQ(fixed.input_ids.size(1), 39) << name << ": the reference's context_length − 1";
    EXPECT_TRUE(torch::equal(fixed.labels.narrow(1, 0, T), b.labels)) << name;
    EXPECT_TRUE(torch::equal(fixed.input_ids.narrow(1, 0, T), b.input_ids)) << name;
  }
}

TEST(FormalLanguageTest, TestBatchesHaveExactlyTheRequestedLength) {
  const SequenceTask parity(config("parity", 2, 10));
  for (int64_t L : {2, 7, 31}) {
    const Batch b = parity.test_batch(L, 0, 16);
    EXPECT_EQ(b.input_ids.size(1), L - 1);
    EXPECT_TRUE(b.labels.select(1, L - 2).ne(kIgnoreLabel).all().item<bool>());
  }
  const SequenceTask arith(config("modular_arithmetic", 3, 10));
  EXPECT_EQ(arith.test_batch(9, 0, 4).input_ids.size(1), 8);
  EXPECT_EQ(arith.test_batch(10, 0, 4).input_ids.size(1), 8) << "even lengths round down to odd (2⌈L/2⌉ − 1)";
}

TEST(FormalLanguageTest, DeterministicInTheSeedAndIndependentOfHistory) {
  for (const auto& name : formal_task_names()) {
    const SequenceTask a(config(name, 3, 20, 7)), b(config(name, 3, 20, 7)), other(config(name, 3, 20, 8));
    const Batch x = a.train_batch(5, 64);
    (void)b.train_batch(4, 64);  // generating other batches first changes nothing
    const Batch y = b.train_batch(5, 64);
    EXPECT_TRUE(torch::equal(x.input_ids, y.input_ids)) << name;
    EXPECT_TRUE(torch::equal(x.labels, y.labels)) << name;
    const Batch z = other.train_batch(5, 64);
    EXPECT_FALSE(x.input_ids.sizes() == z.input_ids.sizes() && torch::equal(x.input_ids, z.input_ids))
        << name << ": another seed gives other data";
    const Batch next = a.train_batch(6, 64);
    EXPECT_FALSE(x.input_ids.sizes() == next.input_ids.sizes() && torch::equal(x.input_ids, next.input_ids)) << name;
    // Validation and test streams are distinct from training and from each other.
    EXPECT_TRUE(torch::equal(a.validation_batch(10, 8).input_ids, b.validation_batch(10, 8).input_ids)) << name;
    EXPECT_TRUE(torch::equal(a.test_batch(12, 0, 8).input_ids, b.test_batch(12, 0, 8).input_ids)) << name;
    // A batch of samples i..i+n is the concatenation of the samples, whatever the batch boundaries.
    const Batch first = a.validation_batch(0, 8);
    const Batch part = a.validation_batch(3, 1);
    const int64_t t = std::min(first.input_ids.size(1), part.input_ids.size(1));
    EXPECT_TRUE(torch::equal(first.labels[3].narrow(0, 0, t), part.labels[0].narrow(0, 0, t))) << name;
  }
}

TEST(FormalLanguageTest, ValidationLengthsFollowTheConfig) {
  TaskConfig c = config("parity", 3, 10);
  c.val_min_length = 40;
  c.val_max_length = 64;
  const SequenceTask task(c);
  const Batch v = task.validation_batch(0, 256);
  const auto lab = v.labels.accessor<int64_t, 2>();
  std::set<int64_t> sizes;
  for (int64_t r = 0; r < 256; ++r)
    for (int64_t t = 0; t < v.labels.size(1); ++t)
      if (lab[r][t] != kIgnoreLabel) sizes.insert(t + 2);  // the answer sits at t + 1
  EXPECT_EQ(*sizes.begin(), 40);
  EXPECT_EQ(*sizes.rbegin(), 64);
  EXPECT_GT(sizes.size(), 20u);
}

TEST(FormalLanguageTest, ImpossibleConfigsAreRefused) {
  EXPECT_THROW(SequenceTask(config("dyck", 3, 10)), c10::Error);
  EXPECT_THROW(SequenceTask(config("word_problem", 3, 10)), c10::Error);
  EXPECT_THROW(SequenceTask(config("modular_arithmetic", 2, 10)), c10::Error) << "shortest is `n = a`";
  EXPECT_THROW(SequenceTask(config("parity", 1, 10)), c10::Error);
  EXPECT_THROW(SequenceTask(config("parity", 10, 9)), c10::Error);
  TaskConfig c = config("parity", 3, 10);
  c.context_length = 19;  // eval_max_length is 20
  EXPECT_THROW(SequenceTask{c}, c10::Error);
  c.context_length = 20;
  EXPECT_NO_THROW(SequenceTask{c});
  c.val_samples = 0;
  EXPECT_THROW(SequenceTask{c}, c10::Error);
  SplitMix64 rng(1);
  EXPECT_THROW(modular_arithmetic(5, 4, rng), c10::Error);
}

}  // namespace
}  // namespace fprnn::tasks
