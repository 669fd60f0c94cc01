"""The drop-in modules take every constructor argument of the class they replace, in the
INSTALLED torch (inspect.signature, so an argument a new torch adds fails here), and compute
what that class computes for every combination torch documents: outputs, gradients, buffers
and state_dict keys, in float64, against torch itself."""

import inspect
import itertools

import pytest
import torch
from conftest import cpu_backends
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm as _TorchSpectralNorm

import i2i_fast
from i2i_fast import nn as fnn
from i2i_fast.models import cyclegan, munit, ugatit

# drop-in -> the class it replaces (torch's, or the original network code for the GAN norms)
TORCH_ORIGINALS = {
    fnn.InstanceNorm2d: nn.InstanceNorm2d,
    fnn.BatchNorm2d: nn.BatchNorm2d,
    fnn.ReflectionPadConv2d: nn.Conv2d,
}
MODEL_ORIGINALS = {
    fnn.ILN: ugatit.ILN,
    fnn.AdaLIN: ugatit.adaILN,
    fnn.LayerNorm: munit.LayerNorm,  # MUNIT/UNIT's LayerNorm, not torch.nn.LayerNorm
    fnn.AdaIN: munit.AdaptiveInstanceNorm2d,
    fnn.GANLoss: cyclegan.GANLoss,
}
# defaults that differ on purpose: (drop-in, argument) -> why
DEFAULTS_DIFFER = {
    (fnn.ReflectionPadConv2d, "padding_mode"): "the class IS the reflection-padded convolution",
}
FUSION_KWARGS = {"activation", "negative_slope", "out_pad", "for_discriminator"}

P = inspect.Parameter


def _params(cls):
    return [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]


def _torch_bases(cls):
    """The torch classes (other than Module itself) a drop-in derives from."""
    return [b for b in cls.__mro__[1:] if b.__module__.startswith("torch.") and b is not nn.Module and b is not object]


def test_every_dropin_is_listed():
    """A drop-in that subclasses a torch class (now or later) must be in TORCH_ORIGINALS; the
    rest of i2i_fast.nn's modules in MODEL_ORIGINALS."""
    for name in fnn.__all__:
        cls = getattr(fnn, name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            continue
        assert cls in TORCH_ORIGINALS or cls in MODEL_ORIGINALS, f"{name}: which class does it replace?"
        if cls in TORCH_ORIGINALS:
            assert issubclass(cls, TORCH_ORIGINALS[cls])
        else:
            assert not _torch_bases(cls), f"{name} derives from a torch class: list it in TORCH_ORIGINALS"
    # FusedSpectralNorm is torch's SpectralNorm hook with its own compute_weight: torch's __init__
    assert fnn.FusedSpectralNorm.__init__ is _TorchSpectralNorm.__init__


@pytest.mark.parametrize(
    "ours,orig", list(TORCH_ORIGINALS.items()) + list(MODEL_ORIGINALS.items()), ids=lambda c: c.__name__
)
def test_signature_covers_original(ours, orig):
    """Every parameter of the original: same name, same position when positional, same
    default (DEFAULTS_DIFFER excepted); our extra parameters are keyword-only."""
    mine = {p.name: (i, p) for i, p in enumerate(_params(ours))}
    for i, p in enumerate(_params(orig)):
        assert p.name in mine, f"{ours.__name__} lacks {orig.__name__}'s argument {p.name!r}"
        j, q = mine[p.name]
        if p.kind is P.POSITIONAL_OR_KEYWORD:
            assert q.kind is P.POSITIONAL_OR_KEYWORD and j == i, (
                f"{ours.__name__}.{p.name}: position {j} ({q.kind}), {orig.__name__} has it at {i}"
            )
        elif p.kind is P.KEYWORD_ONLY:
            assert q.kind in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD), f"{ours.__name__}.{p.name}"
        else:  # *args / **kwargs in the original: ours must take them too
            assert q.kind is p.kind, f"{ours.__name__}.{p.name}"
        if (ours, p.name) not in DEFAULTS_DIFFER:
            assert q.default == p.default, f"{ours.__name__}.{p.name} default {q.default!r} != {p.default!r}"
    origs = {p.name for p in _params(orig)}
    for name, (_, q) in mine.items():
        if name not in origs:
            assert q.kind is P.KEYWORD_ONLY and name in FUSION_KWARGS, (
                f"{ours.__name__}.{name}: an extra argument must be a keyword-only fusion option"
            )


