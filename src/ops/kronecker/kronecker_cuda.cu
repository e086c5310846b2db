// The fused Kronecker op on CUDA: one thread block per token running the per-token algorithm of
// kronecker_common.h, all of the token's matrices in shared memory (row stride m + 1, so the column reads of
// the small matrix products are bank-conflict free). Napkin math at n = 1024 (32 × 32 factors): per token
// 2·32³ (L Lᵀ) + 2·32·1024 (Uᵀ M Vᵀ) ≈ 131 k multiply-adds out of shared memory, and 2 × 4 KiB of raw and v read
// from HBM; the layers' ATen composite ran ~15 kernels with their intermediates through HBM instead.
#include "fprnn/ops/kronecker.h"

#include "ops/kronecker/kronecker_common.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;

// The thread block of one token.
struct Block {
  FPRNN_HD int tid() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(threadIdx.x);
#else
    return 0;
#endif
  }
  FPRNN_HD int nt() const {
#ifdef __CUDA_ARCH__
    return static_cast<int>(blockDim.x);
#else
    return 1;
#endif
  }
  FPRNN_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
};

// T: arithmetic and shared memory; IO: the tensors in global memory (T, or bfloat16/half with T = float).
template <typename T, typename IO>
__global__ void __launch_bounds__(kThreads) kron_fwd_kernel(kron::Params q, kron::Layout l, const IO* __restrict__ raw,
                                                             const IO* __restrict__ v, IO* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t t = blockIdx.x;
  kron::forward_token(Block{}, q, l, raw + t * q.R, v + t * q.n, out + t * q.n, w);
}

template <typename T, typename IO>
__global__ void __launch_bounds__(kThreads)
    kron_bwd_kernel(kron::Params q, kron::Layout l, const IO* __restrict__ raw, const IO* __restrict__ v,
                    const IO* __restrict__ g, IO* __restrict__ graw, IO* __restrict__ gv) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t t = blockIdx.x;
  kron::backward_token(Block{}, q, l, raw + t * q.R, v + t * q.n, g + t * q.n, graw + t * q.R, gv + t * q.n, w);
}

// Calls f(T{}, IO{}) for raw's dtype: float and double as themselves, bfloat16 and half computed in float.
template <typename F>
void dispatch_io(const torch::Tensor& raw, const char* op, F&& f) {
  switch (raw.scalar_type()) {
    case torch::kFloat32: return f(float{}, float{});
    case torch::kFloat64: return f(double{}, double{});
    case torch::kBFloat16: return f(float{}, c10::BFloat16{});
    case torch::kFloat16: return f(float{}, c10::Half{});
    default: TORCH_CHECK(false, op, ": no kernel for dtype ", raw.scalar_type());
  }
}

// Dynamic shared memory for `kernel`: checked against the device's opt-in limit and granted.
template <typename Kernel>
void request_shared(Kernel kernel, size_t bytes, const char* op) {
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(limit), op, ": the factors need ", bytes,
              " bytes of shared memory per token, more than the device's ", limit,
              " (use the ATen reference, kronecker_fwd_ref, at this size)");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

namespace kron {
int64_t cuda_shared_limit(int device) {
  if (device < 0) C10_CUDA_CHECK(cudaGetDevice(&device));
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limit;
}
}  // namespace kron

torch::Tensor kronecker_fwd_cuda(const torch::Tensor& raw, const torch::Tensor& v, const KroneckerSpec& spec) {
  kron::check_kernel_inputs("kronecker_fwd_cuda", raw, v, torch::Tensor(), spec);
  TORCH_CHECK(raw.is_cuda(), "kronecker_fwd_cuda: CUDA tensors expected, got ", raw.device());
  const c10::cuda::CUDAGuard guard(raw.device());
  const kron::Params q = kron::make_params(spec);
  const kron::Layout l = kron::make_layout(q, /*backward=*/false);
  torch::Tensor out = torch::empty_like(v);
  const int64_t N = raw.size(0);
  if (N == 0) return out;
  dispatch_io(raw, "kronecker_fwd_cuda", [&](auto t_tag, auto io_tag) {
    using T = decltype(t_tag);
    using IO = decltype(io_tag);
    const size_t bytes = static_cast<size_t>(l.total) * sizeof(T);
    request_shared(kron_fwd_kernel<T, IO>, bytes, "kronecker_fwd_cuda");
    kron_fwd_kernel<T, IO><<<N, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
        q, l, raw.const_data_ptr<IO>(), v.const_data_ptr<IO>(), out.mutable_data_ptr<IO>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::pair<torch::Tensor, torch::Tensor> kronecker_bwd_cuda(const torch::Tensor& raw, const torch::Tensor& v,
                                                           const torch::Tensor& g, const KroneckerSpec& spec) {
  kron::check_kernel_inputs("kronecker_bwd_cuda", raw, v, g, spec);
  TORCH_CHECK(raw.is_cuda(), "kronecker_bwd_cuda: CUDA tensors expected, got ", raw.device());
  TORCH_CHECK(!spec.spectral, "kronecker_bwd_cuda: no backward for 'spectral' normalisation");
  const c10::cuda::CUDAGuard guard(raw.device());
  const kron::Params q = kron::make_params(spec);
  const kron::Layout l = kron::make_layout(q, /*backward=*/true);
  torch::Tensor graw = torch::empty_like(raw), gv = torch::empty_like(v);
  const int64_t N = raw.size(0);
  if (N == 0) return {graw, gv};
  dispatch_io(raw, "kronecker_bwd_cuda", [&](auto t_tag, auto io_tag) {
    using T = decltype(t_tag);
    using IO = decltype(io_tag);
    const size_t bytes = static_cast<size_t>(l.total) * sizeof(T);
    request_shared(kron_bwd_kernel<T, IO>, bytes, "kronecker_bwd_cuda");
    kron_bwd_kernel<T, IO><<<N, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
        q, l, raw.const_data_ptr<IO>(), v.const_data_ptr<IO>(), g.const_data_ptr<IO>(), graw.mutable_data_ptr<IO>(),
        gv.mutable_data_ptr<IO>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {graw, gv};
}

}  // namespace fprnn::ops
