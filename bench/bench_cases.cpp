// The benchmark cases: the diagonal scan against a memory copy, the SSD scan against its ATen-ops version, one
// fixed-point iteration against its projection GEMM, and full training steps against the one-iteration
// (diagonal) model.
#include "bench.h"

#include "fprnn/common.h"
#include "fprnn/nn/backbone.h"
#include "fprnn/nn/fprnn_layer.h"
#include "fprnn/ops/conv1d.h"
#include "fprnn/ops/cuda_graph.h"
#include "fprnn/ops/fp_step_cuda.h"
#include "fprnn/ops/kronecker.h"
#include "fprnn/ops/linrec.h"
#include "fprnn/ops/mix_step.h"
#include "fprnn/ops/residual.h"
#include "fprnn/ops/selective_scan.h"
#include "fprnn/ops/ssd.h"

#include <array>
#include <cstdio>

namespace fprnn::bench {
namespace {

// A named (batch, time, channels) shape of a GPU case.
struct NamedShape {
  std::string label;
  int64_t B, T, D;
};

std::string shape_str(std::initializer_list<int64_t> s) {
  std::string out = "(";
  for (auto it = s.begin(); it != s.end(); ++it) out += (it == s.begin() ? "" : ", ") + std::to_string(*it);
  return out + ")";
}

// ---- linrec ----------------------------------------------------------------------------------------
// Bytes that must move: forward reads u, c and writes y (3 tensors); backward reads g, c, y and writes
// du, dc (5 tensors). The baseline is dst.copy_(src) over one tensor (2 tensors moved).
std::vector<Row> bench_linrec(const Options& opts) {
  std::vector<Row> rows;
  const bool cuda = opts.device.is_cuda();
  std::vector<std::array<int64_t, 3>> shapes;
  if (opts.quick) {
    shapes = {{2, 64, 128}};
  } else if (cuda) {
    shapes = {{16, 4096, 1024}, {512, 17, 1024}, {8, 2048, 1536}};
  } else {
    shapes = {{16, 512, 1024}, {512, 17, 1024}};
  }
  const auto fwd = [&](const torch::Tensor& u, const torch::Tensor& c) {
    return cuda ? ops::linrec_fwd_cuda(u, c, false) : ops::linrec_fwd_cpu(u, c, false);
  };
  const auto bwd = [&](const torch::Tensor& g, const torch::Tensor& c, const torch::Tensor& y) {
    return cuda ? ops::linrec_bwd_cuda(g, c, y, false) : ops::linrec_bwd_cpu(g, c, y, false);
  };
  for (const auto& s : shapes) {
    const int64_t B = s[0], T = s[1], D = s[2];
    const auto o = torch::TensorOptions().dtype(torch::kFloat32).device(opts.device);
    const torch::Tensor u = torch::randn({B, T, D}, o);
    const torch::Tensor c = torch::sigmoid(torch::randn({B, T, D}, o));
    const torch::Tensor g = torch::randn({B, T, D}, o);
    torch::Tensor dst = torch::empty_like(u);
    const double bytes1 = static_cast<double>(u.numel()) * 4.0;
    const double copy_ms = time_ms([&] { dst.copy_(u); }, opts);
    const double copy_gbs = 2 * bytes1 / copy_ms / 1e6;

    torch::Tensor y = fwd(u, c);
    // Check on the first batch element against the float64 loop reference.
    const auto first = [](const torch::Tensor& t) { return t.narrow(0, 0, 1).cpu(); };
    const torch::Tensor y_ref = ops::linrec_fwd_ref(first(u), first(c), false);
    const double err_f = rms_ratio(first(y), y_ref);
    auto [du, dc] = bwd(g, c, y);
    auto [du_ref, dc_ref] = ops::linrec_bwd_ref(first(g), first(c), first(y), false);
    const double err_b = std::max(rms_ratio(first(du), du_ref), rms_ratio(first(dc), dc_ref));

    const double fwd_ms = time_ms([&] { y = fwd(u, c); }, opts);
    const double bwd_ms = time_ms([&] { std::tie(du, dc) = bwd(g, c, y); }, opts);
    char check[96];
    std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance 1e-5)", err_f);
    Row f = make_row("linrec fwd " + shape_str({B, T, D}) + " float32 " + (cuda ? "cuda" : "cpu"), fwd_ms, "GB/s", 3 * bytes1 / fwd_ms / 1e6,
          "memory copy (same run)", copy_ms, copy_gbs);
    f.ratio = f.value / copy_gbs;
    f.ratio_label = "fraction of copy GB/s";
    f.check_ok = err_f < 1e-5;
    f.check = check;
    rows.push_back(f);
    std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance 1e-5)", err_b);
    Row b = make_row("linrec bwd " + shape_str({B, T, D}) + " float32 " + (cuda ? "cuda" : "cpu"), bwd_ms, "GB/s", 5 * bytes1 / bwd_ms / 1e6,
          "memory copy (same run)", copy_ms, copy_gbs);
    b.ratio = b.value / copy_gbs;
    b.ratio_label = "fraction of copy GB/s";
    b.check_ok = err_b < 1e-5;
    b.check = check;
    rows.push_back(b);
  }
  return rows;
}

