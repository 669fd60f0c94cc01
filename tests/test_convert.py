"""i2i_fast.convert / plan on the reference networks (i2i_fast.models, the "original" models).

Parity rule (tests/conftest.py): the unconverted model in float64 is the reference; in float64
the converted model must match it within atol 1e-10 (errors are ~1e-15). Tiny widths and 32x32
images keep the file fast on a 2-core CPU.
"""

import copy
import logging
import os
import socket

import pytest
import torch
from conftest import assert_parity, requires_cuda
from torch import nn

import i2i_fast
from i2i_fast.bench import steps
from i2i_fast.convert import Folded, FusedResidualBlock, FusedResnetAdaILNBlock
from i2i_fast.models import cyclegan, munit, stargan, ugatit, unit

F64 = torch.float64
HAS_RPCONV = hasattr(i2i_fast, "ReflectionPadConv2d")
HAS_OUT_PAD = "out_pad" in i2i_fast.InstanceNorm2d.__init__.__code__.co_varnames
MUNIT_GEN = dict(dim=4, style_dim=8, n_downsample=2, n_res=2, activ="relu", pad_type="reflect", mlp_dim=8)
MUNIT_DIS = dict(n_layer=3, gan_type="lsgan", dim=4, norm="in", activ="lrelu", num_scales=2, pad_type="reflect")


def _img(*shape, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=F64) * 2 - 1).to(dtype)


def _resnet_g(norm="instance", **kw):
    """CycleGAN ResnetGenerator as define_G builds it, with 2 blocks and ngf 4."""
    return cyclegan.init_weights(cyclegan.ResnetGenerator(3, 3, 4, cyclegan.get_norm_layer(norm), n_blocks=2, **kw))


# name -> (builder, inputs); every builder seeds itself, so two calls give the same weights
FAMILIES = {
    "cyclegan_resnet": (lambda: _resnet_g(), lambda: (_img(2, 3, 32, 32),)),
    "cyclegan_resnet_dropout": (lambda: _resnet_g(use_dropout=True), lambda: (_img(2, 3, 32, 32),)),
    "cyclegan_unet": (
        lambda: cyclegan.init_weights(
            cyclegan.UnetGenerator(3, 3, 6, ngf=4, norm_layer=cyclegan.get_norm_layer("instance"), use_dropout=True)
        ),
        lambda: (_img(2, 3, 64, 64),),
    ),
    "cyclegan_nlayer": (lambda: cyclegan.define_D(3, 4, "basic", norm="instance"), lambda: (_img(2, 3, 32, 32),)),
    "cyclegan_resnet_batch": (lambda: _resnet_g("batch", use_dropout=True), lambda: (_img(2, 3, 32, 32),)),
    "pix2pix_unet": (
        lambda: cyclegan.define_G(3, 3, 4, "unet_128", norm="batch", use_dropout=True),
        lambda: (_img(2, 3, 128, 128),),
    ),
    "pix2pix_dis": (lambda: cyclegan.define_D(6, 4, "basic", norm="batch"), lambda: (_img(2, 6, 32, 32),)),
    "cyclegan_pixel": (lambda: cyclegan.define_D(3, 4, "pixel", norm="instance"), lambda: (_img(2, 3, 16, 16),)),
    "ugatit_gen_light": (
        lambda: ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=2, img_size=32, light=True),
        lambda: (_img(2, 3, 32, 32),),
    ),
    "ugatit_dis": (lambda: ugatit.Discriminator(3, 4, n_layers=5), lambda: (_img(2, 3, 32, 32),)),
    "stargan_gen": (
        lambda: stargan.Generator(conv_dim=4, c_dim=3, repeat_num=2),
        lambda: (_img(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]], dtype=F64)),
    ),
    "stargan_dis": (
        lambda: stargan.Discriminator(image_size=32, conv_dim=4, c_dim=3, repeat_num=5),
        lambda: (_img(2, 3, 32, 32),),
    ),
    "unit_encoder": (lambda: unit.Encoder(dim=4, shared_block=unit.ResidualBlock(16)), lambda: (_img(2, 3, 32, 32),)),
    "unit_generator": (
        lambda: unit.Generator(dim=4, shared_block=unit.ResidualBlock(16)),
        lambda: (_img(2, 16, 8, 8),),
    ),
    "munit_adaingen": (lambda: munit.AdaINGen(3, MUNIT_GEN), lambda: (_img(2, 3, 32, 32),)),
    "munit_vaegen": (lambda: munit.VAEGen(3, MUNIT_GEN), lambda: (_img(2, 3, 32, 32),)),
    "munit_dis": (lambda: munit.MsImageDis(3, MUNIT_DIS), lambda: (_img(2, 3, 32, 32),)),
}


def build(name, dtype=F64):
    torch.manual_seed(0)
    return FAMILIES[name][0]().to(dtype)


def flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


def fwd_bwd(model, inputs, seed=5):
    """Outputs, input gradients and parameter gradients of sum_i <out_i, w_i> (w fixed)."""
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    inputs = [t.detach().to(dtype).requires_grad_() if t.is_floating_point() else t for t in inputs]
    torch.manual_seed(seed)  # dropout / reparameterisation noise
    outs = flat(model(*inputs))
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=F64).to(o)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return outs, [t.grad for t in inputs if t.requires_grad], grads


def check_parity(ours, same, ref, dtype, what):
    """assert_parity on each output/gradient; `same` is the unconverted model in `dtype`."""
    (o1, i1, p1), (o2, i2, p2), (o3, i3, p3) = ours, same, ref
    assert len(o1) == len(o3) and set(p1) == set(p3)
    for k, (a, b, c) in enumerate(zip(o1, o2, o3)):
        assert_parity(a, b, c, dtype, f"{what} output {k}")
    for k, (a, b, c) in enumerate(zip(i1, i2, i3)):
        assert_parity(a, b, c, dtype, f"{what} grad input {k}")
    for n in p3:
        assert (p1[n] is None) == (p3[n] is None), f"{what}: grad of {n} is None on one side only"
        if p3[n] is not None:
            assert_parity(p1[n], p2[n], p3[n], dtype, f"{what} grad {n}")


