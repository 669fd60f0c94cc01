// CUDA kernels of i2i_fast::reflection_pad2d_fwd / reflection_pad2d_bwd.
// Forward: one thread per output element (a copy, or act(x) with an activation). Backward: one
// thread per input element, which gathers the <= 3 x <= 3 padded positions that read it
// (reflect_dst) in a fixed order and sums them in fp32 (fp64 for fp64), times act'(x) with an
// activation: no atomics, bitwise deterministic, allowed under
// torch.use_deterministic_algorithms(True). NCHW and channels_last are indexed directly; the
// flat index runs in memory order so reads (fwd) / writes (bwd) of consecutive threads are
// contiguous. Indices are int64 (numel may pass 2^31).
// Coalescing (the traffic model, tests/test_memory_trace.py: fp32 ~80% forward, 60-70% backward;
// bf16 lower) stays below the 90% target on the padded side, by design: a warp's 32 consecutive
// outputs (fwd) read 32 consecutive inputs shifted by the pad, which cross one more 32-byte
// sector than they fill with one element per lane (the rows' alignments differ by the pad), and
// the backward gathers the mirrored border columns element by element, a sector per lane. Every
// sector is still read once per launch (compulsory bytes = must-move); avoiding the extra sector
// would take warp shuffles of aligned loads for a few percent of a copy kernel's time.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../csrc/reflection_pad.h"
#include "device.cuh"

namespace i2i {
namespace {

constexpr int kPadThreads = 256;

// (n, c, h, w) of flat index i of a (N, C, Hs, Ws) tensor in memory order.
struct Coord {
  int64_t n, c, h, w;
};

__device__ __forceinline__ Coord decode(int64_t i, int64_t C, int64_t Hs, int64_t Ws, bool cl) {
  Coord k;
  if (cl) {
    k.c = i % C;
    i /= C;
    k.w = i % Ws;
    i /= Ws;
    k.h = i % Hs;
    k.n = i / Hs;
  } else {
    k.w = i % Ws;
    i /= Ws;
    k.h = i % Hs;
    i /= Hs;
    k.c = i % C;
    k.n = i / C;
  }
  return k;
}

__device__ __forceinline__ int64_t offset(const Coord& k, int64_t C, int64_t Hs, int64_t Ws, bool cl) {
  return cl ? ((k.n * Hs + k.h) * Ws + k.w) * C + k.c : ((k.n * C + k.c) * Hs + k.h) * Ws + k.w;
}

// act: the Activation code (uniform across the grid), slope for LEAKY_RELU.
template <typename T>
__global__ void pad_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, PadGeom g, int64_t total, int act,
                               at::opmath_type<T> slope) {
  using acc_t = at::opmath_type<T>;
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    Coord k = decode(i, g.C, Ho, Wo, g.channels_last);
    k.h = reflect_src(k.h, g.H, g.t);
    k.w = reflect_src(k.w, g.W, g.l);
    const T v = x[offset(k, g.C, g.H, g.W, g.channels_last)];
    y[i] = act == kActNone ? v : static_cast<T>(act_fwd(static_cast<acc_t>(v), act, slope));
  }
}

// x: the forward's input in gx's layout (read only when act is not NONE).
template <typename T, typename acc_t>
__global__ void pad_bwd_kernel(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gx, PadGeom g,
                               int64_t total, int act, acc_t slope) {
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Coord k = decode(i, g.C, g.H, g.W, g.channels_last);
    int64_t rows[3], cols[3];
    const int nr = reflect_dst(k.h, g.H, g.t, g.b, rows);
    const int nc = reflect_dst(k.w, g.W, g.l, g.r, cols);
    acc_t s = 0;
    for (int a = 0; a < nr; ++a)
      for (int b = 0; b < nc; ++b)
        s += static_cast<acc_t>(gy[offset(Coord{k.n, k.c, rows[a], cols[b]}, g.C, Ho, Wo, g.channels_last)]);
    gx[i] = static_cast<T>(act == kActNone ? s : s * act_grad(static_cast<acc_t>(x[i]), act, slope));
  }
}

int64_t blocks_for(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kPadThreads - 1) / kPadThreads, int64_t(1) << 20));
}

}  // namespace

at::Tensor reflection_pad2d_fwd_cuda(const at::Tensor& x_in, at::IntArrayRef pad, int64_t act, double slope) {
  const PadGeom g = pad_geom(x_in, pad, "i2i_fast reflection_pad2d");
  check_pad_act(act, "i2i_fast reflection_pad2d");
  const auto guard = gpu::device_guard(x_in, "reflection_pad2d_fwd");
  const at::Tensor x = x_in.contiguous(g.format());
  at::Tensor y = at::empty({g.N, g.C, g.Ho(), g.Wo()}, x.options().memory_format(g.format()));
  const int64_t total = y.numel();
  if (total == 0) return y;
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "i2i_fast_reflection_pad2d_fwd_cuda", [&] {
    pad_fwd_kernel<scalar_t><<<gpu::grid_dim(blocks_for(total), "reflection_pad2d_fwd"), kPadThreads, 0, st>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g, total, int(act), at::opmath_type<scalar_t>(slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor reflection_pad2d_bwd_cuda(const at::Tensor& grad_in, at::IntArrayRef pad,
                                     const c10::optional<at::Tensor>& x_in, int64_t act, double slope) {
  const PadGeom g = pad_geom_bwd(grad_in, pad, "i2i_fast reflection_pad2d_bwd");
  const auto guard = gpu::device_guard(grad_in, "reflection_pad2d_bwd");
  const at::Tensor x = pad_act_input(x_in, g, grad_in, act, "i2i_fast reflection_pad2d_bwd");
  const at::Tensor gy = grad_in.contiguous(g.format());
  at::Tensor gx = at::empty({g.N, g.C, g.H, g.W}, gy.options().memory_format(g.format()));
  const int64_t total = gx.numel();
  if (total == 0) return gx;
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, gy.scalar_type(), "i2i_fast_reflection_pad2d_bwd_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // clang-format off: the CPU emulation (tests/cuda_emu) finds a launch by its kernel name next to the chevrons
        pad_bwd_kernel<scalar_t, acc_t><<<gpu::grid_dim(blocks_for(total), "reflection_pad2d_bwd"), kPadThreads, 0, st>>>(
            gy.data_ptr<scalar_t>(), x.defined() ? x.data_ptr<scalar_t>() : nullptr, gx.data_ptr<scalar_t>(), g,
            total, int(act), acc_t(slope));
        // clang-format on
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return gx;
}

TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m) {
  m.impl("reflection_pad2d_fwd", &reflection_pad2d_fwd_cuda);
  m.impl("reflection_pad2d_bwd", &reflection_pad2d_bwd_cuda);
}

}  // namespace i2i
