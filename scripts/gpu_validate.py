"""The Python parts of scripts/gpu_validate.sh (one lent-GPU call; docs/gpu_validation.md).

    python scripts/gpu_validate.py gpuinfo                      # GPU name/arch (nvidia-ml-py), no torch
    python scripts/gpu_validate.py sanitize --tool memcheck     # the workload run under compute-sanitizer
    python scripts/gpu_validate.py bench --out DIR [--deadline EPOCH]
    python scripts/gpu_validate.py steps --out DIR [--deadline EPOCH]
    python scripts/gpu_validate.py determinism --out DIR
    python scripts/gpu_validate.py summarize WORKDIR            # summary.md + meta.json, no torch

bench, steps and determinism take --device cpu (and --smoke) so that tests/test_gpu_validate.py
runs their code on CPU: the GPU-only paths cannot rot unnoticed. Every driver writes its result
files after each case, and stops starting new cases at --deadline (epoch seconds) or on SIGINT
(the step's timeout), keeping what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script (also under compute-sanitizer): import the checkout
    sys.path.insert(0, ROOT)

# the steps gpu_validate.sh runs, in priority order (the summary lists them in this order)
STEPS = ("build", "import", "tests", "memcheck", "racecheck", "synccheck", "bench", "steps", "determinism")


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def _now_utc():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Deadline:
    """Stops a driver from starting work it cannot finish: left() seconds before the deadline."""

    def __init__(self, epoch):
        self.epoch = epoch

    def left(self):
        return float("inf") if not self.epoch else self.epoch - time.time()


# ----------------------------------------------------------------------------- gpuinfo
def gpuinfo() -> dict:
    """The first GPU as nvidia-ml-py names it (no torch import), else nvidia-smi; {} keys:
    name, driver, memory_gib, compute_cap ("9.0"), source; or available False and why."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() < 1:
                return {"available": False, "reason": "nvidia-ml-py: no GPU"}
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            s = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            return {
                "available": True,
                "name": s(pynvml.nvmlDeviceGetName(h)),
                "driver": s(pynvml.nvmlSystemGetDriverVersion()),
                "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 2),
                "compute_cap": f"{major}.{minor}",
                "count": pynvml.nvmlDeviceGetCount(),
                "source": "nvidia-ml-py",
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - fall back to nvidia-smi
        why = f"nvidia-ml-py: {type(e).__name__}: {e}"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        if out.returncode == 0 and lines:
            name, drv, mem, cap = [x.strip() for x in lines[0].split(",")]
            return {
                "available": True,
                "name": name,
                "driver": drv,
                "memory_gib": round(float(mem) / 1024, 2),
                "compute_cap": cap,
                "count": len(lines),
                "source": "nvidia-smi",
            }
        why += f"; nvidia-smi rc={out.returncode}"
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        why += f"; nvidia-smi: {type(e).__name__}: {e}"
    return {"available": False, "reason": why}


# ---------------------------------------------------------------------------- sanitize
def sanitize(tool: str, device: str) -> int:
    """A short workload at small shapes for compute-sanitizer. memcheck: every kernel family
    (norms NCHW/channels_last, split planes, running stats, out_pad, pad, pad conv paths,
    losses one block and multi-block, the Triton backend too); racecheck/synccheck: the kernels
    with block reductions (norm statistics and backward sums, split-plane merges, losses)."""
    import torch

    import i2i_fast
    from i2i_fast import functional as F
    from i2i_fast.ops import reflection_pad_conv

    print(i2i_fast.backends(), flush=True)
    torch.manual_seed(0)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    backends = [b for b in (("cuda", "triton") if dev.type == "cuda" else ("cpu",)) if i2i_fast.backends()[b][0]]
    full = tool == "memcheck"
    shapes = [(2, 3, 7, 9), (1, 8, 64, 64), (2, 40, 17, 19)] + ([(1, 32, 97, 101)] if full else [])
    for backend in backends:
        with i2i_fast.use_backend(backend):
            for shape in shapes:
                for dtype in (torch.float32, torch.bfloat16) if full and dev.type == "cuda" else (torch.float32,):
                    for cl in (False, True) if full else (False,):
                        n, c = shape[:2]
                        x = torch.randn(shape, device=dev, dtype=dtype)
                        if cl:
                            x = x.contiguous(memory_format=torch.channels_last)
                        x.requires_grad_()
                        w = torch.rand(c, device=dev, dtype=dtype, requires_grad=True)
                        b = torch.randn(c, device=dev, dtype=dtype, requires_grad=True)
                        rho = torch.rand(1, c, 1, 1, device=dev, dtype=dtype, requires_grad=True)
                        g = torch.rand(n, c, device=dev, dtype=dtype, requires_grad=True)
                        be = torch.randn(n, c, device=dev, dtype=dtype, requires_grad=True)
                        outs = [
                            F.instance_norm(x, None, None, w, b, True, activation="relu", residual=torch.randn_like(x)),
                            F.instance_norm(
                                x, None, None, w, b, True, activation="relu", residual=torch.randn_like(x), out_pad=1
                            ),
                            F.adalin(x, rho, g, be, activation="relu", out_pad=1),
                            F.layer_norm(x, w, b),
                            F.batch_norm(x, None, None, w, b, True, activation="relu"),
                        ]
                        if full:
                            rm, rv = torch.randn(c, device=dev), torch.rand(c, device=dev) + 0.5
                            outs.append(F.instance_norm(x, rm, rv, w, b, False))
                            outs.append(F.reflection_pad2d(x, (1, 2, 3, 1)))
                        for y in outs:
                            y.backward(torch.randn_like(y))
                        sync()
                        ok = all(bool(t.grad.isfinite().all()) for t in (x, w, b))
                        print(f"{tool} {backend} norms {shape} {dtype} cl={cl:d}: grads finite {ok}", flush=True)
            if full:
                for path in reflection_pad_conv.PAD_CONV_PATHS:
                    m = i2i_fast.ReflectionPadConv2d(8, 6, 3, padding=1).to(dev)
                    x = torch.randn(2, 8, 13, 11, device=dev, requires_grad=True)
                    with reflection_pad_conv.pad_conv_force(path):
                        m(x).square().sum().backward()
                    sync()
                    print(f"{tool} {backend} pad conv {path}: ok", flush=True)
            # losses: one block (PatchGAN terms) and several blocks (an L1 on images)
            preds = [torch.randn(s, device=dev, requires_grad=True) for s in ((1, 1, 30, 30), (1, 1, 6, 6), (1, 2))]
            F.gan_loss(preds, True, "lsgan").backward()
            a = torch.randn(2, 3, 64, 80, device=dev, requires_grad=True)
            F.l1_loss([(a, torch.randn_like(a))], [10.0]).backward()
            sync()
            print(
                f"{tool} {backend} losses: grads finite {all(bool(p.grad.isfinite().all()) for p in preds + [a])}",
                flush=True,
            )
    print("sanitize workload done", flush=True)
    return 0


# ------------------------------------------------------------------------------- bench
def _block_op(variant):
    """InstanceNorm + ReLU -> ReflectionPad2d(p) -> Conv2d, the ResNet-block pattern, as one
    benchmark op per ReflectionPadConv2d path: "pad" / "border" (ReflectionPadConv2d after the
    fused norm) and "out_pad" (the norm writes its output reflect-padded, the conv reads it
    with padding 0: what convert() builds). Eager: the four torch modules."""
    import torch
    from torch import nn

    import i2i_fast
    from i2i_fast.bench import cases

    def build(shape, dtype, device):
        n, ci, h, w, co, k, s, p = shape
        if variant == "out_pad":
            conv = nn.Conv2d(ci, co, k, stride=s)
            ours = nn.Sequential(i2i_fast.InstanceNorm2d(ci, activation="relu", out_pad=p), conv)
        else:
            conv = i2i_fast.ReflectionPadConv2d(ci, co, k, stride=s, padding=p)
            ours = nn.Sequential(i2i_fast.InstanceNorm2d(ci, activation="relu"), conv)
        eager = nn.Sequential(nn.InstanceNorm2d(ci), nn.ReLU(), nn.ReflectionPad2d(p), nn.Conv2d(ci, co, k, stride=s))
        eager[3].load_state_dict(conv.state_dict())
        return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)

    def inputs(shape, dtype, device, gen):
        return (torch.randn(shape[:4], generator=gen).to(device=device, dtype=dtype).requires_grad_(),)

    sh = ((1, 256, 64, 64, 256, 3, 1, 1), (8, 256, 64, 64, 256, 3, 1, 1), (1, 64, 256, 256, 128, 3, 2, 1))
    return cases.Op(
        name=f"in_relu_pad_conv[{variant}]",
        build=build,
        make_inputs=inputs,
        moved=cases.OPS["reflection_pad_conv2d"].moved,
        shapes=sh,
        cpu_shapes=((1, 16, 32, 32, 16, 3, 1, 1),),
    )