// ---- conv (the layer's short convolutions) ------------------------------------------------------------------
// On a GPU, in bfloat16 at the layer's two shapes (C = D = 2 d_model channels): the four convolutions of x
// (causal_conv1d_multi, n = 4: the forward reads x and writes 4 outputs, the backward reads x and 4 gradients
// and writes dx) and the pair convolution of [x, z] (2C channels: the forward reads x, z and writes y, four
// C-channel tensors; the backward reads x, z and the 2C-channel gradient and writes dx, dz, six). On the CPU:
// one float32 convolution. Baseline: dst.copy_(src) of one (B, T, C) tensor in the same run (2 tensors moved);
// GB/s counts each tensor read or written once, the weights not counted.
std::vector<Row> bench_conv(const Options& opts) {
  std::vector<Row> rows;
  const bool cuda = opts.device.is_cuda();
  std::vector<NamedShape> shapes;
  if (opts.quick)
    shapes = {{"tiny", 2, 16, 64}};
  else if (cuda)
    shapes = {{"A5", 512, 17, 1024}, {"LM-like", 8, 2048, 1536}};
  else
    shapes = {{"A5", 512, 17, 1024}, {"length 512", 16, 512, 1024}};
  const int64_t K = 4;
  const auto dtype = cuda ? torch::kBFloat16 : torch::kFloat32;
  const std::string dev = std::string(cuda ? " bfloat16 cuda" : " float32 cpu");
  const double tol = cuda ? 1e-2 : 1e-5;
  const auto first = [](const torch::Tensor& t) { return t.narrow(0, 0, 1).cpu(); };
  for (const auto& s : shapes) {
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().dtype(dtype).device(opts.device);
    const torch::Tensor x = torch::randn({s.B, s.T, s.D}, o);
    torch::Tensor dst = torch::empty_like(x);
    const double bytes1 = static_cast<double>(x.numel()) * x.element_size();
    const double copy_ms = time_ms([&] { dst.copy_(x); }, opts);
    const double copy_gbs = 2 * bytes1 / copy_ms / 1e6;
    const auto add = [&](const std::string& what, double ms, double tensors, double err) {
      char check[96];
      std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance %.0e)", err, tol);
      Row r = make_row("conv " + what + " " + s.label + " " + shape_str({s.B, s.T, s.D}) + dev, ms, "GB/s",
                       tensors * bytes1 / ms / 1e6, "memory copy (same run)", copy_ms, copy_gbs);
      r.ratio = r.value / copy_gbs;
      r.ratio_label = "fraction of copy GB/s";
      r.check_ok = err < tol;
      r.check = check;
      rows.push_back(r);
    };
    if (!cuda) {
      const torch::Tensor w = torch::randn({s.D, K}, o) * 0.5, b = torch::randn({s.D}, o) * 0.1;
      const torch::Tensor g = torch::randn_like(x);
      if (opts.selected("conv fwd " + s.label)) {
        torch::Tensor y = ops::causal_conv1d_fwd_cpu(x, w, b, true);
        const double err = rms_ratio(first(y), ops::causal_conv1d_fwd_ref(first(x), w, b, true));
        add("fwd", time_ms([&] { y = ops::causal_conv1d_fwd_cpu(x, w, b, true); }, opts), 2, err);
      }
      if (opts.selected("conv bwd " + s.label)) {
        auto gr = ops::causal_conv1d_bwd_cpu(g, x, w, b, true);
        const double err = rms_ratio(first(std::get<0>(gr)), std::get<0>(ops::causal_conv1d_bwd_ref(first(g), first(x), w, b, true)));
        add("bwd", time_ms([&] { gr = ops::causal_conv1d_bwd_cpu(g, x, w, b, true); }, opts), 3, err);
      }
      continue;
    }
    // The four convolutions of x.
    const int64_t n = 4;
    const torch::Tensor w = torch::randn({n, s.D, K}, o) * 0.5, b = torch::randn({n, s.D}, o) * 0.1;
    std::vector<torch::Tensor> gs;
    for (int64_t j = 0; j < n; ++j) gs.push_back(torch::randn_like(x));
    // dx of the reference: the sum of the n single-convolution dx; dweight of conv j compared too.
    const auto ref_bwd = [&](const std::vector<torch::Tensor>& grads, const torch::Tensor& xx, const torch::Tensor& ww,
                             const torch::Tensor& bb, int64_t j) {
      return ops::causal_conv1d_bwd_ref(first(grads[j]), first(xx), ww[j].cpu(), bb[j].cpu(), true);
    };
    if (opts.selected("conv fwd x4 " + s.label)) {
      std::vector<torch::Tensor> ys = ops::causal_conv1d_multi_fwd_cuda(x, w, b, true);
      double err = 0;
      for (int64_t j = 0; j < n; ++j)
        err = std::max(err, rms_ratio(first(ys[j]), ops::causal_conv1d_fwd_ref(first(x), w[j].cpu(), b[j].cpu(), true)));
      add("fwd x4", time_ms([&] { ys = ops::causal_conv1d_multi_fwd_cuda(x, w, b, true); }, opts), 1 + n, err);
    }
    if (opts.selected("conv bwd x4 " + s.label)) {
      auto gr = ops::causal_conv1d_multi_bwd_cuda(gs, x, w, b, true);
      torch::Tensor dx_ref = torch::zeros_like(first(x)).to(torch::kFloat64);
      for (int64_t j = 0; j < n; ++j) dx_ref += std::get<0>(ref_bwd(gs, x, w, b, j)).to(torch::kFloat64);
      // dweight is summed over the whole batch; the reference sees the first sample only, so only dx is checked
      // here (tests/ops cover dweight and dbias).
      const double err = rms_ratio(first(std::get<0>(gr)), dx_ref.to(dtype));
      add("bwd x4", time_ms([&] { gr = ops::causal_conv1d_multi_bwd_cuda(gs, x, w, b, true); }, opts), 2 + n, err);
    }
    // The pair [x, z] of 2C channels.
    const torch::Tensor z = torch::randn_like(x), wp = torch::randn({2 * s.D, K}, o) * 0.5,
                        bp = torch::randn({2 * s.D}, o) * 0.1, gp = torch::randn({s.B, s.T, 2 * s.D}, o);
    const torch::Tensor xz = torch::cat({x, z}, -1);
    if (opts.selected("conv fwd pair " + s.label)) {
      torch::Tensor y = ops::causal_conv1d_pair_fwd_cuda(x, z, wp, bp, true);
      const double err = rms_ratio(first(y), ops::causal_conv1d_fwd_ref(first(xz), wp.cpu(), bp.cpu(), true));
      add("fwd pair", time_ms([&] { y = ops::causal_conv1d_pair_fwd_cuda(x, z, wp, bp, true); }, opts), 4, err);
    }
    if (opts.selected("conv bwd pair " + s.label)) {
      auto gr = ops::causal_conv1d_pair_bwd_cuda(gp, x, z, wp, bp, true);
      const torch::Tensor dxz = torch::cat({first(std::get<0>(gr)), first(std::get<1>(gr))}, -1);
      const double err = rms_ratio(dxz, std::get<0>(ops::causal_conv1d_bwd_ref(first(gp), first(xz), wp.cpu(), bp.cpu(), true)));
      add("bwd pair", time_ms([&] { gr = ops::causal_conv1d_pair_bwd_cuda(gp, x, z, wp, bp, true); }, opts), 6, err);
    }
  }
  return rows;
}

#ifdef FPRNN_WITH_CUDA
// The shapes of the GPU-only kernel cases (mixscan, mixstep): the A5 and LM-like layers' (a tiny one with
// --quick); none, with a note, off the GPU.
std::vector<NamedShape> gpu_kernel_shapes(const Options& opts) {
  if (!opts.device.is_cuda()) {
    std::printf("  (GPU only: run with --device cuda)\n");
    return {};
  }
  if (opts.quick) return {{"tiny", 2, 40, 256}};
  return {{"A5", 512, 17, 1024}, {"LM-like", 8, 2048, 1536}};
}
#endif

