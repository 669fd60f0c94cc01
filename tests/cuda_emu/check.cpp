// The emulation's GPU-semantics checks (see check.h for the rules). State is per OS thread (as
// the scheduler's) and per launch; errors name the threads, blocks and source lines involved.
//
// Shared memory: every byte of a __shared__ static has a shadow (stamp = block and barrier
// epoch, last writer, up to two readers, each with its call site). Two different threads in one
// epoch with a write among them is a race, however the fibers happened to be ordered.
// Helper reuse: the accesses to a helper-owned buffer are recorded per call (each thread's call
// starts at the declaration and ends when the helper's scope ends); at block end, the accesses
// made in the epoch a call ends in (after its last barrier) are compared with those made in the
// epoch it starts in (before its first barrier), as a second call would meet them.
// Global memory: the bytes written in the running launch (4-byte granules, per writing thread:
// block, barrier epoch, time), the releases made by atomics (the writer thread's last fence) and
// what each thread acquired (an atomic on the address, then a fence; shared with the whole block
// at the next barrier). A read or a write of a byte another block wrote must be ordered by a
// release the reading thread acquired.
// Uninitialized locals: the value of each global store, read at the thread's next global access
// or at block end (the hook runs before the store), must not come from the fiber-stack poison or
// gcc's pattern for uninitialized locals.
// Graph replays: the granules a replay has written (kernels, memsets, poison nodes) and, kept from
// the previous replay, what it wrote and the values it left; a read of one of those, not yet
// written in this replay and still holding that value, depends on the previous replay.
//
// This file is compiled with the thread-sanitizer instrumentation like every source of the
// instrumented variants: its functions are not instrumented (I2I_NO_TSAN), `t_busy` turns away
// the hooks of the library code they call, and the runtime's quiet flag hides that code from the
// memory tracer.
#include "check.h"

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <map>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "checks.h"
#include "emu.h"
#include "trace.h"

#ifndef I2I_EMU_TRACE
#define I2I_EMU_TRACE 0
#endif

#define I2I_NO_TSAN __attribute__((no_sanitize_thread))
#pragma GCC optimize("O2")   // on every access: the variants build at -O1

