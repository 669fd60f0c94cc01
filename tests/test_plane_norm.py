"""The fused normalization family (ILN, AdaLIN, MUNIT LayerNorm, AdaIN, training-mode BatchNorm
and InstanceNorm with the output pad) on every CPU-executable backend: parity with the originals' formulas (written out in
test_norms.py) under the parity rule of tests/conftest.py, every epilogue combination, gradients of every
input, opcheck, compile, determinism, saved memory and bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_parity, cpu_backends, cuda_backends, offset_planes, requires_cuda
from test_norms import orig_adain, orig_lin, orig_munit_ln

import i2i_fast
from i2i_fast import functional as F
from i2i_fast.codes import Activation, NormKind

NORMS = ["iln", "adalin", "layer_norm", "adain", "instance_norm", "batch_norm"]
ACTS = {None: lambda z: z, "relu": torch.relu, "leaky_relu": lambda z: TF.leaky_relu(z, 0.2), "tanh": torch.tanh}


def make_params(norm, n, c, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    rho = torch.rand(1, c, 1, 1, generator=g, dtype=dtype)
    if norm == "adalin":
        shape = (n, c)
    elif norm == "adain":
        shape = (n * c,)
    elif norm == "layer_norm":
        shape = (c,)
    else:
        shape = (1, c, 1, 1) if norm == "iln" else (c,)
    gamma = torch.rand(shape, generator=g, dtype=dtype) + 0.5
    beta = torch.randn(shape, generator=g, dtype=dtype)
    return rho, gamma, beta


def ours(norm, x, rho, gamma, beta, act=None, res=None, pad=0):
    kw = dict(activation=act, residual=res, out_pad=pad)
    if norm == "iln":
        return F.iln(x, rho, gamma, beta, **kw)
    if norm == "adalin":
        return F.adalin(x, rho, gamma, beta, **kw)
    if norm == "layer_norm":
        return F.layer_norm(x, gamma, beta, **kw)
    if norm == "adain":
        return F.adain(x, gamma, beta, **kw)
    if norm == "batch_norm":
        return F.batch_norm(x, None, None, gamma, beta, True, **kw)
    return F.instance_norm(x, weight=gamma, bias=beta, **kw)


def original(norm, x, rho, gamma, beta, act=None, res=None, pad=0):
    """The unfused sequence of the original code: norm, activation, residual add, ReflectionPad2d."""
    c = x.shape[1]
    if norm in ("iln", "adalin"):
        y = orig_lin(x, rho, gamma, beta, per_sample=norm == "adalin")
    elif norm == "layer_norm":
        y = orig_munit_ln(x, gamma, beta)
    elif norm == "adain":
        y = orig_adain(x, gamma, beta, x.new_zeros(c), x.new_ones(c))
    elif norm == "batch_norm":
        y = TF.batch_norm(x, None, None, gamma, beta, True)
    else:
        y = TF.instance_norm(x, weight=gamma, bias=beta)
    y = ACTS[act](y)
    if res is not None:
        y = y + res
    return TF.pad(y, (pad,) * 4, mode="reflect") if pad else y


def check(
    norm, backend, shape, dtype, act=None, with_res=False, pad=0, channels_last=False, seed=0, device="cpu", offset=None
):
    """Forward and every gradient: ours(dtype) vs original(float64), slack from original(dtype)."""
    torch.manual_seed(seed)
    n, c = shape[:2]

    # module parameters stay fp32 for half inputs; per-sample ones come from activations
    def param_dtype(dt):
        return dt if dt in (torch.float64, torch.float32) or norm in ("adalin", "adain") else torch.float32

    # the float64 reference sees the inputs the dtype runs see (rounded), so the rule measures
    # the computation's error, not the rounding of the inputs
    x64 = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype).double()
    if offset is not None:  # fp32 planes with exact statistics around a large offset
        x64 = offset_planes(shape, offset, seed).double()
    r64 = torch.randn(shape, dtype=torch.float64).to(dtype).double() if with_res else None
    p64 = tuple(t.to(param_dtype(dtype)).double() for t in make_params(norm, n, c, seed=seed))
    results = {}
    for tag, dt in (("ref", torch.float64), ("same", dtype), ("ours", dtype)):
        dev = "cpu" if tag == "ref" else device
        x = x64.to(device=dev, dtype=dt)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        r = r64.to(device=dev, dtype=dt).requires_grad_() if with_res else None
        pdt = param_dtype(dt)
        rho, gamma, beta = (t.to(device=dev, dtype=pdt).requires_grad_() for t in p64)
        if tag == "ours":
            with i2i_fast.use_backend(backend):
                y = ours(norm, x, rho, gamma, beta, act, r, pad)
        else:  # MUNIT's LayerNorm uses .view: the original code needs a contiguous input
            y = original(norm, x.contiguous() if channels_last else x, rho, gamma, beta, act, r, pad)
        gy = (
            torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
            .to(dtype)
            .to(device=dev, dtype=dt)
        )
        leaves = [t for t in (x, rho, gamma, beta, r) if t is not None]
        grads = torch.autograd.grad(y, leaves, gy, allow_unused=True)
        results[tag] = (y, grads, x)
    y, grads, x = results["ours"]
    if channels_last and pad == 0:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == (n, c, shape[2] + 2 * pad, shape[3] + 2 * pad)
    assert_parity(y, results["same"][0], results["ref"][0], dtype, f"{norm} out")
    names = ["x", "rho", "gamma", "beta", "residual"]
    for name, o, s, r in zip(names, grads, results["same"][1], results["ref"][1]):
        if r is None:  # rho of a norm without rho
            assert o is None or not o.abs().sum(), f"{norm} grad {name}: expected none"
            continue
        assert o is not None, f"{norm} grad {name} missing"
        assert_parity(o, s, r, dtype, f"{norm} grad {name}")


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("with_res", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("norm", NORMS)
def test_epilogue_matrix(norm, act, with_res, pad, backend):
    check(norm, backend, (2, 4, 5, 6), torch.float32, act, with_res, pad)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", [(1, 3, 7, 1), (3, 2, 2, 2), (1, 5, 63, 65), (2, 1, 9, 4)], ids=str)
@pytest.mark.parametrize("norm", ["iln", "adalin", "layer_norm", "batch_norm"])
def test_odd_shapes(norm, shape, backend):
    if backend == "triton" and shape[2] * shape[3] > 1024:
        pytest.skip("interpreter: small shapes only")
    check(norm, backend, shape, torch.float32, "tanh", True, 1 if min(shape[2:]) > 1 else 0)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("norm", NORMS)
def test_channels_last(norm, pad, backend):
    check(norm, backend, (2, 19, 6, 5), torch.float32, "leaky_relu", True, pad, channels_last=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_half_cpu(norm, dtype):
    check(norm, "cpu" if i2i_fast.backends()["cpu"][0] else "reference", (2, 8, 9, 7), dtype, "relu", True, 1)


def test_batch1_large_map_accuracy():
    """(1, 64, 64, 64) U-GAT-IT decoder-like shape: LN statistics merged over planes."""
    for norm in ("adalin", "layer_norm"):
        check(norm, cpu_backends()[0], (1, 64, 64, 64), torch.float32, "relu", False, 1)


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b != "reference"])
@pytest.mark.parametrize("norm", ["layer_norm", "iln", "batch_norm"])
def test_statistics_at_large_offsets(norm, backend):
    """The plane statistics of x + 1e6 sum x minus a pivot of the plane (before: raw
    fp32 sums, several times torch's error)."""
    check(norm, backend, (2, 3, 6, 6), torch.float32, offset=1e6)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("norm", NORMS)
def test_empty_planes_like_original(norm, backend):
    """H = 0: the originals return an empty tensor and zero parameter gradients (ours raised
    on the plane_norm_coefs path: hw must be > 0)."""
    check(norm, backend, (2, 3, 0, 5), torch.float32)


@pytest.mark.skipif("triton" not in cpu_backends(), reason="needs the Triton interpreter")
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_triton_statistics_with_gpu_lane_counts(monkeypatch, split):
    """plane_norm_stats with 16-lane programs on 128x128 planes: 1024 values per lane, as a GPU
    program's 1024 lanes on a 1024x1024 plane; split: chunk partials merged (before, fp32 lanes
    and merges: past the parity bound)."""
    from i2i_fast.triton import instance_norm as tin

    monkeypatch.setattr(tin, "_block", lambda hw: 16)
    monkeypatch.setattr(tin, "MIN_CHUNK", 1024)
    monkeypatch.setattr(tin, "INTERPRETER_SMS", 4 if split else 0)
    x = torch.randn(1, 2, 128, 128, generator=torch.Generator().manual_seed(0)) * 0.01 + 1e3
    mean, var = torch.ops.i2i_fast.triton_plane_norm_stats(x)
    x64 = x.double()
    assert_parity(mean, x.mean((2, 3)), x64.mean((2, 3)), torch.float32, "mean")
    var64 = x64.var((2, 3), unbiased=False)  # relative errors: var is 1e-4 (before: 1.2e-4, torch 1.6e-8)
    assert_parity(var / var64, x.var((2, 3), unbiased=False) / var64, var64 / var64, torch.float32, "var")


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("rho_val", [0.0, 1.0, 0.37])
def test_rho_extremes(backend, rho_val):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 5)
    g, b = torch.rand(2, 3) + 0.5, torch.randn(2, 3)
    rho = torch.full((1, 3, 1, 1), rho_val)
    with i2i_fast.use_backend(backend):
        y = F.adalin(x, rho, g, b)
    e = orig_lin(x.double(), rho.double(), g.double(), b.double(), per_sample=True)
    s = orig_lin(x, rho, g, b, per_sample=True)
    assert_parity(y, s, e, torch.float32, f"adalin rho={rho_val}")


