// The per-token algorithm of the fused Kronecker op, shared by the CPU and CUDA backends. Every function is
// written for a group of `par.nt()` cooperating threads (thread `par.tid()`) that meet at `par.sync()`: on the
// CPU one thread (Seq) does a whole token; on the GPU a thread block does (Block, in kronecker_cuda.cu).
// Matrices live in a per-token scratch buffer with row stride m + 1 (conflict-free shared-memory columns).
// The formulas are in README.md. The arithmetic and the scratch are in T (float or double); the token's rows
// in global memory (raw, v, g and the results) are of type IO, which is T, or bfloat16/half on the GPU: read
// and widened to T on load, rounded once on store (what computing in T and casting afterwards gives, without
// the copies).
#pragma once

#include "fprnn/ops/kronecker.h"

#include <math.h>

#include <cstdint>

#ifdef __CUDACC__
#define FPRNN_HD __host__ __device__ __forceinline__
#define FPRNN_UNROLL _Pragma("unroll")
#else
#define FPRNN_HD inline
#define FPRNN_UNROLL  // the host compilers' own unrolling decides
#endif

namespace fprnn::ops::kron {

enum Act : int { kIdentity = 0, kRelu = 1, kSilu = 2 };

// Plain-data sizes and options, passed to kernels by value.
struct Params {
  int m1, m2, k1, k2, R, n;
  int symmetric, spectral, act;
  double eps;
};

Params make_params(const KroneckerSpec& spec);  // checks the spec

// The kernels' input checks (g undefined for the forward).
void check_kernel_inputs(const char* op, const torch::Tensor& raw, const torch::Tensor& v, const torch::Tensor& g,
                         const KroneckerSpec& spec);

// The device's shared memory per block with opt-in, in bytes (kronecker_cuda.cu; CUDA builds only).
int64_t cuda_shared_limit(int device);

// Scratch layout of one token, in elements; `backward` adds what the gradient needs.
struct Layout {
  int64_t L, U, V, Un1, Un2, r1, r2, M, G, A, B, C, gU, gV, vec, total;
};

inline Layout make_layout(const Params& q, bool backward) {
  const int64_t ld1 = q.m1 + 1, ld2 = q.m2 + 1, mx = q.m1 > q.m2 ? q.m1 : q.m2;
  Layout l{};
  int64_t at = 0;
  auto take = [&at](int64_t size) {
    const int64_t here = at;
    at += size;
    return here;
  };
  l.L = take(mx * (mx + 1));
  l.U = take(q.m1 * ld1);
  l.V = take(q.m2 * ld2);
  l.M = take(q.m1 * ld2);
  l.A = take(q.m1 * ld2);  // the forward's Uᵀ M; the backward's M Vᵀ
  l.vec = take(3 * mx);
  if (backward) {
    l.Un1 = take(q.m1 * ld1);
    l.Un2 = take(q.m2 * ld2);
    l.r1 = take(q.m1);
    l.r2 = take(q.m2);
    l.G = take(q.m1 * ld2);
    l.B = take(q.m1 * ld2);
    l.C = take(q.m1 * ld2);
    l.gU = take(q.m1 * ld1);
    l.gV = take(q.m2 * ld2);
  }
  l.total = at;
  return l;
}

FPRNN_HD float k_sqrt(float x) { return sqrtf(x); }
FPRNN_HD double k_sqrt(double x) { return sqrt(x); }
FPRNN_HD float k_exp(float x) { return expf(x); }
FPRNN_HD double k_exp(double x) { return exp(x); }

template <typename T>
FPRNN_HD T k_sigmoid(T x) {
  return T(1) / (T(1) + k_exp(-x));
}

template <typename T>
FPRNN_HD T act_fwd(int act, T x) {
  if (act == kSilu) return x * k_sigmoid(x);
  if (act == kRelu) return x > T(0) ? x : T(0);
  return x;
}

template <typename T>
FPRNN_HD T act_grad(int act, T x) {
  if (act == kSilu) {
    const T s = k_sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  }
  if (act == kRelu) return x > T(0) ? T(1) : T(0);
  return T(1);
}

// One thread does everything (the CPU backend).
struct Seq {
  int tid() const { return 0; }
  int nt() const { return 1; }
  void sync() const {}
};

// Index of the upper-triangular entry (i ≤ j) of an m×m factor in row-major (triu_indices) order.
FPRNN_HD int triu_index(int i, int j, int m) { return i * m - i * (i - 1) / 2 + (j - i); }

// y = S x for an m×m matrix S (stride m + 1); the threads meet afterwards.
template <typename T, typename P>
FPRNN_HD void matvec(const P& par, const T* S, int m, const T* x, T* y) {
  for (int i = par.tid(); i < m; i += par.nt()) {
    T s = 0;
    for (int j = 0; j < m; ++j) s += S[i * (m + 1) + j] * x[j];
    y[i] = s;
  }
  par.sync();
}

// L (m×m, stride m + 1) = the upper-triangular factor act(p) filled row-major (triu_indices order), zeros
// below the diagonal; the threads meet afterwards.
template <typename T, typename P, typename IO>
FPRNN_HD void fill_upper(const P& par, const Params& q, const IO* p, int m, T* L) {
  const int ld = m + 1;
  for (int idx = par.tid(); idx < m * m; idx += par.nt()) {
    const int i = idx / m, j = idx % m;
    L[i * ld + j] = i <= j ? act_fwd(q.act, static_cast<T>(p[triu_index(i, j, m)])) : T(0);
  }
  par.sync();
}

// Factor f (0: U, m1; 1: V, m2) before the diagonal: S = act(p) filled (and L Lᵀ when symmetric), rows scaled
// to unit norm (x / max(‖x‖, eps)), divided by (σ̂ + eps) when spectral. Writes S (stride m + 1) and, when
// rnorm is given, the rows' norms before the clamp. L and vec are scratch.
template <typename T, typename P, typename IO>
FPRNN_HD void build_normalized(const P& par, const Params& q, const IO* raw, int f, T* S, T* rnorm, T* L, T* vec) {
  const int m = f == 0 ? q.m1 : q.m2, ld = m + 1;
  const IO* p = raw + (f == 0 ? 0 : q.k1);
  const T eps = T(q.eps);
  if (q.symmetric) {
    fill_upper(par, q, p, m, L);
    for (int idx = par.tid(); idx < m * m; idx += par.nt()) {
      const int i = idx / m, j = idx % m;
      T s = 0;
      for (int k = (i > j ? i : j); k < m; ++k) s += L[i * ld + k] * L[j * ld + k];  // L is upper triangular
      S[i * ld + j] = s;
    }
  } else {
    for (int idx = par.tid(); idx < m * m; idx += par.nt())
      S[(idx / m) * ld + idx % m] = act_fwd(q.act, static_cast<T>(p[idx]));
  }
  par.sync();
  for (int i = par.tid(); i < m; i += par.nt()) {
    T s = 0;
    for (int k = 0; k < m; ++k) s += S[i * ld + k] * S[i * ld + k];
    const T r = k_sqrt(s);
    if (rnorm != nullptr) rnorm[i] = r;
    const T inv = T(1) / (r > eps ? r : eps);
    for (int k = 0; k < m; ++k) S[i * ld + k] *= inv;
  }
  par.sync();
  if (!q.spectral) return;
  // The reference's estimate: v = 1/√n, then u = normalize(S v) (even steps), v = normalize(S u) (odd steps),
  // 16 steps, σ̂ = uᵀ S v; normalize's eps is 1e-12.
  T* pv = vec;
  T* pu = vec + m;
  T* tmp = vec + 2 * m;
  const T v0 = T(1) / k_sqrt(T(q.n));
  for (int i = par.tid(); i < m; i += par.nt()) pv[i] = v0;
  par.sync();
  for (int k = 0; k < 16; ++k) {
    const T* src = k % 2 == 0 ? pv : pu;
    T* dst = k % 2 == 0 ? pu : pv;
    matvec(par, S, m, src, tmp);
    T s = 0;
    for (int j = 0; j < m; ++j) s += tmp[j] * tmp[j];
    const T nrm = k_sqrt(s);
    const T inv = T(1) / (nrm > T(1e-12) ? nrm : T(1e-12));
    for (int i = par.tid(); i < m; i += par.nt()) dst[i] = tmp[i] * inv;
    par.sync();
  }
  matvec(par, S, m, pv, tmp);
  T sigma = 0;
  for (int i = 0; i < m; ++i) sigma += pu[i] * tmp[i];
  const T inv = T(1) / (sigma + eps);
  par.sync();
  for (int idx = par.tid(); idx < m * m; idx += par.nt()) S[(idx / m) * ld + idx % m] *= inv;
  par.sync();
}

// dst = diag(d_f) S (stride m + 1; dst may be S).
template <typename T, typename P, typename IO>
FPRNN_HD void scale_rows(const P& par, const Params& q, const IO* raw, int f, const T* S, T* dst) {
  const int m = f == 0 ? q.m1 : q.m2, ld = m + 1;
  const IO* rd = raw + q.k1 + q.k2 + (f == 0 ? 0 : q.m1);
  for (int idx = par.tid(); idx < m * m; idx += par.nt()) {
    const int i = idx / m, j = idx % m;
    dst[i * ld + j] = k_sigmoid(static_cast<T>(rd[i])) * S[i * ld + j];
  }
  par.sync();
}

// Both factors: the normalised S1, S2 (row norms into r1, r2 when given) and U = diag(d₁) S1, V = diag(d₂) S2
// (U may be S1, V may be S2).
template <typename T, typename P, typename IO>
FPRNN_HD void build_factors(const P& par, const Params& q, const Layout& l, const IO* raw, T* S1, T* r1, T* U, T* S2,
                            T* r2, T* V, T* w) {
  build_normalized(par, q, raw, 0, S1, r1, w + l.L, w + l.vec);
  scale_rows(par, q, raw, 0, S1, U);
  build_normalized(par, q, raw, 1, S2, r2, w + l.L, w + l.vec);
  scale_rows(par, q, raw, 1, S2, V);
}

// Rows per work item of the forward's two small products: a work item computes kRowTile entries of one column,
// rows a0, a0 + G, a0 + 2G, … (G = ⌈rows / kRowTile⌉), so that the column's entry of the right-hand matrix is
// loaded once for all of them (on the GPU: 5 shared-memory loads per 4 multiply-adds instead of 8). Each entry
// is still one dot product summed in index order, the same arithmetic as one entry per work item.
constexpr int kRowTile = 4;

// out (n) = vec(M − 2 Uᵀ M Vᵀ) for one token; raw (R) and v (n) are the token's rows.
template <typename T, typename P, typename IO>
FPRNN_HD void forward_token(const P& par, const Params& q, const Layout& l, const IO* raw, const IO* v, IO* out,
                            T* w) {
  const int m1 = q.m1, m2 = q.m2, ld1 = m1 + 1, ld2 = m2 + 1;
  const int G = (m1 + kRowTile - 1) / kRowTile;  // row groups
  T *U = w + l.U, *V = w + l.V, *M = w + l.M, *A = w + l.A;
  build_factors(par, q, l, raw, U, static_cast<T*>(nullptr), U, V, static_cast<T*>(nullptr), V, w);
  for (int idx = par.tid(); idx < m1 * m2; idx += par.nt()) M[(idx / m2) * ld2 + idx % m2] = static_cast<T>(v[idx]);
  par.sync();
  for (int idx = par.tid(); idx < G * m2; idx += par.nt()) {  // A = Uᵀ M: rows a0 + kG of column j
    const int a0 = idx / m2, j = idx % m2;
    T s[kRowTile] = {};
    for (int i = 0; i < m1; ++i) {
      const T mij = M[i * ld2 + j];
FPRNN_UNROLL
      for (int k = 0; k < kRowTile; ++k)
        if (a0 + k * G < m1) s[k] += U[i * ld1 + a0 + k * G] * mij;
    }
FPRNN_UNROLL
    for (int k = 0; k < kRowTile; ++k)
      if (a0 + k * G < m1) A[(a0 + k * G) * ld2 + j] = s[k];
  }
  par.sync();
  for (int idx = par.tid(); idx < G * m2; idx += par.nt()) {  // out = M − 2 A Vᵀ: rows a0 + kG of column b
    const int a0 = idx / m2, b = idx % m2;
    T s[kRowTile] = {};
    for (int j = 0; j < m2; ++j) {
      const T vbj = V[b * ld2 + j];
FPRNN_UNROLL
      for (int k = 0; k < kRowTile; ++k)
        if (a0 + k * G < m1) s[k] += A[(a0 + k * G) * ld2 + j] * vbj;
    }
FPRNN_UNROLL
    for (int k = 0; k < kRowTile; ++k) {
      const int a = a0 + k * G;
      if (a < m1) out[a * m2 + b] = static_cast<IO>(M[a * ld2 + b] - T(2) * s[k]);
    }
  }
  par.sync();  // the scratch is reused by the next token
}

// Gradient of one factor f from gF = ∂L/∂(diag(d) Ŝ) (overwritten): writes graw's entries of the factor and of
// its diagonal. Column-wise normalisation only.
template <typename T, typename P, typename IO>
FPRNN_HD void factor_backward(const P& par, const Params& q, const IO* raw, int f, const T* Un, const T* rnorm,
                              T* gF, T* L, IO* graw) {
  const int m = f == 0 ? q.m1 : q.m2, ld = m + 1;
  const int off_p = f == 0 ? 0 : q.k1, off_d = q.k1 + q.k2 + (f == 0 ? 0 : q.m1);
  const T eps = T(q.eps);
  for (int i = par.tid(); i < m; i += par.nt()) {
    const T d = k_sigmoid(static_cast<T>(raw[off_d + i]));
    T gd = 0;
    for (int a = 0; a < m; ++a) gd += gF[i * ld + a] * Un[i * ld + a];
    graw[off_d + i] = static_cast<IO>(gd * d * (T(1) - d));
    // gŜ = d gF; through x / max(‖x‖, eps): (gŜ − Ŝ (Ŝ·gŜ)) / ‖x‖, or gŜ / eps where the clamp is active.
    const T r = rnorm[i];
    for (int a = 0; a < m; ++a)
      gF[i * ld + a] = r > eps ? d * (gF[i * ld + a] - Un[i * ld + a] * gd) / r : d * gF[i * ld + a] / eps;
  }
  par.sync();
  const IO* p = raw + off_p;
  if (q.symmetric) {  // S = L Lᵀ: gL = (gS + gSᵀ) L on the upper triangle
    fill_upper(par, q, p, m, L);
    for (int idx = par.tid(); idx < m * m; idx += par.nt()) {
      const int i = idx / m, j = idx % m;
      if (i > j) continue;
      T s = 0;
      for (int k = 0; k <= j; ++k) s += (gF[i * ld + k] + gF[k * ld + i]) * L[k * ld + j];
      const int t = triu_index(i, j, m);
      graw[off_p + t] = static_cast<IO>(s * act_grad(q.act, static_cast<T>(p[t])));
    }
  } else {
    for (int idx = par.tid(); idx < m * m; idx += par.nt())
      graw[off_p + idx] = static_cast<IO>(gF[(idx / m) * ld + idx % m] * act_grad(q.act, static_cast<T>(p[idx])));
  }
  par.sync();
}

// (graw (R), gv (n)) for one token and upstream gradient g (n). Column-wise normalisation only.
template <typename T, typename P, typename IO>
FPRNN_HD void backward_token(const P& par, const Params& q, const Layout& l, const IO* raw, const IO* v, const IO* g,
                             IO* graw, IO* gv, T* w) {
  const int m1 = q.m1, m2 = q.m2, ld1 = m1 + 1, ld2 = m2 + 1;
  T *U = w + l.U, *V = w + l.V, *Un1 = w + l.Un1, *Un2 = w + l.Un2, *M = w + l.M, *G = w + l.G;
  T *A = w + l.A, *B = w + l.B, *C = w + l.C, *gU = w + l.gU, *gV = w + l.gV;
  build_factors(par, q, l, raw, Un1, w + l.r1, U, Un2, w + l.r2, V, w);
  for (int idx = par.tid(); idx < m1 * m2; idx += par.nt()) {
    M[(idx / m2) * ld2 + idx % m2] = static_cast<T>(v[idx]);
    G[(idx / m2) * ld2 + idx % m2] = static_cast<T>(g[idx]);
  }
  par.sync();
  for (int idx = par.tid(); idx < m1 * m2; idx += par.nt()) {
    const int a = idx / m2, j = idx % m2;
    T sb = 0, sc = 0, sa = 0;
    for (int i = 0; i < m1; ++i) {
      sb += U[i * ld1 + a] * M[i * ld2 + j];  // B = Uᵀ M
      sc += U[a * ld1 + i] * G[i * ld2 + j];  // C = U G
    }
    for (int k = 0; k < m2; ++k) sa += M[a * ld2 + k] * V[j * ld2 + k];  // A = M Vᵀ (row a, column j)
    B[a * ld2 + j] = sb;
    C[a * ld2 + j] = sc;
    A[a * ld2 + j] = sa;
  }
  par.sync();
  for (int idx = par.tid(); idx < m1 * m2; idx += par.nt()) {  // gv = G − 2 U G V
    const int a = idx / m2, b = idx % m2;
    T s = 0;
    for (int j = 0; j < m2; ++j) s += C[a * ld2 + j] * V[j * ld2 + b];
    gv[idx] = static_cast<IO>(G[a * ld2 + b] - T(2) * s);
  }
  for (int idx = par.tid(); idx < m1 * m1; idx += par.nt()) {  // gU = −2 A Gᵀ
    const int i = idx / m1, a = idx % m1;
    T s = 0;
    for (int b = 0; b < m2; ++b) s += A[i * ld2 + b] * G[a * ld2 + b];
    gU[i * ld1 + a] = T(-2) * s;
  }
  for (int idx = par.tid(); idx < m2 * m2; idx += par.nt()) {  // gV = −2 Gᵀ B
    const int b = idx / m2, j = idx % m2;
    T s = 0;
    for (int a = 0; a < m1; ++a) s += G[a * ld2 + b] * B[a * ld2 + j];
    gV[b * ld2 + j] = T(-2) * s;
  }
  par.sync();
  factor_backward(par, q, raw, 0, Un1, w + l.r1, gU, w + l.L, graw);
  factor_backward(par, q, raw, 1, Un2, w + l.r2, gV, w + l.L, graw);
}

}  // namespace fprnn::ops::kron
