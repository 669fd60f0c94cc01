"""i2i_fast: fused CUDA, Triton and CPU kernels for image-to-image translation GANs."""

from . import functional, models
from ._backend import backends, use_backend
from .nn import ILN, AdaIN, AdaLIN, BatchNorm2d, GANLoss, InstanceNorm2d, LayerNorm, ReflectionPadConv2d

__all__ = [
    "backends",
    "use_backend",
    "functional",
    "models",
    "InstanceNorm2d",
    "BatchNorm2d",
    "ILN",
    "AdaLIN",
    "LayerNorm",
    "AdaIN",
    "ReflectionPadConv2d",
    "GANLoss",
]
__version__ = "0.1.0"

# convert(model) / plan(model): rewire the original models onto the fused modules
from .convert import convert, plan, revert  # noqa: E402

__all__ += ["convert", "plan", "revert"]
