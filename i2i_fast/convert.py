"""convert(model) / plan(model) / revert(model): rewire a model built from the ORIGINAL
image-to-image classes (or anyone's look-alikes) onto i2i_fast's fused modules, in place, keeping
its Parameter and buffer objects and its state_dict keys; and back.

Layers are recognised by what they compute, not by import path:
  * torch.nn.InstanceNorm2d, or a subclass that keeps its forward (overriding _check_input_dim
    only)                                           -> i2i_fast.InstanceNorm2d (all flags, buffers)
  * torch.nn.BatchNorm2d (exact class)              -> i2i_fast.BatchNorm2d    (pix2pix, --norm batch)
  * class "ILN" with rho/gamma/beta (1, C, 1, 1)    -> i2i_fast.ILN              (U-GAT-IT)
  * class "adaILN" with rho (1, C, 1, 1)            -> i2i_fast.AdaLIN           (U-GAT-IT)
  * class "LayerNorm" (num_features, eps, affine, gamma/beta (C,)) inside a conv block
                                                    -> i2i_fast.LayerNorm        (MUNIT/UNIT)
  * class "AdaptiveInstanceNorm2d" (running_mean/var buffers, assigned weight/bias)
                                                    -> AdaptiveInstanceNorm2d below, an
    i2i_fast.AdaIN keeping the class name (MUNIT finds its AdaIN layers by class name).
  The four classes matched by name are swapped only when a float64 copy of the layer and of its
  replacement agree on a random input (their forward is the user's code).
Then, where the data flow is known (plain nn.Sequential; MUNIT Conv2dBlock, U-GAT-IT
ResnetAdaILNBlock and pix2pix UnetSkipConnectionBlock when torch.fx traces their forward to the
original's graph):
  * norm -> ReLU / LeakyReLU / Tanh: the activation runs in the norm's epilogue; its slot
    becomes a `Folded` placeholder (activations have no state: keys unchanged); also a U-Net
    block's downnorm -> the inner block's in-place LeakyReLU (UnetSkipConnectionBlock: the
    in-place activation makes the skip carry the activated tensor, as the fused norm's output);
  * norm -> ReflectionPad2d(p) -> Conv2d(padding=0): the norm writes its output padded
    (out_pad=p), when the installed i2i_fast norms have out_pad;
  * ReflectionPad2d(p) -> Conv2d(padding=0): i2i_fast.ReflectionPadConv2d, when installed;
  * ReLU / LeakyReLU -> ReflectionPad2d(p) -> Conv2d(padding=0) (no norm between: MUNIT/UNIT's
    discriminator blocks, MUNIT's style encoder): the activation runs in that
    ReflectionPadConv2d's pad op (its `activation`); its slot becomes a `Folded` placeholder.
    Not when it works in place on the chain's input (a residual body's input is the skip);
  * torch.nn.utils.spectral_norm hooks (dim 0: Conv2d / Linear, U-GAT-IT's discriminators):
    the hook's class becomes i2i_fast.nn.FusedSpectralNorm (W / sigma fused; same u, v,
    weight_orig, state_dict); the module itself stays as it is;
  * residual blocks: any module whose only child is a plain Sequential `body` and whose forward
    traces to x + body(x) (CycleGAN/U-GAT-IT ResnetBlock, UNIT/StarGAN ResidualBlock, MUNIT
    ResBlock), and U-GAT-IT's ResnetAdaILNBlock: replaced by a module holding the same submodules
    under the same names whose last norm adds the skip (residual=x), once a float64 copy of the
    block and of its replacement agree on a random input, in train and eval mode.
Anything else is left alone, with the reason in the plan. A module with hooks is never rewired
(its hooks would see different tensors); a module used at several places, in this model or in
another one that shares it, is only swapped, and a fusion never reaches across a container that
another model shares.
"""

from __future__ import annotations

import copy
import gc
import inspect
import logging
import operator
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx
from torch import nn

from . import nn as fnn

__all__ = [
    "convert",
    "plan",
    "revert",
    "Plan",
    "Folded",
    "FusedResidualBlock",
    "FusedResnetAdaILNBlock",
    "AdaptiveInstanceNorm2d",
]

log = logging.getLogger(__name__)

_FUSED_NORMS = (fnn.InstanceNorm2d, fnn.BatchNorm2d, fnn.ILN, fnn.AdaLIN, fnn.LayerNorm, fnn.AdaIN)


class AdaptiveInstanceNorm2d(fnn.AdaIN):
    """i2i_fast.AdaIN under MUNIT's class name: AdaINGen.assign_adain_params and
    get_num_adain_params find the AdaIN layers by ``__class__.__name__``."""


# A replacement keeps the module it replaced under this attribute, set with object.__setattr__
# so that it is not registered: not in state_dict(), modules() or .to(). revert() puts it back.
_ORIGINAL = "_i2i_fast_original"


def _remember(new: nn.Module, old: nn.Module) -> nn.Module:
    object.__setattr__(new, _ORIGINAL, old)
    return new


class Folded(nn.Identity):
    """Placeholder for an activation (or a reflection pad) now computed by a neighbouring fused
    module. Stateless, so the state_dict keys of the container are unchanged."""

    def __init__(self, original: nn.Module, into: str):
        super().__init__()
        self.what, self.into = repr(original), into
        _remember(self, original)

    def extra_repr(self) -> str:
        return f"{self.what} folded into {self.into}"


class FusedResidualBlock(nn.Module):
    """x + body(x) where body's last norm adds x in its epilogue (residual=x). The body keeps
    the original attribute name (conv_block, main, model), so state_dict keys are unchanged.
    The last element of body is a fused norm, or a MUNIT Conv2dBlock ending in one."""

    def __init__(self, body_name: str, body: nn.Sequential, original: str):
        super().__init__()
        self.body_name, self.original = body_name, original
        setattr(self, body_name, body)

    def forward(self, x):
        body = getattr(self, self.body_name)
        h = x
        for m in body[:-1]:
            h = m(h)
        last = body[-1]
        if isinstance(last, _FUSED_NORMS):
            return last(h, residual=x)
        h = last.conv(last.pad(h))  # MUNIT Conv2dBlock(norm, activation none)
        return last.norm(h, residual=x)

    def extra_repr(self) -> str:
        return f"{self.original}: x + {self.body_name}(x), add fused into the last norm"


