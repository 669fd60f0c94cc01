"""Triton kernels (one module per op, same names as csrc/ and kernels/). They run on CUDA
tensors, and on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported)."""

import functools
import inspect

import torch


def first_tensor(args):
    """The first tensor among the arguments, looking into lists (the loss ops take lists)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0]
    return None


def on_device(fn):
    """Runs a Triton op on its first tensor argument's GPU: Triton launches on the current
    device, so a tensor on cuda:1 with cuda:0 current would be read by the wrong GPU (the C++
    ops take a CUDAGuard for the same reason)."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        t = first_tensor(args)
        if t is None or t.device.type != "cuda" or t.device.index in (None, torch.cuda.current_device()):
            return fn(*args, **kwargs)
        with torch.cuda.device(t.device):
            return fn(*args, **kwargs)

    # triton_op infers the schema from the signature: give it fn's, annotations resolved in
    # fn's module (they are strings there under `from __future__ import annotations`)
    guarded.__signature__ = inspect.signature(fn, eval_str=True)
    return guarded
