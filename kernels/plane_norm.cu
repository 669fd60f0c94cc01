// CUDA kernels of the plane-affine normalization ops (schemas in csrc/ops.cpp, host prep in
// csrc/plane_norm.h): plane_norm_stats, plane_norm_apply, plane_norm_apply_sums, plane_norm_apply_bwd.
//
// The reductions (stats, sums) give each (n, c) plane S blocks when the planes alone cannot
// fill the GPU (batch 1, large maps): per-chunk partial states merged in a fixed order by a
// second small kernel; a block reduces in a fixed tree (reduce.cuh). No atomics anywhere, so
// results are bitwise reproducible. The elementwise passes (apply, bwd) give every plane
// enough blocks to cover it. The output pad is a mirrored read in apply and a fixed-order
// gather of the mirror sources (norm_math.h reflect_dst) in the backward passes.
// Layout: NCHW, and channels_last read and written in place: a block works on a Tile
// (reduce.cuh) of 32 channels of one sample, a warp's lanes on consecutive channels (coalesced).
// Two passes over x (statistics, then apply; sums, then gradient), 1.5x the compulsory bytes of
// one: a layer norm / AdaLIN sample (C*H*W) or a batch norm channel (N*H*W) is megabytes at the
// main shapes, more than an SM holds, so a single pass would need a grid-wide barrier with x
// kept on chip across all SMs (a cooperative launch, which the CUDA emulation cannot run). The
// second read is of data the first just streamed: an L2 hit while x (and its gradient) fit the L2
// (the memory-trace model at 1x256x64x64: DRAM ~1.0x must-move; at 8x256x64x64 fp32 batch norm,
// 1.22x forward and 1.45x backward: the output's writes evict inputs the second pass needs).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../csrc/plane_norm.h"
#include "../csrc/plane_norm_coefs.h"
#include "../csrc/norm_math.h"
#include "reduce.cuh"

namespace i2i {
namespace {

using namespace gpu;

template <typename T, typename acc_t>
using PA = PlaneArgs<T, acc_t>;

// ---- statistics: ShiftedSums (norm_math.h), pivot = the plane's first element ----
template <int P, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) stats_kernel(PA<T, acc_t> a) {
  const Tile<P> t(a);
  const int64_t s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const double pivot = t.valid ? double(a.x[t.base]) : 0.0;
  ShiftedSums w;
  visit<P, 1>(t, s0, s1, [&](int64_t i) { w.push(double(a.x[t.base + i * t.stride]) - pivot); });
  w = block_reduce<P>(w);
  if (!t.valid || t.l != 0) return;
  if (a.split) store16(partial(a, blockIdx.y, t.plane), Partial{w.s1, w.s2});
  else w.finish(pivot, a.HW, a.stat_mean[t.plane], a.stat_var[t.plane]);
}

// One thread per plane, so a warp's lanes read adjacent chunk-major partials.
template <typename T, typename acc_t>
__global__ void stats_merge_kernel(PA<T, acc_t> a, bool channels_last) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= a.N * a.C) return;
  const ShiftedSums w = merge_partials<ShiftedSums, false>(a, p);
  const int64_t n = p / a.C, first = channels_last ? n * a.HW * a.C + (p - n * a.C) : p * a.HW;
  w.finish(double(a.x[first]), a.HW, a.stat_mean[p], a.stat_var[p]);
}

// ---- apply ----
template <bool PAD, int P, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) apply_kernel(PA<T, acc_t> a) {
  const Tile<P> t(a);
  if (!t.valid) return;
  const int64_t Wo = a.W + 2 * a.pad, HWo = (a.H + 2 * a.pad) * Wo;
  const acc_t m = a.mean[t.plane], sc = a.scale[t.plane], sh = a.shift[t.plane];
  const int64_t o0 = blockIdx.y * a.chunk, e = min(o0 + a.chunk, HWo);
  visit<P, 1>(t, o0, e, [&](int64_t o) {
    const int64_t src = PAD ? reflect_src(o / Wo, a.H, a.pad) * a.W + reflect_src(o % Wo, a.W, a.pad) : o;
    const int64_t i = t.base + src * t.stride;
    acc_t v = act_fwd<acc_t>((static_cast<acc_t>(a.x[i]) - m) * sc + sh, a.act, a.slope);
    if (a.res) v += static_cast<acc_t>(a.res[i]);
    a.out[t.obase + o * t.stride] = static_cast<T>(v);
  });
}

