// The CPU layer's forward over a whole sequence (lstm_cpu_common.h has the layout).
#include "lstm_cpu_common.h"
#include "lstm_ops.h"

namespace {

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

}  // namespace

namespace hdetach {

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

}  // namespace hdetach
