"""Compiler facts of the CUDA kernels (scripts/compiler_facts.py): the budgets hold and the committed
table docs/compiler_facts.md is current.

Compiles each kernels/*.cu once, device code only, for sm_80 and sm_90 (about 2 CPU-minutes on
CI's 2 cores, two files at a time); skips where nvcc is absent. Budgets: 0 spill bytes at sm_90,
128-bit global loads and stores on the vector paths, occupancy >= 50% at sm_90 or a reason in
OCCUPANCY_REASONS. The table's Triton section is checked by tests/test_triton_compile.py, which
compiles those kernels already. I2I_FAST_UPDATE_FACTS=1 rewrites the sections instead of
comparing them (python scripts/compiler_facts.py does both).
"""

import collections
import importlib.util
import os
import shutil
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("compiler_facts", os.path.join(ROOT, "scripts", "compiler_facts.py"))
cf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cf)


def check_facts_table(kind, section):
    """The committed section is the rebuilt one, where the same compiler made it (its first line)."""
    if os.environ.get("I2I_FAST_UPDATE_FACTS") == "1":
        cf.write_section(kind, section)
        return
    committed = cf.read_section(kind)
    assert committed is not None, f"docs/compiler_facts.md has no {kind} section: run python scripts/compiler_facts.py"
    if committed.splitlines()[0] != section.splitlines()[0]:
        warnings.warn(
            f"docs/compiler_facts.md's {kind} section comes from another compiler "
            f"({committed.splitlines()[0]!r}, here {section.splitlines()[0]!r}): not compared"
        )
        return
    assert committed == section, (
        f"docs/compiler_facts.md's {kind} section is stale: run python scripts/compiler_facts.py"
    )


@pytest.fixture(scope="module")
def facts():
    if cf.nvcc() is None or shutil.which("c++filt") is None:
        pytest.skip("needs nvcc and c++filt (CI has them)")
    return cf.cuda_facts()


def test_cuda_budgets(facts):
    assert cf.check_budgets(*facts) == []


def test_cuda_facts_table_is_current(facts):
    check_facts_table("cuda", cf.cuda_section(facts[0]))


def test_budget_check_catches_element_stores():
    """The PTX of the first vector store<VEC> (nvcc 13): one store per element, a different number
    per element type; no spills. check_budgets names it."""

    def row(t, vec, st):
        arch = dict(
            regs=32,
            smem=4096,
            stack=0,
            spill_st=0,
            spill_ld=0,
            occ=1.0,
            widths=collections.Counter({("ld", 128): 5, ("ld", 32): 14, **st}),
        )
        return {"name": f"fwd_apply_kernel<1, {vec}, {t}>", "base": "fwd_apply_kernel", "vec": vec, 80: arch, 90: arch}

    rows = [row("float", 4, {("st", 32): 6}), row("Half", 8, {("st", 32): 3, ("st", 16): 6})]
    bad = cf.check_budgets(rows, {"fwd_apply_kernel"})
    assert any("no 128-bit global store at sm_90" in b for b in bad)
    assert any("narrow st.global counts differ" in b for b in bad)
    fixed = [row("float", 4, {("st", 32): 2, ("st", 128): 1}), row("Half", 8, {("st", 32): 2, ("st", 128): 1})]
    assert cf.check_budgets(fixed, {"fwd_apply_kernel"}) == []


def test_triton_budget_check_catches_spills():
    """The Triton loss forward at 4 warps (sm_90, Triton 3.8): 20 B spilled in its fp32 two-term
    L1 instance. check_triton_budgets names it; float64 instances and the listed kernel pass."""

    def spec(kernel, spill, fp64=False, module="i2i_fast.triton.loss"):
        return dict(module=module, kernel=kernel, num_warps=4, regs=72, spill_st=spill, spill_ld=spill, fp64=fp64)

    spilled = [spec("loss_fwd_kernel_2", 10), spec("loss_fwd_kernel_1", 18, fp64=True)]
    assert cf.check_triton_budgets(spilled) == ["loss.loss_fwd_kernel_2: spills at sm_90 (num_warps 4, 72 registers)"]
    listed = spec("plane_norm_coefs_bwd_kernel", 156, module="i2i_fast.triton.plane_norm")
    assert cf.check_triton_budgets([spec("loss_fwd_kernel_2", 0), spilled[1], listed]) == []


def test_occupancy_model():
    assert cf.occupancy(90, regs=32, smem=4096, threads=256) == 1.0
    assert cf.occupancy(90, regs=40, smem=4096, threads=256) == 0.75  # 1280 regs/warp: 6 blocks
    assert cf.occupancy(90, regs=64, smem=0, threads=32) == 0.5  # 32 blocks of one warp
    assert cf.occupancy(80, regs=32, smem=48 * 1024, threads=256) == 0.375  # 164 KB / 49 KB: 3 blocks
