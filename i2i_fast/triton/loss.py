"""Triton kernels of the fused losses (i2i_fast::triton_loss_fwd / triton_loss_bwd), the same
math as csrc/loss.h. Up to NSLOTS terms per launch, each as separate pointer arguments of a
kernel generated for that term count (_kernel); each program reduces chunks of CHUNK
elements of one term in a fixed tree and writes its scaled partial into a fixed slot. When the
whole call is small (one group, <= ONE_PROGRAM elements: the batch-1 PatchGAN case) a single
program walks every chunk in order and adds the partials in a register: one launch. Otherwise
a second one-program launch adds the partials in chunk order. No atomics: deterministic."""

from __future__ import annotations

import linecache
import re
import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..codes import LossKind, Reduction
from . import on_device

NSLOTS = 8
CHUNK = 4096
ONE_PROGRAM = 16384

# the LossKind codes as constexprs (a @jit function reads no other globals)
SQUARE: tl.constexpr = tl.constexpr(LossKind.SQUARE)
BCE: tl.constexpr = tl.constexpr(LossKind.BCE)
HINGE: tl.constexpr = tl.constexpr(LossKind.HINGE)
LINEAR: tl.constexpr = tl.constexpr(LossKind.LINEAR)
SOFTPLUS: tl.constexpr = tl.constexpr(LossKind.SOFTPLUS)
BCE_TARGET: tl.constexpr = tl.constexpr(LossKind.BCE_TARGET)


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
    if KIND == SQUARE:
        r = x - a
        v = r * r
        d = 2.0 * r
    elif KIND == BCE:
        e = tl.exp(-tl.abs(x))
        log_sig = tl.where(x < 0, x, 0.0) - _log1p(e)
        v = (1.0 - a) * x - log_sig
        d = 1.0 / (1.0 + tl.exp(-x)) - a
    elif KIND == HINGE:
        z = 1.0 + a * x
        v = tl.where(z < 0, 0.0, z)
        d = tl.where(z <= 0, 0.0, _const(x, a))
    elif KIND == LINEAR:
        v = a * x
        d = _const(x, a)
    elif KIND == SOFTPLUS:
        z = a * x
        e = tl.exp(z)
        v = tl.where(z > 20.0, z, tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e)))
        d = tl.where(z > 20.0, _const(x, a), a * (e / (e + 1.0)))
    elif KIND == BCE_TARGET:  # a per-element target y
        e = tl.exp(-tl.abs(x))
        log_sig = tl.where(x < 0, x, 0.0) - _log1p(e)
        v = (1.0 - y) * x - log_sig
        d = 1.0 / (1.0 + tl.exp(-x)) - y
    else:  # ABS
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
def _fwd_chunk(
    X,
    Y,
    G,
    O,
    n,
    i0,
    a,
    w,
    HAS_Y: tl.constexpr,
    KIND: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    NONE: tl.constexpr,
    MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
    ACC: tl.constexpr,
):
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


# The launch kernels take NT <= NSLOTS terms as NT separate arguments of each kind (a Triton
# kernel cannot take a pointer table by value, and torch.compile tracks only tensor arguments,
# not tensors in tuples): their source is generated from these templates per term count.
_FWD_TEMPLATE = """
def {name}({X},  # the terms' inputs
           {Y},  # the terms' targets (HAS_Y), else unused
           {G},  # out (NEED_GRAD): dloss/dx per term, to be scaled by the loss gradient
           {O},  # out (NONE): the weighted elementwise loss per term
           {N},  # the terms' element counts
           {B},  # the terms' first chunk; the last: the launch's chunk count
           {A},  # the terms' loss parameters (fp64 bit patterns, _scalar)
           {W},  # the terms' weights (fp64 bit patterns)
           PART,  # out (not ONE): each chunk's scaled partial sum, in chunk order
           LOSS,  # out (ONE and not NONE): the reduced loss
           HAS_Y: tl.constexpr, KIND: tl.constexpr,  # KIND: a LossKind code
           NEED_GRAD: tl.constexpr, NONE: tl.constexpr, MEAN: tl.constexpr,  # reduction none / mean
           ONE: tl.constexpr,  # one program walks every chunk and adds the partials itself
           BLOCK: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    run = tl.zeros((), ACC)
    for c in range(pid, B{nt}, nprog):
        part = tl.zeros((), ACC)
{slots}        if ONE:
            run += part
        else:
            tl.store(PART + c, part)
    if ONE:
        if not NONE:
            tl.store(LOSS, run.to(LOSS.dtype.element_ty))
"""
_FWD_SLOT = """        if (c >= B{i}) & (c < B{j}):
            part = _fwd_chunk(X{i}, Y{i}, G{i}, O{i}, N{i}, (c - B{i}) * CHUNK, A{i}, W{i}, HAS_Y, KIND,
                              NEED_GRAD, NONE, MEAN, BLOCK, CHUNK, ACC)
"""


