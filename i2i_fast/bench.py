"""The main job: ``python -m i2i_fast.bench`` (console script ``i2i-fast-bench``).

For every op in the registry (OPS) and every shape/dtype it first checks parity of the fused
op against eager PyTorch on the same inputs (forward output and input gradients), then times
forward, backward and forward+backward of ours / eager / torch.compile(eager), and prints the
table. It ends with whole training steps of every family of i2i_fast.bench_steps (run_steps:
original vs converted ms/step, torch.compile of both on CUDA or with --step-compile, the
first-step parity, the ops one step dispatches with the optimizer's apart, the saved-activation
MiB; the small CPU configurations on CPU, the papers' sizes on CUDA) and writes results.json,
results.md and speedup.png (op and step speedups; needs matplotlib) into --out, named last.
Launches are counted with a TorchDispatchMode on CPU (OpCounter) and torch.profiler on CUDA
(its C++ messages silenced), so nothing but the tables reaches the terminal.

The timing helpers (measure, copy_bandwidth_gbps, machine_info, Case, summarize) are shared
with the pytest-benchmark suite in benchmarks/, so both report the same numbers.
Timing: CUDA events around each call after warm-up, inputs rotated over a footprint larger
than L2; CPU: time.perf_counter after warm-up. Eager, compile and ours are timed in alternating
rounds (samples pooled per implementation). The statistic is always the median.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from . import _backend

MODES = ("fwd", "bwd", "fwdbwd")
IMPLS = ("ours", "eager", "compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Parity of ours vs eager PyTorch on the same inputs: (atol, rtol). rtol for bf16/fp16 is one
# unit in the last place (two independently rounded results may differ by one ulp).
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 2 ** -6), torch.float16: (1e-2, 2 ** -9)}


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
NOISY_REL_IQR = 0.5          # interquartile range / median: the middle half of the samples disagree
NOISY_MEDIAN_OVER_MIN = 3.0  # median / fastest sample: most calls lost time to something else
# Preemption: every time the scheduler switches one of this process's threads out for another
# process (involuntary context switch), the call waits up to a scheduler quantum. With all
# samples hit alike (a 2-thread op on 2 busy cores waits a quantum per parallel region) the
# spread stays narrow and only this shows it.
SCHED_QUANTUM_MS = 4.0        # a 250 Hz scheduler tick
PREEMPTED_COST = 0.25         # a call is disturbed when its switches x a quantum pass this share of the median
NOISY_PREEMPTED_CALLS = 0.25  # noisy when more than this share of the calls is disturbed
NOISY_RETRIES = 2
NOISY_MIN_SAMPLES = 4        # fewer samples have no meaningful quartiles: never called noisy


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
        return {"loadavg_start": self.load, "loadavg_end": _loadavg(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "wall_s": round(wall, 1), "process_cpu_s": round(cpu, 1),
                "cpu_per_wall": round(cpu / wall, 2) if wall > 0 else None}

    def header(self) -> str:
        la = self.load
        return ("machine load: " + (f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min)" if la
                                    else "load average unavailable") + f" on {os.cpu_count()} CPUs")

    @staticmethod
    def summary(r: dict) -> str:
        la = r["loadavg_end"]
        return (f"machine load: this process got {r['process_cpu_s']:.0f} s CPU in {r['wall_s']:.0f} s wall "
                f"({r['cpu_per_wall']} CPU/wall, torch {r['torch_threads']} threads); load average now "
                + (f"{la[0]:.2f} on {r['cpu_count']} CPUs" if la else "unavailable"))


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


def measure(run: Callable, device, *, setup: Optional[Callable[[], tuple]] = None,
            budget_s: float = 0.5, warmup: int = 3, min_reps: int = 5, max_reps: int = 500) -> Timing:
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
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
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


_COPY_BW: dict = {}


def warn_if_noisy(info: dict, what: str) -> None:
    """A warning (shown in pytest's summary) for a benchmark whose timings are noisy."""
    if info.get("noisy"):
        import warnings
        warnings.warn(f"noisy timing, {what}: {info['noisy']}", stacklevel=2)


def pytest_benchmark_case(benchmark, case, mode: str, impl: str) -> None:
    """The body every benchmarks/ suite shares: parity first (a failure fails the benchmark),
    skip a failed torch.compile with its reason, extra_info from summarize(), then
    pytest-benchmark's pedantic rounds of the same callable."""
    import pytest
    device = str(case.device)
    benchmark.group = f"{case.key} {device} {mode}"
    ok, detail = case.parity()
    assert ok, f"parity ours vs eager failed for {case.key} on {device}: {detail}"
    benchmark.extra_info["parity"] = detail
    if impl == "compile" and case.compiled() is None:
        benchmark.extra_info["compile"] = f"failed: {case.compile_error}"
        pytest.skip(f"torch.compile failed: {case.compile_error}")
    benchmark.extra_info.update(summarize(case, mode, impl))
    warn_if_noisy(benchmark.extra_info, f"{case.key} {device} {mode} {impl}")
    cuda = case.device.type == "cuda"
    median_s = case.timing(impl, mode).median_ms * 1e-3
    rounds = max(5, min(200 if cuda else 30, int((0.3 if cuda else 0.5) / max(median_s, 1e-6))))
    run, setup = case.fn(impl, mode)
    benchmark.pedantic(**pedantic_args(run, case.device, setup), rounds=rounds,
                       warmup_rounds=10 if cuda else 2, iterations=1)


def copy_bandwidth_gbps(device) -> Optional[float]:
    """Device-to-device copy bandwidth (read + write bytes / time) of a 256 MiB tensor, measured
    once per process; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    key = str(device)
    if key not in _COPY_BW:
        n = (256 << 20) // 4
        src = torch.ones(n, device=device)
        dst = torch.empty_like(src)
        t = measure(lambda: dst.copy_(src), device, budget_s=0.3, warmup=5, min_reps=20)
        _COPY_BW[key] = 2 * src.nbytes / (t.median_ms * 1e-3) / 1e9
        del src, dst
    return _COPY_BW[key]


# ------------------------------------------------------------------------- machine info
def _triton_version() -> Optional[str]:
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001 - optional
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml_info(index: int) -> dict:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            h = None
            props = torch.cuda.get_device_properties(index)
            if hasattr(props, "pci_bus_id"):  # CUDA_VISIBLE_DEVICES may renumber devices
                try:
                    h = pynvml.nvmlDeviceGetHandleByPciBusId(
                        f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0")
                except Exception:  # noqa: BLE001
                    h = None
            if h is None:
                h = pynvml.nvmlDeviceGetHandleByIndex(index)

            def s(v):
                return v.decode() if isinstance(v, bytes) else v
            return {
                "gpu_name": s(pynvml.nvmlDeviceGetName(h)),
                "driver": s(pynvml.nvmlSystemGetDriverVersion()),
                "gpu_memory_total_gib": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2 ** 30, 2),
                "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "sm_clock_now_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - nvidia-ml-py is optional
        return {"nvml": f"unavailable: {type(e).__name__}: {e}"}


def machine_info(device=None) -> dict:
    """Device, library versions and kernel backends: JSON-serializable."""
    device = torch.device(device or default_device())
    info = {"device": str(device), "torch": torch.__version__, "triton": _triton_version(),
            "python": platform.python_version(),
            "i2i_fast_backends": {k: v[0] for k, v in _backend.backends().items()}}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(index)
        info.update({"gpu_name": p.name, "gpu_sm_count": p.multi_processor_count,
                     "gpu_capability": f"{p.major}.{p.minor}", "gpu_memory_total_gib":
                     round(p.total_memory / 2 ** 30, 2), "cuda": torch.version.cuda})
        info.update(_nvml_info(index))
    else:
        info.update({"cpu_model": _cpu_model(), "torch_num_threads": torch.get_num_threads(),
                     "cpu_count": os.cpu_count()})
    return info


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Op:
    """One benchmarked op. build(shape, dtype, device) -> (ours, eager baseline) modules with
    the same parameters; make_inputs(shape, dtype, device, generator) -> tuple of input tensors
    (those with requires_grad get gradients checked and timed); moved(shape, dtype) -> bytes that
    must move per mode; shapes (CUDA) and cpu_shapes as in docs/benchmarks.md."""
    name: str
    build: Callable
    make_inputs: Callable
    moved: Callable
    shapes: tuple
    cpu_shapes: tuple


def _in_build(shape, dtype, device):
    from .nn import InstanceNorm2d
    c = shape[1]
    ours = InstanceNorm2d(c, activation="relu")
    eager = nn.Sequential(nn.InstanceNorm2d(c), nn.ReLU())
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _in_pad_build(shape, dtype, device):
    from .nn import InstanceNorm2d
    c = shape[1]
    ours = InstanceNorm2d(c, activation="relu", out_pad=1)   # what convert() makes of CycleGAN's
    eager = nn.Sequential(nn.InstanceNorm2d(c), nn.ReLU(), nn.ReflectionPad2d(1))  # ResnetBlock
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _in_pad_moved(shape, dtype):
    # fwd: read x, write the padded y; bwd: read x and the padded grad, write grad_x
    n, c, h, w = shape
    es = torch.empty((), dtype=dtype).element_size()
    nb, pb = n * c * h * w * es, n * c * (h + 2) * (w + 2) * es
    return {"fwd": nb + pb, "bwd": 2 * nb + pb, "fwdbwd": 3 * nb + 2 * pb}


def _bn_build(shape, dtype, device):
    from .nn import BatchNorm2d
    c = shape[1]
    ours = BatchNorm2d(c, activation="leaky_relu")      # pix2pix: BatchNorm2d -> LeakyReLU(0.2)
    eager = nn.Sequential(nn.BatchNorm2d(c), nn.LeakyReLU(0.2))
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _kink_safe_inputs(dims):
    """Inputs generated on CPU (same values on every device). Pre-activation values within 0.01
    sigma of the activation's kink (statistics over `dims`) are moved to +-0.05 sigma: there,
    rounding differences between two correct implementations flip the mask and a whole
    plane's gradient would differ."""
    def make(shape, dtype, device, gen):
        x = torch.randn(shape, generator=gen).to(dtype).double()
        mean = x.mean(dims, keepdim=True)
        std = x.std(dims, unbiased=False, keepdim=True)
        z = (x - mean) / std
        x = torch.where(z.abs() < 0.01, mean + torch.where(z < 0, -0.05, 0.05) * std, x)
        return (x.to(device=device, dtype=dtype).requires_grad_(),)
    return make


def _elementwise_bytes(reads_fwd, reads_bwd):
    # fwd: read x, write y; bwd: read x and grad, write grad_x
    def moved(shape, dtype):
        nb = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        f, b = (reads_fwd + 1) * nb, (reads_bwd + 1) * nb
        return {"fwd": f, "bwd": b, "fwdbwd": f + b}
    return moved


def _family_build(kind):
    """Ours vs the original module (U-GAT-IT adaILN/ILN, MUNIT LayerNorm as written in
    i2i_fast.models), ours loaded from the original's state_dict."""
    def build(shape, dtype, device):
        from . import nn as fused
        from .models import munit, ugatit
        c = shape[1]
        eager = {"adalin": ugatit.adaILN, "iln": ugatit.ILN, "layer_norm": munit.LayerNorm}[kind](c)
        ours = {"adalin": fused.AdaLIN, "iln": fused.ILN, "layer_norm": fused.LayerNorm}[kind](c)
        with torch.no_grad():
            for p in eager.parameters():  # away from the init so every term matters
                p.uniform_(0.2, 0.8)
        ours.load_state_dict(eager.state_dict())
        return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)
    return build


