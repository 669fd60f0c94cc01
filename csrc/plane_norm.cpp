// CPU kernels of the plane-affine normalization ops (schemas in csrc/ops.cpp, host prep in
// csrc/plane_norm.h): plane_norm_stats, plane_norm_apply, plane_norm_apply_sums, plane_norm_apply_bwd.
// Tasks as in instance_norm.cpp: one NCHW plane (loops vectorized along H*W) or kCB channels of
// one channels_last sample (loops vectorized along channels). The output pad is written by
// filling the border from the interior just written (cache-hot); its backward first folds the
// padded gradient into a per-task buffer (a gather: each pixel sums its mirror sources in a
// fixed order), so the sums and the input gradient read an unpadded gradient.
#include <ATen/Dispatch.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "cpu_loops.h"
#include "plane_norm.h"
#include "plane_norm_coefs.h"
#include "op_handle.h"
#include "reflection_pad.h"

namespace i2i {
namespace {

using namespace cpu;

template <typename T, typename acc_t>
using PA = PlaneArgs<T, acc_t>;

// Calls f(i, k) for pixel i < n and channel k < cw: one NCHW plane (cw == 1) vectorized along
// i, or a channels_last block vectorized along k.
template <bool CL, class F>
inline void each(int64_t n, int64_t cw, F&& f) {
  if (!CL) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) f(i, int64_t(0));
  } else {
    for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
      for (int64_t k = 0; k < cw; ++k) f(i, k);
    }
  }
}

// Where a task's data lives: element (pixel i, channel k) of x is x[xb + i * pix + k], of the
// padded output out[ob + (padded pixel) * pix + k].
struct Task {
  int64_t n, c0, cw, pix, xb, ob, Ho, Wo;
  template <bool CL, typename T, typename acc_t>
  static Task make(const PA<T, acc_t>& a, int64_t n, int64_t c0) {
    Task t;
    t.n = n, t.c0 = c0, t.cw = CL ? std::min(kCB, a.C - c0) : 1, t.pix = CL ? a.C : 1;
    t.Ho = a.H + 2 * a.pad, t.Wo = a.W + 2 * a.pad;
    t.xb = CL ? n * a.HW * a.C + c0 : (n * a.C + c0) * a.HW;
    t.ob = CL ? n * t.Ho * t.Wo * a.C + c0 : (n * a.C + c0) * t.Ho * t.Wo;
    return t;
  }
  int64_t plane(int64_t C, int64_t k) const { return n * C + c0 + k; }
};

template <typename T, typename acc_t, bool CL>
void stats_task(const PA<T, acc_t>& a, int64_t n, int64_t c0) {
  const Task t = Task::make<CL>(a, n, c0);
  acc_t m[kCB], v[kCB];
  if (CL) block_stats(a.x + t.xb, a.HW, a.C, t.cw, m, v);
  else plane_stats(a.x + t.xb, a.HW, m[0], v[0]);
  for (int64_t k = 0; k < t.cw; ++k) a.stat_mean[t.plane(a.C, k)] = m[k], a.stat_var[t.plane(a.C, k)] = v[k];
}

template <typename T, typename acc_t, int ACT, bool CL>
void apply_task(const PA<T, acc_t>& a, int64_t n, int64_t c0) {
  const Task t = Task::make<CL>(a, n, c0);
  acc_t m[kCB], sc[kCB], sh[kCB];
  for (int64_t k = 0; k < t.cw; ++k) {
    const int64_t p = t.plane(a.C, k);
    m[k] = a.mean[p], sc[k] = a.scale[p], sh[k] = a.shift[p];
  }
  const int64_t P = a.pad, rows = P ? a.H : 1, cols = P ? a.W : a.HW;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t xo = t.xb + r * cols * t.pix;
    const T* x = a.x + xo;
    const T* res = a.res ? a.res + xo : nullptr;
    T* y = a.out + t.ob + ((r + P) * t.Wo + P) * t.pix;
    each<CL>(cols, t.cw, [&](int64_t i, int64_t k) {
      const int64_t o = i * (CL ? t.pix : 1) + k;  // unit stride known at compile time
      // (x - mean) * scale + shift: a constant plane gives exactly shift, as torch
      const acc_t v = act_fwd<acc_t>((static_cast<acc_t>(x[o]) - m[k]) * sc[k] + sh[k], ACT, a.slope);
      y[o] = static_cast<T>(res ? v + static_cast<acc_t>(res[o]) : v);
    });
  }
  if (P) fill_pad(a.out + t.ob, a.H, a.W, P, t.pix, t.cw);
}