// ---- backward ----
// Gradient of the unpadded output at pixel i of the tile's plane.
template <bool PAD, int P, typename T, typename acc_t>
__device__ __forceinline__ acc_t grad_at(const PA<T, acc_t>& a, const Tile<P>& t, int64_t i) {
  if (!PAD) return static_cast<acc_t>(a.g[t.obase + i * t.stride]);
  const int64_t Wo = a.W + 2 * a.pad;
  int64_t rs[3], cs[3];
  const int nr = reflect_dst(i / a.W, a.H, a.pad, a.pad, rs), nc = reflect_dst(i % a.W, a.W, a.pad, a.pad, cs);
  acc_t s = 0;
  for (int u = 0; u < nr; ++u)
    for (int v = 0; v < nc; ++v) s += static_cast<acc_t>(a.g[t.obase + (rs[u] * Wo + cs[v]) * t.stride]);
  return s;
}

template <typename T, typename acc_t>
struct PlaneCoef {
  acc_t m = 0, sc = 0, sh = 0;
  template <int P>
  __device__ PlaneCoef(const PA<T, acc_t>& a, const Tile<P>& t) {
    if (t.valid) m = a.mean[t.plane], sc = a.scale[t.plane], sh = a.shift[t.plane];
  }
};

// Resident blocks per SM sums_kernel is compiled for. With no minimum, ptxas (13.0) held its
// one-plane padded fp32/fp16/bf16 instances to 32 registers at the cost of 16-36 bytes of spills;
// 6 blocks (<= 40 registers) keep them spill-free. fp64 and the 32-plane tiles take up to 64
// registers (4 blocks; 6 spilled them).
template <int P, typename acc_t>
constexpr int kSumsMinBlocks = P == 1 && sizeof(acc_t) < 8 ? 6 : 4;

template <bool PAD, int P, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads, kSumsMinBlocks<P, acc_t>) sums_kernel(PA<T, acc_t> a) {
  const Tile<P> t(a);
  const int64_t s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const PlaneCoef<T, acc_t> k(a, t);
  // fp64 accumulation: these sums feed every parameter gradient (as the CPU kernel's totals)
  Sums<double> s;
  visit<P, 1>(t, s0, s1, [&](int64_t i) {
    const acc_t d = static_cast<acc_t>(a.x[t.base + i * t.stride]) - k.m;
    const acc_t dz = norm_dz<acc_t>(grad_at<PAD>(a, t, i), d, k.sc, k.sh, a.act, a.slope);
    s.a += dz, s.b += double(dz) * d;
  });
  s = block_reduce<P>(s);
  if (!t.valid || t.l != 0) return;
  if (a.split) store16(partial(a, blockIdx.y, t.plane), Partial{s.a, s.b});
  else a.sums[2 * t.plane] = acc_t(s.a), a.sums[2 * t.plane + 1] = acc_t(s.b);
}

template <typename T, typename acc_t>
__global__ void sums_merge_kernel(PA<T, acc_t> a) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= a.N * a.C) return;
  const Sums<double> s = merge_partials<Sums<double>, false>(a, p);
  a.sums[2 * p] = acc_t(s.a), a.sums[2 * p + 1] = acc_t(s.b);
}

// Blocks in the reverse order of sums_kernel's: it just streamed x and the gradient, and an L2
// that keeps the newest lines still holds its last blocks' inputs when the two outgrow it
// (batch norm 8x256x64x64 fp32, 64 MB: the model's DRAM bytes 1.63x -> 1.45x must-move).
template <bool PAD, int P, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bwd_kernel(PA<T, acc_t> a) {
  const Tile<P> t(a, typename Tile<P>::LastFirst());
  if (!t.valid) return;
  const PlaneCoef<T, acc_t> k(a, t);
  const acc_t c0 = a.c0[t.plane], c1 = a.c1[t.plane];
  const int64_t y = gridDim.y - 1 - blockIdx.y, e = min((y + 1) * a.chunk, a.HW);
  visit<P, 1>(t, y * a.chunk, e, [&](int64_t i) {
    const int64_t xi = t.base + i * t.stride;
    const acc_t d = static_cast<acc_t>(a.x[xi]) - k.m;
    const acc_t dz = norm_dz<acc_t>(grad_at<PAD>(a, t, i), d, k.sc, k.sh, a.act, a.slope);
    a.out[xi] = static_cast<T>(k.sc * dz + c0 + c1 * d);
  });
}

// ---- per-plane coefficients: one thread per unit (sample; channel for batch norm) runs
// csrc/plane_norm_coefs.h in fp64 (a few microseconds at C = 256), instead of ~40 small torch
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

// torch's running-statistics update (plane_norm_coefs.h running_channel), a thread per channel;
// thread 0 also counts the batch.
template <typename S, typename R>
__global__ void update_running_kernel(const S* mean, const S* var, int64_t N, int64_t C, int64_t hw, double m,
                                      bool per_plane, R* rm, R* rv, int64_t* num_batches_tracked) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < C) running_channel(mean, var, N, C, hw, m, per_plane, rm, rv, c);
  if (c == 0 && num_batches_tracked) *num_batches_tracked += 1;
}

