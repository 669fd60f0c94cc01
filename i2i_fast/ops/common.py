"""What every op's glue shares: the backend an op runs with (ONNX export aside), the memory
format an output keeps, and the lean autograd.Function wrapper around a custom op."""

from __future__ import annotations

import torch

from .. import _backend

FAST_EAGER = True  # False: always call through the dispatcher (profilers then see every op)


def onnx_exporting() -> bool:
    """True while torch.onnx.export traces a model, with either exporter. The exporters cannot
    translate i2i_fast's custom ops, so the ops then run their reference math (reference.py:
    aten ops that have standard ONNX equivalents). torch.onnx.is_in_onnx_export imports two
    modules per call (~3 us), so it is asked only under a tracer: torch.export's (the default
    exporter) or TorchScript's (dynamo=False); eager calls pay ~0.1 us. Under torch.compile the
    answer is False without a call dynamo cannot trace (torch._C._is_tracing)."""
    if torch.compiler.is_compiling():
        return torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export()
    return torch._C._is_tracing() and torch.onnx.is_in_onnx_export()


def select(device: torch.device) -> str:
    """The backend an op on `device` runs with: _backend.select's, or "reference" during an
    ONNX export."""
    return "reference" if onnx_exporting() else _backend.select(device)


def memory_format(x: torch.Tensor):
    """The layout an op's output keeps: channels_last when x is (and is not also contiguous)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def function(fwd, setup, backward):
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


def below_autograd(op):
    """Eager calls of a C++ op from inside our autograd.Function skip the dispatcher's
    Autograd key (torch.library's Python autograd kernel costs ~20 us per call on CPU, more
    than the whole fused loss at batch 1) by redispatching straight to the backend key.
    Under torch.compile the plain op is traced instead."""
    keys = {
        "cpu": torch._C.DispatchKeySet(torch._C.DispatchKey.CPU),
        "cuda": torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA),
    }

    def call(first, *args):
        if FAST_EAGER and not torch.compiler.is_compiling():
            ks = keys.get(first.device.type)
            if ks is not None:
                return op.redispatch(ks, *args)
        return op(*args)

    return call


def differentiate(forward, gy, ts) -> list:
    """The create-graph backward every op's ref_grads shares: y = forward() (the reference math)
    differentiated by autograd w.r.t. ts, so the result is itself differentiable. One entry per
    t in ts: its gradient, zeros where t needs a gradient it does not get, an empty tensor where
    it needs none (the *_ref_grads ops' convention)."""
    inputs = [t for t in ts if t is not None and t.requires_grad]
    got = {}
    if inputs:
        with torch.enable_grad():
            grads = torch.autograd.grad(forward(), inputs, gy, create_graph=True, allow_unused=True)
        got = dict(zip(map(id, inputs), grads))
    like = ts[0]
    out = []
    for t in ts:
        g = got.get(id(t)) if t is not None else None
        if g is None:
            g = torch.zeros_like(t) if t is not None and t.requires_grad else like.new_empty((0,))
        out.append(g)
    return out
