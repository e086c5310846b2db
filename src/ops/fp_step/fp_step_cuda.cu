// The fixed-point iteration's kernels on CUDA: the fused mixer step (Householder / DPLR), the scan with
// the residual maxima and the damped update, and the device-side controller (spec §8).
// Layout contract: see include/fprnn/ops/fp_step_cuda.h.
//
// Napkin math at the A5 shape (B, T, D) = (512, 17, 1024), rank 1, bf16 GEMM: per iteration the GEMM is
// 8704 × 1024 × 1025 ≈ 18 GFLOP (~25 µs at ~750 TFLOP/s); fp_mix reads z and base (2 × 18 MB in bf16)
// and bx, λ in the compute dtype (2 × 18 MB) and h (36 MB) and writes v (36 MB): ~144 MB ≈ 36 µs at 4 TB/s;
// fp_scan reads v, h (fp32) and λ (bf16) and writes y (fp32) and its bf16 copy: ~126 MB ≈ 32 µs. So about 0.1 ms per iteration, memory-bound outside the GEMM.
#include "fprnn/ops/fp_step_cuda.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>
#include <type_traits>

namespace fprnn::ops {
namespace {

constexpr int kThreads = 256;
enum Activation : int { kIdentity = 0, kRelu = 1, kSilu = 2 };

Activation parse_activation(const std::string& name) {
  if (name == "identity") return kIdentity;
  if (name == "relu") return kRelu;
  if (name == "silu") return kSilu;
  TORCH_CHECK(false, "fp_mix_cuda: unknown mixer_ac '", name, "' (valid: identity, relu, silu)");
}

__device__ __forceinline__ float activate(float x, int ac) {
  if (ac == kSilu) return x / (1.0f + __expf(-x));
  if (ac == kRelu) return x > 0.0f ? x : 0.0f;
  return x;
}

// max that keeps a NaN (fmaxf drops it), so a NaN iterate reaches the residual and stops the solver.
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a) ? a : ((b != b) ? b : fmaxf(a, b)); }

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct NanMaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return nan_max(a, b); }
};

// Block-wide reduction of two values by `op` (a sum, or a NaN-keeping maximum of values ≥ 0: 0 is the identity
// of both); every thread receives both results. `scratch` holds 64 floats.
template <typename Op>
__device__ __forceinline__ float2 block_reduce2(float a, float b, float* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) {
    a = op(a, __shfl_xor_sync(0xffffffffu, a, o));
    b = op(b, __shfl_xor_sync(0xffffffffu, b, o));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  float ra = 0.0f, rb = 0.0f;
  for (int w = 0; w < warps; ++w) {
    ra = op(ra, scratch[w]);
    rb = op(rb, scratch[32 + w]);
  }
  return make_float2(ra, rb);
}

__device__ __forceinline__ float2 block_sum2(float a, float b, float* scratch) {
  return block_reduce2(a, b, scratch, SumOp{});
}

// One block per token n = b·T + t. Shared memory: w (D), and for the sum form the input δ (D).
template <typename zt>
__global__ void fp_mix_kernel(const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx,
                              const float* __restrict__ h, const zt* __restrict__ lambda, float* __restrict__ v,
                              int64_t T, int64_t D, int64_t ld, int r, int ac, float eps, bool sum_form,
                              const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  extern __shared__ float smem[];
  float* w = smem;
  float* delta = smem + D;
  __shared__ float scratch[64];
  const int64_t n = blockIdx.x;
  const int64_t t = n % T;
  const zt* bn = base + n * ld;
  const zt* zp = t > 0 ? z + (n - 1) * ld : nullptr;  // raw[b, t] = base[b, t] + z[b, t − 1]
  auto raw = [&](int64_t j) { return static_cast<float>(bn[j]) + (zp != nullptr ? static_cast<float>(zp[j]) : 0.0f); };
  const float* hn = h + n * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float x = static_cast<float>(bx[n * D + d]) - hn[d];
    w[d] = x;
    if (sum_form) delta[d] = x;
  }
  __syncthreads();
  for (int i = 0; i < r; ++i) {
    const float* src = sum_form ? delta : w;  // DPLR: every dot product against the input δ
    float uu = 0.0f, uw = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float a = activate(raw(i * D + d), ac);
      uu += a * a;
      uw += a * src[d];
    }
    const float2 s = block_sum2(uu, uw, scratch);
    const float inv = 1.0f / fmaxf(sqrtf(s.x), eps);  // u = a / max(‖a‖, eps)
    const float alpha = 1.0f / (1.0f + __expf(-raw(r * D + i)));
    const float c = -2.0f * alpha * s.y * inv * inv;  // −2 α (uᵀw) u = c · a
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) w[d] += c * activate(raw(i * D + d), ac);
    __syncthreads();
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    v[n * D + d] = (1.0f - static_cast<float>(lambda[n * D + d])) * (w[d] + hn[d]);
}

