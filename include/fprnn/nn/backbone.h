// The language-model backbone around the sequence layers (FPRNN, FP-Mamba1, Mamba-1) (spec §3, the reference's FPLMHeadModel):
//   h = E[ids];  for each layer ℓ: r = h (ℓ = 0) or r + h (fp32 residual stream), h = Layer_ℓ(RMSNorm_ℓ(r))
//   logits = RMSNorm_f(r + h) · Eᵀ        (head tied to the embedding, vocabulary padded)
// Layout: ids (B, T) int64 → logits (B, T, padded_vocab) float32.
#pragma once

#include "fprnn/io/config.h"
#include "fprnn/nn/basic.h"
#include "fprnn/nn/fprnn_layer.h"
#include "fprnn/nn/layer.h"
#include "fprnn/solver/fixed_point.h"

#include <torch/torch.h>

#include <string>
#include <vector>

namespace fprnn::nn {

class FPLMImpl : public torch::nn::Module {
 public:
  FPLMImpl(const ModelConfig& cfg, const SolverConfig& solver, int64_t vocab_size);

  torch::Tensor forward(const torch::Tensor& ids);

  // The reference's initialisation (mamba_ssm _init_weights): zero every Linear bias, N(0, 0.02²)
  // embedding; FPRNN's output projection is not rescaled (the reference names it output_trans); then each
  // layer's own part (FP-Mamba1: dt_proj.bias kept, out_proj.weight / √n_layers).
  void reset_parameters();
  // Parameter names split as in the reference's word-problem optimiser: no weight decay for names
  // containing "bias" or "norm" and for the layers' flagged parameters (FP-Mamba1: A_log, D); everything
  // else (mixer g and v, the tied embedding) is decayed.
  std::pair<std::vector<std::string>, std::vector<std::string>> decay_groups() const;

  // Per layer: the last forward's solver statistics.
  std::vector<solver::SolveStats> last_stats() const;
  void set_max_iter(int64_t max_iter);           // every layer's training cap override
  void set_max_iter(size_t layer, int64_t max_iter);
  // After replaying a CUDA graph that recorded forward: every layer's last_stats() describes the replay.
  void graph_replayed();

  // Dtype of the layers' computation (float32 | float64 | bfloat16); the residual stream stays fp32+.
  torch::Dtype compute_dtype = torch::kFloat32;

  ModelConfig cfg;
  int64_t vocab_size, padded_vocab;
  torch::nn::Embedding embedding_module{nullptr};  // registered as "embedding"
  torch::Tensor embedding;                         // its weight (padded_vocab, d_model), also the head
  std::vector<RMSNorm> norms;
  std::vector<std::shared_ptr<SequenceLayerImpl>> layers;  // the kind named by cfg.layer.layer
  RMSNorm norm_f{nullptr};
};
TORCH_MODULE(FPLM);

// Smallest multiple of `multiple` that is ≥ vocab_size.
int64_t padded_vocab_size(int64_t vocab_size, int64_t multiple);

}  // namespace fprnn::nn
