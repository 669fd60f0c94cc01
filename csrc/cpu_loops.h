// CPU loop helpers shared by the normalization kernels (csrc/instance_norm.cpp, csrc/plane_norm.cpp):
// blocked two-level sums that vectorize, the activation as a template constant, the task
// split (a plane in NCHW, a block of kCB channels of one sample in channels_last).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>
#include <type_traits>

#include "norm_math.h"

namespace i2i {
namespace cpu {

// The summing helpers are forced inline: an out-of-line copy (gcc's choice under -fopenmp)
// loads x through the lambda's captures and vectorizes the loop as a gather, 6x slower.
#define I2I_ALWAYS_INLINE inline __attribute__((always_inline))

constexpr int64_t kCB = 16;  // channels per channels_last task: one 64-byte line of fp32

// Two-level summation: vectorized partial sums over blocks of kSumBlock elements, block totals
// added sequentially. Keeps fp32 rounding error of a 256x256 plane near torch's cascade sum.
constexpr int64_t kSumBlock = 512;

// t1 += sum f1(i), t2 += sum f2(i) over i in [0, n); f(i, a, b) adds its terms to a and b
// (acc_t) within a block of B elements; block totals go to t1, t2 (tot_t: fp64 where the sums
// feed parameter gradients).
template <int64_t B = kSumBlock, typename acc_t, typename tot_t, class F>
I2I_ALWAYS_INLINE void plane_sum2(int64_t n, tot_t& t1, tot_t& t2, F&& f) {
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    const int64_t i1 = std::min(n, i0 + B);
    acc_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = i0; i < i1; ++i) f(i, a, b);
    t1 += a;
    t2 += b;
  }
}

// channels_last: per-channel sums over n rows of cw channels; f(i, k, a, b) adds to a and b.
template <int64_t B = kSumBlock, typename acc_t, typename tot_t, class F>
I2I_ALWAYS_INLINE void rows_sum2(int64_t n, int64_t cw, tot_t* t1, tot_t* t2, F&& f) {
  for (int64_t i0 = 0; i0 < n; i0 += B / kCB) {
    const int64_t i1 = std::min(n, i0 + B / kCB);
    acc_t a[kCB] = {0}, b[kCB] = {0};
    for (int64_t i = i0; i < i1; ++i) {
#pragma omp simd
      for (int64_t k = 0; k < cw; ++k) f(i, k, a[k], b[k]);
    }
    for (int64_t k = 0; k < cw; ++k) t1[k] += a[k], t2[k] += b[k];
  }
}

template <class F>
void with_act(int64_t act, F&& f) {
  switch (act) {
    case kRelu: return f(std::integral_constant<int, kRelu>());
    case kLeakyRelu: return f(std::integral_constant<int, kLeakyRelu>());
    case kTanh: return f(std::integral_constant<int, kTanh>());
    default: return f(std::integral_constant<int, kActNone>());
  }
}

// Runs fn(n, c0, task) over every task (a plane, or a channel block in channels_last) in
// parallel; per_plane: elements one task touches per channel.
template <class Fn>
void for_tasks(int64_t N, int64_t C, bool channels_last, int64_t per_plane, Fn&& fn) {
  const int64_t blocks = channels_last ? (C + kCB - 1) / kCB : C;
  const int64_t per_task = channels_last ? per_plane * kCB : per_plane;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per_task, 1));
  at::parallel_for(0, N * blocks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) fn(t / blocks, (t % blocks) * (channels_last ? kCB : 1), t);
  });
}

// Two-pass mean and biased variance of one NCHW plane of n elements: vectorized fp32 (fp64)
// lanes over blocks of kSumBlock, fp64 block totals, so the error does not grow with the
// number of blocks (1024^2 planes and up). Pass 1 sums x - x[0]: shifted by a value of the
// plane, the lanes round relative to the data's spread, not to its offset (x + 1e6). Pass 2
// sums d = x - mean and d^2; m2 = sum d^2 - (sum d)^2 / n removes the rounding of mean.
template <typename T, typename acc_t>
I2I_ALWAYS_INLINE void plane_stats(const T* x, int64_t n, acc_t& mean, acc_t& var) {
  const acc_t pivot = n > 0 ? static_cast<acc_t>(x[0]) : acc_t(0);
  double s = 0, s1 = 0, m2 = 0, unused = 0;
  plane_sum2<kSumBlock, acc_t>(n, s, unused,
                               [&](int64_t i, acc_t& a, acc_t&) { a += static_cast<acc_t>(x[i]) - pivot; });
  mean = static_cast<acc_t>(double(pivot) + s / n);
  const acc_t m = mean;
  plane_sum2<kSumBlock, acc_t>(n, s1, m2, [&](int64_t i, acc_t& a, acc_t& b) {
    const acc_t d = static_cast<acc_t>(x[i]) - m;
    a += d;
    b += d * d;
  });
  var = static_cast<acc_t>(centered_m2(m2, s1, n) / n);
}