// The task's unpadded output gradient: a.g itself (pixel stride pix) or, with a pad, folded
// into buf (pixel stride cw).
template <bool CL, typename T, typename acc_t>
const T* task_grad(const PA<T, acc_t>& a, const Task& t, std::vector<T>& buf, int64_t& gpix) {
  static_assert(std::is_same<T, acc_t>::value, "CPU kernels run in fp32/fp64");
  return fold_grad<CL>(a.g + t.ob, a.H, a.W, a.pad, t.pix, t.cw, buf, gpix);
}

// Shared by the two backward tasks: the plane constants and dL/dz at (i, k).
template <typename T, typename acc_t, int ACT, bool CL>
struct Dz {
  acc_t m[kCB], sc[kCB], sh[kCB];
  const T* x;
  const T* g;
  int64_t pix, gpix;
  acc_t slope;
  Dz(const PA<T, acc_t>& a, const Task& t, std::vector<T>& buf) {
    for (int64_t k = 0; k < t.cw; ++k) {
      const int64_t p = t.plane(a.C, k);
      m[k] = a.mean[p], sc[k] = a.scale[p], sh[k] = a.shift[p];
    }
    x = a.x + t.xb, pix = t.pix, slope = a.slope;
    g = task_grad<CL>(a, t, buf, gpix);
  }
  // NCHW strides are 1 at compile time: a runtime stride of 1 is a gather to the vectorizer
  // (the reduction loop measured 3.5x slower)
  acc_t centered(int64_t i, int64_t k) const { return static_cast<acc_t>(x[i * (CL ? pix : 1) + k]) - m[k]; }
  // dL/dz at (i, k) given d = x - mean there
  acc_t operator()(int64_t i, int64_t k, acc_t d) const {
    return norm_dz<acc_t>(static_cast<acc_t>(g[i * (CL ? gpix : 1) + k]), d, sc[k], sh[k], ACT, slope);
  }
};

template <typename T, typename acc_t, int ACT, bool CL>
void sums_task(const PA<T, acc_t>& a, int64_t n, int64_t c0) {
  const Task t = Task::make<CL>(a, n, c0);
  std::vector<T> buf;
  const Dz<T, acc_t, ACT, CL> dz(a, t, buf);
  // fp64 block totals: these sums feed every parameter gradient through the coefficient
  // backward, where 512-element fp32 blocks were measurably less accurate than torch.
  double s1[kCB] = {0}, s2[kCB] = {0};
  constexpr int64_t B = 64;  // vectorized sums over short blocks, fp64 block totals
  if (CL) {
    rows_sum2<B * kCB, acc_t>(a.HW, t.cw, s1, s2, [&](int64_t i, int64_t k, acc_t& u, acc_t& v) {
      const acc_t d = dz.centered(i, k), z = dz(i, k, d);
      u += z, v += z * d;
    });
  } else {
    plane_sum2<B, acc_t>(a.HW, s1[0], s2[0], [&](int64_t i, acc_t& u, acc_t& v) {
      const acc_t d = dz.centered(i, 0), z = dz(i, 0, d);
      u += z, v += z * d;
    });
  }
  for (int64_t k = 0; k < t.cw; ++k) {
    const int64_t p = t.plane(a.C, k);
    a.sums[2 * p] = s1[k], a.sums[2 * p + 1] = s2[k];
  }
}

