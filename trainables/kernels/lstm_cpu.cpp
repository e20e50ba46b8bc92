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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

std::atomic<int> kernel_choice{kAuto};

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

// ---------------------------------------------------------------------------------------
// Forward

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& bias,
                                     bool train, int64_t keep_steps) {
  const int64_t Tn = x.size(0), K = x.size(1), B = x.size(2), I = x.size(3);
  const int64_t H = w_hh.size(2), G = 4 * H;
  auto opt = x.options();
  at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous()
                                                     : at::zeros({K, G}, opt);
  const auto work = items(K, B);
  at::Tensor hT = at::empty({K, B, H}, opt), cT = at::empty({K, B, H}, opt);
  const StepKernels<T> kernels(w_hh, true, false);
  const T* wih = w_ih.data_ptr<T>();
  const T* xb = x.data_ptr<T>();
  const T* bb = b.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const T* c0p = c0.data_ptr<T>();
  auto xrow = [&](int64_t t, int64_t k, int64_t b0) { return (t * K + k) * B + b0; };

  if (train) {
    // The input projections x W_ih^T + b: for one input feature each step projects its own
    // rows, in cache, just before its GEMM; otherwise one GEMM over all steps.
    at::Tensor gates =
        I == 1 ? at::empty({K, Tn, B, G}, opt)
               : at::matmul(x.permute({1, 0, 2, 3}), w_ih.transpose(1, 2).unsqueeze(1))
                     .add_(b.view({K, 1, 1, G}))
                     .contiguous();
    at::Tensor cells = at::empty({K, Tn, B, H}, opt), tanh_c = at::empty_like(cells);
    at::Tensor y = at::empty({Tn, K, B, H}, opt);
    T *gp = gates.data_ptr<T>(), *cp = cells.data_ptr<T>(), *tp = tanh_c.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    // Streaming (AVX2): each step works in a scratch block that stays in cache, and the
    // gates and tanh(c) it keeps for backward go to memory without being read first.
    const bool stream = kernels.streaming(gp, tp);
    for_items(work, [&](const Item& it) {
      const int64_t k = it.k, nb = it.nb;
      const T* h_prev = h0p + (k * B + it.b0) * H;
      const T* c_prev = c0p + (k * B + it.b0) * H;
      at::Tensor scratch = stream ? at::empty({nb * G}, opt) : at::Tensor();
      T* block = stream ? scratch.data_ptr<T>() : nullptr;
      for (int64_t t = 0; t < Tn; ++t) {
        const int64_t row = (k * Tn + t) * B + it.b0, out = xrow(t, k, it.b0);
        T* keep = gp + row * G;  // the step's gates, as backward reads them
        T* g = stream ? block : keep;
        if (!stream && t + 1 < Tn) {  // the next step's blocks, while this step's GEMM runs
          prefetch(keep + B * G, nb * G, I == 1);
          prefetch(cp + (row + B) * H, nb * H, true);
          prefetch(tp + (row + B) * H, nb * H, true);
          prefetch(yp + (out + K * B) * H, nb * H, true);
        }
        if (I == 1)  // the input projection, bias + x w_ih^T, with the recurrent product
          kernels.forward(k, nb, h_prev, g, xb + out, wih + k * G, bb + k * G);
        else
          kernels.forward(k, nb, h_prev, g, nullptr, nullptr, nullptr, keep);
        kernels.pointwise_forward(g, stream ? keep : nullptr, c_prev, cp + row * H,
                                  tp + row * H, yp + out * H, nb);
        h_prev = yp + out * H;
        c_prev = cp + row * H;
      }
      kernels.fence();
      std::memcpy(hT.data_ptr<T>() + (k * B + it.b0) * H, h_prev, nb * H * sizeof(T));
      std::memcpy(cT.data_ptr<T>() + (k * B + it.b0) * H, c_prev, nb * H * sizeof(T));
    });
    return {y, hT, cT, gates, cells, tanh_c};
  }

  // Inference: per-step buffers only, and only the last keep_steps outputs.
  const int64_t first_kept = Tn - keep_steps;
  at::Tensor y = at::empty({keep_steps, K, B, H}, opt);
  T* yp = y.data_ptr<T>();
  for_items(work, [&](const Item& it) {
    const int64_t k = it.k, nb = it.nb;
    // Aligned like the training buffers (the BLAS may pick its kernel by alignment).
    at::Tensor buf = at::empty({nb * (G + 3 * H)}, opt);
    T *g = buf.data_ptr<T>(), *c = g + nb * G, *tc = c + nb * H, *h = tc + nb * H;
    std::memcpy(h, h0p + (k * B + it.b0) * H, nb * H * sizeof(T));
    std::memcpy(c, c0p + (k * B + it.b0) * H, nb * H * sizeof(T));
    const T* wk = wih + k * G * I;
    for (int64_t t = 0; t < Tn; ++t) {
      const T* xt = xb + xrow(t, k, it.b0) * I;
      if (I == 1) {  // as in training, so both give the same bits
        kernels.forward(k, nb, h, g, xt, wk, bb + k * G);
      } else {
        for (int64_t r = 0; r < nb; ++r) std::memcpy(g + r * G, bb + k * G, G * sizeof(T));
        gemm<T>(false, true, nb, G, I, T(1), xt, I, wk, I, T(1), g, G);
        kernels.forward(k, nb, h, g);
      }
      T* out = t >= first_kept ? yp + (((t - first_kept) * K + k) * B + it.b0) * H : h;
      kernels.pointwise_forward(g, nullptr, c, c, tc, out, nb);
      if (out != h) std::memcpy(h, out, nb * H * sizeof(T));
    }
    std::memcpy(hT.data_ptr<T>() + (k * B + it.b0) * H, h, nb * H * sizeof(T));
    std::memcpy(cT.data_ptr<T>() + (k * B + it.b0) * H, c, nb * H * sizeof(T));
  });
  at::Tensor none = at::empty({0}, opt);
  return {y, hT, cT, none, none, none};
}

