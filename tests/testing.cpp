// Test helpers shared by every test binary.
#include "testing.h"

#include "fprnn/common.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace fprnn::testing {

std::string fixtures_dir() { return FPRNN_FIXTURES_DIR; }

std::string temp_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = tag;
  if (info != nullptr) name += std::string("_") + info->test_suite_name() + "_" + info->name();
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') c = '_';
  // A fresh directory from mkdtemp, never removed: the CUDA wheel's libtorch.so exports its own
  // std::filesystem::remove_all, which crashes when our binaries bind to it (seen with torch 2.11 + CUDA 13).
  std::string pattern = (fs::temp_directory_path() / ("fprnn_test_" + name + "_XXXXXX")).string();
  TORCH_CHECK(::mkdtemp(pattern.data()) != nullptr, "temp_dir: cannot create ", pattern);
  return pattern;
}

Tensor randn(c10::IntArrayRef shape, uint64_t seed, torch::Dtype dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat64)).to(dtype);
}

void expect_close(const Tensor& out, const Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(out.sizes(), ref.sizes()) << what << ": shapes differ";
  const double r = rms_ratio(out, ref);
  EXPECT_LE(r, tol) << what << ": rms ratio " << r << " > " << tol << " (max abs error " << max_abs_diff(out, ref)
                    << ", ref norm " << ref.to(torch::kFloat64).norm().item<double>() << ")";
}

void expect_throws_with(const std::function<void()>& fn, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

Tensor numerical_grad(const std::function<Tensor()>& fn, Tensor x, double step) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(x.scalar_type() == torch::kFloat64, "numerical_grad needs float64 tensors");
  Tensor flat = x.view(-1);  // x must be contiguous: perturbations go through this view
  TORCH_CHECK(x.is_contiguous(), "numerical_grad needs a contiguous tensor");
  Tensor grad = torch::zeros_like(flat);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double orig = flat[i].item<double>();
    flat[i] = orig + step;
    const double plus = fn().sum().item<double>();
    flat[i] = orig - step;
    const double minus = fn().sum().item<double>();
    flat[i] = orig;
    grad[i] = (plus - minus) / (2 * step);
  }
  return grad.view(x.sizes());
}

void check_gradients(const std::function<Tensor()>& fn, std::vector<Tensor> inputs, double tol,
                     const std::string& what, double step) {
  for (auto& t : inputs) {
    ASSERT_EQ(t.scalar_type(), torch::kFloat64) << what << ": gradient checks run in float64";
    t.requires_grad_(true);
  }
  Tensor out0;
  {
    torch::NoGradGuard g;
    out0 = fn();
  }
  const Tensor w = randn(out0.sizes(), 1234);
  auto loss_fn = [&]() { return (fn() * w).sum(); };
  for (auto& t : inputs)
    if (t.grad().defined()) t.mutable_grad().zero_();
  loss_fn().backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor analytic = inputs[i].grad();
    Tensor numeric = numerical_grad(loss_fn, inputs[i].detach(), step);
    if (!analytic.defined()) {
      // No gradient reached this input (e.g. the non-selective mixer ignores conv1d_mixer): correct only
      // if the output does not depend on it.
      EXPECT_LT(numeric.abs().max().item<double>(), 1e-9) << what << ": input " << i
                                                          << " got no gradient but the output depends on it";
      continue;
    }
    std::ostringstream name;
    name << what << ": gradient of input " << i;
    expect_close(analytic, numeric, tol, name.str());
  }
}

}  // namespace fprnn::testing
