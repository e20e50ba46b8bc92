// The CPU layer's backward over a whole sequence (lstm_cpu_common.h has the layout).
#include "lstm_cpu_common.h"
#include "lstm_ops.h"

namespace {

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

}  // namespace

namespace hdetach {

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

}  // namespace hdetach
