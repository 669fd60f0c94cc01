// The CUDA emulation's runtime: runs every CUDA thread of a block as a fiber (ucontext) on
// the launching OS thread. Fibers run until they finish or wait: at __syncthreads (released
// when every live thread of the block waits there; check.cpp requires one call site and no
// exited thread) or at a warp shuffle (exchanged when all 32 lanes of the warp wait there,
// full mask asserted). Blocks, and the threads within a scheduling round, run in a permutable
// order (forward, reverse, or shuffled by a seed), so a missing barrier, a shared-memory race
// or a dependence on block order changes the result. __shared__ variables are function statics shared by the fibers of
// the running block; they are poisoned before every block. Launch limits of a real GPU are
// checked, and launches are counted per kernel name. The traced variant (I2I_EMU_TRACE) also
// reports each launch and block to the memory tracer (trace.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <ucontext.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define I2I_EMU_ASAN 1
#else
#define I2I_EMU_ASAN 0
#endif
#ifndef I2I_EMU_TRACE
#define I2I_EMU_TRACE 0
#endif
#ifndef I2I_EMU_CHECKED  // every access instrumented (hooks.cpp): the access checks run
#define I2I_EMU_CHECKED 0
#endif
#include "check.h"
#include "trace.h"
#include "checks.h"

constinit thread_local uint3 threadIdx, blockIdx;
constinit thread_local dim3 blockDim, gridDim;

