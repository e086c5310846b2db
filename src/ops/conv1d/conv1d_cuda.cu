// CUDA kernels of causal_conv1d (see include/fprnn/ops/conv1d.h for the formulas and layout).
// Every element is memory-bound work, channels innermost, so one thread per (b, t, c) reads coalesced rows:
//   forward:  y = act(bias + Σ_k w_k x_{t−K+1+k})                        one thread per output element
//   dx:       dx_s = Σ_k w_k gz_{s+K−1−k}, gz recomputed from x            one thread per input element
//   dw, db:   partial sums over fixed chunks of (b, t) rows per channel, then summed in a fixed order
//             (no atomics: the result does not depend on scheduling).
// Accumulation in float32 (float64 for float64 inputs).
#include "fprnn/ops/conv1d.h"

#include "ops/conv1d/conv1d_common.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxK = 16;

template <typename scalar_t, typename acc_t>
__device__ inline acc_t pre_activation(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                       const scalar_t* __restrict__ bias, int64_t b, int64_t t, int64_t c, int64_t T,
                                       int64_t C, int K) {
  acc_t z = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  for (int k = 0; k < K; ++k) {
    const int64_t s = t - (K - 1) + k;
    if (s >= 0) z += static_cast<acc_t>(w[c * K + k]) * static_cast<acc_t>(x[(b * T + s) * C + c]);
  }
  return z;
}

template <typename acc_t>
__device__ inline acc_t act_grad(acc_t g, acc_t z, bool silu) {
  if (!silu) return g;
  const acc_t s = detail::conv1d_sigmoid(static_cast<acc_t>(exp(-z)));
  return detail::conv1d_silu_grad(g, z, s);
}

template <typename scalar_t>
__global__ void conv_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, int64_t B, int64_t T,
                                int64_t C, int K, bool silu) {
  using acc_t = detail::conv1d_acc_t<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * T * C) return;
  const int64_t c = i % C, t = (i / C) % T, b = i / (C * T);
  const acc_t z = pre_activation<scalar_t, acc_t>(x, w, bias, b, t, c, T, C, K);
  if (silu) {
    const acc_t s = detail::conv1d_sigmoid(static_cast<acc_t>(exp(-z)));
    y[i] = static_cast<scalar_t>(detail::conv1d_silu(z, s));
  } else {
    y[i] = static_cast<scalar_t>(z);
  }
}

template <typename scalar_t>
__global__ void conv_bwd_dx_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                   const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                                   scalar_t* __restrict__ dx, int64_t B, int64_t T, int64_t C, int K, bool silu) {
  using acc_t = detail::conv1d_acc_t<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * T * C) return;
  const int64_t c = i % C, s = (i / C) % T, b = i / (C * T);
  acc_t acc = 0;
  for (int k = 0; k < K; ++k) {
    const int64_t t = s + (K - 1) - k;
    if (t >= T) continue;
    acc_t gz = static_cast<acc_t>(g[(b * T + t) * C + c]);
    if (silu) gz = act_grad(gz, pre_activation<scalar_t, acc_t>(x, w, bias, b, t, c, T, C, K), true);
    acc += static_cast<acc_t>(w[c * K + k]) * gz;
  }
  dx[i] = static_cast<scalar_t>(acc);
}

// Block (channel block, row chunk): each thread owns one channel and walks the chunk's rows (b·T + t).
template <typename scalar_t>
__global__ void conv_bwd_dw_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                   const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                                   detail::conv1d_acc_t<scalar_t>* __restrict__ partial, int64_t B, int64_t T,
                                   int64_t C, int K, bool silu, int64_t rows_per_chunk) {
  using acc_t = detail::conv1d_acc_t<scalar_t>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = min(B * T, r0 + rows_per_chunk);
  acc_t dw[kMaxK + 1];
  for (int k = 0; k <= K; ++k) dw[k] = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / T, t = r % T;
    acc_t gz = static_cast<acc_t>(g[r * C + c]);
    if (silu) gz = act_grad(gz, pre_activation<scalar_t, acc_t>(x, w, bias, b, t, c, T, C, K), true);
    for (int k = 0; k < K; ++k) {
      const int64_t s = t - (K - 1) + k;
      if (s >= 0) dw[k] += gz * static_cast<acc_t>(x[(b * T + s) * C + c]);
    }
    dw[K] += gz;
  }
  acc_t* out = partial + (chunk * C + c) * (K + 1);
  for (int k = 0; k <= K; ++k) out[k] = dw[k];
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

void check_cuda(const char* fn, const torch::Tensor& x, const torch::Tensor& weight) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && weight.is_contiguous() && x.dim() == 3, fn,
              ": x must be a contiguous CUDA (B, T, C) tensor and weight contiguous");
  TORCH_CHECK(weight.size(-1) >= 1 && weight.size(-1) <= kMaxK, fn, ": kernel size must be in [1, ", kMaxK, "], got ",
              weight.size(-1));
}

}  // namespace

torch::Tensor causal_conv1d_fwd_cuda(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                     bool silu) {
  check_cuda("causal_conv1d_fwd_cuda", x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  const int K = static_cast<int>(weight.size(-1));
  torch::Tensor y = torch::empty_like(x);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "causal_conv1d_fwd_cuda", [&] {
    conv_fwd_kernel<scalar_t><<<blocks_for(B * T * C), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), B, T, C, K, silu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_conv1d_bwd_cuda(const torch::Tensor& grad,
                                                                               const torch::Tensor& x,
                                                                               const torch::Tensor& weight,
                                                                               const torch::Tensor& bias, bool silu) {
  check_cuda("causal_conv1d_bwd_cuda", x, weight);
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == x.sizes(), "causal_conv1d_bwd_cuda: grad must be contiguous ",
              x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  const int K = static_cast<int>(weight.size(-1));
  auto stream = c10::cuda::getCurrentCUDAStream();
  torch::Tensor dx = torch::empty_like(x);
  const auto acc_dtype = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  // Chunks: enough blocks to fill the GPU, at least 16 rows each.
  const int64_t rows = B * T;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows / 16, 1024 * kThreads / std::max<int64_t>(C, 1)));
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  const int64_t n_chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  torch::Tensor partial = torch::empty({n_chunks, C, K + 1}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "causal_conv1d_bwd_cuda", [&] {
    const scalar_t* b = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    conv_bwd_dx_kernel<scalar_t><<<blocks_for(B * T * C), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), b, dx.data_ptr<scalar_t>(), B,
        T, C, K, silu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(blocks_for(C), static_cast<unsigned>(n_chunks));
    conv_bwd_dw_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), b,
        partial.data_ptr<detail::conv1d_acc_t<scalar_t>>(), B, T, C, K, silu, rows_per_chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const torch::Tensor sums = partial.sum(0);  // (C, K + 1), a fixed reduction order
  torch::Tensor dw = sums.narrow(1, 0, K).to(x.scalar_type()).reshape(weight.sizes());
  torch::Tensor db = bias.defined() ? sums.select(1, K).to(x.scalar_type()).contiguous() : torch::Tensor();
  return {dx, dw, db};
}

}  // namespace fprnn::ops
