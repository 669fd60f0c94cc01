// Checks of the CUDA emulation that a GPU's asynchrony and resources would show (tests only):
// - poison: every CPU tensor allocated while the emulation runs (an emulated entry point, or a
//   `with EmulatedCuda()` block) starts as 0xFF bytes (NaN in every float type), fiber stacks are
//   refilled with 0x7FFF (NaN too, another payload) before every block, and the kernels are built
//   with -ftrivial-auto-var-init=pattern: an unwritten output shows as NaN, and a stored value
//   computed from an uninitialized local is reported by the access checks (check.cpp);
// - streams: launches, memsets and event records/waits are queued per emulated stream and run at
//   synchronization points (the end of each entry point, cuda*Synchronize, a host ATen call inside
//   an entry point); memory freed while work is queued is poisoned in its stream's order and kept
//   until the queues are empty, so a read of a workspace freed on another stream reads NaN;
// - graphs: a capture records the launches, memsets (and, through the Python hook, the host ATen
//   ops) of a call; replay runs them again on the same buffers; the graph keeps what it allocated;
//   the access checks report a replay that reads what the previous replay left (check.cpp);
// - launch resources: __launch_bounds__ against the block size (the parameter size is a
//   static_assert, see emu.h), and a grid-only mode that checks launches without running blocks
//   (tensors then come from untouched MAP_NORESERVE mappings, so huge shapes cost nothing).
#include <ATen/record_function.h>
#include <c10/core/CPUAllocator.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/mman.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "checks.h"
#include "trace.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
// A fiber that ends with setcontext leaves its frames' redzones poisoned in ASan's shadow: the
// scheduler's own writes and reads of a fiber stack are not the kernel's.
#define I2I_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define I2I_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace i2i_emu {
namespace {

enum class NodeKind { kLaunch, kMemset, kPoison, kRecord, kWait, kHost };

struct Node {
  NodeKind kind;
  std::function<void()> run;  // kLaunch, kHost
  void* ptr = nullptr;        // kMemset, kPoison
  size_t n = 0;
  int value = 0;
  CUevent_st* ev = nullptr;  // kRecord, kWait
  uint64_t gen = 0;
};

struct Graph;

// One allocation made through the poisoning allocator.
struct Held {
  c10::DataPtr base;  // the wrapped allocator's memory (empty for a grid-only mapping)
  void* ptr = nullptr;
  size_t n = 0;
  bool mapped = false;
  CUstream_st* stream = nullptr;  // the caching allocator pools a block per allocation stream
  std::weak_ptr<Graph> graph;     // allocated while a graph was captured: its pool keeps it
};

}  // namespace
}  // namespace i2i_emu

struct CUstream_st {
  int id;
  std::deque<i2i_emu::Node> q;
};
struct CUevent_st {
  uint64_t recorded = 0, done = 0;  // generations: of the last record call, of the last record run
};

