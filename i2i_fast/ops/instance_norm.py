"""instance_norm_fwd / instance_norm_bwd: fake tensors, the create-graph backward, Triton's
autograd and the per-backend call. The C++ op's autograd is a C++ node
(csrc/instance_norm.cpp, Autograd key) that calls instance_norm_ref_grads for a create-graph
backward; the Triton op's autograd is registered here."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _backend, reference
from .common import differentiate, function, memory_format
from .reflection_pad import OPS as PAD_OPS

_TRITON = None
if _backend._triton_error is None:
    from ..triton import instance_norm as _TRITON  # registers i2i_fast::triton_instance_norm_*


def _fwd_fake(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad=0):
    n, c, h, w = x.shape
    sd = reference.stats_dtype(x)
    out = x.new_empty((n, c, h + 2 * pad, w + 2 * pad)).contiguous(memory_format=memory_format(x))
    return out, x.new_empty((n, c), dtype=sd), x.new_empty((n, c), dtype=sd)


def _bwd_fake(grad, x, mean, var, weight, bias, eps, act, slope, input_stats, pad=0):
    c = x.shape[1]
    # per-(n, c) affine (AdaIN) gets per-plane gradients, per-channel affine per-channel ones,
    # no affine empty ones
    k = next((t.numel() for t in (weight, bias) if t is not None and t.numel() != c), c)
    k = 0 if weight is None and bias is None else k
    sd = reference.stats_dtype(x)
    return torch.empty_like(x, memory_format=memory_format(x)), x.new_empty((k,), dtype=sd), x.new_empty((k,), dtype=sd)


def ref_grads(gy, x, mean, var, weight, bias, eps, act, slope, input_stats, pad):
    """The create-graph backward (double backward, e.g. WGAN-GP through a discriminator with
    InstanceNorm): the reference formula differentiated by autograd, so the result is itself
    differentiable; slower than the kernel, same math. [d x, d weight, d bias]: zeros where an
    input needs a gradient it does not get, an empty tensor where it needs none.
    i2i_fast::instance_norm_ref_grads (CompositeImplicitAutograd) for the C++ autograd node."""
    rm, rv = (None, None) if input_stats else (mean[0], var[0])
    return differentiate(
        lambda: reference.instance_norm_fwd(x, weight, bias, None, rm, rv, eps, act, slope, pad)[0],
        gy,
        (x, weight, bias),
    )


class _Cfg(NamedTuple):
    eps: float
    act: int
    slope: float
    input_stats: bool  # False: mean/var were the running statistics (eval mode)
    has_residual: bool
    pad: int
    n_inputs: int


def _setup(ctx, inputs, output):
    x, weight, bias, residual, running_mean, running_var, eps, act, slope, *pad = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var, weight, bias)
    ctx.cfg = _Cfg(eps, act, slope, running_mean is None, residual is not None, pad[0] if pad else 0, len(inputs))
    ctx.mark_non_differentiable(mean, var)


def _backward_with(bwd, backend):
    def backward(ctx, gy, _gmean, _gvar):
        x, mean, var, weight, bias = ctx.saved_tensors
        cfg = ctx.cfg
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True
            gx, gw, gb = (
                g if t is not None and t.requires_grad else None
                for g, t in zip(
                    ref_grads(gy, x, mean, var, weight, bias, cfg.eps, cfg.act, cfg.slope, cfg.input_stats, cfg.pad),
                    (x, weight, bias),
                )
            )
        else:
            gx, gw, gb = bwd(gy, x, mean, var, weight, bias, cfg.eps, cfg.act, cfg.slope, cfg.input_stats, cfg.pad)
            gw = gw.view_as(weight).to(weight.dtype) if weight is not None else None
            gb = gb.view_as(bias).to(bias.dtype) if bias is not None else None
        # the residual is added before the pad: its gradient is the pad's backward of gy
        gres = None
        if cfg.has_residual and need[3]:
            gres = PAD_OPS[backend].bwd(gy, [cfg.pad] * 4) if cfg.pad else gy
        return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None, gres) + (None,) * (
            cfg.n_inputs - 4
        )

    return backward


_FN = {}
if _backend._C is not None:  # the op itself: its autograd is C++
    torch.library.register_fake("i2i_fast::instance_norm_fwd")(_fwd_fake)
    torch.library.register_fake("i2i_fast::instance_norm_bwd")(_bwd_fake)
    torch.library.impl("i2i_fast::instance_norm_ref_grads", "CompositeImplicitAutograd")(ref_grads)
    _FN["cpu"] = _FN["cuda"] = torch.ops.i2i_fast.instance_norm_fwd.default
if _TRITON is not None:
    _triton_backward = _backward_with(_TRITON.instance_norm_bwd, "triton")
    torch.library.register_autograd("i2i_fast::triton_instance_norm_fwd", _triton_backward, setup_context=_setup)
    _FN["triton"] = function(torch.ops.i2i_fast.triton_instance_norm_fwd, _setup, _triton_backward)


def instance_norm_fwd(backend: str, *args):
    """Runs instance_norm_fwd(x, weight, bias, residual, running_mean, running_var, eps, act,
    slope, pad) -> (out, mean, var) on `backend`."""
    if backend == "reference":
        return reference.instance_norm_fwd(*args)
    if backend == "triton":
        return _FN[backend].apply(*args)
    return _FN[backend](*args)