def bench_plan(device_type: str, smoke: bool):
    """[(tier, op name, Op, shape, dtype name, forced pad-conv path or None, file)] in priority
    order: tier 1 = every op once at its first GPU shape, fp32 and bf16 (losses and the
    norm->pad->conv block fp32); tier 2 = the other shapes and dtypes. file: "results" (the
    ops as the default user gets them; the README's table) or "paths" (the other
    ReflectionPadConv2d paths and the block)."""
    from i2i_fast.bench import cases

    ops, blocks = cases.OPS, {v: _block_op(v) for v in ("pad", "border", "out_pad")}
    cpu = device_type != "cuda"
    shapes = (lambda op: op.cpu_shapes) if cpu else (lambda op: op.shapes)
    dtypes = ("fp32",) if cpu else ("fp32", "bf16")
    norms = ("instance_norm", "instance_norm_pad", "adalin", "iln", "layer_norm", "batch_norm")
    losses = tuple(n for n in cases.LOSS_OPS if n in ops)
    plan = []

    def add(tier, name, op, shape, dt, path=None, file="results"):
        plan.append((tier, name, op, tuple(shape), dt, path, file))

    for dt in dtypes:
        for n in norms + ("reflection_pad2d",):
            add(1, n, ops[n], shapes(ops[n])[0], dt)
        pc = ops["reflection_pad_conv2d"]
        add(1, "reflection_pad_conv2d", pc, shapes(pc)[1 if not cpu else 0], dt)  # ResNet block (default path)
        add(1, "reflection_pad_conv2d[border]", pc, shapes(pc)[1 if not cpu else 0], dt, "border", "paths")
    for v in ("out_pad", "pad", "border"):
        add(1, blocks[v].name, blocks[v], shapes(blocks[v])[0], "fp32", v if v != "out_pad" else None, "paths")
    for n in losses:
        add(1, n, ops[n], shapes(ops[n])[0], "fp32")
    if smoke:  # one case of each kind at tiny shapes: the code paths, not the numbers
        tiny = (1, 4, 12, 12, 4, 3, 1, 1)
        return [
            (1, "instance_norm", ops["instance_norm"], (1, 8, 16, 16), "fp32", None, "results"),
            (1, "reflection_pad_conv2d[border]", ops["reflection_pad_conv2d"], tiny, "fp32", "border", "paths"),
            (1, blocks["out_pad"].name, blocks["out_pad"], tiny, "fp32", None, "paths"),
            (1, "loss_cyclegan_d", ops["loss_cyclegan_d"], (1, 64), "fp32", None, "results"),
        ]
    for dt in dtypes:
        for n in norms + ("reflection_pad2d",):
            for sh in shapes(ops[n])[1:]:
                add(2, n, ops[n], sh, dt)
        pc = ops["reflection_pad_conv2d"]
        for i, sh in enumerate(shapes(pc)):
            if i != (1 if not cpu else 0):
                add(2, "reflection_pad_conv2d", pc, sh, dt)
                add(2, "reflection_pad_conv2d[border]", pc, sh, dt, "border", "paths")
        for v in ("out_pad", "pad", "border"):
            for sh in shapes(blocks[v])[(1 if dt == "fp32" else 0) :]:
                add(2, blocks[v].name, blocks[v], sh, dt, v if v != "out_pad" else None, "paths")
        for n in losses:
            for sh in shapes(ops[n])[(1 if dt == "fp32" else 0) :]:
                add(2, n, ops[n], sh, dt)
    return plan


