// CPU kernels of i2i_fast::loss_fwd / loss_bwd (math and term table in losses.h).
// One at::parallel_for over all chunks of all terms (one "launch"): each chunk writes its
// gradient slice and its scaled partial sum into a fixed slot; the partials are then added in
// chunk order by one thread, so the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include "loss.h"

namespace i2i {
namespace {

constexpr int64_t kLossChunk = 4096;

// The chunk sum is accumulated in double (vectorized lanes of ~256 elements each would
// otherwise lose a few fp32 ulps against torch's cascade sum); elementwise math in acc_t.
// y (L1 and bce_target only), the gradient and the elementwise output are template switches, so every loop
// is branch-free and vectorizes.
template <typename T, typename acc_t, int KIND, bool GRAD, bool NONE>
acc_t fwd_chunk(const LossTerm& e, int64_t i0, int64_t i1) {
  constexpr bool HAS_Y = loss_has_y(KIND);
  const T* x = static_cast<const T*>(e.x);
  const T* y = static_cast<const T*>(e.y);
  T* g = static_cast<T*>(e.g);
  T* o = static_cast<T*>(e.out);
  const acc_t a = acc_t(e.a), scale = acc_t(e.scale), w = acc_t(e.w);
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = i0; i < i1; ++i) {
    acc_t v, d;
    loss_elem<KIND, acc_t>(static_cast<acc_t>(x[i]), HAS_Y ? static_cast<acc_t>(y[i]) : acc_t(0), a, v, d);
    s += double(v);
    if constexpr (GRAD) g[i] = static_cast<T>(d * scale);
    if constexpr (NONE) o[i] = static_cast<T>(v * w);
  }
  return acc_t(s * e.scale);
}

template <typename T, typename acc_t, int KIND>
acc_t fwd_chunk(const LossTerm& e, int64_t i0, int64_t i1, bool need_grad, bool none) {
  if (need_grad)
    return none ? fwd_chunk<T, acc_t, KIND, true, true>(e, i0, i1) : fwd_chunk<T, acc_t, KIND, true, false>(e, i0, i1);
  return none ? fwd_chunk<T, acc_t, KIND, false, true>(e, i0, i1) : fwd_chunk<T, acc_t, KIND, false, false>(e, i0, i1);
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

// Runs f(term, chunk, i0, i1) for every chunk of kLossChunk elements, in parallel; chunks are
// numbered across the terms (term t owns [c0, next term's c0)). Empty terms own no chunk: the
// owner of chunk c is the last term starting at or before c.
template <class Term, class F>
void for_chunks(const std::vector<Term>& terms, int64_t nchunks, F&& f) {
  // fewer than 16 chunks (64 K elements, batch-1 D outputs) run on the calling thread: waking
  // the thread pool costs more than the work
  at::parallel_for(0, nchunks, 16, [&](int64_t lo, int64_t hi) {
    size_t t = 0;
    for (int64_t c = lo; c < hi; ++c) {
      while (t + 1 < terms.size() && terms[t + 1].c0 <= c) ++t;
      const Term& e = terms[t];
      const int64_t i0 = (c - e.c0) * kLossChunk;
      f(e, c, i0, std::min(e.n, i0 + kLossChunk));
    }
  });
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> loss_fwd_cpu(at::TensorList x, at::TensorList y,
                                                                          at::ArrayRef<double> params,
                                                                          at::ArrayRef<double> weights, int64_t kind,
                                                                          int64_t reduction, bool need_grad) {
  LossIO io = prep_loss(x, y, params, weights, kind, reduction, need_grad, kLossChunk);
  const bool none = reduction == kReduceNone;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.dtype, "i2i_fast_loss_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> partial(io.nchunks);
    with_loss_kind(kind, [&](auto K) {
      for_chunks(io.terms, io.nchunks, [&](const LossTerm& e, int64_t c, int64_t i0, int64_t i1) {
        partial[c] = fwd_chunk<scalar_t, acc_t, decltype(K)::value>(e, i0, i1, need_grad, none);
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

std::vector<at::Tensor> loss_bwd_cpu(at::TensorList grad_outs, at::TensorList saved, at::IntArrayRef index,
                                     at::ArrayRef<double> sign) {
  ScaleIO io = prep_scale(grad_outs, saved, index, sign, kLossChunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.dtype, "i2i_fast_loss_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool per_elem = io.per_elem;
    for_chunks(io.terms, io.nchunks, [&](const ScaleTerm& e, int64_t, int64_t i0, int64_t i1) {
      scale_chunk<scalar_t, acc_t>(e, i0, i1, per_elem);
    });
  });
  return io.out;
}

// ---- autograd (device-agnostic, registered for the Autograd key) ----
// A C++ autograd node: the batch-1 cost of a loss is dispatch overhead, and a Python
// autograd.Function (or torch.library's Python autograd wrapper) costs tens of us per call.
// Forward runs loss_fwd below autograd and keeps the gradients it wrote; backward is ONE
// loss_bwd call that scales them. Under create_graph (double backward) the backward is
// written with differentiable ATen ops from the saved inputs instead.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

static at::Tensor elem_grad(int64_t kind, const at::Tensor& x, const at::Tensor& y, double a) {
  switch (kind) {
    case kSquare: return (x - a) * 2;
    case kBce: return at::sigmoid(x) - a;
    case kHinge: return at::where((x * a + 1).le(0), at::zeros_like(x), at::full_like(x, a));
    case kLinear: return at::full_like(x, a);
    case kBceTarget: return at::sigmoid(x) - y;
    case kSoftplus: {
      const at::Tensor z = x * a;
      return at::where(z.gt(20), at::full_like(x, a), at::sigmoid(z) * a);
    }
    default: return at::sign(x - y);
  }
}

// Config packed into two saved_data entries (each entry is a hashed string key: ten of them
// cost more than the batch-1 kernel). cfg = {nx, ny, nouts, kind, reduction, any, shared,
// need...}; shared: the caller asked for the gradients too (loss_fwd's second output).
enum Cfg { kNx, kNy, kNouts, kKind, kRed, kAny, kShared, kNeed };

// An incoming gradient that is exactly 1 in a plain CPU scalar (loss.backward(), autograd.grad
// of the loss): read directly, no dispatch. Anything else (CUDA: reading it would synchronize,
// fake or functional tensors: no data) is "not known to be 1".
bool is_unit_cpu_scalar(const at::Tensor& g) {
  if (!g.defined() || !g.is_cpu() || g.numel() != 1 || g.layout() != at::kStrided || at::isTensorSubclassLike(g) ||
      g.is_neg() || g.is_conj())
    return false;
  if (g.scalar_type() == at::kFloat) return *g.const_data_ptr<float>() == 1.0f;
  if (g.scalar_type() == at::kDouble) return *g.const_data_ptr<double>() == 1.0;
  return false;
}

struct LossFunction : public torch::autograd::Function<LossFunction> {
  // The gradients written by the forward leave through `grads_out`, not as outputs of the
  // node: they are never differentiated, and every node output costs autograd bookkeeping.
  static variable_list forward(AutogradContext* ctx, at::TensorList x, at::TensorList y, at::ArrayRef<double> params,
                               at::ArrayRef<double> weights, int64_t kind, int64_t reduction, bool need_grad,
                               bool shared, std::vector<at::Tensor>* grads_out) {
    std::vector<int64_t> cfg{int64_t(x.size()), int64_t(y.size()), 0, kind, reduction, 0, shared};
    for (const auto& t : x) cfg.push_back(t.requires_grad()), cfg[kAny] |= t.requires_grad();
    for (const auto& t : y) cfg.push_back(t.requires_grad()), cfg[kAny] |= t.requires_grad();
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("i2i_fast::loss_fwd", "")
            .typed<std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>>(
                at::TensorList, at::TensorList, at::ArrayRef<double>, at::ArrayRef<double>, int64_t, int64_t, bool)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    // need_grad: asked for by the caller, or some input needs a gradient and grad mode was on
    // at the call (loss_fwd_autograd); under no_grad no gradient is written
    auto [outs, grads] = op.call(x, y, params, weights, kind, reduction, need_grad);
    cfg[kNouts] = int64_t(outs.size());
    ctx->save_for_backward(variable_list(grads.begin(), grads.end()));
    // the inputs are read again only by a create_graph backward: kept as plain references
    // (no SavedVariable to pack and unpack per term, ~1 us each at batch 1)
    std::vector<at::Tensor> inputs(x.begin(), x.end());
    inputs.insert(inputs.end(), y.begin(), y.end());
    ctx->saved_data["inputs"] = inputs;
    std::vector<double> pw(params.begin(), params.end());
    pw.insert(pw.end(), weights.begin(), weights.end());
    ctx->saved_data["pw"] = pw;
    ctx->saved_data["cfg"] = cfg;
    if (shared) *grads_out = grads;
    ctx->set_materialize_grads(false);  // unused outputs of reduction none: zeros only if needed
    return variable_list(outs.begin(), outs.end());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto cfg = ctx->saved_data["cfg"].toIntVector();
    const int64_t nx = cfg[kNx], ny = cfg[kNy], nouts = cfg[kNouts];
    const int64_t* need = cfg.data() + kNeed;
    const variable_list saved = ctx->get_saved_variables();
    // one gradient per input: x..., y..., then params, weights, kind, reduction, need_grad, shared, grads_out
    variable_list res(nx + ny + 7);
    std::vector<at::Tensor> go(grad_outputs.begin(), grad_outputs.begin() + nouts);
    bool defined = false;
    for (const auto& g : go) defined |= g.defined();
    if (!cfg[kAny] || !defined) return res;  // unused loss outputs: no gradient
    for (int64_t t = 0; t < nouts; ++t)      // reduction none, some terms unused: zero gradient
      if (!go[t].defined()) go[t] = at::zeros_like(saved[t]);
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable formula
      const auto pw = ctx->saved_data["pw"].toDoubleVector();
      const int64_t kind = cfg[kKind], red = cfg[kRed];
      const auto inputs = ctx->saved_data["inputs"].toTensorVector();
      for (int64_t t = 0; t < nx; ++t) {
        if (!need[t] && !(ny && need[nx + t])) continue;
        const at::Tensor& x = inputs[t];
        const at::Tensor y = ny ? inputs[nx + t] : at::Tensor();
        const double w = pw[nx + t], scale = red == kReduceMean ? w / double(x.numel()) : w;
        at::Tensor g = elem_grad(kind, x, y, pw[t]) * scale;
        g = g * (red == kReduceNone ? go[t] : go[0]);
        if (need[t]) res[t] = g;
        if (ny && need[nx + t]) res[nx + t] = -g;
      }
      return res;
    }
    // grad_out == 1 and the graph is freed right after this call (release_variables drops the
    // saved gradients): d loss / d x_t IS the saved gradient, handed out without loss_bwd's
    // copy (1 * g is g exactly). Not when the caller holds them too, nor for y (-g).
    bool y_needed = false;
    for (int64_t t = 0; t < ny; ++t) y_needed |= bool(need[nx + t]);
    if (nouts == 1 && !cfg[kShared] && !y_needed && !torch::autograd::get_current_graph_task_keep_graph() &&
        is_unit_cpu_scalar(go[0])) {
      for (int64_t t = 0; t < nx; ++t)
        if (need[t]) res[t] = saved[t];
      return res;
    }
    std::vector<int64_t> index;
    std::vector<double> sign;
    for (int64_t t = 0; t < nx; ++t)
      if (need[t]) index.push_back(t), sign.push_back(1.0);
    for (int64_t t = 0; t < ny; ++t)
      if (need[nx + t]) index.push_back(t), sign.push_back(-1.0);
    if (index.empty()) return res;
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("i2i_fast::loss_bwd", "")
            .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList, at::IntArrayRef, at::ArrayRef<double>)>();
    const auto out = op.call(go, saved, index, sign);  // saved: one gradient per x term
    size_t k = 0;
    for (int64_t t = 0; t < nx; ++t)
      if (need[t]) res[t] = out[k++];
    for (int64_t t = 0; t < ny; ++t)
      if (need[nx + t]) res[nx + t] = out[k++];
    return res;
  }
};

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> loss_fwd_autograd(at::TensorList x, at::TensorList y,
                                                                               at::ArrayRef<double> params,
                                                                               at::ArrayRef<double> weights,
                                                                               int64_t kind, int64_t reduction,
                                                                               bool need_grad) {
  bool any = false;
  if (at::GradMode::is_enabled()) {
    for (const auto& t : x) any |= t.requires_grad();
    for (const auto& t : y) {
      any |= t.requires_grad();
      // the backward gives y the gradient -d/dx, which holds for L1 only
      TORCH_CHECK(kind == kAbs || !t.requires_grad(),
                  "i2i_fast loss: the target of a bce_target loss takes no gradient (detach it)");
    }
  }
  // the gradients leave the op only when asked for (as the schema says), so the backward can
  // hand them out without a copy otherwise
  std::vector<at::Tensor> grads;
  variable_list outs = LossFunction::apply(x, y, params, weights, kind, reduction, need_grad || any, need_grad, &grads);
  return {std::move(outs), std::move(grads)};
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, Autograd, m) { m.impl("loss_fwd", &loss_fwd_autograd); }

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("loss_fwd", &loss_fwd_cpu);
  m.impl("loss_bwd", &loss_bwd_cpu);
}

}  // namespace i2i
