"""InstanceNorm2d / functional.instance_norm: parity with torch and the float64 reference on
every backend that runs here, gradients, running stats, drop-in compatibility, compile,
determinism and bad input."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as TF
from conftest import HAS_CUDA, assert_parity, cpu_backends, cuda_backends, offset_planes, requires_cuda

import i2i_fast
from i2i_fast import functional as F
from i2i_fast import reference

ACTS = [None, "relu", "leaky_relu", "tanh"]


def torch_chain(x, weight, bias, residual, act, slope=0.2, running=None, use_input_stats=True, pad=0):
    """The unfused original: torch instance norm, then activation, then residual add, then
    CycleGAN's nn.ReflectionPad2d(pad)."""
    rm, rv = running if running is not None else (None, None)
    y = TF.instance_norm(x, rm, rv, weight, bias, use_input_stats=use_input_stats)
    y = {None: lambda t: t, "relu": torch.relu, "tanh": torch.tanh, "leaky_relu": lambda t: TF.leaky_relu(t, slope)}[
        act
    ](y)
    y = y if residual is None else y + residual
    return torch.nn.ReflectionPad2d(pad)(y) if pad else y


def make_inputs(shape, dtype, device, affine, residual, channels_last=False, seed=0, pad=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5 if affine else None
    b = torch.randn(shape[1], generator=g, dtype=torch.float64) if affine else None
    r = torch.randn(shape, generator=g, dtype=torch.float64) if residual else None
    gy = torch.randn(shape[:2] + (shape[2] + 2 * pad, shape[3] + 2 * pad), generator=g, dtype=torch.float64)
    return x, w, b, r, gy


def run_case(fn, x, w, b, r, gy, dtype, device, channels_last=False):
    """Casts the float64 masters to dtype/device, runs fn forward+backward, returns out and grads."""

    def prep(t, layout=False):
        if t is None:
            return None
        t = t.to(device=device, dtype=dtype)
        if layout and channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_()

    xs, ws, bs, rs = prep(x, True), prep(w), prep(b), prep(r, True)
    out = fn(xs, ws, bs, rs)
    out.backward(gy.to(device=device, dtype=dtype))
    grads = [t.grad for t in (xs, ws, bs, rs) if t is not None]
    return out, grads


def check_all(shape, dtype, device, backend, affine, act, residual, channels_last=False, pad=0):
    # the float64 reference sees the inputs the dtype runs see (rounded)
    x, w, b, r, gy = (
        None if t is None else t.to(dtype).double()
        for t in make_inputs(shape, dtype, device, affine, residual, pad=pad)
    )

    def ours(xs, ws, bs, rs):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(xs, weight=ws, bias=bs, activation=act, residual=rs, out_pad=pad)

    def theirs(xs, ws, bs, rs):
        return torch_chain(xs, ws, bs, rs, act, pad=pad)

    def ref(xs, ws, bs, rs):
        return reference.instance_norm_fwd(xs, ws, bs, rs, None, None, 1e-5, reference.ACTIVATIONS[act], 0.2, pad)[0]

    o, go = run_case(ours, x, w, b, r, gy, dtype, device, channels_last)
    t, gt = run_case(theirs, x, w, b, r, gy, dtype, device, channels_last)
    f, gf = run_case(ref, x, w, b, r, gy, torch.float64, "cpu")
    assert o.dtype == dtype and o.shape == gy.shape
    if channels_last:
        assert o.is_contiguous(memory_format=torch.channels_last), "channels_last output lost its layout"
    assert_parity(o, t, f, dtype, f"{backend} out")
    for name, a, bb, c in zip(["x", "weight", "bias", "residual"][: len(go)], go, gt, gf):
        assert_parity(a, bb, c, dtype, f"{backend} grad {name}")


def check_x(x, backend, act="relu"):
    """Forward and input gradient of F.instance_norm on the fp32 tensor x: ours vs float64,
    slack from torch fp32."""
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def ours(xs, ws, bs, rs):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(xs, activation=act)

    def theirs(xs, ws, bs, rs):
        return torch_chain(xs, None, None, None, act)

    results = [
        run_case(fn, x.double(), None, None, None, gy, dt, "cpu")
        for fn, dt in ((ours, x.dtype), (theirs, x.dtype), (theirs, torch.float64))
    ]
    (o, (go,)), (t, (gt,)), (f, (gf,)) = results
    assert_parity(o, t, f, x.dtype, f"{backend} out")
    assert_parity(go, gt, gf, x.dtype, f"{backend} grad x")
    return o, go


# ------------------------------------------------------------------ numerics at the edges
def kernel_backends():
    """cpu_backends() without the last-resort reference backend (fp32 torch ops, not the kernels)."""
    return [b for b in cpu_backends() if b != "reference"]


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("shape, offset", [((2, 3, 6, 6), 1e6), ((1, 2, 64, 64), 1e4)], ids=["6x6+1e6", "64x64+1e4"])
def test_statistics_at_large_offsets(backend, shape, offset):
    """Plane statistics of x + 1e4..1e6 hold the parity rule: they sum x minus a pivot of the
    plane (before: raw fp32 sums, 0.1-0.3 error at 1e6 where torch had 0.04)."""
    check_x(offset_planes(shape, offset), backend)


@pytest.mark.skipif(not i2i_fast.backends()["cpu"][0], reason="extension not built")
def test_cpu_statistics_of_a_large_plane():
    """A 1024x1024 plane (pix2pixHD/SPADE size) with a mean of 100: the block totals are fp64, so
    the error does not grow with the plane (before: 3e-5 where torch had 2.6e-6)."""
    check_x(torch.randn(1, 2, 1024, 1024, generator=torch.Generator().manual_seed(3)) + 100, "cpu")


@pytest.mark.skipif("triton" not in cpu_backends(), reason="needs the Triton interpreter")
def test_triton_statistics_with_gpu_lane_counts(monkeypatch):
    """Programs of 16 lanes on a 128x128 plane: each lane sums 1024 values, as a GPU program's
    1024 lanes do on a 1024x1024 plane. fp64 shifted lane sums hold the rule (before, fp32
    lanes: 1.3e-4 where torch had 1.9e-5)."""
    from i2i_fast.triton import instance_norm as tin

    monkeypatch.setattr(tin, "_block", lambda hw: 16)
    check_x(torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)) + 1e3, "triton", act=None)


