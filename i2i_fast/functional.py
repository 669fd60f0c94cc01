"""Functional forms of the i2i_fast ops. Each validates its arguments (clear errors naming the
argument), picks the backend (i2i_fast.backends(), I2I_FAST_BACKEND) and runs the fused op."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import ops, reference
from .codes import Activation, NormKind, Reduction
from .reference import ACTIVATIONS

__all__ = ["instance_norm", "batch_norm", "iln", "adalin", "layer_norm", "adain"]


def _act_code(activation) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'relu', 'leaky_relu', 'tanh'; got {activation!r}")
    return int(ACTIVATIONS[activation])  # a plain int: what the ops' schemas and compile take


def _check_channel(name: str, t: Optional[Tensor], x: Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if t.numel() != x.shape[1]:
        raise ValueError(
            f"{name} must have {x.shape[1]} elements (one per channel of input), got shape {tuple(t.shape)}"
        )
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but input is on {x.device}")


def _check_4d(input, name="input", also=""):
    """A floating-point (N, C, H, W) tensor, else a clear error naming the argument."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"expects a 4D {name} (N, C, H, W){also}, got {input.dim()}D with shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {input.dtype}")


def _check_input(input, residual):
    _check_4d(input)
    if residual is not None:
        if not isinstance(residual, Tensor) or residual.shape != input.shape:
            raise ValueError(
                f"residual must have the input's shape {tuple(input.shape)}, got "
                f"{tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__}"
            )
        if residual.device != input.device or residual.dtype != input.dtype:
            raise ValueError(
                f"residual ({residual.dtype} on {residual.device}) must match input ({input.dtype} on {input.device})"
            )


def _check_param(name, t, x, numels):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if t.numel() not in numels:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, numels))} elements for input "
            f"of shape {tuple(x.shape)}, got shape {tuple(t.shape)}"
        )
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but input is on {x.device}")


def _check_eps(eps):
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _check_out_pad(out_pad, x) -> int:
    if isinstance(out_pad, bool) or not isinstance(out_pad, int) or out_pad < 0:
        raise ValueError(f"out_pad must be an int >= 0, got {out_pad!r}")
    if out_pad and not (out_pad < x.shape[2] and out_pad < x.shape[3]):
        raise ValueError(
            f"out_pad ({out_pad}) must be smaller than the input's H and W for "
            f"reflection padding, got input of shape {tuple(x.shape)}"
        )
    return out_pad


# iln, adalin, layer_norm and training-mode batch_norm run the plane-affine normalization family
# (ops/plane_norm.py): plane statistics -> per-plane scale/shift -> one fused apply.
def iln(
    input: Tensor,
    rho: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
    negative_slope: float = 0.2,
    residual: Optional[Tensor] = None,
    out_pad: int = 0,
) -> Tensor:
    """U-GAT-IT ILN: rho * IN(x) + (1 - rho) * LN(x) (unbiased variances), * gamma + beta;
    rho, gamma, beta per channel ((1, C, 1, 1) or (C,)). Then activation, residual add and a
    reflection pad of the output by out_pad."""
    _check_input(input, residual)
    _check_eps(eps)
    c = input.shape[1]
    for name, t in (("rho", rho), ("gamma", gamma), ("beta", beta)):
        _check_param(name, t, input, (c,))
    return ops.plane_norm.plane_norm(
        NormKind.ILN,
        input,
        rho,
        gamma,
        beta,
        residual,
        float(eps),
        _act_code(activation),
        float(negative_slope),
        _check_out_pad(out_pad, input),
    )


def adalin(
    input: Tensor,
    rho: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
    negative_slope: float = 0.2,
    residual: Optional[Tensor] = None,
    out_pad: int = 0,
) -> Tensor:
    """U-GAT-IT adaILN: as iln with per-sample gamma, beta of shape (N, C)."""
    _check_input(input, residual)
    _check_eps(eps)
    n, c = input.shape[:2]
    _check_param("rho", rho, input, (c,))
    for name, t in (("gamma", gamma), ("beta", beta)):
        _check_param(name, t, input, (n * c,))
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (N, C) = {(n, c)}, got {tuple(t.shape)}")
    return ops.plane_norm.plane_norm(
        NormKind.ILN,
        input,
        rho,
        gamma,
        beta,
        residual,
        float(eps),
        _act_code(activation),
        float(negative_slope),
        _check_out_pad(out_pad, input),
    )


