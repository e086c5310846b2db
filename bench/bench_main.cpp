// `fprnn bench`: runs the registered cases and prints each next to its same-run baseline.
#include "bench.h"
#include "commands.h"

#include "fprnn/io/safetensors.h"
#include "fprnn_git_rev.h"  // generated at build time (cmake/git_rev.cmake)

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

namespace fprnn::bench {

double time_ms(const std::function<void()>& fn, const Options& opts) {
  auto sync = [&] {
    if (opts.device.is_cuda()) torch::cuda::synchronize();
  };
  for (int64_t i = 0; i < opts.warmup; ++i) fn();
  sync();
  std::vector<double> t;
  for (int64_t i = 0; i < std::max<int64_t>(1, opts.repeat); ++i) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    sync();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace fprnn::bench

namespace fprnn::cli {

void add_bench(CLI::App& app) {
  struct Args {
    std::vector<std::string> cases;
    bool list = false, quick = false;
    int64_t repeat = 5, warmup = 2, threads = 0;
    std::string json, device = "cpu", filter;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("bench", "Benchmarks: kernels and layer steps next to same-run baselines.");
  cmd->footer("Each row: the subject's median time and throughput, the baseline's, and their ratio. A case whose\n"
              "result fails its reference check is reported as FAILED with no figures, and the exit status is 1.");
  cmd->add_option("cases", args->cases, "Case names to run (default: all; see --list)");
  cmd->add_flag("--list", args->list, "List the cases and exit");
  cmd->add_flag("--quick", args->quick, "Small shapes (a smoke test, not a measurement)");
  cmd->add_option("--repeat", args->repeat, "Timed repetitions per measurement (median reported)")->capture_default_str();
  cmd->add_option("--warmup", args->warmup, "Untimed warm-up runs")->capture_default_str();
  cmd->add_option("--threads", args->threads, "Intra-op threads (default: LibTorch's)");
  cmd->add_option("--json", args->json, "Also write the rows as JSON to this file");
  cmd->add_option("--filter", args->filter, "Only the measurements whose name contains this text (layer case)");
  cmd->add_option("--device", args->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd->callback([args]() {
    const auto cases = bench::all_cases();
    if (args->list) {
      for (const auto& c : cases) std::printf("%-14s %s\n", c.name.c_str(), c.description.c_str());
      return;
    }
    for (const auto& want : args->cases) {
      const bool known = std::any_of(cases.begin(), cases.end(), [&](const bench::Case& c) { return c.name == want; });
      TORCH_CHECK(known, "bench: unknown case '", want, "' (see fprnn bench --list)");
    }
    TORCH_CHECK(args->repeat >= 1 && args->warmup >= 0, "bench: --repeat must be ≥ 1 and --warmup ≥ 0");
    if (args->threads > 0) torch::set_num_threads(static_cast<int>(args->threads));
    bench::Options opts;
    opts.repeat = args->repeat;
    opts.warmup = args->warmup;
    opts.quick = args->quick;
    opts.filter = args->filter;
    std::string device_name = "cpu";
    if (args->device == "cuda") {
      TORCH_CHECK(torch::cuda::is_available(), "bench: --device cuda but no CUDA device is available");
      opts.device = torch::kCUDA;
      device_name = "cuda (" + std::to_string(torch::cuda::device_count()) + " device(s))";
    }
    std::printf("fprnn bench | fprnn %s (%s, %s build) | LibTorch %s | device %s | %d CPU threads%s\n", FPRNN_VERSION,
                FPRNN_GIT_REV, FPRNN_BUILD_TYPE, TORCH_VERSION, device_name.c_str(), torch::get_num_threads(),
                args->quick ? " | QUICK (not a measurement)" : "");
    Json out = Json::array();
    bool all_ok = true;
    for (const auto& c : cases) {
      if (!args->cases.empty() && std::find(args->cases.begin(), args->cases.end(), c.name) == args->cases.end())
        continue;
      std::printf("\n== %s: %s\n", c.name.c_str(), c.description.c_str());
      std::fflush(stdout);
      for (const auto& r : c.run(opts)) {
        if (!r.check_ok) {
          all_ok = false;
          std::printf("  %-52s FAILED check: %s\n", r.name.c_str(), r.check.c_str());
        } else {
          std::printf("  %-52s %9.3f ms %10.2f %-9s | %-26s %9.3f ms", r.name.c_str(), r.ms, r.value, r.unit.c_str(),
                      r.baseline.c_str(), r.baseline_ms);
          if (r.baseline_value > 0) std::printf(" %10.2f %-9s", r.baseline_value, r.unit.c_str());
          std::printf(" | %s %.2f", r.ratio_label.c_str(), r.ratio);
          if (r.reference_ms > 0)
            std::printf(" | reference %.1f ms (BASELINES.md): %.1fx", r.reference_ms, r.reference_ms / r.ms);
          std::printf("\n");
          if (!r.note.empty()) std::printf("    %s\n", r.note.c_str());
        }
        std::fflush(stdout);
        out.push_back({{"case", c.name},
                       {"name", r.name},
                       {"ms", r.ms},
                       {"unit", r.unit},
                       {"value", r.value},
                       {"baseline", r.baseline},
                       {"baseline_ms", r.baseline_ms},
                       {"baseline_value", r.baseline_value},
                       {"ratio", r.ratio},
                       {"ratio_label", r.ratio_label},
                       {"check_ok", r.check_ok},
                       {"check", r.check},
                       {"reference_ms", r.reference_ms},
                       {"note", r.note}});
      }
    }
    if (!args->json.empty()) io::write_file_atomic(args->json, out.dump(2) + "\n");
    if (!all_ok) throw std::runtime_error("bench: some cases failed their reference checks");
  });
}

}  // namespace fprnn::cli
