// CUDA kernels of i2i_fast::instance_norm_fwd / instance_norm_bwd.
//
// A block owns a tile of P planes and a chunk of their H*W elements. NCHW: P = 1, the 256
// threads stride along H*W with 16-byte vector loads when aligned. channels_last: P = 32
// channels of one sample, thread (p, l) reads channel p at spatial lanes l, l+8, ... so a warp
// reads 32 consecutive channels (coalesced) and nothing is copied to NCHW.
// Statistics are ShiftedSums (norm_math.h: fp64 sums of x - the plane's first element) merged
// in a fixed tree (deterministic); the backward sums accumulate in fp64, as the CPU op and plane_norm.cu.
// When the tiles alone cannot fill the GPU (batch 1, large maps), each plane is split into S
// chunks: a first kernel writes per-chunk partial states, the second merges them in a fixed
// order and applies the normalization (or the input gradient) to its chunk, so x is read twice
// (the second read mostly an L2 hit; one pass would need a grid-wide barrier). The partials are
// chunk-major (Partial) and merged once per block by its first warp into shared memory: lanes
// of consecutive planes make 16-byte coalesced loads, read once per block, not once per thread.
// Output pad (scalar loads only): the forward writes each padded position from its mirrored
// source; the backward reads the gradient of each input pixel as the fixed-order sum of its
// mirror sources (reflect_dst, as the pad kernels: no atomics). The padded side's coalescing is
// below 90% for the reason written in reflection_pad.cu.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../csrc/instance_norm.h"
#include "../csrc/norm_math.h"
#include "reduce.cuh"