def layer_norm(
    input: Tensor,
    gamma: Optional[Tensor] = None,
    beta: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
    negative_slope: float = 0.2,
    residual: Optional[Tensor] = None,
    out_pad: int = 0,
) -> Tensor:
    """MUNIT/UNIT LayerNorm: (x - mean) / (std + eps) per sample over (C, H, W), unbiased std,
    eps outside the square root; optional per-channel gamma, beta (C,)."""
    _check_input(input, residual)
    _check_eps(eps)
    if (gamma is None) != (beta is None):
        raise ValueError("gamma and beta must be given together")
    if gamma is not None:
        for name, t in (("gamma", gamma), ("beta", beta)):
            _check_param(name, t, input, (input.shape[1],))
    return ops.plane_norm.plane_norm(
        NormKind.LAYER,
        input,
        None,
        gamma,
        beta,
        residual,
        float(eps),
        _act_code(activation),
        float(negative_slope),
        _check_out_pad(out_pad, input),
    )


def adain(
    input: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
    negative_slope: float = 0.2,
    residual: Optional[Tensor] = None,
    out_pad: int = 0,
) -> Tensor:
    """MUNIT AdaptiveInstanceNorm2d: instance norm with per-(n, c) weight, bias (N*C,)."""
    _check_input(input, residual)
    _check_eps(eps)
    nc = input.shape[0] * input.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        _check_param(name, t, input, (nc,))
    if input.shape[2] * input.shape[3] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(input.shape)}")
    act, pad = _act_code(activation), _check_out_pad(out_pad, input)
    # = instance norm with a per-plane affine: the fused instance-norm kernels take (N*C,) params
    return ops.instance_norm.instance_norm_fwd(
        ops.common.select(input.device),
        input,
        weight,
        bias,
        residual,
        None,
        None,
        float(eps),
        act,
        float(negative_slope),
        pad,
    )[0]


def _check_running_norm(input, residual, eps, activation, weight, bias, running_mean, running_var) -> int:
    """Arguments of instance_norm / batch_norm (torch's signature + the epilogue); the
    activation code."""
    _check_input(input, residual)
    _check_eps(eps)
    act = _act_code(activation)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        _check_channel(name, t, input)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    return act


