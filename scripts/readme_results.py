"""Rebuilds the results block of README.md (between <!-- results:begin --> and
<!-- results:end -->) from the files committed under benchmarks/results/, so every number in the
README is one a committed results file holds.

    python scripts/readme_results.py           # rewrite the block in README.md
    python scripts/readme_results.py --check   # exit 1 if README.md's block is stale

Sources (a folder is named <device>-<YYYY-MM-DD>[-suffix]; the newest folder holding a file wins):
  training_steps.txt            python -m i2i_fast.bench.steps --interleave output: converted vs original step time
  training_steps_full_size.txt  the papers' sizes: "<family> median ms {...} <ratio>x" lines
  saved_activations.txt         python -m i2i_fast.bench.steps --saved output (the block run with --full)
  results.json                  python -m i2i_fast.bench: single ops (per op, the fwdbwd row of its first shape)
  gpu_model.md                  python -m i2i_fast.bench.gpu_model --steps all: the per-step memory-traffic MODEL
GPU results come first; a device with no committed file is said to be not measured; the model
comes last, labelled as one.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_GPU = "GPU: not measured (no GPU results file is committed yet)."
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

FAMILY_NAMES = {
    "ugatit": "U-GAT-IT light",
    "cyclegan": "CycleGAN ResNet-9 + PatchGAN",
    "munit": "MUNIT",
    "unit": "UNIT",
    "stargan": "StarGAN",
    "pix2pix": "pix2pix U-Net-256 (BatchNorm)",
}
OP_ORDER = (
    "instance_norm",
    "instance_norm_pad",
    "adalin",
    "iln",
    "layer_norm",
    "batch_norm",
    "reflection_pad2d",
    "reflection_pad_conv2d",
    "spectral_norm",
)
DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


def _folders(results_dir, name):
    """Folders under results_dir holding `name`, newest first (date in the folder name, then name)."""
    paths = glob.glob(os.path.join(results_dir, "*", name))
    key = lambda p: (
        (DATE.search(os.path.basename(os.path.dirname(p))) or DATE.search("0000-00-00")).group(1),
        os.path.basename(os.path.dirname(p)),
    )
    return sorted(paths, key=key, reverse=True)


def _rel(path):
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def _is_gpu(device: str) -> bool:
    return device.startswith("cuda") or device.startswith("gpu")


# ------------------------------------------------------------------ whole training steps
_STEP = re.compile(r"^(\w+)\s+(eager|converted)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x wall")
_HEAD = re.compile(r"^training steps on (\w+) \((\d+) threads\).*?(\d+) steps each")


def parse_steps(path):
    """{device, threads, steps, runs: [{family: converted-vs-eager ratio}]} of an --interleave log."""
    runs, info = [], {}
    for line in open(path):
        m = _HEAD.match(line)
        if m:
            info = {"device": m.group(1), "threads": int(m.group(2)), "steps": int(m.group(3))}
            runs.append({})
            continue
        m = _STEP.match(line)
        if m and runs and m.group(2) == "converted":
            runs[-1][m.group(1)] = float(m.group(6))
    return dict(info, runs=[r for r in runs if r])


_FULL = re.compile(r"^(\w+) median ms (\{.*\}) ([\d.]+)x")


def parse_full(path):
    """{family: (eager ms, converted ms, ratio)} of a papers'-size log."""
    out = {}
    for line in open(path):
        m = _FULL.match(line)
        if m:
            ms = ast.literal_eval(m.group(2))
            out[m.group(1)] = (ms["eager"], ms["converted"], float(m.group(3)))
    return out


_STEPS_COMMAND = re.compile(r"bench[._]steps")  # the step runner, before and after it joined i2i_fast.bench
_SAVED = re.compile(r"^(\w+)\s+eager\s+([\d.]+)\s+converted\s+([\d.]+)\s+ratio\s+([\d.]+)")


def parse_saved(path):
    """{family: (eager MiB, converted MiB, ratio)} of the --full block of a --saved log."""
    blocks, full = {}, None
    for line in open(path):
        if line.startswith("#") and _STEPS_COMMAND.search(line):
            full = "--full" in line
            continue
        m = _SAVED.match(line)
        if m and full is not None:
            blocks.setdefault(full, {})[m.group(1)] = tuple(float(v) for v in m.groups()[1:])
    return blocks.get(True, {})