namespace i2i_emu {
namespace {

constexpr size_t kStack = 256 * 1024;
constexpr size_t kMaxStaticShared = 48 * 1024;
enum State : int { kRun, kBarrier, kShfl, kDone };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid;
  int index = 0;  // linear thread index in the block
  State state = kRun;
  unsigned mask = 0, delta = 0;
  size_t size = 0;
  unsigned char value[8];  // the value a lane offers to the shuffle, then the one it gets
  unsigned char got[8];
  void* fake = nullptr;  // ASan: this fiber's fake stack while it is switched out
  bool quiet = false;    // inside the runtime (barrier, shuffle): not kernel code
};

struct Shared { void* ptr; size_t size; };

// Scheduler state of one OS thread (launches from several host threads do not interfere).
struct Sched {
  ucontext_t main;
  std::vector<Fiber> fibers;
  int cur = -1;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::string error;
  std::vector<Shared> shared;
  size_t shared_bytes = 0;
  void* main_fake = nullptr;  // ASan: the launching thread's stack, told to it at switches
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  bool in_fiber = false;  // a fiber runs (S.cur is the one); false while the scheduler runs
};
thread_local Sched S;
// The running fiber, or null: a trivially initialized thread_local, so that the code a fiber runs
// around its kernel body reaches it without S's TLS init call (the memory tracer sees those).
constinit thread_local Fiber* t_fiber = nullptr;

// Settings and counters, shared by all host threads.
std::mutex mu;
std::map<std::string, int64_t> counts;
std::vector<int> sm_counts{132};  // per emulated device: its SM count (device 0: an H200)
std::atomic<int> device{0};
std::atomic<int> order_mode{0};  // 0 forward, 1 reverse, 2 shuffled
std::atomic<uint64_t> order_seed{0};

void fail(const std::string& msg) {
  if (S.error.empty()) S.error = msg;
}

// Main -> fiber and back. Under AddressSanitizer every switch is announced, so that the
// fibers' stacks are not taken for overflows of the launching thread's stack.
void switch_to_fiber(Fiber& f) {
#if I2I_EMU_ASAN
  __sanitizer_start_switch_fiber(&S.main_fake, f.stack.get(), kStack);
#endif
  S.in_fiber = true;  // the fiber clears it (quietly) before it switches back
  t_fiber = &f;
  swapcontext(&S.main, &f.ctx);
  t_fiber = nullptr;
#if I2I_EMU_ASAN
  __sanitizer_finish_switch_fiber(S.main_fake, nullptr, nullptr);
#endif
}

void entered_fiber(Fiber& f) {
#if I2I_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake, &S.main_bottom, &S.main_size);
#else
  (void)f;
#endif
}

void yield_to_main() {  // called quiet (inside a barrier or shuffle)
  Fiber& f = S.fibers[S.cur];
#if I2I_EMU_ASAN
  __sanitizer_start_switch_fiber(&f.fake, S.main_bottom, S.main_size);
#endif
  S.in_fiber = false;
  swapcontext(&f.ctx, &S.main);
  entered_fiber(S.fibers[S.cur]);
}

void fiber_entry() {  // the fiber starts quiet: only the kernel body is kernel code
  entered_fiber(S.fibers[S.cur]);
  try {
    void (*body)(void*) = S.body;
    void* ctx = S.ctx;
    t_fiber->quiet = false;
    body(ctx);
    t_fiber->quiet = true;
  } catch (const std::exception& e) {
    fail(e.what());
  } catch (...) {
    fail("unknown exception in an emulated CUDA thread");
  }
  S.fibers[S.cur].quiet = true;
  S.fibers[S.cur].state = kDone;
  S.in_fiber = false;
#if I2I_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, S.main_bottom, S.main_size);  // this stack is done
#endif
  setcontext(&S.main);
}

std::vector<int64_t> order(int64_t n, uint64_t salt) {
  std::vector<int64_t> o(n);
  for (int64_t i = 0; i < n; ++i) o[i] = i;
  const int m = order_mode.load();
  if (m == 1) std::reverse(o.begin(), o.end());
  if (m == 2) {
    std::mt19937_64 rng(order_seed.load() * 0x9E3779B97F4A7C15ull + salt);
    std::shuffle(o.begin(), o.end(), rng);
  }
  return o;
}

// Exchanges the values of every warp whose live lanes all wait at a shuffle; false if none.
bool resolve_shuffles(int nthreads) {
  bool any = false;
  for (int w0 = 0; w0 < nthreads; w0 += 32) {
    const int w1 = std::min(nthreads, w0 + 32);
    int live = 0, waiting = 0;
    for (int i = w0; i < w1; ++i) {
      live += S.fibers[i].state != kDone;
      waiting += S.fibers[i].state == kShfl;
    }
    if (waiting == 0 || waiting != live) continue;
    if (live != 32) {
      std::ostringstream m;
      m << "__shfl_down_sync with a full mask in a warp of " << live << " live lanes (threads " << w0 << ".."
        << w1 - 1 << "): undefined on a GPU";
      fail(m.str());
    }
    for (int i = w0; i < w1; ++i) {
      Fiber& f = S.fibers[i];
      const int src = i - w0 + int(f.delta);
      const Fiber& s = src < w1 - w0 ? S.fibers[w0 + src] : f;
      if (f.size != s.size || f.mask != 0xffffffffu) fail("__shfl_down_sync: lanes disagree on size or mask");
      std::memcpy(f.got, s.value, f.size);
    }
    for (int i = w0; i < w1; ++i) S.fibers[i].state = kRun;
    any = true;
  }
  return any;
}

void poison_shared() {
  for (const Shared& s : S.shared) std::memset(s.ptr, 0xFF, s.size);  // NaN in fp32/fp64, -1 in ints
}

void run_block(int nthreads, uint64_t salt) {
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = S.fibers[i];
    if (!f.stack) {
      f.stack.reset(new char[kStack]);
      fill_stack_poison(f.stack.get(), kStack);  // below the poisoned depth too (stack_overran)
    }
    if (poison_enabled()) poison_stack(f.stack.get(), kStack);
    f.state = kRun;
    f.quiet = true;
    f.fake = nullptr;
    f.index = i;
    f.tid = uint3(unsigned(i % blockDim.x), unsigned(i / blockDim.x % blockDim.y),
                  unsigned(i / (blockDim.x * blockDim.y)));
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  const std::vector<int64_t> ord = order(nthreads, salt);
  for (;;) {
    for (int64_t k : ord) {
      Fiber& f = S.fibers[k];
      if (f.state != kRun) continue;
      S.cur = int(k);
      threadIdx = f.tid;
      switch_to_fiber(f);
    }
    if (!S.error.empty()) return;
    if (resolve_shuffles(nthreads)) continue;
    int live = 0, barrier = 0;
    for (int i = 0; i < nthreads; ++i) {
      live += S.fibers[i].state != kDone;
      barrier += S.fibers[i].state == kBarrier;
    }
    if (live == 0) return;
    if (barrier != live) {
      fail("deadlock: some threads wait at __syncthreads while others wait at a warp shuffle");
      return;
    }
    if (const std::string e = check::barrier_release(nthreads); !e.empty()) {  // call sites, exited threads
      fail(e);
      return;
    }
    for (int i = 0; i < nthreads; ++i)
      if (S.fibers[i].state == kBarrier) S.fibers[i].state = kRun;
  }
}

}  // namespace

