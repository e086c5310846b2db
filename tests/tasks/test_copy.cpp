// Tests of the copy task: vocabulary, packed training rows re-parsed independently (every complete
// example is `$ s | s .`, masked on its copy and final `.`, the cut-off example fully masked), next-token
// labels, teacher-forced evaluation rows, determinism and the distribution of example lengths.
#include "fprnn/tasks/sequence_task.h"
#include "testing.h"

#include <map>

namespace fprnn::tasks {
namespace {

TaskConfig copy_config(int64_t min_len, int64_t max_len, int64_t context, uint64_t seed = 0) {
  TaskConfig c;
  c.name = "copy";
  c.min_train_length = min_len;
  c.train_length = max_len;
  c.context_length = context;
  c.val_min_length = min_len;
  c.val_max_length = max_len;
  c.eval_min_length = 10;
  c.eval_max_length = 20;
  c.eval_length_step = 5;
  c.seed = seed;
  return c;
}

struct ParsedExample {
  int64_t start, len;
  bool complete;
};

// Walks a row from the left, reading `$ s | s .` examples one after another; checks each as it goes.
std::vector<ParsedExample> parse_row(const CopyRow& row, const CopyVocab& v) {
  std::vector<ParsedExample> out;
  const int64_t n = static_cast<int64_t>(row.ids.size());
  int64_t p = 0;
  while (p < n) {
    EXPECT_EQ(row.ids[p], v.bos()) << "an example starts with $ at " << p;
    int64_t q = p + 1;
    while (q < n && row.ids[q] != v.sep()) {
      EXPECT_LT(row.ids[q], v.alphabet);
      ++q;
    }
    const int64_t len = q - p - 1;
    const bool complete = q + len + 1 < n;
    if (complete) {
      for (int64_t i = 0; i < len; ++i) EXPECT_EQ(row.ids[q + 1 + i], row.ids[p + 1 + i]) << "copy at " << q + 1 + i;
      EXPECT_EQ(row.ids[q + len + 1], v.eos());
      for (int64_t i = p; i <= q; ++i) EXPECT_EQ(row.mask[i], 0) << "no loss on $ s | at " << i;
      for (int64_t i = q + 1; i <= q + len + 1; ++i) EXPECT_EQ(row.mask[i], 1) << "loss on the copy and . at " << i;
    } else {
      for (int64_t i = p; i < n; ++i) EXPECT_EQ(row.mask[i], 0) << "the cut-off example is masked at " << i;
    }
    out.push_back({p, len, complete});
    p = complete ? q + len + 2 : n;
  }
  return out;
}

TEST(CopyTest, Vocabulary) {
  const CopyVocab v{26};
  EXPECT_EQ(v.bos(), 26);
  EXPECT_EQ(v.sep(), 27);
  EXPECT_EQ(v.eos(), 28);
  EXPECT_EQ(v.pad(), 29);
  EXPECT_EQ(v.size(), 30);
  EXPECT_EQ(SequenceTask(copy_config(5, 20, 220)).vocab_size(), 30);
  TaskConfig c = copy_config(5, 20, 220);
  c.alphabet_size = 4;
  EXPECT_EQ(SequenceTask(c).vocab_size(), 8);
}

TEST(CopyTest, TrainingRowsPackWholeExamplesAndMaskTheCutOne) {
  const SequenceTask task(copy_config(5, 20, 220));
  const CopyVocab v{26};
  int64_t complete = 0;
  for (int64_t r = 0; r < 50; ++r) {
    const CopyRow row = task.copy_train_row(r, 1, 8);
    ASSERT_EQ(row.ids.size(), 220u);
    ASSERT_EQ(row.mask.size(), 220u);
    const auto examples = parse_row(row, v);
    std::vector<int64_t> lens;
    for (const auto& e : examples) {
      if (!e.complete) continue;
      EXPECT_TRUE(e.len >= 5 && e.len <= 20) << e.len;
      lens.push_back(e.len);
    }
    EXPECT_EQ(lens, row.lengths);
    EXPECT_GE(lens.size(), 4u) << "220 tokens hold at least four examples of ≤ 43 tokens";
    complete += static_cast<int64_t>(lens.size());
  }
  EXPECT_GT(complete, 200);
}

TEST(CopyTest, BatchLabelsAreMaskedNextTokens) {
  const SequenceTask task(copy_config(3, 9, 64));
  const Batch b = task.train_batch(2, 4);
  ASSERT_EQ(b.input_ids.sizes(), (std::vector<int64_t>{4, 63}));
  const auto in = b.input_ids.accessor<int64_t, 2>();
  const auto lab = b.labels.accessor<int64_t, 2>();
  for (int64_t r = 0; r < 4; ++r) {
    const CopyRow row = task.copy_train_row(2, r, 4);
    for (int64_t t = 0; t < 63; ++t) {
      ASSERT_EQ(in[r][t], row.ids[t]);
      ASSERT_EQ(lab[r][t], row.mask[t + 1] ? row.ids[t + 1] : kIgnoreLabel) << "row " << r << " position " << t;
    }
  }
}

TEST(CopyTest, EvaluationRowsScoreTheCopyUnderTeacherForcing) {
  const SequenceTask task(copy_config(5, 20, 50));
  for (int64_t L : {1, 10, 23}) {
    const Batch b = task.test_batch(L, 0, 6);
    ASSERT_EQ(b.input_ids.size(1), 49);
    const auto in = b.input_ids.accessor<int64_t, 2>();
    const auto lab = b.labels.accessor<int64_t, 2>();
    for (int64_t r = 0; r < 6; ++r) {
      ASSERT_EQ(in[r][0], 26);
      ASSERT_EQ(in[r][L + 1], 27) << "`|` after s";
      for (int64_t t = 0; t < 49; ++t) {
        if (t >= L + 1 && t <= 2 * L) {
          // From `|` on, position t predicts s_{t−L−1}, which the input holds at t − L.
          ASSERT_EQ(lab[r][t], in[r][t - L]) << "L " << L << " position " << t;
          ASSERT_EQ(lab[r][t], in[r][t + 1]) << "teacher forcing: the next input is the answer";
        } else {
          ASSERT_EQ(lab[r][t], kIgnoreLabel) << "L " << L << " position " << t;
        }
        if (t > 2 * L + 1) {
          ASSERT_EQ(in[r][t], 28) << "padded with `.`";
        }
      }
    }
  }
  EXPECT_THROW(task.test_batch(24, 0, 1), c10::Error) << "2·24 + 3 > 50";
}

TEST(CopyTest, DeterministicInTheSeed) {
  const SequenceTask a(copy_config(5, 20, 220, 3)), b(copy_config(5, 20, 220, 3)), c(copy_config(5, 20, 220, 4));
  EXPECT_TRUE(torch::equal(a.train_batch(7, 8).input_ids, b.train_batch(7, 8).input_ids));
  EXPECT_FALSE(torch::equal(a.train_batch(7, 8).input_ids, c.train_batch(7, 8).input_ids));
  EXPECT_FALSE(torch::equal(a.train_batch(7, 8).input_ids, a.train_batch(8, 8).input_ids));
  EXPECT_TRUE(torch::equal(a.test_batch(15, 2, 3).labels, b.test_batch(15, 2, 3).labels));
  EXPECT_TRUE(torch::equal(a.validation_batch(0, 5).labels, b.validation_batch(0, 5).labels));
  // Test sample i does not depend on the batch it is generated in.
  EXPECT_TRUE(torch::equal(a.test_batch(15, 0, 4).labels[2], a.test_batch(15, 2, 1).labels[0]));
}

TEST(CopyTest, ExampleLengthsAreUniform) {
  // Example lengths are U{5..20}: χ² with 15 degrees of freedom, 0.1 % critical value 37.7. Only examples
  // that start at least 43 tokens (the longest example) before the end are counted: whether they are
  // counted depends on the examples before them, not on their own length, so the count is unbiased.
  const SequenceTask task(copy_config(5, 20, 220));
  const CopyVocab v{26};
  std::map<int64_t, int64_t> counts;
  int64_t n = 0;
  for (int64_t r = 0; r < 2000; ++r) {
    const CopyRow row = task.copy_train_row(r, 0, 1);
    for (const auto& e : parse_row(row, v)) {
      if (e.start + 43 > 220) continue;
      ++counts[e.len];
      ++n;
    }
  }
  double chi2 = 0;
  for (int64_t len = 5; len <= 20; ++len) {
    const double e = static_cast<double>(n) / 16.0;
    chi2 += (counts[len] - e) * (counts[len] - e) / e;
  }
  EXPECT_EQ(counts.size(), 16u);
  EXPECT_LT(chi2, 37.7);
}

TEST(CopyTest, ImpossibleConfigsAreRefused) {
  EXPECT_THROW(SequenceTask(copy_config(5, 20, 42)), c10::Error) << "2·20 + 2 ≥ 42";
  EXPECT_NO_THROW(SequenceTask(copy_config(5, 20, 43)));
  TaskConfig c = copy_config(5, 20, 220);
  c.eval_max_length = 109;
  EXPECT_THROW(SequenceTask{c}, c10::Error) << "an evaluation example of 109 needs 221 tokens";
  c = copy_config(5, 20, 220);
  c.alphabet_size = 27;
  EXPECT_THROW(SequenceTask{c}, c10::Error);
  c.alphabet_size = 0;
  EXPECT_THROW(SequenceTask{c}, c10::Error);
}

}  // namespace
}  // namespace fprnn::tasks
