// The CUDA emulation's memory tracer (traced variant only; see trace.h). A MODEL of how the
// kernels would use a GPU's memory, from the accesses the emulated threads make:
//   - each access is classified: __shared__ (the block's statics), local (the fiber's stack:
//     registers or local memory on a GPU; not counted), parameters and builtins (the launching
//     thread's stack and threadIdx & co.; not counted), else global;
//   - warp requests: the accesses of the lanes of one warp at the same site (call address) and
//     the same per-lane occurrence form one request, as one instruction of a warp does; per
//     request, 32-byte sectors touched (global) or shared-memory wavefronts (32 banks of 4 bytes);
//   - compulsory traffic: the distinct sectors a launch reads and writes;
//   - estimated DRAM traffic: the global sectors of the launches of one trace, in order, through
//     an LRU L2 of set_l2_bytes() (an H200's 50 MB by default) at sector granularity. Blocks run
//     in waves of (SM count x resident blocks per SM); within a wave each sector counts once (the
//     blocks of a wave run at the same time); a miss whose first access is a read costs a DRAM
//     read; a dirty sector costs a DRAM write when it is evicted or when the trace ends.
// Everything is aggregated in C++ per launch and site; no trace is kept.
#include <dlfcn.h>
#include <pthread.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "trace.h"

