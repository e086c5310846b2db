// Training runs on word problems, copying and the formal-language tasks: AdamW with no-decay groups,
// warmup + cosine schedule, gradient clipping, randomised fixed-point caps, periodic validation and
// checkpoints, bit-exact resume, final length sweep.
#include "fprnn/train/trainer.h"

#include "fprnn/common.h"
#include "fprnn/io/safetensors.h"
#include "fprnn/ops/cuda_graph.h"
#include "fprnn/solver/fixed_point.h"
#include "fprnn/train/checkpoint.h"
#include "fprnn/train/distributed.h"
#include "fprnn/train/plot.h"
#include "fprnn/train/schedule.h"

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <unistd.h>

namespace fprnn::train {
namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_sigint(int) { g_interrupted = 1; }

// Installs the SIGINT handler for the lifetime of a training loop: the first Ctrl-C finishes the
// current step, writes a checkpoint and returns; the previous handler is restored afterwards.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted = 0;
    previous_ = std::signal(SIGINT, on_sigint);
  }
  ~InterruptGuard() { std::signal(SIGINT, previous_); }

 private:
  void (*previous_)(int);
};

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>((s % 3600) / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%llds", static_cast<long long>(s));
  return buf;
}

// Progress on one updating line on a terminal, plain lines otherwise.
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(::isatty(::fileno(stderr)) != 0) {}
  void update(const std::string& line) {
    if (quiet_) return;
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      dirty_ = true;
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }
  void message(const std::string& line) {
    if (quiet_) return;
    if (dirty_) std::fprintf(stderr, "\n");
    dirty_ = false;
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }
  ~Progress() {
    if (dirty_) std::fprintf(stderr, "\n");
  }

 private:
  bool quiet_, tty_, dirty_ = false;
};

std::string json_line(const Json& j) { return j.dump() + "\n"; }

// Keeps the metrics lines of steps ≤ `step` (a resumed run rewrites what came after its checkpoint).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in.good()) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      if (Json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const std::exception&) {
      // a torn last line from an interrupted run: drop it
    }
  }
  io::write_file_atomic(path, kept);
}

Json iters_json(const std::vector<double>& v) { return Json(v); }

// The data of a run. Word problems: a fixed training set visited in seeded epochs, validation = the
// held-out share of length k, labels right-padded with PAD (counted in the loss unless
// task.loss_on_padding = false, spec §12.1). Copy and formal-language tasks: fresh samples every step
// (spec §12.2, §12.3), labels kIgnoreLabel wherever the reference's loss mask is 0.
class RunData {
 public:
  explicit RunData(const RunConfig& cfg) : cfg_(cfg) {
    if (cfg.task.name == "word_problem") {
      wp_.emplace(cfg.task);
      TORCH_CHECK(wp_->train().size() > 0, "train: the training set is empty (check task.train_length)");
    } else {
      seq_.emplace(cfg.task);
    }
  }

  int64_t vocab_size() const { return wp_ ? wp_->vocab().size() : seq_->vocab_size(); }
  // The label that the loss and the metrics skip, and whether word-problem padding counts anyway.
  int64_t skip_label() const { return wp_ ? wp_->vocab().pad() : tasks::kIgnoreLabel; }
  bool count_skipped() const { return wp_ ? cfg_.task.loss_on_padding : false; }

  std::string describe() const {
    std::ostringstream os;
    const TaskConfig& t = cfg_.task;
    if (wp_) {
      os << "data: " << t.group << " (order " << wp_->group().order() << "), " << wp_->train().size() << " training / "
         << wp_->validation().size() << " validation / " << wp_->test().size() << " test sequences";
    } else {
      os << "data: " << t.name << " (vocabulary " << seq_->vocab_size() << "), fresh training samples of lengths "
         << t.min_train_length << ".." << t.train_length << " every step; validation " << t.val_samples
         << " samples of lengths " << t.val_min_length << ".." << t.val_max_length << "; test " << t.eval_samples
         << " samples per length " << t.eval_min_length << ".." << t.eval_max_length;
    }
    return os.str();
  }

