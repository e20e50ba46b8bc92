// Benchmark- and test-only operators, TORCH_LIBRARY(hdetach_bench), in a library of their own
// that no run loads (trainables.kernels.load_bench builds it for benchmarks/engine.py and the
// kernel tests):
//   gemm_bound  the GEMMs of one forward and backward alone, the layer's speed bound;
//   avx2_gemm   the AVX2 GEMM tiles on their own, against a float64 product.
#include <torch/library.h>

#include "lstm_cpu_common.h"

namespace hdetach {

// This library's own kernel choice, set by each call from the layer library's
// (trainables.kernels passes set_kernels('') of the layer library), so a bound is measured
// with the kernels the layer runs.
std::atomic<int> kernel_choice{kAuto};

namespace {

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
                const c10::optional<at::Tensor>& h_keep, c10::string_view kernels) {
  check(kernels == "avx2" || kernels == "generic", "gemm_bound: kernels is avx2 or generic");
  check(kernels != "avx2" || avx2_can(), "the avx2 kernels need a CPU with AVX2 and FMA");
  kernel_choice = kernels == "avx2" ? kAvx2 : kGeneric;
  at::Tensor hk = h_keep.has_value() && h_keep->defined() ? h_keep->contiguous() : at::Tensor();
  if (x.scalar_type() == at::kFloat)
    gemm_bound_impl<float>(x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), hk);
  else
    gemm_bound_impl<double>(x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), hk);
}

#if HDETACH_AVX2
// The AVX2 GEMM tiles on their own, for the tests: "packed" gives c + a (m x k) @ b (k x n)
// through the packed path (c ignored unless `accumulate`), "tn" c + a^T b with a (k x m),
// "project" x w^T + bias + a @ b with x = c[:, 0], w = c[0, 1:], bias = c[1, 1:] (c: m x n+1).
at::Tensor avx2_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                     c10::string_view kind, bool accumulate) {
  check(avx2_can(), "the avx2 kernels need a CPU with AVX2 and FMA");
  check(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
            c.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 && c.dim() == 2,
        "avx2_gemm takes 2-d float32 tensors");
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
}
#endif

}  // namespace
}  // namespace hdetach

TORCH_LIBRARY(hdetach_bench, m) {
  m.def("gemm_bound(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? h_keep, str kernels) -> ()");
#if HDETACH_AVX2
  m.def("avx2_gemm(Tensor a, Tensor b, Tensor c, str kind, bool accumulate) -> Tensor",
        &hdetach::avx2_gemm);
#endif
}

TORCH_LIBRARY_IMPL(hdetach_bench, CPU, m) { m.impl("gemm_bound", &hdetach::gemm_bound); }
