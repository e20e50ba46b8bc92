// Shared by the CPU layer's translation units (lstm_forward.cpp, lstm_backward.cpp,
// lstm_bench.cpp): the per-step GEMM and pointwise kernels, the kernel choice and the work
// items. Everything here is internal (an anonymous namespace: each unit gets its own copy,
// compiled with the same flags, so forward and backward run the same instructions as when
// they shared one file); only the kernel choice is shared, per library, through
// hdetach::kernel_choice.
//
// The h-detach LSTM layer on the CPU: forward and backward of one layer over a whole
// sequence, for K seed members at once, fp32 and fp64.
//
// Layout: the input x and the output y are step-major, (T, K, B, I) and (T, K, B, H), as the
// module takes and gives them (no copy on the way in or out); states are (K, B, H); the
// buffers kept for backward are member-major, gates (K, T, B, 4H) with the gate blocks
// [i, f, g, o] (torch.nn.LSTM's order), cells and tanh(cells) (K, T, B, H). Work is split into items, one per
// (member, batch chunk): the recursion of a sample depends on no other sample, so each item
// runs the whole time loop on its own thread with no barrier between steps. Per step an item
// makes one small GEMM (the recurrent product) and ONE fused, vectorised pointwise pass; the
// input projection and the weight gradients are large GEMMs over all steps, done outside the
// per-step loop. A step whose h_{t-1} is blocked for every sample of the item skips its
// backward product W_hh^T dgates (where h-detach saves computation, claim C9).
//
// Portability: no -march flags. The fp32 pointwise passes are compiled for AVX-512, AVX2 and
// baseline x86-64 (GCC's target_clones picks one at load time); their exp is a Cephes-style
// polynomial the compiler vectorises (scalar libm would cost 2x). fp64 uses libm (it serves
// the exactness tests, not speed). The per-step GEMMs call the BLAS that torch links
// (sgemm_/dgemm_, resolved weakly at load time) and fall back to ATen's addmm when that BLAS
// does not export them.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HDETACH_AVX2 1
#include "lstm_avx2.h"
#else
#define HDETACH_AVX2 0
#endif

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

namespace hdetach {
// Which kernels run a call's steps (KernelChoice below): defined once per library, in
// lstm_ops.cpp for the layer and in lstm_bench.cpp for the benchmark operators.
extern std::atomic<int> kernel_choice;
}  // namespace hdetach

namespace {

void check(bool ok, const char* what) { TORCH_CHECK(ok, "hdetach lstm_cpu: ", what); }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HDETACH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HDETACH_CLONES
#endif

// ---------------------------------------------------------------------------------------
// GEMM: row-major C (m x n) = alpha * op(A) op(B) + beta * C, through the column-major BLAS
// (C^T = op(B)^T op(A)^T), or ATen when the BLAS symbol is missing.

template <typename T>
void blas(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
          int ldb, T beta, T* c, int ldc);

template <>
void blas<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <>
void blas<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                  int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
bool have_blas() {
  return std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (have_blas<T>()) {
    blas<T>(trans_b ? 'T' : 'N', trans_a ? 'T' : 'N', (int)n, (int)m, (int)k, alpha, b,
            (int)ldb, a, (int)lda, beta, c, (int)ldc);
    return;
  }
  auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto A = trans_a ? at::from_blob(const_cast<T*>(a), {k, m}, {lda, 1}, options).t()
                   : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, options);
  auto B = trans_b ? at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, options).t()
                   : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, options);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, options);
  if (beta == T(0))
    C.zero_();  // BLAS semantics: beta = 0 ignores what C held (even NaN)
  else if (beta != T(1))
    C.mul_(beta);
  C.addmm_(A, B, 1, alpha);
}

// ---------------------------------------------------------------------------------------
// Pointwise math. exp_poly: Cephes' expf (range reduction to [-ln2/2, ln2/2], degree-5
// polynomial, 2^n through the exponent bits), branch-free so it vectorises; NaN propagates.