def _adalin_inputs(shape, dtype, device, gen):
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    g = (torch.rand(n, c, generator=gen) + 0.5).to(device=device, dtype=dtype).requires_grad_()
    b = torch.randn(n, c, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    return x, g, b


def _x_inputs(shape, dtype, device, gen):
    return (torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(),)


_NORM_SHAPES = ((1, 256, 64, 64), (1, 128, 128, 128), (1, 64, 256, 256), (8, 256, 64, 64))

OPS = {
    "instance_norm": Op(
        name="instance_norm", build=_in_build, make_inputs=_kink_safe_inputs((2, 3)),
        moved=_elementwise_bytes(1, 2),
        shapes=((1, 256, 64, 64), (1, 64, 256, 256), (8, 256, 64, 64)),
        cpu_shapes=((1, 256, 64, 64), (1, 64, 128, 128))),
    "instance_norm_pad": Op(
        name="instance_norm_pad", build=_in_pad_build, make_inputs=_kink_safe_inputs((2, 3)),
        moved=_in_pad_moved, shapes=((1, 256, 64, 64), (8, 256, 64, 64)),
        cpu_shapes=((1, 256, 64, 64),)),
    "batch_norm": Op(
        name="batch_norm", build=_bn_build, make_inputs=_kink_safe_inputs((0, 2, 3)),
        moved=_elementwise_bytes(1, 2), shapes=((1, 128, 64, 64), (1, 64, 128, 128), (4, 256, 32, 32)),
        cpu_shapes=((1, 64, 128, 128),)),
    "adalin": Op(
        name="adalin", build=_family_build("adalin"), make_inputs=_adalin_inputs,
        moved=_elementwise_bytes(1, 2), shapes=_NORM_SHAPES, cpu_shapes=((1, 256, 64, 64),)),
    "iln": Op(
        name="iln", build=_family_build("iln"), make_inputs=_x_inputs,
        moved=_elementwise_bytes(1, 2), shapes=_NORM_SHAPES, cpu_shapes=((1, 256, 64, 64),)),
    "layer_norm": Op(
        name="layer_norm", build=_family_build("layer_norm"), make_inputs=_x_inputs,
        moved=_elementwise_bytes(1, 2), shapes=_NORM_SHAPES, cpu_shapes=((1, 256, 64, 64),)),
}


# ---- reflection pad ----
# reflection_pad2d shapes are (N, C, H, W, pad); reflection_pad_conv2d shapes are
# (N, C_in, H, W, C_out, kernel, stride, padding): the (pad, conv) pairs of the reference models.
class _ReflectionPad(nn.Module):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        from .functional import reflection_pad2d
        return reflection_pad2d(x, self.pad)


def _pad_build(shape, dtype, device):
    p = shape[4]
    return _ReflectionPad(p).to(device), nn.ReflectionPad2d(p).to(device)


def _pad_inputs(shape, dtype, device, gen):
    return (torch.randn(shape[:4], generator=gen).to(device=device, dtype=dtype).requires_grad_(),)


def _pad_moved(shape, dtype):
    n, c, h, w, p = shape
    e = torch.empty((), dtype=dtype).element_size()
    small, big = n * c * h * w * e, n * c * (h + 2 * p) * (w + 2 * p) * e
    return {"fwd": small + big, "bwd": big + small, "fwdbwd": 2 * (small + big)}


def _pad_conv_build(shape, dtype, device):
    from .nn import ReflectionPadConv2d
    n, ci, h, w, co, k, s, p = shape
    ours = ReflectionPadConv2d(ci, co, k, stride=s, padding=p)
    eager = nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(ci, co, k, stride=s))
    eager[1].load_state_dict(ours.state_dict())
    return ours.to(device=device, dtype=dtype), eager.to(device=device, dtype=dtype)


