"""Timing shared by the main job, the whole-step runs and the pytest-benchmark suite: the
device and selection defaults, measure() and its noise verdict, the machine-load report."""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

MODES = ("fwd", "bwd", "fwdbwd")
IMPLS = ("ours", "eager", "compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def full_shapes() -> bool:
    """I2I_FAST_BENCH_FULL=1: the CUDA shape list on CPU too."""
    return os.environ.get("I2I_FAST_BENCH_FULL", "0") == "1"


def quick_selection() -> bool:
    """I2I_FAST_BENCH_QUICK=1: the benchmark suite's quick selection (benchmarks/conftest.py),
    timed with the main job's --quick budgets."""
    return os.environ.get("I2I_FAST_BENCH_QUICK", "0") == "1"


def default_dtypes(device) -> list:
    return ["fp32", "bf16"] if torch.device(device).type == "cuda" else ["fp32"]


# ------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# When to distrust a timing: on a loaded machine a call can lose a scheduler quantum (~4 ms) to
# another process, which for a 0.1 ms op turns the median into noise. Wider than these, the
# samples are re-measured (NOISY_RETRIES times at most), then reported as noisy.
NOISY_REL_IQR = 0.5  # interquartile range / median: the middle half of the samples disagree
NOISY_MEDIAN_OVER_MIN = 3.0  # median / fastest sample: most calls lost time to something else
# Preemption: every time the scheduler switches one of this process's threads out for another
# process (involuntary context switch), the call waits up to a scheduler quantum. With all
# samples hit alike (a 2-thread op on 2 busy cores waits a quantum per parallel region) the
# spread stays narrow and only this shows it.
SCHED_QUANTUM_MS = 4.0  # a 250 Hz scheduler tick
PREEMPTED_COST = 0.25  # a call is disturbed when its switches x a quantum pass this share of the median
NOISY_PREEMPTED_CALLS = 0.25  # noisy when more than this share of the calls is disturbed
NOISY_RETRIES = 2
NOISY_MIN_SAMPLES = 4  # fewer samples have no meaningful quartiles: never called noisy


@dataclass
class Timing:
    times_ms: list
    switches: Optional[list] = None  # involuntary context switches during each call (CPU timings)

    @staticmethod
    def pool(timings) -> "Timing":
        """The samples of several measurements of one thing."""
        sw = [t.switches for t in timings]
        return Timing([x for t in timings for x in t.times_ms], None if None in sw else [n for s in sw for n in s])

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def iqr_ms(self) -> Optional[float]:
        """Interquartile range (None below 2 samples)."""
        if len(self.times_ms) < 2:
            return None
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4)
        return q3 - q1

    def noise(self) -> Optional[str]:
        """Why these samples cannot be trusted (None when they can)."""
        if len(self.times_ms) < NOISY_MIN_SAMPLES:
            return None
        med = self.median_ms
        why = []
        if self.iqr_ms > NOISY_REL_IQR * med:
            why.append(f"IQR {self.iqr_ms / med:.0%} of the median")
        if med > NOISY_MEDIAN_OVER_MIN * self.min_ms:
            why.append(f"median {med / max(self.min_ms, 1e-9):.1f}x the min")
        hit = self.disturbed_calls
        if hit is not None and hit > NOISY_PREEMPTED_CALLS * len(self.times_ms):
            why.append(f"{hit} of {len(self.times_ms)} calls preempted")
        return ", ".join(why) or None

    @property
    def disturbed_calls(self) -> Optional[int]:
        """Calls whose preemptions may have cost more than PREEMPTED_COST of the median (None
        when not recorded)."""
        if self.switches is None:
            return None
        return sum(n * SCHED_QUANTUM_MS > PREEMPTED_COST * self.median_ms for n in self.switches)

    def spread(self) -> dict:
        """min, IQR and preempted calls, for a results row."""
        return {"min_ms": self.min_ms, "iqr_ms": self.iqr_ms, "preempted_calls": self.disturbed_calls}