def assert_same_state(a, b, what="", exact=True):
    """Same keys; same values (exact) or within the parity rule (b is the reference)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb), f"{what}: state_dict keys differ"
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, f"{what}: {k} dtype differs"
        if exact or not sa[k].is_floating_point():
            assert torch.equal(sa[k], sb[k]), f"{what}: {k} differs"
        else:
            assert_parity(sa[k], sb[k], sb[k], sa[k].dtype, f"{what}: {k}")


# ------------------------------------------------------------------------ parity, fp64


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_parity_float64(name):
    ref = build(name)
    conv = i2i_fast.convert(ref, copy=True)
    assert conv is not ref
    assert_same_state(conv, ref, name)
    inputs = FAMILIES[name][1]()
    r = fwd_bwd(ref, inputs)
    check_parity(fwd_bwd(conv, inputs), r, r, F64, name)
    assert_same_state(conv, ref, f"{name} after a training-mode forward", exact=False)  # running stats
    conv.eval(), ref.eval()
    if name not in ("unit_encoder", "munit_vaegen"):  # eval still samples noise there: fine too
        r = fwd_bwd(ref, inputs)
        check_parity(fwd_bwd(conv, inputs), r, r, F64, f"{name} eval")


def test_what_convert_fuses_per_family():
    counts = {name: i2i_fast.plan(build(name)).counts() for name in FAMILIES}
    # CycleGAN ResNet, 2 blocks: 9 IN swapped, 7 ReLU folded, 2 residual adds
    assert counts["cyclegan_resnet"] == {"swap": 9, "fold": 7, "residual": 2, **_pad_counts("cyclegan_resnet")}
    assert counts["ugatit_gen_light"]["swap"] == 4 + 7 + 2  # adaILN, IN (3 + 2 blocks x 2), ILN
    assert counts["ugatit_gen_light"]["residual"] == 4
    assert counts["stargan_gen"] == {"swap": 9, "fold": 7, "residual": 2}  # zero padding only
    assert "swap" not in counts["stargan_dis"] and "swap" not in counts["ugatit_dis"]
    assert counts["munit_adaingen"]["residual"] == 4 and counts["munit_adaingen"]["swap"] == 7 + 4 + 2  # IN, AdaIN, LN
    # per scale: 'in' + lrelu twice, and the first block's lrelu into the second's pad+conv
    assert counts["munit_dis"]["fold"] == 2 * (2 + 1)
    assert counts["unit_encoder"]["residual"] == 4  # 3 blocks + the shared one
    c = i2i_fast.convert(build("munit_adaingen"))
    assert type(c.dec.model[0].model[0].model[0].norm).__name__ == "AdaptiveInstanceNorm2d"
    assert isinstance(c.dec.model[0].model[0].model[0].norm, i2i_fast.AdaIN)
    assert isinstance(c.dec.model[0].model[0], FusedResidualBlock)
    u = i2i_fast.convert(build("ugatit_gen_light"))
    assert isinstance(u.UpBlock1_1, FusedResnetAdaILNBlock) and isinstance(u.UpBlock2[3], i2i_fast.ILN)
    assert u.UpBlock2[3].activation == "relu" and isinstance(u.UpBlock2[4], Folded)


def _pad_counts(name):
    pl = i2i_fast.plan(build(name))
    return {k: v for k, v in pl.counts().items() if k in ("pad+conv", "out_pad")}


# ------------------------------------------------------------------- Triton, fp32


@pytest.mark.parametrize(
    "name,shape",
    [("cyclegan_resnet", (1, 3, 16, 16)), ("ugatit_gen_light", (1, 3, 16, 16)), ("pix2pix_dis", (2, 6, 32, 32))],
)
def test_family_parity_triton(name, shape):
    if not i2i_fast.backends()["triton"][0]:
        pytest.skip(f"triton backend unavailable: {i2i_fast.backends()['triton'][1]}")
    torch.manual_seed(0)
    if name == "cyclegan_resnet":
        ref32 = cyclegan.define_G(3, 3, 2, "resnet_6blocks", norm="instance")
    elif name == "pix2pix_dis":  # batch norm: statistics over both samples
        ref32 = cyclegan.define_D(6, 2, "basic", norm="batch")
    else:
        ref32 = ugatit.ResnetGenerator(3, 3, ngf=2, n_blocks=1, img_size=16, light=True)
    ref64 = copy.deepcopy(ref32).double()
    conv = i2i_fast.convert(ref32, copy=True)
    inputs = (_img(*shape, dtype=torch.float32),)
    with i2i_fast.use_backend("triton"):
        ours = fwd_bwd(conv, inputs)
    check_parity(ours, fwd_bwd(ref32, inputs), fwd_bwd(ref64, inputs), torch.float32, f"{name} triton")


# ------------------------------------------------------------- whole training steps


def _adam(params, lr=2e-4, **kw):
    return torch.optim.Adam(list(params), lr=lr, betas=(0.5, 0.999), **kw)


def _cyclegan_nets():
    torch.manual_seed(0)
    nets = [cyclegan.define_G(3, 3, 4, "resnet_6blocks", norm="instance") for _ in range(2)]
    nets += [cyclegan.define_D(3, 4, "n_layers", n_layers_D=2, norm="instance") for _ in range(2)]
    return [n.double() for n in nets]


def _cyclegan_step(nets, A, B, fused=False):
    G_A, G_B, D_A, D_B = nets
    opt_G = _adam(list(G_A.parameters()) + list(G_B.parameters()))
    opt_D = _adam(list(D_A.parameters()) + list(D_B.parameters()))
    return cyclegan.training_step(G_A, G_B, D_A, D_B, A, B, opt_G, opt_D, fused_losses=fused)


@pytest.mark.parametrize("fused", [False, True], ids=["torch_losses", "fused_losses"])
def test_cyclegan_training_step_matches(fused):
    """Converted nets (and, fused, the i2i_fast losses) vs the original step in float64."""
    ref = _cyclegan_nets()
    conv = [i2i_fast.convert(n, copy=True) for n in ref]
    A, B = _img(1, 3, 32, 32, seed=2), _img(1, 3, 32, 32, seed=3)
    lr_, lc = _cyclegan_step(ref, A, B), _cyclegan_step(conv, A, B, fused)
    assert {"G", "D_A", "D_B"} <= lc.keys()
    for k in lc:
        assert_parity(lc[k], lr_[k], lr_[k], F64, f"loss {k}")
    for r, c in zip(ref, conv):
        for (k, a), b in zip(c.state_dict().items(), r.state_dict().values()):
            assert_parity(a, b, b, F64, f"after the step: {k}")


@pytest.mark.parametrize("fused", [False, True], ids=["torch_losses", "fused_losses"])
def test_ugatit_training_step_matches(fused):
    def nets():
        torch.manual_seed(0)
        gens = [ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=1, img_size=32, light=True) for _ in range(2)]
        dis = [ugatit.Discriminator(3, 4, n_layers=n) for n in (5, 5, 3, 3)]
        return [m.double() for m in gens + dis]

    def step(ms, A, B, fused=False):
        G_opt = _adam([p for g in ms[:2] for p in g.parameters()], lr=1e-3, weight_decay=1e-4)
        D_opt = _adam([p for d in ms[2:] for p in d.parameters()], lr=1e-4, weight_decay=1e-4)
        return ugatit.training_step(*ms, A, B, G_opt, D_opt, fused_losses=fused)

    ref = nets()
    conv = [i2i_fast.convert(m, copy=True) for m in ref]
    A, B = _img(1, 3, 32, 32, seed=2), _img(1, 3, 32, 32, seed=3)
    lr_, lc = step(ref, A, B), step(conv, A, B, fused)
    assert lc.keys() == lr_.keys()
    for k in lr_:
        assert_parity(lc[k], lr_[k], lr_[k], F64, f"loss {k}")
    for r, c in zip(ref, conv):
        for (k, a), b in zip(c.state_dict().items(), r.state_dict().values()):
            assert_parity(a, b, b, F64, f"after the step: {k}")


@pytest.mark.parametrize("family", list(steps.FAMILIES))
def test_bench_steps_converted_step_matches(family):
    """The benchmark's "converted" step (convert + the i2i_fast losses) of every family: its
    first-step losses equal the original's (same weights, data, noise), float32 CPU configs."""
    ref = steps.Runner(family, "eager", "cpu").run()
    got = steps.Runner(family, "converted", "cpu").run()
    ok, detail = steps.compare_losses(ref, got)
    assert ok, detail
    assert not steps.compare_losses(ref, {k: v * 1.01 for k, v in got.items()})[0]


