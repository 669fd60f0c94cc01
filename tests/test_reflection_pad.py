"""reflection_pad2d and ReflectionPadConv2d / functional.reflection_pad_conv2d:
parity with torch and the float64 reference on every backend that runs here, gradients,
double backward, determinism (also under torch.use_deterministic_algorithms(True)), opcheck,
torch.compile(fullgraph=True), state_dict interchange with nn.Conv2d, bad input."""

import contextlib
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as TF
from conftest import HAS_CUDA, assert_parity, cpu_backends, cuda_backends, requires_cuda

import i2i_fast
from i2i_fast import functional as F
from i2i_fast import reference
from i2i_fast.codes import Activation
from i2i_fast.ops import reflection_pad as pad_ops
from i2i_fast.ops import reflection_pad_conv

HAS_CPP = i2i_fast.backends()["cpu"][0]
requires_cpp = pytest.mark.skipif(not HAS_CPP, reason="extension not built")
CONV_PATHS = ["border", "pad"]


@contextlib.contextmanager
def deterministic_mode():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def _master(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _prep(t, dtype, device="cpu", channels_last=False):
    t = t.to(device=device, dtype=dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


# =================================================================== reflection_pad2d
PAD_CASES = [  # (shape, pad as (left, right, top, bottom))
    ((2, 3, 5, 7), (2, 3, 1, 4)),
    ((1, 1, 1, 7), (6, 0, 0, 0)),  # H = 1: no vertical padding possible
    ((1, 2, 3, 3), (2, 2, 2, 2)),  # every pixel has 3 sources per axis (both mirrors)
    ((3, 4, 13, 11), (1, 1, 1, 1)),
    ((1, 5, 63, 65), (3, 3, 3, 3)),
    ((2, 3, 6, 5), (0, 0, 0, 0)),
]


def _pad_case(backend, shape, pad, dtype, channels_last, seed=0, activation=None, slope=0.0):
    """pad(act(x)) (act: none, or an activation folded into the pad): ours, torch's separate
    activation + F.pad in dtype, the float64 reference; (output, input gradient) each."""
    (x64,) = (_master(shape, seed),)
    out_shape = (shape[0], shape[1], shape[2] + pad[2] + pad[3], shape[3] + pad[0] + pad[1])
    gy64 = _master(out_shape, seed + 1)
    res = {}
    for name, dt in (("ours", dtype), ("torch", dtype), ("ref", torch.float64)):
        x = _prep(x64, dt, channels_last=channels_last)
        if name == "ours":
            with i2i_fast.use_backend(backend):
                kw = {} if activation is None else dict(activation=activation, negative_slope=slope)
                y = F.reflection_pad2d(x, pad, **kw)
        elif name == "torch":
            y = TF.pad(x if activation is None else _torch_act(x, activation, slope), pad, mode="reflect")
        else:
            y = reference.reflection_pad2d_fwd(x, pad, reference.ACTIVATIONS[activation], slope)
        y.backward(gy64.to(dt).contiguous(memory_format=torch.channels_last) if channels_last else gy64.to(dt))
        res[name] = (y, x.grad)
    return res


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape,pad", PAD_CASES, ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pad_parity(backend, shape, pad, dtype):
    if backend == "triton" and shape[2] * shape[3] > 1000:
        pytest.skip("interpreter: small shapes only")
    r = _pad_case(backend, shape, pad, dtype, False)
    (yo, go), (yt, gt), (_, gr) = r["ours"], r["torch"], r["ref"]
    assert yo.dtype == dtype and yo.shape == yt.shape
    assert torch.equal(yo, yt), "forward is a copy: must equal torch exactly"
    assert_parity(go, gt, gr, dtype, f"{backend} grad x")


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_pad_channels_last_and_half(backend, dtype):
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("reference = torch")
    r = _pad_case(backend, (2, 16, 7, 9), (2, 1, 3, 2), dtype, True)
    (yo, go), (yt, gt), (_, gr) = r["ours"], r["torch"], r["ref"]
    assert yo.is_contiguous(memory_format=torch.channels_last), "channels_last output lost its layout"
    assert go.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(yo, yt)
    assert_parity(go, gt, gr, dtype, f"{backend} grad x")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_pad_half_nchw_sums_in_fp32(dtype):
    """fp16/bf16 on CPU: sources summed in fp32, rounded once (torch: per-add rounding)."""
    r = _pad_case("cpu", (2, 3, 9, 8), (3, 3, 3, 3), dtype, False)
    (yo, go), (yt, gt), (_, gr) = r["ours"], r["torch"], r["ref"]
    assert torch.equal(yo, yt)
    assert_parity(go, gt, gr, dtype, "cpu grad x")
    # each pixel's <= 3x3 sources are summed in fp32 (exact here) and rounded once
    gy = _master((2, 3, 15, 14), 1).to(dtype)
    exact = torch.ops.aten.reflection_pad2d_backward(
        gy.double(), torch.empty(2, 3, 9, 8, dtype=torch.float64), [3, 3, 3, 3]
    )
    assert torch.equal(go, exact.to(dtype))


@pytest.mark.parametrize("backend", cpu_backends())
def test_pad_int_pad_unbatched_and_views(backend):
    x = _master((3, 6, 7), 3).requires_grad_()
    with i2i_fast.use_backend(backend):
        y = F.reflection_pad2d(x, 2)
    torch.testing.assert_close(y, TF.pad(x, (2, 2, 2, 2), mode="reflect"), rtol=0, atol=0)
    base = _master((2, 6, 9, 10), 4)
    v = base[:, ::2, 1:8, ::3]  # neither NCHW- nor channels_last-contiguous
    with i2i_fast.use_backend(backend):
        y = F.reflection_pad2d(v, (1, 2, 3, 0))
    assert torch.equal(y, TF.pad(v, (1, 2, 3, 0), mode="reflect"))


@pytest.mark.parametrize("backend", cpu_backends())
def test_pad_gradcheck(backend):
    # the interpreter runs one kernel per gradcheck column: a tiny input there
    x = _master((1, 1, 4, 5) if backend == "triton" else (2, 2, 4, 5), 5).requires_grad_()

    def fn(t):
        with i2i_fast.use_backend(backend):
            return F.reflection_pad2d(t, (3, 2, 1, 3))

    assert torch.autograd.gradcheck(fn, (x,), fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b != "reference"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation", [None, "leaky_relu"], ids=["plain", "lrelu"])
def test_pad_bitwise_deterministic(backend, channels_last, activation):
    shape = (3, 8, 17, 9) if backend != "triton" else (2, 3, 6, 7)
    runs = []
    for _ in range(2):
        with deterministic_mode():
            r = _pad_case(backend, shape, (2, 3, 4, 1), torch.float32, channels_last, activation=activation, slope=0.2)
        runs.append(r["ours"])
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@requires_cpp
def test_pad_backends_agree_bitwise():
    """Every backend sums a pixel's sources in the same order: identical gradients."""
    g = _master((2, 3, 11, 12), 7).float()
    outs = {b: pad_ops.OPS[b].bwd(g, [3, 2, 4, 1]) for b in pad_ops.OPS if b in cpu_backends()}
    first = next(iter(outs.values()))
    for b, o in outs.items():
        assert torch.equal(o, first), b


@requires_cpp
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pad_opcheck_cpp(channels_last):
    x = _master((2, 3, 5, 6), 8).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.i2i_fast.reflection_pad2d_fwd.default, (x.requires_grad_(), [2, 1, 3, 4]))
    g = _master((2, 3, 12, 9), 9).float().requires_grad_()
    torch.library.opcheck(torch.ops.i2i_fast.reflection_pad2d_bwd.default, (g, [2, 1, 3, 4]))


@pytest.mark.skipif("triton" not in cpu_backends() and not HAS_CUDA, reason="triton unavailable")
@pytest.mark.parametrize("act", [Activation.NONE, Activation.LEAKY_RELU], ids=["plain", "lrelu"])
def test_pad_opcheck_triton(act):
    dev = "cuda" if HAS_CUDA else "cpu"
    x = _master((2, 3, 5, 6), 10).float().to(dev).requires_grad_()
    utils = ("test_schema", "test_autograd_registration") + (
        ("test_faketensor", "test_aot_dispatch_dynamic") if HAS_CUDA else ()
    )
    args = (x, [2, 1, 3, 4], int(act), 0.2)
    torch.library.opcheck(torch.ops.i2i_fast.triton_reflection_pad2d_fwd.default, args, test_utils=utils)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_pad_compile_fullgraph(backend):
    if backend == "cpu" and not HAS_CPP:
        pytest.skip("extension not built")
    torch._dynamo.reset()
    x = _master((2, 3, 8, 9), 11).float().requires_grad_()

    def fn(t):
        return F.reflection_pad2d(t * 2, (1, 2, 3, 1)).square().sum()

    with i2i_fast.use_backend(backend):
        out = torch.compile(fn, fullgraph=True)(x)
        out.backward()
        # an input that needs no gradient
        torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x.detach()), out.detach())
    x2 = x.detach().clone().requires_grad_()
    TF.pad(x2 * 2, (1, 2, 3, 1), mode="reflect").square().sum().backward()
    torch.testing.assert_close(out, TF.pad(x.detach() * 2, (1, 2, 3, 1), mode="reflect").square().sum())
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("backend", cpu_backends())
def test_pad_bad_input(backend):
    x = torch.randn(2, 3, 4, 5)
    with i2i_fast.use_backend(backend):
        with pytest.raises(ValueError, match="smaller than the input size"):
            F.reflection_pad2d(x, (5, 0, 0, 0))  # left >= W
        with pytest.raises(ValueError, match="smaller than the input size"):
            F.reflection_pad2d(x, (0, 0, 0, 4))  # bottom >= H
        with pytest.raises(ValueError, match="pad must be >= 0"):
            F.reflection_pad2d(x, (-1, 0, 0, 0))
        with pytest.raises(ValueError, match="4 ints"):
            F.reflection_pad2d(x, (1, 1))
        with pytest.raises(TypeError, match="pad must be an int"):
            F.reflection_pad2d(x, 1.5)
        with pytest.raises(ValueError, match="4D input"):
            F.reflection_pad2d(torch.randn(4, 5), 1)
        with pytest.raises(ValueError, match="floating point"):
            F.reflection_pad2d(torch.ones(2, 3, 4, 5, dtype=torch.int64), 1)
        with pytest.raises(ValueError, match="floating point"):
            F.reflection_pad2d(torch.ones(2, 3, 4, 5, dtype=torch.bool), 1)
        with pytest.raises(TypeError, match="input must be a Tensor"):
            F.reflection_pad2d([[1.0]], 1)