static inline __attribute__((always_inline)) float exp_poly(float x) {
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365447504019f ? -87.3365447504019f : x;
  float z = x * 1.44269504088896341f;
  float n = (z + 12582912.0f) - 12582912.0f;  // round to nearest, |z| < 2^22
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = ((int32_t)n + 127) << 23;
  float s;
  std::memcpy(&s, &e, sizeof(s));
  return p * s;
}

static inline __attribute__((always_inline)) float sigmoid_f(float x) {
  return 1.0f / (1.0f + exp_poly(-x));
}
static inline __attribute__((always_inline)) float tanh_f(float x) {
  return 2.0f / (1.0f + exp_poly(-2.0f * x)) - 1.0f;
}
static inline double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// One step's gates of nb rows: pre-activations in g (nb x 4H) become [i, f, g, o]; writes
// c_t, tanh(c_t) and h_t (nb x H each; c_out may alias c_prev).
HDETACH_CLONES
void step_forward_f(float* __restrict g, const float* c_prev, float* c_out,
                    float* __restrict tc_out, float* __restrict h_out, int64_t nb, int64_t H) {
  for (int64_t b = 0; b < nb; ++b) {
    float* gi = g + b * 4 * H;
    float* gf = gi + H;
    float* gg = gf + H;
    float* go = gg + H;
    const float* cp = c_prev + b * H;
    float* co = c_out + b * H;
    float* to = tc_out + b * H;
    float* ho = h_out + b * H;
    for (int64_t j = 0; j < H; ++j) {
      float i = sigmoid_f(gi[j]), f = sigmoid_f(gf[j]), u = tanh_f(gg[j]), o = sigmoid_f(go[j]);
      float c = f * cp[j] + i * u;
      float tc = tanh_f(c);
      gi[j] = i;
      gf[j] = f;
      gg[j] = u;
      go[j] = o;
      co[j] = c;
      to[j] = tc;
      ho[j] = o * tc;
    }
  }
}

void step_forward_d(double* g, const double* c_prev, double* c_out, double* tc_out,
                    double* h_out, int64_t nb, int64_t H) {
  for (int64_t b = 0; b < nb; ++b) {
    double* gi = g + b * 4 * H;
    double *gf = gi + H, *gg = gf + H, *go = gg + H;
    for (int64_t j = 0; j < H; ++j) {
      double i = sigmoid_d(gi[j]), f = sigmoid_d(gf[j]), u = std::tanh(gg[j]);
      double o = sigmoid_d(go[j]);
      double c = f * c_prev[b * H + j] + i * u;
      double tc = std::tanh(c);
      gi[j] = i;
      gf[j] = f;
      gg[j] = u;
      go[j] = o;
      c_out[b * H + j] = c;
      tc_out[b * H + j] = tc;
      h_out[b * H + j] = o * tc;
    }
  }
}

inline void step_forward(float* g, const float* cp, float* co, float* tc, float* h, int64_t nb,
                         int64_t H) {
  step_forward_f(g, cp, co, tc, h, nb, H);
}
inline void step_forward(double* g, const double* cp, double* co, double* tc, double* h,
                         int64_t nb, int64_t H) {
  step_forward_d(g, cp, co, tc, h, nb, H);
}

// One row of a step backward: the gate gradients dg (4H) from dh = dL/dh_t, and dc
// (dL/dc_t in, dL/dc_{t-1} out, times ck). A function of its own, with restrict pointers:
// written inline in the row loop below, GCC left it scalar.
template <typename T>
static inline __attribute__((always_inline)) void row_backward(
    const T* __restrict g, const T* __restrict tc, const T* __restrict cp,
    const T* __restrict dh, T* __restrict dc, T* __restrict dg, T ck, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = g[j], f = g[H + j], u = g[2 * H + j], o = g[3 * H + j], t = tc[j], h = dh[j];
    const T dcj = dc[j] + h * o * (T(1) - t * t);
    dg[3 * H + j] = h * t * (o - o * o);
    dg[j] = dcj * u * (i - i * i);
    dg[H + j] = dcj * cp[j] * (f - f * f);
    dg[2 * H + j] = dcj * i * (T(1) - u * u);
    dc[j] = dcj * f * ck;
  }
}

