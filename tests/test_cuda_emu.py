"""The CUDA kernels (kernels/*.cu) executed on CPU tensors through the CUDA emulation
(tests/cuda_emu): the emulated twins of the tests that need a GPU, at small shapes.

Every op runs through the whole stack (Python wrappers, C++ autograd nodes, plane_norm,
losses, the pad convolution) with its CUDA kernels swapped in by `EmulatedCuda`. Parity uses
the parity rule (tests/conftest.py) against float64 in fp32, fp16 and bf16; determinism is bitwise across two
runs AND across block orders (forward, reverse, shuffled), which is how a missing barrier or
a dependence on block order shows; the split-plane paths are forced through the emulated SM
count. The last test asserts that every __global__ kernel in kernels/ was launched.
"""

import itertools
import os
import subprocess
import sys

import cuda_emu
import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_parity, offset_planes, requires_cuda

import i2i_fast
from i2i_fast import functional as F
from i2i_fast.codes import Activation

if not i2i_fast.backends()["cpu"][0]:
    pytest.skip("i2i_fast._C not built", allow_module_level=True)

HALF = [torch.float32, torch.float16, torch.bfloat16]
IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
ORDERS = [("forward", 0), ("reverse", 0), ("shuffled", 1), ("shuffled", 2)]
H200_SMS = 132


@pytest.fixture(scope="module")
def emu():
    mod = cuda_emu.load()
    mod.set_order("forward", 0)
    mod.set_sm_count(H200_SMS)
    yield mod
    mod.set_order("forward", 0)
    mod.set_sm_count(H200_SMS)


@pytest.fixture
def on(emu):
    """Runs the body with the CUDA kernels emulated; yields the emulation module."""
    with cuda_emu.EmulatedCuda():
        yield emu
    emu.set_order("forward", 0)
    emu.set_sm_count(H200_SMS)


def launches(emu, fn):
    before = emu.launch_counts()
    fn()
    after = emu.launch_counts()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def same_across_orders(emu, fn, orders=ORDERS):
    """fn() (a list of tensors) is bitwise equal twice in a row and in every block order."""
    emu.set_order("forward", 0)
    first = [t.clone() for t in fn()]
    for mode, seed in [("forward", 0)] + list(orders):
        emu.set_order(mode, seed)
        got = fn()
        for a, b in zip(first, got):
            assert torch.equal(a, b), f"result differs in block order {mode}/{seed}"
    emu.set_order("forward", 0)
    return first


