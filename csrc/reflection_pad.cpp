// CPU kernels of i2i_fast::reflection_pad2d_fwd / reflection_pad2d_bwd.
// Forward: a copy, one task per output row (NCHW: left mirror, memcpy of the row, right mirror)
// or per output pixel (channels_last: memcpy of its C channels); with an activation the row /
// pixel is written as act(x) instead of copied (the mirrors copy activated values).
// Backward: a gather, no atomics. Each input pixel sums the <= 3 x <= 3 padded positions that
// read it (reflect_dst), in a fixed order, in fp32 (fp64 for fp64): bitwise deterministic and
// independent of the thread count. NCHW: one task per input row, the row accumulator is
// vectorized along W; channels_last: one task per input pixel, vectorized along C. With an
// activation each sum is multiplied by act'(x) before the one rounding.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "cpu_loops.h"
#include "reflection_pad.h"

namespace i2i {
namespace {

constexpr int64_t kGrainBytes = 32768;

// dst[0, n) = act(src[0, n)), in opmath; a copy when ACT is NONE.
template <int ACT, typename T, typename acc_t>
I2I_ALWAYS_INLINE void act_copy(T* dst, const T* src, int64_t n, acc_t slope) {
  if (ACT == kActNone) {
    std::memcpy(dst, src, sizeof(T) * n);
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(act_fwd(static_cast<acc_t>(src[j]), ACT, slope));
}

// dst[0, n) = acc[0, n) * act'(x[0, n)), rounded once to T.
template <int ACT, typename T, typename acc_t>
I2I_ALWAYS_INLINE void act_store(T* dst, const acc_t* acc, const T* x, int64_t n, acc_t slope) {
  if (ACT == kActNone) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(acc[j]);
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(acc[j] * act_grad(static_cast<acc_t>(x[j]), ACT, slope));
}

template <int ACT, typename T, typename acc_t>
void fwd_nchw(const T* x, T* y, const PadGeom& g, acc_t slope) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), H = g.H, W = g.W, l = g.l, r = g.r;
  // whole planes per task: no per-row index division (measured 10-15% of the copy)
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / int64_t(sizeof(T) * Wo * Ho));
  at::parallel_for(0, g.N * g.C, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t plane = lo; plane < hi; ++plane) {
      const T* xp = x + plane * H * W;
      T* dst = y + plane * Ho * Wo;
      for (int64_t oh = 0; oh < Ho; ++oh, dst += Wo) {
        const T* src = xp + reflect_src(oh, H, g.t) * W;
        act_copy<ACT>(dst + l, src, W, slope);
        cpu::mirror_cols(dst, W, l, r);
      }
    }
  });
}

template <int ACT, typename T, typename acc_t>
void fwd_nhwc(const T* x, T* y, const PadGeom& g, acc_t slope) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), C = g.C;
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / int64_t(sizeof(T) * std::max<int64_t>(C, 1)));
  at::parallel_for(0, g.N * Ho * Wo, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t n = p / (Ho * Wo), oh = (p / Wo) % Ho, ow = p % Wo;
      const int64_t ih = reflect_src(oh, g.H, g.t), iw = reflect_src(ow, g.W, g.l);
      act_copy<ACT>(y + p * C, x + ((n * g.H + ih) * g.W + iw) * C, C, slope);
    }
  });
}

template <int ACT, typename T, typename acc_t>
void bwd_nchw(const T* gy, const T* x, T* gx, const PadGeom& g, acc_t slope) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), H = g.H, W = g.W;
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / int64_t(sizeof(T) * Wo * 2));
  at::parallel_for(0, g.N * g.C * H, grain, [&](int64_t lo, int64_t hi) {
    std::vector<acc_t> acc(W);
    for (int64_t row = lo; row < hi; ++row) {
      const int64_t plane = row / H, ih = row % H;
      cpu::fold_row(gy + plane * Ho * Wo, ih, H, W, g.l, g.r, g.t, g.b, acc.data());
      act_store<ACT>(gx + row * W, acc.data(), x + row * W, W, slope);
    }
  });
}

