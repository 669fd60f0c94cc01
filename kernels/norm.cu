// CUDA kernels of the plane-affine normalization ops (schemas in csrc/ops.cpp, host prep in
// csrc/norm.h): norm_stats, norm_apply, norm_apply_sums, norm_apply_bwd.
//
// The reductions (stats, sums) give each (n, c) plane S blocks when the planes alone cannot
// fill the GPU (batch 1, large maps): per-chunk partial states merged in a fixed order by a
// second small kernel; a block reduces in a fixed tree (reduce.cuh). No atomics anywhere, so
// results are bitwise reproducible. The elementwise passes (apply, bwd) give every plane
// enough blocks to cover it. The output pad is a mirrored read in apply and a fixed-order
// gather of the mirror sources (norm_math.h reflect_dst) in the backward passes.
// Layout: NCHW; channels_last inputs are run on an NCHW copy (a channels_last tile path like
// instance_norm.cu's is future work).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../csrc/norm.h"
#include "../csrc/norm_coefs.h"
#include "../csrc/norm_math.h"
#include "reduce.cuh"

namespace i2i {
namespace {

using namespace gpu;

template <typename T, typename acc_t>
using PA = PlaneArgs<T, acc_t>;

// ---- statistics: ShiftedSums (norm_math.h), pivot = the plane's first element ----
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) stats_kernel(PA<T, acc_t> a) {
  const int64_t p = blockIdx.x, s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const T* x = a.x + p * a.HW;
  const double pivot = double(x[0]);
  ShiftedSums w;
  for (int64_t i = s0 + threadIdx.x; i < s1; i += kThreads) w.push(double(x[i]) - pivot);
  w = block_reduce<1>(w);
  if (threadIdx.x != 0) return;
  if (a.split) {
    double* q = a.dpart + (p * a.S + blockIdx.y) * 2;
    q[0] = w.s1, q[1] = w.s2;
  } else {
    w.finish(pivot, a.HW, a.stat_mean[p], a.stat_var[p]);
  }
}

template <typename T, typename acc_t>
__global__ void stats_merge_kernel(PA<T, acc_t> a) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= a.N * a.C) return;
  ShiftedSums w;  // the chunk partials, added in chunk order
  for (int j = 0; j < a.S; ++j) w.merge({a.dpart[(p * a.S + j) * 2], a.dpart[(p * a.S + j) * 2 + 1]});
  w.finish(double(a.x[p * a.HW]), a.HW, a.stat_mean[p], a.stat_var[p]);
}

// ---- apply ----
template <bool PAD, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) apply_kernel(PA<T, acc_t> a) {
  const int64_t p = blockIdx.x, Wo = a.W + 2 * a.pad, HWo = (a.H + 2 * a.pad) * Wo;
  const acc_t m = a.mean[p], sc = a.scale[p], sh = a.shift[p];
  const T* x = a.x + p * a.HW;
  const T* r = a.res ? a.res + p * a.HW : nullptr;
  T* y = a.out + p * HWo;
  const int64_t e = min((int64_t(blockIdx.y) + 1) * a.chunk, HWo);
  for (int64_t o = blockIdx.y * a.chunk + threadIdx.x; o < e; o += kThreads) {
    const int64_t i = PAD ? reflect_src(o / Wo, a.H, a.pad) * a.W + reflect_src(o % Wo, a.W, a.pad) : o;
    acc_t v = act_fwd<acc_t>((static_cast<acc_t>(x[i]) - m) * sc + sh, a.act, a.slope);
    if (r) v += static_cast<acc_t>(r[i]);
    y[o] = static_cast<T>(v);
  }
}

// ---- backward ----
// Gradient of the unpadded output at pixel i of a plane whose padded gradient starts at g.
template <bool PAD, typename T, typename acc_t>
__device__ __forceinline__ acc_t grad_at(const PA<T, acc_t>& a, const T* g, int64_t i) {
  if (!PAD) return static_cast<acc_t>(g[i]);
  const int64_t Wo = a.W + 2 * a.pad;
  int64_t rs[3], cs[3];
  const int nr = reflect_dst(i / a.W, a.H, a.pad, a.pad, rs), nc = reflect_dst(i % a.W, a.W, a.pad, a.pad, cs);
  acc_t s = 0;
  for (int u = 0; u < nr; ++u)
    for (int v = 0; v < nc; ++v) s += static_cast<acc_t>(g[rs[u] * Wo + cs[v]]);
  return s;
}

