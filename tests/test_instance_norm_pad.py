"""The Triton instance-norm ops' output reflection pad (the `pad` argument of
i2i_fast::triton_instance_norm_fwd / _bwd), called directly on small tensors: forward against
reflection_pad2d of the float64 reference, backward against autograd of it, every epilogue
option, both layouts, determinism, opcheck."""

import pytest
import torch
import torch.nn.functional as TF
from conftest import HAS_CUDA, cpu_backends

import i2i_fast
from i2i_fast import reference

if "triton" not in cpu_backends() and not (HAS_CUDA and i2i_fast.backends()["triton"][0]):
    pytest.skip("triton unavailable (needs a GPU or TRITON_INTERPRET=1)", allow_module_level=True)

DEV = "cuda" if HAS_CUDA else "cpu"
SHAPE = (2, 3, 5, 7)
EPS, SLOPE = 1e-5, 0.2
# (act, residual, affine, running): each activation code, residual on/off, no / per-channel /
# per-plane (N*C, AdaIN) affine, input statistics and running statistics (eval)
CASES = [
    (0, False, None, False),
    (1, True, "channel", False),
    (2, True, "plane", True),
    (3, False, "channel", True),
    (2, False, "plane", False),
    (3, True, None, True),
]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _inputs(act, residual, affine, running, channels_last, seed=0):
    """float64 masters: x, weight, bias, residual, running mean / var."""
    g = torch.Generator().manual_seed(seed)
    n, c = SHAPE[:2]
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    k = {None: 0, "channel": c, "plane": n * c}[affine]
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5 if k else None
    b = torch.randn(k, generator=g, dtype=torch.float64) if k else None
    r = torch.randn(SHAPE, generator=g, dtype=torch.float64) if residual else None
    rm, rv = (
        (torch.randn(c, generator=g, dtype=torch.float64), torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
        if running
        else (None, None)
    )
    return x, w, b, r, rm, rv


def _oracle(x, w, b, r, rm, rv, act, pad, gy):
    """float64 forward (reflection_pad2d of the reference) and the autograd (gx, gw, gb)."""
    xs, ws, bs = (None if t is None else t.detach().double().requires_grad_() for t in (x, w, b))
    r, rm, rv = (None if t is None else t.double() for t in (r, rm, rv))
    y = reference.instance_norm_fwd(xs, ws, bs, r, rm, rv, EPS, act, SLOPE)[0]
    y = TF.pad(y, (pad,) * 4, mode="reflect") if pad else y
    ins = [t for t in (xs, ws, bs) if t is not None]
    grads = torch.autograd.grad(y, ins, gy.double())
    return y.detach(), grads


def _run(x, w, b, r, rm, rv, act, pad, gy):
    ops = torch.ops.i2i_fast
    y, mean, var = ops.triton_instance_norm_fwd(x, w, b, r, rm, rv, EPS, act, SLOPE, pad)
    gx, gw, gb = ops.triton_instance_norm_bwd(gy, x, mean, var, w, b, EPS, act, SLOPE, rm is None, pad)
    return y, mean, var, gx, gw, gb


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize(
    "act,residual,affine,running",
    CASES,
    ids=[f"act{a}-{'res' if r else 'nores'}-{f or 'noaff'}-{'eval' if e else 'train'}" for a, r, f, e in CASES],
)
def test_pad_matches_reference(dtype, channels_last, pad, act, residual, affine, running):
    x, w, b, r, rm, rv = (
        None if t is None else t.to(dtype).to(DEV) for t in _inputs(act, residual, affine, running, channels_last)
    )
    n, c, h, wd = SHAPE
    gy = (
        torch.randn((n, c, h + 2 * pad, wd + 2 * pad), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        .to(dtype)
        .to(DEV)
    )
    if channels_last:
        gy = gy.contiguous(memory_format=torch.channels_last)
    y, mean, var, gx, gw, gb = _run(x, w, b, r, rm, rv, act, pad, gy)
    want, wgrads = _oracle(*(None if t is None else t.cpu() for t in (x, w, b, r, rm, rv)), act, pad, gy.cpu())

    assert y.dtype == dtype and y.shape == (n, c, h + 2 * pad, wd + 2 * pad)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(y.cpu().double(), want, **TOL[dtype])
    if running:  # the running statistics, per plane
        torch.testing.assert_close(mean.cpu().double(), rm.cpu().double().expand(n, c), **TOL[dtype])
    else:  # the statistics are x's (unpadded)
        xf = x.cpu().double()
        torch.testing.assert_close(mean.cpu().double(), xf.mean((2, 3)), **TOL[dtype])
        torch.testing.assert_close(var.cpu().double(), xf.var((2, 3), unbiased=False), **TOL[dtype])
    assert gx.shape == x.shape and gx.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    torch.testing.assert_close(gx.cpu().double(), wgrads[0], **TOL[dtype])
    if affine is None:
        assert gw.shape == (0,) and gb.shape == (0,)
    else:
        torch.testing.assert_close(gw.cpu().double(), wgrads[1], **TOL[dtype])
        torch.testing.assert_close(gb.cpu().double(), wgrads[2], **TOL[dtype])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pad_deterministic(channels_last):
    """Two runs are bitwise equal (the backward's mirror gather is a fixed-order sum)."""
    x, w, b, r, rm, rv = (
        None if t is None else t.float().to(DEV) for t in _inputs(2, True, "channel", False, channels_last)
    )
    gy = torch.randn((2, 3, 9, 11), generator=torch.Generator().manual_seed(2)).to(DEV)
    first = _run(x, w, b, r, rm, rv, 2, 2, gy)
    second = _run(x, w, b, r, rm, rv, 2, 2, gy)
    for a, e in zip(first, second):
        assert torch.equal(a, e)


def test_pad_edge_geometry():
    """pad = H - 1 (every mirror source of a short side) on a (1, 2, 3, 4) input, fp64."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64).to(DEV)
    w, b = (torch.rand(2, generator=g, dtype=torch.float64).to(DEV) for _ in range(2))
    gy = torch.randn(1, 2, 7, 8, generator=g, dtype=torch.float64).to(DEV)
    y, _, _, gx, gw, gb = _run(x, w, b, None, None, None, 3, 2, gy)
    want, (ex, ew, eb) = _oracle(x.cpu(), w.cpu(), b.cpu(), None, None, None, 3, 2, gy.cpu())
    for a, e in ((y, want), (gx, ex), (gw, ew), (gb, eb)):
        torch.testing.assert_close(a.cpu(), e, **TOL[torch.float64])


def test_pad_opcheck():
    x, w, b, r, rm, rv = (None if t is None else t.float().to(DEV) for t in _inputs(1, True, "channel", False, True))
    # under the CPU interpreter fake tensors cannot enter the kernels (as test_opcheck_triton)
    utils = ("test_schema", "test_autograd_registration") + (
        ("test_faketensor", "test_aot_dispatch_dynamic") if HAS_CUDA else ()
    )
    ops = torch.ops.i2i_fast
    torch.library.opcheck(
        ops.triton_instance_norm_fwd.default, (x, w, b, r, None, None, EPS, 1, SLOPE, 2), test_utils=utils
    )
    _, mean, var = ops.triton_instance_norm_fwd(x, w, b, r, None, None, EPS, 1, SLOPE, 2)
    gy = torch.randn(2, 3, 9, 11, device=DEV)
    torch.library.opcheck(
        ops.triton_instance_norm_bwd.default, (gy, x, mean, var, w, b, EPS, 1, SLOPE, True, 2), test_utils=utils
    )


def test_pad_bad_input():
    """The raw ops refuse a pad torch's reflection pad refuses (>= H or W, negative)."""
    x = torch.randn(1, 2, 3, 5)
    ops = torch.ops.i2i_fast
    for bad in (3, -1):
        with pytest.raises(ValueError, match="out_pad"):
            ops.triton_instance_norm_fwd(x, None, None, None, None, None, EPS, 0, SLOPE, bad)
    _, mean, var = ops.triton_instance_norm_fwd(x, None, None, None, None, None, EPS, 0, SLOPE, 0)
    with pytest.raises(ValueError, match="out_pad"):
        ops.triton_instance_norm_bwd(torch.randn(1, 2, 9, 11), x, mean, var, None, None, EPS, 0, SLOPE, True, 3)
