// Data-parallel training across processes: one process per GPU (or per CPU worker), gradients all-reduced
// through LibTorch's c10d process groups — NCCL between CUDA devices, gloo between CPU processes.
//
// The processes find each other through torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), set by `fprnn launch` or by torchrun itself. Rank 0 hosts the c10d TCPStore.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace fprnn::train {

// What the environment says about this process's place in a job. world == 1 (no variables) is a plain run.
struct DistEnv {
  int rank = 0;
  int local_rank = 0;
  int world = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;

  bool active() const { return world > 1; }
  // Reads RANK, WORLD_SIZE, LOCAL_RANK (default RANK), MASTER_ADDR, MASTER_PORT. Inconsistent values
  // (rank outside [0, world), a world without a port) throw one line naming the variable.
  static DistEnv from_environment();
};

// Which collective back ends this build has: "gloo" (CPU tensors) and "nccl" (CUDA tensors).
bool have_backend(const std::string& name);

// A process group of `env.world` processes. Every call is collective: all ranks make it, in the same order.
class ProcessGroup {
 public:
  // Joins the job: NCCL when `device` is CUDA, gloo when it is the CPU. Throws one line when this build
  // lacks the back end or the rendezvous times out (`timeout_s`).
  ProcessGroup(const DistEnv& env, torch::Device device, double timeout_s = 1800);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  const std::string& backend() const { return backend_name_; }

  // In place: every tensor becomes the elementwise sum over ranks. The tensors are packed into one
  // contiguous buffer per dtype, so a model's gradients cost one collective, not one per parameter.
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors);
  // In place: every tensor takes rank `root`'s values.
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
  void barrier();

 private:
  struct Impl;
  DistEnv env_;
  torch::Device device_;
  std::string backend_name_;
  std::unique_ptr<Impl> impl_;
};

// Makes `device_index` the current CUDA device of this process (kernels launched without a device guard
// go there). No-op for index < 0.
void set_current_cuda_device(int device_index);

}  // namespace fprnn::train
