// The CPU layer's fp32 kernels for x86-64 cores with AVX2 and FMA: the per-step products and
// the fused pointwise passes of a step, written with intrinsics. Included through
// lstm_cpu_common.h; everything here is inline and compiled for AVX2+FMA only (GCC's target
// pragma), never for the whole unit, so the binary still loads on any x86-64 CPU and the
// callers call in only after checking the CPU (`cpu_can`).
//
// Why own kernels. The BLAS torch links is tuned for large matrices; the recurrent products
// here are small (rows: a slice of the batch; weights 4H x H) and repeat T times with the same
// weights. On an AVX2 core (Zen 2) with copying's shapes the tiles below ran them well above
// MKL's rate (benchmarks/engine.py's GEMM-bound rows measure it). And the compiler
// left the backward pointwise loop scalar. Tiles: 6 rows x 16 columns (12 accumulators hide
// the FMA latency), weights packed once per call into 16-column panels, no k-blocking
// (k <= 4H fits the caches).
//
// Every function is deterministic (fixed order of operations), so a run is bitwise
// reproducible on a given CPU; results differ from the generic path by rounding.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace avx2 {

constexpr int64_t NR = 16;  // columns of a tile: two 8-float vectors
constexpr int MR = 6;       // rows of a tile

inline bool cpu_can() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// Floats a packed (k x n) matrix takes: ceil(n / 16) panels of k x 16, zero-padded.
inline int64_t packed_size(int64_t k, int64_t n) { return (n + NR - 1) / NR * NR * k; }

// dst[p][kk][u] = B(kk, p * 16 + u), B(kk, j) = src[kk * s_k + j * s_n], 0 for j >= n.
inline void pack(int64_t k, int64_t n, const float* src, int64_t s_k, int64_t s_n, float* dst) {
  for (int64_t p = 0; p < (n + NR - 1) / NR; ++p)
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t u = 0; u < NR; ++u) {
        const int64_t j = p * NR + u;
        *dst++ = j < n ? src[kk * s_k + j * s_n] : 0.0f;
      }
}

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// Lanes [0, n) of a vector on, n in [0, 8].
inline __m256i lanes(int64_t n) {
  static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
}

// ---------------------------------------------------------------------------------------
// GEMM tiles

// How a tile's accumulators start: zero, from C, or (the forward's input projection for one
// input feature) bias[j] + x[i] * w[j].
enum Start { kZero, kLoad, kProject };

struct Projection {
  const float* x;     // one value per row
  const float* w;     // one per column
  const float* bias;  // one per column
};

// C[R x 8V] = start + sum_kk a(i, kk) B[kk][0..8V), a(i, kk) = A[i * lda + kk] (or, AT,
// A[kk * lda + i]: A given transposed), B's rows ldb apart; kLoad starts from Cin (rows ldc
// apart). V = 2 (16 columns, 6 rows: the main tile) or 1 (8 columns, up to 12 rows: a last
// strip of at most 8 columns, e.g. H = 100). FULL: all 8V columns; otherwise the first n
// (loads and stores masked).
template <int R, int V, bool FULL, bool AT>
inline __attribute__((always_inline)) void tile(int64_t k, const float* A, int64_t lda,
                                                const float* B, int64_t ldb, float* C,
                                                int64_t ldc, Start start, const Projection& pr,
                                                int64_t n, const float* Cin) {
  const int64_t ars = AT ? 1 : lda, acs = AT ? lda : 1;
  __m256 c[V][R];
  __m256i m[V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v)
    m[v] = FULL ? _mm256_set1_epi32(-1) : lanes(std::clamp<int64_t>(n - 8 * v, 0, 8));
  if (start == kProject) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      const __m256 w = _mm256_maskload_ps(pr.w + 8 * v, m[v]);
      const __m256 b = _mm256_maskload_ps(pr.bias + 8 * v, m[v]);
#pragma GCC unroll 12
      for (int i = 0; i < R; ++i) c[v][i] = _mm256_fmadd_ps(_mm256_broadcast_ss(pr.x + i), w, b);
    }
  } else {
#pragma GCC unroll 12
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        const float* in = Cin + i * ldc + 8 * v;
        if (start == kZero)
          c[v][i] = _mm256_setzero_ps();
        else
          c[v][i] = FULL ? _mm256_loadu_ps(in) : _mm256_maskload_ps(in, m[v]);
      }
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* b = B + kk * ldb;
    __m256 bv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v)
      bv[v] = FULL ? _mm256_loadu_ps(b + 8 * v) : _mm256_maskload_ps(b + 8 * v, m[v]);
