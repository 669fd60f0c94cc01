"""Counting what a call dispatches: ops (OpCounter, any device), CUDA kernel launches
(count_launches), and the CUDA emulation that counts kernels/*.cu launches on a CPU."""

from __future__ import annotations

import os
import sys

import torch

from .cases import Case
from .timing import synchronize

# ops that are not work (no kernel): bare allocations; views, detach and profiler records are
# excluded by OpCounter too
NOT_WORK_OPS = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided")


class OpCounter:
    """Context manager counting the ops dispatched inside it with a TorchDispatchMode: every
    aten / i2i_fast op that does work (views, detach, bare allocations, profiler records
    excluded), on any device, with no profiler (so nothing reaches the terminal). i2i_fast's
    ops are called through the dispatcher meanwhile (common.FAST_EAGER off), so the mode sees
    each. ``phase(name)`` attributes the following ops to `name` (by_phase) until phase(None).
    On a GPU each counted op is one kernel launch or a few."""

    def __init__(self):
        self.total = 0
        self.by_phase = {}
        self.names = {}
        self._phase = None
        self._mode = None

    def phase(self, name):
        self._phase = name

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        from ..ops import common

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.name()
                if not (
                    func.is_view
                    or name == "aten::detach"
                    or name.startswith("profiler::")
                    or name.split("::", 1)[-1].split(".")[0] in NOT_WORK_OPS
                ):
                    counter.total += 1
                    counter.names[name] = counter.names.get(name, 0) + 1
                    if counter._phase is not None:
                        counter.by_phase[counter._phase] = counter.by_phase.get(counter._phase, 0) + 1
                return func(*args, **(kwargs or {}))

        self._fast, common.FAST_EAGER = common.FAST_EAGER, False
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        from ..ops import common

        try:
            return self._mode.__exit__(*exc)
        finally:
            common.FAST_EAGER = self._fast


class quiet_stderr:
    """Redirects file descriptor 2 to /dev/null inside the block: C++ messages (kineto's
    'gpuGetDeviceCount failed', USDT probes) bypass Python's sys.stderr."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.close(self._null)
        return False


def count_launches(case: "Case", impl: str, mode: str = "fwdbwd") -> dict:
    """Kernel launches of one call of (impl, mode): CUDA kernels and memsets on CUDA (torch.profiler,
    its C++ messages silenced); on CPU, the ops dispatched (OpCounter: views, allocations and
    autograd bookkeeping excluded) -- the CPU analogue of a launch."""
    if impl == "compile" and case.device.type != "cuda":
        # inductor's CPU kernels are not dispatcher ops: nothing comparable to count
        return {"launches": None, "launch_kind": "n/a (compiled CPU code)"}
    run, setup = case.fn(impl, mode)
    args = setup()
    run(*args)  # warm-up (compile, triton JIT)
    synchronize(case.device)
    args = setup()
    if case.device.type != "cuda":  # a dispatch-mode count: no profiler, no kineto messages
        with OpCounter() as c:
            run(*args)
        return {"launches": c.total, "launch_kind": "cpu dispatched ops"}
    from ..ops import common

    fast, common.FAST_EAGER = common.FAST_EAGER, False  # make our ops visible to the profiler
    try:
        with (
            quiet_stderr(),
            torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            ) as prof,
        ):
            run(*args)
            synchronize(case.device)
    finally:
        common.FAST_EAGER = fast
    n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"launches": n, "launch_kind": "cuda kernels+memsets"}


def emulation():
    """The CUDA emulation module of a source checkout, or raises RuntimeError saying why not."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")
    if not os.path.isdir(os.path.join(tests, "cuda_emu")):
        raise RuntimeError("needs a source checkout (tests/cuda_emu)")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import cuda_emu

    return cuda_emu
