// The FPRNN layer on a GPU: the device solve loop (ops/fp_step_cuda.h, no host synchronisation per
// iteration) against the plain map on the CPU: same iterate, same iteration count, same damping, same
// gradients. Skipped without a GPU; run on the GPU machine (scripts/gpu.sh) before a CUDA change lands.
#include "layer_testing.h"

#include "fprnn/ops/cuda_graph.h"

#include <set>

namespace fprnn::testing {
namespace {

#define FPRNN_REQUIRE_GPU() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

// The statistics a layer reports after a graph replay (read from its device solver state).
solver::SolveStats device_solve_stats_of(const nn::FPRNNLayer& layer) { return layer->last_stats(); }

struct DevicePair {
  nn::FPRNNLayer cpu, gpu;
};

// Two float32 layers with equal weights: the CPU one on the plain (unfused) map, the GPU one on the device loop.
DevicePair make_pair(const std::string& mixer, int64_t rank, const SolverConfig& sc, int64_t d_model = 16) {
  LayerConfig lc;
  lc.d_model = d_model;
  lc.mixer_type = mixer;
  lc.mixer_rank = rank;
  SolverConfig plain = sc;
  plain.fused = false;
  torch::manual_seed(5);
  nn::FPRNNLayer cpu(lc, plain);
  torch::manual_seed(5);
  nn::FPRNNLayer gpu(lc, sc);
  gpu->to(torch::kCUDA);
  return {cpu, gpu};
}

struct SolveCase {
  std::string name, mixer;
  int64_t rank;
  double stepsize, decay;
  int64_t patience, check_every;
  double quantile;
};

class DeviceLoopTest : public ::testing::TestWithParam<SolveCase> {};

TEST_P(DeviceLoopTest, MatchesThePlainMapOnTheCpu) {
  FPRNN_REQUIRE_GPU();
  const SolveCase& c = GetParam();
  SolverConfig sc;
  sc.eval_max_iter = 300;
  sc.threshold = 1e-4;
  sc.stepsize = c.stepsize;
  sc.stepsize_decay = c.decay;
  sc.decay_patience = c.patience;
  sc.device_check_every = c.check_every;
  sc.eval_outlier_quantile = c.quantile;
  auto [cpu, gpu] = make_pair(c.mixer, c.rank, sc);
  cpu->eval();
  gpu->eval();
  const Tensor u = randn({6, 23, 16}, 9, torch::kFloat32);
  Tensor h_cpu, h_gpu;
  torch::NoGradGuard no_grad;
  const Tensor y_cpu = cpu->forward(u, &h_cpu);
  const Tensor y_gpu = gpu->forward(u.cuda(), &h_gpu);
  const auto& s_cpu = cpu->last_stats();
  const auto& s_gpu = gpu->last_stats();
  EXPECT_GT(s_cpu.iterations, 3) << "the case should take several iterations";
  EXPECT_EQ(s_gpu.iterations, s_cpu.iterations) << "iteration count";
  EXPECT_EQ(s_gpu.converged, s_cpu.converged);
  EXPECT_NEAR(s_gpu.last_residual_max, s_cpu.last_residual_max, 1e-3 * s_cpu.last_residual_max + 1e-6);
  expect_close(h_gpu.cpu(), h_cpu, 1e-4, "fixed point");
  expect_close(y_gpu.cpu(), y_cpu, 1e-4, "layer output");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DeviceLoopTest,
    ::testing::Values(SolveCase{"householder_r1", "householderproduct", 1, 1.0, 1.0, 15, 4, 0.0},
                      SolveCase{"householder_r3_check1", "householderproduct", 3, 1.0, 1.0, 15, 1, 0.0},
                      SolveCase{"householder_r2_check7", "householderproduct", 2, 1.0, 1.0, 15, 7, 0.0},
                      SolveCase{"dplr_r2", "dplr", 2, 1.0, 1.0, 15, 4, 0.0},
                      SolveCase{"damped", "householderproduct", 2, 0.9, 0.5, 2, 3, 0.0},
                      SolveCase{"quantile", "householderproduct", 2, 1.0, 1.0, 15, 5, 0.3}),
    [](const auto& info) { return info.param.name; });

// A batch of 1500 samples: the controller's sort pads to 2048 slots (more than its 1024 threads) and the
// training quantile (0.9) picks an interpolated order statistic; iteration count and iterate as on the CPU.
TEST(DeviceLoop, LargeBatchQuantileMatchesTheCpu) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.max_iter = 40;
  sc.threshold = 1e-3;
  auto [cpu, gpu] = make_pair("householderproduct", 2, sc, 8);
  cpu->train();
  gpu->train();
  torch::NoGradGuard no_grad;
  const Tensor u = randn({1500, 6, 8}, 14, torch::kFloat32);
  Tensor h_cpu, h_gpu;
  cpu->forward(u, &h_cpu);
  gpu->forward(u.cuda(), &h_gpu);
  EXPECT_GT(cpu->last_stats().iterations, 3);
  EXPECT_EQ(gpu->last_stats().iterations, cpu->last_stats().iterations);
  EXPECT_NEAR(gpu->last_stats().best_residual_quantile, cpu->last_stats().best_residual_quantile,
              1e-3 * cpu->last_stats().best_residual_quantile + 1e-7);
  expect_close(h_gpu.cpu(), h_cpu, 1e-4, "fixed point");
}

TEST(DeviceLoop, PlainMapOnTheGpuMatchesTheCpu) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.fused = false;  // the generic path on CUDA tensors: Householder and linrec kernels, host-side residual
  sc.eval_max_iter = 200;
  sc.threshold = 1e-4;
  for (const std::string mixer : {"householderproduct", "kronecker"}) {
    auto [cpu, gpu] = make_pair(mixer, 1, sc);
    cpu->eval();
    gpu->eval();
    torch::NoGradGuard no_grad;
    const Tensor u = randn({3, 21, 16}, 12, torch::kFloat32);
    const Tensor y_cpu = cpu->forward(u);
    const Tensor y_gpu = gpu->forward(u.cuda());
    EXPECT_EQ(gpu->last_stats().iterations, cpu->last_stats().iterations) << mixer;
    expect_close(y_gpu.cpu(), y_cpu, 1e-4, mixer + " output");
  }
}

