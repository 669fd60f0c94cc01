"""A MODEL of the ops' GPU memory traffic, computed on a CPU: kernels/*.cu run through the traced
CUDA emulation of a source checkout (tests/cuda_emu, docs/cuda_emulation.md), which records every
access of every emulated CUDA thread. Per op and direction: launches; the bytes that must move
(the main job's GB/s definition: inputs read once, outputs written once); the compulsory bytes
(each launch's distinct 32-byte sectors read and written); the bytes an LRU model of an H200's
50 MB L2 sends to DRAM, and their ratios to must-move; the worst global access site's coalescing
efficiency (bytes requested / sectors x 32 per warp request, sites with at least 1% of the op's
bytes); and a predicted H200 time, the sum over launches of max(DRAM bytes / 4.3 TB/s, 2.5 us).
Nothing here is measured on a GPU.

  python -m i2i_fast.bench.gpu_model   # norms and pad at (1,256,64,64), (8,256,64,64); the others at their shapes
  python -m i2i_fast.bench.gpu_model --ops instance_norm --shapes 2x8x32x32 --dtypes fp32
  python -m i2i_fast.bench.gpu_model --ops spectral_norm,loss_munit --other-shapes spectral_norm=512x4096
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import cases
from .counting import NOT_WORK_OPS, emulation
from .steps import FAMILIES, Runner

HBM_BYTES_PER_S = 4.3e12  # H200 HBM3e, peak (the model's bandwidth)
LAUNCH_FLOOR_S = 2.5e-6  # a launch's floor: launch latency and a wave's ramp
SITE_SHARE = 0.01  # sites below this share of an op's bytes do not set its coalescing
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# the ops with CUDA kernels, and the main job's GPU shapes for them
OPS = ("instance_norm", "instance_norm_pad", "batch_norm", "adalin", "iln", "layer_norm", "reflection_pad2d")
SHAPES = ((1, 256, 64, 64), (8, 256, 64, 64))
# the other ops with CUDA kernels, at shapes of their own (cases.OPS[op].shapes: a weight matrix
# for spectral norm, (batch, image size) of a training step for the losses), in one layout
OTHER_OPS = ("spectral_norm",) + cases.LOSS_OPS


def op_shape(op: str, shape: tuple) -> tuple:
    """The bench shape of `op` for an (N, C, H, W) activation: the pad ops take their pad last."""
    return tuple(shape) + (1,) if op == "reflection_pad2d" else tuple(shape)


def model(trace, must_move: int) -> dict:
    """The table row of one traced call."""
    b = trace.bytes()
    sites = trace.sites("global")
    total = sum(s["bytes"] for s in sites.values()) or 1
    eff = [
        min(1.0, s["bytes"] / (32 * s["sectors"]))
        for s in sites.values()
        if s["sectors"] and s["bytes"] >= SITE_SHARE * total
    ]
    t = sum(
        max(32 * (lc["dram_read_sectors"] + lc["dram_written_sectors"]) / HBM_BYTES_PER_S, LAUNCH_FLOOR_S)
        for lc in trace.launches
    )
    return {
        "launches": len(trace.launches),
        "kernels": [lc["kernel"] for lc in trace.launches],
        "must_move": must_move,
        "compulsory": b["compulsory"],
        "dram": b["dram"],
        "compulsory_ratio": b["compulsory"] / must_move,
        "dram_ratio": b["dram"] / must_move,
        "worst_coalescing": min(eff, default=1.0),
        "predicted_us": t * 1e6,
    }


def trace_op(op: str, shape: tuple, dtype: torch.dtype, channels_last: bool = False) -> dict:
    """{"fwd": row, "bwd": row} of one op call (ours, as the main job builds it)."""
    cuda_emu = emulation()
    spec = cases.OPS[op]
    shape = op_shape(op, shape)
    ours = spec.build(shape, dtype, "cpu")[0]
    inputs = spec.make_inputs(shape, dtype, "cpu", torch.Generator().manual_seed(0))
    if channels_last:
        inputs = tuple(
            t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)
            if t.dim() == 4
            else t
            for t in inputs
        )
    moved = spec.moved(shape, dtype)
    with cuda_emu.MemoryTrace() as fwd:
        out = ours(*inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    if channels_last and out.dim() == 4:
        grad = grad.contiguous(memory_format=torch.channels_last)
    with cuda_emu.MemoryTrace() as bwd:
        out.backward(grad)
    return {"fwd": model(fwd, moved["fwd"]), "bwd": model(bwd, moved["bwd"])}


# ---------------------------------------------------------------- whole training steps
# Ops that are not the norm/pad/activation/loss layers: convolutions (cuDNN's), matrix products,
# and the optimizer (counted apart). The rest of a step's ops are compared.
_NOT_MODELLED = (
    "convolution",
    "convolution_backward",
    "mm",
    "addmm",
    "bmm",
    "linear",
    "matmul",
    "_convolution",
    "cudnn_convolution",
    "mkldnn_convolution",
)


class _Touched:
    """TorchDispatchMode counting the ops of a step outside _NOT_MODELLED, the optimizer and
    i2i_fast's own ops and their emulated twins (those are traced), and the bytes each touches
    (tensor inputs and outputs, each storage once per op). ours=True: i2i_fast's ops counted too
    (made visible to the mode), for the ratio without the emulation (step_op_counts)."""

    def __init__(self, ours=False):
        self.ops, self.bytes, self.skip, self.ours = 0, 0, False, ours

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        from ..ops import common

        outer = self
        self._fast, common.FAST_EAGER = common.FAST_EAGER, common.FAST_EAGER and not self.ours

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func.name()
                base = name.split("::", 1)[-1].split(".")[0]
                if not (
                    outer.skip
                    or (func.namespace.startswith("i2i_fast") and not outer.ours)
                    or func.is_view
                    or base in _NOT_MODELLED
                    or base in NOT_WORK_OPS
                    or base == "detach"
                    or name.startswith("profiler::")
                ):
                    seen = {}
                    for t in tree_leaves((args, kwargs, out)):
                        if isinstance(t, torch.Tensor):
                            seen[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
                    outer.ops += 1
                    outer.bytes += sum(seen.values())
                return out

        self.mode = _Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        from ..ops import common

        common.FAST_EAGER = self._fast
        return self.mode.__exit__(*exc)


def _step_touched(r: Runner, ours=False, trace=None) -> _Touched:
    """One step of runner r under _Touched, its optimizers' steps left out; inside `trace`
    (a context manager, e.g. the emulation's MemoryTrace) when given."""
    r.run()  # warm-up (lazy state, first-step allocations)
    touched = _Touched(ours)
    hooks = [
        h
        for o in r.opts
        for h in (
            o.register_step_pre_hook(lambda *a: setattr(touched, "skip", True)),
            o.register_step_post_hook(lambda *a: setattr(touched, "skip", False)),
        )
    ]
    try:
        with touched:
            if trace is None:
                r.run()
            else:
                with trace:
                    r.run()
    finally:
        for h in hooks:
            h.remove()
    return touched


def step_op_counts(family: str) -> dict:
    """The step table's launch ratio without the emulation (a CPU proxy, for tests): the ops of
    the norm, pad, activation and loss work of one step, eager vs converted, each i2i_fast op
    counted once (the table counts its kernel launches instead)."""
    return {v: _step_touched(Runner(family, v, "cpu"), ours=True).ops for v in ("eager", "converted")}


def step_model(family: str) -> dict:
    """One training step of `family` (the small CPU configuration of bench.steps), eager original
    vs converted: launches / ops and bytes of the norm, pad, activation and loss work (the
    converted step's kernels/*.cu through the traced emulation and L2 model, plus its remaining
    ops counted like eager's)."""
    cuda_emu = emulation()
    out = {"family": family}
    for variant in ("eager", "converted"):
        trace = cuda_emu.MemoryTrace() if variant == "converted" else None
        touched = _step_touched(Runner(family, variant, "cpu"), trace=trace)
        out[variant] = {"ops": touched.ops, "bytes": touched.bytes}
        if variant == "converted":
            b = trace.bytes()
            out[variant].update(launches=len(trace.launches), dram=b["dram"], compulsory=b["compulsory"])
    e, c = out["eager"], out["converted"]
    out["launch_ratio"] = (c["launches"] + c["ops"]) / e["ops"]
    out["bytes_ratio"] = (c["dram"] + c["bytes"]) / e["bytes"]
    return out


STEP_COLUMNS = (
    "family",
    "eager ops",
    "eager MB",
    "our launches",
    "our other ops",
    "our DRAM MB (model)",
    "our other MB",
    "launches+ops / eager ops",
    "bytes / eager bytes",
)


def render_steps(rows) -> str:
    lines = ["| " + " | ".join(STEP_COLUMNS) + " |", "|" + "---|" * len(STEP_COLUMNS)]
    for r in rows:
        e, c = r["eager"], r["converted"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["family"],
                    str(e["ops"]),
                    f"{e['bytes'] / 1e6:.1f}",
                    str(c["launches"]),
                    str(c["ops"]),
                    f"{c['dram'] / 1e6:.1f}",
                    f"{c['bytes'] / 1e6:.1f}",
                    f"{r['launch_ratio']:.3f}",  # 3 places: the targets are 0.5 and 0.6
                    f"{r['bytes_ratio']:.3f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


COLUMNS = (
    "op",
    "shape",
    "dtype",
    "layout",
    "dir",
    "launches",
    "must-move MB",
    "compulsory/must",
    "DRAM/must",
    "worst coalescing",
    "predicted us",
)


def table(ops=OPS, shapes=SHAPES, dtypes=("fp32", "bf16"), layouts=(False, True), log=print, other_shapes=None) -> list:
    """Rows of ops x shapes x dtypes x layouts; an op of OTHER_OPS at other_shapes[op] (default:
    its benchmark shapes) in its one layout."""
    rows = []
    for op in ops:
        other = op in OTHER_OPS
        for shape in (other_shapes or {}).get(op, cases.OPS[op].shapes) if other else shapes:
            for dt in dtypes:
                for cl in (False,) if other else layouts:
                    t0 = time.perf_counter()
                    res = trace_op(op, shape, DTYPES[dt], cl)
                    for d, r in res.items():
                        rows.append(
                            {
                                "op": op,
                                "shape": "x".join(map(str, shape)),
                                "dtype": dt,
                                "layout": "-" if other else "channels_last" if cl else "nchw",
                                "dir": d,
                                **r,
                            }
                        )
                        log(render([rows[-1]], header=False) + f"   ({time.perf_counter() - t0:.0f} s)")
    return rows


def render(rows, header=True) -> str:
    def cells(r):
        return [
            r["op"],
            r["shape"],
            r["dtype"],
            r["layout"],
            r["dir"],
            str(r["launches"]),
            f"{r['must_move'] / 1e6:.2f}",
            f"{r['compulsory_ratio']:.3f}",
            f"{r['dram_ratio']:.3f}",
            f"{100 * r['worst_coalescing']:.0f}%",
            f"{r['predicted_us']:.1f}",
        ]

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)] if header else []
    return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in rows])