# ------------------------------------------------------------------ the emulation itself
def test_emulation_catches_known_defects(on):
    run = torch.ops.i2i_emu_selftest.run
    x = torch.randn(3000)
    good = run("tree_sum", x, 1)
    torch.testing.assert_close(good, x.sum(), rtol=1e-5, atol=1e-4)
    on.set_checks(False)  # the thread order alone shows it (the race check names it at once)
    bad = [run("tree_sum", x, 0)]  # the barrier inside the tree loop removed
    for mode, seed in ORDERS:
        on.set_order(mode, seed)
        bad.append(run("tree_sum", x, 0))
    on.set_checks(True)
    assert any(not torch.allclose(b, good, rtol=1e-5, atol=1e-4) for b in bad), "a missing __syncthreads went unnoticed"
    with pytest.raises(RuntimeError, match="shared-memory race on __shared__ sm"):
        run("tree_sum", x, 0)
    survivors = set()
    on.set_checks(False)  # the block order alone shows it (the happens-before check names it at once)
    for mode, seed in ORDERS:
        on.set_order(mode, seed)
        survivors.add(run("last_block", x, 7)[0].item())
    on.set_checks(True)
    assert len(survivors) > 1, "block order is not permuted"
    with pytest.raises(RuntimeError, match="global memory written by another block of this launch"):
        run("last_block", x, 7)
    on.set_order("forward", 0)
    assert run("uninit_shared", x, 0)[:256].isnan().all(), "shared memory is not poisoned between blocks"
    for what, arg, msg in [
        ("big_shared", 0, "48 KB"),
        ("shuffle", 48, "full mask"),
        ("block_too_big", 2048, "block of 2048"),
        ("grid_y_too_big", 70000, "grid dimension"),
        ("empty_grid", 0, "empty grid"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            run(what, x, arg)
    torch.testing.assert_close(run("shuffle", x, 64)[:31], torch.arange(1, 32, dtype=torch.float32))


def test_entry_points_check_the_device_before_guarding():
    """Every CUDA entry point builds its device guard through gpu::device_guard, which checks
    that the tensor is on a CUDA device first (c10's guard would fail with its own message),
    and none builds a CUDAGuard directly."""
    import re

    for name, path in ((os.path.basename(p), p) for p in cuda_emu.kernel_sources()):
        src = open(path).read()
        assert "CUDAGuard guard" not in src, f"{name}: a CUDAGuard made without the device check"
        impls = re.findall(r'm\.impl\("\w+", &(\w+)\)', src)
        for fn in impls:
            body = src[src.index(f" {fn}(", 0) :]
            body = body[: body.index("\n}\n")]
            assert "device_guard(" in body, f"{name}:{fn} has no device_guard"


@pytest.mark.parametrize(
    "test",
    [
        "test_instance_norm.test_cpp_op_checks_its_own_arguments",
        "test_reflection_pad.test_pad_cpp_op_checks_its_own_arguments",
        "test_loss.test_cpp_op_checks_its_own_arguments",
        "test_spectral_norm.test_bad_input",
    ],
)
def test_cuda_entry_points_refuse_bad_arguments(on, test):
    """The raw-op bad-input tests, run with the CUDA entry points swapped in: each refuses the
    same arguments with the same message as the CPU op (the checks are shared host code)."""
    import importlib

    module, name = test.split(".")
    before = cuda_emu.EmulatedCuda.redirected
    getattr(importlib.import_module(module), name)()
    assert cuda_emu.EmulatedCuda.redirected > before, "no call reached an emulated CUDA entry point"


def test_norm_coefs_entry_points_refuse_bad_arguments(on):
    from test_plane_norm import test_coefs_bad_input

    before = cuda_emu.EmulatedCuda.redirected
    test_coefs_bad_input("", RuntimeError)
    assert cuda_emu.EmulatedCuda.redirected > before


def test_schemas_generated_from_ops_cpp(emu):
    for s in cuda_emu.schemas():
        name = s.split("(", 1)[0]
        assert (
            str(getattr(torch.ops.i2i_fast_emu, name).default._schema).split("::", 1)[1]
            == str(getattr(torch.ops.i2i_fast, name).default._schema).split("::", 1)[1]
        )


def test_sm_count_is_settable(emu):
    for n in (1, 4, H200_SMS):
        emu.set_sm_count(n)
        assert emu.sm_count() == n
    emu.set_sm_count(H200_SMS)


# ------------------------------------------------------------------ instance norm
def _in_check(shape, dtype, act="leaky_relu", affine=True, residual=True, channels_last=False, pad=0):
    from test_instance_norm import check_all

    check_all(shape, dtype, "cpu", "cpu", affine, act, residual, channels_last, pad)


@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 7), (2, 4, 16, 16), (1, 3, 45, 47)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_instance_norm_parity(on, dtype, shape, channels_last):
    _in_check(shape, dtype, channels_last=channels_last)


@pytest.mark.parametrize("sms", [1, 4, H200_SMS])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_instance_norm_split_paths(on, sms, channels_last):
    """Batch 1 with few planes: split over S chunks per plane when the tiles cannot give every
    SM 4 blocks (4 planes fill a 1-SM device), with vector loads and with scalar ones; chunks of
    at least 4096 elements (reduce.cuh kMinChunkElems), so both planes have over 8192."""
    on.set_sm_count(sms)
    for shape in [(1, 4, 96, 96), (1, 4, 91, 93)]:  # H*W a multiple of the vector width, and not
        got = launches(on, lambda: _in_check(shape, torch.float32, channels_last=channels_last))
        split = "fwd_stats_kernel" in got and "bwd_sums_kernel" in got
        assert split == (sms > 1 or channels_last), (sms, shape, got)


@pytest.mark.parametrize("shape", [(1, 4, 64, 127), (1, 4, 64, 129), (2, 3, 96, 96)], ids=str)
def test_split_rule_matches_triton(on, shape):
    """The CUDA kernels (reduce.cuh kMinChunkElems) and the Triton backend (MIN_CHUNK) split a
    plane at the same sizes: NCHW planes of 8128 and 8256 elements sit either side of two 4096-element
    chunks, on an H200's SM count."""
    from i2i_fast import _backend

    if _backend._triton_error is not None:
        pytest.skip(f"triton unavailable: {_backend._triton_error}")
    from i2i_fast.triton import instance_norm as tin

    x = torch.randn(shape)
    got = launches(on, lambda: torch.ops.i2i_fast.instance_norm_fwd(x, None, None, None, None, None, 1e-5, 0, 0.2, 0))
    sms, tin.INTERPRETER_SMS = tin.INTERPRETER_SMS, H200_SMS
    try:
        splits = tin.plane_grid(shape[0] * shape[1], shape[2] * shape[3], x.device)[0]
    finally:
        tin.INTERPRETER_SMS = sms
    assert ("fwd_stats_kernel" in got) == (splits > 1), (got, splits)


@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,pad", [((2, 3, 5, 7), 1), ((1, 3, 4, 2), 1), ((2, 33, 6, 9), 3)], ids=str)
def test_instance_norm_out_pad(on, dtype, channels_last, shape, pad):
    """The output pad in the fused kernels: the forward writes the padded plane from mirrored
    reads, the backward gathers the padded gradient; no family kernel, no pad kernel runs
    (the residual's gradient is the one pad backward)."""
    got = launches(on, lambda: _in_check(shape, dtype, channels_last=channels_last, pad=pad))
    assert {"fwd_apply_kernel", "bwd_apply_kernel"} <= set(got), got
    assert not {"stats_kernel", "apply_kernel", "pad_fwd_kernel"} & set(got), got


@pytest.mark.parametrize("sms", [4, H200_SMS])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_instance_norm_out_pad_split_and_orders(on, sms, channels_last):
    """Batch 1, planes split over S chunks: the apply kernel's chunks span the padded plane,
    the statistics' chunks the input; bitwise equal in every block order."""
    on.set_sm_count(sms)
    got = launches(on, lambda: _in_check((1, 4, 91, 93), torch.float32, channels_last=channels_last, pad=3))
    assert got.get("fwd_stats_kernel") and got.get("bwd_sums_kernel"), got

    def run():
        torch.manual_seed(3)
        x = torch.randn(1, 3, 33, 35)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w, b = torch.rand(3, requires_grad=True), torch.randn(3, requires_grad=True)
        y = F.instance_norm(x, weight=w, bias=b, activation="relu", out_pad=1)
        y.backward(torch.randn_like(y))
        return [y.detach(), x.grad, w.grad, b.grad]

    same_across_orders(on, run)
    on.set_sm_count(H200_SMS)


@pytest.mark.parametrize(
    "affine,act,residual", list(itertools.product([False, True], ["relu", "tanh", None], [False, True]))
)
def test_instance_norm_options(on, affine, act, residual):
    _in_check((2, 5, 9, 8), torch.float32, act, affine, residual)


def test_instance_norm_views_with_offset_take_scalar_loads(on):
    """A view with a storage offset (not 16-byte aligned) and H*W a multiple of the vector
    width: the kernels must take the scalar path and still be right."""
    base = torch.randn(1 + 2 * 4 * 8 * 8)
    x = base[1:].view(2, 4, 8, 8).requires_grad_()
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    y = F.instance_norm(x, weight=w, bias=b, activation="relu")
    y.backward(torch.ones_like(y))
    x2 = x.detach().clone().requires_grad_()
    ref = torch.relu(TF.instance_norm(x2, weight=w, bias=b))
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_instance_norm_running_stats_and_module(on):
    theirs = torch.nn.InstanceNorm2d(6, affine=True, track_running_stats=True)
    ours = i2i_fast.InstanceNorm2d(6, affine=True, track_running_stats=True)
    ours.load_state_dict(theirs.state_dict())
    xx = torch.randn(2, 6, 7, 5)
    torch.testing.assert_close(ours(xx), theirs(xx))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    x1 = xx.clone().requires_grad_()
    x2 = xx.clone().requires_grad_()
    torch.testing.assert_close(ours(x1), theirs(x2))
    ours(x1).sum().backward(), theirs(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_instance_norm_empty_and_single_pixel(on):
    for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
        x = torch.randn(shape, requires_grad=True)
        y = F.instance_norm(x)
        assert y.shape == x.shape
        y.sum().backward()
    x = torch.randn(2, 3, 1, 1)
    with pytest.raises(ValueError, match="more than 1 spatial element"):  # as torch
        F.instance_norm(x)
    x = torch.randn(2, 3, 1, 2, requires_grad=True)
    torch.testing.assert_close(F.instance_norm(x, activation="relu"), torch.relu(TF.instance_norm(x)))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 45, 47)], ids=str)