namespace i2i_emu::trace {
namespace {

constexpr uint64_t kSector = 32;
constexpr int kBanks = 32, kBankBytes = 4, kWarp = 32;
constexpr uint64_t kWavefrontBytes = 128;   // a shared-memory wavefront serves 32 banks x 4 bytes
constexpr int kMaxThreadsPerSm = 2048, kMaxBlocksPerSm = 32;
enum Space : int { kGlobal = 0, kShared = 1 };

struct SiteStats {
  uint64_t requests = 0, bytes = 0, sectors = 0, wavefronts = 0, ideal_wavefronts = 0;
};

struct Launch {
  std::string name;
  unsigned blocks = 0, threads = 0;
  std::unordered_map<uint64_t, SiteStats> sites;   // key: site id << 2 | space << 1 | write
  std::unordered_set<uint64_t> read, written;      // distinct global sectors
  uint64_t dram_read = 0, dram_write = 0;          // sectors, from the L2 model
};

struct Access { uintptr_t addr; uint32_t size; };

struct Line { bool dirty; size_t writer; };        // an L2 sector: dirty, last launch writing it

struct State {
  size_t l2_sectors = 0;
  std::vector<Launch> launches;
  std::vector<uintptr_t> site_pc;                  // site id -> call address
  std::unordered_map<uintptr_t, uint32_t> site_id;
  // the running launch
  bool in_launch = false;
  unsigned wave_blocks = 1, blocks_in_wave = 0;
  std::unordered_map<uint64_t, uint32_t> occurrence;              // fiber << 32 | site -> count
  std::unordered_map<uint64_t, std::vector<Access>> requests;     // (warp, site, occ, space, write)
  std::vector<uint64_t> wave;                                     // sector << 1 | write, in order
  // the L2 model: most recent first
  std::list<uint64_t> lru;
  std::unordered_map<uint64_t, std::pair<std::list<uint64_t>::iterator, Line>> l2;
  const char* host_stack_lo = nullptr;
  size_t host_stack_size = 0;
};
// Trivially initialized thread_locals: a non-trivial one gets a TLS init function, which is
// instrumented and would call back into record() before the guard below is set.
thread_local State* t_state = nullptr;   // while a trace runs on this thread
thread_local bool t_busy = false;        // the tracer's (and runtime's) own accesses are instrumented too
#define T (*t_state)

uint32_t site_of(uintptr_t pc) {
  auto it = T.site_id.find(pc);
  if (it != T.site_id.end()) return it->second;
  T.site_pc.push_back(pc);
  return T.site_id[pc] = uint32_t(T.site_pc.size() - 1);
}

bool within(uintptr_t a, const void* lo, size_t size) {
  return a >= uintptr_t(lo) && a < uintptr_t(lo) + size;
}

// -1: not counted (local, parameter, builtin); else the space.
int classify(uintptr_t a, const Running& r) {
  for (size_t i = 0, n = shared_count(); i < n; ++i) {
    const void* p;
    size_t s;
    shared_range(i, &p, &s);
    if (within(a, p, s)) return kShared;
  }
  if (within(a, r.stack_lo, r.stack_size) || within(a, T.host_stack_lo, T.host_stack_size) || runtime_memory(a))
    return -1;
  if (within(a, &::threadIdx, sizeof(uint3)) || within(a, &::blockIdx, sizeof(uint3))
      || within(a, &::blockDim, sizeof(dim3)) || within(a, &::gridDim, sizeof(dim3)))
    return -1;
  return kGlobal;
}

}  // namespace

// Not instrumented (it reads the guard); everything it calls runs with the guard set.
__attribute__((no_sanitize_thread)) void record(uintptr_t a, uint32_t size, bool write, uintptr_t pc) {
  if (t_busy || t_state == nullptr || !T.in_launch) return;
  t_busy = true;
  const Running r = running();
  if (r.fiber < 0) {
    t_busy = false;
    return;
  }
  const int space = classify(a, r);
  if (space >= 0) {
    const uint64_t site = site_of(pc);
    const uint32_t occ = T.occurrence[uint64_t(r.fiber) << 32 | site]++;
    // request key: warp, site, occurrence, space and direction (28 + 20 + 14 + 2 bits)
    const uint64_t key = uint64_t(r.fiber / kWarp) << 36 | site << 16 | uint64_t(occ & 0x3FFF) << 2
                         | uint64_t(space) << 1 | uint64_t(write);
    T.requests[key].push_back({a, size});
  }
  t_busy = false;
}

namespace {

void count_request(Launch& l, uint64_t key, const std::vector<Access>& acc) {
  const bool write = key & 1;
  const int space = int(key >> 1 & 1);
  const uint64_t site = key >> 16 & 0xFFFFF;
  SiteStats& s = l.sites[site << 2 | uint64_t(space) << 1 | uint64_t(write)];
  s.requests += 1;
  std::vector<uint64_t> units;   // sectors (global) or 4-byte words (shared)
  const uint64_t unit = space == kGlobal ? kSector : kBankBytes;
  for (const Access& x : acc) {
    s.bytes += x.size;
    for (uint64_t u = x.addr / unit; u <= (x.addr + x.size - 1) / unit; ++u) units.push_back(u);
  }
  std::sort(units.begin(), units.end());
  units.erase(std::unique(units.begin(), units.end()), units.end());
  if (space == kGlobal) {
    s.sectors += units.size();
    for (uint64_t u : units) {
      (write ? l.written : l.read).insert(u);
      T.wave.push_back(u << 1 | uint64_t(write));
    }
    return;
  }
  int per_bank[kBanks] = {};
  for (uint64_t w : units) ++per_bank[w % kBanks];   // distinct words in one bank serialize
  const uint64_t ideal = (units.size() * kBankBytes + kWavefrontBytes - 1) / kWavefrontBytes;
  s.wavefronts += std::max<uint64_t>(ideal, uint64_t(*std::max_element(per_bank, per_bank + kBanks)));
  s.ideal_wavefronts += ideal;
}

void evict_to(size_t capacity) {
  while (T.l2.size() > capacity) {
    auto it = T.l2.find(T.lru.back());
    if (it->second.second.dirty) ++T.launches[it->second.second.writer].dram_write;
    T.l2.erase(it);
    T.lru.pop_back();
  }
}

// The wave's distinct sectors, in first-touch order, through the L2.
void end_wave() {
  std::unordered_map<uint64_t, std::pair<bool, bool>> first;   // sector -> (first is write, any write)
  std::vector<uint64_t> order;
  for (uint64_t e : T.wave) {
    const uint64_t sector = e >> 1;
    const bool w = e & 1;
    auto [it, fresh] = first.try_emplace(sector, w, w);
    if (fresh) order.push_back(sector);
    else it->second.second |= w;
  }
  T.wave.clear();
  const size_t cur = T.launches.size() - 1;
  for (uint64_t sector : order) {
    const auto [first_write, any_write] = first[sector];
    auto it = T.l2.find(sector);
    if (it != T.l2.end()) {
      T.lru.splice(T.lru.begin(), T.lru, it->second.first);
      if (any_write) it->second.second = {true, cur};
      continue;
    }
    if (!first_write) ++T.launches[cur].dram_read;
    T.lru.push_front(sector);
    T.l2.emplace(sector, std::make_pair(T.lru.begin(), Line{any_write, cur}));
    evict_to(T.l2_sectors);
  }
  T.blocks_in_wave = 0;
}

}  // namespace

void launch_begin(const char* name, unsigned blocks, unsigned threads, int sm_count) {
  if (t_state == nullptr) return;
  t_busy = true;
  Launch l;
  l.name = name, l.blocks = blocks, l.threads = threads;
  T.launches.push_back(std::move(l));
  const unsigned per_sm = std::max(1u, std::min<unsigned>(kMaxBlocksPerSm, kMaxThreadsPerSm / std::max(1u, threads)));
  T.wave_blocks = unsigned(sm_count) * per_sm;
  T.blocks_in_wave = 0;
  pthread_attr_t attr;   // the launching thread's stack holds the kernel's parameters
  void* lo = nullptr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &lo, &T.host_stack_size);
    pthread_attr_destroy(&attr);
  }
  T.host_stack_lo = static_cast<const char*>(lo);
  T.in_launch = true;
  t_busy = false;
}