def instance_norm(
    input: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
    negative_slope: float = 0.2,
    residual: Optional[Tensor] = None,
    out_pad: int = 0,
) -> Tensor:
    """torch.nn.functional.instance_norm with a fused epilogue:
    ``out = reflection_pad(activation(instance_norm(input) * weight + bias) + residual, out_pad)``.

    Same arguments and running-statistics semantics as torch's (running stats are updated in
    place when given and use_input_stats is True; used instead of the input's statistics when
    use_input_stats is False). input: (N, C, H, W), NCHW or channels_last.
    """
    act = _check_running_norm(input, residual, eps, activation, weight, bias, running_mean, running_var)
    if use_input_stats:
        if input.shape[2] * input.shape[3] == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(input.shape)}")
        stats = (None, None)
    else:
        if running_mean is None:
            raise ValueError("use_input_stats=False needs running_mean and running_var")
        stats = (running_mean, running_var)
    pad = _check_out_pad(out_pad, input)
    out, mean, var = ops.instance_norm.instance_norm_fwd(
        ops.common.select(input.device),
        input,
        weight,
        bias,
        residual,
        *stats,
        float(eps),
        act,
        float(negative_slope),
        pad,
    )
    if use_input_stats and running_mean is not None and input.shape[2] * input.shape[3] > 0:
        ops.plane_norm.plane_norm_update_running(
            running_mean, running_var, mean, var, input.shape[2] * input.shape[3], momentum, NormKind.INSTANCE
        )
    return out


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
    negative_slope: float = 0.2,
    residual: Optional[Tensor] = None,
    out_pad: int = 0,
    num_batches_tracked: Optional[Tensor] = None,
) -> Tensor:
    """torch.nn.functional.batch_norm of a 4-d input with a fused epilogue:
    ``out = reflection_pad(activation(batch_norm(input) * weight + bias) + residual, out_pad)``.

    Same arguments and semantics as torch's: training uses the batch statistics of each
    channel over (N, H, W) (biased variance) and, when running_mean/var are given, updates them
    in place (momentum; the running variance takes the unbiased variance); otherwise the
    running statistics normalize. input: (N, C, H, W), NCHW or channels_last.
    num_batches_tracked (a module's int64 counter): incremented in training, in the same op as
    the running statistics (nn.BatchNorm2d's own increment, without its separate launch).
    """
    act = _check_running_norm(input, residual, eps, activation, weight, bias, running_mean, running_var)
    pad = _check_out_pad(out_pad, input)
    n, c, h, w = input.shape
    if num_batches_tracked is not None and not (training and running_mean is not None and input.numel() > 0):
        if training:  # as the module: counted even when there is nothing to update
            with torch.no_grad():
                num_batches_tracked.add_(1)
        num_batches_tracked = None
    if input.numel() == 0:  # as torch: an empty result, the running statistics unchanged
        return ops.plane_norm.reference_norm(
            NormKind.BATCH if training else NormKind.INSTANCE,
            input,
            None,
            weight,
            bias,
            residual,
            float(eps),
            act,
            float(negative_slope),
            pad,
            None if training else (running_mean, running_var),
        )
    backend = ops.common.select(input.device)
    if not training:
        if running_mean is None:
            raise ValueError("batch_norm with training=False needs running_mean and running_var")
        # eval: the running statistics normalize each plane, as the fused instance norm's eval mode
        return ops.instance_norm.instance_norm_fwd(
            backend,
            input,
            weight,
            bias,
            residual,
            running_mean,
            running_var,
            float(eps),
            act,
            float(negative_slope),
            pad,
        )[0]
    if n * h * w <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(input.shape)}")
    if n == 1:
        # batch 1 (pix2pix's default): the batch statistics of a channel are its one plane's, so
        # training batch norm IS instance norm with the per-channel affine: the fused instance
        # norm is one op each way (the family's path is stats, coefs, apply / sums, coefs_bwd,
        # apply_bwd); its (1, C) statistics feed the running-statistics update
        out, mean, var = ops.instance_norm.instance_norm_fwd(
            backend, input, weight, bias, residual, None, None, float(eps), act, float(negative_slope), pad
        )
    else:
        out, mean, var = ops.plane_norm.plane_norm(
            NormKind.BATCH, input, None, weight, bias, residual, float(eps), act, float(negative_slope), pad, stats=True
        )
    if running_mean is not None:
        ops.plane_norm.plane_norm_update_running(
            running_mean, running_var, mean, var, h * w, momentum, NormKind.BATCH, num_batches_tracked
        )
    return out


# ---------------------------------------------------------------- reflection pad
__all__ += ["reflection_pad2d", "reflection_pad_conv2d"]


def _pad4(pad):
    if isinstance(pad, bool) or not isinstance(pad, (int, tuple, list)):
        raise TypeError(f"pad must be an int or a 4-tuple (left, right, top, bottom), got {type(pad).__name__}")
    if isinstance(pad, int):
        pad = (pad,) * 4
    if len(pad) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pad):
        raise ValueError(f"pad must be an int or 4 ints (left, right, top, bottom), got {pad!r}")
    if min(pad) < 0:
        raise ValueError(f"pad must be >= 0, got {tuple(pad)}")
    return list(pad)


def _check_padded_input(input, pad, name="input"):
    _check_4d(input, name, " or 3D (C, H, W)")
    h, w = input.shape[2:]
    l, r, t, b = pad
    if max(l, r) >= w or max(t, b) >= h:
        raise ValueError(
            f"pad {tuple(pad)} (left, right, top, bottom) must be smaller than the "
            f"{name} size (H, W) = {(h, w)} (reflection padding)"
        )


