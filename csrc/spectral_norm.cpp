// CPU kernels of i2i_fast::spectral_norm_scale / spectral_norm_scale_bwd (math in spectral_norm.h) and their C++
// autograd node. Row partials in fp64 by at::parallel_for over rows, summed in row order by
// one thread: the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "spectral_norm.h"

namespace i2i {
namespace {

// sum over rows of part[o], part[o] = f(o) in fp64, in row order
template <class F>
double ordered_row_sum(int64_t O, int64_t K, F&& f) {
  std::vector<double> part(O);
  at::parallel_for(0, O, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t a, int64_t b) {
    for (int64_t o = a; o < b; ++o) part[o] = f(o);
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

// sum_k a[k] * b[k] in fp64
template <typename T>
double dot64(const T* a, const T* b, int64_t K) {
  double d = 0;
#pragma omp simd reduction(+ : d)
  for (int64_t k = 0; k < K; ++k) d += double(a[k]) * double(b[k]);
  return d;
}

template <typename T, typename acc_t>
void divide(const T* w, T* y, int64_t n, acc_t sg) {
  at::parallel_for(0, n, 32768, [&](int64_t a, int64_t b) {
#pragma omp simd
    for (int64_t i = a; i < b; ++i) y[i] = static_cast<T>(static_cast<acc_t>(w[i]) / sg);
  });
}

// out[o, k] = g[o, k] * inv - cu_o * v[k], cu_o = c * u[o]
template <typename T, typename acc_t>
void grad_rows(const T* g, const T* u, const T* v, T* out, int64_t O, int64_t K, acc_t inv, acc_t c) {
  at::parallel_for(0, O, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t a, int64_t b) {
    for (int64_t o = a; o < b; ++o) {
      const acc_t cu = c * static_cast<acc_t>(u[o]);
      const T* gr = g + o * K;
      T* orow = out + o * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k)
        orow[k] = static_cast<T>(static_cast<acc_t>(gr[k]) * inv - cu * static_cast<acc_t>(v[k]));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> spectral_norm_scale_cpu(const at::Tensor& w_in, const at::Tensor& u_in,
                                                           const at::Tensor& v_in) {
  const SnIO io = prep_sn(w_in, u_in, v_in);
  at::Tensor out = at::empty_like(io.w);
  at::Tensor sigma = at::empty({}, io.w.options().dtype(sn_sigma_dtype(io.w)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.w.scalar_type(), "i2i_fast_sn_scale_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *w = io.w.const_data_ptr<scalar_t>(), *u = io.u.const_data_ptr<scalar_t>(),
                   *v = io.v.const_data_ptr<scalar_t>();
    const int64_t K = io.K;
    const double s = ordered_row_sum(io.O, K, [&](int64_t o) { return double(u[o]) * dot64(w + o * K, v, K); });
    sigma.fill_(s);
    divide(w, out.data_ptr<scalar_t>(), io.O * K, acc_t(s));
  });
  return {out, sigma};
}

at::Tensor spectral_norm_scale_bwd_cpu(const at::Tensor& grad, const at::Tensor& w_in, const at::Tensor& u_in,
                                       const at::Tensor& v_in, const at::Tensor& sigma_in) {
  const SnIO io = prep_sn(w_in, u_in, v_in, grad, sigma_in);
  at::Tensor gw = at::empty_like(io.w);
  const double sg = io.sigma.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.w.scalar_type(), "i2i_fast_sn_scale_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *w = io.w.const_data_ptr<scalar_t>(), *u = io.u.const_data_ptr<scalar_t>(),
                   *v = io.v.const_data_ptr<scalar_t>(), *g = io.g.const_data_ptr<scalar_t>();
    const int64_t K = io.K;
    const double s = ordered_row_sum(io.O, K, [&](int64_t o) { return dot64(g + o * K, w + o * K, K); });
    grad_rows(g, u, v, gw.data_ptr<scalar_t>(), io.O, K, acc_t(1 / sg), acc_t(s / (sg * sg)));
  });
  return gw;
}

// ---- autograd: gradient for the weight only (u, v are constants, as in torch's spectral_norm).
// The backward calls spectral_norm_scale_bwd through the dispatcher; with create_graph (double backward,
// e.g. a gradient penalty through a spectral-normalized critic) it writes the same formula in
// differentiable aten ops.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct SnScaleFunction : public torch::autograd::Function<SnScaleFunction> {
  using Fwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);
  using Bwd = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
  static variable_list forward(AutogradContext* ctx, const at::Tensor& w, const at::Tensor& u, const at::Tensor& v) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("i2i_fast::spectral_norm_scale", "").typed<Fwd>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, sigma] = op.call(w, u, v);
    ctx->save_for_backward({w, u, v, sigma});
    ctx->mark_non_differentiable({sigma});
    ctx->set_materialize_grads(false);
    return {out, sigma};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("i2i_fast::spectral_norm_scale_bwd", "").typed<Bwd>();
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    if (at::GradMode::is_enabled()) {  // in fp32 (fp64) as the fused kernels
      const auto up = [](const at::Tensor& t) { return t.scalar_type() == at::kDouble ? t : t.to(at::kFloat); };
      const at::Tensor w = up(s[0]), u = up(s[1]), v = up(s[2]), gg = up(g);
      const at::Tensor sg = at::dot(u, at::mv(w, v));
      return {(gg / sg - (gg * w).sum() / (sg * sg) * at::outer(u, v)).to(s[0].scalar_type()), at::Tensor(),
              at::Tensor()};
    }
    return {op.call(g, s[0], s[1], s[2], s[3]), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> spectral_norm_scale_autograd(const at::Tensor& w, const at::Tensor& u,
                                                                const at::Tensor& v) {
  const auto r = SnScaleFunction::apply(w, u, v);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, Autograd, m) { m.impl("spectral_norm_scale", &spectral_norm_scale_autograd); }

TORCH_LIBRARY_IMPL(i2i_fast, CPU, m) {
  m.impl("spectral_norm_scale", &spectral_norm_scale_cpu);
  m.impl("spectral_norm_scale_bwd", &spectral_norm_scale_bwd_cpu);
}

}  // namespace i2i
