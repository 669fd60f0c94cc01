// Host-side argument prep of the plane-affine normalization ops shared by the CPU
// (csrc/plane_norm.cpp) and CUDA (kernels/plane_norm.cu) implementations:
//   plane_norm_stats(x)                       -> per-plane mean, biased variance (N, C)
//   plane_norm_apply(x, mean, scale, shift)   -> pad(act((x - mean) * scale + shift) + residual, p)
//   plane_norm_apply_sums / plane_norm_apply_bwd    -> its backward: per-plane sums, then the input gradient
// Every norm of the family (ILN, AdaLIN, MUNIT LayerNorm, batch norm, and instance norm where
// Triton splits its planes) is "stats -> per-plane (scale, shift) -> apply"; only the small
// (N, C) coefficient math differs (plane_norm_coefs.h, NormKind). Layouts: NCHW-contiguous and
// channels_last, as instance_norm.h.
#pragma once
#include <algorithm>
#include "instance_norm.h"
#include "plane_norm_coefs.h"

namespace i2i {

template <typename T, typename acc_t>
struct PlaneArgs {
  const T *x, *g, *res;  // g: gradient of the (padded) output
  T* out;
  const acc_t *mean, *scale, *shift, *c0, *c1;  // (N, C) per plane
  acc_t *stat_mean, *stat_var, *sums;           // outputs: (N, C), (N, C), (N, C, 2)
  double* dpart;                                // CUDA: per-chunk partial sums (fp64)
  int64_t N, C, H, W, HW, pad, chunk;
  int S, act;
  acc_t slope;
  bool split;
};

struct PlaneIO {
  NormShape s;
  int64_t H = 0, W = 0, pad = 0, act = 0;
  double slope = 0;
  at::Tensor x, g, res, mean, scale, shift, c0, c1, out, stat_var, sums;

  template <typename T, typename acc_t>
  PlaneArgs<T, acc_t> args() const {
    PlaneArgs<T, acc_t> a{};
    a.x = x.data_ptr<T>(), a.g = ptr_or_null<T>(g), a.res = ptr_or_null<T>(res);
    a.out = ptr_or_null<T>(out);
    a.mean = ptr_or_null<acc_t>(mean), a.scale = ptr_or_null<acc_t>(scale);
    a.shift = ptr_or_null<acc_t>(shift), a.c0 = ptr_or_null<acc_t>(c0), a.c1 = ptr_or_null<acc_t>(c1);
    a.stat_mean = ptr_or_null<acc_t>(mean), a.stat_var = ptr_or_null<acc_t>(stat_var);
    a.sums = ptr_or_null<acc_t>(sums);
    a.N = s.N, a.C = s.C, a.H = H, a.W = W, a.HW = s.HW, a.pad = pad;
    a.act = int(act), a.slope = acc_t(slope);
    return a;
  }
};

inline at::Tensor plane_param(const at::Tensor& t, const at::Tensor& x, const NormShape& s, const char* name) {
  TORCH_CHECK(t.numel() == s.N * s.C, "i2i_fast norm: ", name, " must have N*C = ", s.N * s.C, " elements, got shape ",
              t.sizes());
  TORCH_CHECK(t.device() == x.device(), "i2i_fast norm: ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "i2i_fast norm: ", name, " must be floating point, got ",
              t.scalar_type());
  return t.to(stats_dtype(x)).contiguous();
}

inline PlaneIO prep_plane(const at::Tensor& x_in, int64_t act, double slope, int64_t pad) {
  PlaneIO io;
  io.s = norm_shape(x_in);
  check_act(act, 0.0);
  io.H = x_in.size(2), io.W = x_in.size(3), io.pad = pad, io.act = act, io.slope = slope;
  check_out_pad(pad, x_in);
  io.x = in_layout(x_in, io.s);
  return io;
}

inline PlaneIO prep_stats(const at::Tensor& x) {
  PlaneIO io = prep_plane(x, 0, 0.0, 0);
  const auto opt = io.x.options().dtype(stats_dtype(io.x));
  io.mean = at::empty({io.s.N, io.s.C}, opt);
  io.stat_var = at::empty({io.s.N, io.s.C}, opt);
  return io;
}

inline void set_coefs(PlaneIO& io, const at::Tensor& mean, const at::Tensor& scale, const at::Tensor& shift) {
  io.mean = plane_param(mean, io.x, io.s, "mean");
  io.scale = plane_param(scale, io.x, io.s, "scale");
  io.shift = plane_param(shift, io.x, io.s, "shift");
}

inline PlaneIO prep_apply(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale, const at::Tensor& shift,
                          const c10::optional<at::Tensor>& residual, int64_t act, double slope, int64_t pad) {
  PlaneIO io = prep_plane(x, act, slope, pad);
  set_coefs(io, mean, scale, shift);
  io.res = same_as_x(residual, io.x, io.s, "residual");
  io.out = at::empty(padded_sizes(io.x, pad), io.x.options().memory_format(io.s.format()));
  return io;
}

// Backward ops: grad has the padded output's shape.
inline PlaneIO prep_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t act, double slope, int64_t pad) {
  PlaneIO io = prep_plane(x, act, slope, pad);
  set_coefs(io, mean, scale, shift);
  io.g = padded_grad(grad, io.x, io.s, pad);
  return io;
}