#ifdef FPRNN_WITH_CUDA
// A batch whose channels fill the chip (B·D ≥ the SMs' thread slots): the device loop runs the mix and the
// scan as one kernel per sample; fixed point and iteration count as the plain map on the CPU.
TEST(DeviceLoop, OneBlockPerSampleMatchesTheCpu) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.eval_max_iter = 30;
  sc.threshold = 1e-6;
  auto [cpu, gpu] = make_pair("householderproduct", 1, sc, 512);
  cpu->eval();
  gpu->eval();
  int64_t B = 8;
  while (!ops::fp_mixscan_fits(B, 5, 1024, torch::Device(torch::kCUDA))) B += 8;
  ASSERT_LE(B, 4096) << "no batch size takes the one-block-per-sample kernel";
  torch::NoGradGuard no_grad;
  const Tensor u = randn({B, 5, 512}, 21, torch::kFloat32);
  Tensor h_cpu, h_gpu;
  cpu->forward(u, &h_cpu);
  gpu->forward(u.cuda(), &h_gpu);
  EXPECT_EQ(gpu->last_stats().iterations, cpu->last_stats().iterations);
  expect_close(h_gpu.cpu(), h_cpu, 2e-4, "fixed point, B " + std::to_string(B));
}
#endif

// Also in bfloat16, where the result is the scan's rounded copy of the last executed iteration: the no-op
// iterations queued after the stop (check_every 3 and 16) must leave it as the stop left it. Two shapes: the
// two-kernel iteration (few channels) and, with CUDA, the one-block-per-sample kernel.
TEST(DeviceLoop, CheckIntervalDoesNotChangeTheResult) {
  FPRNN_REQUIRE_GPU();
  struct Shape {
    int64_t B, T, d_model;
  };
  std::vector<Shape> shapes{{4, 30, 16}};
#ifdef FPRNN_WITH_CUDA
  int64_t wide_b = 8;
  while (!ops::fp_mixscan_fits(wide_b, 5, 1024, torch::Device(torch::kCUDA))) wide_b += 8;
  shapes.push_back({wide_b, 5, 512});
#endif
  for (const auto& shape : shapes) {
    for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      const std::string what = "B " + std::to_string(shape.B) + " " + std::string(c10::toString(dtype));
      SolverConfig sc;
      sc.threshold = 1e-3;
      Tensor first;
      int64_t first_iters = -1;
      for (int64_t every : {1, 3, 16}) {
        sc.device_check_every = every;
        auto pair = make_pair("householderproduct", 2, sc, shape.d_model);
        pair.gpu->eval();
        torch::NoGradGuard no_grad;
        Tensor h;
        pair.gpu->forward(randn({shape.B, shape.T, shape.d_model}, 3, torch::kFloat32).cuda().to(dtype), &h);
        ASSERT_EQ(h.scalar_type(), dtype) << what;
        if (!first.defined()) {
          first = h.cpu();
          first_iters = pair.gpu->last_stats().iterations;
          continue;
        }
        EXPECT_EQ(pair.gpu->last_stats().iterations, first_iters) << "check_every " << every << ", " << what;
        EXPECT_TRUE(torch::equal(h.cpu(), first)) << "check_every " << every << " changed the iterate, " << what;
      }
    }
  }
}