std::vector<at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& bias,
                                     bool train, int64_t keep_steps) {
  check(x.dim() == 4 && h0.dim() == 3 && w_hh.dim() == 3, "x (T,K,B,I), h0 (K,B,H), w (K,4H,.)");
  check(keep_steps >= 1 && keep_steps <= x.size(0), "keep_steps must be in [1, T]");
  auto xc = x.contiguous(), h0c = h0.contiguous(), c0c = c0.contiguous();
  auto wi = w_ih.contiguous(), wh = w_hh.contiguous();
  if (x.scalar_type() == at::kFloat)
    return forward_impl<float>(xc, h0c, c0c, wi, wh, bias, train, keep_steps);
  check(x.scalar_type() == at::kDouble, "float32 or float64 only");
  return forward_impl<double>(xc, h0c, c0c, wi, wh, bias, train, keep_steps);
}

// ---------------------------------------------------------------------------------------
// Backward

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dy, const at::Tensor& dhT,
                                      const at::Tensor& dcT, const at::Tensor& x,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const at::Tensor& gates, const at::Tensor& cells,
                                      const at::Tensor& tanh_c, const at::Tensor& y,
                                      const at::Tensor& h_keep, const at::Tensor& c_keep,
                                      double h_scale, bool need_dx, bool has_bias) {
  const int64_t Tn = x.size(0), K = x.size(1), B = x.size(2), I = x.size(3);
  const int64_t H = w_hh.size(2), G = 4 * H;
  const int64_t first_dy = Tn - dy.size(0);  // dy holds the last steps only (zero before)
  auto opt = x.options();
  at::Tensor dh0 = at::empty({K, B, H}, opt), dc0 = dcT.clone();
  at::Tensor dx = need_dx ? at::empty({Tn, K, B, I}, opt) : at::Tensor();
  const T* wih = w_ih.data_ptr<T>();
  const StepKernels<T> kernels(w_hh, false, true);
  const T *gp = gates.data_ptr<T>(), *cp = cells.data_ptr<T>(), *tp = tanh_c.data_ptr<T>();
  const T *dyp = dy.data_ptr<T>(), *dhTp = dhT.data_ptr<T>(), *c0p = c0.data_ptr<T>();
  const T *xp = x.data_ptr<T>(), *yp = y.data_ptr<T>(), *h0p = h0.data_ptr<T>();
  T *dcp = dc0.data_ptr<T>(), *dh0p = dh0.data_ptr<T>();
  T* dxp = need_dx ? dx.data_ptr<T>() : nullptr;
  const T scale = T(h_scale);

  // One fused recursion per item, right after each step's gate gradients dG (nb x 4H, in
  // cache): dh_{t-1} = scale * keep * dG W_hh (skipped when blocked), and the weight
  // gradients folded in as they come: dW_hh += dG^T h_{t-1}, dW_ih += dG^T x_t, db += sum dG,
  // dx_t = dG W_ih. Per-item accumulators are summed per member after (in item order).
  const auto work = items(K, B);
  const int64_t n_work = (int64_t)work.size();
  at::Tensor acc_hh = at::zeros({n_work, G, H}, opt), acc_ih = at::zeros({n_work, G, I}, opt);
  at::Tensor acc_b = at::zeros({n_work, G}, opt);
  T *acc_hhp = acc_hh.data_ptr<T>(), *acc_ihp = acc_ih.data_ptr<T>(), *acc_bp = acc_b.data_ptr<T>();
  for_items(work, [&](const Item& it) {
    const int64_t k = it.k, nb = it.nb, w = &it - work.data();
    std::vector<T> rec(nb * H, T(0)), rowscale(nb, T(0)), dy_last(nb * H), keep_h(nb), keep_c(nb);
    std::vector<T> scratch(H), zeros(nb * H, T(0));
    at::Tensor dg_buf = at::empty({nb * G}, opt);  // aligned, reused every step
    T* dg = dg_buf.data_ptr<T>();
    T *dwh = acc_hhp + w * G * H, *dwi = acc_ihp + w * G * I, *db = acc_bp + w * G;
    bool have_rec = false;
    T* dc = dcp + (k * B + it.b0) * H;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const int64_t row = (k * Tn + t) * B + it.b0, out = (t * K + k) * B + it.b0;
      const T* dyt =
          t >= first_dy ? dyp + (((t - first_dy) * K + k) * B + it.b0) * H : zeros.data();
      if (t == Tn - 1) {  // dL/dh_T from the caller joins the loss gradient of the last step
        const T* dhl = dhTp + (k * B + it.b0) * H;
        for (int64_t e = 0; e < nb * H; ++e) dy_last[e] = dyt[e] + dhl[e];
        dyt = dy_last.data();
      }
      const T* c_prev = t > 0 ? cp + (row - B) * H : c0p + (k * B + it.b0) * H;
      const T* h_prev = t > 0 ? yp + (out - K * B) * H : h0p + (k * B + it.b0) * H;
      const T* ck = keep_rows<T>(c_keep, k, t, it, keep_c.data());
      kernels.pointwise_backward(dyt, rec.data(), rowscale.data(), have_rec, gp + row * G,
                                 tp + row * H, c_prev, dc, ck, dg, scratch.data(),
                                 I == 1 ? xp + out : nullptr, db, dwi, nb);
      // dL/dh_{t-1} through the recurrence, skipped outright when h_{t-1} was blocked for
      // every row of the item.
      if (t > 0) {  // the previous step's blocks, while this step's GEMMs run
        prefetch(gp + (row - B) * G, nb * G, false);
        prefetch(tp + (row - B) * H, nb * H, false);
        if (t > 1) prefetch(cp + (row - 2 * B) * H, nb * H, false);
        if (t > 1) prefetch(yp + (out - 2 * K * B) * H, nb * H, false);
        if (t - 1 >= first_dy) prefetch(dyp + (((t - 1 - first_dy) * K + k) * B + it.b0) * H, nb * H, false);
      }
      const T* hk = keep_rows<T>(h_keep, k, t, it, keep_h.data());
      have_rec = true;
      if (hk != nullptr) {
        bool any = false;
        for (int64_t r = 0; r < nb; ++r) any |= hk[r] != T(0);
        have_rec = any;
      }
      if (have_rec) {
        for (int64_t r = 0; r < nb; ++r) rowscale[r] = scale * (hk ? hk[r] : T(1));
        kernels.backward(k, nb, dg, rec.data());
      }
      kernels.weight_grad(G, H, nb, dg, G, h_prev, H, dwh, H);
      if (I > 1) kernels.weight_grad(G, I, nb, dg, G, xp + out * I, I, dwi, I);
      if (need_dx)
        gemm<T>(false, false, nb, I, G, T(1), dg, G, wih + k * G * I, I, T(0), dxp + out * I, I);
    }
    T* d0 = dh0p + (k * B + it.b0) * H;
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t j = 0; j < H; ++j) d0[r * H + j] = have_rec ? rowscale[r] * rec[r * H + j] : T(0);
  });

  at::Tensor dw_hh = at::zeros({K, G, H}, opt), dw_ih = at::zeros({K, G, I}, opt);
  at::Tensor db = at::zeros({K, G}, opt);
  for (int64_t w = 0; w < n_work; ++w) {
    const int64_t k = work[w].k;
    dw_hh[k].add_(acc_hh[w]);
    dw_ih[k].add_(acc_ih[w]);
    db[k].add_(acc_b[w]);
  }
  return {dx, dh0, dc0, dw_ih, dw_hh, has_bias ? db : at::Tensor()};
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& dy, const at::Tensor& dhT,
                                      const at::Tensor& dcT, const at::Tensor& x,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const at::Tensor& gates, const at::Tensor& cells,
                                      const at::Tensor& tanh_c, const at::Tensor& y,
                                      const c10::optional<at::Tensor>& h_keep,
                                      const c10::optional<at::Tensor>& c_keep, double h_scale,
                                      bool need_dx, bool has_bias) {
  auto def = [](const c10::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
  };
  auto hk = def(h_keep), ck = def(c_keep);
  for (const auto& m : {hk, ck})
    check(!m.defined() || m.scalar_type() == x.scalar_type(), "keep masks match x's dtype");
  auto args = std::make_tuple(dy.contiguous(), dhT.contiguous(), dcT.contiguous(), x.contiguous(),
                              h0.contiguous(), c0.contiguous(), w_ih.contiguous(),
                              w_hh.contiguous());
  auto [a, b, c, d, e, f, g, h] = args;
  if (x.scalar_type() == at::kFloat)
    return backward_impl<float>(a, b, c, d, e, f, g, h, gates, cells, tanh_c, y, hk, ck, h_scale,
                                need_dx, has_bias);
  return backward_impl<double>(a, b, c, d, e, f, g, h, gates, cells, tanh_c, y, hk, ck, h_scale,
                               need_dx, has_bias);
}

