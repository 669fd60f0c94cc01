// Device helpers shared by the reduction kernels (instance_norm.cu, plane_norm.cu, spectral_norm.cu):
// block size, the plane tiles of NCHW and channels_last inputs, fixed-order block reductions
// (deterministic: no atomics), split-plane partials.
#pragma once
#include <algorithm>
#include <cstring>

#include "../csrc/norm_math.h"
#include "device.cuh"

namespace i2i {
namespace gpu {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// The planes a thread works on: plane index n*C + c, its first element, the stride between
// spatial positions, and the first element of its (padded) output / incoming gradient plane.
// NCHW: P = 1, a block's kThreads threads stride along one plane. channels_last: P = 32
// channels of one sample, thread (p, l) reads channel p at spatial lanes l, l + L, ... so a
// warp reads 32 consecutive channels (coalesced) and nothing is copied to NCHW. Blocks:
// blockIdx.x = plane (NCHW) or (sample, 32-channel tile); blockIdx.y = chunk of positions.
template <int P>
struct Tile {
  int64_t plane, base, stride, c, obase;
  int l;
  bool valid;
  template <class Pr>
  __device__ explicit Tile(const Pr& a) : Tile(a, blockIdx.x) {}
  // Block x takes the tile of block gridDim.x - 1 - x: for a pass that should start where the
  // previous one ended, while those lines are still in the L2.
  struct LastFirst {};
  template <class Pr>
  __device__ Tile(const Pr& a, LastFirst) : Tile(a, gridDim.x - 1 - blockIdx.x) {}

