// CPU kernels of the plane-affine normalization ops (schemas in csrc/ops.cpp, host prep in
// csrc/norm.h): norm_stats, norm_apply, norm_apply_sums, norm_apply_bwd.
// Tasks as in instance_norm.cpp: one NCHW plane (loops vectorized along H*W) or kCB channels of
// one channels_last sample (loops vectorized along channels). The output pad is written by
// filling the border from the interior just written (cache-hot); its backward first folds the
// padded gradient into a per-task buffer (a gather: each pixel sums its mirror sources in a
// fixed order), so the sums and the input gradient read an unpadded gradient.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "cpu_loops.h"
#include "norm.h"

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

// Border of a reflection-padded map whose interior is written: copy each border pixel (cw
// channels) from its mirror inside. Rows first, then full rows, so corners mirror twice.
template <typename T>
void fill_pad(T* y, int64_t H, int64_t W, int64_t P, int64_t pix, int64_t cw) {
  const int64_t Wo = W + 2 * P;
  auto cp = [&](int64_t r, int64_t c, int64_t sr, int64_t sc) {
    T* d = y + (r * Wo + c) * pix;
    const T* s = y + (sr * Wo + sc) * pix;
    for (int64_t k = 0; k < cw; ++k) d[k] = s[k];
  };
  for (int64_t r = P; r < H + P; ++r)
    for (int64_t j = 0; j < P; ++j) cp(r, j, r, 2 * P - j), cp(r, W + P + j, r, W + P - 2 - j);
  for (int64_t j = 0; j < P; ++j)
    for (int64_t c = 0; c < Wo; ++c) cp(j, c, 2 * P - j, c), cp(H + P + j, c, H + P - 2 - j, c);
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
template <typename T, typename acc_t>
const T* task_grad(const PA<T, acc_t>& a, const Task& t, std::vector<T>& buf, int64_t& gpix) {
  static_assert(std::is_same<T, acc_t>::value, "CPU kernels run in fp32/fp64");
  const int64_t P = a.pad;
  if (P == 0) {
    gpix = t.pix;
    return a.g + t.xb;
  }
  gpix = t.cw;
  buf.assign(a.HW * t.cw, T(0));
  const T* g = a.g + t.ob;
  int64_t rs[3], cs[3];
  for (int64_t i = 0; i < a.H; ++i) {
    const int nr = reflect_dst(i, a.H, P, P, rs);
    for (int64_t j = 0; j < a.W; ++j) {
      const int nc = reflect_dst(j, a.W, P, P, cs);
      T* d = buf.data() + (i * a.W + j) * t.cw;
      for (int u = 0; u < nr; ++u)
        for (int v = 0; v < nc; ++v) {
          const T* s = g + (rs[u] * t.Wo + cs[v]) * t.pix;
          for (int64_t k = 0; k < t.cw; ++k) d[k] += s[k];
        }
    }
  }
  return buf.data();
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
    g = task_grad(a, t, buf, gpix);
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

#define I2I_TASK(Name, fn)                                                   \
  template <typename T, typename acc_t, int ACT, bool CL>                    \
  struct Name {                                                              \
    static void run(const PA<T, acc_t>& a, int64_t n, int64_t c0) {          \
      fn<T, acc_t, ACT, CL>(a, n, c0);                                       \
    }                                                                        \
  };
template <typename T, typename acc_t, int, bool CL>
void stats_any(const PA<T, acc_t>& a, int64_t n, int64_t c0) { stats_task<T, acc_t, CL>(a, n, c0); }
I2I_TASK(Stats, stats_any)
I2I_TASK(Apply, apply_task)
I2I_TASK(SumsK, sums_task)
I2I_TASK(Bwd, bwd_task)
#undef I2I_TASK

// fp16/bf16 run the fp32 kernels on upcast copies (see instance_norm.cpp).
bool is_half(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor up(const at::Tensor& t) { return t.to(at::kFloat); }

std::tuple<at::Tensor, at::Tensor> norm_stats_cpu(const at::Tensor& x) {
  if (is_half(x)) return norm_stats_cpu(up(x));
  PlaneIO io = prep_stats(x);
  if (io.x.numel() > 0) run<Stats>(io);
  return finish_stats(io);
}

at::Tensor norm_apply_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                          const at::Tensor& shift, const c10::optional<at::Tensor>& residual,
                          int64_t act, double slope, int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(!residual.has_value() || residual->scalar_type() == x.scalar_type(),
                "i2i_fast norm: residual must match x's device and dtype");
    c10::optional<at::Tensor> r = residual.has_value() ? c10::optional<at::Tensor>(up(*residual)) : residual;
    return norm_apply_cpu(up(x), mean, scale, shift, r, act, slope, pad).to(x.scalar_type());
  }
  PlaneIO io = prep_apply(x, mean, scale, shift, residual, act, slope, pad);
  if (io.out.numel() > 0) run<Apply>(io);
  return io.out;
}

at::Tensor norm_apply_sums_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                               const at::Tensor& scale, const at::Tensor& shift, int64_t act,
                               double slope, int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "i2i_fast norm: grad must match x's device and dtype");
    return norm_apply_sums_cpu(up(grad), up(x), mean, scale, shift, act, slope, pad);
  }
  PlaneIO io = prep_sums(grad, x, mean, scale, shift, act, slope, pad);
  if (io.x.numel() > 0) run<SumsK>(io);
  return io.sums;
}