def _pad_conv_inputs(shape, dtype, device, gen):
    return (torch.randn(shape[:4], generator=gen).to(device=device, dtype=dtype).requires_grad_(),)


def _pad_conv_moved(shape, dtype):
    # compulsory traffic: x, weight, output (fwd); grad out, x, weight, grad x, grad weight (bwd)
    n, ci, h, w, co, k, s, p = shape
    e = torch.empty((), dtype=dtype).element_size()
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x, wt, y = n * ci * h * w * e, co * ci * k * k * e, n * co * ho * wo * e
    return {"fwd": x + wt + y, "bwd": y + 2 * x + 2 * wt, "fwdbwd": 2 * x + 3 * wt + 2 * y + x}


def padded_bytes(shape, dtype) -> int:
    """Bytes of the padded input that eager ReflectionPad2d -> Conv2d materializes per pass
    (forward: the padded copy; backward: its gradient)."""
    n, ci, h, w, co, k, s, p = shape
    return n * ci * (h + 2 * p) * (w + 2 * p) * torch.empty((), dtype=dtype).element_size()


OPS["reflection_pad2d"] = Op(
    name="reflection_pad2d", build=_pad_build, make_inputs=_pad_inputs, moved=_pad_moved,
    shapes=((1, 64, 256, 256, 3), (1, 256, 64, 64, 1), (8, 256, 64, 64, 1)),
    cpu_shapes=((1, 256, 64, 64, 1), (1, 64, 128, 128, 3)))
OPS["reflection_pad_conv2d"] = Op(
    name="reflection_pad_conv2d", build=_pad_conv_build, make_inputs=_pad_conv_inputs,
    moved=_pad_conv_moved,
    shapes=((1, 3, 256, 256, 64, 7, 1, 3),      # CycleGAN / U-GAT-IT stem
            (1, 256, 64, 64, 256, 3, 1, 1),     # ResNet block, batch 1
            (8, 256, 64, 64, 256, 3, 1, 1),     # ResNet block, batch 8
            (1, 64, 256, 256, 3, 7, 1, 3),      # head 7x7 64 -> 3
            (1, 64, 256, 256, 128, 3, 2, 1),    # U-GAT-IT downsampling (reflect 1, stride 2)
            (1, 128, 256, 256, 64, 5, 1, 2)),   # MUNIT 5x5 upsampling conv
    cpu_shapes=((1, 3, 128, 128, 32, 7, 1, 3),
                (1, 64, 64, 64, 64, 3, 1, 1),
                (1, 32, 64, 64, 64, 3, 2, 1)))
# ---- end reflection pad ----


# ---- spectral norm: W / sigma of a spectral-normalized conv's (O, K) weight matrix (shape (O, K))
class _SnWeight(nn.Module):
    """weight -> weight / (u . (weight v)) with fixed unit u, v: fused (F.spectral_norm_weight)
    or torch's expression as in torch.nn.utils.spectral_norm."""

    def __init__(self, o, k, fused):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.register_buffer("u", nn.functional.normalize(torch.randn(o, generator=g), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn(k, generator=g), dim=0))
        self.fused = fused

    def forward(self, w):
        if self.fused:
            from .functional import spectral_norm_weight
            return spectral_norm_weight(w, self.u, self.v)
        return w / torch.dot(self.u, torch.mv(w, self.v))


def _sn_build(shape, dtype, device):
    return (_SnWeight(*shape, True).to(device=device, dtype=dtype),
            _SnWeight(*shape, False).to(device=device, dtype=dtype))


def _sn_inputs(shape, dtype, device, gen):
    return ((torch.randn(shape, generator=gen) * 0.05).to(device=device, dtype=dtype).requires_grad_(),)


def _sn_moved(shape, dtype):
    # fwd: read W, write W / sigma; bwd: read grad and W, write grad W (u, v negligible)
    nb = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return {"fwd": 2 * nb, "bwd": 3 * nb, "fwdbwd": 5 * nb}


OPS["spectral_norm"] = Op(
    name="spectral_norm", build=_sn_build, make_inputs=_sn_inputs, moved=_sn_moved,
    shapes=((512, 4096), (1024, 8192), (2048, 16384)),   # U-GAT-IT D's last convs (4x4 kernels) at ngf 64
    cpu_shapes=((256, 2048),))


# ---------------------------------------------------------------- losses
# Whole loss computations of one training step, fused (i2i_fast.functional) vs the original
# eager formulas. "shape" is (batch, image size): the D outputs follow the models at that
# size ((1,1,30,30) local / (1,1,6,6) global PatchGAN and (B,2) CAM logits for U-GAT-IT at
# 256; MUNIT's 3 scales (16, 8, 4) at 256), images (B,3,S,S) for the L1 terms.
def _patch(size, n_layers):  # PatchGAN output side of a k4 s2 (n_layers-2 times) s1 s1 stack
    s = size
    for _ in range(n_layers - 2):
        s = s // 2
    return s - 2