@requires_cpp
def test_pad_cpp_op_checks_its_own_arguments():
    fwd, bwd = torch.ops.i2i_fast.reflection_pad2d_fwd, torch.ops.i2i_fast.reflection_pad2d_bwd
    with pytest.raises(RuntimeError, match="rank 4"):
        fwd(torch.randn(3, 4, 4), [1, 1, 1, 1])
    with pytest.raises(RuntimeError, match="must be < the input width"):
        fwd(torch.randn(1, 1, 4, 4), [4, 0, 0, 0])
    with pytest.raises(RuntimeError, match="must be >= 0"):
        fwd(torch.randn(1, 1, 4, 4), [0, -1, 0, 0])
    with pytest.raises(RuntimeError, match="floating point"):
        fwd(torch.ones(1, 1, 4, 4, dtype=torch.int32), [1, 1, 1, 1])
    with pytest.raises(RuntimeError, match="smaller than pad"):
        bwd(torch.randn(1, 1, 3, 3), [2, 2, 0, 0])


# =================================================================== activation folded into the pad
PAD_ACTS = [("relu", 0.0), ("leaky_relu", 0.2), ("leaky_relu", 0.01)]
ACT_IDS = ["relu", "lrelu0.2", "lrelu0.01"]


def _torch_act(x, activation, slope):
    return torch.relu(x) if activation == "relu" else TF.leaky_relu(x, slope)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("activation,slope", PAD_ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pad_act_parity(backend, activation, slope, dtype, channels_last):
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("reference = torch")
    for shape, pad in [((2, 5, 7, 9), (2, 1, 3, 2)), ((1, 3, 3, 3), (2, 2, 2, 2))]:
        r = _pad_case(backend, shape, pad, dtype, channels_last, activation=activation, slope=slope)
        (yo, go), (yt, gt), (yr, gr) = r["ours"], r["torch"], r["ref"]
        assert yo.dtype == dtype and yo.shape == yt.shape
        if channels_last:
            assert yo.is_contiguous(memory_format=torch.channels_last)
            assert go.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:  # act in fp32, then a copy: torch's values exactly
            assert torch.equal(yo, yt), f"{backend} {activation}: forward differs from torch"
        assert_parity(yo, yt, yr, dtype, f"{backend} {activation} out")
        assert_parity(go, gt, gr, dtype, f"{backend} {activation} grad x")
        assert (yo < 0).any() == (activation == "leaky_relu"), "the activation was not applied"


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("activation,slope", PAD_ACTS[:2], ids=ACT_IDS[:2])
def test_pad_act_float64(backend, activation, slope):
    """float64: torch's values to rounding (the slope is exact in fp64 on every backend)."""
    r = _pad_case(backend, (2, 3, 6, 7), (3, 2, 1, 4), torch.float64, False, activation=activation, slope=slope)
    (yo, go), (yt, gt) = r["ours"], r["torch"]
    assert torch.equal(yo, yt)
    torch.testing.assert_close(go, gt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("activation,slope", PAD_ACTS[:2], ids=ACT_IDS[:2])
def test_pad_act_gradcheck(backend, activation, slope):
    # away from 0, where act' jumps (finite differences would straddle it)
    x = _master((1, 2, 4, 5) if backend == "triton" else (2, 2, 4, 5), 12)
    x = (x + 0.05 * x.sign()).requires_grad_()

    def fn(t):
        with i2i_fast.use_backend(backend):
            return F.reflection_pad2d(t, (3, 2, 1, 3), activation=activation, negative_slope=slope)

    assert torch.autograd.gradcheck(fn, (x,), fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@requires_cpp
def test_pad_act_double_backward_matches_torch():
    """create_graph through the fused op (WGAN-GP through a D whose pads carry the activation):
    the gradient of a gradient norm equals torch's separate leaky_relu + pad."""
    x64 = _master((2, 3, 6, 5), 13)
    outs = []
    for fused in (True, False):
        x = x64.clone().requires_grad_()
        y = (
            F.reflection_pad2d(x, 2, activation="leaky_relu")
            if fused
            else TF.pad(TF.leaky_relu(x, 0.2), (2,) * 4, mode="reflect")
        )
        (g,) = torch.autograd.grad((y * y.cos()).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        outs.append((g.detach(), gg))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-12, atol=1e-12)


@requires_cpp
@pytest.mark.parametrize("act", [Activation.RELU, Activation.LEAKY_RELU], ids=["relu", "lrelu"])
def test_pad_act_backends_agree_bitwise(act):
    """Every backend applies act / act' to the same fp32 values: identical outputs and gradients."""
    x = _master((2, 3, 9, 8), 14).float()
    g = _master((2, 3, 14, 13), 15).float()
    pad = [3, 2, 4, 1]
    outs = {
        b: (pad_ops.OPS[b].fwd(x, pad, int(act), 0.2), pad_ops.OPS[b].bwd(g, pad, x, int(act), 0.2))
        for b in pad_ops.OPS
        if b in cpu_backends()
    }
    first = next(iter(outs.values()))
    for b, (y, gx) in outs.items():
        assert torch.equal(y, first[0]) and torch.equal(gx, first[1]), b


@requires_cpp
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("act", [Activation.RELU, Activation.LEAKY_RELU], ids=["relu", "lrelu"])
def test_pad_act_opcheck_cpp(channels_last, act):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _master((2, 3, 5, 6), 8).float().contiguous(memory_format=fmt)
    pad = [2, 1, 3, 4]
    torch.library.opcheck(torch.ops.i2i_fast.reflection_pad2d_fwd.default, (x.requires_grad_(), pad, int(act), 0.2))
    g = _master((2, 3, 12, 9), 9).float().contiguous(memory_format=fmt).requires_grad_()
    torch.library.opcheck(torch.ops.i2i_fast.reflection_pad2d_bwd.default, (g, pad, x.detach(), int(act), 0.2))


@pytest.mark.parametrize("backend", cpu_backends())
def test_pad_act_bad_input(backend):
    x = torch.randn(2, 3, 4, 5)
    with i2i_fast.use_backend(backend):
        with pytest.raises(ValueError, match="activation must be one of None, 'relu', 'leaky_relu'"):
            F.reflection_pad2d(x, 1, activation="tanh")
        with pytest.raises(ValueError, match="activation must be"):
            F.reflection_pad2d(x, 1, activation="gelu")
    if backend == "reference":
        return
    fwd, bwd = pad_ops.OPS[backend].fwd, pad_ops.OPS[backend].bwd
    g = torch.randn(2, 3, 6, 7)
    for code in (int(Activation.TANH), 7, -1):  # tanh: no second derivative here; unknown codes
        with pytest.raises(RuntimeError, match="act must be Activation.NONE, RELU or LEAKY_RELU"):
            fwd(x, [1, 1, 1, 1], code, 0.0)
        with pytest.raises(RuntimeError, match="act must be Activation.NONE, RELU or LEAKY_RELU"):
            bwd(g, [1, 1, 1, 1], x, code, 0.0)
    with pytest.raises(RuntimeError, match="act needs x"):
        bwd(g, [1, 1, 1, 1], None, int(Activation.RELU), 0.0)
    with pytest.raises(RuntimeError, match="x .*must"):
        bwd(g, [1, 1, 1, 1], torch.randn(2, 3, 4, 4), int(Activation.RELU), 0.0)
    with pytest.raises(RuntimeError, match="x .*must"):
        bwd(g, [1, 1, 1, 1], x.double(), int(Activation.RELU), 0.0)


# =================================================================== ReflectionPadConv2d
# (in, out, kernel, stride, padding, (H, W), bias): the reference models' shapes, small spatial sizes
CONV_CASES = [
    (3, 5, 7, 1, 3, (12, 13), True),  # CycleGAN / U-GAT-IT stem and head
    (4, 4, 3, 1, 1, (9, 10), True),  # ResNet block
    (4, 6, 3, 2, 1, (11, 12), False),  # U-GAT-IT downsampling (stride 2, reflect 1)
    (3, 4, 4, 2, 1, (10, 9), True),  # U-GAT-IT discriminator 4x4 stride 2
    (4, 3, 4, 1, 1, (8, 8), True),  # 4x4 stride 1 (discriminator tail)
    (3, 4, 5, 1, 2, (10, 11), True),  # MUNIT 5x5 upsampling conv
    (2, 3, 3, 1, 2, (7, 6), False),  # padding > kernel // 2
    (2, 3, 7, 2, 3, (5, 6), True),  # border covers everything
    (1, 2, 3, 1, 1, (2, 3), True),  # tiny
]
CONV_IDS = [f"k{k}s{s}p{p}_{h}x{w}{'_b' if b else ''}" for _, _, k, s, p, (h, w), b in CONV_CASES]


def _conv_masters(case, n=2, seed=0):
    cin, cout, k, s, p, (h, w), bias = case
    x = _master((n, cin, h, w), seed)
    wt = _master((cout, cin, k, k), seed + 1) * 0.3
    b = _master((cout,), seed + 2) if bias else None
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gy = _master((n, cout, ho, wo), seed + 3)
    return x, wt, b, gy


def _run_conv(fn, x64, w64, b64, gy64, dtype, device="cpu", channels_last=False):
    x = _prep(x64, dtype, device, channels_last)
    w = _prep(w64, dtype, device)
    b = _prep(b64, dtype, device) if b64 is not None else None
    y = fn(x, w, b)
    y.backward(gy64.to(device=device, dtype=dtype))
    return [y, x.grad, w.grad] + ([b.grad] if b is not None else [])


def _seq_conv(p, s):
    """The unfused original: nn.ReflectionPad2d(p) -> conv2d(padding=0)."""
    return lambda x, w, b: TF.conv2d(TF.pad(x, (p,) * 4, mode="reflect"), w, b, s)


def _check_conv(case, dtype, backend="cpu", path=None, channels_last=False, device="cpu", n=2):
    _, _, k, s, p, _, _ = case
    x, w, b, gy = _conv_masters(case, n)

    def ours(xs, ws, bs):
        with i2i_fast.use_backend(backend), reflection_pad_conv.pad_conv_force(path):
            return F.reflection_pad_conv2d(xs, ws, bs, p, s)

    o = _run_conv(ours, x, w, b, gy, dtype, device, channels_last)
    t = _run_conv(_seq_conv(p, s), x, w, b, gy, dtype, device, channels_last)
    r = _run_conv(_seq_conv(p, s), x, w, b, gy, torch.float64)
    assert o[0].dtype == dtype and o[0].shape == r[0].shape
    if channels_last:
        assert o[0].is_contiguous(memory_format=torch.channels_last)
        assert o[1].is_contiguous(memory_format=torch.channels_last)
    for name, a, bb, c in zip(["out", "grad x", "grad weight", "grad bias"], o, t, r):
        assert_parity(a, bb, c, dtype, f"{backend}/{path} {name}")
    return o


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_parity_fp64_exact_paths(case, path):
    """float64: each path matches the unfused Sequential(ReflectionPad2d, Conv2d) to rounding."""
    _, _, k, s, p, _, _ = case
    x, w, b, gy = _conv_masters(case)

    def ours(xs, ws, bs):
        with reflection_pad_conv.pad_conv_force(path):
            return F.reflection_pad_conv2d(xs, ws, bs, p, s)

    o = _run_conv(ours, x, w, b, gy, torch.float64)
    r = _run_conv(_seq_conv(p, s), x, w, b, gy, torch.float64)
    for name, a, c in zip(["out", "grad x", "grad weight", "grad bias"], o, r):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend,path", [("cpu", "border"), ("cpu", "pad"), ("cpu", None), ("reference", None)])
@pytest.mark.parametrize("case", CONV_CASES[:6], ids=CONV_IDS[:6])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv_parity_fp32(backend, path, case, channels_last):
    if backend == "cpu" and not HAS_CPP:
        pytest.skip("extension not built")
    _check_conv(case, torch.float32, backend, path, channels_last)


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_conv_parity_half_cpu(path, dtype):
    try:
        TF.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 3, 3, dtype=dtype)).sum().item()
    except RuntimeError as e:
        pytest.skip(f"torch has no CPU {dtype} conv here: {e}")
    _check_conv((8, 8, 3, 1, 1, (10, 11), True), dtype, "cpu", path)


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
def test_conv_reference_model_shape(path):
    """The CycleGAN stem at 256x256 (7x7, reflect 3), output channels cut to 8 for speed."""
    _check_conv((3, 8, 7, 1, 3, (256, 256), True), torch.float32, "cpu", path, n=1)


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
def test_conv_gradcheck(path):
    x, w, b, _ = _conv_masters((2, 3, 3, 2, 2, (6, 7), True), n=1)
    args = tuple(t.requires_grad_() for t in (x, w, b))

    def fn(xs, ws, bs):
        with reflection_pad_conv.pad_conv_force(path):
            return F.reflection_pad_conv2d(xs, ws, bs, 2, 2)

    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


def test_conv_same_as_padding_mode_reflect_module():
    torch.manual_seed(0)
    ours = i2i_fast.ReflectionPadConv2d(3, 5, 3, stride=2, padding=1)
    ref = nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode="reflect")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 17, 16)
    torch.testing.assert_close(ours(x), ref(x))
    seq = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 5, 3, stride=2))
    seq[1].load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), seq(x))


