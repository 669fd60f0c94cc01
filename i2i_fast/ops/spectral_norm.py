"""spectral_norm_scale / spectral_norm_scale_bwd: fake tensors, Triton's autograd and the per-backend call.
spectral_norm_scale(W, u, v) -> (W / sigma, sigma), sigma = u . (W v); gradient for W only (u, v are the
power iteration's constants). The C++ op's autograd is a C++ node (csrc/spectral_norm.cpp)."""

from __future__ import annotations

import torch

from .. import _backend, reference

_TRITON = None
if _backend._triton_error is None:
    from ..triton import spectral_norm as _TRITON  # noqa: F401 (registers i2i_fast::triton_spectral_norm_scale*)


def _fwd_fake(weight, u, v):
    return torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty(
        (), dtype=reference.stats_dtype(weight)
    )


def _bwd_fake(grad, weight, u, v, sigma):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


if _backend._C is not None:
    torch.library.register_fake("i2i_fast::spectral_norm_scale")(_fwd_fake)
    torch.library.register_fake("i2i_fast::spectral_norm_scale_bwd")(_bwd_fake)


class _TritonFunction(torch.autograd.Function):
    """spectral_norm_scale on Triton (the C++ ops have a C++ autograd node)."""

    @staticmethod
    def forward(ctx, weight, u, v):
        out, sigma = torch.ops.i2i_fast.triton_spectral_norm_scale(weight, u, v)
        ctx.save_for_backward(weight, u, v, sigma)
        ctx.mark_non_differentiable(sigma)
        return out, sigma

    @staticmethod
    def backward(ctx, g, _gsigma):
        weight, u, v, sigma = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the same formula in differentiable ops, fp32+
            w, uu, vv, gg = (t if t.dtype == torch.float64 else t.float() for t in (weight, u, v, g))
            sg = torch.dot(uu, torch.mv(w, vv))
            return (gg / sg - (gg * w).sum() / (sg * sg) * torch.outer(uu, vv)).to(weight.dtype), None, None
        return torch.ops.i2i_fast.triton_spectral_norm_scale_bwd(g, weight, u, v, sigma), None, None


def spectral_norm_scale(backend: str, weight, u, v):
    """(weight / sigma, sigma) of the (O, K) weight matrix on `backend`."""
    if backend == "reference":
        return reference.spectral_norm_scale(weight, u, v)
    if backend == "triton":
        return _TritonFunction.apply(weight, u, v)
    return torch.ops.i2i_fast.spectral_norm_scale.default(weight, u, v)
