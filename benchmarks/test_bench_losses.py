"""Fused losses (issue #5) vs the original eager formulas and torch.compile of them, on whole
loss computations of one training step (bench.LOSS_OPS): U-GAT-IT discriminator step (16
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
import torch

from i2i_fast import bench


def bench_devices() -> list:  # as benchmarks/conftest.py (I2I_FAST_BENCH_DEVICES overrides)
    import os
    env = os.environ.get("I2I_FAST_BENCH_DEVICES")
    devices = [d.strip() for d in env.split(",") if d.strip()] if env else [bench.default_device()]
    return [d for d in devices if d != "cuda" or torch.cuda.is_available()]


CASES = [(op, dev, shape, bench.DTYPES[dt]) for op in bench.LOSS_OPS for dev in bench_devices()
         for shape in bench.shapes_for(op, dev) for dt in bench.default_dtypes(dev)]
IDS = [f"{op}-{dev}-{'x'.join(map(str, s))}-{bench.DTYPE_NAMES[dt]}" for op, dev, s, dt in CASES]


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("loss_case", CASES, ids=IDS)
def test_loss(benchmark, loss_case, mode, impl):
    op, device, shape, dtype = loss_case
    c = bench.get_case(op, shape, dtype, device)
    benchmark.group = f"{c.key} {device} {mode}"

    ok, detail = c.parity()
    assert ok, f"parity ours vs eager failed for {c.key} on {device}: {detail}"
    benchmark.extra_info["parity"] = detail

    if impl == "compile" and c.compiled() is None:
        benchmark.extra_info["compile"] = f"failed: {c.compile_error}"
        pytest.skip(f"torch.compile failed: {c.compile_error}")
    benchmark.extra_info.update(bench.summarize(c, mode, impl))
    if mode == "fwdbwd":
        benchmark.extra_info.update(bench.count_launches(c, impl))

    cuda = torch.device(device).type == "cuda"
    median_s = c.timing(impl, mode).median_ms * 1e-3
    rounds = max(5, min(200 if cuda else 50, int((0.3 if cuda else 0.3) / max(median_s, 1e-6))))
    run, setup = c.fn(impl, mode)
    benchmark.pedantic(**bench.pedantic_args(run, device, setup), rounds=rounds,
                       warmup_rounds=10 if cuda else 3, iterations=1)
