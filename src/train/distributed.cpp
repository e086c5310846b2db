#include "fprnn/train/distributed.h"

#include "train/dist_backends.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <map>

namespace fprnn::train {
namespace {

// An integer environment variable, or `fallback` when unset. Garbage throws naming the variable.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && x >= 0 && x < (1L << 30), "distributed: environment variable ", name, "='",
              v, "' is not a non-negative integer");
  return static_cast<int>(x);
}

}  // namespace

DistEnv DistEnv::from_environment() {
  DistEnv e;
  e.world = env_int("WORLD_SIZE", 1);
  TORCH_CHECK(e.world >= 1, "distributed: WORLD_SIZE must be at least 1");
  e.rank = env_int("RANK", 0);
  TORCH_CHECK(e.rank < e.world, "distributed: RANK=", e.rank, " is outside [0, WORLD_SIZE=", e.world, ")");
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (const char* a = std::getenv("MASTER_ADDR"); a != nullptr && *a != '\0') e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", e.active() ? -1 : 29500);
  TORCH_CHECK(!e.active() || (e.master_port > 0 && e.master_port < 65536),
              "distributed: WORLD_SIZE=", e.world, " needs MASTER_PORT (a free TCP port on MASTER_ADDR)");
  return e;
}

bool have_backend(const std::string& name) {
#ifdef FPRNN_HAVE_GLOO
  if (name == "gloo") return true;
#endif
#ifdef FPRNN_HAVE_NCCL
  if (name == "nccl") return true;
#endif
  return false;
}

#ifndef FPRNN_HAVE_GLOO
namespace detail {
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                     const std::string&, std::chrono::milliseconds) {
  TORCH_CHECK(false, "distributed: this build has no gloo back end (CPU data parallelism); install libgloo-dev and "
                     "reconfigure");
}
}  // namespace detail
#endif
#ifndef FPRNN_HAVE_NCCL
namespace detail {
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int, int,
                                                     std::chrono::milliseconds) {
  TORCH_CHECK(false, "distributed: this build has no NCCL back end (GPU data parallelism needs a CUDA build of "
                     "LibTorch and nccl.h)");
}
}  // namespace detail
#endif

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

ProcessGroup::ProcessGroup(const DistEnv& env, torch::Device device, double timeout_s)
    : env_(env), device_(device), impl_(std::make_unique<Impl>()) {
  TORCH_CHECK(env.world >= 1 && env.rank >= 0 && env.rank < env.world, "distributed: bad rank ", env.rank,
              " of ", env.world);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(env.master_port);
  opts.isServer = env.rank == 0;
  opts.numWorkers = static_cast<std::size_t>(env.world);
  opts.waitWorkers = true;
  opts.timeout = timeout;
  opts.useLibUV = false;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    msg = msg.substr(0, msg.find('\n'));
    TORCH_CHECK(false, "distributed: rank ", env.rank, " cannot reach the rendezvous at ", env.master_addr, ":",
                env.master_port, " (", msg, ")");
  }
  if (device.is_cuda()) {
    backend_name_ = "nccl";
    impl_->backend = detail::make_nccl_backend(impl_->store, env.rank, env.world, device.index(), timeout);
  } else {
    backend_name_ = "gloo";
    impl_->backend = detail::make_gloo_backend(impl_->store, env.rank, env.world, env.master_addr, timeout);
  }
}

ProcessGroup::~ProcessGroup() {
  if (impl_ && impl_->backend) {
    try {
      impl_->backend->shutdown();
    } catch (...) {
      // Destruction must not throw; the process is leaving anyway.
    }
  }
}

namespace {

// Packs `tensors` into one flat buffer per dtype, runs `collective` on each buffer, and copies the result
// back: a model's gradients cost one collective, not one per parameter.
template <typename F>
void through_flat_buffers(const std::vector<torch::Tensor>& tensors, const torch::Device& device, F collective) {
  torch::NoGradGuard no_grad;  // parameters are written in place
  std::map<c10::ScalarType, std::vector<torch::Tensor>> by_dtype;
  for (const auto& t : tensors) {
    TORCH_CHECK(t.defined(), "distributed: undefined tensor in a collective");
    TORCH_CHECK(t.device() == device, "distributed: tensor on ", t.device(), ", process group on ", device);
    by_dtype[t.scalar_type()].push_back(t);
  }
  for (auto& [dtype, list] : by_dtype) {
    std::vector<torch::Tensor> flat_parts;
    flat_parts.reserve(list.size());
    for (const auto& t : list) flat_parts.push_back(t.reshape({-1}));
    std::vector<torch::Tensor> buf{torch::cat(flat_parts)};
    collective(buf);
    int64_t offset = 0;
    for (auto& t : list) {
      const int64_t n = t.numel();
      t.copy_(buf[0].narrow(0, offset, n).view(t.sizes()));
      offset += n;
    }
  }
}

}  // namespace

void ProcessGroup::all_reduce_sum(const std::vector<torch::Tensor>& tensors) {
  if (tensors.empty()) return;
  through_flat_buffers(tensors, device_, [&](std::vector<torch::Tensor>& buf) { impl_->backend->allreduce(buf)->wait(); });
}

void ProcessGroup::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  if (tensors.empty()) return;
  c10d::BroadcastOptions o;
  o.rootRank = root;
  through_flat_buffers(tensors, device_, [&](std::vector<torch::Tensor>& buf) { impl_->backend->broadcast(buf, o)->wait(); });
}

void ProcessGroup::barrier() {
  // A one-element all-reduce: works the same on both back ends (NCCL's barrier guesses a device).
  auto t = torch::zeros({1}, torch::TensorOptions().device(device_));
  all_reduce_sum({t});
  (void)t.item<float>();
}

void set_current_cuda_device(int device_index) {
  if (device_index < 0) return;
  TORCH_CHECK(c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA), "distributed: this LibTorch has no CUDA");
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
      ->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index)));
}

}  // namespace fprnn::train
