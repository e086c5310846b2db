// The fused Kronecker op on CUDA: one thread block per token running the per-token algorithm of
// kronecker_common.h, all of the token's matrices in shared memory (row stride m + 1, so the column reads of
// the small matrix products are bank-conflict free). Napkin math at n = 1024 (32 × 32 factors): per token
// 2·32³ (L Lᵀ) + 2·32·1024 (Uᵀ M Vᵀ) ≈ 131 k multiply-adds out of shared memory, and 2 × 4 KiB of raw and v read
// from HBM; the layers' ATen composite ran ~15 kernels with their intermediates through HBM instead.
#include "fprnn/ops/kronecker.h"

#include "ops/kronecker/kronecker_common.h"

#include <ATen/Dispatch.h>
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

template <typename T>
__global__ void kron_fwd_kernel(kron::Params q, kron::Layout l, const T* __restrict__ raw, const T* __restrict__ v,
                                T* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t t = blockIdx.x;
  kron::forward_token(Block{}, q, l, raw + t * q.R, v + t * q.n, out + t * q.n, w);
}

template <typename T>
__global__ void kron_bwd_kernel(kron::Params q, kron::Layout l, const T* __restrict__ raw, const T* __restrict__ v,
                                const T* __restrict__ g, T* __restrict__ graw, T* __restrict__ gv) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t t = blockIdx.x;
  kron::backward_token(Block{}, q, l, raw + t * q.R, v + t * q.n, g + t * q.n, graw + t * q.R, gv + t * q.n, w);
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
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "kronecker_fwd_cuda", [&] {
    const size_t bytes = static_cast<size_t>(l.total) * sizeof(scalar_t);
    request_shared(kron_fwd_kernel<scalar_t>, bytes, "kronecker_fwd_cuda");
    kron_fwd_kernel<scalar_t><<<N, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
        q, l, raw.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
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
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "kronecker_bwd_cuda", [&] {
    const size_t bytes = static_cast<size_t>(l.total) * sizeof(scalar_t);
    request_shared(kron_bwd_kernel<scalar_t>, bytes, "kronecker_bwd_cuda");
    kron_bwd_kernel<scalar_t><<<N, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
        q, l, raw.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), graw.data_ptr<scalar_t>(),
        gv.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {graw, gv};
}

}  // namespace fprnn::ops
