// Fixture verification: build the layer in float64 from a fixture, run training/eval/exact modes and
// the one-step backward, and compare every tensor and iteration count.
#include "fprnn/verify/verify.h"

#include "fprnn/common.h"
#include "fprnn/nn/fpmamba1_layer.h"
#include "fprnn/nn/fprnn_layer.h"

#include <algorithm>
#include <set>

namespace fprnn::verify {
namespace {

template <typename T>
T get_or(const Json& j, const char* key, T fallback) {
  auto it = j.find(key);
  return it == j.end() ? fallback : it->get<T>();
}

// Loads every "param.<name>" of the fixture into the layer. Reference names map onto ours as:
// Linear "<m>.weight" → our Linear at <m> (or <m>.0 for a single-stage projection), loaded as an
// effective weight (weight norm: v = W, g = ‖W_row‖); anything else → our parameter of the same name.
// Returns our name → (our Linear or null, the reference name) for reading gradients back.
struct Loaded {
  std::string ref_name;
  nn::LinearImpl* linear = nullptr;  // set for a Linear's effective weight
  torch::Tensor param;               // set otherwise
};

nn::LinearImpl* find_linear(torch::nn::Module& root, const std::string& path) {
  for (const auto& candidate : {path, path + ".0"}) {
    for (auto& item : root.named_modules()) {
      if (item.key() == candidate) {
        if (auto* lin = item.value()->as<nn::LinearImpl>()) return lin;
      }
    }
  }
  return nullptr;
}

std::vector<Loaded> load_params(torch::nn::Module& layer, const io::SafeTensors& st) {
  std::vector<Loaded> loaded;
  std::set<const void*> covered;  // our parameters that received a value
  auto params = layer.named_parameters();
  torch::NoGradGuard no_grad;
  for (const auto& [key, value] : st.tensors) {
    if (key.rfind("param.", 0) != 0) continue;
    Loaded l;
    l.ref_name = key.substr(6);
    const auto dot = l.ref_name.rfind('.');
    const std::string owner = l.ref_name.substr(0, dot), leaf = l.ref_name.substr(dot + 1);
    nn::LinearImpl* lin = find_linear(layer, owner);
    if (lin != nullptr && leaf == "weight") {
      lin->load_weight(value);
      l.linear = lin;
      for (const auto& p : lin->parameters())
        if (!p.is_same(lin->bias)) covered.insert(p.unsafeGetTensorImpl());
    } else {
      torch::Tensor target;
      if (lin != nullptr && leaf == "bias") {
        TORCH_CHECK(lin->bias.defined(), st.source, ": '", l.ref_name, "' is a bias our layer does not have");
        target = lin->bias;
      } else {
        const torch::Tensor* p = params.find(l.ref_name);
        TORCH_CHECK(p != nullptr, st.source, ": parameter '", l.ref_name, "' has no counterpart in our layer");
        target = *p;
      }
      TORCH_CHECK(target.sizes() == value.sizes(), st.source, ": parameter '", l.ref_name, "' is ", value.sizes(),
                  ", ours is ", target.sizes());
      target.copy_(value);
      l.param = target;
      covered.insert(target.unsafeGetTensorImpl());
    }
    loaded.push_back(l);
  }
  for (const auto& p : params)
    TORCH_CHECK(covered.count(p.value().unsafeGetTensorImpl()), st.source, ": the fixture has no value for our parameter '",
                p.key(), "'");
  return loaded;
}

}  // namespace

bool Report::ok() const {
  for (const auto& t : tensors)
    if (!t.ok) return false;
  for (const auto& c : counts)
    if (!c.ok()) return false;
  return !tensors.empty();
}

Json Report::to_json() const {
  Json j;
  j["file"] = file;
  j["layer"] = layer;
  j["tolerance"] = tolerance;
  j["ok"] = ok();
  Json t = Json::object();
  for (const auto& c : tensors)
    t[c.name] = {{"rms_ratio", c.rms_ratio}, {"max_abs", c.max_abs}, {"tolerance", c.tolerance}, {"ok", c.ok}};
  j["tensors"] = t;
  Json n = Json::object();
  for (const auto& c : counts) n[c.name] = {{"ours", c.ours}, {"reference", c.reference}, {"ok", c.ok()}};
  j["iterations"] = n;
  return j;
}

void configs_from_fixture(const Json& c, LayerConfig& layer, SolverConfig& solver) {
  layer.d_model = c.at("d_model").get<int64_t>();
  layer.expand = get_or<int64_t>(c, "expand", 2);
  layer.d_conv = get_or<int64_t>(c, "d_conv", 4);
  layer.mixer_type = c.at("mixer_type").get<std::string>();
  layer.mixer_rank = get_or<int64_t>(c, "mixer_rank", 1);
  layer.mixer_ac = get_or<std::string>(c, "mixer_ac", "silu");
  layer.mixer_proj_rank = get_or<int64_t>(c, "mixer_proj_rank", -1);
  layer.mixer_h_dep = get_or<bool>(c, "mixer_h_dep", true);
  layer.symm_mixer = get_or<bool>(c, "symm_mixer", false);
  layer.use_short_conv = get_or<bool>(c, "use_short_conv", false);
  layer.n_backwards = get_or<int64_t>(c, "n_backwards", 1);
  layer.norm_eps = get_or<double>(c, "norm_eps", 1e-5);
  layer.kronecker_normalization = get_or<std::string>(c, "kronecker_normalization", "spectral");
  layer.weight_norm = true;
  const std::string kind = get_or<std::string>(c, "layer", "FPRNN");
  layer.layer = kind == "FPMamba1" ? "fpmamba1" : "fprnn";
  layer.d_state = get_or<int64_t>(c, "d_state", 16);
  layer.dt_rank = get_or<int64_t>(c, "dt_rank", -1);
  layer.bc_norm = get_or<bool>(c, "bc_norm", true);
  layer.glu_in_loop = get_or<bool>(c, "glu_in_loop", false);
  layer.ssm_params_fp32 = true;  // the reference's float32 A, D, delta_bias (the fixtures carry that rounding)
  solver.threshold = get_or<double>(c, "convergence_threshold", 0.1);
  solver.outlier_quantile = get_or<double>(c, "outlier_quantile", 0.1);
  solver.max_iter = get_or<int64_t>(c, "train_max_iter", 1000);
  solver.eval_max_iter = get_or<int64_t>(c, "eval_max_iter", 1000);
  solver.eval_outlier_quantile = 0.0;
  if (c.contains("damping")) {
    const Json& d = c["damping"];
    solver.stepsize = get_or<double>(d, "stepsize", 1.0);
    solver.stepsize_decay = get_or<double>(d, "decay", 1.0);
    solver.decay_patience = get_or<int64_t>(d, "patience", 15);
    solver.stepsize_thresh = get_or<double>(d, "stepsize_thresh", 1e-3);
  } else {
    solver.stepsize = 1.0;
    solver.stepsize_decay = 1.0;
    solver.decay_patience = 15;
  }
}

namespace {

// Builds the layer type LayerT from the fixture in float64 and runs every check into `report`.
// LayerT provides forward(u, &fixed_point), prepare, solve_with, finish and last_stats (FPRNN, FP-Mamba1).
// 2⁻²³: the spacing of float32 numbers relative to their magnitude (one ulp at the top of a binade).
constexpr double kFloat32Resolution = 1.1920928955078125e-07;

template <typename LayerT>
void run_checks(const std::string& path, const io::SafeTensors& st, const Json& c, const LayerConfig& lcfg,
                const SolverConfig& scfg, Report& report) {
  const double tolerance = report.tolerance;
  torch::manual_seed(0);
  auto layer = std::make_shared<LayerT>(lcfg, scfg);
  layer->to(torch::kFloat64);
  const std::vector<Loaded> loaded = load_params(*layer, st);

  auto check = [&](const std::string& name, const torch::Tensor& ours) {
    if (!st.has(name)) return;
    const torch::Tensor& ref = st.at(name);
    TensorCheck tc;
    tc.name = name;
    TORCH_CHECK(ours.sizes() == ref.sizes(), path, ": '", name, "' is ", ref.sizes(), " in the fixture, ours is ",
                ours.sizes());
    tc.rms_ratio = rms_ratio(ours, ref);
    tc.max_abs = max_abs_diff(ours, ref);
    // A reference tensor whose every value is a float32 number was rounded to float32 by the reference
    // (FP-Mamba1's grad.A_log, grad.D, grad.dt_proj.bias: its scan takes A, D and delta_bias in float32). Ours
    // is rounded there too, but a float64 sum that lands on the other side of a float32 rounding boundary is
    // one float32 ulp away: such tensors can match only to float32 resolution.
    const bool float32_values = ref.is_floating_point() && ref.abs().max().item<double>() > 0 &&
                                torch::equal(ref.to(torch::kFloat32).to(ref.scalar_type()), ref);
    tc.tolerance = float32_values ? std::max(tolerance, kFloat32Resolution) : tolerance;
    tc.ok = tc.rms_ratio <= tc.tolerance && std::isfinite(tc.rms_ratio);
    report.tensors.push_back(tc);
  };
  auto count = [&](const std::string& name, int64_t ours) {
    if (!st.has(name)) return;
    report.counts.push_back({name, ours, static_cast<int64_t>(st.at(name).item<double>())});
  };

  const torch::Tensor input = st.at("input").to(torch::kFloat64).clone().requires_grad_(true);

  // Training mode: capped solve, one-step gradient.
  layer->train();
  torch::Tensor h_star;
  const torch::Tensor y = layer->forward(input, &h_star);
  check("y_train", y.detach());
  check("h_star_train", h_star);
  count("iters_train", layer->last_stats().recorded());
  if (st.has("grad_output")) {
    (y * st.at("grad_output")).sum().backward();
    check("grad.input", input.grad());
    for (const auto& l : loaded) {
      const torch::Tensor g = l.linear != nullptr ? l.linear->effective_weight_grad() : l.param.grad();
      TORCH_CHECK(g.defined(), path, ": no gradient reached '", l.ref_name, "'");
      check("grad." + l.ref_name, g);
    }
  }

  // Evaluation mode: every sample must converge, cap eval_max_iter.
  layer->eval();
  {
    torch::NoGradGuard no_grad;
    torch::Tensor h_eval;
    const torch::Tensor y_eval = layer->forward(input.detach(), &h_eval);
    check("y_eval", y_eval);
    check("h_star_eval", h_eval);
    count("iters_eval", layer->last_stats().recorded());

    // The exact fixed point: a fixed number of iterations at a constant step, no early stop.
    if (st.has("h_star_exact")) {
      solver::SolverOptions opt;
      opt.max_iter = get_or<int64_t>(c, "exact_iterations", 300);
      opt.stepsize = get_or<double>(c, "exact_step", 1.0);
      opt.stepsize_decay = 1.0;
      opt.threshold = -1.0;  // a residual is never below −1: run all iterations
      opt.stepsize_thresh = 0.0;
      const auto in = layer->prepare(input.detach());
      const torch::Tensor h_exact = layer->solve_with(in, opt);
      check("h_star_exact", h_exact);
      check("y_exact", layer->finish(in, h_exact));
    }
  }
}

}  // namespace

Report verify_fixture(const std::string& path, double tolerance) {
  const io::SafeTensors st = io::load_safetensors(path);
  auto meta = st.metadata.find("config");
  TORCH_CHECK(meta != st.metadata.end(), path, ": not a fixture (no config in the metadata)");
  Json c;
  try {
    c = Json::parse(meta->second);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, path, ": fixture config is not valid JSON (", e.what(), ")");
  }
  Report report;
  report.file = path;
  report.tolerance = tolerance;
  report.config = c;
  report.layer = get_or<std::string>(c, "layer", "FPRNN");
  TORCH_CHECK(report.layer == "FPRNN" || report.layer == "FPMamba1", path, ": layer '", report.layer,
              "' is not supported by this build (supported: FPRNN, FPMamba1)");

  LayerConfig lcfg;
  SolverConfig scfg;
  try {
    configs_from_fixture(c, lcfg, scfg);
  } catch (const Json::exception& e) {
    TORCH_CHECK(false, path, ": fixture config is incomplete (", e.what(), ")");
  }
  if (report.layer == "FPMamba1") {
    run_checks<nn::FPMamba1LayerImpl>(path, st, c, lcfg, scfg, report);
  } else {
    run_checks<nn::FPRNNLayerImpl>(path, st, c, lcfg, scfg, report);
  }
  return report;
}

}  // namespace fprnn::verify
