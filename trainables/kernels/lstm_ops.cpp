// The CPU layer's operator library, TORCH_LIBRARY(hdetach): what trainables.kernels loads for
// every run. The layer's forward and backward (lstm_forward.cpp, lstm_backward.cpp), the member
// head (member_head.cpp), and the kernel choice. Benchmark- and test-only operators live in
// their own library (lstm_bench.cpp), which no run loads.
#include <torch/library.h>

#include "lstm_cpu_common.h"
#include "lstm_ops.h"

namespace hdetach {

std::atomic<int> kernel_choice{kAuto};

namespace {

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

}  // namespace
}  // namespace hdetach

TORCH_LIBRARY(hdetach, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, "
      "bool train, int keep_steps) -> Tensor[]");
  m.def(
      "lstm_backward(Tensor dy, Tensor dhT, Tensor dcT, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor gates, Tensor cells, Tensor tanh_c, Tensor y, "
      "Tensor? h_keep, Tensor? c_keep, float h_scale, bool need_dx, bool has_bias) -> Tensor[]");
  m.def("blas_linked() -> bool", &hdetach::blas_linked);
  m.def("set_kernels(str kind) -> str", &hdetach::set_kernels);
  m.def("member_head_forward(Tensor x, Tensor w, Tensor b) -> Tensor");
  m.def("member_head_backward(Tensor g, Tensor x, Tensor w, bool need_dx) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hdetach, CPU, m) {
  m.impl("lstm_forward", &hdetach::lstm_forward);
  m.impl("lstm_backward", &hdetach::lstm_backward);
  m.impl("member_head_forward", &hdetach::member_head_forward);
  m.impl("member_head_backward", &hdetach::member_head_backward);
}