// ---- mixscan: one no-grad iteration's mixer and scan on the GPU -------------------------------------------
// The device loop's ways of running the mix + scan of one iteration (Householder r = 1, bfloat16 operands, the
// GEMM row z given): fp_mix_cuda + fp_scan_cuda (the baseline), the chunked one-pass kernel
// (fp_mixscan_chunked_cuda) and, where the batch fills the chip, the one-block-per-sample kernel. GB/s counts what
// one pass must move: z, base, b⊙x, λ in bfloat16 and h in float32 read, y in float32 and bfloat16 written.
std::vector<Row> bench_mixscan(const Options& opts) {
  std::vector<Row> rows;
#ifdef FPRNN_WITH_CUDA
  const int64_t r = 1;
  for (const auto& s : gpu_kernel_shapes(opts)) {
    torch::manual_seed(0);
    const int64_t rows8 = (r * s.D + r + 7) / 8 * 8;
    const auto o = torch::TensorOptions().device(opts.device);
    const auto bf = o.dtype(torch::kBFloat16), f32 = o.dtype(torch::kFloat32);
    const torch::Tensor z = 0.3 * torch::randn({s.B * s.T, rows8}, bf), base = 0.3 * torch::randn({s.B * s.T, rows8}, bf);
    const torch::Tensor bx = torch::randn({s.B, s.T, s.D}, bf), h = torch::randn({s.B, s.T, s.D}, f32);
    const torch::Tensor lambda = torch::sigmoid(torch::randn({s.B, s.T, s.D}, f32)).to(torch::kBFloat16);
    ops::DeviceSolverOptions dopt;
    auto st = ops::make_device_solver_state(s.B, s.T, dopt, opts.device);
    torch::Tensor v = torch::empty({s.B, s.T, s.D}, f32), y = torch::empty({s.B, s.T, s.D}, f32);
    torch::Tensor y_low = torch::empty({s.B * s.T, s.D}, bf);
    const auto two_kernels = [&] {
      ops::fp_mix_cuda(z, base, bx, h, lambda, v, r, "silu", 1e-6, false, st);
      ops::fp_scan_cuda(v, lambda, h, y, st, &y_low);
      st.diff.zero_();  // the controller's zeroing (a separate launch in both forms)
      st.ymax.zero_();
    };
    two_kernels();
    const torch::Tensor y_ref = y.clone();
    const double base_ms = time_ms(two_kernels, opts);
    const double tokens = static_cast<double>(s.B * s.T);
    const double bytes = tokens * (2.0 * 2 * rows8 + s.D * (2.0 + 2.0 + 4.0 + 4.0 + 2.0));
    const std::string shape = " " + s.label + " " + shape_str({s.B, s.T, s.D}) + " bfloat16";
    const auto add = [&](const std::string& what, const std::function<void()>& fn) {
      fn();
      const double err = rms_ratio(y, y_ref);
      const double ms = time_ms(fn, opts);
      char check[96];
      std::snprintf(check, sizeof(check), "vs fp_mix + fp_scan, rms ratio %.1e (tolerance 1e-6)", err);
      Row row = make_row("mixscan " + what + shape, ms, "GB/s", bytes / ms / 1e6, "fp_mix + fp_scan (same run)",
                         base_ms, bytes / base_ms / 1e6);
      row.ratio = ms / base_ms;
      row.check_ok = err <= 1e-6;
      row.check = check;
      rows.push_back(row);
    };
    if (opts.selected("mixscan chunked" + shape)) {
      add("chunked", [&] {
        ops::fp_mixscan_chunked_cuda(z, base, bx, h, lambda, y, r, "silu", 1e-6, false, st, &y_low);
        st.diff.zero_();
        st.ymax.zero_();
      });
    }
    if (ops::fp_mixscan_fits(s.B, s.T, s.D, opts.device) && opts.selected("mixscan per sample" + shape)) {
      add("per sample", [&] {
        ops::fp_mixscan_cuda(z, base, bx, h, lambda, y, r, "silu", 1e-6, false, st, &y_low);
        st.diff.zero_();
        st.ymax.zero_();
      });
    }
  }
#else
  (void)opts;
  std::printf("  (GPU only: this build has no CUDA kernels)\n");
#endif
  return rows;
}

// ---- mix_step backward (the differentiable step's mixer) ---------------------------------------------
// The backward's 8-channels-per-thread row kernel (raw 16-byte aligned) against its block kernel (raw shifted by
// one element) on the same tokens, Householder r = 1, bfloat16. Bytes: gy, bx, h, 1 − λ read and d bx, dh,
// d(1 − λ) written (7·D per token), raw read and d raw written (2·ld), 2 bytes each.
std::vector<Row> bench_mixstep(const Options& opts) {
  std::vector<Row> rows;
#ifdef FPRNN_WITH_CUDA
  const int64_t r = 1;
  for (const auto& s : gpu_kernel_shapes(opts)) {
    const std::string name = "mix_step backward " + s.label + " " + shape_str({s.B, s.T, s.D}) + " bfloat16";
    if (!opts.selected(name)) continue;
    torch::manual_seed(0);
    const int64_t N = s.B * s.T, ld = (r * s.D + r + 7) / 8 * 8;
    const auto bf = torch::TensorOptions().device(opts.device).dtype(torch::kBFloat16);
    const torch::Tensor raw = torch::randn({N, ld}, bf);
    torch::Tensor shifted = torch::zeros({N, ld + 8}, bf);
    shifted.narrow(1, 1, ld).copy_(raw);
    const torch::Tensor gy = torch::randn({N, s.D}, bf), bx = torch::randn({N, s.D}, bf), h = torch::randn({N, s.D}, bf);
    const torch::Tensor oml = torch::rand({N, s.D}, bf);
    const ops::MixStepSpec spec{r, "silu", 1e-6, false};
    auto rows_out = ops::mix_step_bwd_cuda(gy, raw, bx, h, oml, spec);
    auto block_out = ops::mix_step_bwd_cuda(gy, shifted.narrow(1, 1, ld), bx, h, oml, spec);
    const double err = rms_ratio(std::get<1>(rows_out).to(torch::kFloat32), std::get<1>(block_out).to(torch::kFloat32));
    const double ms = time_ms([&] { (void)ops::mix_step_bwd_cuda(gy, raw, bx, h, oml, spec); }, opts);
    const double base_ms = time_ms([&] { (void)ops::mix_step_bwd_cuda(gy, shifted.narrow(1, 1, ld), bx, h, oml, spec); }, opts);
    const double bytes = static_cast<double>(N) * (7.0 * s.D + 2.0 * ld) * 2.0;
    Row row = make_row(name + ", row kernel", ms, "GB/s", bytes / ms / 1e6, "block kernel (same run)", base_ms,
                       bytes / base_ms / 1e6);
    row.ratio = ms / base_ms;
    char check[96];
    std::snprintf(check, sizeof(check), "d bx vs the block kernel, rms ratio %.1e (tolerance 1e-2)", err);
    row.check_ok = err <= 1e-2;
    row.check = check;
    rows.push_back(row);
  }
#else
  (void)opts;
  std::printf("  (GPU only: this build has no CUDA kernels)\n");
#endif
  return rows;
}

