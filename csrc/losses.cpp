// CPU kernels of i2i_fast::loss_fwd / loss_bwd (math and term table in losses.h).
// One at::parallel_for over all chunks of all terms (one "launch"): each chunk writes its
// gradient slice and its scaled partial sum into a fixed slot; the partials are then added in
// chunk order by one thread, so the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "losses.h"

namespace i2i {
namespace {

constexpr int64_t kLossChunk = 4096;

// The chunk sum is accumulated in double (vectorized lanes of ~256 elements each would
// otherwise lose a few fp32 ulps against torch's cascade sum); elementwise math in acc_t.
template <typename T, typename acc_t, int KIND>
acc_t fwd_chunk(const LossTerm& e, int64_t i0, int64_t i1, bool need_grad, bool none) {
  const T* x = static_cast<const T*>(e.x);
  const T* y = static_cast<const T*>(e.y);
  T* g = static_cast<T*>(e.g);
  T* o = static_cast<T*>(e.out);
  const acc_t a = acc_t(e.a), scale = acc_t(e.scale), w = acc_t(e.w);
  double s = 0;
  if (need_grad || none) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = i0; i < i1; ++i) {
      acc_t v, d;
      loss_elem<KIND, acc_t>(static_cast<acc_t>(x[i]), y ? static_cast<acc_t>(y[i]) : acc_t(0), a, v, d);
      s += double(v);
      if (need_grad) g[i] = static_cast<T>(d * scale);
      if (none) o[i] = static_cast<T>(v * w);
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = i0; i < i1; ++i) {
      acc_t v, d;
      loss_elem<KIND, acc_t>(static_cast<acc_t>(x[i]), y ? static_cast<acc_t>(y[i]) : acc_t(0), a, v, d);
      s += double(v);
    }
  }
  return acc_t(s * e.scale);
}

template <typename T, typename acc_t>
void scale_chunk(const ScaleTerm& e, int64_t i0, int64_t i1, bool per_elem) {
  const T* s = static_cast<const T*>(e.s);
  const T* go = static_cast<const T*>(e.go);
  T* out = static_cast<T*>(e.out);
  const acc_t sg = acc_t(e.sign);
  if (per_elem) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i)
      out[i] = static_cast<T>(sg * static_cast<acc_t>(s[i]) * static_cast<acc_t>(go[i]));
  } else {
    const acc_t k = static_cast<acc_t>(go[0]);
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<T>(sg * static_cast<acc_t>(s[i]) * k);
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> loss_fwd_cpu(
    at::TensorList x, at::TensorList y, at::ArrayRef<double> params, at::ArrayRef<double> weights,
    int64_t kind, int64_t reduction, bool need_grad) {
  LossIO io = prep_loss(x, y, params, weights, kind, reduction, need_grad, kLossChunk);
  const bool none = reduction == kReduceNone;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.dtype, "i2i_fast_loss_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> partial(io.nchunks);
    with_loss_kind(kind, [&](auto K) {
      const auto& terms = io.terms;
      at::parallel_for(0, io.nchunks, 8, [&](int64_t lo, int64_t hi) {
        size_t t = 0;
        for (int64_t c = lo; c < hi; ++c) {
          while (t + 1 < terms.size() && terms[t + 1].c0 <= c) ++t;
          const LossTerm& e = terms[t];
          const int64_t i0 = (c - e.c0) * kLossChunk, i1 = std::min(e.n, i0 + kLossChunk);
          partial[c] = fwd_chunk<scalar_t, acc_t, decltype(K)::value>(e, i0, i1, need_grad, none);
        }
      });
    });
    if (!none) {
      acc_t total = 0;
      for (int64_t c = 0; c < io.nchunks; ++c) total += partial[c];
      io.loss.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total);
    }
  });
  return finish_loss(io);
}

std::vector<at::Tensor> loss_bwd_cpu(at::TensorList grad_outs, at::TensorList saved,
                                     at::IntArrayRef index, at::ArrayRef<double> sign) {
  ScaleIO io = prep_scale(grad_outs, saved, index, sign, kLossChunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.dtype, "i2i_fast_loss_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto& terms = io.terms;
    const bool per_elem = io.per_elem;
    at::parallel_for(0, io.nchunks, 8, [&](int64_t lo, int64_t hi) {
      size_t t = 0;
      for (int64_t c = lo; c < hi; ++c) {
        while (t + 1 < terms.size() && terms[t + 1].c0 <= c) ++t;
        // empty outputs own no chunk: the owner of c is the last term starting at or before c
        const ScaleTerm& e = terms[t];
        const int64_t i0 = (c - e.c0) * kLossChunk, i1 = std::min(e.n, i0 + kLossChunk);
        scale_chunk<scalar_t, acc_t>(e, i0, i1, per_elem);
      }
    });
  });
  return io.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("loss_fwd", &loss_fwd_cpu);
  m.impl("loss_bwd", &loss_bwd_cpu);
}

}  // namespace i2i
