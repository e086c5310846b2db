// What the backbone needs from a sequence layer (FPRNN, FP-Mamba1, FP-Mamba2, the one-pass Mamba-1 and Mamba-2
// baselines), and the factory that builds the one named in LayerConfig::layer.
// Layout: u (B, T, d_model) → (B, T, d_model).
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/solver/fixed_point.h"

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace fprnn::nn {

class SequenceLayerImpl : public torch::nn::Module {
 public:
  ~SequenceLayerImpl() override = default;
  // h_star, when given, receives the detached fixed point the output was computed from.
  virtual torch::Tensor forward(const torch::Tensor& u, torch::Tensor* h_star = nullptr) = 0;
  // The last forward's solver statistics (a one-pass layer reports 0 iterations, recorded 1).
  virtual const solver::SolveStats& last_stats() const = 0;
  // Training-time cap override (the randomised cap); ≤ 0 restores the configured cap.
  virtual void set_max_iter(int64_t max_iter) = 0;
  // Parameter names (relative to this layer) that get no weight decay beyond the backbone's bias/norm rule:
  // the reference's `_no_weight_decay` flags (FP-Mamba1: A_log, D).
  virtual std::vector<std::string> no_weight_decay() const { return {}; }
  // Called by the backbone after its own re-initialisation (which zeroes every Linear bias), for the parts
  // of the reference's _init_weights that are layer-specific (FP-Mamba1: dt_proj.bias is `_no_reinit`,
  // out_proj.weight is re-drawn and divided by √n_layers).
  virtual void after_backbone_init(int64_t n_layers) {}
  // Called after a CUDA graph that recorded this layer's forward has been replayed: last_stats() should
  // describe the replayed solve again (an eager forward since the recording may have replaced it).
  virtual void graph_replayed() {}
};

// Builds the layer named by cfg.layer (layer_names(): "fprnn" | "fpmamba1" | "mamba1" | "fpmamba2" | "mamba2");
// unknown names throw, listing the valid ones.
std::shared_ptr<SequenceLayerImpl> make_layer(const LayerConfig& cfg, const SolverConfig& solver);

}  // namespace fprnn::nn
