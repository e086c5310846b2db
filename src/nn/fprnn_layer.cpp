// The FPRNN layer (spec §4): input gates, the fixed-point map F, the solve, the one-step gradient and
// the gated output. Layout: u (B, T, d_model) → (B, T, d_model), D = expand · d_model.
#include "fprnn/nn/fprnn_layer.h"

#include "fprnn/common.h"
#include "fprnn/ops/gates.h"
#include "fprnn/ops/mix_step.h"
#include "fprnn/ops/linrec.h"
#include "fprnn/solver/sequential.h"

namespace fprnn::nn {

FPRNNLayerImpl::FPRNNLayerImpl(const LayerConfig& cfg_, const SolverConfig& solver)
    : cfg(cfg_), solver_cfg(solver), D(cfg_.expand * cfg_.d_model) {
  TORCH_CHECK(cfg.d_model > 0 && cfg.expand > 0, "FPRNN: d_model and expand must be positive, got ", cfg.d_model,
              " and ", cfg.expand);
  TORCH_CHECK(cfg.n_backwards >= 0, "FPRNN: n_backwards must be ≥ 0, got ", cfg.n_backwards);
  const int64_t d = cfg.d_model;
  // Plain (not weight-normalised) linears, as in the reference layer; only the mixer's are weight-normed.
  input_trans = register_module("input_trans", Linear(d, 2 * D, false, false));
  if (cfg.use_short_conv) {
    conv1d_x = register_module("conv1d_x", CausalConv1d(D, cfg.d_conv));
    conv1d_b = register_module("conv1d_b", CausalConv1d(D, cfg.d_conv));
    conv1d_mixer = register_module("conv1d_mixer", CausalConv1d(D, cfg.d_conv));
    conv1d_lambda = register_module("conv1d_lambda", CausalConv1d(D, cfg.d_conv));
    conv1d_c = register_module("conv1d_c", CausalConv1d(2 * D, cfg.d_conv));
  }
  b_proj = register_module("b_proj", Linear(D, D, false, false));
  lambda_proj = register_module("lambda_proj", Linear(D, D, true, false));
  c_proj = register_module("c_proj", Linear(2 * D, D, false, false));
  output_norm = register_module("output_norm", RMSNorm(D, cfg.norm_eps));
  output_trans = register_module("output_trans", Linear(D, d, false, false));
  const int64_t P = (cfg.symm_mixer || !cfg.mixer_h_dep) ? D : 2 * D;
  mixer = make_mixer(cfg, P, D);
  register_module("mixer", mixer);
}

FPRNNLayerImpl::Inputs FPRNNLayerImpl::prepare(const Tensor& u) {
  TORCH_CHECK(u.dim() == 3 && u.size(2) == cfg.d_model, "FPRNN: input must be (B, T, ", cfg.d_model, "), got ",
              u.sizes());
  TORCH_CHECK(u.size(0) > 0 && u.size(1) > 0, "FPRNN: empty input ", u.sizes());
  Inputs in;
  Tensor x;
  if (u.is_cuda()) {
    // Two GEMMs on the weight's halves rather than one and two column slices: x comes out contiguous (the
    // convolutions would copy a slice), and the backward has no zero-filled (B, T, 2D) gradient to assemble.
    // The halves by split, whose backward concatenates their gradients in one pass (two narrows' backward
    // zero-fills the whole weight twice and adds).
    const auto w = input_trans->weight().to(u.scalar_type()).split(D, 0);
    x = torch::nn::functional::linear(u, w[0]);
    in.z = torch::nn::functional::linear(u, w[1]);
  } else {
    const Tensor xz = input_trans->forward(u);
    x = xz.narrow(2, 0, D);
    in.z = xz.narrow(2, D, D);
  }
  Tensor x_b, x_lambda;
  if (cfg.use_short_conv) {
    // All four convolutions read the same pre-conv x; x is a slice of the input projection's output, and
    // each convolution would otherwise make its own contiguous copy of it.
    // On CUDA they run as one op, which reads x once each way and sums their input gradients in the kernel.
    x = x.contiguous();
    const auto ys = forward_silu_shared_input({conv1d_mixer, conv1d_b, conv1d_lambda, conv1d_x}, x);
    in.x_mix = ys[0];
    x_b = ys[1];
    x_lambda = ys[2];
    x = ys[3];
  } else {
    // Spec §16.23: the reference crashes on this branch; its evident intent is x in (B, T, D), no activation.
    in.x_mix = x_b = x_lambda = x;
  }
  in.x = x;
  if (x.is_cuda()) {
    // One fused pass forward and backward (ops/gates.h) instead of five ATen ones; λ's bias enters there.
    const Tensor l = torch::nn::functional::linear(x_lambda, lambda_proj->weight().to(x_lambda.scalar_type()));
    std::tie(in.bx, in.lambda, in.one_minus_lambda) = ops::input_gates(b_proj->forward(x_b), x, l, lambda_proj->bias);
    auto* hh = dynamic_cast<HouseholderMixerImpl*>(mixer.get());
    if (hh != nullptr && cfg.mixer_h_dep && hh->u_proj->stages.size() == 1 && ops::mix_step_cuda_fits(D, hh->rank)) {
      const bool concat = !cfg.symm_mixer;  // param = [x_mix, shift(h)] or x_mix + shift(h)
      const auto [w, b] = hh->padded_projection(x.scalar_type(), x.device(), concat ? 2 : 1);
      in.raw_base = ops::linear_rows(in.x_mix.reshape({-1, D}), w.front(), b);
      in.w_h = w.back();
    }
    return in;
  }
  const Tensor b = torch::silu(b_proj->forward(x_b));
  in.bx = b * x;
  in.lambda = torch::sigmoid(lambda_proj->forward(x_lambda));
  in.one_minus_lambda = 1 - in.lambda;
  return in;
}

Tensor FPRNNLayerImpl::mixer_param(const Inputs& in, const Tensor& h) const {
  if (!cfg.mixer_h_dep) return in.x_mix;
  const Tensor s = shift(h, 1, 1);
  if (cfg.symm_mixer) return in.x_mix + s;
  return torch::cat({in.x_mix, s}, -1);
}

Tensor FPRNNLayerImpl::step(const Inputs& in, const Tensor& h) {
  if (h.is_cuda()) {
    // The mixer, its residual and the gate (1 − λ)(Q(b⊙x − h) + h) as one op forward and one backward
    // (ops/mix_step.h) on the projection's padded output.
    auto* hh = dynamic_cast<HouseholderMixerImpl*>(mixer.get());
    if (hh != nullptr && ops::mix_step_cuda_fits(D, hh->rank)) {
      const ops::MixStepSpec spec{hh->rank, hh->ac, hh->eps, hh->sum_form};
      // raw(h) = raw_base + shift(h) W_hᵀ: the x part's projection is shared with the solve (prepare).
      const Tensor raw =
          in.raw_base.defined()
              ? torch::addmm(in.raw_base, shift(h, 1, 1).reshape({-1, D}), in.w_h.t()).view({h.size(0), h.size(1), -1})
              : hh->project_padded(mixer_param(in, h));
      const Tensor pre = ops::mix_step(raw, in.bx, h, in.one_minus_lambda, spec);
      return ops::linrec(pre, in.lambda);
    }
  }
  const Tensor mixed = mixer->forward(mixer_param(in, h), in.bx - h);
  return ops::linrec(in.one_minus_lambda * (mixed + h), in.lambda);
}

Tensor FPRNNLayerImpl::output(const Inputs& in, const Tensor& h) {
  Tensor x_c;
  if (cfg.use_short_conv) {
    // Sees h_t and the 3 steps before; on CUDA without forming [x, h] (its gradient's halves come back
    // contiguous, so the sums with the other gradients of x and h are vectorised).
    x_c = conv1d_c->forward_silu_pair(in.x, h);
  } else {
    x_c = torch::cat({in.x, shift(h, 1, 1)}, -1);
  }
  if (h.is_cuda()) {
    // RMSNorm(silu(z) ⊙ silu(c) ⊙ h) in one fused pass forward and backward (ops/gates.h).
    return output_trans->forward(
        ops::gated_rmsnorm(in.z, c_proj->forward(x_c), h, output_norm->weight, output_norm->eps));
  }
  const Tensor c = torch::silu(c_proj->forward(x_c));
  return output_trans->forward(output_norm->forward(torch::silu(in.z) * (c * h)));
}

Tensor FPRNNLayerImpl::solve_with(const Inputs& in, const solver::SolverOptions& opt) {
  torch::NoGradGuard no_grad;
  FastStep F(*this, in);
  // Under a CUDA graph capture the host cannot read the stop flag: every iteration up to the cap is
  // queued (those after the stop are no-ops) and the statistics are read when asked for, after a replay.
#ifdef FPRNN_WITH_CUDA
  const bool capturing = ops::cuda_stream_capturing(in.x.device());
#else
  const bool capturing = false;
#endif
  if (F.device_loop()) {
    Tensor h = F.solve_device(opt, capturing ? 0 : solver_cfg.device_check_every);
    pending_ = PendingStats{F.device_state(), opt.quantile, opt.threshold};
    if (capturing) recorded_ = pending_;
    return h;
  }
  TORCH_CHECK(!capturing, "FPRNN: only the GPU device loop (Householder/DPLR mixers with single-stage "
              "projections, mixer_h_dep, float32 or bfloat16) can be recorded as a CUDA graph; this layer's solve (",
              cfg.mixer_type, ", ", in.x.scalar_type(), ") reads its residual on the host every iteration");
  pending_.reset();
  auto [h, stats] = solver::solve_with_residual([&](const Tensor& y) { return F.step_with_residual(y, opt.eps); },
                                                torch::zeros_like(in.x), opt);
  stats_ = stats;
  return h;
}

const solver::SolveStats& FPRNNLayerImpl::last_stats() const {
  if (pending_) stats_ = device_solve_stats(pending_->state, pending_->quantile, pending_->threshold);
  return stats_;
}

Tensor FPRNNLayerImpl::solve(const Inputs& in) {
  if (!is_training() && solver_cfg.eval_method == "sequential") {
    pending_.reset();
    torch::NoGradGuard no_grad;
    Tensor h = solver::solve_sequential(*this, in);
    stats_ = solver::SolveStats{};
    stats_.iterations = 0;
    stats_.converged = true;
    return h;
  }
  const auto opt = is_training() ? solver::SolverOptions::training(solver_cfg, max_iter_override_)
                                 : solver::SolverOptions::evaluation(solver_cfg);
  return solve_with(in, opt);
}

Tensor FPRNNLayerImpl::finish(const Inputs& in, const Tensor& h_star) {
  Tensor h = h_star.detach();
  for (int64_t i = 0; i < cfg.n_backwards; ++i) h = step(in, h);
  return output(in, h);
}

Tensor FPRNNLayerImpl::forward(const Tensor& u, Tensor* h_star) {
  const Inputs in = prepare(u);
  const Tensor h = solve(in).detach();
  if (h_star != nullptr) *h_star = h;
  return finish(in, h);
}

solver::SolveStats device_solve_stats(const ops::DeviceSolverState& state, double quantile, double threshold) {
  const Tensor counters = state.counters.cpu(), best = state.best.cpu(), last = state.last.cpu();
  solver::SolveStats stats;
  stats.iterations = counters[0].item<int64_t>();
  stats.last_residual_max = last.max().item<double>();
  stats.best_residual_max = best.max().item<double>();
  std::vector<double> bv(best.data_ptr<double>(), best.data_ptr<double>() + best.numel());
  stats.best_residual_quantile = solver::quantile(bv, quantile);
  stats.converged = stats.best_residual_quantile < threshold;
  return stats;
}

ops::DeviceSolverOptions device_solver_options(const solver::SolverOptions& opt) {
  ops::DeviceSolverOptions d;
  d.max_iter = opt.max_iter;
  d.quantile = opt.quantile;
  d.threshold = opt.threshold;
  d.stepsize = opt.stepsize;
  d.stepsize_decay = opt.stepsize_decay;
  d.decay_patience = opt.decay_patience;
  d.stepsize_thresh = opt.stepsize_thresh;
  d.eps = opt.eps;
  return d;
}

// ---- FastStep --------------------------------------------------------------------------------------

FastStep::FastStep(FPRNNLayerImpl& layer, const FPRNNLayerImpl::Inputs& in)
    : layer_(layer), in_(in), h_dep_(layer.cfg.mixer_h_dep) {
  torch::NoGradGuard no_grad;
  const auto dtype = in.x.scalar_type();
  const int64_t D = layer.D;
  auto projections = layer.mixer->projections();
  if (projections.empty()) return;  // the mixer has no parameter input (non-selective)
  for (auto& p : projections) single_stage_ = single_stage_ && p->stages.size() == 1;

  // The fused kernel covers the Householder/DPLR mixers whose projections are single Linears; low-rank
  // projections (a second GEMM), the Kronecker and non-selective mixers and bfloat16 stay generic.
  const auto* hh = dynamic_cast<const HouseholderMixerImpl*>(layer.mixer.get());
  const bool fusable = layer.solver_cfg.fused && hh != nullptr && single_stage_;
#ifdef FPRNN_WITH_CUDA
  device_loop_ = fusable && h_dep_ && in.x.is_cuda() && (dtype == torch::kFloat32 || dtype == torch::kBFloat16);
#endif
  fused_ = fusable && in.x.is_cpu() && (dtype == torch::kFloat32 || dtype == torch::kFloat64);
  const bool concat = h_dep_ && !layer.cfg.symm_mixer;
  if (device_loop_ && in.raw_base.defined()) {
    // prepare() already projected the x part (padded rows, the layout the device kernels take).
    base_ = in.raw_base.detach();
    // Contiguous: the iterations' GEMM reads it that way at 86.3 µs per graphed A5 iteration against 88.1 µs
    // for the transposed view (cuBLAS picks another kernel), more than the 8 µs copy costs once per solve.
    w_h_t_ = in.w_h.detach().t().contiguous();
  } else {
    // Stack every projection's first stage into one matrix W0 (rows0 × P) with its biases.
    std::vector<Tensor> w0, b0;
    int64_t row = 0;
    for (auto& p : projections) {
      auto& first = p->stages.front();
      const Tensor w = first->weight().detach().to(dtype);
      w0.push_back(w);
      b0.push_back(first->bias.defined() ? first->bias.detach().to(dtype) : torch::zeros({w.size(0)}, w.options()));
      Part part;
      part.offset = row;
      part.rows = w.size(0);
      if (p->stages.size() == 2) {
        auto& second = p->stages[1];
        part.w1_t = second->weight().detach().to(dtype).t().contiguous();
        if (second->bias.defined()) part.b1 = second->bias.detach().to(dtype);
      }
      parts_.push_back(part);
      row += w.size(0);
    }
    Tensor W0 = torch::cat(w0, 0);
    Tensor bias0 = torch::cat(b0, 0);
    if (device_loop_) {
      // r·D + r rows (1025 for D = 1024, r = 1) make cuBLAS fall back to unaligned kernels at several times
      // the cost of aligned ones; zero rows up to padded_projection_rows keep every GEMM of the loop aligned.
      // The device kernels take the padded width as their leading dimension and never read the pad.
      const int64_t rows = W0.size(0), padded = padded_projection_rows(rows);
      if (padded != rows) {
        W0 = torch::cat({W0, torch::zeros({padded - rows, W0.size(1)}, W0.options())}, 0);
        bias0 = torch::cat({bias0, torch::zeros({padded - rows}, bias0.options())}, 0);
      }
    }
    const Tensor x2d = in.x_mix.reshape({-1, D});
    const Tensor w_x = concat ? W0.narrow(1, 0, D) : W0;
    base_ = torch::addmm(bias0, x2d, w_x.t());
    if (h_dep_) w_h_t_ = (concat ? W0.narrow(1, D, D) : W0).t().contiguous();
    if (!h_dep_) raw_const_ = finish(base_).view({in.x.size(0), in.x.size(1), -1});
  }

  if (!fused_ && !device_loop_) return;
  fp_cfg_.rank = hh->rank;
  fp_cfg_.ac = ops::mixer_ac_from_name(hh->ac);
  fp_cfg_.norm_eps = hh->eps;
  fp_cfg_.sum_form = hh->sum_form;
  fp_in_.base = base_.view({in.x.size(0), in.x.size(1), -1});
  fp_in_.bx = in.bx.contiguous();
  fp_in_.lambda = in.lambda.contiguous();
}

Tensor FastStep::finish(const Tensor& z) const {
  if (single_stage_) return z;
  std::vector<Tensor> pieces;
  for (const auto& part : parts_) {
    Tensor piece = z.narrow(1, part.offset, part.rows);
    if (part.w1_t.defined()) {
      piece = part.b1.defined() ? torch::addmm(part.b1, piece, part.w1_t) : torch::mm(piece, part.w1_t);
    }
    pieces.push_back(piece);
  }
  return torch::cat(pieces, 1);
}

Tensor FastStep::raw(const Tensor& h) {
  torch::NoGradGuard no_grad;
  if (!base_.defined()) return torch::empty({h.size(0), h.size(1), 0}, h.options());
  if (!h_dep_) return raw_const_;
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2);
  const Tensor s = shift(h, 1, 1).view({-1, D});
  const Tensor z = torch::addmm(base_, s, w_h_t_);
  return finish(z).view({B, T, -1});
}

