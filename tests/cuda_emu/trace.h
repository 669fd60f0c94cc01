// Between the emulation's runtime (runtime.cpp) and its memory tracer (trace.cpp, built only
// into the traced variant i2i_fast_emu_trace). The instrumented variants compile every source
// with gcc's thread-sanitizer instrumentation but link no sanitizer runtime: hooks.cpp defines
// the __tsan_* callbacks, so every load, store and atomic of the emulated kernels reaches the
// tracer (and the checks, check.h) with its address, size and call site (tsan, unlike asan,
// keeps the store of an `a[i] += v`).
#pragma once
#include <cstddef>
#include <cstdint>

namespace i2i_emu {

// What the runtime tells the tracer about the running CUDA thread.
struct Running {
  int fiber;              // linear thread index in the block (lane = fiber % 32); -1 outside a kernel
  const char* stack_lo;   // its fiber stack: accesses there are registers/locals on a GPU
  size_t stack_size;
};
Running running();
// The __shared__ statics of the running launch: [ptr, ptr + size) each.
size_t shared_count();
void shared_range(size_t i, const void** ptr, size_t* size);
// The runtime's own state (scheduler, fibers): never kernel memory.
bool runtime_memory(uintptr_t a);
// Runtime code that runs on a fiber (barriers, shuffles) is not kernel code: not traced.
void set_quiet(bool quiet);

namespace trace {
// One access of the running CUDA thread (from the instrumentation hooks, hooks.cpp).
void record(uintptr_t a, uint32_t size, bool write, uintptr_t pc);
void launch_begin(const char* name, unsigned grid, unsigned threads, int sm_count);
void block_end();
void launch_end();
}  // namespace trace

}  // namespace i2i_emu
