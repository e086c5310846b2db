// Shared helpers: comparison metrics, shift, argument checks.
#include "fprnn/common.h"

#include <cstdlib>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fprnn {

double rms_ratio(const Tensor& out, const Tensor& ref) {
  TORCH_CHECK(out.sizes() == ref.sizes(), "rms_ratio: shapes differ, ", out.sizes(), " vs ", ref.sizes());
  const Tensor o = out.detach().to(torch::kFloat64);
  const Tensor r = ref.detach().to(torch::kFloat64);
  const double num = (o - r).norm().item<double>();
  const double den = r.norm().item<double>();
  if (den == 0.0) return o.norm().item<double>();
  return num / den;
}

double max_abs_diff(const Tensor& out, const Tensor& ref) {
  TORCH_CHECK(out.sizes() == ref.sizes(), "max_abs_diff: shapes differ, ", out.sizes(), " vs ", ref.sizes());
  if (out.numel() == 0) return 0.0;
  return (out.detach().to(torch::kFloat64) - ref.detach().to(torch::kFloat64)).abs().max().item<double>();
}

namespace {

// x (contiguous) shifted by n along dim with zeros entering, 0 < |n| < len: the whole tensor copied flat, offset
// by k·inner elements (one contiguous, vectorisable pass), then the k slices at the start (n > 0) or end of dim
// zeroed for every outer index: the flat copy filled them with the neighbouring outer index's tail. For the
// LM shape's iterate (8, 2048, 1536) in bfloat16 on an H200 a torch::cat of the zero pad and the narrowed input
// took 119 µs (ATen's non-vectorised batched-copy path; results/h200/lm_two_kernel/).
Tensor shift_flat(const Tensor& x, int64_t n, int64_t dim) {
  const int64_t len = x.size(dim), k = std::abs(n), off = k * x.stride(dim), total = x.numel();
  Tensor out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  const Tensor fx = x.view({-1}), fo = out.view({-1});
  if (n > 0) {
    fo.narrow(0, off, total - off).copy_(fx.narrow(0, 0, total - off));
    out.narrow(dim, 0, k).zero_();
  } else {
    fo.narrow(0, 0, total - off).copy_(fx.narrow(0, off, total - off));
    out.narrow(dim, len - k, k).zero_();
  }
  return out;
}

// The gradient of a shift by n is the shift by −n of the output's gradient.
struct ShiftFunction : public torch::autograd::Function<ShiftFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, int64_t n, int64_t dim) {
    ctx->saved_data["n"] = n;
    ctx->saved_data["dim"] = dim;
    return shift_flat(x, n, dim);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const int64_t n = ctx->saved_data["n"].toInt(), dim = ctx->saved_data["dim"].toInt();
    return {shift_flat(grad[0].contiguous(), -n, dim), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor shift(const Tensor& x, int64_t n, int64_t dim) {
  dim = dim < 0 ? dim + x.dim() : dim;
  TORCH_CHECK(dim >= 0 && dim < x.dim(), "shift: dim ", dim, " out of range for a ", x.dim(), "-d tensor");
  const int64_t len = x.size(dim);
  const int64_t k = std::min<int64_t>(std::abs(n), len);
  if (k == 0) return x.clone(torch::MemoryFormat::Contiguous);
  if (k == len) return torch::zeros_like(x, torch::MemoryFormat::Contiguous);
  if (x.numel() == 0) return torch::empty_like(x, torch::MemoryFormat::Contiguous);
  return ShiftFunction::apply(x.contiguous(), n, dim);
}

void check_rank(const Tensor& t, int64_t rank, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must have ", rank, " dimensions, got ", t.sizes());
}

void check_floating(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating point, got ", t.scalar_type());
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* a_name, const char* b_name) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", a_name, " ", a.sizes(), " and ", b_name, " ", b.sizes(),
              " must have the same shape");
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32") return torch::kFloat32;
  if (name == "float64" || name == "fp64") return torch::kFloat64;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  TORCH_CHECK(false, "unknown dtype '", name, "' (valid: float32, float64, bfloat16)");
}

std::string dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return std::string(c10::toString(dtype));
  }
}

int64_t numel(const std::vector<Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

void tune_allocator() {
  const char* opt_out = std::getenv("FPRNN_SYSTEM_MALLOC");
  if (opt_out != nullptr && std::string(opt_out) == "1") return;
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // the largest value glibc accepts portably (int)
#endif
}

}  // namespace fprnn