@pytest.mark.parametrize("backend", cpu_backends())
def test_tiny_maps_unbiased(backend):
    """H*W = 1: U-GAT-IT's unbiased IN variance is 0/0 = NaN (as torch.var); MUNIT LN over C*H*W
    = 3 elements is finite. H*W = 2 is where biased and unbiased differ most."""
    x = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    rho, g, b = make_params("iln", 2, 3)
    with i2i_fast.use_backend(backend):
        y = F.iln(x, rho, g, b)
        z = F.layer_norm(x, g.reshape(3), b.reshape(3))
    assert torch.isnan(y).all() and torch.isnan(orig_lin(x, rho, g, b)).all()
    torch.testing.assert_close(z, orig_munit_ln(x, g.reshape(3), b.reshape(3)))
    check("iln", backend, (2, 3, 2, 1), torch.float32, "relu", True, 0)
    check("layer_norm", backend, (1, 1, 1, 2), torch.float32, None, False, 0)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck(norm, backend):
    torch.manual_seed(6)
    # the interpreter runs each Triton launch in Python: a smaller problem and fast mode
    shape = (1, 2, 3, 2) if backend == "triton" else (2, 3, 4, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    r = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    rho, gamma, beta = (t.requires_grad_() for t in make_params(norm, *shape[:2]))

    def f(x, rho, gamma, beta, r):
        with i2i_fast.use_backend(backend):
            return ours(norm, x, rho, gamma, beta, "tanh", r, 1)

    torch.autograd.gradcheck(f, (x, rho, gamma, beta, r), fast_mode=backend == "triton")
    if backend == "cpu" and norm in ("adalin", "layer_norm"):
        # double backward (WGAN-GP through a discriminator): differentiates the reference formula
        torch.autograd.gradgradcheck(f, (x, rho, gamma, beta, r))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("norm", NORMS)
def test_bitwise_deterministic(norm, backend):
    runs = []
    for _ in range(2):
        torch.manual_seed(8)
        x = torch.randn(2, 5, 9, 7, requires_grad=True)
        r = torch.randn(2, 5, 9, 7, requires_grad=True)
        rho, gamma, beta = (t.float().requires_grad_() for t in make_params(norm, 2, 5))
        with i2i_fast.use_backend(backend):
            y = ours(norm, x, rho, gamma, beta, "leaky_relu", r, 2)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(9)))
        runs.append([y] + [t.grad for t in (x, rho, gamma, beta, r)])
    for a, b in zip(*runs):
        assert (a is None and b is None) or torch.equal(a, b)