def _loss_defs():
    from . import functional as LF
    mse, l1, bce = nn.functional.mse_loss, nn.functional.l1_loss, nn.functional.binary_cross_entropy_with_logits

    def lsgan(p, real):
        return mse(p, torch.ones_like(p) if real else torch.zeros_like(p))

    def ugatit_d_shapes(b, s):
        return [(b, 1, _patch(s, 7), _patch(s, 7)), (b, 2), (b, 1, _patch(s, 5), _patch(s, 5)), (b, 2)]

    defs = {}

    # U-GAT-IT D step: per domain, global and local D, logits and CAM logits, real and fake
    # (8 terms per domain; both domains = 16 terms summed into one loss).
    def ugd_inputs(b, s):
        return [(sh, True) for _ in range(2) for sh in ugatit_d_shapes(b, s) for _ in range(2)]

    def ugd_eager(*t):
        return sum(lsgan(t[k], True) + lsgan(t[k + 1], False) for k in range(0, len(t), 2))

    def ugd_ours(*t):
        return LF.gan_loss(list(t), [True, False] * (len(t) // 2), "lsgan")
    defs["loss_ugatit_d"] = (ugd_inputs, ugd_eager, ugd_ours)

    # U-GAT-IT G step, both directions: adversarial LSGAN (4 terms per direction, x1), CAM
    # BCE (fake_cam -> 1, idt_cam -> 0, x1000), cycle L1 x10, identity L1 x10.
    def ugg_inputs(b, s):
        adv = [(sh, True) for _ in range(2) for sh in ugatit_d_shapes(b, s)]
        cam = [((b, 1), True)] * 4
        img = [((b, 3, s, s), True), ((b, 3, s, s), False)] * 4  # (rec, real), (idt, real) x2
        return adv + cam + img

    def ugg_eager(*t):
        adv, cam, img = t[:8], t[8:12], t[12:]
        loss = sum(lsgan(p, True) for p in adv)
        loss = loss + 1000 * sum(bce(c, torch.ones_like(c) if k % 2 == 0 else torch.zeros_like(c))
                                 for k, c in enumerate(cam))
        return loss + 10 * sum(l1(img[k], img[k + 1]) for k in range(0, 8, 2))

    def ugg_ours(*t):
        adv, cam, img = t[:8], t[8:12], t[12:]
        return (LF.gan_loss(list(adv), True, "lsgan")
                + LF.gan_loss(list(cam), [True, False, True, False], "vanilla", weights=1000.0)
                + LF.l1_loss([(img[k], img[k + 1]) for k in range(0, 8, 2)], 10.0))
    defs["loss_ugatit_g"] = (ugg_inputs, ugg_eager, ugg_ours)

    # CycleGAN D step (both Ds): 0.5 * (lsgan(D(real), True) + lsgan(D(fake), False)) each.
    def cgd_inputs(b, s):
        p = _patch(s, 5)
        return [((b, 1, p, p), True)] * 4

    def cgd_eager(*t):
        return sum(0.5 * (lsgan(t[k], True) + lsgan(t[k + 1], False)) for k in (0, 2))

    def cgd_ours(*t):
        return LF.gan_loss(list(t), [True, False, True, False], "lsgan", weights=0.5)
    defs["loss_cyclegan_d"] = (cgd_inputs, cgd_eager, cgd_ours)

    # CycleGAN G step: lsgan G_A, G_B + cycle L1 x10 (two) + identity L1 x5 (two).
    def cgg_inputs(b, s):
        p = _patch(s, 5)
        return [((b, 1, p, p), True)] * 2 + [((b, 3, s, s), True), ((b, 3, s, s), False)] * 4

    def cgg_eager(*t):
        img = t[2:]
        return (lsgan(t[0], True) + lsgan(t[1], True)
                + 10 * (l1(img[0], img[1]) + l1(img[2], img[3])) + 5 * (l1(img[4], img[5]) + l1(img[6], img[7])))

    def cgg_ours(*t):
        img = t[2:]
        return (LF.gan_loss([t[0], t[1]], True, "lsgan")
                + LF.l1_loss([(img[k], img[k + 1]) for k in range(0, 8, 2)], [10.0, 10.0, 5.0, 5.0]))
    defs["loss_cyclegan_g"] = (cgg_inputs, cgg_eager, cgg_ours)

    # MUNIT MsImageDis lsgan, D (fake -> 0, real -> 1 at 3 scales) + G (fake -> 1), one domain.
    def mu_inputs(b, s):
        sides = [s // 16, s // 32, s // 64]
        return [((b, 1, q, q), True) for q in sides] * 3

    def mu_eager(*t):
        d = sum(torch.mean((o0 - 0) ** 2) + torch.mean((o1 - 1) ** 2) for o0, o1 in zip(t[:3], t[3:6]))
        return d + sum(torch.mean((o - 1) ** 2) for o in t[6:])

    def mu_ours(*t):
        return (LF.gan_loss(list(t[:6]), [False] * 3 + [True] * 3, "lsgan")
                + LF.gan_loss(list(t[6:]), True, "lsgan"))
    defs["loss_munit"] = (mu_inputs, mu_eager, mu_ours)
    return defs


class _LossModule(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *t):
        return self.fn(*t)


def _loss_op(name):
    def build(shape, dtype, device):
        _, eager, ours = _loss_defs()[name]
        return _LossModule(ours), _LossModule(eager)

    def make_inputs(shape, dtype, device, gen):
        specs = _loss_defs()[name][0](*shape)
        return tuple((torch.randn(sh, generator=gen) * 2).to(device=device, dtype=dtype).requires_grad_(rg)
                     for sh, rg in specs)

    def moved(shape, dtype):
        specs = _loss_defs()[name][0](*shape)
        es = torch.empty((), dtype=dtype).element_size()
        nread = sum(math.prod(sh) for sh, _ in specs) * es
        ngrad = sum(math.prod(sh) for sh, rg in specs if rg) * es
        return {"fwd": nread, "bwd": 2 * ngrad, "fwdbwd": nread + 2 * ngrad}
    return Op(name=name, build=build, make_inputs=make_inputs, moved=moved,
              shapes=((1, 256), (4, 256)), cpu_shapes=((1, 256),))


LOSS_OPS = ("loss_ugatit_d", "loss_ugatit_g", "loss_cyclegan_d", "loss_cyclegan_g", "loss_munit")
OPS.update({name: _loss_op(name) for name in LOSS_OPS})


# ops that are not work (no kernel): bare allocations; views, detach and profiler records are
# excluded by OpCounter too
NOT_WORK_OPS = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided")


class OpCounter:
    """Context manager counting the ops dispatched inside it with a TorchDispatchMode: every
    aten / i2i_fast op that does work (views, detach, bare allocations, profiler records
    excluded), on any device, with no profiler (so nothing reaches the terminal). i2i_fast's
    ops are called through the dispatcher meanwhile (_ops.FAST_EAGER off), so the mode sees
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
        from .ops import common as _ops
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.name()
                if not (func.is_view or name == "aten::detach" or name.startswith("profiler::")
                        or name.split("::", 1)[-1].split(".")[0] in NOT_WORK_OPS):
                    counter.total += 1
                    counter.names[name] = counter.names.get(name, 0) + 1
                    if counter._phase is not None:
                        counter.by_phase[counter._phase] = counter.by_phase.get(counter._phase, 0) + 1
                return func(*args, **(kwargs or {}))
        self._fast, _ops.FAST_EAGER = _ops.FAST_EAGER, False
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        from .ops import common as _ops
        try:
            return self._mode.__exit__(*exc)
        finally:
            _ops.FAST_EAGER = self._fast


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
    from .ops import common as _ops
    fast, _ops.FAST_EAGER = _ops.FAST_EAGER, False  # make our ops visible to the profiler
    try:
        with quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            run(*args)
            synchronize(case.device)
    finally:
        _ops.FAST_EAGER = fast
    n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"launches": n, "launch_kind": "cuda kernels+memsets"}


def shapes_for(op: str, device, quick: bool = False) -> tuple:
    """The GPU shapes (docs/benchmarks.md) on CUDA; the small CPU list with --quick or on CPU (unless
    I2I_FAST_BENCH_FULL=1)."""
    small = quick or (torch.device(device).type == "cpu" and not full_shapes())
    return OPS[op].cpu_shapes if small else OPS[op].shapes


# -------------------------------------------------------------------------------- cases
def _raise_recompile_limit(n=64):
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # one compiled graph per case
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), n))


class Case:
    """One (op, shape, dtype, device): modules, rotating input sets, the compiled baseline
    (compiled and warmed up once) and cached timings per (impl, mode)."""

    def __init__(self, op: Op, shape, dtype, device, *, quick=False, seed=0):
        self.op, self.shape, self.dtype = op, tuple(shape), dtype
        self.device = torch.device(device)
        self.quick = quick
        self.ours, self.eager = op.build(self.shape, dtype, self.device)
        self.moved = op.moved(self.shape, dtype)
        try:
            self.backend = _backend.select(self.device)
        except Exception as e:  # noqa: BLE001 - reported, the op itself will raise
            self.backend = f"error: {e}"
        # Inputs rotate over > 4x L2 on CUDA, so every call reads from DRAM.
        sets = 1
        if self.device.type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 50 << 20)
            sets = max(1, min(64, math.ceil(4 * l2 / self.moved["fwdbwd"])))
        gen = torch.Generator().manual_seed(seed)
        self.inputs = [op.make_inputs(self.shape, dtype, self.device, gen) for _ in range(sets)]
        with torch.no_grad():
            out = self.eager(*self.inputs[0])
        self.grads = [torch.randn(out.shape, generator=gen).to(device=self.device, dtype=out.dtype)
                      for _ in range(sets)]
        self._compiled = None
        self.compile_error: Optional[str] = None
        self.compile_s: Optional[float] = None
        self._timings: dict = {}
        self._noise: dict = {}  # mode -> why its timings are noisy (None: they are not)
        self._parity = None

    @property
    def key(self) -> str:
        return f"{self.op.name} {'x'.join(map(str, self.shape))} {DTYPE_NAMES.get(self.dtype, self.dtype)}"

    def compiled(self):
        """torch.compile of the eager baseline, compiled and warmed up (fwd+bwd) on first use;
        None when compiling failed (reason in compile_error)."""
        if self._compiled is None and self.compile_error is None:
            _raise_recompile_limit()
            t0 = time.perf_counter()
            try:
                m = torch.compile(self.eager, dynamic=False)
                self._fwdbwd(m, self.inputs[0], self.grads[0])
                self._fwdbwd(m, self.inputs[0], self.grads[0])
                synchronize(self.device)
                self._compiled = m
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                msg = str(e).strip().splitlines()
                self.compile_error = f"{type(e).__name__}: {msg[0][:200] if msg else ''}"
            self.compile_s = time.perf_counter() - t0
        return self._compiled

    def module(self, impl: str):
        if impl == "compile":
            return self.compiled()
        return {"ours": self.ours, "eager": self.eager}[impl]

    @staticmethod
    def _fwdbwd(m, inp, g):
        out = m(*inp)
        return out, torch.autograd.grad(out, [t for t in inp if t.requires_grad], g)

    def fn(self, impl: str, mode: str):
        """(run, setup) for measure(): run(*setup()) runs `mode` of `impl` on the next input set
        (inputs rotate); for "bwd" the untimed setup runs the forward, run the backward."""
        m = self.module(impl)
        if m is None:
            raise RuntimeError(f"torch.compile failed: {self.compile_error}")
        sets = list(zip(self.inputs, self.grads))
        i = [0]

        def next_set():
            i[0] = (i[0] + 1) % len(sets)
            return sets[i[0]]
        if mode == "fwd":
            return (lambda inp, g: m(*inp)), next_set
        if mode == "fwdbwd":
            return (lambda inp, g: self._fwdbwd(m, inp, g)), next_set
        if mode == "bwd":
            def forward():
                inp, g = next_set()
                return m(*inp), [t for t in inp if t.requires_grad], g
            return (lambda out, diff, g: torch.autograd.grad(out, diff, g)), forward
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def parity(self):
        """(ok, detail): ours vs eager forward output and input gradients, same inputs, cached."""
        if self._parity is None:
            inp, g = self.inputs[0], self.grads[0]
            # TF32 off for the check: two convolution algorithms in TF32 differ by ~1e-3, more
            # than the fp32 tolerance (the timings keep torch's TF32 setting)
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
            try:
                yo, go = self._fwdbwd(self.ours, inp, g)
                ye, ge = self._fwdbwd(self.eager, inp, g)
            finally:
                torch.backends.cudnn.allow_tf32 = tf32
            atol, rtol = TOL.get(self.dtype, (1e-4, 1e-4))
            ok, parts = True, []
            for name, a, b in [("out", yo, ye)] + [(f"grad{k}", a, b) for k, (a, b) in enumerate(zip(go, ge))]:
                a, b = a.detach().float(), b.detach().float()
                good = a.shape == b.shape and bool(torch.isclose(a, b, rtol, atol, equal_nan=True).all())
                err = (a - b).abs().nan_to_num(float("inf")).max().item() if a.shape == b.shape else float("inf")
                ok &= good
                parts.append(f"{name} max|d|={err:.2e}")
            self._parity = (ok, f"{', '.join(parts)} (atol={atol:g}, rtol={rtol:g})")
        return self._parity

    def peak_mb(self, impl: str) -> Optional[float]:
        """Peak CUDA memory (MiB) of one forward+backward of impl above what was allocated
        before it (torch.cuda.max_memory_allocated); None on CPU: not measured there."""
        if self.device.type != "cuda" or self.module(impl) is None:
            return None
        key = ("peak", impl)
        if key not in self._timings:
            synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            out = self._fwdbwd(self.module(impl), self.inputs[0], self.grads[0])
            synchronize(self.device)
            self._timings[key] = (torch.cuda.max_memory_allocated(self.device) - base) / 2 ** 20
            del out
        return self._timings[key]

    ROUNDS = 5  # alternating measurement rounds per mode

    def timing(self, impl: str, mode: str) -> Optional[Timing]:
        """Median-based timing of (impl, mode), measured once per case; None if compile failed."""
        if (impl, mode) not in self._timings:
            self._measure_mode(mode)
        return self._timings[(impl, mode)]

    def _measure_mode(self, mode: str) -> None:
        """Times eager, compile and ours for `mode` in alternating rounds and pools each one's
        samples, so a change of load on a shared machine (or clocks on a GPU) during the run
        hits all three alike instead of skewing their ratios."""
        impls = [i for i in ("eager", "compile", "ours") if i != "compile" or self.compiled() is not None]
        if self.device.type == "cuda":
            kw = dict(budget_s=0.1 if self.quick else 0.3, warmup=10, min_reps=20, max_reps=1000)
        else:
            kw = dict(budget_s=0.2 if self.quick else 0.6, warmup=2, min_reps=3 if self.quick else 5,
                      max_reps=200)
        n = self.ROUNDS
        per = dict(budget_s=kw["budget_s"] / n, min_reps=max(1, -(-kw["min_reps"] // n)),
                   max_reps=max(1, kw["max_reps"] // n))
        fns = {i: self.fn(i, mode) for i in impls}

        def rounds():
            samples: dict = {i: [] for i in impls}
            for r in range(n):
                for i in impls:
                    run, setup = fns[i]
                    samples[i].append(measure(run, self.device, setup=setup, warmup=kw["warmup"] if r == 0 else 1,
                                              **per))
            return {i: Timing.pool(t) for i, t in samples.items()}
        timings, self._noise[mode] = until_quiet(rounds)
        self._timings[("compile", mode)] = None
        self._timings.update({(i, mode): t for i, t in timings.items()})

    def noise(self, mode: str) -> Optional[str]:
        """Why the timings of `mode` cannot be trusted, or None (measures them if needed)."""
        self.timing("ours", mode)
        return self._noise[mode]


_CASES: dict = {}


def get_case(op: str, shape, dtype, device, *, quick=None) -> Case:
    """The Case for these arguments, built once per process (so torch.compile runs once);
    quick=None: quick_selection()."""
    quick = quick_selection() if quick is None else quick
    key = (op, tuple(shape), dtype, str(torch.device(device)), quick)
    if key not in _CASES:
        _CASES[key] = Case(OPS[op], shape, dtype, device, quick=quick)
    return _CASES[key]


def summarize(case: Case, mode: str, impl: str = "ours") -> dict:
    """time_ms (median), GB/s, % of copy bandwidth (CUDA) of (impl, mode); for impl="ours"
    also the baselines' medians and the speedups, all measured in this process."""
    t = case.timing(impl, mode)
    d = {"op": case.op.name, "shape": list(case.shape), "dtype": DTYPE_NAMES.get(case.dtype, str(case.dtype)),
         "device": str(case.device), "mode": mode, "impl": impl, "backend": case.backend,
         "bytes": case.moved[mode], "rotating_sets": len(case.inputs),
         "time_ms": None, "gbps": None}
    if t is not None:
        d.update(time_ms=t.median_ms, reps=len(t.times_ms), gbps=case.moved[mode] / (t.median_ms * 1e-3) / 1e9,
                 **t.spread(), noisy=case.noise(mode))
        bw = copy_bandwidth_gbps(case.device)
        if bw:
            d.update(copy_bw_gbps=bw, pct_of_copy_bw=100.0 * d["gbps"] / bw)
    if impl in ("ours", "compile"):
        d["compile"] = "ok" if case.compiled() is not None else f"failed: {case.compile_error}"
        d["compile_s"] = case.compile_s
    if impl == "ours" and t is not None:
        for base in ("eager", "compile"):
            tb = case.timing(base, mode)
            d[f"{base}_ms"] = tb.median_ms if tb else None
            d[f"{base}_min_ms"] = tb.min_ms if tb else None
            d[f"{base}_iqr_ms"] = tb.iqr_ms if tb else None
            d[f"speedup_vs_{base}"] = tb.median_ms / t.median_ms if tb else None
            d[f"speedup_vs_{base}_min"] = tb.min_ms / t.min_ms if tb else None
    if mode == "fwdbwd":  # peak memory of forward+backward (CUDA; None = not measured)
        d["peak_mb"] = case.peak_mb(impl)
        if impl == "ours":
            d["eager_peak_mb"] = case.peak_mb("eager")
    return d


# ---------------------------------------------------------------------------------- CLI
COLUMNS = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("mode", "mode"), ("pass", "pass"),
           ("time_ms", "ours ms"), ("min_ms", "ours min"), ("iqr_ms", "ours IQR"), ("eager_ms", "eager ms"), ("compile_ms", "compile ms"),
           ("speedup_vs_eager", "x eager"), ("speedup_vs_compile", "x compile"), ("gbps", "GB/s"),
           ("pct_of_copy_bw", "% copy BW"), ("peak_mb", "peak MiB"), ("eager_peak_mb", "eager peak MiB")]
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


TIMING_LEGEND = (f"min = fastest sample, IQR = interquartile range of the samples (ms); a row whose samples "
                 f"still spread wider than IQR {NOISY_REL_IQR:.0%} of the median or a median "
                 f"{NOISY_MEDIAN_OVER_MIN:g}x the min, or with more than {NOISY_PREEMPTED_CALLS:.0%} of its calls "
                 f"preempted, after {NOISY_RETRIES + 1} measurements is marked noisy, with the ratio of the medians "
                 f"and of the minima.")


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
    return "\n".join("  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i]) for i, c in enumerate(r))
                     for r in cells)


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
    panels = [p for p in (("ops (fused op vs the unfused original)", rows, lambda r: f"{r['op']} {_cell('shape', r)} "
                           f"{r['dtype']} {r['mode']}"),
                          ("whole training steps (converted vs original)", step_rows,
                           lambda r: f"{r['family']} ({r['device']})")) if p[1]]
    if not panels:
        return False
    height = max(0.3 * max(len(p[1]) for p in panels) + 1.5, 3.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), height), squeeze=False)
    for ax, (title, rs, label) in zip(axes[0], panels):
        ys = range(len(rs))
        eager = [r["speedup_vs_eager"] for r in rs]
        comp = [r.get("speedup_vs_compile") or math.nan for r in rs]
        ops = [1 / r["model_ops_ratio"] if r.get("model_ops_ratio") else math.nan for r in rs]
        steps = rs is step_rows and any(not math.isnan(o) for o in ops)   # steps: fewer ops as a factor too
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
            ax.barh(at, [v if n else math.nan for v, n in zip(vals, noisy)], wd, color="lightgrey", hatch="//",
                    edgecolor="grey", label="noisy timing (not a measured speedup)" if k == 0 and any(noisy) else None)
        for y, r in zip(ys, rs):
            if r.get("noisy"):
                ax.annotate(noisy_ratio(r["speedup_vs_eager"], r.get("speedup_vs_eager_min")) + " vs eager",
                            (r["speedup_vs_eager"], y - off), fontsize=6, va="center", xytext=(3, 0),
                            textcoords="offset points")
        if steps:
            ax.barh([y + off for y in ys], ops, wd, color="tab:gray", label="ops dispatched (w/o optimizer): orig / conv")
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


