// fp_step entry: y = linrec((1 − λ) ⊙ (Q(raw) (bx − h) + h), λ) with raw_t = base_t + z_{t−1}; checks,
// dispatch and the solver residual from the kernel's per-token maxima. No autograd (the solver's map).
// Layout contract: base, z (B, T, r·D + r); h, bx, lambda (B, T, D); any strides here.
#include "fprnn/ops/fp_step.h"

#include "ops/fp_step/fp_step_common.h"

#include <ATen/Dispatch.h>

#include <limits>

namespace fprnn::ops {
namespace detail {

FpStepSizes fp_step_check(const char* fn, const FpStepInputs& in, const FpStepConfig& cfg, bool contiguous) {
  TORCH_CHECK(cfg.rank >= 1, fn, ": rank must be at least 1, got ", cfg.rank);
  TORCH_CHECK(cfg.norm_eps > 0, fn, ": norm_eps must be positive, got ", cfg.norm_eps);
  TORCH_CHECK(in.h.defined() && in.h.dim() == 3, fn, ": h must be (B, T, D), got ",
              in.h.defined() ? in.h.sizes() : c10::IntArrayRef{});
  FpStepSizes s{in.h.size(0), in.h.size(1), in.h.size(2), cfg.rank, cfg.rank * in.h.size(2) + cfg.rank};
  TORCH_CHECK(s.B > 0 && s.T > 0 && s.D > 0, fn, ": h must be non-empty, got ", in.h.sizes());
  const auto dtype = in.h.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64, fn,
              ": dtype must be float32 or float64 (bfloat16 takes the layer's generic path), got ", dtype);
  TORCH_CHECK(!in.h.is_cuda(), fn, ": this is the CPU kernel; on a GPU the layer runs the device solve loop (ops/fp_step_cuda.h)");
  TORCH_CHECK(in.h.is_cpu(), fn, ": only CPU tensors are supported, got device ", in.h.device());
  struct Arg {
    const char* name;
    const torch::Tensor& t;
    int64_t width;
  };
  for (const Arg& a : {Arg{"base", in.base, s.R}, Arg{"z", in.z, s.R}, Arg{"bx", in.bx, s.D},
                       Arg{"lambda", in.lambda, s.D}, Arg{"h", in.h, s.D}}) {
    if (&a.t == &in.z && !a.t.defined()) continue;  // z is optional
    TORCH_CHECK(a.t.defined(), fn, ": ", a.name, " is undefined");
    TORCH_CHECK(a.t.dim() == 3 && a.t.size(0) == s.B && a.t.size(1) == s.T && a.t.size(2) == a.width, fn, ": ",
                a.name, " must be (", s.B, ", ", s.T, ", ", a.width, ") for h ", in.h.sizes(), " and rank ", s.r,
                ", got ", a.t.sizes());
    TORCH_CHECK(a.t.scalar_type() == dtype, fn, ": ", a.name, " must be ", dtype, " like h, got ", a.t.scalar_type());
    TORCH_CHECK(a.t.device() == in.h.device(), fn, ": ", a.name, " is on ", a.t.device(), " but h is on ",
                in.h.device());
    if (contiguous) {
      TORCH_CHECK(a.t.is_contiguous(), fn, ": ", a.name, " must be contiguous, got strides ", a.t.strides(),
                  " (fp_step() makes its arguments contiguous)");
    }
  }
  return s;
}

}  // namespace detail

MixerAc mixer_ac_from_name(const std::string& name) {
  if (name == "identity") return MixerAc::kIdentity;
  if (name == "relu") return MixerAc::kRelu;
  if (name == "silu") return MixerAc::kSilu;
  TORCH_CHECK(false, "unknown mixer_ac '", name, "' (valid: identity, relu, silu)");
}

torch::Tensor fp_step(const FpStepInputs& in, const FpStepConfig& cfg, torch::Tensor* stats) {
  detail::fp_step_check("fp_step", in, cfg, /*contiguous=*/false);
  const FpStepInputs c{in.base.contiguous(),
                       in.z.defined() ? in.z.contiguous() : torch::Tensor(),
                       in.h.contiguous(),
                       in.bx.contiguous(),
                       in.lambda.contiguous()};
  torch::Tensor y = torch::empty(c.h.sizes(), c.h.options());
  torch::Tensor st;
  if (stats != nullptr) st = torch::empty({c.h.size(0), c.h.size(1), 2}, c.h.options());
  fp_step_fwd_cpu(c, cfg, y, st);
  if (stats != nullptr) *stats = st;
  return y;
}

std::vector<double> fp_step_residual(const torch::Tensor& stats, double eps) {
  TORCH_CHECK(stats.defined() && stats.dim() == 3 && stats.size(2) == 2 && stats.size(1) > 0,
              "fp_step_residual: stats must be (B, T, 2) with T > 0, got ",
              stats.defined() ? stats.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(stats.is_cpu(), "fp_step_residual: stats must be a CPU tensor, got ", stats.device());
  const torch::Tensor st = stats.contiguous();
  const int64_t B = st.size(0), T = st.size(1);
  std::vector<double> out(static_cast<size_t>(B));
  AT_DISPATCH_FLOATING_TYPES(st.scalar_type(), "fp_step_residual", [&] {
    const scalar_t* p = st.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      // amax over t, NaN-propagating like torch.amax.
      scalar_t r = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t q = detail::residual_ratio(p[(b * T + t) * 2], p[(b * T + t) * 2 + 1], eps);
        if (std::isnan(q) || q > r) r = q;
        if (std::isnan(r)) break;
      }
      out[static_cast<size_t>(b)] = static_cast<double>(r);
    }
  });
  return out;
}

}  // namespace fprnn::ops
