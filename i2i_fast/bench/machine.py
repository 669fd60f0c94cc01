"""What a result was measured on: device-to-device copy bandwidth and the machine description."""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from .. import _backend
from .timing import default_device, measure

_COPY_BW: dict = {}


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
                        f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
                    )
                except Exception:  # noqa: BLE001
                    h = None
            if h is None:
                h = pynvml.nvmlDeviceGetHandleByIndex(index)

            def s(v):
                return v.decode() if isinstance(v, bytes) else v

            return {
                "gpu_name": s(pynvml.nvmlDeviceGetName(h)),
                "driver": s(pynvml.nvmlSystemGetDriverVersion()),
                "gpu_memory_total_gib": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 2),
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
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "i2i_fast_backends": {k: v[0] for k, v in _backend.backends().items()},
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(index)
        info.update(
            {
                "gpu_name": p.name,
                "gpu_sm_count": p.multi_processor_count,
                "gpu_capability": f"{p.major}.{p.minor}",
                "gpu_memory_total_gib": round(p.total_memory / 2**30, 2),
                "cuda": torch.version.cuda,
            }
        )
        info.update(_nvml_info(index))
    else:
        info.update(
            {"cpu_model": _cpu_model(), "torch_num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        )
    return info
