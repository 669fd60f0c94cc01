// Host helpers of every CUDA entry point: the device check made before a device guard, and the
// SM count the grids are sized by.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <atomic>

// The device type the entry points accept (the tests' CUDA emulation runs them on CPU tensors).
#ifndef I2I_GPU_DEVICE_TYPE
#define I2I_GPU_DEVICE_TYPE c10::DeviceType::CUDA
#endif

namespace i2i {
namespace gpu {

// Checks that the op's first tensor is a CUDA tensor, then guards its device. The dispatcher
// picks the CUDA kernel when ANY argument is on CUDA: a CPU input with a CUDA weight must get
// this message, not c10's about a guard built for a CPU device.
inline c10::cuda::CUDAGuard device_guard(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().type() == I2I_GPU_DEVICE_TYPE, "i2i_fast ", op, ": expected its tensors on one CUDA ",
              "device, but the input is on ", x.device());
  return c10::cuda::CUDAGuard(x.device());
}

// gridDim.x of a launch of n blocks. CUDA allows at most 2^31 - 1: a plain cast to unsigned
// fails the launch from 2^31 blocks and wraps from 2^32 (blocks, so planes, left unwritten).
constexpr int64_t kMaxGridX = 2147483647;
inline unsigned grid_dim(int64_t n, const char* op) {
  TORCH_CHECK(n <= kMaxGridX, "i2i_fast ", op, ": ", n, " blocks exceed CUDA's gridDim.x limit of ", kMaxGridX,
              " (2^31 - 1)");
  return static_cast<unsigned>(n);
}

// SM count of the current device, cached per device (ATen/cuda/CUDAContext.h pulls in cuSPARSE).
// Atomic slots: entry points run on several host threads (autograd's device threads).
inline int sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  std::atomic<int>& slot = cache[dev & 63];
  int n = slot.load(std::memory_order_relaxed);
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    slot.store(n, std::memory_order_relaxed);
  }
  return n;
}

}  // namespace gpu
}  // namespace i2i
