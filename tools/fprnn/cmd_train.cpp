// `fprnn train`: a training run (word problems, copying, formal-language tasks) from a config file plus
// key=value overrides.
#include "commands.h"

#include "fprnn/tasks/groups.h"
#include "fprnn/tasks/sequence_task.h"
#include "fprnn/train/evaluate.h"
#include "fprnn/train/trainer.h"

#include <cstdio>
#include <filesystem>
#include <memory>

namespace fprnn::cli {

void add_train(CLI::App& app) {
  struct Args {
    std::string config, out;
    std::vector<std::string> overrides;
    bool resume = false, quiet = false, no_eval = false, print_only = false;
    int64_t stop_after = -1;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("train", "Train an FP-RNN on a task (task.name: word_problem, copy, modular_arithmetic_with_brackets,\n"
      "modular_arithmetic, parity, cycle_navigation, even_pairs) with a layer (model.layer: fprnn, fpmamba1,\n"
      "mamba1, fpmamba2, mamba2); writes a run directory.");
  cmd->footer(
      "Overrides use dotted keys, e.g. model.mixer_type=kronecker solver.max_iter=16 train.steps=500.\n"
      "The run directory gets config.json, metrics.jsonl, checkpoints/, model.safetensors, eval.csv,\n"
      "eval_table.txt, eval.png/.svg and summary.json. Ctrl-C stops after the current step with a checkpoint.");
  cmd->add_option("--config,-c", args->config, "JSON config file (defaults for every key not given)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--out,-o", args->out, "Run directory to create (or to continue with --resume)")->required();
  cmd->add_option("overrides", args->overrides, "key=value overrides (dotted keys)");
  cmd->add_flag("--resume", args->resume, "Continue the run in --out from its last checkpoint");
  cmd->add_option("--stop-after", args->stop_after, "Stop with a checkpoint after this many steps in total");
  cmd->add_flag("--no-eval", args->no_eval, "Skip the final length sweep");
  cmd->add_flag("--quiet,-q", args->quiet, "No progress output");
  cmd->add_flag("--print-config", args->print_only, "Print the resolved config and exit");
  cmd->callback([args]() {
    Json cfg_json;
    if (args->resume && args->config.empty()) {
      const std::string saved = args->out + "/config.json";
      TORCH_CHECK(std::filesystem::exists(saved), "train: nothing to resume in ", args->out, " (no config.json)");
      cfg_json = resolve_config(saved, args->overrides);
    } else {
      cfg_json = resolve_config(args->config, args->overrides);
    }
    const RunConfig cfg = run_config_from_json(cfg_json);
    if (args->print_only) {
      std::printf("%s\n", cfg_json.dump(2).c_str());
      return;
    }
    // Fail on a bad group name or task size before printing anything, so that bad input is one line.
    if (cfg.task.name == "word_problem")
      (void)tasks::Group::from_name(cfg.task.group);
    else
      (void)tasks::SequenceTask(cfg.task);
    if (!args->quiet) print_config(cfg_json, "config:");
    train::TrainOptions opts;
    opts.out_dir = args->out;
    opts.resume = args->resume;
    opts.stop_after = args->stop_after;
    opts.skip_final_eval = args->no_eval;
    opts.quiet = args->quiet;
    const train::TrainSummary s = train::run_training(cfg, opts);
    if (!s.finished) return;
    std::printf("trained %lld steps in %.1f s (%.0f tokens/s)\n", static_cast<long long>(s.steps_done), s.seconds,
                s.tokens_per_second);
    if (!s.lengths.empty())
      std::printf("%s%s", train::eval_table(s.lengths).c_str(),
                  train::convergence_note(s.lengths, cfg.solver.eval_max_iter).c_str());
    std::printf("run directory: %s\n", args->out.c_str());
  });
}

}  // namespace fprnn::cli