# the activations reflection_pad2d folds in (tanh's second derivative is not implemented there)
PAD_ACTIVATIONS = (None, "relu", "leaky_relu")


def reflection_pad2d(input: Tensor, pad, *, activation: Optional[str] = None, negative_slope: float = 0.2) -> Tensor:
    """F.pad(act(input), pad, mode="reflect") for 4D (N, C, H, W) or 3D (C, H, W) input; pad is an
    int or (left, right, top, bottom), each >= 0 and < the size of its axis; activation None,
    "relu" or "leaky_relu" (negative_slope) is applied first, in the same launch (its backward
    too). The backward is a gather (no atomics): bitwise deterministic, allowed under
    torch.use_deterministic_algorithms(True). NCHW or channels_last (kept); fp16/bf16 on CPU too."""
    if activation not in PAD_ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'relu', 'leaky_relu'; got {activation!r}")
    pad = _pad4(pad)
    if isinstance(input, Tensor) and input.dim() == 3:
        batched = reflection_pad2d(input.unsqueeze(0), pad, activation=activation, negative_slope=negative_slope)
        return batched.squeeze(0)
    _check_padded_input(input, pad)
    act = _act_code(activation)
    slope = float(negative_slope) if act == Activation.LEAKY_RELU else 0.0
    return ops.reflection_pad.reflection_pad2d(ops.common.select(input.device), input, pad, act, slope)


def _int_arg(name, v, lo):
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{name} must be one int (the same for H and W), got {tuple(v)}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def reflection_pad_conv2d(
    input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, padding: int = 0, stride: int = 1
) -> Tensor:
    """conv2d(reflection_pad2d(input, padding), weight, bias, stride) (groups 1, dilation 1)
    without materializing the padded input: = nn.Sequential(nn.ReflectionPad2d(padding),
    nn.Conv2d(..., padding=0)) = nn.Conv2d(..., padding_mode="reflect"). Gradients for input,
    weight and bias; deterministic (cuDNN in deterministic mode, gather-based pad backward)."""
    if type(padding) is not int or type(stride) is not int or padding < 0 or stride < 1:
        padding, stride = _int_arg("padding", padding, 0), _int_arg("stride", stride, 1)
    if (
        isinstance(input, Tensor)
        and torch.amp.is_autocast_available(input.device.type)
        and torch.is_autocast_enabled(input.device.type)
    ):
        # autocast does not reach custom ops: cast as it casts conv2d's arguments (meta has none)
        dt = torch.get_autocast_dtype(input.device.type)
        input, weight = (t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() else t for t in (input, weight))
        bias = bias.to(dt) if isinstance(bias, Tensor) and bias.is_floating_point() else bias
    if isinstance(input, Tensor) and input.dim() == 3:
        return reflection_pad_conv2d(input.unsqueeze(0), weight, bias, padding, stride).squeeze(0)
    _check_padded_input(input, [padding] * 4)
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4D (out_channels, in_channels, kH, kW), got shape {tuple(weight.shape)}")
    if weight.dtype != input.dtype or weight.device != input.device:
        raise ValueError(
            f"weight ({weight.dtype} on {weight.device}) must match input ({input.dtype} on {input.device})"
        )
    if weight.shape[1] != input.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input channels (groups=1), input has {input.shape[1]}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise ValueError(f"bias ({bias.dtype} on {bias.device}) must match input ({input.dtype} on {input.device})")
    h, w = input.shape[2:]
    if h + 2 * padding < weight.shape[2] or w + 2 * padding < weight.shape[3]:
        raise ValueError(
            f"padded input {(h + 2 * padding, w + 2 * padding)} is smaller than the kernel {tuple(weight.shape[2:])}"
        )
    return ops.reflection_pad_conv.reflection_pad_conv2d(
        ops.common.select(input.device), input, weight, bias, padding, stride
    )


# ---------------------------------------------------------------- losses
# gan_loss / l1_loss: many terms in one fused launch, no target tensor; the forward computes
# the loss and its gradient in the same pass, the backward only scales the saved gradient.
__all__ += ["gan_loss", "l1_loss", "bce_with_logits", "gradient_penalty"]