// ---- selective_scan (Mamba-1 scan) --------------------------------------------------------------------
// FLOPs counted as 2 per FMA on the N states of every (b, t, d): forward 2 FMAs (update, output) plus one exp;
// backward ~8 (checkpointed re-run 2, reverse sweep 6). The baseline is selective_scan_aten (the same
// recurrence as a loop of ATen ops over T, backward by autograd) on the same device, inputs and run.
std::vector<Row> bench_selective_scan(const Options& opts) {
  std::vector<Row> rows;
  const bool cuda = opts.device.is_cuda();
  struct Shape {
    std::string label;
    int64_t B, T, D, N;
  };
  std::vector<Shape> shapes;
  if (opts.quick)
    shapes = {{"tiny", 2, 16, 32, 16}};
  else if (cuda)
    shapes = {{"A5 at length 128, FP-Mamba1 d_model 128", 128, 128, 256, 16},
              {"arith_brackets_fpmamba1 layer", 256, 256, 256, 16},
              {"a5_len128_fpmamba1_kron layer", 512, 128, 1024, 16}};
  else
    shapes = {{"parity_fpmamba1_cpu layer", 128, 20, 128, 16}, {"length 256", 8, 256, 128, 16}};
  const std::string dev = cuda ? "cuda" : "cpu";
  for (const auto& s : shapes) {
    if (!opts.selected("selective_scan fwd " + s.label) && !opts.selected("selective_scan bwd " + s.label)) continue;
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().dtype(torch::kFloat32).device(opts.device);
    const torch::Tensor u = torch::randn({s.B, s.T, s.D}, o);
    const torch::Tensor dt = torch::randn({s.B, s.T, s.D}, o) * 0.7 - 1.0;
    const torch::Tensor A = -torch::exp(torch::randn({s.D, s.N}, o) * 0.5);
    const torch::Tensor Bm = torch::randn({s.B, s.T, s.N}, o), Cm = torch::randn({s.B, s.T, s.N}, o);
    const torch::Tensor Ds = torch::randn({s.D}, o), bias = torch::randn({s.D}, o) * 0.5;
    const torch::Tensor g = torch::randn_like(u);
    const auto fwd = [&] {
      return cuda ? ops::selective_scan_fwd_cuda(u, dt, A, Bm, Cm, Ds, bias)
                  : ops::selective_scan_fwd_cpu(u, dt, A, Bm, Cm, Ds, bias);
    };
    const auto bwd = [&] {
      return cuda ? ops::selective_scan_bwd_cuda(g, u, dt, A, Bm, Cm, Ds, bias)
                  : ops::selective_scan_bwd_cpu(g, u, dt, A, Bm, Cm, Ds, bias);
    };
    // Check against the float64 reference on the first batch element.
    const auto first = [](const torch::Tensor& t) { return t.narrow(0, 0, 1).cpu(); };
    torch::Tensor y = fwd();
    const double err_f = rms_ratio(first(y), ops::selective_scan_fwd_ref(first(u), first(dt), A.cpu(), first(Bm),
                                                                         first(Cm), Ds.cpu(), bias.cpu()));
    ops::SelectiveScanGrads gr = bwd();
    const ops::SelectiveScanGrads ref = ops::selective_scan_bwd_ref(first(g), first(u), first(dt), A.cpu(), first(Bm),
                                                                    first(Cm), Ds.cpu(), bias.cpu());
    const double err_b = std::max({rms_ratio(first(gr.du), ref.du), rms_ratio(first(gr.ddt), ref.ddt)});
    const double fwd_ms = time_ms([&] { y = fwd(); }, opts);
    const double bwd_ms = time_ms([&] { gr = bwd(); }, opts);
    std::vector<torch::Tensor> leaves;
    for (const auto& t : {u, dt, A, Bm, Cm, Ds, bias}) leaves.push_back(t.clone().requires_grad_(true));
    const auto aten = [&] {
      return ops::selective_scan_aten(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
    };
    const double aten_fwd_ms = time_ms(
        [&] {
          torch::NoGradGuard ng;
          aten();
        },
        opts);
    const double aten_bwd_ms = std::max(time_ms([&] { aten().backward(g); }, opts) - aten_fwd_ms, 1e-6);
    const double elems = static_cast<double>(s.B * s.T * s.D * s.N);
    const std::string shape = shape_str({s.B, s.T, s.D, s.N});
    char check[96];
    std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance 2e-5)", err_f);
    Row f = make_row("selective_scan fwd " + s.label + " (B, T, D, N) = " + shape + " float32 " + dev, fwd_ms,
                     "GFLOP/s", 4 * elems / fwd_ms / 1e6, "selective_scan_aten forward (same run)", aten_fwd_ms,
                     4 * elems / aten_fwd_ms / 1e6);
    f.ratio = fwd_ms / aten_fwd_ms;
    f.check_ok = err_f < 2e-5;
    f.check = check;
    rows.push_back(f);
    std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance 2e-5)", err_b);
    Row b = make_row("selective_scan bwd " + s.label + " (B, T, D, N) = " + shape + " float32 " + dev, bwd_ms,
                     "GFLOP/s", 16 * elems / bwd_ms / 1e6, "selective_scan_aten backward by autograd (same run)",
                     aten_bwd_ms, 16 * elems / aten_bwd_ms / 1e6);
    b.ratio = bwd_ms / aten_bwd_ms;
    b.check_ok = err_b < 2e-5;
    b.check = check;
    rows.push_back(b);
  }
  return rows;
}

// ---- residual (the solver's per-iteration residual) --------------------------------------------------------
// ops::relative_residual (on a GPU: the one-pass kernel) against the ATen composite, same inputs, same run;
// GB/s counts the two (B, T, D) inputs read once.
std::vector<Row> bench_residual(const Options& opts) {
  std::vector<Row> rows;
  const bool cuda = opts.device.is_cuda();
  struct Shape {
    std::string label;
    int64_t B, T, D;
    torch::Dtype dtype;
  };
  std::vector<Shape> shapes;
  if (opts.quick)
    shapes = {{"tiny", 2, 16, 32, torch::kFloat32}};
  else if (cuda)
    shapes = {{"a5_len128_fpmamba1_kron iterate", 512, 128, 1024, torch::kBFloat16},
              {"a5_len128_fpmamba1_kron iterate", 512, 128, 1024, torch::kFloat32},
              {"A5 shape (BASELINES.md)", 512, 17, 512, torch::kBFloat16}};
  else
    shapes = {{"A5/4", 128, 17, 128, torch::kFloat32}};
  for (const auto& s : shapes) {
    const std::string dt = s.dtype == torch::kBFloat16 ? "bfloat16" : "float32";
    const std::string name = "residual " + s.label + " (B, T, D) = " + shape_str({s.B, s.T, s.D}) + " " + dt + " " +
                             (cuda ? "cuda" : "cpu");
    if (!opts.selected(name)) continue;
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().dtype(s.dtype).device(opts.device);
    const torch::Tensor y = torch::randn({s.B, s.T, s.D}, o);
    const torch::Tensor y_new = y + 0.01 * torch::randn({s.B, s.T, s.D}, o);
    torch::Tensor r = ops::relative_residual(y, y_new, 1e-8), r_aten = ops::relative_residual_aten(y, y_new, 1e-8);
    const bool same = torch::equal(r.cpu(), r_aten.cpu());
    const double ms = time_ms([&] { r = ops::relative_residual(y, y_new, 1e-8); }, opts);
    const double aten_ms = time_ms([&] { r_aten = ops::relative_residual_aten(y, y_new, 1e-8); }, opts);
    const double gb = 2.0 * static_cast<double>(y.numel()) * static_cast<double>(y.element_size()) / 1e9;
    Row row = make_row(name, ms, "GB/s", gb / (ms / 1e3), "relative_residual_aten (same run)", aten_ms,
                       gb / (aten_ms / 1e3));
    row.ratio = ms / aten_ms;
    row.check_ok = same;
    row.check = same ? "equal to the composite, bit for bit" : "differs from the composite";
    rows.push_back(row);
  }
  return rows;
}

