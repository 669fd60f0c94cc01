"""Triton kernels of i2i_fast::spectral_norm_scale / spectral_norm_scale_bwd (math in csrc/spectral_norm.h): one
program per row writes its fp32/fp64 partial (u_o * (W_o . v), or g_o . W_o); one program per
row then sums the O partials in row order (each program the same order: deterministic, no
atomics) and writes its row of the output."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import on_device
from .instance_norm import _acc


@triton.jit
def _row_dot(A, B, o, K, ACC: tl.constexpr, BLOCK: tl.constexpr, B_IS_ROW: tl.constexpr):
    """sum_k A[o, k] * (B[o, k] if B_IS_ROW else B[k])"""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    base = o.to(tl.int64) * K
    for k0 in range(0, K, BLOCK):
        k = k0 + offs
        m = k < K
        a = tl.load(A + base + k, mask=m, other=0.0).to(ACC)
        b = tl.load(B + base + k if B_IS_ROW else B + k, mask=m, other=0.0).to(ACC)
        acc += a * b
    return tl.sum(acc, 0)


@triton.jit
def _total(PART, O, ACC: tl.constexpr, BLOCK_O: tl.constexpr):
    acc = tl.zeros([BLOCK_O], ACC)
    offs = tl.arange(0, BLOCK_O)
    for o0 in range(0, O, BLOCK_O):
        acc += tl.load(PART + o0 + offs, mask=o0 + offs < O, other=0.0)
    return tl.sum(acc, 0)


@triton.jit
def sn_fwd_part_kernel(
    W,  # the (O, K) weight
    U,
    V,  # the power iteration's vectors, (O,) and (K,)
    PART,  # out: per row o, u[o] * (W v)[o] (sigma's terms)
    K,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    o = tl.program_id(0)
    tl.store(PART + o, tl.load(U + o).to(ACC) * _row_dot(W, V, o, K, ACC, BLOCK, False))


@triton.jit
def _write_row(A, V, OUT, o, K, sg, cu, ACC: tl.constexpr, BLOCK: tl.constexpr, HAS_V: tl.constexpr):
    """OUT[o, :] = A[o, :] / sg (- cu * V[:] with HAS_V)"""
    offs = tl.arange(0, BLOCK)
    base = o.to(tl.int64) * K
    for k0 in range(0, K, BLOCK):
        k = k0 + offs
        m = k < K
        y = tl.load(A + base + k, mask=m, other=0.0).to(ACC) / sg
        if HAS_V:
            y -= cu * tl.load(V + k, mask=m, other=0.0).to(ACC)
        tl.store(OUT + base + k, y.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def sn_fwd_out_kernel(
    W,
    PART,
    OUT,  # out: W / sigma
    SIGMA,  # out: sum of PART, added in one fixed order by every program
    O,
    K,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_O: tl.constexpr,
):  # O padded to a power of 2
    o = tl.program_id(0)
    sg = _total(PART, O, ACC, BLOCK_O)
    if o == 0:
        tl.store(SIGMA, sg)
    _write_row(W, W, OUT, o, K, sg, sg, ACC, BLOCK, False)


@triton.jit
def sn_bwd_part_kernel(
    G,  # the gradient of W / sigma
    W,
    PART,  # out: per row o, <G[o, :], W[o, :]>
    K,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    o = tl.program_id(0)
    tl.store(PART + o, _row_dot(G, W, o, K, ACC, BLOCK, True))


@triton.jit
def sn_bwd_out_kernel(
    G,
    U,
    V,
    PART,
    SIGMA,
    GW,  # out: W's gradient, G / sigma - <G, W> / sigma^2 u v^T
    O,
    K,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    o = tl.program_id(0)
    s = _total(PART, O, ACC, BLOCK_O)
    sg = tl.load(SIGMA).to(ACC)
    _write_row(G, V, GW, o, K, sg, s / (sg * sg) * tl.load(U + o).to(ACC), ACC, BLOCK, True)


def _blocks(o, k):
    return (min(1024, triton.next_power_of_2(max(k, 16))), min(1024, triton.next_power_of_2(max(o, 16))))


def _check(w, u, v):
    if w.dim() != 2 or u.shape != (w.shape[0],) or v.shape != (w.shape[1],):
        raise ValueError(
            f"i2i_fast spectral_norm_scale: weight (O, K), u (O,), v (K,) expected, got "
            f"{tuple(w.shape)}, {tuple(u.shape)}, {tuple(v.shape)}"
        )


@triton_op("i2i_fast::triton_spectral_norm_scale", mutates_args=())
@on_device
def spectral_norm_scale(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(weight, u, v)
    w, u, v = weight.contiguous(), u.contiguous(), v.contiguous()
    o, k = w.shape
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    out = torch.empty_like(w)
    sigma = w.new_empty((), dtype=acc)
    part = w.new_empty((max(o, 1),), dtype=acc)
    if o > 0:
        blk, blk_o = _blocks(o, k)
        wrap_triton(sn_fwd_part_kernel)[(o,)](w, u, v, part, k, ACC=_acc(w), BLOCK=blk)
        wrap_triton(sn_fwd_out_kernel)[(o,)](w, part, out, sigma, o, k, ACC=_acc(w), BLOCK=blk, BLOCK_O=blk_o)
    else:
        sigma.zero_()
    return out, sigma


@triton_op("i2i_fast::triton_spectral_norm_scale_bwd", mutates_args=())
@on_device
def spectral_norm_scale_bwd(
    grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    _check(weight, u, v)
    if sigma.numel() != 1:
        raise ValueError("i2i_fast spectral_norm_scale_bwd: sigma must have one element")
    w, u, v = weight.contiguous(), u.contiguous(), v.contiguous()
    g = grad.to(w.dtype).contiguous()
    o, k = w.shape
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    gw = torch.empty_like(w)
    part = w.new_empty((max(o, 1),), dtype=acc)
    if o > 0:
        blk, blk_o = _blocks(o, k)
        wrap_triton(sn_bwd_part_kernel)[(o,)](g, w, part, k, ACC=_acc(w), BLOCK=blk)
        wrap_triton(sn_bwd_out_kernel)[(o,)](
            g, u, v, part, sigma.to(acc), gw, o, k, ACC=_acc(w), BLOCK=blk, BLOCK_O=blk_o
        )
    return gw