template <typename T, typename acc_t>
struct PlaneCoef {
  acc_t m, sc, sh;
  __device__ PlaneCoef(const PA<T, acc_t>& a, int64_t p) : m(a.mean[p]), sc(a.scale[p]), sh(a.shift[p]) {}
};

template <bool PAD, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) sums_kernel(PA<T, acc_t> a) {
  const int64_t p = blockIdx.x, s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const int64_t HWo = (a.H + 2 * a.pad) * (a.W + 2 * a.pad);
  const PlaneCoef<T, acc_t> k(a, p);
  const T* x = a.x + p * a.HW;
  const T* g = a.g + p * HWo;
  // fp64 accumulation: these sums feed every parameter gradient (as the CPU kernel's totals)
  Sums<double> s;
  for (int64_t i = s0 + threadIdx.x; i < s1; i += kThreads) {
    const acc_t d = static_cast<acc_t>(x[i]) - k.m;
    const acc_t dz = norm_dz<acc_t>(grad_at<PAD>(a, g, i), d, k.sc, k.sh, a.act, a.slope);
    s.a += dz, s.b += double(dz) * d;
  }
  s = block_reduce<1>(s);
  if (threadIdx.x != 0) return;
  if (a.split) {
    double* q = a.dpart + (p * a.S + blockIdx.y) * 2;
    q[0] = s.a, q[1] = s.b;
  } else {
    a.sums[2 * p] = acc_t(s.a), a.sums[2 * p + 1] = acc_t(s.b);
  }
}

template <typename T, typename acc_t>
__global__ void sums_merge_kernel(PA<T, acc_t> a) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= a.N * a.C) return;
  double s1 = 0, s2 = 0;
  for (int j = 0; j < a.S; ++j) s1 += a.dpart[(p * a.S + j) * 2], s2 += a.dpart[(p * a.S + j) * 2 + 1];
  a.sums[2 * p] = acc_t(s1), a.sums[2 * p + 1] = acc_t(s2);
}

template <bool PAD, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bwd_kernel(PA<T, acc_t> a) {
  const int64_t p = blockIdx.x, HWo = (a.H + 2 * a.pad) * (a.W + 2 * a.pad);
  const PlaneCoef<T, acc_t> k(a, p);
  const acc_t c0 = a.c0[p], c1 = a.c1[p];
  const T* x = a.x + p * a.HW;
  const T* g = a.g + p * HWo;
  T* gx = a.out + p * a.HW;
  const int64_t e = min((int64_t(blockIdx.y) + 1) * a.chunk, a.HW);
  for (int64_t i = blockIdx.y * a.chunk + threadIdx.x; i < e; i += kThreads) {
    const acc_t d = static_cast<acc_t>(x[i]) - k.m;
    const acc_t dz = norm_dz<acc_t>(grad_at<PAD>(a, g, i), d, k.sc, k.sh, a.act, a.slope);
    gx[i] = static_cast<T>(k.sc * dz + c0 + c1 * d);
  }
}

// ---- per-plane coefficients: one thread per unit (sample; channel for batch norm) runs
// csrc/norm_coefs.h in fp64 (a few microseconds at C = 256), instead of ~40 small torch
// launches per layer ----
template <typename S>
__global__ void coefs_kernel(CoefArgs<S> a) {
  const int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u < coef_units(a)) coefs_unit(a, u);
}

template <typename S>
__global__ void coefs_bwd_kernel(CoefArgs<S> a, const S* sums, S* c0, S* c1) {
  const int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u < coef_units(a)) coefs_backward_unit(a, u, sums, c0, c1);
}

template <typename S, typename R>
__global__ void bn_running_kernel(const S* mean, const S* var, int64_t N, int64_t C, int64_t hw, double m, R* rm,
                                  R* rv) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < C) bn_running_channel(mean, var, N, C, hw, m, rm, rv, c);
}

