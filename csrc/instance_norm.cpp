// CPU kernels of i2i_fast::instance_norm_fwd / instance_norm_bwd.
// NCHW: one task per (n, c) plane, contiguous inner loops. channels_last: one task per
// (n, block of kCB channels), the inner loop runs over channels (unit stride).
// Statistics are two-pass (cpu_loops.h plane_stats: shifted sums, then centered squares); loops are written so the
// compiler vectorizes them (omp simd); the activation is a template constant.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <type_traits>

#include "cpu_loops.h"
#include "instance_norm.h"
#include "norm_math.h"
#include "op_handle.h"
#include "reflection_pad.h"

namespace i2i {
namespace {

using namespace cpu;

template <typename T, typename acc_t>
using Args = NormArgs<T, acc_t>;

template <typename T, typename acc_t>
inline acc_t weight_of(const Args<T, acc_t>& a, int64_t p, int64_t c) {
  return a.w ? a.w[a.affine_index(p, c)] : acc_t(1);
}
template <typename T, typename acc_t>
inline acc_t bias_of(const Args<T, acc_t>& a, int64_t p, int64_t c) {
  return a.b ? a.b[a.affine_index(p, c)] : acc_t(0);
}

// ---- forward ----
template <typename T, typename acc_t, int ACT>
void fwd_nchw(const Args<T, acc_t>& a, int64_t p) {
  const int64_t c = p % a.C, HW = a.HW;
  const T* x = a.x + p * HW;
  acc_t mean, var;
  if (a.input_stats) {
    plane_stats(x, HW, mean, var);
    a.mean[p] = mean;
    a.var[p] = var;
  } else {
    mean = a.rmean[c];
    var = a.rvar[c];
  }
  // (x - mean) * scale + b, not x * scale + shift: a constant plane gives exactly b, as torch.
  const acc_t scale = weight_of(a, p, c) * inv_std(var, a.eps), shift = bias_of(a, p, c);
  // with an output pad: row by row into the padded plane's interior, then its border
  const int64_t P = a.pad, rows = P ? a.H : 1, cols = P ? a.W : HW, Wo = a.W + 2 * P;
  T* plane_out = a.out + p * (a.H + 2 * P) * Wo;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    const T* res = a.res ? a.res + p * HW + r * cols : nullptr;
    T* y = plane_out + (r + P) * Wo + P;
#pragma omp simd
    for (int64_t i = 0; i < cols; ++i) {
      acc_t o = act_fwd<acc_t>((static_cast<acc_t>(xr[i]) - mean) * scale + shift, ACT, a.slope);
      y[i] = static_cast<T>(res ? o + static_cast<acc_t>(res[i]) : o);
    }
  }
  if (P) fill_pad(plane_out, a.H, a.W, P, 1, 1);
}

template <typename T, typename acc_t, int ACT>
void fwd_nhwc(const Args<T, acc_t>& a, int64_t n, int64_t c0) {
  const int64_t C = a.C, HW = a.HW, cw = std::min(kCB, C - c0);
  const int64_t base = n * HW * C + c0;
  acc_t mean[kCB], var[kCB], scale[kCB], shift[kCB];
  if (a.input_stats) {
    block_stats(a.x + base, HW, C, cw, mean, var);
    for (int64_t k = 0; k < cw; ++k) {
      a.mean[n * C + c0 + k] = mean[k];
      a.var[n * C + c0 + k] = var[k];
    }
  } else {
    for (int64_t k = 0; k < cw; ++k) mean[k] = a.rmean[c0 + k], var[k] = a.rvar[c0 + k];
  }
  for (int64_t k = 0; k < cw; ++k) {
    scale[k] = weight_of(a, n * C + c0 + k, c0 + k) * inv_std(var[k], a.eps);
    shift[k] = bias_of(a, n * C + c0 + k, c0 + k);
  }
  // output pixel (i + P, j + P) of the (H + 2P) x (W + 2P) sample, then the border
  const int64_t P = a.pad, Wo = a.W + 2 * P, ob = n * (a.H + 2 * P) * Wo * C + c0;
  for (int64_t i = 0; i < HW; ++i) {
    const int64_t o = base + i * C, q = P ? ob + ((i / a.W + P) * Wo + i % a.W + P) * C : o;
#pragma omp simd
    for (int64_t k = 0; k < cw; ++k) {
      acc_t v = act_fwd<acc_t>((static_cast<acc_t>(a.x[o + k]) - mean[k]) * scale[k] + shift[k], ACT, a.slope);
      a.out[q + k] = static_cast<T>(a.res ? v + static_cast<acc_t>(a.res[o + k]) : v);
    }
  }
  if (P) fill_pad(a.out + ob, a.H, a.W, P, C, cw);
}

// ---- backward ----
// gx = rstd * w * (dz - mean(dz) - xhat * mean(dz * xhat)) with input statistics,
// gx = rstd * w * dz with running statistics; sums feed the weight/bias gradients.
template <typename T, typename acc_t, int ACT>
void bwd_nchw(const Args<T, acc_t>& a, int64_t p) {
  const int64_t c = p % a.C, HW = a.HW;
  const T* x = a.x + p * HW;
  thread_local std::vector<T> buf;  // reused across planes and calls: no allocation per plane
  int64_t gpix;
  const T* g = fold_grad<false>(a.g + p * (a.H + 2 * a.pad) * (a.W + 2 * a.pad), a.H, a.W, a.pad, 1, 1, buf, gpix);
  const acc_t mean = a.mean[p], rstd = inv_std(a.var[p], a.eps);
  const acc_t w = weight_of(a, p, c), b = bias_of(a, p, c);
  acc_t s1 = 0, s2 = 0;
  plane_sum2<kSumBlock, acc_t>(HW, s1, s2, [&](int64_t i, acc_t& u, acc_t& v) {
    const acc_t xh = (static_cast<acc_t>(x[i]) - mean) * rstd;
    const acc_t dz = norm_dz<acc_t>(static_cast<acc_t>(g[i]), xh, w, b, ACT, a.slope);
    u += dz;
    v += dz * xh;
  });
  a.sums[2 * p] = s1;
  a.sums[2 * p + 1] = s2;
  const acc_t k = rstd * w, m1 = s1 / HW, m2 = s2 / HW;
  T* gx = a.out + p * HW;
#pragma omp simd
  for (int64_t i = 0; i < HW; ++i) {
    acc_t xh = (static_cast<acc_t>(x[i]) - mean) * rstd;
    acc_t dz = norm_dz<acc_t>(static_cast<acc_t>(g[i]), xh, w, b, ACT, a.slope);
    gx[i] = static_cast<T>(in_grad(k, dz, xh, m1, m2, a.input_stats));
  }
}

template <typename T, typename acc_t, int ACT>
void bwd_nhwc(const Args<T, acc_t>& a, int64_t n, int64_t c0) {
  const int64_t C = a.C, HW = a.HW, cw = std::min(kCB, C - c0);
  const int64_t base = n * HW * C + c0;
  // the unpadded gradient: element (i, k) at g[i * gs + k]
  std::vector<T> buf;
  int64_t gs;
  const T* g =
      fold_grad<true>(a.g + n * (a.H + 2 * a.pad) * (a.W + 2 * a.pad) * C + c0, a.H, a.W, a.pad, C, cw, buf, gs);
  acc_t mean[kCB], rstd[kCB], w[kCB], b[kCB];
  double s1[kCB] = {0}, s2[kCB] = {0};  // fp64 block totals, as block_stats
  for (int64_t k = 0; k < cw; ++k) {
    mean[k] = a.mean[n * C + c0 + k];
    rstd[k] = inv_std(a.var[n * C + c0 + k], a.eps);
    w[k] = weight_of(a, n * C + c0 + k, c0 + k);
    b[k] = bias_of(a, n * C + c0 + k, c0 + k);
  }
  rows_sum2<kSumBlock, acc_t>(HW, cw, s1, s2, [&](int64_t i, int64_t k, acc_t& u, acc_t& v) {
    const int64_t o = base + i * C + k;
    const acc_t xh = (static_cast<acc_t>(a.x[o]) - mean[k]) * rstd[k];
    const acc_t dz = norm_dz<acc_t>(static_cast<acc_t>(g[i * gs + k]), xh, w[k], b[k], ACT, a.slope);
    u += dz;
    v += dz * xh;
  });
  acc_t kk[kCB], m1[kCB], m2[kCB];
  for (int64_t k = 0; k < cw; ++k) {
    const int64_t p = n * C + c0 + k;
    a.sums[2 * p] = static_cast<acc_t>(s1[k]);
    a.sums[2 * p + 1] = static_cast<acc_t>(s2[k]);
    kk[k] = rstd[k] * w[k];
    m1[k] = static_cast<acc_t>(s1[k] / HW);
    m2[k] = static_cast<acc_t>(s2[k] / HW);
  }
  for (int64_t i = 0; i < HW; ++i) {
    const int64_t o = base + i * C;
#pragma omp simd
    for (int64_t k = 0; k < cw; ++k) {
      acc_t xh = (static_cast<acc_t>(a.x[o + k]) - mean[k]) * rstd[k];
      acc_t dz = norm_dz<acc_t>(static_cast<acc_t>(g[i * gs + k]), xh, w[k], b[k], ACT, a.slope);
      a.out[o + k] = static_cast<T>(in_grad(kk[k], dz, xh, m1[k], m2[k], a.input_stats));
    }
  }
}

template <typename T>
using acc_of = at::opmath_type<T>;

// Runs kernel<T, acc_t, ACT>(args, n, c0, plane) over every task of io.
template <template <typename, typename, int> class K>
void run_tasks(const NormIO& io) {
  AT_DISPATCH_FLOATING_TYPES(io.x.scalar_type(), "i2i_fast_instance_norm_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const Args<scalar_t, acc_t> a = io.args<scalar_t, acc_t>();
    with_act(io.act, [&](auto A) {
      for_tasks(io.s.N, io.s.C, io.s.channels_last, io.s.HW, [&](int64_t n, int64_t c, int64_t p) {
        K<scalar_t, acc_t, decltype(A)::value>::run(a, io.s.channels_last, n, c, p);
      });
    });
  });
}

