// `fprnn verify`: rebuilds a layer (FPRNN or FP-Mamba1, as the fixture config's "layer" says) from a golden
// fixture (../shared/fixtures, safetensors written by the authors' code in float64) and compares outputs,
// fixed points, iteration counts and gradients.
//
// Checks, each against the fixture's tensor: training mode (capped iterations, quantile stop) forward
// y_train and h_star_train with its recorded count iters_train; the one-step gradients of Σ g ⊙ y_train
// for the input and every parameter; evaluation mode y_eval, h_star_eval, iters_eval; and the exact fixed
// point (a fixed number of undamped iterations) y_exact, h_star_exact where present.
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/io/safetensors.h"

#include <string>
#include <vector>

namespace fprnn::verify {

struct TensorCheck {
  std::string name;
  double rms_ratio = 0;
  double max_abs = 0;
  double tolerance = 0;  // the report's, or float32 resolution (2⁻²³) for a reference tensor of float32 numbers
  bool ok = false;
};

struct CountCheck {
  std::string name;
  int64_t ours = 0, reference = 0;
  bool ok() const { return ours == reference; }
};

struct Report {
  std::string file, layer;
  double tolerance = 1e-8;
  Json config;
  std::vector<TensorCheck> tensors;
  std::vector<CountCheck> counts;
  bool ok() const;
  Json to_json() const;
};

// The layer and solver settings a fixture's config describes.
void configs_from_fixture(const Json& fixture_config, LayerConfig& layer, SolverConfig& solver);

// Runs every check of one fixture file. Throws a one-line error for unreadable or unsupported files.
Report verify_fixture(const std::string& path, double tolerance = 1e-8);

}  // namespace fprnn::verify
