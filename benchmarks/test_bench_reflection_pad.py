"""reflection_pad2d vs nn.ReflectionPad2d, and ReflectionPadConv2d vs
nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(padding=0)), eager and torch.compile'd:
forward, backward, forward+backward on the (pad, conv) shapes of the reference models (small
ones on CPU). Every benchmark checks parity (ours vs eager: forward output and input gradient)
before it times. extra_info holds i2i_fast.bench's medians and speedups, the path the module
took and the bytes of padded tensors it did not materialize (0 on the "pad" path).
"""

from __future__ import annotations

import pytest

from i2i_fast.bench import cases, timing

OPS = ["reflection_pad2d", "reflection_pad_conv2d"]  # op_case: see conftest.py


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", timing.MODES)
def test_reflection_pad(benchmark, op_case, mode, impl):
    op, device, shape, dtype = op_case
    c = cases.get_case(op, shape, dtype, device)
    if op == "reflection_pad_conv2d" and impl == "ours":
        path = c.ours.path_for(c.inputs[0][0])
        per_pass = cases.padded_bytes(shape, dtype) if path in ("border", "conv") else 0
        benchmark.extra_info["path"] = path
        benchmark.extra_info["padded_bytes_avoided"] = per_pass * (2 if mode == "fwdbwd" else 1)
    cases.pytest_benchmark_case(benchmark, c, mode, impl)