def test_documented_argument_lists():
    """The lists the README / the closing note quote, as the installed torch has them."""
    names = {cls.__name__: [p.name for p in _params(orig)] for cls, orig in TORCH_ORIGINALS.items()}
    assert set(names["InstanceNorm2d"]) >= {
        "num_features",
        "eps",
        "momentum",
        "affine",
        "track_running_stats",
        "device",
        "dtype",
    }
    assert set(names["ReflectionPadConv2d"]) >= {
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "bias",
        "padding_mode",
        "device",
        "dtype",
    }


# ------------------------------------------------------------------ norms: parity with torch
def _norm_combos():
    keys = ("affine", "bias", "track_running_stats", "momentum")
    for affine, bias, track, momentum in itertools.product((False, True), (True, False), (False, True), (0.1, None)):
        if not affine and not bias:
            continue  # bias only matters with affine
        yield dict(zip(keys, (affine, bias, track, momentum)))


def _copy_params(src, dst):
    with torch.no_grad():
        for n, p in src.named_parameters():
            p.copy_(torch.randn_like(p))
            dict(dst.named_parameters())[n].copy_(p)


def _run_norm(m, xs, train):
    """forward + backward of m over xs (one input per step), in train or eval mode: outputs,
    gradients of every input and parameter, then the buffers."""
    m.train(train)
    outs = []
    for k, x in enumerate(xs):
        x = x.clone().requires_grad_(True)
        y = m(x)
        g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(k))
        ps = [p for _, p in sorted(m.named_parameters())]
        grads = torch.autograd.grad(y, [x] + ps, g)
        outs += [y.detach()] + list(grads)
    outs += [b.clone() for _, b in sorted(m.named_buffers())]
    return outs


def _compare_norm(cls, tcls, kw, shapes, backend):
    torch.manual_seed(0)
    ref = tcls(5, **kw, dtype=torch.float64)
    ours = cls(5, **kw, dtype=torch.float64)
    _copy_params(ref, ours)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [(n, tuple(t.shape)) for n, t in ours.named_parameters()] == [
        (n, tuple(t.shape)) for n, t in ref.named_parameters()
    ]
    xs = [torch.randn(s, dtype=torch.float64) * 2 + 0.5 for s in shapes]
    with i2i_fast.use_backend(backend):
        for train in (True, False, True):
            got, want = _run_norm(ours, xs, train), _run_norm(ref, xs, train)
            assert len(got) == len(want)
            for i, (a, b) in enumerate(zip(got, want)):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{kw} train={train} #{i}: {m}")
    ours.load_state_dict(ref.state_dict())  # and back
    ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kw", list(_norm_combos()), ids=str)
def test_instance_norm_matches_torch(kw, backend):
    # batched (2, 5, 4, 6) and unbatched (5, 3, 7) inputs, train / eval / train again
    _compare_norm(fnn.InstanceNorm2d, nn.InstanceNorm2d, kw, [(2, 5, 4, 6), (5, 3, 7)], backend)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kw", list(_norm_combos()), ids=str)
def test_batch_norm_matches_torch(kw, backend):
    # batch 1 (pix2pix) takes the fused instance-norm kernels: covered too
    _compare_norm(fnn.BatchNorm2d, nn.BatchNorm2d, kw, [(3, 5, 4, 6), (1, 5, 3, 3)], backend)


