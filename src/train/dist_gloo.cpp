// The gloo back end (CPU tensors). gloo's headers come from Debian's libgloo-dev (or .deps/include on a
// machine without it); only declarations are used from them — the implementation is LibTorch's own copy
// of gloo inside libtorch_cpu, reached through ProcessGroupGloo's exported constructor.
#ifndef USE_C10D_GLOO  // LibTorch's CMake config normally defines it
#define USE_C10D_GLOO 1
#endif
#include "train/dist_backends.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace fprnn::train::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int world, const std::string& host,
                                                     std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  const bool loopback = host == "127.0.0.1" || host == "localhost" || host == "::1";
  options->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                      : c10d::ProcessGroupGloo::createDefaultDevice());
  options->threads = 1;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
}

}  // namespace fprnn::train::detail
