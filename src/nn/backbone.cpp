// The LM backbone: embedding → [add, RMSNorm, FP layer] × L → add, RMSNorm → tied head (spec §3).
#include "fprnn/nn/backbone.h"

#include <set>

namespace fprnn::nn {

int64_t padded_vocab_size(int64_t vocab_size, int64_t multiple) {
  TORCH_CHECK(vocab_size > 0 && multiple > 0, "vocabulary size and padding multiple must be positive");
  return (vocab_size + multiple - 1) / multiple * multiple;
}

FPLMImpl::FPLMImpl(const ModelConfig& cfg_, const SolverConfig& solver, int64_t vocab_size_)
    : cfg(cfg_), vocab_size(vocab_size_), padded_vocab(padded_vocab_size(vocab_size_, cfg_.pad_vocab_size_multiple)) {
  TORCH_CHECK(cfg.n_layers > 0, "FPLM: n_layers must be positive, got ", cfg.n_layers);
  const int64_t d = cfg.layer.d_model;
  embedding_module = register_module("embedding", torch::nn::Embedding(padded_vocab, d));
  embedding = embedding_module->weight;
  // layers.<i>.norm and layers.<i>.mixer, the reference's parameter names.
  auto blocks = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    auto block = std::make_shared<torch::nn::Module>();
    norms.push_back(block->register_module("norm", RMSNorm(d, cfg.backbone_norm_eps)));
    layers.push_back(block->register_module("mixer", make_layer(cfg.layer, solver)));
    blocks->push_back(block);
  }
  norm_f = register_module("norm_f", RMSNorm(d, cfg.backbone_norm_eps));
  reset_parameters();
}

void FPLMImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  embedding.normal_(0.0, 0.02);
  for (auto& item : named_modules("", /*include_self=*/false)) {
    if (auto* lin = item.value()->as<LinearImpl>()) {
      if (lin->bias.defined()) lin->bias.zero_();
    }
  }
  for (auto& l : layers) l->after_backbone_init(cfg.n_layers);
}

torch::Tensor FPLMImpl::forward(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 2, "FPLM: ids must be (B, T), got ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == torch::kInt64, "FPLM: ids must be int64");
  const auto residual_dtype = compute_dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  torch::Tensor h = torch::embedding(embedding, ids.to(embedding.device())).to(residual_dtype);
  torch::Tensor r;
  for (size_t i = 0; i < layers.size(); ++i) {
    r = (i == 0) ? h : r + h.to(residual_dtype);
    h = layers[i]->forward(norms[i]->forward(r).to(compute_dtype));
  }
  const torch::Tensor out = norm_f->forward(r + h.to(residual_dtype));
  return torch::matmul(out, embedding.to(residual_dtype).t());
}

std::pair<std::vector<std::string>, std::vector<std::string>> FPLMImpl::decay_groups() const {
  std::vector<std::string> decay, no_decay;
  std::set<std::string> flagged;  // full names of the layers' no-weight-decay parameters
  for (size_t i = 0; i < layers.size(); ++i)
    for (const auto& n : layers[i]->no_weight_decay()) flagged.insert("layers." + std::to_string(i) + ".mixer." + n);
  for (const auto& p : named_parameters()) {
    const std::string& name = p.key();
    if (name.find("bias") != std::string::npos || name.find("norm") != std::string::npos || flagged.count(name)) {
      no_decay.push_back(name);
    } else {
      decay.push_back(name);
    }
  }
  return {decay, no_decay};
}

std::vector<solver::SolveStats> FPLMImpl::last_stats() const {
  std::vector<solver::SolveStats> out;
  for (const auto& l : layers) out.push_back(l->last_stats());
  return out;
}

void FPLMImpl::graph_replayed() {
  for (auto& l : layers) l->graph_replayed();
}

void FPLMImpl::set_max_iter(int64_t max_iter) {
  for (auto& l : layers) l->set_max_iter(max_iter);
}

void FPLMImpl::set_max_iter(size_t layer, int64_t max_iter) {
  TORCH_CHECK(layer < layers.size(), "FPLM: no layer ", layer);
  layers[layer]->set_max_iter(max_iter);
}

}  // namespace fprnn::nn