# --------------------------------------------------------------------- torch.compile


def _check_compiled(name, backend):
    torch._dynamo.reset()
    conv = i2i_fast.convert(build(name, torch.float32))
    compiled = torch.compile(conv, fullgraph=True, dynamic=False, backend=backend)
    inputs = FAMILIES[name][1]()
    eager = fwd_bwd(conv, inputs)
    got = fwd_bwd(compiled, inputs)
    for a, b in zip(got[0] + got[1] + list(got[2].values()), eager[0] + eager[1] + list(eager[2].values())):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name", ["cyclegan_resnet", "ugatit_gen_light", "munit_adaingen", "pix2pix_dis", "pix2pix_unet"]
)
def test_compile_converted_fullgraph(name):
    """fullgraph=True capture + AOT autograd of the converted models (custom ops' fake and
    autograd formulas, FusedResidualBlock, MUNIT's AdaIN assignment). aot_eager skips
    inductor's code generation, which takes minutes on the 2-core CI machine."""
    _check_compiled(name, "aot_eager")


def test_compile_converted_inductor():
    """The default inductor backend, end to end, on the smallest converted model."""
    _check_compiled("cyclegan_pixel", "inductor")


# ------------------------------------------------------------------------------- DDP


def _ddp_worker(rank, port, path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        nets = [i2i_fast.convert(n, copy=True) for n in _cyclegan_nets()]
        ddp = [nn.parallel.DistributedDataParallel(n) for n in nets]
        A, B = _img(2, 3, 32, 32, seed=2), _img(2, 3, 32, 32, seed=3)
        _cyclegan_step(ddp, A[rank : rank + 1], B[rank : rank + 1])  # half the batch per process
        if rank == 0:
            torch.save([n.state_dict() for n in nets], path)
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes(tmp_path):
    """One CycleGAN step of converted nets under DDP (2 processes, batch 1 each) equals the
    single-process step on batch 2: instance norm is per sample and every loss is a mean."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "rank0.pt")
    mp.start_processes(_ddp_worker, args=(port, path), nprocs=2, start_method="spawn")
    got = torch.load(path)
    nets = [i2i_fast.convert(n, copy=True) for n in _cyclegan_nets()]
    _cyclegan_step(nets, _img(2, 3, 32, 32, seed=2), _img(2, 3, 32, 32, seed=3))
    for n, sd in zip(nets, got):
        for k, v in n.state_dict().items():
            torch.testing.assert_close(sd[k], v, atol=1e-12, rtol=0, msg=lambda m: f"{k}: {m}")


# ------------------------------------------------------------------ convert semantics


class MyNorm(nn.Module):
    def forward(self, x):
        return x / x.abs().amax((2, 3), keepdim=True)


class ResnetBlock(nn.Module):
    """A user's block with the CycleGAN name but another structure: must be left alone."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.InstanceNorm2d(4)

    def forward(self, x):
        return x * self.b(self.a(x))


def test_unknown_layers_left_alone():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        MyNorm(),
        nn.ReLU(),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        ResnetBlock(),
        nn.InstanceNorm2d(4),
        nn.SiLU(),
    ).double()
    pl = i2i_fast.plan(m)
    alone = dict(pl.left_alone)
    assert "unknown norm layer" in alone["1"] and "unknown norm layer" in alone["3"]
    assert "not the known residual structure" in alone["5"]
    assert {p for p, _ in pl.changes} == {"5.b", "6"}  # IN swapped, SiLU not foldable
    c = i2i_fast.convert(m, copy=True)
    assert type(c[1]) is MyNorm and type(c[3]) is nn.GroupNorm and type(c[2]) is nn.ReLU
    assert type(c[7]) is nn.SiLU and c[6].activation is None
    x = _img(2, 3, 8, 8)
    r = fwd_bwd(m, (x,))
    check_parity(fwd_bwd(c, (x,)), r, r, F64, "custom layers")
    assert "left alone" in str(pl) and "MyNorm" in str(pl)