#pragma GCC unroll 12
    for (int i = 0; i < R; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * ars + kk * acs);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) c[v][i] = _mm256_fmadd_ps(a, bv[v], c[v][i]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      float* out = C + i * ldc + 8 * v;
      if (FULL)
        _mm256_storeu_ps(out, c[v][i]);
      else
        _mm256_maskstore_ps(out, m[v], c[v][i]);
    }
  }
}

// Rows per tile: 12 accumulators either way (enough to hide the FMA latency).
template <int V>
constexpr int rows_per_tile() {
  return V == 2 ? MR : 2 * MR;
}

// The last rows (fewer than a tile's) of a strip.
template <int V, bool FULL, bool AT, int R = rows_per_tile<V>() - 1>
inline void last_rows(int64_t rows, int64_t k, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc, Start start, const Projection& pr,
                      int64_t n, const float* Cin) {
  if constexpr (R > 0) {
    if (rows == R) return tile<R, V, FULL, AT>(k, A, lda, B, ldb, C, ldc, start, pr, n, Cin);
    last_rows<V, FULL, AT, R - 1>(rows, k, A, lda, B, ldb, C, ldc, start, pr, n, Cin);
  }
}

// Tiles down m rows of one strip of 8V columns. Not inlined: inlined into its callers, GCC
// spilled an accumulator of the hot loop to the stack (measured 10% slower).
template <int V, bool FULL, bool AT>
__attribute__((noinline)) void strip(int64_t m, int64_t k, const float* A, int64_t lda,
                                     const float* B, int64_t ldb, float* C, int64_t ldc,
                                     Start start, Projection pr, int64_t n, const float* Cin) {
  constexpr int R = rows_per_tile<V>();
  const int64_t step = AT ? 1 : lda;  // from one row of C to the next, in A
  int64_t r = 0;
  for (; r + R <= m; r += R, pr.x += R)
    tile<R, V, FULL, AT>(k, A + r * step, lda, B, ldb, C + r * ldc, ldc, start, pr, n,
                         Cin + r * ldc);
  last_rows<V, FULL, AT>(m - r, k, A + r * step, lda, B, ldb, C + r * ldc, ldc, start, pr, n,
                         Cin + r * ldc);
}

// One strip of n <= 16 columns: the 16-column tile, or the 8-column one when n <= 8.
template <bool AT>
inline void any_strip(int64_t m, int64_t k, const float* A, int64_t lda, const float* B,
                      int64_t ldb, float* C, int64_t ldc, Start start, const Projection& pr,
                      int64_t n, const float* Cin) {
  if (n == NR)
    strip<2, true, AT>(m, k, A, lda, B, ldb, C, ldc, start, pr, n, Cin);
  else if (n > 8)
    strip<2, false, AT>(m, k, A, lda, B, ldb, C, ldc, start, pr, n, Cin);
  else if (n == 8)
    strip<1, true, AT>(m, k, A, lda, B, ldb, C, ldc, start, pr, n, Cin);
  else
    strip<1, false, AT>(m, k, A, lda, B, ldb, C, ldc, start, pr, n, Cin);
}

// C (m x n) = start + A (m x k, rows lda apart) B, with B packed by pack(): strip by strip,
// each strip's panel (k x 16) staying in L1 while the rows of A pass. `pr` (for kProject)
// gives the rows' x and the columns' w and bias; kLoad starts from Cin (C unless given, same
// row stride).
inline void gemm_packed(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                        const float* Bp, float* C, int64_t ldc, Start start,
                        const Projection& pr = {}, const float* Cin = nullptr) {
  if (Cin == nullptr) Cin = C;
  for (int64_t j = 0; j < n; j += NR) {
    const float* panel = Bp + j * k;  // panel j / 16 starts at (j / 16) * k * 16
    Projection p = pr;
    if (start == kProject) {
      p.w += j;
      p.bias += j;
    }
    any_strip<false>(m, k, A, lda, panel, NR, C + j, ldc, start, p, std::min(NR, n - j), Cin + j);
  }
}

