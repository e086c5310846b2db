// Test helpers shared by every test binary: tolerances, fixtures, finite-difference gradient checks.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace fprnn::testing {

using torch::Tensor;

// Folder of the golden fixtures (../shared/fixtures beside the checkout).
std::string fixtures_dir();
// A fresh empty temporary folder for this test (removed by the OS, not by the test).
std::string temp_dir(const std::string& tag);

// Seeded standard-normal tensor (float64 unless said otherwise).
Tensor randn(c10::IntArrayRef shape, uint64_t seed, torch::Dtype dtype = torch::kFloat64);

// Expects rms_ratio(out, ref) ≤ tol; the message names `what` and gives the max-abs error too.
void expect_close(const Tensor& out, const Tensor& ref, double tol, const std::string& what);

// Expects fn() to throw a c10::Error whose message contains `fragment`.
void expect_throws_with(const std::function<void()>& fn, const std::string& fragment);

// Central finite differences of the scalar fn() with respect to every element of `x` (float64, modified
// in place and restored). Returns a tensor shaped like x.
Tensor numerical_grad(const std::function<Tensor()>& fn, Tensor x, double step = 1e-6);

// For every tensor in `inputs` (float64, requires_grad set here): compares the autograd gradient of
// sum(fn() ⊙ w), w a fixed random weight, with central finite differences. tol is on the RMS ratio.
void check_gradients(const std::function<Tensor()>& fn, std::vector<Tensor> inputs, double tol,
                     const std::string& what, double step = 1e-6);

// The same layer (float64, seeded alike) on the CPU and on a GPU, in training mode on one input: expects the
// output, the fixed point, the iteration count and every parameter's gradient to agree. `gpu` is moved to CUDA
// here. For layers with forward(u, &y_star) and last_stats() (the FP-Mamba layers).
template <typename Layer>
void expect_gpu_layer_matches_cpu(Layer& cpu, Layer& gpu, int64_t d_model, const std::string& what) {
  gpu->to(torch::kCUDA);
  cpu->train();
  gpu->train();
  const Tensor u = randn({3, 11, d_model}, 7), w = randn({3, 11, d_model}, 8);
  Tensor ys_cpu, ys_gpu;
  const Tensor y_cpu = cpu->forward(u, &ys_cpu);
  const Tensor y_gpu = gpu->forward(u.cuda(), &ys_gpu);
  ASSERT_TRUE(y_gpu.is_cuda()) << what;
  EXPECT_EQ(gpu->last_stats().recorded(), cpu->last_stats().recorded()) << what;
  expect_close(y_gpu.cpu(), y_cpu, 1e-10, what + ": output");
  expect_close(ys_gpu.cpu(), ys_cpu, 1e-10, what + ": fixed point");
  (y_cpu * w).sum().backward();
  (y_gpu * w.cuda()).sum().backward();
  const auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
  for (const auto& item : pc) {
    const Tensor gc = item.value().grad(), gg = pg[item.key()].grad();
    ASSERT_EQ(gc.defined(), gg.defined()) << what << ": " << item.key();
    if (gc.defined()) expect_close(gg.cpu(), gc, 1e-9, what + ": grad of " + item.key());
  }
}

}  // namespace fprnn::testing
