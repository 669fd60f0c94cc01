"""The CUDA emulation's poison, stream, graph and launch-resource checks (tests/cuda_emu/streams.cpp).

Each planted defect of tests/cuda_emu/selftest_checks.cu must fail under its check and pass,
wrongly, with the check turned off (a check that cannot fail proves nothing). Then the
project's kernels go through the checks a plain run does not cover: the loss ticket, the
split-plane norms and the pad convolution captured and replayed with new inputs against eager
calls, every entry point at huge shapes in grid-only mode (2^31 planes, 2^33 elements, no block
run, no memory touched), and the kernel parameter limit. The poison, the stream queueing and the
launch-bounds check are on by default, so tests/test_cuda_emu.py runs every kernel under them.
"""

import os
import re
import subprocess

import cuda_emu
import pytest
import torch
from cuda_emu.checks import grid_only, replay_matches_eager

import i2i_fast
from i2i_fast import functional as F

if not i2i_fast.backends()["cpu"][0]:
    pytest.skip("i2i_fast._C not built", allow_module_level=True)

H200_SMS = 132


@pytest.fixture(scope="module")
def emu():
    mod = cuda_emu.load()
    yield mod
    mod.set_sm_count(H200_SMS)


@pytest.fixture
def on(emu):
    with cuda_emu.EmulatedCuda():
        yield emu
    emu.set_poison(True), emu.set_streams(True), emu.set_launch_checks(True)
    emu.set_sm_count(H200_SMS)


def check(what, x, arg):
    return torch.ops.i2i_emu_selftest.checks(what, x, arg)


# ------------------------------------------------------------------ the planted defects
def test_checks_are_on_by_default(emu):
    assert emu.poison() and emu.streams() and emu.launch_checks()


SELFTEST = os.path.join(cuda_emu.HERE, "selftest_checks.cu")


def line_of(text: str) -> str:
    """`tests/cuda_emu/selftest_checks.cu:<line>` of the line of selftest_checks.cu containing `text`."""
    hits = [i + 1 for i, s in enumerate(open(SELFTEST).read().splitlines()) if text in s]
    assert len(hits) == 1, (text, hits)
    return re.escape(f"tests/cuda_emu/selftest_checks.cu:{hits[0]}")


@pytest.fixture
def checks_off(on):
    on.set_checks(False)
    try:
        yield on
    finally:
        on.set_checks(True)


def test_uninitialized_local_read(on):
    """s is set by block 0 only. A plain local gets gcc's 0xFE pattern in the other blocks, one
    exempt from the pattern and kept on the fiber stack reads the stack poison (0x7FFF7FFF, a
    NaN): the access checks report the global store of a value computed from either, with its
    line."""
    x = torch.randn(1000)
    pattern = line_of("if (i < n) y[i] = x[i] * s;  // the plain local")
    with pytest.raises(
        RuntimeError,
        match=rf"kernel uninit_local_kernel, block \(1,0,0\): uninitialized local: "
        rf"thread \(\d+,0,0\) stores at {pattern} a value computed from a local "
        r"read before it was written \(stored bytes 0x[0-9a-f]{8}, .* as fp32: "
        r"gcc's -ftrivial-auto-var-init pattern 0xFE\)",
    ):
        check("uninit_local", x, 1)
    stack = line_of("if (i < n) y[i] = x[i] * s;  // the stack-resident local")
    with pytest.raises(
        RuntimeError,
        match=rf"kernel uninit_stack_kernel, block \(1,0,0\): uninitialized local: "
        rf"thread \(\d+,0,0\) stores at {stack} a value computed from a local "
        r"read before it was written \(stored bytes 0x7fff7fff, nan as fp32: the "
        r"fiber-stack poison 0x7FFF\)",
    ):
        check("uninit_local", x, 0)
    # legitimate NaN (the inputs' and x86's), inf and large values are not taken for the poison
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e35, -3e35, 0.0, -1.0] * 40)
    special[0] = torch.tensor([-0x400000], dtype=torch.int32).view(torch.float32)[0]  # 0xFFC00000, x86's NaN
    out = check("freed_workspace", special, 1)[: special.numel()]
    assert torch.equal(out.view(torch.int32), special.view(torch.int32))


