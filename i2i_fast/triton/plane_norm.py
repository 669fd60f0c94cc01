"""Triton kernels of the plane-affine normalization ops (plane_norm_stats, plane_norm_apply,
plane_norm_apply_sums, plane_norm_apply_bwd, plane_norm_coefs, plane_norm_coefs_bwd,
plane_norm_update_running; schemas and math in csrc/ops.cpp, csrc/plane_norm_coefs.h,
i2i_fast/ops/plane_norm.py). The plane kernels run one program per (n, c) plane, strided so NCHW and channels_last work without a copy. The output
pad is a mirrored read in the forward and a fixed-order gather of the (up to 3 x 3) mirror
sources in the backward: no atomics."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..codes import NormKind
from . import on_device
from .instance_norm import (
    _acc,
    _act,
    _act_grad,
    _fold,
    _inv_std,
    _layout,
    _mean_m2,
    _reflect,
    _shifted_sums,
    _slope,
    _span,
    plane_grid,
)

# the NormKind codes as constexprs (a @jit function reads no other globals)
INSTANCE: tl.constexpr = tl.constexpr(NormKind.INSTANCE)
ILN: tl.constexpr = tl.constexpr(NormKind.ILN)
BATCH: tl.constexpr = tl.constexpr(NormKind.BATCH)
# how a coefficient parameter (rho, gamma, beta) is laid out: absent, one value per channel, or
# one per (n, c) plane
ABSENT: tl.constexpr = tl.constexpr(0)
PER_CHANNEL: tl.constexpr = tl.constexpr(1)
PER_PLANE: tl.constexpr = tl.constexpr(2)


@triton.jit
def _plane_coefs(pid, C, SLOPE: tl.constexpr, MEAN, SCALE, SHIFT, ACC: tl.constexpr):
    """Sample and channel of plane pid (int64) and its constants in the accumulation dtype."""
    return (
        (pid // C).to(tl.int64),
        (pid % C).to(tl.int64),
        tl.full((), SLOPE, ACC),
        tl.load(MEAN + pid).to(ACC),
        tl.load(SCALE + pid).to(ACC),
        tl.load(SHIFT + pid).to(ACC),
    )


@triton.jit
def plane_norm_stats_kernel(
    X,
    MEAN,
    VAR,
    PART,  # SPLIT: each chunk's (mean, M2), (planes, S, 2) fp64
    C,  # channels: plane pid is (pid // C, pid % C)
    H,
    W,
    CHUNK,  # x's plane; elements per chunk program (a multiple of BLOCK)
    sN,
    sC,
    sH,
    sW,  # x's strides
    SPLIT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Mean / squared deviations of a chunk of a plane (fp64 shifted sums, _shifted_sums);
    SPLIT: the chunk's (mean, M2) go to PART (fp64) for plane_norm_stats_merge_kernel, else the
    plane's mean and biased variance."""
    pid = tl.program_id(0)
    base = (pid // C).to(tl.int64) * sN + (pid % C).to(tl.int64) * sC
    HW = H * W
    start, end = _span(CHUNK, HW)
    pivot = tl.load(X + base).to(tl.float64)  # one pivot per plane, whichever the chunk
    s1, s2 = _shifted_sums(X, base, start, end, W, sH, sW, pivot, BLOCK)
    mean, m2 = _mean_m2(pivot, s1, s2, end - start)
    if SPLIT:
        q = PART + 2 * (pid * tl.num_programs(1) + tl.program_id(1))
        tl.store(q, mean)
        tl.store(q + 1, m2)
    else:
        tl.store(MEAN + pid, mean.to(ACC))
        tl.store(VAR + pid, (m2 / HW).to(ACC))


@triton.jit
def plane_norm_stats_merge_kernel(
    PART,
    MEAN,
    VAR,
    P,
    S,  # planes; chunks per plane
    HW,
    CHUNK,  # elements per plane; per chunk (the last may have fewer)
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):  # BLOCK: planes per program
    """Chan merge of each plane's S chunk states (fp64), in chunk order (deterministic)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < P
    cnt = tl.zeros([BLOCK], ACC)
    mean = tl.zeros([BLOCK], ACC)
    m2 = tl.zeros([BLOCK], ACC)
    for j in range(0, S):
        nb = tl.minimum(CHUNK, HW - j * CHUNK).to(ACC)
        mb = tl.load(PART + 2 * (i * S + j), mask=m, other=0.0).to(ACC)
        tot = cnt + nb
        d = mb - mean
        mean += d * (nb / tot)
        m2 += tl.load(PART + 2 * (i * S + j) + 1, mask=m, other=0.0).to(ACC) + d * d * (cnt * nb / tot)
        cnt = tot
    tl.store(MEAN + i, mean.to(MEAN.dtype.element_ty), mask=m)
    tl.store(VAR + i, (m2 / HW).to(VAR.dtype.element_ty), mask=m)


@triton.jit
def plane_norm_sums_merge_kernel(
    PART,
    SUMS,
    P,
    S,  # planes; chunks per plane
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):  # BLOCK: planes per program
    """Each plane's (S1, S2): its S chunk partial sums added in chunk order."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < P
    a1 = tl.zeros([BLOCK], ACC)
    a2 = tl.zeros([BLOCK], ACC)
    for j in range(0, S):
        a1 += tl.load(PART + 2 * (i * S + j), mask=m, other=0.0).to(ACC)
        a2 += tl.load(PART + 2 * (i * S + j) + 1, mask=m, other=0.0).to(ACC)
    tl.store(SUMS + 2 * i, a1.to(SUMS.dtype.element_ty), mask=m)
    tl.store(SUMS + 2 * i + 1, a2.to(SUMS.dtype.element_ty), mask=m)


@triton.jit
def plane_norm_apply_kernel(
    X,
    R,  # the residual (HAS_R), x's shape and strides
    Y,
    MEAN,
    SCALE,
    SHIFT,  # per plane: y = act((x - mean) * scale + shift) (+ r)
    C,
    H,
    W,
    P,  # the output pad
    CHUNK,  # output elements per chunk program
    sN,
    sC,
    sH,
    sW,  # x's strides
    oN,
    oC,
    oH,
    oW,  # Y's strides
    SLOPE: tl.constexpr,
    HAS_R: tl.constexpr,
    ACT: tl.constexpr,  # an Activation code
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n, c, slope, mean, scale, shift = _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC)
    xbase = n * sN + c * sC
    ybase = n * oN + c * oC
    Wo = W + 2 * P
    start, end = _span(CHUNK, (H + 2 * P) * Wo)
    offs = tl.arange(0, BLOCK)
    for s0 in range(start, end, BLOCK):
        idx = s0 + offs
        m = idx < end
        oh = idx // Wo
        ow = idx % Wo
        src = xbase + _reflect(oh - P, H).to(tl.int64) * sH + _reflect(ow - P, W).to(tl.int64) * sW
        x = tl.load(X + src, mask=m, other=0.0).to(ACC)
        y = _act((x - mean) * scale + shift, ACT, slope)  # exact shift on constant planes
        if HAS_R:
            y += tl.load(R + src, mask=m, other=0.0).to(ACC)
        tl.store(Y + ybase + oh.to(tl.int64) * oH + ow.to(tl.int64) * oW, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _d_dz(
    X,
    G,
    xbase,
    gbase,
    idx,
    m,
    H,
    W,
    P,
    sH,
    sW,
    gH,
    gW,
    mean,
    scale,
    shift,
    slope,
    HAS_P: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
):
    ih = idx // W
    iw = idx % W
    d = tl.load(X + xbase + ih.to(tl.int64) * sH + iw.to(tl.int64) * sW, mask=m, other=0.0).to(ACC) - mean
    g = _fold(G, gbase, ih, iw, m, H, W, P, gH, gW, HAS_P, ACC)
    dz = g * _act_grad(d * scale + shift, ACT, slope)
    return tl.where(m, d, 0.0), tl.where(m, dz, 0.0)


@triton.jit
def plane_norm_apply_sums_kernel(
    G,  # the output gradient (padded when HAS_P)
    X,
    SUMS,  # out: per plane (SPLIT: per chunk) sum dz, sum dz (x - mean)
    MEAN,
    SCALE,
    SHIFT,
    C,
    H,
    W,
    P,
    CHUNK,  # as plane_norm_apply_kernel's
    sN,
    sC,
    sH,
    sW,  # x's strides
    gN,
    gC,
    gH,
    gW,  # G's strides
    SLOPE: tl.constexpr,
    HAS_P: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """(S1, S2) of a plane, or with SPLIT of a chunk of it (plane_norm_sums_merge_kernel adds them)."""
    pid = tl.program_id(0)
    n, c, slope, mean, scale, shift = _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC)
    offs = tl.arange(0, BLOCK)
    start, end = _span(CHUNK, H * W)
    a1 = tl.zeros([BLOCK], tl.float64)  # fp64 lanes (as the CUDA sums): no error growth with
    a2 = tl.zeros([BLOCK], tl.float64)  # the values per lane on large planes
    for s0 in range(start, end, BLOCK):
        idx = s0 + offs
        d, dz = _d_dz(
            X,
            G,
            n * sN + c * sC,
            n * gN + c * gC,
            idx,
            idx < end,
            H,
            W,
            P,
            sH,
            sW,
            gH,
            gW,
            mean,
            scale,
            shift,
            slope,
            HAS_P,
            ACT,
            ACC,
        )
        a1 += dz.to(tl.float64)
        a2 += dz.to(tl.float64) * d
    q = SUMS + 2 * (pid * tl.num_programs(1) + tl.program_id(1)) if SPLIT else SUMS + 2 * pid
    tl.store(q, tl.sum(a1, 0).to(SUMS.dtype.element_ty))
    tl.store(q + 1, tl.sum(a2, 0).to(SUMS.dtype.element_ty))


@triton.jit
def plane_norm_apply_bwd_kernel(
    G,
    X,
    GX,
    MEAN,
    SCALE,
    SHIFT,
    C0,
    C1,  # per plane (plane_norm_coefs_bwd): gx = scale * dz + c0 + c1 (x - mean)
    C,
    H,
    W,
    P,
    CHUNK,  # as plane_norm_apply_kernel's (CHUNK: input elements)
    sN,
    sC,
    sH,
    sW,  # x's strides
    gN,
    gC,
    gH,
    gW,  # G's strides
    SLOPE: tl.constexpr,
    HAS_P: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n, c, slope, mean, scale, shift = _plane_coefs(pid, C, SLOPE, MEAN, SCALE, SHIFT, ACC)
    c0 = tl.load(C0 + pid).to(ACC)
    c1 = tl.load(C1 + pid).to(ACC)
    xbase = n * sN + c * sC
    offs = tl.arange(0, BLOCK)
    start, end = _span(CHUNK, H * W)
    for s0 in range(start, end, BLOCK):
        idx = s0 + offs
        m = idx < end
        d, dz = _d_dz(
            X, G, xbase, n * gN + c * gC, idx, m, H, W, P, sH, sW, gH, gW, mean, scale, shift, slope, HAS_P, ACT, ACC
        )
        off = xbase + (idx // W).to(tl.int64) * sH + (idx % W).to(tl.int64) * sW
        tl.store(GX + off, (scale * dz + c0 + c1 * d).to(GX.dtype.element_ty), mask=m)


def _strides(t):
    return tuple(t.stride())


def _plane_arg(t, x):
    return t.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()


def _merge_grid(planes):
    return (triton.cdiv(planes, 128),)


@triton_op("i2i_fast::triton_plane_norm_stats", mutates_args=())
@on_device
def plane_norm_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    sd = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean = x.new_full((n, c), float("nan"), dtype=sd)
    var = x.new_full((n, c), float("nan"), dtype=sd)
    if x.numel() > 0:
        S, chunk, block = plane_grid(n * c, h * w, x.device)
        part = x.new_empty((n * c, S, 2), dtype=torch.float64) if S > 1 else mean
        wrap_triton(plane_norm_stats_kernel)[(n * c, S)](
            x, mean, var, part, c, h, w, chunk, *_strides(x), SPLIT=S > 1, ACC=_acc(x), BLOCK=block
        )
        if S > 1:
            wrap_triton(plane_norm_stats_merge_kernel)[_merge_grid(n * c)](
                part, mean, var, n * c, S, h * w, chunk, ACC=tl.float64, BLOCK=128
            )
    return mean, var


@triton_op("i2i_fast::triton_plane_norm_apply", mutates_args=())
@on_device
def plane_norm_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor],
    act: int,
    slope: float,
    pad: int,
) -> torch.Tensor:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    y = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype, device=x.device, memory_format=fmt)
    r = residual.contiguous(memory_format=fmt) if residual is not None else x
    if y.numel() > 0:
        S, chunk, block = plane_grid(n * c, y.shape[2] * y.shape[3], x.device)
        wrap_triton(plane_norm_apply_kernel)[(n * c, S)](
            x,
            r,
            y,
            _plane_arg(mean, x),
            _plane_arg(scale, x),
            _plane_arg(shift, x),
            c,
            h,
            w,
            pad,
            chunk,
            *_strides(x),
            *_strides(y),
            _slope(act, slope),
            HAS_R=residual is not None,
            ACT=act,
            ACC=_acc(x),
            BLOCK=block,
        )
    return y


@triton_op("i2i_fast::triton_plane_norm_apply_sums", mutates_args=())
@on_device
def plane_norm_apply_sums(
    grad: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    act: int,
    slope: float,
    pad: int,
) -> torch.Tensor:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    sd = torch.float64 if x.dtype == torch.float64 else torch.float32
    sums = x.new_zeros((n, c, 2), dtype=sd)
    if x.numel() > 0:
        g = grad.contiguous(memory_format=fmt)
        S, chunk, block = plane_grid(n * c, h * w, x.device)
        part = x.new_empty((n * c, S, 2), dtype=torch.float64) if S > 1 else sums
        wrap_triton(plane_norm_apply_sums_kernel)[(n * c, S)](
            g,
            x,
            part,
            _plane_arg(mean, x),
            _plane_arg(scale, x),
            _plane_arg(shift, x),
            c,
            h,
            w,
            pad,
            chunk,
            *_strides(x),
            *_strides(g),
            _slope(act, slope),
            HAS_P=pad > 0,
            ACT=act,
            ACC=_acc(x),
            SPLIT=S > 1,
            BLOCK=block,
        )
        if S > 1:
            wrap_triton(plane_norm_sums_merge_kernel)[_merge_grid(n * c)](
                part, sums, n * c, S, ACC=tl.float64, BLOCK=128
            )
    return sums


@triton_op("i2i_fast::triton_plane_norm_apply_bwd", mutates_args=())
@on_device
def plane_norm_apply_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    c0: torch.Tensor,
    c1: torch.Tensor,
    act: int,
    slope: float,
    pad: int,
) -> torch.Tensor:
    x, fmt, _ = _layout(x)
    n, c, h, w = x.shape
    gx = torch.empty_like(x, memory_format=fmt)
    if x.numel() > 0:
        g = grad.contiguous(memory_format=fmt)
        S, chunk, block = plane_grid(n * c, h * w, x.device)
        wrap_triton(plane_norm_apply_bwd_kernel)[(n * c, S)](
            g,
            x,
            gx,
            _plane_arg(mean, x),
            _plane_arg(scale, x),
            _plane_arg(shift, x),
            _plane_arg(c0, x),
            _plane_arg(c1, x),
            c,
            h,
            w,
            pad,
            chunk,
            *_strides(x),
            *_strides(g),
            _slope(act, slope),
            HAS_P=pad > 0,
            ACT=act,
            ACC=_acc(x),
            BLOCK=block,
        )
    return gx