// ---- kronecker (the fused mixer op) -------------------------------------------------------------------
// The fused Kronecker op (raw projection → Q v) against the ATen composite the layers ran before it
// (kronecker_fwd_ref), same inputs, same run, float32: the forward alone (what every no-grad fixed-point
// iteration runs) and forward + backward ('column-wise' only; the reference's backward is autograd's).
// Throughput in tokens/s. The check compares the first 64 tokens with the float64 reference.
std::vector<Row> bench_kronecker(const Options& opts) {
  std::vector<Row> rows;
  const bool cuda = opts.device.is_cuda();
  struct Shape {
    std::string label;
    int64_t N, m;
    bool spectral;
  };
  std::vector<Shape> shapes;
  if (opts.quick)
    shapes = {{"tiny", 64, 4, false}};
  else if (cuda)
    shapes = {{"FPRNN A5 layer (512·17 tokens, n 1024), spectral", 512 * 17, 32, true},
              {"FP-Mamba1 A5 layer (512·17 tokens, n 1024), column-wise", 512 * 17, 32, false},
              {"FP-Mamba1 length-128 layer (512·128 tokens, n 1024), column-wise", 512 * 128, 32, false}};
  else
    shapes = {{"bracket FP-Mamba1 layer (256 tokens, n 256), column-wise", 256, 16, false},
              {"A5/4 FPRNN layer (128·17 tokens, n 256), spectral", 128 * 17, 16, true}};
  const std::string dev = cuda ? "cuda" : "cpu";
  for (const auto& s : shapes) {
    if (!opts.selected("kronecker fwd " + s.label) && !opts.selected("kronecker fwd+bwd " + s.label)) continue;
    ops::KroneckerSpec spec;
    spec.m1 = spec.m2 = s.m;
    spec.spectral = s.spectral;
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().dtype(torch::kFloat32).device(opts.device);
    const torch::Tensor raw = torch::randn({s.N, spec.raw_size()}, o), v = torch::randn({s.N, s.m * s.m}, o);
    const torch::Tensor g = torch::randn_like(v);
    const auto first = [](const torch::Tensor& t) { return t.narrow(0, 0, std::min<int64_t>(64, t.size(0))).cpu(); };
    const auto to64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
    torch::Tensor y;
    {
      torch::NoGradGuard ng;
      y = ops::kronecker_apply(raw, v, spec);
    }
    const double err_f = rms_ratio(first(y), ops::kronecker_fwd_ref(to64(first(raw)), to64(first(v)), spec));
    const double fwd_ms = time_ms(
        [&] {
          torch::NoGradGuard ng;
          y = ops::kronecker_apply(raw, v, spec);
        },
        opts);
    const double ref_fwd_ms = time_ms(
        [&] {
          torch::NoGradGuard ng;
          y = ops::kronecker_fwd_ref(raw, v, spec);
        },
        opts);
    const double tokens = static_cast<double>(s.N);
    const std::string shape = shape_str({s.N, s.m * s.m});
    // One row: the fused op's time against the composite's, with the check's error and tolerance.
    const auto add_row = [&](const std::string& what, double ms, const std::string& baseline, double base_ms,
                             const std::string& checked, double err, double tol) {
      Row r = make_row("kronecker " + what + " " + s.label + " (N, n) = " + shape + " float32 " + dev, ms,
                       "tokens/s", tokens / ms * 1e3, baseline, base_ms, tokens / base_ms * 1e3);
      r.ratio = ms / base_ms;
      r.check_ok = err < tol;
      char check[112];
      std::snprintf(check, sizeof(check), "%s vs float64 reference, rms ratio %.1e (tolerance %.0e)", checked.c_str(),
                    err, tol);
      r.check = check;
      rows.push_back(r);
    };
    add_row("fwd", fwd_ms, "kronecker_fwd_ref, ATen ops (same run)", ref_fwd_ms, "output", err_f, 1e-5);
    if (s.spectral) continue;  // no fused backward
    const torch::Tensor r1 = raw.clone().requires_grad_(true), v1 = v.clone().requires_grad_(true);
    const torch::Tensor r2 = raw.clone().requires_grad_(true), v2 = v.clone().requires_grad_(true);
    ops::kronecker_apply(r1, v1, spec).backward(g);
    const torch::Tensor r64 = to64(first(raw)).requires_grad_(true), v64 = to64(first(v)).requires_grad_(true);
    ops::kronecker_fwd_ref(r64, v64, spec).backward(to64(first(g)));
    const double err_b = std::max(rms_ratio(first(r1.grad()), r64.grad()), rms_ratio(first(v1.grad()), v64.grad()));
    const double both_ms = time_ms([&] { ops::kronecker_apply(r1, v1, spec).backward(g); }, opts);
    const double ref_both_ms = time_ms([&] { ops::kronecker_fwd_ref(r2, v2, spec).backward(g); }, opts);
    add_row("fwd+bwd", both_ms, "kronecker_fwd_ref + autograd (same run)", ref_both_ms, "gradients", err_b, 2e-5);
  }
  return rows;
}