# ------------------------------------------------------------------- whole training steps
def run_steps(device, *, quick=False, compile_steps=False, families=None, reps=None) -> list:
    """One row per family of i2i_fast.bench_steps (the small CPU configurations on CPU, the
    papers' sizes on CUDA; --quick: small everywhere): original vs converted ms/step (medians of
    interleaved steps), torch.compile of both when compile_steps, the first-step parity of
    every variant vs the original, the ops one step dispatches (optimizer apart) and the
    saved-activation MiB of both eager variants."""
    from . import bench_steps
    device = torch.device(device)
    small = True if quick else None
    reps = reps or (1 if quick else 5)
    variants = ("eager", "converted") + (("compile", "converted+compile") if compile_steps else ())
    rows = []
    for fam in families or bench_steps.FAMILIES:
        res = bench_steps.measure_family(fam, device, variants, reps, small, progress=_progress)
        e, c = res["eager"], res["converted"]
        row = {"family": fam, "config": e["config"], "device": str(device), "reps": reps,
               "eager_ms": e["ms"], "converted_ms": c.get("ms"), "eager_min_ms": e["min_ms"],
               "eager_iqr_ms": e["iqr_ms"], "converted_min_ms": c.get("min_ms"), "converted_iqr_ms": c.get("iqr_ms"),
               "noisy": e["noisy"],
               "speedup_vs_eager": e["ms"] / c["ms"] if c.get("ms") else None,
               "speedup_vs_eager_min": e["min_ms"] / c["min_ms"] if c.get("min_ms") else None,
               "compile_ms": None, "converted_compile_ms": None, "speedup_vs_compile": None,
               "compile": "ok" if compile_steps else "not run"}
        for v, key in (("compile", "compile_ms"), ("converted+compile", "converted_compile_ms")):
            if v in res:
                row[key] = res[v].get("ms")
                if "error" in res[v]:
                    row["compile"] = f"{v} failed: {res[v]['error']}"
        if row["compile_ms"] and row["converted_compile_ms"]:
            row["speedup_vs_compile"] = row["compile_ms"] / row["converted_compile_ms"]
            row["speedup_vs_compile_min"] = res["compile"]["min_ms"] / res["converted+compile"]["min_ms"]
        checked = [r for v, r in res.items() if v != "eager" and "parity" in r]
        row["parity"] = all(r["parity"] for r in checked)
        row["parity_detail"] = "; ".join(f"{r['variant']}: {r['parity_detail']}" for r in checked)
        for v, tag in (("eager", "eager"), ("converted", "converted")):
            for k in ("ops", "model_ops", "optimizer_ops", "saved_mib", "launches"):
                if res[v].get(k) is not None:
                    row[f"{tag}_{k}"] = res[v][k]
        if row.get("eager_ops") and row.get("converted_ops"):
            row["ops_ratio"] = row["converted_ops"] / row["eager_ops"]
            row["model_ops_ratio"] = row["converted_model_ops"] / row["eager_model_ops"]
        rows.append(row)
    return rows