def test_single_norm_model_and_1d_norm():
    n = nn.InstanceNorm2d(4, affine=True, track_running_stats=True).double()
    c = i2i_fast.convert(n)
    assert isinstance(c, i2i_fast.InstanceNorm2d) and c.weight is n.weight and c.running_mean is n.running_mean
    assert c.affine and c.track_running_stats and c.momentum == n.momentum
    assert "only 2-D" in dict(i2i_fast.plan(nn.Sequential(nn.InstanceNorm1d(4))).left_alone)["0"]


def test_look_alike_with_wrong_shapes_is_not_swapped():
    bad = ugatit.ILN(4)
    bad.gamma = nn.Parameter(torch.ones(4))  # not (1, C, 1, 1): not U-GAT-IT's ILN
    m = nn.Sequential(nn.Conv2d(3, 4, 3), bad)
    assert i2i_fast.plan(m).changes == []
    assert "unknown norm layer" in dict(i2i_fast.plan(m).left_alone)["1"]


def test_convert_twice_is_a_noop():
    for name in ("cyclegan_resnet_dropout", "ugatit_gen_light", "munit_adaingen", "stargan_gen"):
        c = i2i_fast.convert(build(name))
        assert i2i_fast.plan(c).changes == [], name
        c2 = i2i_fast.convert(c, copy=True)
        assert repr(c2) == repr(c) and list(c2.state_dict()) == list(c.state_dict())


def test_pix2pix_batchnorm():
    """BatchNorm2d is swapped (buffers carried); the PatchGAN's BN -> LeakyReLU and the U-Net's
    downnorm -> inner block's in-place LeakyReLU are folded; a ResnetGenerator with batch norm
    gets its residual add fused. SyncBatchNorm and BatchNorm1d are left alone."""
    torch.manual_seed(0)
    unet = cyclegan.define_G(3, 3, 4, "unet_128", norm="batch", use_dropout=True)
    pl = i2i_fast.plan(unet)
    c = pl.counts()
    assert c["swap"] == 11 and c["fold"] == 5, pl  # 5 down + 6 up norms; each downnorm feeds an inner block
    assert sum("LeakyReLU(0.2) into the norm" in w for _, w in pl.changes) == 5
    conv = i2i_fast.convert(unet, copy=True)
    second = conv.model.model[1]  # the block below the outermost
    assert isinstance(second.model[0], nn.LeakyReLU)  # fed by a conv: not folded
    assert second.model[2].activation == "leaky_relu"  # its downnorm computes ...
    assert isinstance(second.model[3].model[0], Folded)  # ... the inner block's downrelu
    dis = i2i_fast.plan(cyclegan.define_D(6, 4, "basic", norm="batch")).counts()
    assert dis["swap"] == 3 and dis["fold"] == 3
    res = i2i_fast.plan(_resnet_g("batch", use_dropout=True)).counts()
    assert res["residual"] == 2 and res["swap"] == 9
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.BatchNorm1d(4))
    pl = i2i_fast.plan(odd)
    assert not pl.changes and sum("only torch.nn.BatchNorm2d" in w for _, w in pl.left_alone) == 2


def test_saved_peak_mib_counts_live_graph_storages():
    """steps.saved_peak_mib: distinct non-parameter storages, counted while their graph
    lives (a freed graph's bytes leave the count), views of one storage once."""
    w = torch.nn.Parameter(torch.randn(1024))

    class Stub:
        nets = [torch.nn.Module()]
        nets[0].w = w

        def run(self):
            x = torch.randn(1024, requires_grad=True)
            (x * w).sum().backward()  # saves x (4 KiB) and w (a parameter)
            y = torch.randn(2048, requires_grad=True)  # the first graph is freed: peak 8 KiB, not 12
            (y[:1024] * y[1024:] * w).sum().backward()

    assert steps.saved_peak_mib(Stub()) * 2**20 == 8192 + 4096  # y's storage + y[:1024] * y[1024:]


@pytest.mark.parametrize("family", ["ugatit", "munit"])
def test_converted_step_saves_less_for_backward(family):
    """The fused norms keep x and (N, C) statistics for backward where the originals keep
    several full-size intermediates: the converted step's saved-activation peak is lower."""
    eager = steps.saved_peak_mib(steps.Runner(family, "eager", "cpu"))
    converted = steps.saved_peak_mib(steps.Runner(family, "converted", "cpu"))
    assert converted < 0.8 * eager, (family, eager, converted)


def test_pix2pix_training_step_matches():
    """pix2pix (BatchNorm U-Net + BatchNorm PatchGAN, dropout): one converted step with the fused
    losses vs the original step in float64: losses, every parameter and running statistic."""

    def run(converted):
        torch.manual_seed(0)
        fam = steps.FAMILIES["pix2pix"]("cpu", True)
        nets = [n.double() for n in fam.nets]
        if converted:
            nets = [i2i_fast.convert(n, copy=True) for n in nets]
        data = tuple(t.double() for t in fam.data)
        torch.manual_seed(1)  # dropout masks
        return nets, fam.step(nets, fam.opts(nets), data, converted)

    (ref, lr_), (conv, lc) = run(False), run(True)
    assert isinstance(conv[1].model[3], i2i_fast.BatchNorm2d)
    for k in lr_:
        assert_parity(lc[k], lr_[k], lr_[k], F64, f"loss {k}")
    for r, c in zip(ref, conv):
        assert_same_state(c, r, "pix2pix after the step", exact=False)


