// CudaGraph in a build without CUDA kernels: every use says so (the CUDA build compiles cuda_graph.cu).
#include "fprnn/ops/cuda_graph.h"

#include <c10/util/Exception.h>

#ifndef FPRNN_WITH_CUDA
namespace fprnn::ops {

struct CudaGraph::Impl {};

CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;

void CudaGraph::capture(const std::function<void()>&, int, const std::function<void()>&) {
  TORCH_CHECK(false, "CUDA graphs need a CUDA build of fprnn (this one has no CUDA kernels)");
}

void CudaGraph::replay() { TORCH_CHECK(false, "CUDA graphs need a CUDA build of fprnn (this one has no CUDA kernels)"); }

bool CudaGraph::captured() const { return false; }

bool cuda_graphs_available() { return false; }

}  // namespace fprnn::ops
#endif