namespace i2i {
namespace {

using namespace gpu;

template <typename T, typename acc_t>
using Params = NormArgs<T, acc_t>;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename T, typename acc_t>
__device__ __forceinline__ void load(const T* p, acc_t (&v)[VEC]) {
  const Pack<T, VEC> k = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = static_cast<acc_t>(k.v[i]);
}

// A 16-byte pack is written with store16 (reduce.cuh): one st.global.v4.
template <int VEC, typename T, typename acc_t>
__device__ __forceinline__ void store(T* p, const acc_t (&v)[VEC]) {
  Pack<T, VEC> k;
#pragma unroll
  for (int i = 0; i < VEC; ++i) k.v[i] = static_cast<T>(v[i]);
  if constexpr (sizeof(k) == 16) {
    store16(p, k);
  } else {
    *reinterpret_cast<Pack<T, VEC>*>(p) = k;
  }
}

// ---- split-plane partials (reduce.cuh: Partial) ----
// The state of this thread's plane, its S chunk partials merged in chunk order (deterministic).
// NCHW (P = 1): the block's threads share one plane, so every thread merges with warp-uniform
// (broadcast) loads; channels_last: the first warp merges, lane i plane i, and shares the
// states through shared memory.
template <class St, int P, typename T, typename acc_t>
__device__ St merged_partials(const Params<T, acc_t>& a, const Tile<P>& t) {
  auto merge = [&] { return merge_partials<St, true>(a, t.plane, t.valid); };
  if constexpr (P == 1) {
    return merge();
  } else {
    static_assert(P <= kWarp, "one warp merges the planes of a tile");
    __shared__ alignas(16) unsigned char raw[P * sizeof(St)];
    St* sm = reinterpret_cast<St*>(raw);
    if (threadIdx.x < P) sm[threadIdx.x] = merge();
    __syncthreads();
    const St r = sm[threadIdx.x % P];
    __syncthreads();  // safe to call again: the next call's writes wait for these reads
    return r;
  }
}

// ---- forward ----
// The plane's pivot for ShiftedSums: its first element (every chunk of the plane uses it).
template <int P, typename T, typename acc_t>
__device__ __forceinline__ double pivot_of(const Params<T, acc_t>& a, const Tile<P>& t) {
  return t.valid ? double(a.x[t.base]) : 0.0;
}

template <int P, int VEC, typename T, typename acc_t>
__device__ ShiftedSums chunk_stats(const Params<T, acc_t>& a, const Tile<P>& t, int64_t s0, int64_t s1) {
  const double pivot = pivot_of<P>(a, t);
  ShiftedSums w;
  visit<P, VEC>(t, s0, s1, [&](int64_t s) {
    acc_t v[VEC];
    load<VEC>(a.x + t.base + s * t.stride, v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) w.push(double(v[i]) - pivot);
  });
  return block_reduce<P>(w);
}

template <int P, int VEC, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) fwd_stats_kernel(Params<T, acc_t> a) {
  const Tile<P> t(a);
  const int64_t s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const ShiftedSums w = chunk_stats<P, VEC>(a, t, s0, s1);
  if (t.valid && t.l == 0) store16(partial(a, blockIdx.y, t.plane), Partial{w.s1, w.s2});
}

// Resident blocks per SM fwd_apply_kernel is compiled for. With no minimum, ptxas (13.0) held its
// fp32 instances to 32 registers (100% occupancy) at the cost of 4-16 bytes of spills; 6 blocks
// (<= 40 registers, 75%) keep fp32/fp16/bf16 spill-free, fp64 takes up to 62 registers (4 blocks).
template <typename acc_t>
constexpr int kApplyMinBlocks = sizeof(acc_t) == 8 ? 4 : 6;

template <int P, int VEC, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads, kApplyMinBlocks<acc_t>) fwd_apply_kernel(Params<T, acc_t> a) {
  const Tile<P> t(a);
  const int64_t s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  acc_t mean = 0, var = 0;
  if (!a.input_stats) {
    if (t.valid) mean = a.rmean[t.c], var = a.rvar[t.c];
  } else {
    const ShiftedSums w = a.split ? merged_partials<ShiftedSums>(a, t) : chunk_stats<P, VEC>(a, t, 0, a.HW);
    w.finish(pivot_of<P>(a, t), a.HW, mean, var);
    if (t.valid && t.l == 0 && blockIdx.y == 0) a.mean[t.plane] = mean, a.var[t.plane] = var;
  }
  if (!t.valid) return;
  const int64_t ai = a.affine_index(t.plane, t.c);
  const acc_t w = a.w ? a.w[ai] : acc_t(1), b = a.b ? a.b[ai] : acc_t(0);
  const acc_t scale = w * inv_std(var, a.eps);  // (x - mean) * scale + b: exact b on constant planes
  auto apply = [&](int64_t i, int64_t o) {      // input element i -> output element o
    acc_t v[VEC], r[VEC];
    load<VEC>(a.x + i, v);
    if (a.res) load<VEC>(a.res + i, r);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      v[k] = act_fwd<acc_t>((v[k] - mean) * scale + b, a.act, a.slope);
      if (a.res) v[k] += r[k];
    }
    store<VEC>(a.out + o, v);
  };
  if (VEC > 1 || a.pad == 0) {
    visit<P, VEC>(t, s0, s1, [&](int64_t s) { apply(t.base + s * t.stride, t.base + s * t.stride); });
    return;
  }
  // padded plane: this block's chunk of its (H + 2 pad) * (W + 2 pad) positions
  const int64_t Wo = a.W + 2 * a.pad, HWo = (a.H + 2 * a.pad) * Wo, oc = (HWo + gridDim.y - 1) / gridDim.y;
  const int64_t o0 = blockIdx.y * oc;
  visit<P, 1>(t, o0, min(o0 + oc, HWo), [&](int64_t s) {
    const int r = int(s) / int(Wo), q = int(s) - r * int(Wo);  // 32-bit: planes < 2^31 (prep_fwd)
    const int64_t src = reflect_src(r, a.H, a.pad) * a.W + reflect_src(q, a.W, a.pad);
    apply(t.base + src * t.stride, t.obase + s * t.stride);
  });
}

// ---- backward ----
template <typename T, typename acc_t>
struct PlaneStats {
  acc_t mean, rstd, w, b;
  __device__ acc_t dz(acc_t g, acc_t xh, const Params<T, acc_t>& a) const {
    return norm_dz<acc_t>(g, xh, w, b, a.act, a.slope);
  }
};

template <int P, typename T, typename acc_t>
__device__ PlaneStats<T, acc_t> plane_stats(const Params<T, acc_t>& a, const Tile<P>& t) {
  PlaneStats<T, acc_t> ps{0, 0, 1, 0};
  if (!t.valid) return ps;
  ps.mean = a.mean[t.plane];
  ps.rstd = inv_std(a.var[t.plane], a.eps);
  if (a.w) ps.w = a.w[a.affine_index(t.plane, t.c)];
  if (a.b) ps.b = a.b[a.affine_index(t.plane, t.c)];
  return ps;
}

