// Host-side helpers shared by the CPU (csrc/instance_norm.cpp) and CUDA (kernels/instance_norm.cu)
// implementations of i2i_fast::instance_norm_fwd / instance_norm_bwd: argument checks and the
// layout the kernels see. Kernels support two layouts natively: NCHW-contiguous and
// channels_last; any other strided view is copied to NCHW once.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace i2i {

struct NormShape {
  int64_t N, C, HW;
  bool channels_last;
  at::MemoryFormat format() const {
    return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }
};

inline NormShape norm_shape(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "i2i_fast instance_norm: expected x of rank 4 (N, C, H, W), got rank ",
              x.dim());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "i2i_fast instance_norm: x must be floating point, got ", x.scalar_type());
  NormShape s{x.size(0), x.size(1), x.size(2) * x.size(3), false};
  s.channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return s;
}

// x (or a tensor shaped like x) in the layout of `s`.
inline at::Tensor in_layout(const at::Tensor& t, const NormShape& s) {
  return t.contiguous(s.format());
}

// Statistics are kept in fp32 (fp64 for fp64 inputs).
inline at::ScalarType stats_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Per-channel parameter or running statistic as a contiguous (C,) tensor in the stats dtype;
// undefined when absent.
inline at::Tensor channel_param(const c10::optional<at::Tensor>& p, const at::Tensor& x,
                                const char* name) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  TORCH_CHECK(p->numel() == x.size(1), "i2i_fast instance_norm: ", name, " must have ", x.size(1),
              " elements (one per channel), got shape ", p->sizes());
  TORCH_CHECK(p->device() == x.device(), "i2i_fast instance_norm: ", name, " is on ", p->device(),
              " but x is on ", x.device());
  return p->reshape({-1}).to(stats_dtype(x)).contiguous();
}

inline at::Tensor same_as_x(const c10::optional<at::Tensor>& t, const at::Tensor& x,
                            const NormShape& s, const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->sizes() == x.sizes(), "i2i_fast instance_norm: ", name, " must have x's shape ",
              x.sizes(), ", got ", t->sizes());
  TORCH_CHECK(t->device() == x.device() && t->scalar_type() == x.scalar_type(),
              "i2i_fast instance_norm: ", name, " must match x's device and dtype");
  return in_layout(*t, s);
}

// Saved (N, C) statistics handed to the backward, in the stats dtype.
inline at::Tensor saved_stats(const at::Tensor& t, const at::Tensor& x, const NormShape& s,
                              const char* name) {
  TORCH_CHECK(t.numel() == s.N * s.C, "i2i_fast instance_norm_bwd: ", name, " must have N*C = ",
              s.N * s.C, " elements, got ", t.numel());
  TORCH_CHECK(t.device() == x.device(), "i2i_fast instance_norm_bwd: ", name, " is on ", t.device(),
              " but x is on ", x.device());
  return t.to(stats_dtype(x)).contiguous();
}

inline void check_act(int64_t act, double eps) {
  TORCH_CHECK(act >= 0 && act <= 3, "i2i_fast instance_norm: unknown activation code ", act);
  TORCH_CHECK(eps >= 0, "i2i_fast instance_norm: eps must be >= 0, got ", eps);
}

}  // namespace i2i
