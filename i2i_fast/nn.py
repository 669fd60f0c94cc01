"""Drop-in modules: the originals' constructor signatures, parameter/buffer names and shapes
(so original checkpoints load unchanged), plus keyword-only fusion options."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _backend, ops, reference
from . import functional as F
from .reference import ACTIVATIONS

__all__ = ["InstanceNorm2d", "BatchNorm2d", "ILN", "AdaLIN", "LayerNorm", "AdaIN"]


class InstanceNorm2d(torch.nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d computed by i2i_fast's fused kernel.

    Same arguments, buffers, state_dict and train/eval behaviour as torch's (it subclasses it),
    plus ``activation`` (None, "relu", "leaky_relu", "tanh") and ``negative_slope`` applied in
    the same kernel, and ``forward(x, residual=None)`` returning
    ``activation(norm(x)) + residual``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
        out_pad: int = 0,
    ) -> None:
        # bias=False (torch >= 2.5 norms): affine weight without bias; the fused kernels take
        # the weight and the bias separately, so every combination runs fused
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        _init_fusion(self, activation, negative_slope, eps, out_pad)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        if input.dim() == 3:  # unbatched (C, H, W), as torch
            return self.forward(input.unsqueeze(0), None if residual is None else residual.unsqueeze(0)).squeeze(0)
        if input.size(1) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim=1 to match num_features "
                    f"({self.num_features}), but got: {input.size(1)}."
                )
            warnings.warn(
                "input's size at dim=1 does not match num_features. You can silence this warning by "
                "not passing in num_features, which is not used because affine=False",
                stacklevel=2,
            )
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            activation=self.activation,
            negative_slope=self.negative_slope,
            residual=residual,
            out_pad=self.out_pad,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + _fusion_repr(self)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by i2i_fast's fused kernels (pix2pix, CycleGAN --norm batch).

    Same arguments, buffers (running_mean, running_var, num_batches_tracked), state_dict and
    train/eval behaviour as torch's (it subclasses it), plus ``activation``,
    ``negative_slope`` and ``out_pad`` applied in the same kernel, and
    ``forward(x, residual=None)`` returning ``activation(norm(x)) + residual``. 4-d input only.
    torch.nn.SyncBatchNorm.convert_sync_batchnorm replaces it by a plain SyncBatchNorm (losing
    the activation): convert to SyncBatchNorm before i2i_fast.convert, which leaves it alone.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
        out_pad: int = 0,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        _init_fusion(self, activation, negative_slope, eps, out_pad)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        # torch's _BatchNorm.forward: the momentum (None: cumulative average) and which
        # statistics normalize
        factor, counter = 0.0 if self.momentum is None else self.momentum, None
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            if self.momentum is None:  # the factor depends on the count: counted first, here
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked)
            else:  # counted by the running-statistics update, in its launch
                counter = self.num_batches_tracked
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if keep else None,
            self.running_var if keep else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
            activation=self.activation,
            negative_slope=self.negative_slope,
            residual=residual,
            out_pad=self.out_pad,
            num_batches_tracked=counter,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + _fusion_repr(self)


def _check_pad(out_pad) -> int:
    if isinstance(out_pad, bool) or not isinstance(out_pad, int) or out_pad < 0:
        raise ValueError(f"out_pad must be an int >= 0, got {out_pad!r}")
    return out_pad


def _fusion_repr(m) -> str:
    s = ""
    if m.activation is not None:
        s += f", activation={m.activation!r}"
        if m.activation == "leaky_relu":
            s += f", negative_slope={m.negative_slope}"
    return s + (f", out_pad={m.out_pad}" if m.out_pad else "")


def _init_fusion(m: torch.nn.Module, activation, negative_slope, eps, out_pad=0) -> None:
    """The keyword-only fusion options every norm module takes, checked and stored on m."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'relu', 'leaky_relu', 'tanh'; got {activation!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    m.activation = None if activation == "none" else activation
    m.negative_slope = negative_slope
    m.out_pad = _check_pad(out_pad)