# ---- plane_norm_coefs / plane_norm_coefs_bwd (schemas in csrc/ops.cpp): the (N, C) coefficient math of
# csrc/plane_norm_coefs.h in fp64 with every plane in ONE program, so a Triton norm is 3 launches
# forward (stats, coefs, apply) where the torch-op math of _norm.coefs took ~25. Reductions over
# the channels of a sample (ILN, LAYER) or the samples of a channel (BATCH, batch norm) are
# tile reductions in the program: deterministic, no atomics.
COEF_TILE_MAX = 4096  # padded N x C tiles larger than this keep _norm.coefs' torch math (the
# backward's fp64 intermediates of a larger tile spill registers; a 16 x 256 batch still fits)


def coefs_fit(n: int, c: int) -> bool:
    return triton.next_power_of_2(max(n, 1)) * triton.next_power_of_2(max(c, 1)) <= COEF_TILE_MAX


@triton.jit
def _f64(v):
    return tl.zeros([], tl.float64) + v  # an int argument (maybe specialized to 1) as fp64


@triton.jit
def _unb(nf):
    # n / (n - 1); NaN for a single value (torch.var), as coef_unb
    return tl.where(nf > 1, nf / tl.where(nf > 1, nf - 1, 1.0), float("nan"))


@triton.jit
def _coef_param(P, p, c, m, MODE: tl.constexpr, default):
    if MODE == ABSENT:
        v = tl.full(p.shape, default, tl.float64)
    elif MODE == PER_CHANNEL:
        v = tl.load(P + c, mask=m, other=default).to(tl.float64)
    else:
        v = tl.load(P + p, mask=m, other=default).to(tl.float64)
    return v


