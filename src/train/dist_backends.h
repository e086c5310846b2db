// The c10d back ends, each in its own translation unit: ProcessGroupNCCL's header needs the CUDA
// headers, ProcessGroupGloo's needs gloo's. Each factory is compiled only when the build has it
// (FPRNN_HAVE_NCCL / FPRNN_HAVE_GLOO, set by CMake after finding the headers).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

namespace fprnn::train::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int world, const std::string& host,
                                                     std::chrono::milliseconds timeout);
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int world, int device_index, std::chrono::milliseconds timeout);

}  // namespace fprnn::train::detail