TEST(DeviceLoop, TrainingGradientsMatchTheCpu) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.max_iter = 8;
  auto [cpu, gpu] = make_pair("householderproduct", 2, sc);
  cpu->train();
  gpu->train();
  const Tensor u = randn({3, 17, 16}, 4, torch::kFloat32);
  cpu->forward(u).pow(2).mean().backward();
  gpu->forward(u.cuda()).pow(2).mean().backward();
  EXPECT_EQ(gpu->last_stats().iterations, cpu->last_stats().iterations);
  const auto pc = cpu->named_parameters();
  const auto pg = gpu->named_parameters();
  for (const auto& item : pc) {
    const Tensor gc = item.value().grad();
    const Tensor gg = pg[item.key()].grad();
    ASSERT_TRUE(gc.defined() && gg.defined()) << item.key();
    expect_close(gg.cpu(), gc, 2e-4, "grad " + item.key());
  }
}

TEST(DeviceLoop, BFloat16StaysCloseToFloat32) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.eval_max_iter = 12;
  sc.threshold = 1e-9;  // a fixed 12 iterations in both
  auto pair = make_pair("householderproduct", 1, sc, 32);
  pair.gpu->eval();
  torch::NoGradGuard no_grad;
  const Tensor u = randn({4, 17, 32}, 8, torch::kFloat32).cuda();
  Tensor h32, h16;
  pair.gpu->forward(u, &h32);
  pair.gpu->forward(u.to(torch::kBFloat16), &h16);
  EXPECT_EQ(h16.scalar_type(), torch::kBFloat16);
  expect_close(h16.to(torch::kFloat32).cpu(), h32.cpu(), 3e-2, "bf16 fixed point");
}


