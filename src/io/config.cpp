// Run configuration: JSON (de)serialisation, merging over defaults, dotted overrides, validation.
#include "fprnn/io/config.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <sstream>

namespace fprnn {
namespace {

// Field tables: one line per key keeps JSON names, defaults and struct members in one place.
#define FPRNN_FIELDS_SOLVER(X) \
  X(max_iter) X(eval_max_iter) X(threshold) X(outlier_quantile) X(eval_outlier_quantile) X(stepsize) \
  X(stepsize_decay) X(decay_patience) X(stepsize_thresh) X(eps) X(eval_method) X(fused) X(device_check_every)
#define FPRNN_FIELDS_LAYER(X) \
  X(d_model) X(expand) X(d_conv) X(mixer_type) X(mixer_rank) X(mixer_ac) X(mixer_proj_rank) X(mixer_h_dep) \
  X(symm_mixer) X(kronecker_normalization) X(use_short_conv) X(n_backwards) X(norm_eps) X(weight_norm) \
  X(layer) X(d_state) X(dt_rank) X(dt_min) X(dt_max) X(dt_init_floor) X(dt_init) X(dt_scale) X(bc_norm) \
  X(glu_in_loop) X(ssm_params_fp32) X(headdim) X(ngroups) X(A_init_min) X(A_init_max)
#define FPRNN_FIELDS_MODEL(X) X(n_layers) X(pad_vocab_size_multiple) X(backbone_norm_eps)
#define FPRNN_FIELDS_TASK(X) \
  X(name) X(group) X(train_length) X(min_train_length) X(samples_per_length) X(train_fraction) \
  X(eval_min_length) X(eval_max_length) X(eval_length_step) X(eval_samples) X(loss_on_padding) X(seed) \
  X(context_length) X(alphabet_size) X(val_min_length) X(val_max_length) X(val_samples)
#define FPRNN_FIELDS_TRAIN(X) \
  X(steps) X(batch_size) X(lr) X(weight_decay) X(beta1) X(beta2) X(adam_eps) X(warmup_steps) X(min_lr_ratio) \
  X(grad_clip) X(seed) X(dtype) X(device) X(threads) X(log_every) X(eval_every) X(checkpoint_every) \
  X(eval_batch_size) X(cuda_graph)

#define FPRNN_TO_JSON(field) j[#field] = s.field;
#define FPRNN_FROM_JSON(field) get_field(j, #field, s.field, section);

template <typename T>
void get_field(const Json& j, const char* key, T& out, const std::string& section) {
  auto it = j.find(key);
  if (it == j.end()) return;
  try {
    out = it->get<T>();
  } catch (const std::exception&) {
    TORCH_CHECK(false, "config: ", section, ".", key, " has the wrong type (got ", it->dump(), ")");
  }
}

// A JSON integer where a double is expected is fine; a double where an integer is expected is not.
template <>
void get_field<int64_t>(const Json& j, const char* key, int64_t& out, const std::string& section) {
  auto it = j.find(key);
  if (it == j.end()) return;
  TORCH_CHECK(it->is_number_integer(), "config: ", section, ".", key, " must be an integer (got ", it->dump(), ")");
  out = it->get<int64_t>();
}

template <>
void get_field<uint64_t>(const Json& j, const char* key, uint64_t& out, const std::string& section) {
  auto it = j.find(key);
  if (it == j.end()) return;
  TORCH_CHECK(it->is_number_integer() && it->get<int64_t>() >= 0, "config: ", section, ".", key,
              " must be a non-negative integer (got ", it->dump(), ")");
  out = it->get<uint64_t>();
}

template <>
void get_field<double>(const Json& j, const char* key, double& out, const std::string& section) {
  auto it = j.find(key);
  if (it == j.end()) return;
  TORCH_CHECK(it->is_number(), "config: ", section, ".", key, " must be a number (got ", it->dump(), ")");
  out = it->get<double>();
}

Json solver_to_json(const SolverConfig& s) {
  Json j;
  FPRNN_FIELDS_SOLVER(FPRNN_TO_JSON)
  return j;
}
Json model_to_json(const ModelConfig& m) {
  Json j;
  {
    const LayerConfig& s = m.layer;
    FPRNN_FIELDS_LAYER(FPRNN_TO_JSON)
  }
  const ModelConfig& s = m;
  FPRNN_FIELDS_MODEL(FPRNN_TO_JSON)
  return j;
}
Json task_to_json(const TaskConfig& s) {
  Json j;
  FPRNN_FIELDS_TASK(FPRNN_TO_JSON)
  return j;
}
Json train_to_json(const TrainConfig& s) {
  Json j;
  FPRNN_FIELDS_TRAIN(FPRNN_TO_JSON)
  return j;
}

std::string join_keys(const Json& obj) {
  std::string out;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!out.empty()) out += ", ";
    out += it.key();
  }
  return out;
}