@triton.jit
def loss_sum_kernel(
    PART,  # the chunk partials of loss_fwd, in chunk order
    LOSS,  # out: their sum
    n,  # the chunk count
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    s = tl.zeros([BLOCK], ACC)
    for j in range(0, n, BLOCK):
        offs = j + tl.arange(0, BLOCK)
        s += tl.load(PART + offs, mask=offs < n, other=0.0)
    tl.store(LOSS, tl.sum(s, axis=0).to(LOSS.dtype.element_ty))


@triton.jit
def _bwd_chunk(
    S, GO, O, n, i0, sign, PER_ELEM: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr
):
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


_BWD_TEMPLATE = """
def {name}({S},  # the terms' saved dloss/dx of loss_fwd
           {GO},  # the terms' loss gradients (PER_ELEM), else each the one scalar gradient
           {O},  # out: the terms' input gradients
           {N},  # the terms' element counts
           {B},  # the terms' first chunk; the last: the launch's chunk count
           {SG},  # the terms' signs (fp64 bit patterns)
           PER_ELEM: tl.constexpr,  # reduction none: an elementwise loss gradient
           BLOCK: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0)
{slots}"""
_BWD_SLOT = """    if (c >= B{i}) & (c < B{j}):
        _bwd_chunk(S{i}, GO{i}, O{i}, N{i}, (c - B{i}) * CHUNK, SG{i}, PER_ELEM, BLOCK, CHUNK, ACC)
"""
_TEMPLATES = {
    "loss_fwd_kernel": (_FWD_TEMPLATE, _FWD_SLOT, "X Y G O N A W"),
    "loss_bwd_kernel": (_BWD_TEMPLATE, _BWD_SLOT, "S GO O N SG"),
}
_KERNELS: dict = {}


def _kernel(name: str, nt: int):
    """The launch kernel `name` for nt terms: its template with nt slots, made once per count."""
    key = f"{name}_{nt}"
    if key not in _KERNELS:
        template, slot, per_term = _TEMPLATES[name]
        args = {p: ", ".join(f"{p}{i}" for i in range(nt)) for p in per_term.split()}
        src = template.format(
            name=key,
            nt=nt,
            B=", ".join(f"B{i}" for i in range(nt + 1)),
            slots="".join(slot.format(i=i, j=i + 1) for i in range(nt)),
            **args,
        ).lstrip()
        filename = f"<i2i_fast.triton.loss {key}>"
        # Triton reads a kernel's source with inspect, which finds generated code in linecache
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        scope: dict = {}
        exec(compile(src, filename, "exec"), globals(), scope)
        _KERNELS[key] = triton.jit(scope[key])
    return _KERNELS[key]


def __getattr__(name: str):
    # the generated kernels by name, as the ahead-of-time compile (tests/triton_aot.py) finds them
    m = re.fullmatch(r"(loss_fwd_kernel|loss_bwd_kernel)_([1-9][0-9]*)", name)
    if m is None or int(m[2]) > NSLOTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _kernel(m[1], int(m[2]))


def _acc(t):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check(x, y, params, weights, kind, reduction):
    # the same checks (and words) as csrc/loss.h prep_loss
    if len(x) == 0:
        raise RuntimeError("i2i_fast loss_fwd: x must hold at least one tensor")
    if kind not in set(LossKind):
        raise RuntimeError(f"i2i_fast loss_fwd: unknown loss kind {kind}")
    if reduction not in set(Reduction):
        raise RuntimeError(f"i2i_fast loss_fwd: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    if (kind in (LossKind.ABS, LossKind.BCE_TARGET)) != bool(y) or (y and len(y) != len(x)):
        raise RuntimeError("i2i_fast loss_fwd: y is given exactly for kinds abs (L1) and bce_target, one per x")
    if len(params) != len(x) or len(weights) != len(x):
        raise RuntimeError(f"i2i_fast loss_fwd: params and weights need one value per term ({len(x)})")
    for t, xt in enumerate(x):
        if not xt.is_floating_point():
            raise RuntimeError(f"i2i_fast loss_fwd: x[{t}] must be floating point, got {xt.dtype}")
        if xt.dtype != x[0].dtype or xt.device != x[0].device:
            raise RuntimeError(
                f"i2i_fast loss_fwd: x[{t}] is {xt.dtype} on {xt.device} but x[0] is "
                f"{x[0].dtype} on {x[0].device} (all terms share dtype and device)"
            )
        if y and (y[t].shape != xt.shape or y[t].dtype != xt.dtype or y[t].device != xt.device):
            raise RuntimeError(f"i2i_fast loss_fwd: y[{t}] must match x[{t}]'s shape, dtype and device")


@triton_op("i2i_fast::triton_loss_fwd", mutates_args=())
@on_device
def loss_fwd(
    x: list[torch.Tensor],
    y: list[torch.Tensor],
    params: list[float],
    weights: list[float],
    kind: int,
    reduction: int,
    need_grad: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    _check(x, y, params, weights, kind, reduction)
    x = [t.contiguous() for t in x]
    y = [t.contiguous() for t in y]
    none = reduction == Reduction.NONE
    grads = [torch.empty_like(t) for t in x] if need_grad else []
    outs = [torch.empty_like(t) for t in x] if none else [x[0].new_empty(())]
    # chunks per term (an empty term keeps one empty chunk: mean of nothing is NaN, as torch)
    nch = [max(1, triton.cdiv(t.numel(), CHUNK)) for t in x]
    total = sum(t.numel() for t in x)
    one = len(x) <= NSLOTS and total <= ONE_PROGRAM
    nchunks = sum(nch)
    part = None if one else x[0].new_empty((nchunks,), dtype=_acc_dtype(x[0]))
    base = 0
    for g0 in range(0, len(x), NSLOTS):
        idx = list(range(g0, min(len(x), g0 + NSLOTS)))
        starts, c = [], 0
        for i in idx:
            starts.append(c)
            c += nch[i]
        xs = [x[i] for i in idx]
        wrap_triton(_kernel("loss_fwd_kernel", len(idx)))[(1 if one else c,)](
            *xs,
            *([y[i] for i in idx] if y else xs),
            *([grads[i] for i in idx] if need_grad else xs),
            *([outs[i] for i in idx] if none else xs),
            *[x[i].numel() for i in idx],
            *starts,
            c,
            *[_bits(params[i]) for i in idx],
            *[_bits(weights[i]) for i in idx],
            part[base:] if part is not None else x[0],
            outs[0],
            HAS_Y=bool(y),
            KIND=kind,
            NEED_GRAD=need_grad,
            NONE=none,
            MEAN=reduction == Reduction.MEAN,
            ONE=one,
            BLOCK=1024,
            CHUNK=CHUNK,
            ACC=_acc(x[0]),
            num_warps=8,  # 8 elements per thread at 4 warps made ptxas spill (two-term fp32 L1, sm_90)
        )
        base += c
    if not one and not none:
        wrap_triton(loss_sum_kernel)[(1,)](part, outs[0], nchunks, BLOCK=256, ACC=_acc(x[0]))
    return outs, grads


@triton_op("i2i_fast::triton_loss_bwd", mutates_args=())
@on_device
def loss_bwd(
    grad_outs: list[torch.Tensor], saved: list[torch.Tensor], index: list[int], sign: list[float]
) -> list[torch.Tensor]:
    if len(saved) == 0 or len(grad_outs) == 0 or len(index) != len(sign):
        raise RuntimeError("i2i_fast loss_bwd: need saved gradients, grad_outs, and one sign per index")
    per_elem = not (len(grad_outs) == 1 and grad_outs[0].dim() == 0)
    saved = [s.contiguous() for s in saved]
    go = (
        [g.to(s.dtype).contiguous() for g, s in zip(grad_outs, saved)]
        if per_elem
        else [grad_outs[0].to(saved[0].dtype)]
    )
    outs = [torch.empty_like(saved[i]) for i in index]
    for g0 in range(0, len(index), NSLOTS):
        ks = list(range(g0, min(len(index), g0 + NSLOTS)))
        starts, c = [], 0
        for k in ks:
            starts.append(c)
            c += triton.cdiv(saved[index[k]].numel(), CHUNK)
        if c == 0:
            continue
        wrap_triton(_kernel("loss_bwd_kernel", len(ks)))[(c,)](
            *[saved[index[k]] for k in ks],
            *[go[index[k]] if per_elem else go[0] for k in ks],
            *[outs[k] for k in ks],
            *[saved[index[k]].numel() for k in ks],
            *starts,
            c,
            *[_bits(sign[k]) for k in ks],
            PER_ELEM=per_elem,
            BLOCK=1024,
            CHUNK=CHUNK,
            ACC=_acc(saved[0]),
        )
    return outs
