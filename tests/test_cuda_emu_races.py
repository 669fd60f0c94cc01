"""The CUDA emulation's GPU-semantics checks (tests/cuda_emu/check.h): shared-memory races,
device helpers unsafe to call twice, global happens-before between the blocks of a launch,
and barriers reached at different call sites or skipped by exited threads.

Each planted defect (tests/cuda_emu/selftest.cu) gives the right result under the fiber
schedule, so it passes with the checks off, and fails with them on, naming its source lines.
The checks run in every test of tests/test_cuda_emu.py (the plain variant is instrumented), so
every kernel in kernels/ runs clean under them.
"""

import contextlib
import os
import re

import cuda_emu
import pytest
import torch

SELFTEST = os.path.join(cuda_emu.HERE, "selftest.cu")
ORDERS = [("forward", 0), ("reverse", 0), ("shuffled", 1)]
KT = 256  # the self-tests' block size


def line_of(text: str, nth: int = 1) -> str:
    """`tests/cuda_emu/selftest.cu:<line>` of the nth line of selftest.cu containing `text`."""
    hits = [i + 1 for i, s in enumerate(open(SELFTEST).read().splitlines()) if text in s]
    return f"tests/cuda_emu/selftest.cu:{hits[nth - 1]}"


@pytest.fixture(scope="module")
def emu():
    mod = cuda_emu.load()
    assert mod.checked and mod.checks(), "the plain variant must be instrumented and checked"
    yield mod
    mod.set_checks(True)
    mod.set_order("forward", 0)


@contextlib.contextmanager
def checks(emu, on: bool):
    emu.set_checks(on)
    try:
        yield
    finally:
        emu.set_checks(True)


def run(what, x, arg=0):
    return torch.ops.i2i_emu_selftest.run(what, x, arg)


def test_shared_race_is_reported_in_every_order(emu):
    """`count += 1` by every thread between two barriers: the fibers never interleave it, so
    the count is right, but two threads read and write one __shared__ float in one epoch."""
    x = torch.zeros(1)
    with checks(emu, False):
        assert run("shared_rmw", x)[0].item() == KT
    site = re.escape(line_of("count += 1.0f;"))
    for mode, seed in ORDERS:
        emu.set_order(mode, seed)
        with pytest.raises(
            RuntimeError,
            match=rf"shared-memory race on __shared__ count .*at {site} .*at {site} "
            r"with no __syncthreads between them",
        ):
            run("shared_rmw", x)
    emu.set_order("forward", 0)


def test_helper_unsafe_to_call_twice_is_reported(emu):
    """A block-sum helper without its trailing barrier, called once: right result, but its last
    read of the buffer races with the first write of a second call."""
    x = torch.randn(1000)
    with checks(emu, False):
        torch.testing.assert_close(run("helper_reuse", x)[0], x.sum(), rtol=1e-5, atol=1e-4)
    late, early = re.escape(line_of("const float total = part[0];")), re.escape(line_of("part[threadIdx.x] = v;"))
    with pytest.raises(
        RuntimeError,
        match=rf"__shared__ part of a __device__ helper is not safe to call again in "
        rf"the block: thread \(\d+,0,0\) reads byte 0 at {late} after the "
        rf"helper's last __syncthreads and thread \(0,0,0\) writes it at {early}",
    ):
        run("helper_reuse", x)


@pytest.mark.parametrize(
    "fences,why",
    [(0, "the writer did not release it"), (1, "this thread did not acquire it")],
    ids=["no_release", "no_acquire"],
)
def test_last_block_reduction_without_fences_is_reported(emu, fences, why):
    """Last-block (ticket) reduction: the partials of the other blocks are read after the
    ticket. Without the release fence, or without the acquire fence right after the ticket,
    the reads are not ordered after the writes on a GPU; the blocks run one after another
    here, so the sum is right anyway."""
    x = torch.randn(5 * KT + 7)
    with checks(emu, False):
        torch.testing.assert_close(run("ticket_sum", x, fences)[0], x.sum(), rtol=1e-5, atol=1e-4)
    reader, writer = re.escape(line_of("s += partial[b];")), re.escape(line_of("partial[blockIdx.x] = t;"))
    with pytest.raises(
        RuntimeError,
        match=rf"global memory written by another block of this launch: thread "
        rf"\(\d+,0,0\) reads at {reader} what block \(\d+,0,0\) thread \(0,0,0\) "
        rf"wrote at {writer}, with no release/acquire between them: .*{why}",
    ):
        run("ticket_sum", x, fences)


def test_fenced_last_block_reduction_passes(emu):
    """Release fence before the ticket, acquire fence right after it in thread 0, then the
    barrier: every thread of the last block may read the partials, in every block order."""
    x = torch.randn(5 * KT + 7)
    for mode, seed in ORDERS:
        emu.set_order(mode, seed)
        torch.testing.assert_close(run("ticket_sum", x, 2)[0], x.sum(), rtol=1e-5, atol=1e-4)
    emu.set_order("forward", 0)


def test_barriers_at_different_call_sites_are_reported(emu):
    x = torch.zeros(1)
    with checks(emu, False):
        assert torch.equal(run("barrier_sites", x, 32)[:KT], torch.arange(KT - 1, -1, -1, dtype=torch.float32))
    k = _first_sync("barrier_sites_kernel")
    first, second = re.escape(line_of("__syncthreads();", k)), re.escape(line_of("__syncthreads();", k + 1))
    with pytest.raises(
        RuntimeError,
        match=rf"threads wait at different __syncthreads: thread \(0,0,0\) at {first}, "
        rf"thread \(32,0,0\) at {second}",
    ):
        run("barrier_sites", x, 32)


def test_thread_exiting_while_others_wait_at_a_barrier_is_reported(emu):
    x = torch.zeros(1)
    live = 128
    with checks(emu, False):
        assert torch.equal(run("exit_at_barrier", x, live)[:live], torch.arange(live - 1, -1, -1, dtype=torch.float32))
    barrier = re.escape(line_of("__syncthreads();", _first_sync("exit_at_barrier_kernel")))
    with pytest.raises(
        RuntimeError,
        match=rf"thread \({live},0,0\) exited while the other threads wait at the "
        rf"__syncthreads at {barrier}",
    ):
        run("exit_at_barrier", x, live)


def _first_sync(kernel: str) -> int:
    """n: `kernel`'s first barrier is the nth line of selftest.cu holding `__syncthreads();`."""
    src = open(SELFTEST).read()
    return src[: src.index(f"__global__ void {kernel}(")].count("__syncthreads();") + 1


def test_shared_memory_helpers_in_kernels_are_recognised():
    """The rewrite tells a helper's __shared__ buffer (checked for reuse) from a kernel's."""
    src = open(os.path.join(cuda_emu.KERNELS, "reduce.cuh")).read()
    assert 'check::SharedScope i2i_scope_raw(&raw, sizeof(raw), "raw", true)' in cuda_emu.rewrite(
        src, os.path.join(cuda_emu.KERNELS, "reduce.cuh")
    )
    losses = os.path.join(cuda_emu.KERNELS, "loss.cu")
    out = cuda_emu.rewrite(open(losses).read(), losses)
    assert '"warp_sums", true)' in out and '"last", false)' in out


def test_environment_switch_starts_the_checks_off(emu):
    import subprocess
    import sys

    env = dict(
        os.environ,
        I2I_EMU_CHECKS="0",
        PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, "-c", "import cuda_emu; print(cuda_emu.load().checks())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