bool FastStep::use_fused(const Tensor& h) const {
  return fused_ && h.scalar_type() == in_.x.scalar_type() && h.device() == in_.x.device() &&
         h.sizes() == in_.x.sizes();
}

Tensor FastStep::take_output() {
  // Free: this object holds the only reference to the tensor and to its storage (no caller handle or view).
  const auto is_free = [](const Tensor& t) {
    return t.defined() && t.use_count() == 1 && t.storage().use_count() == 1;
  };
  for (int k = 0; k < 2; ++k) {
    const int slot = (next_out_ + k) % 2;
    if (is_free(out_[slot])) {
      next_out_ = 1 - slot;
      return out_[slot];
    }
  }
  // Both in use by the caller (or not made yet): a new buffer replaces our handle on the older one.
  const int slot = !out_[0].defined() ? 0 : !out_[1].defined() ? 1 : next_out_;
  out_[slot] = torch::empty(in_.x.sizes(), in_.x.options());
  next_out_ = 1 - slot;
  return out_[slot];
}

Tensor FastStep::fused_step(const Tensor& h, bool with_stats) {
  torch::NoGradGuard no_grad;
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2);
  fp_in_.h = h.contiguous();
  fp_in_.z = Tensor();
  if (h_dep_ && T > 1) {  // at T = 1 no token reads z (row t − 1 of the previous token)
    if (!z_.defined()) z_ = torch::empty({B * T, w_h_t_.size(1)}, base_.options());
    torch::mm_out(z_, fp_in_.h.view({B * T, D}), w_h_t_);
    fp_in_.z = z_.view({B, T, -1});
  }
  if (with_stats && !stats_.defined()) stats_ = torch::empty({B, T, 2}, h.options());
  Tensor stats = with_stats ? stats_ : Tensor();
  Tensor y = take_output();
  ops::fp_step_fwd_cpu(fp_in_, fp_cfg_, y, stats);
  fp_in_.h = Tensor();  // do not keep the caller's iterate alive (it may be one of out_)
  fp_in_.z = Tensor();
  return y;
}