def run_bench(
    out: str, device: str, deadline: Deadline, smoke: bool, with_compile: bool, per_case_s: float = 4.0
) -> int:
    """Times the plan case by case (parity first; fwd, bwd, fwd+bwd; ours vs eager, compile
    baseline only with with_compile); rewrites results.json / pad_conv_paths.json (the format
    of python -m i2i_fast.bench, so the README generator reads them) after every case."""
    import torch

    from i2i_fast.bench import cases, counting, machine, report, timing
    from i2i_fast.ops import reflection_pad_conv

    dev = torch.device(device)
    info = machine.machine_info(dev)
    bw = machine.copy_bandwidth_gbps(dev)
    files = {"results": [], "paths": []}
    skipped, failed, done = [], 0, 0
    stamp = _now_utc()

    def flush(interrupted=False):
        for key, name in (("results", "results.json"), ("paths", "pad_conv_paths.json")):
            meta = {
                "timestamp": stamp,
                "argv": ["scripts/gpu_validate.py", "bench"] + (["--smoke"] if smoke else []),
                "interrupted": interrupted,
                "machine": info,
                "copy_bw_gbps": bw,
                "not_run": [s for s in skipped if s["file"] == key],
                "results": files[key],
            }
            _write_json(os.path.join(out, name), meta)
            with open(os.path.join(out, name.replace(".json", ".md")), "w") as f:
                f.write(
                    f"# gpu_validate bench ({stamp}) on {info.get('gpu_name') or info.get('cpu_model')}\n\n"
                    "Median ms; x = speed-up of ours; GB/s = bytes that must move / our time.\n\n"
                )
                f.write(report.format_table(files[key], markdown=True) + "\n" if files[key] else "(no rows)\n")

    flush()
    plan = bench_plan(dev.type, smoke)
    print(
        f"bench: {len(plan)} cases planned on {info.get('gpu_name') or info.get('cpu_model')}, "
        f"copy bandwidth {bw and round(bw)} GB/s",
        flush=True,
    )
    with _TimeLimit("bench", flush) as limit:
        for tier, name, op, shape, dt, path, file in plan:
            if deadline.left() < per_case_s:
                skipped.append({"op": name, "shape": list(shape), "dtype": dt, "file": file, "why": "out of time"})
                continue
            t0 = time.time()
            try:
                with reflection_pad_conv.pad_conv_force(path):
                    case = cases.Case(op, shape, timing.DTYPES[dt], dev, quick=True)
                    if not with_compile:
                        case.compile_error = "not measured (gpu_validate time budget)"
                    ok, detail = case.parity()
                    failed += not ok
                    launches = {}
                    if not smoke and (name in cases.LOSS_OPS or file == "paths" or name == "reflection_pad_conv2d"):
                        # kernel launches of one fwd+bwd (torch.profiler; its first use costs seconds)
                        for impl in ("ours", "eager"):
                            try:  # a profiler failure loses the count, not the timings
                                launches[f"launches_{impl}"] = counting.count_launches(case, impl)["launches"]
                            except Exception as e:  # noqa: BLE001
                                launches[f"launches_{impl}"] = None
                                launches["launches_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    for mode in timing.MODES:
                        case.timing("ours", mode)
                        row = dict(cases.summarize(case, mode), **{"pass": ok, "parity": detail}, **launches)
                        row.update(op=name, tier=tier)
                        if not with_compile:
                            row["compile"] = "not measured (time budget)"
                        if op.name.startswith(("reflection_pad_conv2d", "in_relu_pad_conv")):
                            conv = case.ours[-1] if isinstance(case.ours, torch.nn.Sequential) else case.ours
                            row["path"] = conv.path_for(case.inputs[0][0]) if hasattr(conv, "path_for") else "out_pad"
                        files[file].append(row)
                done += 1
                fb = files[file][-1]
                print(
                    f"{'PASS' if ok else 'FAIL'} {name} {'x'.join(map(str, shape))} {dt}: fwd+bwd ours "
                    f"{fb['time_ms']:.3f} ms, eager {fb.get('eager_ms') or float('nan'):.3f} ms "
                    f"({time.time() - t0:.1f}s)",
                    flush=True,
                )
                del case
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one case failing does not stop the others
                failed += 1
                skipped.append(
                    {"op": name, "shape": list(shape), "dtype": dt, "file": file, "why": f"error: {_err(e)}"}
                )
                print(f"ERROR {name} {shape} {dt}: {type(e).__name__}: {e}", flush=True)
            _case_done(flush, dev)
    print(f"bench: {done} cases measured, {len(skipped)} not run, {failed} failed", flush=True)
    return 1 if failed or limit.interrupted else 0


def _err(e, n=300) -> str:
    """An exception as one line: its type and the first n characters of its first line."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:n] if msg else ''}"


class _TimeLimit:
    """Around a phase's loop of cases: a KeyboardInterrupt (the outer time limit) ends the loop,
    and the results measured so far are written either way (flush(interrupted))."""

    def __init__(self, what, flush):
        self.what, self.flush, self.interrupted = what, flush, False

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if typ is KeyboardInterrupt:
            self.interrupted = True
            print(f"{self.what}: interrupted (time limit); writing what was measured", flush=True)
        if typ is None or self.interrupted:
            self.flush(self.interrupted)
        return self.interrupted


def _case_done(flush, dev) -> None:
    """After every case: results written so far, and the GPU memory of the case released."""
    import torch

    flush()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- steps
STEP_ORDER = [
    ("cyclegan", "eager"),
    ("cyclegan", "converted"),
    ("ugatit", "eager"),
    ("ugatit", "converted"),
    ("cyclegan", "converted+compile"),
    ("cyclegan", "compile"),
    ("ugatit", "converted+compile"),
    ("ugatit", "compile"),
    ("stargan", "eager"),
    ("stargan", "converted"),
    ("pix2pix", "eager"),
    ("pix2pix", "converted"),
    ("munit", "eager"),
    ("munit", "converted"),
    ("stargan", "converted+compile"),
    ("pix2pix", "converted+compile"),
    ("munit", "converted+compile"),
]


def run_steps(out: str, device: str, deadline: Deadline, smoke: bool, budget_s: float = 1.5) -> int:
    """Whole training steps at the papers' sizes (CUDA; bench.steps' small sizes on CPU), in
    STEP_ORDER while time is left: ms/step (median wall), CPU ms, peak memory, first-step
    losses vs eager. Writes steps.json and training_steps.txt (the format of
    `python -m i2i_fast.bench.steps --interleave`, read by scripts/readme_results.py)."""
    import torch

    from i2i_fast.bench import steps, timing

    dev = torch.device(device)
    order = STEP_ORDER[:2] if smoke else STEP_ORDER
    budget_s = 0.0 if smoke else budget_s
    rows, ref, failed = [], {}, 0
    need = {"eager": 10.0, "converted": 10.0}  # seconds a variant needs at least to be started

    def flush(interrupted=False):
        _write_json(
            os.path.join(out, "steps.json"),
            {"timestamp": _now_utc(), "device": str(dev), "interrupted": interrupted, "rows": rows},
        )
        # the header and rows of `python -m i2i_fast.bench.steps --interleave` (scripts/readme_results.py parses them)
        lines = [
            f"training steps on {dev.type} ({torch.get_num_threads()} threads), variants timed one after "
            f"another for {budget_s:g} s, at least {1 if smoke else 3} steps each; median wall ms, min wall ms, "
            f"median process CPU ms (scripts/gpu_validate.py steps; peak MiB in steps.json)"
        ]
        for r in rows:
            if r.get("ms") is None:
                lines.append(f"{r['family']:<9} {r['variant']:<18} not measured: {r.get('error') or r.get('why')}")
                continue
            e = next((x for x in rows if x["family"] == r["family"] and x["variant"] == "eager" and x.get("ms")), None)
            x = f"{e['ms'] / r['ms']:.2f}x wall, {e['cpu_ms'] / r['cpu_ms']:.2f}x cpu" if e else "-"
            lines.append(
                f"{r['family']:<9} {r['variant']:<18} {r['ms']:9.1f} {r['min_ms']:9.1f} {r['cpu_ms']:9.1f}  "
                f"{x}  {'PASS' if r['parity'] else 'FAIL'} {r['parity_detail']}  [{r['config']}]"
            )
        with open(os.path.join(out, "training_steps.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")

    flush()
    with _TimeLimit("steps", flush) as limit:
        for fam, var in order:
            left = deadline.left()
            if left < need.get(var, 45.0):
                rows.append({"family": fam, "variant": var, "ms": None, "why": f"out of time ({left:.0f}s left)"})
                continue
            t0 = time.time()
            try:
                r = steps.Runner(fam, var, dev, small=True if smoke else None)
                losses = r.run()  # warm-up (and compilation)
                ok, detail = (
                    steps.compare_losses(ref[fam], losses) if fam in ref and var != "eager" else (True, "reference")
                )
                if var == "eager":
                    ref[fam] = losses
                wall, cpu = [], []
                while len(wall) < (1 if smoke else 3) or (sum(wall) < budget_s * 1e3 and len(wall) < 50):
                    timing.synchronize(dev)
                    w, c = time.perf_counter(), time.process_time()
                    r.run()
                    timing.synchronize(dev)
                    wall.append((time.perf_counter() - w) * 1e3)
                    cpu.append((time.process_time() - c) * 1e3)
                peak = None
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    r.run()
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() / 2**20
                med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
                rows.append(
                    {
                        "family": fam,
                        "variant": var,
                        "config": r.what,
                        "ms": med(wall),
                        "min_ms": min(wall),
                        "cpu_ms": med(cpu),
                        "reps": len(wall),
                        "peak_mib": peak,
                        "parity": ok,
                        "parity_detail": detail,
                        "first_step_s": None,
                        "seconds": time.time() - t0,
                        "losses": {k: float(v) for k, v in losses.items()},
                    }
                )
                failed += not ok
                print(
                    f"{fam:<9} {var:<18} {med(wall):9.2f} ms/step  peak {peak and round(peak)} MiB  "
                    f"{'PASS' if ok else 'FAIL'} ({time.time() - t0:.1f}s)",
                    flush=True,
                )
                del r
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded (torch.compile of some originals fails in torch)
                rows.append({"family": fam, "variant": var, "ms": None, "seconds": time.time() - t0, "error": _err(e)})
                failed += "compile" not in var  # a compile failure in torch is recorded, not ours
                print(f"{fam:<9} {var:<18} ERROR {_err(e, 200)}", flush=True)
            _case_done(flush, dev)
    return 1 if failed or limit.interrupted else 0


# ------------------------------------------------------------------------- determinism
def run_determinism(out: str, device: str, smoke: bool) -> int:
    """Two converted CycleGAN runs of two training steps each from the same weights under
    torch.use_deterministic_algorithms(True): every weight bitwise equal. The eager original
    is expected to raise there on CUDA (torch's reflection-pad backward has no deterministic
    kernel): recorded, not a failure. Writes determinism.json."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA initializes
    import torch

    from i2i_fast.bench import steps, timing

    dev = torch.device(device)
    n_steps = 1 if smoke else 2
    res = {"device": str(dev), "steps_per_run": n_steps, "family": "cyclegan", "timestamp": _now_utc()}
    torch.use_deterministic_algorithms(True)
    try:
        weights = []
        for _ in range(2):
            r = steps.Runner("cyclegan", "converted", dev, small=True if smoke else None)
            res["config"] = r.what
            for _ in range(n_steps):
                r.run()
            timing.synchronize(dev)
            weights.append([p.detach().clone() for n in r.nets for p in n.parameters()])
            del r
        diff = [(a - b).abs().max().item() for a, b in zip(*weights) if not torch.equal(a, b)]
        res.update(
            converted_bitwise_equal=not diff,
            tensors=len(weights[0]),
            tensors_differing=len(diff),
            max_abs_diff=max(diff) if diff else 0.0,
        )
    except Exception as e:  # noqa: BLE001
        res.update(converted_bitwise_equal=False, converted_error=f"{type(e).__name__}: {str(e)[:500]}")
    try:
        r = steps.Runner("cyclegan", "eager", dev, small=True if smoke else None)
        r.run()
        timing.synchronize(dev)
        res["eager"] = "ran without error" + (" (unexpected on CUDA)" if dev.type == "cuda" else " (CPU)")
    except RuntimeError as e:
        res["eager"] = f"raised as expected: {str(e).strip().splitlines()[0][:300]}"
    finally:
        torch.use_deterministic_algorithms(False)
    _write_json(os.path.join(out, "determinism.json"), res)
    print(json.dumps(res, indent=1), flush=True)
    return 0 if res["converted_bitwise_equal"] else 1