GAN_MODES = ("lsgan", "vanilla", "hinge", "wgan", "wgangp", "nonsaturating")


def _as_terms(name, value):
    """A tensor or a non-empty list/tuple of tensors -> (list, was_list)."""
    if isinstance(value, Tensor):
        return [value], False
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ValueError(
                f"{name} must be a Tensor or a non-empty list of Tensors, got an empty {type(value).__name__}"
            )
        for i, t in enumerate(value):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}[{i}] must be a Tensor, got {type(t).__name__}")
        return list(value), True
    raise TypeError(f"{name} must be a Tensor or a list of Tensors, got {type(value).__name__}")


def _common(name, ts):
    """Checks dtype (floating) and device of the terms; promotes mixed float dtypes (a
    differentiable cast) so one launch sees one dtype."""
    dev, dtype = ts[0].device, ts[0].dtype
    same = True
    for i, t in enumerate(ts):
        if not t.is_floating_point():
            raise TypeError(f"{name}[{i}] must be floating point, got {t.dtype}")
        if t.device != dev:
            raise ValueError(f"{name}[{i}] is on {t.device} but {name}[0] is on {dev}; all terms must be on one device")
        same = same and t.dtype == dtype
    if same:
        return ts
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t if t.dtype == dtype else t.to(dtype) for t in ts]


def _weights(weights, n):
    if weights is None:
        return [1.0] * n
    if isinstance(weights, (int, float)):
        return [float(weights)] * n
    if isinstance(weights, Tensor):
        raise TypeError("weights must be Python numbers (a float or a list of floats), not a Tensor")
    ws = list(weights)
    if len(ws) != n:
        raise ValueError(f"weights must have one value per term ({n}), got {len(ws)}")
    return [float(w) for w in ws]


def _reduction(reduction):
    if reduction not in reference.REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return int(reference.REDUCTIONS[reduction])


def _gan_kind(mode, is_real, for_discriminator, real_label, fake_label):
    """(kind, parameter) of one term, as the originals define the mode."""
    k = {name: int(code) for name, code in reference.LOSS_KINDS.items()}
    sign = -1.0 if is_real else 1.0
    if mode == "lsgan":
        return k["square"], real_label if is_real else fake_label
    if mode == "vanilla":
        return k["bce"], real_label if is_real else fake_label
    if mode == "hinge":  # D: relu(1 - p) real / relu(1 + p) fake; G: -p
        return (k["hinge"], sign) if for_discriminator else (k["linear"], sign)
    if mode in ("wgan", "wgangp"):
        return k["linear"], sign
    if mode == "nonsaturating":
        return k["softplus"], sign
    raise ValueError(f"mode must be one of {GAN_MODES}, got {mode!r}")


def gan_loss(
    pred,
    target_is_real,
    mode: str = "lsgan",
    *,
    target_real_label: float = 1.0,
    target_fake_label: float = 0.0,
    for_discriminator: bool = True,
    reduction: str = "mean",
    weights=None,
):
    """GAN loss of one prediction or a list of them (multi-scale D outputs, CAM logits), as
    CycleGAN/CUT's GANLoss, U-GAT-IT, StarGAN and MUNIT compute it, without a target tensor:

    - lsgan: mean((p - t)^2); vanilla: BCEWithLogits(p, t), t = target_real_label or
      target_fake_label;
    - hinge: mean(relu(1 - p)) real / mean(relu(1 + p)) fake for the discriminator,
      -mean(p) for the generator (for_discriminator=False);
    - wgan / wgangp: -mean(p) real / mean(p) fake; nonsaturating: mean(softplus(-p)) real /
      mean(softplus(p)) fake.

    A list is the weighted sum of its terms (weights: float or one per term), reduced in ONE
    fused launch (forward and backward). target_is_real: a bool, or one per term (so real and
    fake terms of a discriminator step share the launch). reduction "sum" sums instead of
    averaging each term; "none" returns the weighted elementwise losses (a tensor, or a list
    for a list input).
    """
    fast = _gan_loss_fast(
        pred, target_is_real, mode, target_real_label, target_fake_label, for_discriminator, reduction, weights
    )
    if fast is not None:
        return fast
    if mode not in GAN_MODES:
        raise ValueError(f"mode must be one of {GAN_MODES}, got {mode!r}")
    preds, was_list = _as_terms("pred", pred)
    preds = _common("pred", preds)
    params, ws, kind, red = _gan_plan(
        mode, len(preds), target_is_real, target_real_label, target_fake_label, for_discriminator, reduction, weights
    )
    backend = ops.common.select(preds[0].device)
    outs = ops.loss.loss(backend, preds, [], params, ws, kind, red)
    if red == Reduction.NONE:
        return outs if was_list else outs[0]
    return outs[0]


