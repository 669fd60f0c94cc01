// CUDA emulation stub of c10/cuda/CUDAException.h: launches throw themselves, so the launch
// check has nothing left to do.
#pragma once
#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(EXPR)                                                             \
  do {                                                                                   \
    const cudaError_t i2i_emu_err = (EXPR);                                              \
    TORCH_CHECK(i2i_emu_err == cudaSuccess, "CUDA emulation: ", #EXPR, " failed");       \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
