"""Pure-PyTorch math of every i2i_fast op: the test oracle (run in float64) and the
last-resort backend. Each function has the same name and signature as the kernels' op and is
differentiable through ordinary autograd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .codes import Activation, LossKind, Reduction

# the activation argument of the functional API and modules -> its code
ACTIVATIONS = {None: Activation.NONE, **{a.name.lower(): a for a in Activation}}


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def inv_std(v: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(v + eps), 0 where v + eps == 0: torch's batch/instance norm rule (eps = 0 on a
    constant plane gives the bias, not NaN; csrc/norm_math.h inv_std)."""
    v = v + eps
    return torch.where(v == 0, torch.zeros_like(v), torch.rsqrt(torch.where(v == 0, torch.ones_like(v), v)))


def activation(z: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    if act == Activation.RELU:
        return torch.relu(z)
    if act == Activation.LEAKY_RELU:
        return F.leaky_relu(z, slope)
    if act == Activation.TANH:
        return torch.tanh(z)
    return z


def instance_norm_fwd(x, weight, bias, residual, running_mean, running_var, eps, act, slope, pad=0):
    """out = reflection_pad(act((x - mean) / sqrt(var + eps) * weight + bias) + residual, pad),
    statistics per (n, c) plane (biased variance) or from running_mean/var. Returns
    (out, mean, var); mean/var (N, C) in fp32 (fp64 for fp64 x) and detached."""
    sd = stats_dtype(x)
    xf = x.to(sd)
    n, c = x.shape[:2]
    if running_mean is None:
        mean = xf.mean((2, 3))
        var = xf.var((2, 3), unbiased=False)
    else:
        mean = running_mean.to(sd).reshape(1, c).expand(n, c)
        var = running_var.to(sd).reshape(1, c).expand(n, c)
    y = (xf - mean[:, :, None, None]) * inv_std(var[:, :, None, None], eps)
    if weight is not None:  # per channel (C,) or per (n, c) plane (N*C,)
        y = y * weight.to(sd).reshape(-1, c, 1, 1)
    if bias is not None:
        y = y + bias.to(sd).reshape(-1, c, 1, 1)
    y = activation(y, act, slope)
    if residual is not None:
        y = y + residual.to(sd)
    return reflection_pad_out(y, pad).to(x.dtype), mean.detach().clone(), var.detach().clone()


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


def batch_norm_fwd(x, weight, bias, eps, act, slope, residual):
    """Training-mode BatchNorm2d: (x - mean) / sqrt(var + eps) * weight + bias with the
    statistics of each channel over (N, H, W), biased variance (torch's batch_norm); then the
    activation and residual."""
    sd = stats_dtype(x)
    xf = x.to(sd)
    y = F.batch_norm(
        xf,
        None,
        None,
        None if weight is None else weight.to(sd).reshape(-1),
        None if bias is None else bias.to(sd).reshape(-1),
        True,
        0.0,
        eps,
    )
    return _epilogue(y, act, slope, residual).to(x.dtype)


def spectral_norm_scale(weight, u, v):
    """torch.nn.utils.spectral_norm's weight from the (O, K) matrix and the power-iteration
    vectors (constants): (weight / sigma, sigma), sigma = u . (W v) (stats dtype, detached)."""
    sigma = torch.dot(u, torch.mv(weight, v))
    return weight / sigma, sigma.detach().to(stats_dtype(weight))


# ---------------------------------------------------------------- reflection pad
def reflection_pad2d_fwd(x, pad, act=Activation.NONE, slope=0.0):
    """act(x) for x (N, C, H, W), reflect-padded by pad = (left, right, top, bottom): torch's F.pad."""
    return F.pad(activation(x, act, slope), tuple(pad), mode="reflect")


def reflection_pad_conv2d(x, weight, bias, padding, stride):
    """conv2d(reflection_pad2d(x, padding), weight, bias, stride): the unfused original
    nn.Sequential(nn.ReflectionPad2d(padding), nn.Conv2d(..., padding=0))."""
    if padding:
        x = F.pad(x, (padding,) * 4, mode="reflect")
    return F.conv2d(x, weight, bias, stride)


def reflection_pad_out(y, pad):
    """The norms' fused output pad: reflection padding by `pad` on each side of H and W."""
    return y if pad == 0 else reflection_pad2d_fwd(y, (pad,) * 4)


# ---------------------------------------------------------------- losses
# the functional API's names -> codes
LOSS_KINDS = {k.name.lower(): k for k in LossKind}
REDUCTIONS = {r.name.lower(): r for r in Reduction}


def loss_elem(kind, x, y, a):
    """Elementwise loss f(x; a) of loss_fwd, written as torch's own ops compute it."""
    if kind == LossKind.SQUARE:
        return (x - a) ** 2
    if kind == LossKind.BCE:  # BCEWithLogitsLoss vs a constant target a
        return (1 - a) * x - F.logsigmoid(x)
    if kind == LossKind.HINGE:
        return torch.relu(1 + a * x)
    if kind == LossKind.LINEAR:
        return a * x
    if kind == LossKind.SOFTPLUS:
        return F.softplus(a * x)
    if kind == LossKind.ABS:
        return (x - y).abs()
    if kind == LossKind.BCE_TARGET:  # BCEWithLogitsLoss vs a target tensor
        return (1 - y) * x - F.logsigmoid(x)
    raise ValueError(f"unknown loss kind {kind}")


def loss_elem_grad(kind, x, y, a):
    """d f / d x, as torch's backward formulas compute it (relu/threshold, softplus threshold)."""
    if kind == LossKind.SQUARE:
        return 2 * (x - a)
    if kind == LossKind.BCE:
        return torch.sigmoid(x) - a
    if kind == LossKind.HINGE:
        z = 1 + a * x
        return torch.where(z <= 0, torch.zeros_like(z), torch.full_like(z, a))
    if kind == LossKind.LINEAR:
        return torch.full_like(x, a)
    if kind == LossKind.SOFTPLUS:
        z = a * x
        e = torch.exp(z)
        return torch.where(z > 20, torch.full_like(z, a), a * (e / (e + 1)))
    if kind == LossKind.ABS:
        return torch.sign(x - y)
    if kind == LossKind.BCE_TARGET:
        return torch.sigmoid(x) - y
    raise ValueError(f"unknown loss kind {kind}")


def loss_value(x, y, params, weights, kind, reduction):
    """Differentiable loss of loss_fwd (the reference backend): [loss] for mean/sum, else one
    elementwise tensor per term. Accumulates in fp32 (fp64 for fp64 inputs)."""
    sd = stats_dtype(x[0])
    outs = []
    total = None
    for t, xt in enumerate(x):
        yt = y[t].to(sd) if y else None
        v = loss_elem(kind, xt.to(sd), yt, params[t])
        if reduction == Reduction.NONE:
            outs.append((v * weights[t]).to(xt.dtype))
            continue
        s = v.sum() * (weights[t] / xt.numel() if reduction == Reduction.MEAN and xt.numel() else weights[t])
        if reduction == Reduction.MEAN and xt.numel() == 0:
            s = v.sum() * float("nan")
        total = s if total is None else total + s
    return outs if reduction == Reduction.NONE else [total.to(x[0].dtype)]


def loss_fwd(x, y, params, weights, kind, reduction, need_grad):
    """Reference of the loss_fwd op: (outs, grads) with grads[t] = d loss / d x[t] computed by
    the analytic elementwise derivative (detached)."""
    with torch.no_grad():
        outs = loss_value(x, y, params, weights, kind, reduction)
        grads = []
        if need_grad:
            sd = stats_dtype(x[0])
            for t, xt in enumerate(x):
                d = loss_elem_grad(kind, xt.to(sd), y[t].to(sd) if y else None, params[t])
                scale = weights[t] / xt.numel() if reduction == Reduction.MEAN and xt.numel() else weights[t]
                grads.append((d * scale).to(xt.dtype).contiguous())
    return outs, grads


def loss_bwd(grad_outs, saved, index, sign):
    """Reference of the loss_bwd op: sign[k] * saved[index[k]] * grad_out."""
    per_elem = not (len(grad_outs) == 1 and grad_outs[0].dim() == 0)
    res = []
    for i, s in zip(index, sign):
        g = grad_outs[i] if per_elem else grad_outs[0]
        sd = stats_dtype(saved[i])
        res.append((s * saved[i].to(sd) * g.to(sd)).to(saved[i].dtype))
    return res