// One step backward for nb rows. dh = dy (+ rowscale[b] * rec[b] when have_rec): the loss
// gradient plus the recurrent one from step t+1. Updates dc in place to dL/dc_{t-1} (times
// ckeep[b] when given), writes the gate gradients dg (nb x 4H), and adds their column sums
// to db_acc and, for one input feature x, their x-weighted sums to dwi_acc (both 4H).
// Branch-free inner loops (dh goes through `scratch`), so they vectorise.
template <typename T>
static inline __attribute__((always_inline)) void step_backward_body(
    const T* __restrict dy, const T* __restrict rec, const T* __restrict rowscale,
    bool have_rec, const T* __restrict g, const T* __restrict tc, const T* __restrict c_prev,
    T* __restrict dc, const T* __restrict ckeep, T* __restrict dg, T* __restrict scratch,
    const T* __restrict x, T* __restrict db_acc, T* __restrict dwi_acc, int64_t nb,
    int64_t H) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < nb; ++b) {
    const T* dh = dy + b * H;
    if (have_rec) {
      const T s = rowscale[b];
      const T* recb = rec + b * H;
      const T* dyb = dy + b * H;
      for (int64_t j = 0; j < H; ++j) scratch[j] = dyb[j] + s * recb[j];
      dh = scratch;
    }
    const T ck = ckeep ? ckeep[b] : T(1);
    row_backward<T>(g + b * G, tc + b * H, c_prev + b * H, dh, dc + b * H, dg + b * G, ck, H);
    const T* drow = dg + b * G;
    for (int64_t j = 0; j < G; ++j) db_acc[j] += drow[j];
    if (x != nullptr) {
      const T xb = x[b];
      for (int64_t j = 0; j < G; ++j) dwi_acc[j] += drow[j] * xb;
    }
  }
}

HDETACH_CLONES
void step_backward_f(const float* dy, const float* rec, const float* rowscale, bool have_rec,
                     const float* g, const float* tc, const float* c_prev, float* dc,
                     const float* ckeep, float* dg, float* scratch, const float* x, float* db,
                     float* dwi, int64_t nb, int64_t H) {
  step_backward_body<float>(dy, rec, rowscale, have_rec, g, tc, c_prev, dc, ckeep, dg, scratch,
                            x, db, dwi, nb, H);
}

void step_backward(const float* dy, const float* rec, const float* rowscale, bool have_rec,
                   const float* g, const float* tc, const float* c_prev, float* dc,
                   const float* ckeep, float* dg, float* scratch, const float* x, float* db,
                   float* dwi, int64_t nb, int64_t H) {
  step_backward_f(dy, rec, rowscale, have_rec, g, tc, c_prev, dc, ckeep, dg, scratch, x, db, dwi,
                  nb, H);
}
void step_backward(const double* dy, const double* rec, const double* rowscale, bool have_rec,
                   const double* g, const double* tc, const double* c_prev, double* dc,
                   const double* ckeep, double* dg, double* scratch, const double* x, double* db,
                   double* dwi, int64_t nb, int64_t H) {
  step_backward_body<double>(dy, rec, rowscale, have_rec, g, tc, c_prev, dc, ckeep, dg, scratch,
                             x, db, dwi, nb, H);
}

// Input projection of one step when the input has one feature (an outer product: the
// degenerate GEMM is far slower): g (nb x 4H) = bias + x w^T. Shared by the training and the
// inference forward, so both give the same bits.
template <typename T>
void project_one(T* g, const T* x, const T* w, const T* bias, int64_t nb, int64_t G) {
  for (int64_t r = 0; r < nb; ++r)
    for (int64_t j = 0; j < G; ++j) g[r * G + j] = bias[j] + x[r] * w[j];
}

