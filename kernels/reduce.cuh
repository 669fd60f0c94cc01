// Device helpers shared by the normalization kernels (kernels/instance_norm.cu, kernels/norm.cu):
// block size, fixed-order block reductions (deterministic: no atomics), the SM count.
#pragma once
#include <c10/cuda/CUDAException.h>

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

inline int sm_count() {  // of the current device, cached (ATen/cuda/CUDAContext.h pulls in cuSPARSE)
  static int cache[64] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  int& n = cache[dev & 63];
  if (n == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

}  // namespace gpu
}  // namespace i2i
