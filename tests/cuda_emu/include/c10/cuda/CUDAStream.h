// CUDA emulation stub of c10/cuda/CUDAStream.h: one stream; launches run synchronously.
#pragma once
#include <c10/core/Device.h>
#include <cstdint>

namespace c10 {
namespace cuda {
struct CUDAStream {
  int64_t id() const { return 0; }
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return CUDAStream(); }
}  // namespace cuda
}  // namespace c10