// ---- host side ----
// Grid of a per-plane reduction: S chunks per plane when the planes cannot fill the GPU, with
// two fp64 partials per chunk (ShiftedSums, or the backward sums).
template <typename T, typename acc_t>
dim3 reduction_grid(PA<T, acc_t>& a, at::Tensor& part, const at::Tensor& like) {
  const int64_t planes = a.N * a.C, target = int64_t(sm_count()) * 4;
  int64_t S = 1;
  if (planes < target) S = std::max<int64_t>(1, std::min((target + planes - 1) / planes, a.HW / (kThreads * 8)));
  a.chunk = std::max<int64_t>(1, (a.HW + S - 1) / S);
  S = std::max<int64_t>(1, (a.HW + a.chunk - 1) / a.chunk);
  a.S = int(S), a.split = S > 1;
  if (a.split) {
    part = at::empty({planes * S * 2}, like.options().dtype(at::kDouble));
    a.dpart = part.data_ptr<double>();
  }
  return dim3(grid_dim(planes, "norm plane statistics"), static_cast<unsigned>(S));
}

// Grid of an elementwise pass over n elements per plane: blocks of >= 8 elements per thread.
template <typename T, typename acc_t>
dim3 elementwise_grid(PA<T, acc_t>& a, int64_t n) {
  int64_t chunk = int64_t(kThreads) * 8;
  if ((n + chunk - 1) / chunk > 65535) chunk = (n + 65534) / 65535;
  a.chunk = chunk;
  return dim3(grid_dim(a.N * a.C, "norm apply"), static_cast<unsigned>(std::max<int64_t>(1, (n + chunk - 1) / chunk)));
}

unsigned merge_blocks(int64_t planes) { return grid_dim((planes + kThreads - 1) / kThreads, "norm merge"); }

// The NCHW copy the kernels read, and whether the output must go back to channels_last.
bool to_nchw(PlaneIO& io) {
  if (!io.s.channels_last) return false;
  io.x = io.x.contiguous();
  if (io.res.defined()) io.res = io.res.contiguous();
  if (io.g.defined()) io.g = io.g.contiguous();
  if (io.out.defined()) io.out = at::empty(io.out.sizes(), io.out.options().memory_format(at::MemoryFormat::Contiguous));
  io.s.channels_last = false;
  return true;
}

at::Tensor back(const at::Tensor& t, bool cl) {
  return cl ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}

template <class F>
void dispatch(const PlaneIO& io, const char* name, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "i2i_fast_norm_cuda", [&] {
    f(io.args<scalar_t, at::opmath_type<scalar_t>>());
  });
}

template <class F>
void with_pad(int64_t pad, F&& f) {
  if (pad) f(std::true_type());
  else f(std::false_type());
}