@pytest.mark.parametrize("bias", [True, False])
def test_conv_state_dict_interchange(bias):
    ours = i2i_fast.ReflectionPadConv2d(4, 6, 7, padding=3, bias=bias)
    plain = nn.Conv2d(4, 6, 7, bias=bias)
    assert list(ours.state_dict()) == list(plain.state_dict()) == (["weight", "bias"] if bias else ["weight"])
    plain.load_state_dict(ours.state_dict())
    ours2 = i2i_fast.ReflectionPadConv2d(4, 6, 7, padding=3, bias=bias)
    ours2.load_state_dict(plain.state_dict())
    assert torch.equal(ours2.weight, ours.weight)
    # the fused converter's key mapping: Sequential(pad, conv) keys "1.weight" -> "weight"
    seq = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(4, 6, 7, bias=bias))
    ours2.load_state_dict({k.split(".", 1)[1]: v for k, v in seq.state_dict().items()})


def test_conv_module_repr_and_path():
    m = i2i_fast.ReflectionPadConv2d(3, 4, 3, padding=1)
    assert "path=auto" in repr(m)
    m(torch.randn(1, 3, 8, 8))
    expected = "pad" if HAS_CPP else "reference"
    assert m.last_path == expected and f"path={expected}" in repr(m)
    with reflection_pad_conv.pad_conv_force("border"):
        assert m.path_for(torch.randn(1, 3, 8, 8)) == ("border" if HAS_CPP else "reference")
    assert reflection_pad_conv.pad_conv_path(64, 64, 3, 3, 0, 1, "cpu") == "conv"
    m0 = i2i_fast.ReflectionPadConv2d(3, 4, 1)  # padding 0: a plain convolution
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(m0(x), TF.conv2d(x, m0.weight, m0.bias))
    assert m0.last_path == ("conv" if HAS_CPP else "reference")


