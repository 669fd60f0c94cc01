"""Which kernel backends exist, why not, and which one an op uses.

Backends: "cuda" (kernels/*.cu in i2i_fast._C), "triton" (i2i_fast/triton), "cpu" (csrc/ in
i2i_fast._C), "reference" (i2i_fast/reference.py, pure PyTorch). Defaults: CUDA tensors use
cuda, else triton, else reference; CPU tensors use cpu, else reference. I2I_FAST_BACKEND or
`use_backend(name)` forces one in the calling thread (or asyncio task) only, like torch.no_grad;
the environment variable is the process-wide default. A forced backend that cannot run raises
and says why.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings

import torch

BACKENDS = ("cuda", "triton", "cpu", "reference")

_C = None
_ext_error = None
try:
    from . import _C  # noqa: F401  (importing it registers torch.ops.i2i_fast.*)
except ImportError as e:  # not built: warn once, fall back
    _ext_error = f"extension i2i_fast._C not importable ({e}); reinstall with `pip install --no-build-isolation -e .`"

_triton_error = None
try:
    import triton  # noqa: F401

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 6):
        _triton_error = f"triton {triton.__version__} is older than 3.6"
except ImportError as e:
    _triton_error = f"triton not installed ({e})"


def triton_interpret() -> bool:
    """Triton kernels run on CPU tensors under TRITON_INTERPRET=1 (how CI tests them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _status() -> dict[str, tuple[bool, str]]:
    cuda_built = bool(_C is not None and _C.WITH_CUDA)
    gpu = torch.cuda.is_available()
    if _C is None:
        cuda = (False, _ext_error)
    elif not cuda_built:
        cuda = (
            False,
            "extension built without CUDA kernels (CPU-only torch or no nvcc at build time; I2I_FAST_CUDA=1 forces it)",
        )
    elif not gpu:
        cuda = (False, "CUDA kernels built, but no GPU is visible")
    else:
        cuda = (True, "CUDA kernels built")
    if _triton_error:
        tri = (False, _triton_error)
    elif gpu:
        tri = (True, "triton available")
    elif triton_interpret():
        tri = (True, "triton interpreter (TRITON_INTERPRET=1) on CPU tensors")
    else:
        tri = (False, "no GPU visible and TRITON_INTERPRET is not 1")
    cpu = (True, "CPU kernels built") if _C is not None else (False, _ext_error)
    return {"cuda": cuda, "triton": tri, "cpu": cpu, "reference": (True, "pure PyTorch")}


def backends() -> dict[str, tuple[bool, str]]:
    """{backend: (available, reason)} for this process."""
    return _status()


if _C is None:
    warnings.warn(
        f"i2i_fast: {_ext_error}; CPU/CUDA kernels unavailable, falling back to triton/reference",
        RuntimeWarning,
        stacklevel=2,
    )

# Per thread and per asyncio task, like torch's grad mode: a `with use_backend(...)` in one
# thread must not reroute (or fail) the ops other threads run meanwhile. New threads start
# unforced. The backward of an op runs the backend its forward chose (saved by the op), so the
# autograd engine's worker threads need not see this variable.
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("i2i_fast_backend", default=None)


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend inside a `with` block, in this thread only (None restores the default
    choice)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


# Every op call reads I2I_FAST_BACKEND (it may change at run time). os.environ.get encodes the
# key on each call (~0.8 us, a visible share of a batch-1 loss); CPython's os.environ keeps
# its encoded mapping in _data, which every os.environ / monkeypatch write updates.
_ENV_KEY = "I2I_FAST_BACKEND"
try:
    _ENV_DATA, _ENV_RAW = os.environ._data, os.environ.encodekey(_ENV_KEY)
except AttributeError:  # not CPython's os._Environ
    _ENV_DATA = None


def _env_backend() -> str | None:
    if _ENV_DATA is None:
        return os.environ.get(_ENV_KEY)
    v = _ENV_DATA.get(_ENV_RAW)
    return None if v is None else os.environ.decodevalue(v)


def _forced_name() -> str | None:
    name = _forced.get() or _env_backend() or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"I2I_FAST_BACKEND={name!r} is not one of {BACKENDS}")
    return name


def select(device: torch.device) -> str:
    """The backend an op on `device` runs with."""
    name = _forced_name()
    if name is None:
        if device.type == "cuda":
            if _C is not None and _C.WITH_CUDA:
                return "cuda"
            return "triton" if _triton_error is None else "reference"
        if device.type == "cpu" and _C is not None:
            return "cpu"
        return "reference"
    ok, why = _status()[name]
    if name == "cuda" and device.type != "cuda":
        ok, why = False, f"tensors are on {device}, the cuda backend needs CUDA tensors"
    elif name == "cpu" and device.type != "cpu":
        ok, why = False, f"tensors are on {device}, the cpu backend needs CPU tensors"
    elif name == "triton" and device.type == "cpu" and not triton_interpret():
        ok, why = False, "CPU tensors need TRITON_INTERPRET=1 (set before triton is imported)"
    elif name == "triton" and device.type not in ("cuda", "cpu"):
        ok, why = False, f"triton does not run on {device}"
    if not ok:
        raise RuntimeError(f"i2i_fast backend {name!r} is unavailable: {why}")
    return name