// The scan over one (b, chunk) per blockIdx.y and channels d across blockIdx.x·blockDim.x + threadIdx.x,
// as in linrec_cuda.cu; phase 3 also writes the damped iterate and the residual maxima (one atomic per
// warp and step: the 32 lanes reduce first).
template <typename lam_t>
__global__ void fp_scan_summary_kernel(const float* __restrict__ v, const lam_t* __restrict__ lambda, float* end_state,
                                       float* prod, int64_t T, int64_t D, int64_t NC, int64_t L,
                                       const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bk = blockIdx.y, b = bk / NC, k = bk % NC;
  if (d >= D) return;
  const int64_t t0 = k * L, t1 = min(T, t0 + L);
  float s = 0.0f, p = 1.0f;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i = (b * T + t) * D + d;
    const float l = static_cast<float>(lambda[i]);
    s = l * s + v[i];
    p *= l;
  }
  end_state[bk * D + d] = s;
  prod[bk * D + d] = p;
}

__global__ void fp_scan_carry_kernel(const float* end_state, const float* prod, float* carry_in, int64_t B, int64_t D,
                                     int64_t NC, const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * D) return;
  const int64_t d = idx % D, b = idx / D;
  float carry = 0.0f;
  for (int64_t k = 0; k < NC; ++k) {
    const int64_t i = (b * NC + k) * D + d;
    carry_in[i] = carry;
    carry = prod[i] * carry + end_state[i];
  }
}

template <typename lam_t, typename lt>
__global__ void fp_scan_output_kernel(const float* __restrict__ v, const lam_t* __restrict__ lambda,
                                      const float* __restrict__ h, float* __restrict__ y, lt* __restrict__ y_lowp,
                                      const float* carry_in,
                                      const double* __restrict__ stepsize, float* diff, float* ymax, int64_t T,
                                      int64_t D, int64_t NC, int64_t L, const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bk = blockIdx.y, b = bk / NC, k = bk % NC;
  const bool live = d < D;
  const float s_b = static_cast<float>(stepsize[b]);
  const int64_t t0 = k * L, t1 = min(T, t0 + L);
  float state = (live && carry_in != nullptr) ? carry_in[bk * D + d] : 0.0f;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i = (b * T + t) * D + d;
    float dev = 0.0f, mag = 0.0f;
    if (live) {
      state = static_cast<float>(lambda[i]) * state + v[i];
      const float old = h[i];
      const float out = s_b == 1.0f ? state : s_b * state + (1.0f - s_b) * old;
      y[i] = out;
      if (y_lowp != nullptr) y_lowp[i] = static_cast<lt>(out);
      dev = fabsf(state - old);
      mag = fabsf(state);
    }
    for (int o = 16; o > 0; o >>= 1) {
      dev = nan_max(dev, __shfl_xor_sync(0xffffffffu, dev, o));
      mag = nan_max(mag, __shfl_xor_sync(0xffffffffu, mag, o));
    }
    if ((threadIdx.x & 31) == 0) {
      // Non-negative floats order like their bit patterns; a NaN (positive bits) wins the maximum.
      atomicMax(reinterpret_cast<int*>(diff) + b * T + t, __float_as_int(fabsf(dev)));
      atomicMax(reinterpret_cast<int*>(ymax) + b * T + t, __float_as_int(fabsf(mag)));
    }
  }
}

