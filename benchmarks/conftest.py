"""pytest-benchmark configuration of the i2i_fast benchmark suites.

Run: ``pytest benchmarks/ --benchmark-only`` (add ``--benchmark-json=FILE`` to keep results).
Devices: CUDA when visible, else CPU; I2I_FAST_BENCH_DEVICES=cpu,cuda overrides.
Shapes: the DESIGN.md list on CUDA (fp32 and bf16); the small CPU list in fp32 on CPU, or the
full list with I2I_FAST_BENCH_FULL=1. Timing and machine info live in i2i_fast.bench, shared
with the main job ``python -m i2i_fast.bench``.
"""
from __future__ import annotations

import os

import torch

import i2i_fast
from i2i_fast import bench


def bench_devices() -> list:
    env = os.environ.get("I2I_FAST_BENCH_DEVICES")
    devices = [d.strip() for d in env.split(",") if d.strip()] if env else [bench.default_device()]
    return [d for d in devices if d != "cuda" or torch.cuda.is_available()]


def pytest_report_header(config):
    avail = {k: v[0] for k, v in i2i_fast.backends().items()}
    return f"i2i_fast bench: devices={bench_devices()} full_shapes={bench.full_shapes()} backends={avail}"


def pytest_generate_tests(metafunc):
    """A test with an `op_case` argument and a module-level OPS list runs once per
    (op, device, shape, dtype) of those ops on this machine."""
    if "op_case" in metafunc.fixturenames:
        cases = [(op, dev, shape, bench.DTYPES[dt]) for op in metafunc.module.OPS
                 for dev in bench_devices() for shape in bench.shapes_for(op, dev)
                 for dt in bench.default_dtypes(dev)]
        ids = [f"{op}-{dev}-{'x'.join(map(str, s))}-{bench.DTYPE_NAMES[dt]}" for op, dev, s, dt in cases]
        metafunc.parametrize("op_case", cases, ids=ids)


def pytest_benchmark_update_machine_info(config, machine_info):
    devices = bench_devices() or ["cpu"]
    machine_info.update(bench.machine_info(devices[0]))
    if len(devices) > 1:
        machine_info["i2i_fast_devices"] = {d: bench.machine_info(d) for d in devices}
