"""Custom-op plumbing: fake (meta) implementations and autograd formulas for the C++ ops
(torch.ops.i2i_fast.*) and the Triton ops, and the per-backend call of each op."""
from __future__ import annotations

import torch

from . import _backend, reference

_TRITON = None
if _backend._triton_error is None:
    from .triton import instance_norm as _TRITON  # registers i2i_fast::triton_instance_norm_*


def _fmt(x: torch.Tensor):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ---------------------------------------------------------------- instance norm
def _in_fwd_fake(x, weight, bias, residual, running_mean, running_var, eps, act, slope):
    n, c = x.shape[:2]
    sd = reference.stats_dtype(x)
    return torch.empty_like(x, memory_format=_fmt(x)), x.new_empty((n, c), dtype=sd), x.new_empty((n, c), dtype=sd)


def _in_bwd_fake(grad, x, mean, var, weight, bias, eps, act, slope, input_stats):
    c = x.shape[1]
    # per-(n, c) affine (AdaIN) gets per-plane gradients, per-channel affine per-channel ones
    k = next((t.numel() for t in (weight, bias) if t is not None and t.numel() != c), c)
    sd = reference.stats_dtype(x)
    return torch.empty_like(x, memory_format=_fmt(x)), x.new_empty((k,), dtype=sd), x.new_empty((k,), dtype=sd)


def _in_setup(ctx, inputs, output):
    x, weight, bias, residual, running_mean, running_var, eps, act, slope = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var, weight, bias)
    ctx.cfg = (eps, act, slope, running_mean is None, residual is not None)
    ctx.mark_non_differentiable(mean, var)


def _in_backward_with(bwd):
    def backward(ctx, gy, _gmean, _gvar):
        x, mean, var, weight, bias = ctx.saved_tensors
        eps, act, slope, input_stats, has_res = ctx.cfg
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            # create_graph=True (double backward, e.g. WGAN-GP through a discriminator with
            # InstanceNorm): differentiate the reference formula so the result is itself
            # differentiable. Slower than the kernel, same math.
            gx, gw, gb = _in_double_backward(gy, x, mean, var, weight, bias, eps, act, slope, input_stats)
        else:
            gx, gw, gb = bwd(gy, x, mean, var, weight, bias, eps, act, slope, input_stats)
            gw = gw.view_as(weight).to(weight.dtype) if weight is not None else None
            gb = gb.view_as(bias).to(bias.dtype) if bias is not None else None
        return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None,
                gy if has_res else None, None, None, None, None, None)
    return backward


def _in_double_backward(gy, x, mean, var, weight, bias, eps, act, slope, input_stats):
    rm, rv = (None, None) if input_stats else (mean[0], var[0])
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    if not inputs:  # only the residual needs a gradient (it is gy)
        return None, None, None
    with torch.enable_grad():
        y, _, _ = reference.instance_norm_fwd(x, weight, bias, None, rm, rv, eps, act, slope)
        grads = iter(torch.autograd.grad(y, inputs, gy, create_graph=True, allow_unused=True))
    out = [next(grads) if t is not None and t.requires_grad else None for t in (x, weight, bias)]
    return tuple(g if g is not None or t is None else torch.zeros_like(t)
                 for g, t in zip(out, (x, weight, bias)))


if _backend._C is not None:
    torch.library.register_fake("i2i_fast::instance_norm_fwd")(_in_fwd_fake)
    torch.library.register_fake("i2i_fast::instance_norm_bwd")(_in_bwd_fake)
    torch.library.register_autograd("i2i_fast::instance_norm_fwd",
                                    _in_backward_with(torch.ops.i2i_fast.instance_norm_bwd),
                                    setup_context=_in_setup)
if _TRITON is not None:
    torch.library.register_autograd("i2i_fast::triton_instance_norm_fwd",
                                    _in_backward_with(_TRITON.instance_norm_bwd),
                                    setup_context=_in_setup)


def _function(fwd, setup, backward):
    """An autograd.Function around a custom op with the op's own autograd formula. The
    functional API calls this instead of the op's registered autograd kernel: same math, but
    torch.library's generic wrapper costs ~40 us per call, which dominates batch-1 layers."""
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = fwd(*args)
            setup(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)
    return Fn


_IN_FN = {}
if _backend._C is not None:
    _IN_FN["cpu"] = _IN_FN["cuda"] = _function(torch.ops.i2i_fast.instance_norm_fwd, _in_setup,
                                               _in_backward_with(torch.ops.i2i_fast.instance_norm_bwd))
if _TRITON is not None:
    _IN_FN["triton"] = _function(torch.ops.i2i_fast.triton_instance_norm_fwd, _in_setup,
                                 _in_backward_with(_TRITON.instance_norm_bwd))


def instance_norm_fwd(backend: str, *args):
    """Runs instance_norm_fwd(x, weight, bias, residual, running_mean, running_var, eps, act,
    slope) -> (out, mean, var) on `backend`."""
    if backend == "reference":
        return reference.instance_norm_fwd(*args)
    return _IN_FN[backend].apply(*args)


# ---------------------------------------------------------------- losses (issue #5)
# loss_fwd(x[], y[], params, weights, kind, reduction, need_grad) -> (outs[], grads[]):
# forward computes the loss AND the gradient in one pass (one launch for all terms);
# loss_bwd only scales the saved gradients by grad_out (one launch).
_TRITON_LOSS = None
if _backend._triton_error is None:
    from .triton import losses as _TRITON_LOSS  # registers i2i_fast::triton_loss_*