// The GEMMs of one forward and backward, with the same shapes, work split and buffers as the
// layer, and nothing else: the bound the fused layer is measured against
// (benchmarks/engine.py). Each product reads and writes where the layer's does: the forward
// into the saved gates (or, streaming, a scratch block), the backward from a per-item block of
// gate gradients and the saved outputs.
template <typename T>
void gemm_bound_impl(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                     const at::Tensor& h_keep) {
  const int64_t Tn = x.size(0), K = x.size(1), B = x.size(2), I = x.size(3);
  const int64_t H = w_hh.size(2), G = 4 * H;
  auto opt = x.options();
  // Allocated as the layer allocates its buffers (uninitialised: the GEMM timings do not
  // depend on the values, denormals are flushed), so the bound is not padded by zero-filling.
  at::Tensor gates = at::empty({K, Tn, B, G}, opt), hs = at::empty({K, Tn, B, H}, opt);
  T *gp = gates.data_ptr<T>(), *hp = hs.data_ptr<T>();
  const auto work = items(K, B);
  const StepKernels<T> kernels(w_hh, true, true);
  const bool stream = kernels.streaming(gp, hp);  // hs stands in for tanh_c (same alignment)
  // The AVX2 tiles start from the input projection (one input feature), as the layer's do;
  // the generic path adds it before its GEMM, outside the bound.
  const bool project = kernels.avx2 && I == 1;
  const T *xp = x.data_ptr<T>(), *wih = w_ih.data_ptr<T>();
  at::Tensor bias = at::zeros({K, G}, opt);
  for_items(work, [&](const Item& it) {
    at::Tensor scratch = at::empty({it.nb * G}, opt);
    T* block = scratch.data_ptr<T>();
    const T* b = bias.data_ptr<T>() + it.k * G;
    for (int64_t t = 0; t < Tn; ++t) {
      const int64_t row = (it.k * Tn + t) * B + it.b0, in = (t * K + it.k) * B + it.b0;
      T* g = stream ? block : gp + row * G;
      if (project)
        kernels.forward(it.k, it.nb, hp + row * H, g, xp + in, wih + it.k * G, b);
      else
        kernels.forward(it.k, it.nb, hp + row * H, g);
    }
  });
  for_items(work, [&](const Item& it) {
    at::Tensor buf = at::zeros({it.nb * (G + H + 1) + G * H + G * I}, opt);
    T *dg = buf.data_ptr<T>(), *rec = dg + it.nb * G, *keep = rec + it.nb * H;
    T *dwh = keep + it.nb, *dwi = dwh + G * H;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const int64_t row = (it.k * Tn + t) * B + it.b0;
      const T* hk = keep_rows<T>(h_keep, it.k, t, it, keep);
      if (hk == nullptr || hk[0] != T(0)) kernels.backward(it.k, it.nb, dg, rec);
      kernels.weight_grad(G, H, it.nb, dg, G, hp + row * H, H, dwh, H);
      if (I > 1)
        kernels.weight_grad(G, I, it.nb, dg, G, xp + ((t * K + it.k) * B + it.b0) * I, I, dwi, I);
    }
  });
}