def test_cyclegan_fused_step_with_other_criteria():
    """fused_losses with a given criterion: i2i_fast.GANLoss (host labels) and the original
    GANLoss with other labels and mode (labels read from its buffers) give the original step."""
    A, B = _img(1, 3, 32, 32, seed=2), _img(1, 3, 32, 32, seed=3)
    for crit in (i2i_fast.GANLoss("vanilla"), cyclegan.GANLoss("lsgan", 0.9, 0.1)):
        ref = _cyclegan_nets()
        fused = _cyclegan_nets()
        orig_crit = cyclegan.GANLoss(crit.gan_mode, float(crit.real_label), float(crit.fake_label))
        G_A, G_B, D_A, D_B = ref
        lr_ = cyclegan.training_step(
            G_A,
            G_B,
            D_A,
            D_B,
            A,
            B,
            _adam(list(G_A.parameters()) + list(G_B.parameters())),
            _adam(list(D_A.parameters()) + list(D_B.parameters())),
            orig_crit.double(),
        )
        G_A, G_B, D_A, D_B = fused
        lf = cyclegan.training_step(
            G_A,
            G_B,
            D_A,
            D_B,
            A,
            B,
            _adam(list(G_A.parameters()) + list(G_B.parameters())),
            _adam(list(D_A.parameters()) + list(D_B.parameters())),
            crit.double(),
            fused_losses=True,
        )
        for k in ("G", "D_A", "D_B"):
            assert_parity(lf[k], lr_[k], lr_[k], F64, f"{type(crit).__module__} loss {k}")


def test_unet_fold_needs_inplace_activation():
    """With an out-of-place downrelu the skip carries the un-activated x: no fold."""
    torch.manual_seed(0)
    unet = cyclegan.define_G(3, 3, 4, "unet_128", norm="batch")
    for m in unet.modules():
        if isinstance(m, nn.LeakyReLU):
            m.inplace = False
    assert "fold" not in i2i_fast.plan(unet).counts()
    hooked = cyclegan.define_G(3, 3, 4, "unet_128", norm="batch")  # a hook on an inner model: no fold
    hooked.model.model[1].model[3].model.register_forward_pre_hook(lambda m, args: None)
    assert i2i_fast.plan(hooked).counts()["fold"] == 4
    conv = i2i_fast.convert(unet, copy=True).double()
    x = _img(2, 3, 128, 128)
    r = fwd_bwd(unet.double(), (x,))
    check_parity(fwd_bwd(conv, (x,)), r, r, F64, "unet out-of-place")


def test_load_original_checkpoint():
    for name in ("stargan_gen", "ugatit_gen_light", "munit_adaingen"):
        orig = build(name)
        torch.manual_seed(123)
        conv = i2i_fast.convert(FAMILIES[name][0]().double())  # other weights
        conv.load_state_dict(orig.state_dict())  # strict
        orig.eval(), conv.eval()
        inputs = FAMILIES[name][1]()
        r = fwd_bwd(orig, inputs)
        check_parity(fwd_bwd(conv, inputs), r, r, F64, f"{name} loaded")
        orig.load_state_dict(conv.state_dict())  # and back


