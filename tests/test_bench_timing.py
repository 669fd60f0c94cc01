"""The benchmarks' timing says when it cannot be trusted (i2i_fast.bench): spread and
preemption criteria, bounded re-measurement, "noisy" rows that never show a bare ratio, the
machine-load header, the silenced "No CUDA runtime" warning, and the benchmark suite's quick
selection that CI runs."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from i2i_fast.bench import cases, report, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = [1.0, 1.02, 0.99, 1.01, 1.0, 1.03, 0.98, 1.0]


def test_timing_noise_criteria():
    assert timing.Timing(QUIET, [0] * len(QUIET)).noise() is None
    assert "IQR" in timing.Timing([1, 1, 1, 5, 5, 5, 9, 9]).noise()
    # most calls lost a quantum: the median is far above the fastest call
    assert "the min" in timing.Timing([0.1, 4.1, 4.1, 4.2, 4.1, 4.0, 4.1, 4.2]).noise()
    # every call preempted alike: narrow spread, only the switch count shows it
    n = len(QUIET)
    assert timing.Timing([q * 8 for q in QUIET]).noise() is None
    assert f"{n} of {n} calls preempted" in timing.Timing([q * 8 for q in QUIET], [1] * n).noise()
    # a preemption is nothing to a call 100x a quantum long
    assert timing.Timing([q * 400 for q in QUIET], [1] * n).noise() is None
    # too few samples for quartiles: never called noisy
    assert timing.Timing([1, 9, 1]).noise() is None


def test_until_quiet_retries_a_bounded_number_of_times():
    calls = []

    def noisy():
        calls.append(1)
        return {"ours": timing.Timing([1, 1, 1, 5, 5, 5, 9, 9])}

    timings, why = timing.until_quiet(noisy)
    assert len(calls) == timing.NOISY_RETRIES + 1
    assert why.startswith("ours: IQR") and f"after {len(calls)} measurements" in why

    answers = iter([[1, 1, 1, 5, 5, 5, 9, 9], QUIET])
    calls.clear()

    def settles():
        calls.append(1)
        return {"ours": timing.Timing(next(answers))}

    timings, why = timing.until_quiet(settles)
    assert why is None and len(calls) == 2 and timings["ours"].times_ms == QUIET


def test_measure_records_preemptions_per_call():
    t = timing.measure(lambda: torch.ones(8).sum(), "cpu", budget_s=0.01, min_reps=5)
    assert t.switches is not None and len(t.switches) == len(t.times_ms)
    assert all(n >= 0 for n in t.switches)
    pooled = timing.Timing.pool([t, t])
    assert len(pooled.times_ms) == len(pooled.switches) == 2 * len(t.times_ms)


def test_noisy_case_row_table_and_chart(monkeypatch, tmp_path):
    """A case whose every call is preempted is measured NOISY_RETRIES + 1 times, then its row
    says noisy with the medians' and the minima's ratio, in the table and the chart."""
    real = timing.measure
    calls = []

    def preempted(*args, **kw):
        calls.append(1)
        t = real(*args, **kw)
        return timing.Timing(t.times_ms, [1] * len(t.times_ms))

    monkeypatch.setattr(cases, "measure", preempted)
    case = cases.Case(cases.OPS["reflection_pad2d"], (1, 4, 16, 16, 1), torch.float32, "cpu", quick=True)
    case.compile_error = "not compiled in this test"  # eager and ours only: no minutes of compiling
    row = cases.summarize(case, "fwd")
    impls = 2
    assert len(calls) == (timing.NOISY_RETRIES + 1) * case.ROUNDS * impls
    assert "calls preempted" in row["noisy"] and row["min_ms"] > 0 and row["iqr_ms"] is not None
    table = report.format_table([dict(row, **{"pass": True})])
    want = report.noisy_ratio(row["speedup_vs_eager"], row["speedup_vs_eager_min"])
    assert want.startswith("noisy (") and "median" in want and "min)" in want
    assert want in table
    assert f"{row['speedup_vs_eager']:.2f}x " not in table.replace(want, "")  # no bare ratio elsewhere
    pytest.importorskip("matplotlib")
    assert report._plot([row], str(tmp_path / "chart.png"))


def test_noisy_step_row():
    row = {
        "family": "unit",
        "eager_ms": 10.0,
        "converted_ms": 5.0,
        "speedup_vs_eager": 2.0,
        "speedup_vs_eager_min": 1.5,
        "noisy": "eager: IQR 90% of the median",
        "parity": True,
    }
    assert "noisy (2.00x median, 1.50x min)" in report.format_steps([row])
    assert "2.00x" not in report.format_steps([dict(row, noisy=None)]).replace("2.00x", "", 1)


def test_machine_load_header_and_report():
    load = timing.MachineLoad()
    assert load.header().startswith("machine load: ")
    r = load.report()
    assert r["cpu_count"] == os.cpu_count() and r["wall_s"] >= 0 and "CPU/wall" in timing.MachineLoad.summary(r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is silenced only where no GPU is visible")
def test_no_cuda_runtime_warning_silenced():
    timing.quiet_no_cuda_warning()
    timing.quiet_no_cuda_warning()  # idempotent
    log = logging.getLogger("torch.utils.cpp_extension")
    assert sum(isinstance(f, timing._NoCudaRuntimeFilter) for f in log.filters) == 1

    def record(msg):
        return logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, ("/usr/local/cuda",), None)

    assert not log.filter(record("No CUDA runtime is found, using CUDA_HOME='%s'"))
    assert log.filter(record("another warning %s"))


def test_benchmark_quick_selection_covers_every_test_function():
    """I2I_FAST_BENCH_QUICK=1 (CI) collects each benchmark test function, forward+backward
    only, each implementation, and the UNIT training steps of every variant."""
    env = dict(os.environ, I2I_FAST_BENCH_QUICK="1")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/",
            "--benchmark-only",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    ids = [ln for ln in p.stdout.splitlines() if "::" in ln]
    functions = {i.split("[")[0] for i in ids}
    assert functions == {
        "benchmarks/test_bench_instance_norm.py::test_instance_norm_relu",
        "benchmarks/test_bench_loss.py::test_loss",
        "benchmarks/test_bench_plane_norm.py::test_plane_norm",
        "benchmarks/test_bench_reflection_pad.py::test_reflection_pad",
        "benchmarks/test_bench_steps.py::test_training_step",
    }
    ops = [i for i in ids if "test_training_step" not in i]
    assert all("-fwdbwd-" in i for i in ops) and len(ops) == 3 * (len(functions) - 1)
    steps = sorted(i.split("[")[1].split("-", 1)[1] for i in ids if "test_training_step" in i)  # less the device
    assert steps == sorted(f"unit-{v}]" for v in ("eager", "converted", "compile", "converted+compile"))
