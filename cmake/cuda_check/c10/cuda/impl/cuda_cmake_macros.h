// Stand-in for the header a CUDA build of LibTorch generates; lets a CPU-only machine compile-check the
// CUDA sources (FPRNN_CHECK_CUDA). Never used by a real CUDA build.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
