// Host-side helpers shared by the CPU (csrc/instance_norm.cpp) and CUDA (kernels/instance_norm.cu)
// implementations of i2i_fast::instance_norm_fwd / instance_norm_bwd: argument checks and the
// layout the kernels see. Kernels support two layouts natively: NCHW-contiguous and
// channels_last; any other strided view is copied to NCHW once.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "norm_math.h"

#include <limits>
#include <tuple>
#include <vector>

namespace i2i {

struct NormShape {
  int64_t N, C, HW;
  bool channels_last;
  at::MemoryFormat format() const {
    return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }
};

inline NormShape norm_shape(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "i2i_fast norm: expected x of rank 4 (N, C, H, W), got rank ", x.dim());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "i2i_fast norm: x must be floating point, got ", x.scalar_type());
  NormShape s{x.size(0), x.size(1), x.size(2) * x.size(3), false};
  s.channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return s;
}

// x (or a tensor shaped like x) in the layout of `s`.
inline at::Tensor in_layout(const at::Tensor& t, const NormShape& s) { return t.contiguous(s.format()); }

// Statistics are kept in fp32 (fp64 for fp64 inputs).
inline at::ScalarType stats_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Per-channel parameter or running statistic as a contiguous (C,) tensor in the stats dtype;
// undefined when absent.
inline at::Tensor channel_param(const c10::optional<at::Tensor>& p, const at::Tensor& x, const char* name) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  TORCH_CHECK(p->numel() == x.size(1), "i2i_fast instance_norm: ", name, " must have ", x.size(1),
              " elements (one per channel), got shape ", p->sizes());
  TORCH_CHECK(p->device() == x.device(), "i2i_fast instance_norm: ", name, " is on ", p->device(), " but x is on ",
              x.device());
  return p->reshape({-1}).to(stats_dtype(x)).contiguous();
}

// Affine weight or bias: per channel (C elements) or per (n, c) plane (N*C, as MUNIT's AdaIN).
inline at::Tensor affine_param(const c10::optional<at::Tensor>& p, const at::Tensor& x, const char* name) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  const int64_t c = x.size(1), nc = x.size(0) * x.size(1);
  TORCH_CHECK(p->numel() == c || p->numel() == nc, "i2i_fast instance_norm: ", name, " must have ", c,
              " (per channel) or ", nc, " (per sample and channel) elements, got shape ", p->sizes());
  TORCH_CHECK(p->device() == x.device(), "i2i_fast instance_norm: ", name, " is on ", p->device(), " but x is on ",
              x.device());
  return p->reshape({-1}).to(stats_dtype(x)).contiguous();
}

inline at::Tensor same_as_x(const c10::optional<at::Tensor>& t, const at::Tensor& x, const NormShape& s,
                            const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->sizes() == x.sizes(), "i2i_fast instance_norm: ", name, " must have x's shape ", x.sizes(), ", got ",
              t->sizes());
  TORCH_CHECK(t->device() == x.device() && t->scalar_type() == x.scalar_type(), "i2i_fast instance_norm: ", name,
              " must match x's device and dtype");
  return in_layout(*t, s);
}

// Saved (N, C) statistics handed to the backward, in the stats dtype.
inline at::Tensor saved_stats(const at::Tensor& t, const at::Tensor& x, const NormShape& s, const char* name) {
  TORCH_CHECK(t.numel() == s.N * s.C, "i2i_fast instance_norm_bwd: ", name, " must have N*C = ", s.N * s.C,
              " elements, got ", t.numel());
  TORCH_CHECK(t.device() == x.device(), "i2i_fast instance_norm_bwd: ", name, " is on ", t.device(), " but x is on ",
              x.device());
  return t.to(stats_dtype(x)).contiguous();
}

inline void check_act(int64_t act, double eps) {
  TORCH_CHECK(act >= kActNone && act <= kTanh, "i2i_fast instance_norm: unknown activation code ", act);
  TORCH_CHECK(eps >= 0, "i2i_fast instance_norm: eps must be >= 0, got ", eps);
}

// The output's reflection pad: torch's rule (each pad < the size of its axis).
inline void check_out_pad(int64_t pad, const at::Tensor& x) {
  TORCH_CHECK(pad >= 0, "i2i_fast norm: out_pad must be >= 0, got ", pad);
  TORCH_CHECK(pad == 0 || (pad < x.size(2) && pad < x.size(3)), "i2i_fast norm: out_pad (", pad,
              ") must be smaller than the input's H and W for reflection padding, got input of "
              "shape ",
              x.sizes());
  // the kernels index a padded plane's pixels in 32 bits (the CUDA divisions)
  TORCH_CHECK(pad == 0 || (x.size(2) + 2 * pad) * (x.size(3) + 2 * pad) < (int64_t(1) << 31),
              "i2i_fast norm: out_pad needs padded planes of fewer than 2^31 pixels, got ", x.sizes());
}