# --------------------------------------------------------------------------- summarize
def _read_steps(work):
    rows = []
    path = os.path.join(work, "steps.tsv")
    if os.path.exists(path):
        for line in open(path):
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 6 and parts[0] != "step":
                rows.append(dict(zip(("step", "result", "rc", "seconds", "timeout_s", "note"), parts)))
    return rows


def _load(work, name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _junit(work):
    """(counts, failing [(test, message)]) from junit.xml, or (None, [])."""
    import xml.etree.ElementTree as ET

    path = os.path.join(work, "junit.xml")
    if not os.path.exists(path):
        return None, []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"junit.xml unreadable: {e}"}, []
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for ts in [root] if root.tag == "testsuite" else root.iter("testsuite"):
        for k in counts:
            counts[k] += int(ts.get(k, 0) or 0)
    bad = []
    for tc in root.iter("testcase"):
        for kind in ("failure", "error"):
            el = tc.find(kind)
            if el is not None:
                msg = (el.get("message") or el.text or "").strip().splitlines()
                bad.append((f"{tc.get('classname')}::{tc.get('name')}", f"{kind}: {msg[0][:160] if msg else ''}"))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts, bad


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def summarize(work: str) -> int:
    """Writes WORK/summary.md and WORK/meta.json from what the steps left in WORK (stdlib
    only: runs after every step, also where torch is broken)."""
    env = _load(work, "run.json") or {}
    gpu = _load(work, "gpu.json") or {}
    steps = _read_steps(work)
    dry = bool(env.get("dry_run"))
    device = gpu.get("name") if gpu.get("available") else None
    started = env.get("started_utc", _now_utc())
    wall = int(time.time() - float(env.get("start_epoch", time.time())))
    meta = {
        "schema": 1,
        "kind": "i2i_fast gpu_validate",
        "dry_run": dry,
        "device": device,
        "device_source": gpu.get("source"),
        "gpu": gpu,
        "date": started[:10],
        "started_utc": started,
        "wall_s": wall,
        "budget_s": env.get("budget_s"),
        "commit": env.get("commit"),
        "dirty": env.get("dirty"),
        "steps": steps,
    }
    _write_json(os.path.join(work, "meta.json"), meta)

    title = "dry run, no GPU: nothing measured" if dry else (device or "no GPU visible")
    L = [
        f"# gpu_validate: {title}",
        "",
        f"- started {started}, wall {wall} s of a {env.get('budget_s')} s budget; commit "
        f"{env.get('commit') or 'unknown'}{' (working tree modified)' if env.get('dirty') else ''}",
        f"- GPU: {device or gpu.get('reason') or 'none'}"
        + (f", driver {gpu.get('driver')}, {gpu.get('memory_gib')} GiB, sm {gpu.get('compute_cap')}" if device else ""),
        f"- host: {env.get('host', '-')}; {env.get('python', '')}",
        "",
        "## Steps (priority order; each with its own timeout, unused time carried forward)",
        "",
        "| step | result | rc | s | timeout s | note |",
        "|---|---|---|---|---|---|",
    ]
    last = {s["step"]: s for s in steps}  # a step re-recorded (sanitizer refusal): the last line
    for name in list(STEPS) + [n for n in last if n not in STEPS]:
        s = last.get(name)
        if s is None:
            L.append(f"| {name} | not reached | - | - | - | |")
            continue
        res = f"skip: {s['note']}" if s["result"] == "skip" else s["result"]
        note = "" if s["result"] == "skip" else s["note"]
        L.append(f"| {name} | {res} | {s['rc']} | {s['seconds']} | {s['timeout_s']} | {note} |")

    L += ["", "## Headline", ""]
    res = _load(work, "results.json")
    paths = _load(work, "pad_conv_paths.json")
    rows = [r for r in (res or {}).get("results", []) if r.get("mode") == "fwdbwd"]
    if rows:
        L += [
            f"Single ops, forward+backward, median ms (copy bandwidth {_f(res.get('copy_bw_gbps'), '{:.0f}')} GB/s;"
            " compile baseline: " + ("measured" if any(r.get("compile_ms") for r in rows) else "not measured") + ")",
            "",
            "| op | shape | dtype | parity | ours ms | eager ms | x eager | % copy BW | launches ours/eager |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            la = f"{r['launches_ours']}/{r['launches_eager']}" if r.get("launches_ours") is not None else "-"
            L.append(
                f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | "
                f"{'PASS' if r.get('pass') else 'FAIL'} | {_f(r.get('time_ms'))} | {_f(r.get('eager_ms'))} | "
                f"{_f(r.get('speedup_vs_eager'), '{:.2f}x')} | {_f(r.get('pct_of_copy_bw'), '{:.0f}%')} | {la} |"
            )
    else:
        L.append("Single ops: not measured" + (" (dry run)" if dry else "") + ".")
    prow = [r for r in (paths or {}).get("results", []) if r.get("mode") == "fwdbwd"]
    if prow or rows:
        pc = [r for r in rows if r["op"] == "reflection_pad_conv2d"] + prow
        if pc:
            L += [
                "",
                "ReflectionPadConv2d paths, forward+backward, median ms (eager = ReflectionPad2d + cuDNN conv):",
                "",
                "| case | shape | dtype | path | ours ms | eager ms | x eager | launches ours/eager |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in pc:
                la = f"{r['launches_ours']}/{r['launches_eager']}" if r.get("launches_ours") is not None else "-"
                L.append(
                    f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r.get('path', '-')} | "
                    f"{_f(r.get('time_ms'))} | {_f(r.get('eager_ms'))} | {_f(r.get('speedup_vs_eager'), '{:.2f}x')} | {la} |"
                )
    not_run = (res or {}).get("not_run", []) + (paths or {}).get("not_run", [])
    if not_run:
        L.append(
            f"\nBench cases not run: {len(not_run)} (" + "; ".join(sorted({n["why"] for n in not_run}))[:300] + ")."
        )
    st = _load(work, "steps.json")
    srows = (st or {}).get("rows", [])
    if srows:
        L += [
            "",
            "Whole training steps, median ms/step:",
            "",
            "| family | variant | ms/step | x eager | peak MiB | first-step losses | config |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in srows:
            e = next((x for x in srows if x["family"] == r["family"] and x["variant"] == "eager" and x.get("ms")), None)
            if r.get("ms") is None:
                L.append(
                    f"| {r['family']} | {r['variant']} | not measured | - | - | {r.get('error') or r.get('why')} | |"
                )
                continue
            L.append(
                f"| {r['family']} | {r['variant']} | {r['ms']:.2f} | {_f(e and e['ms'] / r['ms'], '{:.2f}x')} | "
                f"{_f(r.get('peak_mib'), '{:.0f}')} | {'PASS' if r['parity'] else 'FAIL: ' + r['parity_detail'][:80]} | "
                f"{r.get('config', '')} |"
            )
    else:
        L.append("\nWhole training steps: not measured" + (" (dry run)" if dry else "") + ".")
    det = _load(work, "determinism.json")
    if det:
        L.append(
            f"\nDeterminism ({det.get('config', '')}, use_deterministic_algorithms(True), 2 runs x "
            f"{det.get('steps_per_run')} steps): "
            f"converted weights bitwise equal: {det.get('converted_bitwise_equal')}"
            + (
                f" ({det.get('tensors_differing')} of {det.get('tensors')} tensors differ, max |d| "
                f"{det.get('max_abs_diff')})"
                if det.get("tensors_differing")
                else ""
            )
            + (f"; error {det['converted_error']}" if det.get("converted_error") else "")
            + f"; eager: {det.get('eager')}."
        )
    else:
        L.append("\nDeterminism: not measured" + (" (dry run)" if dry else "") + ".")

    counts, bad = _junit(work)
    L += ["", "## CUDA tests (pytest -m cuda)", ""]
    if counts is None:
        L.append("not run" + (" (dry run)" if dry else "") + ".")
    else:
        L.append(", ".join(f"{k} {v}" for k, v in counts.items()))
        if bad:
            L += ["", "Failing:", ""] + [f"- `{t}`: {m}" for t, m in bad[:40]]
            if len(bad) > 40:
                L.append(f"- ... and {len(bad) - 40} more (junit.xml)")
    L += [
        "",
        "## Archive",
        "",
        "gpu_results.tar.gz: "
        + ", ".join(
            sorted(
                os.path.relpath(os.path.join(d, f), work)
                for d, _, fs in os.walk(work)
                for f in fs
                if not f.endswith(".tmp")
            )
            + (["summary.md"] if not os.path.exists(os.path.join(work, "summary.md")) else [])
        ),
        "",
        "Ingest: `python scripts/ingest_gpu_results.py gpu_results.tar.gz` (docs/gpu_validation.md).",
    ]
    with open(os.path.join(work, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    return 0


# --------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("gpuinfo")
    s = sub.add_parser("sanitize")
    s.add_argument("--tool", default="memcheck", choices=("memcheck", "racecheck", "synccheck"))
    s.add_argument("--device", default="cuda")
    for name in ("bench", "steps", "determinism"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--device", default="cuda")
        s.add_argument("--deadline", type=float, default=0.0, help="epoch seconds: start nothing new after")
        s.add_argument("--smoke", action="store_true", help="a few small cases (tests on CPU)")
        if name == "bench":
            s.add_argument("--compile", action="store_true", help="also time the torch.compile baseline")
    s = sub.add_parser("summarize")
    s.add_argument("work")
    a = p.parse_args(argv)
    if a.cmd == "gpuinfo":
        print(json.dumps(gpuinfo()))
        return 0
    if a.cmd == "summarize":
        return summarize(a.work)
    if a.cmd == "sanitize":
        return sanitize(a.tool, a.device)
    os.makedirs(a.out, exist_ok=True)
    if a.cmd == "bench":
        return run_bench(a.out, a.device, Deadline(a.deadline), a.smoke, a.compile)
    if a.cmd == "steps":
        return run_steps(a.out, a.device, Deadline(a.deadline), a.smoke)
    return run_determinism(a.out, a.device, a.smoke)


if __name__ == "__main__":
    sys.exit(main())