def test_inplace_keeps_parameter_objects_and_optimizer():
    m = build("cyclegan_resnet")
    params = [id(p) for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert i2i_fast.convert(m) is m
    assert [id(p) for p in m.parameters()] == params
    assert isinstance(m.model[10], FusedResidualBlock)
    before = copy.deepcopy(m.state_dict())
    fwd_bwd(m, FAMILIES["cyclegan_resnet"][1]())
    opt.step()
    assert not torch.equal(before["model.1.weight"], m.model[1].weight)


def test_hooks_block_fusion_but_keep_working():
    m = build("cyclegan_resnet")
    seen = []
    m.model[2].register_forward_hook(lambda mod, i, o: seen.append(o.detach().clone()))
    m.model[10].register_forward_hook(lambda mod, i, o: None)
    c = i2i_fast.convert(m, copy=True)
    assert isinstance(c.model[2], i2i_fast.InstanceNorm2d) and c.model[2].activation is None
    assert type(c.model[3]) is nn.ReLU  # not folded: the hook sees the norm output
    assert type(c.model[10]).__name__ == "ResnetBlock"  # hooked block not replaced
    assert isinstance(c.model[11], FusedResidualBlock)
    x = FAMILIES["cyclegan_resnet"][1]()[0]
    with torch.no_grad():
        m(x), c(x)
    assert len(seen) == 2 and (seen[0] < 0).any()
    assert_parity(seen[1], seen[0], seen[0], F64, "hook output")


def test_shared_modules_stay_shared():
    torch.manual_seed(0)
    shared = unit.ResidualBlock(16)
    pair = nn.ModuleDict(
        {"E1": unit.Encoder(dim=4, shared_block=shared), "E2": unit.Encoder(dim=4, shared_block=shared)}
    )
    c = i2i_fast.convert(pair.double())
    assert c["E1"].shared_block is c["E2"].shared_block
    assert isinstance(c["E1"].shared_block, FusedResidualBlock)
    assert list(c.state_dict()) == list(pair.state_dict())


def test_plan_changes_nothing_and_convert_logs(caplog):
    m = build("ugatit_gen_light")
    text = repr(m)
    pl = i2i_fast.plan(m)
    assert repr(m) == text and pl.changes and "changes:" in str(pl)
    with caplog.at_level(logging.INFO, logger="i2i_fast.convert"):
        i2i_fast.convert(m, copy=True)
    assert any("i2i_fast.convert(ResnetGenerator)" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError):
        i2i_fast.convert(lambda x: x)


def test_munit_after_forward_and_layer_norm_in_linear_block():
    g = build("munit_adaingen")
    g(FAMILIES["munit_adaingen"][1]()[0])  # AdaIN layers now hold non-leaf weight/bias
    c = i2i_fast.convert(g, copy=True)
    assert c.get_num_adain_params(c.dec) == g.get_num_adain_params(g.dec)
    blk = munit.LinearBlock(4, 4, norm="ln")
    assert "fused LayerNorm is 4-D only" in dict(i2i_fast.plan(blk).left_alone)["norm"]


def test_training_flags_preserved():
    for name in ("cyclegan_resnet", "ugatit_gen_light", "munit_adaingen"):
        c = i2i_fast.convert(build(name).eval())
        assert not any(m.training for m in c.modules()), name
        c = i2i_fast.convert(build(name))
        assert all(m.training for m in c.modules()), name


def test_dtype_preserved():
    c = i2i_fast.convert(build("stargan_gen", torch.float64))
    assert all(t.dtype == F64 for t in c.state_dict().values() if t.is_floating_point())


@requires_cuda
def test_cuda_device_and_parity():
    ref = build("cyclegan_resnet", torch.float32).cuda()
    conv = i2i_fast.convert(ref, copy=True)
    assert all(t.is_cuda for t in conv.state_dict().values())
    inputs = (_img(2, 3, 32, 32, dtype=torch.float32).cuda(),)
    ref64 = copy.deepcopy(ref).double()
    check_parity(
        fwd_bwd(conv, inputs), fwd_bwd(ref, inputs), fwd_bwd(ref64, [t.double() for t in inputs]), torch.float32, "cuda"
    )


# ----------------------------------------- fusions that need features from other branches


@pytest.mark.skipif(not HAS_RPCONV, reason="i2i_fast.ReflectionPadConv2d not in this build (branch pad)")
def test_pad_conv_fusion():
    for name in ("cyclegan_resnet", "ugatit_gen_light", "munit_vaegen", "unit_generator"):
        pl = i2i_fast.plan(build(name))
        assert pl.counts()["pad+conv"] > 0, name
        c = i2i_fast.convert(build(name))
        rp = [m for m in c.modules() if isinstance(m, i2i_fast.ReflectionPadConv2d)]
        assert rp and all(isinstance(m.weight, nn.Parameter) for m in rp)
    c = i2i_fast.convert(build("cyclegan_resnet"))
    assert isinstance(c.model[1], i2i_fast.ReflectionPadConv2d) and isinstance(c.model[0], Folded)
    # U-GAT-IT's spectral-norm discriminator convs are left alone
    assert "pad+conv" not in i2i_fast.plan(build("ugatit_dis")).counts()


@pytest.mark.skipif(not HAS_OUT_PAD, reason="i2i_fast norms have no out_pad option in this build (lead's branch)")
def test_out_pad_fusion():
    c = i2i_fast.convert(build("cyclegan_resnet"))
    blk = c.model[10].conv_block  # pad, conv, IN(relu, out_pad=1), Folded, Folded, conv, IN
    assert blk[2].out_pad == 1 and isinstance(blk[4], Folded) and type(blk[5]) is nn.Conv2d
    u = i2i_fast.convert(build("ugatit_gen_light"))
    assert u.UpBlock1_1.norm1.out_pad == 1 and isinstance(u.UpBlock1_1.pad2, Folded)
    # dropout between norm and pad: no out_pad (the padded border would get its own mask)
    d = i2i_fast.convert(build("cyclegan_resnet_dropout"))
    assert getattr(d.model[10].conv_block[2], "out_pad", 0) == 0


# MUNIT/UNIT's discriminator as the trainers configure it: no norm, so each block's LeakyReLU
# feeds only the next block's ReflectionPad2d -> Conv2d
MUNIT_DIS_NONORM = dict(MUNIT_DIS, n_layer=4, norm="none", num_scales=3)


@pytest.mark.skipif(not HAS_RPCONV, reason="no ReflectionPadConv2d")
def test_activation_folds_into_pad_conv_msimagedis():
    torch.manual_seed(0)
    ref = munit.MsImageDis(3, MUNIT_DIS_NONORM).to(F64)
    pl = i2i_fast.plan(ref)
    c = pl.counts()
    # per scale: 4 pad+conv; the LeakyReLUs of blocks 0-2 fold into blocks 1-3 (block 3's feeds
    # the 1x1 conv, not a pad)
    assert c["pad+conv"] == 4 * 3 and c["fold"] == 3 * 3, pl
    assert sum("fold: LeakyReLU(0.2) into the pad+conv" in w for _, w in pl.changes) == 9, pl
    conv = i2i_fast.convert(ref, copy=True)
    assert_same_state(conv, ref, "MsImageDis")
    net = conv.cnns[0]
    assert isinstance(net[0].activation, Folded) and isinstance(net[3].activation, nn.LeakyReLU)
    assert isinstance(net[1].pad, Folded) and isinstance(net[1].conv, i2i_fast.ReflectionPadConv2d)
    assert net[1].conv.activation == "leaky_relu" and net[1].conv.negative_slope == 0.2
    assert net[0].conv.activation is None  # its input is the image
    x = (_img(2, 3, 64, 64),)  # 4 stride-2 layers at the third scale (16 x 16)
    r = fwd_bwd(ref, x)
    check_parity(fwd_bwd(conv, x), r, r, F64, "MsImageDis fp64")
    ref32, conv32 = copy.deepcopy(ref).float(), copy.deepcopy(conv).float()
    check_parity(fwd_bwd(conv32, x), fwd_bwd(ref32, x), r, torch.float32, "MsImageDis fp32")
    text = repr(ref)
    back = i2i_fast.revert(conv)
    assert repr(back) == text
    assert not any(isinstance(m, (Folded, i2i_fast.ReflectionPadConv2d)) for m in back.modules())
    got = fwd_bwd(back, x)
    assert all(torch.equal(a, b) for a, b in zip(got[0] + got[1], r[0] + r[1]))


@pytest.mark.skipif(not HAS_RPCONV, reason="no ReflectionPadConv2d")
def test_converted_msimagedis_dispatches_no_folded_leaky_relu():
    """Forward + backward of the converted discriminator: only the 3 unfolded LeakyReLUs (one
    per scale, before the 1x1 conv) still dispatch leaky_relu_ / leaky_relu_backward."""
    from i2i_fast.bench.counting import OpCounter

    torch.manual_seed(0)
    ref = munit.MsImageDis(3, MUNIT_DIS_NONORM)
    conv = i2i_fast.convert(ref, copy=True)
    counts = {}
    for name, m in (("original", ref), ("converted", conv)):
        x = _img(2, 3, 64, 64, dtype=torch.float32).requires_grad_()
        with OpCounter() as c:
            sum(o.square().mean() for o in m(x)).backward()
        counts[name] = {k: c.names.get(k, 0) for k in ("aten::leaky_relu_", "aten::leaky_relu_backward")}
        counts[name]["pad_bwd"] = c.names.get("i2i_fast::reflection_pad2d_bwd", 0)
    assert counts["original"] == {"aten::leaky_relu_": 12, "aten::leaky_relu_backward": 12, "pad_bwd": 0}, counts
    # the 12 pads run the fused pad ops, their backward included (the image requires grad)
    assert counts["converted"] == {"aten::leaky_relu_": 3, "aten::leaky_relu_backward": 3, "pad_bwd": 12}, counts


def test_activation_fold_into_pad_conv_rules():
    """In-place on the chain's input (a residual body's skip could see it): not folded; not in
    place, or after another layer: folded; hooks block it; MUNIT's ResBlock (pad first, its
    activation after a norm) keeps its folds into the norm."""
    if not HAS_RPCONV:
        pytest.skip("no ReflectionPadConv2d")

    def seq(inplace, first=True):
        layers = [nn.LeakyReLU(0.2, inplace=inplace), nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3)]
        return nn.Sequential(*(layers if first else [nn.Conv2d(4, 4, 1)] + layers))

    def folds(m):
        return [w for _, w in i2i_fast.plan(m).changes if w.endswith("into the pad+conv")]

    pl = i2i_fast.plan(seq(True))
    assert not folds(seq(True)) and any("in place on the chain's input" in w for _, w in pl.left_alone), pl
    assert folds(seq(False)) == ["fold: LeakyReLU(0.2) into the pad+conv"]
    assert folds(seq(True, first=False)) == ["fold: LeakyReLU(0.2) into the pad+conv"]
    hooked = seq(False)
    hooked[0].register_forward_hook(lambda *a: None)
    assert not folds(hooked)
    relu = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.ReflectionPad2d(2), nn.Conv2d(4, 4, 5))
    assert folds(relu) == ["fold: ReLU into the pad+conv"]
    x = _img(2, 4, 9, 9)
    for m in (seq(False), seq(True, first=False), relu):
        m = m.to(F64)
        want = m(x.clone())
        c = i2i_fast.convert(m, copy=True)
        torch.testing.assert_close(c(x.clone()), want, rtol=1e-12, atol=1e-12)
    blk = munit.ResBlock(4, norm="in", activation="relu", pad_type="reflect")
    assert not folds(blk)
    # MUNIT's style encoder (norm 'none', ReLU): each ReLU before a pad+conv folds
    enc = munit.StyleEncoder(4, 3, 4, 8, norm="none", activ="relu", pad_type="reflect")
    assert len(folds(enc)) == 4, i2i_fast.plan(enc)