template <typename T, typename acc_t, int ACT, bool CL>
void bwd_task(const PA<T, acc_t>& a, int64_t n, int64_t c0) {
  const Task t = Task::make<CL>(a, n, c0);
  std::vector<T> buf;
  const Dz<T, acc_t, ACT, CL> dz(a, t, buf);
  acc_t c0k[kCB], c1k[kCB];
  for (int64_t k = 0; k < t.cw; ++k) c0k[k] = a.c0[t.plane(a.C, k)], c1k[k] = a.c1[t.plane(a.C, k)];
  T* gx = a.out + t.xb;
  each<CL>(a.HW, t.cw, [&](int64_t i, int64_t k) {
    const acc_t d = dz.centered(i, k), z = dz(i, k, d);
    gx[i * (CL ? t.pix : 1) + k] = static_cast<T>(dz.sc[k] * z + c0k[k] + c1k[k] * d);
  });
}

// Runs K<T, acc_t, ACT, CL>::run(args, n, c0) over every task of io.
template <template <typename, typename, int, bool> class K>
void run(const PlaneIO& io) {
  AT_DISPATCH_FLOATING_TYPES(io.x.scalar_type(), "i2i_fast_norm_cpu", [&] {
    const PA<scalar_t, scalar_t> a = io.args<scalar_t, scalar_t>();
    with_act(io.act, [&](auto A) {
      const int64_t per_plane = (io.H + 2 * io.pad) * (io.W + 2 * io.pad);
      for_tasks(io.s.N, io.s.C, io.s.channels_last, per_plane, [&](int64_t n, int64_t c0, int64_t) {
        if (io.s.channels_last) K<scalar_t, scalar_t, decltype(A)::value, true>::run(a, n, c0);
        else K<scalar_t, scalar_t, decltype(A)::value, false>::run(a, n, c0);
      });
    });
  });
}

#define I2I_TASK(Name, fn)                                                                             \
  template <typename T, typename acc_t, int ACT, bool CL>                                              \
  struct Name {                                                                                        \
    static void run(const PA<T, acc_t>& a, int64_t n, int64_t c0) { fn<T, acc_t, ACT, CL>(a, n, c0); } \
  };
template <typename T, typename acc_t, int, bool CL>
void stats_any(const PA<T, acc_t>& a, int64_t n, int64_t c0) {
  stats_task<T, acc_t, CL>(a, n, c0);
}
I2I_TASK(Stats, stats_any)
I2I_TASK(Apply, apply_task)
I2I_TASK(SumsK, sums_task)
I2I_TASK(Bwd, bwd_task)
#undef I2I_TASK

// fp16/bf16 run the fp32 kernels on upcast copies (see instance_norm.cpp).
bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

at::Tensor up(const at::Tensor& t) { return t.to(at::kFloat); }

std::tuple<at::Tensor, at::Tensor> plane_norm_stats_cpu(const at::Tensor& x) {
  if (is_half(x)) return plane_norm_stats_cpu(up(x));
  PlaneIO io = prep_stats(x);
  if (io.x.numel() > 0) run<Stats>(io);
  return finish_stats(io);
}

at::Tensor plane_norm_apply_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                                const at::Tensor& shift, const c10::optional<at::Tensor>& residual, int64_t act,
                                double slope, int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(!residual.has_value() || residual->scalar_type() == x.scalar_type(),
                "i2i_fast norm: residual must match x's device and dtype");
    c10::optional<at::Tensor> r = residual.has_value() ? c10::optional<at::Tensor>(up(*residual)) : residual;
    return plane_norm_apply_cpu(up(x), mean, scale, shift, r, act, slope, pad).to(x.scalar_type());
  }
  PlaneIO io = prep_apply(x, mean, scale, shift, residual, act, slope, pad);
  if (io.out.numel() > 0) run<Apply>(io);
  return io.out;
}

at::Tensor plane_norm_apply_sums_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                     const at::Tensor& scale, const at::Tensor& shift, int64_t act, double slope,
                                     int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "i2i_fast norm: grad must match x's device and dtype");
    return plane_norm_apply_sums_cpu(up(grad), up(x), mean, scale, shift, act, slope, pad);
  }
  PlaneIO io = prep_sums(grad, x, mean, scale, shift, act, slope, pad);
  if (io.x.numel() > 0) run<SumsK>(io);
  return io.sums;
}