inline PlaneIO prep_sums(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                         const at::Tensor& shift, int64_t act, double slope, int64_t pad) {
  PlaneIO io = prep_grad(grad, x, mean, scale, shift, act, slope, pad);
  const auto opt = io.x.options().dtype(stats_dtype(io.x));
  io.sums = io.s.HW > 0 ? at::empty({io.s.N, io.s.C, 2}, opt) : at::zeros({io.s.N, io.s.C, 2}, opt);
  return io;
}

inline PlaneIO prep_apply_bwd(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                              const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& c0,
                              const at::Tensor& c1, int64_t act, double slope, int64_t pad) {
  PlaneIO io = prep_grad(grad, x, mean, scale, shift, act, slope, pad);
  io.c0 = plane_param(c0, io.x, io.s, "c0");
  io.c1 = plane_param(c1, io.x, io.s, "c1");
  io.out = at::empty_like(io.x, io.s.format());
  return io;
}

// Empty planes: 0/0 statistics are NaN on every device.
inline std::tuple<at::Tensor, at::Tensor> finish_stats(PlaneIO& io) {
  if (io.s.HW == 0) {
    io.mean.fill_(std::numeric_limits<double>::quiet_NaN());
    io.stat_var.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {io.mean, io.stat_var};
}

// ---- plane_norm_coefs / plane_norm_coefs_bwd: inputs read and outputs written in the statistics dtype S
// (float, double for fp64), one fp64 workspace; CoefArgs<S> points into them (plane_norm_coefs.h).
// No dtype round trips: at batch 1 each conversion cost a dispatcher call (a launch on CUDA).
inline at::Tensor in_dtype(const c10::optional<at::Tensor>& t, const at::Tensor& like, at::ScalarType st) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->device() == like.device(), "i2i_fast plane_norm_coefs: parameters must be on ", like.device());
  return (t->scalar_type() == st ? *t : t->to(st)).contiguous();
}

// workspace slots of (N, C) doubles (then rln, sd: max(N, C) each)
enum CoefSlot : int64_t { kRin, kDm, kT, kSc, kDv, kDrho, kDg, kDb, kSlots };

struct CoefIO {
  at::Tensor mean, var, rho, g, b, sums, scale, shift, ws;
  at::ScalarType st;
  int64_t N, C, hw, kind;
  double eps;

  template <typename S>
  CoefArgs<S> args() const {
    CoefArgs<S> a{};
    a.mean = mean.const_data_ptr<S>(), a.var = var.const_data_ptr<S>();
    a.rho = rho.defined() ? rho.const_data_ptr<S>() : nullptr;
    a.g = g.defined() ? g.const_data_ptr<S>() : nullptr;
    a.b = b.defined() ? b.const_data_ptr<S>() : nullptr;
    a.N = N, a.C = C, a.hw = hw, a.kind = kind, a.eps = eps;
    a.g_per_sample = g.defined() && g.numel() != C, a.b_per_sample = b.defined() && b.numel() != C;
    a.scale = scale.data_ptr<S>(), a.shift = shift.data_ptr<S>();
    double* w = ws.data_ptr<double>();
    double** slot[kSlots] = {&a.rin, &a.dm, &a.t, &a.sc, &a.dv, &a.drho, &a.dg, &a.db};
    for (int64_t k = 0; k < kSlots; ++k) *slot[k] = w + k * N * C;
    a.rln = w + kSlots * N * C, a.sd = a.rln + std::max(N, C);
    return a;
  }

  // Gradient of parameter p from its per-plane fp64 gradient (workspace slot): summed over the
  // batch in sample order for a (C,) parameter, as is for (N*C,), empty when p is absent.
  at::Tensor param_grad(int64_t slot, const at::Tensor& p) const {
    if (!p.defined()) return at::empty({0}, mean.options());
    if (p.numel() != C || !ws.is_cpu()) {
      const at::Tensor d = ws.narrow(0, slot * N * C, N * C);
      return (p.numel() != C ? d : d.view({N, C}).sum(0)).to(st);
    }
    at::Tensor out = at::empty({C}, mean.options());  // CPU: a loop, no tensor views (per-call cost)
    AT_DISPATCH_FLOATING_TYPES(st, "i2i_fast_coef_param_grad", [&] {
      sum_over_batch(ws.const_data_ptr<double>() + slot * N * C, N, C, 1, out.data_ptr<scalar_t>());
    });
    return out;
  }
};