// Called on every instrumented access: not instrumented itself, and reads only trivially
// initialized thread_locals (S's TLS wrapper is a call). t_fiber is set while a fiber runs;
// the runtime code a fiber runs is quiet.
__attribute__((no_sanitize_thread)) Running running() {
  const Fiber* f = t_fiber;
  if (f == nullptr || f->quiet) return {-1, nullptr, 0};
  return {f->index, f->stack.get(), kStack};
}

size_t shared_count() { return S.shared.size(); }

void shared_range(size_t i, const void** ptr, size_t* size) {
  *ptr = S.shared[i].ptr;
  *size = S.shared[i].size;
}

bool runtime_memory(uintptr_t a) {
  auto in = [a](const void* p, size_t n) { return a >= uintptr_t(p) && a < uintptr_t(p) + n; };
  return in(&S, sizeof(S)) || in(&t_fiber, sizeof(t_fiber)) || in(S.fibers.data(), S.fibers.size() * sizeof(Fiber))
         || in(S.shared.data(), S.shared.size() * sizeof(Shared));
}

void set_quiet(bool quiet) {
  if (t_fiber) t_fiber->quiet = quiet;
}

namespace {
struct Quiet {  // runtime code on a fiber (the tracer skips it)
  Quiet() { set_quiet(true); }
  ~Quiet() { set_quiet(false); }
};
}  // namespace

void syncthreads() {
  Quiet q;
  if (S.cur < 0) throw std::runtime_error("__syncthreads outside an emulated kernel");
  S.fibers[S.cur].state = kBarrier;
  yield_to_main();
}

void syncthreads_at(const char* file, int line) {
  Quiet q;
  if (S.cur < 0) throw std::runtime_error("__syncthreads outside an emulated kernel");
  check::barrier_arrive(S.cur, file, line);
  syncthreads();
}

void shfl_exchange(unsigned mask, void* value, size_t size, unsigned delta) {
  Quiet q;
  if (S.cur < 0) throw std::runtime_error("__shfl_down_sync outside an emulated kernel");
  Fiber& f = S.fibers[S.cur];
  if (mask != 0xffffffffu) fail("__shfl_down_sync: only the full mask is emulated");
  f.mask = mask, f.delta = delta, f.size = size;
  std::memcpy(f.value, value, size);
  f.state = kShfl;
  yield_to_main();
  std::memcpy(value, f.got, size);
}

void note_shared(void* ptr, size_t size) {
  Quiet q;
  for (const Shared& s : S.shared)
    if (s.ptr == ptr) return;
  S.shared.push_back({ptr, size});
  std::memset(ptr, 0xFF, size);  // first declaration in this launch: nothing is written yet
  S.shared_bytes += size;
  if (S.shared_bytes > kMaxStaticShared) {
    std::ostringstream m;
    m << "static shared memory of " << S.shared_bytes << " bytes exceeds the 48 KB a block may hold";
    fail(m.str());
  }
}

void check_launch(const char* name, const LaunchCfg& c) {
  std::ostringstream bad;
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) bad << "empty grid";
  else if (c.grid.x > 2147483647u || c.grid.y > 65535u || c.grid.z > 65535u) bad << "grid dimension over its limit";
  else if (threads == 0 || threads > 1024 || c.block.z > 64) bad << "block of " << threads << " threads";
  else if (c.shmem != 0) bad << "dynamic shared memory is not emulated";
  if (!bad.str().empty()) {
    std::ostringstream m;
    m << "CUDA emulation: invalid launch of " << name << " (grid " << c.grid.x << "x" << c.grid.y << "x" << c.grid.z
      << ", block " << c.block.x << "x" << c.block.y << "x" << c.block.z << "): " << bad.str();
    throw std::runtime_error(m.str());
  }
}

