// Word-problem scoring: per-batch metrics, evaluation of a set, the prefix-length sweep, CSV and table.
#include "fprnn/train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <sstream>

namespace fprnn::train {

void BatchScore::add(const BatchScore& o) {
  loss_sum += o.loss_sum;
  positions += o.positions;
  correct_positions += o.correct_positions;
  sequences += o.sequences;
  correct_sequences += o.correct_sequences;
}

BatchScore score_batch(const torch::Tensor& logits, const torch::Tensor& labels, int64_t pad, bool count_padding) {
  torch::NoGradGuard no_grad;
  const int64_t B = labels.size(0), T = labels.size(1);
  const torch::Tensor lf = logits.to(torch::kFloat32).reshape({B * T, -1});
  const torch::Tensor lab = labels.to(logits.device()).reshape({-1});
  const torch::Tensor mask = count_padding ? torch::ones_like(lab, torch::kBool) : lab.ne(pad);
  // Skipped positions get loss 0 through ignore_index (a label of −1 would otherwise be out of range);
  // they are masked out of every sum below anyway.
  const torch::Tensor ce = torch::nn::functional::cross_entropy(
      lf, lab,
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(count_padding ? -100 : pad));
  const torch::Tensor correct = lf.argmax(-1).eq(lab);
  BatchScore s;
  s.loss_sum = ce.masked_select(mask).sum().to(torch::kFloat64).item<double>();
  s.positions = mask.sum().item<int64_t>();
  s.correct_positions = (correct & mask).sum().item<int64_t>();
  const torch::Tensor wrong = (~correct & mask).view({B, T}).any(1);
  s.sequences = B;
  s.correct_sequences = B - wrong.sum().item<int64_t>();
  return s;
}

namespace {

// Scores `count` samples in eval mode, batch by batch from make_batch(first, n); labels equal to
// `skip_label` are not scored unless count_padding.
EvalResult score_samples(nn::FPLMImpl& model, const std::function<tasks::Batch(int64_t, int64_t)>& make_batch,
                         int64_t count, int64_t batch_size, int64_t length, int64_t skip_label, bool count_padding) {
  TORCH_CHECK(batch_size > 0, "evaluate: batch_size must be positive");
  TORCH_CHECK(count > 0, "evaluate: no samples to evaluate");
  const auto start = std::chrono::steady_clock::now();
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  EvalResult r;
  r.length = length;
  const size_t L = model.layers.size();
  r.iters_mean.assign(L, 0.0);
  r.iters_max.assign(L, 0.0);
  int64_t batches = 0;
  BatchScore total;
  for (int64_t first = 0; first < count; first += batch_size) {
    const tasks::Batch batch = make_batch(first, std::min(batch_size, count - first));
    const torch::Tensor logits = model.forward(batch.input_ids);
    total.add(score_batch(logits, batch.labels, skip_label, count_padding));
    const auto stats = model.last_stats();
    bool converged = true;
    for (size_t l = 0; l < L; ++l) {
      const double it = static_cast<double>(stats[l].recorded());
      r.iters_mean[l] += it;
      r.iters_max[l] = std::max(r.iters_max[l], it);
      converged = converged && stats[l].converged;
    }
    if (!converged) ++r.unconverged_batches;
    ++batches;
  }
  for (auto& v : r.iters_mean) v /= static_cast<double>(batches);
  r.batches = batches;
  r.sequences = total.sequences;
  r.sequence_accuracy = total.sequence_accuracy();
  r.token_accuracy = total.token_accuracy();
  r.loss = total.loss();
  if (was_training) model.train();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace

EvalResult evaluate(nn::FPLMImpl& model, const tasks::WordProblem& task, const tasks::SequenceSet& set,
                    int64_t max_len, int64_t batch_size, bool count_padding) {
  TORCH_CHECK(set.size() > 0, "evaluate: empty sequence set");
  auto make = [&](int64_t first, int64_t n) {
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = first + i;
    return task.make_batch(set, idx, max_len);
  };
  return score_samples(model, make, set.size(), batch_size, max_len, task.vocab().pad(), count_padding);
}

std::vector<EvalResult> evaluate_lengths(nn::FPLMImpl& model, const tasks::WordProblem& task, const TaskConfig& cfg,
                                         int64_t batch_size, const std::function<void(const EvalResult&)>& progress) {
  std::vector<EvalResult> out;
  for (int64_t len = cfg.eval_min_length; len <= cfg.eval_max_length; len += cfg.eval_length_step) {
    out.push_back(evaluate(model, task, task.test(), len, batch_size, cfg.loss_on_padding));
    if (progress) progress(out.back());
  }
  return out;
}

EvalResult evaluate_samples(nn::FPLMImpl& model, const std::function<tasks::Batch(int64_t, int64_t)>& make_batch,
                            int64_t count, int64_t batch_size, int64_t length) {
  return score_samples(model, make_batch, count, batch_size, length, tasks::kIgnoreLabel, false);
}

EvalResult evaluate_validation(nn::FPLMImpl& model, const tasks::SequenceTask& task, const TaskConfig& cfg,
                               int64_t batch_size) {
  return evaluate_samples(
      model, [&](int64_t first, int64_t n) { return task.validation_batch(first, n); }, cfg.val_samples, batch_size,
      cfg.val_max_length);
}

std::vector<EvalResult> evaluate_lengths(nn::FPLMImpl& model, const tasks::SequenceTask& task, const TaskConfig& cfg,
                                         int64_t batch_size, const std::function<void(const EvalResult&)>& progress) {
  std::vector<EvalResult> out;
  for (int64_t len : task.eval_lengths()) {
    out.push_back(evaluate_samples(
        model, [&](int64_t first, int64_t n) { return task.test_batch(len, first, n); }, cfg.eval_samples, batch_size,
        len));
    if (progress) progress(out.back());
  }
  return out;
}

std::string eval_csv(const std::vector<EvalResult>& results) {
  std::ostringstream os;
  os << "length,sequences,sequence_accuracy,token_accuracy,loss";
  const size_t L = results.empty() ? 0 : results.front().iters_mean.size();
  for (size_t l = 0; l < L; ++l) os << ",iters_mean_layer" << l << ",iters_max_layer" << l;
  os << "\n" << std::setprecision(10);
  for (const auto& r : results) {
    os << r.length << "," << r.sequences << "," << r.sequence_accuracy << "," << r.token_accuracy << "," << r.loss;
    for (size_t l = 0; l < L; ++l) os << "," << r.iters_mean[l] << "," << r.iters_max[l];
    os << "\n";
  }
  return os.str();
}

std::vector<EvalResult> parse_eval_csv(const std::string& text, const std::string& source) {
  std::istringstream in(text);
  std::string line;
  TORCH_CHECK(std::getline(in, line) && line.rfind("length,sequences,sequence_accuracy", 0) == 0, source,
              ": not an fprnn eval.csv (bad header)");
  size_t columns = 1;
  for (char c : line) columns += (c == ',');
  TORCH_CHECK(columns >= 5 && (columns - 5) % 2 == 0, source, ": malformed header");
  const size_t L = (columns - 5) / 2;
  std::vector<EvalResult> out;
  int64_t row = 1;
  while (std::getline(in, line)) {
    ++row;
    if (line.empty()) continue;
    std::vector<double> v;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) {
      try {
        v.push_back(std::stod(cell));
      } catch (const std::exception&) {
        TORCH_CHECK(false, source, ": line ", row, ": '", cell, "' is not a number");
      }
    }
    TORCH_CHECK(v.size() == columns, source, ": line ", row, " has ", v.size(), " columns, expected ", columns);
    EvalResult r;
    r.length = static_cast<int64_t>(v[0]);
    r.sequences = static_cast<int64_t>(v[1]);
    r.sequence_accuracy = v[2];
    r.token_accuracy = v[3];
    r.loss = v[4];
    for (size_t l = 0; l < L; ++l) {
      r.iters_mean.push_back(v[5 + 2 * l]);
      r.iters_max.push_back(v[6 + 2 * l]);
    }
    out.push_back(r);
  }
  return out;
}

std::string eval_table(const std::vector<EvalResult>& results) {
  std::ostringstream os;
  os << "  length   seq acc   token acc     loss   iters (mean/max per layer)\n";
  char buf[160];
  for (const auto& r : results) {
    std::snprintf(buf, sizeof(buf), "  %6lld   %6.1f %%   %7.1f %%   %6.3f   ", static_cast<long long>(r.length),
                  100 * r.sequence_accuracy, 100 * r.token_accuracy, r.loss);
    os << buf;
    for (size_t l = 0; l < r.iters_mean.size(); ++l) {
      std::snprintf(buf, sizeof(buf), "%s%.1f/%.0f", l ? ", " : "", r.iters_mean[l], r.iters_max[l]);
      os << buf;
    }
    os << "\n";
  }
  return os.str();
}

std::vector<int64_t> unconverged_lengths(const std::vector<EvalResult>& results) {
  std::vector<int64_t> out;
  for (const auto& r : results)
    if (r.unconverged_batches > 0) out.push_back(r.length);
  return out;
}

std::string convergence_note(const std::vector<EvalResult>& results, int64_t eval_max_iter) {
  const std::vector<int64_t> lengths = unconverged_lengths(results);
  if (lengths.empty()) return "";
  std::ostringstream os;
  os << "note: the fixed point did not converge within " << eval_max_iter
     << " iterations (solver.eval_max_iter) in some evaluation batches at length" << (lengths.size() > 1 ? "s " : " ");
  for (size_t i = 0; i < lengths.size(); ++i) os << (i ? ", " : "") << lengths[i];
  os << "; their samples are scored from the last iterate\n";
  return os.str();
}

}  // namespace fprnn::train