def _gan_plan(mode, n, target_is_real, target_real_label, target_fake_label, for_discriminator, reduction, weights):
    """(params, weights, kind, reduction code) of a gan_loss call over n terms (checked)."""
    red = _reduction(reduction)
    ws = _weights(weights, n)
    if isinstance(target_is_real, (list, tuple)):
        if len(target_is_real) != n:
            raise ValueError(
                f"target_is_real must be a bool or one bool per term ({n}), got {len(target_is_real)} values"
            )
        reals = [bool(r) for r in target_is_real]
    elif isinstance(target_is_real, Tensor):
        raise TypeError("target_is_real must be a Python bool (or a list of bools), not a Tensor")
    else:
        reals = [bool(target_is_real)] * n
    labels = (float(target_real_label), float(target_fake_label))
    (kind, a_real), (kind_fake, a_fake) = (_gan_kind(mode, r, for_discriminator, *labels) for r in (True, False))
    if kind != kind_fake:  # no mode mixes kinds between real and fake; kept for safety
        raise ValueError("all terms of one call must use the same loss kind")
    return [a_real if r else a_fake for r in reals], ws, kind, red


# gan_loss's eager fast path: (mode, n, targets, labels, for_discriminator, reduction, weights)
# -> _gan_plan's result, for plain Python arguments only (bools, floats, None)
_GAN_PLANS: dict = {}
_PLAIN = (bool, int, float)


def _gan_loss_fast(pred, target_is_real, mode, real_label, fake_label, for_discriminator, reduction, weights):
    """The common eager call on the C++ op (cpu / cuda) without the argument walk: the plan of
    an argument pattern is computed once (checked) and cached, and the op checks the terms'
    dtypes and devices itself. At batch 1 the walk cost about as much as the fused op (8 U-GAT-IT
    D terms: ~10 us of ~25 us forward). None: take the checked path (mixed dtypes, bad
    arguments and their errors, other backends, torch.compile)."""
    tp = type(pred)
    if tp is list or tp is tuple:
        preds = pred
    elif tp is Tensor:
        preds = [pred]
    else:
        return None
    tt = type(target_is_real)
    if tt is list or tt is tuple:
        if not all(type(r) is bool for r in target_is_real):
            return None
        target_is_real = tuple(target_is_real)
    elif tt is not bool:
        return None
    if (
        type(real_label) not in _PLAIN
        or type(fake_label) not in _PLAIN
        or type(for_discriminator) is not bool
        or not (weights is None or type(weights) in _PLAIN)
        or type(mode) is not str
        or type(reduction) is not str
        or not preds
    ):
        return None
    key = (mode, len(preds), target_is_real, real_label, fake_label, for_discriminator, reduction, weights)
    plan = _GAN_PLANS.get(key)
    if plan is None:
        if mode not in GAN_MODES:
            return None
        try:
            plan = _gan_plan(
                mode, len(preds), target_is_real, real_label, fake_label, for_discriminator, reduction, weights
            )
        except (TypeError, ValueError):
            return None
        if len(_GAN_PLANS) < 1024:
            _GAN_PLANS[key] = plan
    first = preds[0]
    if type(first) is not Tensor:  # subclasses (fake tensors...) take the checked path
        return None
    if (
        not ops.loss.USE_CPP_AUTOGRAD
        or ops.common.select(first.device) not in ("cpu", "cuda")
        or torch.compiler.is_compiling()
    ):
        return None
    for t in preds:  # a meta term would send the call to the op's fake kernel, which checks nothing
        if type(t) is not Tensor or t.is_meta:
            return None
    params, ws, kind, red = plan
    try:
        outs = torch.ops.i2i_fast.loss_fwd.default(preds, [], params, ws, kind, red, False)[0]
    except (RuntimeError, TypeError):  # mixed dtypes, devices, non-tensors: the checked path
        return None
    if red == Reduction.NONE:
        return list(outs) if tp is list or tp is tuple else outs[0]
    return outs[0]


