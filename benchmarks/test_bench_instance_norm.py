"""InstanceNorm2d(C, activation="relu") (fused) vs nn.Sequential(nn.InstanceNorm2d(C), nn.ReLU())
eager and torch.compile'd: forward, backward, forward+backward (affine off, CycleGAN's default).

Every benchmark checks parity (ours vs eager: forward output and input gradient) before it
times; a parity failure fails it. extra_info comes from i2i_fast.bench (CUDA events /
perf_counter medians); pytest-benchmark's own table from pedantic() rounds of the same
callable. Baselines run first, so the "ours" entry reuses their medians from this session.
"""
from __future__ import annotations

import pytest
import torch

from i2i_fast import bench

OP = "instance_norm"  # bench_case is parametrized from bench.OPS[OP] by conftest.py


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", bench.MODES)
def test_instance_norm_relu(benchmark, bench_case, mode, impl):
    device, shape, dtype = bench_case
    c = bench.get_case(OP, shape, dtype, device)
    benchmark.group = f"{c.key} {device} {mode}"

    ok, detail = c.parity()
    assert ok, f"parity ours vs eager failed for {c.key} on {device}: {detail}"
    benchmark.extra_info["parity"] = detail

    if impl == "compile" and c.compiled() is None:
        benchmark.extra_info["compile"] = f"failed: {c.compile_error}"
        pytest.skip(f"torch.compile failed: {c.compile_error}")
    benchmark.extra_info.update(bench.summarize(c, mode, impl))

    cuda = torch.device(device).type == "cuda"
    median_s = c.timing(impl, mode).median_ms * 1e-3
    rounds = max(5, min(200 if cuda else 30, int((0.3 if cuda else 0.5) / max(median_s, 1e-6))))
    run, setup = c.fn(impl, mode)
    benchmark.pedantic(**bench.pedantic_args(run, device, setup), rounds=rounds,
                       warmup_rounds=10 if cuda else 2, iterations=1)