def _s(ms):
    return f"{ms / 1000:.1f} s" if ms >= 10000 else f"{ms / 1000:.2f} s"


def _newest_per_family(paths, parse):
    """{family: value} from files newest first: each family's newest measurement; the files used."""
    out, used = {}, []
    for path in paths:
        new = {f: v for f, v in parse(path).items() if f not in out}
        if new:
            out.update(new)
            used.append(path)
    return out, used


def _files(paths):
    return ", ".join(f"`{_rel(p)}`" for p in paths)


def steps_section(results_dir):
    steps = _folders(results_dir, "training_steps.txt")
    full = _folders(results_dir, "training_steps_full_size.txt")
    saved = _folders(results_dir, "saved_activations.txt")
    if not (steps or full or saved):
        return []
    st = parse_steps(steps[0]) if steps else {"runs": []}
    fu, full_used = _newest_per_family(full, parse_full)
    sa, saved_used = _newest_per_family(saved, parse_saved)
    families = [f for f in FAMILY_NAMES if any(f in d for d in st["runs"] + [fu, sa])]
    device = st.get("device", "cpu")
    src = steps[0] if steps else (full or saved)[0]
    what = (
        [
            f"small = the small CPU configurations, {st['threads']} thread{'s' * (st['threads'] != 1)}, "
            f"{st['steps']} interleaved steps per variant, one value per run (`{_rel(steps[0])}`)"
        ]
        if steps
        else []
    )
    what += [f"papers' size: {_files(full_used)}"] if full_used else []
    what += (
        [
            f"saved MiB = the peak of what autograd holds for backward during one step at the papers' "
            f"size ({_files(saved_used)})"
        ]
        if saved_used
        else []
    )
    lines = [
        f"**Whole training steps, {'GPU' if _is_gpu(device) else 'CPU'}** ({_device_label(results_dir, src)}): "
        "speed-up of one step (G and D forward, backward, optimizer) of the converted model with the fused "
        "losses over the original, both eager. " + "; ".join(what) + ".",
        "",
        "| family | step speed-up, small | step speed-up, papers' size | saved MiB, original -> converted |",
        "|---|---|---|---|",
    ]
    for f in families:
        small = ", ".join(f"{r[f]:.2f}x" for r in st["runs"] if f in r) or "not measured"
        big = f"{fu[f][2]:.2f}x ({_s(fu[f][1])} vs {_s(fu[f][0])})" if f in fu else "not measured"
        mib = f"{sa[f][0]:.0f} -> {sa[f][1]:.0f} ({sa[f][2]:.2f}x)" if f in sa else "not measured"
        lines.append(f"| {FAMILY_NAMES[f]} | {small} | {big} | {mib} |")
    return lines


# ------------------------------------------------------------------ single ops
def _device_label(results_dir, path):
    """'AMD EPYC, 2 cores' for a folder named cpu-amd-epyc-2c-..., from any results.json of the
    same device prefix; else the prefix itself."""
    prefix = DATE.split(os.path.basename(os.path.dirname(path)))[0].rstrip("-")
    for p in glob.glob(os.path.join(results_dir, prefix + "-*", "results.json")):
        m = json.load(open(p))["machine"]
        if m.get("gpu_name"):
            return m["gpu_name"]
        return f"{m.get('cpu_model')}, {m.get('cpu_count')} cores"
    return prefix


def _shape(op, shape):
    if op == "reflection_pad2d":
        n, c, h, w, p = shape
        return f"{n}x{c}x{h}x{w}, pad {p}"
    if op == "reflection_pad_conv2d":
        n, c, h, w, o, k, s, p = shape
        return f"{n}x{c}x{h}x{w}, {k}x{k} conv to {o}, stride {s}, pad {p}"
    if op.startswith("loss_"):
        return f"batch {shape[0]}, {shape[1]}x{shape[1]} images"
    return "x".join(map(str, shape))


def _op_key(row):
    op = row["op"]
    return (OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER), op)