# ------------------------------------------ identity: convert in place, the trainers' way


@pytest.mark.parametrize("family", ["cyclegan", "unit"])
def test_trainer_builds_optimizers_then_converts(family):
    """As CycleGAN's create_model or PyTorch-GAN's unit.py do it: networks, then optimizers, then
    each network converted on its own call (UNIT: E1/E2 and G1/G2 share a block). Three float64
    steps with the original losses match the unconverted twin's, weights included (to 1e-8: Adam
    turns the roundoff in a conv bias's ~0 gradient before an instance norm into steps of ~lr;
    an untrained network would be off by ~lr = 2e-4)."""
    torch.manual_seed(0)
    fam = steps.FAMILIES[family]("cpu", True)
    nets = [n.double() for n in fam.nets]
    twin = copy.deepcopy(nets)  # one deepcopy: the twin shares its blocks too
    data = tuple(t.double() for t in fam.data)
    opts, twin_opts = fam.opts(nets), fam.opts(twin)
    ids = [id(p) for n in nets for p in n.parameters()]
    nets = [i2i_fast.convert(n) for n in nets]
    assert [id(p) for n in nets for p in n.parameters()] == ids
    if family == "unit":
        assert nets[0].shared_block is nets[1].shared_block and isinstance(nets[0].shared_block, FusedResidualBlock)
        assert nets[2].shared_block is nets[3].shared_block and isinstance(nets[2].shared_block, FusedResidualBlock)
    for step in range(3):
        torch.manual_seed(step)
        ref = fam.step(twin, twin_opts, data, False)
        torch.manual_seed(step)
        got = fam.step(nets, opts, data, False)
        for k in ref:
            assert abs(float(got[k]) - float(ref[k])) <= 1e-9 * (1 + abs(float(ref[k]))), (family, step, k)
    for a, b in zip(nets, twin):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sb:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-8, msg=f"{family} {k}")


def test_copy_keeps_the_original_and_warns(caplog):
    m = build("cyclegan_resnet")
    with caplog.at_level(logging.WARNING, logger="i2i_fast.convert"):
        c = i2i_fast.convert(m, copy=True)
    assert c is not m and isinstance(c.model[10], FusedResidualBlock) and type(m.model[10]).__name__ == "ResnetBlock"
    assert not {id(p) for p in c.parameters()} & {id(p) for p in m.parameters()}
    assert any("optimizer" in r.getMessage() for r in caplog.records)


def test_fusion_never_crosses_a_container_another_model_shares():
    """shared = Sequential(conv, IN) is followed by ReLU in model A and by a conv in model B:
    folding A's ReLU into the shared IN would change B."""
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4))
    a = nn.Sequential(shared, nn.ReLU()).double()
    b = nn.Sequential(shared, nn.Conv2d(4, 2, 1)).double()
    x = _img(2, 3, 8, 8)
    want = b(x)
    i2i_fast.convert(a)
    assert type(a[1]) is nn.ReLU and a[0][1].activation is None
    assert "used elsewhere" in dict(i2i_fast.plan(a).left_alone).get("0.1", "used elsewhere")
    torch.testing.assert_close(b(x), want, rtol=0, atol=1e-12)  # the shared IN is swapped: fp64 rounding