@triton.jit
def _coefs_tile(
    MEAN,
    VAR,
    RHO,
    G,
    B,
    N,
    C,
    hw,
    EPS: tl.constexpr,
    KIND: tl.constexpr,
    G_MODE: tl.constexpr,
    B_MODE: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
):
    """coefs_sample / coefs_channel_bn of csrc/plane_norm_coefs.h for the whole (N, C) tile: scale,
    shift and the intermediates the backward reuses (rl: 1/sqrt(LN var + eps) per sample, or
    batch norm's 1/sqrt(var + eps) per channel)."""
    zi = tl.zeros([BN, BC], tl.int32)
    n = tl.arange(0, BN)[:, None] + zi
    c = tl.arange(0, BC)[None, :] + zi
    m = (n < N) & (c < C)
    p = n * C + c
    mean = tl.load(MEAN + p, mask=m, other=0.0).to(tl.float64)
    var = tl.load(VAR + p, mask=m, other=0.0).to(tl.float64)
    g = _coef_param(G, p, c, m, G_MODE, 1.0)
    b = _coef_param(B, p, c, m, B_MODE, 0.0)
    rho = _coef_param(RHO, p, c, m, PER_CHANNEL if KIND == ILN else ABSENT, 0.0)
    zf = tl.zeros([BN, BC], tl.float64)
    if KIND == BATCH:  # Chan merge of the plane statistics over the samples of each channel
        dm = tl.where(m, mean - (tl.sum(mean, 0) / _f64(N))[None, :], 0.0)
        vb = tl.sum(var + dm * dm, 0) / _f64(N)
        rl = _inv_std(vb, EPS)[None, :] + zf
        sd = zf
        rin = zf
        sc = g * rl
        sh = b + sc * dm
    else:  # Chan merge over the channels of each sample
        nf = _f64(C) * _f64(hw)
        dm = tl.where(m, mean - (tl.sum(mean, 1) / _f64(C))[:, None], 0.0)
        vln = (tl.sum(tl.where(m, (var + dm * dm) * _f64(hw), 0.0), 1) * (_unb(nf) / nf))[:, None] + zf
        rl = 1.0 / tl.sqrt(vln + EPS)
        sd = tl.sqrt(vln)
        if KIND == INSTANCE:
            rin = _inv_std(var, EPS)
            sc = g * rin
            sh = b
        elif KIND == ILN:
            rin = 1.0 / tl.sqrt(var * _unb(_f64(hw)) + EPS)
            sc = g * (rho * rin + (1 - rho) * rl)
            sh = b + g * (1 - rho) * rl * dm
        else:
            rin = zf
            sc = g / (sd + EPS)
            sh = b + sc * dm
    return m, p, c, g, rho, dm, rin, rl, sd, sc, sh