// ---- ssd (Mamba-2 scan) ------------------------------------------------------------------------------
// FLOPs counted as 2 per FMA on the P × N state of every (b, t, h): forward 2 FMAs (update, output); backward 8
// (checkpoint sweep 1, chunk recompute 1, reverse sweep 6). The baseline is ssd_aten (the same recurrence as a
// loop of ATen ops over T, backward by autograd) on the same inputs, in the same run. CPU only.
std::vector<Row> bench_ssd(const Options& opts) {
  std::vector<Row> rows;
  if (opts.device.is_cuda()) return rows;  // no CUDA kernel: the GPU runs ssd_aten itself
  struct Shape {
    std::string label;
    int64_t B, T, H, P, G, N;
  };
  const std::vector<Shape> shapes =
      opts.quick ? std::vector<Shape>{{"tiny", 2, 64, 2, 16, 1, 32}}
                 : std::vector<Shape>{{"arith_brackets_fpmamba2 layer", 2, 256, 4, 64, 1, 128},
                                      {"arith_brackets_fpmamba2_cpu layer", 16, 64, 4, 32, 1, 32}};
  for (const auto& s : shapes) {
    if (!opts.selected("ssd fwd " + s.label) && !opts.selected("ssd bwd " + s.label)) continue;
    torch::manual_seed(0);
    const auto o = torch::TensorOptions().dtype(torch::kFloat32);
    const torch::Tensor x = torch::randn({s.B, s.T, s.H, s.P}, o);
    const torch::Tensor dt = torch::randn({s.B, s.T, s.H}, o) - 1.0;
    const torch::Tensor A = -torch::rand({s.H}, o) * 15 - 1;
    const torch::Tensor Bm = torch::nn::functional::normalize(torch::randn({s.B, s.T, s.G, s.N}, o),
                                                              torch::nn::functional::NormalizeFuncOptions().dim(-1));
    const torch::Tensor Cm = torch::nn::functional::normalize(torch::randn({s.B, s.T, s.G, s.N}, o),
                                                              torch::nn::functional::NormalizeFuncOptions().dim(-1));
    const torch::Tensor Ds = torch::ones({s.H}, o), bias = torch::randn({s.H}, o) * 0.5;
    const torch::Tensor g = torch::randn_like(x);
    // Check against the float64 reference on the first batch element.
    const auto first = [](const torch::Tensor& t) { return t.narrow(0, 0, 1); };
    torch::Tensor y = ops::ssd_fwd_cpu(x, dt, A, Bm, Cm, Ds, bias);
    const double err_f = rms_ratio(first(y), ops::ssd_fwd_ref(first(x), first(dt), A, first(Bm), first(Cm), Ds, bias));
    ops::SsdGrads gr = ops::ssd_bwd_cpu(g, x, dt, A, Bm, Cm, Ds, bias);
    const ops::SsdGrads gr_ref = ops::ssd_bwd_ref(first(g), first(x), first(dt), A, first(Bm), first(Cm), Ds, bias);
    const double err_b = std::max({rms_ratio(first(gr.dx), gr_ref.dx), rms_ratio(first(gr.ddt), gr_ref.ddt),
                                   rms_ratio(first(gr.dB), gr_ref.dB), rms_ratio(first(gr.dC), gr_ref.dC)});
    const double fwd_ms = time_ms([&] { y = ops::ssd_fwd_cpu(x, dt, A, Bm, Cm, Ds, bias); }, opts);
    const double bwd_ms = time_ms([&] { gr = ops::ssd_bwd_cpu(g, x, dt, A, Bm, Cm, Ds, bias); }, opts);
    std::vector<torch::Tensor> leaves;
    for (const auto& t : {x, dt, A, Bm, Cm, Ds, bias}) leaves.push_back(t.clone().requires_grad_(true));
    torch::Tensor y_aten;
    const double aten_fwd_ms = time_ms(
        [&] {
          torch::NoGradGuard ng;
          y_aten = ops::ssd_aten(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]);
        },
        opts);
    const double aten_fwdbwd_ms = time_ms(
        [&] {
          ops::ssd_aten(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6]).backward(g);
        },
        opts);
    const double aten_bwd_ms = std::max(aten_fwdbwd_ms - aten_fwd_ms, 1e-6);
    const double elems = static_cast<double>(s.B * s.T * s.H * s.P * s.N);
    const std::string shape = shape_str({s.B, s.T, s.H, s.P, s.G, s.N});
    char check[96];
    std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance 2e-5)", err_f);
    Row f = make_row("ssd fwd " + s.label + " (B, T, H, P, G, N) = " + shape + " float32 cpu", fwd_ms, "GFLOP/s",
                     4 * elems / fwd_ms / 1e6, "ssd_aten forward (same run)", aten_fwd_ms, 4 * elems / aten_fwd_ms / 1e6);
    f.ratio = fwd_ms / aten_fwd_ms;
    f.check_ok = err_f < 2e-5;
    f.check = check;
    rows.push_back(f);
    std::snprintf(check, sizeof(check), "vs float64 reference, rms ratio %.1e (tolerance 2e-5)", err_b);
    Row b = make_row("ssd bwd " + s.label + " (B, T, H, P, G, N) = " + shape + " float32 cpu", bwd_ms, "GFLOP/s",
                     16 * elems / bwd_ms / 1e6, "ssd_aten backward by autograd (same run)", aten_bwd_ms,
                     16 * elems / aten_bwd_ms / 1e6);
    b.ratio = bwd_ms / aten_bwd_ms;
    b.check_ok = err_b < 2e-5;
    b.check = check;
    rows.push_back(b);
  }
  return rows;
}

// ---- one fixed-point iteration -----------------------------------------------------------------------
struct LayerShape {
  std::string label;
  int64_t B, T, d_model;
  std::string mixer;
  int64_t rank;
};

std::vector<Row> bench_iteration(const Options& opts) {
  std::vector<LayerShape> shapes;
  if (opts.quick) {
    shapes = {{"tiny", 4, 9, 16, "householderproduct", 1}};
  } else {
    shapes = {{"A5/4 (B 128, T 17, d 128)", 128, 17, 128, "householderproduct", 1},
              {"A5/4 (B 128, T 17, d 128)", 128, 17, 128, "householderproduct", 4},
              {"A5/4 (B 128, T 17, d 128)", 128, 17, 128, "dplr", 2},
              {"A5/4 (B 128, T 17, d 128)", 128, 17, 128, "kronecker", 1},
              {"A5 (B 512, T 17, d 512)", 512, 17, 512, "householderproduct", 1},
              {"LM/4 (B 2, T 2048, d 192)", 2, 2048, 192, "householderproduct", 1}};
  }
  std::vector<Row> rows;
  for (const auto& s : shapes) {
    torch::manual_seed(0);
    LayerConfig lc;
    lc.d_model = s.d_model;
    lc.mixer_type = s.mixer;
    lc.mixer_rank = s.rank;
    SolverConfig sc;
    nn::FPRNNLayer layer(lc, sc);
    layer->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor u = torch::randn({s.B, s.T, s.d_model});
    const auto in = layer->prepare(u);
    // A realistic iterate: a few steps from zero.
    nn::FastStep F(*layer, in);
    torch::Tensor h = torch::zeros_like(in.x);
    for (int i = 0; i < 3; ++i) h = F(h);

    const torch::Tensor fast = F(h);
    const torch::Tensor plain = layer->step(in, h);
    const double err = rms_ratio(fast, plain);

    // The projection GEMM alone, at the shapes FastStep runs it: (B·T, D) × (D, raw rows) + base.
    const int64_t D = layer->d_inner();
    const auto projections = layer->mixer->projections();
    int64_t rows0 = 0;
    for (auto& p : projections) rows0 += p->stages.front()->out_features;
    const torch::Tensor s2d = torch::randn({s.B * s.T, D});
    const torch::Tensor w = torch::randn({D, std::max<int64_t>(rows0, 1)});
    const torch::Tensor base = torch::randn({s.B * s.T, std::max<int64_t>(rows0, 1)});
    const double gemm_ms = time_ms([&] { (void)torch::addmm(base, s2d, w); }, opts);
    const double flops = 2.0 * static_cast<double>(s.B * s.T) * D * std::max<int64_t>(rows0, 1);

    const double fast_ms = time_ms([&] { (void)F(h); }, opts);
    const double plain_ms = time_ms([&] { (void)layer->step(in, h); }, opts);
    const std::string tag = s.mixer + " r=" + std::to_string(s.rank) + " " + s.label;
    char check[96];
    std::snprintf(check, sizeof(check), "fused step vs plain F, rms ratio %.1e (tolerance 1e-5)", err);
    const double tokens = static_cast<double>(s.B * s.T);
    Row r = make_row("FP iteration, fused: " + tag, fast_ms, "Mtok/s", tokens / fast_ms / 1e3, "its projection GEMM",
          gemm_ms, tokens / gemm_ms / 1e3);
    r.ratio = fast_ms / gemm_ms;
    r.ratio_label = "time/GEMM";
    r.check_ok = err < 1e-5;
    r.check = check;
    rows.push_back(r);
    Row p = make_row("FP iteration, unfused (reference form): " + tag, plain_ms, "Mtok/s", tokens / plain_ms / 1e3,
          "its projection GEMM", gemm_ms, tokens / gemm_ms / 1e3);
    p.ratio = plain_ms / gemm_ms;
    p.ratio_label = "time/GEMM";
    p.check_ok = r.check_ok;
    p.check = check;
    rows.push_back(p);
    (void)flops;
  }
  return rows;
}