// One k block of gemm_tn: 6-row groups of C outer, its 16-column strips inner, each group's
// columns of At packed (Ap: k x 6 per group, contiguous); a last strip of at most 8 columns
// apart, down all rows, from At itself.
inline void tn_block(int64_t m, int64_t n, int64_t k, const float* At, int64_t lda,
                     const float* Ap, const float* B, int64_t ldb, float* C, int64_t ldc) {
  const int64_t wide = n % NR != 0 && n % NR <= 8 ? n / NR * NR : n;
  for (int64_t r = 0; r < m; r += MR) {
    const int64_t rows = std::min<int64_t>(MR, m - r);
    const float* a = Ap + r * k;  // group r / 6 starts at (r / 6) * k * 6
    for (int64_t j = 0; j < wide; j += NR) {
      float* c = C + r * ldc + j;
      any_strip<true>(rows, k, a, MR, B + j, ldb, c, ldc, kLoad, {}, std::min(NR, wide - j), c);
    }
  }
  if (wide < n)
    any_strip<true>(m, k, At, lda, B + wide, ldb, C + wide, ldc, kLoad, {}, n - wide, C + wide);
}

// C (m x n) += At^T B with At (k x m) and B (k x n), rows lda / ldb apart (the weight
// gradient dG^T h: B's strips are read in place). At's columns are packed per 6-row group of
// C first: in place, a group's k rows lie lda floats apart, and with lda = 4H = 512 (H = 128)
// they all fall into 2 of L1's 64 sets, evicting each other and B's rows every tile.
inline void gemm_tn(int64_t m, int64_t n, int64_t k, const float* At, int64_t lda,
                    const float* B, int64_t ldb, float* C, int64_t ldc) {
  // k in blocks of at most 64, so a block of B stays in L1 over all of C (measured: 75
  // GFLOP/s at k = 100 in two blocks of 50, 65 in one).
  const int64_t blocks = (k + 63) / 64, kc = (k + blocks - 1) / blocks;
  const int64_t groups = (m + MR - 1) / MR;
  thread_local std::vector<float> packed;
  if ((int64_t)packed.size() < groups * MR * kc) packed.resize(groups * MR * kc);
  for (int64_t k0 = 0; k0 < k; k0 += kc) {
    const int64_t kk = std::min(kc, k - k0);
    float* ap = packed.data();
    for (int64_t q = 0; q < kk; ++q) {
      const float* row = At + (k0 + q) * lda;
      for (int64_t g = 0; g < groups; ++g) {
        float* dst = ap + (g * kk + q) * MR;
        const int64_t rows = std::min<int64_t>(MR, m - g * MR);
        for (int64_t i = 0; i < rows; ++i) dst[i] = row[g * MR + i];
      }
    }
    tn_block(m, n, kk, At + k0 * lda, lda, ap, B + k0 * ldb, ldb, C, ldc);
  }
}

// ---------------------------------------------------------------------------------------
// Pointwise passes: 8 hidden units at a time, the last partial group masked.

// exp(x): Cephes' expf (range reduction to [-ln2/2, ln2/2], degree-5 polynomial, 2^n through
// the exponent bits), as the generic path's exp_poly, with FMAs. NaN propagates (min/max
// return their second operand when either is NaN).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365447504019f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

inline __m256 tanh8(__m256 x) {  // 2 sigmoid(2x) - 1
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp8(_mm256_mul_ps(x, _mm256_set1_ps(-2.0f)));
  return _mm256_sub_ps(_mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)), one);
}

// Loads and stores of 8 floats, masked only for a last, partial group of units: masked moves
// cost many times a plain one on some cores (AMD Zen 2: vmaskmovps stores are microcoded).
template <bool FULL>
inline __m256 load8(const float* p, __m256i m) {
  return FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}
template <bool FULL>
inline void store8(float* p, __m256i m, __m256 v) {
  if (FULL)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, m, v);
}