std::string format_number(double v) {
  std::ostringstream os;
  os << std::setprecision(10) << v;
  return os.str();
}

void flatten(const Json& j, const std::string& prefix, std::vector<std::pair<std::string, std::string>>& rows) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object()) {
      flatten(*it, key, rows);
    } else if (it->is_string()) {
      rows.emplace_back(key, it->get<std::string>());
    } else if (it->is_number_float()) {
      rows.emplace_back(key, format_number(it->get<double>()));
    } else {
      rows.emplace_back(key, it->dump());
    }
  }
}

}  // namespace

Json to_json(const RunConfig& cfg) {
  return Json{{"model", model_to_json(cfg.model)},
              {"solver", solver_to_json(cfg.solver)},
              {"task", task_to_json(cfg.task)},
              {"train", train_to_json(cfg.train)}};
}

RunConfig default_run_config(const std::string& layer) {
  RunConfig cfg;
  if (layer == "fpmamba1" || layer == "mamba1") {
    cfg.model.layer.layer = layer;
    cfg.model.layer.kronecker_normalization = "column-wise";
    cfg.solver.stepsize = 0.99;
    cfg.solver.stepsize_decay = 0.9;
    cfg.solver.outlier_quantile = 0.25;
  }
  if (layer == "fpmamba2" || layer == "mamba2") {
    // The reference FPMamba2 (spec §6): d_state 128, optimizer 0.99 / 0.9 / patience 15 / outlier quantile 0.1,
    // mixers with their default (column-wise) Kronecker normalisation.
    cfg.model.layer.layer = layer;
    cfg.model.layer.kronecker_normalization = "column-wise";
    cfg.model.layer.d_state = 128;
    cfg.solver.stepsize = 0.99;
    cfg.solver.stepsize_decay = 0.9;
    cfg.solver.outlier_quantile = 0.1;
  }
  return cfg;
}

const std::vector<std::string>& layer_names() {
  static const std::vector<std::string> names = {"fprnn", "fpmamba1", "mamba1", "fpmamba2", "mamba2"};
  return names;
}

RunConfig run_config_from_json(const Json& user) {
  std::string layer = "fprnn";
  if (user.is_object() && user.contains("model") && user["model"].is_object() && user["model"].contains("layer") &&
      user["model"]["layer"].is_string())
    layer = user["model"]["layer"].get<std::string>();
  RunConfig cfg = default_run_config(layer);
  const Json j_all = config::merge(to_json(cfg), user);
  {
    const Json& j = j_all["model"];
    std::string section = "model";
    LayerConfig& s = cfg.model.layer;
    FPRNN_FIELDS_LAYER(FPRNN_FROM_JSON)
  }
  {
    const Json& j = j_all["model"];
    std::string section = "model";
    ModelConfig& s = cfg.model;
    FPRNN_FIELDS_MODEL(FPRNN_FROM_JSON)
  }
  {
    const Json& j = j_all["solver"];
    std::string section = "solver";
    SolverConfig& s = cfg.solver;
    FPRNN_FIELDS_SOLVER(FPRNN_FROM_JSON)
  }
  {
    const Json& j = j_all["task"];
    std::string section = "task";
    TaskConfig& s = cfg.task;
    FPRNN_FIELDS_TASK(FPRNN_FROM_JSON)
  }
  {
    const Json& j = j_all["train"];
    std::string section = "train";
    TrainConfig& s = cfg.train;
    FPRNN_FIELDS_TRAIN(FPRNN_FROM_JSON)
  }
  return cfg;
}

