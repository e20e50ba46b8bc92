// The CPU layer's operators, as registered in lstm_ops.cpp (TORCH_LIBRARY(hdetach)): the
// layer's forward and backward (lstm_forward.cpp, lstm_backward.cpp) and the member head
// (member_head.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace hdetach {

std::vector<at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0,
                                     const at::Tensor& c0, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& bias,
                                     bool train, int64_t keep_steps);

std::vector<at::Tensor> lstm_backward(const at::Tensor& dy, const at::Tensor& dhT,
                                      const at::Tensor& dcT, const at::Tensor& x,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const at::Tensor& gates, const at::Tensor& cells,
                                      const at::Tensor& tanh_c, const at::Tensor& y,
                                      const c10::optional<at::Tensor>& h_keep,
                                      const c10::optional<at::Tensor>& c_keep, double h_scale,
                                      bool need_dx, bool has_bias);

at::Tensor member_head_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

std::vector<at::Tensor> member_head_backward(const at::Tensor& g, const at::Tensor& x,
                                             const at::Tensor& w, bool need_dx);

}  // namespace hdetach