at::Tensor plane_norm_apply_bwd_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                    const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& c0,
                                    const at::Tensor& c1, int64_t act, double slope, int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "i2i_fast norm: grad must match x's device and dtype");
    return plane_norm_apply_bwd_cpu(up(grad), up(x), mean, scale, shift, c0, c1, act, slope, pad).to(x.scalar_type());
  }
  PlaneIO io = prep_apply_bwd(grad, x, mean, scale, shift, c0, c1, act, slope, pad);
  if (io.x.numel() > 0) run<Bwd>(io);
  return io.out;
}

// ---- per-plane coefficients (csrc/plane_norm_coefs.h): one unit (sample or channel) at a time, fp64
std::tuple<at::Tensor, at::Tensor> plane_norm_coefs_cpu(const at::Tensor& mean, const at::Tensor& var,
                                                        const c10::optional<at::Tensor>& rho,
                                                        const c10::optional<at::Tensor>& gamma,
                                                        const c10::optional<at::Tensor>& beta, int64_t kind, int64_t hw,
                                                        double eps) {
  const CoefIO io = prep_coefs(mean, var, rho, gamma, beta, kind, hw, eps);
  AT_DISPATCH_FLOATING_TYPES(io.st, "i2i_fast_norm_coefs_cpu", [&] {
    const CoefArgs<scalar_t> a = io.args<scalar_t>();
    for (int64_t u = 0; u < coef_units(a); ++u) coefs_unit(a, u);
  });
  return {io.scale, io.shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> plane_norm_coefs_bwd_cpu(
    const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& rho,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, const at::Tensor& sums, int64_t kind,
    int64_t hw, double eps) {
  const CoefIO io = prep_coefs(mean, var, rho, gamma, beta, kind, hw, eps, sums);
  at::Tensor c0 = at::empty_like(io.scale), c1 = at::empty_like(io.scale);
  AT_DISPATCH_FLOATING_TYPES(io.st, "i2i_fast_norm_coefs_bwd_cpu", [&] {
    const CoefArgs<scalar_t> a = io.args<scalar_t>();
    for (int64_t u = 0; u < coef_units(a); ++u)
      coefs_backward_unit(a, u, io.sums.const_data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), c1.data_ptr<scalar_t>());
  });
  return {c0, c1, io.param_grad(kDrho, io.rho), io.param_grad(kDg, io.g), io.param_grad(kDb, io.b)};
}

void plane_norm_update_running_cpu(at::Tensor& running_mean, at::Tensor& running_var,
                                   const c10::optional<at::Tensor>& num_batches_tracked, const at::Tensor& mean_in,
                                   const at::Tensor& var_in, int64_t kind, int64_t hw, double momentum) {
  const auto [mean, var] = prep_running(running_mean, running_var, num_batches_tracked, mean_in, var_in, kind, hw);
  const int64_t N = mean.size(0), C = mean.size(1);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "i2i_fast_update_running_cpu", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "i2i_fast_running", [&] {
      for (int64_t c = 0; c < C; ++c)
        running_channel(mean.const_data_ptr<S>(), var.const_data_ptr<S>(), N, C, hw, momentum, kind == kInstanceNorm,
                        running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(), c);
    });
  });
  if (num_batches_tracked) *num_batches_tracked->data_ptr<int64_t>() += 1;
}

// ---- plane_norm: the family's entry point, device-agnostic (component ops through the
// dispatcher) with a C++ autograd node: a Python autograd.Function around the same calls cost
// ~60 us per forward+backward, more than the kernels of a small map.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptT = c10::optional<at::Tensor>;

