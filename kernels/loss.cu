// CUDA kernels of i2i_fast::loss_fwd / loss_bwd (math and term table in csrc/loss.h).
//
// The term table (up to kMaxTerms pointers, sizes, scales) is passed BY VALUE as a kernel
// argument, so one launch covers every term of a call (multi-scale D outputs, CAM logits,
// several L1 pairs). Every chunk of kChunk elements is reduced by one block in a fixed
// shuffle tree; its scaled partial goes into a fixed slot. Small calls (total <= kOneBlock
// elements, the batch-1 PatchGAN case) run as ONE block that walks the chunks in order and
// adds the partials in a register: no workspace. Larger calls use one block per chunk, and
// the block that finishes last (told by a ticket counter) adds all partials in chunk order:
// still one launch. The only atomic is that ticket; the values are never added atomically,
// so the loss is bitwise the same whichever block comes last. The ticket lives in the call's
// own workspace, zeroed on the stream before the launch, so concurrent streams, CUDA graph
// replays and eager calls never share one.
// __grid_constant__: the table is indexed by term in place (no per-thread copy of the table).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../csrc/loss.h"
#include "device.cuh"

namespace i2i {
namespace {

constexpr int kLossThreads = 512;
constexpr int64_t kChunk = 4096;      // elements per block-chunk
constexpr int64_t kOneBlock = 16384;  // at most this many elements in total: one block
constexpr int kMaxTerms = 24;         // terms per launch (table of 24 * 72 B by value)

template <class Term>
struct Table {
  Term t[kMaxTerms];
  int n;
};

// Fixed-order block sum (shuffle tree within warps, then warp 0 over the warp sums); the
// result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kLossThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // warp_sums may still be read by the previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < int(blockDim.x / 32) ? warp_sums[lane] : acc_t(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

template <class Term>
__device__ __forceinline__ int term_of(const Table<Term>& tab, int64_t c) {
  int t = 0;
  while (t + 1 < tab.n && tab.t[t + 1].c0 <= c) ++t;
  return t;
}

// Adds partial[0..n) in chunk order (each thread a fixed strided subset, then the fixed tree)
// and writes the loss from thread 0. __ldcg: the partials come from other blocks (skip L1).
template <typename T, typename acc_t>
__device__ void sum_partials(const acc_t* partial, int64_t n, T* loss) {
  acc_t s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += __ldcg(partial + i);
  s = block_sum(s);
  if (threadIdx.x == 0) *loss = static_cast<T>(s);
}

// Block b reduces chunks b, b + gridDim.x, ... (c0 of the table is relative to this launch).
// one_block: a single block adds the partials in order and writes the loss. Otherwise each
// chunk's partial goes to partial[c]; with a ticket, the last block to finish adds
// all_partial[0..nall) (every group's, earlier groups ran before on the same stream).
template <typename T, typename acc_t, int KIND>
__global__ void __launch_bounds__(kLossThreads)
    loss_fwd_kernel(const __grid_constant__ Table<LossTerm> tab, int64_t nchunks, acc_t* partial, T* loss,
                    bool need_grad, bool none, bool one_block, unsigned* ticket, const acc_t* all_partial,
                    int64_t nall) {
  acc_t run = 0;
  for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const LossTerm& e = tab.t[term_of(tab, c)];
    const T* x = static_cast<const T*>(e.x);
    const T* y = static_cast<const T*>(e.y);
    T* g = static_cast<T*>(e.g);
    T* o = static_cast<T*>(e.out);
    const acc_t a = acc_t(e.a), scale = acc_t(e.scale), w = acc_t(e.w);
    const int64_t i0 = (c - e.c0) * kChunk, i1 = min(e.n, i0 + kChunk);
    acc_t s = 0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
      acc_t v, d;
      loss_elem<KIND, acc_t>(static_cast<acc_t>(x[i]), y ? static_cast<acc_t>(y[i]) : acc_t(0), a, v, d);
      s += v;
      if (need_grad) g[i] = static_cast<T>(d * scale);
      if (none) o[i] = static_cast<T>(v * w);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) {
      if (one_block) run += s * scale;
      else if (!none) partial[c] = s * scale;
    }
  }
  if (one_block) {
    if (threadIdx.x == 0 && loss != nullptr) *loss = static_cast<T>(run);
    return;
  }
  if (ticket == nullptr) return;  // reduction none, or not the last group of a long list
  __shared__ bool last;
  if (threadIdx.x == 0) {
    // Both fences are needed. Release: thread 0 wrote this block's partials; they are visible
    // device-wide before its ticket. Acquire: by the thread that saw the last ticket, between
    // that atomic and its reads (a fence in the other threads, after the barrier, would not
    // follow the atomic in their own order); the barrier then orders every thread's reads after it.
    __threadfence();
    const bool is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    if (is_last) __threadfence();
    last = is_last;
  }
  __syncthreads();
  if (!last) return;
  sum_partials(all_partial, nall, loss);
}

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kLossThreads)
    loss_bwd_kernel(const __grid_constant__ Table<ScaleTerm> tab, int64_t nchunks, bool per_elem) {
  const int64_t c = blockIdx.x;
  if (c >= nchunks) return;
  const ScaleTerm& e = tab.t[term_of(tab, c)];
  const T* s = static_cast<const T*>(e.s);
  const T* go = static_cast<const T*>(e.go);
  T* out = static_cast<T*>(e.out);
  const acc_t sg = acc_t(e.sign);
  const acc_t k = per_elem ? acc_t(1) : static_cast<acc_t>(go[0]);
  const int64_t i0 = (c - e.c0) * kChunk, i1 = min(e.n, i0 + kChunk);
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const acc_t gi = per_elem ? static_cast<acc_t>(go[i]) : k;
    out[i] = static_cast<T>(sg * static_cast<acc_t>(s[i]) * gi);
  }
}

