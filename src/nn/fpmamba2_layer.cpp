// The FP-Mamba2 layer (spec §6) and the one-pass Mamba-2 baseline: input projections, the fixed-point map G
// around the SSD scan, the damped solve, the one-step gradient and the gated output.
// Layout: u (B, T, d_model) → (B, T, d_model), D = expand · d_model = H · P, y (B, T, D).
#include "fprnn/nn/fpmamba2_layer.h"

#include "fprnn/common.h"
#include "fprnn/ops/ssd.h"
#include "nn/fixed_point_glue.h"

#include <cmath>

namespace fprnn::nn {
namespace {

// F.normalize's default eps, as for FP-Mamba1's B', C' (spec §5.2, §6).
constexpr double kBcNormEps = 1e-12;

// The scan and the RMSNorm run in float32 at least (bfloat16 compute casts up, as mamba's SSD kernels compute
// in float32), in float64 for float64 layers.
torch::Dtype scan_dtype(const Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// Inverse softplus of Δ drawn log-uniformly in [dt_min, dt_max] (floored), one per head: mamba's dt_bias init.
Tensor dt_bias_init(const LayerConfig& cfg, int64_t H) {
  const double lo = std::log(cfg.dt_min), hi = std::log(cfg.dt_max);
  const Tensor dt = torch::exp(torch::rand({H}, torch::kFloat64) * (hi - lo) + lo).clamp_min(cfg.dt_init_floor);
  return (dt + torch::log(-torch::expm1(-dt))).to(torch::kFloat32);
}

}  // namespace

FPMamba2LayerImpl::FPMamba2LayerImpl(const LayerConfig& cfg_, const SolverConfig& solver)
    : cfg(cfg_),
      solver_cfg(solver),
      D(cfg_.expand * cfg_.d_model),
      N(cfg_.d_state),
      H(0),
      P(cfg_.headdim),
      G(cfg_.ngroups),
      one_pass_(cfg_.layer == "mamba2") {
  const char* name = one_pass_ ? "Mamba2" : "FPMamba2";
  TORCH_CHECK(cfg.layer == "fpmamba2" || cfg.layer == "mamba2", name, ": layer must be fpmamba2 or mamba2, got '",
              cfg.layer, "'");
  TORCH_CHECK(cfg.d_model > 0 && cfg.expand > 0, name, ": d_model and expand must be positive, got ", cfg.d_model,
              " and ", cfg.expand);
  TORCH_CHECK(N > 0, name, ": d_state must be positive, got ", N);
  TORCH_CHECK(P > 0 && D % P == 0, name, ": headdim = ", P, " must divide d_inner = ", D);
  H = D / P;
  TORCH_CHECK(G > 0 && H % G == 0, name, ": ngroups = ", G, " must divide nheads = ", H);
  TORCH_CHECK(cfg.n_backwards >= 0, name, ": n_backwards must be ≥ 0, got ", cfg.n_backwards);
  TORCH_CHECK(cfg.dt_min > 0 && cfg.dt_max >= cfg.dt_min && cfg.dt_init_floor > 0, name,
              ": need 0 < dt_min ≤ dt_max and dt_init_floor > 0, got ", cfg.dt_min, ", ", cfg.dt_max, ", ",
              cfg.dt_init_floor);
  TORCH_CHECK(cfg.A_init_min > 0 && cfg.A_init_max >= cfg.A_init_min, name,
              ": need 0 < A_init_min ≤ A_init_max, got ", cfg.A_init_min, " and ", cfg.A_init_max);
  const int64_t d = cfg.d_model;
  in_proj = register_module("in_proj", Linear(d, 2 * D + 2 * G * N + H, false, false));
  if (cfg.use_short_conv) conv1d = register_module("conv1d", CausalConv1d(D + 2 * G * N, cfg.d_conv));
  dt_bias = register_parameter("dt_bias", dt_bias_init(cfg, H));
  // A = U[A_init_min, A_init_max] per head, stored as its log; float32 as the reference.
  A_log = register_parameter("A_log", torch::log(torch::empty({H}, torch::kFloat32).uniform_(cfg.A_init_min,
                                                                                          cfg.A_init_max)));
  D_skip = register_parameter("D", torch::ones({H}));
  if (!one_pass_) {
    bc_y_proj = register_module("bc_y_proj", Linear(D, 2 * G * N, false, cfg.weight_norm));
    if (!cfg.glu_in_loop) z_y_proj = register_module("z_y_proj", Linear(D, D, false, cfg.weight_norm));
    const int64_t P_mix = (cfg.symm_mixer || !cfg.mixer_h_dep) ? D : 2 * D;
    mixer = make_mixer(cfg, P_mix, D);
    register_module("mixer", mixer);
  }
  norm = register_module("norm", RMSNorm(D, cfg.norm_eps));
  out_proj = register_module("out_proj", Linear(D, d, false, false));
}

void FPMamba2LayerImpl::after_backbone_init(int64_t n_layers) {
  torch::NoGradGuard no_grad;
  // The backbone zeroes Linear biases only; dt_bias is a plain parameter and keeps its draw (as in mamba_ssm).
  // out_proj.weight: Kaiming-uniform(a = √5) (= U(±1/√fan_in)) divided by √n_layers (spec §3).
  default_uniform_(out_proj->weight_plain, D);
  out_proj->weight_plain.div_(std::sqrt(static_cast<double>(n_layers)));
}

FPMamba2LayerImpl::Inputs FPMamba2LayerImpl::prepare(const Tensor& u) {
  const char* name = one_pass_ ? "Mamba2" : "FPMamba2";
  TORCH_CHECK(u.dim() == 3 && u.size(2) == cfg.d_model, name, ": input must be (B, T, ", cfg.d_model, "), got ",
              u.sizes());
  TORCH_CHECK(u.size(0) > 0 && u.size(1) > 0, name, ": empty input ", u.sizes());
  Inputs in;
  const Tensor zxbcdt = in_proj->forward(u);
  in.z = zxbcdt.narrow(2, 0, D);
  Tensor xBC = zxbcdt.narrow(2, D, D + 2 * G * N);
  if (cfg.use_short_conv) xBC = conv1d->forward_silu(xBC);  // otherwise the raw projection, no activation
  in.x = xBC.narrow(2, 0, D);
  in.B_x = xBC.narrow(2, D, G * N);
  in.C_x = xBC.narrow(2, D + G * N, G * N);
  const auto sd = scan_dtype(u);
  in.dt = zxbcdt.narrow(2, 2 * D + 2 * G * N, H).to(sd);
  // As FP-Mamba1 (model.ssm_params_fp32): A = −exp(A_log.float()), D and dt_bias rounded to float32 before the
  // scan, as the reference's float32 kernels see them; off, a float64 layer is exact throughout.
  auto scan_param = [&](const Tensor& p) { return (cfg.ssm_params_fp32 ? p.to(torch::kFloat32) : p).to(sd); };
  in.A = scan_param(-torch::exp(cfg.ssm_params_fp32 ? A_log.to(torch::kFloat32) : A_log));
  in.D_skip = scan_param(D_skip);
  in.dt_bias = scan_param(dt_bias);
  return in;
}

Tensor FPMamba2LayerImpl::mixer_param(const Inputs& in, const Tensor& y) const {
  if (!cfg.mixer_h_dep) return in.x;
  const Tensor s = shift(y, 1, 1);
  if (cfg.symm_mixer) return in.x + s;
  return torch::cat({in.x, s}, -1);
}

Tensor FPMamba2LayerImpl::step(const Inputs& in, const Tensor& y) {
  Tensor x_tilde = in.x, Bp = in.B_x, Cp = in.C_x;
  if (!one_pass_) {
    // x̃ = Q (x − y) + y: the mixer interpolates between the input and the iterate (spec §6).
    x_tilde = mixer->forward(mixer_param(in, y), in.x - y) + y;
    const Tensor bc = bc_y_proj->forward(shift(y, 1, 1));
    Bp = Bp + bc.narrow(2, 0, G * N);
    Cp = Cp + bc.narrow(2, G * N, G * N);
  }
  const int64_t Bsz = in.x.size(0), T = in.x.size(1);
  const auto sd = in.dt.scalar_type();
  Tensor B4 = Bp.to(sd).reshape({Bsz, T, G, N}), C4 = Cp.to(sd).reshape({Bsz, T, G, N});
  if (cfg.bc_norm) {
    // Per group over d_state. The reference normalises always and ignores bc_norm (spec §16.2); the default
    // (true) is its behaviour, false is honoured here.
    B4 = l2_normalize(B4, -1, kBcNormEps);
    C4 = l2_normalize(C4, -1, kBcNormEps);
  }
  Tensor o = ops::ssd(x_tilde.to(sd).reshape({Bsz, T, H, P}), in.dt, in.A, B4, C4, in.D_skip, in.dt_bias)
                 .reshape({Bsz, T, D});
  // Spec §16.2: the reference multiplies by SiLU(z) here unconditionally and then gates again (outside the
  // loop, or in its kernel with glu_in_loop), so its output is gated twice. The evident intent, as in
  // FP-Mamba1 and mamba_ssm's Mamba2 (RMSNormGated, norm_before_gate = False), is one gate: here, inside the
  // loop, only with glu_in_loop; otherwise once in output().
  if (cfg.glu_in_loop) o = o * torch::silu(in.z.to(sd));
  return norm->forward(o).to(in.x.scalar_type());
}

Tensor FPMamba2LayerImpl::output(const Inputs& in, const Tensor& y) {
  if (cfg.glu_in_loop) return out_proj->forward(y);
  Tensor z = in.z;
  // Spec §16.1: the reference adds z_y_proj(shift(y)) to z transposed as if z were (B, D, T); z is (B, T, D)
  // there too, so that crashes unless T == D and mixes time and channels when T == D. The evident intent,
  // z + W_zy shift(y) on (B, T, D), as FP-Mamba1, is implemented.
  if (!one_pass_) z = z + z_y_proj->forward(shift(y, 1, 1));
  return out_proj->forward(torch::silu(z) * y);
}

// The solve/finish/forward glue is shared with the other FP-Mamba layer (src/nn/fixed_point_glue.h).
Tensor FPMamba2LayerImpl::solve_with(const Inputs& in, const solver::SolverOptions& opt) {
  return detail::solve_from_zero([&](const Tensor& y) { return step(in, y); }, in.x, opt, stats_);
}

Tensor FPMamba2LayerImpl::solve(const Inputs& in) {
  return solve_with(in, detail::solve_options(is_training(), solver_cfg, max_iter_override_));
}

Tensor FPMamba2LayerImpl::finish(const Inputs& in, const Tensor& y_star) {
  return output(in, detail::steps_from([&](const Tensor& y) { return step(in, y); }, y_star, cfg.n_backwards));
}

Tensor FPMamba2LayerImpl::forward(const Tensor& u, Tensor* y_star) {
  return detail::fixed_point_forward(*this, u, y_star, one_pass_, stats_);
}

}  // namespace fprnn::nn