inline std::vector<int64_t> padded_sizes(const at::Tensor& x, int64_t pad) {
  return {x.size(0), x.size(1), x.size(2) + 2 * pad, x.size(3) + 2 * pad};
}

// The gradient of a padded output: its shape, x's device and dtype, in x's layout.
inline at::Tensor padded_grad(const at::Tensor& grad, const at::Tensor& x, const NormShape& s, int64_t pad) {
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(padded_sizes(x, pad)),
              "i2i_fast norm: grad must have "
              "the output's shape ",
              at::IntArrayRef(padded_sizes(x, pad)), ", got ", grad.sizes());
  TORCH_CHECK(grad.device() == x.device() && grad.scalar_type() == x.scalar_type(),
              "i2i_fast norm: grad must match x's device and dtype");
  return grad.contiguous(s.format());
}

// What a kernel sees: raw pointers (null where an optional input is absent) and sizes.
template <typename T, typename acc_t>
struct NormArgs {
  const T *x, *g, *res;       // g: incoming (padded) gradient
  T* out;                     // y or grad x
  const acc_t *w, *b;         // affine, or null: (C,) or (N*C,) if per_plane
  const acc_t *rmean, *rvar;  // (C,) running stats used instead of input stats
  acc_t *mean, *var;          // (N, C): written by fwd, read by bwd
  acc_t* sums;                // bwd: (N, C, 2) sum(dz), sum(dz * xhat)
  double* dpart;              // CUDA split path: per-chunk fp64 sums (stats or backward)
  int64_t N, C, HW, chunk;
  int64_t H, W, pad;  // out / g: (H + 2 pad) x (W + 2 pad) planes
  int S, act;
  acc_t eps, slope;
  bool input_stats, split, per_plane;
  // index of plane (n, c) = n*C + c in w and b
  I2I_HD int64_t affine_index(int64_t plane, int64_t c) const { return per_plane ? plane : c; }
};