@pytest.mark.parametrize("backend", cpu_backends())
def test_eps0_zero_variance_and_denormals(backend):
    """eps = 0 on a constant plane: torch's inverse std is 0 where var + eps == 0, so the output is
    the bias, not NaN; denormal planes (variance underflows to 0) give the bias, not +-Inf."""
    w, b = torch.tensor([2.0, 3.0]), torch.tensor([0.5, -0.25])
    for x in (
        torch.full((2, 2, 3, 3), 7.0),
        torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(2)) * 1e-42,
    ):
        x.requires_grad_()
        with i2i_fast.use_backend(backend):
            y = F.instance_norm(x, weight=w, bias=b, eps=0.0)
        ref = TF.instance_norm(x.detach(), weight=w, bias=b, eps=0.0)
        assert torch.equal(y, ref), f"{backend}: {y.flatten()[:4]} != torch's {ref.flatten()[:4]}"
        y.backward(torch.randn_like(y))
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", cpu_backends())
def test_eval_mode_gradient_with_infinite_input(backend):
    """Eval mode (running statistics): the input gradient is w / sqrt(rv + eps) * dy whatever x
    is, as torch; an infinite x gave NaN (xhat * 0 in the input-statistics formula)."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    x[0, 0, 0, 0], x[1, 2, 3, 1] = float("inf"), float("-inf")
    rm, rv, w, b = torch.zeros(3), torch.full((3,), 4.0), torch.rand(3) + 0.5, torch.randn(3)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    for act, torch_act in ((None, lambda t: t), ("relu", torch.relu)):
        xs, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        with i2i_fast.use_backend(backend):
            y = F.instance_norm(xs, rm, rv, w, b, use_input_stats=False, activation=act)
        yt = torch_act(TF.instance_norm(xt, rm, rv, w, b, use_input_stats=False))
        y.backward(gy), yt.backward(gy)
        torch.testing.assert_close(y, yt)
        torch.testing.assert_close(xs.grad, xt.grad)
    for mod in (i2i_fast.BatchNorm2d(3).eval(), i2i_fast.InstanceNorm2d(3, track_running_stats=True).eval()):
        xs = x.clone().requires_grad_()
        with i2i_fast.use_backend(backend):
            mod(xs).sum().backward()
        assert torch.isfinite(xs.grad).all(), type(mod).__name__


# ------------------------------------------------------------------ parity on CPU tensors
SHAPES = [(2, 3, 5, 7), (1, 1, 1, 7), (3, 2, 5, 3), (1, 4, 13, 11), (2, 5, 63, 65)]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_parity_cpu_shapes(backend, shape, dtype):
    if backend == "triton" and shape[2] * shape[3] > 1000:
        pytest.skip("interpreter: small shapes only")
    check_all(shape, dtype, "cpu", backend, affine=True, act="relu", residual=False)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize(
    "affine,act,residual", [(a, f, r) for a, f, r in itertools.product([False, True], ACTS, [False, True])]
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_parity_cpu_options(backend, affine, act, residual, channels_last):
    check_all((2, 19, 6, 5), torch.float32, "cpu", backend, affine, act, residual, channels_last)


# The output pad (CycleGAN's IN-ReLU-ReflectionPad2d): every option, both layouts, the edge
# geometries (pad = H - 1, W = 2, one row), a plane wider than one 16-channel block.
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize(
    "affine,act,residual",
    [(True, "relu", False), (False, None, True), (True, "leaky_relu", True), (True, "tanh", False)],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "shape,pad",
    [((2, 19, 6, 5), 1), ((1, 3, 4, 2), 1), ((2, 2, 5, 7), 3), ((1, 17, 3, 3), 2)],
    ids=["p1", "w2", "p3", "17c-p2"],
)
def test_parity_cpu_out_pad(backend, affine, act, residual, channels_last, shape, pad):
    check_all(shape, torch.float32, "cpu", backend, affine, act, residual, channels_last, pad)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("running", [False, True], ids=["train", "eval"])
def test_out_pad_fp64_exact_and_one_op(backend, running):
    """float64 against the float64 reference to rounding, and the pad is fused: one i2i_fast op
    each way on the C++ backends (no separate pad, no plane-norm family path)."""
    x, w, b, r, gy = make_inputs((2, 3, 6, 5), torch.float64, "cpu", True, True, pad=2)
    rm, rv = (
        (torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5) if running else (None, None)
    )
    xs, ws, bs, rs = (t.clone().requires_grad_() for t in (x, w, b, r))
    from i2i_fast.bench import counting

    with i2i_fast.use_backend(backend), counting.OpCounter() as fwd:
        y = F.instance_norm(xs, rm, rv, ws, bs, use_input_stats=not running, activation="relu", residual=rs, out_pad=2)
    with counting.OpCounter() as bwd:
        y.backward(gy)
    xr, wr, br, rr = (t.clone().requires_grad_() for t in (x, w, b, r))
    ref = reference.instance_norm_fwd(xr, wr, br, rr, rm, rv, 1e-5, 1, 0.2, 2)[0]
    ref.backward(gy)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    for a, e in ((xs, xr), (ws, wr), (bs, br), (rs, rr)):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-11, atol=1e-11)
    if backend == "cpu":
        assert [k for k in fwd.names if k.startswith("i2i_fast::")] == ["i2i_fast::instance_norm_fwd"], fwd.names
        # the residual's gradient: the pad backward of the incoming gradient
        assert sorted(k for k in bwd.names if k.startswith("i2i_fast::")) == [
            "i2i_fast::instance_norm_bwd",
            "i2i_fast::reflection_pad2d_bwd",
        ], bwd.names


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_parity_cpu_half(dtype, channels_last):
    """fp16/bf16 on CPU: the fp32 kernels on upcast copies, rounded once."""
    # 32 channels: the weight/bias gradients' final rounding to fp16/bf16 is compared over
    # enough elements that torch's own rounding error is representative
    check_all((2, 32, 9, 11), dtype, "cpu", "cpu", True, "tanh", True, channels_last)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_parity_reference_model_shape(backend):
    """CycleGAN's first IN at 256x256 (batch 1, 64 channels)."""
    check_all((1, 64, 256, 256), torch.float32, "cpu", backend, affine=False, act="relu", residual=False)


