// CUDA emulation stub of c10/cuda/CUDAStream.h: the current emulated stream of the calling thread
// (emu.set_stream); launches and memsets on it are queued until a synchronization point.
#pragma once
#include <c10/core/Device.h>
#include <cstdint>

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t s = ::i2i_emu::current_stream();
  int64_t id() const { return reinterpret_cast<intptr_t>(s); }
  cudaStream_t stream() const { return s; }
  operator cudaStream_t() const { return s; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return CUDAStream(); }
}  // namespace cuda
}  // namespace c10
