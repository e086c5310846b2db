// Layer factory: LayerConfig::layer → FPRNN (spec §4), FP-Mamba1 (spec §5), FP-Mamba2 (spec §6) or the one-pass
// Mamba-1 / Mamba-2 baselines.
#include "fprnn/nn/layer.h"

#include "fprnn/nn/fpmamba1_layer.h"
#include "fprnn/nn/fpmamba2_layer.h"
#include "fprnn/nn/fprnn_layer.h"

namespace fprnn::nn {

std::shared_ptr<SequenceLayerImpl> make_layer(const LayerConfig& cfg, const SolverConfig& solver) {
  if (cfg.layer == "fprnn") return std::make_shared<FPRNNLayerImpl>(cfg, solver);
  if (cfg.layer == "fpmamba1" || cfg.layer == "mamba1") return std::make_shared<FPMamba1LayerImpl>(cfg, solver);
  if (cfg.layer == "fpmamba2" || cfg.layer == "mamba2") return std::make_shared<FPMamba2LayerImpl>(cfg, solver);
  std::string valid;
  for (const auto& name : layer_names()) valid += (valid.empty() ? "" : ", ") + name;
  TORCH_CHECK(false, "unknown layer '", cfg.layer, "' (valid: ", valid, ")");
}

}  // namespace fprnn::nn
