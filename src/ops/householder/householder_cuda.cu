// Householder-product and DPLR application on CUDA, forward and backward, one thread block per token.
// Layout contract: u (N, r, D), alpha (N, r), v and grad (N, D); contiguous, float32 or float64, one device.
//
// Per token the block keeps the working vector in shared memory and does one block-wide dot product per
// reflection (two in the backward). The product form's backward needs every reflection's input w_i; the
// forward recomputation stores them in shared memory (r·D values), so the kernel needs (r + 1)·D values of
// shared memory per block. Napkin math at (N, r, D) = (8704, 1, 1024) float32: 71 MB moved (u, v, out),
// ~18 µs at 4 TB/s; the dot products are latency-, not bandwidth-bound, hence 256 threads per token.
#include "fprnn/ops/householder.h"

#include "ops/householder/householder_common.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;

// Sum over the block of one value per thread; every thread gets the result. `scratch` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// dot(a, b) over D with a block stride loop.
template <typename T>
__device__ T block_dot(const T* a, const T* b, int64_t D, T* scratch) {
  T s = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += a[d] * b[d];
  return block_sum(s, scratch);
}

// Forward: out = Q v. Shared memory: w (D).
template <typename T>
__global__ void apply_fwd_kernel(const T* __restrict__ u, const T* __restrict__ alpha, const T* __restrict__ v,
                                 T* __restrict__ out, int64_t r, int64_t D, bool sum_form) {
  extern __shared__ unsigned char smem_raw[];
  T* w = reinterpret_cast<T*>(smem_raw);
  __shared__ T scratch[32];
  const int64_t n = blockIdx.x;
  const T* vn = v + n * D;
  const T* un = u + n * r * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) w[d] = vn[d];
  __syncthreads();
  if (sum_form) {
    // Q v = v − 2 Σ α_i u_i (u_iᵀ v): every s_i against the input v; accumulate into out directly.
    T* on = out + n * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) on[d] = w[d];
    for (int64_t i = 0; i < r; ++i) {
      const T s = block_dot(un + i * D, w, D, scratch);
      const T c = T(-2) * alpha[n * r + i] * s;
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) on[d] += c * un[i * D + d];
    }
    return;
  }
  for (int64_t i = 0; i < r; ++i) {
    const T s = block_dot(un + i * D, w, D, scratch);
    const T c = T(-2) * alpha[n * r + i] * s;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) w[d] += c * un[i * D + d];
    __syncthreads();
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[n * D + d] = w[d];
}

// Backward of the ordered product. Shared memory: ws (r·D) the inputs of each reflection, gw (D).
template <typename T>
__global__ void householder_bwd_kernel(const T* __restrict__ u, const T* __restrict__ alpha,
                                       const T* __restrict__ v, const T* __restrict__ grad, T* __restrict__ du,
                                       T* __restrict__ dalpha, T* __restrict__ dv, int64_t r, int64_t D) {
  extern __shared__ unsigned char smem_raw[];
  T* ws = reinterpret_cast<T*>(smem_raw);
  T* gw = ws + r * D;
  __shared__ T scratch[32];
  const int64_t n = blockIdx.x;
  const T* un = u + n * r * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ws[d] = v[n * D + d];
  __syncthreads();
  // Recompute the forward, keeping w_i (the input of reflection i) for i = 0..r−1.
  for (int64_t i = 0; i + 1 < r; ++i) {
    const T s = block_dot(un + i * D, ws + i * D, D, scratch);
    const T c = T(-2) * alpha[n * r + i] * s;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ws[(i + 1) * D + d] = ws[i * D + d] + c * un[i * D + d];
    __syncthreads();
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) gw[d] = grad[n * D + d];
  __syncthreads();
  for (int64_t i = r - 1; i >= 0; --i) {
    const T* ui = un + i * D;
    const T* wi = ws + i * D;
    const T a = alpha[n * r + i];
    const T s = block_dot(ui, wi, D, scratch);
    const T t = block_dot(ui, gw, D, scratch);
    if (threadIdx.x == 0) dalpha[n * r + i] = T(-2) * s * t;
    const T ca = T(-2) * a * s, cb = T(-2) * a * t;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      du[(n * r + i) * D + d] = ca * gw[d] + cb * wi[d];
      gw[d] += cb * ui[d];  // gw ← H_i gw = gw − 2 α_i t u_i
    }
    __syncthreads();
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dv[n * D + d] = gw[d];
}

