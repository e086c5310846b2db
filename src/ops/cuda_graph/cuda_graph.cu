// CudaGraph on LibTorch's at::cuda::CUDAGraph (its private memory pool keeps every tensor the recorded work
// allocates alive and at the same address across replays).
#include "fprnn/ops/cuda_graph.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>

namespace fprnn::ops {
namespace {

// `waiter` waits (on the device) for the work queued on `from` so far.
void stream_wait(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& from) {
  cudaEvent_t event;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(event, from.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), event, 0));
  C10_CUDA_CHECK(cudaEventDestroy(event));  // released once the wait has been satisfied
}

}  // namespace

struct CudaGraph::Impl {
  at::cuda::CUDAGraph graph;
  bool captured = false;
};

CudaGraph::CudaGraph() : impl_(std::make_unique<Impl>()) {}
CudaGraph::~CudaGraph() = default;

void CudaGraph::capture(const std::function<void()>& work, int warmup, const std::function<void()>& before_record) {
  TORCH_CHECK(!impl_->captured, "CudaGraph: already captured");
  TORCH_CHECK(warmup >= 0, "CudaGraph: warmup must be ≥ 0, got ", warmup);
  TORCH_CHECK(cuda_graphs_available(), "CudaGraph: no CUDA device");
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, main.device_index());
  stream_wait(side, main);
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    for (int i = 0; i < warmup; ++i) work();
    if (before_record) before_record();
    side.synchronize();
    impl_->graph.capture_begin();
    try {
      work();
    } catch (...) {
      // End the capture so that the stream is usable again; the error is the work's.
      try {
        impl_->graph.capture_end();
      } catch (...) {
      }
      throw;
    }
    impl_->graph.capture_end();
  }
  stream_wait(main, side);
  impl_->captured = true;
}

void CudaGraph::replay() {
  TORCH_CHECK(impl_->captured, "CudaGraph: replay before capture");
  impl_->graph.replay();
}

bool CudaGraph::captured() const { return impl_->captured; }

bool cuda_graphs_available() { return torch::cuda::is_available(); }

}  // namespace fprnn::ops
