"""AdaLIN / ILN (U-GAT-IT), LayerNorm (MUNIT), BatchNorm2d + LeakyReLU (pix2pix) and spectral
normalization's W / sigma (U-GAT-IT discriminators' largest weight matrices): the fused
modules vs the original modules
(as written in i2i_fast.models) eager and torch.compile'd; forward, backward, forward+backward.
Parity (ours vs eager: output and every input gradient) is asserted before any timing."""

from __future__ import annotations

import pytest

from i2i_fast.bench import cases, timing

OPS = [
    "adalin",
    "iln",
    "layer_norm",
    "batch_norm",
    "spectral_norm",
]  # op_case is parametrized from cases.OPS by conftest.py


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", timing.MODES)
def test_plane_norm(benchmark, op_case, mode, impl):
    op, device, shape, dtype = op_case
    cases.pytest_benchmark_case(benchmark, cases.get_case(op, shape, dtype, device), mode, impl)