template <int ACT, typename T, typename acc_t>
void bwd_nhwc(const T* gy, const T* x, T* gx, const PadGeom& g, acc_t slope) {
  const int64_t Wo = g.Wo(), H = g.H, W = g.W, C = g.C;
  const int64_t Ho = g.Ho();
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / int64_t(sizeof(T) * std::max<int64_t>(C, 1) * 2));
  at::parallel_for(0, g.N * H * W, grain, [&](int64_t lo, int64_t hi) {
    std::vector<acc_t> acc(C);
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t n = p / (H * W), ih = (p / W) % H, iw = p % W;
      int64_t rows[3], cols[3];
      const int nr = reflect_dst(ih, H, g.t, g.b, rows), nc = reflect_dst(iw, W, g.l, g.r, cols);
      for (int a = 0; a < nr; ++a) {
        for (int b = 0; b < nc; ++b) {
          const T* src = gy + ((n * Ho + rows[a]) * Wo + cols[b]) * C;
          if (a == 0 && b == 0) {
#pragma omp simd
            for (int64_t k = 0; k < C; ++k) acc[k] = static_cast<acc_t>(src[k]);
          } else {
#pragma omp simd
            for (int64_t k = 0; k < C; ++k) acc[k] += static_cast<acc_t>(src[k]);
          }
        }
      }
      act_store<ACT>(gx + p * C, acc.data(), x + p * C, C, slope);
    }
  });
}

}  // namespace

at::Tensor reflection_pad2d_fwd_cpu(const at::Tensor& x_in, at::IntArrayRef pad, int64_t act, double slope) {
  const PadGeom g = pad_geom(x_in, pad, "i2i_fast reflection_pad2d");
  check_pad_act(act, "i2i_fast reflection_pad2d");
  const at::Tensor x = x_in.contiguous(g.format());
  at::Tensor y = at::empty({g.N, g.C, g.Ho(), g.Wo()}, x.options().memory_format(g.format()));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "i2i_fast_reflection_pad2d_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::with_act(act, [&](auto A) {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      g.channels_last ? fwd_nhwc<decltype(A)::value>(xp, yp, g, acc_t(slope))
                      : fwd_nchw<decltype(A)::value>(xp, yp, g, acc_t(slope));
    });
  });
  return y;
}

at::Tensor reflection_pad2d_bwd_cpu(const at::Tensor& grad_in, at::IntArrayRef pad,
                                    const c10::optional<at::Tensor>& x_in, int64_t act, double slope) {
  const PadGeom g = pad_geom_bwd(grad_in, pad, "i2i_fast reflection_pad2d_bwd");
  const at::Tensor x = pad_act_input(x_in, g, grad_in, act, "i2i_fast reflection_pad2d_bwd");
  const at::Tensor gy = grad_in.contiguous(g.format());
  at::Tensor gx = at::empty({g.N, g.C, g.H, g.W}, gy.options().memory_format(g.format()));
  if (gx.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "i2i_fast_reflection_pad2d_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cpu::with_act(act, [&](auto A) {
      const scalar_t* gp = gy.data_ptr<scalar_t>();
      scalar_t* gxp = gx.data_ptr<scalar_t>();
      const scalar_t* xp = x.defined() ? x.data_ptr<scalar_t>() : gxp;  // not read without an activation
      g.channels_last ? bwd_nhwc<decltype(A)::value, scalar_t, acc_t>(gp, xp, gxp, g, acc_t(slope))
                      : bwd_nchw<decltype(A)::value, scalar_t, acc_t>(gp, xp, gxp, g, acc_t(slope));
    });
  });
  return gx;
}