at::Tensor norm_apply_bwd_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                              const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& c0,
                              const at::Tensor& c1, int64_t act, double slope, int64_t pad) {
  if (is_half(x)) {
    TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "i2i_fast norm: grad must match x's device and dtype");
    return norm_apply_bwd_cpu(up(grad), up(x), mean, scale, shift, c0, c1, act, slope, pad).to(x.scalar_type());
  }
  PlaneIO io = prep_apply_bwd(grad, x, mean, scale, shift, c0, c1, act, slope, pad);
  if (io.x.numel() > 0) run<Bwd>(io);
  return io.out;
}

// ---- per-plane coefficients (CPU): the (N, C) math of i2i_fast/_norm.py coefs and
// coefs_backward, one call each and in fp64, instead of ~40 small torch ops per layer.
// kind: 0 instance norm, 1 U-GAT-IT ILN/adaILN (rho mix, unbiased), 2 MUNIT LayerNorm.
at::Tensor f64(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->to(at::kDouble).contiguous() : at::Tensor();
}

// One sample's coefficients and the intermediates the backward needs.
struct SampleCoefs {
  const double *m, *v, *rho, *g, *b;  // g/b: this sample's (C,) view, or null
  int64_t C, hw, kind;
  double eps;
  std::vector<double> scale, shift, rin, dm;
  double rln = 0, sd = 0, k_unb = 0, l_unb = 0;
  double unb(double n) const { return n > 1 ? n / (n - 1) : std::numeric_limits<double>::quiet_NaN(); }
  double gam(int64_t c) const { return g ? g[c] : 1.0; }
  double bet(int64_t c) const { return b ? b[c] : 0.0; }
  double rh(int64_t c) const { return kind == 1 ? rho[c] : (kind == 0 ? 1.0 : 0.0); }
  void run() {
    scale.resize(C), shift.resize(C), rin.resize(C), dm.resize(C);
    k_unb = unb(double(hw)), l_unb = unb(double(C) * hw) / (double(C) * hw);
    double mln = 0, m2 = 0;
    for (int64_t c = 0; c < C; ++c) mln += m[c];
    mln /= C;
    for (int64_t c = 0; c < C; ++c) dm[c] = m[c] - mln, m2 += (v[c] + dm[c] * dm[c]) * hw;
    const double vln = m2 * l_unb;
    rln = 1 / std::sqrt(vln + eps), sd = std::sqrt(vln);
    for (int64_t c = 0; c < C; ++c) {
      if (kind == 0) {
        rin[c] = 1 / std::sqrt(v[c] + eps);
        scale[c] = gam(c) * rin[c], shift[c] = bet(c);
      } else if (kind == 1) {
        rin[c] = 1 / std::sqrt(v[c] * k_unb + eps);
        scale[c] = gam(c) * (rh(c) * rin[c] + (1 - rh(c)) * rln);
        shift[c] = bet(c) + gam(c) * (1 - rh(c)) * rln * dm[c];
      } else {
        const double r = 1 / (sd + eps);
        scale[c] = gam(c) * r, shift[c] = bet(c) + scale[c] * dm[c];
      }
    }
  }
  // Gradients given s1 = sum dz, s2 = sum dz (x - mean) per channel of this sample: d mean,
  // d var (plane statistics) and d rho / d gamma / d beta per channel (as coefs_backward).
  void backward(const double* s1, const double* s2, double* dmean, double* dvar, double* drho,
                double* dg, double* db) const {
    double dr = 0, tsum = 0;
    std::vector<double> t(C);
    for (int64_t c = 0; c < C; ++c) {
      const double g_ = gam(c), r_ = rh(c);
      db[c] = s1[c];
      if (kind == 0) {
        dvar[c] = s2[c] * g_ * -0.5 * rin[c] * rin[c] * rin[c];
        dg[c] = s2[c] * rin[c], drho[c] = 0, t[c] = 0;
      } else if (kind == 1) {
        const double k = r_ * rin[c] + (1 - r_) * rln;
        dg[c] = s2[c] * k + s1[c] * (1 - r_) * rln * dm[c];
        drho[c] = g_ * s2[c] * (rin[c] - rln) - g_ * s1[c] * rln * dm[c];
        t[c] = s1[c] * g_ * (1 - r_) * rln;
        dr += g_ * s2[c] * (1 - r_) + s1[c] * g_ * (1 - r_) * dm[c];
        dvar[c] = g_ * s2[c] * r_ * -0.5 * rin[c] * rin[c] * rin[c] * k_unb;
      } else {
        const double r = 1 / (sd + eps);
        dg[c] = s2[c] * r + s1[c] * r * dm[c], drho[c] = 0;
        t[c] = s1[c] * g_ * r;
        dr += g_ * s2[c] + g_ * s1[c] * dm[c];
        dvar[c] = 0;
      }
      tsum += t[c];
    }
    double dm2 = 0;
    if (kind == 1) dm2 = dr * -0.5 * rln * rln * rln * l_unb;
    if (kind == 2) { const double r = 1 / (sd + eps); dm2 = -dr * r * r / (2 * sd) * l_unb; }
    for (int64_t c = 0; c < C; ++c) {
      dvar[c] += dm2 * hw;
      dmean[c] = t[c] - tsum / C + dm2 * 2 * hw * dm[c] - scale[c] * s1[c];
    }
  }
};