// ---- full training step ------------------------------------------------------------------------------
std::vector<Row> bench_train_step(const Options& opts) {
  struct Setup {
    std::string label;
    int64_t B, T, d_model, vocab, iters;
  };
  std::vector<Setup> setups = opts.quick ? std::vector<Setup>{{"tiny", 8, 9, 16, 13, 4}}
                                         : std::vector<Setup>{{"S3 demo (B 256, T 9, d 64)", 256, 9, 64, 13, 16},
                                                              {"A5/4 (B 128, T 17, d 128)", 128, 17, 128, 67, 16}};
  std::vector<Row> rows;
  for (const auto& s : setups) {
    auto measure = [&](int64_t iters, double& loss_out) {
      torch::manual_seed(0);
      ModelConfig mc;
      mc.layer.d_model = s.d_model;
      mc.layer.mixer_rank = 2;
      SolverConfig sc;
      sc.max_iter = iters;
      sc.threshold = -1.0;  // never converged: exactly `iters` iterations per step
      nn::FPLM model(mc, sc, s.vocab);
      torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
      const torch::Tensor ids = torch::randint(0, s.vocab, {s.B, s.T}, torch::kInt64);
      const torch::Tensor labels = torch::randint(0, s.vocab, {s.B, s.T}, torch::kInt64);
      auto step = [&] {
        opt.zero_grad();
        const torch::Tensor logits = model->forward(ids);
        const torch::Tensor loss =
            torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), labels.reshape({-1}));
        loss.backward();
        opt.step();
        loss_out = loss.item<double>();
      };
      return time_ms(step, opts);
    };
    double loss = 0, loss1 = 0;
    const double ms = measure(s.iters, loss);
    const double ms1 = measure(1, loss1);
    const double tokens = static_cast<double>(s.B * s.T);
    Row r = make_row("train step, " + std::to_string(s.iters) + " iterations: " + s.label, ms, "tok/s", tokens / ms * 1e3,
          "same step, 1 iteration", ms1, tokens / ms1 * 1e3);
    r.ratio = ms / ms1;
    r.check_ok = std::isfinite(loss) && std::isfinite(loss1);
    r.check = "loss finite";
    rows.push_back(r);
  }
  return rows;
}

// What one no-grad iteration of the fused Householder step reaches, from the time it adds (the difference
// between the k- and the 2-iteration layer, divided by k − 2). Bytes it must move, per iteration, for
// N = B·T tokens, D = d_inner channels, R = r·D + r projection rows (padded by nn::padded_projection_rows) and
// s bytes per element of the compute dtype: the projection GEMM reads the rounded iterate (N·D·s) and the
// weight (R·D·s) and writes z (N·R·s); the mixer + scan step reads z (N·R·s), the fp32 iterate (4·N·D), the
// gates B·x and λ (2·N·D·s) and writes the fp32 iterate and its rounded copy ((4 + s)·N·D). Chip limits from
// ../shared/BASELINES.md (measured on the same H200): 4.0 TB/s copy bandwidth, 790 TFLOP/s bf16 GEMM,
// 56 TFLOP/s fp32.
std::string iteration_note(int64_t N, int64_t D, int64_t r, torch::Dtype dtype, double ms_per_iter) {
  // An eager row can come out at or below its own 2-iteration floor (the host's launches dominate and vary):
  // then the difference measures nothing.
  if (!(ms_per_iter > 0.0))
    return "per no-grad iteration: not resolved (the row is not slower than its 2-iteration floor: host-launch "
           "noise; read the CUDA graph row)";
  const double s = dtype == torch::kBFloat16 ? 2.0 : 4.0;
  const double R = static_cast<double>(nn::padded_projection_rows(r * D + r));  // the GEMM's padded width
  const double n = static_cast<double>(N), d = static_cast<double>(D);
  const double bytes = n * d * s + R * d * s + 2 * n * R * s + 4 * n * d + 2 * n * d * s + (4 + s) * n * d;
  const double flops = 2 * n * d * R;
  const double secs = ms_per_iter * 1e-3;
  const double peak_flops = dtype == torch::kBFloat16 ? 790e12 : 56e12;
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "per no-grad iteration %.1f us: %.0f MB moved at least = %.0f %% of 4.0 TB/s; projection GEMM "
                "%.1f GFLOP = %.0f %% of %.0f TFLOP/s",
                ms_per_iter * 1e3, bytes / 1e6, 100 * bytes / secs / 4.0e12, flops / 1e9,
                100 * flops / secs / peak_flops, peak_flops / 1e12);
  return buf;
}

