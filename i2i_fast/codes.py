"""The integer codes the operators take, named once. csrc/codes.h declares the same values for
the C++ and CUDA kernels; the extension exports its table (i2i_fast._C.CODES) and
tests/test_codes.py checks that both sides agree."""

from __future__ import annotations

from enum import IntEnum


class Activation(IntEnum):
    """The activation fused after a norm (act(z)) or before a reflection pad (pad(act(x)))."""

    NONE = 0
    RELU = 1
    LEAKY_RELU = 2  # slope given beside it
    TANH = 3


class NormKind(IntEnum):
    """How plane_norm turns plane statistics into per-plane (scale, shift)."""

    INSTANCE = 0  # InstanceNorm2d: each (n, c) plane alone
    ILN = 1  # U-GAT-IT ILN / adaILN: rho mixes instance and layer statistics
    LAYER = 2  # MUNIT LayerNorm: one mean/std per sample, unbiased std, eps outside
    BATCH = 3  # training-mode BatchNorm2d: statistics merged over the batch


class LossKind(IntEnum):
    """The elementwise term f(x) of a loss; a is the term's scalar parameter."""

    SQUARE = 0  # (x - a)^2          (LSGAN)
    BCE = 1  # BCE with logits vs the constant a (vanilla GAN)
    HINGE = 2  # relu(1 + a x)
    LINEAR = 3  # a x                (WGAN)
    SOFTPLUS = 4  # softplus(a x)      (non-saturating)
    ABS = 5  # |x - y|            (L1, y a tensor)
    BCE_TARGET = 6  # BCE with logits vs a tensor y


class Reduction(IntEnum):
    NONE = 0
    MEAN = 1
    SUM = 2


ALL = (Activation, NormKind, LossKind, Reduction)