void gemm_bound(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                const c10::optional<at::Tensor>& h_keep) {
  at::Tensor hk = h_keep.has_value() && h_keep->defined() ? h_keep->contiguous() : at::Tensor();
  if (x.scalar_type() == at::kFloat)
    gemm_bound_impl<float>(x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), hk);
  else
    gemm_bound_impl<double>(x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), hk);
}

bool blas_linked() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Which kernels run the fp32 steps: "auto" (AVX2 where the CPU has it and lacks AVX-512),
// "avx2" or "generic"; "" only asks. Returns the kernels now in use, "avx2" or "generic".
std::string set_kernels(c10::string_view kind) {
  if (kind == "auto") {
    kernel_choice = kAuto;
  } else if (kind == "generic") {
    kernel_choice = kGeneric;
  } else if (kind == "avx2") {
    check(avx2_can(), "the avx2 kernels need an x86-64 CPU with AVX2 and FMA (and GCC)");
    kernel_choice = kAvx2;
  } else {
    check(kind.empty(), "set_kernels takes auto, avx2, generic or '' (ask only)");
  }
  return avx2_chosen() ? "avx2" : "generic";
}

// The AVX2 GEMM tiles on their own, for the tests: "packed" gives c + a (m x k) @ b (k x n)
// through the packed path (c ignored unless `accumulate`), "tn" c + a^T b with a (k x m),
// "project" x w^T + bias + a @ b with x = c[:, 0], w = c[0, 1:], bias = c[1, 1:] (c: m x n+1).
at::Tensor avx2_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                     c10::string_view kind, bool accumulate) {
  check(avx2_can(), "the avx2 kernels need an x86-64 CPU with AVX2 and FMA (and GCC)");
  check(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
            c.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 && c.dim() == 2,
        "avx2_gemm takes 2-d float32 tensors");
#if HDETACH_AVX2
  auto A = a.contiguous(), Bm = b.contiguous(), Cin = c.contiguous();
  const int64_t k = Bm.size(0), n = Bm.size(1);
  const int64_t m = kind == "tn" ? A.size(1) : A.size(0);
  check(A.size(kind == "tn" ? 0 : 1) == k, "a and b disagree on k");
  at::Tensor C = kind == "project" ? at::empty({m, n}, A.options()) : Cin.clone();
  if (kind == "tn") {
    check(accumulate && C.size(0) == m && C.size(1) == n, "tn: c (m, n), accumulating");
    avx2::gemm_tn(m, n, k, A.data_ptr<float>(), m, Bm.data_ptr<float>(), n, C.data_ptr<float>(),
                  n);
    return C;
  }
  at::Tensor packed = at::empty({avx2::packed_size(k, n)}, A.options());
  avx2::pack(k, n, Bm.data_ptr<float>(), n, 1, packed.data_ptr<float>());
  if (kind == "packed") {
    check(C.size(0) == m && C.size(1) == n, "packed: c (m, n)");
    avx2::gemm_packed(m, n, k, A.data_ptr<float>(), k, packed.data_ptr<float>(),
                      C.data_ptr<float>(), n, accumulate ? avx2::kLoad : avx2::kZero);
    return C;
  }
  check(kind == "project" && Cin.size(0) == m && Cin.size(1) == n + 1 && m >= 2,
        "project: c (m, n + 1), m >= 2");
  at::Tensor xs = Cin.select(1, 0).contiguous(), w = Cin[0].slice(0, 1).contiguous();
  at::Tensor bias = Cin[1].slice(0, 1).contiguous();
  avx2::gemm_packed(m, n, k, A.data_ptr<float>(), k, packed.data_ptr<float>(),
                    C.data_ptr<float>(), n, avx2::kProject,
                    {xs.data_ptr<float>(), w.data_ptr<float>(), bias.data_ptr<float>()});
  return C;
#else
  return c;
#endif
}

