"""InstanceNorm2d(C, activation="relu") (fused) vs nn.Sequential(nn.InstanceNorm2d(C), nn.ReLU())
eager and torch.compile'd: forward, backward, forward+backward (affine off, CycleGAN's default);
instance_norm_pad: InstanceNorm2d(C, activation="relu", out_pad=1) vs the same + nn.ReflectionPad2d(1)
(CycleGAN's ResnetBlock, as convert() fuses it).

Every benchmark checks parity (ours vs eager: forward output and input gradient) before it
times; a parity failure fails it. extra_info comes from i2i_fast.bench (CUDA events /
perf_counter medians); pytest-benchmark's own table from pedantic() rounds of the same
callable (cases.pytest_benchmark_case, shared by every suite here).
"""

from __future__ import annotations

import pytest

from i2i_fast.bench import cases, timing

OPS = ["instance_norm", "instance_norm_pad"]  # op_case is parametrized from cases.OPS by conftest.py


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", timing.MODES)
def test_instance_norm_relu(benchmark, op_case, mode, impl):
    op, device, shape, dtype = op_case
    cases.pytest_benchmark_case(benchmark, cases.get_case(op, shape, dtype, device), mode, impl)
