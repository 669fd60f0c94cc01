// Math shared by the CPU (csrc/) and CUDA (kernels/) kernels: plane statistics, inv_std and
// the fused epilogue (activation) with its derivative. Header-only, host+device.
#pragma once
#include <cmath>
#include <cstdint>

#include "codes.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define I2I_HD __host__ __device__ __forceinline__
#else
#define I2I_HD inline
#endif

namespace i2i {

// Sum of squared deviations from the mean of n values, from the sums of d = x - ref and of d^2
// for any reference ref (a pivot, or a rounded mean): sd2 - sd^2 / n removes ref's distance
// from the mean. fp64; never negative (rounding); NaN propagates.
I2I_HD double centered_m2(double sd2, double sd, int64_t n) {
  const double m2 = sd2 - sd * (sd / double(n));
  return m2 < 0 ? 0.0 : m2;
}

// One-pass plane statistics of the CUDA kernels (as the Triton kernels' _shifted_sums): the
// sums of d = x - pivot and d^2 in fp64, one pivot per plane (its first element) for every
// thread and chunk, so partial states merge by addition in a fixed order. Shifted, the sums
// round relative to the data's spread, not its offset (x + 1e6); fp64 keeps the error from
// growing with the plane (32768^2 planes) and d^2 in range (|x| up to fp32's limit). fp64
// adds cost nothing measurable on H100/H200 (the pass is bandwidth-bound).
struct ShiftedSums {
  double s1 = 0, s2 = 0;
  I2I_HD void push(double d) { s1 += d, s2 += d * d; }
  I2I_HD void merge(const ShiftedSums& o) { s1 += o.s1, s2 += o.s2; }
  // mean and biased variance of the n values pushed
  template <typename acc_t>
  I2I_HD void finish(double pivot, int64_t n, acc_t& mean, acc_t& var) const {
    mean = acc_t(pivot + s1 / double(n));
    var = acc_t(centered_m2(s2, s1, n) / double(n));
  }
};

// 1 / sqrt(var + eps) with torch's batch/instance norm rule: 0 where var + eps == 0 (eps = 0 on
// a constant plane, or denormal data whose variance underflows), so the output there is the
// bias, not NaN or Inf.
template <typename acc_t>
I2I_HD acc_t inv_std(acc_t var, acc_t eps) {
  const acc_t v = var + eps;
  return v == acc_t(0) ? acc_t(0) : acc_t(1) / std::sqrt(v);
}

// Instance norm's input gradient from dz = dL/dz, xhat and the plane means m1 = mean(dz),
// m2 = mean(dz xhat): k (dz - m1 - xhat m2) with input statistics, k dz with running ones (eval
// mode's gradient does not depend on x: an infinite x must not make it NaN, as in torch).
template <typename acc_t>
I2I_HD acc_t in_grad(acc_t k, acc_t dz, acc_t xh, acc_t m1, acc_t m2, bool input_stats) {
  return input_stats ? k * (dz - m1 - xh * m2) : k * dz;
}

template <typename acc_t>
I2I_HD acc_t act_fwd(acc_t z, int act, acc_t slope) {
  switch (act) {
    case kRelu: return z < acc_t(0) ? acc_t(0) : z;  // NaN passes through, as torch.relu
    case kLeakyRelu: return z < acc_t(0) ? z * slope : z;
    case kTanh: return std::tanh(z);
    default: return z;
  }
}

// d act(z) / dz, matching torch's backward formulas (threshold_backward, leaky_relu_backward).
template <typename acc_t>
I2I_HD acc_t act_grad(acc_t z, int act, acc_t slope) {
  switch (act) {
    case kRelu: return z <= acc_t(0) ? acc_t(0) : acc_t(1);
    case kLeakyRelu: return z > acc_t(0) ? acc_t(1) : slope;
    case kTanh: {
      acc_t t = std::tanh(z);
      return acc_t(1) - t * t;
    }
    default: return acc_t(1);
  }
}

// dL/dz for out = act(z) [+ residual], z = xhat * w + b, recomputed from the saved input.
template <typename acc_t>
I2I_HD acc_t norm_dz(acc_t gy, acc_t xhat, acc_t w, acc_t b, int act, acc_t slope) {
  return act == kActNone ? gy : gy * act_grad(xhat * w + b, act, slope);
}

// Reflection padding of an axis of size n by `before` / `after` (each < n), shared by the pad
// kernels and the norms' output pad. Input index read by padded position o:
I2I_HD int64_t reflect_src(int64_t o, int64_t n, int64_t before) {
  int64_t i = o - before;
  if (i < 0) i = -i;
  if (i >= n) i = 2 * (n - 1) - i;
  return i;
}

// The padded positions that read input index i (at most 3: itself, its mirror in the leading
// pad, its mirror in the trailing pad), in a fixed order so every backend sums them alike
// (the pad backward is this gather: no atomics).
I2I_HD int reflect_dst(int64_t i, int64_t n, int64_t before, int64_t after, int64_t* o) {
  int k = 0;
  o[k++] = i + before;
  if (i >= 1 && i <= before) o[k++] = before - i;
  if (i <= n - 2 && n - 1 - i <= after) o[k++] = before + 2 * (n - 1) - i;
  return k;
}

}  // namespace i2i