struct CoefIn {
  at::Tensor m, v, rho, g, b;
  int64_t N, C;
  SampleCoefs sample(int64_t n, int64_t kind, int64_t hw, double eps) const {
    auto row = [&](const at::Tensor& t) -> const double* {
      if (!t.defined()) return nullptr;
      return t.data_ptr<double>() + (t.numel() == C ? 0 : n * C);
    };
    SampleCoefs s{m.data_ptr<double>() + n * C, v.data_ptr<double>() + n * C, row(rho), row(g), row(b),
                  C, hw, kind, eps, {}, {}, {}, {}};
    s.run();
    return s;
  }
};

CoefIn coef_in(const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& rho,
               const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, int64_t kind) {
  TORCH_CHECK(mean.dim() == 2 && var.sizes() == mean.sizes(), "i2i_fast norm_coefs: mean and var must be (N, C)");
  TORCH_CHECK(kind >= 0 && kind <= 2, "i2i_fast norm_coefs: unknown kind ", kind);
  CoefIn in{mean.to(at::kDouble).contiguous(), var.to(at::kDouble).contiguous(), f64(rho), f64(gamma),
            f64(beta), mean.size(0), mean.size(1)};
  TORCH_CHECK(kind != 1 || (in.rho.defined() && in.rho.numel() == in.C), "i2i_fast norm_coefs: rho must have C elements");
  for (const at::Tensor* t : {&in.g, &in.b})
    TORCH_CHECK(!t->defined() || t->numel() == in.C || t->numel() == in.N * in.C,
                "i2i_fast norm_coefs: gamma/beta must have C or N*C elements");
  return in;
}