namespace {
void check_one_of(const std::string& key, const std::string& value, std::initializer_list<const char*> valid) {
  std::string list;
  for (const char* v : valid) {
    if (value == v) return;
    list += list.empty() ? v : std::string(", ") + v;
  }
  TORCH_CHECK(false, "config: ", key, " = '", value, "' is not known (valid: ", list, ")");
}
void check_positive(const std::string& key, int64_t v) {
  TORCH_CHECK(v > 0, "config: ", key, " must be positive, got ", v);
}
}  // namespace

void validate(const RunConfig& cfg) {
  const LayerConfig& l = cfg.model.layer;
  check_positive("model.d_model", l.d_model);
  check_positive("model.expand", l.expand);
  check_positive("model.d_conv", l.d_conv);
  check_positive("model.mixer_rank", l.mixer_rank);
  check_positive("model.n_layers", cfg.model.n_layers);
  check_positive("model.pad_vocab_size_multiple", cfg.model.pad_vocab_size_multiple);
  TORCH_CHECK(l.n_backwards >= 0, "config: model.n_backwards must be ≥ 0, got ", l.n_backwards);
  TORCH_CHECK(l.mixer_proj_rank == -1 || l.mixer_proj_rank > 0,
              "config: model.mixer_proj_rank must be -1 (full) or positive, got ", l.mixer_proj_rank);
  TORCH_CHECK(l.norm_eps > 0 && cfg.model.backbone_norm_eps > 0, "config: norm eps must be positive");
  check_one_of("model.mixer_type", l.mixer_type, {"householderproduct", "dplr", "kronecker", "nonselective"});
  check_one_of("model.mixer_ac", l.mixer_ac, {"identity", "relu", "silu"});
  check_one_of("model.kronecker_normalization", l.kronecker_normalization, {"spectral", "column-wise"});
  {
    std::string list;
    for (const auto& name : layer_names()) list += (list.empty() ? "" : ", ") + name;
    const auto& names = layer_names();
    TORCH_CHECK(std::find(names.begin(), names.end(), l.layer) != names.end(), "config: model.layer = '", l.layer,
                "' is not known (valid: ", list, ")");
  }
  if (l.layer != "fprnn") {
    check_positive("model.d_state", l.d_state);
    TORCH_CHECK(l.dt_rank == -1 || l.dt_rank > 0, "config: model.dt_rank must be -1 (auto) or positive, got ",
                l.dt_rank);
    TORCH_CHECK(l.dt_min > 0 && l.dt_max >= l.dt_min, "config: model.dt_min and model.dt_max must satisfy 0 < dt_min ≤ "
                "dt_max, got ", l.dt_min, " and ", l.dt_max);
    TORCH_CHECK(l.dt_init_floor > 0, "config: model.dt_init_floor must be positive, got ", l.dt_init_floor);
    TORCH_CHECK(l.dt_scale > 0, "config: model.dt_scale must be positive, got ", l.dt_scale);
    check_one_of("model.dt_init", l.dt_init, {"random", "constant"});
  }
  if (l.layer == "fpmamba2" || l.layer == "mamba2") {
    check_positive("model.headdim", l.headdim);
    check_positive("model.ngroups", l.ngroups);
    const int64_t d_inner = l.expand * l.d_model;
    TORCH_CHECK(d_inner % l.headdim == 0, "config: model.headdim = ", l.headdim, " must divide d_inner = expand·d_model = ",
                d_inner, " (nheads = d_inner / headdim)");
    const int64_t nheads = d_inner / l.headdim;
    TORCH_CHECK(nheads % l.ngroups == 0, "config: model.ngroups = ", l.ngroups, " must divide nheads = ", nheads,
                " (d_inner ", d_inner, " / headdim ", l.headdim, ")");
    TORCH_CHECK(l.A_init_min > 0 && l.A_init_max >= l.A_init_min, "config: model.A_init_min and model.A_init_max must "
                "satisfy 0 < A_init_min ≤ A_init_max, got ", l.A_init_min, " and ", l.A_init_max);
  }

  const SolverConfig& s = cfg.solver;
  TORCH_CHECK(s.max_iter != 0, "config: solver.max_iter must be non-zero (negative = randomised cap)");
  check_positive("solver.eval_max_iter", s.eval_max_iter);
  TORCH_CHECK(s.threshold > 0, "config: solver.threshold must be positive");
  TORCH_CHECK(s.outlier_quantile >= 0 && s.outlier_quantile < 1, "config: solver.outlier_quantile must be in [0, 1)");
  TORCH_CHECK(s.eval_outlier_quantile >= 0 && s.eval_outlier_quantile < 1,
              "config: solver.eval_outlier_quantile must be in [0, 1)");
  TORCH_CHECK(s.stepsize > 0 && s.stepsize <= 1, "config: solver.stepsize must be in (0, 1]");
  TORCH_CHECK(s.stepsize_decay > 0 && s.stepsize_decay <= 1, "config: solver.stepsize_decay must be in (0, 1]");
  check_positive("solver.decay_patience", s.decay_patience);
  check_positive("solver.device_check_every", s.device_check_every);
  check_one_of("solver.eval_method", s.eval_method, {"picard", "sequential"});
  TORCH_CHECK(s.eval_method == "picard" || (l.layer != "fpmamba2" && l.layer != "mamba2"),
              "config: solver.eval_method = 'sequential' (the FPRNN dense oracle) is not available for model.layer = '",
              l.layer, "' (use picard)");

  const TaskConfig& t = cfg.task;
  check_one_of("task.name", t.name,
               {"word_problem", "copy", "modular_arithmetic_with_brackets", "modular_arithmetic", "parity",
                "cycle_navigation", "even_pairs"});
  TORCH_CHECK(t.min_train_length >= 1 && t.train_length >= t.min_train_length,
              "config: task.train_length must be ≥ task.min_train_length ≥ 1, got ", t.train_length, " and ",
              t.min_train_length);
  check_positive("task.samples_per_length", t.samples_per_length);
  TORCH_CHECK(t.train_fraction > 0 && t.train_fraction <= 1, "config: task.train_fraction must be in (0, 1]");
  TORCH_CHECK(t.eval_min_length >= 1 && t.eval_max_length >= t.eval_min_length,
              "config: task.eval_max_length must be ≥ task.eval_min_length ≥ 1");
  check_positive("task.eval_length_step", t.eval_length_step);
  check_positive("task.eval_samples", t.eval_samples);
  check_positive("task.val_samples", t.val_samples);
  TORCH_CHECK(t.context_length >= 0, "config: task.context_length must be ≥ 0 (0: pad each batch to its longest)");
  TORCH_CHECK(t.val_min_length >= 1 && t.val_max_length >= t.val_min_length,
              "config: task.val_max_length must be ≥ task.val_min_length ≥ 1");

  const TrainConfig& r = cfg.train;
  TORCH_CHECK(r.steps >= 0, "config: train.steps must be ≥ 0");
  check_positive("train.batch_size", r.batch_size);
  check_positive("train.eval_batch_size", r.eval_batch_size);
  TORCH_CHECK(r.lr > 0 && std::isfinite(r.lr), "config: train.lr must be a positive number");
  TORCH_CHECK(r.weight_decay >= 0, "config: train.weight_decay must be ≥ 0");
  TORCH_CHECK(r.warmup_steps >= 0, "config: train.warmup_steps must be ≥ 0");
  TORCH_CHECK(r.threads >= 0, "config: train.threads must be ≥ 0");
  TORCH_CHECK(r.log_every >= 1, "config: train.log_every must be ≥ 1");
  TORCH_CHECK(r.eval_every >= 0 && r.checkpoint_every >= 0, "config: eval_every/checkpoint_every must be ≥ 0");
  check_one_of("train.dtype", r.dtype, {"float32", "float64", "bfloat16"});
  check_one_of("train.device", r.device, {"cpu", "cuda"});
  if (r.cuda_graph) {
    TORCH_CHECK(r.device == "cuda", "config: train.cuda_graph needs train.device = cuda");
    TORCH_CHECK(l.layer == "fprnn", "config: train.cuda_graph records FPRNN layers only (model.layer = fprnn); the ",
                l.layer, " solve reads its residual on the host every iteration");
    TORCH_CHECK((l.mixer_type == "householderproduct" || l.mixer_type == "dplr") && l.mixer_h_dep &&
                    l.mixer_proj_rank <= 0 && r.dtype != "float64",
                "config: train.cuda_graph needs the FPRNN device loop: model.mixer_type householderproduct or dplr, "
                "mixer_h_dep, no mixer_proj_rank, float32 or bfloat16 (got ", l.mixer_type, ", mixer_h_dep ",
                l.mixer_h_dep, ", mixer_proj_rank ", l.mixer_proj_rank, ", ", r.dtype, ")");
    TORCH_CHECK(s.max_iter > 0, "config: train.cuda_graph needs a fixed training cap (solver.max_iter > 0): the "
                "randomised cap changes the recorded loop every step");
  }
}

