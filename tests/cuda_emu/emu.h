// Force-included (-include) into every kernels/*.cu when the CUDA emulation compiles them as
// host C++ (tests only). Supplies the CUDA builtins the kernels use; the runtime (fibers,
// barriers, warp shuffles, launch checks, counters) is in runtime.cpp.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "check.h"

// The entry points check their tensors' device against this type; emulated tensors are CPU.
#define I2I_GPU_DEVICE_TYPE c10::DeviceType::CPU

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

// The running CUDA thread's coordinates: set by the scheduler before it resumes a fiber.
// constinit: read directly, without a TLS init call (which the memory tracer would see).
extern constinit thread_local uint3 threadIdx, blockIdx;
extern constinit thread_local dim3 blockDim, gridDim;

// Unqualified math the kernels call: float stays float (CUDA's overloads), and min takes
// mixed integer types as CUDA's min does.
using std::sqrt;
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }

// ---- runtime API subset ----
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream = nullptr);

namespace i2i_emu {

// Block-wide barrier and warp exchange, implemented by the fiber scheduler. The barrier is
// told its call site: the checks (check.h) require every thread of a block at the same one.
void syncthreads();
void syncthreads_at(const char* file, int line);
void shfl_exchange(unsigned mask, void* value, size_t size, unsigned delta);
// Records a __shared__ variable of the running kernel (size limit, poisoning between blocks).
void note_shared(void* ptr, size_t size);

struct LaunchCfg {
  dim3 grid, block;
  size_t shmem;
  LaunchCfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), shmem(s) {}
};

// Runs body(ctx) once per CUDA thread of the grid; throws on a launch or execution error.
void run_grid(const char* name, const LaunchCfg& cfg, void (*body)(void*), void* ctx);

// kernel<<<cfg>>>(args...) is rewritten to
// launch("kernel", LaunchCfg(cfg), [&](auto&&... a) { kernel(a...); }, args...): the arguments
// are evaluated once and copied (as CUDA copies them), then every thread calls the kernel on
// them, its template arguments deduced as nvcc deduces them.
template <class F, class... A>
void launch(const char* name, const LaunchCfg& cfg, F&& kernel, A&&... args) {
  std::tuple<std::decay_t<A>...> params(std::forward<A>(args)...);
  auto call = [&]() { std::apply(kernel, params); };
  run_grid(name, cfg, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
}

}  // namespace i2i_emu

#define __syncthreads() ::i2i_emu::syncthreads_at(__FILE__, __LINE__)
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= 8, "emulated shuffles carry at most 8 bytes");
  if (width != 32) throw std::runtime_error("CUDA emulation: __shfl_down_sync width must be 32");
  ::i2i_emu::shfl_exchange(mask, &v, sizeof(T), delta);
  return v;
}

template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stwb(T* p, T v) { *p = v; }
struct alignas(16) uint4 { unsigned x, y, z, w; };

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