// One row of a step forward in two passes, so that the out-of-order core overlaps many
// independent groups of 8 (one group's exp -> division -> tanh chain is ~140 cycles long):
// first the four gates' activations over 4H, then c_t, tanh(c_t) and h_t over H.
// STREAM: the activations (for backward) and tanh(c_t) also go to `keep` / tc_out with
// non-temporal stores, which skip reading the lines first and leave the caches to the next
// step's work; they need 32-byte aligned addresses and full groups (H % 8 == 0). (Not keeping
// tanh(c_t) at all and recomputing it in backward measured slower.)
template <bool FULL, bool STREAM>
inline __attribute__((always_inline)) void gates_forward(float* g, float* keep, int64_t H,
                                                         __m256i m) {
  for (int q = 0; q < 4; ++q) {
    const __m256 v = load8<FULL>(g + q * H, m);
    const __m256 a = q == 2 ? tanh8(v) : sigmoid8(v);
    store8<FULL>(g + q * H, m, a);
    if (STREAM) _mm256_stream_ps(keep + q * H, a);
  }
}

template <bool FULL, bool STREAM>
inline __attribute__((always_inline)) void cell_forward(const float* g, const float* c_prev,
                                                        float* c_out, float* tc_out,
                                                        float* h_out, int64_t H, __m256i m) {
  const __m256 i = load8<FULL>(g, m), f = load8<FULL>(g + H, m);
  const __m256 u = load8<FULL>(g + 2 * H, m), o = load8<FULL>(g + 3 * H, m);
  const __m256 c = _mm256_fmadd_ps(f, load8<FULL>(c_prev, m), _mm256_mul_ps(i, u));
  const __m256 tc = tanh8(c);
  store8<FULL>(c_out, m, c);
  if (STREAM)
    _mm256_stream_ps(tc_out, tc);
  else
    store8<FULL>(tc_out, m, tc);
  store8<FULL>(h_out, m, _mm256_mul_ps(o, tc));
}

// Whether step_forward can stream to these buffers.
inline bool can_stream(const float* keep, const float* tc_out, int64_t H) {
  const auto aligned = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 32 == 0; };
  return H % 8 == 0 && aligned(keep) && aligned(tc_out);
}

// One row of a step forward: full groups of 8 units, then a last partial one (never when
// streaming: can_stream asks H % 8 == 0).
template <bool STREAM>
inline void row_forward(float* g, float* keep, const float* c_prev, float* c_out,
                        float* tc_out, float* h_out, int64_t H) {
  const int64_t full = H / 8 * 8;
  const __m256i all = _mm256_set1_epi32(-1), tail = lanes(H - full);
  for (int64_t j = 0; j < full; j += 8)
    gates_forward<true, STREAM>(g + j, STREAM ? keep + j : nullptr, H, all);
  if (full < H) gates_forward<false, false>(g + full, nullptr, H, tail);
  for (int64_t j = 0; j < full; j += 8)
    cell_forward<true, STREAM>(g + j, c_prev + j, c_out + j, tc_out + j, h_out + j, H, all);
  if (full < H)
    cell_forward<false, false>(g + full, c_prev + full, c_out + full, tc_out + full,
                               h_out + full, H, tail);
}

// One step forward, as the generic step_forward: the pre-activations in g (nb x 4H) become
// [i, f, g, o]; writes c_t, tanh(c_t) and h_t (nb x H each; c_out may be c_prev). With `keep`
// (nb x 4H, can_stream) the gates are also streamed there, and tanh(c_t) is streamed: g is
// then a scratch block that stays in cache from step to step.
inline void step_forward(float* g, float* keep, const float* c_prev, float* c_out,
                         float* tc_out, float* h_out, int64_t nb, int64_t H) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r = b * H;
    if (keep != nullptr)
      row_forward<true>(g + b * G, keep + b * G, c_prev + r, c_out + r, tc_out + r, h_out + r, H);
    else
      row_forward<false>(g + b * G, nullptr, c_prev + r, c_out + r, tc_out + r, h_out + r, H);
  }
}

// Makes the streamed stores visible before what follows (the backward, on any thread).
inline void stream_fence() { _mm_sfence(); }

