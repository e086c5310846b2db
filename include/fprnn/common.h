// Shared helpers: tensor checks, comparison metrics and the time shift used by every layer.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace fprnn {

using torch::Tensor;

// ‖out − ref‖₂ / ‖ref‖₂ over all elements, computed in float64 (‖out‖₂ when ref is all zeros).
double rms_ratio(const Tensor& out, const Tensor& ref);
// max |out − ref| over all elements, in float64.
double max_abs_diff(const Tensor& out, const Tensor& ref);

// One-step delay along `dim`: out[t] = x[t − n] for t ≥ n, zero before (n < 0 advances, zero at the end).
// x: any shape; returns a new tensor of the same shape and dtype.
Tensor shift(const Tensor& x, int64_t n = 1, int64_t dim = 1);

// Checks used at public entries. `op` names the operation in the message.
void check_rank(const Tensor& t, int64_t rank, const char* op, const char* name);
void check_floating(const Tensor& t, const char* op, const char* name);
void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* a_name, const char* b_name);

// "float32" | "float64" | "bfloat16" → dtype; anything else throws with the valid names.
torch::Dtype parse_dtype(const std::string& name);
std::string dtype_name(torch::Dtype dtype);

// Number of elements in a tensor list, for parameter counts.
int64_t numel(const std::vector<Tensor>& tensors);

// Keeps freed memory in the process instead of returning it to the kernel (glibc: no mmap for large blocks, no
// trimming). LibTorch's CPU allocator does not cache, so otherwise every large tensor is a fresh mapping whose
// pages fault in on first touch: in a VM that costs more than the kernel that fills it (the CPU scan ran 3×
// slower). Called once at start-up by the fprnn binary; FPRNN_SYSTEM_MALLOC=1 in the environment skips it.
void tune_allocator();

}  // namespace fprnn