def test_revert_gives_back_the_original_modules():
    for name in ("cyclegan_resnet", "ugatit_gen_light", "munit_adaingen", "pix2pix_unet", "ugatit_dis"):
        m = build(name)
        text, ids = repr(m), [id(p) for p in m.parameters()]
        inputs = FAMILIES[name][1]()
        ref = fwd_bwd(copy.deepcopy(m), inputs)  # a twin: spectral norm's forward steps its state
        i2i_fast.convert(m)
        r = i2i_fast.revert(m)
        assert r is m and repr(r) == text, name
        assert [id(p) for p in r.parameters()] == ids, name
        assert not any(type(s).__module__.startswith("i2i_fast.nn") or isinstance(s, Folded) for s in r.modules())
        got = fwd_bwd(r, inputs)
        assert all(torch.equal(a, b) for a, b in zip(got[0] + got[1], ref[0] + ref[1])), name
        assert all(torch.equal(got[2][k], ref[2][k]) for k in ref[2]), name
        i2i_fast.convert(r)  # and converted again
        assert isinstance(r, nn.Module) and i2i_fast.plan(r).changes == []


def test_revert_after_moving_the_converted_model():
    n = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, track_running_stats=True), nn.ReLU())
    i2i_fast.convert(n)
    n.double()
    n(_img(2, 3, 8, 8))
    i2i_fast.revert(n)
    assert type(n[1]) is nn.InstanceNorm2d and n[1].running_mean.dtype == F64 and n[1].running_mean.abs().sum() > 0
    assert type(n[2]) is nn.ReLU


# ------------------------------------------------- recognition by meaning, not by names


class DoubledIN(nn.InstanceNorm2d):
    def forward(self, x):
        return 2 * super().forward(x) + 1


class CheckedIN(nn.InstanceNorm2d):
    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError("4-D only")


class HalfSkip(nn.Module):  # CycleGAN's child name, another forward
    def __init__(self, c):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + 0.5 * self.conv_block(x)


class ReluAfterAdd(HalfSkip):  # activation after the add
    def forward(self, x):
        return torch.relu(x + self.conv_block(x))


class DropoutOnSkip(HalfSkip):  # an extra child: dropout on the body's output
    def __init__(self, c):
        super().__init__(c)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return x + self.drop(self.conv_block(x))


class MyResBlock(HalfSkip):  # anyone's block computing x + body(x): fused
    def forward(self, x):
        residual = x
        out = self.conv_block(x)
        out += residual
        return out


class NoSkipAdaILNBlock(nn.Module):
    """U-GAT-IT ResnetAdaILNBlock's children and names, without the skip connection."""

    def __init__(self, c):
        super().__init__()
        blk = ugatit.ResnetAdaILNBlock(c, False)
        for n, m in blk.named_children():
            setattr(self, n, m)

    def forward(self, x, gamma, beta):
        out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        return self.norm2(self.conv2(self.pad2(out)), gamma, beta)


NoSkipAdaILNBlock.__name__ = "ResnetAdaILNBlock"


class ILN(nn.Module):
    """U-GAT-IT's ILN parameters and class name, biased variances in its forward."""

    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.rho = nn.Parameter(torch.full((1, c, 1, 1), 0.3))
        self.gamma = nn.Parameter(torch.ones(1, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        i = (x - x.mean((2, 3), keepdim=True)) / (x.var((2, 3), unbiased=False, keepdim=True) + self.eps).sqrt()
        ln = (x - x.mean((1, 2, 3), keepdim=True)) / (x.var((1, 2, 3), unbiased=False, keepdim=True) + self.eps).sqrt()
        return (self.rho * i + (1 - self.rho) * ln) * self.gamma + self.beta


def test_look_alikes_are_left_alone_with_the_reason():
    torch.manual_seed(0)
    m = nn.ModuleDict(
        {
            "doubled": DoubledIN(4),
            "checked": CheckedIN(4),
            "halfskip": HalfSkip(4),
            "reluadd": ReluAfterAdd(4),
            "dropskip": DropoutOnSkip(4),
            "mine": MyResBlock(4),
            "noskip": NoSkipAdaILNBlock(4),
            "ilnlike": ILN(4),
        }
    ).double()
    pl = i2i_fast.plan(m)
    alone = dict(pl.left_alone)
    assert "overrides forward" in alone["doubled"]
    assert "forward is not x + conv_block(x)" in alone["halfskip"] and "forward is not x +" in alone["reluadd"]
    assert "ResnetAdaILNBlock: forward is not the original's" in alone["noskip"]
    assert "ILN: its replacement differs" in alone["ilnlike"]
    changed = {p for p, _ in pl.changes}
    assert {"halfskip", "reluadd", "dropskip", "noskip", "doubled", "ilnlike"}.isdisjoint(changed)
    assert {"checked", "mine", "mine.conv_block.2"} <= changed
    x, g, b = _img(2, 4, 8, 8), _img(2, 4, seed=2), _img(2, 4, seed=3)
    ref = {k: (v(x, g, b) if k == "noskip" else v(x)) for k, v in m.items() if k != "dropskip"}
    i2i_fast.convert(m)
    assert type(m["doubled"]) is DoubledIN and isinstance(m["checked"], i2i_fast.InstanceNorm2d)
    assert isinstance(m["mine"], FusedResidualBlock) and type(m["noskip"]) is NoSkipAdaILNBlock
    for k, want in ref.items():
        got = m[k](x, g, b) if k == "noskip" else m[k](x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=k)


def test_known_names_with_another_forward_say_why():
    half = type("ResnetBlock", (HalfSkip,), {})(4)
    pl = i2i_fast.plan(nn.Sequential(half).double())
    assert "forward is not x + conv_block(x)" in dict(pl.left_alone)["0"]


def test_numerical_check_rejects_a_wrong_rewrite():
    import importlib

    cv = importlib.import_module("i2i_fast.convert")  # the module (i2i_fast.convert is the function)
    blk = MyResBlock(4).double()
    assert cv._mismatch(blk, lambda c: c, 4, kind="test-same") is None
    why = cv._mismatch(blk, lambda c: c.conv_block, 4, kind="test-body-only")
    assert why and "differs" in why


def test_convert_a_meta_model():
    with torch.device("meta"):
        g = _resnet_g()
        u = ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=2, img_size=32, light=True)
    for m in (g, u):
        keys = list(m.state_dict())
        i2i_fast.convert(m)
        assert list(m.state_dict()) == keys and all(t.is_meta for t in m.state_dict().values())
        assert any(isinstance(s, (FusedResidualBlock, FusedResnetAdaILNBlock)) for s in m.modules())
    assert g(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 3, 32, 32)
