// The NCCL back end (CUDA tensors): LibTorch's ProcessGroupNCCL, compiled only in CUDA builds whose
// LibTorch ships it and where nccl.h was found (FPRNN_HAVE_NCCL).
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#include "train/dist_backends.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

namespace fprnn::train::detail {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int world, int device_index, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}

}  // namespace fprnn::train::detail