// The same for cw (<= kCB) channels of a channels_last sample: x points at its first channel,
// rows of C elements, n rows; each channel shifted by its value in row 0.
template <typename T, typename acc_t>
I2I_ALWAYS_INLINE void block_stats(const T* x, int64_t n, int64_t C, int64_t cw, acc_t* mean, acc_t* var) {
  acc_t pivot[kCB] = {0};
  for (int64_t k = 0; n > 0 && k < cw; ++k) pivot[k] = static_cast<acc_t>(x[k]);
  double s[kCB] = {0}, s1[kCB] = {0}, m2[kCB] = {0}, unused[kCB] = {0};
  rows_sum2<kSumBlock, acc_t>(n, cw, s, unused, [&](int64_t i, int64_t k, acc_t& u, acc_t&) {
    u += static_cast<acc_t>(x[i * C + k]) - pivot[k];
  });
  for (int64_t k = 0; k < cw; ++k) mean[k] = static_cast<acc_t>(double(pivot[k]) + s[k] / n);
  rows_sum2<kSumBlock, acc_t>(n, cw, s1, m2, [&](int64_t i, int64_t k, acc_t& u, acc_t& v) {
    const acc_t d = static_cast<acc_t>(x[i * C + k]) - mean[k];
    u += d;
    v += d * d;
  });
  for (int64_t k = 0; k < cw; ++k) var[k] = static_cast<acc_t>(centered_m2(m2[k], s1[k], n) / n);
}

// ---- NCHW reflection padding, shared by the pad kernels and the norms' output pad ----
// A padded row whose interior row[l, l + W) is written: fill its l + r mirrored ends.
template <typename T>
I2I_ALWAYS_INLINE void mirror_cols(T* row, int64_t W, int64_t l, int64_t r) {
  for (int64_t j = 0; j < l; ++j) row[j] = row[2 * l - j];
  for (int64_t j = 0; j < r; ++j) row[l + W + j] = row[l + W - 2 - j];
}

// The pad backward of input row i of a plane (a gather in a fixed order, no atomics): acc[0, W)
// = the sum over the padded rows that read row i (reflect_dst: itself, then its mirrors) of
// their interior, then their mirrored column ends. g: the padded plane, rows of Wo = W + l + r.
template <typename T, typename acc_t>
I2I_ALWAYS_INLINE void fold_row(const T* g, int64_t i, int64_t H, int64_t W, int64_t l, int64_t r, int64_t t, int64_t b,
                                acc_t* acc) {
  const int64_t Wo = W + l + r;
  int64_t rows[3];
  const int nr = reflect_dst(i, H, t, b, rows);
  for (int k = 0; k < nr; ++k) {
    const T* src = g + rows[k] * Wo;
    if (k == 0) {
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) acc[j] = static_cast<acc_t>(src[l + j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) acc[j] += static_cast<acc_t>(src[l + j]);
    }
    for (int64_t j = 1; j <= l; ++j) acc[j] += static_cast<acc_t>(src[l - j]);
    for (int64_t j = W - 1 - r; j <= W - 2; ++j) acc[j] += static_cast<acc_t>(src[l + 2 * (W - 1) - j]);
  }
}

// Border of a reflection-padded map whose interior is written: copy each border pixel (cw
// channels) from its mirror inside. Rows first, then full rows, so corners mirror twice.
template <typename T>
void fill_pad(T* y, int64_t H, int64_t W, int64_t P, int64_t pix, int64_t cw) {
  const int64_t Wo = W + 2 * P;
  if (pix == 1) {  // NCHW: mirrored row ends, then whole rows
    for (int64_t r = P; r < H + P; ++r) mirror_cols(y + r * Wo, W, P, P);
    for (int64_t j = 0; j < P; ++j) {
      std::memcpy(y + j * Wo, y + (2 * P - j) * Wo, sizeof(T) * Wo);
      std::memcpy(y + (H + P + j) * Wo, y + (H + P - 2 - j) * Wo, sizeof(T) * Wo);
    }
    return;
  }
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

// The unpadded output gradient of one task (a plane, or cw channels of a channels_last
// sample) from its padded gradient g (first element; pixel stride pix, rows of W + 2 P): g
// itself when P == 0 (gpix = pix), else its pad backward folded into buf (gpix = cw): each
// pixel sums its mirror sources in a fixed order (a gather, no atomics).
template <bool CL, typename T>
const T* fold_grad(const T* g, int64_t H, int64_t W, int64_t P, int64_t pix, int64_t cw, std::vector<T>& buf,
                   int64_t& gpix) {
  if (P == 0) {
    gpix = pix;
    return g;
  }
  gpix = cw;
  if (!CL) {  // NCHW: the pad kernels' row gather, vectorized along W
    buf.resize(H * W);
    for (int64_t i = 0; i < H; ++i) fold_row(g, i, H, W, P, P, P, P, buf.data() + i * W);
    return buf.data();
  }
  const int64_t Wo = W + 2 * P;
  buf.assign(H * W * cw, T(0));
  int64_t rs[3], cs[3];
  for (int64_t i = 0; i < H; ++i) {
    const int nr = reflect_dst(i, H, P, P, rs);
    for (int64_t j = 0; j < W; ++j) {
      const int nc = reflect_dst(j, W, P, P, cs);
      T* d = buf.data() + (i * W + j) * cw;
      for (int u = 0; u < nr; ++u)
        for (int v = 0; v < nc; ++v) {
          const T* s = g + (rs[u] * Wo + cs[v]) * pix;
          for (int64_t k = 0; k < cw; ++k) d[k] += s[k];
        }
    }
  }
  return buf.data();
}

}  // namespace cpu
}  // namespace i2i