class FusedResnetAdaILNBlock(nn.Module):
    """U-GAT-IT ResnetAdaILNBlock with the skip added by norm2 (same attribute names)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        for name, m in block.named_children():  # registration order = state_dict order
            setattr(self, name, m)

    def forward(self, x, gamma, beta):
        out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        return self.norm2(self.conv2(self.pad2(out)), gamma, beta, residual=x)


# ------------------------------------------------------------------------- recognition


def _params(m) -> dict:
    return dict(m.named_parameters(recurse=False))


def _buffers(m) -> dict:
    return dict(m.named_buffers(recurse=False))


def _has_hooks(m: nn.Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
    )


# The methods whose override changes what a torch norm computes (forward and what it calls;
# _check_input_dim only raises, so a subclass may override it and still be converted).
_IN_METHODS = ("forward", "_get_no_batch_dim", "_handle_no_batch_input", "_apply_instance_norm")


def _overridden(m: nn.Module, base: type, methods=("forward",)) -> list:
    """The methods of `methods` that type(m) defines differently from `base`."""
    return [n for n in methods if getattr(type(m), n, None) is not getattr(base, n, None)]


def _fused_base(m: nn.Module) -> Optional[type]:
    return next((c for c in (AdaptiveInstanceNorm2d,) + _FUSED_NORMS if isinstance(m, c)), None)


def _changed_forward(m: nn.Module) -> Optional[str]:
    """Why a subclass of a fusible norm class is left alone (it computes something else), or None."""
    base, methods = _fused_base(m), ("forward",)
    if base is None and isinstance(m, nn.InstanceNorm2d):
        base, methods = nn.InstanceNorm2d, _IN_METHODS
    if base is None:
        return None
    over = _overridden(m, base, methods)
    return (
        (
            f"{type(m).__name__}: subclass of {base.__module__.split('.')[0]}.{base.__name__} that overrides "
            f"{', '.join(over)}; kept as it is"
        )
        if over
        else None
    )


def _norm_kind(m: nn.Module) -> Optional[str]:
    """The kind of norm m is ("in", "bn", "iln", "adalin", "ln", "adain"), "fused" if it already
    is an i2i_fast module, else None (see _changed_forward for a subclass with its own forward)."""
    if _changed_forward(m):
        return None
    if isinstance(m, _FUSED_NORMS):
        return "fused"
    if isinstance(m, nn.InstanceNorm2d):
        return "in"
    if type(m) is nn.BatchNorm2d:  # subclasses (SyncBatchNorm, custom forwards) are left alone
        return "bn"
    name, p, b = type(m).__name__, _params(m), _buffers(m)
    eps = isinstance(getattr(m, "eps", None), float)
    if name == "ILN" and eps and set(p) == {"rho", "gamma", "beta"} and not b:
        c = p["rho"].shape[1] if p["rho"].dim() == 4 else -1
        if all(t.shape == (1, c, 1, 1) for t in p.values()):
            return "iln"
    if name.lower() in ("adailn", "adalin") and eps and set(p) == {"rho"} and not b:
        if p["rho"].dim() == 4 and p["rho"].shape[0] == p["rho"].shape[2] == p["rho"].shape[3] == 1:
            return "adalin"
    if (
        name == "LayerNorm"
        and not isinstance(m, nn.LayerNorm)
        and eps
        and isinstance(getattr(m, "num_features", None), int)
        and isinstance(getattr(m, "affine", None), bool)
        and not b
        and set(p) == ({"gamma", "beta"} if m.affine else set())
        and all(t.shape == (m.num_features,) for t in p.values())
    ):
        return "ln"
    if (
        name == "AdaptiveInstanceNorm2d"
        and eps
        and isinstance(getattr(m, "num_features", None), int)
        and not p
        and set(b) == {"running_mean", "running_var"}
        and hasattr(m, "weight")
    ):
        return "adain"
    return None


def _looks_like_norm(m) -> bool:
    """A leaf layer named like a norm that none of the rules above recognised."""
    n = type(m).__name__
    return not m._modules and ("norm" in n.lower() or n in ("ILN", "adaILN"))


_ACTS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh"}


# what a pad+conv can take in its pad op (functional.PAD_ACTIVATIONS)
_PAD_ACTS = ("relu", "leaky_relu")
# layers whose output can be their input tensor itself (an in-place activation after them
# would write the chain's input)
_PASS_INPUT = (nn.Identity, nn.modules.dropout._DropoutNd)


def _activation(m) -> Optional[tuple]:
    kind = _ACTS.get(type(m))
    if kind is None:
        return None
    return kind, float(getattr(m, "negative_slope", 0.2))


# ------------------------------------------------------- forward by meaning (torch.fx)


class _LeafTracer(torch.fx.Tracer):
    """Traces a module's own forward; every child module is a leaf (one call_module node)."""

    def is_leaf_module(self, m, qualname):
        return True


_ADDS = {operator.add, operator.iadd, torch.add}  # x + y, x += y (fx records iadd as add too)


