"""convert(model) / plan(model): rewire a model built from the ORIGINAL image-to-image classes
(or anyone's look-alikes) onto i2i_fast's fused modules, keeping its state_dict keys.

Layers are recognised by structure and attribute names, not by import path:
  * torch.nn.InstanceNorm2d                         -> i2i_fast.InstanceNorm2d (all flags, buffers)
  * torch.nn.BatchNorm2d (exact class)              -> i2i_fast.BatchNorm2d    (pix2pix, --norm batch)
  * class "ILN" with rho/gamma/beta (1, C, 1, 1)    -> i2i_fast.ILN              (U-GAT-IT)
  * class "adaILN" with rho (1, C, 1, 1)            -> i2i_fast.AdaLIN           (U-GAT-IT)
  * class "LayerNorm" (num_features, eps, affine, gamma/beta (C,)) inside a conv block
                                                    -> i2i_fast.LayerNorm        (MUNIT/UNIT)
  * class "AdaptiveInstanceNorm2d" (running_mean/var buffers, assigned weight/bias)
                                                    -> AdaptiveInstanceNorm2d below, an
    i2i_fast.AdaIN keeping the class name (MUNIT finds its AdaIN layers by class name).
Then, where the data flow is known (plain nn.Sequential, MUNIT Conv2dBlock, U-GAT-IT
ResnetAdaILNBlock):
  * norm -> ReLU / LeakyReLU / Tanh: the activation runs in the norm's epilogue; its slot
    becomes a `Folded` placeholder (activations have no state: keys unchanged); also a U-Net
    block's downnorm -> the inner block's in-place LeakyReLU (UnetSkipConnectionBlock: the
    in-place activation makes the skip carry the activated tensor, as the fused norm's output);
  * norm -> ReflectionPad2d(p) -> Conv2d(padding=0): the norm writes its output padded
    (out_pad=p), when the installed i2i_fast norms have out_pad;
  * ReflectionPad2d(p) -> Conv2d(padding=0): i2i_fast.ReflectionPadConv2d, when installed;
  * torch.nn.utils.spectral_norm hooks (dim 0: Conv2d / Linear, U-GAT-IT's discriminators):
    the hook's class becomes i2i_fast.nn.FusedSpectralNorm (W / sigma fused; same u, v,
    weight_orig, state_dict); the module itself stays as it is;
  * residual blocks x + body(x) (CycleGAN/U-GAT-IT ResnetBlock, UNIT ResidualBlock, StarGAN
    ResidualBlock, MUNIT ResBlock, U-GAT-IT ResnetAdaILNBlock): replaced by a module holding the
    same submodules under the same names whose last norm adds the skip (residual=x).
Anything else is left alone, with the reason in the plan. A module with hooks is never rewired
(its hooks would see different tensors); a module used at several places is only swapped.
"""
from __future__ import annotations

import copy
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from . import nn as fnn

__all__ = ["convert", "plan", "Plan", "Folded", "FusedResidualBlock", "FusedResnetAdaILNBlock",
           "AdaptiveInstanceNorm2d"]

log = logging.getLogger(__name__)

_FUSED_NORMS = (fnn.InstanceNorm2d, fnn.BatchNorm2d, fnn.ILN, fnn.AdaLIN, fnn.LayerNorm, fnn.AdaIN)


class AdaptiveInstanceNorm2d(fnn.AdaIN):
    """i2i_fast.AdaIN under MUNIT's class name: AdaINGen.assign_adain_params and
    get_num_adain_params find the AdaIN layers by ``__class__.__name__``."""


class Folded(nn.Identity):
    """Placeholder for an activation (or a reflection pad) now computed by a neighbouring fused
    module. Stateless, so the state_dict keys of the container are unchanged."""

    def __init__(self, what: str, into: str):
        super().__init__()
        self.what, self.into = what, into

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
        h = last.conv(last.pad(h))   # MUNIT Conv2dBlock(norm, activation none)
        return last.norm(h, residual=x)

    def extra_repr(self) -> str:
        return f"{self.original}: x + {self.body_name}(x), add fused into the last norm"


