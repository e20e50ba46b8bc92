// The member head on the CPU (trainables.engine.MemberLinear).
#include "lstm_cpu_common.h"
#include "lstm_ops.h"

namespace {

// ---------------------------------------------------------------------------------------
// The member head (trainables.engine.MemberLinear): K small linear maps (C outputs, C small:
// the task's classes), one per member, over activations laid out (L, K, B, H) as the layer
// returns them. As batched GEMMs it needs the activations copied into (K, L*B, H) and its
// weight gradient runs the BLAS's slow skinny orientation. Here: one pass over the rows each
// way, in place (benchmarks/engine.py's trainer-head rows time both).

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

}  // namespace

namespace hdetach {

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

}  // namespace hdetach