// Splits `terms` into launches of at most kMaxTerms; the chunk offsets of each group are made
// relative to the group. f(table, first_chunk, nchunks_in_group).
template <class Term, class F>
void for_groups(const std::vector<Term>& terms, int64_t nchunks, F&& f) {
  for (size_t t0 = 0; t0 < terms.size(); t0 += kMaxTerms) {
    const size_t t1 = std::min(terms.size(), t0 + kMaxTerms);
    Table<Term> tab{};
    tab.n = int(t1 - t0);
    const int64_t base = terms[t0].c0;
    for (size_t t = t0; t < t1; ++t) {
      tab.t[t - t0] = terms[t];
      tab.t[t - t0].c0 -= base;
    }
    const int64_t end = t1 < terms.size() ? terms[t1].c0 : nchunks;
    f(tab, base, end - base);
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> loss_fwd_cuda(at::TensorList x, at::TensorList y,
                                                                           at::ArrayRef<double> params,
                                                                           at::ArrayRef<double> weights, int64_t kind,
                                                                           int64_t reduction, bool need_grad) {
  TORCH_CHECK(!x.empty(), "i2i_fast loss_fwd: x must hold at least one tensor");
  const auto guard = gpu::device_guard(x[0], "loss_fwd");
  LossIO io = prep_loss(x, y, params, weights, kind, reduction, need_grad, kChunk);
  const bool none = reduction == kReduceNone;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.dtype, "i2i_fast_loss_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* loss = none ? nullptr : io.loss.data_ptr<scalar_t>();
    const bool one_block = io.total <= kOneBlock && io.terms.size() <= size_t(kMaxTerms);
    const bool partials = !one_block && !none;
    at::Tensor part;  // the chunks' partials, then the ticket (acc_t slots are >= 4 B and aligned)
    if (partials) part = at::empty({io.nchunks + 1}, io.x[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* partial = partials ? part.data_ptr<acc_t>() : nullptr;
    unsigned* ticket = partials ? reinterpret_cast<unsigned*>(partial + io.nchunks) : nullptr;
    if (ticket) C10_CUDA_CHECK(cudaMemsetAsync(ticket, 0, sizeof(unsigned), stream));
    with_loss_kind(kind, [&](auto K) {
      for_groups(io.terms, io.nchunks, [&](const Table<LossTerm>& tab, int64_t base, int64_t n) {
        const unsigned grid = one_block ? 1u : gpu::grid_dim(n, "loss_fwd");
        const bool last_group = base + n == io.nchunks;
        // clang-format off: the CPU emulation (tests/cuda_emu) finds a launch by its kernel name next to the chevrons
        loss_fwd_kernel<scalar_t, acc_t, decltype(K)::value><<<grid, kLossThreads, 0, stream>>>(
            tab, n, partials ? partial + base : nullptr, loss, need_grad, none, one_block,
            last_group ? ticket : nullptr, partial, io.nchunks);
        // clang-format on
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return finish_loss(io);
}

std::vector<at::Tensor> loss_bwd_cuda(at::TensorList grad_outs, at::TensorList saved, at::IntArrayRef index,
                                      at::ArrayRef<double> sign) {
  TORCH_CHECK(!saved.empty(), "i2i_fast loss_bwd: saved must hold at least one tensor");
  const auto guard = gpu::device_guard(saved[0], "loss_bwd");
  ScaleIO io = prep_scale(grad_outs, saved, index, sign, kChunk);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (io.nchunks == 0) return io.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.dtype, "i2i_fast_loss_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for_groups(io.terms, io.nchunks, [&](const Table<ScaleTerm>& tab, int64_t, int64_t n) {
      if (n == 0) return;
      loss_bwd_kernel<scalar_t, acc_t><<<gpu::grid_dim(n, "loss_bwd"), kLossThreads, 0, stream>>>(tab, n, io.per_elem);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return io.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m) {
  m.impl("loss_fwd", &loss_fwd_cuda);
  m.impl("loss_bwd", &loss_bwd_cuda);
}

}  // namespace i2i
