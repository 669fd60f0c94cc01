"""Builds i2i_fast._C from source: csrc/ always (CPU), kernels/*.cu when torch has CUDA and nvcc
is found. I2I_FAST_CUDA=1 forces the CUDA build (fails loudly if impossible), =0 skips it.

Install with `pip install --no-build-isolation -e .` so the extension is built against the torch
already installed (build isolation would fetch a second torch).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[i2i_fast build] {msg}", file=sys.stderr, flush=True)


def _is_toolkit(root):
    nvcc = os.path.join(root, "bin", "nvcc")
    return os.path.isfile(nvcc) and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def _find_cuda_home():
    """The real toolkit root. The nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc
    running /usr/local/cuda-13.0/bin/nvcc): the root torch would derive from it has no cudart."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env if _is_toolkit(env) else None
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:  # a wrapper script names the real nvcc: ask the compiler itself where it lives
            out = subprocess.run(
                [nvcc, "--dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    candidates.append(os.path.realpath(line.split("TOP=", 1)[1].strip().strip('"')))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if _is_toolkit(c):
            return c
    return None


def _cuda_request():
    v = os.environ.get("I2I_FAST_CUDA", "").strip()
    if v not in ("", "0", "1"):
        raise SystemExit(f"I2I_FAST_CUDA must be 0, 1 or unset, got {v!r}")
    return None if v == "" else v == "1"


forced = _cuda_request()
cuda_home = None
if forced is not False:
    cuda_home = _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = False
if forced is not False:
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU-only build"
    elif cuda_home is None:
        reason = "no CUDA toolkit found (set CUDA_HOME to the toolkit root)"
    if reason and forced:
        raise SystemExit(f"I2I_FAST_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    with_cuda = reason is None
    if reason:
        _log(f"CUDA kernels skipped: {reason}")

if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    # No GPU to ask: build for Hopper (H100/H200) only instead of every arch torch knows.
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
os.environ.setdefault("MAX_JOBS", str(max(1, min(os.cpu_count() or 1, 4))))

# The C++ standard is torch's choice (C++20 from 2.14). The CPU kernels are built for the
# machine that installs them (a source build); I2I_FAST_NATIVE=0 builds portable code.
# -fopenmp: at::parallel_for is inline OpenMP in torch's headers (its CPU backend); without the
# flag every CPU kernel here ran on one thread. Links torch's own libgomp (same soname).
cxx_flags = ["-O3", "-fopenmp"]
link_flags = ["-fopenmp"]
if os.environ.get("I2I_FAST_NATIVE", "1") != "0":
    cxx_flags.append("-march=native")
sources = sorted(glob.glob("csrc/*.cpp"))
if with_cuda:
    sources += sorted(glob.glob("kernels/*.cu"))
    ext = CUDAExtension(
        "i2i_fast._C",
        sources,
        define_macros=[("I2I_FAST_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )
else:
    ext = CppExtension("i2i_fast._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

_log(
    f"torch {torch.__version__}; building backends: cpu"
    + (
        f", cuda (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')})"
        if with_cuda
        else ""
    )
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})
