"""StarGAN reference networks (yunjey/stargan, model.py) and its WGAN-GP loss helpers
(solver.py), written from the original's layers with plain torch.nn layers.

Keys: generator ``main.N`` (InstanceNorm2d(affine=True, track_running_stats=True): weight, bias,
running_mean, running_var, num_batches_tracked; residual blocks ``main.N.main.M``);
discriminator ``main.N``, ``conv1``, ``conv2``. All zero padding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResidualBlock", "Generator", "Discriminator", "gradient_penalty", "classification_loss"]


def _in(c):
    return nn.InstanceNorm2d(c, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    """x + [conv3x3 p1, IN, ReLU, conv3x3 p1, IN](x); convs without bias."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            _in(dim_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim_out, dim_out, kernel_size=3, stride=1, padding=1, bias=False),
            _in(dim_out),
        )

    def forward(self, x):
        return x + self.main(x)


class Generator(nn.Module):
    """forward(x, c): the label c (B, c_dim) is tiled to HxW and concatenated to the image."""

    def __init__(self, conv_dim=64, c_dim=5, repeat_num=6):
        super().__init__()
        layers = [
            nn.Conv2d(3 + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False),
            _in(conv_dim),
            nn.ReLU(inplace=True),
        ]
        d = conv_dim
        for _ in range(2):
            layers += [
                nn.Conv2d(d, d * 2, kernel_size=4, stride=2, padding=1, bias=False),
                _in(d * 2),
                nn.ReLU(inplace=True),
            ]
            d *= 2
        for _ in range(repeat_num):
            layers.append(ResidualBlock(dim_in=d, dim_out=d))
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(d, d // 2, kernel_size=4, stride=2, padding=1, bias=False),
                _in(d // 2),
                nn.ReLU(inplace=True),
            ]
            d //= 2
        layers += [nn.Conv2d(d, 3, kernel_size=7, stride=1, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x, c):
        c = c.view(c.size(0), c.size(1), 1, 1).repeat(1, 1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1))


class Discriminator(nn.Module):
    """PatchGAN: repeat_num x [conv4 s2 p1 (bias), LReLU(0.01)]; conv1 3x3 -> 1 channel (source
    logits, (B, 1, 2, 2) at 128); conv2 with kernel image_size / 2**repeat_num -> (B, c_dim)."""

    def __init__(self, image_size=128, conv_dim=64, c_dim=5, repeat_num=6):
        super().__init__()
        layers = [nn.Conv2d(3, conv_dim, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        d = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(d, d * 2, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            d *= 2
        kernel_size = int(image_size / 2**repeat_num)
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(d, 1, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(d, c_dim, kernel_size=kernel_size, bias=False)

    def forward(self, x):
        h = self.main(x)
        out_src = self.conv1(h)
        out_cls = self.conv2(h)
        return out_src, out_cls.view(out_cls.size(0), out_cls.size(1))


def gradient_penalty(y, x):
    """Solver.gradient_penalty: mean((||dy/dx||_2 - 1)^2) over the flattened per-sample
    gradient, no eps. x must require grad (x_hat = alpha*real + (1-alpha)*fake,
    alpha = rand(B, 1, 1, 1))."""
    weight = torch.ones(y.size(), device=y.device, dtype=y.dtype)
    dydx = torch.autograd.grad(
        outputs=y, inputs=x, grad_outputs=weight, retain_graph=True, create_graph=True, only_inputs=True
    )[0]
    dydx = dydx.view(dydx.size(0), -1)
    norm = torch.sqrt(torch.sum(dydx**2, dim=1))
    return torch.mean((norm - 1) ** 2)


def classification_loss(logit, target, dataset="CelebA"):
    """CelebA: BCE-with-logits summed over attributes and batch, divided by batch size;
    RaFD: cross entropy."""
    if dataset == "CelebA":
        return F.binary_cross_entropy_with_logits(logit, target, reduction="sum") / logit.size(0)
    return F.cross_entropy(logit, target)
