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
