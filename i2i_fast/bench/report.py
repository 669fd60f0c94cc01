"""The main job's tables, legends and chart."""

from __future__ import annotations

import math
import sys

from .timing import NOISY_MEDIAN_OVER_MIN, NOISY_PREEMPTED_CALLS, NOISY_REL_IQR, NOISY_RETRIES

COLUMNS = [
    ("op", "op"),
    ("shape", "shape"),
    ("dtype", "dtype"),
    ("mode", "mode"),
    ("pass", "pass"),
    ("time_ms", "ours ms"),
    ("min_ms", "ours min"),
    ("iqr_ms", "ours IQR"),
    ("eager_ms", "eager ms"),
    ("compile_ms", "compile ms"),
    ("speedup_vs_eager", "x eager"),
    ("speedup_vs_compile", "x compile"),
    ("gbps", "GB/s"),
    ("pct_of_copy_bw", "% copy BW"),
    ("peak_mb", "peak MiB"),
    ("eager_peak_mb", "eager peak MiB"),
]
_OPTIONAL_COLUMNS = ("pct_of_copy_bw", "peak_mb", "eager_peak_mb")  # shown when measured (CUDA)


def _cell(key, row):
    v = row.get(key)
    if key == "shape":
        return "x".join(map(str, v))
    if key == "pass":
        return "PASS" if v else "FAIL"
    if key == "compile_ms" and v is None and str(row.get("compile", "")).startswith("failed"):
        return "failed"
    if v is None:
        return "-"
    if isinstance(v, float):
        if key.startswith("speedup"):
            return noisy_ratio(v, row.get(key + "_min")) if row.get("noisy") else f"{v:.2f}x"
        return f"{v:.3f}" if key.endswith("_ms") else f"{v:.1f}"
    return str(v)


TIMING_LEGEND = (
    f"min = fastest sample, IQR = interquartile range of the samples (ms); a row whose samples "
    f"still spread wider than IQR {NOISY_REL_IQR:.0%} of the median or a median "
    f"{NOISY_MEDIAN_OVER_MIN:g}x the min, or with more than {NOISY_PREEMPTED_CALLS:.0%} of its calls "
    f"preempted, after {NOISY_RETRIES + 1} measurements is marked noisy, with the ratio of the medians "
    f"and of the minima."
)


def noisy_ratio(median_ratio, min_ratio) -> str:
    """A speedup whose timings are noisy: both the medians' and the minima's ratio, never one
    bare number."""
    both = f"{median_ratio:.2f}x median, {min_ratio:.2f}x min" if min_ratio else f"{median_ratio:.2f}x median"
    return f"noisy ({both})"


def noisy_notes(rows, label) -> str:
    """One line per noisy row: which timings were too wide and why."""
    return "\n".join(f"noisy: {label(r)}: {r['noisy']}" for r in rows if r.get("noisy"))


def format_table(rows, markdown=False) -> str:
    cols = [c for c in COLUMNS if c[0] not in _OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in rows)]
    cells = [[h for _, h in cols]] + [[_cell(k, r) for k, _ in cols] for r in rows]
    return _render(cells, markdown, left=4)