// sums: the plane_norm_apply_sums output (N, C, 2), for plane_norm_coefs_bwd; undefined for plane_norm_coefs.
inline CoefIO prep_coefs(const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& rho,
                         const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, int64_t kind,
                         int64_t hw, double eps, const at::Tensor& sums = at::Tensor()) {
  TORCH_CHECK(mean.dim() == 2 && var.sizes() == mean.sizes() && var.device() == mean.device(),
              "i2i_fast plane_norm_coefs: mean and var must be (N, C) on one device");
  TORCH_CHECK(kind >= kInstanceNorm && kind <= kBatchNorm, "i2i_fast plane_norm_coefs: unknown kind ", kind);
  TORCH_CHECK(hw > 0, "i2i_fast plane_norm_coefs: hw must be > 0");
  CoefIO io;
  io.st = mean.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  io.N = mean.size(0), io.C = mean.size(1), io.hw = hw, io.kind = kind, io.eps = eps;
  const int64_t N = io.N, C = io.C;
  io.mean = in_dtype(mean, mean, io.st), io.var = in_dtype(var, mean, io.st);
  io.rho = in_dtype(rho, mean, io.st), io.g = in_dtype(gamma, mean, io.st), io.b = in_dtype(beta, mean, io.st);
  TORCH_CHECK(kind != kIln || (io.rho.defined() && io.rho.numel() == C),
              "i2i_fast plane_norm_coefs: rho must have C elements");
  for (const at::Tensor* p : {&io.g, &io.b}) {
    TORCH_CHECK(!p->defined() || p->numel() == C || p->numel() == N * C,
                "i2i_fast plane_norm_coefs: gamma/beta must have C or N*C elements");
    // batch norm's backward sums over the batch with one gamma per channel
    TORCH_CHECK(kind != kBatchNorm || !p->defined() || p->numel() == C,
                "i2i_fast plane_norm_coefs: batch norm (kind 3) takes per-channel gamma/beta (C elements)");
  }
  if (sums.defined()) {
    TORCH_CHECK(sums.numel() == N * C * 2 && sums.device() == mean.device(),
                "i2i_fast plane_norm_coefs_bwd: sums must be (N, C, 2) on the statistics' device");
    io.sums = in_dtype(sums, mean, io.st);
  }
  const auto opt = io.mean.options();
  io.scale = at::empty({N, C}, opt), io.shift = at::empty({N, C}, opt);
  io.ws = at::empty({kSlots * N * C + 2 * std::max(N, C)}, opt.dtype(at::kDouble));
  return io;
}

// plane_norm_update_running: checks; the statistics in their dtype (float / double), contiguous.
inline std::pair<at::Tensor, at::Tensor> prep_running(const at::Tensor& rm, const at::Tensor& rv,
                                                      const c10::optional<at::Tensor>& nbt, const at::Tensor& mean,
                                                      const at::Tensor& var, int64_t kind, int64_t hw) {
  TORCH_CHECK(kind == kBatchNorm || kind == kInstanceNorm,
              "i2i_fast plane_norm_update_running: kind must be BATCH or INSTANCE, got ", kind);
  TORCH_CHECK(mean.dim() == 2 && var.sizes() == mean.sizes(),
              "i2i_fast plane_norm_update_running: mean and var must be (N, C)");
  const int64_t C = mean.size(1);
  for (const at::Tensor* t : {&rm, &rv})
    TORCH_CHECK(t->dim() == 1 && t->numel() == C && t->is_contiguous() && t->device() == mean.device() &&
                    at::isFloatingType(t->scalar_type()),
                "i2i_fast plane_norm_update_running: running statistics must be contiguous floating (C,) = (", C,
                ") tensors on the statistics' device");
  TORCH_CHECK(rv.scalar_type() == rm.scalar_type(),
              "i2i_fast plane_norm_update_running: running_mean and running_var dtypes differ");
  TORCH_CHECK(!nbt || (nbt->numel() == 1 && nbt->scalar_type() == at::kLong && nbt->device() == mean.device()),
              "i2i_fast plane_norm_update_running: num_batches_tracked must be one int64 on the statistics' device");
  TORCH_CHECK(hw > 0 && (kind == kBatchNorm ? mean.size(0) * hw : hw) > 1,
              "i2i_fast plane_norm_update_running: needs more than 1 value per ",
              kind == kBatchNorm ? "channel" : "plane");
  const at::ScalarType st = mean.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {in_dtype(mean, mean, st), in_dtype(var, mean, st)};
}

}  // namespace i2i