@requires_cpp
def test_conv_default_path_choice():
    """The default path is the one with the fewest launches ("pad": pad kernel + one conv) on
    every device and size, CUDA included (chooser called with device type "cuda", no GPU
    needed); "border" stays selectable; padding 0 is "conv"; the module reports the path a CUDA
    input takes, for path_for and for last_path / repr."""
    shapes = [
        (64, 64, 3, 3, 1, 1),
        (256, 256, 7, 7, 3, 1),
        (4, 4, 7, 7, 3, 1),
        (64, 64, 3, 3, 1, 2),
        (256, 256, 5, 5, 2, 1),
        (1, 7, 3, 3, 1, 1),
    ]
    for dev in ("cuda", "cpu"):
        for shape in shapes:
            assert reflection_pad_conv.pad_conv_path(*shape, dev) == "pad", (dev, shape)
            with reflection_pad_conv.pad_conv_force("border"):
                assert reflection_pad_conv.pad_conv_path(*shape, dev) == "border", (dev, shape)
            with reflection_pad_conv.pad_conv_force("pad"):
                assert reflection_pad_conv.pad_conv_path(*shape, dev) == "pad", (dev, shape)
        assert reflection_pad_conv.pad_conv_path(64, 64, 3, 3, 0, 1, dev) == "conv"
        with reflection_pad_conv.pad_conv_force("border"):
            assert reflection_pad_conv.pad_conv_path(64, 64, 3, 3, 0, 1, dev) == "conv"
    with pytest.raises(ValueError, match="path must be one of"):
        with reflection_pad_conv.pad_conv_force("strips"):
            pass
    m = i2i_fast.ReflectionPadConv2d(64, 64, 3, padding=1)
    cuda = torch.device("cuda")
    x = torch.empty(1, 64, 64, 64, device="meta")
    assert m.path_for(x, cuda) == "pad"
    with reflection_pad_conv.pad_conv_force("border"):
        assert m.path_for(x, cuda) == "border"
    m.__dict__["_last_input"] = (64, 64, cuda)  # what forward records for a CUDA input
    assert m.last_path == "pad" and "path=pad" in repr(m)


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv_bitwise_deterministic(path, channels_last):
    case = (6, 7, 3, 1, 1, (13, 12), True)
    runs = []
    for _ in range(2):
        with deterministic_mode():
            runs.append(_check_conv(case, torch.float32, "cpu", path, channels_last))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
