// Kernels with known defects that only the emulation's poison, stream, graph and launch-resource
// checks (tests/cuda_emu/streams.cpp) show: each is wrong on a GPU, and each passes when its
// check is turned off. Compiled only into the CUDA emulation.
#include <c10/cuda/CUDAStream.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

namespace {

constexpr int kT = 256;

// y = x * s, s set by block 0 only (the planted defect: the other blocks read s uninitialized).
// A plain local: -ftrivial-auto-var-init=pattern makes it 0xFE bytes in every block but block 0
// (-1.7e38), and the products the other blocks store are reported as computed from it.
__global__ void uninit_local_kernel(const float* x, int64_t n, float* y) {
  float s;
  if (blockIdx.x == 0) s = 2.0f;
  const int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x;
  if (i < n) y[i] = x[i] * s;  // the plain local
}

// The same defect with s exempt from the compile-time pattern and kept on the fiber stack: it
// reads what the stack holds. Without the stack poison that is block 0's s, left by the same
// thread of the previous block (so the result is right by luck); with it, NaN (0x7FFF7FFF, the
// stack poison's payload, which the access checks recognize in the stored value). s is the deep end
// of an 8 KB frame: in the instrumented variant the access callbacks that the launch code makes
// before the kernel starts write their frames on this stack, but not that far down.
__global__ void uninit_stack_kernel(const float* x, int64_t n, float* y) {
  [[gnu::uninitialized]] volatile float deep[2048];
  volatile float& s = deep[0];
  if (blockIdx.x == 0) s = 2.0f;
  const int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x;
  if (i < n) y[i] = x[i] * s;  // the stack-resident local
}

__global__ void copy_kernel(const float* x, int64_t n, float* y) {
  const int64_t i = blockIdx.x * int64_t(kT) + threadIdx.x;
  if (i < n) y[i] = x[i];
}

// Last-block sum: each block's partial in its slot, the block that takes the last ticket adds
// them (the pattern of kernels/loss.cu, the block's own sum done by thread 0 for brevity).
__global__ void ticket_sum_kernel(const float* x, int64_t n, float* partial, unsigned* ticket, float* out) {
  if (threadIdx.x != 0) return;
  float s = 0;
  for (int64_t i = blockIdx.x * int64_t(kT); i < min(n, (blockIdx.x + 1) * int64_t(kT)); ++i) s += x[i];
  partial[blockIdx.x] = s;
  __threadfence();  // the partial before the ticket
  if (atomicAdd(ticket, 1u) != gridDim.x - 1) return;
  __threadfence();  // the other blocks' partials after their tickets
  float t = 0;
  for (unsigned b = 0; b < gridDim.x; ++b) t += __ldcg(partial + b);
  *out = t;
}

__global__ void __launch_bounds__(kT) bounded_kernel(float* out) {
  if (threadIdx.x == 0) out[0] = 1;
}

cudaStream_t side_stream() {
  static cudaStream_t s = [] {
    cudaStream_t t;
    cudaStreamCreate(&t);
    return t;
  }();
  return s;
}

at::Tensor checks(const std::string& what, const at::Tensor& x_in, int64_t arg) {
  const at::Tensor x = x_in.contiguous().to(at::kFloat);
  const int64_t n = x.numel();
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, (n + kT - 1) / kT));
  cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  at::Tensor out = at::zeros({std::max<int64_t>(n, 1)}, x.options());
  float* o = out.data_ptr<float>();
  if (what == "uninit_local") {  // arg 1: the plain local, 0: the stack-resident, pattern-exempt one
    if (arg) uninit_local_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, o);
    else uninit_stack_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, o);
  } else if (what == "freed_workspace") {
    // x -> workspace on the current stream, workspace -> out on a side stream that waits for it;
    // then the workspace is freed. The caching allocator hands its block out again in the
    // current stream's order, while the side stream may still read it: arg 1 is the fix (the
    // side stream synchronized before the free; on a GPU also ws.record_stream(side)).
    static cudaEvent_t written = [] {
      cudaEvent_t e;
      cudaEventCreate(&e);
      return e;
    }();
    at::Tensor ws = at::empty({n}, x.options());
    copy_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, ws.data_ptr<float>());
    cudaEventRecord(written, st);
    cudaStreamWaitEvent(side_stream(), written);
    copy_kernel<<<blocks, kT, 0, side_stream()>>>(ws.data_ptr<float>(), n, o);
    if (arg) cudaStreamSynchronize(side_stream());
    ws.reset();
  } else if (what == "ticket_sum") {
    // arg 1: the ticket zeroed on the stream (cudaMemsetAsync: part of a captured graph); 0: the
    // planted defect, zeroed by a host store at call time, which a graph replay does not repeat.
    at::Tensor ws = at::empty({int64_t(blocks) + 1}, x.options());
    unsigned* ticket = reinterpret_cast<unsigned*>(ws.data_ptr<float>() + blocks);
    if (arg) cudaMemsetAsync(ticket, 0, sizeof(unsigned), st);
    else *ticket = 0;
    ticket_sum_kernel<<<blocks, kT, 0, st>>>(x.data_ptr<float>(), n, ws.data_ptr<float>(), ticket, o);
    return out.narrow(0, 0, 1);
  } else if (what == "empty_cpu") {  // an output nothing writes, allocated as csrc/loss.h does
    return at::detail::empty_cpu({std::max<int64_t>(n, 1)}, arg ? at::kInt : at::kFloat, false,
                                 at::MemoryFormat::Contiguous);
  } else if (what == "launch_bounds") {  // arg threads for a kernel bounded to kT
    bounded_kernel<<<1, static_cast<unsigned>(arg), 0, st>>>(o);
  } else {
    TORCH_CHECK(false, "unknown check self-test ", what);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(i2i_emu_selftest, m) {
  m.def("checks(str what, Tensor x, int arg) -> Tensor", &checks);
}