class FusedResnetAdaILNBlock(nn.Module):
    """U-GAT-IT ResnetAdaILNBlock with the skip added by norm2 (same attribute names)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        for name, m in block.named_children():   # registration order = state_dict order
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
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _norm_kind(m: nn.Module) -> Optional[str]:
    """The kind of norm m is ("in", "bn", "iln", "adalin", "ln", "adain"), "fused" if it already
    is an i2i_fast module, else None."""
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
    if (name == "LayerNorm" and not isinstance(m, nn.LayerNorm) and eps
            and isinstance(getattr(m, "num_features", None), int) and isinstance(getattr(m, "affine", None), bool)
            and not b and set(p) == ({"gamma", "beta"} if m.affine else set())
            and all(t.shape == (m.num_features,) for t in p.values())):
        return "ln"
    if (name == "AdaptiveInstanceNorm2d" and eps and isinstance(getattr(m, "num_features", None), int)
            and not p and set(b) == {"running_mean", "running_var"} and hasattr(m, "weight")):
        return "adain"
    return None


def _looks_like_norm(m) -> bool:
    """A leaf layer named like a norm that none of the rules above recognised."""
    n = type(m).__name__
    return not m._modules and ("norm" in n.lower() or n in ("ILN", "adaILN"))


_ACTS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh"}


def _activation(m) -> Optional[tuple]:
    kind = _ACTS.get(type(m))
    if kind is None:
        return None
    return kind, float(getattr(m, "negative_slope", 0.2))


def _is_conv2dblock(m) -> bool:
    """MUNIT/UNIT Conv2dBlock: forward = activation(norm(conv(pad(x)))), norm/activation optional."""
    return (type(m).__name__ == "Conv2dBlock" and isinstance(getattr(m, "conv", None), nn.Conv2d)
            and isinstance(getattr(m, "pad", None), nn.Module) and hasattr(m, "norm") and hasattr(m, "activation"))


def _unet_inner_act(m) -> Optional[tuple]:
    """(parent, name, module) of the in-place LeakyReLU/ReLU that starts a U-Net block's
    Sequential `model`, for a pix2pix UnetSkipConnectionBlock (forward: cat([x, model(x)], 1));
    None otherwise. Its activation modifies x in place, so the skip carries the activated x:
    the norm before the block may compute it instead."""
    model = getattr(m, "model", None)
    if (type(m).__name__ != "UnetSkipConnectionBlock" or set(m._modules) != {"model"} or _has_hooks(m)
            or not _is_plain_sequential(model) or len(model) == 0 or _has_hooks(model)):
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
    return (type(m) is nn.Conv2d and tuple(m.padding) == (0, 0) and not _has_hooks(m)
            and not torch.nn.utils.parametrize.is_parametrized(m))


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
    m = _build_on_meta(cls, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=p, dilation=conv.dilation, groups=conv.groups, bias=False)
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
    for n, t in list(_params(new).items()) + list(_buffers(new).items()):
        if t is not None and t.is_meta:
            raise RuntimeError(f"convert: {type(old).__name__}.{n} was not carried over")
    new.train(old.training)
    for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
              "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
        if hasattr(old, h):
            getattr(new, h).update(getattr(old, h))
    return new


def _swap(m: nn.Module, kind: str) -> nn.Module:
    if kind == "in":
        new = _build_on_meta(fnn.InstanceNorm2d, m.num_features, m.eps, m.momentum, m.affine,
                             m.track_running_stats, bias=not m.affine or m.bias is not None)
        names = [n for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                 if n in _params(m) or n in _buffers(m)]
        return _carry(m, new, names)
    if kind == "bn":
        new = _build_on_meta(fnn.BatchNorm2d, m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                             bias=not m.affine or m.bias is not None)
        names = [n for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                 if n in _params(m) or n in _buffers(m)]
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


# ------------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """What convert() changes (path, what) and leaves alone (path, why)."""
    changes: list = field(default_factory=list)
    left_alone: list = field(default_factory=list)
    _apply: list = field(default_factory=list, repr=False)
    root: Optional[nn.Module] = field(default=None, repr=False)   # set when the model itself is swapped

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


# Application order: norm swaps, then edits of containers, then block replacements.
_SWAP, _EDIT, _BLOCK = 0, 1, 2


class _Planner:
    def __init__(self, model: nn.Module):
        self.model = model
        self.plan = Plan()
        self.uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
        self.path = {id(m): n for n, m in model.named_modules()}
        self.kind = {}            # id(module) -> norm kind it will have after conversion
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
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    self.plan.leave(p, f"{type(m).__name__}: only torch.nn.BatchNorm2d itself is fused")
                elif isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm3d)):
                    self.plan.leave(p, f"{type(m).__name__}: only 2-D instance norm is fused")
                elif _looks_like_norm(m):
                    self.plan.leave(p, f"{type(m).__name__}: unknown norm layer")
                continue
            if kind == "ln" and not self._ln_is_4d(m):
                self.plan.leave(p, "LayerNorm outside a conv block: input may not be 4-D (fused LayerNorm is 4-D only)")
                continue
            self.kind[id(m)] = kind
        # swap at every place a module is registered (shared modules stay shared)
        new = {}
        if self.kind.get(id(self.model)) not in (None, "fused"):   # the model is one norm
            def root():
                self.plan.root = _swap(self.model, self.kind[id(self.model)])
            self.plan.change("", f"swap: {type(self.model).__name__} -> i2i_fast {self._target(self.model)} "
                             "(a new module is returned, even with inplace=True)", root, _SWAP)
        for parent in self.model.modules():
            for name, m in parent._modules.items():
                if m is not None and self.kind.get(id(m)) not in (None, "fused"):
                    if id(m) not in new:
                        new[id(m)] = None
                        self.plan.change(self._child_path(parent, name),
                                         f"swap: {type(m).__name__} -> i2i_fast {self._target(m)}",
                                         self._swap_fn(parent, name, m, new), _SWAP)
                    else:
                        self.plan._apply.append((_SWAP, len(self.plan._apply), self._swap_fn(parent, name, m, new)))

    def _swap_fn(self, parent, name, m, memo):
        def fn():
            if memo[id(m)] is None:
                memo[id(m)] = _swap(m, self.kind[id(m)])
            parent._modules[name] = memo[id(m)]
        return fn

    def _target(self, m):
        return {"in": "InstanceNorm2d", "bn": "BatchNorm2d", "iln": "ILN", "adalin": "AdaLIN", "ln": "LayerNorm",
                "adain": "AdaIN"}[self.kind[id(m)]]

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
        return {"in": fnn.InstanceNorm2d, "bn": fnn.BatchNorm2d, "iln": fnn.ILN, "adalin": fnn.AdaLIN,
                "ln": fnn.LayerNorm, "adain": AdaptiveInstanceNorm2d}[kind]

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
            return [(m, n, getattr(m, n)) for n in ("pad", "conv", "norm", "activation")
                    if getattr(m, n) is not None]
        if self.is_adailn_block(m):
            return [(m, n, getattr(m, n)) for n in ("pad1", "conv1", "norm1", "relu1", "pad2", "conv2", "norm2")]
        return []

    def is_adailn_block(self, m):
        names = ("pad1", "conv1", "norm1", "relu1", "pad2", "conv2", "norm2")
        return (type(m).__name__ == "ResnetAdaILNBlock" and list(m._modules) == list(names)
                and all(self.kind.get(id(getattr(m, n))) in ("adalin", "fused") for n in ("norm1", "norm2")))

    def free(self, m, root) -> bool:
        """m's output goes only where the chain says: no hooks, not registered elsewhere."""
        return not _has_hooks(m) and self.uses[id(m)] == self.uses[id(root)]

    def chains(self):
        covered = set()
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
                        self.plan.leave(path, "norm -> ReflectionPad2d -> Conv2d not fused: this i2i_fast's "
                                        "norms have no out_pad option yet")
                    elif self.free(m, root) and self.free(nxt[2], root):
                        self._out_pad(parent, name, nxt, _reflection_pad(nxt[2]))
                        i += 3
                        continue
            p = _reflection_pad(m)
            if p is not None and nxt is not None and _plain_conv(nxt[2]):
                if self.rpconv is None:
                    self.plan.leave(path, "ReflectionPad2d -> Conv2d not fused: i2i_fast.ReflectionPadConv2d "
                                    "is not available in this version")
                elif self.free(m, root) and self.free(nxt[2], root):
                    self._rpconv(parent, name, nxt, p)
                    i += 2
                    continue
            elif p is not None and nxt is not None and type(nxt[2]) is nn.Conv2d:
                self.plan.leave(path, "ReflectionPad2d -> Conv2d not fused: conv has hooks (spectral_norm), "
                                "parametrizations or padding")
            i += 1

    def _fold(self, parent, name, nxt, act):
        kind, slope = act
        aparent, aname, amod = nxt

        def fn():
            norm = parent._modules[name]
            norm.activation = kind
            norm.negative_slope = slope
            aparent._modules[aname] = Folded(repr(amod), name).train(amod.training)
        what = f"fold: {type(amod).__name__}" + (f"({slope})" if kind == "leaky_relu" else "") + " into the norm"
        self.plan.change(self._child_path(parent, name), what, fn, _EDIT)

    def _out_pad(self, parent, name, nxt, p):
        pparent, pname, pmod = nxt

        def fn():
            parent._modules[name].out_pad = p
            pparent._modules[pname] = Folded(repr(pmod), name).train(pmod.training)
        self.plan.change(self._child_path(parent, name), f"out_pad: norm writes its output reflection-padded by {p}",
                         fn, _EDIT)

    def _rpconv(self, parent, name, nxt, p):
        cparent, cname, conv = nxt
        cls = self.rpconv

        def fn():
            new = _build_on_meta(cls, conv.in_channels, conv.out_channels, conv.kernel_size,
                                 stride=conv.stride, padding=p, dilation=conv.dilation, groups=conv.groups,
                                 bias=conv.bias is not None)
            names = ("weight", "bias") if conv.bias is not None else ("weight",)
            cparent._modules[cname] = _carry(conv, new, names)
            pad = parent._modules[name]
            parent._modules[name] = Folded(repr(pad), cname).train(pad.training)
        why = _rpconv_fallback(cls, conv, p)
        self.plan.change(self._child_path(cparent, cname),
                         f"pad+conv: ReflectionPad2d({p}) -> Conv2d as i2i_fast.ReflectionPadConv2d"
                         + (f" (path {why})" if why else ""), fn, _EDIT)

    # --- spectral norm
    def spectral_norms(self):
        from torch.nn.utils.spectral_norm import SpectralNorm as sn
        for p, m in self.model.named_modules():
            for h in list(m._forward_pre_hooks.values()):
                if type(h) is sn and h.dim == 0:
                    def fn(h=h):
                        h.__class__ = fnn.FusedSpectralNorm
                    self.plan.change(p, f"spectral_norm: {h.name} / sigma fused (i2i_fast.nn.FusedSpectralNorm)",
                                     fn, _EDIT)
                elif type(h) is sn:
                    self.plan.leave(p, f"spectral_norm over dim {h.dim}: not fused (dim 0 only)")

    # --- residual blocks
    def residual_blocks(self):
        for p, m in self.model.named_modules():
            if isinstance(m, (FusedResidualBlock, FusedResnetAdaILNBlock)):
                continue
            name = type(m).__name__
            known = {"ResnetBlock": "conv_block", "ResidualBlock": None, "ResBlock": "model"}
            if self.is_adailn_block(m):
                last = m.norm2
                if _has_hooks(m) or not self.free(last, m):
                    self.plan.leave(p, "ResnetAdaILNBlock: residual add not fused (hooks or shared norm)")
                    continue
                self._replace_block(m, FusedResnetAdaILNBlock, "residual: x + block(x) fused into norm2")
                continue
            if name not in known:
                continue
            body_name = known[name] or next((n for n in ("conv_block", "main") if hasattr(m, n)), None)
            body = getattr(m, body_name, None) if body_name else None
            if body is None or not _is_plain_sequential(body) or len(body) == 0 or set(m._modules) != {body_name}:
                self.plan.leave(p, f"{name}: not the known residual structure (one Sequential body)")
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
            self._replace_block(m, lambda b, n=body_name, o=name: FusedResidualBlock(n, getattr(b, n), o),
                                f"residual: x + {body_name}(x) fused into the last norm")

    def _replace_block(self, m, make, what):
        memo = {}
        sites = [(parent, name) for parent in self.model.modules()
                 for name, c in parent._modules.items() if c is m]
        if not sites:   # the model itself is the block: nothing can hold a replacement
            self.plan.leave(self.path.get(id(m), ""), "the model itself is a residual block: convert "
                            "its parent to fuse the add")
            return

        def fn():
            if "new" not in memo:
                memo["new"] = make(m).train(m.training)
            for parent, name in sites:
                parent._modules[name] = memo["new"]
        self.plan.change(self.path.get(id(m), ""), what, fn, _BLOCK)


