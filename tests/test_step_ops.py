"""Ops per training step (steps.count_ops), the batch-1 batch norm route that keeps pix2pix
under eager, and the main job's whole-step section (python -m i2i_fast.bench).

The op count is a TorchDispatchMode over one step (views, detach, bare allocations and profiler
records excluded): on a GPU at batch 1 each op is a launch, so it is the device-independent
proxy for a launch-bound step. The optimizer's ops (CPU Adam: per tensor) are counted apart.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import i2i_fast
from i2i_fast.bench import counting, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ the counter itself
def test_op_counter_counts_work_not_views_and_phases():
    x = torch.randn(4, 4)
    with counting.OpCounter() as c:
        y = x.view(16)  # a view: not counted
        z = torch.empty(3)  # a bare allocation: not counted
        y = y + 1  # counted
        c.phase("opt")
        y.mul_(2)  # counted, in phase "opt"
        c.phase(None)
        torch.zeros(2)  # counted (a fill)
    assert c.total == 3 and c.by_phase == {"opt": 1}, (c.total, c.names)
    del z


def test_count_ops_sees_fused_ops_and_optimizer_apart():
    r = steps.Runner("cyclegan", "converted", "cpu")
    r.run()
    n = steps.count_ops(r)
    assert n["ops"] == n["model"] + n["optimizer"] and n["optimizer"] > 0
    with counting.OpCounter() as c:
        r.run()
    assert any(k.startswith("i2i_fast::") for k in c.names)  # the fast eager path is made visible


# ---------------------------------------------------------------- fewer ops than eager
_COUNTS = {}


def _counts(family):
    if family not in _COUNTS:
        out = {}
        for v in ("eager", "converted"):
            r = steps.Runner(family, v, "cpu")
            r.run()  # warm-up: lazy state (Adam's buffers) out of the count
            out[v] = steps.count_ops(r)
        _COUNTS[family] = out
    return _COUNTS[family]


@pytest.mark.parametrize("family", list(steps.FAMILIES))
def test_converted_step_dispatches_no_more_ops_than_eager(family):
    """Small CPU configurations: the converted step (convert + fused losses) dispatches at most
    as many ops as the original, in total and without the optimizer (the same Adam on both)."""
    n = _counts(family)
    e, c = n["eager"], n["converted"]
    assert c["optimizer"] == e["optimizer"], (family, e, c)
    assert c["ops"] <= e["ops"] and c["model"] <= e["model"], (family, e, c)


@pytest.mark.parametrize("family", ["cyclegan", "ugatit"])
def test_step_model_ops_at_most_0_6_of_eager(family):
    """Without the optimizer (the same per-tensor CPU Adam on both sides): CycleGAN's 60
    IN-ReLU-ReflectionPad2d blocks are one fused op each way (instance norm with out_pad)."""
    n = _counts(family)
    assert n["converted"]["model"] <= 0.6 * n["eager"]["model"], n
    if family == "ugatit":
        assert n["converted"]["ops"] <= 0.6 * n["eager"]["ops"], n


# ------------------------------------------------ the step table's launch target, CPU proxy
# The target of the step model (benchmarks/results/*/gpu_model.md): the converted step's launches
# plus its other ops <= 0.5x eager's ops, for the norm, pad, activation and loss work. Here each
# i2i_fast op stands for its launches (gpu_model.step_op_counts), so no emulation is needed; the
# table also counts the merge launches of planes split over several blocks (MUNIT: 20 more,
# 0.496 here, 0.505 there). The families that miss it, with the bound they hold and why:
STEP_TARGET = 0.5
STEP_MISSES = {
    # eager's BatchNorm is already one op each way (native_batch_norm); what is left is outside
    # the fused layers: the U-Net's skip cats, the ReLU on each cat, dropout, autograd's
    # gradient sums (the skip, D called on fake and real), tanh, D's first LeakyReLU
    "pix2pix": 0.75,
}


@pytest.mark.parametrize("family", list(steps.FAMILIES))
def test_step_ops_meet_the_step_target(family):
    from i2i_fast.bench import gpu_model

    n = gpu_model.step_op_counts(family)
    assert n["converted"] <= STEP_MISSES.get(family, STEP_TARGET) * n["eager"], n


# ------------------------------------------------------- batch norm at batch 1 (pix2pix)
# (its float64 parity with torch at batch 1: test_plane_norm.test_batch_norm_module_matches_torch)
@pytest.mark.skipif(not i2i_fast.backends()["cpu"][0], reason="extension not built")
def test_batch_norm_batch1_ops():
    """Training batch norm at batch 1: forward = the fused instance norm + the running-stats
    update (which also counts num_batches_tracked), backward = one op; at batch 2 the family
    path remains."""
    m = i2i_fast.BatchNorm2d(4, activation="relu")
    for n, fwd_ops, bwd_ops in (
        (1, ["i2i_fast::instance_norm_fwd", "i2i_fast::plane_norm_update_running"], ["i2i_fast::instance_norm_bwd"]),
        (
            2,
            [
                "i2i_fast::plane_norm_stats",
                "i2i_fast::plane_norm_coefs",
                "i2i_fast::plane_norm_apply",
                "i2i_fast::plane_norm_update_running",
            ],
            ["i2i_fast::plane_norm_apply_sums", "i2i_fast::plane_norm_coefs_bwd", "i2i_fast::plane_norm_apply_bwd"],
        ),
    ):
        x = torch.randn(n, 4, 8, 8, requires_grad=True)
        with i2i_fast.use_backend("cpu"):
            with counting.OpCounter() as f:
                y = m(x)
            with counting.OpCounter() as b:
                y.backward(torch.ones_like(y))
        ours = [k for k in f.names if k.startswith("i2i_fast::")]
        assert ours == fwd_ops and f.total == len(fwd_ops), f.names  # num_batches_tracked: in the update
        assert [k for k in b.names if k.startswith("i2i_fast::")] == bwd_ops, b.names


# --------------------------------------------------------------- the main job's steps
def test_main_job_step_table_quiet_and_chart(tmp_path):
    """python -m i2i_fast.bench ends with the whole-step table (parity verdict, ops, saved MiB),
    names its results folder last, writes the chart, and no profiler/kineto message reaches
    the terminal (the CPU launch count is a dispatch-mode count)."""
    out = tmp_path / "res"
    cmd = [
        sys.executable,
        "-m",
        "i2i_fast.bench",
        "--quick",
        "--ops",
        "loss_cyclegan_d",
        "--steps",
        "unit",
        "--out",
        str(out),
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    text = p.stdout + p.stderr
    for noise in ("gpuGetDeviceCount", "kineto", "USDT", "ERROR") + (
        () if torch.cuda.is_available() else ("No CUDA runtime is found",)
    ):
        assert noise not in text, text
    lines = p.stdout.strip().splitlines()
    assert lines[-1].startswith("results in ") and str(out) in lines[-1]
    head = next(i for i, ln in enumerate(lines) if ln.startswith("family") and "orig ms" in ln)
    row = lines[head + 1].split()
    assert row[0] == "unit" and row[-1] == "PASS"
    d = json.load(open(out / "results.json"))
    (step,) = d["steps"]
    assert step["family"] == "unit" and step["parity"]
    assert step["converted_ops"] <= step["eager_ops"] and step["eager_saved_mib"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "speedup.png").stat().st_size > 1000