// fp_mix_kernel and the unchunked fp_scan_output_kernel in one: one block of kThreads threads per sample b
// walks its T tokens in order; thread k holds channels d = k + j·kThreads (j < CPT) of the mix in registers
// and carries their scan state from token to token, so the float32 scan input never goes through memory.
// The arithmetic is that of the two kernels, operation for operation (the same per-thread channel order and
// block sums for the mix, v = (1 − λ)(w + h) rounded before the scan's λ·s + v), and the block owns its
// tokens' residual maxima, so it writes them instead of taking atomic maxima.
template <typename zt, typename lt, int CPT>
__global__ void __launch_bounds__(kThreads) fp_mixscan_kernel(
    const zt* __restrict__ z, const zt* __restrict__ base, const zt* __restrict__ bx, const float* __restrict__ h,
    const zt* __restrict__ lambda, float* __restrict__ y, lt* __restrict__ y_lowp, const double* __restrict__ stepsize,
    float* __restrict__ diff, float* __restrict__ ymax, int64_t T, int64_t D, int64_t ld, int r, int ac, float eps,
    bool sum_form, const int64_t* __restrict__ counters) {
  if (counters[1] == 0) return;
  __shared__ float scratch[64];
  const int64_t b = blockIdx.x;
  const float s_b = static_cast<float>(stepsize[b]);
  float state[CPT];
#pragma unroll
  for (int j = 0; j < CPT; ++j) state[j] = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = b * T + t;
    const zt* bn = base + n * ld;
    const zt* zp = t > 0 ? z + (n - 1) * ld : nullptr;  // raw[b, t] = base[b, t] + z[b, t − 1]
    auto raw = [&](int64_t j) { return static_cast<float>(bn[j]) + (zp != nullptr ? static_cast<float>(zp[j]) : 0.0f); };
    float w[CPT], delta[CPT], hv[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      hv[j] = d < D ? h[n * D + d] : 0.0f;
      w[j] = d < D ? static_cast<float>(bx[n * D + d]) - hv[j] : 0.0f;
      delta[j] = w[j];
    }
    for (int i = 0; i < r; ++i) {
      float a[CPT];
      float uu = 0.0f, uw = 0.0f;
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
        a[j] = 0.0f;
        if (d < D) {
          a[j] = activate(raw(i * D + d), ac);
          uu += a[j] * a[j];
          uw += a[j] * (sum_form ? delta[j] : w[j]);  // DPLR: every dot product against the input δ
        }
      }
      const float2 sums = block_sum2(uu, uw, scratch);
      const float inv = 1.0f / fmaxf(sqrtf(sums.x), eps);  // u = a / max(‖a‖, eps)
      const float alpha = 1.0f / (1.0f + __expf(-raw(r * D + i)));
      const float c = -2.0f * alpha * sums.y * inv * inv;  // −2 α (uᵀw) u = c · a
#pragma unroll
      for (int j = 0; j < CPT; ++j) w[j] += c * a[j];
    }
    float dev = 0.0f, mag = 0.0f;
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int64_t d = threadIdx.x + static_cast<int64_t>(j) * kThreads;
      if (d < D) {
        const float l = static_cast<float>(lambda[n * D + d]);
        const float v = __fmul_rn(1.0f - l, w[j] + hv[j]);  // the mix kernel's stored scan input
        state[j] = fmaf(l, state[j], v);
        const float old = hv[j];
        const float out = s_b == 1.0f ? state[j] : s_b * state[j] + (1.0f - s_b) * old;
        y[n * D + d] = out;
        if (y_lowp != nullptr) y_lowp[n * D + d] = static_cast<lt>(out);
        dev = nan_max(dev, fabsf(state[j] - old));
        mag = nan_max(mag, fabsf(state[j]));
      }
    }
    const float2 m = block_reduce2(dev, mag, scratch, NanMaxOp{});
    if (threadIdx.x == 0) {
      diff[b * T + t] = fabsf(m.x);
      ymax[b * T + t] = fabsf(m.y);
    }
  }
}

