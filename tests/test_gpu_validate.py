"""scripts/gpu_validate.sh as a dry run (no GPU: every GPU step "skip: no GPU", archive and
summary still made), the ingest command on that archive (refused, --check accepted) and on a
GPU-like archive (into a temporary checkout), and the GPU-only Python drivers of the script run
on CPU at tiny sizes, so that none of it rots between lent GPUs."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_STEPS = ("build", "tests", "memcheck", "racecheck", "synccheck", "bench", "steps", "determinism")


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_out")
    env = dict(os.environ, OUT=str(out), GPU_VALIDATE_DRY_RUN="1", PYTHON=sys.executable)
    t0 = time.time()
    p = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "gpu_validate.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    return out, p, time.time() - t0


def test_dry_run_makes_archive_and_summary(dry_run):
    out, p, wall = dry_run
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_results.tar.gz", "summary.md"]  # at most 8 files come back
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary
    for step in GPU_STEPS:
        assert f"| {step} | skip: no GPU |" in summary, step
    assert "| import | ok | 0 |" in summary
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        names = set(tar.getnames())
        meta = json.load(tar.extractfile("gpu_results/meta.json"))
    assert {
        "gpu_results/meta.json",
        "gpu_results/summary.md",
        "gpu_results/steps.tsv",
        "gpu_results/env.txt",
        "gpu_results/logs/import.log",
    } <= names
    assert meta["dry_run"] is True and meta["device"] is None
    assert [s["step"] for s in meta["steps"]] == ["build", "import"] + list(GPU_STEPS[1:])
    print(f"dry run wall time: {wall:.1f} s")


def test_ingest_refuses_dry_run_but_checks_it(dry_run, tmp_path):
    out = dry_run[0]
    ingest = os.path.join(ROOT, "scripts", "ingest_gpu_results.py")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    p = subprocess.run(
        [sys.executable, ingest, str(out / "gpu_results.tar.gz"), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "dry run" in p.stderr, p.stderr
    assert os.listdir(tmp_path / "benchmarks" / "results") == []
    p = subprocess.run(
        [sys.executable, ingest, str(out / "gpu_results.tar.gz"), "--check", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "archive OK (dry run" in p.stdout and "would be refused" in p.stdout
    assert os.listdir(tmp_path / "benchmarks" / "results") == []


def _gpu_archive(path, device="cuda", extra=None):
    """An archive shaped like a real GPU run's (hand-made: no GPU here)."""
    machine = {"device": device, "torch": "2.11.0+cu130", "gpu_name": "NVIDIA H200" if device == "cuda" else None}
    row = {
        "op": "instance_norm",
        "shape": [1, 256, 64, 64],
        "dtype": "fp32",
        "device": device,
        "mode": "fwdbwd",
        "impl": "ours",
        "time_ms": 0.05,
        "eager_ms": 0.2,
        "speedup_vs_eager": 4.0,
        "gbps": 900.0,
        "pass": True,
    }
    files = {
        "meta.json": json.dumps(
            {
                "schema": 1,
                "dry_run": False,
                "device": "NVIDIA H200",
                "date": "2026-12-01",
                "gpu": {"available": True, "name": "NVIDIA H200", "source": "nvidia-ml-py"},
                "commit": "0" * 40,
                "steps": [],
            }
        ),
        "summary.md": "# gpu_validate: NVIDIA H200\n",
        "steps.tsv": "step\tresult\trc\tseconds\ttimeout_s\tnote\nbuild\tok\t0\t90\t150\t\n",
        "results.json": json.dumps({"timestamp": "2026-12-01T00:00:00+00:00", "machine": machine, "results": [row]}),
        "logs/bench.log": "bench\n",
    }
    files.update(extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"gpu_results/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_ingest_gpu_archive_into_results_and_readme(tmp_path):
    ing = _module("ingest_gpu_results")
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "README.md").write_text("# x\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\ntail\n")
    rc, msgs = ing.ingest(str(_gpu_archive(tmp_path / "a.tar.gz")), str(root))
    dest = root / "benchmarks" / "results" / "nvidia-h200-2026-12-01"
    assert rc == 0 and (dest / "results.json").exists() and (dest / "logs" / "bench.log").exists(), msgs
    readme = (root / "README.md").read_text()
    if os.path.exists(os.path.join(ROOT, "scripts", "readme_results.py")):
        assert "NVIDIA H200" in readme and "old" not in readme and readme.endswith("tail\n"), msgs
    else:
        assert "not found" in msgs[-1]
    ing.ingest(str(tmp_path / "a.tar.gz"), str(root), readme=False)  # same device and date again
    assert (root / "benchmarks" / "results" / "nvidia-h200-2026-12-01-2" / "meta.json").exists()
    with pytest.raises(ing.Refused, match="not on a GPU"):  # a CPU results file in a "GPU" archive
        ing.ingest(str(_gpu_archive(tmp_path / "b.tar.gz", device="cpu")), str(root), readme=False)
    with pytest.raises(ing.Refused, match="unexpected member"):
        bad = tmp_path / "c.tar.gz"
        with tarfile.open(bad, "w:gz") as tar:
            info = tarfile.TarInfo("gpu_results/../../evil")
            tar.addfile(info, io.BytesIO(b""))
        ing.ingest(str(bad), str(root))
    assert sorted(os.listdir(root / "benchmarks" / "results")) == ["nvidia-h200-2026-12-01", "nvidia-h200-2026-12-01-2"]