def _check_module(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert/plan expect a torch.nn.Module, got {type(model).__name__}")


def _analyse(model: nn.Module) -> Plan:
    _check_module(model)
    pl = _Planner(model)
    pl.norms()
    pl.chains()
    pl.spectral_norms()
    pl.residual_blocks()
    return pl.plan


def plan(model: nn.Module) -> Plan:
    """What convert(model) would change and what it leaves alone (and why); changes nothing.
    ``print(i2i_fast.plan(model))`` shows it."""
    return _analyse(model)


def _deepcopy(model):
    # MUNIT's AdaIN layers hold the style MLP's (non-leaf) outputs as plain attributes after a
    # forward; non-leaf tensors cannot be deep-copied, and they are reassigned before every
    # decode anyway: share them.
    memo = {id(v): v for m in model.modules() for v in m.__dict__.values()
            if isinstance(v, torch.Tensor) and not v.is_leaf}
    return copy.deepcopy(model, memo)


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Returns the model with its layers swapped for i2i_fast's fused modules and its
    norm+activation, norm+pad+conv, pad+conv and residual-add patterns fused (see the module
    docstring). Parameters and buffers are the same objects (inplace=True) or copies
    (inplace=False) on the same device and dtype; state_dict keys and values are unchanged.
    A model that is itself a single norm layer is returned as a new module.
    Logs a summary (logger "i2i_fast.convert"; the details at DEBUG). Idempotent."""
    _check_module(model)
    if not inplace:
        model = _deepcopy(model)
    pl = _analyse(model)
    for _, _, fn in sorted(pl._apply, key=lambda t: (t[0], t[1])):
        fn()
    if pl.root is not None:
        model = pl.root
    log.info("i2i_fast.convert(%s): %s", type(model).__name__, pl.summary())
    for p, w in pl.changes:
        log.debug("  changed %s: %s", p, w)
    for p, w in pl.left_alone:
        log.debug("  left alone %s: %s", p, w)
    return model
