// Host-side checks and index math shared by the CPU (csrc/reflection_pad.cpp) and CUDA
// (kernels/reflection_pad.cu) kernels of i2i_fast::reflection_pad2d_fwd / reflection_pad2d_bwd.
// pad = (left, right, top, bottom), torch's order; every pad must be >= 0 and < the size of its
// axis (torch's rule). Both layouts (NCHW-contiguous, channels_last) are read in place; other
// strided views are copied to NCHW once.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "norm_math.h"

namespace i2i {

struct PadGeom {
  int64_t N, C, H, W, l, r, t, b;
  bool channels_last;
  I2I_HD int64_t Ho() const { return H + t + b; }
  I2I_HD int64_t Wo() const { return W + l + r; }
  at::MemoryFormat format() const {
    return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  }
};

inline bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline PadGeom check_geom(const at::Tensor& t, int64_t H, int64_t W, at::IntArrayRef pad, bool cl, const char* what) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), what, ": input must be floating point, got ", t.scalar_type());
  TORCH_CHECK(pad.size() == 4, what, ": pad must have 4 entries (left, right, top, bottom), got ", pad.size());
  PadGeom g{t.size(0), t.size(1), H, W, pad[0], pad[1], pad[2], pad[3], cl};
  TORCH_CHECK(g.l >= 0 && g.r >= 0 && g.t >= 0 && g.b >= 0, what, ": pad must be >= 0, got ", pad);
  TORCH_CHECK(g.l < g.W && g.r < g.W, what, ": pad (left, right) = (", g.l, ", ", g.r, ") must be < the input width ",
              g.W);
  TORCH_CHECK(g.t < g.H && g.b < g.H, what, ": pad (top, bottom) = (", g.t, ", ", g.b, ") must be < the input height ",
              g.H);
  return g;
}

// Geometry of a pad of x (N, C, H, W) by pad; `what` names the op in errors.
inline PadGeom pad_geom(const at::Tensor& x, at::IntArrayRef pad, const char* what) {
  TORCH_CHECK(x.dim() == 4, what, ": expected input of rank 4 (N, C, H, W), got rank ", x.dim());
  return check_geom(x, x.size(2), x.size(3), pad, is_channels_last(x), what);
}

// Geometry of the backward: grad is (N, C, H + t + b, W + l + r); the input size follows.
inline PadGeom pad_geom_bwd(const at::Tensor& grad, at::IntArrayRef pad, const char* what) {
  TORCH_CHECK(grad.dim() == 4, what, ": expected grad of rank 4, got rank ", grad.dim());
  TORCH_CHECK(pad.size() == 4, what, ": pad must have 4 entries (left, right, top, bottom), got ", pad.size());
  const int64_t H = grad.size(2) - pad[2] - pad[3], W = grad.size(3) - pad[0] - pad[1];
  TORCH_CHECK(H > 0 && W > 0, what, ": grad of shape ", grad.sizes(), " is smaller than pad ", pad);
  return check_geom(grad, H, W, pad, is_channels_last(grad), what);
}

// The C++ signatures of the ops, for typed handles (the autograd nodes, the norms' residual).
using PadFwdSig = at::Tensor(const at::Tensor&, at::IntArrayRef, int64_t, double);
using PadBwdSig = at::Tensor(const at::Tensor&, at::IntArrayRef, const c10::optional<at::Tensor>&, int64_t, double);

// The activations the pad ops fold in. TANH is rejected: the ops' double backward takes act' as
// piecewise constant (its derivative 0), true of RELU and LEAKY_RELU only.
inline void check_pad_act(int64_t act, const char* what) {
  TORCH_CHECK(act == kActNone || act == kRelu || act == kLeakyRelu, what,
              ": act must be Activation.NONE, RELU or LEAKY_RELU, got ", act);
}

// The backward's x (the forward's input) in the gradient's memory format, or an undefined tensor
// when act is NONE (x is not read then).
inline at::Tensor pad_act_input(const c10::optional<at::Tensor>& x, const PadGeom& g, const at::Tensor& grad,
                                int64_t act, const char* what) {
  check_pad_act(act, what);
  if (act == kActNone) return at::Tensor();
  TORCH_CHECK(x.has_value() && x->defined(), what, ": act needs x, the forward's input");
  TORCH_CHECK(x->dim() == 4 && x->size(0) == g.N && x->size(1) == g.C && x->size(2) == g.H && x->size(3) == g.W, what,
              ": x must have shape (", g.N, ", ", g.C, ", ", g.H, ", ", g.W, "), got ", x->sizes());
  TORCH_CHECK(x->scalar_type() == grad.scalar_type() && x->device() == grad.device(), what, ": x (", x->scalar_type(),
              " on ", x->device(), ") must match grad (", grad.scalar_type(), " on ", grad.device(), ")");
  return x->contiguous(g.format());
}

}  // namespace i2i
