"""The glue of every operator, one module per op (the stem it has in csrc/, kernels/,
i2i_fast/triton/ and tests/): fake tensors for torch.compile, autograd where it is not a C++
node, the create-graph backward, and `<op>(backend, ...)`, the call the functional API makes
on the backend _backend.select chose. Importing this package registers all of it."""

from . import common, instance_norm, loss, plane_norm, reflection_pad, reflection_pad_conv, spectral_norm  # noqa: F401