std::tuple<at::Tensor, at::Tensor> norm_coefs_cpu(const at::Tensor& mean, const at::Tensor& var,
                                                  const c10::optional<at::Tensor>& rho,
                                                  const c10::optional<at::Tensor>& gamma,
                                                  const c10::optional<at::Tensor>& beta, int64_t kind,
                                                  int64_t hw, double eps) {
  const CoefIn in = coef_in(mean, var, rho, gamma, beta, kind);
  at::Tensor scale = at::empty({in.N, in.C}, in.m.options()), shift = at::empty_like(scale);
  for (int64_t n = 0; n < in.N; ++n) {
    const SampleCoefs s = in.sample(n, kind, hw, eps);
    std::copy(s.scale.begin(), s.scale.end(), scale.data_ptr<double>() + n * in.C);
    std::copy(s.shift.begin(), s.shift.end(), shift.data_ptr<double>() + n * in.C);
  }
  return {scale.to(mean.scalar_type()), shift.to(mean.scalar_type())};
}

// (c0, c1) for norm_apply_bwd and the parameter gradients (shaped like the parameters'
// flattened numel: C, or N*C for per-sample ones; empty when the parameter is absent).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_coefs_bwd_cpu(
    const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& rho,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
    const at::Tensor& sums, int64_t kind, int64_t hw, double eps) {
  const CoefIn in = coef_in(mean, var, rho, gamma, beta, kind);
  const int64_t N = in.N, C = in.C;
  TORCH_CHECK(sums.numel() == N * C * 2, "i2i_fast norm_coefs_bwd: sums must be (N, C, 2)");
  const at::Tensor sm = sums.to(at::kDouble).contiguous().reshape({N, C, 2});
  const auto opt = in.m.options();
  at::Tensor c0 = at::empty({N, C}, opt), c1 = at::empty({N, C}, opt);
  at::Tensor drho = at::zeros({C}, opt);
  auto grad_like = [&](const at::Tensor& p) { return p.defined() ? at::zeros({p.numel()}, opt) : at::zeros({0}, opt); };
  at::Tensor dg = grad_like(in.g), db = grad_like(in.b);
  std::vector<double> s1(C), s2(C), dmean(C), dvar(C), dr(C), g(C), b(C);
  for (int64_t n = 0; n < N; ++n) {
    const double* q = sm.data_ptr<double>() + n * C * 2;
    for (int64_t c = 0; c < C; ++c) s1[c] = q[2 * c], s2[c] = q[2 * c + 1];
    in.sample(n, kind, hw, eps).backward(s1.data(), s2.data(), dmean.data(), dvar.data(), dr.data(), g.data(), b.data());
    for (int64_t c = 0; c < C; ++c) {  // fixed order over n: deterministic
      c0.data_ptr<double>()[n * C + c] = dmean[c] / hw;
      c1.data_ptr<double>()[n * C + c] = dvar[c] * 2.0 / hw;
      drho.data_ptr<double>()[c] += dr[c];
      if (dg.numel()) dg.data_ptr<double>()[dg.numel() == C ? c : n * C + c] += g[c];
      if (db.numel()) db.data_ptr<double>()[db.numel() == C ? c : n * C + c] += b[c];
    }
  }
  const auto sd = mean.scalar_type();
  return {c0.to(sd), c1.to(sd), drho.to(sd), dg.to(sd), db.to(sd)};
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("norm_stats", &norm_stats_cpu);
  m.impl("norm_apply", &norm_apply_cpu);
  m.impl("norm_apply_sums", &norm_apply_sums_cpu);
  m.impl("norm_apply_bwd", &norm_apply_bwd_cpu);
  m.impl("norm_coefs", &norm_coefs_cpu);
  m.impl("norm_coefs_bwd", &norm_coefs_bwd_cpu);
}

}  // namespace i2i