std::tuple<at::Tensor, at::Tensor> norm_stats_cuda(const at::Tensor& x) {
  const auto guard = device_guard(x, "norm_stats");
  PlaneIO io = prep_stats(x);
  to_nchw(io);
  if (io.x.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "norm_stats", [&](auto a) {
      at::Tensor part;
      const dim3 grid = reduction_grid(a, part, io.mean);
      stats_kernel<<<grid, kThreads, 0, st>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (a.split) {
        stats_merge_kernel<<<merge_blocks(a.N * a.C), kThreads, 0, st>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return finish_stats(io);
}

at::Tensor norm_apply_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                           const at::Tensor& shift, const c10::optional<at::Tensor>& residual,
                           int64_t act, double slope, int64_t pad) {
  const auto guard = device_guard(x, "norm_apply");
  PlaneIO io = prep_apply(x, mean, scale, shift, residual, act, slope, pad);
  const bool cl = to_nchw(io);
  if (io.out.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "norm_apply", [&](auto a) {
      const dim3 grid = elementwise_grid(a, (a.H + 2 * pad) * (a.W + 2 * pad));
      with_pad(pad, [&](auto P) { apply_kernel<decltype(P)::value><<<grid, kThreads, 0, st>>>(a); });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return back(io.out, cl);
}

at::Tensor norm_apply_sums_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                const at::Tensor& scale, const at::Tensor& shift, int64_t act,
                                double slope, int64_t pad) {
  const auto guard = device_guard(x, "norm_apply_sums");
  PlaneIO io = prep_sums(grad, x, mean, scale, shift, act, slope, pad);
  to_nchw(io);
  if (io.x.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "norm_apply_sums", [&](auto a) {
      at::Tensor part;
      const dim3 grid = reduction_grid(a, part, io.sums);
      with_pad(pad, [&](auto P) { sums_kernel<decltype(P)::value><<<grid, kThreads, 0, st>>>(a); });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (a.split) {
        sums_merge_kernel<<<merge_blocks(a.N * a.C), kThreads, 0, st>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return io.sums;
}

at::Tensor norm_apply_bwd_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                               const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& c0,
                               const at::Tensor& c1, int64_t act, double slope, int64_t pad) {
  const auto guard = device_guard(x, "norm_apply_bwd");
  PlaneIO io = prep_apply_bwd(grad, x, mean, scale, shift, c0, c1, act, slope, pad);
  const bool cl = to_nchw(io);
  if (io.x.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "norm_apply_bwd", [&](auto a) {
      const dim3 grid = elementwise_grid(a, a.HW);
      with_pad(pad, [&](auto P) { bwd_kernel<decltype(P)::value><<<grid, kThreads, 0, st>>>(a); });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return back(io.out, cl);
}

constexpr int kCoefThreads = 32;

std::tuple<at::Tensor, at::Tensor> norm_coefs_cuda(const at::Tensor& mean, const at::Tensor& var,
                                                   const c10::optional<at::Tensor>& rho,
                                                   const c10::optional<at::Tensor>& gamma,
                                                   const c10::optional<at::Tensor>& beta, int64_t kind,
                                                   int64_t hw, double eps) {
  const auto guard = device_guard(mean, "norm_coefs");
  const CoefIO io = prep_coefs(mean, var, rho, gamma, beta, kind, hw, eps);
  if (io.N > 0 && io.C > 0) {
    AT_DISPATCH_FLOATING_TYPES(io.st, "i2i_fast_norm_coefs_cuda", [&] {
      const CoefArgs<scalar_t> a = io.args<scalar_t>();
      const unsigned blocks = grid_dim((coef_units(a) + kCoefThreads - 1) / kCoefThreads, "norm_coefs");
      coefs_kernel<scalar_t><<<blocks, kCoefThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {io.scale, io.shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_coefs_bwd_cuda(
    const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& rho,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
    const at::Tensor& sums, int64_t kind, int64_t hw, double eps) {
  const auto guard = device_guard(mean, "norm_coefs_bwd");
  const CoefIO io = prep_coefs(mean, var, rho, gamma, beta, kind, hw, eps, sums);
  at::Tensor c0 = at::empty_like(io.scale), c1 = at::empty_like(io.scale);
  if (io.N > 0 && io.C > 0) {
    AT_DISPATCH_FLOATING_TYPES(io.st, "i2i_fast_norm_coefs_bwd_cuda", [&] {
      const CoefArgs<scalar_t> a = io.args<scalar_t>();
      const unsigned blocks = grid_dim((coef_units(a) + kCoefThreads - 1) / kCoefThreads, "norm_coefs_bwd");
      coefs_bwd_kernel<scalar_t><<<blocks, kCoefThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          a, io.sums.const_data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), c1.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {c0, c1, io.param_grad(kDrho, io.rho), io.param_grad(kDg, io.g), io.param_grad(kDb, io.b)};
}

void bn_update_running_cuda(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& mean_in,
                            const at::Tensor& var_in, int64_t hw, double momentum) {
  const auto guard = device_guard(mean_in, "bn_update_running");
  const auto [mean, var] = prep_bn_running(running_mean, running_var, mean_in, var_in, hw);
  const int64_t N = mean.size(0), C = mean.size(1);
  if (C == 0) return;
  const unsigned blocks = grid_dim((C + kCoefThreads - 1) / kCoefThreads, "bn_update_running");
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "i2i_fast_bn_update_running_cuda", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "i2i_fast_bn_running", [&] {
      bn_running_kernel<S, scalar_t><<<blocks, kCoefThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          mean.const_data_ptr<S>(), var.const_data_ptr<S>(), N, C, hw, momentum, running_mean.data_ptr<scalar_t>(),
          running_var.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m) {
  m.impl("norm_stats", &norm_stats_cuda);
  m.impl("norm_apply", &norm_apply_cuda);
  m.impl("norm_apply_sums", &norm_apply_sums_cuda);
  m.impl("norm_apply_bwd", &norm_apply_bwd_cuda);
  m.impl("norm_coefs", &norm_coefs_cuda);
  m.impl("norm_coefs_bwd", &norm_coefs_bwd_cuda);
  m.impl("bn_update_running", &bn_update_running_cuda);
}

}  // namespace i2i