struct PlaneNormOps {
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)> stats =
      op_of<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>("i2i_fast::plane_norm_stats");
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptT&,
                                                              const OptT&, const OptT&, int64_t, int64_t, double)>
      coefs = op_of<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&,
                                                       const OptT&, int64_t, int64_t, double)>(
          "i2i_fast::plane_norm_coefs");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const OptT&, int64_t, double, int64_t)>
      apply = op_of<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                               int64_t, double, int64_t)>("i2i_fast::plane_norm_apply");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, int64_t, double, int64_t)>
      sums = op_of<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, int64_t, double, int64_t)>("i2i_fast::plane_norm_apply_sums");
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const OptT&, const at::Tensor&, int64_t, int64_t,
      double)>
      coefs_bwd = op_of<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const OptT&, const at::Tensor&, int64_t,
          int64_t, double)>("i2i_fast::plane_norm_coefs_bwd");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double,
                                      int64_t)>
      bwd = op_of<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, int64_t)>(
          "i2i_fast::plane_norm_apply_bwd");
  c10::TypedOperatorHandle<PadBwdSig> pad_bwd = op_of<PadBwdSig>("i2i_fast::reflection_pad2d_bwd");
  c10::TypedOperatorHandle<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&,
                                                   const OptT&, const OptT&, const OptT&, int64_t, double, int64_t,
                                                   double, int64_t)>
      ref_grads =
          op_of<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const OptT&, const OptT&, const OptT&,
                                        const OptT&, const OptT&, int64_t, double, int64_t, double, int64_t)>(
              "i2i_fast::plane_norm_ref_grads");
  static const PlaneNormOps& get() {
    static const PlaneNormOps ops;
    return ops;
  }
};

bool given(const OptT& t) { return t.has_value() && t->defined(); }
OptT opt(const at::Tensor& t) { return t.defined() ? OptT(t) : OptT(); }

// (out, mean, var, scale, shift) of the forward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> plane_norm_parts(
    const at::Tensor& x, const OptT& rho, const OptT& gamma, const OptT& beta, const OptT& residual,
    const OptT& running_mean, const OptT& running_var, int64_t kind, double eps, int64_t act, double slope,
    int64_t pad) {
  TORCH_CHECK(x.dim() == 4, "i2i_fast plane_norm: expected (N, C, H, W) input, got ", x.sizes());
  const PlaneNormOps& ops = PlaneNormOps::get();
  at::Tensor mean, var;
  if (!given(running_mean)) {
    std::tie(mean, var) = ops.stats.call(x);
  } else {  // eval-mode instance norm: running statistics are constants
    const int64_t N = x.size(0), C = x.size(1);
    const auto opts = x.options().dtype(stats_dtype(x));
    mean = at::empty({N, C}, opts).copy_(running_mean->reshape({1, C}));
    var = at::empty({N, C}, opts).copy_(running_var.value().reshape({1, C}));
  }
  auto [scale, shift] = ops.coefs.call(mean, var, rho, gamma, beta, kind, x.size(2) * x.size(3), eps);
  at::Tensor out = ops.apply.call(x, mean, scale, shift, residual, act, slope, pad);
  return {out, mean, var, scale, shift};
}

using Out3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Out3 plane_norm_composite(const at::Tensor& x, const OptT& rho, const OptT& gamma, const OptT& beta,
                          const OptT& residual, const OptT& running_mean, const OptT& running_var, int64_t kind,
                          double eps, int64_t act, double slope, int64_t pad) {
  auto [out, mean, var, scale, shift] =
      plane_norm_parts(x, rho, gamma, beta, residual, running_mean, running_var, kind, eps, act, slope, pad);
  return {out, mean, var};
}

// gradient of a parameter from its (C,) or (N*C,) coefficient gradient, in its shape and dtype
at::Tensor param_grad(const at::Tensor& d, const at::Tensor& p) { return d.reshape(p.sizes()).to(p.scalar_type()); }