def _dataflow(m: nn.Module, forward=None) -> Optional[tuple]:
    """m's forward (or `forward` run with m's attributes) as a canonical tuple: node kinds,
    targets and arguments by position, additions' operands sorted. None if fx cannot trace it."""
    if forward is not None:  # a stand-in sharing m's state (children, flags), with that forward
        stand_in = object.__new__(type("canonical", (nn.Module,), {"forward": forward}))
        stand_in.__dict__ = m.__dict__
        m = stand_in
    try:
        graph = _LeafTracer().trace(m)
    except Exception:  # noqa: BLE001 - data-dependent control flow, unsupported calls: unknown
        return None
    index = {}

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return ("node", index[a])
        if isinstance(a, (list, tuple)):
            return tuple(arg(b) for b in a)
        return ("const", repr(a))

    out = []
    for n in graph.nodes:
        index[n] = len(index)
        args = tuple(arg(a) for a in n.args)
        target = n.target
        if n.op == "call_function" and target in _ADDS:
            target, args = "add", tuple(sorted(args))
        elif n.op == "placeholder":
            target = "input"
        elif n.op == "call_function":
            target = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', repr(target))}"
        out.append((n.op, target, args, tuple(sorted((k, arg(v)) for k, v in n.kwargs.items()))))
    return tuple(out)


def _computes(m: nn.Module, forward) -> bool:
    """Does m's forward compute what `forward` (the original's, over m's children) computes?"""
    ours = _dataflow(m)
    return ours is not None and ours == _dataflow(m, forward)


def _conv2dblock_forward(self, x):  # MUNIT/UNIT Conv2dBlock
    x = self.conv(self.pad(x))
    if self.norm:
        x = self.norm(x)
    if self.activation:
        x = self.activation(x)
    return x


def _unet_block_forward(self, x):  # pix2pix UnetSkipConnectionBlock
    if self.outermost:
        return self.model(x)
    return torch.cat([x, self.model(x)], 1)


def _adailn_block_forward(self, x, gamma, beta):  # U-GAT-IT ResnetAdaILNBlock
    out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
    out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
    return out + x


def _residual_forward(body_name: str):  # x + body(x): CycleGAN, U-GAT-IT, UNIT, StarGAN, MUNIT
    def forward(self, x):
        return x + getattr(self, body_name)(x)

    return forward


_CONTAINERS = {
    "Conv2dBlock": _conv2dblock_forward,
    "UnetSkipConnectionBlock": _unet_block_forward,
    "ResnetAdaILNBlock": _adailn_block_forward,
}


def _adds(m: nn.Module) -> bool:
    """Does m's forward add tensors (a residual look-alike)?"""
    return any(op == "call_function" and target == "add" for op, target, _, _ in _dataflow(m) or ())


def _is_conv2dblock(m) -> bool:
    """MUNIT/UNIT Conv2dBlock: forward = activation(norm(conv(pad(x)))), norm/activation optional."""
    return (
        type(m).__name__ == "Conv2dBlock"
        and isinstance(getattr(m, "conv", None), nn.Conv2d)
        and isinstance(getattr(m, "pad", None), nn.Module)
        and hasattr(m, "norm")
        and hasattr(m, "activation")
        and _computes(m, _conv2dblock_forward)
    )


def _unet_inner_act(m) -> Optional[tuple]:
    """(parent, name, module) of the in-place LeakyReLU/ReLU that starts a U-Net block's
    Sequential `model`, for a pix2pix UnetSkipConnectionBlock (forward: cat([x, model(x)], 1));
    None otherwise. Its activation modifies x in place, so the skip carries the activated x:
    the norm before the block may compute it instead."""
    model = getattr(m, "model", None)
    if (
        type(m).__name__ != "UnetSkipConnectionBlock"
        or set(m._modules) != {"model"}
        or _has_hooks(m)
        or not _is_plain_sequential(model)
        or len(model) == 0
        or _has_hooks(model)
        or not isinstance(getattr(m, "outermost", None), bool)
        or not _computes(m, _unet_block_forward)
    ):
        return None
    first = model[0]
    if type(first) in (nn.LeakyReLU, nn.ReLU) and first.inplace:
        return model, next(iter(model._modules)), first
    return None


def _is_plain_sequential(m) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _reflection_pad(m) -> Optional[int]:
    if type(m) is nn.ReflectionPad2d and len(set(m.padding)) == 1:
        return m.padding[0]
    return None


def _plain_conv(m) -> bool:
    """A Conv2d with padding 0 that a fused module can take over (no hooks: spectral_norm and
    weight_norm are hooks; no parametrizations)."""
    return (
        type(m) is nn.Conv2d
        and tuple(m.padding) == (0, 0)
        and not _has_hooks(m)
        and not torch.nn.utils.parametrize.is_parametrized(m)
    )


