"""Triton reflection pad: one program per BLOCK elements of the output (forward, a copy) or of
the input (backward, a gather of the <= 3 x <= 3 padded positions that read each input pixel,
summed in fp32 / fp64 in the same order as csrc/ and kernels/: no atomics, deterministic).
Flat indices run in memory order (NCHW or channels_last, the output keeps the layout); int64."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._backend import triton_interpret
from . import on_device


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
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < total
    n, c, oh, ow = _decode(i, C, Ho, Wo, CL)
    src = _offset(n, c, _reflect(oh, H, t), _reflect(ow, W, l), C, H, W, CL)
    tl.store(Y + i, tl.load(X + src, mask=m, other=0.0), mask=m)


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
    tl.store(GX + i, acc.to(GX.dtype.element_ty), mask=m)


def _fmt(x: torch.Tensor):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _block(total):
    return min(triton.next_power_of_2(max(total, 1)), 4096 if triton_interpret() else 1024)


@triton_op("i2i_fast::triton_reflection_pad2d_fwd", mutates_args=())
@on_device
def reflection_pad2d_fwd(x: torch.Tensor, pad: list[int]) -> torch.Tensor:
    fmt = _fmt(x)
    x = x.contiguous(memory_format=fmt)
    n, c, h, w = x.shape
    l, r, t, b = pad
    y = torch.empty((n, c, h + t + b, w + l + r), dtype=x.dtype, device=x.device, memory_format=fmt)
    total = y.numel()
    if total > 0:
        blk = _block(total)
        wrap_triton(reflection_pad2d_fwd_kernel)[(triton.cdiv(total, blk),)](
            x, y, total, c, h, w, h + t + b, w + l + r, l, t, CL=fmt == torch.channels_last, BLOCK=blk
        )
    return y


@triton_op("i2i_fast::triton_reflection_pad2d_bwd", mutates_args=())
@on_device
def reflection_pad2d_bwd(grad: torch.Tensor, pad: list[int]) -> torch.Tensor:
    fmt = _fmt(grad)
    g = grad.contiguous(memory_format=fmt)
    n, c, ho, wo = g.shape
    l, r, t, b = pad
    h, w = ho - t - b, wo - l - r
    gx = torch.empty((n, c, h, w), dtype=g.dtype, device=g.device, memory_format=fmt)
    total = gx.numel()
    if total > 0:
        blk = _block(total)
        acc = tl.float64 if g.dtype == torch.float64 else tl.float32
        wrap_triton(reflection_pad2d_bwd_kernel)[(triton.cdiv(total, blk),)](
            g, gx, total, c, h, w, ho, wo, l, r, t, b, CL=fmt == torch.channels_last, ACC=acc, BLOCK=blk
        )
    return gx