// Gradient of the unpadded output at pixel s: the sum of the padded positions that read it,
// rows then columns in reflect_dst's order.
template <int P, typename T, typename acc_t>
__device__ __forceinline__ acc_t folded_grad(const Params<T, acc_t>& a, const Tile<P>& t, int64_t s) {
  int64_t rs[3], cs[3];
  const int i = int(s) / int(a.W), j = int(s) - i * int(a.W);  // 32-bit: planes < 2^31 (prep_fwd)
  const int nr = reflect_dst(i, a.H, a.pad, a.pad, rs), nc = reflect_dst(j, a.W, a.pad, a.pad, cs);
  const int64_t Wo = a.W + 2 * a.pad;
  acc_t g = 0;
  for (int u = 0; u < nr; ++u)
    for (int v = 0; v < nc; ++v) g += static_cast<acc_t>(a.g[t.obase + (rs[u] * Wo + cs[v]) * t.stride]);
  return g;
}

// Calls f(offset, xhat[VEC], dz[VEC]) for this thread's packs of [s0, s1): the normalized
// input and dL/dz (through the activation) recomputed from x and the incoming gradient.
template <int P, int VEC, typename T, typename acc_t, class F>
__device__ __forceinline__ void visit_dz(const Params<T, acc_t>& a, const Tile<P>& t, const PlaneStats<T, acc_t>& ps,
                                         int64_t s0, int64_t s1, F&& f) {
  visit<P, VEC>(t, s0, s1, [&](int64_t s) {
    const int64_t o = t.base + s * t.stride;
    acc_t xh[VEC], dz[VEC];
    load<VEC>(a.x + o, xh);
    if (VEC == 1 && a.pad) dz[0] = folded_grad<P>(a, t, s);
    else load<VEC>(a.g + o, dz);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      xh[i] = (xh[i] - ps.mean) * ps.rstd;
      dz[i] = ps.dz(dz[i], xh[i], a);
    }
    f(o, xh, dz);
  });
}

template <int P, int VEC, typename T, typename acc_t>
__device__ Sums<double> chunk_sums(const Params<T, acc_t>& a, const Tile<P>& t, const PlaneStats<T, acc_t>& ps,
                                   int64_t s0, int64_t s1) {
  Sums<double> s;  // fp64: these sums feed the input and parameter gradients
  visit_dz<P, VEC>(a, t, ps, s0, s1, [&](int64_t, const acc_t(&xh)[VEC], const acc_t(&dz)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) s.a += dz[i], s.b += double(dz[i]) * xh[i];
  });
  return block_reduce<P>(s);
}

template <int P, int VEC, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bwd_sums_kernel(Params<T, acc_t> a) {
  const Tile<P> t(a);
  const int64_t s0 = blockIdx.y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const Sums<double> s = chunk_sums<P, VEC>(a, t, plane_stats<P>(a, t), s0, s1);
  if (t.valid && t.l == 0) store16(partial(a, blockIdx.y, t.plane), Partial{s.a, s.b});
}

