"""The benchmarked ops (OPS: ours and its eager baseline, inputs, bytes that must move, shapes)
and Case: one (op, shape, dtype, device) with its parity check, torch.compile baseline and timings."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import _backend
from .machine import copy_bandwidth_gbps
from .timing import (
    DTYPE_NAMES,
    MODES,
    Timing,
    full_shapes,
    measure,
    pedantic_args,
    quick_selection,
    synchronize,
    until_quiet,
    warn_if_noisy,
)

# Parity of ours vs eager PyTorch on the same inputs: (atol, rtol). rtol for bf16/fp16 is one
# unit in the last place (two independently rounded results may differ by one ulp).
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 2**-6), torch.float16: (1e-2, 2**-9)}


@dataclass(frozen=True)
class Op:
    """One benchmarked op. build(shape, dtype, device) -> (ours, eager baseline) modules with
    the same parameters; make_inputs(shape, dtype, device, generator) -> tuple of input tensors
    (those with requires_grad get gradients checked and timed); moved(shape, dtype) -> bytes that
    must move per mode; shapes (CUDA) and cpu_shapes as in docs/benchmarks.md."""

    name: str
    build: Callable
    make_inputs: Callable
    moved: Callable
    shapes: tuple
    cpu_shapes: tuple


def _in_build(shape, dtype, device):
    from ..nn import InstanceNorm2d

    c = shape[1]
    ours = InstanceNorm2d(c, activation="relu")
    eager = nn.Sequential(nn.InstanceNorm2d(c), nn.ReLU())
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _in_pad_build(shape, dtype, device):
    from ..nn import InstanceNorm2d

    c = shape[1]
    ours = InstanceNorm2d(c, activation="relu", out_pad=1)  # what convert() makes of CycleGAN's
    eager = nn.Sequential(nn.InstanceNorm2d(c), nn.ReLU(), nn.ReflectionPad2d(1))  # ResnetBlock
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _in_pad_moved(shape, dtype):
    # fwd: read x, write the padded y; bwd: read x and the padded grad, write grad_x
    n, c, h, w = shape
    es = torch.empty((), dtype=dtype).element_size()
    nb, pb = n * c * h * w * es, n * c * (h + 2) * (w + 2) * es
    return {"fwd": nb + pb, "bwd": 2 * nb + pb, "fwdbwd": 3 * nb + 2 * pb}


def _bn_build(shape, dtype, device):
    from ..nn import BatchNorm2d

    c = shape[1]
    ours = BatchNorm2d(c, activation="leaky_relu")  # pix2pix: BatchNorm2d -> LeakyReLU(0.2)
    eager = nn.Sequential(nn.BatchNorm2d(c), nn.LeakyReLU(0.2))
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _kink_safe_inputs(dims):
    """Inputs generated on CPU (same values on every device). Pre-activation values within 0.01
    sigma of the activation's kink (statistics over `dims`) are moved to +-0.05 sigma: there,
    rounding differences between two correct implementations flip the mask and a whole
    plane's gradient would differ."""

    def make(shape, dtype, device, gen):
        x = torch.randn(shape, generator=gen).to(dtype).double()
        mean = x.mean(dims, keepdim=True)
        std = x.std(dims, unbiased=False, keepdim=True)
        z = (x - mean) / std
        x = torch.where(z.abs() < 0.01, mean + torch.where(z < 0, -0.05, 0.05) * std, x)
        return (x.to(device=device, dtype=dtype).requires_grad_(),)

    return make


def _elementwise_bytes(reads_fwd, reads_bwd):
    # fwd: read x, write y; bwd: read x and grad, write grad_x
    def moved(shape, dtype):
        nb = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        f, b = (reads_fwd + 1) * nb, (reads_bwd + 1) * nb
        return {"fwd": f, "bwd": b, "fwdbwd": f + b}

    return moved