def test_adain_per_plane_affine(on, shape):
    n, c = shape[:2]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(n * c, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(n * c, dtype=torch.float64, requires_grad=True)
    y = F.adain(x, w, b, activation="relu")
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    ref = torch.relu(TF.batch_norm(x.reshape(1, n * c, *shape[2:]), None, None, w, b, True).reshape(shape))
    want = torch.autograd.grad(ref, (x, w, b), gy)
    torch.testing.assert_close(y, ref)
    for a, bb in zip(got, want):
        torch.testing.assert_close(a, bb)


def test_instance_norm_backward_sums_in_fp64_as_the_cpu_op(emu):
    """The CUDA backward reduces its per-plane sums in fp64 (the CPU op adds fp32 blocks of 512
    in fp64). With x = +-1 (mean 0, var 1, eps 0: every normalized value exact) and a gradient of
    1000 + noise, the weight gradient sum(g * xhat) cancels to ~50 from terms of 1000: fp64 sums
    give it to fp32 rounding, fp32 sums (the old kernel) were off by ~1e-4 of it."""
    torch.manual_seed(0)
    sign = (torch.arange(96).view(96, 1) + torch.arange(96).view(1, 96)) % 2 * 2 - 1.0
    x = sign.expand(1, 2, 96, 96).contiguous()
    g = 1000 + torch.randn_like(x)
    mean, var, w = torch.zeros(1, 2), torch.ones(1, 2), torch.ones(2)
    want_w = (g.double() * x.double()).sum((0, 2, 3))
    want_b = g.double().sum((0, 2, 3))
    for sms in (H200_SMS, 1):  # split (per-chunk partials) and one block per plane
        emu.set_sm_count(sms)
        cpu = torch.ops.i2i_fast.instance_norm_bwd(g, x, mean, var, w, w, 0.0, 0, 0.2, True)
        with cuda_emu.EmulatedCuda():
            got = torch.ops.i2i_fast.instance_norm_bwd(g, x, mean, var, w, w, 0.0, 0, 0.2, True)
        torch.testing.assert_close(got[1].double(), want_w, rtol=2e-7, atol=0)
        torch.testing.assert_close(got[2].double(), want_b, rtol=2e-7, atol=0)
        # the CPU op: fp32 blocks of 512 elements, added in fp64 (csrc/cpu_loops.h)
        torch.testing.assert_close(cpu[1].double(), want_w, rtol=1e-3, atol=0)
    emu.set_sm_count(H200_SMS)


def test_instance_norm_deterministic_across_block_orders(on):
    on.set_sm_count(4)  # split path

    def run():
        torch.manual_seed(3)
        out = []
        for cl in (False, True):
            x = torch.randn(1, 3, 33, 35)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            w = torch.rand(3, requires_grad=True)
            b = torch.randn(3, requires_grad=True)
            y = F.instance_norm(x, weight=w, bias=b, activation="relu")
            y.backward(torch.randn_like(y))
            out += [y.detach(), x.grad, w.grad, b.grad]
        return out

    same_across_orders(on, run)


# ------------------------------------------------------------------ the norm family
FAMILY = ["iln", "adalin", "layer_norm", "adain", "instance_norm", "batch_norm"]


@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
@pytest.mark.parametrize("shape", [(2, 6, 9, 11), (3, 5, 7, 1), (1, 2, 64, 65)], ids=str)
@pytest.mark.parametrize("norm", FAMILY)
def test_norm_family_parity(on, norm, shape, dtype):
    from test_plane_norm import check

    pad = 1 if min(shape[2:]) > 1 else 0
    check(norm, "cpu", shape, dtype, "leaky_relu", True, pad)
    check(norm, "cpu", shape, dtype, None, False, 0, channels_last=True)


@pytest.mark.parametrize("sms", [1, H200_SMS])
def test_statistics_at_large_offsets(on, sms):
    """Statistics at large offsets on the CUDA kernels: ShiftedSums (fp64 sums of x - the plane's first element)
    hold the parity rule at x + 1e3..1e6, one block per plane and split into chunks (sms=1);
    before: fp32 Welford per thread and fp32 Chan merges."""
    from test_instance_norm import check_x
    from test_plane_norm import check

    on.set_sm_count(sms)
    check_x(offset_planes((2, 3, 6, 6), 1e6), "cpu")
    check_x(torch.randn(1, 2, 96, 96, generator=torch.Generator().manual_seed(0)) + 1e3, "cpu")
    check("layer_norm", "cpu", (2, 3, 6, 6), torch.float32, offset=1e6)
    check("iln", "cpu", (1, 2, 96, 96), torch.float32, offset=1e3)


def test_edge_rules(on):
    """Torch's edge values on the CUDA kernels: eps = 0 with zero variance and denormals,
    eval mode's gradient at an infinite input, NaN/Inf loss gradients (the CPU tests' cases)."""
    import test_instance_norm
    import test_loss

    test_instance_norm.test_eps0_zero_variance_and_denormals("cpu")
    test_instance_norm.test_eval_mode_gradient_with_infinite_input("cpu")
    for mode in test_loss.MODES:
        test_loss.test_nan_inf_gradients_like_original("cpu", mode)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("norm", ["adalin", "layer_norm", "batch_norm"])
def test_norm_family_split_and_orders(on, norm, channels_last):
    """Planes of 8385 pixels (batch 1; batch norm: batch 2, whose batch 1 is the fused
    instance norm): per-plane reductions split over several blocks (an uneven last chunk) and
    merged in a fixed order; bitwise the same in every block order. channels_last: 3 channels
    (a partial tile of 32), read in place."""
    from test_plane_norm import make_params, ours

    on.set_sm_count(1)
    n, c = (2, 1) if norm == "batch_norm" else (1, 2)
    c = 3 if channels_last else c

    def run(layout=torch.channels_last if channels_last else torch.contiguous_format):
        torch.manual_seed(5)
        x = torch.randn(n, c, 65, 129).contiguous(memory_format=layout).requires_grad_()
        rho, gamma, beta = (t.float().requires_grad_() for t in make_params(norm, n, c))
        y = ours(norm, x, rho, gamma, beta, "relu", None, 1)
        y.backward(torch.randn(y.shape).contiguous(memory_format=layout))
        return [y.detach(), x.grad] + [t.grad for t in (gamma, beta) if t.grad is not None]

    got = {}
    first = launches(on, lambda: got.update(r=same_across_orders(on, run)))
    assert first.get("stats_merge_kernel") and first.get("sums_merge_kernel"), first
    if channels_last:  # the same values as the NCHW path (up to the reduction trees' rounding)
        for a, b in zip(got["r"], run(torch.contiguous_format)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", ["BatchNorm2d", "InstanceNorm2d"])
def test_norm_module_running_stats(on, module):
    """Training with running statistics: one update_running_kernel launch updates them (and batch
    norm's num_batches_tracked) as torch does."""
    kw = dict(track_running_stats=True) if module == "InstanceNorm2d" else {}
    theirs = getattr(torch.nn, module)(5, **kw)
    ours = getattr(i2i_fast, module)(5, **kw)
    ours.load_state_dict(theirs.state_dict())
    x1 = torch.randn(4, 5, 9, 7, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    got = launches(on, lambda: ours(x1).sum().backward())
    theirs(x2).sum().backward()
    assert got.get("update_running_kernel") == 1, got
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours.buffers(), theirs.buffers()):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ reflection pad + conv
@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pad_parity(on, dtype, channels_last):
    from test_reflection_pad import PAD_CASES, _pad_case

    for shape, pad in PAD_CASES:
        r = _pad_case("cpu", shape, pad, dtype, channels_last)
        (yo, go), (yt, gt), (_, gr) = r["ours"], r["torch"], r["ref"]
        assert yo.dtype == dtype and yo.shape == yt.shape
        if channels_last:
            assert yo.is_contiguous(memory_format=torch.channels_last)
            assert go.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yo, yt), f"{shape} {pad}: the forward is a copy, it must equal torch's"
        assert_parity(go, gt, gr, dtype, f"emulated pad {shape} {pad} grad x")


@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation,slope", [("relu", 0.0), ("leaky_relu", 0.2)], ids=["relu", "lrelu"])
def test_pad_act_parity(on, dtype, channels_last, activation, slope):
    """pad(act(x)) in the pad kernels: both kernels launch, no activation op; parity as the
    separate torch activation + pad."""
    from test_reflection_pad import PAD_CASES, _pad_case

    for shape, pad in PAD_CASES[:4]:
        res = {}
        got = launches(
            on,
            lambda: res.update(_pad_case("cpu", shape, pad, dtype, channels_last, activation=activation, slope=slope)),
        )
        assert got.get("pad_fwd_kernel") == 1 and got.get("pad_bwd_kernel") == 1, got
        (yo, go), (yt, gt), (yr, gr) = res["ours"], res["torch"], res["ref"]
        if channels_last:
            assert yo.is_contiguous(memory_format=torch.channels_last)
            assert go.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            assert torch.equal(yo, yt), f"{shape} {pad}: act in fp32 then a copy must equal torch's"
        assert_parity(yo, yt, yr, dtype, f"emulated pad {activation} {shape} {pad} out")
        assert_parity(go, gt, gr, dtype, f"emulated pad {activation} {shape} {pad} grad x")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=IDS.get)