@pytest.mark.parametrize("backend", cpu_backends())
def test_non_contiguous_view(backend):
    base = torch.randn(2, 6, 9, 10, dtype=torch.float64)
    x = base[:, ::2, 1:8, ::3]  # strided view, neither NCHW nor channels_last contiguous
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    with i2i_fast.use_backend(backend):
        y = F.instance_norm(x, activation="leaky_relu")
    torch.testing.assert_close(y, torch_chain(x, None, None, None, "leaky_relu"))


@pytest.mark.parametrize("backend", cpu_backends())
def test_zero_variance_and_nan(backend):
    x = torch.zeros(1, 2, 4, 4)
    x[0, 1] = 3.0
    with i2i_fast.use_backend(backend):
        y = F.instance_norm(x, weight=torch.ones(2), bias=torch.tensor([0.5, -2.0]))
    assert torch.equal(y[0, 0], torch.full((4, 4), 0.5)) and torch.equal(y[0, 1], torch.full((4, 4), -2.0))
    x[0, 0, 1, 1] = float("nan")
    with i2i_fast.use_backend(backend):
        y = F.instance_norm(x)
    ref = TF.instance_norm(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 5)], ids=["N=0", "H=0"])
def test_empty_input(backend, shape):
    x = torch.randn(shape, requires_grad=True)
    with i2i_fast.use_backend(backend):
        y = F.instance_norm(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    m, t = i2i_fast.InstanceNorm2d(3, track_running_stats=True), torch.nn.InstanceNorm2d(3, track_running_stats=True)
    with i2i_fast.use_backend(backend):
        m(x.detach())
    t(x.detach())
    torch.testing.assert_close(m.running_mean, t.running_mean, equal_nan=True)
    torch.testing.assert_close(m.running_var, t.running_var, equal_nan=True)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck(backend, act):
    shape = (2, 2, 3, 2) if backend == "triton" else (2, 3, 4, 5)  # the interpreter is slow
    g = torch.Generator().manual_seed(11)
    while True:  # seeded, and every pre-activation value away from the relu kink (finite
        # differences step 1e-6 across a kink would fail for reasons of the check, not the op)
        x = torch.randn(shape, dtype=torch.float64, generator=g)
        w = torch.rand(shape[1], dtype=torch.float64, generator=g) + 0.5
        b = torch.randn(shape[1], dtype=torch.float64, generator=g)
        z = TF.instance_norm(x, weight=w, bias=b)
        if act is None or z.abs().min() > 1e-3:
            break
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    r = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, w, b, r):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(x, weight=w, bias=b, activation=act, residual=r)

    torch.autograd.gradcheck(f, (x, w, b, r))
    if act in (None, "tanh"):  # relu kinks make finite differences of 2nd order unreliable
        torch.autograd.gradgradcheck(f, (x, w, b, r))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("running", [False, True], ids=["train", "eval"])