def _family_build(kind):
    """Ours vs the original module (U-GAT-IT adaILN/ILN, MUNIT LayerNorm as written in
    i2i_fast.models), ours loaded from the original's state_dict."""

    def build(shape, dtype, device):
        from .. import nn as fused
        from ..models import munit, ugatit

        c = shape[1]
        eager = {"adalin": ugatit.adaILN, "iln": ugatit.ILN, "layer_norm": munit.LayerNorm}[kind](c)
        ours = {"adalin": fused.AdaLIN, "iln": fused.ILN, "layer_norm": fused.LayerNorm}[kind](c)
        with torch.no_grad():
            for p in eager.parameters():  # away from the init so every term matters
                p.uniform_(0.2, 0.8)
        ours.load_state_dict(eager.state_dict())
        return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)

    return build


def _adalin_inputs(shape, dtype, device, gen):
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    g = (torch.rand(n, c, generator=gen) + 0.5).to(device=device, dtype=dtype).requires_grad_()
    b = torch.randn(n, c, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    return x, g, b


def _x_inputs(shape, dtype, device, gen):
    return (torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(),)


_NORM_SHAPES = ((1, 256, 64, 64), (1, 128, 128, 128), (1, 64, 256, 256), (8, 256, 64, 64))

OPS = {
    "instance_norm": Op(
        name="instance_norm",
        build=_in_build,
        make_inputs=_kink_safe_inputs((2, 3)),
        moved=_elementwise_bytes(1, 2),
        shapes=((1, 256, 64, 64), (1, 64, 256, 256), (8, 256, 64, 64)),
        cpu_shapes=((1, 256, 64, 64), (1, 64, 128, 128)),
    ),
    "instance_norm_pad": Op(
        name="instance_norm_pad",
        build=_in_pad_build,
        make_inputs=_kink_safe_inputs((2, 3)),
        moved=_in_pad_moved,
        shapes=((1, 256, 64, 64), (8, 256, 64, 64)),
        cpu_shapes=((1, 256, 64, 64),),
    ),
    "batch_norm": Op(
        name="batch_norm",
        build=_bn_build,
        make_inputs=_kink_safe_inputs((0, 2, 3)),
        moved=_elementwise_bytes(1, 2),
        shapes=((1, 128, 64, 64), (1, 64, 128, 128), (4, 256, 32, 32)),
        cpu_shapes=((1, 64, 128, 128),),
    ),
    "adalin": Op(
        name="adalin",
        build=_family_build("adalin"),
        make_inputs=_adalin_inputs,
        moved=_elementwise_bytes(1, 2),
        shapes=_NORM_SHAPES,
        cpu_shapes=((1, 256, 64, 64),),
    ),
    "iln": Op(
        name="iln",
        build=_family_build("iln"),
        make_inputs=_x_inputs,
        moved=_elementwise_bytes(1, 2),
        shapes=_NORM_SHAPES,
        cpu_shapes=((1, 256, 64, 64),),
    ),
    "layer_norm": Op(
        name="layer_norm",
        build=_family_build("layer_norm"),
        make_inputs=_x_inputs,
        moved=_elementwise_bytes(1, 2),
        shapes=_NORM_SHAPES,
        cpu_shapes=((1, 256, 64, 64),),
    ),
}


# ---- reflection pad ----
# reflection_pad2d shapes are (N, C, H, W, pad); reflection_pad_conv2d shapes are
# (N, C_in, H, W, C_out, kernel, stride, padding): the (pad, conv) pairs of the reference models.
class _ReflectionPad(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        from ..functional import reflection_pad2d

        return reflection_pad2d(x, self.pad)


def _pad_build(shape, dtype, device):
    p = shape[4]
    return _ReflectionPad(p).to(device), nn.ReflectionPad2d(p).to(device)


def _pad_inputs(shape, dtype, device, gen):
    return (torch.randn(shape[:4], generator=gen).to(device=device, dtype=dtype).requires_grad_(),)


def _pad_moved(shape, dtype):
    n, c, h, w, p = shape
    e = torch.empty((), dtype=dtype).element_size()
    small, big = n * c * h * w * e, n * c * (h + 2 * p) * (w + 2 * p) * e
    return {"fwd": small + big, "bwd": big + small, "fwdbwd": 2 * (small + big)}


def _pad_conv_build(shape, dtype, device):
    from ..nn import ReflectionPadConv2d

    n, ci, h, w, co, k, s, p = shape
    ours = ReflectionPadConv2d(ci, co, k, stride=s, padding=p)
    eager = nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(ci, co, k, stride=s))
    eager[1].load_state_dict(ours.state_dict())
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _pad_conv_inputs(shape, dtype, device, gen):
    return (torch.randn(shape[:4], generator=gen).to(device=device, dtype=dtype).requires_grad_(),)


def _pad_conv_moved(shape, dtype):
    # compulsory traffic: x, weight, output (fwd); grad out, x, weight, grad x, grad weight (bwd)
    n, ci, h, w, co, k, s, p = shape
    e = torch.empty((), dtype=dtype).element_size()
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x, wt, y = n * ci * h * w * e, co * ci * k * k * e, n * co * ho * wo * e
    return {"fwd": x + wt + y, "bwd": y + 2 * x + 2 * wt, "fwdbwd": 2 * x + 3 * wt + 2 * y + x}


def padded_bytes(shape, dtype) -> int:
    """Bytes of the padded input that eager ReflectionPad2d -> Conv2d materializes per pass
    (forward: the padded copy; backward: its gradient)."""
    n, ci, h, w, co, k, s, p = shape
    return n * ci * (h + 2 * p) * (w + 2 * p) * torch.empty((), dtype=dtype).element_size()


OPS["reflection_pad2d"] = Op(
    name="reflection_pad2d",
    build=_pad_build,
    make_inputs=_pad_inputs,
    moved=_pad_moved,
    shapes=((1, 64, 256, 256, 3), (1, 256, 64, 64, 1), (8, 256, 64, 64, 1)),
    cpu_shapes=((1, 256, 64, 64, 1), (1, 64, 128, 128, 3)),
)
OPS["reflection_pad_conv2d"] = Op(
    name="reflection_pad_conv2d",
    build=_pad_conv_build,
    make_inputs=_pad_conv_inputs,
    moved=_pad_conv_moved,
    shapes=(
        (1, 3, 256, 256, 64, 7, 1, 3),  # CycleGAN / U-GAT-IT stem
        (1, 256, 64, 64, 256, 3, 1, 1),  # ResNet block, batch 1
        (8, 256, 64, 64, 256, 3, 1, 1),  # ResNet block, batch 8
        (1, 64, 256, 256, 3, 7, 1, 3),  # head 7x7 64 -> 3
        (1, 64, 256, 256, 128, 3, 2, 1),  # U-GAT-IT downsampling (reflect 1, stride 2)
        (1, 128, 256, 256, 64, 5, 1, 2),
    ),  # MUNIT 5x5 upsampling conv
    cpu_shapes=((1, 3, 128, 128, 32, 7, 1, 3), (1, 64, 64, 64, 64, 3, 1, 1), (1, 32, 64, 64, 64, 3, 2, 1)),
)
# ---- end reflection pad ----


# ---- spectral norm: W / sigma of a spectral-normalized conv's (O, K) weight matrix (shape (O, K))
class _SnWeight(nn.Module):
    """weight -> weight / (u . (weight v)) with fixed unit u, v: fused (F.spectral_norm_weight)
    or torch's expression as in torch.nn.utils.spectral_norm."""

    def __init__(self, o, k, fused):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.register_buffer("u", nn.functional.normalize(torch.randn(o, generator=g), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn(k, generator=g), dim=0))
        self.fused = fused

    def forward(self, w):
        if self.fused:
            from ..functional import spectral_norm_weight

            return spectral_norm_weight(w, self.u, self.v)
        return w / torch.dot(self.u, torch.mv(w, self.v))


def _sn_build(shape, dtype, device):
    return (
        _SnWeight(*shape, True).to(device=device, dtype=dtype),
        _SnWeight(*shape, False).to(device=device, dtype=dtype),
    )


def _sn_inputs(shape, dtype, device, gen):
    return ((torch.randn(shape, generator=gen) * 0.05).to(device=device, dtype=dtype).requires_grad_(),)


def _sn_moved(shape, dtype):
    # fwd: read W, write W / sigma; bwd: read grad and W, write grad W (u, v negligible)
    nb = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return {"fwd": 2 * nb, "bwd": 3 * nb, "fwdbwd": 5 * nb}


OPS["spectral_norm"] = Op(
    name="spectral_norm",
    build=_sn_build,
    make_inputs=_sn_inputs,
    moved=_sn_moved,
    shapes=((512, 4096), (1024, 8192), (2048, 16384)),  # U-GAT-IT D's last convs (4x4 kernels) at ngf 64
    cpu_shapes=((256, 2048),),
)


# ---------------------------------------------------------------- losses
# Whole loss computations of one training step, fused (i2i_fast.functional) vs the original
# eager formulas. "shape" is (batch, image size): the D outputs follow the models at that
# size ((1,1,30,30) local / (1,1,6,6) global PatchGAN and (B,2) CAM logits for U-GAT-IT at
# 256; MUNIT's 3 scales (16, 8, 4) at 256), images (B,3,S,S) for the L1 terms.
def _patch(size, n_layers):  # PatchGAN output side of a k4 s2 (n_layers-2 times) s1 s1 stack
    s = size
    for _ in range(n_layers - 2):
        s = s // 2
    return s - 2


def _loss_defs():
    from .. import functional as LF

    mse, l1, bce = nn.functional.mse_loss, nn.functional.l1_loss, nn.functional.binary_cross_entropy_with_logits

    def lsgan(p, real):
        return mse(p, torch.ones_like(p) if real else torch.zeros_like(p))

    def ugatit_d_shapes(b, s):
        return [(b, 1, _patch(s, 7), _patch(s, 7)), (b, 2), (b, 1, _patch(s, 5), _patch(s, 5)), (b, 2)]

    defs = {}

    # U-GAT-IT D step: per domain, global and local D, logits and CAM logits, real and fake
    # (8 terms per domain; both domains = 16 terms summed into one loss).
    def ugd_inputs(b, s):
        return [(sh, True) for _ in range(2) for sh in ugatit_d_shapes(b, s) for _ in range(2)]

    def ugd_eager(*t):
        return sum(lsgan(t[k], True) + lsgan(t[k + 1], False) for k in range(0, len(t), 2))

    def ugd_ours(*t):
        return LF.gan_loss(list(t), [True, False] * (len(t) // 2), "lsgan")

    defs["loss_ugatit_d"] = (ugd_inputs, ugd_eager, ugd_ours)

    # U-GAT-IT G step, both directions: adversarial LSGAN (4 terms per direction, x1), CAM
    # BCE (fake_cam -> 1, idt_cam -> 0, x1000), cycle L1 x10, identity L1 x10.
    def ugg_inputs(b, s):
        adv = [(sh, True) for _ in range(2) for sh in ugatit_d_shapes(b, s)]
        cam = [((b, 1), True)] * 4
        img = [((b, 3, s, s), True), ((b, 3, s, s), False)] * 4  # (rec, real), (idt, real) x2
        return adv + cam + img

    def ugg_eager(*t):
        adv, cam, img = t[:8], t[8:12], t[12:]
        loss = sum(lsgan(p, True) for p in adv)
        loss = loss + 1000 * sum(
            bce(c, torch.ones_like(c) if k % 2 == 0 else torch.zeros_like(c)) for k, c in enumerate(cam)
        )
        return loss + 10 * sum(l1(img[k], img[k + 1]) for k in range(0, 8, 2))

    def ugg_ours(*t):
        adv, cam, img = t[:8], t[8:12], t[12:]
        return (
            LF.gan_loss(list(adv), True, "lsgan")
            + LF.gan_loss(list(cam), [True, False, True, False], "vanilla", weights=1000.0)
            + LF.l1_loss([(img[k], img[k + 1]) for k in range(0, 8, 2)], 10.0)
        )

    defs["loss_ugatit_g"] = (ugg_inputs, ugg_eager, ugg_ours)

    # CycleGAN D step (both Ds): 0.5 * (lsgan(D(real), True) + lsgan(D(fake), False)) each.
    def cgd_inputs(b, s):
        p = _patch(s, 5)
        return [((b, 1, p, p), True)] * 4

    def cgd_eager(*t):
        return sum(0.5 * (lsgan(t[k], True) + lsgan(t[k + 1], False)) for k in (0, 2))

    def cgd_ours(*t):
        return LF.gan_loss(list(t), [True, False, True, False], "lsgan", weights=0.5)

    defs["loss_cyclegan_d"] = (cgd_inputs, cgd_eager, cgd_ours)

    # CycleGAN G step: lsgan G_A, G_B + cycle L1 x10 (two) + identity L1 x5 (two).
    def cgg_inputs(b, s):
        p = _patch(s, 5)
        return [((b, 1, p, p), True)] * 2 + [((b, 3, s, s), True), ((b, 3, s, s), False)] * 4

    def cgg_eager(*t):
        img = t[2:]
        return (
            lsgan(t[0], True)
            + lsgan(t[1], True)
            + 10 * (l1(img[0], img[1]) + l1(img[2], img[3]))
            + 5 * (l1(img[4], img[5]) + l1(img[6], img[7]))
        )

    def cgg_ours(*t):
        img = t[2:]
        return LF.gan_loss([t[0], t[1]], True, "lsgan") + LF.l1_loss(
            [(img[k], img[k + 1]) for k in range(0, 8, 2)], [10.0, 10.0, 5.0, 5.0]
        )

    defs["loss_cyclegan_g"] = (cgg_inputs, cgg_eager, cgg_ours)

    # MUNIT MsImageDis lsgan, D (fake -> 0, real -> 1 at 3 scales) + G (fake -> 1), one domain.
    def mu_inputs(b, s):
        sides = [s // 16, s // 32, s // 64]
        return [((b, 1, q, q), True) for q in sides] * 3

    def mu_eager(*t):
        d = sum(torch.mean((o0 - 0) ** 2) + torch.mean((o1 - 1) ** 2) for o0, o1 in zip(t[:3], t[3:6]))
        return d + sum(torch.mean((o - 1) ** 2) for o in t[6:])

    def mu_ours(*t):
        return LF.gan_loss(list(t[:6]), [False] * 3 + [True] * 3, "lsgan") + LF.gan_loss(list(t[6:]), True, "lsgan")

    defs["loss_munit"] = (mu_inputs, mu_eager, mu_ours)
    return defs


class _LossModule(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *t):
        return self.fn(*t)


def _loss_op(name):
    def build(shape, dtype, device):
        _, eager, ours = _loss_defs()[name]
        return _LossModule(ours), _LossModule(eager)

    def make_inputs(shape, dtype, device, gen):
        specs = _loss_defs()[name][0](*shape)
        return tuple(
            (torch.randn(sh, generator=gen) * 2).to(device=device, dtype=dtype).requires_grad_(rg) for sh, rg in specs
        )

    def moved(shape, dtype):
        specs = _loss_defs()[name][0](*shape)
        es = torch.empty((), dtype=dtype).element_size()
        nread = sum(math.prod(sh) for sh, _ in specs) * es
        ngrad = sum(math.prod(sh) for sh, rg in specs if rg) * es
        return {"fwd": nread, "bwd": 2 * ngrad, "fwdbwd": nread + 2 * ngrad}

    return Op(
        name=name,
        build=build,
        make_inputs=make_inputs,
        moved=moved,
        shapes=((1, 256), (4, 256)),
        cpu_shapes=((1, 256),),
    )


LOSS_OPS = ("loss_ugatit_d", "loss_ugatit_g", "loss_cyclegan_d", "loss_cyclegan_g", "loss_munit")
OPS.update({name: _loss_op(name) for name in LOSS_OPS})


def shapes_for(op: str, device, quick: bool = False) -> tuple:
    """The GPU shapes (docs/benchmarks.md) on CUDA; the small CPU list with --quick or on CPU (unless
    I2I_FAST_BENCH_FULL=1)."""
    small = quick or (torch.device(device).type == "cpu" and not full_shapes())
    return OPS[op].cpu_shapes if small else OPS[op].shapes


# -------------------------------------------------------------------------------- cases
def _raise_recompile_limit(n=64):
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # one compiled graph per case
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), n))


class Case:
    """One (op, shape, dtype, device): modules, rotating input sets, the compiled baseline
    (compiled and warmed up once) and cached timings per (impl, mode)."""

    def __init__(self, op: Op, shape, dtype, device, *, quick=False, seed=0):
        self.op, self.shape, self.dtype = op, tuple(shape), dtype
        self.device = torch.device(device)
        self.quick = quick
        self.ours, self.eager = op.build(self.shape, dtype, self.device)
        self.moved = op.moved(self.shape, dtype)
        try:
            self.backend = _backend.select(self.device)
        except Exception as e:  # noqa: BLE001 - reported, the op itself will raise
            self.backend = f"error: {e}"
        # Inputs rotate over > 4x L2 on CUDA, so every call reads from DRAM.
        sets = 1
        if self.device.type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 50 << 20)
            sets = max(1, min(64, math.ceil(4 * l2 / self.moved["fwdbwd"])))
        gen = torch.Generator().manual_seed(seed)
        self.inputs = [op.make_inputs(self.shape, dtype, self.device, gen) for _ in range(sets)]
        with torch.no_grad():
            out = self.eager(*self.inputs[0])
        self.grads = [
            torch.randn(out.shape, generator=gen).to(device=self.device, dtype=out.dtype) for _ in range(sets)
        ]
        self._compiled = None
        self.compile_error: Optional[str] = None
        self.compile_s: Optional[float] = None
        self._timings: dict = {}
        self._noise: dict = {}  # mode -> why its timings are noisy (None: they are not)
        self._parity = None

    @property
    def key(self) -> str:
        return f"{self.op.name} {'x'.join(map(str, self.shape))} {DTYPE_NAMES.get(self.dtype, self.dtype)}"

    def compiled(self):
        """torch.compile of the eager baseline, compiled and warmed up (fwd+bwd) on first use;
        None when compiling failed (reason in compile_error)."""
        if self._compiled is None and self.compile_error is None:
            _raise_recompile_limit()
            t0 = time.perf_counter()
            try:
                m = torch.compile(self.eager, dynamic=False)
                self._fwdbwd(m, self.inputs[0], self.grads[0])
                self._fwdbwd(m, self.inputs[0], self.grads[0])
                synchronize(self.device)
                self._compiled = m
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                msg = str(e).strip().splitlines()
                self.compile_error = f"{type(e).__name__}: {msg[0][:200] if msg else ''}"
            self.compile_s = time.perf_counter() - t0
        return self._compiled

    def module(self, impl: str):
        if impl == "compile":
            return self.compiled()
        return {"ours": self.ours, "eager": self.eager}[impl]

    @staticmethod
    def _fwdbwd(m, inp, g):
        out = m(*inp)
        return out, torch.autograd.grad(out, [t for t in inp if t.requires_grad], g)

    def fn(self, impl: str, mode: str):
        """(run, setup) for measure(): run(*setup()) runs `mode` of `impl` on the next input set
        (inputs rotate); for "bwd" the untimed setup runs the forward, run the backward."""
        m = self.module(impl)
        if m is None:
            raise RuntimeError(f"torch.compile failed: {self.compile_error}")
        sets = list(zip(self.inputs, self.grads))
        i = [0]

        def next_set():
            i[0] = (i[0] + 1) % len(sets)
            return sets[i[0]]

        if mode == "fwd":
            return (lambda inp, g: m(*inp)), next_set
        if mode == "fwdbwd":
            return (lambda inp, g: self._fwdbwd(m, inp, g)), next_set
        if mode == "bwd":

            def forward():
                inp, g = next_set()
                return m(*inp), [t for t in inp if t.requires_grad], g

            return (lambda out, diff, g: torch.autograd.grad(out, diff, g)), forward
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def parity(self):
        """(ok, detail): ours vs eager forward output and input gradients, same inputs, cached."""
        if self._parity is None:
            inp, g = self.inputs[0], self.grads[0]
            # TF32 off for the check: two convolution algorithms in TF32 differ by ~1e-3, more
            # than the fp32 tolerance (the timings keep torch's TF32 setting)
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
            try:
                yo, go = self._fwdbwd(self.ours, inp, g)
                ye, ge = self._fwdbwd(self.eager, inp, g)
            finally:
                torch.backends.cudnn.allow_tf32 = tf32
            atol, rtol = TOL.get(self.dtype, (1e-4, 1e-4))
            ok, parts = True, []
            for name, a, b in [("out", yo, ye)] + [(f"grad{k}", a, b) for k, (a, b) in enumerate(zip(go, ge))]:
                a, b = a.detach().float(), b.detach().float()
                good = a.shape == b.shape and bool(torch.isclose(a, b, rtol, atol, equal_nan=True).all())
                err = (a - b).abs().nan_to_num(float("inf")).max().item() if a.shape == b.shape else float("inf")
                ok &= good
                parts.append(f"{name} max|d|={err:.2e}")
            self._parity = (ok, f"{', '.join(parts)} (atol={atol:g}, rtol={rtol:g})")
        return self._parity

    def peak_mb(self, impl: str) -> Optional[float]:
        """Peak CUDA memory (MiB) of one forward+backward of impl above what was allocated
        before it (torch.cuda.max_memory_allocated); None on CPU: not measured there."""
        if self.device.type != "cuda" or self.module(impl) is None:
            return None
        key = ("peak", impl)
        if key not in self._timings:
            synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            out = self._fwdbwd(self.module(impl), self.inputs[0], self.grads[0])
            synchronize(self.device)
            self._timings[key] = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
            del out
        return self._timings[key]

    ROUNDS = 5  # alternating measurement rounds per mode

    def timing(self, impl: str, mode: str) -> Optional[Timing]:
        """Median-based timing of (impl, mode), measured once per case; None if compile failed."""
        if (impl, mode) not in self._timings:
            self._measure_mode(mode)
        return self._timings[(impl, mode)]

    def _measure_mode(self, mode: str) -> None:
        """Times eager, compile and ours for `mode` in alternating rounds and pools each one's
        samples, so a change of load on a shared machine (or clocks on a GPU) during the run
        hits all three alike instead of skewing their ratios."""
        impls = [i for i in ("eager", "compile", "ours") if i != "compile" or self.compiled() is not None]
        if self.device.type == "cuda":
            kw = dict(budget_s=0.1 if self.quick else 0.3, warmup=10, min_reps=20, max_reps=1000)
        else:
            kw = dict(budget_s=0.2 if self.quick else 0.6, warmup=2, min_reps=3 if self.quick else 5, max_reps=200)
        n = self.ROUNDS
        per = dict(
            budget_s=kw["budget_s"] / n, min_reps=max(1, -(-kw["min_reps"] // n)), max_reps=max(1, kw["max_reps"] // n)
        )
        fns = {i: self.fn(i, mode) for i in impls}

        def rounds():
            samples: dict = {i: [] for i in impls}
            for r in range(n):
                for i in impls:
                    run, setup = fns[i]
                    samples[i].append(
                        measure(run, self.device, setup=setup, warmup=kw["warmup"] if r == 0 else 1, **per)
                    )
            return {i: Timing.pool(t) for i, t in samples.items()}

        timings, self._noise[mode] = until_quiet(rounds)
        self._timings[("compile", mode)] = None
        self._timings.update({(i, mode): t for i, t in timings.items()})

    def noise(self, mode: str) -> Optional[str]:
        """Why the timings of `mode` cannot be trusted, or None (measures them if needed)."""
        self.timing("ours", mode)
        return self._noise[mode]


_CASES: dict = {}


def get_case(op: str, shape, dtype, device, *, quick=None) -> Case:
    """The Case for these arguments, built once per process (so torch.compile runs once);
    quick=None: quick_selection()."""
    quick = quick_selection() if quick is None else quick
    key = (op, tuple(shape), dtype, str(torch.device(device)), quick)
    if key not in _CASES:
        _CASES[key] = Case(OPS[op], shape, dtype, device, quick=quick)
    return _CASES[key]


def summarize(case: Case, mode: str, impl: str = "ours") -> dict:
    """time_ms (median), GB/s, % of copy bandwidth (CUDA) of (impl, mode); for impl="ours"
    also the baselines' medians and the speedups, all measured in this process."""
    t = case.timing(impl, mode)
    d = {
        "op": case.op.name,
        "shape": list(case.shape),
        "dtype": DTYPE_NAMES.get(case.dtype, str(case.dtype)),
        "device": str(case.device),
        "mode": mode,
        "impl": impl,
        "backend": case.backend,
        "bytes": case.moved[mode],
        "rotating_sets": len(case.inputs),
        "time_ms": None,
        "gbps": None,
    }
    if t is not None:
        d.update(
            time_ms=t.median_ms,
            reps=len(t.times_ms),
            gbps=case.moved[mode] / (t.median_ms * 1e-3) / 1e9,
            **t.spread(),
            noisy=case.noise(mode),
        )
        bw = copy_bandwidth_gbps(case.device)
        if bw:
            d.update(copy_bw_gbps=bw, pct_of_copy_bw=100.0 * d["gbps"] / bw)
    if impl in ("ours", "compile"):
        d["compile"] = "ok" if case.compiled() is not None else f"failed: {case.compile_error}"
        d["compile_s"] = case.compile_s
    if impl == "ours" and t is not None:
        for base in ("eager", "compile"):
            tb = case.timing(base, mode)
            d[f"{base}_ms"] = tb.median_ms if tb else None
            d[f"{base}_min_ms"] = tb.min_ms if tb else None
            d[f"{base}_iqr_ms"] = tb.iqr_ms if tb else None
            d[f"speedup_vs_{base}"] = tb.median_ms / t.median_ms if tb else None
            d[f"speedup_vs_{base}_min"] = tb.min_ms / t.min_ms if tb else None
    if mode == "fwdbwd":  # peak memory of forward+backward (CUDA; None = not measured)
        d["peak_mb"] = case.peak_mb(impl)
        if impl == "ours":
            d["eager_peak_mb"] = case.peak_mb("eager")
    return d


def pytest_benchmark_case(benchmark, case, mode: str, impl: str) -> None:
    """The body every benchmarks/ suite shares: parity first (a failure fails the benchmark),
    skip a failed torch.compile with its reason, extra_info from summarize(), then
    pytest-benchmark's pedantic rounds of the same callable."""
    import pytest

    device = str(case.device)
    benchmark.group = f"{case.key} {device} {mode}"
    ok, detail = case.parity()
    assert ok, f"parity ours vs eager failed for {case.key} on {device}: {detail}"
    benchmark.extra_info["parity"] = detail
    if impl == "compile" and case.compiled() is None:
        benchmark.extra_info["compile"] = f"failed: {case.compile_error}"
        pytest.skip(f"torch.compile failed: {case.compile_error}")
    benchmark.extra_info.update(summarize(case, mode, impl))
    warn_if_noisy(benchmark.extra_info, f"{case.key} {device} {mode} {impl}")
    cuda = case.device.type == "cuda"
    median_s = case.timing(impl, mode).median_ms * 1e-3
    rounds = max(5, min(200 if cuda else 30, int((0.3 if cuda else 0.5) / max(median_s, 1e-6))))
    run, setup = case.fn(impl, mode)
    benchmark.pedantic(
        **pedantic_args(run, case.device, setup), rounds=rounds, warmup_rounds=10 if cuda else 2, iterations=1
    )
