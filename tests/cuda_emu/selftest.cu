// Kernels with known defects, compiled only into the CUDA emulation, so that the tests show
// the emulation catches each kind of defect (a harness that cannot fail proves nothing).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

#include "../csrc/norm_math.h"

namespace {

constexpr int kT = 256;

// Tree sum of x in shared memory, one partial per block; sync=false drops the barrier inside
// the tree loop (the classic race).
__global__ void tree_sum_kernel(const float* x, int64_t n, float* out, bool sync) {
  __shared__ float sm[kT];
  float v = 0;
  for (int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kT) v += x[i];
  sm[threadIdx.x] = v;
  __syncthreads();
  for (int off = kT / 2; off > 0; off >>= 1) {
    if (int(threadIdx.x) < off) sm[threadIdx.x] += sm[threadIdx.x + off];
    if (sync) __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sm[0];
}

// y[i] = x[i + shift]: a shift reads past one end of x.
__global__ void shifted_copy_kernel(const float* x, int64_t n, int64_t shift, float* y) {
  const int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x;
  if (i < n) y[i] = x[i + shift];
}

// Every block writes its index: the survivor depends on the block order.
__global__ void last_block_kernel(float* out) {
  if (threadIdx.x == 0) out[0] = float(blockIdx.x);
}

// 64 KB of static shared memory: over the 48 KB limit.
__global__ void big_shared_kernel(float* out) {
  __shared__ float big[16384];
  big[threadIdx.x] = 1;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = big[0];
}

// Full-mask shuffle: undefined when the block is not a whole number of warps.
__global__ void shuffle_kernel(float* out) {
  const float v = float(threadIdx.x);
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 1);
}

// Reads shared memory that no thread wrote.
__global__ void uninit_shared_kernel(float* out) {
  __shared__ float s[kT];
  out[blockIdx.x * kT + threadIdx.x] = s[threadIdx.x];
}

// y[i] = x[i * stride]: a warp's loads spread over `stride` times the sectors (uncoalesced).
__global__ void strided_copy_kernel(const float* x, int64_t n, int64_t stride, float* y) {
  const int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x;
  if (i < n / stride) y[i] = x[i * stride];
}

// Block b sums chunk b mod (gridDim.x / 2) of x: the second half of the grid reads x again,
// after the first half streamed all of it (from DRAM again when x does not fit in the L2).
__global__ void reread_kernel(const float* x, int64_t chunk, float* out) {
  __shared__ float sm[kT];
  const int64_t base = (blockIdx.x % (gridDim.x / 2)) * chunk;
  float v = 0;
  for (int64_t i = threadIdx.x; i < chunk; i += kT) v += x[base + i];
  sm[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0;
    for (int k = 0; k < kT; ++k) t += sm[k];
    out[blockIdx.x] = t;
  }
}

// ---- defects only the emulation's checks (check.h) see: each kernel gives the right result
// under the fiber schedule, so it passes with set_checks(false) ----

// Every thread adds 1 to one shared float with a plain read-modify-write: a race on a GPU, but
// each fiber runs its += to the end, so the emulated count is always blockDim.x.
__global__ void shared_rmw_kernel(float* out) {
  __shared__ float count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  count += 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = count;
}

// A block-sum helper; without its trailing barrier (kSafe false) it is not safe to call twice:
// its result is read from `part` after the last barrier, which a second call overwrites first
// thing. helper_reuse_kernel calls it once, so the sum is right.
template <bool kSafe>
__device__ float block_total(float v) {
  __shared__ float part[kT];
  part[threadIdx.x] = v;
  __syncthreads();
  for (int off = kT / 2; off > 0; off >>= 1) {
    if (int(threadIdx.x) < off) part[threadIdx.x] += part[threadIdx.x + off];
    __syncthreads();
  }
  const float total = part[0];
  if constexpr (kSafe) __syncthreads();
  return total;
}

__global__ void helper_reuse_kernel(const float* x, int64_t n, float* out) {
  float v = 0;
  for (int64_t i = threadIdx.x; i < n; i += kT) v += x[i];
  const float t = block_total<false>(v);
  if (threadIdx.x == 0) out[0] = t;
}

// Last-block reduction: each block writes its partial, takes a ticket, and the last block adds
// the partials. fences: 0 = none (the partials are not released), 1 = the release fence only
// (the last block does not acquire them), 2 = release, and acquire in thread 0 right after its
// ticket (then the barrier hands the ordering to the whole block): correct.
constexpr int64_t kNoFence = 0, kReleaseOnly = 1, kFenced = 2;
__global__ void ticket_sum_kernel(const float* x, int64_t n, float* partial, unsigned* ticket, float* out,
                                  int64_t fences) {
  __shared__ bool last;
  const int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x;
  const float v = i < n ? x[i] : 0.0f;
  const float t = block_total<true>(v);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = t;
    if (fences >= kReleaseOnly) __threadfence();
    last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    if (fences >= kFenced) __threadfence();
  }
  __syncthreads();
  if (!last) return;
  float s = 0;
  for (int64_t b = threadIdx.x; b < gridDim.x; b += kT) s += partial[b];
  s = block_total<true>(s);
  if (threadIdx.x == 0) out[0] = s;
}

