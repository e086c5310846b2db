// The fixed-point iteration on the GPU without host synchronisation (spec §8 semantics, on the device).
//
// One iteration is: z = h · W_hᵀ (cuBLAS, in the compute dtype), then
//   fp_mix_cuda:     v = (1 − λ) ⊙ (Q(raw) (b⊙x − h) + h),  raw[b,t] = base[b,t] + z[b,t−1]   (Householder / DPLR)
//   fp_scan_cuda:    ŷ = Scan_λ(v); per (b, t): max_d |ŷ − h| and max_d |ŷ| (atomic maxima); y = s_b ŷ + (1 − s_b) h
//   controller_step: r_b = max_t diff/(ymax + eps); best/patience/step-size updates; the continue test
// Every kernel first reads the device flag `active` and returns at once when it is 0, so the host may queue
// several iterations and check the flag only every few: the iterations after the stop are no-ops and the
// results (iterate, count, residuals) are exactly those of checking before every step.
//
// Layout: every (B, T, D) tensor contiguous; h, v, y float32; bx and lambda in the compute dtype (the scan
// takes lambda in float32 or bfloat16); z and base (B·T, rows) in the
// compute dtype (float32 or bfloat16), with a leading dimension ld ≥ rows = r·D + r (reflection i in
// columns i·D..(i+1)·D, the α logits after them, columns ≥ rows unread: callers pad ld to a multiple of 8
// so that cuBLAS picks aligned tensor-core kernels). z may be an undefined tensor: the iterate is zero (the
// solve's first iteration), so is its GEMM, and the kernels read base alone. So may h, for the same iterate:
// the kernels then read it as zeros (bit for bit what a tensor of zeros gives), and the solve needs no zero
// fill of its first buffer.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace fprnn::ops {

// Device-resident solver state for a batch of B samples (all CUDA tensors).
struct DeviceSolverState {
  torch::Tensor best, last, stepsize;  // (B) float64
  torch::Tensor patience;              // (B) int64
  torch::Tensor counters;              // (3) int64: [iterations, active, blocks done (fused control's ticket)]
  torch::Tensor diff, ymax;            // (B, T) float32 scratch, zero between iterations
  // fp_mixscan_chunked_cuda's workspace, allocated (zeroed) by its first call: int64 [tickets, blocks done,
  // generation, one flag per chunk, r_b per sample] and float32 (chunks, 3, D).
  torch::Tensor chunk_flags, chunk_data;
};

struct DeviceSolverOptions {
  int64_t max_iter = 1000;
  double quantile = 1.0, threshold = 0.1, stepsize = 1.0, stepsize_decay = 1.0, stepsize_thresh = 1e-3, eps = 1e-8;
  int64_t decay_patience = 15;
};

DeviceSolverState make_device_solver_state(int64_t B, int64_t T, const DeviceSolverOptions& opt,
                                           const torch::Device& device);

// v (B, T, D) float32 ← the mixed, gated scan input. mixer_ac: "identity" | "relu" | "silu".
void fp_mix_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx, const torch::Tensor& h,
                 const torch::Tensor& lambda, torch::Tensor& v, int64_t rank, const std::string& mixer_ac, double eps,
                 bool sum_form, const DeviceSolverState& state);

// y (B, T, D) float32 ← s·Scan_λ(v) + (1 − s)·h, accumulating the residual maxima into state.diff/ymax.
// With y_lowp (bfloat16/float16, same element count) the kernel also writes y rounded to that dtype: the
// next iteration's projection GEMM reads it, so no separate cast pass over h is needed.
void fp_scan_cuda(const torch::Tensor& v, const torch::Tensor& lambda, const torch::Tensor& h, torch::Tensor& y,
                  const DeviceSolverState& state, torch::Tensor* y_lowp = nullptr);

// fp_mix_cuda and then fp_scan_cuda in one kernel (one block per sample, the scan input kept in registers),
// with the same arithmetic: y, y_lowp and the residual maxima as the two calls give them, where
// fp_mixscan_fits(B, T, D, device) (the scan would not be chunked, D ≤ 2048).
// With `control`, the kernel also does fp_controller_cuda's work for these options (no separate launch): each
// block turns its sample's residual rows into r_b, zeroes them and updates the sample's state, and the block
// that finishes last decides the continue test for the whole batch. The state afterwards is the one
// fp_mixscan_cuda without `control` followed by fp_controller_cuda leaves (tested).
void fp_mixscan_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx, const torch::Tensor& h,
                     const torch::Tensor& lambda, torch::Tensor& y, int64_t rank, const std::string& mixer_ac, double eps,
                     bool sum_form, const DeviceSolverState& state, torch::Tensor* y_lowp = nullptr,
                     const DeviceSolverOptions* control = nullptr);
bool fp_mixscan_fits(int64_t B, int64_t T, int64_t D, const torch::Device& device);

// The same iteration for any batch (the LM-like shape, whose few samples would give fp_mixscan_cuda few blocks):
// one block per chunk of 8 tokens of a sample, the scan input kept in shared memory and the carry between chunks
// composed from what the earlier chunks publish, in a fixed order (deterministic), so the float32 scan input never
// goes through memory (fp_mix_cuda + fp_scan_cuda write it once and read it twice). y, y_lowp and the residual
// maxima agree with fp_mix_cuda + fp_scan_cuda to rounding (the carry is composed in another order); the
// controller is fp_controller_cuda, or with `control` folded in: each block reduces its tokens' maxima itself
// and sends its chunk's largest ratio to its sample's r_b, and the block that finishes last updates every
// sample and decides the continue test (the residual rows are then never written). The state afterwards is the
// one the call without `control` followed by fp_controller_cuda leaves (tested). Needs
// fp_mixscan_chunked_fits(base, D, rank) and 16-byte aligned tensors.
void fp_mixscan_chunked_cuda(const torch::Tensor& z, const torch::Tensor& base, const torch::Tensor& bx,
                             const torch::Tensor& h, const torch::Tensor& lambda, torch::Tensor& y, int64_t rank,
                             const std::string& mixer_ac, double eps, bool sum_form, DeviceSolverState& state,
                             torch::Tensor* y_lowp = nullptr, const DeviceSolverOptions* control = nullptr);
bool fp_mixscan_chunked_fits(const torch::Tensor& base, int64_t D, int64_t rank);

// Records the residual of the step just taken and evaluates the continue test for the next one (one block;
// the quantile test is decided from counts and extremes of `best`, without sorting it).
void fp_controller_cuda(DeviceSolverState& state, const DeviceSolverOptions& opt);
// out ← the iterate after the last iteration the controller counted: `even` (the buffer the loop writes
// after an even number of iterations, the initial iterate included) when counters[0] is even, else `odd`;
// float32 in, out float32, bfloat16 or float16. The choice is made on the device, so a solve that queues
// iterations past its stop without reading the flag (a CUDA graph capture) still returns the right buffer.
void fp_select_cuda(const DeviceSolverState& state, const torch::Tensor& even, const torch::Tensor& odd,
                    torch::Tensor& out);
// Whether the current CUDA stream of `device` is being captured into a CUDA graph (host reads of device
// memory are illegal then). False for non-CUDA devices.
bool cuda_stream_capturing(const torch::Device& device);

}  // namespace fprnn::ops
