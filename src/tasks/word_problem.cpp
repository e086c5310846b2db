// Word-problem data: sequences g_1..g_L of group elements and their prefix products p_t = g_1·…·g_t.
//
// Storage: SequenceSet, flat int32 elements + int64 offsets. Batches: input_ids, labels (B, T) int64,
// T = 1 + longest (cut) sequence, right-padded with PAD. All randomness comes from SplitMix64 keyed by
// (seed, stream, substream) below, so the data is identical on every machine and standard library.
#include "fprnn/tasks/word_problem.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace fprnn::tasks {
namespace {

// Independent random streams of one seed. Changing these changes every data set.
constexpr uint64_t kStreamTrainLength = 1;  // substream L: the sampled sequences of length L
constexpr uint64_t kStreamSplit = 2;        // substream k: the train/validation split of length k
constexpr uint64_t kStreamTest = 3;         // substream eval_max_length: the test sequences
constexpr uint64_t kStreamEpoch = 4;        // substream epoch: the training order

// Upper bound on the stored elements (int32): 2^28 · 4 B = 1 GiB.
constexpr int64_t kMaxStoredElements = int64_t{1} << 28;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// SplitMix64 (Steele, Lea, Flood 2014) started from a hash of (seed, stream, substream).
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream, uint64_t substream)
      : state_(mix64(mix64(mix64(seed) ^ stream) ^ substream)) {}

  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(state_);
  }

  // Uniform in 0..n−1 without bias (Lemire 2019): the high word of x·n, rejecting the 2^64 mod n values
  // of the low word that would over-represent some results.
  uint64_t uniform(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
    if (static_cast<uint64_t>(m) < n) {
      const uint64_t threshold = (0 - n) % n;
      while (static_cast<uint64_t>(m) < threshold) m = static_cast<unsigned __int128>(next()) * n;
    }
    return static_cast<uint64_t>(m >> 64);
  }

 private:
  uint64_t state_;
};

// base^exp when it is at most cap, else cap + 1.
int64_t capped_power(int64_t base, int64_t exp, int64_t cap) {
  if (base == 1) return 1;
  int64_t r = 1;
  for (int64_t i = 0; i < exp; ++i) {
    if (r > cap / base) return cap + 1;
    r *= base;
  }
  return r;
}

// All count = n^len sequences in lexicographic order (the last position varies fastest).
void add_all_sequences(SequenceSet& set, int64_t n, int64_t len, int64_t count) {
  std::vector<int32_t> g(len, 0);
  for (int64_t s = 0; s < count; ++s) {
    set.add(g.data(), len);
    for (int64_t t = len - 1; t >= 0; --t) {
      if (++g[t] < n) break;
      g[t] = 0;
    }
  }
}

uint64_t hash_sequence(const int32_t* g, int64_t len) {
  uint64_t h = 0x243f6a8885a308d3ULL ^ static_cast<uint64_t>(len);
  for (int64_t t = 0; t < len; ++t) h = mix64(h ^ static_cast<uint32_t>(g[t])) + 0x9e3779b97f4a7c15ULL;
  return h;
}

// `draws` uniform sequences of length len over 0..n−1; the first occurrence of each is kept, in draw order.
void add_sampled_sequences(SequenceSet& set, int64_t n, int64_t len, int64_t draws, Rng& rng) {
  std::vector<int32_t> rows(draws * len);
  for (int32_t& x : rows) x = static_cast<int32_t>(rng.uniform(static_cast<uint64_t>(n)));
  // Open addressing over row indices (−1 = empty), capacity a power of two ≥ 2·draws. The slot loads are
  // cache misses once the table outgrows L2, so the hashes come first and slots are prefetched ahead.
  int64_t capacity = 1;
  while (capacity < 2 * draws) capacity *= 2;
  const uint64_t mask = static_cast<uint64_t>(capacity - 1);
  std::vector<int32_t> slots(capacity, -1);
  std::vector<uint64_t> hashes(draws);
  for (int64_t r = 0; r < draws; ++r) hashes[r] = hash_sequence(&rows[r * len], len);
  constexpr int64_t kPrefetchDistance = 16;
  for (int64_t r = 0; r < draws; ++r) {
    if (r + kPrefetchDistance < draws) __builtin_prefetch(&slots[hashes[r + kPrefetchDistance] & mask]);
    const int32_t* g = &rows[r * len];
    const uint64_t h = hashes[r];
    bool duplicate = false;
    for (uint64_t s = h & mask;; s = (s + 1) & mask) {
      const int32_t other = slots[s];
      if (other < 0) {
        slots[s] = static_cast<int32_t>(r);
        break;
      }
      if (hashes[other] == h && std::equal(g, g + len, &rows[other * len])) {
        duplicate = true;
        break;
      }
    }
    if (!duplicate) set.add(g, len);
  }
}

