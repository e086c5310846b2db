// Small device helpers shared by the CUDA kernels: the accumulation type of a storage type (float32 for
// bfloat16, float16 and float32; float64 for float64) and exp overloaded for both accumulation types.
#pragma once

namespace fprnn::ops::cuda_math {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return exp(v); }

}  // namespace fprnn::ops::cuda_math
