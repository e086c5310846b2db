// The fused Kronecker op on the CPU: the per-token algorithm of kronecker_common.h, one token per thread
// (at::parallel_for over tokens), each thread with its own scratch.
#include "fprnn/ops/kronecker.h"

#include "ops/kronecker/kronecker_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

namespace fprnn::ops {
namespace {
constexpr int64_t kGrain = 16;  // tokens per task: each costs O(m³) work
}  // namespace

torch::Tensor kronecker_fwd_cpu(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec) {
  kron::check_kernel_inputs("kronecker_fwd_cpu", raw, v, torch::Tensor(), spec);
  TORCH_CHECK(raw.is_cpu(), "kronecker_fwd_cpu: CPU tensors expected, got ", raw.device());
  const kron::Params q = kron::make_params(spec);
  const kron::Layout l = kron::make_layout(q, /*backward=*/false);
  torch::Tensor out = torch::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "kronecker_fwd_cpu", [&] {
    const scalar_t* r = raw.data_ptr<scalar_t>();
    const scalar_t* x = v.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, raw.size(0), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> w(l.total);
      for (int64_t t = begin; t < end; ++t)
        kron::forward_token(kron::Seq{}, q, l, r + t * q.R, x + t * q.n, y + t * q.n, w.data());
    });
  });
  return out;
}

std::pair<torch::Tensor, torch::Tensor> kronecker_bwd_cpu(const torch::Tensor& raw, const torch::Tensor& v,
                                                          const torch::Tensor& g, const KroneckerSpec& spec) {
  kron::check_kernel_inputs("kronecker_bwd_cpu", raw, v, g, spec);
  TORCH_CHECK(raw.is_cpu(), "kronecker_bwd_cpu: CPU tensors expected, got ", raw.device());
  TORCH_CHECK(!spec.spectral, "kronecker_bwd_cpu: no backward for 'spectral' normalisation");
  const kron::Params q = kron::make_params(spec);
  const kron::Layout l = kron::make_layout(q, /*backward=*/true);
  torch::Tensor graw = torch::empty_like(raw), gv = torch::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "kronecker_bwd_cpu", [&] {
    const scalar_t* r = raw.data_ptr<scalar_t>();
    const scalar_t* x = v.data_ptr<scalar_t>();
    const scalar_t* gy = g.data_ptr<scalar_t>();
    scalar_t* gr = graw.data_ptr<scalar_t>();
    scalar_t* gx = gv.data_ptr<scalar_t>();
    at::parallel_for(0, raw.size(0), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> w(l.total);
      for (int64_t t = begin; t < end; ++t)
        kron::backward_token(kron::Seq{}, q, l, r + t * q.R, x + t * q.n, gy + t * q.n, gr + t * q.R, gx + t * q.n,
                             w.data());
    });
  });
  return {graw, gv};
}

}  // namespace fprnn::ops