// ---------------------------------------------------------------------------------------
// Which kernels run a call's steps. "generic": the BLAS for the per-step products and the
// compiler-vectorised pointwise passes above (any CPU, fp32 and fp64). "avx2": the fp32
// kernels of lstm_avx2.h, chosen by default where the CPU has AVX2 and FMA but not AVX-512
// (there the BLAS's AVX-512 kernels run near the core's peak, so the generic path stays).
// `set_kernels` overrides it (trainables/kernels applies HDETACH_CPU_KERNELS through it).
enum KernelChoice : int { kAuto = 0, kGeneric = 1, kAvx2 = 2 };

using hdetach::kernel_choice;

bool avx2_can() {
#if HDETACH_AVX2
  return avx2::cpu_can();
#else
  return false;
#endif
}

bool avx2_chosen() {
  const int choice = kernel_choice.load(std::memory_order_relaxed);
  if (choice == kGeneric || !avx2_can()) return false;
#if HDETACH_AVX2
  return choice == kAvx2 || !__builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

// The kernels of one call (chosen once, so a call never mixes them), with member k's
// recurrent weights W_hh ready for the per-step products: packed for the AVX2 kernels, read
// in place by the BLAS.
template <typename T>
struct StepKernels {
  const T* w;
  int64_t G, H;
  bool avx2 = false;
  at::Tensor packed;  // per member: W^T (H x G) for forward, W (G x H) for backward
  const float *fwd = nullptr, *bwd = nullptr;
  int64_t fwd_size = 0, bwd_size = 0;

  StepKernels(const at::Tensor& w_hh, bool for_forward, bool for_backward)
      : w(w_hh.data_ptr<T>()), G(w_hh.size(1)), H(w_hh.size(2)) {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) {
      avx2 = avx2_chosen();
      if (!avx2) return;
      const int64_t K = w_hh.size(0);
      fwd_size = for_forward ? avx2::packed_size(H, G) : 0;
      bwd_size = for_backward ? avx2::packed_size(G, H) : 0;
      packed = at::empty({K * (fwd_size + bwd_size)}, w_hh.options());
      float* f = packed.data_ptr<float>();
      float* b = f + K * fwd_size;
      at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const float* wk = w + k * G * H;
          if (for_forward) avx2::pack(H, G, wk, 1, H, f + k * fwd_size);
          if (for_backward) avx2::pack(G, H, wk, H, 1, b + k * bwd_size);
        }
      });
      fwd = f;
      bwd = b;
    }
#endif
  }

  // g (nb x G) = in + h (nb x H) W_k^T, `in` being g itself unless given (the AVX2 kernels
  // only: the generic path has in == g); with `x` (one input feature: nb values) in is the
  // input projection bias + x w^T (w, bias: G values), as project_one.
  void forward(int64_t k, int64_t nb, const T* h, T* g, const T* x = nullptr,
               const T* w_in = nullptr, const T* bias = nullptr, const T* in = nullptr) const {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (avx2) {
        const float* panels = fwd + k * fwd_size;
        if (x == nullptr)
          return avx2::gemm_packed(nb, G, H, h, H, panels, g, G, avx2::kLoad, {}, in);
        return avx2::gemm_packed(nb, G, H, h, H, panels, g, G, avx2::kProject, {x, w_in, bias});
      }
    }
#endif
    check(in == nullptr || in == g, "the generic forward product accumulates in place");
    if (x != nullptr) project_one(g, x, w_in, bias, nb, G);
    gemm<T>(false, true, nb, G, H, T(1), h, H, w + k * G * H, H, T(1), g, G);
  }

  // rec (nb x H) = dg (nb x G) W_k
  void backward(int64_t k, int64_t nb, const T* dg, T* rec) const {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (avx2) return avx2::gemm_packed(nb, H, G, dg, G, bwd + k * bwd_size, rec, H, avx2::kZero);
    }
#endif
    gemm<T>(false, false, nb, H, G, T(1), dg, G, w + k * G * H, H, T(0), rec, H);
  }

  // c (m x n) += at^T b, at (k x m) and b (k x n) row-major: the weight gradients.
  void weight_grad(int64_t m, int64_t n, int64_t k, const T* at, int64_t lda, const T* b,
                   int64_t ldb, T* c, int64_t ldc) const {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (avx2) return avx2::gemm_tn(m, n, k, at, lda, b, ldb, c, ldc);
    }