def test_gradcheck_out_pad(backend, running):
    shape = (1, 2, 3, 3) if backend == "triton" else (2, 3, 4, 5)
    g = torch.Generator().manual_seed(5)
    x, r = (torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    w = (torch.rand(shape[1], dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    b = torch.randn(shape[1], dtype=torch.float64, generator=g, requires_grad=True)
    rm, rv = (
        (torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64) + 0.5)
        if running
        else (None, None)
    )

    def f(x, w, b, r):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(
                x, rm, rv, w, b, use_input_stats=not running, activation="tanh", residual=r, out_pad=2
            )

    torch.autograd.gradcheck(f, (x, w, b, r))
    torch.autograd.gradgradcheck(f, (x, w, b, r))


@pytest.mark.parametrize("backend", cpu_backends())
def test_gradcheck_eval_running_stats(backend):
    x = torch.randn((2, 3, 2, 2) if backend == "triton" else (2, 3, 4, 5), dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def f(x, w, b):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(x, rm, rv, w, b, use_input_stats=False, activation="tanh")

    torch.autograd.gradcheck(f, (x, w, b))
    torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("backend", cpu_backends())
def test_create_graph_residual_only(backend):
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    r = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    with i2i_fast.use_backend(backend):
        y = F.instance_norm(x, residual=r)
    (g,) = torch.autograd.grad((y * y).sum(), r, create_graph=True)
    torch.testing.assert_close(g, 2 * y)


def test_wgan_gp_double_backward_through_module():
    """WGAN-GP: gradient of the input-gradient norm through an InstanceNorm (CycleGAN D)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).double()
    ours = torch.nn.Sequential(conv, i2i_fast.InstanceNorm2d(4, affine=True, activation="leaky_relu")).double()
    orig = torch.nn.Sequential(
        copy.deepcopy(conv), torch.nn.InstanceNorm2d(4, affine=True), torch.nn.LeakyReLU(0.2)
    ).double()
    orig[1].load_state_dict(ours[1].state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gps = []
    for m in (ours, orig):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xi).sum(), xi, create_graph=True)
        gp = ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
        m.zero_grad()
        gp.backward()
        gps.append((gp.detach(), [p.grad.clone() for p in m.parameters()]))
    torch.testing.assert_close(gps[0][0], gps[1][0])
    for a, b in zip(gps[0][1], gps[1][1]):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ module drop-in
FLAGS = list(itertools.product([False, True], [False, True]))


@pytest.mark.parametrize("affine,track", FLAGS)
def test_state_dict_interchange(affine, track):
    theirs = torch.nn.InstanceNorm2d(8, affine=affine, track_running_stats=track)
    ours = i2i_fast.InstanceNorm2d(8, affine=affine, track_running_stats=track, activation="relu")
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys())
    if affine:
        with torch.no_grad():
            theirs.weight.uniform_()
            theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())  # strict
    theirs2 = torch.nn.InstanceNorm2d(8, affine=affine, track_running_stats=track)
    theirs2.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("affine,track", FLAGS)
@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
def test_module_train_eval_matches_torch(backend, affine, track, momentum):
    torch.manual_seed(1)
    theirs = torch.nn.InstanceNorm2d(5, momentum=momentum, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.normal_()
    ours = i2i_fast.InstanceNorm2d(5, momentum=momentum, affine=affine, track_running_stats=track)
    ours.load_state_dict(theirs.state_dict())
    with i2i_fast.use_backend(backend):
        for step in range(3):  # train: running stats follow torch's update exactly
            x = torch.randn(3, 5, 6, 7) * (step + 1) + step
            torch.testing.assert_close(ours(x), theirs(x))
            for k, v in theirs.state_dict().items():
                torch.testing.assert_close(ours.state_dict()[k], v, msg=f"buffer {k} at step {step}")
        ours.eval()
        theirs.eval()
        x = torch.randn(2, 5, 4, 4, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        yo, yt = ours(x), theirs(x2)
        torch.testing.assert_close(yo, yt)
        yo.sum().backward()
        yt.sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("backend", cpu_backends())
def test_unbatched_and_residual_module(backend):
    m = i2i_fast.InstanceNorm2d(3, affine=True, activation="relu")
    x, r = torch.randn(3, 5, 6), torch.randn(3, 5, 6)
    with i2i_fast.use_backend(backend):
        y = m(x, residual=r)
    expected = torch.relu(TF.instance_norm(x[None], weight=m.weight, bias=m.bias))[0] + r
    torch.testing.assert_close(y, expected)


def test_module_repr_and_flags():
    m = i2i_fast.InstanceNorm2d(4, activation="leaky_relu", negative_slope=0.1)
    assert "activation='leaky_relu'" in repr(m) and "negative_slope=0.1" in repr(m)
    with pytest.raises(ValueError, match="activation"):
        i2i_fast.InstanceNorm2d(4, activation="gelu")
    with pytest.raises(ValueError, match="eps"):
        i2i_fast.InstanceNorm2d(4, eps=-1.0)


def test_hw1_train_raises_like_torch():
    x = torch.randn(2, 3, 1, 1)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        torch.nn.InstanceNorm2d(3)(x)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        i2i_fast.InstanceNorm2d(3)(x)
    m = i2i_fast.InstanceNorm2d(3, track_running_stats=True).eval()  # eval: running stats, fine
    torch.testing.assert_close(m(x), torch.nn.InstanceNorm2d(3, track_running_stats=True).eval()(x))


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("pad", [0, 3])
def test_bitwise_deterministic(backend, channels_last, pad):
    shape = (3, 20, 17, 9) if backend != "triton" else (2, 5, 6, 7)
    x, w, b, r, gy = make_inputs(shape, torch.float32, "cpu", True, True, pad=pad)

    def fn(xs, ws, bs, rs):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(xs, weight=ws, bias=bs, residual=rs, activation="leaky_relu", out_pad=pad)

    o1, g1 = run_case(fn, x, w, b, r, gy, torch.float32, "cpu", channels_last)
    o2, g2 = run_case(fn, x, w, b, r, gy, torch.float32, "cpu", channels_last)
    assert torch.equal(o1, o2)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)


# ------------------------------------------------------------------ custom-op machinery
def _op_args(dtype=torch.float32, channels_last=False, running=False):
    x = torch.randn(2, 3, 5, 4, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(3, dtype=dtype, requires_grad=True)
    b = torch.randn(3, dtype=dtype, requires_grad=True)
    r = torch.randn(2, 3, 5, 4, dtype=dtype, requires_grad=True)
    rm, rv = (torch.randn(3), torch.rand(3) + 0.5) if running else (None, None)
    return (x.requires_grad_(), w, b, r, rm, rv, 1e-5, 2, 0.2)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("running", [False, True])
def test_opcheck_cpp(channels_last, running):
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    args = _op_args(channels_last=channels_last, running=running)
    torch.library.opcheck(torch.ops.i2i_fast.instance_norm_fwd.default, args)
    x = args[0].detach()
    _, mean, var = torch.ops.i2i_fast.instance_norm_fwd(
        *[a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    )
    torch.library.opcheck(
        torch.ops.i2i_fast.instance_norm_bwd.default,
        (torch.randn_like(x), x, mean, var, args[1].detach(), args[2].detach(), 1e-5, 2, 0.2, not running),
    )
    # without weight and bias: empty (0,) affine gradients, in the fake kernel too
    no_affine = (torch.randn_like(x), x, mean, var, None, None, 1e-5, 2, 0.2, not running)
    torch.library.opcheck(torch.ops.i2i_fast.instance_norm_bwd.default, no_affine)
    gx, gw, gb = torch.ops.i2i_fast.instance_norm_bwd(*no_affine)
    assert gx.shape == x.shape and gw.shape == (0,) and gb.shape == (0,)
    # with the output pad: a padded output (in x's layout), a padded incoming gradient
    torch.library.opcheck(torch.ops.i2i_fast.instance_norm_fwd.default, args + (2,))
    y = torch.ops.i2i_fast.instance_norm_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args], 2)[0]
    assert y.shape == (2, 3, 9, 8) and y.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.library.opcheck(
        torch.ops.i2i_fast.instance_norm_bwd.default,
        (torch.randn_like(y), x, mean, var, args[1].detach(), args[2].detach(), 1e-5, 2, 0.2, not running, 2),
    )


@pytest.mark.skipif("triton" not in cpu_backends() and not HAS_CUDA, reason="triton unavailable")
def test_opcheck_triton():
    dev = "cuda" if HAS_CUDA else "cpu"
    args = tuple(
        a.to(dev).detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in _op_args()
    )
    # Under the CPU interpreter, fake-tensor tracing would hand meta tensors to the interpreter.
    utils = ("test_schema", "test_autograd_registration") + (
        ("test_faketensor", "test_aot_dispatch_dynamic") if HAS_CUDA else ()
    )
    torch.library.opcheck(torch.ops.i2i_fast.triton_instance_norm_fwd.default, args, test_utils=utils)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), i2i_fast.InstanceNorm2d(8, affine=True, track_running_stats=True, activation="relu")
    )
    ref_net = copy.deepcopy(net)
    x = torch.randn(2, 3, 10, 10)
    with i2i_fast.use_backend(backend):
        compiled = torch.compile(net, fullgraph=True)
        y = compiled(x)
        y.sum().backward()
        y_ref = ref_net(x)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    for (k, p), q in zip(net.named_parameters(), ref_net.parameters()):
        # inductor reorders the reference backend's math: allow rounding-level differences
        # (the conv bias gradient is zero up to rounding: IN removes per-channel constants)
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=k)
    torch.testing.assert_close(net[1].running_mean, ref_net[1].running_mean)
    torch.testing.assert_close(net[1].running_var, ref_net[1].running_var)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", cpu_backends())
def test_bad_input(backend):
    x = torch.randn(2, 3, 4, 4)
    with i2i_fast.use_backend(backend):
        with pytest.raises(ValueError, match="4D input"):
            F.instance_norm(torch.randn(3, 4, 4))
        with pytest.raises(ValueError, match="floating point"):
            F.instance_norm(torch.ones(2, 3, 4, 4, dtype=torch.int64))
        with pytest.raises(ValueError, match="floating point"):
            F.instance_norm(torch.ones(2, 3, 4, 4, dtype=torch.bool))
        with pytest.raises(ValueError, match="weight must have 3 elements"):
            F.instance_norm(x, weight=torch.ones(4))
        with pytest.raises(ValueError, match="bias must have 3 elements"):
            F.instance_norm(x, weight=torch.ones(3), bias=torch.ones(2))
        with pytest.raises(ValueError, match="weight must be floating point"):
            F.instance_norm(x, weight=torch.ones(3, dtype=torch.int32))
        with pytest.raises(ValueError, match="eps"):
            F.instance_norm(x, eps=-1e-5)
        with pytest.raises(ValueError, match="activation"):
            F.instance_norm(x, activation="swish")
        with pytest.raises(ValueError, match="residual"):
            F.instance_norm(x, residual=torch.randn(2, 3, 4, 5))
        with pytest.raises(ValueError, match="residual"):
            F.instance_norm(x, residual=torch.randn(2, 3, 4, 4, dtype=torch.float64))
        with pytest.raises(ValueError, match="running_mean and running_var"):
            F.instance_norm(x, running_mean=torch.zeros(3))
        with pytest.raises(ValueError, match="use_input_stats=False"):
            F.instance_norm(x, use_input_stats=False)
        with pytest.raises(TypeError, match="input must be a Tensor"):
            F.instance_norm([[1.0]])
    with pytest.raises(ValueError, match="expected input's size at dim=1"):
        i2i_fast.InstanceNorm2d(4, affine=True)(x)
    with pytest.raises(ValueError, match="expected 3D or 4D input"):
        i2i_fast.InstanceNorm2d(3)(torch.randn(3, 4))


@requires_cuda
def test_device_mismatch():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(ValueError, match="weight is on cpu"):
        F.instance_norm(x, weight=torch.ones(3))
    with pytest.raises(ValueError, match="residual"):
        F.instance_norm(x, residual=torch.randn(2, 3, 4, 4))


def test_cpp_op_checks_its_own_arguments():
    """The raw op (callable without the Python wrapper) rejects bad input instead of crashing."""
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    op = torch.ops.i2i_fast.instance_norm_fwd
    with pytest.raises(RuntimeError, match="rank 4"):
        op(torch.randn(3, 4, 4), None, None, None, None, None, 1e-5, 0, 0.2)
    with pytest.raises(RuntimeError, match="weight must have 3 "):
        op(torch.randn(2, 3, 4, 4), torch.ones(5), None, None, None, None, 1e-5, 0, 0.2)
    with pytest.raises(RuntimeError, match="activation"):
        op(torch.randn(2, 3, 4, 4), None, None, None, None, None, 1e-5, 7, 0.2)
    with pytest.raises(RuntimeError, match="floating point"):
        op(torch.ones(2, 3, 4, 4, dtype=torch.int32), None, None, None, None, None, 1e-5, 0, 0.2)
    with pytest.raises(RuntimeError, match=r"out_pad \(4\) must be smaller"):
        op(torch.randn(2, 3, 4, 6), None, None, None, None, None, 1e-5, 0, 0.2, 4)
    with pytest.raises(RuntimeError, match="out_pad must be >= 0"):
        op(torch.randn(2, 3, 4, 6), None, None, None, None, None, 1e-5, 0, 0.2, -1)
    x = torch.randn(2, 3, 4, 6)
    _, m, v = op(x, None, None, None, None, None, 1e-5, 0, 0.2)
    with pytest.raises(RuntimeError, match="grad must have the output's shape"):  # unpadded grad, pad 1
        torch.ops.i2i_fast.instance_norm_bwd(x, x, m, v, None, None, 1e-5, 0, 0.2, True, 1)


# ------------------------------------------------------------------ backends
def test_backends_report_and_forcing(monkeypatch):
    info = i2i_fast.backends()
    assert set(info) == {"cuda", "triton", "cpu", "reference"}
    assert all(isinstance(ok, bool) and isinstance(why, str) and why for ok, why in info.values())
    assert info["reference"][0]
    x = torch.randn(1, 2, 3, 3)
    if not HAS_CUDA:
        assert not info["cuda"][0]
        monkeypatch.setenv("I2I_FAST_BACKEND", "cuda")
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable"):
            F.instance_norm(x)
    monkeypatch.setenv("I2I_FAST_BACKEND", "reference")
    torch.testing.assert_close(F.instance_norm(x), TF.instance_norm(x))
    monkeypatch.setenv("I2I_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="I2I_FAST_BACKEND"):
        F.instance_norm(x)
    with pytest.raises(ValueError, match="unknown backend"):
        with i2i_fast.use_backend("bogus"):
            pass


def test_use_backend_is_per_thread():
    """Threads forcing different backends at once (and one forcing none): each gets its own
    backend, bitwise its single-threaded result; none sees another's choice."""
    import contextlib
    import threading

    from i2i_fast import _backend

    x = torch.randn(2, 3, 9, 10)
    names = cpu_backends() + [None]
    want = {}
    for b in names:
        with i2i_fast.use_backend(b):
            want[b] = (_backend.select(x.device), F.instance_norm(x, activation="relu"))

    # the Triton interpreter patches module state while it runs: one thread of it (a GPU has no such limit)
    workers = [b for b in names * 2 if b != "triton"] + (["triton"] if "triton" in names else [])
    start = threading.Barrier(len(workers))
    errors = []

    def worker(b):
        start.wait()
        for _ in range(8):
            try:
                with i2i_fast.use_backend(b) if b else contextlib.nullcontext():
                    got = (_backend.select(x.device), F.instance_norm(x, activation="relu"))
            except Exception as e:  # noqa: BLE001 - reported below
                got = (repr(e), None)
            if got[0] != want[b][0] or not torch.equal(got[1], want[b][1]):
                errors.append((b, got[0]))

    threads = [threading.Thread(target=worker, args=(b,)) for b in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len({w[0] for w in want.values()}) >= 2


def test_default_backend_on_cpu():
    from i2i_fast import _backend

    expected = "cpu" if i2i_fast.backends()["cpu"][0] else "reference"
    assert _backend.select(torch.device("cpu")) == expected


# ------------------------------------------------------------------ CUDA (lent GPU only)
@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "shape", [(2, 3, 5, 7), (1, 1, 1, 7), (1, 37, 63, 65), (4, 64, 32, 32), (1, 8, 256, 256), (2, 3, 1023, 3)], ids=str
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_parity_cuda(backend, dtype, shape, channels_last):
    check_all(shape, dtype, "cuda", backend, True, "leaky_relu", True, channels_last)


@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
@pytest.mark.parametrize(
    "affine,act,residual", [(a, f, r) for a, f, r in itertools.product([False, True], ACTS, [False, True])]
)
def test_parity_cuda_options(backend, affine, act, residual):
    check_all((1, 16, 128, 128), torch.float32, "cuda", backend, affine, act, residual)


@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
@pytest.mark.parametrize("shape", [(1, 64, 256, 256), (1, 256, 64, 64), (8, 256, 64, 64)], ids=str)
def test_parity_cuda_reference_shapes(backend, shape):
    check_all(shape, torch.float32, "cuda", backend, False, "relu", False)
    check_all(shape, torch.bfloat16, "cuda", backend, False, "relu", False, channels_last=True)


@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
def test_cuda_deterministic_and_module(backend):
    x, w, b, r, gy = make_inputs((1, 32, 256, 256), torch.float32, "cuda", True, True)

    def fn(xs, ws, bs, rs):
        with i2i_fast.use_backend(backend):
            return F.instance_norm(xs, weight=ws, bias=bs, residual=rs, activation="relu")

    o1, g1 = run_case(fn, x, w, b, r, gy, torch.float32, "cuda")
    o2, g2 = run_case(fn, x, w, b, r, gy, torch.float32, "cuda")
    assert torch.equal(o1, o2) and all(torch.equal(a, c) for a, c in zip(g1, g2))
    theirs = torch.nn.InstanceNorm2d(32, affine=True, track_running_stats=True).cuda()
    ours = i2i_fast.InstanceNorm2d(32, affine=True, track_running_stats=True).cuda()
    ours.load_state_dict(theirs.state_dict())
    xx = torch.randn(2, 32, 16, 16, device="cuda")
    with i2i_fast.use_backend(backend):
        torch.testing.assert_close(ours(xx), theirs(xx))
        torch.testing.assert_close(ours.running_var, theirs.running_var)
        ours.eval(), theirs.eval()
        torch.testing.assert_close(ours(xx), theirs(xx))


@requires_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_cuda_second_device():
    x = torch.randn(2, 3, 8, 8, device="cuda:1")
    torch.testing.assert_close(F.instance_norm(x, activation="relu"), torch.relu(TF.instance_norm(x)))


@requires_cuda
def test_cuda_compile_fullgraph():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), i2i_fast.InstanceNorm2d(8, activation="relu")).cuda()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    y = torch.compile(net, fullgraph=True)(x)
    torch.testing.assert_close(y, torch.relu(TF.instance_norm(net[0](x))))


def test_import_without_extension_falls_back():
    """`import i2i_fast` never fails because the extension is missing: it warns and falls back."""
    import subprocess
    import sys

    code = """
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "i2i_fast._C":
            raise ImportError("simulated: not built")
sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import i2i_fast
import torch
from i2i_fast import functional as F
assert any("i2i_fast._C" in str(x.message) for x in w), [str(x.message) for x in w]
ok, why = i2i_fast.backends()["cpu"]
assert not ok and "not importable" in why, why
x = torch.randn(2, 3, 4, 4)
torch.testing.assert_close(F.instance_norm(x, activation="relu"),
                           torch.relu(torch.nn.functional.instance_norm(x)))
print("fallback ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "fallback ok" in r.stdout, r.stderr[-2000:]
