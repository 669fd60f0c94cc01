// The norm family's (N, C) coefficient math for one unit (a sample, or a channel for batch
// norm), host+device, fp64: the CPU op (csrc/plane_norm.cpp) runs the units in a loop, the CUDA op
// (kernels/plane_norm.cu) one thread per unit; the same formulas as i2i_fast/ops/plane_norm.py coefs / coefs_backward
// (tested equal). kind (codes.h NormKind): kInstanceNorm, kIln U-GAT-IT ILN/adaILN (rho mix, unbiased variances, eps
// inside the sqrt), kLayerNorm MUNIT LayerNorm (unbiased std, eps added to the std), kBatchNorm training-mode batch
// norm (biased variance over N, H, W). The first three mix the channels of a sample, batch norm the samples of a
// channel: the independent unit is a sample or, for kBatchNorm, a channel (see coefs_unit).
#pragma once
#include <cmath>
#include <cstdint>

#include "codes.h"
#include "norm_math.h"

namespace i2i {

// Host-side preparation (prep_coefs) lives in csrc/plane_norm.h. S is the statistics dtype (float,
// double for fp64 inputs): the inputs are read and the outputs written in it directly (no
// conversion round trips), every intermediate is fp64. Parameters: rho (C,) or null;
// gamma/beta (C,), (N*C,) or null.
template <typename S>
struct CoefArgs {
  const S *mean, *var, *rho, *g, *b;
  int64_t N, C, hw, kind, g_per_sample, b_per_sample;
  double eps;
  S *scale, *shift;  // outputs (N, C)
  // fp64 workspace, (N, C) per plane: intermediates of the forward kept for the backward,
  // the unrounded scale, d var, and the per-plane parameter gradients
  double *rin, *dm, *t, *sc, *dv, *drho, *dg, *db;
  double *rln, *sd;  // (max(N, C),): per sample (LN), rln per channel (batch norm)
};

I2I_HD double coef_unb(double n) { return n > 1 ? n / (n - 1) : NAN; }

// Forward for sample n: scale/shift of its C planes, plus the intermediates the backward uses.
template <typename S>
I2I_HD void coefs_sample(const CoefArgs<S>& a, int64_t n) {
  const int64_t C = a.C, o = n * C;
  const S* m = a.mean + o;
  const S* v = a.var + o;
  const double l_unb = coef_unb(double(C) * a.hw) / (double(C) * a.hw);
  double mln = 0, m2 = 0;
  for (int64_t c = 0; c < C; ++c) mln += double(m[c]);
  mln /= C;
  for (int64_t c = 0; c < C; ++c) {  // Chan merge of the plane statistics
    a.dm[o + c] = double(m[c]) - mln;
    m2 += (double(v[c]) + a.dm[o + c] * a.dm[o + c]) * a.hw;
  }
  const double vln = m2 * l_unb, rln = 1 / sqrt(vln + a.eps), sd = sqrt(vln);
  a.rln[n] = rln, a.sd[n] = sd;
  for (int64_t c = 0; c < C; ++c) {
    const double g = a.g ? double(a.g[a.g_per_sample ? o + c : c]) : 1.0;
    const double b = a.b ? double(a.b[a.b_per_sample ? o + c : c]) : 0.0;
    double sc, sh;
    if (a.kind == kInstanceNorm) {
      a.rin[o + c] = inv_std(double(v[c]), a.eps);  // torch's rule: 0 for var + eps == 0
      sc = g * a.rin[o + c], sh = b;
    } else if (a.kind == kIln) {
      const double r = a.rho[c];
      a.rin[o + c] = 1 / sqrt(double(v[c]) * coef_unb(double(a.hw)) + a.eps);
      sc = g * (r * a.rin[o + c] + (1 - r) * rln);
      sh = b + g * (1 - r) * rln * a.dm[o + c];
    } else {
      a.rin[o + c] = 0;
      sc = g / (sd + a.eps);
      sh = b + sc * a.dm[o + c];
    }
    a.sc[o + c] = sc;
    a.scale[o + c] = S(sc), a.shift[o + c] = S(sh);
  }
}

// Backward for sample n (after coefs_sample): from sums (N, C, 2) = (sum dz, sum dz (x - mean))
// to c0/c1 of plane_norm_apply_bwd and the per-plane d rho / d gamma / d beta (workspace).
template <typename S>
I2I_HD void coefs_backward_sample(const CoefArgs<S>& a, int64_t n, const S* sums, S* c0, S* c1) {
  const int64_t C = a.C, o = n * C;
  const double l_unb = coef_unb(double(C) * a.hw) / (double(C) * a.hw);
  const double rln = a.rln[n], sd = a.sd[n];
  double dr = 0, tsum = 0;
  for (int64_t c = 0, p = o; c < C; ++c, ++p) {
    const double s1 = sums[2 * p], s2 = sums[2 * p + 1];
    const double g = a.g ? double(a.g[a.g_per_sample ? p : c]) : 1.0;
    const double rin = a.rin[p], dm = a.dm[p];
    a.db[p] = s1;
    if (a.kind == kInstanceNorm) {
      a.dv[p] = s2 * g * -0.5 * rin * rin * rin;  // d var, scaled below
      a.dg[p] = s2 * rin, a.drho[p] = 0, a.t[p] = 0;
    } else if (a.kind == kIln) {
      const double r = a.rho[c], k = r * rin + (1 - r) * rln;
      a.dg[p] = s2 * k + s1 * (1 - r) * rln * dm;
      a.drho[p] = g * s2 * (rin - rln) - g * s1 * rln * dm;
      a.t[p] = s1 * g * (1 - r) * rln;
      dr += g * s2 * (1 - r) + s1 * g * (1 - r) * dm;
      a.dv[p] = g * s2 * r * -0.5 * rin * rin * rin * coef_unb(double(a.hw));
    } else {
      const double r = 1 / (sd + a.eps);
      a.dg[p] = s2 * r + s1 * r * dm, a.drho[p] = 0;
      a.t[p] = s1 * g * r;
      dr += g * s2 + g * s1 * dm;
      a.dv[p] = 0;
    }
    tsum += a.t[p];
  }
  double dm2 = 0;  // d (sum of squared deviations over the sample)
  if (a.kind == kIln) dm2 = dr * -0.5 * rln * rln * rln * l_unb;
  if (a.kind == kLayerNorm) {
    const double r = 1 / (sd + a.eps);
    dm2 = -dr * r * r / (2 * sd) * l_unb;
  }
  for (int64_t c = 0, p = o; c < C; ++c, ++p) {
    const double dvar = a.dv[p] + dm2 * a.hw;
    const double dmean = a.t[p] - tsum / C + dm2 * 2 * a.hw * a.dm[p] - a.sc[p] * double(sums[2 * p]);
    c0[p] = S(dmean / a.hw), c1[p] = S(dvar * 2.0 / a.hw);
  }
}

// Batch statistics of channel c from its N plane statistics (Chan merge): mean and biased
// variance over (N, H, W).
template <typename S>
I2I_HD void bn_channel_stats(const S* mean, const S* var, int64_t N, int64_t C, int64_t c, double& mb, double& vb) {
  mb = 0, vb = 0;
  for (int64_t n = 0; n < N; ++n) mb += double(mean[n * C + c]);
  mb /= N;
  for (int64_t n = 0, p = c; n < N; ++n, p += C) {
    const double d = double(mean[p]) - mb;
    vb += double(var[p]) + d * d;
  }
  vb /= N;
}

// torch's running-statistics updates for channel c, in double from the plane statistics (N, C).
// Batch norm (M = N * hw values): r_mean = (1 - m) r_mean + m mean, r_var = (1 - m) r_var +
// m var * M / (M - 1), with the batch mean and biased variance. Instance norm (aten's
// instance_norm updates a copy of r per plane, then averages the copies over n): the same with
// the planes' mean of means and mean of unbiased variances (hw values each).
template <typename S, typename R>
I2I_HD void running_channel(const S* mean, const S* var, int64_t N, int64_t C, int64_t hw, double m, bool per_plane,
                            R* rm, R* rv, int64_t c) {
  double mb = 0, vb = 0, M = double(hw);
  if (per_plane) {
    for (int64_t n = 0, p = c; n < N; ++n, p += C) mb += double(mean[p]), vb += double(var[p]);
    mb /= N, vb /= N;
  } else {
    bn_channel_stats(mean, var, N, C, c, mb, vb);
    M *= N;
  }
  rm[c] = R((1 - m) * double(rm[c]) + m * mb);
  rv[c] = R((1 - m) * double(rv[c]) + m * vb * (M / (M - 1)));
}

// Batch norm, forward for channel c: scale = g / sqrt(var + eps), shift = b + scale *
// (mean_plane - mean) with the batch mean / biased variance.
template <typename S>
I2I_HD void coefs_channel_bn(const CoefArgs<S>& a, int64_t c) {
  const int64_t N = a.N, C = a.C;
  double mb, vb;
  bn_channel_stats(a.mean, a.var, N, C, c, mb, vb);
  for (int64_t n = 0, p = c; n < N; ++n, p += C) a.dm[p] = double(a.mean[p]) - mb;
  const double r = inv_std(vb, a.eps);
  a.rln[c] = r;
  for (int64_t n = 0, p = c; n < N; ++n, p += C) {
    const double g = a.g ? double(a.g[a.g_per_sample ? p : c]) : 1.0;
    const double b = a.b ? double(a.b[a.b_per_sample ? p : c]) : 0.0;
    const double sc = g * r;
    a.sc[p] = sc, a.rin[p] = 0;
    a.scale[p] = S(sc), a.shift[p] = S(b + sc * a.dm[p]);
  }
}

// Batch norm, backward for channel c (after coefs_channel_bn). With S1 = sum dz and
// S2 = sum dz (x - mean) over the channel's N*hw values: dx = g r dz - g r S1 / M
// - g r^3 (x - mean) S2 / M, written per plane as scale dz + c0 + c1 (x - mean_plane).
template <typename S>
I2I_HD void coefs_backward_channel_bn(const CoefArgs<S>& a, int64_t c, const S* sums, S* c0, S* c1) {
  const int64_t N = a.N, C = a.C;
  const double r = a.rln[c], M = double(N) * a.hw;
  double S1 = 0, S2 = 0;
  for (int64_t n = 0, p = c; n < N; ++n, p += C) {
    const double s1 = sums[2 * p], s2 = sums[2 * p + 1] + a.dm[p] * s1;
    S1 += s1, S2 += s2;
    a.db[p] = s1, a.dg[p] = s2 * r, a.drho[p] = 0;
  }
  for (int64_t n = 0, p = c; n < N; ++n, p += C) {
    const double g = a.g ? double(a.g[a.g_per_sample ? p : c]) : 1.0;
    const double k1 = -g * r * r * r * S2 / M;
    c1[p] = S(k1), c0[p] = S(-g * r * S1 / M + k1 * a.dm[p]);
  }
}

// The coefficient math of one independent unit: a channel for kBatchNorm, else a sample.
template <typename S>
I2I_HD int64_t coef_units(const CoefArgs<S>& a) {
  return a.kind == kBatchNorm ? a.C : a.N;
}

template <typename S>
I2I_HD void coefs_unit(const CoefArgs<S>& a, int64_t u) {
  if (a.kind == kBatchNorm) coefs_channel_bn(a, u);
  else coefs_sample(a, u);
}

template <typename S>
I2I_HD void coefs_backward_unit(const CoefArgs<S>& a, int64_t u, const S* sums, S* c0, S* c1) {
  coefs_unit(a, u);
  if (a.kind == kBatchNorm) coefs_backward_channel_bn(a, u, sums, c0, c1);
  else coefs_backward_sample(a, u, sums, c0, c1);
}

}  // namespace i2i