// ---- autograd (device-agnostic, Autograd key): C++ nodes, as the losses. A Python
// autograd.Function cost ~30 us per pad forward+backward, the whole pad of a small map.
// Without an activation the forward and backward ops are each other's adjoints: each backward
// calls the other op through the dispatcher, so double backward (WGAN-GP through a padded D)
// works. With one (RELU / LEAKY_RELU), act' is piecewise constant: the backward op is linear in
// grad (its adjoint: pad(act'(x) * gg)) and its derivative in x is 0, as torch's
// threshold_backward / leaky_relu_backward.
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptT = c10::optional<at::Tensor>;

const c10::TypedOperatorHandle<PadFwdSig>& fwd_op() {
  static auto h =
      c10::Dispatcher::singleton().findSchemaOrThrow("i2i_fast::reflection_pad2d_fwd", "").typed<PadFwdSig>();
  return h;
}
const c10::TypedOperatorHandle<PadBwdSig>& bwd_op() {
  static auto h =
      c10::Dispatcher::singleton().findSchemaOrThrow("i2i_fast::reflection_pad2d_bwd", "").typed<PadBwdSig>();
  return h;
}

// g * act'(x) by torch's own backward formulas (differentiable: the double backward's path).
at::Tensor act_grad_mul(const at::Tensor& g, const at::Tensor& x, int64_t act, double slope) {
  if (act == kRelu) return at::threshold_backward(g, x, 0);
  if (act == kLeakyRelu) return at::leaky_relu_backward(g, x, slope, false);
  return g;
}

void save_act(AutogradContext* ctx, at::IntArrayRef pad, const OptT& x, int64_t act, double slope) {
  ctx->saved_data["pad"] = pad.vec();
  ctx->saved_data["act"] = act;
  ctx->saved_data["slope"] = slope;
  ctx->save_for_backward({act == kActNone || !x.has_value() ? at::Tensor() : *x});
}

struct PadFwdFunction : public torch::autograd::Function<PadFwdFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::IntArrayRef pad, int64_t act, double slope) {
    check_pad_act(act, "i2i_fast reflection_pad2d");
    save_act(ctx, pad, x, act, slope);
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(x, pad, act, slope);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto pad = ctx->saved_data["pad"].toIntVector();
    const int64_t act = ctx->saved_data["act"].toInt();
    const at::Tensor x = ctx->get_saved_variables()[0];
    at::Tensor gx;
    if (grads[0].defined()) gx = bwd_op().call(grads[0], pad, x, act, ctx->saved_data["slope"].toDouble());
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct PadBwdFunction : public torch::autograd::Function<PadBwdFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, at::IntArrayRef pad, const OptT& x, int64_t act,
                            double slope) {
    check_pad_act(act, "i2i_fast reflection_pad2d_bwd");
    save_act(ctx, pad, x, act, slope);
    at::AutoDispatchBelowADInplaceOrView guard;
    return bwd_op().call(g, pad, x, act, slope);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto pad = ctx->saved_data["pad"].toIntVector();
    const int64_t act = ctx->saved_data["act"].toInt();
    const at::Tensor x = ctx->get_saved_variables()[0];
    at::Tensor gg;
    if (grads[0].defined()) {
      const at::Tensor v =
          act == kActNone ? grads[0] : act_grad_mul(grads[0], x, act, ctx->saved_data["slope"].toDouble());
      gg = fwd_op().call(v, pad, kActNone, 0.0);
    }
    return {gg, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor pad_fwd_autograd(const at::Tensor& x, at::IntArrayRef pad, int64_t act, double slope) {
  return PadFwdFunction::apply(x, pad, act, slope);
}
at::Tensor pad_bwd_autograd(const at::Tensor& g, at::IntArrayRef pad, const OptT& x, int64_t act, double slope) {
  return PadBwdFunction::apply(g, pad, x, act, slope);
}
}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, Autograd, m) {
  m.impl("reflection_pad2d_fwd", &pad_fwd_autograd);
  m.impl("reflection_pad2d_bwd", &pad_bwd_autograd);
}

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("reflection_pad2d_fwd", &reflection_pad2d_fwd_cpu);
  m.impl("reflection_pad2d_bwd", &reflection_pad2d_bwd_cpu);
}

}  // namespace i2i
