// One piece of GPU work recorded once as a CUDA graph and replayed: the host launches it with one call
// instead of issuing its hundreds of kernels one by one (at the A5 shape the FPRNN layer's eager step spends
// about a third of its time with the GPU waiting on the host).
//
// The recorded work must not read device memory on the host (no .item(), no .cpu()) and must not copy from
// pageable host memory; its tensors keep their addresses across replays, so the caller copies new inputs
// into the tensors the recorded work reads (`copy_` on the current stream) before `replay`, and reads
// results from the tensors it wrote. The FPRNN layer's device loop notices the capture and queues every
// iteration up to its cap without reading the stop flag (the iterations after the stop do nothing).
//
// Autograd inside the recorded work is fine (forward and backward); parameters' gradients should be unset
// (`zero_grad()`, which sets them to None) before `capture`, so that the recorded backward writes fresh
// gradient tensors that every replay overwrites, and must not be reset afterwards.
#pragma once

#include <functional>
#include <memory>

namespace fprnn::ops {

class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Runs `work` `warmup` times eagerly on a side stream (cuBLAS workspaces, the allocator), then
  // `before_record` (e.g. `zero_grad()`, when set), then records one run of `work`. The current stream
  // waits for the side stream before and after. Throws without CUDA.
  void capture(const std::function<void()>& work, int warmup = 2, const std::function<void()>& before_record = {});
  // Launches the recorded work on the current CUDA stream (asynchronously).
  void replay();
  bool captured() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether this build can record CUDA graphs (a CUDA build with a visible device).
bool cuda_graphs_available();

}  // namespace fprnn::ops