@pytest.mark.parametrize("cls", [fnn.InstanceNorm2d, fnn.BatchNorm2d], ids=lambda c: c.__name__)
def test_norm_bias_false_with_fused_activation(cls):
    """weight without bias also in the fused epilogue (activation + residual)."""
    torch.manual_seed(1)
    m = cls(4, affine=True, bias=False, activation="leaky_relu", negative_slope=0.1, dtype=torch.float64)
    tm = getattr(nn, cls.__name__)(4, affine=True, bias=False, dtype=torch.float64)
    _copy_params(tm, m)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = m(x, residual=r)
    want = torch.nn.functional.leaky_relu(tm(x), 0.1) + r
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, (x, r, m.weight), g), torch.autograd.grad(want, (x, r, tm.weight), g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert m.bias is None and "bias" not in m.state_dict()


@pytest.mark.parametrize("cls", [fnn.InstanceNorm2d, fnn.BatchNorm2d], ids=lambda c: c.__name__)
def test_norm_device_dtype(cls):
    m = cls(3, affine=True, track_running_stats=True, device="meta", dtype=torch.float16)
    assert all(t.is_meta for t in m.state_dict().values())
    assert m.weight.dtype == torch.float16 and m.running_mean.dtype == torch.float16
    assert m.num_batches_tracked.dtype == torch.long  # as torch: the counter keeps its dtype


def test_instance_norm_num_features_mismatch_warns_as_torch():
    x = torch.randn(1, 3, 4, 4)
    with pytest.warns(UserWarning, match="does not match num_features"):
        nn.InstanceNorm2d(5)(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        fnn.InstanceNorm2d(5)(x)
    with pytest.raises(ValueError, match="match num_features"):
        fnn.InstanceNorm2d(5, affine=True)(x)


# ------------------------------------------------------------------ convolution: parity with torch
CONV_CASES = [
    dict(padding=1),
    dict(padding=3, bias=False),
    dict(padding=1, stride=2),
    dict(padding=1, groups=2),
    dict(padding=1, groups=4, bias=False),  # depthwise (in = groups = 4)
    dict(padding=2, dilation=2),
    dict(padding=2, dilation=(2, 1), groups=2),
    dict(padding=(1, 2)),
    dict(padding=(2, 1), stride=(2, 1)),
    dict(padding=1, stride=(1, 2)),
    dict(padding="same"),
    dict(padding="same", dilation=2, groups=2),
    dict(padding="valid"),
    dict(padding=0, groups=2),
    dict(padding=1, padding_mode="zeros"),
    dict(padding=1, padding_mode="replicate", groups=2),
    dict(padding=(1, 2), padding_mode="circular"),
]


def _conv_pair(kw, k=3, cin=4, cout=8):
    torch.manual_seed(0)
    tkw = dict(kw)
    tkw.setdefault("padding_mode", "reflect")
    ref = nn.Conv2d(cin, cout, k, **tkw, dtype=torch.float64)
    ours = fnn.ReflectionPadConv2d(cin, cout, k, **kw, dtype=torch.float64)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kw", CONV_CASES, ids=str)
def test_conv_matches_torch(kw, backend):
    ours, ref = _conv_pair(kw)
    for shape in [(2, 4, 9, 10), (4, 7, 8)]:  # batched and unbatched
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        with i2i_fast.use_backend(backend):
            y = ours(x)
        want = ref(x)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(y)
        ps = [p for p in (ours.weight, ours.bias) if p is not None]
        tps = [p for p in (ref.weight, ref.bias) if p is not None]
        with i2i_fast.use_backend(backend):
            got = torch.autograd.grad(y, [x] + ps, g)
        for a, b in zip(got, torch.autograd.grad(want, [x] + tps, g)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with i2i_fast.use_backend(backend):
        path = ours.path_for(x)
    mode = kw.get("padding_mode", "reflect")
    if mode != "reflect":
        assert path == "torch" and ours.fallback.startswith("torch") and "fallback=" in repr(ours)
    elif backend == "reference":
        assert path == "reference"
    elif kw.get("padding") in (0, "valid"):
        assert path == "conv"
    else:
        assert path == "pad"
    if (
        mode == "reflect"
        and set(kw) <= {"padding", "bias", "stride"}
        and isinstance(kw["padding"], int)
        and isinstance(kw.get("stride", 1), int)
    ):
        assert ours.fallback is None  # the default fused path (border on CUDA)
    elif mode == "reflect" and kw.get("padding") not in (0, "valid"):
        assert ours.fallback.startswith("pad: ") and f"fallback={ours.fallback!r}" in repr(ours)


def test_conv_matches_pad_then_conv():
    """= nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(padding=0, groups, dilation))"""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(6, 9, 3, dilation=2, groups=3, dtype=torch.float64))
    ours = fnn.ReflectionPadConv2d(6, 9, 3, padding=2, dilation=2, groups=3, dtype=torch.float64)
    ours.load_state_dict({k.split(".", 1)[1]: v for k, v in seq.state_dict().items()})
    x = torch.randn(1, 6, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(x), seq(x), rtol=1e-12, atol=1e-12)


def test_conv_stride_same_errors_as_torch():
    with pytest.raises(ValueError, match="padding='same'"):
        nn.Conv2d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding='same'"):
        fnn.ReflectionPadConv2d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="groups"):
        fnn.ReflectionPadConv2d(4, 6, 3, groups=4)


def test_conv_bool_dilation_names_the_argument_order():
    # the module used to take (in, out, k, stride, padding, bias); now nn.Conv2d's order
    with pytest.raises(TypeError, match="pass bias by keyword"):
        fnn.ReflectionPadConv2d(3, 4, 3, 1, 1, False)
    m = fnn.ReflectionPadConv2d(3, 4, 3, 1, 1, 1, 1, False)  # nn.Conv2d's positional order
    assert m.bias is None and m.fallback is None


def test_conv_device_dtype_and_geometry_edits():
    m = fnn.ReflectionPadConv2d(3, 4, 3, padding=1, device="meta", dtype=torch.float16)
    assert m.weight.is_meta and m.weight.dtype == torch.float16
    m = fnn.ReflectionPadConv2d(2, 2, 3, padding=1, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    m(x)
    m.dilation = (2, 2)  # editing the geometry after construction re-derives the path
    m.padding, m._reversed_padding_repeated_twice = (2, 2), [2, 2, 2, 2]
    ref = nn.Conv2d(2, 2, 3, padding=2, dilation=2, padding_mode="reflect", dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), ref(x), rtol=1e-12, atol=1e-12)
    assert "dilation" in m.fallback


# ------------------------------------------------------------------ convert() keeps them
def test_convert_groups_dilation_and_bias_free_norms():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(4, 8, 3, groups=2),
        nn.InstanceNorm2d(8, affine=True, bias=False, track_running_stats=True, momentum=None),
        nn.ReLU(),
        nn.ReflectionPad2d(2),
        nn.Conv2d(8, 8, 3, dilation=2, groups=8, bias=False),
        nn.BatchNorm2d(8, bias=False),
        nn.LeakyReLU(0.2),
        nn.Identity(),
        nn.ReflectionPad2d(1),
        nn.Conv2d(8, 3, 3, stride=2),
    ).double()
    p = i2i_fast.plan(net)
    text = str(p)
    assert "groups=2" in text and "pad+conv" in text, text
    conv = i2i_fast.convert(net, copy=True)
    assert list(conv.state_dict()) == list(net.state_dict())
    kinds = [type(m).__name__ for m in conv]
    assert kinds.count("ReflectionPadConv2d") == 2 and "Conv2d" in kinds  # the dilated one: the norm's out_pad
    assert isinstance(conv[1], fnn.ReflectionPadConv2d) and conv[1].groups == 2 and "groups=2" in conv[1].fallback
    assert isinstance(conv[2], fnn.InstanceNorm2d) and conv[2].bias is None and conv[2].momentum is None
    assert isinstance(conv[6], fnn.BatchNorm2d) and conv[6].bias is None
    assert isinstance(conv[10], fnn.ReflectionPadConv2d) and conv[10].fallback is None
    for train in (True, False):
        net.train(train), conv.train(train)
        x = torch.randn(2, 4, 12, 12, dtype=torch.float64, requires_grad=True)
        y, want = conv(x), net(x)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(y)
        ps, tps = list(conv.parameters()), list(net.parameters())
        for a, b in zip(torch.autograd.grad(y, [x] + ps, g), torch.autograd.grad(want, [x] + tps, g)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for (n, a), (_, b) in zip(conv.state_dict().items(), net.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=n)
    # plan() of the converted model names the layers off the default path, and why
    again = i2i_fast.plan(conv)
    assert any(p == "1" and "groups=2" in why for p, why in again.left_alone), str(again)
    assert not again.changes, str(again)  # idempotent


@pytest.mark.parametrize(
    "kw",
    [dict(padding=1, groups=2), dict(padding=(1, 2), dilation=2), dict(padding=1, padding_mode="circular")],
    ids=str,
)
def test_conv_general_paths_compile_fullgraph(kw):
    torch._dynamo.reset()
    ours, ref = _conv_pair(kw)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    y = torch.compile(ours, fullgraph=True)(x)
    torch.testing.assert_close(y, ref(x), rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.autograd.grad(ref(x).sum(), x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("cls", [fnn.InstanceNorm2d, fnn.BatchNorm2d], ids=lambda c: c.__name__)
def test_norm_bias_false_with_out_pad(cls, backend):
    """weight without bias on the norm family's path (output written reflection-padded)."""
    torch.manual_seed(2)
    m = cls(3, affine=True, bias=False, activation="relu", out_pad=1, dtype=torch.float64)
    tm = getattr(nn, cls.__name__)(3, affine=True, bias=False, dtype=torch.float64)
    _copy_params(tm, m)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    with i2i_fast.use_backend(backend):
        y = m(x)
    want = torch.nn.functional.pad(torch.relu(tm(x)), (1, 1, 1, 1), mode="reflect")
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    with i2i_fast.use_backend(backend):
        got = torch.autograd.grad(y, (x, m.weight), g)
    for a, b in zip(got, torch.autograd.grad(want, (x, tm.weight), g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(m.buffers(), tm.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------- meta tensors: shapes, as torch's do


def _meta_cases():
    from i2i_fast import functional as F

    c = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    x = c(2, 4, 6, 7)
    return {  # name -> (call, shape)
        "instance_norm": (lambda: F.instance_norm(x), (2, 4, 6, 7)),
        "instance_norm_pad": (lambda: F.instance_norm(x, activation="relu", out_pad=1), (2, 4, 8, 9)),
        "instance_norm_running": (lambda: F.instance_norm(x, c(4), c(4), use_input_stats=False), (2, 4, 6, 7)),
        "batch_norm": (lambda: F.batch_norm(x, c(4), c(4), training=True), (2, 4, 6, 7)),
        "batch_norm_eval": (lambda: F.batch_norm(x, c(4), c(4)), (2, 4, 6, 7)),
        "iln": (lambda: F.iln(x, c(1, 4, 1, 1), c(1, 4, 1, 1), c(1, 4, 1, 1)), (2, 4, 6, 7)),
        "adalin": (lambda: F.adalin(x, c(1, 4, 1, 1), c(2, 4), c(2, 4)), (2, 4, 6, 7)),
        "layer_norm": (lambda: F.layer_norm(x, c(4), c(4)), (2, 4, 6, 7)),
        "adain": (lambda: F.adain(x, c(8), c(8)), (2, 4, 6, 7)),
        "reflection_pad2d": (lambda: F.reflection_pad2d(x, 2), (2, 4, 10, 11)),
        "reflection_pad_conv2d": (lambda: F.reflection_pad_conv2d(x, c(3, 4, 3, 3), c(3), 1), (2, 3, 6, 7)),
        "gan_loss": (lambda: F.gan_loss([x, c(2, 1, 3, 3)], False, "vanilla"), ()),
        "gan_loss_none": (lambda: F.gan_loss(x, True, "hinge", reduction="none"), (2, 4, 6, 7)),
        "l1_loss": (lambda: F.l1_loss([(x, c(2, 4, 6, 7))]), ()),
        "bce_with_logits": (lambda: F.bce_with_logits([(x, c(2, 4, 6, 7))]), ()),
        "spectral_norm_weight": (lambda: F.spectral_norm_weight(c(3, 36), c(3), c(36)), (3, 36)),
        "gradient_penalty": (lambda: F.gradient_penalty(nn.Conv2d(4, 1, 3, device="meta"), x, c(2, 4, 6, 7)), ()),
    }


@pytest.mark.parametrize("name", list(_meta_cases()))
def test_functional_on_meta_tensors(name):
    call, shape = _meta_cases()[name]
    out = call()
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.is_meta and tuple(out.shape) == shape