// ---------------------------------------------------------------------------------------
// The member head (trainables.engine.MemberLinear): K small linear maps (C outputs, C small:
// the task's classes), one per member, over activations laid out (L, K, B, H) as the layer
// returns them. As batched GEMMs it needs the activations copied into (K, L*B, H) and its
// weight gradient runs the BLAS's slow skinny orientation: 140 ms of a 605 ms step for 16
// copying members. Here: one pass over the rows each way, in place (57 ms).

// out[r] = b + W x[r] for n rows (C x H weights): C dot products per row, four rows at a time
// (four independent FMA chains sharing each load of W).
template <typename T>
inline __attribute__((always_inline)) void head_rows_forward_body(const T* x, const T* w,
                                                                  const T* b, T* out, int64_t n,
                                                                  int64_t H, int64_t C) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) {
    const T *x0 = x + r * H, *x1 = x0 + H, *x2 = x1 + H, *x3 = x2 + H;
    for (int64_t c = 0; c < C; ++c) {
      const T* wc = w + c * H;
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t h = 0; h < H; ++h) {
        a0 += x0[h] * wc[h];
        a1 += x1[h] * wc[h];
        a2 += x2[h] * wc[h];
        a3 += x3[h] * wc[h];
      }
      out[r * C + c] = b[c] + a0;
      out[(r + 1) * C + c] = b[c] + a1;
      out[(r + 2) * C + c] = b[c] + a2;
      out[(r + 3) * C + c] = b[c] + a3;
    }
  }
  for (; r < n; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const T *xr = x + r * H, *wc = w + c * H;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t h = 0; h < H; ++h) acc += xr[h] * wc[h];
      out[r * C + c] = b[c] + acc;
    }
}

