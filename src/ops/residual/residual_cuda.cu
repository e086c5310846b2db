// relative_residual CUDA kernel: r_bt = max_d |y − ŷ| / (max_d |ŷ| + eps) for every token row (b, t), one warp
// per row, in the inputs' opmath type (float32 for bfloat16/float16/float32, float64 for float64); the maximum
// over t is one small ATen reduction of the (B, T) ratios afterwards. The same operations in the same
// arithmetic as the ATen composite (relative_residual_aten: widen, subtract, abs, amax; abs, amax, + eps;
// divide; amax over t), so the two agree bit for bit; maxima are order-free, and a NaN anywhere in a row
// makes its ratio NaN (torch.amax propagates NaN, fmaxf would drop it).
// Napkin math (H200): at the length-128 FP-Mamba1 shape (512, 128, 1024) in bfloat16 the kernel reads 268 MB
// once (≈ 60 µs at 4.5 TB/s); the composite moved ≈ 3.5 GB through seven full-size passes.
#include "fprnn/ops/residual.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstring>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

// max(a, b) with NaN winning (torch.amax's rule).
template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  return (a != a || a > b) ? a : b;
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    residual_rows_kernel(const T* __restrict__ y, const T* __restrict__ y_new, A* __restrict__ r, int64_t rows,
                         int64_t D, A eps, bool vec16) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // a whole warp leaves together
  const T* a = y + row * D;
  const T* b = y_new + row * D;
  A diff = A(0), ymax = A(0);
  auto take = [&](T va, T vb) {
    const A x = static_cast<A>(va), z = static_cast<A>(vb);
    diff = nan_max(diff, abs(x - z));
    ymax = nan_max(ymax, abs(z));
  };
  if (vec16) {  // rows of whole 16-byte chunks, 16-byte aligned
    constexpr int kVec = 16 / sizeof(T);
    const int64_t chunks = D / kVec;
    for (int64_t c = lane; c < chunks; c += 32) {
      const uint4 pa = reinterpret_cast<const uint4*>(a)[c];
      const uint4 pb = reinterpret_cast<const uint4*>(b)[c];
      T ea[kVec], eb[kVec];
      memcpy(ea, &pa, sizeof(pa));
      memcpy(eb, &pb, sizeof(pb));
#pragma unroll
      for (int k = 0; k < kVec; ++k) take(ea[k], eb[k]);
    }
  } else {
    for (int64_t d = lane; d < D; d += 32) take(a[d], b[d]);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    diff = nan_max(diff, __shfl_xor_sync(0xffffffffu, diff, offset));
    ymax = nan_max(ymax, __shfl_xor_sync(0xffffffffu, ymax, offset));
  }
  if (lane == 0) r[row] = diff / (ymax + eps);
}

}  // namespace

torch::Tensor relative_residual_cuda(const torch::Tensor& y, const torch::Tensor& y_new, double eps) {
  TORCH_CHECK(y.dim() == 3 && y.sizes() == y_new.sizes(), "relative_residual_cuda: expected two equal (B, T, D) ",
              "tensors, got ", y.sizes(), " and ", y_new.sizes());
  TORCH_CHECK(y.is_cuda() && y_new.device() == y.device() && y.is_contiguous() && y_new.is_contiguous(),
              "relative_residual_cuda: y and y_new must be contiguous tensors on one CUDA device");
  TORCH_CHECK(y.scalar_type() == y_new.scalar_type(), "relative_residual_cuda: y and y_new must have one dtype, got ",
              y.scalar_type(), " and ", y_new.scalar_type());
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t B = y.size(0), T = y.size(1), D = y.size(2), rows = B * T;
  TORCH_CHECK(rows > 0 && D > 0, "relative_residual_cuda: empty tensors ", y.sizes());
  const auto acc = y.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  torch::Tensor r = torch::empty({B, T}, y.options().dtype(acc));
  auto aligned16 = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; };
  const bool vec16 = (D * static_cast<int64_t>(y.element_size())) % 16 == 0 && aligned16(y) && aligned16(y_new);
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, y.scalar_type(), "relative_residual_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    residual_rows_kernel<scalar_t, A><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        y.const_data_ptr<scalar_t>(), y_new.const_data_ptr<scalar_t>(), r.mutable_data_ptr<A>(), rows, D,
        static_cast<A>(eps), vec16);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return r.amax(-1).to(torch::kFloat64);
}

}  // namespace fprnn::ops