class _Fused(torch.nn.Module):
    """Base of the norm modules that have no torch counterpart to subclass."""

    def _fusion(self) -> dict:
        return {"activation": self.activation, "negative_slope": self.negative_slope, "out_pad": self.out_pad}

    def _fusion_repr(self) -> str:
        return _fusion_repr(self)


class ILN(_Fused):
    """U-GAT-IT ILN: parameters rho (init 0), gamma (1), beta (0), each (1, C, 1, 1)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
        out_pad: int = 0,
    ) -> None:
        super().__init__()
        _init_fusion(self, activation, negative_slope, eps, out_pad)
        self.num_features, self.eps = num_features, eps
        self.rho = torch.nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.gamma = torch.nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = torch.nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return F.iln(input, self.rho, self.gamma, self.beta, self.eps, residual=residual, **self._fusion())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + self._fusion_repr()


class AdaLIN(_Fused):
    """U-GAT-IT adaILN: parameter rho (1, C, 1, 1) init 0.9; forward(x, gamma, beta) with
    per-sample gamma, beta of shape (N, C). rho is a plain parameter (RhoClipper works)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
        out_pad: int = 0,
    ) -> None:
        super().__init__()
        _init_fusion(self, activation, negative_slope, eps, out_pad)
        self.num_features, self.eps = num_features, eps
        self.rho = torch.nn.Parameter(torch.full((1, num_features, 1, 1), 0.9))

    def forward(self, input: Tensor, gamma: Tensor, beta: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return F.adalin(input, self.rho, gamma, beta, self.eps, residual=residual, **self._fusion())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + self._fusion_repr()


class LayerNorm(_Fused):
    """MUNIT/UNIT LayerNorm: gamma (C,) ~ U[0, 1), beta (C,) = 0 when affine."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
        out_pad: int = 0,
    ) -> None:
        super().__init__()
        _init_fusion(self, activation, negative_slope, eps, out_pad)
        self.num_features, self.eps, self.affine = num_features, eps, affine
        if affine:
            self.gamma = torch.nn.Parameter(torch.empty(num_features).uniform_())
            self.beta = torch.nn.Parameter(torch.zeros(num_features))

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        g, b = (self.gamma, self.beta) if self.affine else (None, None)
        return F.layer_norm(input, g, b, self.eps, residual=residual, **self._fusion())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}" + self._fusion_repr()


class AdaIN(_Fused):
    """MUNIT AdaptiveInstanceNorm2d: weight and bias (N*C,) are assigned (by the style MLP)
    before forward; the running_mean/var buffers are kept for checkpoints but never used."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        *,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
        out_pad: int = 0,
    ) -> None:
        super().__init__()
        _init_fusion(self, activation, negative_slope, eps, out_pad)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight: Optional[Tensor] = None
        self.bias: Optional[Tensor] = None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if self.weight is None or self.bias is None:
            raise RuntimeError("AdaIN: assign weight and bias (N*C elements each) before calling it")
        return F.adain(input, self.weight, self.bias, self.eps, residual=residual, **self._fusion())

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}" + self._fusion_repr()


# ---------------------------------------------------------------- reflection pad
__all__ += ["ReflectionPadConv2d"]


_CONV_GEOMETRY = frozenset(
    ("padding", "stride", "dilation", "groups", "padding_mode", "_reversed_padding_repeated_twice")
)


