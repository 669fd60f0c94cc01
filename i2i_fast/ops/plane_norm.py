"""The plane-affine normalization family: ILN, AdaLIN, MUNIT LayerNorm, training-mode batch norm,
and instance norm / AdaIN with an output pad. Each is

    mean, var    = plane_norm_stats(x)                        # per (n, c) plane, fp32, one kernel
    scale, shift = plane_norm_coefs(kind, mean, var, params)  # (N, C) math in fp64, one op
    out          = plane_norm_apply(x, mean, scale, shift, residual, act, slope, pad)

so ``out = pad(act(scale * (x - mean) + shift) + residual)``. LN statistics are the Chan merge
of the plane statistics over channels (batch norm: over samples), so a batch-1 sample's
reduction is spread over all its planes (every block), never one block. Backward:
plane_norm_apply_sums gives per plane S1 = sum dz and S2 = sum dz * (x - mean); coefs_backward turns
(S1, S2) into the gradients of the parameters and of the plane statistics, which give
``grad x = scale * dz + c0 + c1 * (x - mean)`` (plane_norm_apply_bwd). Only x and the (N, C)
statistics and coefficients are saved for backward.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .. import _backend, reference
from ..codes import NormKind
from .common import differentiate, memory_format, select
from .reflection_pad import OPS as PAD_OPS


def _unbias(n: int) -> float:
    # n / (n - 1); one element: torch.var gives NaN, so do we (0 * nan)
    return n / (n - 1) if n > 1 else math.nan


def _rows(p: Optional[Tensor], c: int, sd) -> Optional[Tensor]:
    """A per-channel ((C,), (1, C, 1, 1)) or per-sample ((N, C)) parameter as (1|N, C)."""
    return None if p is None else p.to(sd).reshape(-1, c)


def coefs(kind: int, mean: Tensor, var: Tensor, hw: int, rho, gamma, beta, eps: float):
    """(scale, shift, aux) of every plane; mean/var: plane statistics (biased variance)."""
    n, c = mean.shape
    sd = mean.dtype
    g, b = _rows(gamma, c, sd), _rows(beta, c, sd)
    if kind == NormKind.INSTANCE:
        r = reference.inv_std(var, eps)
        scale = r if g is None else r * g
        shift = torch.zeros_like(mean) if b is None else b.expand(n, c)
        return scale, shift, (r,)
    if kind == NormKind.BATCH:  # Chan merge over the samples of each channel
        if any(p is not None and p.numel() != c for p in (gamma, beta)):
            raise ValueError("batch norm takes per-channel gamma/beta (C elements)")
        dm = mean - mean.mean(0, keepdim=True)
        r = reference.inv_std((var + dm * dm).mean(0, keepdim=True), eps)
        scale = (r if g is None else r * g).expand(n, c)
        shift = scale * dm if b is None else b + scale * dm
        return scale, shift, (dm, r)
    m_ln = mean.mean(1, keepdim=True)
    dm = mean - m_ln
    m2 = (var.sum(1, keepdim=True) + (dm * dm).sum(1, keepdim=True)) * hw  # Chan merge
    v_ln = m2 * (_unbias(c * hw) / (c * hw))
    if kind == NormKind.ILN:
        rh = _rows(rho, c, sd)
        r_in = torch.rsqrt(var * _unbias(hw) + eps)
        r_ln = torch.rsqrt(v_ln + eps)
        k = rh * r_in + (1 - rh) * r_ln
        scale = g * k
        shift = b + g * (1 - rh) * r_ln * dm
        return scale, shift, (dm, rh, r_in, r_ln, k)
    std = torch.sqrt(v_ln)
    r = 1 / (std + eps)
    scale = r.expand(n, c) if g is None else g * r
    shift = scale * dm if b is None else b + scale * dm
    return scale, shift, (dm, std, r)


def _param_grad(d: Tensor, p: Optional[Tensor]) -> Optional[Tensor]:
    if p is None:
        return None
    if p.numel() != d.numel():  # per-channel parameter used by every sample (d is (N, C))
        d = d.sum(0)
    return d.reshape(p.shape).to(p.dtype)


def coefs_backward(kind, mean, var, hw, rho, gamma, beta, eps, scale, aux, s1, s2):
    """Gradients (dmean, dvar, drho, dgamma, dbeta) of sum(dz * (scale * (x - mean) + shift))
    given s1 = sum dz, s2 = sum dz * (x - mean) per plane (mean's direct use included)."""
    n, c = mean.shape
    sd = mean.dtype
    g = _rows(gamma, c, sd)
    one = torch.ones((), dtype=sd, device=mean.device)
    gg = one if g is None else g
    drho = dg = None
    if kind == NormKind.INSTANCE:
        (r,) = aux
        dvar = s2 * gg * (-0.5) * r**3
        dmean = -scale * s1
        dg = s2 * r
    elif kind == NormKind.BATCH:  # c0, c1 of grad x = scale dz + c0 + c1 (x - mean_plane), as dmean, dvar
        dm, r = aux
        s2m = s2 + dm * s1  # sum dz (x - batch mean) per plane
        m = n * hw
        c1 = -gg * r**3 * s2m.sum(0, keepdim=True) / m
        c0 = -gg * r * s1.sum(0, keepdim=True) / m + c1 * dm
        dmean, dvar = c0 * hw, c1 * (hw / 2)
        dg = s2m * r
    elif kind == NormKind.ILN:
        dm, rh, r_in, r_ln, k = aux
        dg = s2 * k + s1 * (1 - rh) * r_ln * dm
        drho = gg * s2 * (r_in - r_ln) - gg * s1 * r_ln * dm
        dk = gg * s2
        t = s1 * gg * (1 - rh) * r_ln  # d shift / d mean_plane part
        dr_ln = (dk * (1 - rh) + s1 * gg * (1 - rh) * dm).sum(1, keepdim=True)
        dvar = dk * rh * (-0.5) * r_in**3 * _unbias(hw)
        dm2 = dr_ln * (-0.5) * r_ln**3 * (_unbias(c * hw) / (c * hw))
        dvar = dvar + dm2 * hw
        dmean = t - t.sum(1, keepdim=True) / c + dm2 * 2 * hw * dm - scale * s1
    else:
        dm, std, r = aux
        dg = s2 * r + s1 * r * dm
        t = s1 * gg * r
        dr = (gg * s2 + gg * s1 * dm).sum(1, keepdim=True)
        dm2 = -dr * r * r / (2 * std) * (_unbias(c * hw) / (c * hw))
        dvar = dm2 * hw
        dmean = t - t.sum(1, keepdim=True) / c + dm2 * 2 * hw * dm - scale * s1
    dvar = dvar.expand(n, c)
    return dmean, dvar, drho, dg, s1


# --------------------------------------------------------------------------- kernels per backend
def _fake_stats(x):
    n, c = x.shape[:2]
    sd = reference.stats_dtype(x)
    return x.new_empty((n, c), dtype=sd), x.new_empty((n, c), dtype=sd)


def _fake_plane_norm(x, rho, gamma, beta, residual, rm, rv, kind, eps, act, slope, pad):
    return (_fake_apply(x, None, None, None, None, act, slope, pad),) + _fake_stats(x)


def _fake_apply(x, mean, scale, shift, residual, act, slope, pad):
    n, c, h, w = x.shape
    return x.new_empty((n, c, h + 2 * pad, w + 2 * pad)).contiguous(memory_format=memory_format(x))


def _fake_sums(grad, x, mean, scale, shift, act, slope, pad):
    return x.new_empty((x.shape[0], x.shape[1], 2), dtype=reference.stats_dtype(x))


def _fake_bwd(grad, x, mean, scale, shift, c0, c1, act, slope, pad):
    return torch.empty_like(x, memory_format=memory_format(x))


def _fake_coefs(mean, var, rho, gamma, beta, kind, hw, eps):
    return torch.empty_like(mean), torch.empty_like(mean)


def _fake_coefs_bwd(mean, var, rho, gamma, beta, sums, kind, hw, eps):
    def flat(p):
        return mean.new_empty((0 if p is None else p.numel(),))

    return torch.empty_like(mean), torch.empty_like(mean), flat(rho), flat(gamma), flat(beta)


class PlaneNormOps(NamedTuple):
    stats: Callable  # x -> (mean, var) per plane
    apply: Callable  # the forward's elementwise pass
    apply_sums: Callable  # backward pass 1: per-plane (sum dz, sum dz (x - mean))
    apply_bwd: Callable  # backward pass 2: grad x


_OPS: dict[str, PlaneNormOps] = {}
_CPP = set()  # backends that run the whole norm as the C++ op plane_norm (csrc/plane_norm.cpp)
if _backend._C is not None:
    torch.library.register_fake("i2i_fast::plane_norm_coefs")(_fake_coefs)
    torch.library.register_fake("i2i_fast::plane_norm_coefs_bwd")(_fake_coefs_bwd)
    torch.library.register_fake("i2i_fast::plane_norm_update_running")(lambda rm, rv, nbt, mean, var, kind, hw, m: None)
    _CPP.add("cpu")
    if getattr(_backend._C, "WITH_CUDA", 0):
        _CPP.add("cuda")
    for _name, _fake in (
        ("plane_norm_stats", _fake_stats),
        ("plane_norm_apply", _fake_apply),
        ("plane_norm_apply_sums", _fake_sums),
        ("plane_norm_apply_bwd", _fake_bwd),
    ):
        torch.library.register_fake(f"i2i_fast::{_name}")(_fake)
    _c = torch.ops.i2i_fast
    _OPS["cpu"] = _OPS["cuda"] = PlaneNormOps(
        _c.plane_norm_stats, _c.plane_norm_apply, _c.plane_norm_apply_sums, _c.plane_norm_apply_bwd
    )
if _backend._triton_error is None:
    from ..triton import plane_norm as _tn  # noqa: F401  (registers i2i_fast::triton_plane_norm_*)

    _t = torch.ops.i2i_fast
    _OPS["triton"] = PlaneNormOps(
        _t.triton_plane_norm_stats,
        _t.triton_plane_norm_apply,
        _t.triton_plane_norm_apply_sums,
        _t.triton_plane_norm_apply_bwd,
    )


def reference_norm(kind, x, rho, gamma, beta, residual, eps, act, slope, pad, running=None):
    """The family's oracle: the originals' formulas (reference.py), then the output pad."""
    if kind == NormKind.ILN:
        y = reference.lin_fwd(x, rho, gamma, beta, eps, act, slope, residual)
    elif kind == NormKind.LAYER:
        y = reference.layer_norm_fwd(x, gamma, beta, eps, act, slope, residual)
    elif kind == NormKind.BATCH:
        y = reference.batch_norm_fwd(x, gamma, beta, eps, act, slope, residual)
    else:
        rm, rv = running if running is not None else (None, None)
        y = reference.instance_norm_fwd(x, gamma, beta, residual, rm, rv, eps, act, slope)[0]
    return reference.reflection_pad_out(y, pad)


class _Cfg(NamedTuple):
    kind: int
    eps: float
    act: int
    slope: float
    pad: int
    backend: str
    has_residual: bool
    running_mean: Optional[Tensor]  # eval-mode instance norm: the statistics used, else None
    running_var: Optional[Tensor]


class _PlaneNorm(torch.autograd.Function):
    """The family's autograd on Triton: stats -> coefs -> apply forward, sums -> coefs_bwd ->
    apply_bwd backward, the (N, C) math in one Triton program each way (triton/plane_norm.py); tiles
    past COEF_TILE_MAX planes use the torch-op math above (coefs / coefs_backward)."""

    @staticmethod
    def forward(ctx, x, rho, gamma, beta, residual, rmean, rvar, kind, eps, act, slope, pad, backend):
        ops = _OPS[backend]
        n, c, h, w = x.shape
        if rmean is None:
            mean, var = ops.stats(x)
        else:  # eval-mode instance norm: running statistics are constants
            sd = reference.stats_dtype(x)
            mean = rmean.to(sd).reshape(1, c).expand(n, c).contiguous()
            var = rvar.to(sd).reshape(1, c).expand(n, c).contiguous()
        if h * w > 0 and _tn.coefs_fit(n, c):  # one Triton launch for the (N, C) math
            scale, shift = torch.ops.i2i_fast.triton_plane_norm_coefs(mean, var, rho, gamma, beta, kind, h * w, eps)
        else:
            scale, shift, _ = coefs(kind, mean, var, h * w, rho, gamma, beta, eps)
        out = ops.apply(x, mean, scale, shift, residual, act, slope, pad)
        ctx.save_for_backward(x, mean, var, scale, shift, rho, gamma, beta)
        ctx.cfg = _Cfg(kind, eps, act, slope, pad, backend, residual is not None, rmean, rvar)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' gradients
        return out, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        x, mean, var, scale, shift, rho, gamma, beta = ctx.saved_tensors
        cfg = ctx.cfg
        kind, eps, pad = cfg.kind, cfg.eps, cfg.pad
        need = ctx.needs_input_grad
        none = (None,) * 8
        if gy is None:
            return (None,) * 5 + none
        gres = None
        if cfg.has_residual and need[4]:  # the padded gradient folded: the (gather) pad backward
            gres = gy if pad == 0 else PAD_OPS[cfg.backend].bwd(gy, [pad] * 4)
        if torch.is_grad_enabled():  # create_graph=True
            ts = (x, rho, gamma, beta)
            grads = ref_grads(
                gy, x, rho, gamma, beta, cfg.running_mean, cfg.running_var, kind, eps, cfg.act, cfg.slope, pad
            )
            return tuple(g if t is not None and t.requires_grad else None for g, t in zip(grads, ts)) + (gres,) + none
        ops = _OPS[cfg.backend]
        n, c, h, w = x.shape
        hw = h * w
        gx = drho = dg = db = None
        if any(need[:4]):
            sums = ops.apply_sums(gy, x, mean, scale, shift, cfg.act, cfg.slope, pad)
            if hw > 0 and _tn.coefs_fit(n, c):
                c0, c1, drho, dg, db = torch.ops.i2i_fast.triton_plane_norm_coefs_bwd(
                    mean, var, rho, gamma, beta, sums, kind, hw, eps
                )
            else:
                s1, s2 = sums[..., 0], sums[..., 1]
                _, _, aux = coefs(kind, mean, var, hw, rho, gamma, beta, eps)
                dmean, dvar, drho, dg, db = coefs_backward(
                    kind, mean, var, hw, rho, gamma, beta, eps, scale, aux, s1, s2
                )
                c0, c1 = dmean / hw, dvar * (2.0 / hw)
            if need[0]:
                if cfg.running_mean is not None:  # running statistics are constants
                    c0 = c1 = torch.zeros_like(mean)
                gx = ops.apply_bwd(gy, x, mean, scale, shift, c0, c1, cfg.act, cfg.slope, pad)
        return (
            gx,
            _param_grad(drho, rho) if need[1] else None,
            _param_grad(dg, gamma) if need[2] else None,
            _param_grad(db, beta) if need[3] else None,
            gres,
        ) + none


def ref_grads(gy, x, rho, gamma, beta, rmean, rvar, kind, eps, act, slope, pad):
    """The create-graph backward (double backward): the reference formulas differentiated by
    autograd, so the result is itself differentiable. [d x, d rho, d gamma, d beta]: zeros
    where an input needs a gradient it does not get, an empty tensor where it needs none.
    i2i_fast::plane_norm_ref_grads (CompositeImplicitAutograd) for the C++ autograd node."""
    running = None if rmean is None else (rmean, rvar)
    return differentiate(
        lambda: reference_norm(kind, x, rho, gamma, beta, None, eps, act, slope, pad, running),
        gy,
        (x, rho, gamma, beta),
    )


if _backend._C is not None:
    torch.library.register_fake("i2i_fast::plane_norm")(_fake_plane_norm)
    torch.library.impl("i2i_fast::plane_norm_ref_grads", "CompositeImplicitAutograd")(ref_grads)


def plane_norm_update_running(
    running_mean, running_var, mean, var, hw: int, momentum: float, kind=NormKind.BATCH, num_batches_tracked=None
) -> None:
    """The running statistics of a training forward updated in place with torch's formulas, from
    its plane statistics (N, C): kind BATCH, batch norm's; kind INSTANCE, instance norm's (each
    plane's update averaged over n). num_batches_tracked, when given, is incremented too: one op
    (one launch) on the cpu, cuda and triton backends, torch ops on the reference backend."""
    args = (running_mean, running_var, num_batches_tracked, mean, var, int(kind), int(hw), float(momentum))
    backend = select(mean.device)
    if backend == "triton":
        torch.ops.i2i_fast.triton_plane_norm_update_running(*args)
        return
    if backend in _CPP:
        torch.ops.i2i_fast.plane_norm_update_running(*args)
        return
    with torch.no_grad():
        m = float(momentum)
        if kind == NormKind.INSTANCE:
            bm, bv = mean.mean(0), var.mean(0) * (hw / (hw - 1))
        else:
            big = mean.shape[0] * hw
            bm = mean.mean(0)
            bv = (var + (mean - bm) ** 2).mean(0) * (big / (big - 1))
        running_mean.copy_((1 - m) * running_mean.to(bm.dtype) + m * bm)
        running_var.copy_((1 - m) * running_var.to(bv.dtype) + m * bv)
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)


def plane_norm(kind, x, rho, gamma, beta, residual, eps, act, slope, pad, stats=False):
    """The family's entry point (arguments validated by functional.py): on cpu/cuda the C++ op
    with its C++ autograd node, on Triton the autograd.Function above. stats=True: returns
    (out, mean, var), also the per-plane statistics (N, C) used (detached)."""
    backend = select(x.device)
    if backend == "reference" or x.shape[2] * x.shape[3] == 0:  # empty planes: the originals' empty result
        out = reference_norm(kind, x, rho, gamma, beta, residual, eps, act, slope, pad)
        if not stats:
            return out
        xf = x.detach().to(reference.stats_dtype(x))
        return out, xf.mean((2, 3)), xf.var((2, 3), unbiased=False)
    if backend in _CPP:
        res = torch.ops.i2i_fast.plane_norm.default(
            x, rho, gamma, beta, residual, None, None, int(kind), float(eps), int(act), float(slope), int(pad)
        )
    else:
        res = _PlaneNorm.apply(
            x, rho, gamma, beta, residual, None, None, int(kind), float(eps), int(act), float(slope), int(pad), backend
        )
    return res if stats else res[0]
