// CUDA kernels of i2i_fast::spectral_norm_scale / spectral_norm_scale_bwd (math in csrc/spectral_norm.h). Two
// launches each way: one block per row writes its fp64 partial; then one block per row sums the
// O partials with the same fixed tree (every block gets the same total: deterministic, no
// atomics) and writes its row.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../csrc/spectral_norm.h"
#include "reduce.cuh"

namespace i2i {
namespace {

using namespace gpu;

// part[o] = scale_o * sum_k a[o, k] * b(k), b(k) = b[o, k] (B_ROW) or b[k]
template <typename T, bool B_ROW>
__global__ void __launch_bounds__(kThreads)
    row_part_kernel(const T* a, const T* b, const T* scale, int64_t K, double* part) {
  const int64_t o = blockIdx.x;
  const T* ar = a + o * K;
  const T* br = B_ROW ? b + o * K : b;
  Sums<double> s;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) s.a += double(ar[k]) * double(br[k]);
  s = block_reduce<1>(s);
  if (threadIdx.x == 0) part[o] = scale ? double(scale[o]) * s.a : s.a;
}

__device__ double total_of(const double* part, int64_t O) {
  Sums<double> s;
  for (int64_t o = threadIdx.x; o < O; o += kThreads) s.a += part[o];
  return block_reduce<1>(s).a;
}

template <typename T, typename acc_t, typename S>
__global__ void __launch_bounds__(kThreads)
    scale_out_kernel(const T* w, const double* part, int64_t O, int64_t K, T* out, S* sigma) {
  const double sg = total_of(part, O);
  const int64_t o = blockIdx.x;
  if (o == 0 && threadIdx.x == 0) *sigma = S(sg);
  const acc_t s = acc_t(sg);
  for (int64_t k = threadIdx.x; k < K; k += kThreads)
    out[o * K + k] = static_cast<T>(static_cast<acc_t>(w[o * K + k]) / s);
}

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) grad_out_kernel(const T* g, const T* u, const T* v, const double* part,
                                                            const double* sigma, int64_t O, int64_t K, T* gw) {
  const double s = total_of(part, O), sg = *sigma;
  const int64_t o = blockIdx.x;
  const acc_t inv = acc_t(1 / sg), cu = acc_t(s / (sg * sg)) * static_cast<acc_t>(u[o]);
  for (int64_t k = threadIdx.x; k < K; k += kThreads)
    gw[o * K + k] = static_cast<T>(static_cast<acc_t>(g[o * K + k]) * inv - cu * static_cast<acc_t>(v[k]));
}

// sigma's type: double for double weights, else float (sn_sigma_dtype)
template <typename T>
using SigmaT = std::conditional_t<std::is_same_v<T, double>, double, float>;

std::tuple<at::Tensor, at::Tensor> spectral_norm_scale_cuda(const at::Tensor& w_in, const at::Tensor& u_in,
                                                            const at::Tensor& v_in) {
  const auto guard = device_guard(w_in, "spectral_norm_scale");
  const SnIO io = prep_sn(w_in, u_in, v_in);
  at::Tensor out = at::empty_like(io.w);
  at::Tensor sigma = at::empty({}, io.w.options().dtype(sn_sigma_dtype(io.w)));
  if (io.O == 0) return {out, sigma.zero_()};
  at::Tensor part = at::empty({io.O}, io.w.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned rows = grid_dim(io.O, "spectral_norm_scale");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.w.scalar_type(), "i2i_fast_sn_scale_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // clang-format off: the CPU emulation (tests/cuda_emu) finds a launch by its kernel name next to the chevrons
    row_part_kernel<scalar_t, false><<<rows, kThreads, 0, stream>>>(
        io.w.const_data_ptr<scalar_t>(), io.v.const_data_ptr<scalar_t>(), io.u.const_data_ptr<scalar_t>(), io.K,
        part.data_ptr<double>());
    // clang-format on
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // clang-format off: the CPU emulation (tests/cuda_emu) finds a launch by its kernel name next to the chevrons
    scale_out_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        io.w.const_data_ptr<scalar_t>(), part.const_data_ptr<double>(), io.O, io.K, out.data_ptr<scalar_t>(),
        sigma.data_ptr<SigmaT<scalar_t>>());
    // clang-format on
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, sigma};
}

at::Tensor spectral_norm_scale_bwd_cuda(const at::Tensor& grad, const at::Tensor& w_in, const at::Tensor& u_in,
                                        const at::Tensor& v_in, const at::Tensor& sigma_in) {
  const auto guard = device_guard(w_in, "spectral_norm_scale_bwd");
  const SnIO io = prep_sn(w_in, u_in, v_in, grad, sigma_in);
  at::Tensor gw = at::empty_like(io.w);
  if (io.O == 0) return gw;
  at::Tensor part = at::empty({io.O}, io.w.options().dtype(at::kDouble));
  const at::Tensor sg = io.sigma.contiguous();  // 0-d fp64 on the device: read by the kernel
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned rows = grid_dim(io.O, "spectral_norm_scale_bwd");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, io.w.scalar_type(), "i2i_fast_sn_scale_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_part_kernel<scalar_t, true><<<rows, kThreads, 0, stream>>>(
        io.g.const_data_ptr<scalar_t>(), io.w.const_data_ptr<scalar_t>(), nullptr, io.K, part.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_out_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        io.g.const_data_ptr<scalar_t>(), io.u.const_data_ptr<scalar_t>(), io.v.const_data_ptr<scalar_t>(),
        part.const_data_ptr<double>(), sg.const_data_ptr<double>(), io.O, io.K, gw.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(i2i_fast, CUDA, m) {
  m.impl("spectral_norm_scale", &spectral_norm_scale_cuda);
  m.impl("spectral_norm_scale_bwd", &spectral_norm_scale_bwd_cuda);
}

}  // namespace i2i