  tasks::Batch train_batch(int64_t step) {
    const int64_t B = cfg_.train.batch_size;
    if (seq_) return seq_->train_batch(step, B);
    const int64_t N = wp_->train().size();
    const int64_t batches_per_epoch = std::max<int64_t>(1, N / B);
    const int64_t epoch = step / batches_per_epoch;
    if (epoch != order_epoch_) {
      order_ = wp_->epoch_order(cfg_.train.seed, epoch);
      order_epoch_ = epoch;
    }
    const int64_t j = step % batches_per_epoch;
    std::vector<int64_t> idx(order_.begin() + j * std::min(B, N), order_.begin() + std::min(N, (j + 1) * B));
    return wp_->make_batch(wp_->train(), idx);
  }

  bool has_validation() const { return seq_ || wp_->validation().size() > 0; }

  EvalResult validate(nn::FPLMImpl& model) const {
    if (seq_) return evaluate_validation(model, *seq_, cfg_.task, cfg_.train.eval_batch_size);
    EvalResult v = evaluate(model, *wp_, wp_->validation(), -1, cfg_.train.eval_batch_size, cfg_.task.loss_on_padding);
    v.length = cfg_.task.train_length;
    return v;
  }
  std::string validation_lengths() const {
    if (wp_) return "length " + std::to_string(cfg_.task.train_length);
    return "lengths " + std::to_string(cfg_.task.val_min_length) + ".." + std::to_string(cfg_.task.val_max_length);
  }

  std::string sweep_description() const {
    return wp_ ? std::to_string(wp_->test().size()) + " sequences"
               : std::to_string(cfg_.task.eval_samples) + " samples per length";
  }
  std::vector<EvalResult> sweep(nn::FPLMImpl& model, const std::function<void(const EvalResult&)>& progress) const {
    if (wp_) return evaluate_lengths(model, *wp_, cfg_.task, cfg_.train.eval_batch_size, progress);
    return evaluate_lengths(model, *seq_, cfg_.task, cfg_.train.eval_batch_size, progress);
  }
  // Chance level per scored token (generated tasks; < 0 for word problems).
  double chance() const { return seq_ ? seq_->chance() : -1.0; }

 private:
  const RunConfig& cfg_;
  std::optional<tasks::WordProblem> wp_;
  std::optional<tasks::SequenceTask> seq_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

}  // namespace

void apply_threads(const TrainConfig& cfg) {
  if (cfg.threads > 0) torch::set_num_threads(static_cast<int>(cfg.threads));
}

torch::Device run_device(const TrainConfig& cfg) {
  if (cfg.device == "cpu") return torch::kCPU;
  TORCH_CHECK(cfg.device == "cuda", "train.device must be cpu or cuda, got '", cfg.device, "'");
  TORCH_CHECK(torch::cuda::is_available(),
              "train.device=cuda but no CUDA device is available (or this LibTorch has no CUDA); use train.device=cpu");
  return torch::kCUDA;
}

nn::FPLM build_model(const RunConfig& cfg, int64_t vocab_size) {
  const torch::Device device = run_device(cfg.train);
  torch::manual_seed(cfg.train.seed);
  nn::FPLM model(cfg.model, cfg.solver, vocab_size);
  const auto dtype = parse_dtype(cfg.train.dtype);
  model->compute_dtype = dtype;
  if (dtype == torch::kFloat64) model->to(torch::kFloat64);
  model->to(device);
  return model;
}

