"""Drop-in modules: the originals' constructor signatures, parameter/buffer names and shapes
(so original checkpoints load unchanged), plus keyword-only fusion options."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import functional as F
from .reference import ACTIVATIONS

__all__ = ["InstanceNorm2d"]


class InstanceNorm2d(torch.nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d computed by i2i_fast's fused kernel.

    Same arguments, buffers, state_dict and train/eval behaviour as torch's (it subclasses it),
    plus ``activation`` (None, "relu", "leaky_relu", "tanh") and ``negative_slope`` applied in
    the same kernel, and ``forward(x, residual=None)`` returning
    ``activation(norm(x)) + residual``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None, dtype=None,
                 *, activation: Optional[str] = None, negative_slope: float = 0.2) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of None, 'relu', 'leaky_relu', 'tanh'; got {activation!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.activation = None if activation == "none" else activation
        self.negative_slope = negative_slope

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        if input.dim() == 3:  # unbatched (C, H, W), as torch
            return self.forward(input.unsqueeze(0),
                                None if residual is None else residual.unsqueeze(0)).squeeze(0)
        if input.size(1) != self.num_features and self.affine:
            raise ValueError(f"expected input's size at dim=1 to match num_features "
                             f"({self.num_features}), but got: {input.size(1)}.")
        return F.instance_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0, self.eps,
            activation=self.activation, negative_slope=self.negative_slope, residual=residual)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                s += f", negative_slope={self.negative_slope}"
        return s