// Threads below `split` wait at one barrier, the others at another: the emulation released
// them together as one barrier.
__global__ void barrier_sites_kernel(float* out, int64_t split) {
  __shared__ float s[kT];
  s[threadIdx.x] = float(threadIdx.x);
  if (int64_t(threadIdx.x) < split) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = s[kT - 1 - threadIdx.x];
}

// Threads at or above `live` return before the barrier the others wait at: the emulation let
// them drop out.
__global__ void exit_at_barrier_kernel(float* out, int64_t live) {
  __shared__ float s[kT];
  if (int64_t(threadIdx.x) >= live) return;
  s[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[live - 1 - threadIdx.x];
}

// The checks' self-tests; false if `what` is not one of them.
bool run_check_defect(const std::string& what, const at::Tensor& x, int64_t arg, at::Tensor& out) {
  const int64_t n = x.numel();
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, (n + kT - 1) / kT));
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  float* o = out.data_ptr<float>();
  if (what == "shared_rmw") {
    shared_rmw_kernel<<<1, kT, 0, st>>>(o);
  } else if (what == "helper_reuse") {
    helper_reuse_kernel<<<1, kT, 0, st>>>(x.data_ptr<float>(), n, o);
  } else if (what == "ticket_sum") {  // arg: kNoFence, kReleaseOnly or kFenced
    at::Tensor partial = at::zeros({int64_t(blocks)}, x.options());
    at::Tensor ticket = at::zeros({1}, x.options().dtype(at::kInt));
    ticket_sum_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, partial.data_ptr<float>(),
                                             reinterpret_cast<unsigned*>(ticket.data_ptr<int>()), o, arg);
  } else if (what == "barrier_sites") {
    barrier_sites_kernel<<<1, kT, 0, st>>>(o, arg);
  } else if (what == "exit_at_barrier") {
    exit_at_barrier_kernel<<<1, kT, 0, st>>>(o, arg);
  } else {
    return false;
  }
  return true;
}

at::Tensor run(const std::string& what, const at::Tensor& x_in, int64_t arg) {
  const at::Tensor x = x_in.contiguous().to(at::kFloat);
  const int64_t n = x.numel();
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, (n + kT - 1) / kT));
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  at::Tensor out = at::zeros({std::max<int64_t>(n, kT)}, x.options());
  float* o = out.data_ptr<float>();
  if (run_check_defect(what, x, arg, out)) return out;
  if (what == "tree_sum") {
    tree_sum_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, o, arg != 0);
    return out.narrow(0, 0, blocks).sum();
  } else if (what == "shifted_copy") {
    shifted_copy_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, arg, o);
  } else if (what == "last_block") {
    last_block_kernel<<<static_cast<unsigned>(arg), kT, 0, st>>>(o);
  } else if (what == "big_shared") {
    big_shared_kernel<<<1, kT, 0, st>>>(o);
  } else if (what == "shuffle") {
    shuffle_kernel<<<1, static_cast<unsigned>(arg), 0, st>>>(o);
  } else if (what == "uninit_shared") {
    uninit_shared_kernel<<<2, kT, 0, st>>>(o);
  } else if (what == "block_too_big") {
    last_block_kernel<<<1, static_cast<unsigned>(arg), 0, st>>>(o);
  } else if (what == "grid_y_too_big") {
    last_block_kernel<<<dim3(1, static_cast<unsigned>(arg)), kT, 0, st>>>(o);
  } else if (what == "strided_copy") {
    strided_copy_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, arg, o);
  } else if (what == "reread") {  // arg chunks of x, each read twice
    reread_kernel<<<static_cast<unsigned>(2 * arg), kT, 0, st>>>(x.data_ptr<float>(), n / arg, o);
  } else if (what == "empty_grid") {
    last_block_kernel<<<0, kT, 0, st>>>(o);
  } else {
    TORCH_CHECK(false, "unknown selftest ", what);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(i2i_emu_selftest, m) {
  m.def("run(str what, Tensor x, int arg) -> Tensor", &run);
}
