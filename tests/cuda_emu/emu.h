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
#include <functional>
#include <memory>
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
#define __launch_bounds__(...)  // its bound is checked at every launch (insert_kernel_checks)
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
// Streams and events (streams.cpp): work is queued per stream and runs at synchronization points.
struct CUevent_st;
using cudaEvent_t = CUevent_st*;
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);

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
  cudaStream_t stream;
  LaunchCfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), shmem(s), stream(st) {}
};

// Runs body(ctx) once per CUDA thread of the grid; throws on a launch or execution error.
void run_grid(const char* name, const LaunchCfg& cfg, void (*body)(void*), void* ctx);
// Checks a launch configuration as a GPU does at the launch; throws on an invalid one.
void check_launch(const char* name, const LaunchCfg& cfg);
// Queues a checked launch on cfg.stream (streams.cpp): run now, at the next synchronization
// point, or recorded into the graph being captured.
void submit(const char* name, const LaunchCfg& cfg, std::function<void()> job);
// The emulated stream the entry points launch on (c10::cuda::getCurrentCUDAStream()).
cudaStream_t current_stream();

// Launch resources. The parameter buffer of a kernel, laid out as nvcc lays it out (each
// parameter at its alignment), and the limit of the oldest toolkit the build accepts: the build
// names no minimum CUDA version, and before CUDA 12.1 (and on pre-Volta GPUs after it) a
// launch passes at most 4 KB of parameters; 12.1+ raises it to 32764 bytes on Volta and newer.
inline constexpr size_t kMaxKernelParamBytes = 4096;
template <class... P>
constexpr size_t param_bytes() {
  size_t off = 0;
  ((off = (off + alignof(P) - 1) / alignof(P) * alignof(P) + sizeof(P)), ...);
  return off;
}
// __launch_bounds__(max_threads[, min_blocks]) of the running kernel against its block size.
void check_launch_bounds(const char* kernel, const char* where, unsigned max_threads);
inline void launch_bounds(const char* kernel, const char* where, unsigned max_threads, unsigned = 0) {
  check_launch_bounds(kernel, where, max_threads);
}

// kernel<<<cfg>>>(args...) is rewritten to
// launch("kernel", LaunchCfg(cfg), [&](auto&&... a) { kernel(a...); }, args...): the arguments
// are evaluated once and copied (as CUDA copies them), then every thread calls the kernel on
// them, its template arguments deduced as nvcc deduces them.
// The job owns the copies: a queued launch runs after the entry point has returned. It runs on a
// copy on the running host thread's stack (where the memory tracer looks for kernel parameters).
template <class F, class... A>
void launch(const char* name, const LaunchCfg& cfg, F&& kernel, A&&... args) {
  check_launch(name, cfg);
  auto params = std::make_shared<const std::tuple<std::decay_t<A>...>>(std::forward<A>(args)...);
  submit(name, cfg, [name, cfg, kernel, params]() {
    std::tuple<std::decay_t<A>...> local = *params;
    auto call = [&]() { std::apply(kernel, local); };
    run_grid(name, cfg, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  });
}

}  // namespace i2i_emu

// Inserted by the source rewrite at the top of every __global__ function: its parameter buffer
// against the launch limit (per instantiation), its __launch_bounds__ against the block size.
#define I2I_EMU_PARAMS_FIT(kernel, ...)                                                         \
  static_assert(::i2i_emu::param_bytes<__VA_ARGS__>() <= ::i2i_emu::kMaxKernelParamBytes,       \
                "CUDA emulation: the parameters of " kernel " exceed kMaxKernelParamBytes (4 KB)")

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

namespace i2i_emu {

// One call of an emulated entry point (each registered op is wrapped in Guarded by the source
// rewrite): while it runs, new CPU tensors are poisoned and host ATen calls first run the queued
// work (on a GPU they are stream-ordered kernels); at its end the streams are synchronized.
struct OpScope {
  OpScope();
  ~OpScope();
  void finish();  // runs the queued work; throws the first kernel error
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
};

template <auto F, class Sig = decltype(F)>
struct Guarded;
template <auto F, class R, class... A>
struct Guarded<F, R (*)(A...)> {
  static R call(A... a) {
    OpScope scope;
    if constexpr (std::is_void_v<R>) {
      F(std::forward<A>(a)...);
      scope.finish();
    } else {
      R r = F(std::forward<A>(a)...);
      scope.finish();
      return r;
    }
  }
};

}  // namespace i2i_emu