 private:
  template <class Pr>
  __device__ Tile(const Pr& a, unsigned bx) {
    const int p = threadIdx.x % P;
    l = threadIdx.x / P;
    if (P == 1) {
      plane = bx;
      c = plane % a.C;
      base = plane * a.HW;
      obase = plane * (a.H + 2 * a.pad) * (a.W + 2 * a.pad);
      stride = 1;
      valid = true;
    } else {
      const int64_t tiles_per_n = (a.C + P - 1) / P;
      const int64_t n = bx / tiles_per_n;
      c = (bx % tiles_per_n) * P + p;
      valid = c < a.C;
      plane = n * a.C + c;
      base = n * a.HW * a.C + c;
      obase = n * (a.H + 2 * a.pad) * (a.W + 2 * a.pad) * a.C + c;
      stride = a.C;
    }
  }
};

// Planes of a tile: P = 32 on channels_last, 1 on NCHW.
constexpr int kTilePlanes = 32;

// Tiles (blockIdx.x) of an (N, C) input.
inline int64_t tile_count(int64_t N, int64_t C, bool channels_last) {
  return channels_last ? N * ((C + kTilePlanes - 1) / kTilePlanes) : N * C;
}

// How many chunks (S) each plane of `tiles` tiles of P planes is split into, and their length:
// S > 1 only when the tiles cannot give every SM kBlocksPerSM blocks (batch 1, large maps), and
// only into chunks of at least min_chunk positions and kMinChunkElems elements of the tile's
// planes (4096, as the Triton backend's MIN_CHUNK; test_cuda_emu checks they agree): a smaller chunk
// is less work than the extra launch a split costs, and batch-1 steps on small maps are launch-bound
// (the traffic model's judgement, which has no latency term; not measured on a GPU). chunk: a
// multiple of align.
constexpr int64_t kBlocksPerSM = 4;
constexpr int64_t kMinChunkElems = 4096;
struct Split {
  int64_t S, chunk;
};
inline Split plane_split(int64_t tiles, int P, int64_t hw, int64_t min_chunk, int64_t align) {
  min_chunk = std::max(min_chunk, kMinChunkElems / P);
  const int64_t target = int64_t(sm_count()) * kBlocksPerSM;
  int64_t S = 1;
  if (tiles < target) S = std::max<int64_t>(1, std::min((target + tiles - 1) / tiles, hw / min_chunk));
  int64_t chunk = (hw + S - 1) / S;
  chunk = std::max<int64_t>(1, (chunk + align - 1) / align * align);
  return {std::max<int64_t>(1, (hw + chunk - 1) / chunk), chunk};
}

// Calls f(s) for this thread's spatial positions s of [s0, s1): VEC consecutive positions per
// call (VEC > 1 only with stride 1 and chunk bounds that are multiples of VEC).
template <int P, int VEC, class F>
__device__ __forceinline__ void visit(const Tile<P>& t, int64_t s0, int64_t s1, F&& f) {
  constexpr int L = kThreads / P;
  if (!t.valid) return;
  for (int64_t s = s0 + int64_t(t.l) * VEC; s < s1; s += int64_t(L) * VEC) f(s);
}

// A 16-byte value is written with one st.global.v4 (__stwb: the default write-back policy). The
// plain `*reinterpret_cast<Pack*>(p) = k` compiled to element stores (2-byte ones in fp16) in
// instance_norm.cu with nvcc 13, whatever the pointer's declared alignment.
template <class V>
__device__ __forceinline__ void store16(void* p, const V& v) {
  static_assert(sizeof(V) == 16, "one 16-byte store");
  uint4 u;
  memcpy(&u, &v, sizeof(u));
  __stwb(reinterpret_cast<uint4*>(p), u);
}

// Split-plane partials: two fp64 sums of one (chunk, plane), ShiftedSums or the backward's Sums.
// Stored chunk-major, [S][N*C], so the planes of a channels_last tile are adjacent: its first
// warp writes (store16) and reads them with 16-byte coalesced accesses.
struct alignas(16) Partial {
  double a, b;
};

template <class A>
__device__ __forceinline__ Partial* partial(const A& a, int64_t chunk, int64_t plane) {
  return reinterpret_cast<Partial*>(a.dpart) + chunk * (a.N * a.C) + plane;
}

template <typename acc_t>
struct Sums {  // backward per-plane sums: sum(dz), sum(dz * xhat)
  acc_t a = 0, b = 0;
  __device__ void merge(const Sums& o) {
    a += o.a;
    b += o.b;
  }
};

// The state (ShiftedSums or Sums<double>) of one plane: its S chunk partials merged in chunk
// order (deterministic); nothing merged where !valid (a tile's lanes past C). kOneInFlight: a
// loop not unrolled, one partial load in flight (instance_norm.cu, where the unrolled loads
// spilled the pad path's registers); otherwise the compiler unrolls it (plane_norm.cu's merge kernels).
template <class St, bool kOneInFlight, class A>
__device__ __forceinline__ St merge_partials(const A& a, int64_t plane, bool valid = true) {
  St w;
  auto add = [&](int64_t j) {
    const Partial q = *partial(a, j, plane);
    w.merge({q.a, q.b});
  };
  if constexpr (kOneInFlight) {
#pragma unroll 1
    for (int64_t j = 0; valid && j < a.S; ++j) add(j);
  } else {
    for (int j = 0; valid && j < a.S; ++j) add(j);
  }
  return w;
}

// Merge each plane lane's state over its L spatial lanes in a fixed tree; every thread
// gets the total of its plane.
template <int P, class St>
__device__ St block_reduce(const St& v) {
  constexpr int L = kThreads / P;
  __shared__ alignas(16) unsigned char raw[kThreads * sizeof(St)];
  St* sm = reinterpret_cast<St*>(raw);
  sm[threadIdx.x] = v;
  __syncthreads();
  const int l = threadIdx.x / P;
  for (int off = L / 2; off > 0; off >>= 1) {
    if (l < off) sm[threadIdx.x].merge(sm[threadIdx.x + off * P]);
    __syncthreads();
  }
  St r = sm[threadIdx.x % P];
  __syncthreads();
  return r;
}

}  // namespace gpu
}  // namespace i2i