def involuntary_switches() -> Optional[int]:
    """Involuntary context switches of this process so far (all threads); None where
    getrusage is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def until_quiet(measure_once: Callable[[], dict]) -> tuple:
    """(timings, noise): measure_once() -> {name: Timing}, taken again while any of them is
    noisy, NOISY_RETRIES times at most; noise says why the last one still is (None: it is not)."""
    for attempt in range(NOISY_RETRIES + 1):
        timings = measure_once()
        noise = "; ".join(f"{k}: {why}" for k, t in timings.items() if (why := t.noise()))
        if not noise:
            return timings, None
    return timings, f"{noise} (after {attempt + 1} measurements)"


class MachineLoad:
    """How loaded the machine was: the load average when created and, on report(), the CPU
    time this process got against the wall time since (all threads; on a machine shared with
    other work it falls below the threads torch runs)."""

    def __init__(self):
        self.load = _loadavg()
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def report(self) -> dict:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        return {
            "loadavg_start": self.load,
            "loadavg_end": _loadavg(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "wall_s": round(wall, 1),
            "process_cpu_s": round(cpu, 1),
            "cpu_per_wall": round(cpu / wall, 2) if wall > 0 else None,
        }

    def header(self) -> str:
        la = self.load
        return (
            "machine load: "
            + (f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min)" if la else "load average unavailable")
            + f" on {os.cpu_count()} CPUs"
        )

    @staticmethod
    def summary(r: dict) -> str:
        la = r["loadavg_end"]
        return (
            f"machine load: this process got {r['process_cpu_s']:.0f} s CPU in {r['wall_s']:.0f} s wall "
            f"({r['cpu_per_wall']} CPU/wall, torch {r['torch_threads']} threads); load average now "
            + (f"{la[0]:.2f} on {r['cpu_count']} CPUs" if la else "unavailable")
        )


class _NoCudaRuntimeFilter(logging.Filter):
    """Drops torch.utils.cpp_extension's "No CUDA runtime is found" (logged when torch.compile
    imports it on a machine with a CUDA toolkit but no GPU): a benchmark on CPU says so itself."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_no_cuda_warning() -> None:
    """Installs _NoCudaRuntimeFilter when no GPU is visible (idempotent)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    if not torch.cuda.is_available() and not any(isinstance(f, _NoCudaRuntimeFilter) for f in log.filters):
        log.addFilter(_NoCudaRuntimeFilter())


def _loadavg() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every OS
        return None


def measure(
    run: Callable,
    device,
    *,
    setup: Optional[Callable[[], tuple]] = None,
    budget_s: float = 0.5,
    warmup: int = 3,
    min_reps: int = 5,
    max_reps: int = 500,
) -> Timing:
    """Times run(*setup()) after `warmup` calls; as many calls as fit in budget_s (within
    [min_reps, max_reps]), one sample per call; setup() is not timed. CUDA: an event pair
    around each call on the current stream; CPU: time.perf_counter."""
    device = torch.device(device)
    setup = setup or tuple
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        run(*setup())
    synchronize(device)
    per_call = (time.perf_counter() - t0) / max(warmup, 1)
    reps = int(min(max_reps, max(min_reps, budget_s / max(per_call, 1e-6))))
    if device.type == "cuda":
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in ev:
            args = setup()
            start.record()
            run(*args)
            end.record()
        torch.cuda.synchronize(device)
        return Timing([start.elapsed_time(end) for start, end in ev])
    times, switches = [], []
    for _ in range(reps):
        args = setup()
        sw = involuntary_switches()
        t = time.perf_counter()
        run(*args)
        times.append((time.perf_counter() - t) * 1e3)
        if sw is not None:
            switches.append(involuntary_switches() - sw)
    return Timing(times, switches if len(switches) == reps else None)


def pedantic_args(run: Callable, device, setup: Optional[Callable[[], tuple]] = None) -> dict:
    """target/setup for pytest-benchmark's pedantic(): a wall-clock timer needs the device
    synchronized after the target and after the (untimed) setup."""
    device = torch.device(device)
    setup = setup or tuple

    def target(*args):
        run(*args)
        synchronize(device)

    def pre():
        args = setup()
        synchronize(device)
        return args, {}

    return {"target": target, "setup": pre}


def warn_if_noisy(info: dict, what: str) -> None:
    """A warning (shown in pytest's summary) for a benchmark whose timings are noisy."""
    if info.get("noisy"):
        import warnings

        warnings.warn(f"noisy timing, {what}: {info['noisy']}", stacklevel=2)