template <typename T, typename acc_t, int ACT>
struct Fwd {
  static void run(const Args<T, acc_t>& a, bool cl, int64_t n, int64_t c, int64_t p) {
    cl ? fwd_nhwc<T, acc_t, ACT>(a, n, c) : fwd_nchw<T, acc_t, ACT>(a, p);
  }
};

template <typename T, typename acc_t, int ACT>
struct Bwd {
  static void run(const Args<T, acc_t>& a, bool cl, int64_t n, int64_t c, int64_t p) {
    cl ? bwd_nhwc<T, acc_t, ACT>(a, n, c) : bwd_nchw<T, acc_t, ACT>(a, p);
  }
};

}  // namespace

// fp16/bf16: the per-element conversions inside the loops do not vectorize (measured 4-18x
// slower than fp32 at 1x256x64x64), so the fp32 kernels run on upcast copies (exact) and the
// result is rounded once, as the kernels would.
static bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

static c10::optional<at::Tensor> to_float(const c10::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return t->to(at::kFloat);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_fwd_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, double eps, int64_t act, double slope, int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(!residual.has_value() || !residual->defined() || residual->scalar_type() == x.scalar_type(),
                "i2i_fast instance_norm: residual must match x's device and dtype");
    auto [y, mean, var] = instance_norm_fwd_cpu(x.to(at::kFloat), weight, bias, to_float(residual), running_mean,
                                                running_var, eps, act, slope, pad);
    return {y.to(x.scalar_type()), mean, var};
  }
  NormIO io = prep_fwd(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad);
  run_tasks<Fwd>(io);
  return finish_fwd(io);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                     const at::Tensor& mean, const at::Tensor& var,
                                                                     const c10::optional<at::Tensor>& weight,
                                                                     const c10::optional<at::Tensor>& bias, double eps,
                                                                     int64_t act, double slope, bool input_stats,
                                                                     int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "i2i_fast instance_norm: grad must match x's device and dtype");
    auto [gx, gw, gb] = instance_norm_bwd_cpu(grad.to(at::kFloat), x.to(at::kFloat), mean, var, weight, bias, eps, act,
                                              slope, input_stats, pad);
    return {gx.to(x.scalar_type()), gw, gb};
  }
  NormIO io = prep_bwd(grad, x, mean, var, weight, bias, eps, act, slope, input_stats, pad);
  run_tasks<Bwd>(io);
  return finish_bwd(io);
}

