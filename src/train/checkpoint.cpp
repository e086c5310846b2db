// Checkpoints in safetensors: model parameters, AdamW state and the run's metadata.
#include "fprnn/train/checkpoint.h"

#include "fprnn/io/safetensors.h"

namespace fprnn::train {
namespace {

std::map<std::string, std::string> metadata_of(const CheckpointInfo& info, const Json& optim_steps) {
  return {{"format", "fprnn-checkpoint-1"},
          {"config", to_json(info.config).dump()},
          {"step", std::to_string(info.step)},
          {"optim_steps", optim_steps.dump()},
          {"extra", info.extra.dump()}};
}

CheckpointInfo info_from(const io::SafeTensors& st, const std::string& path) {
  auto get = [&](const char* key) {
    auto it = st.metadata.find(key);
    TORCH_CHECK(it != st.metadata.end(), path, ": not an fprnn checkpoint (no '", key, "' in the metadata)");
    return it->second;
  };
  TORCH_CHECK(get("format") == "fprnn-checkpoint-1", path, ": unknown checkpoint format '", get("format"), "'");
  CheckpointInfo info;
  try {
    info.config = run_config_from_json(Json::parse(get("config")));
    info.step = std::stoll(get("step"));
    info.extra = Json::parse(get("extra"));
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& e) {
    TORCH_CHECK(false, path, ": corrupt checkpoint metadata (", e.what(), ")");
  }
  return info;
}

}  // namespace

void save_checkpoint(const std::string& path, nn::FPLMImpl& model, torch::optim::AdamW* optimizer,
                     const CheckpointInfo& info) {
  std::map<std::string, torch::Tensor> tensors;
  Json optim_steps = Json::object();
  for (const auto& p : model.named_parameters()) {
    tensors["model." + p.key()] = p.value().detach();
    if (optimizer == nullptr) continue;
    auto& state = optimizer->state();
    auto it = state.find(p.value().unsafeGetTensorImpl());
    if (it == state.end()) continue;
    auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
    tensors["optim." + p.key() + ".exp_avg"] = s.exp_avg();
    tensors["optim." + p.key() + ".exp_avg_sq"] = s.exp_avg_sq();
    optim_steps[p.key()] = s.step();
  }
  io::save_safetensors(path, tensors, metadata_of(info, optim_steps));
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  return info_from(io::load_safetensors(path), path);
}

CheckpointInfo load_checkpoint(const std::string& path, nn::FPLMImpl& model, torch::optim::AdamW* optimizer) {
  const io::SafeTensors st = io::load_safetensors(path);
  CheckpointInfo info = info_from(st, path);
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters()) {
    const std::string key = "model." + p.key();
    TORCH_CHECK(st.has(key), path, ": no tensor for parameter '", p.key(), "' (checkpoint of another model?)");
    const torch::Tensor& v = st.at(key);
    TORCH_CHECK(v.sizes() == p.value().sizes(), path, ": parameter '", p.key(), "' is ", v.sizes(), ", the model has ",
                p.value().sizes());
    TORCH_CHECK(torch::isfinite(v).all().item<bool>(), path, ": parameter '", p.key(), "' holds NaN or Inf");
    p.value().copy_(v);
  }
  if (optimizer != nullptr) {
    const Json steps = Json::parse(st.metadata.at("optim_steps"));
    auto& state = optimizer->state();
    for (auto& p : model.named_parameters()) {
      const std::string base = "optim." + p.key();
      if (!st.has(base + ".exp_avg")) continue;
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(steps.at(p.key()).get<int64_t>());
      s->exp_avg(st.at(base + ".exp_avg").to(p.value().options()).clone());
      s->exp_avg_sq(st.at(base + ".exp_avg_sq").to(p.value().options()).clone());
      state[p.value().unsafeGetTensorImpl()] = std::move(s);
    }
  }
  return info;
}

}  // namespace fprnn::train