namespace i2i_emu {
namespace {

struct Graph {
  std::vector<Node> nodes;
  std::vector<void*> freed;  // allocations of the capture freed since: kept for the replays
};

constexpr size_t kStackPoisonStart = 8 * 1024;  // first poisoned depth of a fiber stack
constexpr size_t kStackCanary = 256;            // bytes below that depth checked after each block
constexpr uint8_t kAllocatorPriority = 255;     // c10::SetCPUAllocator: ours wins while installed

std::atomic<bool> poison_on{true}, streams_on{true}, bounds_on{true}, grid_only_on{false};
std::atomic<size_t> stack_depth{kStackPoisonStart};

// Stream, graph and allocation state, shared by all host threads (leaked: tensors may be freed
// after static destructors run).
std::recursive_mutex& mu() {
  static auto* m = new std::recursive_mutex;
  return *m;
}
std::vector<std::unique_ptr<CUstream_st>>& streams() {
  static auto* v = [] {
    auto* s = new std::vector<std::unique_ptr<CUstream_st>>;
    s->push_back(std::make_unique<CUstream_st>(CUstream_st{0, {}}));  // the default stream
    return s;
  }();
  return *v;
}
std::unordered_map<void*, Held*>& held() {
  static auto* m = new std::unordered_map<void*, Held*>;
  return *m;
}
std::vector<Held*>& deferred() {  // freed while work was queued: released once the queues are empty
  static auto* v = new std::vector<Held*>;
  return *v;
}
std::shared_ptr<Graph> capturing;
std::map<int, std::shared_ptr<Graph>>& graphs() {
  static auto* m = new std::map<int, std::shared_ptr<Graph>>;
  return *m;
}
int next_graph = 1;
std::vector<std::tuple<std::string, std::vector<unsigned>, std::vector<unsigned>>> grid_log;

thread_local CUstream_st* t_current = nullptr;  // null: the default stream
thread_local int t_op_depth = 0;
thread_local bool t_flushing = false;
thread_local std::string t_sticky;  // a kernel error met by a flush inside an ATen callback
thread_local at::CallbackHandle t_callback = 0;

CUstream_st* stream_of(cudaStream_t s) { return s ? s : streams()[0].get(); }

bool any_queued() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  for (auto& s : streams())
    if (!s->q.empty()) return true;
  return false;
}

// Memory freed while work was queued, from its poison (run in its stream's order) until it is
// released once the queues are empty: a kernel that touches it then uses it after its free (the
// checks of check.cpp ask freed_memory). Graph allocations are not in it: their replays reuse them.
std::map<uintptr_t, uintptr_t>& freed_ranges() {  // start -> end
  static auto* m = new std::map<uintptr_t, uintptr_t>;
  return *m;
}
std::atomic<int> n_freed{0};

void release(Held* h) {
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    if (freed_ranges().erase(uintptr_t(h->ptr))) --n_freed;
  }
  if (h->mapped) munmap(h->ptr, h->n);
  delete h;  // and with it the wrapped allocator's DataPtr
}

void release_deferred() {
  std::vector<Held*> v;
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    v.swap(deferred());
  }
  for (Held* h : v) release(h);
}

void execute(Node& nd) {
  switch (nd.kind) {
    case NodeKind::kLaunch:
    case NodeKind::kHost: nd.run(); break;
    case NodeKind::kMemset:
      std::memset(nd.ptr, nd.value, nd.n);
      check::replay_wrote(nd.ptr, nd.n, "a cudaMemsetAsync");
      break;
    case NodeKind::kPoison: {
      std::memset(nd.ptr, kStackPoisonByte, nd.n);
      check::replay_wrote(nd.ptr, nd.n, "the poison of its free during the capture");
      std::lock_guard<std::recursive_mutex> lock(mu());
      for (const Held* h : deferred())
        if (h->ptr == nd.ptr && freed_ranges().emplace(uintptr_t(nd.ptr), uintptr_t(nd.ptr) + nd.n).second) ++n_freed;
      break;
    }
    case NodeKind::kRecord: nd.ev->done = std::max(nd.ev->done, nd.gen); break;
    case NodeKind::kWait: break;  // the scheduler ran it only once the event was reached
  }
}

void discard_queues() {
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    for (auto& s : streams()) s->q.clear();
  }
  release_deferred();
}

// Runs the queued work: the streams in creation order, each as far as its event waits allow. So a
// stream's frees (poison) run before another stream's later work reads the memory: the order that
// shows a missing wait or a missing record_stream.
void flush_all() {
  if (t_flushing) return;
  t_flushing = true;
  struct Done {
    ~Done() { t_flushing = false; }
  } done;
  for (;;) {
    bool progress = false, blocked = false;
    for (size_t i = 0;; ++i) {
      CUstream_st* s;
      {
        std::lock_guard<std::recursive_mutex> lock(mu());
        if (i >= streams().size()) break;
        s = streams()[i].get();
      }
      for (;;) {
        Node nd;
        {
          std::lock_guard<std::recursive_mutex> lock(mu());
          if (s->q.empty()) break;
          Node& h = s->q.front();
          if (h.kind == NodeKind::kWait && h.ev->done < h.gen) {
            blocked = true;
            break;
          }
          nd = std::move(h);
          s->q.pop_front();
        }
        try {
          execute(nd);
        } catch (...) {
          discard_queues();
          throw;
        }
        progress = true;
      }
    }
    if (!blocked) break;
    if (!progress) {
      discard_queues();
      throw std::runtime_error("CUDA emulation: a stream waits on an event that no queued work records (deadlock)");
    }
  }
  release_deferred();
}

