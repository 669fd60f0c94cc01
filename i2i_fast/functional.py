"""Functional forms of the i2i_fast ops. Each validates its arguments (clear errors naming the
argument), picks the backend (i2i_fast.backends(), I2I_FAST_BACKEND) and runs the fused op."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backend, _norm, _ops, reference
from .reference import ACTIVATIONS

__all__ = ["instance_norm", "iln", "adalin", "layer_norm", "adain"]


def _act_code(activation) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'relu', 'leaky_relu', 'tanh'; got {activation!r}")
    return ACTIVATIONS[activation]


def _check_channel(name: str, t: Optional[Tensor], x: Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if t.numel() != x.shape[1]:
        raise ValueError(f"{name} must have {x.shape[1]} elements (one per channel of input), "
                         f"got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but input is on {x.device}")


def _check_input(input, residual):
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"expects a 4D input (N, C, H, W), got {input.dim()}D with shape "
                         f"{tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be floating point, got {input.dtype}")
    if residual is not None:
        if not isinstance(residual, Tensor) or residual.shape != input.shape:
            raise ValueError(f"residual must have the input's shape {tuple(input.shape)}, got "
                             f"{tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__}")
        if residual.device != input.device or residual.dtype != input.dtype:
            raise ValueError(f"residual ({residual.dtype} on {residual.device}) must match input "
                             f"({input.dtype} on {input.device})")


def _check_param(name, t, x, numels):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if t.numel() not in numels:
        raise ValueError(f"{name} must have {' or '.join(map(str, numels))} elements for input "
                         f"of shape {tuple(x.shape)}, got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but input is on {x.device}")


def _check_eps(eps):
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _check_out_pad(out_pad, x) -> int:
    if isinstance(out_pad, bool) or not isinstance(out_pad, int) or out_pad < 0:
        raise ValueError(f"out_pad must be an int >= 0, got {out_pad!r}")
    if out_pad and not (out_pad < x.shape[2] and out_pad < x.shape[3]):
        raise ValueError(f"out_pad ({out_pad}) must be smaller than the input's H and W for "
                         f"reflection padding, got input of shape {tuple(x.shape)}")
    return out_pad


# iln, adalin, layer_norm (and instance_norm / adain with an output pad) run the plane-affine
# normalization family (_norm.py): plane statistics -> per-plane scale/shift -> one fused apply.
def iln(input: Tensor, rho: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5, *,
        activation: Optional[str] = None, negative_slope: float = 0.2,
        residual: Optional[Tensor] = None, out_pad: int = 0) -> Tensor:
    """U-GAT-IT ILN: rho * IN(x) + (1 - rho) * LN(x) (unbiased variances), * gamma + beta;
    rho, gamma, beta per channel ((1, C, 1, 1) or (C,)). Then activation, residual add and a
    reflection pad of the output by out_pad."""
    _check_input(input, residual)
    _check_eps(eps)
    c = input.shape[1]
    for name, t in (("rho", rho), ("gamma", gamma), ("beta", beta)):
        _check_param(name, t, input, (c,))
    return _norm.plane_norm(_norm.LIN, input, rho, gamma, beta, residual, float(eps),
                            _act_code(activation), float(negative_slope), _check_out_pad(out_pad, input))


def adalin(input: Tensor, rho: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5, *,
           activation: Optional[str] = None, negative_slope: float = 0.2,
           residual: Optional[Tensor] = None, out_pad: int = 0) -> Tensor:
    """U-GAT-IT adaILN: as iln with per-sample gamma, beta of shape (N, C)."""
    _check_input(input, residual)
    _check_eps(eps)
    n, c = input.shape[:2]
    _check_param("rho", rho, input, (c,))
    for name, t in (("gamma", gamma), ("beta", beta)):
        _check_param(name, t, input, (n * c,))
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (N, C) = {(n, c)}, got {tuple(t.shape)}")
    return _norm.plane_norm(_norm.LIN, input, rho, gamma, beta, residual, float(eps),
                            _act_code(activation), float(negative_slope), _check_out_pad(out_pad, input))


def layer_norm(input: Tensor, gamma: Optional[Tensor] = None, beta: Optional[Tensor] = None,
               eps: float = 1e-5, *, activation: Optional[str] = None,
               negative_slope: float = 0.2, residual: Optional[Tensor] = None,
               out_pad: int = 0) -> Tensor:
    """MUNIT/UNIT LayerNorm: (x - mean) / (std + eps) per sample over (C, H, W), unbiased std,
    eps outside the square root; optional per-channel gamma, beta (C,)."""
    _check_input(input, residual)
    _check_eps(eps)
    if (gamma is None) != (beta is None):
        raise ValueError("gamma and beta must be given together")
    if gamma is not None:
        for name, t in (("gamma", gamma), ("beta", beta)):
            _check_param(name, t, input, (input.shape[1],))
    return _norm.plane_norm(_norm.LN, input, None, gamma, beta, residual, float(eps),
                            _act_code(activation), float(negative_slope), _check_out_pad(out_pad, input))


def adain(input: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5, *,
          activation: Optional[str] = None, negative_slope: float = 0.2,
          residual: Optional[Tensor] = None, out_pad: int = 0) -> Tensor:
    """MUNIT AdaptiveInstanceNorm2d: instance norm with per-(n, c) weight, bias (N*C,)."""
    _check_input(input, residual)
    _check_eps(eps)
    nc = input.shape[0] * input.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        _check_param(name, t, input, (nc,))
    if input.shape[2] * input.shape[3] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{list(input.shape)}")
    act, pad = _act_code(activation), _check_out_pad(out_pad, input)
    if pad:
        return _norm.plane_norm(_norm.IN, input, None, weight, bias, residual, float(eps), act,
                                float(negative_slope), pad)
    # = instance norm with a per-plane affine: the fused instance-norm kernels take (N*C,) params
    backend = _backend.select(input.device)
    return _ops.instance_norm_fwd(backend, input, weight, bias, residual, None, None, float(eps),
                                  act, float(negative_slope))[0]


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *, activation: Optional[str] = None,
                  negative_slope: float = 0.2, residual: Optional[Tensor] = None,
                  out_pad: int = 0) -> Tensor:
    """torch.nn.functional.instance_norm with a fused epilogue:
    ``out = reflection_pad(activation(instance_norm(input) * weight + bias) + residual, out_pad)``.

    Same arguments and running-statistics semantics as torch's (running stats are updated in
    place when given and use_input_stats is True; used instead of the input's statistics when
    use_input_stats is False). input: (N, C, H, W), NCHW or channels_last.
    """
    _check_input(input, residual)
    _check_eps(eps)
    act = _act_code(activation)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        _check_channel(name, t, input)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    if use_input_stats:
        if input.shape[2] * input.shape[3] == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size "
                             f"{list(input.shape)}")
        stats = (None, None)
    else:
        if running_mean is None:
            raise ValueError("use_input_stats=False needs running_mean and running_var")
        stats = (running_mean, running_var)
    pad = _check_out_pad(out_pad, input)
    if pad:
        out = _norm.plane_norm(_norm.IN, input, None, weight, bias, residual, float(eps), act,
                               float(negative_slope), pad, None if use_input_stats else stats)
        if use_input_stats and running_mean is not None and input.shape[2] * input.shape[3] > 0:
            with torch.no_grad():
                xf = input.detach().to(reference.stats_dtype(input))
                _update_running_stats(running_mean, running_var, xf.mean((2, 3)),
                                      xf.var((2, 3), unbiased=False), momentum,
                                      input.shape[2] * input.shape[3])
        return out
    backend = _backend.select(input.device)
    out, mean, var = _ops.instance_norm_fwd(backend, input, weight, bias, residual, *stats,
                                            float(eps), act, float(negative_slope))
    if use_input_stats and running_mean is not None and input.shape[2] * input.shape[3] > 0:
        _update_running_stats(running_mean, running_var, mean, var, momentum,
                              input.shape[2] * input.shape[3])
    return out


def _update_running_stats(running_mean, running_var, mean, var, momentum, hw):
    # torch: per-(n, c) batch-norm update of the repeated running stats, then the mean over n
    # (aten instance_norm); the running variance takes the unbiased variance.
    with torch.no_grad():
        m = float(momentum)
        rm = m * mean + (1 - m) * running_mean.to(mean.dtype)
        rv = m * var * (hw / (hw - 1)) + (1 - m) * running_var.to(var.dtype)
        running_mean.copy_(rm.mean(0))
        running_var.copy_(rv.mean(0))


# ---------------------------------------------------------------- reflection pad (issue #4)
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
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"expects a 4D {name} (N, C, H, W) or 3D (C, H, W), got {input.dim()}D "
                         f"with shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {input.dtype}")
    h, w = input.shape[2:]
    l, r, t, b = pad
    if max(l, r) >= w or max(t, b) >= h:
        raise ValueError(f"pad {tuple(pad)} (left, right, top, bottom) must be smaller than the "
                         f"{name} size (H, W) = {(h, w)} (reflection padding)")


def reflection_pad2d(input: Tensor, pad) -> Tensor:
    """F.pad(input, pad, mode="reflect") for 4D (N, C, H, W) or 3D (C, H, W) input; pad is an int
    or (left, right, top, bottom), each >= 0 and < the size of its axis. The backward is a
    gather (no atomics): bitwise deterministic, allowed under
    torch.use_deterministic_algorithms(True). NCHW or channels_last (kept); fp16/bf16 on CPU too."""
    pad = _pad4(pad)
    if isinstance(input, Tensor) and input.dim() == 3:
        return reflection_pad2d(input.unsqueeze(0), pad).squeeze(0)
    _check_padded_input(input, pad)
    return _ops.reflection_pad2d(_backend.select(input.device), input, pad)


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


def reflection_pad_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                          padding: int = 0, stride: int = 1) -> Tensor:
    """conv2d(reflection_pad2d(input, padding), weight, bias, stride) (groups 1, dilation 1)
    without materializing the padded input: = nn.Sequential(nn.ReflectionPad2d(padding),
    nn.Conv2d(..., padding=0)) = nn.Conv2d(..., padding_mode="reflect"). Gradients for input,
    weight and bias; deterministic (cuDNN in deterministic mode, gather-based pad backward)."""
    padding = _int_arg("padding", padding, 0)
    stride = _int_arg("stride", stride, 1)
    if isinstance(input, Tensor) and torch.is_autocast_enabled(input.device.type):
        # autocast does not reach custom ops: cast as it casts conv2d's arguments
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
        raise ValueError(f"weight ({weight.dtype} on {weight.device}) must match input "
                         f"({input.dtype} on {input.device})")
    if weight.shape[1] != input.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1]} input channels (groups=1), input has "
                         f"{input.shape[1]}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise ValueError(f"bias ({bias.dtype} on {bias.device}) must match input "
                             f"({input.dtype} on {input.device})")
    h, w = input.shape[2:]
    if h + 2 * padding < weight.shape[2] or w + 2 * padding < weight.shape[3]:
        raise ValueError(f"padded input {(h + 2 * padding, w + 2 * padding)} is smaller than the "
                         f"kernel {tuple(weight.shape[2:])}")
    return _ops.reflection_pad_conv2d(_backend.select(input.device), input, weight, bias, padding, stride)
