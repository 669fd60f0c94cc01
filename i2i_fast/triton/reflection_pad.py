"""Triton reflection pad: one program per BLOCK elements of the output (forward, a copy) or of
the input (backward, a gather of the <= 3 x <= 3 padded positions that read each input pixel,
summed in fp32 / fp64 in the same order as csrc/ and kernels/: no atomics, deterministic).
Flat indices run in memory order (NCHW or channels_last, the output keeps the layout); int64.
An activation folds in before the pad (ACT: the forward writes act(x), the backward multiplies
each sum by act'(x)), with the norms' _act / _act_grad."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._backend import triton_interpret
from ..codes import Activation
from . import on_device
from .instance_norm import _act, _act_grad, _slope

NONE: tl.constexpr = tl.constexpr(Activation.NONE)


@triton.jit
def _decode(i, C, Hs, Ws, CL: tl.constexpr):
    if CL:
        c = i % C
        r = i // C
        w = r % Ws
        r = r // Ws
        h = r % Hs
        n = r // Hs
    else:
        w = i % Ws
        r = i // Ws
        h = r % Hs
        r = r // Hs
        c = r % C
        n = r // C
    return n, c, h, w


@triton.jit
def _offset(n, c, h, w, C, Hs, Ws, CL: tl.constexpr):
    if CL:
        o = ((n * Hs + h) * Ws + w) * C + c
    else:
        o = ((n * C + c) * Hs + h) * Ws + w
    return o


@triton.jit
def _reflect(o, n, before):
    i = o - before
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= n, 2 * (n - 1) - i, i)


@triton.jit
def reflection_pad2d_fwd_kernel(
    X,
    Y,
    total,  # Y's element count
    C,
    H,
    W,
    Ho,
    Wo,  # channels; x's and Y's planes
    l,
    t,  # the left and top pad
    CL: tl.constexpr,  # channels_last memory order
    ACT: tl.constexpr,  # Activation code
    SLOPE: tl.constexpr,  # LEAKY_RELU's (0 otherwise)
    ACC: tl.constexpr,  # the activation's math dtype
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    n, c, oh, ow = _decode(i, C, Ho, Wo, CL)
    src = _offset(n, c, _reflect(oh, H, t), _reflect(ow, W, l), C, H, W, CL)
    v = tl.load(X + src, mask=m, other=0.0)
    if ACT != NONE:
        v = _act(v.to(ACC), ACT, tl.full((), SLOPE, ACC)).to(Y.dtype.element_ty)
    tl.store(Y + i, v, mask=m)


@triton.jit
def _add_col(acc, GY, n, c, gh, w, C, Ho, Wo, W, l, r, m, CL: tl.constexpr, ACC: tl.constexpr):
    # center, leading mirror, trailing mirror: the order of reflect_dst in csrc/reflection_pad.h
    acc += tl.load(GY + _offset(n, c, gh, w + l, C, Ho, Wo, CL), mask=m, other=0.0).to(ACC)
    ml = m & (w >= 1) & (w <= l)
    acc += tl.load(GY + _offset(n, c, gh, l - w, C, Ho, Wo, CL), mask=ml, other=0.0).to(ACC)
    mr = m & (w <= W - 2) & (W - 1 - w <= r)
    acc += tl.load(GY + _offset(n, c, gh, l + 2 * (W - 1) - w, C, Ho, Wo, CL), mask=mr, other=0.0).to(ACC)
    return acc


@triton.jit
def reflection_pad2d_bwd_kernel(
    GY,
    X,  # the forward's input, GX's layout (read when ACT is not NONE)
    GX,
    total,  # GX's element count
    C,
    H,
    W,
    Ho,
    Wo,  # channels; x's and the padded planes
    l,
    r,
    t,
    b,  # the pad: left, right, top, bottom
    CL: tl.constexpr,  # channels_last memory order
    ACT: tl.constexpr,  # Activation code
    SLOPE: tl.constexpr,  # LEAKY_RELU's (0 otherwise)
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    n, c, h, w = _decode(i, C, H, W, CL)
    acc = tl.zeros([BLOCK], ACC)
    acc = _add_col(acc, GY, n, c, h + t, w, C, Ho, Wo, W, l, r, m, CL, ACC)
    mt = m & (h >= 1) & (h <= t)
    acc = _add_col(acc, GY, n, c, tl.where(mt, t - h, 0), w, C, Ho, Wo, W, l, r, mt, CL, ACC)
    mb = m & (h <= H - 2) & (H - 1 - h <= b)
    acc = _add_col(acc, GY, n, c, tl.where(mb, t + 2 * (H - 1) - h, 0), w, C, Ho, Wo, W, l, r, mb, CL, ACC)
    if ACT != NONE:
        acc = acc * _act_grad(tl.load(X + i, mask=m, other=0.0).to(ACC), ACT, tl.full((), SLOPE, ACC))
    tl.store(GX + i, acc.to(GX.dtype.element_ty), mask=m)


def _fmt(x: torch.Tensor):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_act(act: int, what: str):
    if act not in (Activation.NONE, Activation.RELU, Activation.LEAKY_RELU):
        raise RuntimeError(f"i2i_fast {what}: act must be Activation.NONE, RELU or LEAKY_RELU, got {act}")


def _block(total):
    return min(triton.next_power_of_2(max(total, 1)), 4096 if triton_interpret() else 1024)


@triton_op("i2i_fast::triton_reflection_pad2d_fwd", mutates_args=())
@on_device
def reflection_pad2d_fwd(x: torch.Tensor, pad: list[int], act: int = 0, slope: float = 0.0) -> torch.Tensor:
    _check_act(act, "reflection_pad2d")
    fmt = _fmt(x)
    x = x.contiguous(memory_format=fmt)
    n, c, h, w = x.shape
    l, r, t, b = pad
    y = torch.empty((n, c, h + t + b, w + l + r), dtype=x.dtype, device=x.device, memory_format=fmt)
    total = y.numel()
    if total > 0:
        blk = _block(total)
        wrap_triton(reflection_pad2d_fwd_kernel)[(triton.cdiv(total, blk),)](
            x,
            y,
            total,
            c,
            h,
            w,
            h + t + b,
            w + l + r,
            l,
            t,
            CL=fmt == torch.channels_last,
            ACT=int(act),
            SLOPE=_slope(act, slope),
            ACC=_acc(x.dtype),
            BLOCK=blk,
        )
    return y


@triton_op("i2i_fast::triton_reflection_pad2d_bwd", mutates_args=())
@on_device
def reflection_pad2d_bwd(
    grad: torch.Tensor, pad: list[int], x: Optional[torch.Tensor] = None, act: int = 0, slope: float = 0.0
) -> torch.Tensor:
    _check_act(act, "reflection_pad2d_bwd")
    fmt = _fmt(grad)
    g = grad.contiguous(memory_format=fmt)
    n, c, ho, wo = g.shape
    l, r, t, b = pad
    h, w = ho - t - b, wo - l - r
    if act != Activation.NONE:
        if x is None:
            raise RuntimeError("i2i_fast reflection_pad2d_bwd: act needs x, the forward's input")
        if x.shape != (n, c, h, w) or x.dtype != g.dtype or x.device != g.device:
            raise RuntimeError(
                f"i2i_fast reflection_pad2d_bwd: x ({tuple(x.shape)}, {x.dtype} on {x.device}) must have shape "
                f"{(n, c, h, w)} and grad's dtype and device ({g.dtype} on {g.device})"
            )
        x = x.contiguous(memory_format=fmt)
    gx = torch.empty((n, c, h, w), dtype=g.dtype, device=g.device, memory_format=fmt)
    total = gx.numel()
    if total > 0:
        blk = _block(total)
        wrap_triton(reflection_pad2d_bwd_kernel)[(triton.cdiv(total, blk),)](
            g,
            g if act == Activation.NONE else x,  # X is not read without an activation
            gx,
            total,
            c,
            h,
            w,
            ho,
            wo,
            l,
            r,
            t,
            b,
            CL=fmt == torch.channels_last,
            ACT=int(act),
            SLOPE=_slope(act, slope),
            ACC=_acc(g.dtype),
            BLOCK=blk,
        )
    return gx
