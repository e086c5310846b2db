// The dense oracle (spec §4.6): the fixed point of the FPRNN map solved exactly, one token at a time.
//
// h = F(h) holds iff for every t:  (Λ_t + (1 − Λ_t) Q_t) h_t = Λ_t h_{t−1} + (1 − Λ_t) Q_t (b_t ⊙ x_t),
// with Λ_t = diag(λ_t) and Q_t = Q(param_t) where param_t uses the already solved h_{t−1} (mixer_h_dep).
// Each step forms Q_t explicitly (B, D, D) and solves a dense D×D system: O(T·B·D³) — a test oracle and
// an evaluation option for small widths, not a training path.
#pragma once

#include "fprnn/nn/fprnn_layer.h"

#include <torch/torch.h>

namespace fprnn::solver {

// Returns h* (B, T, D) for the layer's prepared inputs; no autograd.
torch::Tensor solve_sequential(nn::FPRNNLayerImpl& layer, const nn::FPRNNLayerImpl::Inputs& in);

}  // namespace fprnn::solver