def test_pad_bitwise_equal_to_cpu_kernels(emu, dtype):
    """The CUDA and CPU pad kernels sum each input pixel's <= 3x3 sources in the same order and
    apply the same activation math (norm_math.h): equal with and without an activation."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 10).to(dtype)
    x_view = torch.randn(1 + x.numel()).to(dtype)[1:].view_as(x)  # storage offset
    fwd, bwd = torch.ops.i2i_fast.reflection_pad2d_fwd, torch.ops.i2i_fast.reflection_pad2d_bwd
    for t in (x, x_view, x.contiguous(memory_format=torch.channels_last)):
        pad = [3, 2, 1, 4]
        for act in (Activation.NONE, Activation.RELU, Activation.LEAKY_RELU):
            act = int(act)
            y_cpu = fwd(t, pad, act, 0.2)
            g = torch.randn(y_cpu.shape).to(dtype)
            with cuda_emu.EmulatedCuda():
                y = fwd(t, pad, act, 0.2)
                gx = bwd(g, pad, t, act, 0.2)
            assert torch.equal(y, y_cpu), act
            assert torch.equal(gx, bwd(g, pad, t, act, 0.2)), act
            if act != Activation.NONE:
                assert not torch.equal(y, fwd(t, pad)), "the activation was not applied"


@pytest.mark.parametrize("path", ["pad", "border"])
@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_reflection_pad_conv(on, path, dtype, channels_last):
    from test_reflection_pad import CONV_CASES, _check_conv

    for case in CONV_CASES[:3]:
        _check_conv(case, dtype, "cpu", path, channels_last)


def test_pad_and_conv_under_deterministic_algorithms(on):
    """torch's CUDA reflection-pad backward raises under deterministic algorithms; ours runs
    (a gather) and repeats bitwise, for the pad and the pad convolution's padded path."""
    from test_reflection_pad import deterministic_mode

    x = torch.randn(2, 4, 12, 13, requires_grad=True)
    m = i2i_fast.ReflectionPadConv2d(4, 5, 3, padding=1)
    runs = []
    with deterministic_mode():
        for _ in range(2):
            y = m(F.reflection_pad2d(x, 3))
            runs.append([y] + list(torch.autograd.grad(y.square().sum(), [x, m.weight, m.bias])))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_pad_deterministic_across_orders(on):
    def run():
        torch.manual_seed(1)
        x = torch.randn(2, 3, 17, 19, requires_grad=True)
        y = F.reflection_pad2d(x, (3, 1, 2, 4))
        y.backward(torch.randn_like(y))
        return [y.detach(), x.grad]

    same_across_orders(on, run)


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("dtype", HALF, ids=IDS.get)
def test_loss_parity(on, dtype):
    from test_loss import MODES, UGATIT_SHAPES, check, original, preds_like

    masters = [preds_like(s, seed=i) for i, s in enumerate(UGATIT_SHAPES)]
    reals = [True, False] * 4
    for mode in MODES:
        check(
            lambda ts: F.gan_loss(ts, reals, mode),
            lambda ts: sum(original(mode, t, r) for t, r in zip(ts, reals)),
            masters,
            dtype,
            what=f"emulated {mode} {dtype}",
        )
    big = [
        preds_like((1, 3, 40, 41), seed=1),
        preds_like((1, 3, 40, 41), seed=2),
        preds_like((1, 1, 70, 70), seed=3),
        preds_like((1, 1, 70, 70), seed=4),
    ]
    check(
        lambda ts: F.l1_loss([(ts[0], ts[1]), (ts[2], ts[3])], [10.0, 5.0]),
        lambda ts: 10 * TF.l1_loss(ts[0], ts[1]) + 5 * TF.l1_loss(ts[2], ts[3]),
        big,
        dtype,
        what=f"emulated l1 {dtype}",
    )