STEP_COLUMNS = [("family", "family"), ("eager_ms", "orig ms"), ("eager_iqr_ms", "orig IQR"), ("converted_ms", "conv ms"),
                ("converted_iqr_ms", "conv IQR"), ("speedup_vs_eager", "x orig"), ("compile_ms", "compile ms"),
                ("converted_compile_ms", "conv+comp ms"), ("speedup_vs_compile", "x comp"),
                ("eager_ops", "ops orig"), ("converted_ops", "ops conv"), ("ops_ratio", "ops x"),
                ("eager_model_ops", "model orig"), ("converted_model_ops", "model conv"),
                ("model_ops_ratio", "model x"), ("eager_optimizer_ops", "optim ops"),
                ("eager_saved_mib", "saved MiB orig"), ("converted_saved_mib", "saved MiB conv"),
                ("parity", "first step")]


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
    lines = ["orig = the original modules and losses, conv = i2i_fast.convert(...) + the fused losses, same "
             "weights, data and noise; ms = median of interleaved steps; x orig = orig ms / conv ms;",
             "x comp = compiled original / compiled converted; first step = the first step's losses of every "
             "variant vs the original (rtol 1e-3);",
             "ops = ops one step dispatches (TorchDispatchMode, views and allocations excluded; at batch 1 on a "
             "GPU each is a launch), model = forward+backward+losses, optim = Adam's (per-tensor on CPU);",
             "saved MiB = peak of what autograd holds for backward during a step."]
    if any(r.get("converted_launches") is not None for r in rows):
        lines.append("our launches = kernels/*.cu launches of one converted step, counted on CPU through the "
                     "CUDA emulation (tests/cuda_emu)")
    if not compile_steps:
        lines.append("torch.compile columns: not run" + (" on CPU (minutes of compilation per family on a small CPU); "
                                                         "--step-compile runs them" if device.type == "cpu" else ""))
    lines.append("IQR = interquartile range of the interleaved steps (ms); noisy: see the single-op legend")
    notes = noisy_notes(rows, lambda r: f"{r['family']} steps")
    if notes:
        lines.append(notes)
    for r in rows:
        lines.append(f"  {r['family']}: {r['config']}" + ("" if r["compile"] in ("ok", "not run") else f"  [{r['compile']}]")
                     + ("" if r["parity"] else f"  [{r['parity_detail']}]"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m i2i_fast.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())
    p.add_argument("--dtype", default=None,
                   help="comma list of fp32,bf16,fp16 (default: fp32 on CPU, fp32,bf16 on CUDA)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma list of {','.join(OPS)}")
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke run)")
    p.add_argument("--out", default="bench_results", help="output folder (default: bench_results/)")
    p.add_argument("--steps", default="all", metavar="FAMILIES",
                   help="whole-training-step families (comma list, 'all' or 'none'; default all)")
    p.add_argument("--step-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also torch.compile the steps (default: on CUDA yes, on CPU no: minutes per family)")
    p.add_argument("--launches", action="store_true",
                   help="also count the CUDA kernel launches of each converted step through the CUDA "
                        "emulation of a source checkout (tests/cuda_emu; builds it once, about a minute)")
    a = p.parse_args(argv)
    if a.launches:
        from . import bench_steps
        why = bench_steps.use_emulated_launches()
        if why:
            print(f"--launches: {why}", flush=True)

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    dtypes = a.dtype.split(",") if a.dtype else default_dtypes(a.device)
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    for name, known, what in [(d, DTYPES, "dtype") for d in dtypes] + [(o, OPS, "op") for o in ops]:
        if name not in known:
            p.error(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    device = torch.device(a.device)
    quiet_no_cuda_warning()
    load = MachineLoad()
    info = machine_info(device)
    print(f"i2i_fast.bench on {info.get('gpu_name') or info.get('cpu_model')} "
          f"(torch {info['torch']}, triton {info['triton']}"
          + ("" if device.type == "cuda" else f", {info['torch_num_threads']} threads") + ")")
    print(load.header())

    cases = [get_case(o, shape, DTYPES[d], device, quick=a.quick)
             for o in ops for shape in shapes_for(o, device, a.quick) for d in dtypes]

    failed = 0
    for c in cases:  # parity first
        ok, detail = c.parity()
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {c.key:<32} [{c.backend}] {detail}")

    rows = []
    steps = len(cases) * len(MODES)
    t0 = time.perf_counter()
    interrupted = False
    try:  # Ctrl-C / SIGINT (a time limit): keep the rows measured so far and write them
        for ci, c in enumerate(cases):
            for mi, mode in enumerate(MODES):
                what = "compiling + timing" if c._compiled is None and c.compile_error is None else "timing"
                _progress(f"[{ci * len(MODES) + mi + 1}/{steps}] {what} {c.key} {mode}: eager, compile, ours "
                          f"interleaved ({time.perf_counter() - t0:.0f}s)")
                c.timing("ours", mode)
                rows.append(dict(summarize(c, mode), **{"pass": c.parity()[0], "parity": c.parity()[1]}))
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted after {len(rows)} of {steps} rows: writing those", file=sys.stderr)
        cases = cases[:(len(rows) + len(MODES) - 1) // len(MODES)]
    _progress(f"done in {time.perf_counter() - t0:.0f}s")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for c in cases:
        if c.compile_error:
            print(f"note: torch.compile failed for {c.key}: {c.compile_error}")

    print(format_table(rows))
    print(TIMING_LEGEND)
    notes = noisy_notes(rows, lambda r: f"{r['op']} {_cell('shape', r)} {r['dtype']} {r['mode']}")
    if notes:
        print(notes)
    # losses: kernel launches of one forward+backward, ours / eager / compiled
    for c in cases if not interrupted else ():
        if c.op.name in LOSS_OPS:
            n = {impl: (count_launches(c, impl)["launches"] if impl != "compile" or c.compiled() is not None else None)
                 for impl in IMPLS}
            kind = "CUDA kernels" if c.device.type == "cuda" else "CPU dispatched ops"
            print(f"launches fwd+bwd {c.key:<28} ours {n['ours']}  eager {n['eager']}  compile {n['compile']} ({kind})")
            for r in rows:
                if r["op"] == c.op.name and tuple(r["shape"]) == c.shape and r["dtype"] == DTYPE_NAMES.get(c.dtype):
                    r.update({f"launches_{k}": v for k, v in n.items()})
    # whole training steps of every family: the number a GAN researcher decides on
    step_rows = []
    compile_steps = a.step_compile if a.step_compile is not None else device.type == "cuda"
    if a.steps != "none" and not interrupted:
        from . import bench_steps
        fams = list(bench_steps.FAMILIES) if a.steps == "all" else [f.strip() for f in a.steps.split(",") if f.strip()]
        for f in fams:
            if f not in bench_steps.FAMILIES:
                p.error(f"unknown family {f!r}; choose from {', '.join(bench_steps.FAMILIES)}")
        t1 = time.perf_counter()
        try:
            step_rows = run_steps(device, quick=a.quick, compile_steps=compile_steps, families=fams)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted in the training steps", file=sys.stderr)
        _progress(f"training steps done in {time.perf_counter() - t1:.0f}s")
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        failed += sum(not r["parity"] for r in step_rows)
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_report = load.report()
    meta = {"timestamp": stamp, "argv": sys.argv[1:] if argv is None else list(argv), "interrupted": interrupted,
            "machine": info, "machine_load": load_report, "copy_bw_gbps": copy_bandwidth_gbps(device)}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(dict(meta, results=rows, steps=step_rows), f, indent=1)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"# i2i_fast benchmark ({stamp})\n\n")
        f.write("".join(f"- {k}: {v}\n" for k, v in info.items()))
        f.write(f"- {MachineLoad.summary(load_report)}\n")
        f.write("\nMedian times; x = speedup of ours; GB/s = bytes that must move / ours' time. "
                + TIMING_LEGEND + "\n\n")
        f.write(format_table(rows, markdown=True) + "\n")
        if notes:
            f.write("\n" + notes.replace("\n", "\n\n") + "\n")
        if step_rows:
            f.write("\n## Whole training steps\n\n" + format_steps(step_rows, markdown=True) + "\n\n")
            f.write(steps_legend(step_rows, compile_steps, device) + "\n")
    plotted = _plot(rows, os.path.join(a.out, "speedup.png"), step_rows)
    if step_rows:
        where = "small CPU configurations" if device.type == "cpu" or a.quick else "the papers' sizes"
        print(f"\nwhole training steps on {device.type} ({where}"
              + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "") + ")")
        print(format_steps(step_rows))
        print(steps_legend(step_rows, compile_steps, device))
    print(MachineLoad.summary(load_report))
    out_dir = os.path.abspath(a.out)
    print(f"results in {out_dir}/: results.json, results.md" + (", speedup.png (chart)" if plotted else
                                                               " (no chart: pip install matplotlib)"))
    if failed:
        print(f"{failed} parity check(s) FAILED", file=sys.stderr)
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