void enqueue(CUstream_st* s, Node nd) {
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    if (capturing) {
      capturing->nodes.push_back(std::move(nd));
      return;
    }
    if (streams_on) {
      s->q.push_back(std::move(nd));
      return;
    }
  }
  execute(nd);
}

// ---- the poisoning allocator ----
void free_poisoned(void* p);

struct PoisonAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return base->allocate(0);
    auto* h = new Held;
    h->n = n;
    void* p;
    if (grid_only_on) {  // never touched: the kernels do not run
      p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        delete h;
        throw std::bad_alloc();
      }
      h->mapped = true;
    } else {
      h->base = base->allocate(n);
      p = h->base.get();
      if (poison_on) std::memset(p, kStackPoisonByte, n);
    }
    h->ptr = p;
    {
      std::lock_guard<std::recursive_mutex> lock(mu());
      h->stream = stream_of(t_current);
      h->graph = capturing;
      held()[p] = h;
    }
    return c10::DataPtr(p, p, &free_poisoned, c10::Device(c10::DeviceType::CPU));
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_poisoned; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

PoisonAllocator& poison_allocator() {
  static auto* a = new PoisonAllocator;
  return *a;
}

void free_poisoned(void* p) {
  Held* h;
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    auto it = held().find(p);
    if (it == held().end()) return;  // not ours (cannot happen: only we hand out this deleter)
    h = it->second;
    held().erase(it);
    if (auto g = h->graph.lock()) {  // the graph's kernels still use it at every replay
      if (g == capturing) g->nodes.push_back(Node{NodeKind::kPoison, {}, p, h->n});
      g->freed.push_back(p);
      held()[p] = h;  // released with the graph
      return;
    }
    bool queued = false;
    for (auto& s : streams()) queued |= !s->q.empty();
    if (queued) {  // a caching allocator may hand it out again in this stream's order: poison it there
      h->stream->q.push_back(Node{NodeKind::kPoison, {}, p, h->n});
      deferred().push_back(h);
      return;
    }
  }
  release(h);
}

// Installed while any emulation scope is open (a `with EmulatedCuda()` block, an entry point).
int scopes = 0;
c10::Allocator* previous = nullptr;

void scope_enter() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  if (scopes++ == 0) {
    previous = c10::GetCPUAllocator();
    poison_allocator().base = previous;
    c10::SetCPUAllocator(&poison_allocator(), kAllocatorPriority);
  }
}

void scope_exit() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  if (--scopes == 0) c10::SetCPUAllocator(previous, kAllocatorPriority);
}

std::unique_ptr<at::ObserverContext> before_aten_op(const at::RecordFunction&) {
  if (t_op_depth > 0 && !t_flushing && any_queued()) {
    try {
      flush_all();
    } catch (const std::exception& e) {  // a callback must not throw: raised at the entry point's end
      if (t_sticky.empty()) t_sticky = e.what();
    }
  }
  return nullptr;
}

}  // namespace

// ---- the runtime API (emu.h) ----
cudaStream_t current_stream() { return stream_of(t_current); }

void submit(const char* name, const LaunchCfg& cfg, std::function<void()> job) {
  if (grid_only_on) {
    std::lock_guard<std::recursive_mutex> lock(mu());
    grid_log.emplace_back(name, std::vector<unsigned>{cfg.grid.x, cfg.grid.y, cfg.grid.z},
                          std::vector<unsigned>{cfg.block.x, cfg.block.y, cfg.block.z});
    return;
  }
  Node nd{NodeKind::kLaunch};
  nd.run = std::move(job);
  enqueue(stream_of(cfg.stream), std::move(nd));
}

void check_launch_bounds(const char* kernel, const char* where, unsigned max_threads) {
  struct Quiet {  // runtime code on a fiber: not the kernel's memory traffic (trace.cpp)
    Quiet() { set_quiet(true); }
    ~Quiet() { set_quiet(false); }
  } quiet;
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  if (bounds_on && threads > max_threads) {
    std::ostringstream m;
    m << "block of " << threads << " threads exceeds the __launch_bounds__(" << max_threads << ") of " << kernel
      << " (" << where << "): undefined on a GPU (the launch fails or the registers do not fit)";
    throw std::runtime_error(m.str());
  }
}