def test_uninitialized_local_read_with_the_check_off(checks_off):
    """With the access checks off, only the values show it: the pattern's huge floats, the
    stack poison's NaN; without the poison, block 0's stale value on the stack (right by luck)."""
    x = torch.randn(1000)
    want = 2 * x
    pattern = check("uninit_local", x, 1)[:1000]
    assert torch.equal(pattern[:256], want[:256]) and (pattern[256:] < -1e30).sum() + (pattern[256:] > 1e30).sum() > 500
    stack = check("uninit_local", x, 0)[:1000]
    assert torch.equal(stack[:256], want[:256]) and stack[256:].isnan().all()
    assert (stack[256:].view(torch.int32) == 0x7FFF7FFF).all(), "the stack poison's payload reaches the output"
    checks_off.set_poison(False)
    assert torch.equal(check("uninit_local", x, 0)[:1000], want), "the stale stack value is block 0's"


def test_unwritten_outputs_read_nan(on):
    """Tensors allocated while the emulation runs start as 0xFF bytes, those of
    at::detail::empty_cpu (csrc/loss.h's outputs) included: NaN in floats, -1 in integers."""
    x = torch.randn(8)
    assert check("empty_cpu", x, 0).isnan().all()
    assert (check("empty_cpu", x, 1) == -1).all()
    assert torch.empty(5).isnan().all() and torch.empty(3, dtype=torch.bfloat16).isnan().all()


def test_workspace_freed_on_another_stream(on):
    """A workspace written on the current stream, read by a side stream, freed without waiting
    for the side stream: its block goes back to the current stream's pool (poisoned in that
    stream's order), so the side stream's later read is a use after free, reported with its
    line by the access checks, and NaN without them. With the side stream synchronized before
    the free, right; with immediate launches (streams off), right by luck."""
    x = torch.randn(700)
    assert torch.equal(check("freed_workspace", x, 1)[:700], x)
    with pytest.raises(
        RuntimeError,
        match=r"use after free: thread \(\d+,0,0\) reads at "
        r"tests/cuda_emu/selftest_checks\.cu:\d+ memory freed",
    ):
        check("freed_workspace", x, 0)
    on.set_checks(False)
    try:
        bad = check("freed_workspace", x, 0)[:700]
    finally:
        on.set_checks(True)
    assert bad.isnan().all(), "the read of a workspace freed on another stream went unnoticed"
    on.set_streams(False)
    assert torch.equal(check("freed_workspace", x, 0)[:700], x)


def _ticket_replays(emu, fix, eager=False):
    torch.manual_seed(0)
    static = (torch.randn(3000),)
    new = [(torch.randn(3000),), (torch.randn(3000),)]
    close = lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-4)  # noqa: E731
    return replay_matches_eager(emu, lambda t: check("ticket_sum", t, fix), static, new, eager=eager, equal=close)


def test_graph_replay_that_skips_a_reset(on):
    """A last-block ticket zeroed by a host store at call time: a captured graph does not repeat
    it, so the second replay reads the ticket as the first replay left it. The access checks
    report that read with its line. Zeroed by cudaMemsetAsync (as kernels/loss.cu does), the
    replays equal eager calls."""
    assert _ticket_replays(on, 1) == []
    with pytest.raises(
        RuntimeError,
        match=rf"kernel ticket_sum_kernel, block \(\d+,0,0\): graph replay depends on "
        rf"state its previous replay left: thread \(0,0,0\) reads \(atomically\) "
        rf"at {line_of('if (atomicAdd(ticket, 1u)')} global memory that nothing "
        r"in this replay wrote first",
    ):
        _ticket_replays(on, 0)


def test_graph_replay_that_skips_a_reset_with_the_check_off(checks_off):
    """With the access checks off, only the value shows it: the second replay finds no last block
    and returns the old sum. Without the graph emulation (eager re-runs) the defect passes."""
    bad = _ticket_replays(checks_off, 0)
    assert bad and bad[0].startswith("replay 1"), bad
    assert _ticket_replays(checks_off, 0, eager=True) == []


