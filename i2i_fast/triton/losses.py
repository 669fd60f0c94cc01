"""Triton kernels of the fused losses (i2i_fast::triton_loss_fwd / triton_loss_bwd), the same
math as csrc/losses.h. Up to 8 terms per launch are passed as separate pointer arguments (a
Triton kernel cannot take a pointer table by value); each program reduces chunks of CHUNK
elements of one term in a fixed tree and writes its scaled partial into a fixed slot. When the
whole call is small (one group, <= ONE_PROGRAM elements: the batch-1 PatchGAN case) a single
program walks every chunk in order and adds the partials in a register: one launch. Otherwise
a second one-program launch adds the partials in chunk order. No atomics: deterministic."""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import on_device

NSLOTS = 8
CHUNK = 4096
ONE_PROGRAM = 16384


def _bits(v) -> int:
    """v's fp64 bit pattern as an int (see _scalar)."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


@triton.jit
def _log1p(e):
    # log(1 + e) for 0 <= e <= 1 without libdevice (runs under the interpreter); the series
    # where 1 + e would round e away
    return tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))


@triton.jit
def _const(x, v):
    # v broadcast to x's block; zeros_like, not 0 * x, so a NaN in x does not reach constant
    # derivatives (torch's hinge / linear / abs backward give the constant there)
    return tl.zeros_like(x) + v


@triton.jit
def _elem(x, y, a, KIND: tl.constexpr):
    if KIND == 0:
        r = x - a
        v = r * r
        d = 2.0 * r
    elif KIND == 1:
        e = tl.exp(-tl.abs(x))
        log_sig = tl.where(x < 0, x, 0.0) - _log1p(e)
        v = (1.0 - a) * x - log_sig
        d = 1.0 / (1.0 + tl.exp(-x)) - a
    elif KIND == 2:
        z = 1.0 + a * x
        v = tl.where(z < 0, 0.0, z)
        d = tl.where(z <= 0, 0.0, _const(x, a))
    elif KIND == 3:
        v = a * x
        d = _const(x, a)
    elif KIND == 4:
        z = a * x
        e = tl.exp(z)
        v = tl.where(z > 20.0, z, tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e)))
        d = tl.where(z > 20.0, _const(x, a), a * (e / (e + 1.0)))
    elif KIND == 6:  # bce with a per-element target y
        e = tl.exp(-tl.abs(x))
        log_sig = tl.where(x < 0, x, 0.0) - _log1p(e)
        v = (1.0 - y) * x - log_sig
        d = 1.0 / (1.0 + tl.exp(-x)) - y
    else:
        r = x - y
        v = tl.abs(r)
        d = tl.where(r > 0, 1.0, tl.where(r < 0, -1.0, _const(x, 0.0)))
    return v, d


@triton.jit
def _scalar(bits, ACC: tl.constexpr):
    """A float passed as its fp64 bit pattern (an int: a Python float argument would be an fp32
    kernel scalar, rounding labels and weights of fp64 losses), in the accumulation dtype."""
    return (tl.zeros((), tl.int64) + bits).to(tl.float64, bitcast=True).to(ACC)


@triton.jit
def _fwd_chunk(X, Y, G, O, n, i0, a, w, HAS_Y: tl.constexpr, KIND: tl.constexpr,
               NEED_GRAD: tl.constexpr, NONE: tl.constexpr, MEAN: tl.constexpr,
               BLOCK: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    one = tl.full((), 1.0, ACC)  # n may arrive as a Python number (interpreter, n == 1)
    wa = _scalar(w, ACC)
    a = _scalar(a, ACC)
    if MEAN:
        scale = wa / (n * one)
    else:
        scale = wa
    s = tl.zeros([BLOCK], ACC)
    for j in range(0, CHUNK, BLOCK):
        offs = (i0 + j + tl.arange(0, BLOCK)).to(tl.int64)
        m = offs < n
        x = tl.load(X + offs, mask=m, other=0.0).to(ACC)
        if HAS_Y:
            y = tl.load(Y + offs, mask=m, other=0.0).to(ACC)
        else:
            y = x
        v, d = _elem(x, y, a, KIND)
        s += tl.where(m, v, 0.0)
        if NEED_GRAD:
            tl.store(G + offs, (d * scale).to(G.dtype.element_ty), mask=m)
        if NONE:
            tl.store(O + offs, (v * wa).to(O.dtype.element_ty), mask=m)
    return tl.sum(s, axis=0) * scale


@triton.jit
def loss_fwd_kernel(X0, X1, X2, X3, X4, X5, X6, X7, Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, G0, G1, G2, G3, G4, G5, G6, G7, O0, O1, O2, O3, O4, O5, O6, O7,
                    N0, N1, N2, N3, N4, N5, N6, N7, B0, B1, B2, B3, B4, B5, B6, B7, B8,
                    A0, A1, A2, A3, A4, A5, A6, A7, W0, W1, W2, W3, W4, W5, W6, W7, PART, LOSS, nchunks,
                    NT: tl.constexpr, HAS_Y: tl.constexpr, KIND: tl.constexpr,
                    NEED_GRAD: tl.constexpr, NONE: tl.constexpr, MEAN: tl.constexpr,
                    ONE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    run = tl.zeros((), ACC)
    for c in range(pid, nchunks, nprog):
        part = tl.zeros((), ACC)
        if NT > 0:
            if (c >= B0) & (c < B1):
                part = _fwd_chunk(X0, Y0, G0, O0, N0, (c - B0) * CHUNK, A0, W0, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 1:
            if (c >= B1) & (c < B2):
                part = _fwd_chunk(X1, Y1, G1, O1, N1, (c - B1) * CHUNK, A1, W1, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 2:
            if (c >= B2) & (c < B3):
                part = _fwd_chunk(X2, Y2, G2, O2, N2, (c - B2) * CHUNK, A2, W2, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 3:
            if (c >= B3) & (c < B4):
                part = _fwd_chunk(X3, Y3, G3, O3, N3, (c - B3) * CHUNK, A3, W3, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 4:
            if (c >= B4) & (c < B5):
                part = _fwd_chunk(X4, Y4, G4, O4, N4, (c - B4) * CHUNK, A4, W4, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 5:
            if (c >= B5) & (c < B6):
                part = _fwd_chunk(X5, Y5, G5, O5, N5, (c - B5) * CHUNK, A5, W5, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 6:
            if (c >= B6) & (c < B7):
                part = _fwd_chunk(X6, Y6, G6, O6, N6, (c - B6) * CHUNK, A6, W6, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if NT > 7:
            if (c >= B7) & (c < B8):
                part = _fwd_chunk(X7, Y7, G7, O7, N7, (c - B7) * CHUNK, A7, W7, HAS_Y, KIND,
                                  NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
        if ONE:
            run += part
        else:
            tl.store(PART + c, part)
    if ONE:
        if not NONE:
            tl.store(LOSS, run.to(LOSS.dtype.element_ty))


@triton.jit
def loss_sum_kernel(PART, LOSS, n, BLOCK: tl.constexpr, ACC: tl.constexpr):
    s = tl.zeros([BLOCK], ACC)
    for j in range(0, n, BLOCK):
        offs = j + tl.arange(0, BLOCK)
        s += tl.load(PART + offs, mask=offs < n, other=0.0)
    tl.store(LOSS, tl.sum(s, axis=0).to(LOSS.dtype.element_ty))


@triton.jit
def _bwd_chunk(S, GO, O, n, i0, sign, PER_ELEM: tl.constexpr, BLOCK: tl.constexpr,
               CHUNK: tl.constexpr, ACC: tl.constexpr):
    sign = _scalar(sign, ACC)
    if not PER_ELEM:
        k = tl.load(GO).to(ACC)
    for j in range(0, CHUNK, BLOCK):
        offs = (i0 + j + tl.arange(0, BLOCK)).to(tl.int64)
        m = offs < n
        s = tl.load(S + offs, mask=m, other=0.0).to(ACC)
        if PER_ELEM:
            g = tl.load(GO + offs, mask=m, other=0.0).to(ACC)
        else:
            g = k
        tl.store(O + offs, (sign * s * g).to(O.dtype.element_ty), mask=m)


@triton.jit
def loss_bwd_kernel(S0, S1, S2, S3, S4, S5, S6, S7, GO0, GO1, GO2, GO3, GO4, GO5, GO6, GO7, O0, O1, O2, O3, O4, O5, O6, O7, N0, N1, N2, N3, N4, N5, N6, N7,
                    B0, B1, B2, B3, B4, B5, B6, B7, B8, SG0, SG1, SG2, SG3, SG4, SG5, SG6, SG7,
                    NT: tl.constexpr, PER_ELEM: tl.constexpr, BLOCK: tl.constexpr,
                    CHUNK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0)
    if NT > 0:
        if (c >= B0) & (c < B1):
            _bwd_chunk(S0, GO0, O0, N0, (c - B0) * CHUNK, SG0, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 1:
        if (c >= B1) & (c < B2):
            _bwd_chunk(S1, GO1, O1, N1, (c - B1) * CHUNK, SG1, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 2:
        if (c >= B2) & (c < B3):
            _bwd_chunk(S2, GO2, O2, N2, (c - B2) * CHUNK, SG2, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 3:
        if (c >= B3) & (c < B4):
            _bwd_chunk(S3, GO3, O3, N3, (c - B3) * CHUNK, SG3, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 4:
        if (c >= B4) & (c < B5):
            _bwd_chunk(S4, GO4, O4, N4, (c - B4) * CHUNK, SG4, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 5:
        if (c >= B5) & (c < B6):
            _bwd_chunk(S5, GO5, O5, N5, (c - B5) * CHUNK, SG5, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 6:
        if (c >= B6) & (c < B7):
            _bwd_chunk(S6, GO6, O6, N6, (c - B6) * CHUNK, SG6, PER_ELEM, BLOCK, CHUNK, ACC)
    if NT > 7:
        if (c >= B7) & (c < B8):
            _bwd_chunk(S7, GO7, O7, N7, (c - B7) * CHUNK, SG7, PER_ELEM, BLOCK, CHUNK, ACC)


def _acc(t):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _pad(lst, fill, n=NSLOTS):
    return list(lst) + [fill] * (n - len(lst))


def _check(x, y, params, weights, kind, reduction):
    # the same checks (and words) as csrc/losses.h prep_loss
    if len(x) == 0:
        raise RuntimeError("i2i_fast loss_fwd: x must hold at least one tensor")
    if not 0 <= kind <= 6:
        raise RuntimeError(f"i2i_fast loss_fwd: unknown loss kind {kind}")
    if not 0 <= reduction <= 2:
        raise RuntimeError(f"i2i_fast loss_fwd: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    if (kind in (5, 6)) != bool(y) or (y and len(y) != len(x)):
        raise RuntimeError("i2i_fast loss_fwd: y is given exactly for kinds abs (L1) and bce_target, one per x")
    if len(params) != len(x) or len(weights) != len(x):
        raise RuntimeError(f"i2i_fast loss_fwd: params and weights need one value per term ({len(x)})")
    for t, xt in enumerate(x):
        if not xt.is_floating_point():
            raise RuntimeError(f"i2i_fast loss_fwd: x[{t}] must be floating point, got {xt.dtype}")
        if xt.dtype != x[0].dtype or xt.device != x[0].device:
            raise RuntimeError(f"i2i_fast loss_fwd: x[{t}] is {xt.dtype} on {xt.device} but x[0] is "
                               f"{x[0].dtype} on {x[0].device} (all terms share dtype and device)")
        if y and (y[t].shape != xt.shape or y[t].dtype != xt.dtype or y[t].device != xt.device):
            raise RuntimeError(f"i2i_fast loss_fwd: y[{t}] must match x[{t}]'s shape, dtype and device")


@triton_op("i2i_fast::triton_loss_fwd", mutates_args=())
@on_device
def loss_fwd(x: list[torch.Tensor], y: list[torch.Tensor], params: list[float], weights: list[float],
             kind: int, reduction: int, need_grad: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    _check(x, y, params, weights, kind, reduction)
    x = [t.contiguous() for t in x]
    y = [t.contiguous() for t in y]
    none = reduction == 0
    grads = [torch.empty_like(t) for t in x] if need_grad else []
    outs = [torch.empty_like(t) for t in x] if none else [x[0].new_empty(())]
    # chunks per term (an empty term keeps one empty chunk: mean of nothing is NaN, as torch)
    nch = [max(1, triton.cdiv(t.numel(), CHUNK)) for t in x]
    total = sum(t.numel() for t in x)
    one = len(x) <= NSLOTS and total <= ONE_PROGRAM
    nchunks = sum(nch)
    part = None if one else x[0].new_empty((nchunks,), dtype=_acc_dtype(x[0]))
    dummy = x[0]
    base = 0
    for g0 in range(0, len(x), NSLOTS):
        idx = list(range(g0, min(len(x), g0 + NSLOTS)))
        starts, c = [], 0
        for i in idx:
            starts.append(c)
            c += nch[i]
        bounds = _pad(starts, c, NSLOTS) + [c]
        xs = [x[i] for i in idx]
        wrap_triton(loss_fwd_kernel)[(1 if one else c,)](
            *_pad(xs, dummy), *_pad([y[i] for i in idx] if y else xs, dummy),
            *_pad([grads[i] for i in idx] if need_grad else xs, dummy),
            *_pad([outs[i] for i in idx] if none else xs, dummy),
            *_pad([x[i].numel() for i in idx], 0), *bounds,
            *_pad([_bits(params[i]) for i in idx], 0), *_pad([_bits(weights[i]) for i in idx], 0),
            part[base:] if part is not None else dummy, outs[0], c,
            NT=len(idx), HAS_Y=bool(y), KIND=kind, NEED_GRAD=need_grad, NONE=none,
            MEAN=reduction == 1, ONE=one, BLOCK=1024, CHUNK=CHUNK, ACC=_acc(x[0]))
        base += c
    if not one and not none:
        wrap_triton(loss_sum_kernel)[(1,)](part, outs[0], nchunks, BLOCK=256, ACC=_acc(x[0]))
    return outs, grads


@triton_op("i2i_fast::triton_loss_bwd", mutates_args=())
@on_device
def loss_bwd(grad_outs: list[torch.Tensor], saved: list[torch.Tensor], index: list[int],
             sign: list[float]) -> list[torch.Tensor]:
    if len(saved) == 0 or len(grad_outs) == 0 or len(index) != len(sign):
        raise RuntimeError("i2i_fast loss_bwd: need saved gradients, grad_outs, and one sign per index")
    per_elem = not (len(grad_outs) == 1 and grad_outs[0].dim() == 0)
    saved = [s.contiguous() for s in saved]
    go = [g.to(s.dtype).contiguous() for g, s in zip(grad_outs, saved)] if per_elem else [grad_outs[0].to(saved[0].dtype)]
    outs = [torch.empty_like(saved[i]) for i in index]
    for g0 in range(0, len(index), NSLOTS):
        ks = list(range(g0, min(len(index), g0 + NSLOTS)))
        starts, c = [], 0
        for k in ks:
            starts.append(c)
            c += triton.cdiv(saved[index[k]].numel(), CHUNK)
        if c == 0:
            continue
        wrap_triton(loss_bwd_kernel)[(c,)](
            *_pad([saved[index[k]] for k in ks], saved[0]),
            *_pad([go[index[k]] if per_elem else go[0] for k in ks], go[0]),
            *_pad([outs[k] for k in ks], saved[0]), *_pad([saved[index[k]].numel() for k in ks], 0),
            *_pad(starts, c, NSLOTS), c, *_pad([_bits(sign[k]) for k in ks], 0),
            NT=len(ks), PER_ELEM=per_elem, BLOCK=1024, CHUNK=CHUNK, ACC=_acc(saved[0]))
    return outs