bool poison_enabled() { return poison_on; }

bool freed_memory(uintptr_t a) {
  if (n_freed.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard<std::recursive_mutex> lock(mu());
  auto it = freed_ranges().upper_bound(a);
  return it != freed_ranges().begin() && a < std::prev(it)->second;
}

// Not instrumented: the scheduler's own stores (a hook call for each would cost more than the fill).
__attribute__((no_sanitize_thread)) void fill_stack_poison(char* p, size_t n) {
  for (size_t i = 0; i < n; i += sizeof(kStackPoisonWord)) std::memcpy(p + i, &kStackPoisonWord, sizeof(kStackPoisonWord));
}

__attribute__((no_sanitize_thread)) bool stack_poison_at(const char* p) {
  const size_t k = uintptr_t(p) % sizeof(kStackPoisonWord);
  return static_cast<unsigned char>(*p) == static_cast<unsigned char>(kStackPoisonWord >> (8 * k));
}

void poison_stack(char* stack, size_t size) {
  const size_t d = std::min(size, stack_depth.load());
  I2I_EMU_UNPOISON(stack + size - d, d);
  fill_stack_poison(stack + size - d, d);
}

void stack_overran(const char* stack, size_t size) {
  const size_t d = stack_depth.load();
  if (d >= size) return;
  const char* band = stack + size - d - kStackCanary;
  I2I_EMU_UNPOISON(band, kStackCanary);
  for (size_t i = 0; i < kStackCanary; ++i)
    if (!stack_poison_at(band + i)) {
      stack_depth = std::min(size, 2 * d);
      return;
    }
}

OpScope::OpScope() {
  if (t_op_depth++ == 0) {
    scope_enter();
    t_sticky.clear();
    t_callback = at::addThreadLocalCallback(at::RecordFunctionCallback(&before_aten_op));
  }
}

void OpScope::finish() {
  if (t_op_depth != 1) return;
  flush_all();
  if (!t_sticky.empty()) {
    const std::string e = t_sticky;
    t_sticky.clear();
    throw std::runtime_error(e);
  }
}

OpScope::~OpScope() {
  if (--t_op_depth == 0) {
    at::removeCallback(t_callback);
    if (any_queued()) discard_queues();  // the entry point threw: its work goes nowhere
    scope_exit();
  }
}

namespace {

// ---- graphs ----
int capture_begin() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  if (capturing) throw std::runtime_error("CUDA emulation: a graph is already being captured");
  if (any_queued()) throw std::runtime_error("CUDA emulation: capture started with work queued");
  capturing = std::make_shared<Graph>();
  const int id = next_graph++;
  graphs()[id] = capturing;
  return id;
}

void capture_end() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  if (!capturing) throw std::runtime_error("CUDA emulation: no graph is being captured");
  capturing.reset();
}

bool is_capturing() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  return bool(capturing);
}

void capture_host(pybind11::function f) {
  auto fn = std::make_shared<pybind11::function>(std::move(f));
  Node nd{NodeKind::kHost};
  nd.run = [fn]() {
    pybind11::gil_scoped_acquire gil;
    (*fn)();
  };
  std::lock_guard<std::recursive_mutex> lock(mu());
  if (!capturing) throw std::runtime_error("CUDA emulation: capture_host outside a capture");
  capturing->nodes.push_back(std::move(nd));
}

void replay(int id) {
  std::shared_ptr<Graph> g;
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    auto it = graphs().find(id);
    if (it == graphs().end()) throw std::invalid_argument("CUDA emulation: no graph " + std::to_string(id));
    g = it->second;
  }
  flush_all();
  check::replay_begin(id);
  struct End {
    ~End() { check::replay_end(); }
  } end;
  for (Node& nd : g->nodes) {
    if (nd.kind == NodeKind::kWait) continue;  // replayed in capture order
    execute(nd);
  }
}

