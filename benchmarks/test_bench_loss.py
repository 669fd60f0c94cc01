"""Fused losses vs the original eager formulas and torch.compile of them, on whole
loss computations of one training step (cases.LOSS_OPS): U-GAT-IT discriminator step (16
LSGAN terms: logits + CAM logits of the global and local D, both domains) and generator step
(adversarial LSGAN, CAM BCE x1000, cycle/identity L1 x10), CycleGAN D and G terms (LSGAN +
cycle L1 x10 + identity L1 x5), MUNIT's 3-scale LSGAN (D and G). Forward, backward,
forward+backward.

Every benchmark checks parity first (loss and every input gradient vs eager). The kernel
launches of one forward+backward (torch.profiler: CUDA kernels on CUDA, top-level kernel ops
on CPU) go into extra_info["launches"]. CPU timings on a shared machine are noisy.
"""

from __future__ import annotations

import pytest

from i2i_fast.bench import cases, counting, timing

OPS = list(cases.LOSS_OPS)  # op_case is parametrized from cases.OPS by conftest.py


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", timing.MODES)
def test_loss(benchmark, op_case, mode, impl):
    op, device, shape, dtype = op_case
    c = cases.get_case(op, shape, dtype, device)
    if mode == "fwdbwd" and (impl != "compile" or c.compiled() is not None):
        benchmark.extra_info.update(counting.count_launches(c, impl))
    cases.pytest_benchmark_case(benchmark, c, mode, impl)