// a > b in the order that puts NaN after every number (NaNs compare equal among themselves).
__device__ __forceinline__ bool nan_last_greater(double a, double b) { return isnan(a) ? !isnan(b) : (!isnan(b) && a > b); }

// One block. Records r_b = max_t diff/(ymax + eps), updates best/patience/step size (spec §8), counts the
// iteration, zeroes the scratch and evaluates the continue test for the next step into counters[1].
__global__ void fp_controller_kernel(float* diff, float* ymax, double* best, double* last, double* stepsize,
                                     int64_t* patience, int64_t* counters, int64_t B, int64_t T, double eps,
                                     int64_t decay_patience, double decay, double threshold, double quantile,
                                     double stepsize_thresh, int64_t max_iter, int64_t sort_slots) {
  if (counters[1] == 0) return;
  extern __shared__ double sorted[];  // sort_slots values
  __shared__ double smax[32];
  double local_smax = 0.0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    double r = 0.0;
    for (int64_t t = 0; t < T; ++t) {
      const double dv = diff[b * T + t], ym = ymax[b * T + t];
      const double q = dv / (ym + eps);
      r = (q > r || isnan(q)) ? q : r;
      diff[b * T + t] = 0.0f;
      ymax[b * T + t] = 0.0f;
    }
    const bool improved = r < best[b];
    if (improved || isnan(r)) best[b] = r;  // torch.minimum semantics: NaN poisons the sample
    patience[b] = improved ? decay_patience : patience[b] - 1;
    if (patience[b] == 0) {
      patience[b] += decay_patience;
      stepsize[b] *= decay;
    }
    last[b] = r;
    local_smax = fmax(local_smax, stepsize[b]);
  }
  // Max step size over the batch.
  for (int o = 16; o > 0; o >>= 1) local_smax = fmax(local_smax, __shfl_xor_sync(0xffffffffu, local_smax, o));
  if ((threadIdx.x & 31) == 0) smax[threadIdx.x >> 5] = local_smax;
  __syncthreads();
  // Sort best ascending, NaN last, for the linear-interpolation quantile: a bitonic sort of n = 2^k ≥ B
  // slots in shared memory, padded with NaN (log²n/2 rounds of n/2 compare-exchanges; an O(B²) rank count
  // on this single block took ~60 µs per iteration at B = 512).
  const int64_t n = sort_slots;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sorted[i] = i < B ? best[i] : nan("");
  __syncthreads();
  for (int64_t k = 2; k <= n; k <<= 1) {
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int64_t l = i ^ j;
        if (l > i) {
          const double a = sorted[i], c = sorted[l];
          const bool ascending = (i & k) == 0;
          if (ascending ? nan_last_greater(a, c) : nan_last_greater(c, a)) {
            sorted[i] = c;
            sorted[l] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  if (threadIdx.x == 0) {
    double max_step = 0.0;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) max_step = fmax(max_step, smax[w]);
    const int64_t iter = counters[0] + 1;
    counters[0] = iter;
    const double pos = quantile * static_cast<double>(B - 1);
    const int64_t lo = static_cast<int64_t>(floor(pos)), hi = static_cast<int64_t>(ceil(pos));
    const double a = sorted[lo], bq = sorted[hi];
    double q = a;
    if (lo != hi && a != bq) {
      const double wgt = pos - static_cast<double>(lo);
      q = wgt < 0.5 ? a + wgt * (bq - a) : bq - (1.0 - wgt) * (bq - a);
    }
    const bool go = iter < max_iter && q >= threshold && max_step >= stepsize_thresh;
    counters[1] = go ? 1 : 0;
  }
}

void check_f32(const torch::Tensor& t, const char* name, c10::IntArrayRef sizes) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == torch::kFloat32 && t.sizes() == sizes,
              "fp_step_cuda: ", name, " must be a contiguous float32 CUDA tensor of sizes ", sizes, ", got ",
              t.sizes(), " ", t.scalar_type());
}

