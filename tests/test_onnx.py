"""torch.onnx.export of converted models and of every drop-in module, with the default
(torch.export-based) exporter and the TorchScript one (dynamo=False).

While an export traces, the i2i_fast ops run their reference math (ops.common.onnx_exporting), so
the graph holds standard ONNX ops only (the norms as ReduceMean / Sub / Div..., Pad with mode
reflect, the activations, Add); onnxruntime's output must equal the original model's to fp32
rounding. Small widths and 32x32-64x64 images keep the file within a minute or two on CPU.
"""

import numpy as np
import pytest
import torch
from test_convert import FAMILIES, build
from torch import nn

import i2i_fast
from i2i_fast import ops
from i2i_fast.models import unit

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the default exporter's translator

EXPORTERS = {"dynamo": True, "torchscript": False}
# fp32 rounding: |onnxruntime - original| <= REL_TOL * max|original| (+ FLOOR for an all-zero
# output); relative to the output's scale, since a small model's outputs can be ~1e-3
REL_TOL, FLOOR = 1e-5, 1e-8
STANDARD_DOMAINS = ("", "ai.onnx")


class UnitTranslate(nn.Module):
    """UNIT's domain-1 -> domain-2 translation at inference: G2 of E1's mean code (the sampled
    code adds noise, which an exported graph could not reproduce)."""

    def __init__(self):
        super().__init__()
        shared_e, shared_g = unit.ResidualBlock(16), unit.ResidualBlock(16)
        self.E1 = unit.Encoder(dim=4, shared_block=shared_e)
        self.G2 = unit.Generator(dim=4, shared_block=shared_g)

    def forward(self, x):
        return self.G2(self.E1(x)[0])


# the six generators as tests/test_convert.py builds them (UNIT: its translation path)
GENERATORS = ["cyclegan_resnet", "cyclegan_unet", "ugatit_gen_light", "stargan_gen", "munit_adaingen", "unit"]


def _generator(name):
    if name == "unit":
        torch.manual_seed(0)
        g = UnitTranslate()
        inputs = (torch.rand(1, 3, 32, 32) * 2 - 1,)
    else:
        g = build(name, torch.float32)
        inputs = tuple(t.float()[:1] for t in FAMILIES[name][1]())
    with torch.no_grad():  # running statistics that are not the identity (StarGAN's IN, BN)
        g.train()(*(t * 3 + 1 if t.dim() == 4 else t for t in inputs))
    return g.eval(), inputs


class _Call(nn.Module):
    """A drop-in module called with fixed non-tensor arguments (GANLoss's target_is_real)."""

    def __init__(self, m, *args):
        super().__init__()
        self.m, self.args = m, args

    def forward(self, x):
        return self.m(x, *self.args)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _running(m):
    m.running_mean.copy_(_x(m.num_features, seed=3))
    m.running_var.copy_(_x(m.num_features, seed=4).abs() + 0.5)
    return m


def _adain():
    m = i2i_fast.AdaIN(4, activation="relu")
    m.weight, m.bias = _x(8, seed=5) + 1, _x(8, seed=6)
    return m


def _spectral_norm():
    conv = nn.utils.spectral_norm(nn.Conv2d(256, 256, 1))  # large enough for the fused W / sigma on CPU
    return i2i_fast.convert(nn.Sequential(conv))


X = _x(2, 4, 8, 8)
# name -> (module, inputs, ONNX op types the graph must contain)
MODULES = {
    "instance_norm_relu_pad": (
        lambda: i2i_fast.InstanceNorm2d(4, affine=True, activation="relu", out_pad=1),
        (X,),
        {"Relu", "Pad"},
    ),
    "instance_norm_residual": (
        lambda: i2i_fast.InstanceNorm2d(4, activation="leaky_relu"),
        (X, _x(2, 4, 8, 8, seed=1)),
        {"LeakyRelu", "Add"},
    ),
    "instance_norm_running": (
        lambda: _running(i2i_fast.InstanceNorm2d(4, affine=True, track_running_stats=True)),
        (X,),
        set(),
    ),
    "batch_norm": (lambda: _running(i2i_fast.BatchNorm2d(4, activation="tanh")), (X,), {"Tanh"}),
    "iln": (lambda: i2i_fast.ILN(4, activation="relu", out_pad=1), (X,), {"Relu", "Pad"}),
    "adalin": (lambda: i2i_fast.AdaLIN(4), (X, _x(2, 4, seed=1), _x(2, 4, seed=2)), set()),
    "layer_norm": (lambda: i2i_fast.LayerNorm(4, activation="relu"), (X,), {"Relu"}),
    "adain": (_adain, (X,), {"Relu"}),
    "reflection_pad_conv": (lambda: i2i_fast.ReflectionPadConv2d(4, 8, 3, padding=1), (X,), {"Pad", "Conv"}),
    "spectral_norm": (_spectral_norm, (_x(1, 256, 4, 4),), {"Conv"}),
    "gan_loss": (lambda: _Call(i2i_fast.GANLoss("lsgan"), True), (_x(2, 1, 6, 6),), {"Sub"}),
}


