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

#include <type_traits>

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

// ---- The forward's fast path: one warp per token (float arithmetic, factors of at most 32, column-wise) ----
// The block kernel above spends most of its time waiting at its nine block-wide barriers with one warp busy
// (the row norms) or in a thread-per-entry schedule that reloads both operands of every multiply-add. Here a
// warp does a token alone, with no barrier but __syncwarp:
//   lane r builds row r of a factor in registers (S = L Lᵀ from the L rows in shared memory when symmetric),
//   takes its norm and scales it (x / max(‖x‖, eps) · σ(d_r)) without any cross-lane reduction;
//   A = Uᵀ M: lane j accumulates column j of A (32 registers) from M's column j and U's rows, which it reads as
//   broadcast float4s; out = M − 2 A Vᵀ: lane b holds row b of V and reads A's rows as broadcast float4s.
// Shared memory per warp: two 32×32 float matrices (X: L, then U, then L of the second factor; Y: A), rows
// swizzled by 16-byte chunk (chunk c of row r at c ^ (r mod 8)) so that a lane writing its own row, and a lane
// writing its own column, hit distinct banks while row reads stay aligned float4 broadcasts. Entries beyond
// m1, m2 are zeros, so every loop runs to 32. Per token: ~2·32³ + 2·32³/3 multiply-adds, 0.25 shared loads
// per multiply-add, raw and v read from global memory once (M's column into registers first).
constexpr int kWarpTokens = 4;  // warps (tokens) per block
constexpr int kMax = 32;

__device__ __forceinline__ int swz(int r, int k) { return r * kMax + ((((k >> 2) ^ (r & 7))) << 2) + (k & 3); }

// Row r of matrix X (swizzled) as 8 float4 chunks, chunk c holding entries 4c..4c+3.
__device__ __forceinline__ float4 row_chunk(const float* X, int r, int c) {
  return reinterpret_cast<const float4*>(X + r * kMax)[c ^ (r & 7)];
}

__device__ __forceinline__ void store_row(float* X, int r, const float (&row)[kMax]) {
#pragma unroll
  for (int c = 0; c < kMax / 4; ++c)
    reinterpret_cast<float4*>(X + r * kMax)[c ^ (r & 7)] =
        make_float4(row[4 * c], row[4 * c + 1], row[4 * c + 2], row[4 * c + 3]);
}

// Lane r (< m) gets row r of factor f: diag(σ(d)) times the row-normalised S (zeros beyond m, and for lanes ≥ m).
// X is scratch (the symmetric case's L); the caller has synchronised the warp since X was last read.
template <typename IO>
__device__ __forceinline__ void warp_factor_row(const kron::Params& q, const IO* raw, int f, float* X,
                                                float (&row)[kMax]) {
  const int lane = threadIdx.x & 31;
  const int m = f == 0 ? q.m1 : q.m2;
  const IO* p = raw + (f == 0 ? 0 : q.k1);
  const bool own = lane < m;
  if (q.symmetric) {
    float l[kMax];  // row `lane` of L (upper triangular)
#pragma unroll
    for (int k = 0; k < kMax; ++k)
      l[k] = (own && k < m && k >= lane) ? kron::act_fwd(q.act, static_cast<float>(p[kron::triu_index(lane, k, m)]))
                                         : 0.f;
    store_row(X, lane, l);
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kMax; ++i) {  // S[lane][i] = Σ_k L[lane][k] L[i][k], k ascending
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < kMax / 4; ++c) {
        const float4 x = row_chunk(X, i, c);
        s += l[4 * c] * x.x;
        s += l[4 * c + 1] * x.y;
        s += l[4 * c + 2] * x.z;
        s += l[4 * c + 3] * x.w;
      }
      row[i] = s;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kMax; ++k)
      row[k] = (own && k < m) ? kron::act_fwd(q.act, static_cast<float>(p[lane * m + k])) : 0.f;
  }
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kMax; ++k) ss += row[k] * row[k];
  const float r = sqrtf(ss), eps = static_cast<float>(q.eps);
  const float inv = 1.f / (r > eps ? r : eps);
  const float d = own ? kron::k_sigmoid(static_cast<float>(raw[q.k1 + q.k2 + (f == 0 ? 0 : q.m1) + lane])) : 0.f;