@triton.jit
def plane_norm_coefs_kernel(
    MEAN,
    VAR,  # the (N, C) plane statistics
    RHO,
    G,
    B,  # the norm's parameters (RHO: ILN only)
    SCALE,
    SHIFT,  # out: (N, C)
    N,
    C,
    hw,  # hw: elements per plane
    EPS: tl.constexpr,
    KIND: tl.constexpr,  # a NormKind code
    G_MODE: tl.constexpr,
    B_MODE: tl.constexpr,  # ABSENT, PER_CHANNEL or PER_PLANE
    BN: tl.constexpr,
    BC: tl.constexpr,
):  # N and C padded to powers of 2
    m, p, c, g, rho, dm, rin, rl, sd, sc, sh = _coefs_tile(
        MEAN, VAR, RHO, G, B, N, C, hw, EPS, KIND, G_MODE, B_MODE, BN, BC
    )
    tl.store(SCALE + p, sc.to(SCALE.dtype.element_ty), mask=m)
    tl.store(SHIFT + p, sh.to(SHIFT.dtype.element_ty), mask=m)


@triton.jit
def _store_param_grad(D, d, p, m, C, MODE: tl.constexpr, BC: tl.constexpr):
    # per-channel parameter: summed over the samples (tile reduction); per-plane: as is
    if MODE == PER_CHANNEL:
        cs = tl.arange(0, BC)
        tl.store(D + cs, tl.sum(tl.where(m, d, 0.0), 0).to(D.dtype.element_ty), mask=cs < C)
    elif MODE == PER_PLANE:
        tl.store(D + p, d.to(D.dtype.element_ty), mask=m)


