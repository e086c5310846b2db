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

// Central finite differences of the scalar fn() with respect to every element of `x` (float64, modified
// in place and restored). Returns a tensor shaped like x.
Tensor numerical_grad(const std::function<Tensor()>& fn, Tensor x, double step = 1e-6);

// For every tensor in `inputs` (float64, requires_grad set here): compares the autograd gradient of
// sum(fn() ⊙ w), w a fixed random weight, with central finite differences. tol is on the RMS ratio.
void check_gradients(const std::function<Tensor()>& fn, std::vector<Tensor> inputs, double tol,
                     const std::string& what, double step = 1e-6);

}  // namespace fprnn::testing