def _pairs(pairs, what):
    """One (a, b) pair or a non-empty list of them -> (a list, b list, was_list), shapes equal."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(t, Tensor) for t in pairs):
        pairs, was_list = [pairs], False
    elif isinstance(pairs, (list, tuple)):
        was_list = True
        if len(pairs) == 0:
            raise ValueError("pairs must be an (a, b) pair of Tensors or a non-empty list of pairs, got an empty list")
    else:
        raise TypeError(f"pairs must be an (a, b) pair of Tensors or a list of pairs, got {type(pairs).__name__}")
    a, b = [], []
    for i, p in enumerate(pairs):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(t, Tensor) for t in p)):
            raise TypeError(f"pairs[{i}] must be an (a, b) pair of Tensors")
        if p[0].shape != p[1].shape:
            raise ValueError(
                f"pairs[{i}]: a has shape {tuple(p[0].shape)} but b has {tuple(p[1].shape)} ({what} does not broadcast)"
            )
        a.append(p[0]), b.append(p[1])
    ts = _common("pairs", a + b)
    return ts[: len(a)], ts[len(a) :], was_list


def _pair_loss(kind, a, b, was_list, weights, reduction):
    red = _reduction(reduction)
    ws = _weights(weights, len(a))
    backend = ops.common.select(a[0].device)
    outs = ops.loss.loss(backend, a, b, [0.0] * len(a), ws, int(reference.LOSS_KINDS[kind]), red)
    if red == Reduction.NONE:
        return outs if was_list else outs[0]
    return outs[0]


def l1_loss(pairs, weights=None, *, reduction: str = "mean"):
    """Weighted sum of L1 losses mean(|a - b|) over one (a, b) pair or a list of pairs
    (CycleGAN cycle + identity, U-GAT-IT, UNIT), in one fused launch; gradients for a and b.
    reduction "sum": sum(|a - b|) per pair; "none": w * |a - b| per pair (a tensor, or a list)."""
    return _pair_loss("abs", *_pairs(pairs, "l1_loss"), weights, reduction)


def bce_with_logits(pairs, weights=None, *, reduction: str = "mean"):
    """Weighted sum of BCEWithLogitsLoss(logits, target) over one (logits, target) pair or a list
    of pairs, with a target TENSOR (e.g. StarGAN's attribute labels: its classification loss is
    ``bce_with_logits((out_cls, label), 1 / batch, reduction="sum")``), in one fused launch.
    Gradients for the logits; the target takes none (pass it detached). Constant targets
    (ones_like / zeros_like) need no tensor: gan_loss(..., "vanilla")."""
    a, b, was_list = _pairs(pairs, "bce_with_logits")
    if torch.is_grad_enabled() and any(t.requires_grad for t in b):
        raise ValueError("bce_with_logits: the target takes no gradient; pass it detached")
    return _pair_loss("bce_target", a, b, was_list, weights, reduction)


def gradient_penalty(
    discriminator,
    real: Tensor,
    fake: Tensor,
    weight: float = 10.0,
    *,
    style: str = "stargan",
    alpha: Optional[Tensor] = None,
    constant: float = 1.0,
    output: int = 0,
    return_gradients: bool = False,
):
    """WGAN-GP: weight * mean_b((||dD(x_hat)/dx_hat||_2 - constant)^2) over per-sample
    interpolates x_hat = alpha * real + (1 - alpha) * fake.

    style "stargan" (Solver.gradient_penalty): alpha ~ U[0, 1) of shape (B, 1, 1, 1), norm =
    sqrt(sum(g^2)), no eps. style "cyclegan" (networks.cal_gradient_penalty, type 'mixed'):
    alpha ~ U[0, 1) of shape (B, 1) expanded, norm = ||g + 1e-16||_2. Both draw alpha with
    torch.rand on real's device (same RNG stream as the originals); pass `alpha` (B values) to
    fix it. `discriminator` may return a tuple (StarGAN's (out_src, out_cls)): `output` picks
    the critic output. The penalty term runs through the fused loss (lsgan against
    `constant` on the per-sample norms); the gradient of D is torch autograd's
    (create_graph=True, so the penalty trains D)."""
    if style not in ("stargan", "cyclegan"):
        raise ValueError(f"style must be 'stargan' or 'cyclegan', got {style!r}")
    for name, t in (("real", real), ("fake", fake)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if real.shape != fake.shape:
        raise ValueError(f"real has shape {tuple(real.shape)} but fake has {tuple(fake.shape)}")
    if real.device != fake.device:
        raise ValueError(f"real is on {real.device} but fake is on {fake.device}")
    if real.dim() < 1 or real.shape[0] == 0:
        raise ValueError(f"real must have a non-empty batch dimension, got shape {tuple(real.shape)}")
    b = real.shape[0]
    if alpha is None:
        if style == "stargan":
            alpha = torch.rand(b, 1, 1, 1, device=real.device)
        else:
            alpha = torch.rand(b, 1, device=real.device)
    elif not isinstance(alpha, Tensor) or alpha.numel() != b:
        raise ValueError(f"alpha must be a Tensor with one value per sample ({b})")
    if style == "stargan":
        alpha = alpha.reshape((b,) + (1,) * (real.dim() - 1))
        x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    else:
        alpha = alpha.reshape(b, 1).expand(b, real.numel() // b).contiguous().view(*real.shape)
        x_hat = alpha * real + ((1 - alpha) * fake)
        x_hat.requires_grad_(True)
    out = discriminator(x_hat)
    if isinstance(out, (tuple, list)):
        out = out[output]
    g = torch.autograd.grad(
        outputs=out,
        inputs=x_hat,
        grad_outputs=torch.ones_like(out),
        create_graph=True,
        retain_graph=True,
        only_inputs=True,
    )[0]
    g = g.reshape(b, -1)
    if style == "stargan":
        norms = torch.sqrt(torch.sum(g**2, dim=1))
    else:
        norms = (g + 1e-16).norm(2, dim=1)
    pen = gan_loss(norms, True, "lsgan", target_real_label=float(constant), weights=float(weight))
    return (pen, g) if return_gradients else pen


# ---------------------------------------------------------------- spectral norm
__all__ += ["spectral_norm_weight"]


def spectral_norm_weight(weight: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """torch.nn.utils.spectral_norm's normalized weight W / sigma, sigma = u . (W v), of the
    (O, K) weight matrix, with u (O,) and v (K,) the power-iteration vectors (constants: the
    gradient flows to W only, through sigma too, as in torch). One fused op forward and one
    backward (two passes over W each way); double backward works (unfused formula)."""
    for name, t in (("weight", weight), ("u", u), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be the 2-D (O, K) weight matrix, got shape {tuple(weight.shape)}")
    if u.shape != (weight.shape[0],) or v.shape != (weight.shape[1],):
        raise ValueError(
            f"u must have shape ({weight.shape[0]},) and v ({weight.shape[1]},), got "
            f"{tuple(u.shape)} and {tuple(v.shape)}"
        )
    if u.device != weight.device or v.device != weight.device or u.dtype != weight.dtype or v.dtype != weight.dtype:
        raise ValueError(
            f"u ({u.dtype} on {u.device}) and v ({v.dtype} on {v.device}) must match the weight "
            f"({weight.dtype} on {weight.device})"
        )
    return ops.spectral_norm.spectral_norm_scale(ops.common.select(weight.device), weight, u, v)[0]
