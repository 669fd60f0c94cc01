"""pytest-benchmark configuration of the i2i_fast benchmark suites.

Run: ``pytest benchmarks/ --benchmark-only`` (add ``--benchmark-json=FILE`` to keep results).
Devices: CUDA when visible, else CPU; I2I_FAST_BENCH_DEVICES=cpu,cuda overrides.
Shapes: the GPU list (docs/benchmarks.md) on CUDA (fp32 and bf16); the small CPU list in fp32 on CPU, or the
full list with I2I_FAST_BENCH_FULL=1. Timing and machine info live in i2i_fast.bench, shared
with the main job ``python -m i2i_fast.bench``; a benchmark whose timings stay too wide is
flagged (extra_info["noisy"] and a warning), and the header says how loaded the machine is.

I2I_FAST_BENCH_QUICK=1 (CI) runs the quick selection: every test function once, at its first
op and shape, forward+backward, each implementation, and the training steps of QUICK_FAMILY
(every variant, the compiled ones included), with the main job's --quick timing budgets.
"""

from __future__ import annotations

import os

import torch

import i2i_fast
from i2i_fast.bench import cases, machine, timing


def bench_devices() -> list:
    env = os.environ.get("I2I_FAST_BENCH_DEVICES")
    devices = [d.strip() for d in env.split(",") if d.strip()] if env else [timing.default_device()]
    return [d for d in devices if d != "cuda" or torch.cuda.is_available()]


# the quick selection's training-step family: UNIT draws noise inside the model, so its compiled
# variants check that compiled and eager steps see the same random numbers
QUICK_FAMILY = "unit"
QUICK_MODE = "fwdbwd"


def pytest_report_header(config):
    timing.quiet_no_cuda_warning()
    avail = {k: v[0] for k, v in i2i_fast.backends().items()}
    return [
        f"i2i_fast bench: devices={bench_devices()} full_shapes={timing.full_shapes()} "
        f"quick_selection={timing.quick_selection()} backends={avail}",
        timing.MachineLoad().header(),
    ]


def quick_keep(items) -> list:
    """The quick selection: per test function its first op case, QUICK_MODE and QUICK_FAMILY."""
    keep, first_case = [], {}
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        if params.get("mode", QUICK_MODE) != QUICK_MODE or params.get("family", QUICK_FAMILY) != QUICK_FAMILY:
            continue
        if "op_case" in params and first_case.setdefault(item.originalname, params["op_case"]) != params["op_case"]:
            continue
        keep.append(item)
    return keep


def pytest_collection_modifyitems(config, items):
    if not timing.quick_selection():
        return
    keep = quick_keep(items)
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def pytest_generate_tests(metafunc):
    """A test with an `op_case` argument and a module-level OPS list runs once per
    (op, device, shape, dtype) of those ops on this machine."""
    if "op_case" in metafunc.fixturenames:
        op_cases = [
            (op, dev, shape, timing.DTYPES[dt])
            for op in metafunc.module.OPS
            for dev in bench_devices()
            for shape in cases.shapes_for(op, dev)
            for dt in timing.default_dtypes(dev)
        ]
        ids = [f"{op}-{dev}-{'x'.join(map(str, s))}-{timing.DTYPE_NAMES[dt]}" for op, dev, s, dt in op_cases]
        metafunc.parametrize("op_case", op_cases, ids=ids)


def pytest_benchmark_update_machine_info(config, machine_info):
    devices = bench_devices() or ["cpu"]
    machine_info.update(machine.machine_info(devices[0]))
    machine_info["machine_load"] = timing.MachineLoad().header()
    if len(devices) > 1:
        machine_info["i2i_fast_devices"] = {d: machine.machine_info(d) for d in devices}