// ---- host side ----
// Planes per block: a Tile<kTilePlanes> of channels on channels_last, one plane on NCHW.
template <class F>
void with_tile(bool channels_last, F&& f) {
  if (channels_last) f(std::integral_constant<int, kTilePlanes>());
  else f(std::integral_constant<int, 1>());
}

// Grid of a per-plane reduction: S chunks per plane when the tiles cannot fill the GPU, with
// two fp64 partials per chunk (ShiftedSums, or the backward's sums). P: planes per tile.
template <typename T, typename acc_t>
dim3 reduction_grid(PA<T, acc_t>& a, int P, at::Tensor& part, const at::Tensor& like) {
  const int64_t tiles = tile_count(a.N, a.C, P > 1);
  const Split sp = plane_split(tiles, P, a.HW, int64_t(kThreads / P) * 8, 1);  // >= 8 loads per thread
  const int64_t S = sp.S;
  a.chunk = sp.chunk;
  a.S = int(S), a.split = S > 1;
  if (a.split) {
    part = at::empty({a.N * a.C * S * 2}, like.options().dtype(at::kDouble));
    a.dpart = part.data_ptr<double>();
  }
  return dim3(grid_dim(tiles, "norm plane statistics"), static_cast<unsigned>(S));
}

// Grid of an elementwise pass over n positions per plane: blocks of >= 8 elements per thread.
template <typename T, typename acc_t>
dim3 elementwise_grid(PA<T, acc_t>& a, int P, int64_t n) {
  int64_t chunk = int64_t(kThreads / P) * 8;
  if ((n + chunk - 1) / chunk > 65535) chunk = (n + 65534) / 65535;
  a.chunk = chunk;
  return dim3(grid_dim(tile_count(a.N, a.C, P > 1), "norm apply"),
              static_cast<unsigned>(std::max<int64_t>(1, (n + chunk - 1) / chunk)));
}

unsigned merge_blocks(int64_t planes) { return grid_dim((planes + kThreads - 1) / kThreads, "norm merge"); }

template <class F>
void dispatch(const PlaneIO& io, const char* name, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "i2i_fast_norm_cuda",
                                  [&] { f(io.args<scalar_t, at::opmath_type<scalar_t>>()); });
}

template <class F>
void with_pad(int64_t pad, F&& f) {
  if (pad) f(std::true_type());
  else f(std::false_type());
}