void run_grid(const char* name, const LaunchCfg& c, void (*body)(void*), void* ctx) {
  check_launch(name, c);
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (S.cur >= 0) throw std::runtime_error("CUDA emulation: a kernel launched from inside a kernel");
  {
    std::lock_guard<std::mutex> lock(mu);
    ++counts[name];
  }
  S.body = body, S.ctx = ctx;
  S.error.clear();
  S.shared.clear();
  S.shared_bytes = 0;
  if (S.fibers.size() < threads) S.fibers.resize(threads);
  gridDim = c.grid, blockDim = c.block;
  const int64_t nblocks = int64_t(c.grid.x) * c.grid.y * c.grid.z;
#if I2I_EMU_TRACE
  int sms;
  {
    std::lock_guard<std::mutex> lock(mu);
    sms = sm_counts[device.load()];
  }
  trace::launch_begin(name, unsigned(nblocks), unsigned(threads), sms);
  struct End { ~End() { trace::launch_end(); } } end;  // also when the launch throws
#endif
  check::launch_begin(name);
  for (int64_t b : order(nblocks, 0x5EED)) {
    blockIdx = uint3(unsigned(b % c.grid.x), unsigned(b / c.grid.x % c.grid.y),
                     unsigned(b / (int64_t(c.grid.x) * c.grid.y)));
    poison_shared();
    check::block_begin(int(threads));
    run_block(int(threads), uint64_t(b) + 1);
    S.cur = -1;
    if (poison_enabled())
      for (int i = 0; i < int(threads); ++i) stack_overran(S.fibers[i].stack.get(), kStack);
    if (const std::string e = check::block_end(); !e.empty()) fail(e);
#if I2I_EMU_TRACE
    trace::block_end();
#endif
    if (!S.error.empty()) {
      std::ostringstream m;
      m << "CUDA emulation: kernel " << name << ", block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z
        << "): " << S.error;
      S.error.clear();
      throw std::runtime_error(m.str());
    }
  }
}

}  // namespace i2i_emu

cudaError_t cudaGetDevice(int* d) {
  *d = i2i_emu::device.load();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  std::lock_guard<std::mutex> lock(i2i_emu::mu);
  if (attr != cudaDevAttrMultiProcessorCount || d < 0 || d >= int(i2i_emu::sm_counts.size()))
    return cudaErrorInvalidValue;
  *v = i2i_emu::sm_counts[d];
  return cudaSuccess;
}

namespace {

// A device per SM count: the kernels cache the SM count per device, as they should.
void set_sm_count(int n) {
  if (n <= 0) throw std::invalid_argument("SM count must be positive");
  std::lock_guard<std::mutex> lock(i2i_emu::mu);
  auto& v = i2i_emu::sm_counts;
  auto it = std::find(v.begin(), v.end(), n);
  if (it == v.end()) {
    if (v.size() >= 64) throw std::invalid_argument("too many emulated devices");
    v.push_back(n);
    it = v.end() - 1;
  }
  i2i_emu::device = int(it - v.begin());
}

int sm_count() {
  std::lock_guard<std::mutex> lock(i2i_emu::mu);
  return i2i_emu::sm_counts[i2i_emu::device.load()];
}

void set_order(const std::string& mode, uint64_t seed) {
  const int m = mode == "forward" ? 0 : mode == "reverse" ? 1 : mode == "shuffled" ? 2 : -1;
  if (m < 0) throw std::invalid_argument("block order must be forward, reverse or shuffled, got " + mode);
  i2i_emu::order_mode = m;
  i2i_emu::order_seed = seed;
}

std::map<std::string, int64_t> launch_counts() {
  std::lock_guard<std::mutex> lock(i2i_emu::mu);
  return i2i_emu::counts;
}

void reset_counts() {
  std::lock_guard<std::mutex> lock(i2i_emu::mu);
  i2i_emu::counts.clear();
}

}  // namespace

#if I2I_EMU_TRACE
namespace i2i_emu::trace {
void bind(pybind11::module_& m);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {  // NOLINT
  m.doc() = "CUDA emulation of kernels/*.cu on CPU tensors (tests only)";
  m.def("set_sm_count", &set_sm_count, "emulate a device with this many SMs");
  m.def("sm_count", &sm_count);
  m.def("set_order", &set_order, "block and thread order: forward, reverse or shuffled(seed)");
  m.def("launch_counts", &launch_counts, "launches per kernel name since the last reset");
  m.def("reset_counts", &reset_counts);
  m.attr("asan") = bool(I2I_EMU_ASAN);
  m.attr("traced") = bool(I2I_EMU_TRACE);
  m.attr("checked") = bool(I2I_EMU_CHECKED);
  m.def("set_checks", &i2i_emu::check::set_enabled,
        "turn the GPU-semantics checks (shared races, helper reuse, global happens-before, barrier sites) on or off");
  m.def("checks", &i2i_emu::check::enabled);
#if I2I_EMU_TRACE
  i2i_emu::trace::bind(m);
#endif
  i2i_emu::bind_checks(m);
}