def test_conv_opcheck(path):
    x, w, b, gy = (t.float() for t in _conv_masters((3, 4, 3, 2, 1, (9, 8), True)))
    with reflection_pad_conv.pad_conv_force(path):
        torch.library.opcheck(
            torch.ops.i2i_fast.reflection_pad_conv2d.default,
            (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1, 2),
        )
        for mask in ([True, True, True], [False, True, False], [True, False, False]):
            torch.library.opcheck(
                torch.ops.i2i_fast.reflection_pad_conv2d_bwd.default, (gy, x.detach(), w.detach(), 1, 2, mask)
            )


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_conv_compile_fullgraph(backend):
    if backend == "cpu" and not HAS_CPP:
        pytest.skip("extension not built")
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(  # the second layer's LeakyReLU runs in its pad op
        i2i_fast.ReflectionPadConv2d(3, 6, 7, padding=3),
        nn.Identity(),
        i2i_fast.ReflectionPadConv2d(6, 4, 3, stride=2, padding=1, activation="leaky_relu", negative_slope=0.2),
    )
    ref = nn.Sequential(
        nn.Conv2d(3, 6, 7, padding=3, padding_mode="reflect"),
        nn.LeakyReLU(0.2),
        nn.Conv2d(6, 4, 3, stride=2, padding=1, padding_mode="reflect"),
    )
    ref.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 12, 11)  # the input needs no gradient, the weights do
    with i2i_fast.use_backend(backend):
        y = torch.compile(net, fullgraph=True)(x)
    y.square().sum().backward()
    yr = ref(x)
    yr.square().sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-5)
    for (k, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=k)


