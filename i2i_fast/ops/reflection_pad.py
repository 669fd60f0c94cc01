"""reflection_pad2d: fake tensors, autograd and the per-backend call. The forward and backward
ops are each other's adjoints, so double backward (e.g. WGAN-GP through a padded
discriminator) needs no other formula. The C++ ops' autograd is a C++ node
(csrc/reflection_pad.cpp, Autograd key); Triton's is registered here."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import _backend, reference
from .common import function, memory_format

_TRITON = None
if _backend._triton_error is None:
    from ..triton import reflection_pad as _TRITON  # registers i2i_fast::triton_reflection_pad2d_*


class PadOps(NamedTuple):
    fwd: Callable  # (x, [left, right, top, bottom]) -> padded
    bwd: Callable  # (grad of padded, pad) -> grad of x (a gather, no atomics)


def _out_shape(x, pad):
    n, c, h, w = x.shape
    return (n, c, h + pad[2] + pad[3], w + pad[0] + pad[1])


def _fwd_fake(x, pad):
    return x.new_empty(_out_shape(x, pad)).contiguous(memory_format=memory_format(x))


def _bwd_fake(grad, pad):
    n, c, ho, wo = grad.shape
    return grad.new_empty((n, c, ho - pad[2] - pad[3], wo - pad[0] - pad[1])).contiguous(
        memory_format=memory_format(grad)
    )


def _setup(ctx, inputs, output):
    ctx.pad = list(inputs[1])


def _autograd(ops: PadOps):
    """(backward of fwd, backward of bwd)."""

    def backward_fwd(ctx, gy):
        return ops.bwd(gy.contiguous(memory_format=memory_format(gy)), ctx.pad), None

    def backward_bwd(ctx, ggx):
        return ops.fwd(ggx, ctx.pad), None

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
    torch.library.register_autograd("i2i_fast::triton_reflection_pad2d_fwd", _bf, setup_context=_setup)
    torch.library.register_autograd("i2i_fast::triton_reflection_pad2d_bwd", _bb, setup_context=_setup)
    _FN["triton"] = function(OPS["triton"].fwd, _setup, _bf)


def kernels(device: torch.device) -> PadOps:
    """The pad ops for tensors on `device` whatever the selected backend: the C++ kernels (CPU;
    CUDA when built), else the Triton ones."""
    if device.type == "cuda" and not (_backend._C is not None and _backend._C.WITH_CUDA):
        if "triton" not in OPS:
            raise RuntimeError("i2i_fast reflection_pad2d on CUDA needs the CUDA kernels or triton")
        return OPS["triton"]
    return PadOps(torch.ops.i2i_fast.reflection_pad2d_fwd, torch.ops.i2i_fast.reflection_pad2d_bwd)


def reflection_pad2d(backend: str, x: torch.Tensor, pad: list) -> torch.Tensor:
    """Runs reflection_pad2d_fwd(x, pad) on `backend` (pad = [left, right, top, bottom])."""
    if backend == "reference":
        return reference.reflection_pad2d_fwd(x, pad)
    if backend != "triton" or torch.compiler.is_compiling():
        # the op with its registered autograd (C++ for cpu/cuda); under compile also for
        # Triton: dynamo mis-traces the autograd.Function wrapper when x does not require grad
        return OPS[backend].fwd(x, list(pad))
    return _FN[backend].apply(x, list(pad))
