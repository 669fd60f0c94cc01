// Shared by the CPU (csrc/loss.cpp) and CUDA (kernels/loss.cu) kernels of
// i2i_fast::loss_fwd / loss_bwd: the elementwise loss math (value and derivative, no target
// tensor), the term table and argument checks.
//
// loss_fwd reduces many terms (each a tensor x_t, optionally y_t for L1) in one launch:
//   reduction mean: loss = sum_t w_t / n_t * sum_i f(x_ti),  sum: w_t * sum_i f(x_ti),
//   none: out_t = w_t * f(x_t) elementwise.
// and writes each term's gradient d loss / d x_t = scale_t * f'(x_t) in the same pass.
// Terms are cut into chunks; each chunk's partial sum (times its term's scale) is written in
// a fixed slot and the partials are added in chunk order: bitwise deterministic, no atomics.
#pragma once
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <cmath>
#include <vector>

#include "codes.h"
#include "norm_math.h"

namespace i2i {

// Kinds that read a second tensor y per term (the target).
I2I_HD constexpr bool loss_has_y(int kind) { return kind == kAbs || kind == kBceTarget; }

// Value v and derivative d (w.r.t. x) of the elementwise loss with parameter a, written as
// torch computes it so NaN/Inf propagate the same way:
//   square   (x - a)^2                                  (MSELoss vs a target filled with a)
//   bce      (1 - a) x - logsigmoid(x)                  (BCEWithLogitsLoss vs a), d = sigmoid(x) - a
//   hinge    relu(1 + a x)                              (a = -1 real, +1 fake), relu backward
//   linear   a x                                        (WGAN, hinge generator)
//   softplus softplus(a x), threshold 20                (CUT nonsaturating)
//   abs      |x - y|, d = sign(x - y)                   (L1)
//   bce_target  bce with the target y per element      (StarGAN's attribute labels)
template <int KIND, typename acc_t>
I2I_HD void loss_elem(acc_t x, acc_t y, acc_t a, acc_t& v, acc_t& d) {
  if constexpr (KIND == kBceTarget) {
    loss_elem<kBce, acc_t>(x, y, y, v, d);
  } else if constexpr (KIND == kSquare) {
    const acc_t r = x - a;
    v = r * r;
    d = acc_t(2) * r;
  } else if constexpr (KIND == kBce) {
    const acc_t e = std::exp(-std::abs(x));
    const acc_t log_sig = (x < acc_t(0) ? x : acc_t(0)) - std::log1p(e);
    v = (acc_t(1) - a) * x - log_sig;
    d = acc_t(1) / (acc_t(1) + std::exp(-x)) - a;
  } else if constexpr (KIND == kHinge) {
    const acc_t z = acc_t(1) + a * x;
    v = z < acc_t(0) ? acc_t(0) : z;   // NaN passes, as torch.relu
    d = z <= acc_t(0) ? acc_t(0) : a;  // threshold_backward
  } else if constexpr (KIND == kLinear) {
    v = a * x;
    d = a;
  } else if constexpr (KIND == kSoftplus) {
    const acc_t z = a * x;
    const acc_t e = std::exp(z);
    v = z > acc_t(20) ? z : std::log1p(e);
    d = z > acc_t(20) ? a : a * (e / (e + acc_t(1)));
  } else {  // kAbs
    const acc_t r = x - y;
    v = std::abs(r);
    d = acc_t((r > acc_t(0)) - (r < acc_t(0)));  // sign(NaN) = 0, as torch.sign
  }
}

template <class F>
void with_loss_kind(int64_t kind, F&& f) {
  switch (kind) {
    case kSquare: return f(std::integral_constant<int, kSquare>());
    case kBce: return f(std::integral_constant<int, kBce>());
    case kHinge: return f(std::integral_constant<int, kHinge>());
    case kLinear: return f(std::integral_constant<int, kLinear>());
    case kSoftplus: return f(std::integral_constant<int, kSoftplus>());
    case kBceTarget: return f(std::integral_constant<int, kBceTarget>());
    default: return f(std::integral_constant<int, kAbs>());
  }
}

// One term as the kernels see it. c0: index of its first chunk in the launch's chunk list.
struct LossTerm {
  const void* x;
  const void* y;  // kAbs, kBceTarget
  void* g;        // saved gradient (need_grad), x's dtype
  void* out;      // elementwise loss (reduction none)
  int64_t n, c0;
  double a, scale, w;  // parameter, gradient/partial scale (w/n for mean), weight
};

// Validated inputs and allocated outputs of loss_fwd.
struct LossIO {
  std::vector<at::Tensor> x, y, g, out;
  at::Tensor loss;  // 0-d, x's dtype (mean/sum)
  std::vector<LossTerm> terms;
  int64_t kind = 0, reduction = 1, nchunks = 0, total = 0;
  bool need_grad = false;
  at::ScalarType dtype = at::kFloat;
};

// Chunks of `chunk` elements per term; an empty term still gets one (empty) chunk so that a
// mean over zero elements gives 0 * (w / 0) = NaN, as torch.
// Output like t (contiguous). CPU: allocated without a dispatcher round trip (a batch-1 call
// allocates one gradient per term; at::empty_like costs ~2 us each there).
inline at::Tensor new_like(const at::Tensor& t) {
  if (t.device().is_cpu())
    return at::detail::empty_cpu(t.sizes(), t.scalar_type(), false, at::MemoryFormat::Contiguous);
  return at::empty(t.sizes(), t.options(), at::MemoryFormat::Contiguous);
}

inline LossIO prep_loss(const at::TensorList x, const at::TensorList y, at::ArrayRef<double> params,
                        at::ArrayRef<double> weights, int64_t kind, int64_t reduction, bool need_grad, int64_t chunk) {
  TORCH_CHECK(!x.empty(), "i2i_fast loss_fwd: x must hold at least one tensor");
  TORCH_CHECK(kind >= kSquare && kind <= kBceTarget, "i2i_fast loss_fwd: unknown loss kind ", kind);
  TORCH_CHECK(reduction >= kReduceNone && reduction <= kReduceSum,
              "i2i_fast loss_fwd: reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  TORCH_CHECK(loss_has_y(int(kind)) == !y.empty(),
              "i2i_fast loss_fwd: y is given exactly for kinds abs (L1) and bce_target");
  TORCH_CHECK(y.empty() || y.size() == x.size(), "i2i_fast loss_fwd: x and y must have the same length");
  TORCH_CHECK(params.size() == x.size() && weights.size() == x.size(),
              "i2i_fast loss_fwd: params and weights need one value per term (", x.size(), ")");
  LossIO io;
  io.kind = kind, io.reduction = reduction, io.need_grad = need_grad;
  io.dtype = x[0].scalar_type();
  const auto dev = x[0].device();
  for (size_t t = 0; t < x.size(); ++t) {
    TORCH_CHECK(at::isFloatingType(x[t].scalar_type()), "i2i_fast loss_fwd: x[", t, "] must be floating point, got ",
                x[t].scalar_type());
    TORCH_CHECK(x[t].scalar_type() == io.dtype && x[t].device() == dev, "i2i_fast loss_fwd: x[", t, "] is ",
                x[t].scalar_type(), " on ", x[t].device(), " but x[0] is ", io.dtype, " on ", dev,
                " (all terms share dtype and device)");
    io.x.push_back(x[t].contiguous());
    if (!y.empty()) {
      TORCH_CHECK(y[t].sizes() == x[t].sizes(), "i2i_fast loss_fwd: y[", t, "] has shape ", y[t].sizes(), " but x[", t,
                  "] has ", x[t].sizes());
      TORCH_CHECK(y[t].scalar_type() == io.dtype && y[t].device() == dev, "i2i_fast loss_fwd: y[", t,
                  "] must match x's dtype and device");
      io.y.push_back(y[t].contiguous());
    }
  }
  const auto opt = x[0].options();
  int64_t c = 0;
  for (size_t t = 0; t < x.size(); ++t) {
    LossTerm e{};
    e.n = io.x[t].numel();
    e.x = io.x[t].data_ptr();
    e.y = io.y.empty() ? nullptr : io.y[t].data_ptr();
    if (need_grad) {
      io.g.push_back(new_like(io.x[t]));
      e.g = io.g.back().data_ptr();
    }
    if (reduction == kReduceNone) {
      io.out.push_back(new_like(io.x[t]));
      e.out = io.out.back().data_ptr();
    }
    e.a = params[t];
    e.w = weights[t];
    e.scale = reduction == kReduceMean ? weights[t] / double(e.n) : weights[t];
    e.c0 = c;
    c += std::max<int64_t>(1, (e.n + chunk - 1) / chunk);
    io.total += e.n;
    io.terms.push_back(e);
  }
  io.nchunks = c;
  if (reduction != kReduceNone)
    io.loss = opt.device().is_cpu() ? at::detail::empty_cpu({}, io.dtype, false, at::MemoryFormat::Contiguous)
                                    : at::empty({}, opt);
  return io;
}

inline std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> finish_loss(LossIO& io) {
  std::vector<at::Tensor> outs = io.reduction == kReduceNone ? io.out : std::vector<at::Tensor>{io.loss};
  return {outs, io.g};
}

// loss_bwd: out_k = sign_k * saved[index_k] * grad_out, grad_out a scalar (grad_outs has one
// tensor of one element) or elementwise (grad_outs[index_k], reduction none).
struct ScaleTerm {
  const void* s;
  const void* go;
  void* out;
  int64_t n, c0;
  double sign;
};

inline at::Tensor as_grad(const at::Tensor& g, const at::Device& dev, at::ScalarType dtype) {
  if (g.device() == dev && g.scalar_type() == dtype && g.is_contiguous()) return g;
  return g.to(dev, dtype).contiguous();
}

struct ScaleIO {
  std::vector<at::Tensor> saved, go, out;
  std::vector<ScaleTerm> terms;
  bool per_elem = false;
  int64_t nchunks = 0;
  at::ScalarType dtype = at::kFloat;
};

inline ScaleIO prep_scale(const at::TensorList grad_outs, const at::TensorList saved, at::IntArrayRef index,
                          at::ArrayRef<double> sign, int64_t chunk) {
  TORCH_CHECK(!saved.empty(), "i2i_fast loss_bwd: saved must hold at least one tensor");
  TORCH_CHECK(index.size() == sign.size(), "i2i_fast loss_bwd: index and sign must have the same length");
  TORCH_CHECK(!grad_outs.empty(), "i2i_fast loss_bwd: grad_outs must not be empty");
  ScaleIO io;
  io.dtype = saved[0].scalar_type();
  const auto dev = saved[0].device();
  for (size_t t = 0; t < saved.size(); ++t) {
    TORCH_CHECK(saved[t].scalar_type() == io.dtype && saved[t].device() == dev,
                "i2i_fast loss_bwd: saved gradients share dtype and device");
    io.saved.push_back(saved[t].contiguous());
  }
  io.per_elem = !(grad_outs.size() == 1 && grad_outs[0].numel() == 1 && grad_outs[0].dim() == 0);
  if (io.per_elem) {
    TORCH_CHECK(grad_outs.size() == saved.size(),
                "i2i_fast loss_bwd: need one grad_out per saved tensor, or one scalar");
    for (size_t t = 0; t < saved.size(); ++t) {
      TORCH_CHECK(grad_outs[t].sizes() == saved[t].sizes(), "i2i_fast loss_bwd: grad_outs[", t, "] has shape ",
                  grad_outs[t].sizes(), ", expected ", saved[t].sizes());
      io.go.push_back(as_grad(grad_outs[t], dev, io.dtype));
    }
  } else {
    io.go.push_back(as_grad(grad_outs[0], dev, io.dtype));
  }
  int64_t c = 0;
  for (size_t k = 0; k < index.size(); ++k) {
    const int64_t i = index[k];
    TORCH_CHECK(i >= 0 && i < int64_t(saved.size()), "i2i_fast loss_bwd: index ", i, " out of range");
    io.out.push_back(new_like(io.saved[i]));
    ScaleTerm e{};
    e.s = io.saved[i].data_ptr();
    e.go = io.per_elem ? io.go[i].data_ptr() : io.go[0].data_ptr();
    e.out = io.out.back().data_ptr();
    e.n = io.saved[i].numel();
    e.c0 = c;
    e.sign = sign[k];
    c += (e.n + chunk - 1) / chunk;
    io.terms.push_back(e);
  }
  io.nchunks = c;
  return io;
}

}  // namespace i2i
