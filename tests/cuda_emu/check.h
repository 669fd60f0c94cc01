// The emulation's GPU-semantics checks (check.cpp): what a fiber schedule that runs every CUDA
// thread until it blocks, one block at a time, cannot show by itself.
//   - shared-memory races: two threads of a block touch one __shared__ byte between the same two
//     barriers, at least one of them writing (whatever order the fibers ran in);
//   - helper reuse: a __device__ helper that owns a __shared__ buffer must be callable twice in a
//     row: its accesses after its last barrier must not conflict with those before its first one;
//   - global happens-before within a launch: a block reads (or overwrites) a global byte that
//     another block of the launch wrote only if the writer released it (__threadfence() after
//     the write, then an atomic) and the reader acquired it (an atomic on the same address, then
//     __threadfence(), in that thread or before a __syncthreads of its block);
//   - barriers: every live thread of a block waits at the same __syncthreads call site, and no
//     thread exits while the others wait at a barrier.
//   - uninitialized locals: a global store of a value computed from a local read before it was
//     written (the fiber-stack poison's payload, or gcc's -ftrivial-auto-var-init pattern);
//   - graph replays: a replay that reads global memory it has not written yet, as the previous
//     replay left it (a reset the capture did not record).
// The access checks need every load and store: the instrumented variants (plain and trace) send
// them here through the thread-sanitizer hooks (hooks.cpp). set_checks(false) turns all off.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace i2i_emu::check {

bool enabled();
void set_enabled(bool on);

// ---- from the kernels (emu.h, the rewritten __shared__ declarations) ----
// A __shared__ declaration was reached by the running thread; the object lives until its scope
// ends. `helper`: declared in a __device__ function (checked for reuse), not in the kernel.
void scope_enter(void* ptr, size_t size, const char* name, bool helper);
void scope_exit(void* ptr);
struct SharedScope {
  void* ptr;
  SharedScope(void* p, size_t size, const char* name, bool helper) : ptr(p) { scope_enter(p, size, name, helper); }
  ~SharedScope() { scope_exit(ptr); }
  SharedScope(const SharedScope&) = delete;
  SharedScope& operator=(const SharedScope&) = delete;
};

// ---- from the instrumentation hooks (hooks.cpp); in the traced variant they also hand the
// accesses to the memory tracer (trace::record) ----
void access(uintptr_t addr, uint32_t size, bool write, uintptr_t pc);
void atomic(uintptr_t addr, uint32_t size, bool read, bool write, uintptr_t pc);   // RMW: both
void fence();                                                                     // __threadfence()

// ---- from the runtime (runtime.cpp) ----
void launch_begin(const char* kernel);
void block_begin(int nthreads);
std::string block_end();                       // the block's first error ("" if none)
void barrier_arrive(int fiber, const char* file, int line);
std::string barrier_release(int nthreads);     // all live threads wait: "" or the error

}  // namespace i2i_emu::check
