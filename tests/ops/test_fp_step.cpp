// fp_step op: the reference against the composition of the householder/dplr and linrec references, the
// CPU kernel (both schedules) against the reference in float64 and float32 for every activation, r = 1..4,
// T = 1, odd D, the concat and symm parameter modes, residual statistics against the solver's formula,
// NaN propagation and input checks. The op has no backward: it is the solver's no-grad map.
#include "fprnn/ops/fp_step.h"
#include "fprnn/ops/householder.h"
#include "fprnn/ops/linrec.h"

#include "ops/fp_step/fp_step_common.h"
#include "testing.h"

#include <torch/torch.h>

#include <cmath>
#include <ostream>
#include <string>

namespace fprnn::ops {
namespace {

using fprnn::testing::expect_close;
using fprnn::testing::randn;
using torch::Tensor;

struct Case {
  bool sum_form;
  MixerAc ac;
  int64_t r, B, T, D;
  bool with_z = true;
};

const char* ac_name(MixerAc ac) {
  return ac == MixerAc::kIdentity ? "identity" : ac == MixerAc::kRelu ? "relu" : "silu";
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << (c.sum_form ? "dplr" : "householder") << " " << ac_name(c.ac) << " r=" << c.r << " (" << c.B << ", "
      << c.T << ", " << c.D << ")" << (c.with_z ? "" : " no z");
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(c.sum_form ? "Dplr" : "Householder") + "_" + ac_name(c.ac) + "_r" + std::to_string(c.r) +
         "_B" + std::to_string(c.B) + "_T" + std::to_string(c.T) + "_D" + std::to_string(c.D) +
         (c.with_z ? "" : "_noz");
}

FpStepConfig config(const Case& c) {
  FpStepConfig cfg;
  cfg.rank = c.r;
  cfg.ac = c.ac;
  cfg.sum_form = c.sum_form;
  cfg.norm_eps = 1e-5;
  return cfg;
}

// float64 inputs of the magnitudes the layer produces: raw ~ N(0, 1), λ ∈ (0, 1).
FpStepInputs make_inputs(const Case& c, uint64_t seed) {
  const int64_t R = c.r * c.D + c.r;
  FpStepInputs in;
  in.base = randn({c.B, c.T, R}, seed);
  if (c.with_z) in.z = randn({c.B, c.T, R}, seed + 1) * 0.5;
  in.h = randn({c.B, c.T, c.D}, seed + 2);
  in.bx = randn({c.B, c.T, c.D}, seed + 3);
  in.lambda = torch::sigmoid(randn({c.B, c.T, c.D}, seed + 4));
  return in;
}

FpStepInputs to(const FpStepInputs& in, torch::Dtype dt) {
  return {in.base.to(dt), in.z.defined() ? in.z.to(dt) : Tensor(), in.h.to(dt), in.bx.to(dt), in.lambda.to(dt)};
}

// The kernel with preallocated outputs, as the layer calls it.
std::pair<Tensor, Tensor> run_cpu(const FpStepInputs& in, const FpStepConfig& cfg, FpStepSchedule schedule) {
  Tensor y = torch::empty(in.h.sizes(), in.h.options());
  Tensor stats = torch::empty({in.h.size(0), in.h.size(1), 2}, in.h.options());
  fp_step_fwd_cpu(in, cfg, y, stats, schedule);
  return {y, stats};
}

// solver::relative_residual's formula (src/solver/fixed_point.cpp), copied because test_ops does not link the
// solver: r_b = max_t ‖y_bt − ŷ_bt‖∞ / (‖ŷ_bt‖∞ + eps), in float32 for float32 tensors.
std::vector<double> relative_residual(const Tensor& y, const Tensor& y_new, double eps) {
  const auto acc = y_new.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const Tensor diff = (y.to(acc) - y_new.to(acc)).abs().amax(-1);
  const Tensor scale = y_new.to(acc).abs().amax(-1) + eps;
  const Tensor r = (diff / scale).amax(-1).to(torch::kFloat64).contiguous();
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
}

class FpStepTest : public ::testing::TestWithParam<Case> {};

TEST_P(FpStepTest, RefMatchesComposedReferences) {
  // An independent route to the same y: the mixer factors by hand, householder/dplr_fwd_ref, linrec_fwd_ref.
  const Case c = GetParam();
  const FpStepInputs in = make_inputs(c, 10);
  const int64_t N = c.B * c.T;
  Tensor raw = in.base.clone();
  if (c.with_z && c.T > 1) raw.narrow(1, 1, c.T - 1).add_(in.z.narrow(1, 0, c.T - 1));
  Tensor a = raw.narrow(2, 0, c.r * c.D).reshape({N, c.r, c.D});
  a = c.ac == MixerAc::kSilu ? torch::silu(a) : c.ac == MixerAc::kRelu ? torch::relu(a) : a;
  const Tensor u = a / a.norm(2, -1, true).clamp_min(1e-5);
  const Tensor alpha = torch::sigmoid(raw.narrow(2, c.r * c.D, c.r).reshape({N, c.r}));
  const Tensor delta = (in.bx - in.h).reshape({N, c.D});
  const Tensor q = c.sum_form ? dplr_fwd_ref(u, alpha, delta) : householder_fwd_ref(u, alpha, delta);
  const Tensor v = (1 - in.lambda) * (q.reshape({c.B, c.T, c.D}) + in.h);
  const Tensor want = linrec_fwd_ref(v, in.lambda, false);
  const auto [y, stats] = fp_step_ref(in, config(c));
  expect_close(y, want, 1e-13, "ref vs composed references");
  expect_close(stats.select(-1, 0), (want - in.h).abs().amax(-1), 1e-13, "stats max |y − h|");
  expect_close(stats.select(-1, 1), want.abs().amax(-1), 1e-13, "stats max |y|");
}

TEST_P(FpStepTest, CpuMatchesRef) {
  const Case c = GetParam();
  const FpStepInputs in = make_inputs(c, 20);
  const FpStepConfig cfg = config(c);
  const auto [y_ref, stats_ref] = fp_step_ref(in, cfg);
  for (const auto schedule : {FpStepSchedule::kPerSequence, FpStepSchedule::kTwoPass}) {
    const std::string tag = schedule == FpStepSchedule::kPerSequence ? "per sequence" : "two pass";
    // float64: the kernel differs from the reference only in rounding (summation order, the unnormalised
    // directions, its polynomial exp of ≈ 1 ulp); errors stay near 1e-15 relative.
    const auto [y, stats] = run_cpu(in, cfg, schedule);
    expect_close(y, y_ref, 1e-12, tag + " float64 y");
    expect_close(stats, stats_ref, 1e-12, tag + " float64 stats");
    // float32: dots and norms of length D accumulate ~√D·2⁻²⁴ relative error, amplified by at most the
    // scan's geometric sum; 1e-5 leaves two orders of margin at these sizes.
    const auto [y32, stats32] = run_cpu(to(in, torch::kFloat32), cfg, schedule);
    EXPECT_EQ(y32.scalar_type(), torch::kFloat32);
    expect_close(y32, y_ref, 1e-5, tag + " float32 y");
    expect_close(stats32, stats_ref, 1e-5, tag + " float32 stats");
  }
}

TEST_P(FpStepTest, SchedulesAgreeAndEntryAcceptsStrides) {
  const Case c = GetParam();
  const FpStepInputs in = make_inputs(c, 30);
  const FpStepConfig cfg = config(c);
  const auto [y1, s1] = run_cpu(in, cfg, FpStepSchedule::kPerSequence);
  const auto [y2, s2] = run_cpu(in, cfg, FpStepSchedule::kTwoPass);
  const auto [y3, s3] = run_cpu(in, cfg, FpStepSchedule::kAuto);
  // Both schedules run the same per-token arithmetic; only where v waits between mixer and scan differs.
  expect_close(y2, y1, 1e-15, "two pass vs per sequence");
  expect_close(s2, s1, 1e-15, "two pass vs per sequence stats");
  expect_close(y3, y1, 1e-15, "auto vs per sequence");
  // The entry makes strided inputs contiguous: h and bx behind a transposed buffer, base as a slice.
  FpStepInputs nc = in;
  nc.h = in.h.transpose(1, 2).contiguous().transpose(1, 2);
  nc.bx = torch::stack({in.bx, in.bx}, -1).select(-1, 1);
  nc.base = torch::cat({in.base, in.base}, -1).narrow(-1, 0, in.base.size(-1));
  if (c.T > 1 && c.D > 1) {
    EXPECT_FALSE(nc.h.is_contiguous());
  }
  if (c.B * c.T > 1) {
    EXPECT_FALSE(nc.base.is_contiguous());
  }
  Tensor stats;
  const Tensor y = fp_step(nc, cfg, &stats);
  expect_close(y, y1, 1e-15, "entry on strided inputs");
  expect_close(stats, s1, 1e-15, "entry on strided inputs, stats");
}

TEST_P(FpStepTest, ResidualEqualsSolverFormula) {
  const Case c = GetParam();
  const FpStepInputs in = make_inputs(c, 40);
  for (const auto dt : {torch::kFloat64, torch::kFloat32}) {
    const FpStepInputs inp = to(in, dt);
    Tensor stats;
    const Tensor y = fp_step(inp, config(c), &stats);
    for (const double eps : {1e-8, 0.5}) {
      const std::vector<double> got = fp_step_residual(stats, eps);
      const std::vector<double> want = relative_residual(inp.h, y, eps);
      ASSERT_EQ(got.size(), want.size());
      // The same maxima, the same eps addition and division in the same dtype: equal to the last bit.
      for (size_t b = 0; b < got.size(); ++b) {
        EXPECT_EQ(got[b], want[b]) << "sample " << b << " eps " << eps << " dtype " << dt;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FpStepTest,
    ::testing::Values(Case{false, MixerAc::kSilu, 1, 3, 5, 13}, Case{false, MixerAc::kRelu, 2, 2, 6, 9},
                      Case{false, MixerAc::kIdentity, 3, 3, 4, 17}, Case{false, MixerAc::kSilu, 4, 2, 7, 33},
                      Case{false, MixerAc::kSilu, 2, 4, 1, 11}, Case{false, MixerAc::kSilu, 1, 1, 1, 1},
                      Case{false, MixerAc::kSilu, 3, 5, 9, 70, false}, Case{false, MixerAc::kRelu, 4, 3, 3, 130},
                      Case{true, MixerAc::kSilu, 1, 3, 5, 13}, Case{true, MixerAc::kRelu, 2, 2, 6, 9},
                      Case{true, MixerAc::kIdentity, 3, 3, 4, 17}, Case{true, MixerAc::kSilu, 4, 2, 7, 33},
                      Case{true, MixerAc::kSilu, 2, 4, 1, 11}, Case{true, MixerAc::kIdentity, 2, 3, 9, 70, false},
                      Case{true, MixerAc::kSilu, 3, 3, 3, 1100}),
    case_name);

// raw from an explicit (R × P) projection of the mixer parameter, and the same raw split as the layer splits
// it (base from x_mix, z from h for every token): the kernel's z_{t−1} shift must equal param(shift(h)).
TEST(FpStep, ConcatAndSymmParameterModes) {
  const int64_t B = 3, T = 6, D = 11, r = 2, R = r * D + r;
  const Tensor x_mix = randn({B, T, D}, 50), h = randn({B, T, D}, 51);
  const Tensor bias = randn({R}, 52);
  const Tensor s = torch::cat({torch::zeros({B, 1, D}, h.options()), h.narrow(1, 0, T - 1)}, 1);  // shift(h)
  for (const bool symm : {false, true}) {
    const Tensor W = randn({R, symm ? D : 2 * D}, 53) / std::sqrt(static_cast<double>(D));
    const Tensor param = symm ? x_mix + s : torch::cat({x_mix, s}, -1);
    const Tensor W_x = symm ? W : W.narrow(1, 0, D), W_h = symm ? W : W.narrow(1, D, D);
    FpStepInputs direct{torch::matmul(param, W.t()) + bias, Tensor(), h, randn({B, T, D}, 54),
                        torch::sigmoid(randn({B, T, D}, 55))};
    FpStepInputs split = direct;
    split.base = torch::matmul(x_mix, W_x.t()) + bias;
    split.z = torch::matmul(h, W_h.t());
    for (const bool sum_form : {false, true}) {
      FpStepConfig cfg;
      cfg.rank = r;
      cfg.sum_form = sum_form;
      const std::string what = std::string(symm ? "symm" : "concat") + (sum_form ? " dplr" : " householder");
      const Tensor want = fp_step_ref(direct, cfg).first;
      expect_close(fp_step_ref(split, cfg).first, want, 1e-13, what + ": ref");
      expect_close(fp_step(split, cfg), want, 1e-12, what + ": cpu");
    }
  }
}

TEST(FpStep, NormEpsFollowsFNormalize) {
  // relu of an all-negative direction is the zero vector: normalize gives 0 (‖0‖ < eps), no reflection.
  const Case c{false, MixerAc::kRelu, 2, 2, 3, 8};
  FpStepInputs in = make_inputs(c, 60);
  in.base.narrow(2, 0, c.D).fill_(-1.0);  // u_0 raw < 0 everywhere …
  in.z.narrow(2, 0, c.D).fill_(-1.0);     // … also after adding z
  expect_close(fp_step(in, config(c)), fp_step_ref(in, config(c)).first, 1e-12, "zero direction");
  // Tiny directions: ‖a‖ < eps, so û = a / eps is short and the reflection weak; F.normalize's semantics.
  in = make_inputs(c, 61);
  in.base.narrow(2, 0, c.D).mul_(1e-7);
  in.z.narrow(2, 0, c.D).mul_(1e-7);
  FpStepConfig cfg = config(c);
  cfg.norm_eps = 1e-3;
  expect_close(fp_step(in, cfg), fp_step_ref(in, cfg).first, 1e-12, "directions shorter than eps");
}

TEST(FpStep, NanPropagatesToTheResidual) {
  const Case c{false, MixerAc::kSilu, 2, 3, 4, 21};
  for (const auto schedule : {FpStepSchedule::kPerSequence, FpStepSchedule::kTwoPass}) {
    FpStepInputs in = make_inputs(c, 70);
    in.h[1][2][5] = std::nan("");
    const auto [y, stats] = run_cpu(in, config(c), schedule);
    const std::vector<double> r = fp_step_residual(stats, 1e-8);
    const std::vector<double> want = relative_residual(in.h, y, 1e-8);
    EXPECT_FALSE(std::isnan(r[0]));
    EXPECT_TRUE(std::isnan(r[1]));
    EXPECT_TRUE(std::isnan(want[1]));
    EXPECT_EQ(r[0], want[0]);
    EXPECT_EQ(r[2], want[2]);
  }
}

TEST(FpStep, InputChecksNameTheProblem) {
  const Case c{false, MixerAc::kSilu, 2, 2, 3, 5};
  const FpStepInputs good = make_inputs(c, 80);
  const FpStepConfig cfg = config(c);
  auto expect_throw = [&](FpStepInputs in, FpStepConfig k, const std::string& needle) {
    try {
      fp_step(in, k);
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  FpStepInputs bad = good;
  bad.base = good.base.narrow(2, 0, 7);
  expect_throw(bad, cfg, "base must be (2, 3, 12)");
  bad = good;
  bad.z = good.z.to(torch::kFloat32);
  expect_throw(bad, cfg, "z must be Double");
  bad = good;
  bad.lambda = Tensor();
  expect_throw(bad, cfg, "lambda is undefined");
  expect_throw(to(good, torch::kBFloat16), cfg, "float32 or float64");
  FpStepConfig k = cfg;
  k.rank = 0;
  expect_throw(good, k, "rank must be at least 1");
  EXPECT_THROW(mixer_ac_from_name("gelu"), c10::Error);
  EXPECT_EQ(mixer_ac_from_name("relu"), MixerAc::kRelu);
  // The kernel itself wants contiguous inputs and an output that is not an input.
  Tensor y = torch::empty_like(good.h), stats;
  FpStepInputs nc = good;
  nc.h = good.h.transpose(0, 1).contiguous().transpose(0, 1);
  EXPECT_THROW(fp_step_fwd_cpu(nc, cfg, y, stats), c10::Error);
  Tensor alias = good.h;
  EXPECT_THROW(fp_step_fwd_cpu(good, cfg, alias, stats), c10::Error);
}

}  // namespace
}  // namespace fprnn::ops
