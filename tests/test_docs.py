"""Keeps README.md and docs/*.md honest.

- Every ```python block runs (CPU, small shapes), each in a fresh namespace. A block whose first
  line starts with ``# needs a GPU`` is shown as such to the reader and skipped when no CUDA
  device is visible (it runs where one is).
- Every repository path the pages name (in `code spans` and in markdown links) exists; a path
  with a glob (``kernels/*.cu``) must match at least one file. Every ``python -m module`` they
  name is importable.
- README.md's results block is what scripts/readme_results.py builds from benchmarks/results/.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
GPU_MARKER = "# needs a GPU"
# first path components that name something in this repository
TOP = ("csrc", "kernels", "i2i_fast", "tests", "benchmarks", "scripts", "docs", "examples")
TOP_FILES = ("setup.py", "pyproject.toml", "README.md")

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_HEADING = re.compile(r"^#{1,6} +(.+)$", re.M)


def _read(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def python_blocks(page, text=None):
    """[(id, code)]: id = 'page: heading' (plus ' #k' when a section has several blocks)."""
    text = _read(page) if text is None else text
    out, seen = [], {}
    for m in _FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        heads = _HEADING.findall(text[: m.start()])
        name = f"{page}: {heads[-1].strip() if heads else 'top'}"
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name} #{seen[name]}", m.group(2)))
    return out


def _prose(text):
    """The page without its fenced blocks (paths in code are checked by running the code)."""
    return _FENCE.sub("", text)


def named_paths(page, text=None):
    """Repository paths named in `code spans` (relative to the repo root) and in markdown link
    targets (relative to the page), as repo-root-relative paths."""
    text = _prose(_read(page) if text is None else text)
    paths = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for tok in span.split():
            tok = tok.strip("\"'(),;:")
            first = tok.split("/")[0]
            if (first in TOP and "/" in tok) or tok in TOP_FILES:
                paths.add(tok.split("::")[0])
    base = os.path.dirname(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        target = target.split("#")[0]
        paths.add(os.path.normpath(os.path.join(base, target)).replace(os.sep, "/"))
    return sorted(paths)


def _expand(p):
    """benchmarks/results/{a,b}/results.json -> the two paths (one brace group)."""
    m = re.search(r"\{([^{}]*)\}", p)
    return [p[: m.start()] + alt + p[m.end() :] for alt in m.group(1).split(",")] if m else [p]


def missing_paths(paths):
    bad = []
    for p in (q for path in paths for q in _expand(path)):
        if "<" in p:
            continue  # a placeholder written for the reader (e.g. benchmarks/results/<device>-<date>/)
        if any(c in p for c in "*?["):
            if not glob.glob(os.path.join(ROOT, p)):
                bad.append(p)
        elif not os.path.exists(os.path.join(ROOT, p.rstrip("/"))):
            bad.append(p)
    return bad


def named_modules(page, text=None):
    text = _read(page) if text is None else text
    return sorted(set(re.findall(r"python -m ([\w.]+)", text)) - {"pip", "pytest"})


BLOCKS = [b for page in PAGES for b in python_blocks(page)]


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_python_block_runs(code):
    if code.lstrip().startswith(GPU_MARKER) and not torch.cuda.is_available():
        pytest.skip("the block says it needs a GPU")
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})


@pytest.mark.parametrize("page", PAGES)
def test_named_paths_exist(page):
    bad = missing_paths(named_paths(page))
    assert not bad, f"{page} names paths that do not exist: {bad}"


@pytest.mark.parametrize("page", PAGES)
def test_named_modules_import(page):
    missing = [m for m in named_modules(page) if importlib.util.find_spec(m) is None]
    assert not missing, f"{page} names modules that do not exist: {missing}"


def test_readme_results_block_is_generated():
    spec = importlib.util.spec_from_file_location("readme_results", os.path.join(ROOT, "scripts", "readme_results.py"))
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)
    text = _read("README.md")
    assert text == rr.expected_readme(text), (
        "README.md's results block differs from benchmarks/results/: run python scripts/readme_results.py"
    )


def test_checks_can_fail():
    """The checkers above catch a wrong path, a wrong module and a failing block."""
    page = (
        "README.md: `i2i_fast/no_such_file.py`, [x](docs/no_such_page.md), `kernels/*.nope`, "
        "`benchmarks/{results,no_such_dir}/`, `python -m i2i_fast.no_such_module`\n\n"
        "```python\nraise RuntimeError\n```\n"
    )
    assert missing_paths(named_paths("README.md", page)) == [
        "benchmarks/no_such_dir/",
        "docs/no_such_page.md",
        "i2i_fast/no_such_file.py",
        "kernels/*.nope",
    ]
    assert named_modules("README.md", page) == ["i2i_fast.no_such_module"]
    ((_, code),) = python_blocks("README.md", page)
    with pytest.raises(RuntimeError):
        test_python_block_runs(code)


def test_every_page_is_covered():
    """README.md and every docs page have their blocks collected (a fence typo would hide one)."""
    assert "README.md" in PAGES
    for page in PAGES:
        text = _read(page)
        assert text.count("```python") == len(python_blocks(page)), f"{page}: a python block is not collected"