#pragma unroll
  for (int k = 0; k < kMax; ++k) row[k] = d * (row[k] * inv);
}

template <typename IO>
__global__ void __launch_bounds__(kWarpTokens * 32, 4)
    kron_fwd_warp_kernel(kron::Params q, int64_t N, const IO* __restrict__ raw, const IO* __restrict__ v,
                         IO* __restrict__ out) {
  __shared__ __align__(16) float smem[kWarpTokens][2][kMax * kMax];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpTokens + warp;
  if (t >= N) return;  // whole warps only
  float* X = smem[warp][0];
  float* Y = smem[warp][1];
  const IO* rt = raw + t * q.R;
  const IO* vt = v + t * q.n;
  const int m1 = q.m1, m2 = q.m2;
  // Column `lane` of M, loaded first: 32 independent loads whose latency the factor build below covers (read
  // inside the products' loops instead, each iteration waited for its load).
  float mcol[kMax];
#pragma unroll
  for (int i = 0; i < kMax; ++i) mcol[i] = (i < m1 && lane < m2) ? static_cast<float>(vt[i * m2 + lane]) : 0.f;
  float row[kMax];
  warp_factor_row(q, rt, 0, X, row);  // U's row `lane`
  __syncwarp();                       // the symmetric build's reads of X are done
  store_row(X, lane, row);
  __syncwarp();
  // A = Uᵀ M: A[a][lane] = Σ_i U[i][a] M[i][lane], i ascending (rows of U past m1 and of M are zeros).
  float acc[kMax];
#pragma unroll
  for (int a = 0; a < kMax; ++a) acc[a] = 0.f;
#pragma unroll
  for (int i = 0; i < kMax; ++i) {
#pragma unroll
    for (int c = 0; c < kMax / 4; ++c) {
      const float4 u = row_chunk(X, i, c);
      acc[4 * c] += u.x * mcol[i];
      acc[4 * c + 1] += u.y * mcol[i];
      acc[4 * c + 2] += u.z * mcol[i];
      acc[4 * c + 3] += u.w * mcol[i];
    }
  }
#pragma unroll
  for (int a = 0; a < kMax; ++a) Y[swz(a, lane)] = acc[a];
  __syncwarp();  // A is complete, and nobody reads U any more
  warp_factor_row(q, rt, 1, X, row);  // V's row `lane`
  // out[a][lane] = M[a][lane] − 2 Σ_j A[a][j] V[lane][j], j ascending.
  IO* ot = out + t * q.n;
#pragma unroll
  for (int a = 0; a < kMax; ++a) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < kMax / 4; ++c) {
      const float4 x = row_chunk(Y, a, c);
      s += x.x * row[4 * c];
      s += x.y * row[4 * c + 1];
      s += x.z * row[4 * c + 2];
      s += x.w * row[4 * c + 3];
    }
    if (a < m1 && lane < m2) ot[a * m2 + lane] = static_cast<IO>(mcol[a] - 2.f * s);
  }
}

bool warp_path_fits(const kron::Params& q) { return !q.spectral && q.m1 <= kMax && q.m2 <= kMax; }

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
    if constexpr (std::is_same_v<T, float>) {
      if (warp_path_fits(q)) {
        const int64_t blocks = (N + kWarpTokens - 1) / kWarpTokens;
        kron_fwd_warp_kernel<IO><<<blocks, kWarpTokens * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
            q, N, raw.const_data_ptr<IO>(), v.const_data_ptr<IO>(), out.mutable_data_ptr<IO>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
    }
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