// out[c] = sum over n of src[(n * C + c) * stride], added in sample order in fp64 (CPU memory):
// the batch reduction of per-plane parameter gradients without a TensorIterator round trip.
template <typename In, typename Out>
void sum_over_batch(const In* src, int64_t N, int64_t C, int64_t stride, Out* out) {
  for (int64_t c = 0; c < C; ++c) {
    double acc = 0;
    for (int64_t n = 0; n < N; ++n) acc += double(src[(n * C + c) * stride]);
    out[c] = static_cast<Out>(acc);
  }
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Validated arguments of instance_norm_fwd / instance_norm_bwd in the layout and dtypes the
// kernels read, with the outputs allocated; shared by the CPU and CUDA implementations.
struct NormIO {
  NormShape s;
  at::Tensor x, g, res, w, b, rm, rv, out, mean, var, sums;
  double eps, slope;
  int64_t act, pad = 0;
  bool input_stats;

  // weight/bias hold one value per plane (N*C) rather than per channel
  bool per_plane() const { return (w.defined() && w.numel() != s.C) || (b.defined() && b.numel() != s.C); }

  template <typename T, typename acc_t>
  NormArgs<T, acc_t> args() const {
    NormArgs<T, acc_t> a{};
    a.x = x.data_ptr<T>(), a.g = ptr_or_null<T>(g), a.res = ptr_or_null<T>(res);
    a.out = out.data_ptr<T>();
    a.w = ptr_or_null<acc_t>(w), a.b = ptr_or_null<acc_t>(b);
    a.rmean = ptr_or_null<acc_t>(rm), a.rvar = ptr_or_null<acc_t>(rv);
    a.mean = mean.data_ptr<acc_t>(), a.var = var.data_ptr<acc_t>(), a.sums = ptr_or_null<acc_t>(sums);
    a.N = s.N, a.C = s.C, a.HW = s.HW, a.act = int(act);
    a.H = x.size(2), a.W = x.size(3), a.pad = pad;
    a.eps = acc_t(eps), a.slope = acc_t(slope), a.input_stats = input_stats;
    a.per_plane = per_plane();
    return a;
  }
};

inline NormIO prep_fwd(const at::Tensor& x_in, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
                       double eps, int64_t act, double slope, int64_t pad) {
  NormIO io;
  io.s = norm_shape(x_in);
  check_act(act, eps);
  check_out_pad(pad, x_in);
  io.x = in_layout(x_in, io.s);
  io.w = affine_param(weight, io.x, "weight");
  io.b = affine_param(bias, io.x, "bias");
  TORCH_CHECK(!io.w.defined() || !io.b.defined() || io.w.numel() == io.b.numel(),
              "i2i_fast instance_norm: weight and bias must have the same number of elements");
  io.res = same_as_x(residual, io.x, io.s, "residual");
  io.rm = channel_param(running_mean, io.x, "running_mean");
  io.rv = channel_param(running_var, io.x, "running_var");
  TORCH_CHECK(io.rm.defined() == io.rv.defined(), "i2i_fast instance_norm: running_mean and running_var go together");
  io.input_stats = !io.rm.defined();
  io.out = at::empty(padded_sizes(io.x, pad), io.x.options().memory_format(io.s.format()));
  io.mean = at::empty({io.s.N, io.s.C}, io.x.options().dtype(stats_dtype(io.x)));
  io.var = at::empty_like(io.mean);
  io.eps = eps, io.slope = slope, io.act = act, io.pad = pad;
  return io;
}

// (out, mean, var) after the kernels ran: eval mode reports the running stats it used; empty
// planes report 0/0 = NaN statistics on every device.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_fwd(NormIO& io) {
  if (!io.input_stats) {
    io.mean.copy_(io.rm.unsqueeze(0).expand({io.s.N, io.s.C}));
    io.var.copy_(io.rv.unsqueeze(0).expand({io.s.N, io.s.C}));
  } else if (io.s.HW == 0) {
    io.mean.fill_(std::numeric_limits<double>::quiet_NaN());
    io.var.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {io.out, io.mean, io.var};
}

inline NormIO prep_bwd(const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
                       const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
                       int64_t act, double slope, bool input_stats, int64_t pad) {
  NormIO io;
  io.s = norm_shape(x_in);
  check_act(act, eps);
  check_out_pad(pad, x_in);
  io.x = in_layout(x_in, io.s);
  io.g = padded_grad(grad, io.x, io.s, pad);
  io.w = affine_param(weight, io.x, "weight");
  io.b = affine_param(bias, io.x, "bias");
  TORCH_CHECK(!io.w.defined() || !io.b.defined() || io.w.numel() == io.b.numel(),
              "i2i_fast instance_norm: weight and bias must have the same number of elements");
  io.mean = saved_stats(mean, io.x, io.s, "mean");
  io.var = saved_stats(var, io.x, io.s, "var");
  io.out = at::empty_like(io.x, io.s.format());
  // every plane writes its sums, except when H*W == 0
  const auto opt = io.x.options().dtype(stats_dtype(io.x));
  io.sums = io.s.HW > 0 ? at::empty({io.s.N, io.s.C, 2}, opt) : at::zeros({io.s.N, io.s.C, 2}, opt);
  io.eps = eps, io.slope = slope, io.act = act, io.input_stats = input_stats, io.pad = pad;
  return io;
}

// (grad x, grad weight, grad bias). Without weight and bias (affine=False) the two are empty:
// nothing to reduce. Per-plane affine: the per-plane sums themselves. Per channel: the sums
// reduced over the batch in a fixed order (no atomics); on CPU in a plain loop, as the
// TensorIterator sum + select + clone round trip cost ~15 us per call at batch 1.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_bwd(NormIO& io) {
  const auto opt = io.sums.options();
  if (!io.w.defined() && !io.b.defined()) return {io.out, at::empty({0}, opt), at::empty({0}, opt)};
  if (io.per_plane())
    return {io.out, io.sums.select(2, 1).reshape({-1}).clone(), io.sums.select(2, 0).reshape({-1}).clone()};
  at::Tensor gw = at::empty({io.s.C}, opt), gb = at::empty({io.s.C}, opt);
  if (io.sums.is_cpu()) {
    AT_DISPATCH_FLOATING_TYPES(io.sums.scalar_type(), "i2i_fast_affine_grads", [&] {
      const scalar_t* s = io.sums.const_data_ptr<scalar_t>();
      sum_over_batch(s + 1, io.s.N, io.s.C, 2, gw.data_ptr<scalar_t>());
      sum_over_batch(s, io.s.N, io.s.C, 2, gb.data_ptr<scalar_t>());
    });
  } else {
    at::sum_out(gw, io.sums.select(2, 1), 0);
    at::sum_out(gb, io.sums.select(2, 0), 0);
  }
  return {io.out, gw, gb};
}

}  // namespace i2i