def test_opcheck_ops():
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    ops = torch.ops.i2i_fast
    x = torch.randn(2, 3, 5, 4)
    mean, var = ops.plane_norm_stats(x)
    torch.testing.assert_close(mean, x.mean((2, 3)))
    torch.testing.assert_close(var, x.var((2, 3), unbiased=False))
    scale, shift = torch.rand(2, 3) + 0.5, torch.randn(2, 3)
    c0, c1 = torch.randn(2, 3), torch.randn(2, 3)
    g = torch.randn(2, 3, 7, 6)
    xl = x.contiguous(memory_format=torch.channels_last)
    for xx in (x, xl):
        torch.library.opcheck(ops.plane_norm_stats.default, (xx,))
        torch.library.opcheck(
            ops.plane_norm_apply.default, (xx, mean, scale, shift, torch.randn_like(xx), Activation.LEAKY_RELU, 0.2, 1)
        )
        torch.library.opcheck(ops.plane_norm_apply_sums.default, (g, xx, mean, scale, shift, Activation.RELU, 0.2, 1))
        torch.library.opcheck(
            ops.plane_norm_apply_bwd.default, (g, xx, mean, scale, shift, c0, c1, Activation.TANH, 0.2, 1)
        )
    for kind, (r, gm, bt) in (
        (NormKind.INSTANCE, (None, torch.rand(3), torch.randn(3))),
        (NormKind.ILN, (torch.rand(3), torch.rand(2, 3), torch.randn(2, 3))),
        (NormKind.LAYER, (None, torch.rand(3), torch.randn(3))),
        (NormKind.BATCH, (None, torch.rand(3), torch.randn(3))),
    ):
        torch.library.opcheck(ops.plane_norm_coefs.default, (mean, var, r, gm, bt, kind, 20, 1e-5))
        torch.library.opcheck(
            ops.plane_norm_coefs_bwd.default, (mean, var, r, gm, bt, torch.randn(2, 3, 2), kind, 20, 1e-5)
        )
    # the family's entry op (C++ autograd node): every kind, with residual / pad / running stats
    for kind, (r, gm, bt) in (
        (NormKind.INSTANCE, (None, torch.rand(3), torch.randn(3))),
        (NormKind.ILN, (torch.rand(3), torch.rand(2, 3), torch.randn(2, 3))),
        (NormKind.LAYER, (None, torch.rand(3), torch.randn(3))),
        (NormKind.BATCH, (None, torch.rand(3), torch.randn(3))),
    ):
        args = [t.requires_grad_() if t is not None else None for t in (x.clone(), r, gm, bt, torch.randn_like(x))]
        torch.library.opcheck(ops.plane_norm.default, (*args, None, None, kind, 1e-5, Activation.LEAKY_RELU, 0.2, 1))
    torch.library.opcheck(
        ops.plane_norm.default,
        (
            x.clone().requires_grad_(),
            None,
            None,
            None,
            None,
            torch.randn(3),
            torch.rand(3) + 0.5,
            NormKind.INSTANCE,
            1e-5,
            Activation.RELU,
            0.0,
            1,
        ),
    )
    if i2i_fast.backends()["triton"][0]:
        schema = ("test_schema",)  # fake tensors can't enter the interpreter
        torch.library.opcheck(
            ops.triton_plane_norm_apply.default, (x, mean, scale, shift, None, 2, 0.2, 1), test_utils=schema
        )
        torch.library.opcheck(
            ops.triton_plane_norm_coefs.default,
            (mean, var, torch.rand(3), torch.rand(2, 3), torch.randn(2, 3), 1, 20, 1e-5),
            test_utils=schema,
        )
        torch.library.opcheck(
            ops.triton_plane_norm_coefs_bwd.default,
            (mean, var, None, torch.rand(3), None, torch.randn(2, 3, 2), 3, 20, 1e-5),
            test_utils=schema,
        )
    with pytest.raises(RuntimeError, match="out_pad"):
        ops.plane_norm_apply(x, mean, scale, shift, None, 0, 0.0, 4)
    with pytest.raises(RuntimeError, match="N\\*C = 6"):
        ops.plane_norm_apply(x, mean[:1], scale, shift, None, 0, 0.0, 0)
    with pytest.raises(RuntimeError, match="grad must have the output's shape"):
        ops.plane_norm_apply_sums(x, x, mean, scale, shift, 0, 0.0, 1)


def test_saved_for_backward_is_x_plus_stats():
    """Memory: the autograd graph keeps x and (N, C) statistics/coefficients, nothing as large
    as the output or an intermediate."""
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    rho, g, b = (t.float().requires_grad_() for t in make_params("adalin", 2, 8))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with i2i_fast.use_backend("cpu"):
            F.adalin(x, rho, g, b, activation="relu", out_pad=1)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0] is x
    assert sum(t.numel() for t in saved if t is not x) <= 8 * 2 * 8


