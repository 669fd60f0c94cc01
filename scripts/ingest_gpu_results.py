"""Ingests the archive of one scripts/gpu_validate.sh run (docs/gpu_validation.md).

    python scripts/ingest_gpu_results.py gpu_results.tar.gz           # GPU results -> benchmarks/results/
    python scripts/ingest_gpu_results.py gpu_results.tar.gz --check   # validate only (dry runs too)

Unpacks into benchmarks/results/<device>-<date>/ (the device as nvidia-ml-py names it, e.g.
"NVIDIA H200" -> nvidia-h200; the run's UTC date; -2, -3 ... when taken), after checking that
the results come from a GPU: meta.json says no dry run and names a GPU, and every results file
in it names a CUDA device with a GPU. Then regenerates README.md's results block
(regenerate_readme: scripts/readme_results.py, GPU first). A dry run's archive (or any
non-GPU one) is refused with exit code 2; --check validates any archive's layout and unpacks
it only into a temporary folder, writing nothing in the repository. --root DIR works on another
checkout (tests use a temporary one).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = "gpu_results"
REQUIRED = ("meta.json", "summary.md", "steps.tsv")
MAX_FILE = 32 << 20


class Refused(Exception):
    """The archive cannot go into benchmarks/results (exit code 2)."""


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def read_archive(path: str) -> dict:
    """{relative path: bytes} of the regular files under gpu_results/ (anything else, an
    absolute path, '..' or a file over 32 MiB is refused)."""
    files = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            name = m.name.rstrip("/")
            parts = name.split("/")
            if name.startswith("/") or ".." in parts or parts[0] != TOP:
                raise Refused(f"unexpected member {m.name!r} (everything must be under {TOP}/)")
            if m.isdir():
                continue
            if not m.isfile():
                raise Refused(f"{m.name}: not a regular file")
            if m.size > MAX_FILE:
                raise Refused(f"{m.name}: {m.size} bytes, over {MAX_FILE}")
            rel = "/".join(parts[1:])
            if rel:
                files[rel] = tar.extractfile(m).read()
    missing = [f for f in REQUIRED if f not in files]
    if missing:
        raise Refused(f"not a gpu_validate archive: missing {', '.join(missing)}")
    return files


def check_gpu(files: dict) -> dict:
    """meta.json of a real GPU run, else Refused saying why."""
    meta = json.loads(files["meta.json"])
    if meta.get("dry_run"):
        raise Refused("a dry run's archive (no GPU): nothing measured to ingest (use --check to validate it)")
    device = meta.get("device")
    if not device or not (meta.get("gpu") or {}).get("available"):
        raise Refused("meta.json names no GPU (gpu.json: {})".format((meta.get("gpu") or {}).get("reason")))
    for rel, data in files.items():
        if rel.endswith(".json") and os.path.basename(rel) in ("results.json", "pad_conv_paths.json"):
            m = json.loads(data).get("machine", {})
            if not str(m.get("device", "")).startswith("cuda") or not m.get("gpu_name"):
                raise Refused(f"{rel}: measured on {m.get('device')!r}, not on a GPU")
        if rel == "steps.json" and not str(json.loads(data).get("device", "")).startswith("cuda"):
            raise Refused(f"{rel}: not measured on a GPU")
    return meta


def regenerate_readme(root: str) -> str:
    """Hook: rewrites README.md's results block in `root` from root/benchmarks/results with
    scripts/readme_results.py (GPU results first). Returns what it did, in words."""
    gen = os.path.join(REPO, "scripts", "readme_results.py")
    readme = os.path.join(root, "README.md")
    if not os.path.exists(gen):
        return "README not regenerated: scripts/readme_results.py not found (hook: regenerate_readme)"
    if not os.path.exists(readme):
        return f"README not regenerated: {readme} not found"
    spec = importlib.util.spec_from_file_location("_readme_results", gen)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(readme) as f:
        text = f.read()
    new = mod.expected_readme(text, os.path.join(root, "benchmarks", "results"))
    if new == text:
        return "README results block already up to date"
    with open(readme, "w") as f:
        f.write(new)
    return "README results block regenerated (scripts/readme_results.py)"


def ingest(archive: str, root: str = REPO, check: bool = False, readme: bool = True) -> tuple:
    """(exit code, message lines)."""
    files = read_archive(archive)
    meta = json.loads(files["meta.json"])
    what = (
        f"{'dry run' if meta.get('dry_run') else meta.get('device') or 'no GPU'}, {meta.get('date')}, "
        f"commit {meta.get('commit')}, {len(files)} files"
    )
    if check:
        with tempfile.TemporaryDirectory() as tmp:  # unpack as ingest would, outside the repository
            for rel, data in files.items():
                os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                with open(os.path.join(tmp, rel), "wb") as f:
                    f.write(data)
            steps = [ln.split("\t")[0] for ln in io.StringIO(files["steps.tsv"].decode()).read().splitlines()[1:]]
        try:
            check_gpu(files)
            verdict = "ingestible: GPU results"
        except Refused as e:
            verdict = f"would be refused: {e}"
        return 0, [f"archive OK ({what}); steps: {', '.join(steps)}", verdict, "--check: nothing written"]
    meta = check_gpu(files)
    base = os.path.join(root, "benchmarks", "results", f"{slug(meta['device'])}-{meta['date']}")
    dest, n = base, 1
    while os.path.exists(dest):
        n += 1
        dest = f"{base}-{n}"
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        with open(os.path.join(tmp, rel), "wb") as f:
            f.write(data)
    os.replace(tmp, dest)
    msgs = [f"ingested {what} into {os.path.relpath(dest, root)}"]
    if readme:
        msgs.append(regenerate_readme(root))
    return 0, msgs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archive", help="gpu_results.tar.gz from scripts/gpu_validate.sh")
    p.add_argument("--check", action="store_true", help="validate only; never writes into the repository")
    p.add_argument("--root", default=REPO, help="the checkout to ingest into (default: this one)")
    p.add_argument("--no-readme", action="store_true", help="do not regenerate README.md's results block")
    a = p.parse_args(argv)
    try:
        rc, msgs = ingest(a.archive, os.path.abspath(a.root), a.check, not a.no_readme)
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2
    except (OSError, tarfile.TarError, ValueError, KeyError) as e:
        print(f"refused: unreadable archive: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print("\n".join(msgs))
    return rc


if __name__ == "__main__":
    sys.exit(main())