def test_block_over_its_launch_bounds(on):
    x = torch.randn(4)
    with pytest.raises(
        RuntimeError,
        match=r"block of 512 threads exceeds the __launch_bounds__\(256\) of "
        r"bounded_kernel \(tests/cuda_emu/selftest_checks.cu:\d+\)",
    ):
        check("launch_bounds", x, 512)
    check("launch_bounds", x, 256)
    on.set_launch_checks(False)
    check("launch_bounds", x, 512)


def _compile_kernel(tmp_path, body: str):
    src = cuda_emu.insert_kernel_checks(body, os.path.join(cuda_emu.HERE, "param_probe.cu"))
    path = tmp_path / "probe.cpp"
    path.write_text(src)
    return subprocess.run(
        [
            os.environ.get("CXX", "c++"),
            "-std=c++20",
            "-fsyntax-only",
            "-include",
            os.path.join(cuda_emu.HERE, "emu.h"),
            str(path),
        ],
        capture_output=True,
        text=True,
    )


def test_kernel_parameters_over_the_limit_fail_to_build(tmp_path):
    """Every __global__ function gets a static_assert on its parameter buffer (emu.h,
    kMaxKernelParamBytes = 4096: the limit before CUDA 12.1, the build names no newer minimum)."""
    table = (
        "struct Table {{ char bytes[{}]; int n; }};\n__global__ void k(const Table t, float* out) {{ out[0] = t.n; }}\n"
    )
    ok = _compile_kernel(tmp_path, table.format(4000))
    assert ok.returncode == 0, ok.stderr
    bad = _compile_kernel(tmp_path, table.format(4096))
    assert bad.returncode != 0 and "the parameters of k exceed kMaxKernelParamBytes" in bad.stderr, bad.stderr[-2000:]


def test_every_kernel_is_checked():
    """The rewrite puts the parameter check in every __global__ function of kernels/, and the
    bounds check in every one declared with __launch_bounds__."""
    for path in cuda_emu.kernel_sources():
        src = open(path).read()
        out = cuda_emu.insert_kernel_checks(src, path)
        assert out.count("I2I_EMU_PARAMS_FIT(") == src.count("__global__"), path
        assert out.count("::i2i_emu::launch_bounds(") == src.count("__launch_bounds__("), path
        assert out.count("\n") == src.count("\n"), "the rewrite must keep the line numbers"


# ------------------------------------------------------------------ the project's kernels
def _eager_equal(on, fn, static, inputs):
    bad = replay_matches_eager(on, fn, static, inputs)
    assert bad == [], bad


def test_loss_ticket_under_capture_and_replay(on):
    """> 16384 elements: one block per chunk and the last-block ticket, zeroed by its
    cudaMemsetAsync in the call's workspace: every replay equals an eager call bitwise."""
    torch.manual_seed(1)
    shapes = [(2, 1, 100, 100), (1, 1, 30, 30)]
    static = tuple(torch.randn(s) for s in shapes)
    inputs = [tuple(torch.randn(s) for s in shapes) for _ in range(2)]
    with torch.no_grad():
        before = on.launch_counts().get("loss_fwd_kernel", 0)
        _eager_equal(on, lambda a, b: F.gan_loss([a, b], True, "vanilla"), static, inputs)
    assert on.launch_counts()["loss_fwd_kernel"] > before


def test_split_plane_norms_under_capture_and_replay(on):
    """Batch 1 on a small device: the planes split over several blocks, partials in a workspace
    freed at the entry point's end: instance norm's fused forward (raw op: per-chunk statistics,
    then merge and apply) and its gradient (4 SMs), and layer norm's statistics + merge + apply
    (1 SM)."""
    on.set_sm_count(4)
    torch.manual_seed(2)
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    g2, b2 = torch.rand(2) + 0.5, torch.randn(2)
    ops = torch.ops.i2i_fast
    shape = (1, 4, 96, 96)
    with torch.no_grad():
        before = on.launch_counts()
        _eager_equal(
            on,
            lambda x: ops.instance_norm_fwd(x, w, b, None, None, None, 1e-5, 0, 0.2, 0),
            (torch.randn(shape),),
            [(torch.randn(shape),) for _ in range(2)],
        )
        mean, var = torch.randn(1, 4), torch.rand(1, 4) + 0.5
        # the input gradient only: the weight and bias gradients are summed over the batch by
        # host ATen calls inside the entry point, which a capture does not record (the replay
        # shows them as NaN: they read the poisoned sums at capture time)
        _eager_equal(
            on,
            lambda g, x: ops.instance_norm_bwd(g, x, mean, var, w, b, 1e-5, 0, 0.2, True, 0)[0],
            (torch.randn(shape), torch.randn(shape)),
            [(torch.randn(shape), torch.randn(shape)) for _ in range(2)],
        )
        on.set_sm_count(1)
        _eager_equal(
            on,
            lambda x: F.layer_norm(x, g2, b2, activation="relu"),
            (torch.randn(1, 2, 65, 129),),
            [(torch.randn(1, 2, 65, 129),) for _ in range(2)],
        )
        after = on.launch_counts()
    for k in ("fwd_stats_kernel", "bwd_sums_kernel", "stats_merge_kernel"):
        assert after.get(k, 0) > before.get(k, 0), (k, after)