// The mixer step's arguments (fp_mix_cuda: out = v; fp_mixscan_cuda: out = y): h and out float32 (B, T, D);
// bx and λ in z's dtype; z and base (B·T, ld ≥ r·D + r) of one dtype; all contiguous CUDA tensors.
void check_mix_args(const char* fn, const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx,
                    const torch::Tensor& h, const torch::Tensor& lambda, const torch::Tensor& out, int64_t rank) {
  TORCH_CHECK(h.dim() == 3, fn, ": h must be (B, T, D), got ", h.sizes());
  const int64_t N = h.size(0) * h.size(1), rows = rank * h.size(2) + rank;
  check_f32(h, "h", h.sizes());
  check_f32(out, "the output", h.sizes());
  for (const auto& [t, name] : {std::pair<const torch::Tensor&, const char*>{bx, "bx"}, {lambda, "lambda"}})
    TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == z.scalar_type() && t.sizes() == h.sizes(),
                fn, ": ", name, " must be a contiguous CUDA tensor of sizes ", h.sizes(), " in z's dtype ",
                z.scalar_type(), ", got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(rank >= 1, fn, ": rank must be ≥ 1");
  TORCH_CHECK(z.is_cuda() && base.is_cuda() && z.is_contiguous() && base.is_contiguous() &&
                  z.scalar_type() == base.scalar_type() && z.dim() == 2 && z.sizes() == base.sizes() &&
                  z.size(0) == N && z.size(1) >= rows,
              fn, ": z and base must be contiguous (B·T, ld) CUDA tensors of one dtype with B·T = ", N,
              " and ld ≥ r·D + r = ", rows, ", got ", z.sizes(), " and ", base.sizes());
}

int64_t target_threads(const torch::Device& device) {
  int sms = 0, per_sm = 0;
  const int index = device.has_index() ? device.index() : c10::cuda::current_device();  // "cuda" = the current one
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, index));
  return static_cast<int64_t>(sms) * per_sm;
}

}  // namespace

DeviceSolverState make_device_solver_state(int64_t B, int64_t T, const DeviceSolverOptions& opt,
                                           const torch::Device& device) {
  TORCH_CHECK(device.is_cuda(), "fp_step_cuda: the device solver needs a CUDA device");
  TORCH_CHECK(B > 0 && T > 0, "fp_step_cuda: empty batch");
  TORCH_CHECK(opt.max_iter > 0, "fp_step_cuda: max_iter must be positive");
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device);
  DeviceSolverState s;
  s.best = torch::full({B}, std::numeric_limits<double>::infinity(), f64);
  s.last = torch::full({B}, std::numeric_limits<double>::infinity(), f64);
  s.stepsize = torch::full({B}, opt.stepsize, f64);
  s.patience = torch::full({B}, opt.decay_patience, f64.dtype(torch::kInt64));
  // [iterations, active] = [0, 1], filled on the device: a host-to-device copy would be illegal while the
  // stream is being captured into a CUDA graph.
  s.counters = torch::zeros({2}, f64.dtype(torch::kInt64));
  s.counters.narrow(0, 1, 1).fill_(1);
  s.diff = torch::zeros({B, T}, f64.dtype(torch::kFloat32));
  s.ymax = torch::zeros({B, T}, f64.dtype(torch::kFloat32));
  return s;
}

