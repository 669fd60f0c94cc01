"""loss_fwd / loss_bwd: fake tensors, autograd and the per-backend call.

loss_fwd(x[], y[], params, weights, kind, reduction, need_grad) -> (outs[], grads[]):
forward computes the loss AND the gradient in one pass (one launch for all terms);
loss_bwd only scales the saved gradients by grad_out (one launch).
The C++ op's autograd is a C++ node (csrc/loss.cpp, Autograd key)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _backend, reference
from ..codes import Reduction
from .common import below_autograd

_TRITON = None
if _backend._triton_error is None:
    from ..triton import loss as _TRITON  # registers i2i_fast::triton_loss_*


def _fwd_fake(x, y, params, weights, kind, reduction, need_grad):
    outs = [t.new_empty(t.shape) for t in x] if reduction == Reduction.NONE else [x[0].new_empty(())]
    grads = [t.new_empty(t.shape) for t in x] if need_grad else []
    return outs, grads


def _bwd_fake(grad_outs, saved, index, sign):
    return [saved[i].new_empty(saved[i].shape) for i in index]


def _grad_plan(nx, has_y, need):
    """(index, sign) of the gradients loss_bwd must produce: x[t] gets +saved[t], y[t] (L1) gets
    -saved[t]; only the inputs that need a gradient."""
    index, sign = [], []
    for t in range(nx):
        if need[t]:
            index.append(t), sign.append(1.0)
    if has_y:
        for t in range(nx):
            if need[nx + t]:
                index.append(t), sign.append(-1.0)
    return index, sign


def _backward_with(bwd):
    def backward(ctx, grad_outs, _grad_grads):
        nx, has_y = ctx.loss_cfg
        need = ctx.loss_need
        saved = list(ctx.saved_tensors)
        index, sign = _grad_plan(nx, has_y, need)
        res = bwd([g for g in grad_outs], saved, index, sign) if index else []
        it = iter(res)
        gx = [next(it) if need[t] else None for t in range(nx)]
        gy = [next(it) if need[nx + t] else None for t in range(nx)] if has_y else []
        return gx, gy, None, None, None, None, None

    return backward


def _setup(ctx, inputs, output):
    x, y, params, weights, kind, reduction, need_grad = inputs
    _, grads = output
    ctx.save_for_backward(*grads)
    ctx.loss_cfg = (len(x), bool(y))
    ctx.loss_need = [t.requires_grad for t in x] + ([t.requires_grad for t in y] if y else [])
    if not need_grad:
        ctx.loss_need = [False] * len(ctx.loss_need)
    ctx.mark_non_differentiable(*grads)


if _backend._C is not None:
    # the C++ op's autograd formula is a C++ node (csrc/loss.cpp, Autograd key)
    torch.library.register_fake("i2i_fast::loss_fwd")(_fwd_fake)
    torch.library.register_fake("i2i_fast::loss_bwd")(_bwd_fake)
if _TRITON is not None:
    torch.library.register_autograd("i2i_fast::triton_loss_fwd", _backward_with(_TRITON.loss_bwd), setup_context=_setup)


USE_CPP_AUTOGRAD = True  # False: the Python autograd.Function below (kept for comparison)


class _Cfg(NamedTuple):
    nx: int  # number of loss terms (x tensors)
    has_y: bool  # per-term second operands follow the x tensors (L1, BCE vs a tensor)
    params: list
    weights: list
    kind: int
    reduction: int
    need: list  # which of the flat tensors need a gradient
    n_grads: int


def _function(fwd, bwd, fast=False):
    """autograd.Function around loss_fwd (the lean path: no torch.library autograd wrapper).
    Tensors come flat: x[0..nx), then y. Backward scales the saved gradients (loss_bwd); under
    create_graph it differentiates the reference formula instead, so double backward works."""
    if fast:
        fwd_call, bwd_call = below_autograd(fwd), below_autograd(bwd)
        fwd = lambda x, *a: fwd_call(x[0], x, *a)  # noqa: E731
        bwd = lambda go, saved, *a: bwd_call(saved[0], go, saved, *a)  # noqa: E731

    class LossFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, nx, has_y, params, weights, kind, reduction, *tensors):
            x, y = list(tensors[:nx]), list(tensors[nx:]) if has_y else []
            need = [bool(n) for n in ctx.needs_input_grad[6:]]
            outs, grads = fwd(x, y, params, weights, kind, reduction, any(need))
            ctx.save_for_backward(*grads)
            # the inputs are only read again by a create_graph backward (double backward): kept
            # as plain references, which costs nothing per call (save_for_backward of every
            # term would add ~2 us per term to the batch-1 step)
            ctx.inputs = tensors
            ctx.cfg = _Cfg(nx, has_y, params, weights, kind, reduction, need, len(grads))
            return tuple(outs)

        @staticmethod
        def backward(ctx, *grad_outs):
            nx, has_y, params, weights, kind, reduction, need, ng = ctx.cfg
            grads, tensors = list(ctx.saved_tensors), ctx.inputs
            if torch.is_grad_enabled():  # create_graph=True: differentiable reference math
                inputs = [t for t, n in zip(tensors, need) if n]
                with torch.enable_grad():
                    x, y = list(tensors[:nx]), list(tensors[nx:]) if has_y else []
                    outs = reference.loss_value(x, y, params, weights, kind, reduction)
                    gs = iter(torch.autograd.grad(outs, inputs, list(grad_outs), create_graph=True, allow_unused=True))
                res = [next(gs) if n else None for n in need]
                res = [torch.zeros_like(t) if n and r is None else r for r, n, t in zip(res, need, tensors)]
                return (None,) * 6 + tuple(res)
            index, sign = _grad_plan(nx, has_y, need)
            res = iter(bwd(list(grad_outs), grads, index, sign) if index else [])
            return (None,) * 6 + tuple(next(res) if n else None for n in need)

    return LossFn


_FN = {}
if _backend._C is not None:
    _FN["cpu"] = _FN["cuda"] = _function(
        torch.ops.i2i_fast.loss_fwd.default, torch.ops.i2i_fast.loss_bwd.default, fast=True
    )
if _TRITON is not None:
    _FN["triton"] = _function(torch.ops.i2i_fast.triton_loss_fwd, torch.ops.i2i_fast.triton_loss_bwd)


def loss(backend: str, x, y, params, weights, kind, reduction):
    """Runs the fused loss on `backend`: list of outputs ([loss] or per-term for none)."""
    if backend == "reference":
        return reference.loss_value(list(x), list(y), list(params), list(weights), kind, reduction)
    if backend in ("cpu", "cuda") and USE_CPP_AUTOGRAD:
        # the C++ op with its C++ autograd node: no Python in forward or backward
        return torch.ops.i2i_fast.loss_fwd.default(x, y, params, weights, kind, reduction, False)[0]
    return list(_FN[backend].apply(len(x), bool(y), list(params), list(weights), kind, reduction, *x, *y))