// 8 units of one row of a step backward (see step_backward), their gate gradients added to
// the column sums db and, with one input feature (xb), dwi.
template <bool FULL>
inline __attribute__((always_inline)) void units_backward(
    const float* dy, const float* rec, __m256 scale, bool have_rec, const float* g,
    const float* tc, const float* c_prev, float* dc, __m256 ck, float* dg, float* db,
    float* dwi, const __m256* xb, int64_t H, __m256i m) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 i = load8<FULL>(g, m), f = load8<FULL>(g + H, m);
  const __m256 u = load8<FULL>(g + 2 * H, m), o = load8<FULL>(g + 3 * H, m);
  const __m256 t = load8<FULL>(tc, m);
  __m256 h = load8<FULL>(dy, m);
  if (have_rec) h = _mm256_fmadd_ps(scale, load8<FULL>(rec, m), h);
  // dL/dc_t = dc + dh o (1 - tanh(c_t)^2)
  const __m256 dct = _mm256_fmadd_ps(_mm256_mul_ps(h, o), _mm256_fnmadd_ps(t, t, one),
                                     load8<FULL>(dc, m));
  __m256 d[4];
  d[0] = _mm256_mul_ps(_mm256_mul_ps(dct, u), _mm256_fnmadd_ps(i, i, i));  // i - i^2
  d[1] = _mm256_mul_ps(_mm256_mul_ps(dct, load8<FULL>(c_prev, m)), _mm256_fnmadd_ps(f, f, f));
  d[2] = _mm256_mul_ps(_mm256_mul_ps(dct, i), _mm256_fnmadd_ps(u, u, one));
  d[3] = _mm256_mul_ps(_mm256_mul_ps(h, t), _mm256_fnmadd_ps(o, o, o));
  store8<FULL>(dc, m, _mm256_mul_ps(_mm256_mul_ps(dct, f), ck));
  for (int q = 0; q < 4; ++q) {
    store8<FULL>(dg + q * H, m, d[q]);
    store8<FULL>(db + q * H, m, _mm256_add_ps(load8<FULL>(db + q * H, m), d[q]));
    if (xb != nullptr)
      store8<FULL>(dwi + q * H, m, _mm256_fmadd_ps(d[q], *xb, load8<FULL>(dwi + q * H, m)));
  }
}

// One step backward, as the generic step_backward: dh = dy (+ rowscale[b] * rec[b] when
// have_rec); dc (nb x H) goes from dL/dc_t to dL/dc_{t-1} (times ckeep[b] when given); writes
// the gate gradients dg (nb x 4H) and adds their column sums to db (4H) and, with one input
// feature x (nb values), their x-weighted sums to dwi (4H). Row by row, streaming through the
// step's blocks; the column sums are added as each row's gradients leave the registers.
inline void step_backward(const float* dy, const float* rec, const float* rowscale,
                          bool have_rec, const float* g, const float* tc, const float* c_prev,
                          float* dc, const float* ckeep, float* dg, const float* x, float* db,
                          float* dwi, int64_t nb, int64_t H) {
  const int64_t G = 4 * H, full = H / 8 * 8;
  const __m256i tail = lanes(H - full), all = _mm256_set1_epi32(-1);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r = b * H;
    const __m256 scale = _mm256_set1_ps(have_rec ? rowscale[b] : 0.0f);
    const __m256 ck = _mm256_set1_ps(ckeep != nullptr ? ckeep[b] : 1.0f);
    const __m256 xv = _mm256_set1_ps(x != nullptr ? x[b] : 0.0f);
    const __m256* xb = x != nullptr ? &xv : nullptr;
    for (int64_t j = 0; j < full; j += 8)
      units_backward<true>(dy + r + j, rec + r + j, scale, have_rec, g + b * G + j, tc + r + j,
                           c_prev + r + j, dc + r + j, ck, dg + b * G + j, db + j, dwi + j, xb,
                           H, all);
    if (full < H)
      units_backward<false>(dy + r + full, rec + r + full, scale, have_rec, g + b * G + full,
                            tc + r + full, c_prev + r + full, dc + r + full, ck,
                            dg + b * G + full, db + full, dwi + full, xb, H, tail);
  }
}

#pragma GCC pop_options

}  // namespace avx2
