// Device helpers shared by the reduction kernels (instance_norm.cu, norm.cu, spectral_norm.cu):
// block size, fixed-order block reductions (deterministic: no atomics), split-plane partials.
#pragma once
#include "../csrc/norm_math.h"
#include "device.cuh"

namespace i2i {
namespace gpu {

constexpr int kThreads = 256;

template <typename acc_t>
struct Sums {  // backward per-plane sums: sum(dz), sum(dz * xhat)
  acc_t a = 0, b = 0;
  __device__ void merge(const Sums& o) { a += o.a; b += o.b; }
};

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
