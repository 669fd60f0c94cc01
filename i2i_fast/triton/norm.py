"""Triton kernels of the plane-affine normalization ops (norm_stats, norm_apply,
norm_apply_sums, norm_apply_bwd; schemas and math in csrc/ops.cpp, i2i_fast/_norm.py): one
program per (n, c) plane, strided so NCHW and channels_last work without a copy. The output
pad is a mirrored read in the forward and a fixed-order gather of the (up to 3 x 3) mirror
sources in the backward: no atomics."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .instance_norm import _act, _act_grad, _acc, _block, _layout, _slope


@triton.jit
def _reflect(t, n):
    t = tl.where(t < 0, -t, t)
    return tl.where(t >= n, 2 * (n - 1) - t, t)


@triton.jit
def _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC: tl.constexpr):
    """Sample and channel of plane pid (int64) and its constants in the accumulation dtype."""
    return ((pid // C).to(tl.int64), (pid % C).to(tl.int64), tl.load(SLOPE).to(ACC),
            tl.load(MEAN + pid).to(ACC), tl.load(SCALE + pid).to(ACC), tl.load(SHIFT + pid).to(ACC))


@triton.jit
def norm_stats_kernel(X, MEAN, VAR, C, H, W, sN, sC, sH, sW, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = (pid // C).to(tl.int64) * sN + (pid % C).to(tl.int64) * sC
    offs = tl.arange(0, BLOCK)
    HW = H * W
    acc = tl.zeros([BLOCK], ACC)
    for s0 in range(0, HW, BLOCK):
        idx = s0 + offs
        off = base + (idx // W).to(tl.int64) * sH + (idx % W).to(tl.int64) * sW
        acc += tl.load(X + off, mask=idx < HW, other=0.0).to(ACC)
    mean = tl.sum(acc, 0) / HW
    acc = tl.zeros([BLOCK], ACC)
    for s0 in range(0, HW, BLOCK):
        idx = s0 + offs
        m = idx < HW
        off = base + (idx // W).to(tl.int64) * sH + (idx % W).to(tl.int64) * sW
        d = tl.where(m, tl.load(X + off, mask=m, other=0.0).to(ACC) - mean, 0.0)
        acc += d * d
    tl.store(MEAN + pid, mean)
    tl.store(VAR + pid, tl.sum(acc, 0) / HW)


@triton.jit
def norm_apply_kernel(X, R, Y, MEAN, SCALE, SHIFT, C, H, W, P, sN, sC, sH, sW, oN, oC, oH, oW,
                      SLOPE, HAS_R: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                      BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n, c, slope, mean, scale, shift = _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC)
    xbase = n * sN + c * sC
    ybase = n * oN + c * oC
    Wo = W + 2 * P
    HWo = (H + 2 * P) * Wo
    offs = tl.arange(0, BLOCK)
    for s0 in range(0, HWo, BLOCK):
        idx = s0 + offs
        m = idx < HWo
        oh = idx // Wo
        ow = idx % Wo
        src = xbase + _reflect(oh - P, H).to(tl.int64) * sH + _reflect(ow - P, W).to(tl.int64) * sW
        x = tl.load(X + src, mask=m, other=0.0).to(ACC)
        y = _act((x - mean) * scale + shift, ACT, slope)  # exact shift on constant planes
        if HAS_R:
            y += tl.load(R + src, mask=m, other=0.0).to(ACC)
        tl.store(Y + ybase + oh.to(tl.int64) * oH + ow.to(tl.int64) * oW, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _mirror(i, n, P, k: tl.constexpr):
    # k-th padded index reading input index i (k = 0: i + P; 1, 2: the mirrors) and its validity
    if k == 0:
        return i + P, i >= 0
    elif k == 1:
        return P - i, (i >= 1) & (i <= P)
    else:
        return 2 * (n - 1) + P - i, (i <= n - 2) & (i >= n - 1 - P)


@triton.jit
def _fold(G, gbase, ih, iw, m, H, W, P, gH, gW, HAS_P: tl.constexpr, ACC: tl.constexpr):
    """Gradient of the unpadded output at (ih, iw): the sum of its mirror sources, fixed order."""
    if HAS_P:
        g = tl.zeros(ih.shape, ACC)
        for a in tl.static_range(3):
            r, vr = _mirror(ih, H, P, a)
            for b in tl.static_range(3):
                q, vq = _mirror(iw, W, P, b)
                ok = m & vr & vq
                g += tl.load(G + gbase + r.to(tl.int64) * gH + q.to(tl.int64) * gW, mask=ok, other=0.0).to(ACC)
    else:
        g = tl.load(G + gbase + ih.to(tl.int64) * gH + iw.to(tl.int64) * gW, mask=m, other=0.0).to(ACC)
    return g


@triton.jit
def _d_dz(X, G, xbase, gbase, idx, m, H, W, P, sH, sW, gH, gW, mean, scale, shift, slope,
          HAS_P: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr):
    ih = idx // W
    iw = idx % W
    d = tl.load(X + xbase + ih.to(tl.int64) * sH + iw.to(tl.int64) * sW, mask=m, other=0.0).to(ACC) - mean
    g = _fold(G, gbase, ih, iw, m, H, W, P, gH, gW, HAS_P, ACC)
    dz = g * _act_grad(d * scale + shift, ACT, slope)
    return tl.where(m, d, 0.0), tl.where(m, dz, 0.0)


@triton.jit
def norm_apply_sums_kernel(G, X, SUMS, MEAN, SCALE, SHIFT, C, H, W, P, sN, sC, sH, sW, gN, gC, gH, gW,
                           SLOPE, HAS_P: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                           BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n, c, slope, mean, scale, shift = _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC)
    offs = tl.arange(0, BLOCK)
    a1 = tl.zeros([BLOCK], ACC)
    a2 = tl.zeros([BLOCK], ACC)
    for s0 in range(0, H * W, BLOCK):
        idx = s0 + offs
        d, dz = _d_dz(X, G, n * sN + c * sC, n * gN + c * gC, idx, idx < H * W, H, W, P, sH, sW,
                      gH, gW, mean, scale, shift, slope, HAS_P, ACT, ACC)
        a1 += dz
        a2 += dz * d
    tl.store(SUMS + 2 * pid, tl.sum(a1, 0))
    tl.store(SUMS + 2 * pid + 1, tl.sum(a2, 0))


@triton.jit
def norm_apply_bwd_kernel(G, X, GX, MEAN, SCALE, SHIFT, C0, C1, C, H, W, P, sN, sC, sH, sW, gN, gC,
                          gH, gW, SLOPE, HAS_P: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                          BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n, c, slope, mean, scale, shift = _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC)
    c0 = tl.load(C0 + pid).to(ACC)
    c1 = tl.load(C1 + pid).to(ACC)
    xbase = n * sN + c * sC
    offs = tl.arange(0, BLOCK)
    for s0 in range(0, H * W, BLOCK):
        idx = s0 + offs
        m = idx < H * W
        d, dz = _d_dz(X, G, xbase, n * gN + c * gC, idx, m, H, W, P, sH, sW, gH, gW, mean, scale,
                      shift, slope, HAS_P, ACT, ACC)
        off = xbase + (idx // W).to(tl.int64) * sH + (idx % W).to(tl.int64) * sW
        tl.store(GX + off, (scale * dz + c0 + c1 * d).to(GX.dtype.element_ty), mask=m)


def _strides(t):
    return tuple(t.stride())


def _plane_arg(t, x):
    return t.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()


@triton_op("i2i_fast::triton_norm_stats", mutates_args=())
def norm_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    sd = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean = x.new_full((n, c), float("nan"), dtype=sd)
    var = x.new_full((n, c), float("nan"), dtype=sd)
    if x.numel() > 0:
        wrap_triton(norm_stats_kernel)[(n * c,)](x, mean, var, c, h, w, *_strides(x), ACC=_acc(x),
                                                 BLOCK=_block(h * w))
    return mean, var


@triton_op("i2i_fast::triton_norm_apply", mutates_args=())
def norm_apply(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
               residual: Optional[torch.Tensor], act: int, slope: float, pad: int) -> torch.Tensor:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    y = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype, device=x.device,
                    memory_format=fmt)
    r = residual.contiguous(memory_format=fmt) if residual is not None else x
    if y.numel() > 0:
        wrap_triton(norm_apply_kernel)[(n * c,)](
            x, r, y, _plane_arg(mean, x), _plane_arg(scale, x), _plane_arg(shift, x), c, h, w, pad,
            *_strides(x), *_strides(y), _slope(slope, x), HAS_R=residual is not None, ACT=act, ACC=_acc(x),
            BLOCK=_block(y.shape[2] * y.shape[3]))
    return y


@triton_op("i2i_fast::triton_norm_apply_sums", mutates_args=())
def norm_apply_sums(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                    shift: torch.Tensor, act: int, slope: float, pad: int) -> torch.Tensor:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    sd = torch.float64 if x.dtype == torch.float64 else torch.float32
    sums = x.new_zeros((n, c, 2), dtype=sd)
    if x.numel() > 0:
        g = grad.contiguous(memory_format=fmt)
        wrap_triton(norm_apply_sums_kernel)[(n * c,)](
            g, x, sums, _plane_arg(mean, x), _plane_arg(scale, x), _plane_arg(shift, x), c, h, w,
            pad, *_strides(x), *_strides(g), _slope(slope, x), HAS_P=pad > 0, ACT=act, ACC=_acc(x),
            BLOCK=_block(h * w))
    return sums


@triton_op("i2i_fast::triton_norm_apply_bwd", mutates_args=())
def norm_apply_bwd(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                   shift: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, act: int, slope: float,
                   pad: int) -> torch.Tensor:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    gx = torch.empty_like(x, memory_format=fmt)
    if x.numel() > 0:
        g = grad.contiguous(memory_format=fmt)
        wrap_triton(norm_apply_bwd_kernel)[(n * c,)](
            g, x, gx, _plane_arg(mean, x), _plane_arg(scale, x), _plane_arg(shift, x),
            _plane_arg(c0, x), _plane_arg(c1, x), c, h, w, pad, *_strides(x), *_strides(g), _slope(slope, x),
            HAS_P=pad > 0, ACT=act, ACC=_acc(x), BLOCK=_block(h * w))
    return gx
