"""i2i_fast: fused CUDA, Triton and CPU kernels for image-to-image translation GANs."""
from . import functional, models
from ._backend import backends, use_backend
from .nn import ILN, AdaIN, AdaLIN, InstanceNorm2d, LayerNorm
from .nn import GANLoss  # losses (issue #5)

__all__ = ["backends", "use_backend", "functional", "models", "InstanceNorm2d", "ILN", "AdaLIN", "LayerNorm", "AdaIN",
           "GANLoss"]
__version__ = "0.1.0"
