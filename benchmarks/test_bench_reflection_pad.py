"""reflection_pad2d vs nn.ReflectionPad2d, and ReflectionPadConv2d vs
nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(padding=0)), eager and torch.compile'd:
forward, backward, forward+backward on the (pad, conv) shapes of the reference models (small
ones on CPU). Every benchmark checks parity (ours vs eager: forward output and input gradient)
before it times. extra_info holds i2i_fast.bench's medians and speedups, the path the module
took and the bytes of padded tensors it did not materialize (0 on the "pad" path).
"""
from __future__ import annotations

import pytest
import torch

from i2i_fast import bench

OP = "reflection_pad2d"  # bench_case is parametrized from bench.OPS[OP] by conftest.py
CONV = "reflection_pad_conv2d"


def _time(benchmark, c, device, mode, impl):
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


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", bench.MODES)
def test_reflection_pad2d(benchmark, bench_case, mode, impl):
    device, shape, dtype = bench_case
    c = bench.get_case(OP, shape, dtype, device)
    benchmark.group = f"{c.key} {device} {mode}"
    _time(benchmark, c, device, mode, impl)


def _bench_devices():
    # as conftest.bench_devices (not importable by name next to tests/conftest.py)
    import os
    env = os.environ.get("I2I_FAST_BENCH_DEVICES")
    devices = [d.strip() for d in env.split(",") if d.strip()] if env else [bench.default_device()]
    return [d for d in devices if d != "cuda" or torch.cuda.is_available()]


def _conv_cases():
    cases = [(dev, shape, bench.DTYPES[dt]) for dev in _bench_devices()
             for shape in bench.shapes_for(CONV, dev) for dt in bench.default_dtypes(dev)]
    ids = [f"{dev}-{'x'.join(map(str, s))}-{bench.DTYPE_NAMES[dt]}" for dev, s, dt in cases]
    return cases, ids


_CASES, _IDS = _conv_cases()


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("conv_case", _CASES, ids=_IDS)
def test_reflection_pad_conv2d(benchmark, conv_case, mode, impl):
    device, shape, dtype = conv_case
    c = bench.get_case(CONV, shape, dtype, device)
    benchmark.group = f"{c.key} {device} {mode}"
    if impl == "ours":
        path = c.ours.path_for(c.inputs[0][0])
        per_pass = bench.padded_bytes(shape, dtype) if path in ("border", "conv") else 0
        benchmark.extra_info["path"] = path
        benchmark.extra_info["padded_bytes_avoided"] = per_pass * (2 if mode == "fwdbwd" else 1)
    _time(benchmark, c, device, mode, impl)
