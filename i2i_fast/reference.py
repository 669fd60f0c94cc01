"""Pure-PyTorch math of every i2i_fast op: the test oracle (run in float64) and the
last-resort backend. Each function has the same name and signature as the kernels' op and is
differentiable through ordinary autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Activation codes shared with csrc/norm_math.h.
ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "leaky_relu": 2, "tanh": 3}


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def activation(z: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    if act == 1:
        return torch.relu(z)
    if act == 2:
        return F.leaky_relu(z, slope)
    if act == 3:
        return torch.tanh(z)
    return z


def instance_norm_fwd(x, weight, bias, residual, running_mean, running_var, eps, act, slope):
    """out = act((x - mean) / sqrt(var + eps) * weight + bias) + residual, statistics per (n, c)
    plane (biased variance) or from running_mean/var. Returns (out, mean, var); mean/var (N, C)
    in fp32 (fp64 for fp64 x) and detached."""
    sd = stats_dtype(x)
    xf = x.to(sd)
    n, c = x.shape[:2]
    if running_mean is None:
        mean = xf.mean((2, 3))
        var = xf.var((2, 3), unbiased=False)
    else:
        mean = running_mean.to(sd).reshape(1, c).expand(n, c)
        var = running_var.to(sd).reshape(1, c).expand(n, c)
    y = (xf - mean[:, :, None, None]) / torch.sqrt(var[:, :, None, None] + eps)
    if weight is not None:  # per channel (C,) or per (n, c) plane (N*C,)
        y = y * weight.to(sd).reshape(-1, c, 1, 1)
    if bias is not None:
        y = y + bias.to(sd).reshape(-1, c, 1, 1)
    y = activation(y, act, slope)
    if residual is not None:
        y = y + residual.to(sd)
    return y.to(x.dtype), mean.detach().clone(), var.detach().clone()


def _epilogue(y, act, slope, residual):
    # the norms below are written in the stats dtype; activation, then residual
    y = activation(y, act, slope)
    return y if residual is None else y + residual.to(y.dtype)


def lin_fwd(x, rho, gamma, beta, eps, act, slope, residual):
    """U-GAT-IT ILN / adaILN: rho * IN(x) + (1 - rho) * LN(x), both with UNBIASED variance
    and eps inside the square root, then gamma * out + beta. rho: (1, C, 1, 1) or (C,);
    gamma/beta: per channel ((1, C, 1, 1) or (C,), ILN) or per sample ((N, C), adaILN)."""
    sd = stats_dtype(x)
    xf = x.to(sd)
    n, c = x.shape[:2]
    in_mean, in_var = xf.mean((2, 3), keepdim=True), xf.var((2, 3), keepdim=True)
    ln_mean, ln_var = xf.mean((1, 2, 3), keepdim=True), xf.var((1, 2, 3), keepdim=True)
    r = rho.to(sd).reshape(1, c, 1, 1)
    y = r * ((xf - in_mean) / torch.sqrt(in_var + eps)) + (1 - r) * ((xf - ln_mean) / torch.sqrt(ln_var + eps))
    shape = (n, c, 1, 1) if gamma.dim() == 2 and gamma.shape[0] == n and gamma.numel() == n * c else (1, c, 1, 1)
    y = y * gamma.to(sd).reshape(shape) + beta.to(sd).reshape(shape)
    return _epilogue(y, act, slope, residual).to(x.dtype)


def layer_norm_fwd(x, gamma, beta, eps, act, slope, residual):
    """MUNIT/UNIT LayerNorm: (x - mean) / (std + eps) over (C, H, W) per sample, UNBIASED std,
    eps OUTSIDE the square root; then per-channel gamma, beta (None: no affine)."""
    sd = stats_dtype(x)
    xf = x.to(sd)
    flat = xf.reshape(x.shape[0], -1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    y = (xf - flat.mean(1).reshape(shape)) / (flat.std(1).reshape(shape) + eps)
    if gamma is not None:
        pshape = (1, -1) + (1,) * (x.dim() - 2)
        y = y * gamma.to(sd).reshape(pshape) + beta.to(sd).reshape(pshape)
    return _epilogue(y, act, slope, residual).to(x.dtype)


# ---------------------------------------------------------------- reflection pad (issue #4)
def reflection_pad2d_fwd(x, pad):
    """x (N, C, H, W) reflect-padded by pad = (left, right, top, bottom): torch's F.pad."""
    return F.pad(x, tuple(pad), mode="reflect")


def reflection_pad_conv2d(x, weight, bias, padding, stride):
    """conv2d(reflection_pad2d(x, padding), weight, bias, stride): the unfused original
    nn.Sequential(nn.ReflectionPad2d(padding), nn.Conv2d(..., padding=0))."""
    if padding:
        x = F.pad(x, (padding,) * 4, mode="reflect")
    return F.conv2d(x, weight, bias, stride)


def reflection_pad_out(y, pad):
    """The norms' fused output pad: reflection padding by `pad` on each side of H and W."""
    return y if pad == 0 else reflection_pad2d_fwd(y, (pad,) * 4)