def _render(cells, markdown, left) -> str:
    """A table of string cells (header first): markdown, or aligned text with the first `left`
    columns left-aligned and the rest right-aligned."""
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join("---" for _ in cells[0]) + "|")
        return "\n".join(lines)
    w = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i]) for i, c in enumerate(r)) for r in cells)


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + msg)
    else:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _plot(rows, path, step_rows=()) -> bool:
    """speedup.png: op speedups (left) and whole-training-step speedups (right), each vs eager
    PyTorch and vs torch.compile (where measured)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - optional
        return False
    rows = [r for r in rows if r.get("speedup_vs_eager")]
    step_rows = [r for r in step_rows if r.get("speedup_vs_eager")]
    panels = [
        p
        for p in (
            (
                "ops (fused op vs the unfused original)",
                rows,
                lambda r: f"{r['op']} {_cell('shape', r)} {r['dtype']} {r['mode']}",
            ),
            ("whole training steps (converted vs original)", step_rows, lambda r: f"{r['family']} ({r['device']})"),
        )
        if p[1]
    ]
    if not panels:
        return False
    height = max(0.3 * max(len(p[1]) for p in panels) + 1.5, 3.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), height), squeeze=False)
    for ax, (title, rs, label) in zip(axes[0], panels):
        ys = range(len(rs))
        eager = [r["speedup_vs_eager"] for r in rs]
        comp = [r.get("speedup_vs_compile") or math.nan for r in rs]
        ops = [1 / r["model_ops_ratio"] if r.get("model_ops_ratio") else math.nan for r in rs]
        steps = rs is step_rows and any(not math.isnan(o) for o in ops)  # steps: fewer ops as a factor too
        off, wd = (0.28, 0.27) if steps else (0.2, 0.4)
        # a noisy row is drawn grey and hatched, labelled with the medians' and the minima's ratio
        noisy = [bool(r.get("noisy")) for r in rs]
        series = [(eager, -off, "vs eager")]
        if any(not math.isnan(c) for c in comp):
            series.append((comp, 0 if steps else off, "vs torch.compile"))
        else:
            ax.plot([], [], " ", label="torch.compile: not run")
        for k, (vals, shift, name) in enumerate(series):
            at = [y + shift for y in ys]
            ax.barh(at, [math.nan if n else v for v, n in zip(vals, noisy)], wd, label=name)
            ax.barh(
                at,
                [v if n else math.nan for v, n in zip(vals, noisy)],
                wd,
                color="lightgrey",
                hatch="//",
                edgecolor="grey",
                label="noisy timing (not a measured speedup)" if k == 0 and any(noisy) else None,
            )
        for y, r in zip(ys, rs):
            if r.get("noisy"):
                ax.annotate(
                    noisy_ratio(r["speedup_vs_eager"], r.get("speedup_vs_eager_min")) + " vs eager",
                    (r["speedup_vs_eager"], y - off),
                    fontsize=6,
                    va="center",
                    xytext=(3, 0),
                    textcoords="offset points",
                )
        if steps:
            ax.barh(
                [y + off for y in ys], ops, wd, color="tab:gray", label="ops dispatched (w/o optimizer): orig / conv"
            )
        vals = [v for v in eager + comp if not math.isnan(v) and v > 0]
        if vals and max(vals) / min(vals) > 20:
            ax.set_xscale("log")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(list(ys), [label(r) + (" [noisy]" if r.get("noisy") else "") for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speedup (x)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


STEP_COLUMNS = [
    ("family", "family"),
    ("eager_ms", "orig ms"),
    ("eager_iqr_ms", "orig IQR"),
    ("converted_ms", "conv ms"),
    ("converted_iqr_ms", "conv IQR"),
    ("speedup_vs_eager", "x orig"),
    ("compile_ms", "compile ms"),
    ("converted_compile_ms", "conv+comp ms"),
    ("speedup_vs_compile", "x comp"),
    ("eager_ops", "ops orig"),
    ("converted_ops", "ops conv"),
    ("ops_ratio", "ops x"),
    ("eager_model_ops", "model orig"),
    ("converted_model_ops", "model conv"),
    ("model_ops_ratio", "model x"),
    ("eager_optimizer_ops", "optim ops"),
    ("eager_saved_mib", "saved MiB orig"),
    ("converted_saved_mib", "saved MiB conv"),
    ("parity", "first step"),
]


def _step_cell(key, row):
    v = row.get(key)
    if key == "parity":
        return "PASS" if v else "FAIL"
    if v is None:
        return "-"
    if key.endswith("_ratio"):
        return f"{v:.2f}"
    if key.startswith("speedup") and row.get("noisy"):
        return noisy_ratio(v, row.get(key + "_min"))
    if key.startswith("speedup"):
        return f"{v:.2f}x"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def format_steps(rows, markdown=False) -> str:
    cols = [c for c in STEP_COLUMNS if c[0] != "launches"]
    if any(r.get("converted_launches") is not None for r in rows):
        cols.insert(-1, ("converted_launches", "our launches"))
    cells = [[h for _, h in cols]] + [[_step_cell(k, r) for k, _ in cols] for r in rows]
    return _render(cells, markdown, left=1)


def steps_legend(rows, compile_steps, device) -> str:
    lines = [
        "orig = the original modules and losses, conv = i2i_fast.convert(...) + the fused losses, same "
        "weights, data and noise; ms = median of interleaved steps; x orig = orig ms / conv ms;",
        "x comp = compiled original / compiled converted; first step = the first step's losses of every "
        "variant vs the original (rtol 1e-3);",
        "ops = ops one step dispatches (TorchDispatchMode, views and allocations excluded; at batch 1 on a "
        "GPU each is a launch), model = forward+backward+losses, optim = Adam's (per-tensor on CPU);",
        "saved MiB = peak of what autograd holds for backward during a step.",
    ]
    if any(r.get("converted_launches") is not None for r in rows):
        lines.append(
            "our launches = kernels/*.cu launches of one converted step, counted on CPU through the "
            "CUDA emulation (tests/cuda_emu)"
        )
    if not compile_steps:
        lines.append(
            "torch.compile columns: not run"
            + (
                " on CPU (minutes of compilation per family on a small CPU); --step-compile runs them"
                if device.type == "cpu"
                else ""
            )
        )
    lines.append("IQR = interquartile range of the interleaved steps (ms); noisy: see the single-op legend")
    notes = noisy_notes(rows, lambda r: f"{r['family']} steps")
    if notes:
        lines.append(notes)
    for r in rows:
        lines.append(
            f"  {r['family']}: {r['config']}"
            + ("" if r["compile"] in ("ok", "not run") else f"  [{r['compile']}]")
            + ("" if r["parity"] else f"  [{r['parity_detail']}]")
        )
    return "\n".join(lines)
