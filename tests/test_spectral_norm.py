"""Fused spectral normalization: i2i_fast::spectral_norm_scale (W / sigma, sigma = u . (W v)) on every
backend, and FusedSpectralNorm, the torch.nn.utils.spectral_norm hook that convert() installs
(U-GAT-IT's discriminators): parity with torch in float64 (the parity rule of tests/conftest.py), gradcheck,
double backward, opcheck, determinism, compile, state_dict, bad input."""

import pytest
import torch
from conftest import assert_parity, cpu_backends, requires_cuda
from torch.nn.utils.spectral_norm import SpectralNorm

import i2i_fast
from i2i_fast import functional as F
from i2i_fast.nn import FusedSpectralNorm

SHAPES = [(1, 1), (7, 130), (64, 288)]


def _inputs(o, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, k, generator=g, dtype=torch.float64)
    u = torch.nn.functional.normalize(torch.randn(o, generator=g, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(k, generator=g, dtype=torch.float64), dim=0)
    gy = torch.randn(o, k, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (w, u, v, gy)]  # the float64 reference upcasts these


def _run(fn, w, u, v, gy):
    w = w.clone().requires_grad_()
    out = fn(w, u, v)
    return out, torch.autograd.grad(out, w, gy)[0]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity(shape, dtype, backend):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("interpreter: fp32/fp64")
    w, u, v, gy = _inputs(*shape, dtype)
    ref = _run(lambda w, u, v: w / torch.dot(u, torch.mv(w, v)), *(t.double() for t in (w, u, v, gy)))
    same = _run(lambda w, u, v: w / torch.dot(u, torch.mv(w, v)), w, u, v, gy)
    with i2i_fast.use_backend(backend):
        ours = _run(F.spectral_norm_weight, w, u, v, gy)
    for name, a, b, c in zip(("out", "grad W"), ours, same, ref):
        assert a.dtype == dtype
        assert_parity(a, b, c, dtype, f"{backend} {name}")


@pytest.mark.parametrize("backend", cpu_backends())
def test_gradcheck_and_double_backward(backend):
    w, u, v, _ = _inputs(3, 5, torch.float64, seed=1)
    w.requires_grad_()

    def f(w):
        with i2i_fast.use_backend(backend):
            return F.spectral_norm_weight(w, u, v)

    torch.autograd.gradcheck(f, (w,), fast_mode=backend == "triton")
    torch.autograd.gradgradcheck(f, (w,), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", cpu_backends())
def test_deterministic(backend):
    w, u, v, gy = _inputs(33, 700, torch.float32, seed=2)
    with i2i_fast.use_backend(backend):
        a, b = (_run(F.spectral_norm_weight, w, u, v, gy) for _ in range(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_opcheck_and_sigma():
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    w, u, v, gy = _inputs(6, 10, torch.float32, seed=3)
    out, sigma = torch.ops.i2i_fast.spectral_norm_scale(w, u, v)
    assert sigma.dtype == torch.float32 and sigma.dim() == 0
    torch.testing.assert_close(sigma.double(), torch.dot(u.double(), torch.mv(w.double(), v.double())))
    torch.library.opcheck(torch.ops.i2i_fast.spectral_norm_scale.default, (w.clone().requires_grad_(), u, v))
    torch.library.opcheck(torch.ops.i2i_fast.spectral_norm_scale_bwd.default, (gy, w, u, v, sigma))
    if i2i_fast.backends()["triton"][0]:
        torch.library.opcheck(
            torch.ops.i2i_fast.triton_spectral_norm_scale.default, (w, u, v), test_utils=("test_schema",)
        )


def test_bad_input():
    w, u, v = torch.randn(4, 6), torch.randn(4), torch.randn(6)
    with pytest.raises(ValueError, match="2-D"):
        F.spectral_norm_weight(w.reshape(4, 6, 1), u, v)
    with pytest.raises(ValueError, match="u must have shape"):
        F.spectral_norm_weight(w, torch.randn(5), v)
    with pytest.raises(ValueError, match="must match the weight"):
        F.spectral_norm_weight(w, u.double(), v)
    with pytest.raises(ValueError, match="floating point"):
        F.spectral_norm_weight(w.int(), u, v)
    with pytest.raises(TypeError, match="Tensor"):
        F.spectral_norm_weight(w, None, v)
    if i2i_fast.backends()["cpu"][0]:
        with pytest.raises(RuntimeError, match="v must have K"):
            torch.ops.i2i_fast.spectral_norm_scale(w, u, torch.randn(5))
        with pytest.raises(RuntimeError, match="sigma must have one element"):
            torch.ops.i2i_fast.spectral_norm_scale_bwd(w, w, u, v, torch.ones(0))


def test_hook_keeps_a_channels_last_weight():
    """A channels_last model keeps a channels_last weight (torch's expression is used there)."""
    conv = _sn_conv(128, 64, True).to(memory_format=torch.channels_last)
    ref = _sn_conv(128, 64, False).to(memory_format=torch.channels_last)
    x = torch.randn(1, 128, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-12, atol=1e-12)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == ref.weight.is_contiguous(
        memory_format=torch.channels_last
    )


def _sn_conv(ci, co, fused, seed=4):
    torch.manual_seed(seed)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(ci, co, 4, 2, 1)).double()
    if fused:
        for h in conv._forward_pre_hooks.values():
            h.__class__ = FusedSpectralNorm
    return conv


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("ci,co", [(4, 8), (128, 64)], ids=["torch_path", "fused_path"])  # 512 / 131072 weights
def test_hook_matches_torch_spectral_norm(ci, co, backend):
    """Three training steps then eval: outputs, gradients of weight_orig / bias / input, the
    u / v buffers and the state_dict equal torch's spectral_norm (float64)."""
    if backend == "triton" and ci == 128:
        pytest.skip("interpreter: small shapes only")
    ref, ours = _sn_conv(ci, co, False), _sn_conv(ci, co, True)
    assert isinstance(next(iter(ours._forward_pre_hooks.values())), FusedSpectralNorm)
    for step, mode in enumerate(["train", "train", "train", "eval"]):
        ref.train(mode == "train"), ours.train(mode == "train")
        x = torch.randn(2, ci, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        with i2i_fast.use_backend(backend):
            yo = ours(xo)
        yr = ref(xr)
        torch.testing.assert_close(yo, yr, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(yr)
        go = torch.autograd.grad(yo, [xo, ours.weight_orig, ours.bias], g)
        gr = torch.autograd.grad(yr, [xr, ref.weight_orig, ref.bias], g)
        for a, b in zip(go, gr):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{mode} step {step}: {k}")
    fresh = _sn_conv(ci, co, True, seed=9)
    fresh.load_state_dict(ref.state_dict())  # the state_dict hooks of spectral_norm still work


def test_convert_installs_the_hook_and_compiles():
    from i2i_fast.models import ugatit

    torch.manual_seed(0)
    d = ugatit.Discriminator(3, 4, n_layers=5)
    pl = i2i_fast.plan(d)
    n_sn = sum(isinstance(h, SpectralNorm) for m in d.modules() for h in m._forward_pre_hooks.values())
    assert pl.counts()["spectral_norm"] == n_sn > 0
    c = i2i_fast.convert(d, copy=True)
    hooks = [h for m in c.modules() for h in m._forward_pre_hooks.values()]
    assert all(type(h) is FusedSpectralNorm for h in hooks) and "spectral_norm" not in i2i_fast.plan(c).counts()
    assert list(c.state_dict()) == list(d.state_dict())
    torch._dynamo.reset()
    conv = _sn_conv(128, 64, True).float()
    x = torch.randn(1, 128, 8, 8)
    eager_conv = _sn_conv(128, 64, True).float()
    torch.testing.assert_close(torch.compile(conv, fullgraph=True)(x), eager_conv(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.weight_u, eager_conv.weight_u)


@requires_cuda
def test_cuda_parity():
    for shape in [(1, 1), (64, 288), (512, 4096)]:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            w, u, v, gy = _inputs(*shape, dtype)
            ref = _run(lambda w, u, v: w / torch.dot(u, torch.mv(w, v)), *(t.double() for t in (w, u, v, gy)))
            same = _run(lambda w, u, v: w / torch.dot(u, torch.mv(w, v)), w, u, v, gy)
            with i2i_fast.use_backend("cuda"):
                ours = _run(F.spectral_norm_weight, *(t.cuda() for t in (w, u, v, gy)))
            for name, a, b, c in zip(("out", "grad W"), ours, same, ref):
                assert_parity(a, b, c, dtype, f"cuda {shape} {dtype} {name}")
