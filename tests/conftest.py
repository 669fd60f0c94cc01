import os

import pytest

# Without a GPU the Triton backend runs on CPU tensors through the interpreter, which must be
# switched on before triton is first imported.
try:
    import ctypes

    ctypes.CDLL("libcuda.so.1")
    _has_driver = True
except OSError:
    _has_driver = False
if not _has_driver:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import i2i_fast  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
_skip_without_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def requires_cuda(test):
    """A CUDA-only test: skipped without a GPU, and marked `cuda` so that a lent GPU runs just
    these with `pytest -m cuda` (scripts/gpu_validate.sh; the CPU suites are CI's job)."""
    return pytest.mark.cuda(_skip_without_cuda(test))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """CUDA-only tests that skip through their own skipif (reason naming a GPU, e.g. "needs 2
    GPUs") get the `cuda` marker too, before `-m` selects."""
    for item in items:
        if any("GPU" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


# Absolute slack of the parity rule (tests/conftest.py).
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def cpu_backends():
    """Backends that execute on CPU tensors here (triton through the interpreter)."""
    names = [b for b in ("cpu", "reference") if i2i_fast.backends()[b][0]]
    if os.environ.get("TRITON_INTERPRET") == "1" and i2i_fast.backends()["triton"][0]:
        names.insert(1, "triton")
    return names


def cuda_backends():
    return [b for b in ("cuda", "triton") if HAS_CUDA and i2i_fast.backends()[b][0]]


def assert_parity(ours, same, ref64, dtype, what=""):
    """|ours - ref64| <= 2 * |torch_same_dtype - ref64| + atol, as per-tensor maxima."""
    ours, same, ref64 = (t.detach().double().cpu() for t in (ours, same, ref64))
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    nan = torch.isnan(ref64)
    assert torch.equal(torch.isnan(ours), nan), f"{what}: NaN pattern differs from the reference"
    err = (ours - ref64)[~nan].abs().max().item() if (~nan).any() else 0.0
    base = (same - ref64)[~nan].abs().max().item() if (~nan).any() else 0.0
    bound = 2 * base + ATOL[dtype]
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} (torch {dtype} error {base:.3g})"


def offset_planes(shape, offset, seed=0):
    """fp32 x = offset + v, v on a 1/16 grid in +- pairs in every (n, c) plane: each value, each
    plane's mean (exactly `offset`) and variance are exact in fp32 and float64, so torch's error
    is its output rounding alone, while statistics that sum raw fp32 values lose the offset's
    low bits (accumulation error at x + 1e4..1e6 offsets and on large planes)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    v = torch.round(torch.randn(n, c, h * w // 2, generator=g, dtype=torch.float64) * 16) / 16
    v = torch.cat([v, -v, v.new_zeros(n, c, h * w % 2)], 2)[:, :, torch.randperm(h * w, generator=g)]
    return (offset + v).reshape(shape).float()
