"""The main job: ``python -m i2i_fast.bench`` (console script ``i2i-fast-bench``).

For every op in the registry (OPS) and every shape/dtype it first checks parity of the fused
op against eager PyTorch on the same inputs (forward output and input gradients), then times
forward, backward and forward+backward of ours / eager / torch.compile(eager), and prints the
table. It ends with whole training steps of every family of i2i_fast.bench.steps (run_steps:
original vs converted ms/step, torch.compile of both on CUDA or with --step-compile, the
first-step parity, the ops one step dispatches with the optimizer's apart, the saved-activation
MiB; the small CPU configurations on CPU, the papers' sizes on CUDA) and writes results.json,
results.md and speedup.png (op and step speedups; needs matplotlib) into --out, named last.
Launches are counted with a TorchDispatchMode on CPU (OpCounter) and torch.profiler on CUDA
(its C++ messages silenced), so nothing but the tables reaches the terminal.

The timing helpers (measure, copy_bandwidth_gbps, machine_info, Case, summarize) are shared
with the pytest-benchmark suite in benchmarks/, so both report the same numbers.
Timing: CUDA events around each call after warm-up, inputs rotated over a footprint larger
than L2; CPU: time.perf_counter after warm-up. Eager, compile and ours are timed in alternating
rounds (samples pooled per implementation). The statistic is always the median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

from .cases import LOSS_OPS, OPS, get_case, shapes_for, summarize
from .counting import count_launches
from .machine import copy_bandwidth_gbps, machine_info
from .report import TIMING_LEGEND, _cell, _plot, _progress, format_steps, format_table, noisy_notes, steps_legend
from .steps import FAMILIES, measure_family, use_emulated_launches
from .timing import (
    DTYPE_NAMES,
    DTYPES,
    IMPLS,
    MODES,
    MachineLoad,
    default_device,
    default_dtypes,
    quiet_no_cuda_warning,
)


# ------------------------------------------------------------------- whole training steps
def run_steps(device, *, quick=False, compile_steps=False, families=None, reps=None) -> list:
    """One row per family of i2i_fast.bench.steps (the small CPU configurations on CPU, the
    papers' sizes on CUDA; --quick: small everywhere): original vs converted ms/step (medians of
    interleaved steps), torch.compile of both when compile_steps, the first-step parity of
    every variant vs the original, the ops one step dispatches (optimizer apart) and the
    saved-activation MiB of both eager variants."""
    device = torch.device(device)
    small = True if quick else None
    reps = reps or (1 if quick else 5)
    variants = ("eager", "converted") + (("compile", "converted+compile") if compile_steps else ())
    rows = []
    for fam in families or FAMILIES:
        res = measure_family(fam, device, variants, reps, small, progress=_progress)
        e, c = res["eager"], res["converted"]
        row = {
            "family": fam,
            "config": e["config"],
            "device": str(device),
            "reps": reps,
            "eager_ms": e["ms"],
            "converted_ms": c.get("ms"),
            "eager_min_ms": e["min_ms"],
            "eager_iqr_ms": e["iqr_ms"],
            "converted_min_ms": c.get("min_ms"),
            "converted_iqr_ms": c.get("iqr_ms"),
            "noisy": e["noisy"],
            "speedup_vs_eager": e["ms"] / c["ms"] if c.get("ms") else None,
            "speedup_vs_eager_min": e["min_ms"] / c["min_ms"] if c.get("min_ms") else None,
            "compile_ms": None,
            "converted_compile_ms": None,
            "speedup_vs_compile": None,
            "compile": "ok" if compile_steps else "not run",
        }
        for v, key in (("compile", "compile_ms"), ("converted+compile", "converted_compile_ms")):
            if v in res:
                row[key] = res[v].get("ms")
                if "error" in res[v]:
                    row["compile"] = f"{v} failed: {res[v]['error']}"
        if row["compile_ms"] and row["converted_compile_ms"]:
            row["speedup_vs_compile"] = row["compile_ms"] / row["converted_compile_ms"]
            row["speedup_vs_compile_min"] = res["compile"]["min_ms"] / res["converted+compile"]["min_ms"]
        checked = [r for v, r in res.items() if v != "eager" and "parity" in r]
        row["parity"] = all(r["parity"] for r in checked)
        row["parity_detail"] = "; ".join(f"{r['variant']}: {r['parity_detail']}" for r in checked)
        for v, tag in (("eager", "eager"), ("converted", "converted")):
            for k in ("ops", "model_ops", "optimizer_ops", "saved_mib", "launches"):
                if res[v].get(k) is not None:
                    row[f"{tag}_{k}"] = res[v][k]
        if row.get("eager_ops") and row.get("converted_ops"):
            row["ops_ratio"] = row["converted_ops"] / row["eager_ops"]
            row["model_ops_ratio"] = row["converted_model_ops"] / row["eager_model_ops"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m i2i_fast.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())
    p.add_argument(
        "--dtype", default=None, help="comma list of fp32,bf16,fp16 (default: fp32 on CPU, fp32,bf16 on CUDA)"
    )
    p.add_argument("--ops", default=",".join(OPS), help=f"comma list of {','.join(OPS)}")
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke run)")
    p.add_argument("--out", default="bench_results", help="output folder (default: bench_results/)")
    p.add_argument(
        "--steps",
        default="all",
        metavar="FAMILIES",
        help="whole-training-step families (comma list, 'all' or 'none'; default all)",
    )
    p.add_argument(
        "--step-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also torch.compile the steps (default: on CUDA yes, on CPU no: minutes per family)",
    )
    p.add_argument(
        "--launches",
        action="store_true",
        help="also count the CUDA kernel launches of each converted step through the CUDA "
        "emulation of a source checkout (tests/cuda_emu; builds it once, about a minute)",
    )
    a = p.parse_args(argv)
    if a.launches:
        why = use_emulated_launches()
        if why:
            print(f"--launches: {why}", flush=True)

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    dtypes = a.dtype.split(",") if a.dtype else default_dtypes(a.device)
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    for name, known, what in [(d, DTYPES, "dtype") for d in dtypes] + [(o, OPS, "op") for o in ops]:
        if name not in known:
            p.error(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    device = torch.device(a.device)
    quiet_no_cuda_warning()
    load = MachineLoad()
    info = machine_info(device)
    print(
        f"i2i_fast.bench on {info.get('gpu_name') or info.get('cpu_model')} "
        f"(torch {info['torch']}, triton {info['triton']}"
        + ("" if device.type == "cuda" else f", {info['torch_num_threads']} threads")
        + ")"
    )
    print(load.header())

    cases = [
        get_case(o, shape, DTYPES[d], device, quick=a.quick)
        for o in ops
        for shape in shapes_for(o, device, a.quick)
        for d in dtypes
    ]

    failed = 0
    for c in cases:  # parity first
        ok, detail = c.parity()
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {c.key:<32} [{c.backend}] {detail}")

    rows = []
    steps = len(cases) * len(MODES)
    t0 = time.perf_counter()
    interrupted = False
    try:  # Ctrl-C / SIGINT (a time limit): keep the rows measured so far and write them
        for ci, c in enumerate(cases):
            for mi, mode in enumerate(MODES):
                what = "compiling + timing" if c._compiled is None and c.compile_error is None else "timing"
                _progress(
                    f"[{ci * len(MODES) + mi + 1}/{steps}] {what} {c.key} {mode}: eager, compile, ours "
                    f"interleaved ({time.perf_counter() - t0:.0f}s)"
                )
                c.timing("ours", mode)
                rows.append(dict(summarize(c, mode), **{"pass": c.parity()[0], "parity": c.parity()[1]}))
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted after {len(rows)} of {steps} rows: writing those", file=sys.stderr)
        cases = cases[: (len(rows) + len(MODES) - 1) // len(MODES)]
    _progress(f"done in {time.perf_counter() - t0:.0f}s")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for c in cases:
        if c.compile_error:
            print(f"note: torch.compile failed for {c.key}: {c.compile_error}")

    print(format_table(rows))
    print(TIMING_LEGEND)
    notes = noisy_notes(rows, lambda r: f"{r['op']} {_cell('shape', r)} {r['dtype']} {r['mode']}")
    if notes:
        print(notes)
    # losses: kernel launches of one forward+backward, ours / eager / compiled
    for c in cases if not interrupted else ():
        if c.op.name in LOSS_OPS:
            n = {
                impl: (count_launches(c, impl)["launches"] if impl != "compile" or c.compiled() is not None else None)
                for impl in IMPLS
            }
            kind = "CUDA kernels" if c.device.type == "cuda" else "CPU dispatched ops"
            print(f"launches fwd+bwd {c.key:<28} ours {n['ours']}  eager {n['eager']}  compile {n['compile']} ({kind})")
            for r in rows:
                if r["op"] == c.op.name and tuple(r["shape"]) == c.shape and r["dtype"] == DTYPE_NAMES.get(c.dtype):
                    r.update({f"launches_{k}": v for k, v in n.items()})
    # whole training steps of every family: the number a GAN researcher decides on
    step_rows = []
    compile_steps = a.step_compile if a.step_compile is not None else device.type == "cuda"
    if a.steps != "none" and not interrupted:
        fams = list(FAMILIES) if a.steps == "all" else [f.strip() for f in a.steps.split(",") if f.strip()]
        for f in fams:
            if f not in FAMILIES:
                p.error(f"unknown family {f!r}; choose from {', '.join(FAMILIES)}")
        t1 = time.perf_counter()
        try:
            step_rows = run_steps(device, quick=a.quick, compile_steps=compile_steps, families=fams)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted in the training steps", file=sys.stderr)
        _progress(f"training steps done in {time.perf_counter() - t1:.0f}s")
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        failed += sum(not r["parity"] for r in step_rows)
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_report = load.report()
    meta = {
        "timestamp": stamp,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "interrupted": interrupted,
        "machine": info,
        "machine_load": load_report,
        "copy_bw_gbps": copy_bandwidth_gbps(device),
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(dict(meta, results=rows, steps=step_rows), f, indent=1)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"# i2i_fast benchmark ({stamp})\n\n")
        f.write("".join(f"- {k}: {v}\n" for k, v in info.items()))
        f.write(f"- {MachineLoad.summary(load_report)}\n")
        f.write(
            "\nMedian times; x = speedup of ours; GB/s = bytes that must move / ours' time. " + TIMING_LEGEND + "\n\n"
        )
        f.write(format_table(rows, markdown=True) + "\n")
        if notes:
            f.write("\n" + notes.replace("\n", "\n\n") + "\n")
        if step_rows:
            f.write("\n## Whole training steps\n\n" + format_steps(step_rows, markdown=True) + "\n\n")
            f.write(steps_legend(step_rows, compile_steps, device) + "\n")
    plotted = _plot(rows, os.path.join(a.out, "speedup.png"), step_rows)
    if step_rows:
        where = "small CPU configurations" if device.type == "cpu" or a.quick else "the papers' sizes"
        print(
            f"\nwhole training steps on {device.type} ({where}"
            + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
            + ")"
        )
        print(format_steps(step_rows))
        print(steps_legend(step_rows, compile_steps, device))
    print(MachineLoad.summary(load_report))
    out_dir = os.path.abspath(a.out)
    print(
        f"results in {out_dir}/: results.json, results.md"
        + (", speedup.png (chart)" if plotted else " (no chart: pip install matplotlib)")
    )
    if failed:
        print(f"{failed} parity check(s) FAILED", file=sys.stderr)
    return 1 if failed or interrupted else 0
