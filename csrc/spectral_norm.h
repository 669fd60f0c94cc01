// Spectral normalization's weight (torch.nn.utils.spectral_norm, U-GAT-IT's discriminators):
//   sigma = u . (W v),  out = W / sigma                         (spectral_norm_scale)
//   dW = g / sigma - (sum(g * W) / sigma^2) u v^T              (spectral_norm_scale_bwd)
// W is the (O, K) weight matrix, u (O,) and v (K,) the power-iteration vectors (constants for
// autograd, as in torch). Both passes are a per-row fp64 reduction, a fixed-order sum of the O
// row partials (deterministic, no atomics), then one elementwise pass: two passes over W
// forward and backward, where torch's autograd takes about eight.
#pragma once
#include <ATen/ATen.h>

namespace i2i {

struct SnIO {
  at::Tensor w, u, v, g, sigma;
  int64_t O, K;
};

// Checks (names the argument) and contiguous inputs; g: the gradient (backward) or undefined.
inline SnIO prep_sn(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v, const at::Tensor& g = at::Tensor(),
                    const at::Tensor& sigma = at::Tensor()) {
  TORCH_CHECK(w.dim() == 2, "i2i_fast spectral_norm_scale: weight must be the 2-D (O, K) weight matrix, got ",
              w.sizes());
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), "i2i_fast spectral_norm_scale: weight must be floating point, got ",
              w.scalar_type());
  SnIO io;
  io.O = w.size(0), io.K = w.size(1);
  TORCH_CHECK(u.dim() == 1 && u.numel() == io.O, "i2i_fast spectral_norm_scale: u must have O = ", io.O,
              " elements, got ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.numel() == io.K, "i2i_fast spectral_norm_scale: v must have K = ", io.K,
              " elements, got ", v.sizes());
  for (const at::Tensor* t : {&u, &v, &g, &sigma})
    TORCH_CHECK(!t->defined() || t->device() == w.device(), "i2i_fast spectral_norm_scale: all tensors must be on ",
                w.device());
  TORCH_CHECK(u.scalar_type() == w.scalar_type() && v.scalar_type() == w.scalar_type(),
              "i2i_fast spectral_norm_scale: u and v must have the weight's dtype ", w.scalar_type());
  io.w = w.contiguous(), io.u = u.contiguous(), io.v = v.contiguous();
  if (g.defined()) {
    TORCH_CHECK(g.sizes() == w.sizes(), "i2i_fast spectral_norm_scale_bwd: grad must have the weight's shape");
    TORCH_CHECK(sigma.defined() && sigma.numel() == 1, "i2i_fast spectral_norm_scale_bwd: sigma must have one element");
    io.g = g.to(w.scalar_type()).contiguous();
    io.sigma = sigma.to(at::kDouble);
  }
  return io;
}

// sigma's dtype: fp64 for fp64 weights, else fp32 (the statistics dtype of the other ops).
inline at::ScalarType sn_sigma_dtype(const at::Tensor& w) {
  return w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace i2i