@triton.jit
def plane_norm_coefs_bwd_kernel(
    MEAN,
    VAR,
    RHO,
    G,
    B,  # as plane_norm_coefs_kernel's
    SUMS,  # (N, C, 2): plane_norm_apply_sums' sum dz, sum dz (x - mean)
    C0,
    C1,  # out: plane_norm_apply_bwd's per-plane coefficients
    DRHO,
    DG,
    DB,  # out: the parameter gradients
    N,
    C,
    hw,
    EPS: tl.constexpr,
    KIND: tl.constexpr,
    G_MODE: tl.constexpr,
    B_MODE: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
):
    """coefs_backward_sample / coefs_backward_channel_bn: c0, c1 of plane_norm_apply_bwd and the
    parameter gradients from the plane sums (S1 = sum dz, S2 = sum dz (x - mean))."""
    m, p, c, g, rho, dm, rin, rl, sd, sc, sh = _coefs_tile(
        MEAN, VAR, RHO, G, B, N, C, hw, EPS, KIND, G_MODE, B_MODE, BN, BC
    )
    s1 = tl.load(SUMS + 2 * p, mask=m, other=0.0).to(tl.float64)
    s2 = tl.load(SUMS + 2 * p + 1, mask=m, other=0.0).to(tl.float64)
    hwf = _f64(hw)
    drho = tl.zeros([BN, BC], tl.float64)
    if KIND == BATCH:
        s2 = s2 + dm * s1  # sum dz (x - batch mean) per plane
        big = _f64(N) * hwf
        c1 = -g * rl * rl * rl * (tl.sum(tl.where(m, s2, 0.0), 0) / big)[None, :]
        c0 = -g * rl * (tl.sum(s1, 0) / big)[None, :] + c1 * dm
        dg = s2 * rl
    else:
        nf = _f64(C) * hwf
        l_unb = _unb(nf) / nf
        if KIND == INSTANCE:
            dv = s2 * g * -0.5 * rin * rin * rin
            dg = s2 * rin
            t = tl.zeros([BN, BC], tl.float64)
            dm2 = t
        elif KIND == ILN:
            k = rho * rin + (1 - rho) * rl
            dg = s2 * k + s1 * (1 - rho) * rl * dm
            drho = g * s2 * (rin - rl) - g * s1 * rl * dm
            t = s1 * g * (1 - rho) * rl
            dr = tl.sum(tl.where(m, g * s2 * (1 - rho) + s1 * g * (1 - rho) * dm, 0.0), 1)[:, None]
            dv = g * s2 * rho * -0.5 * rin * rin * rin * _unb(hwf)
            dm2 = dr * -0.5 * rl * rl * rl * l_unb
        else:
            r = 1.0 / (sd + EPS)
            dg = s2 * r + s1 * r * dm
            t = s1 * g * r
            dr = tl.sum(tl.where(m, g * s2 + g * s1 * dm, 0.0), 1)[:, None]
            dv = tl.zeros([BN, BC], tl.float64)
            dm2 = -dr * r * r / (2 * tl.where(m, sd, 1.0)) * l_unb  # (padding rows: no 0 / 0)
        tsum = tl.sum(tl.where(m, t, 0.0), 1)[:, None]
        c1 = (dv + dm2 * hwf) * 2.0 / hwf
        c0 = (t - tsum / _f64(C) + dm2 * 2 * hwf * dm - sc * s1) / hwf
    tl.store(C0 + p, c0.to(C0.dtype.element_ty), mask=m)
    tl.store(C1 + p, c1.to(C1.dtype.element_ty), mask=m)
    _store_param_grad(DRHO, drho, p, m, C, PER_CHANNEL if KIND == ILN else ABSENT, BC)
    _store_param_grad(DG, dg, p, m, C, G_MODE, BC)
    _store_param_grad(DB, s1, p, m, C, B_MODE, BC)


