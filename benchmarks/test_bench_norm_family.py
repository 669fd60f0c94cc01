"""AdaLIN / ILN (U-GAT-IT) and LayerNorm (MUNIT): the fused modules vs the original modules
(as written in i2i_fast.models) eager and torch.compile'd; forward, backward, forward+backward.
Parity (ours vs eager: output and every input gradient) is asserted before any timing."""
from __future__ import annotations

import pytest
import torch

from i2i_fast import bench

OPS = ["adalin", "iln", "layer_norm"]  # op_case is parametrized from bench.OPS by conftest.py


@pytest.mark.parametrize("impl", ["eager", "compile", "ours"])
@pytest.mark.parametrize("mode", bench.MODES)
def test_norm_family(benchmark, op_case, mode, impl):
    op, device, shape, dtype = op_case
    c = bench.get_case(op, shape, dtype, device)
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
