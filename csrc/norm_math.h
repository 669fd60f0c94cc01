// Math shared by the CPU (csrc/) and CUDA (kernels/) kernels: Welford/Chan statistics and
// the fused epilogue (activation) with its derivative. Header-only, host+device.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define I2I_HD __host__ __device__ __forceinline__
#else
#define I2I_HD inline
#endif

namespace i2i {

// Activation codes shared with Python (i2i_fast/_ops.py ACTIVATIONS).
enum Act : int { kNone = 0, kRelu = 1, kLeakyRelu = 2, kTanh = 3 };

// Running mean / sum of squared deviations. The count is an exact integer (a float count
// stops at 2^24); it is converted once per update, exactly below 2^24 as before.
template <typename acc_t>
struct Welford {
  acc_t mean = 0, m2 = 0;
  int64_t n = 0;
  I2I_HD void push(acc_t x) {
    n += 1;
    acc_t d = x - mean;
    mean += d / acc_t(n);
    m2 += d * (x - mean);
  }
  // Chan et al. parallel combination; order of merges is fixed by the caller (determinism).
  I2I_HD void merge(const Welford& o) {
    if (o.n == 0) return;
    if (n == 0) { *this = o; return; }
    const int64_t tot = n + o.n;
    acc_t d = o.mean - mean;
    acc_t f = acc_t(o.n) / acc_t(tot);
    mean += d * f;
    m2 += o.m2 + d * d * acc_t(n) * f;
    n = tot;
  }
};

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
    case kTanh: { acc_t t = std::tanh(z); return acc_t(1) - t * t; }
    default: return acc_t(1);
  }
}

// dL/dz for out = act(z) [+ residual], z = xhat * w + b, recomputed from the saved input.
template <typename acc_t>
I2I_HD acc_t norm_dz(acc_t gy, acc_t xhat, acc_t w, acc_t b, int act, acc_t slope) {
  return act == kNone ? gy : gy * act_grad(xhat * w + b, act, slope);
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