// The solve recorded as a CUDA graph queues every iteration up to the cap without reading the stop flag; the
// iterations after the stop do nothing and the result buffer is picked on the device: replays with new inputs
// give the eager solve's fixed point and statistics. Inputs of several lengths of convergence, so that both
// parities of the final count occur.
TEST(CudaGraph, RecordedSolveMatchesTheEagerSolve) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.eval_max_iter = 60;
  sc.threshold = 1e-4;
  auto pair = make_pair("householderproduct", 2, sc);
  nn::FPRNNLayer gpu = pair.gpu;
  gpu->eval();
  torch::NoGradGuard no_grad;
  Tensor u = randn({5, 19, 16}, 1, torch::kFloat32).cuda();
  Tensor h_graph;
  ops::CudaGraph graph;
  graph.capture([&] { gpu->forward(u, &h_graph); });
  ASSERT_TRUE(graph.captured());
  std::set<int64_t> parities;
  for (uint64_t seed : {2, 3, 4, 5, 6, 7}) {
    const Tensor input = randn({5, 19, 16}, seed, torch::kFloat32).mul(0.25 * static_cast<double>(seed)).cuda();
    Tensor h_eager;
    gpu->forward(input, &h_eager);
    const solver::SolveStats eager = gpu->last_stats();
    u.copy_(input);
    graph.replay();
    torch::cuda::synchronize();
    const solver::SolveStats replayed = device_solve_stats_of(gpu);
    EXPECT_EQ(replayed.iterations, eager.iterations) << "seed " << seed;
    EXPECT_EQ(replayed.converged, eager.converged) << "seed " << seed;
    EXPECT_LT(replayed.iterations, sc.eval_max_iter) << "seed " << seed << ": the test wants a stop before the cap";
    EXPECT_DOUBLE_EQ(replayed.best_residual_quantile, eager.best_residual_quantile) << "seed " << seed;
    expect_close(h_graph.cpu(), h_eager.cpu(), 1e-6, "graph fixed point, seed " + std::to_string(seed));
    parities.insert(replayed.iterations % 2);
  }
  EXPECT_EQ(parities.size(), 2u) << "every input stopped after a count of the same parity";
}

// Forward and one-step backward recorded together: every replay overwrites the output and the gradients
// with those of an eager step on the same input (gradients set to None before recording, as documented).
TEST(CudaGraph, RecordedTrainingStepMatchesEagerSteps) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  sc.max_iter = 8;
  auto pair = make_pair("householderproduct", 1, sc);
  nn::FPRNNLayer graphed = pair.gpu;
  torch::manual_seed(5);
  LayerConfig lc;
  lc.d_model = 16;
  lc.mixer_type = "householderproduct";
  lc.mixer_rank = 1;
  nn::FPRNNLayer eager(lc, sc);
  eager->to(torch::kCUDA);
  graphed->train();
  eager->train();
  Tensor u = randn({4, 17, 16}, 11, torch::kFloat32).cuda();
  Tensor y;
  ops::CudaGraph graph;
  graph.capture(
      [&] {
        y = graphed->forward(u);
        y.pow(2).mean().backward();
      },
      2, [&] { graphed->zero_grad(/*set_to_none=*/true); });
  for (uint64_t seed : {12, 13}) {
    const Tensor input = randn({4, 17, 16}, seed, torch::kFloat32).cuda();
    u.copy_(input);
    graph.replay();
    eager->zero_grad();
    const Tensor y_eager = eager->forward(input);
    y_eager.pow(2).mean().backward();
    torch::cuda::synchronize();
    expect_close(y.detach().cpu(), y_eager.detach().cpu(), 1e-5, "graph output, seed " + std::to_string(seed));
    EXPECT_EQ(graphed->last_stats().iterations, eager->last_stats().iterations);
    const auto pe = eager->named_parameters();
    for (const auto& item : graphed->named_parameters()) {
      const Tensor gg = item.value().grad();
      ASSERT_TRUE(gg.defined()) << item.key();
      expect_close(gg.cpu(), pe[item.key()].grad().cpu(), 1e-5, "graph grad " + item.key());
    }
  }
}

// A solve that reads its residual on the host (here the Kronecker mixer's) says so instead of failing inside
// the capture; the device stays usable.
TEST(CudaGraph, HostReadingSolveRefusesToBeRecorded) {
  FPRNN_REQUIRE_GPU();
  SolverConfig sc;
  auto pair = make_pair("kronecker", 1, sc);
  pair.gpu->eval();
  torch::NoGradGuard no_grad;
  const Tensor u = randn({2, 9, 16}, 1, torch::kFloat32).cuda();
  ops::CudaGraph graph;
  try {
    graph.capture([&] { pair.gpu->forward(u); }, 1);
    FAIL() << "the capture did not throw";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA graph"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(graph.captured());
  EXPECT_TRUE(torch::isfinite(pair.gpu->forward(u)).all().item<bool>());
}

}  // namespace
}  // namespace fprnn::testing