def _tiny_cyclegan(device, small):
    """CycleGAN's family at a tenth of bench.steps' small CPU size (ResNet-6, ngf 4, 32x32):
    the real models, convert and training step, cheap enough for a shared 2-core machine."""
    from i2i_fast.bench import steps as bench_steps
    from i2i_fast.models import cyclegan

    fam = bench_steps.cyclegan_family(device, True)
    nets = [cyclegan.define_G(3, 3, 4, "resnet_6blocks", norm="instance") for _ in range(2)]
    nets += [cyclegan.define_D(3, 4, "basic", norm="instance") for _ in range(2)]
    data = tuple(bench_steps._img((1, 3, 32, 32), device, s) for s in (1, 2))
    return bench_steps.Family(nets, data, fam.step, fam.opts, "tiny CycleGAN (test)")


@pytest.fixture
def one_thread():
    """One intra-op thread: at these sizes two OpenMP threads on a loaded 2-core machine made
    the test ten times slower (spinning), and the numbers do not matter here."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gpu_drivers_on_cpu(tmp_path, monkeypatch, one_thread):
    """The bench / steps / determinism / sanitize drivers and the summary, at tiny CPU sizes."""
    from i2i_fast.bench import steps as bench_steps

    monkeypatch.setitem(bench_steps.FAMILIES, "cyclegan", _tiny_cyclegan)
    gv = _module("gpu_validate")
    out = str(tmp_path)
    assert gv.run_bench(out, "cpu", gv.Deadline(0), smoke=True, with_compile=False) == 0
    res = json.load(open(tmp_path / "results.json"))
    paths = json.load(open(tmp_path / "pad_conv_paths.json"))
    assert {r["op"] for r in res["results"]} == {"instance_norm", "loss_cyclegan_d"}
    assert all(r["pass"] and r["time_ms"] > 0 for r in res["results"] + paths["results"])
    assert {(r["op"], r["path"]) for r in paths["results"]} == {
        ("reflection_pad_conv2d[border]", "border"),
        ("in_relu_pad_conv[out_pad]", "out_pad"),
    }
    assert gv.run_steps(out, "cpu", gv.Deadline(0), smoke=True) == 0
    steps = json.load(open(tmp_path / "steps.json"))["rows"]
    assert [(r["family"], r["variant"], r["parity"]) for r in steps] == [
        ("cyclegan", "eager", True),
        ("cyclegan", "converted", True),
    ]
    assert "cyclegan  converted" in (tmp_path / "training_steps.txt").read_text()
    assert gv.run_determinism(out, "cpu", smoke=True) == 0
    assert json.load(open(tmp_path / "determinism.json"))["converted_bitwise_equal"] is True
    assert gv.sanitize("racecheck", "cpu") == 0
    # a bench past its deadline starts nothing and says so
    late = tmp_path / "late"
    late.mkdir()
    assert gv.run_bench(str(late), "cpu", gv.Deadline(time.time() - 1), smoke=True, with_compile=False) == 0
    assert {n["why"] for n in json.load(open(late / "results.json"))["not_run"]} == {"out of time"}
    # the summary of what the drivers wrote
    (tmp_path / "run.json").write_text(json.dumps({"dry_run": False, "start_epoch": time.time(), "budget_s": 480}))
    (tmp_path / "gpu.json").write_text(json.dumps({"available": False, "reason": "test"}))
    (tmp_path / "steps.tsv").write_text("step\tresult\trc\tseconds\ttimeout_s\tnote\nbench\tok\t0\t9\t60\t\n")
    assert gv.summarize(out) == 0
    summary = (tmp_path / "summary.md").read_text()
    for text in (
        "| bench | ok | 0 | 9 | 60 |",
        "| instance_norm | 1x8x16x16 | fp32 | PASS",
        "border",
        "| cyclegan | converted |",
        "converted weights bitwise equal: True",
        "| build | not reached |",
    ):
        assert text in summary, text


def test_time_limit_writes_what_was_measured():
    """The bench and steps loops: the outer time limit (a KeyboardInterrupt) ends the loop and
    the results so far are written, marked interrupted; a finished loop writes them unmarked;
    any other error propagates unwritten."""
    gv = _module("gpu_validate")
    calls = []
    with gv._TimeLimit("bench", calls.append) as limit:
        raise KeyboardInterrupt
    assert limit.interrupted and calls == [True]
    with gv._TimeLimit("steps", calls.append) as limit:
        pass
    assert not limit.interrupted and calls == [True, False]
    with pytest.raises(ValueError):
        with gv._TimeLimit("steps", calls.append):
            raise ValueError("boom")
    assert calls == [True, False]