void block_end() {
  if (t_state == nullptr || !T.in_launch) return;
  t_busy = true;
  Launch& l = T.launches.back();
  for (const auto& [key, acc] : T.requests) count_request(l, key, acc);
  T.requests.clear();
  T.occurrence.clear();
  if (++T.blocks_in_wave == T.wave_blocks) end_wave();
  t_busy = false;
}

void launch_end() {
  if (t_state == nullptr || !T.in_launch) return;
  t_busy = true;
  end_wave();
  T.in_launch = false;
  t_busy = false;
}

namespace {

uint64_t l2_bytes = 50ull << 20;   // an H200's L2

void start() {
  t_busy = true;
  delete t_state;
  t_state = new State;
  T.l2_sectors = l2_bytes / kSector;
  t_busy = false;
}

// Ends the trace (dirty L2 sectors written back) and returns one dict per launch.
pybind11::list stop() {
  if (t_state == nullptr) throw std::runtime_error("trace_stop without trace_start on this thread");
  t_busy = true;
  evict_to(0);
  pybind11::list out;
  for (const Launch& l : T.launches) {
    pybind11::list sites;
    for (const auto& [key, s] : l.sites) {
      Dl_info info{};
      const uintptr_t pc = T.site_pc[key >> 2];
      dladdr(reinterpret_cast<void*>(pc), &info);
      pybind11::dict d;
      d["pc"] = pc - uintptr_t(info.dli_fbase);   // offset in the library, for addr2line
      d["space"] = (key >> 1 & 1) == kShared ? "shared" : "global";
      d["write"] = bool(key & 1);
      d["requests"] = s.requests, d["bytes"] = s.bytes, d["sectors"] = s.sectors;
      d["wavefronts"] = s.wavefronts, d["ideal_wavefronts"] = s.ideal_wavefronts;
      sites.append(d);
    }
    pybind11::dict d;
    d["kernel"] = l.name, d["blocks"] = l.blocks, d["threads"] = l.threads, d["sites"] = sites;
    d["read_sectors"] = l.read.size(), d["written_sectors"] = l.written.size();
    d["dram_read_sectors"] = l.dram_read, d["dram_written_sectors"] = l.dram_write;
    out.append(d);
  }
  delete t_state;
  t_state = nullptr;
  t_busy = false;
  return out;
}

void set_l2_bytes(uint64_t n) {
  if (n < kSector) throw std::invalid_argument("the modelled L2 must hold at least one sector");
  l2_bytes = n;
}

}  // namespace

void bind(pybind11::module_& m) {
  m.def("trace_start", &start, "start a memory trace on this thread (the L2 model starts empty)");
  m.def("trace_stop", &stop, "end it: per launch, sites, compulsory and modelled DRAM sectors");
  m.def("set_l2_bytes", &set_l2_bytes, "size of the modelled L2 (default 50 MB, an H200's)");
  m.def("trace_library", []() {
    Dl_info info{};
    dladdr(reinterpret_cast<void*>(&set_l2_bytes), &info);
    return std::string(info.dli_fname);
  });
}

}  // namespace i2i_emu::trace
#undef T