// Backward of the sum form: every s_i = u_iᵀ v and t_i = u_iᵀ g against the token's v and g.
template <typename T>
__global__ void dplr_bwd_kernel(const T* __restrict__ u, const T* __restrict__ alpha, const T* __restrict__ v,
                                const T* __restrict__ grad, T* __restrict__ du, T* __restrict__ dalpha,
                                T* __restrict__ dv, int64_t r, int64_t D) {
  __shared__ T scratch[32];
  const int64_t n = blockIdx.x;
  const T* un = u + n * r * D;
  const T* vn = v + n * D;
  const T* gn = grad + n * D;
  T* dvn = dv + n * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dvn[d] = gn[d];
  for (int64_t i = 0; i < r; ++i) {
    const T* ui = un + i * D;
    const T a = alpha[n * r + i];
    const T s = block_dot(ui, vn, D, scratch);
    const T t = block_dot(ui, gn, D, scratch);
    if (threadIdx.x == 0) dalpha[n * r + i] = T(-2) * s * t;
    const T ca = T(-2) * a * s, cb = T(-2) * a * t;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      du[(n * r + i) * D + d] = ca * gn[d] + cb * vn[d];
      dvn[d] += cb * ui[d];
    }
  }
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes, const char* op) {
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes + 32 * sizeof(double) <= static_cast<size_t>(limit), op, ": rank × width too large for the CUDA kernel (",
              bytes, " bytes of shared memory per token, the device allows ", limit, ")");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void check_cuda(const char* op, const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v) {
  TORCH_CHECK(u.is_cuda() && u.is_contiguous() && alpha.is_contiguous() && v.is_contiguous(), op,
              ": the CUDA kernel needs contiguous CUDA tensors");
  TORCH_CHECK(u.scalar_type() == torch::kFloat32 || u.scalar_type() == torch::kFloat64, op,
              ": the CUDA kernel takes float32 or float64, got ", u.scalar_type());
}

torch::Tensor fwd(const char* op, const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v,
                  bool sum_form) {
  check_cuda(op, u, alpha, v);
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t N = u.size(0), r = u.size(1), D = u.size(2);
  torch::Tensor out = torch::empty_like(v);
  if (N == 0) return out;
  if (r == 0) return out.copy_(v);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "householder_cuda", [&] {
    const size_t bytes = static_cast<size_t>(D) * sizeof(scalar_t);
    set_smem(apply_fwd_kernel<scalar_t>, bytes, op);
    apply_fwd_kernel<scalar_t><<<N, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
        u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), r, D,
        sum_form);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> bwd(const char* op, const torch::Tensor& u,
                                                            const torch::Tensor& alpha, const torch::Tensor& v,
                                                            const torch::Tensor& grad, bool sum_form) {
  check_cuda(op, u, alpha, v);
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous() && grad.sizes() == v.sizes() &&
                  grad.scalar_type() == v.scalar_type(),
              op, ": grad must be a contiguous CUDA tensor shaped and typed like v");
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t N = u.size(0), r = u.size(1), D = u.size(2);
  torch::Tensor du = torch::zeros_like(u), dalpha = torch::zeros_like(alpha), dv = grad.clone();
  if (N == 0 || r == 0) return {du, dalpha, dv};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "householder_cuda", [&] {
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (sum_form) {
      dplr_bwd_kernel<scalar_t><<<N, kThreads, 0, stream>>>(u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
                                                            v.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                                            du.data_ptr<scalar_t>(), dalpha.data_ptr<scalar_t>(),
                                                            dv.data_ptr<scalar_t>(), r, D);
    } else {
      const size_t bytes = static_cast<size_t>((r + 1) * D) * sizeof(scalar_t);
      set_smem(householder_bwd_kernel<scalar_t>, bytes, op);
      householder_bwd_kernel<scalar_t><<<N, kThreads, bytes, stream>>>(
          u.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
          du.data_ptr<scalar_t>(), dalpha.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), r, D);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {du, dalpha, dv};
}

}  // namespace

torch::Tensor householder_fwd_cuda(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v) {
  return fwd("householder", u, alpha, v, false);
}
torch::Tensor dplr_fwd_cuda(const torch::Tensor& u, const torch::Tensor& alpha, const torch::Tensor& v) {
  return fwd("dplr", u, alpha, v, true);
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> householder_bwd_cuda(const torch::Tensor& u,
                                                                             const torch::Tensor& alpha,
                                                                             const torch::Tensor& v,
                                                                             const torch::Tensor& grad) {
  return bwd("householder", u, alpha, v, grad, false);
}
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> dplr_bwd_cuda(const torch::Tensor& u,
                                                                      const torch::Tensor& alpha,
                                                                      const torch::Tensor& v,
                                                                      const torch::Tensor& grad) {
  return bwd("dplr", u, alpha, v, grad, true);
}

}  // namespace fprnn::ops
