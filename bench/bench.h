// Benchmark registry for `fprnn bench`: named cases, each timing a subject next to a baseline measured
// in the same run, and each refusing to report when its reference check fails.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace fprnn::bench {

struct Options {
  int64_t warmup = 2;
  int64_t repeat = 5;   // timed repetitions; the median is reported
  bool quick = false;   // smaller shapes (for smoke tests)
  torch::Device device = torch::kCPU;
  std::string filter;   // run only the measurements whose name contains this (empty: all)
  bool selected(const std::string& name) const { return filter.empty() || name.find(filter) != std::string::npos; }
};

struct Row {
  std::string name;       // e.g. "linrec fwd (16, 512, 1024) float32"
  double ms = 0;          // median time of the subject
  std::string unit;       // "GB/s", "GFLOP/s", "tokens/s"
  double value = 0;       // throughput of the subject in `unit`
  std::string baseline;   // what it is compared with
  double baseline_ms = 0;
  double baseline_value = 0;  // throughput of the baseline in `unit` (0 if not meaningful)
  double ratio = 0;       // subject time / baseline time (or as documented by the case)
  std::string ratio_label = "time/baseline";
  bool check_ok = true;   // the subject's result matched its reference
  std::string check;      // what was checked, and the error
  double reference_ms = 0;    // the authors' code, from ../shared/BASELINES.md (not this run), if known
  std::string note;           // a further line of derived figures (printed below the row), if any
};

// A row with the subject's and the baseline's timings filled in (ratio and check set by the caller).
inline Row make_row(std::string name, double ms, std::string unit, double value, std::string baseline,
                    double baseline_ms, double baseline_value) {
  Row r;
  r.name = std::move(name);
  r.ms = ms;
  r.unit = std::move(unit);
  r.value = value;
  r.baseline = std::move(baseline);
  r.baseline_ms = baseline_ms;
  r.baseline_value = baseline_value;
  return r;
}

struct Case {
  std::string name;
  std::string description;
  std::function<std::vector<Row>(const Options&)> run;
};

// All registered cases (bench_cases.cpp).
std::vector<Case> all_cases();

// Median wall time in milliseconds of fn() over opts.repeat runs after opts.warmup runs; on a GPU each
// run is bracketed by device synchronisations, so the time is the device's.
double time_ms(const std::function<void()>& fn, const Options& opts);

}  // namespace fprnn::bench
