"""Triton instance norm: one program per (n, c) plane, looping over H*W in BLOCK chunks, or,
when the planes alone cannot fill the GPU (batch 1, large maps: plane_grid), S programs per
plane, one chunk each: a first kernel writes each chunk's partial sums (fp64) and the second
adds them in chunk order (deterministic, no atomics) before it normalizes its chunk (the
input gradient in the backward). The epilogue (activation, residual) is fused. Strides make
NCHW and channels_last work without a copy.

The optional reflection pad of the output (pad > 0, HAS_P: pad == 0 keeps the unpadded code)
is a mirrored read of x (and of the residual, x's shape) for each padded output element in the
forward, and in the backward a fixed-order gather of the (up to 3 x 3) padded positions that
mirror each input pixel (_fold): no atomics, deterministic. The statistics are x's. The mirror
helpers here are shared with triton/plane_norm.py."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._backend import triton_interpret
from ..codes import Activation
from . import on_device

# the Activation codes as constexprs (a @jit function reads no other globals)
RELU: tl.constexpr = tl.constexpr(Activation.RELU)
LEAKY_RELU: tl.constexpr = tl.constexpr(Activation.LEAKY_RELU)
TANH: tl.constexpr = tl.constexpr(Activation.TANH)


@triton.jit
def _tanh(z):
    # tanh without libdevice, so the kernel also runs under the interpreter
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def _act(z, ACT: tl.constexpr, slope):
    if ACT == RELU:
        z = tl.where(z < 0, 0.0, z)
    elif ACT == LEAKY_RELU:
        z = tl.where(z < 0, z * slope, z)
    elif ACT == TANH:
        z = _tanh(z)
    return z


@triton.jit
def _act_grad(z, ACT: tl.constexpr, slope):
    if ACT == RELU:
        d = tl.where(z <= 0, 0.0, 1.0)
    elif ACT == LEAKY_RELU:
        d = tl.where(z > 0, 1.0, slope)
    elif ACT == TANH:
        t = _tanh(z)
        d = 1.0 - t * t
    else:
        d = tl.full(z.shape, 1.0, z.dtype)
    return d


@triton.jit
def _reflect(t, n):
    t = tl.where(t < 0, -t, t)
    return tl.where(t >= n, 2 * (n - 1) - t, t)


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
def _plane(pid, C, sN, sC):
    n = pid // C
    c = pid % C
    return c, n.to(tl.int64) * sN + c.to(tl.int64) * sC


@triton.jit
def _channel(P, c, HAS: tl.constexpr, default, ACC: tl.constexpr):
    # c: the channel, or the plane for a per-(n, c) affine
    if HAS:
        v = tl.load(P + c).to(ACC)
    else:
        v = tl.full((), default, ACC)
    return v


@triton.jit
def _xhat_dz(
    X,
    G,
    off,
    gbase,
    idx,
    m,
    Hi,
    Wi,
    P,
    gH,
    gW,
    mean,
    rstd,
    w,
    b,
    slope,
    HAS_P: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
):
    """Normalized input and dL/dz (through the activation), recomputed from x and the gradient
    (with HAS_P, the gradient of the unpadded output: the fold of the padded one)."""
    xh = (tl.load(X + off, mask=m, other=0.0).to(ACC) - mean) * rstd
    if HAS_P:
        g = _fold(G, gbase, idx // Wi, idx % Wi, m, Hi, Wi, P, gH, gW, True, ACC)
    else:  # G has x's shape and strides
        g = tl.load(G + off, mask=m, other=0.0).to(ACC)
    dz = g * _act_grad(xh * w + b, ACT, slope)
    return xh, tl.where(m, dz, 0.0)


@triton.jit
def _inv_std(var, eps):
    # 1 / sqrt(var + eps), 0 where var + eps == 0: torch's rule (norm_math.h inv_std)
    v = var + eps
    return tl.where(v == 0, 0.0, 1.0 / tl.sqrt(tl.where(v == 0, 1.0, v)))


@triton.jit
def _shifted_sums(X, base, start, end, W, sH, sW, pivot, BLOCK: tl.constexpr):
    """Sums of d = x - pivot and d^2 over the elements [start, end) of a plane (element idx at
    base + (idx // W) sH + (idx % W) sW), one pass, fp64 lanes. Shifted by a value of the plane
    (pivot), the sums round relative to the data's spread, not to its offset (x + 1e6); fp64
    keeps their error from growing with the plane (32768^2) and d^2 in range (|x| to 1e38)."""
    offs = tl.arange(0, BLOCK)
    a1 = tl.zeros([BLOCK], tl.float64)
    a2 = tl.zeros([BLOCK], tl.float64)
    for s0 in range(start, end, BLOCK):
        idx = s0 + offs
        m = idx < end
        off = base + (idx // W).to(tl.int64) * sH + (idx % W).to(tl.int64) * sW
        d = tl.where(m, tl.load(X + off, mask=m, other=0.0).to(tl.float64) - pivot, 0.0)
        a1 += d
        a2 += d * d
    return tl.sum(a1, 0), tl.sum(a2, 0)


@triton.jit
def _mean_m2(pivot, s1, s2, n):
    """Mean and sum of squared deviations of n values from _shifted_sums (as norm_math.h
    centered_m2: never negative, NaN propagates)."""
    q = s1 / n
    m2 = s2 - s1 * q
    return pivot + q, tl.where(m2 < 0, 0.0, m2)


@triton.jit
def _span(CHUNK, total):
    # this program's elements of its plane: [start, end), chunk program_id(1)
    start = tl.program_id(1) * CHUNK
    return start, tl.minimum(start + CHUNK, total)


@triton.jit
def _merged(PART, pid):
    """Plane pid's two fp64 sums: its chunk partials (PART, (planes, S, 2)) added in chunk order,
    so every chunk program of the plane gets the same bits."""
    S = tl.num_programs(1)
    s1 = tl.zeros((), tl.float64)
    s2 = tl.zeros((), tl.float64)
    for j in range(0, S):
        s1 += tl.load(PART + 2 * (pid * S + j))
        s2 += tl.load(PART + 2 * (pid * S + j) + 1)
    return s1, s2


@triton.jit
def _store_partial(PART, pid, s1, s2):
    # chunk program_id(1)'s two fp64 sums, in its fixed slot (no atomics)
    q = PART + 2 * (pid * tl.num_programs(1) + tl.program_id(1))
    tl.store(q, s1)
    tl.store(q + 1, s2)


@triton.jit
def instance_norm_stats_kernel(
    X,
    PART,  # out: each chunk's two fp64 sums, (planes, S, 2)
    C,
    HW,
    CHUNK,  # as instance_norm_fwd_kernel's
    sN,
    sC,
    sS,  # x's sample, channel and W strides
    Wi,
    sH,  # x's W; its H stride
    BLOCK: tl.constexpr,
):
    """Split planes, pass 1: the shifted sums of chunk program_id(1) of plane program_id(0), the
    plane's own pivot for every chunk (so the sums add up to the whole plane's)."""
    pid = tl.program_id(0)
    _, base = _plane(pid, C, sN, sC)
    start, end = _span(CHUNK, HW)
    pivot = tl.load(X + base).to(tl.float64)
    s1, s2 = _shifted_sums(X, base, start, end, Wi, sH, sS, pivot, BLOCK)
    _store_partial(PART, pid, s1, s2)


@triton.jit
def instance_norm_fwd_kernel(
    X,
    Y,
    R,  # the residual (HAS_R), x's shape and strides
    W,
    B,  # the affine: per channel, or per plane (PER_PLANE)
    RM,
    RV,  # the running statistics (not INPUT_STATS)
    MEAN,
    VAR,  # out: each plane's statistics, (N, C)
    PART,  # split planes: the chunk partials of instance_norm_stats_kernel
    C,  # channels: plane pid is (pid // C, pid % C)
    HW,
    CHUNK,  # elements per plane; per chunk program (a multiple of BLOCK)
    sN,
    sC,
    sS,  # x's sample, channel and W strides
    Hi,
    Wi,
    P,
    sH,  # x's H, W; the output pad; x's H stride
    oN,
    oC,
    oH,
    oW,  # Y's strides (with HAS_P: the padded output's)
    EPS: tl.constexpr,
    SLOPE: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_R: tl.constexpr,
    INPUT_STATS: tl.constexpr,  # x's statistics, else the running ones
    ACT: tl.constexpr,  # an Activation code
    ACC: tl.constexpr,  # the math's dtype: fp64 for fp64 x, else fp32
    PER_PLANE: tl.constexpr,  # W, B hold one value per (n, c) plane
    HAS_P: tl.constexpr,
    SPLIT: tl.constexpr,  # the statistics come from PART (S > 1 chunks)
    BLOCK: tl.constexpr,
):
    """Chunk program_id(1) of plane program_id(0): x's (Hi, Wi) plane normalized, the epilogue
    applied; with HAS_P it writes its chunk of the (Hi + 2P, Wi + 2P) output positions."""
    pid = tl.program_id(0)
    c, base = _plane(pid, C, sN, sC)
    offs = tl.arange(0, BLOCK)
    slope = tl.full((), SLOPE, ACC)  # exact in fp64 (a float argument would be fp32)
    if INPUT_STATS:
        pivot = tl.load(X + base).to(tl.float64)
        if SPLIT:
            s1, s2 = _merged(PART, pid)
        else:
            s1, s2 = _shifted_sums(X, base, 0, HW, Wi, sH, sS, pivot, BLOCK)
        mean, m2 = _mean_m2(pivot, s1, s2, HW)
        mean = mean.to(ACC)
        var = (m2 / HW).to(ACC)
        if tl.program_id(1) == 0:
            tl.store(MEAN + pid, mean)
            tl.store(VAR + pid, var)
    else:
        mean = tl.load(RM + c).to(ACC)
        var = tl.load(RV + c).to(ACC)
    ai = pid if PER_PLANE else c
    scale = _channel(W, ai, HAS_W, 1.0, ACC) * _inv_std(var, EPS)  # constexpr: exact in fp64
    shift = _channel(B, ai, HAS_B, 0.0, ACC)  # (x - mean) * scale + b: exact on constant planes
    if HAS_P:  # each padded output element reads its mirror source in x (and the residual)
        _, ybase = _plane(pid, C, oN, oC)
        Wo = Wi + 2 * P
        HWo = (Hi + 2 * P) * Wo
        start, end = _span(tl.cdiv(tl.cdiv(HWo, tl.num_programs(1)), BLOCK) * BLOCK, HWo)
        for s0 in range(start, end, BLOCK):
            idx = s0 + offs
            m = idx < end
            oh = idx // Wo
            ow = idx % Wo
            src = base + _reflect(oh - P, Hi).to(tl.int64) * sH + _reflect(ow - P, Wi).to(tl.int64) * sS
            x = tl.load(X + src, mask=m, other=0.0).to(ACC)
            y = _act((x - mean) * scale + shift, ACT, slope)
            if HAS_R:
                y += tl.load(R + src, mask=m, other=0.0).to(ACC)
            tl.store(Y + ybase + oh.to(tl.int64) * oH + ow.to(tl.int64) * oW, y.to(Y.dtype.element_ty), mask=m)
    else:
        start, end = _span(CHUNK, HW)
        for s0 in range(start, end, BLOCK):
            idx = s0 + offs
            m = idx < end
            off = base + idx.to(tl.int64) * sS
            x = tl.load(X + off, mask=m, other=0.0).to(ACC)
            y = _act((x - mean) * scale + shift, ACT, slope)
            if HAS_R:
                y += tl.load(R + off, mask=m, other=0.0).to(ACC)
            tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_consts(
    pid,
    C,
    sN,
    sC,
    gN,
    gC,
    W,
    B,
    MEAN,
    VAR,
    EPS: tl.constexpr,
    SLOPE: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    ACC: tl.constexpr,
    PER_PLANE: tl.constexpr,
):
    """Plane pid's channel, x and gradient offsets and its constants in the accumulation dtype."""
    c, base = _plane(pid, C, sN, sC)
    _, gbase = _plane(pid, C, gN, gC)
    ai = pid if PER_PLANE else c
    return (
        base,
        gbase,
        tl.full((), SLOPE, ACC),
        tl.load(MEAN + pid).to(ACC),
        _inv_std(tl.load(VAR + pid).to(ACC), EPS),
        _channel(W, ai, HAS_W, 1.0, ACC),
        _channel(B, ai, HAS_B, 0.0, ACC),
    )


@triton.jit
def _dz_sums(
    X,
    G,
    base,
    gbase,
    start,
    end,
    sS,
    Hi,
    Wi,
    P,
    gH,
    gW,
    mean,
    rstd,
    w,
    b,
    slope,
    HAS_P: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """sum dz and sum dz * xhat over the elements [start, end) of a plane, fp64 lanes as the CUDA
    kernels' sums: the error must not grow with the values per lane (large planes)."""
    offs = tl.arange(0, BLOCK)
    a1 = tl.zeros([BLOCK], tl.float64)
    a2 = tl.zeros([BLOCK], tl.float64)
    for s0 in range(start, end, BLOCK):
        idx = s0 + offs
        xh, dz = _xhat_dz(
            X,
            G,
            base + idx.to(tl.int64) * sS,
            gbase,
            idx,
            idx < end,
            Hi,
            Wi,
            P,
            gH,
            gW,
            mean,
            rstd,
            w,
            b,
            slope,
            HAS_P,
            ACT,
            ACC,
        )
        a1 += dz.to(tl.float64)
        a2 += dz.to(tl.float64) * xh
    return tl.sum(a1, 0), tl.sum(a2, 0)


@triton.jit
def instance_norm_bwd_sums_kernel(
    G,
    X,
    W,
    B,
    MEAN,
    VAR,
    PART,
    C,
    HW,
    CHUNK,
    sN,
    sC,
    sS,
    Hi,
    Wi,
    P,
    gN,
    gC,
    gH,
    gW,
    EPS: tl.constexpr,
    SLOPE: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    PER_PLANE: tl.constexpr,
    HAS_P: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Split planes, pass 1 of the backward: the (sum dz, sum dz * xhat) of chunk program_id(1)
    of plane program_id(0) to PART (arguments as instance_norm_bwd_kernel's)."""
    pid = tl.program_id(0)
    base, gbase, slope, mean, rstd, w, b = _bwd_consts(
        pid, C, sN, sC, gN, gC, W, B, MEAN, VAR, EPS, SLOPE, HAS_W, HAS_B, ACC, PER_PLANE
    )
    start, end = _span(CHUNK, HW)
    s1, s2 = _dz_sums(
        X, G, base, gbase, start, end, sS, Hi, Wi, P, gH, gW, mean, rstd, w, b, slope, HAS_P, ACT, ACC, BLOCK
    )
    _store_partial(PART, pid, s1, s2)


@triton.jit
def instance_norm_bwd_kernel(
    G,
    X,
    GX,
    W,
    B,
    MEAN,
    VAR,
    SUMS,  # out: each plane's (sum dz, sum dz * xhat), the affine's gradients
    PART,  # split planes: the chunk partials of instance_norm_bwd_sums_kernel
    C,
    HW,
    CHUNK,
    sN,
    sC,
    sS,
    Hi,
    Wi,
    P,  # as instance_norm_fwd_kernel's
    gN,
    gC,
    gH,
    gW,  # G's strides
    EPS: tl.constexpr,
    SLOPE: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    INPUT_STATS: tl.constexpr,  # the forward normalized with x's statistics
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    PER_PLANE: tl.constexpr,
    HAS_P: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The input gradient of chunk program_id(1) of plane program_id(0). G: the output gradient,
    (Hi + 2P, Wi + 2P) planes when HAS_P, else x's shape and strides."""
    pid = tl.program_id(0)
    base, gbase, slope, mean, rstd, w, b = _bwd_consts(
        pid, C, sN, sC, gN, gC, W, B, MEAN, VAR, EPS, SLOPE, HAS_W, HAS_B, ACC, PER_PLANE
    )
    if SPLIT:
        s1, s2 = _merged(PART, pid)
    else:
        s1, s2 = _dz_sums(
            X, G, base, gbase, 0, HW, sS, Hi, Wi, P, gH, gW, mean, rstd, w, b, slope, HAS_P, ACT, ACC, BLOCK
        )
    if tl.program_id(1) == 0:
        tl.store(SUMS + 2 * pid, s1.to(SUMS.dtype.element_ty))
        tl.store(SUMS + 2 * pid + 1, s2.to(SUMS.dtype.element_ty))
    m1 = (s1 / HW).to(ACC)
    m2 = (s2 / HW).to(ACC)
    k = rstd * w
    offs = tl.arange(0, BLOCK)
    start, end = _span(CHUNK, HW)
    for s0 in range(start, end, BLOCK):
        idx = s0 + offs
        m = idx < end
        off = base + idx.to(tl.int64) * sS
        xh, dz = _xhat_dz(X, G, off, gbase, idx, m, Hi, Wi, P, gH, gW, mean, rstd, w, b, slope, HAS_P, ACT, ACC)
        if INPUT_STATS:
            gx = k * (dz - m1 - xh * m2)
        else:  # eval mode: the gradient does not depend on x (an infinite x gives no NaN), as torch
            gx = k * dz
        tl.store(GX + off, gx.to(GX.dtype.element_ty), mask=m)


def _layout(x: torch.Tensor):
    """x in a layout the kernels read directly, and its (sN, sC, sS) element strides."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        fmt = torch.channels_last
    else:
        fmt, x = torch.contiguous_format, x.contiguous()
    n, c, h, w = x.shape
    return x, fmt, (x.stride(0), x.stride(1), x.stride(3))


def _slope(act, slope):
    """The leaky-relu slope as a constexpr (no device tensor, no launch to make one); 0 for the
    other activations, which ignore it, so they compile once."""
    return float(slope) if act == Activation.LEAKY_RELU else 0.0


def _acc(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _block(hw):
    return min(triton.next_power_of_2(max(hw, 1)), 4096 if triton_interpret() else 1024)


# ---- grids: one program per plane, or S programs per plane (chunks of CHUNK elements) when the
# planes alone cannot fill the GPU (batch 1, large maps), as the CUDA kernels do: the reductions
# then write per-chunk partials merged in chunk order (no atomics). Shared with triton/plane_norm.py.
MIN_CHUNK = 4096  # elements: smaller chunks are not worth a program (= kernels/reduce.cuh kMinChunkElems)
PROGRAMS_PER_SM = 4
INTERPRETER_SMS = 0  # CPU tensors (TRITON_INTERPRET=1): no split unless a test sets this


_SMS: dict = {}  # a plain dict, not lru_cache: torch.compile traces this without a warning


def _sm_count(index: int) -> int:
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def plane_grid(planes: int, elems: int, device: torch.device) -> tuple[int, int, int]:
    """(S, CHUNK, BLOCK) for `planes` planes of `elems` elements each."""
    block = min(_block(elems), MIN_CHUNK)
    if device.type == "cuda":
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = INTERPRETER_SMS
    target = PROGRAMS_PER_SM * sms
    splits = 1 if planes == 0 or planes >= target else max(1, min(-(-target // planes), elems // MIN_CHUNK))
    chunk = -(-max(elems, 1) // splits)
    chunk = -(-chunk // block) * block  # whole BLOCKs per program
    return -(-max(elems, 1) // chunk), chunk, block


def _per_plane(weight, bias, c):
    """weight/bias hold one value per (n, c) plane (MUNIT AdaIN) instead of per channel."""
    return any(t is not None and t.numel() != c for t in (weight, bias))


def _check_pad(pad, h, w):
    # the callers validate (functional._check_out_pad); a reflection pad needs pad < H and < W
    if pad < 0 or (pad and not (pad < h and pad < w)):
        raise ValueError(f"out_pad ({pad}) must be >= 0 and smaller than the input's H and W ({h} x {w})")


def _channel_arg(t, x):
    return (
        x if t is None else t.reshape(-1).to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    )


@triton_op("i2i_fast::triton_instance_norm_fwd", mutates_args=())
@on_device
def instance_norm_fwd(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    eps: float,
    act: int,
    slope: float,
    pad: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """out = reflection_pad2d(act((x - mean) * rstd * weight + bias) + residual, (pad,) * 4)
    in x's memory format; mean, var: x's (or the running) statistics, (N, C)."""
    x, fmt, (sN, sC, sS) = _layout(x)
    n, c, h, w = x.shape
    _check_pad(pad, h, w)
    sd = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype, device=x.device, memory_format=fmt)
    mean = x.new_empty((n, c), dtype=sd)
    var = x.new_empty((n, c), dtype=sd)
    r = residual.contiguous(memory_format=fmt) if residual is not None else x
    stats = running_mean is None
    if x.numel() > 0:
        S, chunk, block = plane_grid(n * c, h * w, x.device)
        split = stats and S > 1  # the running statistics need no merge
        part = x.new_empty((n * c, S, 2), dtype=torch.float64) if split else mean
        if split:
            wrap_triton(instance_norm_stats_kernel)[(n * c, S)](
                x, part, c, h * w, chunk, sN, sC, sS, w, x.stride(2), BLOCK=block
            )
        wrap_triton(instance_norm_fwd_kernel)[(n * c, S)](
            x,
            y,
            r,
            _channel_arg(weight, x),
            _channel_arg(bias, x),
            _channel_arg(running_mean, x),
            _channel_arg(running_var, x),
            mean,
            var,
            part,
            c,
            h * w,
            chunk,
            sN,
            sC,
            sS,
            h,
            w,
            pad,
            x.stride(2),
            *y.stride(),
            float(eps),
            _slope(act, slope),
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            HAS_R=residual is not None,
            INPUT_STATS=stats,
            ACT=act,
            ACC=_acc(x),
            PER_PLANE=_per_plane(weight, bias, c),
            HAS_P=pad > 0,
            SPLIT=split,
            BLOCK=block,
        )
    if not stats:
        mean.copy_(running_mean.reshape(1, c).expand(n, c))
        var.copy_(running_var.reshape(1, c).expand(n, c))
    return y, mean, var


@triton_op("i2i_fast::triton_instance_norm_bwd", mutates_args=())
@on_device
def instance_norm_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    act: int,
    slope: float,
    input_stats: bool,
    pad: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gx, gweight, gbias) of instance_norm_fwd; grad: the gradient of its (padded) output."""
    x, fmt, (sN, sC, sS) = _layout(x)
    n, c, h, w = x.shape
    _check_pad(pad, h, w)
    assert tuple(grad.shape) == (n, c, h + 2 * pad, w + 2 * pad), "grad must have the padded output's shape"
    sd = mean.dtype
    g = grad.contiguous(memory_format=fmt)
    gx = torch.empty_like(x, memory_format=fmt)
    sums = x.new_zeros((n, c, 2), dtype=sd)
    if x.numel() > 0:
        S, chunk, block = plane_grid(n * c, h * w, x.device)
        part = x.new_empty((n * c, S, 2), dtype=torch.float64) if S > 1 else sums
        args = (_channel_arg(weight, x), _channel_arg(bias, x), mean.contiguous(), var.contiguous())
        shape = (c, h * w, chunk, sN, sC, sS, h, w, pad, *g.stride(), float(eps), _slope(act, slope))
        meta = dict(
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            ACT=act,
            ACC=_acc(x),
            PER_PLANE=_per_plane(weight, bias, c),
            HAS_P=pad > 0,
            BLOCK=block,
        )
        if S > 1:
            wrap_triton(instance_norm_bwd_sums_kernel)[(n * c, S)](g, x, *args, part, *shape, **meta)
        wrap_triton(instance_norm_bwd_kernel)[(n * c, S)](
            g, x, gx, *args, sums, part, *shape, INPUT_STATS=input_stats, SPLIT=S > 1, **meta
        )
    if weight is None and bias is None:  # nothing to reduce (as the C++ op)
        return gx, sums.new_empty((0,)), sums.new_empty((0,))
    if _per_plane(weight, bias, c):  # per-plane affine: its gradients are the plane sums
        return gx, sums[:, :, 1].reshape(-1).clone(), sums[:, :, 0].reshape(-1).clone()
    gsum = sums.sum(0)  # weight/bias gradients: deterministic reduction over the batch
    return gx, gsum[:, 1].clone(), gsum[:, 0].clone()  # outputs must not alias each other
