// `fprnn verify`: rebuilds a layer (FPRNN or FP-Mamba1, as the fixture config's "layer" says) from a golden
// fixture (../shared/fixtures, safetensors written by the authors' code in float64) and compares outputs,
// fixed points, iteration counts and gradients.
//
// Checks, each against the fixture's tensor: training mode (capped iterations, quantile stop) forward
// y_train and h_star_train with its recorded count iters_train; the one-step gradients of Σ g ⊙ y_train
// for the input and every parameter; evaluation mode y_eval, h_star_eval, iters_eval; and the exact fixed
// point (a fixed number of undamped iterations) y_exact, h_star_exact where present.
// Two things a fixture cannot pin down are decided and reported (Report::notes; details in verify.cpp): which
// float32 neighbour the reference's float32 exp gave for FP-Mamba1's A where exp(A_log) is a near-tie, and,
// where an evaluation-mode result misses, whether it is decided by float64 rounding (then it must lie within
// twice the spread our own results show for inputs moved by one ulp).
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/io/safetensors.h"

#include <functional>
#include <string>
#include <vector>

namespace fprnn::verify {

struct TensorCheck {
  std::string name;
  double rms_ratio = 0;
  double max_abs = 0;
  double tolerance = 0;  // the report's, float32 resolution (2⁻²³) for a reference tensor of float32 numbers,
                         // or 2 × rounding_spread (below)
  // Evaluation-mode results only, and only where the strict comparison failed: the largest RMS ratio between
  // our result and our results for inputs moved by one ulp (kRoundingRuns runs). Non-zero means the result is
  // decided by float64 rounding, not by the function (see verify.cpp); 0 = not measured.
  double rounding_spread = 0;
  bool ok = false;
};

struct CountCheck {
  std::string name;
  int64_t ours = 0, reference = 0;
  int64_t tolerance = 0;        // 0, or 2 × rounding_spread for a count found to be decided by rounding
  int64_t rounding_spread = 0;  // largest |count(u moved 1 ulp) − count(u)| where measured, as for tensors
  bool ok() const { return (ours > reference ? ours - reference : reference - ours) <= tolerance; }
};

struct Report {
  std::string file, layer;
  double tolerance = 1e-8;
  Json config;
  std::vector<TensorCheck> tensors;
  std::vector<CountCheck> counts;
  std::vector<std::string> notes;  // what verification had to decide, and how (printed with the report)
  bool ok() const;
  Json to_json() const;
};

struct VerifyOptions {
  double tolerance = 1e-8;  // RMS ratio per tensor (float64)
  bool exact = true;        // also check the exact fixed point (thousands of iterations for FP-Mamba1)
  // Edits the settings read from the fixture before the layer is built (tests: a wrong setting must fail).
  std::function<void(LayerConfig&, SolverConfig&)> adjust;
};

// The layer and solver settings a fixture's config describes.
void configs_from_fixture(const Json& fixture_config, LayerConfig& layer, SolverConfig& solver);

// Runs every check of one fixture file. Throws a one-line error for unreadable or unsupported files.
Report verify_fixture(const std::string& path, const VerifyOptions& options);
Report verify_fixture(const std::string& path, double tolerance = 1e-8);

}  // namespace fprnn::verify