// Blocks in the reverse order of bwd_sums_kernel's, as plane_norm.cu's bwd_kernel: when split, the
// sums pass has just streamed x and the gradient, and an LRU L2 still holds its last blocks' inputs
// when the two outgrow it (channels_last 8x256x64x64 fp32, split into 9 chunks per tile: the
// model's DRAM bytes 1.67x -> 1.33x must-move). Unsplit, each block reads its plane twice itself.
template <int P, int VEC, typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bwd_apply_kernel(Params<T, acc_t> a) {
  const Tile<P> t(a, typename Tile<P>::LastFirst());
  const int64_t y = gridDim.y - 1 - blockIdx.y;
  const int64_t s0 = y * a.chunk, s1 = min(s0 + a.chunk, a.HW);
  const PlaneStats<T, acc_t> ps = plane_stats<P>(a, t);
  const Sums<double> s = a.split ? merged_partials<Sums<double>>(a, t) : chunk_sums<P, VEC>(a, t, ps, 0, a.HW);
  if (!t.valid) return;
  if (t.l == 0 && y == 0) a.sums[2 * t.plane] = acc_t(s.a), a.sums[2 * t.plane + 1] = acc_t(s.b);
  const acc_t k = ps.rstd * ps.w, m1 = acc_t(s.a / double(a.HW)), m2 = acc_t(s.b / double(a.HW));
  visit_dz<P, VEC>(a, t, ps, s0, s1, [&](int64_t o, const acc_t(&xh)[VEC], const acc_t(&dz)[VEC]) {
    acc_t v[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = in_grad(k, dz[i], xh[i], m1, m2, a.input_stats);
    store<VEC>(a.out + o, v);
  });
}

// ---- host side ----
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

enum Partials { kNoPartials, kSumPartials };

// Picks the tile width, vector width and plane split; launches pass 1 (only when split) and
// pass 2 of the given kernel pair. Partials per chunk: two fp64 sums (ShiftedSums forward, the
// backward's sums).
template <typename T, typename acc_t, class Launch>
void launch(Params<T, acc_t>& a, const NormShape& s, Partials kind, at::Tensor& part_buf, const at::Tensor& like,
            Launch&& go) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = !s.channels_last && a.pad == 0 && s.HW % V == 0 && aligned16(a.x) && aligned16(a.out) &&
                   (!a.g || aligned16(a.g)) && (!a.res || aligned16(a.res));
  const int P = s.channels_last ? kTilePlanes : 1, L = kThreads / P, VE = vec ? V : 1;
  const int64_t tiles = tile_count(s.N, s.C, s.channels_last);
  const Split sp = plane_split(tiles, P, s.HW, int64_t(L) * VE * 4, VE);  // >= 4 loads per thread
  a.chunk = sp.chunk;
  a.S = int(sp.S);
  a.split = sp.S > 1;
  if (a.split && kind == kSumPartials) {
    part_buf = at::empty({s.N * s.C * sp.S * 2}, like.options().dtype(at::kDouble));
    a.dpart = part_buf.data_ptr<double>();
  }
  const dim3 grid(grid_dim(tiles, "instance_norm"), static_cast<unsigned>(sp.S));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (s.channels_last) go(std::integral_constant<int, kTilePlanes>(), std::integral_constant<int, 1>(), grid, stream);
  else if (vec) go(std::integral_constant<int, 1>(), std::integral_constant<int, V>(), grid, stream);
  else go(std::integral_constant<int, 1>(), std::integral_constant<int, 1>(), grid, stream);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_fwd_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, double eps, int64_t act, double slope, int64_t pad) {
  const auto guard = device_guard(x, "instance_norm_fwd");
  NormIO io = prep_fwd(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad);
  if (io.x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "instance_norm_fwd_cuda", [&] {
      Params<scalar_t, at::opmath_type<scalar_t>> a = io.args<scalar_t, at::opmath_type<scalar_t>>();
      at::Tensor part;
      const Partials kind = io.input_stats ? kSumPartials : kNoPartials;
      launch(a, io.s, kind, part, io.mean, [&](auto P, auto VEC, dim3 grid, cudaStream_t st) {
        if (a.split && a.input_stats) {
          fwd_stats_kernel<decltype(P)::value, decltype(VEC)::value><<<grid, kThreads, 0, st>>>(a);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        fwd_apply_kernel<decltype(P)::value, decltype(VEC)::value><<<grid, kThreads, 0, st>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return finish_fwd(io);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_bwd_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                      const at::Tensor& mean, const at::Tensor& var,
                                                                      const c10::optional<at::Tensor>& weight,
                                                                      const c10::optional<at::Tensor>& bias, double eps,
                                                                      int64_t act, double slope, bool input_stats,
                                                                      int64_t pad) {
  const auto guard = device_guard(x, "instance_norm_bwd");
  NormIO io = prep_bwd(grad, x, mean, var, weight, bias, eps, act, slope, input_stats, pad);
  if (io.x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.x.scalar_type(), "instance_norm_bwd_cuda", [&] {
      Params<scalar_t, at::opmath_type<scalar_t>> a = io.args<scalar_t, at::opmath_type<scalar_t>>();
      at::Tensor part;
      launch(a, io.s, kSumPartials, part, io.sums, [&](auto P, auto VEC, dim3 grid, cudaStream_t st) {
        if (a.split) {
          bwd_sums_kernel<decltype(P)::value, decltype(VEC)::value><<<grid, kThreads, 0, st>>>(a);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        bwd_apply_kernel<decltype(P)::value, decltype(VEC)::value><<<grid, kThreads, 0, st>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return finish_bwd(io);
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m) {
  m.impl("instance_norm_fwd", &instance_norm_fwd_cuda);
  m.impl("instance_norm_bwd", &instance_norm_bwd_cuda);
}

}  // namespace i2i