def _coef_inputs(mean, var, rho, gamma, beta, kind, hw):
    """The C++ op's checks (csrc/plane_norm.h prep_coefs); tensors in the statistics dtype, flat."""
    if mean.dim() != 2 or var.shape != mean.shape or var.device != mean.device:
        raise ValueError("i2i_fast plane_norm_coefs: mean and var must be (N, C) on one device")
    if kind not in set(NormKind):
        raise ValueError(f"i2i_fast plane_norm_coefs: unknown kind {kind}")
    if hw <= 0:
        raise ValueError("i2i_fast plane_norm_coefs: hw must be > 0")
    n, c = mean.shape
    sd = torch.float64 if mean.dtype == torch.float64 else torch.float32
    if kind == NormKind.ILN and (rho is None or rho.numel() != c):
        raise ValueError("i2i_fast plane_norm_coefs: rho must have C elements")
    for t in (rho, gamma, beta):
        if t is not None and t.device != mean.device:
            raise ValueError(f"i2i_fast plane_norm_coefs: parameters must be on {mean.device}")
    for t in (gamma, beta):
        if t is not None and t.numel() not in (c, n * c):
            raise ValueError("i2i_fast plane_norm_coefs: gamma/beta must have C or N*C elements")
        if t is not None and kind == NormKind.BATCH and t.numel() != c:
            raise ValueError("i2i_fast plane_norm_coefs: batch norm (kind 3) takes per-channel gamma/beta (C elements)")
    flat = [None if t is None else t.to(sd).contiguous().reshape(-1) for t in (mean, var, rho, gamma, beta)]
    modes = [ABSENT if t is None else PER_CHANNEL if t.numel() == c else PER_PLANE for t in (gamma, beta)]
    return flat, modes, sd


