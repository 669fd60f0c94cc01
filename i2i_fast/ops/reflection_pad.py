"""reflection_pad2d: fake tensors, autograd and the per-backend call. Without an activation
the forward and backward ops are each other's adjoints, so double backward (e.g. WGAN-GP
through a padded discriminator) needs no other formula. With one (out = pad(act(x)), RELU or
LEAKY_RELU), the backward op grad_x = act'(x) * pad_backward(grad) is linear in grad (its
adjoint: pad(act'(x) * gg)) and act' is piecewise constant (its derivative in x is 0, as
torch's). The C++ ops' autograd is a C++ node (csrc/reflection_pad.cpp, Autograd key);
Triton's is registered here."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import _backend, reference
from ..codes import Activation
from .common import function, memory_format

_TRITON = None
if _backend._triton_error is None:
    from ..triton import reflection_pad as _TRITON  # registers i2i_fast::triton_reflection_pad2d_*


class PadOps(NamedTuple):
    fwd: Callable  # (x, [left, right, top, bottom], act=NONE, slope=0) -> pad(act(x))
    bwd: Callable  # (grad of padded, pad, x=None, act=NONE, slope=0) -> grad of x (a gather, no atomics)


def _out_shape(x, pad):
    n, c, h, w = x.shape
    return (n, c, h + pad[2] + pad[3], w + pad[0] + pad[1])


def _fwd_fake(x, pad, act=Activation.NONE, slope=0.0):
    return x.new_empty(_out_shape(x, pad)).contiguous(memory_format=memory_format(x))


def _bwd_fake(grad, pad, x=None, act=Activation.NONE, slope=0.0):
    n, c, ho, wo = grad.shape
    return grad.new_empty((n, c, ho - pad[2] - pad[3], wo - pad[0] - pad[1])).contiguous(
        memory_format=memory_format(grad)
    )


def act_grad_mul(g, x, act, slope):
    """g * act'(x) by torch's own backward formulas (differentiable; 0 derivative in x)."""
    if act == Activation.RELU:
        return torch.ops.aten.threshold_backward(g, x, 0)
    if act == Activation.LEAKY_RELU:
        return torch.ops.aten.leaky_relu_backward(g, x, slope, False)
    return g


def _save(ctx, pad, x, act, slope):
    ctx.pad, ctx.act, ctx.slope = list(pad), int(act), float(slope)
    ctx.save_for_backward(x if ctx.act != Activation.NONE else None)


def _setup_fwd(ctx, inputs, output):  # (x, pad, act, slope)
    x, pad, act, slope = inputs
    _save(ctx, pad, x, act, slope)


def _setup_bwd(ctx, inputs, output):  # (grad, pad, x, act, slope)
    _, pad, x, act, slope = inputs
    _save(ctx, pad, x, act, slope)


def _autograd(ops: PadOps):
    """(backward of fwd, backward of bwd)."""

    def backward_fwd(ctx, gy):
        (x,) = ctx.saved_tensors
        gy = gy.contiguous(memory_format=memory_format(gy))
        return ops.bwd(gy, ctx.pad, x, ctx.act, ctx.slope), None, None, None

    def backward_bwd(ctx, ggx):
        (x,) = ctx.saved_tensors
        return ops.fwd(act_grad_mul(ggx, x, ctx.act, ctx.slope), ctx.pad), None, None, None, None

    return backward_fwd, backward_bwd


OPS: dict[str, PadOps] = {}  # backend -> its pad ops
if _backend._C is not None:
    OPS["cpu"] = OPS["cuda"] = PadOps(
        torch.ops.i2i_fast.reflection_pad2d_fwd.default, torch.ops.i2i_fast.reflection_pad2d_bwd.default
    )
    torch.library.register_fake("i2i_fast::reflection_pad2d_fwd")(_fwd_fake)
    torch.library.register_fake("i2i_fast::reflection_pad2d_bwd")(_bwd_fake)
_FN = {}
if _TRITON is not None:
    OPS["triton"] = PadOps(
        torch.ops.i2i_fast.triton_reflection_pad2d_fwd, torch.ops.i2i_fast.triton_reflection_pad2d_bwd
    )
    _bf, _bb = _autograd(OPS["triton"])
    torch.library.register_autograd("i2i_fast::triton_reflection_pad2d_fwd", _bf, setup_context=_setup_fwd)
    torch.library.register_autograd("i2i_fast::triton_reflection_pad2d_bwd", _bb, setup_context=_setup_bwd)
    _FN["triton"] = function(OPS["triton"].fwd, _setup_fwd, _bf)


def kernels(device: torch.device) -> PadOps:
    """The pad ops for tensors on `device` whatever the selected backend: the C++ kernels (CPU;
    CUDA when built), else the Triton ones."""
    if device.type == "cuda" and not (_backend._C is not None and _backend._C.WITH_CUDA):
        if "triton" not in OPS:
            raise RuntimeError("i2i_fast reflection_pad2d on CUDA needs the CUDA kernels or triton")
        return OPS["triton"]
    return PadOps(torch.ops.i2i_fast.reflection_pad2d_fwd, torch.ops.i2i_fast.reflection_pad2d_bwd)


def reflection_pad2d(
    backend: str, x: torch.Tensor, pad: list, act: int = Activation.NONE, slope: float = 0.0
) -> torch.Tensor:
    """Runs reflection_pad2d_fwd(x, pad, act, slope) = pad(act(x)) on `backend`
    (pad = [left, right, top, bottom]; act an Activation code, NONE, RELU or LEAKY_RELU)."""
    act, slope = int(act), float(slope)
    if backend == "reference":
        return reference.reflection_pad2d_fwd(x, pad, act, slope)
    if backend != "triton" or torch.compiler.is_compiling():
        # the op with its registered autograd (C++ for cpu/cuda); under compile also for
        # Triton: dynamo mis-traces the autograd.Function wrapper when x does not require grad
        return OPS[backend].fwd(x, list(pad), act, slope)
    return _FN[backend].apply(x, list(pad), act, slope)