// A lane of the head's backward: 32 bytes of T (GCC vector extension; unaligned loads and
// stores through it: the widest vector of AVX2, two of SSE2's in the baseline clone), or one T
// for the last columns. Taken as a member typedef: a template argument would drop `aligned`.
template <typename T, bool Vector>
struct Lane {
  typedef T type __attribute__((vector_size(32), aligned(sizeof(T))));
};
template <typename T>
struct Lane<T, false> {
  typedef T type;
};

// NV lanes from column h0 of the head's backward, accumulators in registers: dx[r] = W^T g[r]
// for the n rows (when dx), and dw += g^T x over them.
template <typename T, bool Vector, int NV>
inline __attribute__((always_inline)) void head_cols_backward(const T* g, const T* x,
                                                              const T* w, T* dx, T* dw,
                                                              int64_t n, int64_t H, int64_t C,
                                                              int64_t h0) {
  using V = typename Lane<T, Vector>::type;
  constexpr int L = sizeof(V) / sizeof(T);
  if (dx != nullptr)
    for (int64_t r = 0; r < n; ++r) {
      V acc[NV];
      const T g0 = g[r * C];
      for (int v = 0; v < NV; ++v) acc[v] = g0 * *(const V*)(w + h0 + v * L);
      for (int64_t c = 1; c < C; ++c) {
        const T gc = g[r * C + c], *wc = w + c * H + h0;
        for (int v = 0; v < NV; ++v) acc[v] += gc * *(const V*)(wc + v * L);
      }
      for (int v = 0; v < NV; ++v) *(V*)(dx + r * H + h0 + v * L) = acc[v];
    }
  for (int64_t c = 0; c < C; ++c) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = *(const V*)(dw + c * H + h0 + v * L);
    for (int64_t r = 0; r < n; ++r) {
      const T gc = g[r * C + c], *xr = x + r * H + h0;
      for (int v = 0; v < NV; ++v) acc[v] += gc * *(const V*)(xr + v * L);
    }
    for (int v = 0; v < NV; ++v) *(V*)(dw + c * H + h0 + v * L) = acc[v];
  }
}