// Length-`len` sequences of the protocol: all of them in lexicographic order if there are at most
// `samples`, else `samples` uniform draws from Rng(seed, stream, substream) with duplicates removed.
SequenceSet make_sequences(int64_t n, int64_t len, int64_t samples, uint64_t seed, uint64_t stream,
                           uint64_t substream) {
  SequenceSet set;
  const int64_t count = capped_power(n, len, samples);
  set.elements.reserve(std::min(count, samples) * len);
  set.offsets.reserve(std::min(count, samples) + 1);
  if (count <= samples) {
    add_all_sequences(set, n, len, count);
  } else {
    Rng rng(seed, stream, substream);
    add_sampled_sequences(set, n, len, samples, rng);
  }
  return set;
}

// Fisher–Yates shuffle of 0..n−1.
std::vector<int64_t> random_permutation(int64_t n, Rng& rng) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.uniform(static_cast<uint64_t>(i + 1)));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

const TaskConfig& checked(const TaskConfig& cfg) {
  TORCH_CHECK(cfg.min_train_length >= 1 && cfg.train_length >= cfg.min_train_length,
              "word_problem: task.train_length must be ≥ task.min_train_length ≥ 1, got ", cfg.train_length,
              " and ", cfg.min_train_length);
  TORCH_CHECK(cfg.samples_per_length >= 1, "word_problem: task.samples_per_length must be ≥ 1, got ",
              cfg.samples_per_length);
  TORCH_CHECK(cfg.train_fraction > 0 && cfg.train_fraction <= 1,
              "word_problem: task.train_fraction must be in (0, 1], got ", cfg.train_fraction);
  TORCH_CHECK(cfg.eval_min_length >= 1 && cfg.eval_max_length >= cfg.eval_min_length,
              "word_problem: task.eval_max_length must be ≥ task.eval_min_length ≥ 1, got ", cfg.eval_max_length,
              " and ", cfg.eval_min_length);
  TORCH_CHECK(cfg.eval_length_step >= 1, "word_problem: task.eval_length_step must be ≥ 1, got ",
              cfg.eval_length_step);
  TORCH_CHECK(cfg.eval_samples >= 1, "word_problem: task.eval_samples must be ≥ 1, got ", cfg.eval_samples);
  return cfg;
}

// Bounds the stored elements before anything is allocated. Every term is at most 2^28 · 2^28 once the
// sizes are at most 2^28, so nothing overflows.
void check_data_size(const TaskConfig& cfg, int64_t n) {
  const int64_t cap = kMaxStoredElements;
  TORCH_CHECK(cfg.samples_per_length <= cap && cfg.eval_samples <= cap && cfg.train_length <= cap &&
                  cfg.eval_max_length <= cap,
              "word_problem: task.samples_per_length, eval_samples, train_length and eval_max_length must be "
              "at most ", cap);
  int64_t total = std::min(capped_power(n, cfg.eval_max_length, cfg.eval_samples), cfg.eval_samples) *
                  cfg.eval_max_length;
  for (int64_t len = cfg.min_train_length; len <= cfg.train_length && total <= cap; ++len)
    total += std::min(capped_power(n, len, cfg.samples_per_length), cfg.samples_per_length) * len;
  TORCH_CHECK(total <= cap, "word_problem: the data would hold more than ", cap,
              " elements (Σ_L samples_per_length · L + eval_samples · eval_max_length); lower "
              "task.samples_per_length, task.train_length or task.eval_samples");
}

}  // namespace

void SequenceSet::add(const int32_t* g, int64_t len) {
  elements.insert(elements.end(), g, g + len);
  offsets.push_back(static_cast<int64_t>(elements.size()));
}