def _coef_meta(n, c, kind, eps, modes):
    return dict(
        EPS=float(eps),
        KIND=kind,
        G_MODE=modes[0].value,
        B_MODE=modes[1].value,
        BN=triton.next_power_of_2(max(n, 1)),
        BC=triton.next_power_of_2(max(c, 1)),
        num_warps=4 if n * c <= 1024 else 16,
    )


@triton_op("i2i_fast::triton_plane_norm_coefs", mutates_args=())
@on_device
def plane_norm_coefs(
    mean: torch.Tensor,
    var: torch.Tensor,
    rho: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    kind: int,
    hw: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    (m, v, r, g, b), modes, sd = _coef_inputs(mean, var, rho, gamma, beta, kind, hw)
    n, c = mean.shape
    scale = mean.new_empty((n, c), dtype=sd)
    shift = mean.new_empty((n, c), dtype=sd)
    if n * c > 0:
        wrap_triton(plane_norm_coefs_kernel)[(1,)](
            m,
            v,
            r if r is not None else m,
            g if g is not None else m,
            b if b is not None else m,
            scale,
            shift,
            n,
            c,
            hw,
            **_coef_meta(n, c, kind, eps, modes),
        )
    return scale, shift


@triton_op("i2i_fast::triton_plane_norm_coefs_bwd", mutates_args=())
@on_device
def plane_norm_coefs_bwd(
    mean: torch.Tensor,
    var: torch.Tensor,
    rho: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    sums: torch.Tensor,
    kind: int,
    hw: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    (m, v, r, g, b), modes, sd = _coef_inputs(mean, var, rho, gamma, beta, kind, hw)
    n, c = mean.shape
    if sums.numel() != n * c * 2 or sums.device != mean.device:
        raise ValueError("i2i_fast plane_norm_coefs_bwd: sums must be (N, C, 2) on the statistics' device")
    s = sums.to(sd).contiguous()
    c0 = mean.new_empty((n, c), dtype=sd)
    c1 = mean.new_empty((n, c), dtype=sd)
    grads = [mean.new_zeros((0 if t is None else t.numel(),), dtype=sd) for t in (r, g, b)]
    if n * c > 0:
        wrap_triton(plane_norm_coefs_bwd_kernel)[(1,)](
            m,
            v,
            r if r is not None else m,
            g if g is not None else m,
            b if b is not None else m,
            s,
            c0,
            c1,
            *(d if d.numel() else c0 for d in grads),
            n,
            c,
            hw,
            **_coef_meta(n, c, kind, eps, modes),
        )
    return (c0, c1, *grads)


@triton.jit
def plane_norm_update_running_kernel(
    MEAN,
    VAR,
    RM,
    RV,
    NBT,
    N,
    C,
    hw,
    MOMENTUM: tl.constexpr,
    KIND: tl.constexpr,
    HAS_NBT: tl.constexpr,
    BC: tl.constexpr,
):
    # csrc/plane_norm_coefs.h running_channel: fp64 over the planes (N, C) in plane order
    pid = tl.program_id(0)
    c = pid * BC + tl.arange(0, BC)
    live = c < C
    mb = tl.zeros([BC], tl.float64)
    for n in range(0, N):
        mb += tl.load(MEAN + n * C + c, mask=live, other=0.0).to(tl.float64)
    mb = mb / N
    vb = tl.zeros([BC], tl.float64)
    for n in range(0, N):
        v = tl.load(VAR + n * C + c, mask=live, other=0.0).to(tl.float64)
        if KIND == BATCH:  # the batch's biased variance: the planes' variances and mean offsets
            d = tl.load(MEAN + n * C + c, mask=live, other=0.0).to(tl.float64) - mb
            v += d * d
        vb += v
    vb = vb / N
    big = _f64(hw) * (N if KIND == BATCH else 1)
    m = tl.full([], MOMENTUM, tl.float64)  # a constexpr: a float argument would be an fp32 scalar
    rm = tl.load(RM + c, mask=live, other=0.0).to(tl.float64)
    rv = tl.load(RV + c, mask=live, other=0.0).to(tl.float64)
    tl.store(RM + c, ((1 - m) * rm + m * mb).to(RM.dtype.element_ty), mask=live)
    tl.store(RV + c, ((1 - m) * rv + m * vb * (big / (big - 1))).to(RV.dtype.element_ty), mask=live)
    if HAS_NBT:
        if pid == 0:
            tl.store(NBT, tl.load(NBT) + 1)


@triton_op(
    "i2i_fast::triton_plane_norm_update_running", mutates_args=("running_mean", "running_var", "num_batches_tracked")
)
@on_device
def plane_norm_update_running(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: Optional[torch.Tensor],
    mean: torch.Tensor,
    var: torch.Tensor,
    kind: int,
    hw: int,
    momentum: float,
) -> None:
    # the C++ op's checks (csrc/plane_norm.h prep_running)
    if kind not in (NormKind.BATCH, NormKind.INSTANCE):
        raise ValueError(f"i2i_fast plane_norm_update_running: kind must be BATCH or INSTANCE, got {kind}")
    if mean.dim() != 2 or var.shape != mean.shape:
        raise ValueError("i2i_fast plane_norm_update_running: mean and var must be (N, C)")
    n, c = mean.shape
    for t in (running_mean, running_var):
        if (
            t.dim() != 1
            or t.numel() != c
            or not t.is_contiguous()
            or t.device != mean.device
            or not t.is_floating_point()
        ):
            raise ValueError(
                f"i2i_fast plane_norm_update_running: running statistics must be contiguous floating (C,) = ({c},) "
                "tensors on the statistics' device"
            )
    if running_var.dtype != running_mean.dtype:
        raise ValueError("i2i_fast plane_norm_update_running: running_mean and running_var dtypes differ")
    nbt = num_batches_tracked
    if nbt is not None and (nbt.numel() != 1 or nbt.dtype != torch.int64 or nbt.device != mean.device):
        raise ValueError(
            "i2i_fast plane_norm_update_running: num_batches_tracked must be one int64 on the statistics' device"
        )
    if hw <= 0 or (n * hw if kind == NormKind.BATCH else hw) <= 1:
        raise ValueError("i2i_fast plane_norm_update_running: needs more than 1 value per channel / plane")
    sd = torch.float64 if mean.dtype == torch.float64 else torch.float32
    bc = min(triton.next_power_of_2(max(c, 1)), 1024)
    wrap_triton(plane_norm_update_running_kernel)[(max(1, triton.cdiv(c, bc)),)](
        mean.to(sd).contiguous(),
        var.to(sd).contiguous(),
        running_mean,
        running_var,
        nbt if nbt is not None else running_mean,
        n,
        c,
        hw,
        MOMENTUM=momentum,
        KIND=kind,
        HAS_NBT=nbt is not None,
        BC=bc,
    )