def test_modules_out_pad_and_compile():
    torch._dynamo.reset()
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        i2i_fast.ILN(4, activation="relu", out_pad=1),
        torch.nn.Conv2d(4, 4, 3),
        i2i_fast.LayerNorm(4, out_pad=2),
        i2i_fast.InstanceNorm2d(4, affine=True, activation="tanh", out_pad=1),
    )
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    assert "out_pad=1" in repr(m[1]) and "out_pad=2" in repr(m[3])
    y = m(x)
    yc = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(yc, y, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(y.sum(), x)[0]
    g2 = torch.autograd.grad(yc.sum(), x)[0]
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_instance_norm_out_pad_running_stats():
    """StarGAN-style IN (affine, running stats) with an output pad: train updates the buffers as
    torch does, eval uses them."""
    torch.manual_seed(10)
    ours_m = i2i_fast.InstanceNorm2d(3, affine=True, track_running_stats=True, out_pad=1)
    ref_m = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(ours_m(x), TF.pad(ref_m(x), (1,) * 4, mode="reflect"))
    torch.testing.assert_close(ours_m.running_mean, ref_m.running_mean)
    torch.testing.assert_close(ours_m.running_var, ref_m.running_var)
    ours_m.eval(), ref_m.eval()
    xe = torch.randn(2, 3, 6, 5, requires_grad=True)
    xe2 = xe.detach().clone().requires_grad_()
    y, e = ours_m(xe), TF.pad(ref_m(xe2), (1,) * 4, mode="reflect")
    torch.testing.assert_close(y, e)
    gy = torch.randn_like(y)
    y.backward(gy), e.backward(gy)
    torch.testing.assert_close(xe.grad, xe2.grad)
    torch.testing.assert_close(ours_m.weight.grad, ref_m.weight.grad)


def test_bad_out_pad():
    x = torch.randn(2, 3, 4, 6)
    rho, g, b = make_params("iln", 2, 3, torch.float32)
    with pytest.raises(ValueError, match="out_pad"):
        F.iln(x, rho, g, b, out_pad=4)
    with pytest.raises(ValueError, match="out_pad"):
        F.layer_norm(x, out_pad=-1)
    with pytest.raises(ValueError, match="out_pad"):
        F.instance_norm(x, out_pad=True)
    with pytest.raises(ValueError, match="out_pad"):
        i2i_fast.AdaLIN(3, out_pad=1.5)
    with pytest.raises(ValueError, match="residual"):
        F.adalin(x, rho, torch.ones(2, 3), torch.zeros(2, 3), residual=torch.randn(2, 3, 4, 5))


# ---- CUDA (skip without a GPU; run by scripts/gpu_validate.sh on a lent one) ----
@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends() or ["cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 256, 64, 64), (2, 64, 33, 31), (1, 16, 256, 256), (3, 5, 7, 1)], ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_parity(norm, shape, dtype, backend):
    if not i2i_fast.backends()[backend][0]:
        pytest.skip(i2i_fast.backends()[backend][1])
    pad = 1 if min(shape[2:]) > 1 else 0
    check(norm, backend, shape, dtype, "leaky_relu", True, pad, device="cuda")
    check(norm, backend, shape, dtype, None, False, 0, channels_last=True, device="cuda")


@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends() or ["cuda"])
@pytest.mark.parametrize("norm", ["adalin", "layer_norm"])
def test_cuda_deterministic(norm, backend):
    if not i2i_fast.backends()[backend][0]:
        pytest.skip(i2i_fast.backends()[backend][1])
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        x = torch.randn(1, 64, 128, 128, device="cuda", requires_grad=True)
        rho, gamma, beta = (t.float().cuda().requires_grad_() for t in make_params(norm, 1, 64))
        with i2i_fast.use_backend(backend):
            y = ours(norm, x, rho, gamma, beta, "relu", None, 1)
        y.backward(torch.ones_like(y))
        runs.append([y, x.grad, gamma.grad, beta.grad])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_coefficients_match_python(norm, dtype):
    """The CPU extension's plane_norm_coefs / plane_norm_coefs_bwd (fp64 loops, fp32 or fp64 statistics in
    and out) and plane_norm_ops.coefs / coefs_backward (torch ops in fp64, used by the other backends)
    are the same math; absent parameters get empty gradients."""
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    from i2i_fast.ops import plane_norm as plane_norm_ops

    kind = {
        "iln": NormKind.ILN,
        "adalin": NormKind.ILN,
        "layer_norm": NormKind.LAYER,
        "batch_norm": NormKind.BATCH,
    }.get(norm, NormKind.INSTANCE)
    torch.manual_seed(12)
    n, c, hw = 3, 5, 7
    mean, var = torch.randn(n, c, dtype=torch.float64), torch.rand(n, c, dtype=torch.float64) + 0.1
    rho, gamma, beta = make_params(norm, n, c)
    rho = rho if kind == NormKind.ILN else None
    sums = torch.randn(n, c, 2, dtype=torch.float64)
    ops = torch.ops.i2i_fast
    low = [None if t is None else t.to(dtype) for t in (mean, var, rho, gamma, beta, sums)]
    mean, var, rho, gamma, beta, sums = [None if t is None else t.double() for t in low]

    def close(got, want):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)

    scale, shift = ops.plane_norm_coefs(*low[:5], kind, hw, 1e-5)
    ps, pt, aux = plane_norm_ops.coefs(kind, mean, var, hw, rho, gamma, beta, 1e-5)
    close(scale, ps)
    close(shift, pt)
    c0, c1, drho, dg, db = ops.plane_norm_coefs_bwd(*low[:5], low[5], kind, hw, 1e-5)
    dm, dv, pr, pg, pb = plane_norm_ops.coefs_backward(
        kind, mean, var, hw, rho, gamma, beta, 1e-5, ps, aux, sums[..., 0], sums[..., 1]
    )
    close(c0, dm / hw)
    close(c1, dv * 2 / hw)
    for got, d, p in ((drho, pr, rho), (dg, pg, gamma), (db, pb, beta)):
        if p is None:
            assert got.numel() == 0
        else:
            close(got, plane_norm_ops._param_grad(d, p).reshape(-1))


@pytest.mark.parametrize("backend", cpu_backends())
def test_residual_grad_ignores_x(backend):
    """The residual's gradient is the folded output gradient: a NaN in x must not leak into it."""
    x = torch.randn(1, 2, 5, 4)
    x[0, 0, 2, 2] = float("nan")
    x.requires_grad_()
    r = torch.randn(1, 2, 5, 4, requires_grad=True)
    rho, g, b = (t.float() for t in make_params("iln", 1, 2))
    with i2i_fast.use_backend(backend):
        y = F.iln(x, rho, g, b, residual=r, out_pad=1)
    gy = torch.randn_like(y)
    (gr,) = torch.autograd.grad(y, [r], gy)
    torch.testing.assert_close(gr, torch.ops.aten.reflection_pad2d_backward(gy, r, [1, 1, 1, 1]))