// For n rows (taken 32 at a time, so their x stays in L1 over the C columns of the weight
// gradient): dx[r] = W^T g[r] (when dx), dw += g^T x and db += sum g, rows in order.
template <typename T>
inline __attribute__((always_inline)) void head_rows_backward_body(const T* g, const T* x,
                                                                   const T* w, T* dx, T* dw,
                                                                   T* db, int64_t n, int64_t H,
                                                                   int64_t C) {
  constexpr int64_t kRows = 32;
  for (int64_t r0 = 0; r0 < n; r0 += kRows) {
    const int64_t m = std::min(kRows, n - r0);
    const T *gr = g + r0 * C, *xr = x + r0 * H;
    T* dxr = dx != nullptr ? dx + r0 * H : nullptr;
    constexpr int64_t L = 32 / sizeof(T);
    int64_t h0 = 0;
    for (; h0 + 4 * L <= H; h0 += 4 * L)
      head_cols_backward<T, true, 4>(gr, xr, w, dxr, dw, m, H, C, h0);
    for (; h0 + L <= H; h0 += L) head_cols_backward<T, true, 1>(gr, xr, w, dxr, dw, m, H, C, h0);
    for (; h0 < H; ++h0) head_cols_backward<T, false, 1>(gr, xr, w, dxr, dw, m, H, C, h0);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < C; ++c) db[c] += gr[r * C + c];
  }
}

// Compiled once per instruction set (target_clones), as the pointwise passes.
#define HDETACH_HEAD_ROWS(T)                                                                  \
  HDETACH_CLONES void head_rows_forward(const T* x, const T* w, const T* b, T* out, int64_t n, \
                                        int64_t H, int64_t C) {                               \
    head_rows_forward_body<T>(x, w, b, out, n, H, C);                                         \
  }                                                                                           \
  HDETACH_CLONES void head_rows_backward(const T* g, const T* x, const T* w, T* dx, T* dw,     \
                                         T* db, int64_t n, int64_t H, int64_t C) {            \
    head_rows_backward_body<T>(g, x, w, dx, dw, db, n, H, C);                                 \
  }
HDETACH_HEAD_ROWS(float)
HDETACH_HEAD_ROWS(double)
#undef HDETACH_HEAD_ROWS

// Work units of the member head: (member, chunk of the leading index), their number fixed by
// the shape alone, so the weight gradient's partial sums (one per unit, summed in unit order)
// give the same bits for any thread count.
constexpr int64_t kHeadChunks = 16;