// ---- autograd (device-agnostic, Autograd key): a C++ node, as the losses and the pad (a
// Python autograd.Function cost ~60 us per forward+backward, more than a small map's kernels).
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptT = c10::optional<at::Tensor>;

// The residual's gradient under an output pad: i2i_fast's pad backward (a gather; no atomics),
// which is differentiable (double backward) through its own autograd.
at::Tensor pad_bwd(const at::Tensor& gy, int64_t pad) {
  static auto op = op_of<PadBwdSig>("i2i_fast::reflection_pad2d_bwd");
  return op.call(gy, {pad, pad, pad, pad}, c10::nullopt, kActNone, 0.0);
}

struct InstanceNormFunction : public torch::autograd::Function<InstanceNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& weight, const OptT& bias,
                               const OptT& residual, const OptT& running_mean, const OptT& running_var, double eps,
                               int64_t act, double slope, int64_t pad) {
    static auto op = op_of<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const OptT&, const OptT&, const OptT&, const OptT&, const OptT&, double, int64_t, double,
        int64_t)>("i2i_fast::instance_norm_fwd");
    at::Tensor y, mean, var;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, mean, var) = op.call(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad);
    }
    ctx->save_for_backward({x, mean, var, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["pad"] = pad;
    ctx->saved_data["input_stats"] = !(running_mean.has_value() && running_mean->defined());
    // needs_input_grad counts only the tensors given: edge index of x, weight, bias, residual
    std::vector<int64_t> edge;
    int64_t e = 0;
    for (const OptT* t : {&weight, &bias, &residual}) edge.push_back(t->has_value() && (*t)->defined() ? ++e : -1);
    edge.insert(edge.begin(), 0);
    ctx->saved_data["edge"] = edge;
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);  // mean/var never get gradients: no zero tensors for them
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const OptT&, const OptT&, double,
                                                               int64_t, double, bool, int64_t);
    // create_graph: the reference formulas differentiated by autograd (a Python composite)
    using RefGrads = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const OptT&, const OptT&, double, int64_t, double, bool, int64_t);
    static auto op = op_of<Bwd>("i2i_fast::instance_norm_bwd");
    static auto ref_grads = op_of<RefGrads>("i2i_fast::instance_norm_ref_grads");
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &mean = s[1], &var = s[2], &w = s[3], &b = s[4];
    const double eps = ctx->saved_data["eps"].toDouble(), slope = ctx->saved_data["slope"].toDouble();
    const int64_t act = ctx->saved_data["act"].toInt(), pad = ctx->saved_data["pad"].toInt();
    const bool input_stats = ctx->saved_data["input_stats"].toBool();
    const auto edge = ctx->saved_data["edge"].toIntVector();
    bool need[4];
    for (int i = 0; i < 4; ++i) need[i] = edge[i] >= 0 && ctx->needs_input_grad(edge[i]);
    variable_list res(10);
    at::Tensor gy = grads[0];
    if (!gy.defined()) return res;
    if (need[3]) res[3] = pad ? pad_bwd(gy, pad) : gy;
    if (!(need[0] || need[1] || need[2])) return res;
    const OptT w_opt = w.defined() ? OptT(w) : OptT(), b_opt = b.defined() ? OptT(b) : OptT();
    variable_list g;
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable gradients
      g = ref_grads.call(gy, x, mean, var, w_opt, b_opt, eps, act, slope, input_stats, pad);
    } else {
      auto [gx, gw, gb] = op.call(gy, x, mean, var, w_opt, b_opt, eps, act, slope, input_stats, pad);
      g = {gx, w.defined() ? gw.view_as(w).to(w.scalar_type()) : at::Tensor(),
           b.defined() ? gb.view_as(b).to(b.scalar_type()) : at::Tensor()};
    }
    for (int i = 0; i < 3; ++i)
      if (need[i]) res[i] = g[i];
    return res;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_fwd_autograd(const at::Tensor& x, const OptT& weight,
                                                                          const OptT& bias, const OptT& residual,
                                                                          const OptT& running_mean,
                                                                          const OptT& running_var, double eps,
                                                                          int64_t act, double slope, int64_t pad) {
  const variable_list r =
      InstanceNormFunction::apply(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad);
  return {r[0], r[1], r[2]};
}
}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, Autograd, m) { m.impl("instance_norm_fwd", &instance_norm_fwd_autograd); }

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("instance_norm_fwd", &instance_norm_fwd_cpu);
  m.impl("instance_norm_bwd", &instance_norm_bwd_cpu);
}

}  // namespace i2i