def test_loss_ticket_path_and_many_terms(on):
    """> 16384 elements: one block per chunk, the last block (ticket) adds the partials; > 24
    terms: several launches of one table each. Bitwise the same in every block order and
    equal to float64 within the rule; one forward launch for the ticket call."""
    from test_loss import original, preds_like

    big = [
        preds_like((2, 1, 100, 100), seed=1).float().requires_grad_(),
        preds_like((1, 1, 30, 30), seed=2).float().requires_grad_(),
    ]
    many = [preds_like((1, 1, 3 + i % 4, 5), seed=10 + i).float().requires_grad_() for i in range(30)]

    def run():
        out = []
        for ts, mode in ((big, "vanilla"), (many, "lsgan")):
            loss = F.gan_loss(ts, True, mode)
            out += [loss.detach()] + list(torch.autograd.grad(loss, ts))
        return out

    got = launches(on, lambda: same_across_orders(on, run))
    runs = 2 + len(ORDERS)
    assert got["loss_fwd_kernel"] == runs * (1 + 2), got  # per run: big 1 launch, many 2 groups
    ticket = launches(on, lambda: F.gan_loss(big, True, "vanilla"))
    assert ticket == {"loss_fwd_kernel": 1}, ticket
    res = run()
    for i, (ts, mode) in enumerate(((big, "vanilla"), (many, "lsgan"))):
        ref = sum(original(mode, t.detach().double(), True) for t in ts)
        loss = res[0] if i == 0 else res[1 + len(big)]
        torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-6)


