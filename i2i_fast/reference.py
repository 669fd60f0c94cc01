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
    if weight is not None:
        y = y * weight.to(sd).reshape(1, c, 1, 1)
    if bias is not None:
        y = y + bias.to(sd).reshape(1, c, 1, 1)
    y = activation(y, act, slope)
    if residual is not None:
        y = y + residual.to(sd)
    return y.to(x.dtype), mean.detach().clone(), var.detach().clone()