def test_pad_convolution_under_capture_and_replay(on):
    """ReflectionPadConv2d's pad path: the pad kernel, then the host convolution (replayed in its
    place among the captured launches)."""
    torch.manual_seed(3)
    m = i2i_fast.ReflectionPadConv2d(3, 5, 3, padding=2)
    with torch.no_grad():
        _eager_equal(on, m, (torch.randn(2, 3, 11, 13),), [(torch.randn(2, 3, 11, 13),) for _ in range(2)])
        _eager_equal(
            on,
            lambda x: F.reflection_pad2d(x, (3, 1, 2, 4)),
            (torch.randn(1, 2, 9, 7),),
            [(torch.randn(1, 2, 9, 7),) for _ in range(2)],
        )


# ------------------------------------------------------------------ launch configurations at huge shapes
GRID_LIMIT = "blocks exceed CUDA's gridDim.x limit of 2147483647"


@pytest.mark.parametrize("planes", [2**31, 2**32 + 1], ids=["2^31", "2^32+1"])
def test_grid_only_plane_counts_past_the_grid_limit(on, planes):
    """2^31 planes (one block each) cannot launch; 2^32 + 1 would wrap to a grid of 1 block in an
    unchecked cast and leave the other planes unwritten. Each entry point refuses with the op's
    name and the limit; no block runs and the tensors (16 GB) are never touched."""
    ops = torch.ops.i2i_fast
    with grid_only(on):
        x = torch.empty(1, planes, 1, 2, dtype=torch.float16)
        for name, call in [
            ("instance_norm", lambda: ops.instance_norm_fwd(x, None, None, None, None, None, 1e-5, 0, 0.2, 0)),
            ("norm plane statistics", lambda: ops.plane_norm_stats(x)),
            (
                "spectral_norm_scale",
                lambda: ops.spectral_norm_scale(
                    x.view(planes, 2), torch.empty(planes, dtype=torch.float16), torch.empty(2, dtype=torch.float16)
                ),
            ),
        ]:
            with pytest.raises(RuntimeError, match=f"i2i_fast {name}: {planes} {GRID_LIMIT}"):
                call()


def test_grid_only_2_pow_33_elements(on):
    """2^33 elements in few planes: every launch of the pad, instance norm and loss entry points
    is valid (grid-stride loops, split planes, one block per 4096-element chunk)."""
    n = 2**33
    with grid_only(on):
        x = torch.empty(1, 2, 2**16, 2**16, dtype=torch.float16)
        torch.ops.i2i_fast.reflection_pad2d_fwd(x, [1, 1, 1, 1])
        torch.ops.i2i_fast.instance_norm_fwd(x, None, None, None, None, None, 1e-5, 0, 0.2, 0)
        torch.ops.i2i_fast.loss_fwd([x.view(-1)], [], [1.0], [1.0], 0, 1, True)
        log = on.grid_log()
    grids = {k: g for k, g, _ in log}
    assert set(grids) >= {"pad_fwd_kernel", "fwd_apply_kernel", "loss_fwd_kernel"}, grids
    assert grids["loss_fwd_kernel"][0] == n // 4096
    assert all(g[0] >= 1 and g[1] <= 65535 and g[2] <= 65535 for g in grids.values()), grids