def test_loss_reduction_none(on):
    from test_loss import preds_like

    a = preds_like((1, 1, 30, 30), seed=1).float().requires_grad_()
    outs = F.gan_loss([a], True, reduction="none")
    torch.testing.assert_close(outs[0], (a - 1) ** 2)
    g = torch.autograd.grad(outs[0].sum(), a)[0]
    torch.testing.assert_close(g, 2 * (a.detach() - 1))


# ------------------------------------------------------------------ spectral norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=IDS.get)
def test_sn_scale_parity_and_orders(on, dtype):
    from test_spectral_norm import _inputs, _run

    for shape in [(1, 1), (8, 45), (64, 288)]:
        w, u, v, gy = _inputs(*shape, dtype)
        ref = _run(lambda w, u, v: w / torch.dot(u, torch.mv(w, v)), *(t.double() for t in (w, u, v, gy)))
        same = _run(lambda w, u, v: w / torch.dot(u, torch.mv(w, v)), w, u, v, gy)
        ours = same_across_orders(on, lambda: _run(F.spectral_norm_weight, w, u, v, gy), ORDERS[:2])
        for name, a, b, c in zip(("out", "grad W"), ours, same, ref):
            assert_parity(a, b, c, dtype, f"emulated {shape} {dtype} {name}")