at::Tensor member_head_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  check(x.dim() == 4 && w.dim() == 3 && b.dim() == 2,
        "member head: x (L,K,B,H), w (K,C,H), b (K,C)");
  const int64_t L = x.size(0), K = x.size(1), B = x.size(2), H = x.size(3), C = w.size(1);
  check(w.size(0) == K && w.size(2) == H && b.size(0) == K && b.size(1) == C,
        "member head: weights match x");
  auto xc = x.contiguous(), wc = w.contiguous(), bc = b.contiguous();
  at::Tensor out = at::empty({L, K, B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "member_head_forward", [&] {
    const scalar_t *xp = xc.data_ptr<scalar_t>(), *wp = wc.data_ptr<scalar_t>();
    const scalar_t* bp = bc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, L * K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t lk = begin; lk < end; ++lk) {
        const int64_t k = lk % K;
        head_rows_forward(xp + lk * B * H, wp + k * C * H, bp + k * C, op + lk * B * C, B, H,
                          C);
      }
    });
  });
  return out;
}

std::vector<at::Tensor> member_head_backward(const at::Tensor& g, const at::Tensor& x,
                                             const at::Tensor& w, bool need_dx) {
  check(x.dim() == 4 && w.dim() == 3, "member head: x (L,K,B,H), w (K,C,H)");
  const int64_t L = x.size(0), K = x.size(1), B = x.size(2), H = x.size(3), C = w.size(1);
  check(g.dim() == 4 && g.size(0) == L && g.size(1) == K && g.size(2) == B && g.size(3) == C,
        "member head: g (L,K,B,C)");
  auto gc = g.contiguous(), xc = x.contiguous(), wc = w.contiguous();
  const int64_t chunks = std::min(L, kHeadChunks), per = (L + chunks - 1) / chunks;
  at::Tensor dx = need_dx ? at::empty_like(xc) : at::Tensor();
  at::Tensor part_w = at::zeros({K, chunks, C, H}, x.options());
  at::Tensor part_b = at::zeros({K, chunks, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "member_head_backward", [&] {
    const scalar_t *gp = gc.data_ptr<scalar_t>(), *xp = xc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    scalar_t* dxp = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
    scalar_t *pw = part_w.data_ptr<scalar_t>(), *pb = part_b.data_ptr<scalar_t>();
    at::parallel_for(0, K * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t k = u / chunks, l_end = std::min(L, (u % chunks + 1) * per);
        for (int64_t l = u % chunks * per; l < l_end; ++l) {
          const int64_t row = (l * K + k) * B;
          head_rows_backward(gp + row * C, xp + row * H, wp + k * C * H,
                             dxp ? dxp + row * H : nullptr, pw + u * C * H, pb + u * C, B, H, C);
        }
      }
    });
  });
  // The units' partial sums, in unit order.
  at::Tensor dw = part_w.select(1, 0).clone(), db = part_b.select(1, 0).clone();
  for (int64_t u = 1; u < chunks; ++u) {
    dw.add_(part_w.select(1, u));
    db.add_(part_b.select(1, u));
  }
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY(hdetach, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, "
      "bool train, int keep_steps) -> Tensor[]");
  m.def(
      "lstm_backward(Tensor dy, Tensor dhT, Tensor dcT, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor gates, Tensor cells, Tensor tanh_c, Tensor y, "
      "Tensor? h_keep, Tensor? c_keep, float h_scale, bool need_dx, bool has_bias) -> Tensor[]");
  m.def("gemm_bound(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? h_keep) -> ()");
  m.def("blas_linked() -> bool", &blas_linked);
  m.def("set_kernels(str kind) -> str", &set_kernels);
  m.def("avx2_gemm(Tensor a, Tensor b, Tensor c, str kind, bool accumulate) -> Tensor",
        &avx2_gemm);
  m.def("member_head_forward(Tensor x, Tensor w, Tensor b) -> Tensor");
  m.def("member_head_backward(Tensor g, Tensor x, Tensor w, bool need_dx) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hdetach, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("gemm_bound", &gemm_bound);
  m.impl("member_head_forward", &member_head_forward);
  m.impl("member_head_backward", &member_head_backward);
}