def _loss_fwd_fake(x, y, params, weights, kind, reduction, need_grad):
    outs = [t.new_empty(t.shape) for t in x] if reduction == 0 else [x[0].new_empty(())]
    grads = [t.new_empty(t.shape) for t in x] if need_grad else []
    return outs, grads


def _loss_bwd_fake(grad_outs, saved, index, sign):
    return [saved[i].new_empty(saved[i].shape) for i in index]


def _loss_grad_plan(nx, has_y, need):
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


def _loss_backward_with(bwd):
    def backward(ctx, grad_outs, _grad_grads):
        nx, has_y = ctx.loss_cfg
        need = ctx.loss_need
        saved = list(ctx.saved_tensors)
        index, sign = _loss_grad_plan(nx, has_y, need)
        res = bwd([g for g in grad_outs], saved, index, sign) if index else []
        it = iter(res)
        gx = [next(it) if need[t] else None for t in range(nx)]
        gy = [next(it) if need[nx + t] else None for t in range(nx)] if has_y else []
        return gx, gy, None, None, None, None, None
    return backward


def _loss_setup(ctx, inputs, output):
    x, y, params, weights, kind, reduction, need_grad = inputs
    _, grads = output
    ctx.save_for_backward(*grads)
    ctx.loss_cfg = (len(x), bool(y))
    ctx.loss_need = [t.requires_grad for t in x] + ([t.requires_grad for t in y] if y else [])
    if not need_grad:
        ctx.loss_need = [False] * len(ctx.loss_need)
    ctx.mark_non_differentiable(*grads)


if _backend._C is not None:
    # the C++ op's autograd formula is a C++ node (csrc/losses.cpp, Autograd key)
    torch.library.register_fake("i2i_fast::loss_fwd")(_loss_fwd_fake)
    torch.library.register_fake("i2i_fast::loss_bwd")(_loss_bwd_fake)
if _TRITON_LOSS is not None:
    torch.library.register_autograd("i2i_fast::triton_loss_fwd",
                                    _loss_backward_with(_TRITON_LOSS.loss_bwd),
                                    setup_context=_loss_setup)


USE_CPP_AUTOGRAD = True  # False: the Python autograd.Function below (kept for comparison)
FAST_EAGER = True  # False: always call through the dispatcher (profilers then see every op)


def _below_autograd(op):
    """Eager calls of a C++ op from inside our autograd.Function skip the dispatcher's
    Autograd key (torch.library's Python autograd kernel costs ~20 us per call on CPU, more
    than the whole fused loss at batch 1) by redispatching straight to the backend key.
    Under torch.compile the plain op is traced instead."""
    keys = {"cpu": torch._C.DispatchKeySet(torch._C.DispatchKey.CPU),
            "cuda": torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)}

    def call(first, *args):
        if FAST_EAGER and not torch.compiler.is_compiling():
            ks = keys.get(first.device.type)
            if ks is not None:
                return op.redispatch(ks, *args)
        return op(*args)
    return call


def _loss_function(fwd, bwd, fast=False):
    """autograd.Function around loss_fwd (the lean path: no torch.library autograd wrapper).
    Tensors come flat: x[0..nx), then y. Backward scales the saved gradients (loss_bwd); under
    create_graph it differentiates the reference formula instead, so double backward works."""
    if fast:
        fwd_call, bwd_call = _below_autograd(fwd), _below_autograd(bwd)
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
            ctx.cfg = (nx, has_y, params, weights, kind, reduction, need, len(grads))
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
                    gs = iter(torch.autograd.grad(outs, inputs, list(grad_outs), create_graph=True,
                                                  allow_unused=True))
                res = [next(gs) if n else None for n in need]
                res = [torch.zeros_like(t) if n and r is None else r for r, n, t in zip(res, need, tensors)]
                return (None,) * 6 + tuple(res)
            index, sign = _loss_grad_plan(nx, has_y, need)
            res = iter(bwd(list(grad_outs), grads, index, sign) if index else [])
            return (None,) * 6 + tuple(next(res) if n else None for n in need)
    return LossFn


_LOSS_FN = {}
if _backend._C is not None:
    _LOSS_FN["cpu"] = _LOSS_FN["cuda"] = _loss_function(torch.ops.i2i_fast.loss_fwd.default,
                                                        torch.ops.i2i_fast.loss_bwd.default, fast=True)
if _TRITON_LOSS is not None:
    _LOSS_FN["triton"] = _loss_function(torch.ops.i2i_fast.triton_loss_fwd, torch.ops.i2i_fast.triton_loss_bwd)


def loss(backend: str, x, y, params, weights, kind, reduction):
    """Runs the fused loss on `backend`: list of outputs ([loss] or per-term for none)."""
    if backend == "reference":
        return reference.loss_value(list(x), list(y), list(params), list(weights), kind, reduction)
    if backend in ("cpu", "cuda") and USE_CPP_AUTOGRAD:
        # the C++ op with its C++ autograd node: no Python in forward or backward
        return torch.ops.i2i_fast.loss_fwd.default(x, y, params, weights, kind, reduction, False)[0]
    return list(_LOSS_FN[backend].apply(len(x), bool(y), list(params), list(weights), kind,
                                        reduction, *x, *y))