@pytest.mark.parametrize("prefix, error", [("", RuntimeError), ("triton_", ValueError)], ids=["cpu", "triton"])
def test_coefs_bad_input(prefix, error):
    """The C++ plane_norm_coefs ops and their Triton twins refuse the same bad arguments."""
    if not i2i_fast.backends()["triton" if prefix else "cpu"][0]:
        pytest.skip("backend not available")
    ops = torch.ops.i2i_fast
    coefs, coefs_bwd = getattr(ops, prefix + "plane_norm_coefs"), getattr(ops, prefix + "plane_norm_coefs_bwd")
    mean, var = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(error, match="unknown kind"):
        coefs(mean, var, None, None, None, 4, 4, 1e-5)
    with pytest.raises(error, match="hw must be > 0"):
        coefs(mean, var, None, None, None, 0, 0, 1e-5)
    with pytest.raises(error, match="rho must have C elements"):
        coefs(mean, var, None, None, None, 1, 4, 1e-5)
    with pytest.raises(error, match="gamma/beta must have C or N\\*C elements"):
        coefs(mean, var, None, torch.ones(4), None, 0, 4, 1e-5)
    with pytest.raises(error, match="per-channel gamma/beta"):
        coefs(mean, var, None, torch.ones(2, 3), None, 3, 4, 1e-5)
    with pytest.raises(error, match="mean and var must be"):
        coefs(mean, var[:1], None, None, None, 0, 4, 1e-5)
    with pytest.raises(error, match="sums must be"):
        coefs_bwd(mean, var, None, None, None, torch.zeros(2, 3), 0, 4, 1e-5)
    if not prefix:
        from i2i_fast.ops import plane_norm as plane_norm_ops

        with pytest.raises(ValueError, match="per-channel gamma/beta"):
            plane_norm_ops.coefs(NormKind.BATCH, mean, var, 4, None, torch.ones(2, 3), None, 1e-5)


def _triton_and_cpu():
    if not (i2i_fast.backends()["triton"][0] and i2i_fast.backends()["cpu"][0]):
        pytest.skip("needs the triton backend (interpreter) and the CPU extension")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("kind", list(NormKind), ids=["in", "lin", "ln", "bn"])
def test_triton_coefficients_match_cpu(kind, dtype):
    """triton_plane_norm_coefs / _bwd (every plane in one program, tile reductions over channels or
    samples) and the CPU extension's fp64 loops are the same math: every parameter layout,
    single-plane / single-channel / single-sample tiles, and hw = 1 (the unbiased variances
    are NaN there, as torch.var's)."""
    _triton_and_cpu()
    ops = torch.ops.i2i_fast
    g = torch.Generator().manual_seed(kind)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for (n, c), hw, layout in itertools.product([(1, 1), (1, 5), (2, 1), (3, 7), (5, 3)], [1, 9], ["none", "c", "nc"]):
        if (kind == NormKind.BATCH and layout == "nc") or (kind == NormKind.ILN and layout == "none"):
            continue  # batch norm: per-channel affine only; ILN/adaILN always have gamma/beta

        def rnd(*shape, pos=False):
            t = (
                torch.rand(shape, generator=g, dtype=torch.float64) + 0.1
                if pos
                else torch.randn(shape, generator=g, dtype=torch.float64)
            )
            return t.to(dtype)

        mean, var, sums = rnd(n, c), rnd(n, c, pos=True), rnd(n, c, 2)
        rho = rnd(c, pos=True).clamp(max=1) if kind == NormKind.ILN else None
        shape = {"none": None, "c": (c,), "nc": (n * c,)}[layout]
        gamma, beta = (None, None) if shape is None else (rnd(*shape, pos=True), rnd(*shape))
        args = (mean, var, rho, gamma, beta)
        want = ops.plane_norm_coefs(*args, kind, hw, 1e-5) + ops.plane_norm_coefs_bwd(*args, sums, kind, hw, 1e-5)
        got = ops.triton_plane_norm_coefs(*args, kind, hw, 1e-5) + ops.triton_plane_norm_coefs_bwd(
            *args, sums, kind, hw, 1e-5
        )
        names = ["scale", "shift", "c0", "c1", "drho", "dgamma", "dbeta"]
        for name, w, o in zip(names, want, got):
            what = f"{name} kind={kind} n={n} c={c} hw={hw} {layout}"
            assert o.dtype == w.dtype and o.shape == w.shape, what
            torch.testing.assert_close(o, w, equal_nan=True, msg=what, **tol)


@pytest.mark.parametrize("norm", ["adalin", "layer_norm", "batch_norm"])
def test_triton_large_tile_fallback(norm, monkeypatch):
    """Past COEF_TILE_MAX (padded N x C) the Triton path keeps the torch-op coefficient math of
    plane_norm_ops.coefs: the same results (the parity rule of tests/conftest.py)."""
    if "triton" not in cpu_backends():
        pytest.skip("needs the triton backend under TRITON_INTERPRET=1")
    from i2i_fast.triton import plane_norm as tn

    monkeypatch.setattr(tn, "COEF_TILE_MAX", 1)
    assert not tn.coefs_fit(2, 3)
    check(norm, "triton", (2, 3, 5, 4), torch.float64, act="relu", with_res=True, pad=1)


