// The norm family's (N, C) coefficient math for one sample, host+device, fp64: the CPU op
// (csrc/norm.cpp) runs it per sample in a loop, the CUDA op (kernels/norm.cu) one thread per
// sample; the same formulas as i2i_fast/_norm.py coefs / coefs_backward (tested equal).
// kind: 0 instance norm, 1 U-GAT-IT ILN/adaILN (rho mix, unbiased variances, eps inside the
// sqrt), 2 MUNIT LayerNorm (unbiased std, eps added to the std).
#pragma once
#include <cmath>
#include <cstdint>

#include "norm_math.h"

namespace i2i {

// Host-side preparation (norm_coefs_args) lives in csrc/norm.cpp; the views point at fp64
// contiguous tensors. Parameters: rho (C,) or null; gamma/beta (C,), (N*C,) or null.
struct CoefArgs {
  const double *mean, *var, *rho, *g, *b;
  int64_t N, C, hw, kind, g_per_sample, b_per_sample;
  double eps;
  // workspace / outputs, all (N, C): per-plane intermediates and results
  double *scale, *shift, *rin, *dm, *t;
  double *rln, *sd;  // (N,)
};

I2I_HD double coef_unb(double n) { return n > 1 ? n / (n - 1) : NAN; }

// Forward for sample n: scale/shift of its C planes, plus the intermediates the backward uses.
I2I_HD void coefs_sample(const CoefArgs& a, int64_t n) {
  const int64_t C = a.C, o = n * C;
  const double* m = a.mean + o;
  const double* v = a.var + o;
  const double l_unb = coef_unb(double(C) * a.hw) / (double(C) * a.hw);
  double mln = 0, m2 = 0;
  for (int64_t c = 0; c < C; ++c) mln += m[c];
  mln /= C;
  for (int64_t c = 0; c < C; ++c) {  // Chan merge of the plane statistics
    a.dm[o + c] = m[c] - mln;
    m2 += (v[c] + a.dm[o + c] * a.dm[o + c]) * a.hw;
  }
  const double vln = m2 * l_unb, rln = 1 / sqrt(vln + a.eps), sd = sqrt(vln);
  a.rln[n] = rln, a.sd[n] = sd;
  for (int64_t c = 0; c < C; ++c) {
    const double g = a.g ? a.g[a.g_per_sample ? o + c : c] : 1.0;
    const double b = a.b ? a.b[a.b_per_sample ? o + c : c] : 0.0;
    if (a.kind == 0) {
      a.rin[o + c] = 1 / sqrt(v[c] + a.eps);
      a.scale[o + c] = g * a.rin[o + c], a.shift[o + c] = b;
    } else if (a.kind == 1) {
      const double r = a.rho[c];
      a.rin[o + c] = 1 / sqrt(v[c] * coef_unb(double(a.hw)) + a.eps);
      a.scale[o + c] = g * (r * a.rin[o + c] + (1 - r) * rln);
      a.shift[o + c] = b + g * (1 - r) * rln * a.dm[o + c];
    } else {
      a.rin[o + c] = 0;
      a.scale[o + c] = g / (sd + a.eps);
      a.shift[o + c] = b + a.scale[o + c] * a.dm[o + c];
    }
  }
}

// Backward for sample n (after coefs_sample): from sums (N, C, 2) = (sum dz, sum dz (x - mean))
// to c0/c1 of norm_apply_bwd and per-plane d rho / d gamma / d beta (N, C).
I2I_HD void coefs_backward_sample(const CoefArgs& a, int64_t n, const double* sums, double* c0,
                                  double* c1, double* drho, double* dg, double* db) {
  const int64_t C = a.C, o = n * C;
  const double l_unb = coef_unb(double(C) * a.hw) / (double(C) * a.hw);
  const double rln = a.rln[n], sd = a.sd[n];
  double dr = 0, tsum = 0;
  for (int64_t c = 0, p = o; c < C; ++c, ++p) {
    const double s1 = sums[2 * p], s2 = sums[2 * p + 1];
    const double g = a.g ? a.g[a.g_per_sample ? p : c] : 1.0;
    const double rin = a.rin[p], dm = a.dm[p];
    db[p] = s1;
    if (a.kind == 0) {
      c1[p] = s2 * g * -0.5 * rin * rin * rin;  // d var, scaled below
      dg[p] = s2 * rin, drho[p] = 0, a.t[p] = 0;
    } else if (a.kind == 1) {
      const double r = a.rho[c], k = r * rin + (1 - r) * rln;
      dg[p] = s2 * k + s1 * (1 - r) * rln * dm;
      drho[p] = g * s2 * (rin - rln) - g * s1 * rln * dm;
      a.t[p] = s1 * g * (1 - r) * rln;
      dr += g * s2 * (1 - r) + s1 * g * (1 - r) * dm;
      c1[p] = g * s2 * r * -0.5 * rin * rin * rin * coef_unb(double(a.hw));
    } else {
      const double r = 1 / (sd + a.eps);
      dg[p] = s2 * r + s1 * r * dm, drho[p] = 0;
      a.t[p] = s1 * g * r;
      dr += g * s2 + g * s1 * dm;
      c1[p] = 0;
    }
    tsum += a.t[p];
  }
  double dm2 = 0;  // d (sum of squared deviations over the sample)
  if (a.kind == 1) dm2 = dr * -0.5 * rln * rln * rln * l_unb;
  if (a.kind == 2) {
    const double r = 1 / (sd + a.eps);
    dm2 = -dr * r * r / (2 * sd) * l_unb;
  }
  for (int64_t c = 0, p = o; c < C; ++c, ++p) {
    const double dvar = c1[p] + dm2 * a.hw;
    const double dmean = a.t[p] - tsum / C + dm2 * 2 * a.hw * a.dm[p] - a.scale[p] * sums[2 * p];
    c0[p] = dmean / a.hw, c1[p] = dvar * 2.0 / a.hw;
  }
}

}  // namespace i2i
