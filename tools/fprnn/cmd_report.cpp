// `fprnn report`: one comparison table (and plot) of several runs' length sweeps.
#include "commands.h"

#include "fprnn/io/safetensors.h"
#include "fprnn/train/evaluate.h"
#include "fprnn/train/plot.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

namespace fprnn::cli {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), path, ": cannot open (is it a finished run directory?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Run {
  std::string dir, name;
  Json config, summary;
  std::vector<train::EvalResult> sweep;
};

}  // namespace

void add_report(CLI::App& app) {
  struct Args {
    std::vector<std::string> runs, names;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("report", "Compare finished runs: accuracy and iterations per length.");
  cmd->add_option("runs", args->runs, "Run directories (each with eval.csv, config.json, summary.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--names", args->names, "Display names, one per run (default: the folder names)");
  cmd->add_option("--out,-o", args->out, "Write <out>.csv, <out>.md and the plot <out>.png/.svg");
  cmd->callback([args]() {
    TORCH_CHECK(args->names.empty() || args->names.size() == args->runs.size(), "report: ", args->names.size(),
                " names for ", args->runs.size(), " runs");
    std::vector<Run> runs;
    for (size_t i = 0; i < args->runs.size(); ++i) {
      Run r;
      r.dir = args->runs[i];
      r.name = args->names.empty() ? std::filesystem::path(r.dir).filename().string() : args->names[i];
      if (r.name.empty()) r.name = r.dir;
      r.sweep = train::parse_eval_csv(read_text(r.dir + "/eval.csv"), r.dir + "/eval.csv");
      try {
        r.config = Json::parse(read_text(r.dir + "/config.json"));
        r.summary = Json::parse(read_text(r.dir + "/summary.json"));
      } catch (const Json::exception& e) {
        TORCH_CHECK(false, r.dir, ": corrupt config.json or summary.json (", e.what(), ")");
      }
      runs.push_back(std::move(r));
    }
    std::set<int64_t> lengths;
    for (const auto& r : runs)
      for (const auto& e : r.sweep) lengths.insert(e.length);

    std::ostringstream md, csv;
    md << "| length |";
    csv << "length";
    for (const auto& r : runs) {
      md << " " << r.name << " |";
      csv << "," << r.name << " seq_acc," << r.name << " iters";
    }
    md << "\n|---:|";
    for (size_t i = 0; i < runs.size(); ++i) md << "---:|";
    md << "\n";
    csv << "\n";
    for (int64_t len : lengths) {
      md << "| " << len << " |";
      csv << len;
      for (const auto& r : runs) {
        const train::EvalResult* e = nullptr;
        for (const auto& x : r.sweep)
          if (x.length == len) e = &x;
        if (e == nullptr) {
          md << " – |";
          csv << ",,";
          continue;
        }
        char buf[64];
        std::snprintf(buf, sizeof(buf), " %.1f %% (%.0f) |", 100 * e->sequence_accuracy,
                      e->iters_mean.empty() ? 0.0 : e->iters_mean[0]);
        md << buf;
        csv << "," << e->sequence_accuracy << "," << (e->iters_mean.empty() ? 0.0 : e->iters_mean[0]);
      }
      md << "\n";
      csv << "\n";
    }
    md << "\nFull-sequence accuracy by test length (mean fixed-point iterations of layer 0 in brackets).\n\n";
    md << "| run | task | train length | model | max_iter (train/eval) | parameters | train time | tokens/s |\n"
          "|---|---|---:|---|---|---:|---:|---:|\n";
    for (const auto& r : runs) {
      const Json& m = r.config["model"];
      const Json& s = r.config["solver"];
      const Json& t = r.config["task"];
      // The layer (fprnn, fpmamba1, mamba1, ...), layers × width, and the mixer of the looping layers; the
      // one-pass Mamba baselines have neither mixer nor iterations.
      const std::string layer = m.value("layer", std::string("fprnn"));
      const bool one_pass = layer.rfind("mamba", 0) == 0;
      std::string model = layer + " " + std::to_string(m.value("n_layers", int64_t{1})) + "×" +
                          std::to_string(m.value("d_model", int64_t{0}));
      if (!one_pass)
        model += ", " + m.value("mixer_type", std::string("?")) + " r=" + std::to_string(m.value("mixer_rank", int64_t{0}));
      const std::string iters = one_pass ? std::string("–")
                                         : std::to_string(s.value("max_iter", int64_t{0})) + " / " +
                                               std::to_string(s.value("eval_max_iter", int64_t{0}));
      std::string task = t.value("name", std::string("word_problem"));
      if (task == "word_problem") task += " " + t.value("group", std::string("?"));
      char buf[512];
      std::snprintf(buf, sizeof(buf), "| %s | %s | %lld | %s | %s | %lld | %.1f s | %.0f |\n", r.name.c_str(), task.c_str(),
                    static_cast<long long>(t.value("train_length", int64_t{0})), model.c_str(), iters.c_str(),
                    static_cast<long long>(r.summary.value("parameters", int64_t{0})),
                    r.summary.value("train_seconds", 0.0), r.summary.value("tokens_per_second", 0.0));
      md << buf;
    }
    std::printf("%s", md.str().c_str());
    if (!args->out.empty()) {
      const auto parent = std::filesystem::path(args->out).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent);
      io::write_file_atomic(args->out + ".md", md.str());
      io::write_file_atomic(args->out + ".csv", csv.str());
      std::vector<train::Series> series;
      double train_length = 0;
      for (const auto& r : runs) {
        train::Series s;
        s.name = r.name;
        for (const auto& e : r.sweep) {
          s.length.push_back(static_cast<double>(e.length));
          s.accuracy.push_back(e.sequence_accuracy);
          s.iterations.push_back(e.iters_mean.empty() ? 0.0 : e.iters_mean[0]);
        }
        series.push_back(s);
        train_length = static_cast<double>(r.config["task"].value("train_length", int64_t{0}));
      }
      const auto images = train::plot_length_curves(args->out, series, train_length, "length generalisation");
      std::printf("wrote %s.md, %s.csv%s\n", args->out.c_str(), args->out.c_str(),
                  images.empty() ? " (no gnuplot: no plot)" : " and the plot");
    }
  });
}

}  // namespace fprnn::cli