WordProblem::WordProblem(const TaskConfig& cfg)
    : cfg_(checked(cfg)), group_(Group::from_name(cfg.group)), vocab_{group_.order()} {
  const int64_t n = group_.order();
  const int64_t k = cfg_.train_length;
  check_data_size(cfg_, n);

  for (int64_t len = cfg_.min_train_length; len < k; ++len) {
    const SequenceSet s = make_sequences(n, len, cfg_.samples_per_length, cfg_.seed, kStreamTrainLength, len);
    train_.elements.insert(train_.elements.end(), s.elements.begin(), s.elements.end());
    for (int64_t i = 0; i < s.size(); ++i) train_.offsets.push_back(train_.offsets.back() + len);
  }

  // Length k: a seeded train_fraction to training, the rest to validation, each kept in generation order.
  // n_train = ⌊fraction · count⌋ (as the reference's split), at least 1, and at most count − 1 when
  // fraction < 1 so that validation is never empty unless count = 1.
  const SequenceSet top = make_sequences(n, k, cfg_.samples_per_length, cfg_.seed, kStreamTrainLength, k);
  const int64_t count = top.size();
  // (1 + 1e-12) absorbs rounding such as 0.29 · 100 = 28.999999999999996.
  int64_t n_train =
      static_cast<int64_t>(std::floor(cfg_.train_fraction * static_cast<double>(count) * (1 + 1e-12)));
  if (cfg_.train_fraction < 1 && count >= 2) n_train = std::min(n_train, count - 1);
  n_train = std::clamp<int64_t>(n_train, 1, count);
  Rng split_rng(cfg_.seed, kStreamSplit, static_cast<uint64_t>(k));
  const std::vector<int64_t> perm = random_permutation(count, split_rng);
  std::vector<char> to_train(count, 0);
  for (int64_t i = 0; i < n_train; ++i) to_train[perm[i]] = 1;
  for (int64_t i = 0; i < count; ++i)
    (to_train[i] ? train_ : validation_).add(&top.elements[top.offsets[i]], k);

  test_ = make_sequences(n, cfg_.eval_max_length, cfg_.eval_samples, cfg_.seed, kStreamTest,
                         static_cast<uint64_t>(cfg_.eval_max_length));
}

void WordProblem::prefix_products(const int32_t* g, int64_t len, int32_t* p) const {
  int64_t acc = group_.identity();
  for (int64_t t = 0; t < len; ++t) {
    acc = group_.mul(acc, g[t]);
    p[t] = static_cast<int32_t>(acc);
  }
}

Batch WordProblem::make_batch(const SequenceSet& set, const std::vector<int64_t>& indices, int64_t max_len) const {
  TORCH_CHECK(!indices.empty(), "word_problem: make_batch needs at least one sequence index");
  const int64_t b_size = static_cast<int64_t>(indices.size());
  std::vector<int64_t> lens(b_size);
  int64_t longest = 0;
  for (int64_t b = 0; b < b_size; ++b) {
    const int64_t i = indices[b];
    TORCH_CHECK(i >= 0 && i < set.size(), "word_problem: make_batch index ", i, " is outside 0..", set.size() - 1);
    lens[b] = max_len < 0 ? set.length(i) : std::min(set.length(i), max_len);
    longest = std::max(longest, lens[b]);
  }
  const int64_t t_size = longest + 1;
  Batch batch;
  batch.input_ids = torch::full({b_size, t_size}, vocab_.pad(), torch::kInt64);
  batch.labels = torch::full({b_size, t_size}, vocab_.pad(), torch::kInt64);
  int64_t* in = batch.input_ids.data_ptr<int64_t>();
  int64_t* lab = batch.labels.data_ptr<int64_t>();
  for (int64_t b = 0; b < b_size; ++b) {
    const int32_t* g = &set.elements[set.offsets[indices[b]]];
    int64_t* in_row = in + b * t_size;
    int64_t* lab_row = lab + b * t_size;
    in_row[0] = vocab_.bos();
    lab_row[0] = vocab_.bos();
    int64_t acc = group_.identity();
    for (int64_t t = 0; t < lens[b]; ++t) {
      acc = group_.mul(acc, g[t]);
      in_row[t + 1] = g[t];
      lab_row[t + 1] = acc;
    }
    batch.tokens += lens[b] + 1;
  }
  return batch;
}

std::vector<int64_t> WordProblem::epoch_order(uint64_t seed, int64_t epoch) const {
  TORCH_CHECK(epoch >= 0, "word_problem: epoch must be ≥ 0, got ", epoch);
  Rng rng(seed, kStreamEpoch, static_cast<uint64_t>(epoch));
  return random_permutation(train_.size(), rng);
}

}  // namespace fprnn::tasks