// ---- one layer, forward + backward ------------------------------------------------------------------
// The setting of ../shared/BASELINES.md: one FPRNN layer alone (mixer_h_dep, short convolutions), forward
// and backward of mean(y²), a fixed number of iterations (counting the differentiable one), so `iters − 1`
// no-grad steps. The same-run baseline is the same layer with one iteration (the diagonal floor); the
// reference's time on an H200 is printed beside it where BASELINES.md has the shape.
std::vector<Row> bench_layer(const Options& opts) {
  struct Setup {
    int64_t B, T, d;
    std::string mixer;
    int64_t rank, iters;
    torch::Dtype dtype;
    double reference_ms;  // BASELINES.md (H200, torch.compile), 0 if not measured there
  };
  std::vector<Setup> setups;
  const auto bf16 = torch::kBFloat16, f32 = torch::kFloat32;
  if (opts.device.is_cuda()) {
    setups = {{512, 17, 512, "householderproduct", 1, 5, bf16, 16.2},  {512, 17, 512, "householderproduct", 1, 17, bf16, 27.5},
              {512, 17, 512, "householderproduct", 4, 17, bf16, 37.1},  {512, 17, 512, "kronecker", 1, 17, bf16, 72.9},
              {512, 17, 512, "dplr", 2, 17, bf16, 32.9},                {8, 2048, 768, "householderproduct", 1, 5, bf16, 30.6},
              {8, 2048, 768, "householderproduct", 1, 17, bf16, 50.1},  {512, 17, 512, "householderproduct", 1, 5, f32, 28.1},
              {512, 17, 512, "householderproduct", 1, 17, f32, 50.3},   {512, 17, 512, "householderproduct", 4, 17, f32, 94.2},
              {512, 17, 512, "kronecker", 1, 17, f32, 92.8},            {512, 17, 512, "dplr", 2, 17, f32, 67.7},
              {8, 2048, 768, "householderproduct", 1, 17, f32, 133.0}};
  } else if (opts.quick) {
    setups = {{4, 9, 16, "householderproduct", 1, 5, f32, 0}};
  } else {
    setups = {{128, 17, 128, "householderproduct", 1, 17, f32, 0}, {128, 17, 128, "householderproduct", 4, 17, f32, 0},
              {128, 17, 128, "dplr", 2, 17, f32, 0},               {128, 17, 128, "kronecker", 1, 17, f32, 0},
              {2, 1024, 192, "householderproduct", 1, 17, f32, 0}};
  }
  std::vector<Row> rows;
  for (const auto& s : setups) {
    const std::string name = s.mixer + " r=" + std::to_string(s.rank) + " " + shape_str({s.B, s.T, s.d}) + " " +
                             std::to_string(s.iters) + " it " + dtype_name(s.dtype);
    if (!opts.selected(name)) continue;
    // The layer at `iters` ≥ 2 iterations (counting the differentiable one, so iters − 1 no-grad steps; the
    // solver runs at least one; threshold −1: never converged) and its input, the same weights and input for
    // every variant.
    auto build = [&](int64_t iters, bool fused) {
      torch::manual_seed(0);
      LayerConfig lc;
      lc.d_model = s.d;
      lc.mixer_type = s.mixer;
      lc.mixer_rank = s.rank;
      SolverConfig sc;
      sc.max_iter = std::max<int64_t>(1, iters - 1);
      sc.threshold = -1.0;
      sc.fused = fused;
      nn::FPRNNLayer layer(lc, sc);
      layer->to(opts.device);
      layer->train();
      torch::manual_seed(1);
      const torch::Tensor u = torch::randn({s.B, s.T, s.d}, torch::TensorOptions().device(opts.device)).to(s.dtype);
      return std::make_pair(layer, u);
    };
    auto run = [&](int64_t iters, bool fused, torch::Tensor* y_out) {
      auto [layer, u] = build(iters, fused);
      auto step = [&] {
        layer->zero_grad();
        const torch::Tensor y = layer->forward(u);
        y.to(torch::kFloat32).pow(2).mean().backward();
        if (y_out != nullptr) *y_out = y.detach().to(torch::kFloat32);
      };
      return time_ms(step, opts);
    };
    // The same step recorded once as a CUDA graph and replayed (ops/cuda_graph.h): the GPU no longer
    // waits on the host's launches. The solve queues all its iterations (it runs to the cap anyway).
    auto run_graph = [&](int64_t iters, torch::Tensor* y_out) {
      auto [layer, u] = build(iters, true);
      torch::Tensor y;
      ops::CudaGraph graph;
      graph.capture(
          [&] {
            y = layer->forward(u);
            y.to(torch::kFloat32).pow(2).mean().backward();
          },
          2, [&] { layer->zero_grad(/*set_to_none=*/true); });
      const double t = time_ms([&] { graph.replay(); }, opts);
      if (y_out != nullptr) *y_out = y.detach().to(torch::kFloat32);
      return t;
    };
    torch::Tensor y_fused, y_plain, y_graph;
    const double ms = run(s.iters, true, &y_fused);
    const double ms1 = run(2, true, nullptr);  // the floor: 1 no-grad iteration and the differentiable step
    run(s.iters, false, &y_plain);  // the same layer through the plain (unfused) map, for the check
    // (The Kronecker mixer's solve reads its residual on the host, so it has no graphed form.)
    const bool graphs = opts.device.is_cuda() && ops::cuda_graphs_available() && s.mixer != "kronecker";
    const double ms_graph = graphs ? run_graph(s.iters, &y_graph) : 0.0;
    const double ms1_graph = graphs ? run_graph(2, nullptr) : 0.0;
    const double err = rms_ratio(y_fused.cpu(), y_plain.cpu());
    // bf16 compute: both paths round differently at every step, so compare at bf16 resolution.
    const double tol = s.dtype == torch::kBFloat16 ? 3e-2 : 1e-4;
    const double tokens = static_cast<double>(s.B * s.T);
    Row r = make_row("layer fwd+bwd " + name, ms, "tok/s", tokens / ms * 1e3, "same layer, 2 iterations (1 no-grad)", ms1,
                     tokens / ms1 * 1e3);
    r.ratio = ms / ms1;
    r.reference_ms = s.reference_ms;
    char check[128];
    std::snprintf(check, sizeof(check), "fused vs plain map output, rms ratio %.1e (tolerance %.0e)", err, tol);
    r.check = check;
    r.check_ok = std::isfinite(err) && err <= tol;
    // The baseline runs 2 iterations (1 no-grad + the differentiable one), so the row adds iters − 2.
    if (s.iters > 2 && s.mixer == "householderproduct" && opts.device.is_cuda())
      r.note = iteration_note(s.B * s.T, 2 * s.d, s.rank, s.dtype, (ms - ms1) / (s.iters - 2));
    rows.push_back(r);
    if (graphs) {
      // Same weights, input and iteration count as the eager row: the outputs agree to rounding.
      const double gerr = rms_ratio(y_graph.cpu(), y_fused.cpu());
      Row g = make_row("layer fwd+bwd " + name + " CUDA graph", ms_graph, "tok/s", tokens / ms_graph * 1e3,
                       "same step, eager", ms, tokens / ms * 1e3);
      g.ratio = ms_graph / ms;
      g.reference_ms = s.reference_ms;
      char gcheck[160];
      std::snprintf(gcheck, sizeof(gcheck), "graph vs eager output, rms ratio %.1e (tolerance %.0e)", gerr, tol);
      g.check = gcheck;
      g.check_ok = std::isfinite(gerr) && gerr <= tol;
      char gnote[160];
      std::snprintf(gnote, sizeof(gnote), "2 iterations (1 no-grad) as a CUDA graph: %.3f ms (eager %.3f ms)",
                    ms1_graph, ms1);
      g.note = gnote;
      if (s.iters > 2 && s.mixer == "householderproduct")
        g.note += "; " + iteration_note(s.B * s.T, 2 * s.d, s.rank, s.dtype, (ms_graph - ms1_graph) / (s.iters - 2));
      rows.push_back(g);
    }
  }
  return rows;
}

}  // namespace

std::vector<Case> all_cases() {
  return {
      {"linrec", "diagonal scan forward/backward (the device's kernel) against a memory copy", bench_linrec},
      {"conv", "the layer's short convolutions forward/backward (the device's kernels) against a memory copy", bench_conv},
      {"mixscan", "one iteration's mix + scan (GPU only): the chunked one-pass kernel against fp_mix + fp_scan",
       bench_mixscan},
      {"mixstep", "the differentiable step's mixer backward (GPU only): the row kernel against the block kernel",
       bench_mixstep},
      {"selective_scan", "Mamba-1 selective scan forward/backward (the device's kernel) against the same recurrence as ATen ops",
       bench_selective_scan},
      {"kronecker", "the fused Kronecker mixer op forward (and backward) against the ATen composite", bench_kronecker},
      {"residual", "the fixed-point solver's residual (one pass on a GPU) against the ATen composite", bench_residual},
      {"ssd", "Mamba-2 SSD scan forward/backward (CPU kernel) against the same recurrence as ATen ops", bench_ssd},
      {"iteration", "one fixed-point iteration (no grad) against its projection GEMM alone", bench_iteration},
      {"train_step", "a full training step (forward, one-step backward, AdamW) against the 1-iteration model",
       bench_train_step},
      {"layer", "one FPRNN layer forward+backward at a fixed iteration count (BASELINES.md shapes on a GPU)",
       bench_layer},
  };
}

}  // namespace fprnn::bench