def _other_shapes(arg):
    out = {}
    for item in (arg or "").split(","):
        if item:
            op, shape = item.split("=")
            out.setdefault(op, []).append(tuple(int(v) for v in shape.split("x")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m i2i_fast.bench.gpu_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(OPS + OTHER_OPS))
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES), help="NxCxHxW,...")
    p.add_argument(
        "--other-shapes",
        default=None,
        help="op=AxB,...: shapes of the ops of OTHER_OPS (spectral norm: rows x columns; a loss: batch x "
        "image size), the others at their benchmark shapes",
    )
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument(
        "--steps",
        default="",
        help="also model one converted training step of these families "
        "(comma list of cyclegan,ugatit,stargan,pix2pix,munit,unit, or all)",
    )
    p.add_argument("--out", default=None, help="also write the tables (markdown) to this file")
    a = p.parse_args(argv)
    try:
        emulation().load(trace=True)
    except Exception as e:  # noqa: BLE001 - say why and stop
        print(f"gpu_model: the traced CUDA emulation is unavailable: {e}", file=sys.stderr)
        return 2
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    print(
        "model, not measured: kernels/*.cu traced on a CPU through tests/cuda_emu; DRAM = an LRU model of "
        "the H200's 50 MB L2; time = sum over launches of max(DRAM bytes / 4.3 TB/s, 2.5 us)"
    )
    print(render([], header=True))
    rows = (
        table(
            a.ops.split(","),
            shapes,
            a.dtypes.split(","),
            [lt == "channels_last" for lt in a.layouts.split(",")],
            other_shapes=_other_shapes(a.other_shapes),
        )
        if a.ops
        else []
    )
    text = (
        "## Memory traffic per op: model, not measured\n\n" + render(rows) + "\n\n"
        f"must-move: inputs read once, outputs written once (the main job's GB/s). compulsory: each launch's "
        f"distinct 32-byte sectors. DRAM: an LRU model of an H200's 50 MB L2 over the launches of the call. "
        f"coalescing: bytes requested / (32 x sectors) per warp request, worst site with >= "
        f"{100 * SITE_SHARE:.0f}% of the bytes. predicted: sum over launches of max(DRAM / 4.3 TB/s, 2.5 us).\n"
    )
    if a.steps:
        steps = []
        for fam in list(FAMILIES) if a.steps == "all" else a.steps.split(","):
            steps.append(step_model(fam))
            print(render_steps(steps[-1:]).splitlines()[-1], flush=True)
        text += (
            "\n## One training step, norm/pad/activation/loss work: model, not measured\n\n"
            + render_steps(steps)
            + "\n\nThe small CPU configuration of each family (bench.steps), one step, the optimizer and the "
            "convolutions and matrix products left out. eager: the original step's remaining ops and the bytes "
            "each touches (inputs and outputs). ours: the converted step's kernels/*.cu launches, their DRAM "
            "bytes from the L2 model, and its remaining ops counted as eager's.\n"
        )
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