# ------------------------------------------------------------------ a converted model
def test_converted_cyclegan_generator(on):
    from i2i_fast.models import cyclegan

    torch.manual_seed(0)
    net = cyclegan.ResnetGenerator(3, 3, ngf=8, n_blocks=2).double()
    conv = i2i_fast.convert(net, copy=True)
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64)
    got = launches(on, lambda: conv(x).sum().backward())
    net(x).sum().backward()
    assert got, "no emulated kernel ran"
    torch.testing.assert_close(conv(x), net(x))
    for (name, a), (_, b) in zip(conv.named_parameters(), net.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_step_launch_counter_for_the_main_job(emu):
    """steps.use_emulated_launches() gives the main job's "our launches" column: the
    CUDA kernel launches of one converted training step, counted through the emulation."""
    from i2i_fast.bench import steps

    assert steps.use_emulated_launches() is None
    try:
        r = steps.Runner("stargan", "converted", "cpu", None)
        r.run()
        n = steps.count_ops(r)
        assert n["launches"] > 0 and n["launches"] < n["model"], n
    finally:
        steps.LAUNCH_COUNTER = None


# ------------------------------------------------------------------ on a lent GPU
@requires_cuda
def test_cuda_cpu_input_with_cuda_weight_gets_the_ops_message():
    x, w = torch.randn(2, 3, 4, 4), torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="expected its tensors on one CUDA device"):
        torch.ops.i2i_fast.instance_norm_fwd(x, w, None, None, None, None, 1e-5, 0, 0.2)