namespace i2i_emu::check {
namespace {

constexpr int32_t kNone = -1;
constexpr uint32_t kOpen = 0xFFFFFFFFu;   // a helper call whose scope has not ended
constexpr uint64_t kGranule = 4;           // global bytes are tracked per 4-byte granule...
constexpr int kWriters = 4;                // ...with at most this many writing threads each
constexpr int kPageShift = 12;             // reads are filtered by a bitmap of written granules per 4 KB page
constexpr uint64_t kPageGranules = (uint64_t(1) << kPageShift) / kGranule;
// Stored values that come from an uninitialized local: the fiber-stack poison's payload, gcc's
// pattern itself, or a float of the pattern (-1.7e38 in fp32, -5.5e303 in fp64) scaled by anything
// over 1/64, which no kernel computes from the tests' inputs.
constexpr uint32_t kPattern32 = uint32_t(kLocalPatternByte) * 0x01010101u;
constexpr uint16_t kPattern16 = uint16_t(kPattern32), kStackPoison16 = uint16_t(kStackPoison32);
constexpr float kPatternDerived32 = 0x1p120f;
constexpr double kPatternDerived64 = 0x1p1000;

// On unless the environment says I2I_EMU_CHECKS=0; set_checks() changes it at run time.
// A plain bool read with __atomic builtins: std::atomic's load may be an instrumented
// out-of-line function, which would call the hooks that read it.
bool g_enabled = [] {
  const char* e = std::getenv("I2I_EMU_CHECKS");
  return !(e && std::string(e) == "0");
}();
I2I_NO_TSAN inline bool on() { return __atomic_load_n(&g_enabled, __ATOMIC_RELAXED); }

struct Who {   // one access of a shadowed byte
  int32_t thread = kNone;
  uintptr_t pc = 0;
};

struct ByteShadow {   // per __shared__ byte, valid while stamp is the current block and epoch
  uint64_t stamp = 0;
  Who w, r1, r2;      // the last writer and two distinct readers since the last barrier
};

struct Rec {          // an access to a helper's buffer
  int32_t thread;
  uint32_t off, size, epoch, call;
  bool write;
  uintptr_t pc;
};

struct Call { uint32_t in, out; };   // barrier epochs at a helper call's start and end

struct Buffer {       // a __shared__ static of the running launch
  uintptr_t lo = 0;
  size_t size = 0;
  const char* name = "";
  bool helper = false;
  std::vector<ByteShadow> shadow;
  std::vector<Rec> recs;                      // helpers only, this block
  std::vector<std::vector<Call>> calls;       // helpers only: per thread, this block
};

struct Write {        // the last write of one thread to some bytes of a global granule
  int32_t block = kNone, thread = kNone;
  uint32_t epoch = 0;
  uint8_t mask = 0;
  uint64_t time = 0;
  uintptr_t pc = 0;
};
struct Granule { Write w[kWriters]; };
struct PageBits { uint64_t bits[kPageGranules / 64] = {}; };

struct LastWrite {    // a global granule written by a graph replay: by whom, and its value at the replay's end
  uintptr_t pc = 0;   // the kernel's store, or 0 for a memset or poison node
  const char* what = "";
  uint32_t value = 0;
};
struct GraphShadow { std::unordered_map<uint64_t, LastWrite> prev, cur; };   // the last replay's, this one's

struct Store {        // the last global store, its value checked at the next access (the hook runs before it)
  uintptr_t addr = 0;
  uint32_t size = 0;
  int32_t thread = kNone;
  uintptr_t pc = 0;
};

struct Release {      // an atomic made after a fence: releases what that fence covers
  int32_t block, thread;
  uint32_t epoch;     // barrier epoch and time of the fence
  uint64_t time;
};

using Acquired = std::map<uintptr_t, size_t>;   // atomic address -> releases [0, n) acquired

struct ThreadState {
  uint32_t fence_epoch = 0;
  uint64_t fence_time = 0;                       // 0: no fence yet in this block
  std::vector<std::pair<uintptr_t, size_t>> pending;   // atomics not yet followed by a fence
  Acquired acquired;                             // since the last barrier
  const char* barrier_file = nullptr;            // where it waits, while it waits
  int barrier_line = 0;
};

struct State {
  bool in_launch = false;
  bool failed = false;                           // error is set: the block's accesses are not checked further
  std::string kernel, error;
  uint64_t serial = 0;                           // blocks run by this thread (shadow stamps)
  int32_t block = 0;
  uint32_t epoch = 0;
  uint64_t now = 0;
  std::vector<Buffer> bufs;
  std::vector<ThreadState> threads;
  Acquired block_acquired;                       // acquired by some thread before a barrier
  std::unordered_map<uint64_t, Granule> written; // granule -> writers, this launch
  std::unordered_map<uint64_t, PageBits> pages;  // page -> its granules in `written`
  uint64_t cached_page = UINT64_MAX;             // the last page a read looked up, and its bits
  const PageBits* cached_bits = nullptr;
  std::unordered_map<uintptr_t, std::vector<Release>> releases;   // per atomic address
  const char* kernel_name = "";
  Store pending;                                 // size 0: none
  GraphShadow* replaying = nullptr;              // a graph replays on this thread
};
// Everything the hooks read on every access in one thread_local (each one read is a TLS
// descriptor call in a dlopen'ed library).
struct Hot {
  bool in_hook = false;   // a hook runs: the accesses of the code it calls are not the kernel's
  bool busy = false;      // a check entry point runs
  State* st = nullptr;
};
constinit thread_local Hot t_hot;
#define t_st t_hot.st
#define t_busy t_hot.busy

struct Busy {   // entered from kernel code: hide this code from the hooks and the tracer
  bool quiet;
  I2I_NO_TSAN explicit Busy(bool q) : quiet(q) {
    t_busy = true;
    if (quiet) set_quiet(true);
  }
  I2I_NO_TSAN ~Busy() {
    if (quiet) set_quiet(false);
    t_busy = false;
  }
};

I2I_NO_TSAN std::string thread_name(int32_t i) {
  std::ostringstream m;
  m << "thread (" << i % blockDim.x << "," << i / blockDim.x % blockDim.y << "," << i / (blockDim.x * blockDim.y) << ")";
  return m.str();
}

I2I_NO_TSAN std::string block_name(int32_t b) {
  std::ostringstream m;
  m << "block (" << b % gridDim.x << "," << b / gridDim.x % gridDim.y << "," << b / (int64_t(gridDim.x) * gridDim.y)
    << ")";
  return m.str();
}

// A source path from kernels/ or tests/ on (the rewritten sources keep the .cu paths).
I2I_NO_TSAN std::string short_path(const std::string& p) {
  for (const char* root : {"/kernels/", "/tests/"}) {
    const size_t k = p.rfind(root);
    if (k != std::string::npos) return p.substr(k + 1);
  }
  return p;
}

// file:line of a call site (the instrumented access's return address), through addr2line:
// the innermost inlined frame in kernels/ or a self-test. Only run to word an error.
I2I_NO_TSAN std::string site(uintptr_t pc) {
  static std::map<uintptr_t, std::string> cache;
  auto it = cache.find(pc);
  if (it != cache.end()) return it->second;
  Dl_info info{};
  std::string out = "?";
  if (pc && dladdr(reinterpret_cast<void*>(pc), &info) && info.dli_fname) {
    std::ostringstream cmd;
    cmd << "addr2line -i -e '" << info.dli_fname << "' 0x" << std::hex << (pc - 1 - uintptr_t(info.dli_fbase))
        << " 2>/dev/null";
    if (FILE* f = popen(cmd.str().c_str(), "r")) {
      char line[4096];
      std::vector<std::string> frames;
      while (fgets(line, sizeof(line), f)) {
        std::string s(line);
        s = s.substr(0, s.find_first_of("\n"));
        s = s.substr(0, s.find(" (discriminator"));
        frames.push_back(s);
      }
      pclose(f);
      for (const std::string& fr : frames)
        if (fr.find("/kernels/") != std::string::npos || fr.find("/selftest") != std::string::npos) {
          out = short_path(fr);
          break;
        }
      if (out == "?" && !frames.empty()) out = short_path(frames[0]);
    }
  }
  return cache[pc] = out;
}

I2I_NO_TSAN void fail(const std::string& msg) {
  if (t_st->error.empty()) t_st->error = msg;
  t_st->failed = true;
}

I2I_NO_TSAN Buffer* buffer_of(uintptr_t a) {
  for (Buffer& b : t_st->bufs)
    if (a - b.lo < b.size) return &b;
  return nullptr;
}

// ---- shared memory ----
I2I_NO_TSAN void shared_race(const Buffer& b, size_t off, int32_t t, bool write, uintptr_t pc, const Who& other,
                             bool other_writes) {
  std::ostringstream m;
  m << "shared-memory race on __shared__ " << b.name << " (byte " << off << " of " << b.size << "): " << thread_name(t)
    << (write ? " writes it at " : " reads it at ") << site(pc) << " and " << thread_name(other.thread)
    << (other_writes ? " writes it at " : " reads it at ") << site(other.pc)
    << " with no __syncthreads between them (their order on a GPU is undefined)";
  fail(m.str());
}

I2I_NO_TSAN void shared_access(Buffer& b, uintptr_t a, uint32_t size, bool write, int32_t t, uintptr_t pc) {
  const uint64_t stamp = t_st->serial << 32 | t_st->epoch;
  const size_t off = a - b.lo, end = std::min<size_t>(b.size, off + size);
  for (size_t i = off; i < end; ++i) {
    ByteShadow& s = b.shadow[i];
    if (s.stamp != stamp) s = ByteShadow{stamp, {}, {}, {}};
    if (s.w.thread != kNone && s.w.thread != t) return shared_race(b, i, t, write, pc, s.w, true);
    if (write) {
      for (const Who* r : {&s.r1, &s.r2})
        if (r->thread != kNone && r->thread != t) return shared_race(b, i, t, write, pc, *r, false);
      s.w = {t, pc};
    } else if (s.r1.thread == kNone) {
      s.r1 = {t, pc};
    } else if (s.r1.thread != t && s.r2.thread == kNone) {
      s.r2 = {t, pc};
    }
  }
  if (b.helper && !b.calls[t].empty())
    b.recs.push_back({t, uint32_t(off), uint32_t(end - off), t_st->epoch, uint32_t(b.calls[t].size() - 1), write, pc});
}

// A second call of the helper meets the first call's last epoch with its own first epoch.
I2I_NO_TSAN void check_reuse(Buffer& b) {
  size_t ncalls = 0;
  for (const auto& c : b.calls) ncalls = std::max(ncalls, c.size());
  std::vector<ByteShadow> head(b.size), tail(b.size);
  for (uint32_t k = 0; k < ncalls && t_st->error.empty(); ++k) {
    const uint64_t stamp = k + 1;
    for (const Rec& r : b.recs) {
      if (r.call != k) continue;
      const Call c = b.calls[r.thread][k];
      for (auto [part, epoch] : {std::pair{&head, c.in}, std::pair{&tail, c.out}}) {
        if (r.epoch != epoch) continue;
        for (uint32_t i = r.off; i < r.off + r.size; ++i) {
          ByteShadow& s = (*part)[i];
          if (s.stamp != stamp) s = ByteShadow{stamp, {}, {}, {}};
          if (r.write) s.w = {r.thread, r.pc};
          else if (s.r1.thread == kNone) s.r1 = {r.thread, r.pc};
          else if (s.r1.thread != r.thread && s.r2.thread == kNone) s.r2 = {r.thread, r.pc};
        }
      }
    }
    for (size_t i = 0; i < b.size; ++i) {
      const ByteShadow &h = head[i], &t = tail[i];
      if (h.stamp != stamp || t.stamp != stamp) continue;
      const Who *late = nullptr, *early = nullptr;
      bool late_writes = false, early_writes = false;
      for (const Who* x : {&t.w, &t.r1, &t.r2}) {
        for (const Who* y : {&h.w, &h.r1, &h.r2}) {
          if (late || x->thread == kNone || y->thread == kNone || x->thread == y->thread) continue;
          if (x != &t.w && y != &h.w) continue;   // two reads do not conflict
          late = x, early = y, late_writes = x == &t.w, early_writes = y == &h.w;
        }
      }
      if (!late) continue;
      std::ostringstream m;
      m << "__shared__ " << b.name << " of a __device__ helper is not safe to call again in the block: "
        << thread_name(late->thread) << (late_writes ? " writes" : " reads") << " byte " << i << " at "
        << site(late->pc) << " after the helper's last __syncthreads and " << thread_name(early->thread)
        << (early_writes ? " writes" : " reads") << " it at " << site(early->pc)
        << " before its first, so a second call would race with the first (end the helper with a "
           "__syncthreads, or start it with one)";
      fail(m.str());
      return;
    }
  }
}

// ---- global memory ----
I2I_NO_TSAN bool covers(const Release& r, const Write& w) {
  return r.block == w.block && ((r.thread == w.thread && w.time < r.time) || w.epoch < r.epoch);
}

I2I_NO_TSAN bool acquired(const Acquired& acq, const Write& w) {
  for (const auto& [addr, n] : acq) {
    const std::vector<Release>& rel = t_st->releases[addr];
    for (size_t i = 0; i < n; ++i)
      if (covers(rel[i], w)) return true;
  }
  return false;
}

// The access of thread t at pc meets w, another block's write: ordered, or an error.
I2I_NO_TSAN void global_meet(const Write& w, int32_t t, bool write, uintptr_t pc) {
  if (acquired(t_st->block_acquired, w) || acquired(t_st->threads[t].acquired, w)) return;
  bool released = false;
  for (const auto& [addr, rel] : t_st->releases)
    for (const Release& r : rel) released |= covers(r, w);
  std::ostringstream m;
  m << "global memory written by another block of this launch: " << thread_name(t)
    << (write ? " overwrites" : " reads") << " at " << site(pc) << " what " << block_name(w.block) << " "
    << thread_name(w.thread) << " wrote at " << site(w.pc) << ", with no release/acquire between them: "
    << (released ? "the writer released it (__threadfence() after the write, then an atomic), but this thread did "
                   "not acquire it (an atomic on the same address, then __threadfence(), in this thread or "
                   "before a __syncthreads)"
                 : "the writer did not release it (no __threadfence() between the write and an atomic)");
  fail(m.str());
}

// Memory freed while work was still queued (streams.cpp): poisoned in its stream's order, kept
// until the queues are empty, so the caching allocator of a GPU could have handed it out again.
I2I_NO_TSAN void freed_access(bool write, int32_t t, uintptr_t pc) {
  std::ostringstream m;
  m << "use after free: " << thread_name(t) << (write ? " writes" : " reads") << " at " << site(pc)
    << " memory freed while this work was queued (its stream's later work may reuse it: synchronize the stream "
       "that uses it, or record_stream, before the free)";
  fail(m.str());
}

// ---- uninitialized locals: the value a thread stores to global memory ----
I2I_NO_TSAN bool from_uninitialized(const unsigned char* p, uint32_t size) {
  if (size == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v == kStackPoison16 || v == kPattern16;
  }
  if (size == 4) {
    uint32_t v;
    float f;
    std::memcpy(&v, p, 4), std::memcpy(&f, p, 4);
    return v == kStackPoison32 || v == kPattern32 || (std::isfinite(f) && std::fabs(f) >= kPatternDerived32);
  }
  if (size == 8) {
    uint64_t v;
    double d;
    std::memcpy(&v, p, 8), std::memcpy(&d, p, 8);
    // (a float pair with an inf or NaN in its upper half is a huge double too: not one of ours)
    const bool upper_float_special = (v >> 55 & 0xFF) == 0xFF;
    return v == kStackPoisonWord || v == uint64_t(kPattern32) * 0x100000001ull
           || (std::isfinite(d) && std::fabs(d) >= kPatternDerived64 && !upper_float_special);
  }
  if (size == 16) {   // a vector of floats or halves: the exact payloads only
    for (int k = 0; k < 4; ++k) {
      uint32_t v;
      std::memcpy(&v, p + 4 * k, 4);
      if (v == kStackPoison32 || v == kPattern32) return true;
    }
  }
  return false;
}

I2I_NO_TSAN void check_stored(State& s) {
  const Store st = s.pending;
  s.pending.size = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(st.addr);
  if (st.size == 0 || !from_uninitialized(p, st.size)) return;
  std::ostringstream m;
  m << "uninitialized local: " << thread_name(st.thread) << " stores at " << site(st.pc)
    << " a value computed from a local read before it was written (stored bytes 0x" << std::hex;
  for (uint32_t i = st.size; i-- > 0;) m << (p[i] < 16 ? "0" : "") << int(p[i]);
  m << std::dec;
  if (st.size == 4) {
    float f;
    std::memcpy(&f, p, 4);
    m << ", " << f << " as fp32";
  }
  bool stack = false;   // the stack poison's payload in some 2-byte lane; else the pattern's
  for (uint32_t i = 0; i + 2 <= st.size; i += 2) {
    uint16_t v;
    std::memcpy(&v, p + i, 2);
    stack |= v == kStackPoison16;
  }
  m << ": " << (stack ? "the fiber-stack poison 0x7FFF" : "gcc's -ftrivial-auto-var-init pattern 0xFE")
    << "); on a GPU it is whatever that register or local memory held";
  fail(m.str());
}

// ---- graph replays: state the previous replay left ----
I2I_NO_TSAN void replay_access(State& s, uintptr_t a, uint32_t size, bool write, int32_t t, uintptr_t pc,
                               bool atomic) {
  GraphShadow& gs = *s.replaying;
  for (uint64_t g = a / kGranule; g <= (a + size - 1) / kGranule; ++g) {
    if (write) {
      gs.cur[g] = {pc, s.kernel_name, 0};
      continue;
    }
    if (gs.cur.count(g)) continue;
    auto it = gs.prev.find(g);
    if (it == gs.prev.end()) continue;
    uint32_t now;
    std::memcpy(&now, reinterpret_cast<const void*>(g * kGranule), sizeof(now));
    if (now != it->second.value) continue;   // written since (new inputs copied in, a host step)
    const LastWrite& w = it->second;
    std::ostringstream m;
    m << "graph replay depends on state its previous replay left: " << thread_name(t)
      << (atomic ? " reads (atomically) at " : " reads at ") << site(pc)
      << " global memory that nothing in this replay wrote first, as the previous replay left it (last written by ";
    if (w.pc) m << "kernel " << w.what << " at " << site(w.pc);
    else m << w.what;
    m << "): a reset done outside the captured work, such as a host store at capture time, is not repeated by "
         "a replay; put it on the stream, e.g. cudaMemsetAsync";
    fail(m.str());
    return;
  }
}

I2I_NO_TSAN void global_access(uintptr_t a, uint32_t size, bool write, int32_t t, uintptr_t pc) {
  State& s = *t_st;
  if (s.pending.size) {
    check_stored(s);
    if (s.failed) return;
  }
  if (write) s.pending = {a, size, t, pc};
  if (s.replaying) {
    replay_access(s, a, size, write, t, pc, false);
    if (s.failed) return;
  }
  const uint64_t g0 = a / kGranule, g1 = (a + size - 1) / kGranule;
  if (!write) {   // most reads: nothing written in their page, or not in their granules
    bool hit = false;
    for (uint64_t g = g0; g <= g1 && !hit; ++g) {
      const uint64_t page = g / kPageGranules;
      if (page != s.cached_page) {
        auto it = s.pages.find(page);
        s.cached_page = page, s.cached_bits = it == s.pages.end() ? nullptr : &it->second;
      }
      hit = s.cached_bits && (s.cached_bits->bits[g % kPageGranules / 64] >> (g % 64) & 1);
    }
    if (!hit) return;
  } else {
    for (uint64_t g = g0; g <= g1; ++g) {
      PageBits& p = s.pages[g / kPageGranules];   // node-based: cached_bits stays valid
      p.bits[g % kPageGranules / 64] |= uint64_t(1) << (g % 64);
      if (g / kPageGranules == s.cached_page) s.cached_bits = &p;
    }
  }
  const uint64_t time = ++s.now;
  for (uint64_t g = g0; g <= g1; ++g) {
    const uint64_t lo = std::max<uint64_t>(a, g * kGranule), hi = std::min<uint64_t>(a + size, (g + 1) * kGranule);
    const uint8_t mask = uint8_t(((1u << (hi - lo)) - 1) << (lo - g * kGranule));
    if (!write) {
      auto it = s.written.find(g);
      if (it == s.written.end()) continue;
      for (const Write& w : it->second.w)
        if (w.block != kNone && w.block != s.block && (w.mask & mask)) return global_meet(w, t, false, pc);
      continue;
    }
    Granule& gr = s.written[g];
    Write* mine = nullptr;
    for (Write& w : gr.w) {
      if (w.block == kNone || !(w.mask & mask)) continue;
      if (w.block != s.block) global_meet(w, t, true, pc);
      w.mask &= uint8_t(~mask);   // those bytes are this write's now
      if (w.mask == 0) w.block = kNone;
    }
    for (Write& w : gr.w)
      if (w.block == s.block && w.thread == t) mine = &w;
    for (Write& w : gr.w)
      if (!mine && w.block == kNone) mine = &w;
    if (!mine) mine = &gr.w[0];   // more writers than slots: the oldest is forgotten
    mine->mask = uint8_t((mine->block == s.block && mine->thread == t ? mine->mask : 0) | mask);
    mine->block = s.block, mine->thread = t, mine->epoch = s.epoch, mine->time = time, mine->pc = pc;
  }
}

}  // namespace

I2I_NO_TSAN bool enabled() { return on(); }
I2I_NO_TSAN void set_enabled(bool enable) { __atomic_store_n(&g_enabled, enable, __ATOMIC_RELAXED); }

I2I_NO_TSAN void launch_begin(const char* kernel) {
  Busy busy(false);
  if (!enabled()) {
    if (t_st) t_st->in_launch = false;
    return;
  }
  if (!t_st) t_st = new State;
  State& s = *t_st;
  s.in_launch = true;
  s.kernel = kernel;
  s.kernel_name = kernel;
  s.pending.size = 0;
  s.error.clear();
  s.bufs.clear();
  s.written.clear();
  s.pages.clear();
  s.cached_page = UINT64_MAX, s.cached_bits = nullptr;
  s.releases.clear();
  s.now = 0;
}

I2I_NO_TSAN void block_begin(int nthreads) {
  if (!t_st || !t_st->in_launch) return;
  Busy busy(false);
  State& s = *t_st;
  ++s.serial;
  s.block = int32_t(blockIdx.x + gridDim.x * (blockIdx.y + int64_t(gridDim.y) * blockIdx.z));
  s.epoch = 0;
  s.threads.assign(size_t(nthreads), ThreadState{});
  s.block_acquired.clear();
  s.pending.size = 0;
  for (Buffer& b : s.bufs) {
    b.recs.clear();
    b.calls.assign(b.helper ? size_t(nthreads) : 0, {});
  }
}

I2I_NO_TSAN std::string block_end() {
  if (!t_st || !t_st->in_launch) return "";
  Busy busy(false);
  if (t_st->error.empty()) check_stored(*t_st);
  for (Buffer& b : t_st->bufs)
    if (b.helper && t_st->error.empty()) check_reuse(b);
  std::string e;
  e.swap(t_st->error);
  t_st->failed = false;
  return e;
}

I2I_NO_TSAN void scope_enter(void* ptr, size_t size, const char* name, bool helper) {
  if (!t_st || !t_st->in_launch || t_busy) return;
  const int fiber = running().fiber;
  if (fiber < 0) return;
  Busy busy(true);
  Buffer* b = buffer_of(uintptr_t(ptr));
  if (!b) {
    t_st->bufs.push_back({});
    b = &t_st->bufs.back();
    b->lo = uintptr_t(ptr), b->size = size, b->name = name, b->helper = helper;
    b->shadow.resize(size);
    if (helper) b->calls.assign(t_st->threads.size(), {});
  }
  if (b->helper) b->calls[fiber].push_back({t_st->epoch, kOpen});
}

I2I_NO_TSAN void scope_exit(void* ptr) {
  if (!t_st || !t_st->in_launch || t_busy) return;
  const int fiber = running().fiber;
  if (fiber < 0) return;
  Busy busy(true);
  Buffer* b = buffer_of(uintptr_t(ptr));
  if (b && b->helper && !b->calls[fiber].empty()) b->calls[fiber].back().out = t_st->epoch;
}

namespace {

I2I_NO_TSAN void check_access(Hot& h, uintptr_t a, uint32_t size, bool write, uintptr_t pc) {
  if (!h.st || !h.st->in_launch || h.busy || h.st->failed || size == 0) return;
  const Running r = running();
  if (r.fiber < 0 || a - uintptr_t(r.stack_lo) < r.stack_size) return;   // registers and locals
  Busy busy(false);
  if (Buffer* b = buffer_of(a)) shared_access(*b, a, size, write, r.fiber, pc);
  else if (freed_memory(a)) freed_access(write, r.fiber, pc);
  else if (!(write && runtime_memory(a))) global_access(a, size, write, r.fiber, pc);   // the scheduler's state
}

I2I_NO_TSAN void check_atomic(uintptr_t a, uint32_t size, bool read, bool write, uintptr_t pc) {
  if (!t_st || !t_st->in_launch || t_busy) return;
  const Running r = running();
  if (r.fiber < 0 || a - uintptr_t(r.stack_lo) < r.stack_size) return;
  Busy busy(false);
  State& s = *t_st;
  if (buffer_of(a)) return;   // shared atomics do not race with each other
  if (s.replaying) {
    if (read) replay_access(s, a, size, false, r.fiber, pc, true);
    if (write) replay_access(s, a, size, true, r.fiber, pc, true);
  }
  ThreadState& th = s.threads[r.fiber];
  std::vector<Release>& rel = s.releases[a];
  th.pending.push_back({a, rel.size()});   // it reads the value every earlier atomic left
  if (th.fence_time) rel.push_back({s.block, r.fiber, th.fence_epoch, th.fence_time});
  ++s.now;
}

I2I_NO_TSAN void check_fence() {
  if (!t_st || !t_st->in_launch || t_busy) return;
  const Running r = running();
  if (r.fiber < 0) return;
  Busy busy(false);
  ThreadState& th = t_st->threads[r.fiber];
  th.fence_epoch = t_st->epoch, th.fence_time = ++t_st->now;
  for (const auto& [addr, n] : th.pending) th.acquired[addr] = std::max(th.acquired[addr], n);
  th.pending.clear();
}

}  // namespace

I2I_NO_TSAN void barrier_arrive(int fiber, const char* file, int line) {
  if (!t_st || !t_st->in_launch || fiber < 0) return;
  Busy busy(false);
  ThreadState& th = t_st->threads[fiber];
  th.barrier_file = file, th.barrier_line = line;
}

I2I_NO_TSAN std::string barrier_release(int nthreads) {
  if (!t_st || !t_st->in_launch) return "";
  Busy busy(false);
  State& s = *t_st;
  int first = kNone, exited = kNone;
  std::string err;
  for (int i = 0; i < nthreads && err.empty(); ++i) {
    const ThreadState& th = s.threads[i];
    if (!th.barrier_file) {
      if (exited == kNone) exited = i;
      continue;
    }
    if (first == kNone) {
      first = i;
      continue;
    }
    const ThreadState& f = s.threads[first];
    if (th.barrier_line != f.barrier_line || std::string(th.barrier_file) != f.barrier_file) {
      std::ostringstream m;
      m << "threads wait at different __syncthreads: " << thread_name(first) << " at " << short_path(f.barrier_file)
        << ":" << f.barrier_line << ", " << thread_name(i) << " at " << short_path(th.barrier_file) << ":"
        << th.barrier_line << " (undefined on a GPU: every thread of the block must reach the same barrier)";
      err = m.str();
    }
  }
  if (err.empty() && exited != kNone && first != kNone) {
    const ThreadState& f = s.threads[first];
    std::ostringstream m;
    m << thread_name(exited) << " exited while the other threads wait at the __syncthreads at "
      << short_path(f.barrier_file) << ":" << f.barrier_line
      << " (undefined on a GPU: every thread of the block must reach each barrier)";
    err = m.str();
  }
  for (ThreadState& th : s.threads) {   // what a thread acquired before the barrier, all have after it
    for (const auto& [addr, n] : th.acquired) s.block_acquired[addr] = std::max(s.block_acquired[addr], n);
    th.acquired.clear();
    th.barrier_file = nullptr;
  }
  ++s.epoch;
  return err;
}

// ---- the hooks' entry points (hooks.cpp) ----
// With the checks off and no tracer, a hook returns before its TLS read (a call here).
constexpr bool kTraced = I2I_EMU_TRACE;

I2I_NO_TSAN void access(uintptr_t a, uint32_t size, bool write, uintptr_t pc) {
  if (!kTraced && !on()) return;
  Hot& h = t_hot;
  if (h.in_hook) return;
  h.in_hook = true;
  check_access(h, a, size, write, pc);
#if I2I_EMU_TRACE
  trace::record(a, size, write, pc);
#endif
  h.in_hook = false;
}

I2I_NO_TSAN void atomic(uintptr_t a, uint32_t size, bool read, bool write, uintptr_t pc) {
  if (!kTraced && !on()) return;
  Hot& h = t_hot;
  if (h.in_hook) return;
  h.in_hook = true;
  check_atomic(a, size, read, write, pc);
#if I2I_EMU_TRACE
  if (read) trace::record(a, size, false, pc);
  if (write) trace::record(a, size, true, pc);
#endif
  h.in_hook = false;
}

I2I_NO_TSAN void fence() {
  if (!on()) return;
  Hot& h = t_hot;
  if (h.in_hook) return;
  h.in_hook = true;
  check_fence();
  h.in_hook = false;
}

// ---- graph replays (streams.cpp) ----
namespace {
std::map<int, GraphShadow>& graph_shadows() {   // per graph id; replays run on the calling thread
  static auto* m = new std::map<int, GraphShadow>;
  return *m;
}
}  // namespace

I2I_NO_TSAN void replay_begin(int id) {
  if (!on()) return;
  Busy busy(false);
  if (!t_st) t_st = new State;
  t_st->replaying = &graph_shadows()[id];
  t_st->replaying->cur.clear();
}

I2I_NO_TSAN void replay_end() {
  if (!t_st || !t_st->replaying) return;
  Busy busy(false);
  GraphShadow& gs = *t_st->replaying;
  for (auto& [g, w] : gs.cur) std::memcpy(&w.value, reinterpret_cast<const void*>(g * kGranule), sizeof(w.value));
  gs.prev.swap(gs.cur);
  gs.cur.clear();
  t_st->replaying = nullptr;
}

I2I_NO_TSAN void replay_wrote(const void* p, size_t n, const char* what) {
  if (!t_st || !t_st->replaying || n == 0) return;
  Busy busy(false);
  const uintptr_t a = uintptr_t(p);
  for (uint64_t g = a / kGranule; g <= (a + n - 1) / kGranule; ++g) t_st->replaying->cur[g] = {0, what, 0};
}

I2I_NO_TSAN void graph_forget(int id) {
  Busy busy(false);
  graph_shadows().erase(id);
}

}  // namespace i2i_emu::check
