// Math shared by the CPU (csrc/) and CUDA (kernels/) kernels: Welford/Chan statistics and
// the fused epilogue (activation) with its derivative. Header-only, host+device.
#pragma once
#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define I2I_HD __host__ __device__ __forceinline__
#else
#define I2I_HD inline
#endif

namespace i2i {

// Activation codes shared with Python (i2i_fast/_ops.py ACTIVATIONS).
enum Act : int { kNone = 0, kRelu = 1, kLeakyRelu = 2, kTanh = 3 };

// Running mean / sum of squared deviations; count kept in the accumulator type so the
// merge needs no int->float conversions in the hot loop.
template <typename acc_t>
struct Welford {
  acc_t mean = 0, m2 = 0, n = 0;
  I2I_HD void push(acc_t x) {
    n += 1;
    acc_t d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  // Chan et al. parallel combination; order of merges is fixed by the caller (determinism).
  I2I_HD void merge(const Welford& o) {
    if (o.n == 0) return;
    if (n == 0) { *this = o; return; }
    acc_t tot = n + o.n;
    acc_t d = o.mean - mean;
    acc_t f = o.n / tot;
    mean += d * f;
    m2 += o.m2 + d * d * n * f;
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

// Reflection padding by p (< n): padded index o in [0, n + 2p) reads input index
// reflect_index(o - p, n).
I2I_HD long long reflect_index(long long t, long long n) {
  return t < 0 ? -t : (t >= n ? 2 * (n - 1) - t : t);
}

// The padded indices that read input index i: i + p, plus up to two mirrors. Writes them to o
// in a fixed order and returns how many (the pad backward is this gather: no atomics).
I2I_HD int mirror_sources(long long i, long long n, long long p, long long* o) {
  int k = 0;
  o[k++] = i + p;
  if (i >= 1 && i <= p) o[k++] = p - i;
  if (i <= n - 2 && i >= n - 1 - p) o[k++] = 2 * (n - 1) + p - i;
  return k;
}

}  // namespace i2i