struct PlaneNormFunction : public torch::autograd::Function<PlaneNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& rho, const OptT& gamma,
                               const OptT& beta, const OptT& residual, const OptT& running_mean,
                               const OptT& running_var, int64_t kind, double eps, int64_t act, double slope,
                               int64_t pad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, var, scale, shift] =
        plane_norm_parts(x, rho, gamma, beta, residual, running_mean, running_var, kind, eps, act, slope, pad);
    // x plus (N, C) statistics and coefficients: nothing of the output's size
    ctx->save_for_backward({x, mean, var, scale, shift, rho.value_or(at::Tensor()), gamma.value_or(at::Tensor()),
                            beta.value_or(at::Tensor())});
    if (given(running_mean)) ctx->saved_data["running"] = std::vector<at::Tensor>{*running_mean, *running_var};
    // needs_input_grad counts only the tensors given: edge of x, rho, gamma, beta, residual
    std::vector<int64_t> edge{0};
    int64_t e = 0;
    for (const OptT* t : {&rho, &gamma, &beta, &residual}) edge.push_back(given(*t) ? ++e : -1);
    ctx->saved_data["edge"] = edge;
    ctx->saved_data["cfg"] = std::vector<int64_t>{kind, act, pad};
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["slope"] = slope;
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);  // no zero gradients for mean / var (never used)
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const PlaneNormOps& ops = PlaneNormOps::get();
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &mean = s[1], &var = s[2], &scale = s[3], &shift = s[4];
    const at::Tensor &rho = s[5], &gamma = s[6], &beta = s[7];
    const auto cfg = ctx->saved_data["cfg"].toIntVector(), edge = ctx->saved_data["edge"].toIntVector();
    const int64_t kind = cfg[0], act = cfg[1], pad = cfg[2];
    const double eps = ctx->saved_data["eps"].toDouble(), slope = ctx->saved_data["slope"].toDouble();
    const bool running = ctx->saved_data.count("running") > 0;
    bool need[5];
    for (int i = 0; i < 5; ++i) need[i] = edge[i] >= 0 && ctx->needs_input_grad(edge[i]);
    variable_list res(12);
    const at::Tensor& gy = grads[0];
    if (!gy.defined()) return res;
    if (need[4]) {  // residual: the output gradient, folded back through the pad (a gather)
      const std::vector<int64_t> p4(4, pad);
      res[4] = pad == 0                     ? gy
               : at::GradMode::is_enabled() ? at::reflection_pad2d_backward(gy, x, p4)
                                            : ops.pad_bwd.call(gy, p4, c10::nullopt, kActNone, 0.0);
    }
    if (!(need[0] || need[1] || need[2] || need[3])) return res;
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable reference formulas
      OptT rm, rv;
      if (running) {
        const auto r = ctx->saved_data["running"].toTensorVector();
        rm = r[0], rv = r[1];
      }
      const auto g = ops.ref_grads.call(gy, x, opt(rho), opt(gamma), opt(beta), rm, rv, kind, eps, act, slope, pad);
      for (int i = 0; i < 4; ++i)
        if (need[i]) res[i] = g[i];
      return res;
    }
    const at::Tensor sums = ops.sums.call(gy, x, mean, scale, shift, act, slope, pad);
    auto [c0, c1, drho, dg, db] =
        ops.coefs_bwd.call(mean, var, opt(rho), opt(gamma), opt(beta), sums, kind, x.size(2) * x.size(3), eps);
    if (need[0]) {
      if (running) c0 = at::zeros_like(mean), c1 = at::zeros_like(mean);  // constant statistics
      res[0] = ops.bwd.call(gy, x, mean, scale, shift, c0, c1, act, slope, pad);
    }
    if (need[1]) res[1] = param_grad(drho, rho);
    if (need[2]) res[2] = param_grad(dg, gamma);
    if (need[3]) res[3] = param_grad(db, beta);
    return res;
  }
};

Out3 plane_norm_autograd(const at::Tensor& x, const OptT& rho, const OptT& gamma, const OptT& beta,
                         const OptT& residual, const OptT& running_mean, const OptT& running_var, int64_t kind,
                         double eps, int64_t act, double slope, int64_t pad) {
  const auto r =
      PlaneNormFunction::apply(x, rho, gamma, beta, residual, running_mean, running_var, kind, eps, act, slope, pad);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, Autograd, m) { m.impl("plane_norm", &plane_norm_autograd); }

TORCH_LIBRARY_IMPL(i2i_fast, CompositeExplicitAutograd, m) { m.impl("plane_norm", &plane_norm_composite); }

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("plane_norm_stats", &plane_norm_stats_cpu);
  m.impl("plane_norm_apply", &plane_norm_apply_cpu);
  m.impl("plane_norm_apply_sums", &plane_norm_apply_sums_cpu);
  m.impl("plane_norm_apply_bwd", &plane_norm_apply_bwd_cpu);
  m.impl("plane_norm_coefs", &plane_norm_coefs_cpu);
  m.impl("plane_norm_coefs_bwd", &plane_norm_coefs_bwd_cpu);
  m.impl("plane_norm_update_running", &plane_norm_update_running_cpu);
}

}  // namespace i2i