namespace config {

Json load_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), path, ": cannot open config file (", std::strerror(errno), ")");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    Json j = Json::parse(ss.str(), nullptr, true, /*ignore_comments=*/true);
    TORCH_CHECK(j.is_object(), path, ": a config file must hold a JSON object");
    return j;
  } catch (const Json::parse_error& e) {
    TORCH_CHECK(false, path, ": malformed JSON (", e.what(), ")");
  }
}

Json merge(const Json& defaults, const Json& user, const std::string& prefix) {
  TORCH_CHECK(user.is_object(), "config: ", prefix.empty() ? "the config" : prefix, " must be an object");
  Json out = defaults;
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    auto d = defaults.find(it.key());
    TORCH_CHECK(d != defaults.end(), "config: unknown key '", key, "' (valid here: ", join_keys(defaults), ")");
    if (d->is_object()) {
      out[it.key()] = merge(*d, *it, key);
    } else {
      TORCH_CHECK(!it->is_object(), "config: '", key, "' is a value, not a section");
      out[it.key()] = *it;
    }
  }
  return out;
}

void apply_override(Json& cfg, const std::string& assignment) {
  const auto eq = assignment.find('=');
  TORCH_CHECK(eq != std::string::npos && eq > 0, "override '", assignment, "' must look like section.key=value");
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  Json* node = &cfg;
  std::string walked;
  size_t start = 0;
  while (true) {
    const auto dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    TORCH_CHECK(node->is_object(), "override '", assignment, "': '", walked, "' is not a section");
    auto it = node->find(part);
    TORCH_CHECK(it != node->end(), "override '", assignment, "': unknown key '", walked.empty() ? "" : walked + ".",
                part, "' (valid here: ", join_keys(*node), ")");
    walked = walked.empty() ? part : walked + "." + part;
    node = &*it;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  TORCH_CHECK(!node->is_object(), "override '", assignment, "': '", path, "' is a section, name one of its keys");
  try {
    if (node->is_string()) {
      *node = value;
    } else if (node->is_boolean()) {
      TORCH_CHECK(value == "true" || value == "false" || value == "1" || value == "0", "override '", assignment,
                  "': expected true or false");
      *node = (value == "true" || value == "1");
    } else if (node->is_number_integer()) {
      size_t used = 0;
      const long long v = std::stoll(value, &used);
      TORCH_CHECK(used == value.size(), "override '", assignment, "': expected an integer");
      *node = static_cast<int64_t>(v);
    } else if (node->is_number()) {
      size_t used = 0;
      const double v = std::stod(value, &used);
      TORCH_CHECK(used == value.size(), "override '", assignment, "': expected a number");
      *node = v;
    } else {
      *node = Json::parse(value);
    }
  } catch (const std::invalid_argument&) {
    TORCH_CHECK(false, "override '", assignment, "': cannot parse '", value, "'");
  } catch (const std::out_of_range&) {
    TORCH_CHECK(false, "override '", assignment, "': '", value, "' is out of range");
  } catch (const Json::parse_error&) {
    TORCH_CHECK(false, "override '", assignment, "': cannot parse '", value, "'");
  }
}

std::string format_table(const Json& cfg) {
  std::vector<std::pair<std::string, std::string>> rows;
  flatten(cfg, "", rows);
  size_t width = 0;
  for (const auto& r : rows) width = std::max(width, r.first.size());
  std::ostringstream os;
  for (const auto& r : rows) os << "  " << std::left << std::setw(static_cast<int>(width)) << r.first << "  " << r.second
                                << "\n";
  return os.str();
}

}  // namespace config
}  // namespace fprnn
