"""Triton kernels (one module per op, same names as csrc/ and kernels/). They run on CUDA
tensors, and on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported)."""