@pytest.mark.parametrize("norm", NORMS)
def test_triton_split_planes(norm, monkeypatch):
    """Few large planes (batch 1 on a GPU): S programs per plane, chunk partials merged in chunk
    order (uneven last chunk here): the results the rule demands. The instance norm's own
    kernels split too (instance norm, AdaIN, eval and batch-1 batch norm run them on every
    plane size): their partial kernels run with S = 2. Empty batches stay empty. (Determinism
    is by construction, fixed merge order and no atomics: the interpreter runs programs one
    after another, so a repeat-and-compare here could not fail.)"""
    if "triton" not in cpu_backends():
        pytest.skip("needs the triton backend under TRITON_INTERPRET=1")
    from i2i_fast.triton import instance_norm as tin

    monkeypatch.setattr(tin, "INTERPRETER_SMS", 8)
    monkeypatch.setattr(tin, "MIN_CHUNK", 16)
    assert tin.plane_grid(6, 35, torch.device("cpu"))[:2] == (2, 32)
    assert tin.plane_grid(3, 35, torch.device("cpu"))[:2] == (2, 32)
    grids = []
    for k in (tin.instance_norm_stats_kernel, tin.instance_norm_bwd_sums_kernel):

        def spy(*args, grid, run=k.run, name=k.fn.__name__, **kw):
            grids.append((name, tuple(grid)))
            return run(*args, grid=grid, **kw)

        monkeypatch.setattr(k, "run", spy)
    # batch norm: batch 1 is the shape that takes the instance norm's kernels
    shape = (1, 3, 7, 5) if norm == "batch_norm" else (2, 3, 7, 5)
    check(norm, "triton", shape, torch.float64, act="leaky_relu", with_res=True, pad=1)
    check(norm, "triton", shape, torch.float32, act="relu", channels_last=True)
    planes = shape[0] * shape[1]
    if norm in ("instance_norm", "adain", "batch_norm"):
        assert sorted(set(grids)) == [
            ("instance_norm_bwd_sums_kernel", (planes, 2)),
            ("instance_norm_stats_kernel", (planes, 2)),
        ]
    else:
        assert not grids
    if norm == "batch_norm":  # eval: the running statistics, the chunked input gradient
        x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
        rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
        w, b = (
            torch.rand(3, dtype=torch.float64, requires_grad=True),
            torch.randn(3, dtype=torch.float64, requires_grad=True),
        )
        gy = torch.randn(2, 3, 9, 7, dtype=torch.float64)
        with i2i_fast.use_backend("triton"):
            y = F.batch_norm(x, rm, rv, w, b, False, activation="tanh", out_pad=1)
        want = TF.pad(torch.tanh(TF.batch_norm(x, rm, rv, w, b, False)), (1,) * 4, mode="reflect")
        for o, r in zip(
            (y,) + torch.autograd.grad(y, (x, w, b), gy), (want,) + torch.autograd.grad(want, (x, w, b), gy)
        ):
            torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
        assert ("instance_norm_bwd_sums_kernel", (6, 2)) in grids
    if norm in ("instance_norm", "layer_norm"):
        with i2i_fast.use_backend("triton"):
            for shape in ((0, 3, 8, 8), (2, 0, 8, 8)):
                assert ours(norm, torch.randn(shape), None, None, None).shape == shape


def test_triton_norm_is_three_ops_each_way():
    """Forward stats -> coefs -> apply, backward sums -> coefs_bwd -> apply_bwd: the (N, C) math
    is one op (one GPU launch), not the ~25 (forward) / ~90 (backward) small torch ops it was."""
    if "triton" not in cpu_backends():
        pytest.skip("needs the triton backend under TRITON_INTERPRET=1")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.name()
            if not (name.startswith("aten::") and (func.is_view or name == "aten::detach")):
                self.names.append(name.split("::")[1].split(".")[0])
            return func(*args, **(kwargs or {}))

    for norm in ("iln", "adalin", "layer_norm", "batch_norm"):
        x = torch.randn(2, 4, 5, 3, requires_grad=True)
        rho, gamma, beta = (t.float().requires_grad_() for t in make_params(norm, 2, 4))
        gy = torch.randn(2, 4, 7, 5)
        with i2i_fast.use_backend("triton"):
            with Ops() as fwd:
                y = ours(norm, x, rho, gamma, beta, "relu", None, 1)
            with Ops() as bwd:
                torch.autograd.grad(y, [x, gamma, beta], gy, allow_unused=True)
        assert fwd.names == ["triton_plane_norm_stats", "triton_plane_norm_coefs", "triton_plane_norm_apply"], (
            norm,
            fwd.names,
        )
        assert bwd.names == [
            "triton_plane_norm_apply_sums",
            "triton_plane_norm_coefs_bwd",
            "triton_plane_norm_apply_bwd",
        ], (norm, bwd.names)