std::tuple<at::Tensor, at::Tensor> plane_norm_stats_cuda(const at::Tensor& x) {
  const auto guard = device_guard(x, "plane_norm_stats");
  PlaneIO io = prep_stats(x);
  if (io.x.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "plane_norm_stats", [&](auto a) {
      at::Tensor part;
      with_tile(io.s.channels_last, [&](auto P) {
        const dim3 grid = reduction_grid(a, P, part, io.mean);
        stats_kernel<decltype(P)::value><<<grid, kThreads, 0, st>>>(a);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (a.split) {
        stats_merge_kernel<<<merge_blocks(a.N * a.C), kThreads, 0, st>>>(a, io.s.channels_last);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return finish_stats(io);
}

at::Tensor plane_norm_apply_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                                 const at::Tensor& shift, const c10::optional<at::Tensor>& residual, int64_t act,
                                 double slope, int64_t pad) {
  const auto guard = device_guard(x, "plane_norm_apply");
  PlaneIO io = prep_apply(x, mean, scale, shift, residual, act, slope, pad);
  if (io.out.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "plane_norm_apply", [&](auto a) {
      with_tile(io.s.channels_last, [&](auto P) {
        const dim3 grid = elementwise_grid(a, P, (a.H + 2 * pad) * (a.W + 2 * pad));
        with_pad(pad,
                 [&](auto D) { apply_kernel<decltype(D)::value, decltype(P)::value><<<grid, kThreads, 0, st>>>(a); });
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return io.out;
}

at::Tensor plane_norm_apply_sums_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                      const at::Tensor& scale, const at::Tensor& shift, int64_t act, double slope,
                                      int64_t pad) {
  const auto guard = device_guard(x, "plane_norm_apply_sums");
  PlaneIO io = prep_sums(grad, x, mean, scale, shift, act, slope, pad);
  if (io.x.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "plane_norm_apply_sums", [&](auto a) {
      at::Tensor part;
      with_tile(io.s.channels_last, [&](auto P) {
        const dim3 grid = reduction_grid(a, P, part, io.sums);
        with_pad(pad,
                 [&](auto D) { sums_kernel<decltype(D)::value, decltype(P)::value><<<grid, kThreads, 0, st>>>(a); });
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (a.split) {
        sums_merge_kernel<<<merge_blocks(a.N * a.C), kThreads, 0, st>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return io.sums;
}

at::Tensor plane_norm_apply_bwd_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                     const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& c0,
                                     const at::Tensor& c1, int64_t act, double slope, int64_t pad) {
  const auto guard = device_guard(x, "plane_norm_apply_bwd");
  PlaneIO io = prep_apply_bwd(grad, x, mean, scale, shift, c0, c1, act, slope, pad);
  if (io.x.numel() > 0) {
    cudaStream_t st = c10::cuda::getCurrentCUDAStream();
    dispatch(io, "plane_norm_apply_bwd", [&](auto a) {
      with_tile(io.s.channels_last, [&](auto P) {
        const dim3 grid = elementwise_grid(a, P, a.HW);
        with_pad(pad,
                 [&](auto D) { bwd_kernel<decltype(D)::value, decltype(P)::value><<<grid, kThreads, 0, st>>>(a); });
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return io.out;
}

constexpr int kCoefThreads = 32;

std::tuple<at::Tensor, at::Tensor> plane_norm_coefs_cuda(const at::Tensor& mean, const at::Tensor& var,
                                                         const c10::optional<at::Tensor>& rho,
                                                         const c10::optional<at::Tensor>& gamma,
                                                         const c10::optional<at::Tensor>& beta, int64_t kind,
                                                         int64_t hw, double eps) {
  const auto guard = device_guard(mean, "plane_norm_coefs");
  const CoefIO io = prep_coefs(mean, var, rho, gamma, beta, kind, hw, eps);
  if (io.N > 0 && io.C > 0) {
    AT_DISPATCH_FLOATING_TYPES(io.st, "i2i_fast_norm_coefs_cuda", [&] {
      const CoefArgs<scalar_t> a = io.args<scalar_t>();
      const unsigned blocks = grid_dim((coef_units(a) + kCoefThreads - 1) / kCoefThreads, "plane_norm_coefs");
      coefs_kernel<scalar_t><<<blocks, kCoefThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {io.scale, io.shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> plane_norm_coefs_bwd_cuda(
    const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& rho,
    const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, const at::Tensor& sums, int64_t kind,
    int64_t hw, double eps) {
  const auto guard = device_guard(mean, "plane_norm_coefs_bwd");
  const CoefIO io = prep_coefs(mean, var, rho, gamma, beta, kind, hw, eps, sums);
  at::Tensor c0 = at::empty_like(io.scale), c1 = at::empty_like(io.scale);
  if (io.N > 0 && io.C > 0) {
    AT_DISPATCH_FLOATING_TYPES(io.st, "i2i_fast_norm_coefs_bwd_cuda", [&] {
      const CoefArgs<scalar_t> a = io.args<scalar_t>();
      const unsigned blocks = grid_dim((coef_units(a) + kCoefThreads - 1) / kCoefThreads, "plane_norm_coefs_bwd");
      coefs_bwd_kernel<scalar_t><<<blocks, kCoefThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          a, io.sums.const_data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), c1.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {c0, c1, io.param_grad(kDrho, io.rho), io.param_grad(kDg, io.g), io.param_grad(kDb, io.b)};
}

void plane_norm_update_running_cuda(at::Tensor& running_mean, at::Tensor& running_var,
                                    const c10::optional<at::Tensor>& num_batches_tracked, const at::Tensor& mean_in,
                                    const at::Tensor& var_in, int64_t kind, int64_t hw, double momentum) {
  const auto guard = device_guard(mean_in, "plane_norm_update_running");
  const auto [mean, var] = prep_running(running_mean, running_var, num_batches_tracked, mean_in, var_in, kind, hw);
  const int64_t N = mean.size(0), C = mean.size(1);
  int64_t* nbt = num_batches_tracked ? num_batches_tracked->data_ptr<int64_t>() : nullptr;
  if (C == 0 && !nbt) return;
  const unsigned blocks =
      grid_dim(std::max<int64_t>(1, (C + kCoefThreads - 1) / kCoefThreads), "plane_norm_update_running");
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "i2i_fast_update_running_cuda", [&] {
    using S = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(), "i2i_fast_running", [&] {
      update_running_kernel<S, scalar_t><<<blocks, kCoefThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          mean.const_data_ptr<S>(), var.const_data_ptr<S>(), N, C, hw, momentum, kind == kInstanceNorm,
          running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(), nbt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m) {
  m.impl("plane_norm_stats", &plane_norm_stats_cuda);
  m.impl("plane_norm_apply", &plane_norm_apply_cuda);
  m.impl("plane_norm_apply_sums", &plane_norm_apply_sums_cuda);
  m.impl("plane_norm_apply_bwd", &plane_norm_apply_bwd_cuda);
  m.impl("plane_norm_coefs", &plane_norm_coefs_cuda);
  m.impl("plane_norm_coefs_bwd", &plane_norm_coefs_bwd_cuda);
  m.impl("plane_norm_update_running", &plane_norm_update_running_cuda);
}

}  // namespace i2i