class ReflectionPadConv2d(torch.nn.Conv2d):
    """nn.Sequential(nn.ReflectionPad2d(padding), nn.Conv2d(in, out, k, stride, bias=bias)) as
    one layer that never materializes the padded input.

    It is an nn.Conv2d with padding_mode="reflect" (same parameters weight/bias, same
    initialization and state_dict, so checkpoints of either load unchanged) whose forward runs
    i2i_fast.functional.reflection_pad_conv2d. It takes every nn.Conv2d argument, in
    nn.Conv2d's order (in, out, kernel_size, stride, padding, dilation, groups, bias,
    padding_mode, device, dtype). The path taken (``pad_conv_path``): "pad" = i2i_fast's
    padded copy + aten conv, deterministic gather backward (the default); "border" =
    zero-padded aten convolution + border outputs recomputed from thin reflect-padded strips
    (only under pad_conv_force("border")); "conv" = padding 0; "reference" = the unfused torch
    layers (reference backend). Layers with groups, dilation, unequal H/W padding or stride,
    or padding="same" always take "pad" (the border path's strips are square, dense,
    undilated) as a composition of the pad op and conv2d; padding_mode other than "reflect" is
    not a reflection pad: nn.Conv2d's own forward ("torch"). ``fallback`` says which and why;
    ``last_path`` and the repr show the last path taken.

    Keyword-only ``activation`` (None, "relu", "leaky_relu" with ``negative_slope``) is applied
    to the input before the pad: forward = conv(reflection_pad(act(x))) (convert folds the
    activation that precedes a pad + conv into it: MUNIT/UNIT discriminators, style encoder).
    On path "pad" it runs inside the pad op (one launch forward, one backward); the other paths
    apply it with torch first. No state: the state_dict is nn.Conv2d's.
    """

    # class defaults: a layer pickled before the activation option existed has none
    activation: Optional[str] = None
    negative_slope: float = 0.2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "reflect",
        device=None,
        dtype=None,
        *,
        activation: Optional[str] = None,
        negative_slope: float = 0.2,
    ) -> None:
        if activation not in F.PAD_ACTIVATIONS:
            raise ValueError(f"activation must be one of None, 'relu', 'leaky_relu'; got {activation!r}")
        if isinstance(dilation, bool):
            # before it took nn.Conv2d's argument order, the 6th positional argument was bias
            raise TypeError(
                "ReflectionPadConv2d takes nn.Conv2d's arguments in nn.Conv2d's order (in_channels, "
                "out_channels, kernel_size, stride, padding, dilation, groups, bias, ...): "
                f"dilation={dilation!r} is a bool; pass bias by keyword"
            )
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.__dict__["_last_input"] = None  # (H, W, device) of the last forward input
        self.activation, self.negative_slope = activation, negative_slope

    def __setattr__(self, name, value):
        if name in _CONV_GEOMETRY:
            self.__dict__.pop("_general", None)  # forward re-derives its path
        super().__setattr__(name, value)

    @property
    def fallback(self) -> Optional[str]:
        """Why this layer does not run the default fused path (None when it does): "torch" for
        a padding_mode that is not "reflect", else the reason it always takes path "pad"."""
        if self.padding_mode != "reflect":
            return f"torch: padding_mode={self.padding_mode!r} is not a reflection pad (nn.Conv2d's forward)"
        why = []
        if self.groups != 1:
            why.append(f"groups={self.groups}")
        if tuple(self.dilation) != (1, 1):
            why.append(f"dilation={tuple(self.dilation)}")
        if isinstance(self.padding, str) or len(set(self._reversed_padding_repeated_twice)) > 1:
            why.append(f"padding={self.padding!r}")
        if self.stride[0] != self.stride[1]:
            why.append(f"stride={tuple(self.stride)}")
        if not why:
            return None
        if not any(self._reversed_padding_repeated_twice):
            return "conv: " + ", ".join(why) + " with no padding (aten conv2d)"
        return (
            "pad: " + ", ".join(why) + " (padded copy + aten conv2d, also under pad_conv_force: the "
            "border path takes groups=1, dilation=1, one padding and one stride)"
        )

    @property
    def last_path(self) -> Optional[str]:
        """The path the last forward took (None before the first call); derived on request, so
        a forward pays nothing for it."""
        if self._last_input is None:
            return None
        h, w, device = self._last_input
        return self.path_for(torch.empty((0, 0, h, w), device="meta"), device)

    def path_for(self, input: Tensor, device=None) -> str:
        """The path forward(input) takes on this device and backend."""
        device = input.device if device is None else device
        if self.padding_mode != "reflect":
            return "torch"
        if _backend._C is None or ops.common.select(device) == "reference":
            return "reference"
        if self.fallback is not None:
            return "pad" if any(self._reversed_padding_repeated_twice) else "conv"
        return ops.reflection_pad_conv.pad_conv_path(
            input.shape[-2], input.shape[-1], *self.kernel_size, self.padding[0], self.stride[0], device.type
        )

    def _forward_general(self, input: Tensor) -> Tensor:
        if self.padding_mode != "reflect":
            return super().forward(input)
        pad = list(self._reversed_padding_repeated_twice)
        if any(pad):
            input = F.reflection_pad2d(input, pad)
        return torch.nn.functional.conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _forward_act(self, input: Tensor) -> Tensor:
        act = self.activation
        if self.path_for(input) == "pad":  # the activation runs in the pad op, forward and backward
            xp = F.reflection_pad2d(
                input, list(self._reversed_padding_repeated_twice), activation=act, negative_slope=self.negative_slope
            )
            return torch.nn.functional.conv2d(xp, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        # paths "border", "conv", "torch", "reference": torch's activation first (correct,
        # not fused), then the layer as without one
        input = reference.activation(input, ACTIVATIONS[act], self.negative_slope)
        if self.fallback is not None or self.padding_mode != "reflect":
            return self._forward_general(input)
        return F.reflection_pad_conv2d(input, self.weight, self.bias, self.padding[0], self.stride[0])

    def forward(self, input: Tensor) -> Tensor:
        if not torch.compiler.is_compiling():  # plain dict write: Module.__setattr__ costs ~5 us
            self.__dict__["_last_input"] = (input.shape[-2], input.shape[-1], input.device)
        if self.activation is not None:
            return self._forward_act(input)
        general = self.__dict__.get("_general")
        if general is None:  # cached: the forward pays a dict lookup, not the checks
            general = self.fallback is not None
            if not torch.compiler.is_compiling():
                self.__dict__["_general"] = general
        if general:
            return self._forward_general(input)
        if not torch.compiler.is_compiling():
            p = self.padding[0]
            if (
                p
                and input.device.type == "cpu"
                and input.dim() == 4
                and ops.reflection_pad_conv._pad_conv_forced[0] is None
                and ops.common.select(input.device) == "cpu"
                and not torch.is_autocast_enabled("cpu")
            ):
                # CPU path "pad" without the functional's Python layers (~20 us, 5% of a small
                # layer): the pad op checks the input and pad, conv2d the dtypes and devices
                xp = torch.ops.i2i_fast.reflection_pad2d_fwd.default(input, [p, p, p, p])
                return torch.nn.functional.conv2d(xp, self.weight, self.bias, self.stride)
        return F.reflection_pad_conv2d(input, self.weight, self.bias, self.padding[0], self.stride[0])

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
            s += f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        s += f", path={self.last_path or 'auto'}"
        why = self.fallback
        return s + (f", fallback={why!r}" if why else "")


# ---------------------------------------------------------------- losses
__all__ += ["GANLoss"]


class GANLoss(torch.nn.Module):
    """Drop-in for CycleGAN/CUT's GANLoss(gan_mode, target_real_label=1.0,
    target_fake_label=0.0): same 0-d buffers real_label / fake_label, same
    ``forward(prediction, target_is_real)`` and values (lsgan, vanilla, wgangp, and CUT's
    nonsaturating, which returns per-sample means of shape (B,)), computed by the fused loss
    (no target tensor). Also accepts 'hinge' and 'wgan', and a list of predictions (summed).

    The labels are read once as Python floats (at construction and after load_state_dict), so
    a call never synchronizes with the GPU; call ``refresh_labels()`` after editing the buffers
    in place."""

    def __init__(
        self,
        gan_mode: str,
        target_real_label: float = 1.0,
        target_fake_label: float = 0.0,
        *,
        for_discriminator: bool = True,
    ) -> None:
        super().__init__()
        if gan_mode not in F.GAN_MODES:
            raise NotImplementedError(f"gan mode {gan_mode} not implemented (choose from {F.GAN_MODES})")
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.gan_mode = gan_mode
        self.for_discriminator = for_discriminator
        self.loss = (
            torch.nn.MSELoss()
            if gan_mode == "lsgan"
            else (torch.nn.BCEWithLogitsLoss() if gan_mode == "vanilla" else None)
        )
        self._labels = (float(target_real_label), float(target_fake_label))

    def refresh_labels(self) -> None:
        self._labels = (float(self.real_label), float(self.fake_label))

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_labels()

    def get_target_tensor(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        """The original's target (label expanded to the prediction), for code that calls it."""
        return (self.real_label if target_is_real else self.fake_label).expand_as(prediction)

    def forward(self, prediction, target_is_real):
        real, fake = self._labels
        kw = dict(target_real_label=real, target_fake_label=fake, for_discriminator=self.for_discriminator)
        if self.gan_mode == "nonsaturating" and isinstance(prediction, Tensor):
            bs = prediction.size(0)
            if bs == 1:  # the per-sample mean of one sample is the mean
                return F.gan_loss(prediction, target_is_real, self.gan_mode, **kw).reshape(1)
            per = F.gan_loss(prediction, target_is_real, self.gan_mode, reduction="none", **kw)
            return per.view(bs, -1).mean(dim=1)
        return F.gan_loss(prediction, target_is_real, self.gan_mode, **kw)

    def extra_repr(self) -> str:
        return f"gan_mode={self.gan_mode!r}"


# ---------------------------------------------------------------- spectral norm
from torch.nn.utils.spectral_norm import SpectralNorm as _TorchSpectralNorm  # noqa: E402 (the module, not the function)

__all__ += ["FusedSpectralNorm"]

# CPU weights smaller than this keep torch's W / sigma: at 64x32x4x4 (32768) the two cost the
# same per forward+backward, at 256x128x4x4 the fused op is 2.4x faster (2-core CPU, 1 thread)
SN_CPU_MIN_NUMEL = 65536


class FusedSpectralNorm(_TorchSpectralNorm):
    """The forward pre-hook of torch.nn.utils.spectral_norm (dim 0: Conv2d / Linear weights)
    with the normalized weight W / sigma computed by one fused op (F.spectral_norm_weight) in
    forward and backward. The power iteration (u, v updated in place in train mode) is torch's
    own code, so u, v, weight_orig and the state_dict are exactly torch's.
    ``i2i_fast.convert`` installs it by switching the class of the existing hook."""

    def compute_weight(self, module, do_power_iteration: bool) -> Tensor:
        if self.dim != 0:  # a permuted weight matrix (ConvTranspose): torch's own code
            return super().compute_weight(module, do_power_iteration)
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        weight_mat = self.reshape_weight_to_matrix(weight)
        if do_power_iteration:  # as torch (see torch.nn.utils.spectral_norm.SpectralNorm)
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    v = torch.nn.functional.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=self.eps, out=v)
                    u = torch.nn.functional.normalize(torch.mv(weight_mat, v), dim=0, eps=self.eps, out=u)
                if self.n_power_iterations > 0:
                    u = u.clone(memory_format=torch.contiguous_format)
                    v = v.clone(memory_format=torch.contiguous_format)
        if (weight_mat.device.type == "cpu" and weight_mat.numel() < SN_CPU_MIN_NUMEL) or not weight.is_contiguous():
            # small CPU weights: torch's few ops cost less than the fused op's call (measured);
            # a channels_last weight keeps its memory format through torch's expression
            return weight / torch.dot(u, torch.mv(weight_mat, v))
        return F.spectral_norm_weight(weight_mat, u, v).view(weight.shape)