std::vector<std::string> write_sweep(const std::string& dir, const std::vector<EvalResult>& sweep,
                                     const RunConfig& cfg, const std::string& title) {
  io::write_file_atomic(dir + "/eval.csv", eval_csv(sweep));
  io::write_file_atomic(dir + "/eval_table.txt", eval_table(sweep) + convergence_note(sweep, cfg.solver.eval_max_iter));
  Series s;
  s.name = title;
  for (const auto& r : sweep) {
    s.length.push_back(static_cast<double>(r.length));
    s.accuracy.push_back(r.sequence_accuracy);
    s.iterations.push_back(r.iters_mean.empty() ? 0.0 : r.iters_mean[0]);
  }
  const std::string task = cfg.task.name == "word_problem" ? cfg.task.group : cfg.task.name;
  return plot_length_curves(dir + "/eval", {s}, static_cast<double>(cfg.task.train_length),
                            task + ": accuracy and iterations by length");
}

TrainSummary run_training(const RunConfig& cfg, const TrainOptions& opts) {
  validate(cfg);
  TORCH_CHECK(!opts.out_dir.empty(), "train: --out DIR is required");
  apply_threads(cfg.train);
  // Data parallelism (RANK/WORLD_SIZE set by `fprnn launch` or torchrun): every rank trains on its share
  // of the global batch; rank 0 alone writes the run directory and evaluates.
  const DistEnv dist = DistEnv::from_environment();
  const bool lead = dist.rank == 0;
  TORCH_CHECK(cfg.train.batch_size % dist.world == 0, "train: train.batch_size=", cfg.train.batch_size,
              " does not split over ", dist.world, " processes; use a multiple of ", dist.world);
  if (dist.active() && cfg.train.device == "cuda") {
    (void)run_device(cfg.train);
    TORCH_CHECK(dist.local_rank < static_cast<int>(torch::cuda::device_count()), "train: LOCAL_RANK=",
                dist.local_rank, " but this machine has ", torch::cuda::device_count(), " GPU(s)");
    set_current_cuda_device(dist.local_rank);
  }
  const std::string out = opts.out_dir;
  const std::string ckpt_dir = out + "/checkpoints";
  const std::string last_ckpt = ckpt_dir + "/last.safetensors";
  const std::string metrics_path = out + "/metrics.jsonl";
  if (opts.resume) {
    TORCH_CHECK(fs::exists(last_ckpt), "train: nothing to resume in ", out, " (no checkpoints/last.safetensors)");
  } else if (lead) {
    TORCH_CHECK(!fs::exists(out + "/config.json"), "train: ", out,
                " already holds a run; pass --resume to continue it, or choose another --out");
  }
  Progress progress(opts.quiet || !lead);
  const auto t_data = std::chrono::steady_clock::now();
  RunData data(cfg);
  const double data_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_data).count();
  {
    std::ostringstream os;
    os << data.describe();
    if (cfg.task.name == "word_problem")
      os << ", generated in " << std::fixed << std::setprecision(2) << data_seconds << " s";
    progress.message(os.str());
  }

  nn::FPLM model = build_model(cfg, data.vocab_size());
  {
    std::ostringstream os;
    os << "model: " << cfg.model.n_layers << " × " << cfg.model.layer.layer << "(d_model " << cfg.model.layer.d_model
       << ", " << cfg.model.layer.mixer_type << " r=" << cfg.model.layer.mixer_rank << "), "
       << numel(model->parameters()) << " parameters, compute " << cfg.train.dtype;
    progress.message(os.str());
  }
  std::unique_ptr<ProcessGroup> group;
  if (dist.active()) {
    const torch::Device device = model->parameters().front().device();
    group = std::make_unique<ProcessGroup>(dist, device);
    group->broadcast(model->parameters());  // one starting point, whatever each rank's RNG did
    std::ostringstream os;
    os << "data parallel: " << dist.world << " processes (" << group->backend() << "), "
       << cfg.train.batch_size / dist.world << " sequences per process and step";
    progress.message(os.str());
  }

  // Only now, with the config, data and model known to be good, does anything reach the disk.
  if (lead) {
    fs::create_directories(ckpt_dir);
    if (!opts.resume) io::write_file_atomic(out + "/config.json", to_json(cfg).dump(2) + "\n");
  }

  // AdamW with the reference's groups: no decay for biases and norms.
  const auto [decay_names, no_decay_names] = model->decay_groups();
  auto params = model->named_parameters();
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& n : decay_names) decay.push_back(params[n]);
  for (const auto& n : no_decay_names) no_decay.push_back(params[n]);
  auto adam = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(cfg.train.lr)
                                                            .betas({cfg.train.beta1, cfg.train.beta2})
                                                            .eps(cfg.train.adam_eps)
                                                            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, adam(cfg.train.weight_decay));
  groups.emplace_back(no_decay, adam(0.0));
  torch::optim::AdamW optimizer(groups);

  int64_t step = 0;
  Json extra = Json::object();
  if (opts.resume) {
    const CheckpointInfo info = load_checkpoint(last_ckpt, *model, &optimizer);
    TORCH_CHECK(to_json(info.config) == to_json(cfg), "train: ", out,
                " was started with a different config; resume it without changing the config");
    step = info.step;
    extra = info.extra;
    if (lead) truncate_metrics(metrics_path, step);
    progress.message("resumed from step " + std::to_string(step));
  } else if (lead) {
    io::write_file_atomic(metrics_path, "");
  }
  // Other ranks leave the stream closed; they never log (every write below is behind `lead`).
  std::ofstream metrics;
  if (lead) {
    metrics.open(metrics_path, std::ios::app);
    TORCH_CHECK(metrics.good(), metrics_path, ": cannot open for writing");
  }

  const int64_t target = opts.stop_after >= 0 ? std::min(cfg.train.steps, opts.stop_after) : cfg.train.steps;
  const bool randomised_cap = cfg.solver.max_iter < 0;
  const int64_t skip_label = data.skip_label();
  const bool count_skipped = data.count_skipped();
  const int64_t n_layers = cfg.model.n_layers;

  TORCH_CHECK(!(cfg.train.cuda_graph && dist.active()),
              "train: train.cuda_graph is not available with data parallelism (fprnn launch)");
  // train.cuda_graph: the first step's forward, loss and backward recorded once, replayed for every batch of
  // the same shape. The recorded work reads the batch from `ids`/`labels` and writes `logits`, `loss` and the
  // gradient tensors `grads`, which every replay makes the parameters' .grad again (an eager step of another
  // shape gets fresh ones).
  struct RecordedStep {
    ops::CudaGraph graph;
    torch::Tensor ids, labels, logits, loss;
    std::vector<torch::Tensor> grads;
  };
  std::unique_ptr<RecordedStep> recorded;
  bool warned_shape = false;
  const auto shape_string = [](c10::IntArrayRef sizes) {
    std::ostringstream os;
    os << sizes;
    return os.str();
  };

  TrainSummary summary;
  BatchScore window;
  std::vector<double> window_iters(static_cast<size_t>(n_layers), 0.0);
  int64_t window_steps = 0, window_tokens = 0;
  double window_grad = 0;
  auto t_start = std::chrono::steady_clock::now();
  auto t_window = t_start;
  int64_t run_tokens = 0;
  const int64_t first_step = step;
  // Training seconds of the legs before a --resume: metrics' elapsed_s and summary.json's train_seconds count
  // the whole run, not only the last leg.
  const double earlier_seconds = extra.value("train_seconds", 0.0);
  auto leg_seconds = [&]() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  };

  auto save = [&](const std::string& path) {
    if (!lead) return;
    extra["train_seconds"] = earlier_seconds + leg_seconds();
    CheckpointInfo info{cfg, step, extra};
    save_checkpoint(path, *model, &optimizer, info);
  };
  auto validate_now = [&]() {
    if (!data.has_validation()) return;
    const EvalResult v = data.validate(*model);
    metrics << json_line({{"step", step},
                          {"split", "val"},
                          {"loss", v.loss},
                          {"token_acc", v.token_accuracy},
                          {"seq_acc", v.sequence_accuracy},
                          {"iters", iters_json(v.iters_mean)}});
    metrics.flush();
    const double best = extra.value("best_val_seq_acc", -1.0);
    if (v.sequence_accuracy > best) extra["best_val_seq_acc"] = v.sequence_accuracy;
    char buf[200];
    std::snprintf(buf, sizeof(buf), "step %lld validation (%s): loss %.4f, token acc %.2f %%, seq acc %.2f %%, iters %.1f",
                  static_cast<long long>(step), data.validation_lengths().c_str(), v.loss,
                  100 * v.token_accuracy, 100 * v.sequence_accuracy, v.iters_mean.empty() ? 0.0 : v.iters_mean[0]);
    progress.message(buf);
    summary.validation = {v};
  };

  {
    InterruptGuard guard;
    model->train();
    // Whether to stop after this step: the signal flag, or (data parallel) any rank's flag as the
    // collective reported it, so that every rank leaves the loop after the same step.
    bool stop = false;
    while (step < target && !stop) {
      tasks::Batch batch = data.train_batch(step);
      // The loss is a mean over the global batch's counted positions, so that the all-reduced sum of the
      // ranks' gradients is the gradient of the combined batch.
      double counted = 0;
      if (dist.active()) {
        counted = count_skipped ? static_cast<double>(batch.labels.numel())
                                : batch.labels.ne(skip_label).sum().item<double>();
        const int64_t rows = batch.input_ids.size(0) / dist.world;
        batch.input_ids = batch.input_ids.narrow(0, dist.rank * rows, rows);
        batch.labels = batch.labels.narrow(0, dist.rank * rows, rows);
      }

      if (randomised_cap)
        for (int64_t l = 0; l < n_layers; ++l)
          model->set_max_iter(static_cast<size_t>(l),
                              solver::random_max_iter(cfg.train.seed, step, l, cfg.task.train_length));

      const double lr = learning_rate(cfg.train, step);
      for (auto& g : optimizer.param_groups()) g.options().set_lr(lr);

      auto ce = torch::nn::functional::CrossEntropyFuncOptions();
      // The masked loss: mean over the positions the reference trains on.
      if (!count_skipped) ce.ignore_index(skip_label);
      if (dist.active()) ce.reduction(torch::kSum);
      // labels_dev: on the model's device.
      const auto forward_backward = [&](const torch::Tensor& ids, const torch::Tensor& labels_dev,
                                        torch::Tensor& logits_out, torch::Tensor& loss_out) {
        logits_out = model->forward(ids);
        loss_out = torch::nn::functional::cross_entropy(logits_out.reshape({-1, logits_out.size(-1)}),
                                                        labels_dev.reshape({-1}), ce);
        if (dist.active()) loss_out = loss_out / std::max(counted, 1.0);
        loss_out.backward();
      };
      const torch::Device device = model->parameters().front().device();
      torch::Tensor logits, loss, labels;
      if (cfg.train.cuda_graph && !recorded) {
        recorded = std::make_unique<RecordedStep>();
        recorded->ids = batch.input_ids.to(device).clone();
        recorded->labels = batch.labels.to(device).clone();
        RecordedStep& rs = *recorded;
        rs.graph.capture([&] { forward_backward(rs.ids, rs.labels, rs.logits, rs.loss); }, 2,
                         [&] { optimizer.zero_grad(/*set_to_none=*/true); });
        for (auto& p : model->parameters()) {
          if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // unused by the loss
          rs.grads.push_back(p.grad());
        }
        progress.message("train.cuda_graph: recorded the training step for batches of shape " +
                         shape_string(rs.ids.sizes()));
      }
      if (recorded && batch.input_ids.sizes() == recorded->ids.sizes()) {
        recorded->ids.copy_(batch.input_ids);
        recorded->labels.copy_(batch.labels);
        recorded->graph.replay();
        model->graph_replayed();
        // An eager step (another shape) may have replaced .grad by a new tensor: point it back.
        auto ps = model->parameters();
        for (size_t i = 0; i < ps.size(); ++i) ps[i].mutable_grad() = recorded->grads[i];
        logits = recorded->logits;
        loss = recorded->loss;
        labels = recorded->labels;
      } else {
        if (recorded) {
          if (!warned_shape)
            progress.message("train.cuda_graph: a batch of shape " + shape_string(batch.input_ids.sizes()) +
                             " differs from the recorded " + shape_string(recorded->ids.sizes()) +
                             "; such steps run eagerly");
          warned_shape = true;
        }
        optimizer.zero_grad();  // fresh .grad tensors; a later replay points .grad back to the recorded ones
        labels = batch.labels.to(device);
        forward_backward(batch.input_ids, labels, logits, loss);
      }
      BatchScore score = score_batch(logits.detach(), labels, skip_label, count_skipped);
      double loss_value = 0;
      if (dist.active()) {
        // One collective for the gradients, the loss, the batch's score and whether any rank was
        // interrupted (so that all ranks stop after the same step).
        std::vector<torch::Tensor> parts;
        for (auto& p : model->parameters()) {
          if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
          parts.push_back(p.grad());
        }
        const auto f64 = torch::dtype(torch::kFloat64).device(loss.device());
        const torch::Tensor counts =
            torch::tensor({g_interrupted ? 1.0 : 0.0, score.loss_sum, double(score.positions),
                           double(score.correct_positions), double(score.sequences), double(score.correct_sequences)},
                          f64);
        const torch::Tensor extra_vals = torch::cat({loss.detach().to(torch::kFloat64).reshape({1}), counts});
        parts.push_back(extra_vals);
        group->all_reduce_sum(parts);
        const auto v = extra_vals.cpu();
        const auto at = [&](int i) { return v[i].item<double>(); };
        loss_value = at(0);
        stop = at(1) > 0;
        score.loss_sum = at(2);
        score.positions = std::llround(at(3));
        score.correct_positions = std::llround(at(4));
        score.sequences = std::llround(at(5));
        score.correct_sequences = std::llround(at(6));
      } else {
        loss_value = loss.item<double>();
        stop = g_interrupted != 0;
      }
      TORCH_CHECK(std::isfinite(loss_value), "training diverged: the loss is ", loss_value, " at step ", step,
                  " (the last good checkpoint is ", last_ckpt, "); lower train.lr or raise train.grad_clip");
      double grad_norm = 0;
      if (cfg.train.grad_clip > 0) {
        grad_norm = torch::nn::utils::clip_grad_norm_(model->parameters(), cfg.train.grad_clip);
      }
      optimizer.step();
      ++step;

      window.add(score);
      const auto stats = model->last_stats();
      for (int64_t l = 0; l < n_layers; ++l) window_iters[l] += static_cast<double>(stats[l].recorded());
      ++window_steps;
      window_tokens += batch.tokens;
      run_tokens += batch.tokens;
      window_grad += grad_norm;
      summary.final_loss = loss_value;

      if (lead && (step % cfg.train.log_every == 0 || step == target)) {
        const auto now = std::chrono::steady_clock::now();
        const double dt = std::chrono::duration<double>(now - t_window).count();
        const double elapsed = std::chrono::duration<double>(now - t_start).count();  // this leg
        const double tok_s = dt > 0 ? window_tokens / dt : 0.0;
        std::vector<double> iters(window_iters);
        for (auto& v : iters) v /= static_cast<double>(window_steps);
        metrics << json_line({{"step", step},
                              {"split", "train"},
                              {"loss", window.loss()},
                              {"token_acc", window.token_accuracy()},
                              {"seq_acc", window.sequence_accuracy()},
                              {"lr", lr},
                              {"grad_norm", window_grad / window_steps},
                              {"iters", iters_json(iters)},
                              {"tokens_per_s", tok_s},
                              {"elapsed_s", earlier_seconds + elapsed}});
        metrics.flush();
        const double eta = (step > first_step) ? elapsed / (step - first_step) * (target - step) : 0.0;
        char buf[256];
        std::snprintf(buf, sizeof(buf),
                      "step %lld/%lld | loss %.4f | acc %.2f %% | seq %.2f %% | iters %.1f | %.1fk tok/s | ETA %s",
                      static_cast<long long>(step), static_cast<long long>(cfg.train.steps), window.loss(),
                      100 * window.token_accuracy(), 100 * window.sequence_accuracy(), iters.empty() ? 0.0 : iters[0],
                      tok_s / 1000.0, format_duration(eta).c_str());
        progress.update(buf);
        window = BatchScore{};
        std::fill(window_iters.begin(), window_iters.end(), 0.0);
        window_steps = 0;
        window_tokens = 0;
        window_grad = 0;
        t_window = now;
      }
      if (lead && cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0 && step < cfg.train.steps) {
        validate_now();
        model->train();
      }
      if (cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0) save(last_ckpt);
    }
  }
  const double seconds = leg_seconds();
  summary.steps_done = step;
  summary.seconds = earlier_seconds + seconds;
  summary.tokens_per_second = seconds > 0 ? run_tokens / seconds : 0.0;  // the rate of this leg
  summary.finished = step >= cfg.train.steps;
  save(last_ckpt);
  // Everything after the loop (final checkpoint, validation, the length sweep, summary.json) is rank 0's.
  if (!lead) return summary;
  if (!summary.finished) {
    progress.message(std::string(g_interrupted ? "interrupted" : "stopped") + " at step " + std::to_string(step) +
                     "; continue with --resume (checkpoint " + last_ckpt + ")");
    return summary;
  }

  validate_now();
  save_checkpoint(out + "/model.safetensors", *model, nullptr, CheckpointInfo{cfg, step, extra});
  if (!opts.skip_final_eval) {
    progress.message("evaluating lengths " + std::to_string(cfg.task.eval_min_length) + ".." +
                     std::to_string(cfg.task.eval_max_length) + " on " + data.sweep_description() +
                     " (eval cap " + std::to_string(cfg.solver.eval_max_iter) + " iterations)");
    summary.lengths = data.sweep(*model, [&](const EvalResult& r) {
      char buf[160];
      std::snprintf(buf, sizeof(buf), "  length %3lld: seq acc %6.2f %%, iters %.1f (%.1f s)",
                    static_cast<long long>(r.length), 100 * r.sequence_accuracy,
                    r.iters_mean.empty() ? 0.0 : r.iters_mean[0], r.seconds);
      progress.update(buf);
    });
    write_sweep(out, summary.lengths, cfg, cfg.model.layer.mixer_type + " (" + out + ")");
  }
  Json s = {{"steps", step},
            {"train_seconds", summary.seconds},
            {"tokens_per_second", summary.tokens_per_second},
            {"final_train_loss", summary.final_loss},
            {"parameters", numel(model->parameters())}};
  if (!summary.validation.empty())
    s["validation"] = {{"seq_acc", summary.validation[0].sequence_accuracy},
                       {"token_acc", summary.validation[0].token_accuracy},
                       {"loss", summary.validation[0].loss}};
  // Generated tasks also get the chance level and the chance-normalised accuracy (acc − c)/(1 − c) that the
  // reference's eval_chomsky.py reports for the formal-language tasks.
  const double chance = data.chance();
  if (chance >= 0) s["chance_token_acc"] = chance;
  Json sweep = Json::array();
  for (const auto& r : summary.lengths) {
    Json e = {{"length", r.length}, {"seq_acc", r.sequence_accuracy}, {"iters", iters_json(r.iters_mean)}};
    if (chance >= 0 && chance < 1) e["normalised_acc"] = (r.sequence_accuracy - chance) / (1 - chance);
    sweep.push_back(e);
  }
  s["lengths"] = sweep;
  if (!summary.lengths.empty()) s["unconverged_lengths"] = unconverged_lengths(summary.lengths);
  io::write_file_atomic(out + "/summary.json", s.dump(2) + "\n");
  return summary;
}

}  // namespace fprnn::train