@pytest.mark.skipif(not i2i_fast.backends()["cpu"][0], reason="extension not built")
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_result_independent_of_thread_count(channels_last):
    """The CPU kernels run on OpenMP threads; every reduction has a fixed order per plane (or
    chunk), so 1 and 2 threads give bitwise equal outputs and gradients (norms, pad, loss)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 48, 33, 31, generator=gen).contiguous(memory_format=fmt)
    g0 = torch.randn(2, 48, 35, 33, generator=gen)
    gamma0, beta0 = torch.rand(2, 48, generator=gen), torch.randn(2, 48, generator=gen)
    p0 = [torch.randn(1, 1, 30, 30, generator=gen), torch.randn(3, 70000, generator=gen)]

    def run():
        x = x0.clone().requires_grad_()
        ada = i2i_fast.AdaLIN(48, out_pad=1)
        inn = i2i_fast.InstanceNorm2d(48, affine=True, activation="relu")
        ps = [p.clone().requires_grad_() for p in p0]
        y = ada(x, gamma0, beta0)
        z = inn(x)
        pad = F.reflection_pad2d(x, 1)
        loss = F.gan_loss(ps, [True, False], "lsgan")
        torch.autograd.backward([y, z, pad, loss], [g0, torch.ones_like(z), g0, torch.ones(())])
        return [y, z, pad, loss, x.grad, ada.rho.grad] + [p.grad for p in ps]

    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.skipif(not i2i_fast.backends()["cpu"][0], reason="extension not built")
@pytest.mark.parametrize("norm", ["iln", "instance_norm"])
def test_cpu_channels_last_large_plane_accuracy(norm):
    """A 256x256 channels_last plane: the CPU kernels sum 32-row blocks per channel there, so
    their block totals are fp64 (in fp32 the rho gradient missed the parity bound)."""
    check(norm, "cpu", (1, 16, 256, 256), torch.float32, channels_last=True)


# ------------------------------------------------------------------ BatchNorm2d (pix2pix)
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize(
    "cfg",
    [dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False), dict(residual=True)],
    ids=["default", "momentum_none", "no_affine", "no_running", "residual"],
)
@pytest.mark.parametrize("n", [3, 1], ids=["batch3", "batch1"])
def test_batch_norm_module_matches_torch(cfg, backend, n):
    """i2i_fast.BatchNorm2d vs torch.nn.BatchNorm2d in float64: two training steps (outputs,
    gradients, running_mean/var, num_batches_tracked), then eval; the state_dicts interchange.
    Batch 1 takes the fused instance-norm op (a channel's batch statistics are its one plane's)."""
    cfg = dict(cfg)
    with_res = cfg.pop("residual", False)
    torch.manual_seed(13)
    ref = torch.nn.BatchNorm2d(4, **cfg).double()
    ours_m = i2i_fast.BatchNorm2d(4, **cfg, activation="leaky_relu").double()
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5), ref.bias.normal_()
    ours_m.load_state_dict(ref.state_dict())
    assert ours_m.state_dict().keys() == ref.state_dict().keys()
    for step, mode in enumerate(["train", "train", "eval"]):
        ours_m.train(mode == "train"), ref.train(mode == "train")
        x = (torch.randn(n, 4, 5, 6, dtype=torch.float64) * 2 + step).requires_grad_()
        res = torch.randn(n, 4, 5, 6, dtype=torch.float64, requires_grad=True) if with_res else None
        with i2i_fast.use_backend(backend):
            y = ours_m(x, residual=res)
        want = TF.leaky_relu(ref(x), 0.2) + (res if with_res else 0)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
        gy = torch.randn_like(y)
        ins = [x] + ([res] if with_res else [])
        got = torch.autograd.grad(y, ins + list(ours_m.parameters()), gy)
        exp = torch.autograd.grad(want, ins + list(ref.parameters()), gy)
        for a, b in zip(got, exp):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for (k, a), b in zip(ours_m.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{mode} step {step}: {k}")


@pytest.mark.parametrize("backend", cpu_backends())
def test_batch_norm_batch_statistics_cross_samples(backend):
    """Batch statistics mix the samples: the output of sample 0 changes when sample 1 does
    (an instance norm would not), and equals torch's."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[1] += 3
    with i2i_fast.use_backend(backend):
        a, b = (F.batch_norm(t, None, None, None, None, True) for t in (x, x2))
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(b, TF.batch_norm(x2, None, None, None, None, True))


def test_batch_norm_bad_input_and_compile():
    m = i2i_fast.BatchNorm2d(3, activation="relu", out_pad=1)
    assert "activation='relu'" in repr(m) and "out_pad=1" in repr(m)
    with pytest.raises(ValueError, match="expected 4D input"):
        m(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        i2i_fast.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="needs running_mean"):
        F.batch_norm(torch.randn(2, 3, 4, 4), None, None, training=False)
    for shape in ((0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)):  # empty: as torch, buffers unchanged
        for training in (True, False):
            rm, rv = torch.zeros(shape[1]), torch.ones(shape[1])
            y = F.batch_norm(torch.randn(shape), rm, rv, None, None, training, activation="relu")
            assert y.shape == shape and torch.equal(rm, torch.zeros(shape[1])) and torch.equal(rv, torch.ones(shape[1]))
    with pytest.raises(ValueError, match="activation"):
        i2i_fast.BatchNorm2d(3, activation="gelu")
    with pytest.raises((ValueError, RuntimeError)):
        F.batch_norm(torch.randn(2, 3, 4, 4), None, None, torch.ones(4), None, True)
    torch._dynamo.reset()
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    ref = i2i_fast.BatchNorm2d(3, activation="leaky_relu")
    comp = i2i_fast.BatchNorm2d(3, activation="leaky_relu")
    y = ref(x)
    yc = torch.compile(comp, fullgraph=True)(x)
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(comp.running_var, ref.running_var)
    torch.testing.assert_close(torch.autograd.grad(yc.sum(), x)[0], torch.autograd.grad(y.sum(), x)[0])


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind", [NormKind.BATCH, NormKind.INSTANCE], ids=["batch", "instance"])
def test_plane_norm_update_running_op(backend, kind):
    """The running-statistics op on every backend: torch's formulas from the plane statistics
    (batch norm's; instance norm's, averaged over the planes) into fp64, fp32 and half buffers,
    num_batches_tracked counted in the same op or left alone, opcheck (a mutating op), bad input."""
    from i2i_fast.ops import plane_norm as plane_norm_ops

    torch.manual_seed(14)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    mean, var = x.mean((2, 3)), x.var((2, 3), unbiased=False)
    ref_m, ref_v = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    want_m, want_v = ref_m.clone(), ref_v.clone()
    if kind == NormKind.BATCH:
        TF.batch_norm(x, want_m, want_v, training=True, momentum=0.3)
    else:
        TF.instance_norm(x, want_m, want_v, use_input_stats=True, momentum=0.3)
    assert not torch.equal(want_m, ref_m)  # the reference did update
    with i2i_fast.use_backend(backend):
        for dtype in (torch.float64, torch.float32, torch.float16):
            rm, rv = ref_m.to(dtype, copy=True), ref_v.to(dtype, copy=True)
            count = torch.tensor(7) if dtype == torch.float32 else None
            plane_norm_ops.plane_norm_update_running(rm, rv, mean.to(dtype), var.to(dtype), 30, 0.3, kind, count)
            tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(rm.double(), want_m, **tol)
            torch.testing.assert_close(rv.double(), want_v, **tol)
            if count is not None:
                assert count.item() == 8
            again = ref_m.to(dtype, copy=True), ref_v.to(dtype, copy=True)
            plane_norm_ops.plane_norm_update_running(*again, mean.to(dtype), var.to(dtype), 30, 0.3, kind)
            assert torch.equal(again[0], rm) and torch.equal(again[1], rv)  # bitwise the same on a rerun
    if backend == "reference":
        return
    op = (
        torch.ops.i2i_fast.triton_plane_norm_update_running
        if backend == "triton"
        else torch.ops.i2i_fast.plane_norm_update_running
    )
    # under the CPU interpreter fake tensors cannot enter the Triton kernel (as test_opcheck_triton)
    utils = ("test_schema", "test_autograd_registration") if backend == "triton" else None
    args = (torch.zeros(4), torch.ones(4), torch.tensor(0), mean.float(), var.float(), kind, 30, 0.1)
    torch.library.opcheck(op.default, args, **({"test_utils": utils} if utils else {}))
    error = ValueError if backend == "triton" else RuntimeError
    with pytest.raises(error, match="running statistics must be"):
        op(torch.zeros(3), torch.ones(4), None, mean, var, kind, 30, 0.1)
    with pytest.raises(error, match="more than 1 value"):
        op(torch.zeros(4), torch.ones(4), None, mean[:1], var[:1], kind, 1, 0.1)
    with pytest.raises(error, match="dtypes differ"):
        op(torch.zeros(4), torch.ones(4, dtype=torch.float64), None, mean, var, kind, 30, 0.1)
    with pytest.raises(error, match="num_batches_tracked must be"):
        op(torch.zeros(4), torch.ones(4), torch.tensor(0.0), mean, var, kind, 30, 0.1)
    with pytest.raises(error, match="kind must be BATCH or INSTANCE"):
        op(torch.zeros(4), torch.ones(4), None, mean, var, NormKind.ILN, 30, 0.1)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_module_counts_batches(backend, momentum):
    """nn.BatchNorm2d's num_batches_tracked: counted per training forward (in the running-statistics
    op, or first when the cumulative average needs the count), also for an empty batch, not in
    eval mode nor without running statistics; the buffers match torch's after three steps."""
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum)
    ours_m = i2i_fast.BatchNorm2d(3, momentum=momentum)
    with i2i_fast.use_backend(backend):
        for n in (2, 1, 0):
            x = torch.randn(n, 3, 4, 4)
            theirs(x), ours_m(x)
        ours_m.eval(), theirs.eval()
        ours_m(torch.randn(2, 3, 4, 4)), theirs(torch.randn(2, 3, 4, 4))
    assert ours_m.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 3
    for a, b in zip(ours_m.buffers(), theirs.buffers()):
        torch.testing.assert_close(a, b)
    untracked = i2i_fast.BatchNorm2d(3, track_running_stats=False)
    untracked(torch.randn(2, 3, 4, 4))
    assert untracked.num_batches_tracked is None