def _has_out_pad(norm_cls) -> bool:
    try:
        return "out_pad" in inspect.signature(norm_cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def _rpconv_cls():
    import i2i_fast

    return getattr(i2i_fast, "ReflectionPadConv2d", None)


def _rpconv_fallback(cls, conv, p) -> Optional[str]:
    """Why the ReflectionPadConv2d replacing ReflectionPad2d(p) -> conv would not take its
    default path (groups, dilation, unequal strides), None when it does."""
    m = _build_on_meta(
        cls,
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=p,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=False,
    )
    return m.fallback


# ------------------------------------------------------------------------------- swaps


def _build_on_meta(cls, *args, **kw):
    with torch.device("meta"):
        return cls(*args, **kw)


def _carry(old: nn.Module, new: nn.Module, names) -> nn.Module:
    """new takes old's parameter/buffer objects (same device, dtype, and identity: an optimizer
    built on old keeps working), training flag and hooks."""
    for n in names:
        t = getattr(old, n)
        setattr(new, n, t)
    for n in set(_params(new)) | set(_buffers(new)):  # built on meta: all must come from old
        if n not in names and getattr(new, n) is not None:
            raise RuntimeError(f"convert: {type(old).__name__}.{n} was not carried over")
    _remember(new, old)
    new.train(old.training)
    for h in (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
    ):
        if hasattr(old, h):
            getattr(new, h).update(getattr(old, h))
    return new


def _swap(m: nn.Module, kind: str) -> nn.Module:
    if kind == "in":
        new = _build_on_meta(
            fnn.InstanceNorm2d,
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            bias=not m.affine or m.bias is not None,
        )
        names = [
            n
            for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            if n in _params(m) or n in _buffers(m)
        ]
        return _carry(m, new, names)
    if kind == "bn":
        new = _build_on_meta(
            fnn.BatchNorm2d,
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            bias=not m.affine or m.bias is not None,
        )
        names = [
            n
            for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            if n in _params(m) or n in _buffers(m)
        ]
        return _carry(m, new, names)
    if kind == "iln":
        return _carry(m, _build_on_meta(fnn.ILN, m.rho.shape[1], m.eps), ("rho", "gamma", "beta"))
    if kind == "adalin":
        return _carry(m, _build_on_meta(fnn.AdaLIN, m.rho.shape[1], m.eps), ("rho",))
    if kind == "ln":
        new = _build_on_meta(fnn.LayerNorm, m.num_features, m.eps, m.affine)
        return _carry(m, new, ("gamma", "beta") if m.affine else ())
    if kind == "adain":
        new = _build_on_meta(AdaptiveInstanceNorm2d, m.num_features, m.eps, m.momentum)
        new = _carry(m, new, ("running_mean", "running_var"))
        new.weight, new.bias = m.weight, m.bias
        return new
    raise ValueError(kind)


# ------------------------------------------------- numerical check of a rewrite (float64)

_CHECK_HW = 8  # the random input's height and width: above any body's reflection pad
_CHECK_TOL = 1e-9  # relative to the output's magnitude; float64 rewrites agree to ~1e-15


def _f64_copy(m: nn.Module) -> nn.Module:
    """A float64 CPU copy of m; on the meta device (no values), random ones of the same shapes."""
    meta = any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    c = _deepcopy(m)
    if meta:
        c = c.to_empty(device="cpu")
    c = c.to("cpu", torch.float64)
    if meta:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, t in list(c.named_parameters()) + list(c.named_buffers()):
                if t.is_floating_point():
                    t.copy_(
                        torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5
                        if n.endswith("running_var")
                        else torch.randn(t.shape, generator=g, dtype=t.dtype)
                    )
                else:
                    t.zero_()
    return c


def _check_inputs(m: nn.Module, channels: int, per_sample: bool) -> tuple:
    """Random float64 inputs for m: x (2, C, 9, 9), and (gamma, beta) (2, C) when per_sample. The
    AdaIN layers inside m get per-(n, c) weight and bias (MUNIT assigns them before a forward)."""
    g = torch.Generator().manual_seed(1)
    for a in m.modules():
        if _norm_kind(a) == "adain" or isinstance(a, AdaptiveInstanceNorm2d):
            a.weight, a.bias = (torch.randn(2 * a.num_features, generator=g, dtype=torch.float64) for _ in "wb")
    x = torch.randn(2, channels, _CHECK_HW, _CHECK_HW, generator=g, dtype=torch.float64)
    if per_sample:
        return (
            x,
            torch.randn(2, channels, generator=g, dtype=torch.float64),
            torch.randn(2, channels, generator=g, dtype=torch.float64),
        )
    return (x,)


def _config(m: nn.Module) -> tuple:
    """What, besides parameter values, decides what m computes: the classes and plain attributes
    of m and its submodules. Modules with equal configs need one check between them."""
    return tuple(
        (
            type(s),
            tuple(
                sorted(
                    (k, repr(v))
                    for k, v in s.__dict__.items()
                    if not k.startswith("_") and not isinstance(v, (torch.Tensor, nn.Module))
                )
            ),
        )
        for s in m.modules()
    )


_CHECKED: dict = {}  # (config, rewrite's kind) -> _mismatch's verdict


def _mode_matters(m: nn.Module) -> bool:
    return any(
        isinstance(s, nn.modules.dropout._DropoutNd)
        or getattr(s, "track_running_stats", False)
        or (_norm_kind(s) in ("bn", "adain"))
        for s in m.modules()
    )


def _mismatch(
    m: nn.Module, rewrite: Callable[[nn.Module], nn.Module], channels: int, per_sample: bool = False, kind: str = ""
) -> Optional[str]:
    """None when rewrite(copy of m) computes what m computes (float64; train mode, and eval mode
    where they differ; the same random numbers for both), else why not. Once per config."""
    key = (_config(m), kind, channels, per_sample)
    if key not in _CHECKED:
        if len(_CHECKED) > 4096:
            _CHECKED.clear()
        _CHECKED[key] = _compare(m, rewrite, channels, per_sample)
    return _CHECKED[key]


def _compare(m, rewrite, channels, per_sample):
    try:
        ref = _f64_copy(m)
        inputs = _check_inputs(ref, channels, per_sample)
        new = rewrite(_deepcopy(ref))
        for training in (True, False) if _mode_matters(ref) else (True,):
            ref.train(training), new.train(training)
            outs = []
            for mod in (ref, new):
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed(0)
                    outs.append(mod(*inputs))
            err = (outs[0] - outs[1]).abs().max().item() if outs[0].shape == outs[1].shape else float("inf")
            if not err <= _CHECK_TOL * (1.0 + outs[0].abs().max().item()):
                return f"its replacement differs from it by {err:.3g} in {'train' if training else 'eval'} mode"
    except Exception as e:  # noqa: BLE001 - anything that stops the check keeps the original
        return f"could not be checked ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return None


def _channels(m: nn.Module) -> Optional[int]:
    conv = next((c for c in m.modules() if isinstance(c, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


# ------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """What convert() changes (path, what) and leaves alone (path, why)."""

    changes: list = field(default_factory=list)
    left_alone: list = field(default_factory=list)
    _apply: list = field(default_factory=list, repr=False)
    root: Optional[nn.Module] = field(default=None, repr=False)  # set when the model itself is swapped

    def change(self, path, what, fn: Callable[[], None], order: int):
        self.changes.append((path or "<model>", what))
        self._apply.append((order, len(self._apply), fn))

    def leave(self, path, why):
        self.left_alone.append((path or "<model>", why))

    def counts(self) -> Counter:
        return Counter(what.split(":")[0] for _, what in self.changes)

    def summary(self) -> str:
        c = self.counts()
        parts = ", ".join(f"{n} {k}" for k, n in sorted(c.items())) or "nothing"
        return f"{len(self.changes)} changes ({parts}); {len(self.left_alone)} left alone"

    def __str__(self) -> str:
        lines = ["i2i_fast.convert plan: " + self.summary(), "changes:"]
        lines += [f"  {p}: {w}" for p, w in self.changes] or ["  (none)"]
        lines.append("left alone:")
        why = {}
        for p, w in self.left_alone:
            why.setdefault(w, []).append(p)
        for w, paths in why.items():
            more = f" and {len(paths) - 4} more" if len(paths) > 4 else ""
            lines.append(f"  {w} ({len(paths)}x: {', '.join(paths[:4])}{more})")
        if not why:
            lines.append("  (none)")
        return "\n".join(lines)

    __repr__ = __str__


_BY_NAME = ("iln", "adalin", "ln", "adain")  # norm kinds recognised by class name: checked numerically
_RESIDUAL_NAMES = ("ResnetBlock", "ResidualBlock", "ResBlock")  # the originals' names, for the plan

# Application order: norm swaps, then edits of containers, then block replacements.
_SWAP, _EDIT, _BLOCK = 0, 1, 2


# original module -> its replacement, across convert() calls: a block or norm that two networks
# share, converted one call each, gets the same replacement in both.
_REPLACED: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def _outside_uses(model: nn.Module) -> Counter:
    """How often each submodule of model is registered in a module outside model (a block that
    another, separately converted network shares). A fusion must not pair a module inside such a
    shared container with one outside it: the other network would compute something else."""
    gc.collect()  # only live modules count: garbage would make the result depend on timing
    inside = {id(m) for m in model.modules()}
    out = Counter()
    for o in gc.get_objects():
        if issubclass(type(o), nn.Module) and id(o) not in inside:  # type(): no __class__ lookups
            for c in o._modules.values():
                if c is not None and id(c) in inside:
                    out[id(c)] += 1
    return out


class _Planner:
    def __init__(self, model: nn.Module, check: bool = True):
        self.model = model
        self.plan = Plan()
        self.check = check  # verify rewrites numerically and look for other models sharing modules
        self.uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
        if check:
            for m in model.modules():
                if m in _REPLACED:  # replaced in another network already: shared with it
                    self.uses[id(m)] += 1
            by_id = {id(m): m for m in model.modules()}
            for mid, k in _outside_uses(model).items():  # every path through a shared container
                for m in by_id[mid].modules():
                    self.uses[id(m)] += k
        self.path = {id(m): n for n, m in model.named_modules()}
        self.kind = {}  # id(module) -> norm kind it will have after conversion
        self.rpconv = _rpconv_cls()

    # --- norms
    def norms(self):
        for p, m in self.model.named_modules():
            if self.rpconv is not None and isinstance(m, self.rpconv) and m.fallback:
                self.plan.leave(p, f"ReflectionPadConv2d runs path {m.fallback}")
                continue
            kind = _norm_kind(m)
            if kind == "fused":
                self.kind[id(m)] = "fused"
                continue
            if kind is None:
                if _changed_forward(m):
                    self.plan.leave(p, _changed_forward(m))
                elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                    self.plan.leave(p, f"{type(m).__name__}: only torch.nn.BatchNorm2d itself is fused")
                elif isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm3d)):
                    self.plan.leave(p, f"{type(m).__name__}: only 2-D instance norm is fused")
                elif _looks_like_norm(m):
                    self.plan.leave(p, f"{type(m).__name__}: unknown norm layer")
                continue
            if kind == "ln" and not self._ln_is_4d(m):
                self.plan.leave(p, "LayerNorm outside a conv block: input may not be 4-D (fused LayerNorm is 4-D only)")
                continue
            if kind in _BY_NAME and self.check and m not in _REPLACED:
                channels = m.rho.shape[1] if kind in ("iln", "adalin") else m.num_features
                why = _mismatch(m, lambda c, k=kind: _swap(c, k), channels, kind == "adalin", kind)
                if why:
                    self.plan.leave(p, f"{type(m).__name__}: {why}; kept as it is")
                    continue
            self.kind[id(m)] = kind
        # swap at every place a module is registered (shared modules stay shared)
        new = {}
        if self.kind.get(id(self.model)) not in (None, "fused"):  # the model is one norm

            def root():
                self.plan.root = _swap(self.model, self.kind[id(self.model)])

            self.plan.change(
                "",
                f"swap: {type(self.model).__name__} -> i2i_fast {self._target(self.model)} "
                "(a new module holding the same Parameters is returned)",
                root,
                _SWAP,
            )
        for parent in self.model.modules():
            for name, m in parent._modules.items():
                if m is not None and self.kind.get(id(m)) not in (None, "fused"):
                    if id(m) not in new:
                        new[id(m)] = None
                        self.plan.change(
                            self._child_path(parent, name),
                            f"swap: {type(m).__name__} -> i2i_fast {self._target(m)}",
                            self._swap_fn(parent, name, m, new),
                            _SWAP,
                        )
                    else:
                        self.plan._apply.append((_SWAP, len(self.plan._apply), self._swap_fn(parent, name, m, new)))

    def _swap_fn(self, parent, name, m, memo):
        def fn():
            if memo[id(m)] is None:
                earlier = _REPLACED.get(m)  # shared with a network converted before: the same module,
                plain = earlier is not None and earlier.activation is None and not earlier.out_pad
                memo[id(m)] = earlier if plain else _swap(m, self.kind[id(m)])  # unless it fused its neighbours there
                _REPLACED[m] = memo[id(m)]
            parent._modules[name] = memo[id(m)]

        return fn

    def _target(self, m):
        return {
            "in": "InstanceNorm2d",
            "bn": "BatchNorm2d",
            "iln": "ILN",
            "adalin": "AdaLIN",
            "ln": "LayerNorm",
            "adain": "AdaIN",
        }[self.kind[id(m)]]

    def _ln_is_4d(self, m):
        for parent in self.model.modules():
            kids = list(parent._modules.values())
            if m in kids:
                if _is_conv2dblock(parent) and parent.norm is m:
                    return True
                if isinstance(parent, nn.Sequential):
                    i = kids.index(m)
                    if i > 0 and isinstance(kids[i - 1], (nn.Conv2d, nn.ConvTranspose2d)):
                        return True
        return False

    def _child_path(self, parent, name):
        p = self.path.get(id(parent), "")
        return f"{p}.{name}" if p else name

    def norm_cls(self, m):
        kind = self.kind.get(id(m))
        if kind is None:
            return None
        if kind == "fused":
            return type(m)
        return {
            "in": fnn.InstanceNorm2d,
            "bn": fnn.BatchNorm2d,
            "iln": fnn.ILN,
            "adalin": fnn.AdaLIN,
            "ln": fnn.LayerNorm,
            "adain": AdaptiveInstanceNorm2d,
        }[kind]

    # --- data-flow chains
    def chain(self, m, seen=None) -> list:
        """[(parent, name, module)] in execution order, for containers whose forward is the
        composition of their children; the containers walked are added to `seen`."""
        seen = set() if seen is None else seen
        seen.add(id(m))
        if _is_plain_sequential(m):
            out = []
            for name, c in m._modules.items():
                # a hooked container stays opaque: fusions across its boundary (out_pad)
                # would change the output its hooks see; its inside is a chain of its own
                if (_is_plain_sequential(c) or _is_conv2dblock(c)) and not _has_hooks(c):
                    out += self.chain(c, seen)
                else:
                    out.append((m, name, c))
            return out
        if _is_conv2dblock(m):
            return [(m, n, getattr(m, n)) for n in ("pad", "conv", "norm", "activation") if getattr(m, n) is not None]
        if self.is_adailn_block(m):
            return [(m, n, getattr(m, n)) for n in ("pad1", "conv1", "norm1", "relu1", "pad2", "conv2", "norm2")]
        return []

    def is_adailn_block(self, m):
        names = ("pad1", "conv1", "norm1", "relu1", "pad2", "conv2", "norm2")
        return (
            type(m).__name__ == "ResnetAdaILNBlock"
            and list(m._modules) == list(names)
            and all(self.kind.get(id(getattr(m, n))) in ("adalin", "fused") for n in ("norm1", "norm2"))
            and _computes(m, _adailn_block_forward)
        )

    def free(self, m, root) -> bool:
        """m's output goes only where the chain says: no hooks, not registered elsewhere."""
        return not _has_hooks(m) and self.uses[id(m)] == self.uses[id(root)]

    def chains(self):
        covered = set()
        for p, m in self.model.named_modules():  # the originals' containers, another forward
            original = _CONTAINERS.get(type(m).__name__)
            if original is not None and _dataflow(m) is not None and not _computes(m, original):
                self.plan.leave(
                    p,
                    f"{type(m).__name__}: forward is not the original's; its layers are swapped "
                    "but not fused with each other",
                )
        for p, root in self.model.named_modules():
            if id(root) in covered:
                continue
            ch = self.chain(root, covered)
            if ch:
                self.fuse_chain(root, ch)

    def fuse_chain(self, root, ch):
        i = 0
        while i < len(ch):
            parent, name, m = ch[i]
            nxt = ch[i + 1] if i + 1 < len(ch) else None
            path = self._child_path(parent, name)
            ncls = self.norm_cls(m)
            if ncls is not None and nxt is not None:
                inner = _unet_inner_act(nxt[2])
                act = _activation(nxt[2] if inner is None else inner[2])
                if inner is not None:  # the inner U-Net block's in-place activation: same chain step
                    nxt = inner
                if act is not None:
                    if not (self.free(m, root) and self.free(nxt[2], root)):
                        self.plan.leave(path, "activation not folded: hooks or module used elsewhere")
                    elif isinstance(m, _FUSED_NORMS) and m.activation is not None:
                        self.plan.leave(path, "activation not folded: the norm already has one")
                    else:
                        self._fold(parent, name, nxt, act)
                        i += 1
                        nxt = ch[i + 1] if i + 1 < len(ch) else None
                if nxt is not None and i + 2 < len(ch) and _reflection_pad(nxt[2]) and _plain_conv(ch[i + 2][2]):
                    if not _has_out_pad(ncls):
                        self.plan.leave(
                            path,
                            "norm -> ReflectionPad2d -> Conv2d not fused: this i2i_fast's "
                            "norms have no out_pad option yet",
                        )
                    elif self.free(m, root) and self.free(nxt[2], root):
                        self._out_pad(parent, name, nxt, _reflection_pad(nxt[2]))
                        i += 3
                        continue
            if ncls is None and self._act_pad_conv(root, ch, i):
                i += 3
                continue
            p = _reflection_pad(m)
            if p is not None and nxt is not None and _plain_conv(nxt[2]):
                if self.rpconv is None:
                    self.plan.leave(
                        path,
                        "ReflectionPad2d -> Conv2d not fused: i2i_fast.ReflectionPadConv2d "
                        "is not available in this version",
                    )
                elif self.free(m, root) and self.free(nxt[2], root):
                    self._rpconv(parent, name, nxt, p)
                    i += 2
                    continue
            elif p is not None and nxt is not None and type(nxt[2]) is nn.Conv2d:
                self.plan.leave(
                    path,
                    "ReflectionPad2d -> Conv2d not fused: conv has hooks (spectral_norm), parametrizations or padding",
                )
            i += 1

    def _fold(self, parent, name, nxt, act):
        kind, slope = act
        aparent, aname, amod = nxt

        def fn():
            norm = parent._modules[name]
            norm.activation = kind
            norm.negative_slope = slope
            aparent._modules[aname] = Folded(amod, name).train(amod.training)

        what = f"fold: {type(amod).__name__}" + (f"({slope})" if kind == "leaky_relu" else "") + " into the norm"
        self.plan.change(self._child_path(parent, name), what, fn, _EDIT)

    def _act_pad_conv(self, root, ch, i) -> bool:
        """ch[i:i+3] = ReLU / LeakyReLU -> ReflectionPad2d(p) -> plain Conv2d: plans the
        ReflectionPadConv2d with the activation folded in; True when it did."""
        parent, name, m = ch[i]
        act = _activation(m)
        if act is None or act[0] not in _PAD_ACTS or i + 2 >= len(ch) or self.rpconv is None:
            return False
        p = _reflection_pad(ch[i + 1][2])
        if p is None or not _plain_conv(ch[i + 2][2]):
            return False
        path = self._child_path(parent, name)
        if getattr(m, "inplace", False) and all(isinstance(c[2], _PASS_INPUT) for c in ch[:i]):
            # in place on the chain's input, which its caller may use again (a residual skip)
            self.plan.leave(path, "activation not folded into the pad+conv: in place on the chain's input")
            return False
        if not all(self.free(c[2], root) for c in ch[i : i + 3]):
            self.plan.leave(path, "activation not folded into the pad+conv: hooks or module used elsewhere")
            return False
        cparent, cname, _ = ch[i + 2]
        self._rpconv(ch[i + 1][0], ch[i + 1][1], ch[i + 2], p)
        kind, slope = act

        def fn():
            conv = cparent._modules[cname]  # the ReflectionPadConv2d that _rpconv installed
            conv.activation, conv.negative_slope = kind, slope
            parent._modules[name] = Folded(m, cname).train(m.training)

        what = f"fold: {type(m).__name__}" + (f"({slope})" if kind == "leaky_relu" else "") + " into the pad+conv"
        self.plan.change(self._child_path(cparent, cname), what, fn, _EDIT)
        return True

    def _out_pad(self, parent, name, nxt, p):
        pparent, pname, pmod = nxt

        def fn():
            parent._modules[name].out_pad = p
            pparent._modules[pname] = Folded(pmod, name).train(pmod.training)

        self.plan.change(
            self._child_path(parent, name), f"out_pad: norm writes its output reflection-padded by {p}", fn, _EDIT
        )

    def _rpconv(self, parent, name, nxt, p):
        cparent, cname, conv = nxt
        cls = self.rpconv

        def fn():
            new = _build_on_meta(
                cls,
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                stride=conv.stride,
                padding=p,
                dilation=conv.dilation,
                groups=conv.groups,
                bias=conv.bias is not None,
            )
            names = ("weight", "bias") if conv.bias is not None else ("weight",)
            cparent._modules[cname] = _carry(conv, new, names)
            pad = parent._modules[name]
            parent._modules[name] = Folded(pad, cname).train(pad.training)

        why = _rpconv_fallback(cls, conv, p)
        self.plan.change(
            self._child_path(cparent, cname),
            f"pad+conv: ReflectionPad2d({p}) -> Conv2d as i2i_fast.ReflectionPadConv2d"
            + (f" (path {why})" if why else ""),
            fn,
            _EDIT,
        )

    # --- spectral norm
    def spectral_norms(self):
        from torch.nn.utils.spectral_norm import SpectralNorm as sn

        for p, m in self.model.named_modules():
            for h in list(m._forward_pre_hooks.values()):
                if type(h) is sn and h.dim == 0:

                    def fn(h=h):
                        h.__class__ = fnn.FusedSpectralNorm

                    self.plan.change(
                        p, f"spectral_norm: {h.name} / sigma fused (i2i_fast.nn.FusedSpectralNorm)", fn, _EDIT
                    )
                elif type(h) is sn:
                    self.plan.leave(p, f"spectral_norm over dim {h.dim}: not fused (dim 0 only)")

    # --- residual blocks
    def residual_blocks(self):
        for p, m in self.model.named_modules():
            if isinstance(m, (FusedResidualBlock, FusedResnetAdaILNBlock)):
                continue
            name = type(m).__name__
            earlier = _REPLACED.get(m)
            if isinstance(earlier, (FusedResidualBlock, FusedResnetAdaILNBlock)):
                self._replace_block(
                    m,
                    lambda b, e=earlier: e,
                    "residual: the block a network converted "
                    "earlier shares with this one, replaced by the same fused block",
                )
                continue
            if self.is_adailn_block(m):
                last = m.norm2
                if _has_hooks(m) or not self.free(last, m):
                    self.plan.leave(p, "ResnetAdaILNBlock: residual add not fused (hooks or shared norm)")
                    continue
                self._checked_block(
                    p,
                    m,
                    FusedResnetAdaILNBlock,
                    "residual: x + block(x) fused into norm2",
                    _channels(m),
                    per_sample=True,
                )
                continue
            kids = list(m._modules.items())
            body_name, body = kids[0] if len(kids) == 1 else (None, None)
            if body is None or not _is_plain_sequential(body) or len(body) == 0:
                if name in _RESIDUAL_NAMES:
                    self.plan.leave(p, f"{name}: not the known residual structure (one Sequential body)")
                continue
            if not _computes(m, _residual_forward(body_name)):
                if name in _RESIDUAL_NAMES or _adds(m):
                    self.plan.leave(p, f"{name}: forward is not x + {body_name}(x); kept as it is")
                continue
            last = body[-1]
            norm = last.norm if _is_conv2dblock(last) else last
            if _is_conv2dblock(last) and last.activation is not None and not isinstance(last.activation, Folded):
                self.plan.leave(p, f"{name}: last block has an activation after its norm; residual add not fused")
                continue
            if self.kind.get(id(norm)) is None:
                self.plan.leave(p, f"{name}: body does not end in a fusible norm; residual add not fused")
                continue
            if _has_hooks(m) or not self.free(norm, m) or (last is not norm and not self.free(last, m)):
                self.plan.leave(p, f"{name}: residual add not fused (hooks or shared modules)")
                continue
            self._checked_block(
                p,
                m,
                lambda b, n=body_name, o=name: FusedResidualBlock(n, getattr(b, n), o),
                f"residual: x + {body_name}(x) fused into the last norm",
                _channels(m),
            )

    def _checked_block(self, path, m, make, what, channels, per_sample=False):
        """Replace block m by make(m) once a float64 copy of it, converted, agrees with it."""
        if self.check:

            def rewrite(c):
                holder = nn.Sequential(c)  # the copy converted as convert() would, inside and the add
                _apply(_analyse(holder, check=False))
                return holder[0]

            why = (
                "it has no Conv2d to size a test input"
                if channels is None
                else _mismatch(m, rewrite, channels, per_sample, "block")
            )
            if why:
                self.plan.leave(path, f"{type(m).__name__}: residual add not fused: {why}")
                return
        self._replace_block(m, make, what)

    def _replace_block(self, m, make, what):
        memo = {}
        sites = [(parent, name) for parent in self.model.modules() for name, c in parent._modules.items() if c is m]
        if not sites:  # the model itself is the block: nothing can hold a replacement
            self.plan.leave(
                self.path.get(id(m), ""), "the model itself is a residual block: convert its parent to fuse the add"
            )
            return

        def fn():
            if "new" not in memo:
                memo["new"] = _remember(make(m), m).train(m.training)
                _REPLACED[m] = memo["new"]
            for parent, name in sites:
                parent._modules[name] = memo["new"]

        self.plan.change(self.path.get(id(m), ""), what, fn, _BLOCK)


def _check_module(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert/plan expect a torch.nn.Module, got {type(model).__name__}")


def _analyse(model: nn.Module, check: bool = True) -> Plan:
    _check_module(model)
    pl = _Planner(model, check)
    pl.norms()
    pl.chains()
    pl.spectral_norms()
    pl.residual_blocks()
    return pl.plan


def _apply(pl: Plan) -> None:
    for _, _, fn in sorted(pl._apply, key=lambda t: (t[0], t[1])):
        fn()


def plan(model: nn.Module) -> Plan:
    """What convert(model) would change and what it leaves alone (and why); changes nothing.
    ``print(i2i_fast.plan(model))`` shows it."""
    return _analyse(model)


def _with_originals(model):
    """model's modules and the originals its replacements keep (and theirs)."""
    todo, seen = list(model.modules()), set()
    while todo:
        m = todo.pop()
        if id(m) not in seen:
            seen.add(id(m))
            yield m
            if _ORIGINAL in m.__dict__:
                todo.extend(m.__dict__[_ORIGINAL].modules())


def _deepcopy(model):
    # MUNIT's AdaIN layers hold the style MLP's (non-leaf) outputs as plain attributes after a
    # forward; non-leaf tensors cannot be deep-copied, and they are reassigned before every
    # decode anyway: share them.
    memo = {
        id(v): v
        for m in _with_originals(model)
        for v in m.__dict__.values()
        if isinstance(v, torch.Tensor) and not v.is_leaf
    }
    return copy.deepcopy(model, memo)


def convert(model: nn.Module, *, copy: bool = False) -> nn.Module:
    """Converts the model IN PLACE and returns it: its layers swapped for i2i_fast's fused modules
    and its norm+activation, norm+pad+conv, pad+conv and residual-add patterns fused (see the
    module docstring). Every Parameter and buffer stays the same object, so an optimizer built
    before convert() keeps training the model, and a module that several networks share stays
    shared when they are converted one call each. state_dict keys and values are unchanged.
    copy=True converts a deep copy instead (the original is untouched; build the optimizer from
    the copy). A model that is itself a single norm layer is returned as a new module holding the
    same Parameters. Logs a summary (logger "i2i_fast.convert"; the details at DEBUG).
    Idempotent; revert() undoes it."""
    _check_module(model)
    if copy:
        model = _deepcopy(model)
        log.warning(
            "i2i_fast.convert(copy=True): the converted %s has new Parameter objects; an optimizer "
            "built on the original does not train it",
            type(model).__name__,
        )
    pl = _analyse(model)
    _apply(pl)
    if pl.root is not None:
        model = pl.root
    log.info("i2i_fast.convert(%s): %s", type(model).__name__, pl.summary())
    for p, w in pl.changes:
        log.debug("  changed %s: %s", p, w)
    for p, w in pl.left_alone:
        log.debug("  left alone %s: %s", p, w)
    return model


def _restore(new: nn.Module, old: nn.Module) -> nn.Module:
    """old, holding new's current Parameters, buffers, children and flags (new may have been
    moved, retrained or had tensors reassigned since convert)."""
    for n, t in list(new._parameters.items()) + list(new._buffers.items()):
        if n in old._parameters or n in old._buffers:
            setattr(old, n, t)
    for n in ("weight", "bias"):  # AdaIN: plain attributes assigned by the style MLP
        if n in new.__dict__:
            old.__dict__[n] = new.__dict__[n]
    for n, c in new._modules.items():
        if n in old._modules:
            old._modules[n] = c
    return old.train(new.training)


def revert(model: nn.Module) -> nn.Module:
    """Undoes convert(), IN PLACE: every module it replaced is put back (the original torch or
    model classes, holding the same Parameter and buffer objects), the folded activations and
    pads return, FusedSpectralNorm hooks become torch's again. Returns the model (the original
    norm when the model itself was one). For tools that accept only stock layers, e.g. an
    exporter; modules i2i_fast did not put there are kept."""
    _check_module(model)
    from torch.nn.utils.spectral_norm import SpectralNorm

    done = {}

    def undo(m):
        if id(m) in done:
            return done[id(m)]
        done[id(m)] = m
        for name, c in list(m._modules.items()):
            if c is not None:
                m._modules[name] = undo(c)
        for k, h in m._forward_pre_hooks.items():
            if type(h) is fnn.FusedSpectralNorm:
                h.__class__ = SpectralNorm
        old = m.__dict__.get(_ORIGINAL)
        if old is not None:
            _REPLACED.pop(old, None)  # a later convert() starts from the original again
            done[id(m)] = _restore(m, undo(old))
        return done[id(m)]

    return undo(model)