@requires_cpp
def test_conv_unbatched_and_no_grad_inputs():
    m = i2i_fast.ReflectionPadConv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(
        m(x), nn.functional.conv2d(TF.pad(x[None], (1,) * 4, mode="reflect"), m.weight, m.bias)[0]
    )
    xg = torch.randn(1, 2, 6, 5, requires_grad=True)
    with torch.no_grad():
        m.weight.requires_grad_(False)
    y = m(xg)
    y.sum().backward()  # only x needs a gradient
    assert xg.grad is not None and m.weight.grad is None and m.bias.grad is not None


@pytest.mark.parametrize("backend", cpu_backends())
def test_conv_bad_input(backend):
    x = torch.randn(2, 3, 4, 5)
    w = torch.randn(4, 3, 3, 3)
    with i2i_fast.use_backend(backend):
        with pytest.raises(ValueError, match="smaller than the input size"):
            F.reflection_pad_conv2d(x, w, None, 4)  # padding >= H
        with pytest.raises(ValueError, match="4D input"):
            F.reflection_pad_conv2d(torch.randn(3, 4), w, None, 1)
        with pytest.raises(ValueError, match="input must be floating point"):
            F.reflection_pad_conv2d(x.long(), w, None, 1)
        with pytest.raises(ValueError, match="weight .* must match input"):
            F.reflection_pad_conv2d(x, w.double(), None, 1)
        with pytest.raises(ValueError, match="weight must be 4D"):
            F.reflection_pad_conv2d(x, torch.randn(4, 27), None, 1)
        with pytest.raises(ValueError, match="input channels"):
            F.reflection_pad_conv2d(x, torch.randn(4, 2, 3, 3), None, 1)
        with pytest.raises(ValueError, match="bias must have shape"):
            F.reflection_pad_conv2d(x, w, torch.randn(3), 1)
        with pytest.raises(ValueError, match="bias .* must match input"):
            F.reflection_pad_conv2d(x, w, torch.randn(4, dtype=torch.float64), 1)
        with pytest.raises(ValueError, match="stride must be >= 1"):
            F.reflection_pad_conv2d(x, w, None, 1, 0)
        with pytest.raises(ValueError, match="padding must be >= 0"):
            F.reflection_pad_conv2d(x, w, None, -1)
        with pytest.raises(ValueError, match="padding must be one int"):
            F.reflection_pad_conv2d(x, w, None, (1, 2))
        with pytest.raises(ValueError, match="smaller than the kernel"):
            F.reflection_pad_conv2d(x, torch.randn(4, 3, 7, 7), None, 1)
    # the module takes every nn.Conv2d argument (tests/test_dropin_signatures.py): unequal
    # strides run the padded-copy path and say so
    assert "stride=(1, 2)" in i2i_fast.ReflectionPadConv2d(3, 4, 3, stride=(1, 2), padding=1).fallback


# =================================================================== ReflectionPadConv2d(activation=)
def _act_layer(activation, slope):
    return nn.ReLU() if activation == "relu" else nn.LeakyReLU(slope)