void graph_destroy(int id) {
  std::shared_ptr<Graph> g;
  {
    std::lock_guard<std::recursive_mutex> lock(mu());
    auto it = graphs().find(id);
    if (it == graphs().end()) return;
    g = it->second;
    graphs().erase(it);
    check::graph_forget(id);
    for (void* p : g->freed) {
      auto h = held().find(p);
      if (h != held().end()) {
        Held* hh = h->second;
        held().erase(h);
        release(hh);
      }
    }
    g->freed.clear();
  }
}  // g, and the Python callables of its host nodes, go here, with the GIL held

int new_stream() {
  std::lock_guard<std::recursive_mutex> lock(mu());
  const int id = int(streams().size());
  streams().push_back(std::make_unique<CUstream_st>(CUstream_st{id, {}}));
  return id;
}

void set_stream(int id) {
  std::lock_guard<std::recursive_mutex> lock(mu());
  if (id < 0 || id >= int(streams().size())) throw std::invalid_argument("CUDA emulation: no stream " + std::to_string(id));
  t_current = id == 0 ? nullptr : streams()[id].get();
}

int stream_id() { return t_current ? t_current->id : 0; }

}  // namespace

void bind_checks(pybind11::module_& m) {
  m.def("set_poison", [](bool on) { poison_on = on; }, "poison new tensors and fiber stacks (default on)");
  m.def("poison", []() { return poison_on.load(); });
  m.def("set_streams", [](bool on) { streams_on = on; }, "queue work per stream until a sync (default on)");
  m.def("streams", []() { return streams_on.load(); });
  m.def("set_launch_checks", [](bool on) { bounds_on = on; }, "check __launch_bounds__ (default on)");
  m.def("launch_checks", []() { return bounds_on.load(); });
  m.def("set_grid_only", [](bool on) { grid_only_on = on; }, "check launches without running blocks");
  m.def("grid_log", []() {
    std::lock_guard<std::recursive_mutex> lock(mu());
    auto out = grid_log;
    grid_log.clear();
    return out;
  }, "(kernel, grid, block) of each launch since the last call, in grid-only mode");
  m.def("scope", [](bool enter) { enter ? scope_enter() : scope_exit(); }, "open/close an emulation scope");
  m.def("synchronize", []() { flush_all(); }, "run every queued launch and memset");
  m.def("new_stream", &new_stream);
  m.def("set_stream", &set_stream, "the current emulated stream of this thread (0: the default)");
  m.def("stream_id", &stream_id);
  m.def("capture_begin", &capture_begin);
  m.def("capture_end", &capture_end);
  m.def("capturing", &is_capturing);
  m.def("capture_host", &capture_host, "a host step of the graph being captured (a Python callable)");
  m.def("replay", &replay);
  m.def("graph_destroy", &graph_destroy);
  m.def("stack_poison_depth", []() { return stack_depth.load(); });
  m.def("in_op", []() { return t_op_depth > 0; }, "an emulated entry point runs on this thread");
}

}  // namespace i2i_emu

// ---- runtime API entry points ----
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t stream) {
  if (i2i_emu::grid_only_on) return cudaSuccess;
  i2i_emu::Node nd{i2i_emu::NodeKind::kMemset};
  nd.ptr = p, nd.value = value, nd.n = n;
  i2i_emu::enqueue(i2i_emu::stream_of(stream), std::move(nd));
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  const int id = i2i_emu::new_stream();
  std::lock_guard<std::recursive_mutex> lock(i2i_emu::mu());
  *stream = i2i_emu::streams()[id].get();
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) {  // all streams: a superset of the one asked for
  i2i_emu::flush_all();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  i2i_emu::flush_all();
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;  // (a destroy with work queued on it is an error on a GPU too)
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  i2i_emu::Node nd{i2i_emu::NodeKind::kRecord};
  nd.ev = event, nd.gen = ++event->recorded;
  i2i_emu::enqueue(i2i_emu::stream_of(stream), std::move(nd));
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  if (event->recorded == 0) return cudaSuccess;  // never recorded: nothing to wait for
  i2i_emu::Node nd{i2i_emu::NodeKind::kWait};
  nd.ev = event, nd.gen = event->recorded;
  i2i_emu::enqueue(i2i_emu::stream_of(stream), std::move(nd));
  return cudaSuccess;
}