def ops_sections(results_dir):
    """One table per device (GPU first): per op, the fwdbwd row of its first shape in the newest file."""
    newest = {}  # (device label, op) -> (path, machine, rows)
    for path in _folders(results_dir, "results.json"):
        d = json.load(open(path))
        m = d.get("machine", {})
        gpu = bool(m.get("gpu_name"))
        label = m.get("gpu_name") or f"{m.get('cpu_model')}, {m.get('torch_num_threads')} threads"
        for r in d.get("results", []):
            if r.get("mode") != "fwdbwd" or "op" not in r or r.get("time_ms") is None:
                continue
            # one row per op: its first (headline) shape in the newest file that has it
            newest.setdefault((gpu, label, r["op"]), (path, m, [r]))
    sections = {}
    for (gpu, label, op), (path, m, rows) in newest.items():
        sections.setdefault((not gpu, label), []).append((path, m, rows))
    out = {}
    for (cpu, label), parts in sorted(sections.items()):
        rows = sorted((r for _, _, rs in parts for r in rs), key=_op_key)
        torchs = sorted({m.get("torch") for _, m, _ in parts})
        dirs = sorted({os.path.basename(os.path.dirname(p)) for p, _, _ in parts})
        src = (
            f"`benchmarks/results/{{{','.join(dirs)}}}/results.json`"
            if len(dirs) > 1
            else f"`benchmarks/results/{dirs[0]}/results.json`"
        )
        lines = [
            f"**Single ops, {'CPU' if cpu else 'GPU'}** ({label}, torch {', '.join(torchs)}): forward + "
            f"backward, median ms; x = speed-up of ours; GB/s = bytes that must move / our time ({src}).",
            "",
            "| op | shape | dtype | parity | ours ms | x eager | x compile | GB/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            x = lambda k: "-" if r.get(k) is None else f"{r[k]:.2f}x"
            gbps = "-" if r.get("gbps") is None else f"{r['gbps']:.1f}"
            lines.append(
                f"| {r['op']} | {_shape(r['op'], r['shape'])} | {r.get('dtype', '-')} | "
                f"{'PASS' if r.get('pass') else 'FAIL'} | {r['time_ms']:.3f} | "
                f"{x('speedup_vs_eager')} | {x('speedup_vs_compile')} | {gbps} |"
            )
        out[(cpu, label)] = lines
    return out


# ------------------------------------------------------------------ the block
_MODEL_STEPS = "## One training step"


def model_section(results_dir):
    """The step table of the newest gpu_model.md: a model computed on a CPU, never a measurement."""
    paths = _folders(results_dir, "gpu_model.md")
    if not paths:
        return []
    text = open(paths[0]).read()
    if _MODEL_STEPS not in text:
        return []
    table = [ln for ln in text.split(_MODEL_STEPS, 1)[1].splitlines() if ln.startswith("|")]
    return (
        [
            f"**H200 memory traffic of one training step, a MODEL, not measured** (`{_rel(paths[0])}`, "
            "`python -m i2i_fast.bench.gpu_model --steps all`): the norm, pad, activation and loss work of each family's "
            "small CPU configuration; our kernels/*.cu traced through the CUDA emulation with an LRU model of the "
            "50 MB L2, beside eager's ops and the bytes they touch. Convolutions and the optimizer are left out."
        ]
        + [""]
        + table
    )


def block(results_dir=os.path.join(ROOT, "benchmarks", "results")) -> str:
    ops = ops_sections(results_dir)
    steps = steps_section(results_dir)
    steps_gpu = bool(steps) and "GPU" in steps[0].split("(")[0]
    gpu_ops = [v for (cpu, _), v in ops.items() if not cpu]
    cpu_ops = [v for (cpu, _), v in ops.items() if cpu]
    parts = []
    if not gpu_ops and not steps_gpu:
        parts.append([NO_GPU])
    if steps_gpu:
        parts.append(steps)
    parts += gpu_ops
    if steps and not steps_gpu:
        parts.append(steps)
    parts += cpu_ops
    model = model_section(results_dir)
    if model:
        parts.append(model)
    text = "\n\n".join("\n".join(p) for p in parts)
    return text.replace(NO_GPU + "\n\n", NO_GPU + "\n")  # one paragraph with what follows


def split(text):
    head, rest = text.split(BEGIN, 1)
    inner, tail = rest.split(END, 1)
    return head, inner, tail


def expected_readme(readme_text, results_dir=os.path.join(ROOT, "benchmarks", "results")) -> str:
    head, _, tail = split(readme_text)
    return head + BEGIN + "\n" + block(results_dir) + "\n" + END + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's block is stale")
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    a = p.parse_args(argv)
    text = open(a.readme).read()
    new = expected_readme(text)
    if a.check:
        if new != text:
            print(f"{a.readme}: results block is stale; run python scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(a.readme, "w") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