Tensor FastStep::operator()(const Tensor& h) {
  if (use_fused(h)) return fused_step(h, /*with_stats=*/false);
  const Tensor mixed = layer_.mixer->apply(raw(h), in_.bx - h);
  return ops::linrec(in_.one_minus_lambda * (mixed + h), in_.lambda);
}

Tensor FastStep::solve_device(const solver::SolverOptions& opt, int64_t check_every) {
  TORCH_CHECK(device_loop_, "FastStep::solve_device: this layer's solve cannot run on the device loop");
#ifdef FPRNN_WITH_CUDA
  torch::NoGradGuard no_grad;
  const int64_t B = in_.x.size(0), T = in_.x.size(1), D = layer_.D;
  const ops::DeviceSolverOptions dopt = device_solver_options(opt);
  ops::DeviceSolverState state = ops::make_device_solver_state(B, T, dopt, in_.x.device());
  const auto f32 = in_.x.options().dtype(torch::kFloat32);
  // bx and λ stay in the compute dtype (in bfloat16 that halves their reads; the values are the same).
  const Tensor bx = in_.bx.contiguous();
  const Tensor lambda = in_.lambda.contiguous();
  const Tensor base = base_.contiguous();  // (B·T, rows) in the compute dtype
  const bool cast = base.scalar_type() != torch::kFloat32;
  // buf[n % 2] holds the iterate after n iterations; a queued iteration after the stop writes nothing. The first
  // iteration reads the zero iterate as an undefined h (no fill); max_iter ≥ 1 (make_device_solver_state checks
  // it), so buf[0] is never selected before an iteration has written it.
  Tensor buf[2] = {torch::empty({B, T, D}, f32), torch::empty({B, T, D}, f32)};
  // Where the batch's channels fill the chip, the mix and the scan run as one kernel (one block per sample).
  const bool mixscan = ops::fp_mixscan_fits(B, T, D, in_.x.device());
  // Otherwise (few samples: the LM-like shape), one kernel over chunks of 8 tokens (the carry between them composed
  // from the earlier chunks' rows) where the rows fit it, else the mix and the chunked scan as two kernels.
  const auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const bool chunked = !mixscan && ops::fp_mixscan_chunked_fits(base, D, fp_cfg_.rank) && aligned(base) &&
                       aligned(bx) && aligned(lambda);  // the buffers allocated here are (the allocator's are)
  Tensor v = mixscan || chunked ? Tensor() : torch::empty({B, T, D}, f32);
  Tensor z = torch::empty({B * T, w_h_t_.size(1)}, base.options());
  // In bfloat16 the scan also writes the new iterate rounded to bfloat16 into h_c, which the next
  // iteration's GEMM reads (the GEMM of iteration n runs before the scan of iteration n overwrites it).
  // The first iteration has no GEMM (below), so h_c is first read after that iteration's scan wrote it.
  Tensor h_c = cast ? torch::empty({B * T, D}, base.options()) : Tensor();
  const std::string ac = fp_cfg_.ac == ops::MixerAc::kIdentity ? "identity"
                         : fp_cfg_.ac == ops::MixerAc::kRelu   ? "relu"
                                                               : "silu";
  // check_every ≤ 0: queue every iteration up to the cap without reading the stop flag (a CUDA graph
  // capture, where host reads are illegal): the iterations after the stop are no-ops, and the result
  // buffer is chosen on the device.
  const int64_t every = check_every > 0 ? check_every : opt.max_iter;
  int64_t queued = 0;
  while (queued < opt.max_iter) {
    const int64_t n = std::min(every, opt.max_iter - queued);
    for (int64_t k = 0; k < n; ++k, ++queued) {
      // The first iteration starts from h = 0, whose GEMM row is 0: the kernels take an undefined h and z as that.
      const Tensor h = queued == 0 ? Tensor() : buf[queued % 2];
      Tensor& y = buf[(queued + 1) % 2];
      const Tensor zn = queued == 0 ? Tensor() : z;
      if (queued > 0) at::mm_out(z, cast ? h_c : h.view({B * T, D}), w_h_t_);
      if (mixscan) {
        // The kernel also does the controller's work (the stop test in its last block).
        ops::fp_mixscan_cuda(zn, base, bx, h, lambda, y, fp_cfg_.rank, ac, fp_cfg_.norm_eps, fp_cfg_.sum_form, state,
                             cast ? &h_c : nullptr, &dopt);
      } else if (chunked) {
        // Also with the controller's work (its last block decides the stop test).
        ops::fp_mixscan_chunked_cuda(zn, base, bx, h, lambda, y, fp_cfg_.rank, ac, fp_cfg_.norm_eps, fp_cfg_.sum_form,
                                     state, cast ? &h_c : nullptr, &dopt);
      } else {
        ops::fp_mix_cuda(zn, base, bx, h, lambda, v, fp_cfg_.rank, ac, fp_cfg_.norm_eps, fp_cfg_.sum_form, state);
        ops::fp_scan_cuda(v, lambda, h, y, state, cast ? &h_c : nullptr);
        ops::fp_controller_cuda(state, dopt);
      }
    }
    if (check_every <= 0) break;
    const Tensor c = state.counters.cpu();  // the one synchronisation per `check_every` iterations
    if (c[1].item<int64_t>() == 0) break;
  }
  state.chunk_data = Tensor();  // the chunks' rows are scratch (37 MB at the LM-like shape)
  state_ = state;
  if (cast && h_c.scalar_type() == in_.x.scalar_type()) {
    // Every executed iteration's scan wrote its iterate rounded to the compute dtype into h_c, and the queued
    // iterations after the stop write nothing (nor does the GEMM they still run, which only reads it): h_c holds
    // the counted iterate rounded as fp_select_cuda would round buf[counters[0] mod 2], without that pass over
    // the float32 buffers (14 µs at the A5 shape). The first iteration always runs (max_iter ≥ 1:
    // make_device_solver_state checks it), so h_c has been written.
    return h_c.view({B, T, D});
  }
  Tensor h = torch::empty({B, T, D}, in_.x.options());
  ops::fp_select_cuda(state, buf[0], buf[1], h);
  return h;
#else
  (void)opt;
  (void)check_every;
  TORCH_CHECK(false, "FastStep::solve_device: this build has no CUDA kernels");
#endif
}

std::pair<Tensor, std::vector<double>> FastStep::step_with_residual(const Tensor& h, double eps) {
  if (use_fused(h)) {
    Tensor y = fused_step(h, /*with_stats=*/true);
    return {y, ops::fp_step_residual(stats_, eps)};
  }
  Tensor y = (*this)(h);
  std::vector<double> r = solver::relative_residual(h, y, eps);
  return {y, r};
}

}  // namespace fprnn::nn
