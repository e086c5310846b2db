// `fprnn eval`: score a trained model over a range of sequence lengths.
#include "commands.h"

#include "fprnn/io/safetensors.h"
#include "fprnn/tasks/sequence_task.h"
#include "fprnn/tasks/word_problem.h"
#include "fprnn/train/checkpoint.h"
#include "fprnn/train/evaluate.h"
#include "fprnn/train/trainer.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

namespace fprnn::cli {

void add_eval(CLI::App& app) {
  struct Args {
    std::string checkpoint, out, lengths, solver;
    std::vector<std::string> overrides;
    int64_t samples = 0, batch_size = 0, max_iter = 0;
    bool quiet = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate a checkpoint by sequence length; writes eval.csv and a plot.");
  cmd->add_option("--checkpoint,-k", args->checkpoint, "model.safetensors or a checkpoint from a run")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out,-o", args->out, "Folder for eval.csv, eval_table.txt and the plot (default: <run>/eval_cli)");
  cmd->add_option("--lengths", args->lengths, "MIN:MAX[:STEP] sequence lengths (default: the run's task.eval_*)");
  cmd->add_option("--samples", args->samples,
                  "Test sequences (word problems: in all; other tasks: per length; default: the run's task.eval_samples)");
  cmd->add_option("--solver", args->solver, "picard (iterate F) or sequential (exact dense oracle)")
      ->check(CLI::IsMember({"picard", "sequential"}));
  cmd->add_option("--max-iter", args->max_iter, "Evaluation iteration cap (default: the run's solver.eval_max_iter)");
  cmd->add_option("--batch-size", args->batch_size, "Sequences per batch (default: train.eval_batch_size)");
  cmd->add_option("overrides", args->overrides, "key=value overrides of solver.* and task.eval_* keys");
  cmd->add_flag("--quiet,-q", args->quiet, "Only print the final table");
  cmd->callback([args]() {
    const train::CheckpointInfo info = train::read_checkpoint_info(args->checkpoint);
    Json cfg_json = to_json(info.config);
    for (const auto& o : args->overrides) {
      const std::string key = o.substr(0, o.find('='));
      TORCH_CHECK(key.rfind("solver.", 0) == 0 || key.rfind("task.eval_", 0) == 0 || key == "train.threads" ||
                      key == "train.eval_batch_size" || key == "train.device" || key == "train.dtype",
                  "eval: only solver.*, task.eval_*, train.threads, train.eval_batch_size, train.device and "
                  "train.dtype can be overridden, not '", key, "'");
      config::apply_override(cfg_json, o);
    }
    RunConfig cfg = run_config_from_json(cfg_json);
    if (!args->lengths.empty()) {
      int64_t lo = 0, hi = 0, step = 1;
      const int n = std::sscanf(args->lengths.c_str(), "%ld:%ld:%ld", &lo, &hi, &step);
      TORCH_CHECK(n >= 2 && lo >= 1 && hi >= lo && step >= 1, "eval: --lengths must be MIN:MAX[:STEP] with 1 ≤ MIN ≤ MAX, got '",
                  args->lengths, "'");
      cfg.task.eval_min_length = lo;
      cfg.task.eval_max_length = hi;
      cfg.task.eval_length_step = step;
    }
    if (args->samples > 0) cfg.task.eval_samples = args->samples;
    if (!args->solver.empty()) cfg.solver.eval_method = args->solver;
    if (args->max_iter > 0) cfg.solver.eval_max_iter = args->max_iter;
    if (args->batch_size > 0) cfg.train.eval_batch_size = args->batch_size;
    validate(cfg);
    train::apply_threads(cfg.train);
    // Word problems score prefixes of one test set; the generated tasks fresh samples of every length.
    std::optional<tasks::WordProblem> wp;
    std::optional<tasks::SequenceTask> seq;
    if (cfg.task.name == "word_problem")
      wp.emplace(cfg.task);
    else
      seq.emplace(cfg.task);
    nn::FPLM model = train::build_model(cfg, wp ? wp->vocab().size() : seq->vocab_size());
    train::load_checkpoint(args->checkpoint, *model, nullptr);
    const std::string out = args->out.empty()
                                ? (std::filesystem::path(args->checkpoint).parent_path() / "eval_cli").string()
                                : args->out;
    std::filesystem::create_directories(out);
    const auto progress = [&](const train::EvalResult& r) {
      if (!args->quiet)
        std::fprintf(stderr, "  length %3lld: seq acc %6.2f %%\n", static_cast<long long>(r.length),
                     100 * r.sequence_accuracy);
    };
    const auto sweep = wp ? train::evaluate_lengths(*model, *wp, cfg.task, cfg.train.eval_batch_size, progress)
                          : train::evaluate_lengths(*model, *seq, cfg.task, cfg.train.eval_batch_size, progress);
    io::write_file_atomic(out + "/config.json", to_json(cfg).dump(2) + "\n");
    const auto images = train::write_sweep(out, sweep, cfg, cfg.model.layer.mixer_type + " (" + cfg.solver.eval_method + ")");
    std::printf("%s%s", train::eval_table(sweep).c_str(),
                train::convergence_note(sweep, cfg.solver.eval_max_iter).c_str());
    std::printf("wrote %s/eval.csv%s\n", out.c_str(), images.empty() ? " (no gnuplot: no plot)" : " and the plot");
  });
}

}  // namespace fprnn::cli