def _export_and_run(model, inputs, dynamo, path):
    """(onnx model, onnxruntime's outputs) of torch.onnx.export(model, inputs)."""
    f = str(path / f"m_{dynamo}.onnx")
    with torch.no_grad():
        torch.onnx.export(model, inputs, f, dynamo=dynamo, verbose=False)
    proto = onnx.load(f)
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
    return proto, sess.run(None, feeds)


def _flat(out):
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def _check_graph(proto, must_have):
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    custom = sorted(o for o in ops if o[0] not in STANDARD_DOMAINS)
    assert not custom, f"non-standard ONNX ops: {custom}"
    missing = must_have - {t for _, t in ops}
    assert not missing, f"expected ONNX ops {sorted(missing)} in {sorted(t for _, t in ops)}"
    pads = [n for n in proto.graph.node if n.op_type == "Pad"]
    for n in pads:
        mode = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("mode", b"constant")
        assert mode in (b"reflect", "reflect"), f"a Pad with mode {mode!r}: only reflection pads are expected"


def _assert_close(got, want):
    """(max error, max |want|) over the outputs, after checking each within the tolerance."""
    assert len(got) == len(want)
    worst = scale = 0.0
    for k, (g, w) in enumerate(zip(got, want)):
        w = w.detach().numpy()
        assert g.shape == w.shape, f"output {k}: shape {g.shape} vs {w.shape}"
        err, top = float(np.abs(g - w).max()), float(np.abs(w).max())
        assert err <= REL_TOL * top + FLOOR, f"output {k}: max error {err:.2e}, max |original| {top:.2e}"
        worst, scale = max(worst, err), max(scale, top)
    return worst, scale


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", GENERATORS)
def test_converted_generator_onnx_round_trip(name, exporter, tmp_path):
    """The converted generator exports to standard ONNX; onnxruntime reproduces the ORIGINAL
    model's output."""
    original, inputs = _generator(name)
    converted = i2i_fast.convert(original, copy=True).eval()
    proto, got = _export_and_run(converted, inputs, EXPORTERS[exporter], tmp_path)
    needs_pad = any(isinstance(m, nn.ReflectionPad2d) for m in original.modules())
    _check_graph(proto, {"Pad"} if needs_pad else set())
    with torch.no_grad():
        want = _flat(original(*inputs))
    err, scale = _assert_close(got, want)
    print(f"{name} {exporter}: max |onnxruntime - original| = {err:.2e} (max |original| {scale:.2e})")


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(MODULES))
def test_dropin_module_onnx_round_trip(name, exporter, tmp_path):
    make, inputs, must_have = MODULES[name]
    torch.manual_seed(0)
    m = make().eval()
    proto, got = _export_and_run(m, inputs, EXPORTERS[exporter], tmp_path)
    _check_graph(proto, must_have)
    with torch.no_grad():
        want = _flat(m(*inputs))
    _assert_close(got, want)


def test_fused_ops_outside_onnx_export():
    """The fallback is for ONNX export only: eager calls, torch.export and jit tracing keep the
    fused ops."""
    assert not ops.common.onnx_exporting()
    m = i2i_fast.InstanceNorm2d(4, activation="relu")
    ep = torch.export.export(m, (X,))
    assert any("i2i_fast" in str(n.target) for n in ep.graph.nodes), ep.graph
    traced = torch.jit.trace(m, (X,), check_trace=False)
    assert "i2i_fast::" in str(traced.graph)