@pytest.mark.parametrize(
    "backend,path,want", [("cpu", None, "pad"), ("cpu", "border", "border"), ("reference", None, "reference")]
)
@pytest.mark.parametrize("activation,slope", PAD_ACTS[:2], ids=ACT_IDS[:2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv_activation_matches_act_pad_conv(backend, path, want, activation, slope, dtype, channels_last):
    """ReflectionPadConv2d(activation=) = Sequential(act, ReflectionPad2d, Conv2d): fused on
    path "pad", torch's activation first on the others."""
    if backend == "cpu" and not HAS_CPP:
        pytest.skip("extension not built")
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("reference = torch")
    torch.manual_seed(0)
    ours = i2i_fast.ReflectionPadConv2d(4, 6, 4, 2, 1, activation=activation, negative_slope=slope)
    seq = nn.Sequential(_act_layer(activation, slope), nn.ReflectionPad2d(1), nn.Conv2d(4, 6, 4, 2))
    seq[2].load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(seq[2].state_dict())
    x64, gy64 = _master((2, 4, 10, 9), 20), _master((2, 6, 5, 4), 21)
    res = []
    for m, dt in ((ours, dtype), (seq, dtype), (seq, torch.float64)):
        m = copy.deepcopy(m).to(dt)
        x = _prep(x64, dt, channels_last=channels_last)
        with i2i_fast.use_backend(backend), reflection_pad_conv.pad_conv_force(path):
            y = m(x)
            if isinstance(m, i2i_fast.ReflectionPadConv2d):
                assert m.last_path == want
        y.backward(gy64.to(dt))
        res.append((y, x.grad, (m[2] if isinstance(m, nn.Sequential) else m).weight.grad))
    for k, name in enumerate(["out", "grad x", "grad weight"]):
        assert_parity(res[0][k], res[1][k], res[2][k], dtype, f"{backend}/{path} {activation} {name}")


@requires_cpp
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_conv_activation_runs_in_the_pad_op(activation):
    """Path "pad": forward + backward dispatch the pad ops with the activation and no
    activation op of their own (no relu / leaky_relu, threshold_backward / leaky_relu_backward)."""
    from i2i_fast.bench.counting import OpCounter

    m = i2i_fast.ReflectionPadConv2d(4, 6, 3, padding=1, activation=activation)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with OpCounter() as c:
        m(x).sum().backward()
    assert m.last_path == "pad"
    names = set(c.names)
    assert {"i2i_fast::reflection_pad2d_fwd", "i2i_fast::reflection_pad2d_bwd"} <= names, names
    acts = {n for n in names if any(a in n for a in ("relu", "threshold"))}
    assert not acts, acts
    with OpCounter() as c:  # the same layer without its activation: the check above can fail
        TF.leaky_relu(x) if activation == "leaky_relu" else torch.relu(x)
    assert any("relu" in n for n in c.names)


@requires_cpp
def test_conv_activation_other_paths_and_repr():
    x = _master((2, 4, 9, 9), 22).float()
    for kw, want in (
        (dict(groups=2), "pad"),  # fallback: pad + aten conv, still fused
        (dict(padding_mode="zeros"), "torch"),
        (dict(padding=0), "conv"),
    ):
        torch.manual_seed(0)
        ours = i2i_fast.ReflectionPadConv2d(4, 6, 3, **{"padding": 1, **kw}, activation="leaky_relu")
        plain = copy.deepcopy(ours)
        plain.activation = None
        torch.testing.assert_close(ours(x), plain(TF.leaky_relu(x, 0.2)), rtol=1e-6, atol=1e-6)
        assert ours.last_path == want, (kw, ours.last_path)
    r = repr(i2i_fast.ReflectionPadConv2d(4, 6, 3, padding=1, activation="leaky_relu", negative_slope=0.1))
    assert "activation='leaky_relu', negative_slope=0.1" in r
    with pytest.raises(ValueError, match="activation must be one of None, 'relu', 'leaky_relu'"):
        i2i_fast.ReflectionPadConv2d(4, 6, 3, activation="tanh")
    old = i2i_fast.ReflectionPadConv2d(4, 6, 3, padding=1)
    del old.activation, old.negative_slope  # as a layer pickled before the option existed
    torch.testing.assert_close(old(x), TF.conv2d(TF.pad(x, (1,) * 4, mode="reflect"), old.weight, old.bias))


# =================================================================== CUDA (lent GPU only)
@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pad_parity_cuda(backend, dtype, channels_last):
    for shape, pad in [((2, 16, 7, 9), (2, 1, 3, 2)), ((1, 64, 256, 256), (3, 3, 3, 3)), ((1, 3, 3, 3), (2, 2, 2, 2))]:
        x64 = _master(shape, 0)
        gy64 = _master((shape[0], shape[1], shape[2] + pad[2] + pad[3], shape[3] + pad[0] + pad[1]), 1)
        outs = []
        for dev, dt, impl in (("cuda", dtype, "ours"), ("cuda", dtype, "torch"), ("cpu", torch.float64, "torch")):
            x = _prep(x64, dt, dev, channels_last)
            with i2i_fast.use_backend(backend):
                y = F.reflection_pad2d(x, pad) if impl == "ours" else TF.pad(x, pad, mode="reflect")
            y.backward(gy64.to(device=dev, dtype=dt))
            outs.append((y, x.grad))
        assert torch.equal(outs[0][0], outs[1][0])
        if channels_last:
            assert outs[0][0].is_contiguous(memory_format=torch.channels_last)
        assert_parity(outs[0][1], outs[1][1], outs[2][1], dtype, f"{backend} grad x")


@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
def test_pad_cuda_deterministic_mode(backend):
    """torch's CUDA reflection-pad backward raises under deterministic algorithms; ours runs
    and gives bitwise-identical gradients."""
    x = torch.randn(2, 32, 64, 64, device="cuda", requires_grad=True)
    gy = torch.randn(2, 32, 70, 70, device="cuda")
    grads = []
    with deterministic_mode(), i2i_fast.use_backend(backend):
        for _ in range(2):
            (g,) = torch.autograd.grad(F.reflection_pad2d(x, 3), x, gy)
            grads.append(g)
    assert torch.equal(grads[0], grads[1])


@requires_cuda
@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv_parity_cuda(path, dtype, channels_last):
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 parity vs float64 without TF32 rounding
    try:
        for case in CONV_CASES[:6] + [(64, 64, 3, 1, 1, (64, 64), True), (3, 64, 7, 1, 3, (256, 256), True)]:
            _check_conv(case, dtype, "cuda", path, channels_last, device="cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


@requires_cuda
def test_conv_cuda_deterministic_mode_and_tf32():
    m = i2i_fast.ReflectionPadConv2d(64, 64, 3, padding=1).cuda()
    x = torch.randn(4, 64, 32, 32, device="cuda", requires_grad=True)
    runs = []
    with deterministic_mode():
        for _ in range(2):
            y = m(x)
            runs.append([y] + list(torch.autograd.grad(y.square().sum(), [x, m.weight, m.bias])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert m.last_path == "pad"
    ref = nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect").cuda()
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), ref(x), rtol=2e-3, atol=2e-3)  # TF32 as torch allows it


@requires_cpp
def test_conv_autocast_cpu_bf16():
    """Under autocast the module computes in the autocast dtype, as nn.Conv2d does."""
    torch.manual_seed(0)
    m = i2i_fast.ReflectionPadConv2d(4, 5, 3, padding=1)
    ref = nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 9, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yr = m(x), ref(x)
        y2 = i2i_fast.ReflectionPadConv2d(5, 3, 3, padding=1)(yr)  # bf16 input, fp32 weight
    assert y.dtype == yr.dtype == y2.dtype == torch.bfloat16
    torch.testing.assert_close(y, yr, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert m.weight.grad.dtype == torch.float32


@requires_cpp
@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize(
    "case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[7]], ids=[CONV_IDS[0], CONV_IDS[2], CONV_IDS[7]]
)
def test_conv_raw_op_matches_reference(path, case):
    """The custom op pair itself (the CUDA route; CPU's "pad" path is a composition around it)."""
    _, _, k, s, p, _, bias = case
    x, w, b, gy = _conv_masters(case)
    with reflection_pad_conv.pad_conv_force(path):
        y = torch.ops.i2i_fast.reflection_pad_conv2d(x, w, b, p, s)
        gx, gw, gb = torch.ops.i2i_fast.reflection_pad_conv2d_bwd(gy, x, w, p, s, [True, True, bias])
    r = _run_conv(_seq_conv(p, s), x, w, b, gy, torch.float64)
    for name, a, c in zip(["out", "grad x", "grad weight", "grad bias"], [y, gx, gw] + ([gb] if bias else []), r):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12, msg=name)
    if not bias:
        assert gb.numel() == 0


@requires_cpp
@pytest.mark.parametrize("x_grad", [False, True])
def test_conv_compile_fullgraph_border_op(x_grad):
    """The custom-op route (CUDA's default, forced here on CPU) under torch.compile."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    m = i2i_fast.ReflectionPadConv2d(3, 4, 3, padding=1)
    ref = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 10, 9, requires_grad=x_grad)
    with reflection_pad_conv.pad_conv_force("border"):
        y = torch.compile(m, fullgraph=True)(x)
        y.square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


# =================================================================== border path numerics, cuDNN flag
@requires_cpp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_conv_border_corrections_accumulate_in_fp32(dtype):
    """The border path adds its strip corrections to the weight / input gradients in fp32 and
    rounds once: its half-precision weight-gradient error stays within 2x the padded path's
    (adding in bf16 gave 3.2x on this case)."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(2, 8, 12, 12, generator=g, dtype=torch.float64)
    w64 = torch.randn(16, 8, 3, 3, generator=g, dtype=torch.float64) * 0.3
    gy64 = torch.randn(2, 16, 12, 12, generator=g, dtype=torch.float64)
    grads = {}
    for path, dt in (("border", dtype), ("pad", dtype), ("ref", torch.float64)):
        x = x64.to(dtype).to(dt).requires_grad_()
        w = w64.to(dtype).to(dt).requires_grad_()
        if path == "ref":
            y = TF.conv2d(TF.pad(x, (1,) * 4, mode="reflect"), w)
            y.backward(gy64.to(dtype).to(dt))
        else:
            with reflection_pad_conv.pad_conv_force(path):
                y = F.reflection_pad_conv2d(x, w, None, 1, 1)
                y.backward(gy64.to(dtype))
        grads[path] = (x.grad.double(), w.grad.double())
    for k, name in enumerate(("x", "weight")):
        err = {p: (grads[p][k] - grads["ref"][k]).abs().max().item() for p in ("border", "pad")}
        assert err["border"] <= 2 * err["pad"], f"grad {name}: border {err['border']:.3g} vs pad {err['pad']:.3g}"


def test_cudnn_deterministic_flag_survives_overlapping_calls():
    """The weight gradient's process-wide cuDNN flag: overlapping holders (autograd device
    threads) keep it True until the last leaves, then the caller's value comes back."""
    import threading

    prev = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = False
    try:
        dev = torch.device("cuda")  # the guard acts for CUDA tensors only; no GPU needed
        a, b = reflection_pad_conv._CudnnDeterministic(dev), reflection_pad_conv._CudnnDeterministic(dev)
        a.__enter__()
        b.__enter__()
        a.__exit__(None, None, None)
        assert torch.backends.cudnn.deterministic, "restored while another call still runs"
        b.__exit__(None, None, None)
        assert torch.backends.cudnn.deterministic is False
        seen, go = [], threading.Barrier(4)

        def worker():
            for _ in range(200):
                with reflection_pad_conv._CudnnDeterministic(dev):
                    seen.append(torch.backends.cudnn.deterministic)
            go.wait()

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        go.wait()
        for t in threads:
            t.join()
        assert all(seen) and torch.backends.cudnn.deterministic is False
        with reflection_pad_conv._CudnnDeterministic(torch.device("cpu")):
            assert torch.backends.cudnn.deterministic is False  # CPU convolutions: untouched
    finally:
        torch.backends.cudnn.deterministic = prev