@requires_cuda
def test_cuda_batch_norm_module():
    """BatchNorm2d on CUDA: outputs, gradients and running statistics of two training steps
    and an eval step vs torch (fp32, TF32 irrelevant: no matmul)."""
    torch.manual_seed(15)
    ref = torch.nn.BatchNorm2d(8).cuda()
    ours_m = i2i_fast.BatchNorm2d(8, activation="relu").cuda()
    ours_m.load_state_dict(ref.state_dict())
    for mode in ("train", "train", "eval"):
        ours_m.train(mode == "train"), ref.train(mode == "train")
        x = torch.randn(4, 8, 33, 31, device="cuda", requires_grad=True)
        y, want = ours_m(x), torch.relu(ref(x))
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
        gy = torch.randn_like(y)
        for a, b in zip(
            torch.autograd.grad(y, [x, ours_m.weight, ours_m.bias], gy),
            torch.autograd.grad(want, [x, ref.weight, ref.bias], gy),
        ):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        for (k, a), b in zip(ours_m.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("backend", cpu_backends())
def test_batch_norm_nan_inf_and_constant(backend):
    """A NaN or Inf poisons its channel in every sample (the batch statistics), as torch; a
    constant channel gives exactly the bias."""
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 2], x[1, 2, 0, 0] = float("nan"), float("inf")
    with i2i_fast.use_backend(backend):
        y = F.batch_norm(x, None, None, None, None, True)
        c = F.batch_norm(torch.ones(2, 3, 4, 4), None, None, torch.ones(3), torch.full((3,), 0.5), True)
    want = TF.batch_norm(x, None, None, None, None, True)
    assert torch.equal(y.isnan(), want.isnan()) and y[:, 1:].isnan().all() and not y[:, 0].isnan().any()
    torch.testing.assert_close(y[:, 0], want[:, 0])
    assert torch.equal(c, torch.full_like(c, 0.5))


@requires_cuda
def test_cuda_triton_norms_compile_fullgraph():
    """The Triton norm path on a GPU (coefficient kernel; 1 x 16 x 256 x 256 maps split their
    planes, the instance norm's as the family's) under torch.compile(fullgraph=True): same
    outputs and input gradients as eager."""
    if not i2i_fast.backends()["triton"][0]:
        pytest.skip("triton not available")
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3),
        i2i_fast.ILN(16, activation="relu", out_pad=1),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        i2i_fast.InstanceNorm2d(16, affine=True),
        i2i_fast.LayerNorm(16, activation="leaky_relu"),
    ).cuda()
    x = torch.randn(1, 3, 258, 258, device="cuda", requires_grad=True)
    gy = torch.randn(1, 16, 258, 258, device="cuda")
    with i2i_fast.use_backend("triton"):
        from i2i_fast.triton import instance_norm as tin

        assert tin.plane_grid(16, 256 * 256, torch.device("cuda"))[0] > 1
        y = m(x)
        (gx,) = torch.autograd.grad(y, x, gy)
        yc = torch.compile(m, fullgraph=True)(x)
        (gxc,) = torch.autograd.grad(yc, x, gy)
    torch.testing.assert_close(yc, y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gxc, gx, rtol=1e-4, atol=1e-4)