@requires_cuda
def test_cuda_loss_ticket_is_per_call_under_graphs_and_streams():
    """The ticket lives in each call's workspace: a graph captured on one stream, replayed on
    another while eager calls run on the first, gives the eager loss bitwise."""
    ts = [torch.randn(s, device="cuda") for s in ((4, 1, 256, 256), (1, 1, 30, 30))]
    with i2i_fast.use_backend("cuda"):
        want = F.gan_loss(ts, True, "vanilla")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            F.gan_loss(ts, True, "vanilla")  # warm-up on the capture stream
            with torch.cuda.graph(graph, stream=side):
                captured = F.gan_loss(ts, True, "vanilla")
        other = torch.cuda.Stream()
        for _ in range(3):
            with torch.cuda.stream(other):
                graph.replay()
            eager = F.gan_loss(ts, True, "vanilla")
            torch.cuda.synchronize()
            assert torch.equal(captured, want) and torch.equal(eager, want)


# ------------------------------------------------------------------ bounds checking
def test_out_of_bounds_fails_under_asan(emu, tmp_path):
    """The emulated kernels built with AddressSanitizer, run in a subprocess (libasan must be
    preloaded into Python) over odd sizes, views, channels_last, split paths and the loss
    ticket: any out-of-bounds access aborts it. The self-test's one-past-the-end read must be
    caught, which shows the check can fail."""
    libs = cuda_emu.asan_runtime()
    if libs is None:
        pytest.skip("gcc's libasan not found")
    env = dict(
        os.environ,
        LD_PRELOAD=libs,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86",
        PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
    )
    script = os.path.join(os.path.dirname(__file__), "cuda_emu", "asan_run.py")
    ok = subprocess.run([sys.executable, script, "kernels"], env=env, capture_output=True, text=True, timeout=1200)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-6000:]
    assert "kernels: ok" in ok.stdout
    bad = subprocess.run([sys.executable, script, "oob"], env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 86 and "heap-buffer-overflow" in bad.stderr, bad.stdout[-2000:] + bad.stderr[-4000:]


# ------------------------------------------------------------------ coverage (keep last)
def test_every_kernel_was_launched(emu, request):
    """Every __global__ kernel in kernels/ ran in this module: a new kernel without an
    emulated test fails here."""
    if request.config.option.keyword or request.config.option.markexpr:
        pytest.skip("coverage needs the whole module (run without -k / -m)")
    counts = emu.launch_counts()
    print("\nemulated launches per kernel:", dict(sorted(counts.items())))
    missing = sorted(k for k in cuda_emu.global_kernels() if not counts.get(k))
    assert not missing, f"never launched by the emulated suite: {missing}"