void fp_mix_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx, const torch::Tensor& h,
                 const torch::Tensor& lambda, torch::Tensor& v, int64_t rank, const std::string& mixer_ac, double eps,
                 bool sum_form, const DeviceSolverState& state) {
  check_mix_args("fp_mix_cuda", z, base, bx, h, lambda, v, rank);
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2), N = B * T;
  const int64_t ld = z.size(1);  // rows padded (e.g. to a multiple of 8 for aligned GEMMs); the pad is unread
  const c10::cuda::CUDAGuard guard(h.device());
  const int ac = parse_activation(mixer_ac);
  const size_t smem = static_cast<size_t>((sum_form ? 2 : 1) * D) * sizeof(float);
  TORCH_CHECK(smem <= 96 * 1024, "fp_mix_cuda: D = ", D, " is too wide for the fused kernel");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "fp_mix_cuda", [&] {
    if (smem > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(fp_mix_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    fp_mix_kernel<scalar_t><<<N, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), base.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), h.data_ptr<float>(),
        lambda.data_ptr<scalar_t>(), v.data_ptr<float>(), T, D, ld, static_cast<int>(rank), ac, static_cast<float>(eps),
        sum_form, state.counters.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void fp_scan_cuda(const torch::Tensor& v, const torch::Tensor& lambda, const torch::Tensor& h, torch::Tensor& y,
                  const DeviceSolverState& state, torch::Tensor* y_lowp) {
  TORCH_CHECK(v.dim() == 3, "fp_scan_cuda: v must be (B, T, D), got ", v.sizes());
  check_f32(v, "v", v.sizes());
  for (const auto& [t, name] : {std::pair<const torch::Tensor&, const char*>{h, "h"}, {y, "y"}})
    check_f32(t, name, v.sizes());
  TORCH_CHECK(lambda.is_cuda() && lambda.is_contiguous() && lambda.sizes() == v.sizes() &&
                  (lambda.scalar_type() == torch::kFloat32 || lambda.scalar_type() == torch::kBFloat16),
              "fp_scan_cuda: lambda must be a contiguous float32 or bfloat16 CUDA tensor of sizes ", v.sizes(), ", got ",
              lambda.sizes(), " ", lambda.scalar_type());
  const int64_t B = v.size(0), T = v.size(1), D = v.size(2);
  TORCH_CHECK(state.diff.size(0) == B && state.diff.size(1) == T, "fp_scan_cuda: solver state is for another shape");
  const bool lowp = y_lowp != nullptr && y_lowp->defined();
  TORCH_CHECK(!lowp || (y_lowp->is_cuda() && y_lowp->is_contiguous() && y_lowp->numel() == v.numel() &&
                        (y_lowp->scalar_type() == torch::kBFloat16 || y_lowp->scalar_type() == torch::kHalf)),
              "fp_scan_cuda: y_lowp must be a contiguous bfloat16/float16 CUDA tensor of ", v.numel(), " elements");
  const c10::cuda::CUDAGuard guard(v.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t want = (target_threads(v.device()) + B * D - 1) / (B * D);
  const int64_t NC = std::max<int64_t>(1, std::min<int64_t>(want, T / 16));
  const int64_t L = (T + NC - 1) / NC;
  const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(B * NC));
  const int64_t* counters = state.counters.data_ptr<int64_t>();
  auto run = [&](auto* lambda_ptr) {
    using lam_t = std::remove_const_t<std::remove_pointer_t<decltype(lambda_ptr)>>;
    torch::Tensor carry_in;
    if (NC > 1) {
      torch::Tensor end_state = torch::empty({B * NC, D}, v.options());
      torch::Tensor prod = torch::empty({B * NC, D}, v.options());
      carry_in = torch::empty({B * NC, D}, v.options());
      fp_scan_summary_kernel<lam_t><<<grid, kThreads, 0, stream>>>(
          v.data_ptr<float>(), lambda_ptr, end_state.data_ptr<float>(), prod.data_ptr<float>(), T, D, NC, L, counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fp_scan_carry_kernel<<<(B * D + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          end_state.data_ptr<float>(), prod.data_ptr<float>(), carry_in.data_ptr<float>(), B, D, NC, counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const float* carry = carry_in.defined() ? carry_in.data_ptr<float>() : nullptr;
    auto launch = [&](auto* lowp_ptr) {
      using lt = std::remove_pointer_t<decltype(lowp_ptr)>;
      fp_scan_output_kernel<lam_t, lt><<<grid, kThreads, 0, stream>>>(
          v.data_ptr<float>(), lambda_ptr, h.data_ptr<float>(), y.data_ptr<float>(), lowp_ptr, carry,
          state.stepsize.data_ptr<double>(), state.diff.data_ptr<float>(), state.ymax.data_ptr<float>(), T, D, NC, L,
          counters);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (!lowp)
      launch(static_cast<at::BFloat16*>(nullptr));
    else if (y_lowp->scalar_type() == torch::kBFloat16)
      launch(y_lowp->data_ptr<at::BFloat16>());
    else
      launch(y_lowp->data_ptr<at::Half>());
  };
  if (lambda.scalar_type() == torch::kFloat32)
    run(lambda.data_ptr<float>());
  else
    run(lambda.data_ptr<at::BFloat16>());
}

namespace {

// out[i] = (counters[0] even ? even : odd)[i], converted to out's dtype.
template <typename out_t>
__global__ void fp_select_kernel(const float* __restrict__ even, const float* __restrict__ odd, out_t* __restrict__ out,
                                 int64_t n, const int64_t* __restrict__ counters) {
  const float* src = (counters[0] & 1) == 0 ? even : odd;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<out_t>(src[i]);
}

}  // namespace

void fp_select_cuda(const DeviceSolverState& state, const torch::Tensor& even, const torch::Tensor& odd,
                    torch::Tensor& out) {
  check_f32(even, "even", even.sizes());
  check_f32(odd, "odd", even.sizes());
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.sizes() == even.sizes() &&
                  (out.scalar_type() == torch::kFloat32 || out.scalar_type() == torch::kBFloat16 ||
                   out.scalar_type() == torch::kHalf),
              "fp_select_cuda: out must be a contiguous float32/bfloat16/float16 CUDA tensor of sizes ", even.sizes(),
              ", got ", out.sizes(), " ", out.scalar_type());
  TORCH_CHECK(state.counters.is_cuda() && state.counters.numel() == 2, "fp_select_cuda: bad solver state");
  const int64_t n = even.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(even.device());
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* counters = state.counters.data_ptr<int64_t>();
  if (out.scalar_type() == torch::kFloat32)
    fp_select_kernel<<<blocks, kThreads, 0, stream>>>(even.data_ptr<float>(), odd.data_ptr<float>(),
                                                      out.data_ptr<float>(), n, counters);
  else if (out.scalar_type() == torch::kBFloat16)
    fp_select_kernel<<<blocks, kThreads, 0, stream>>>(even.data_ptr<float>(), odd.data_ptr<float>(),
                                                      out.data_ptr<at::BFloat16>(), n, counters);
  else
    fp_select_kernel<<<blocks, kThreads, 0, stream>>>(even.data_ptr<float>(), odd.data_ptr<float>(),
                                                      out.data_ptr<at::Half>(), n, counters);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool cuda_stream_capturing(const torch::Device& device) {
  if (!device.is_cuda()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(device.index()), &status));
  return status != cudaStreamCaptureStatusNone;
}

bool fp_mixscan_fits(int64_t B, int64_t T, int64_t D, const torch::Device& device) {
  // One block per sample is enough blocks, and the separate scan would not split T into chunks, when the
  // batch's channels alone fill the chip.
  return device.is_cuda() && B > 0 && T > 0 && D > 0 && D <= 8 * kThreads && B * D >= target_threads(device);
}

void fp_mixscan_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx, const torch::Tensor& h,
                     const torch::Tensor& lambda, torch::Tensor& y, int64_t rank, const std::string& mixer_ac, double eps,
                     bool sum_form, const DeviceSolverState& state, torch::Tensor* y_lowp) {
  check_mix_args("fp_mixscan_cuda", z, base, bx, h, lambda, y, rank);
  const int64_t B = h.size(0), T = h.size(1), D = h.size(2);
  TORCH_CHECK(D <= 8 * kThreads, "fp_mixscan_cuda: D = ", D, " is wider than ", 8 * kThreads, " channels");
  TORCH_CHECK(state.diff.size(0) == B && state.diff.size(1) == T, "fp_mixscan_cuda: solver state is for another shape");
  const bool lowp = y_lowp != nullptr && y_lowp->defined();
  TORCH_CHECK(!lowp || (y_lowp->is_cuda() && y_lowp->is_contiguous() && y_lowp->numel() == h.numel() &&
                        (y_lowp->scalar_type() == torch::kBFloat16 || y_lowp->scalar_type() == torch::kHalf)),
              "fp_mixscan_cuda: y_lowp must be a contiguous bfloat16/float16 CUDA tensor of ", h.numel(), " elements");
  const int64_t ld = z.size(1);
  const c10::cuda::CUDAGuard guard(h.device());
  const int ac = parse_activation(mixer_ac);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int cpt = D <= kThreads ? 1 : D <= 2 * kThreads ? 2 : D <= 4 * kThreads ? 4 : 8;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "fp_mixscan_cuda", [&] {
    auto launch = [&](auto* lowp_ptr, auto cpt_tag) {
      using lt_ = std::remove_pointer_t<decltype(lowp_ptr)>;
      constexpr int kCpt = decltype(cpt_tag)::value;
      fp_mixscan_kernel<scalar_t, lt_, kCpt><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
          z.data_ptr<scalar_t>(), base.data_ptr<scalar_t>(), bx.data_ptr<scalar_t>(), h.data_ptr<float>(),
          lambda.data_ptr<scalar_t>(), y.data_ptr<float>(), lowp_ptr, state.stepsize.data_ptr<double>(),
          state.diff.data_ptr<float>(), state.ymax.data_ptr<float>(), T, D, ld, static_cast<int>(rank), ac,
          static_cast<float>(eps), sum_form, state.counters.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto with_cpt = [&](auto* lowp_ptr) {
      switch (cpt) {
        case 1: launch(lowp_ptr, std::integral_constant<int, 1>{}); break;
        case 2: launch(lowp_ptr, std::integral_constant<int, 2>{}); break;
        case 4: launch(lowp_ptr, std::integral_constant<int, 4>{}); break;
        default: launch(lowp_ptr, std::integral_constant<int, 8>{}); break;
      }
    };
    if (!lowp)
      with_cpt(static_cast<at::BFloat16*>(nullptr));
    else if (y_lowp->scalar_type() == torch::kBFloat16)
      with_cpt(y_lowp->data_ptr<at::BFloat16>());
    else
      with_cpt(y_lowp->data_ptr<at::Half>());
  });
}

int64_t controller_sort_slots(int64_t B) {
  int64_t n = 1;
  while (n < B) n <<= 1;
  return n;
}

bool fp_controller_fits(int64_t B) { return controller_sort_slots(B) * static_cast<int64_t>(sizeof(double)) <= 96 * 1024; }

void fp_controller_cuda(DeviceSolverState& state, const DeviceSolverOptions& opt) {
  const int64_t B = state.best.size(0), T = state.diff.size(1);
  const int64_t slots = controller_sort_slots(B);
  const size_t smem = static_cast<size_t>(slots) * sizeof(double);
  TORCH_CHECK(fp_controller_fits(B), "fp_controller_cuda: a batch of ", B,
              " is too large for the device controller (at most 8192 samples)");
  const c10::cuda::CUDAGuard guard(state.best.device());
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(fp_controller_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  fp_controller_kernel<<<1, 1024, smem, c10::cuda::getCurrentCUDAStream()>>>(
      state.diff.data_ptr<float>(), state.ymax.data_ptr<float>(), state.best.data_ptr<double>(),
      state.last.data_ptr<double>(), state.stepsize.data_ptr<double>(), state.patience.data_ptr<int64_t>(),
      state.counters.data_ptr<int64_t>(), B, T, opt.eps, opt.decay_patience, opt.stepsize_decay, opt.threshold,
      opt.quantile, opt.stepsize_thresh, opt.max_iter, slots);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fprnn::ops