#endif
    gemm<T>(true, false, m, n, k, T(1), at, lda, b, ldb, T(1), c, ldc);
  }

  // The gates in g become activations in place; with `keep` (streaming(): AVX2 only) they
  // are also streamed there, and tc_out is streamed.
  void pointwise_forward(T* g, T* keep, const T* c_prev, T* c_out, T* tc_out, T* h_out,
                         int64_t nb) const {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (avx2) return avx2::step_forward(g, keep, c_prev, c_out, tc_out, h_out, nb, H);
    }
#endif
    check(keep == nullptr, "the generic pointwise pass works in place");
    step_forward(g, c_prev, c_out, tc_out, h_out, nb, H);
  }

  // Whether the training forward can keep each step's gates in a scratch block and stream
  // them (and tanh(c)) to the saved buffers (AVX2, H % 8 == 0, aligned buffers).
  bool streaming(const T* gates, const T* tanh_c) const {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) return avx2 && avx2::can_stream(gates, tanh_c, H);
#endif
    return false;
  }

  void fence() const {
#if HDETACH_AVX2
    if (avx2) avx2::stream_fence();
#endif
  }

  void pointwise_backward(const T* dy, const T* rec, const T* rowscale, bool have_rec,
                          const T* g, const T* tc, const T* c_prev, T* dc, const T* ckeep,
                          T* dg, T* scratch, const T* x, T* db, T* dwi, int64_t nb) const {
#if HDETACH_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (avx2)
        return avx2::step_backward(dy, rec, rowscale, have_rec, g, tc, c_prev, dc, ckeep, dg, x,
                                   db, dwi, nb, H);
    }
#endif
    step_backward(dy, rec, rowscale, have_rec, g, tc, c_prev, dc, ckeep, dg, scratch, x, db, dwi,
                  nb, H);
  }
};

// ---------------------------------------------------------------------------------------
// Work items: (member k, rows b0 .. b0 + nb) of the batch.

struct Item {
  int64_t k, b0, nb;
};

std::vector<Item> items(int64_t K, int64_t B) {
  int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t chunks = std::min<int64_t>(B, std::max<int64_t>(1, (threads + K - 1) / K));
  int64_t size = (B + chunks - 1) / chunks;
  std::vector<Item> out;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t b0 = 0; b0 < B; b0 += size) out.push_back({k, b0, std::min(size, B - b0)});
  return out;
}

// Denormal floats (gradients decaying over hundreds of steps) cost x86 cores 10-100x per
// operation: each thread flushes them to zero (FTZ/DAZ) while it runs an item, and restores
// its previous mode after, so nothing outside the kernel changes.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

template <typename F>
void for_items(const std::vector<Item>& work, F fn) {
  at::parallel_for(0, (int64_t)work.size(), 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    for (int64_t w = begin; w < end; ++w) fn(work[w]);
  });
}

// Ask for the n values at p to be brought into cache (for writing when `write`). Each step
// touches a block of the whole-sequence buffers that no hardware prefetcher predicts (the
// blocks of consecutive steps lie B rows apart), so the loops fetch the next step's blocks
// while this step's GEMMs run: the pointwise passes then read from cache, not memory.
template <typename T>
inline void prefetch(const T* p, int64_t n, bool write) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * (int64_t)sizeof(T);
  if (write)
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 1, 3);
  else
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
}

// Keep factors of member k at step t for the rows of an item: nullptr (all kept), or a
// pointer to nb floats/doubles. Per-step masks (K, T) are expanded into `scratch`.
template <typename T>
const T* keep_rows(const at::Tensor& keep, int64_t k, int64_t t, const Item& it, T* scratch) {
  if (!keep.defined()) return nullptr;
  const T* base = keep.data_ptr<T>();
  int64_t Tn = keep.size(1);
  if (keep.dim() == 2) {
    std::fill(scratch, scratch + it.nb, base[k * Tn + t]);
    return scratch;
  }
  return base + (k * Tn + t) * keep.size(2) + it.b0;
}

}  // namespace
