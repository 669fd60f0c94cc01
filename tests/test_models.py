"""i2i_fast.models: the reference networks rebuilt from the original repositories' layers.

The expected state_dict layouts below are written out from the original repositories
(layer order -> nn.Sequential index, attribute names), not derived from the implementation.
Big configurations are built on the meta device (no memory, no compute); real forwards use
small widths and images so the whole file runs in seconds on a CPU.
"""

import copy

import pytest
import torch
import torch.nn.functional as TF

from i2i_fast.models import cyclegan, munit, stargan, ugatit, unit

META = torch.device("meta")


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv(prefix, cout, cin, k, bias=True):
    d = {f"{prefix}.weight": (cout, cin, k, k)}
    if bias:
        d[f"{prefix}.bias"] = (cout,)
    return d


def convT(prefix, cin, cout, k, bias=True):
    d = {f"{prefix}.weight": (cin, cout, k, k)}
    if bias:
        d[f"{prefix}.bias"] = (cout,)
    return d


def params_changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


# ================================================================== CycleGAN / pix2pix


def expected_resnet_generator(ngf, n_blocks, norm="instance", dropout=False, in_nc=3, out_nc=3):
    """model.0 pad, 1 conv7, 2 norm, 3 relu | 4-6, 7-9 down | 10.. blocks | 2x convT | pad, conv7, tanh."""
    bias = norm == "instance"
    exp = {}

    def add_norm(prefix, c):
        if norm == "batch":
            exp.update(
                {
                    f"{prefix}.weight": (c,),
                    f"{prefix}.bias": (c,),
                    f"{prefix}.running_mean": (c,),
                    f"{prefix}.running_var": (c,),
                    f"{prefix}.num_batches_tracked": (),
                }
            )

    exp.update(conv("model.1", ngf, in_nc, 7, bias))
    add_norm("model.2", ngf)
    exp.update(conv("model.4", ngf * 2, ngf, 3, bias))
    add_norm("model.5", ngf * 2)
    exp.update(conv("model.7", ngf * 4, ngf * 2, 3, bias))
    add_norm("model.8", ngf * 4)
    c = ngf * 4
    second = (5, 6) if not dropout else (6, 7)  # Dropout shifts the second pad/conv/norm by one
    for b in range(n_blocks):
        p = f"model.{10 + b}.conv_block"
        exp.update(conv(f"{p}.1", c, c, 3, bias))
        add_norm(f"{p}.2", c)
        exp.update(conv(f"{p}.{second[0]}", c, c, 3, bias))
        add_norm(f"{p}.{second[1]}", c)
    i = 10 + n_blocks
    exp.update(convT(f"model.{i}", c, c // 2, 3, bias))
    add_norm(f"model.{i + 1}", c // 2)
    exp.update(convT(f"model.{i + 3}", c // 2, c // 4, 3, bias))
    add_norm(f"model.{i + 4}", c // 4)
    exp.update(conv(f"model.{i + 7}", out_nc, ngf, 7, True))  # last conv always has a bias
    return exp


@pytest.mark.parametrize("n_blocks", [9, 6])
def test_cyclegan_resnet_generator_state_dict(n_blocks):
    with META:
        g = cyclegan.ResnetGenerator(3, 3, 64, norm_layer=cyclegan.get_norm_layer("instance"), n_blocks=n_blocks)
    assert shapes(g) == expected_resnet_generator(64, n_blocks)
    # resnet_9blocks: 11.378M parameters; affine-free IN contributes no keys at all
    if n_blocks == 9:
        assert n_params(g) == 11_378_179
        assert "model.26.bias" in g.state_dict() and len(g.state_dict()) == 48
    assert not any("running" in k for k in g.state_dict())


def test_cyclegan_resnet_generator_variants_state_dict():
    with META:
        g = cyclegan.ResnetGenerator(3, 3, 16, norm_layer=cyclegan.get_norm_layer("batch"), n_blocks=2)
        gd = cyclegan.ResnetGenerator(
            3, 3, 16, norm_layer=cyclegan.get_norm_layer("instance"), use_dropout=True, n_blocks=2
        )
        gz = cyclegan.ResnetGenerator(
            3, 3, 16, norm_layer=cyclegan.get_norm_layer("instance"), n_blocks=1, padding_type="zero"
        )
    assert shapes(g) == expected_resnet_generator(16, 2, norm="batch")
    assert shapes(gd) == expected_resnet_generator(16, 2, dropout=True)
    # zero padding: no pad modules, conv at 0 and 3
    assert {k for k in gz.state_dict() if "conv_block" in k} == {
        "model.10.conv_block.0.weight",
        "model.10.conv_block.0.bias",
        "model.10.conv_block.3.weight",
        "model.10.conv_block.3.bias",
    }


def test_cyclegan_resnet_generator_layers_and_forward():
    g = cyclegan.define_G(3, 3, 8, "resnet_6blocks", norm="instance")
    m = g.model
    assert isinstance(m[0], torch.nn.ReflectionPad2d) and m[0].padding == (3, 3, 3, 3)
    assert m[1].padding == (0, 0) and m[4].stride == (2, 2) and m[4].padding == (1, 1)
    in0 = m[2]
    assert isinstance(in0, torch.nn.InstanceNorm2d) and not in0.affine and not in0.track_running_stats
    assert isinstance(m[16], torch.nn.ConvTranspose2d) and m[16].output_padding == (1, 1)
    assert isinstance(m[-1], torch.nn.Tanh)
    blk = m[10].conv_block
    assert [type(x).__name__ for x in blk] == [
        "ReflectionPad2d",
        "Conv2d",
        "InstanceNorm2d",
        "ReLU",
        "ReflectionPad2d",
        "Conv2d",
        "InstanceNorm2d",
    ]
    # residual: block(x) + x
    x = torch.randn(1, 32, 8, 8)
    torch.testing.assert_close(m[10](x), x + blk(x))
    # define_G's init: conv weights N(0, 0.02), biases 0
    assert m[1].bias.abs().max() == 0 and 0.005 < m[4].weight.std() < 0.05
    with torch.no_grad():
        assert g(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_cyclegan_unet_generator():
    # unet_256 (pix2pix: batch norm): 54.4M parameters
    with META:
        u = cyclegan.define_G(3, 3, 64, "unet_256", norm="batch")
    assert abs(n_params(u) - 54.4e6) < 0.05e6
    sd = shapes(u)
    # outermost: 0 downconv (use_bias False under BatchNorm even without a norm after it),
    # 1 submodule, 2 ReLU, 3 upconvT (bias), 4 Tanh
    assert sd["model.model.0.weight"] == (64, 3, 4, 4) and "model.model.0.bias" not in sd
    assert sd["model.model.3.weight"] == (128, 3, 4, 4) and sd["model.model.3.bias"] == (3,)
    # next level: 0 LReLU, 1 conv, 2 norm, 3 submodule, 4 ReLU, 5 convT, 6 norm
    assert sd["model.model.1.model.1.weight"] == (128, 64, 4, 4)
    assert sd["model.model.1.model.2.running_mean"] == (128,)
    assert sd["model.model.1.model.5.weight"] == (256, 64, 4, 4)  # in = 2 * inner (skip concat)
    # innermost (8 levels deep): 0 LReLU, 1 conv, 2 ReLU, 3 convT, 4 norm; no down norm
    inner = "model.model.1." + "model.3." * 6  # level 8 from the outside
    assert sd[inner + "model.1.weight"] == (512, 512, 4, 4)
    assert sd[inner + "model.3.weight"] == (512, 512, 4, 4)
    assert sd[inner + "model.4.weight"] == (512,)
    assert (inner + "model.2.weight") not in sd
    with META:
        assert u(torch.empty(1, 3, 256, 256)).shape == (1, 3, 256, 256)

    # instance norm: convs gain biases, no norm keys; dropout appended at index 7 of middle levels
    # (num_downs - 5 middle levels carry the dropout: one here, level 5 of 6)
    small = cyclegan.UnetGenerator(3, 2, 6, ngf=4, norm_layer=cyclegan.get_norm_layer("instance"), use_dropout=True)
    ssd = shapes(small)
    assert ssd["model.model.0.bias"] == (4,) and not any("running" in k for k in ssd)
    level5 = small.model.model[1].model[3].model[3].model[3]
    assert isinstance(level5.model[7], torch.nn.Dropout)
    assert not any(isinstance(m, torch.nn.Dropout) for m in small.model.model[1].model)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert small(x).shape == (1, 2, 64, 64)
        lvl = small.model.model[1]  # non-outermost levels return cat([x, sub(x)], 1)
        h = torch.randn(1, 4, 32, 32)
        y = lvl(h)
        assert y.shape == (1, 8, 32, 32) and torch.equal(y[:, :4], h)


def test_cyclegan_discriminators():
    with META:
        d = cyclegan.NLayerDiscriminator(3, 64, n_layers=3, norm_layer=cyclegan.get_norm_layer("instance"))
        p = cyclegan.PixelDiscriminator(3, 64, norm_layer=cyclegan.get_norm_layer("instance"))
        assert d(torch.empty(1, 3, 256, 256)).shape == (1, 1, 30, 30)
        assert p(torch.empty(1, 3, 256, 256)).shape == (1, 1, 256, 256)
        db = cyclegan.NLayerDiscriminator(6, 64, n_layers=3)  # pix2pix: BatchNorm, cat(A, B)
    exp = {}
    exp.update(conv("model.0", 64, 3, 4))
    exp.update(conv("model.2", 128, 64, 4))
    exp.update(conv("model.5", 256, 128, 4))
    exp.update(conv("model.8", 512, 256, 4))
    exp.update(conv("model.11", 1, 512, 4))
    assert shapes(d) == exp
    assert [d.model[i].stride for i in (0, 2, 5, 8, 11)] == [(2, 2), (2, 2), (2, 2), (1, 1), (1, 1)]
    assert isinstance(d.model[1], torch.nn.LeakyReLU) and d.model[1].negative_slope == 0.2
    sdb = shapes(db)
    assert sdb["model.0.weight"] == (64, 6, 4, 4) and sdb["model.0.bias"] == (64,)
    assert "model.2.bias" not in sdb and sdb["model.3.running_var"] == (128,)
    expp = {}
    expp.update(conv("net.0", 64, 3, 1))
    expp.update(conv("net.2", 128, 64, 1))
    expp.update(conv("net.5", 1, 128, 1))
    assert shapes(p) == expp


def test_cyclegan_norm_layer_factory():
    assert isinstance(cyclegan.get_norm_layer("none")(8), cyclegan.Identity)
    bn = cyclegan.get_norm_layer("batch")(8)
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.affine and bn.track_running_stats
    with pytest.raises(NotImplementedError):
        cyclegan.get_norm_layer("group")


def test_gan_loss_modes():
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 5, 5)
    ls = cyclegan.GANLoss("lsgan")
    assert set(ls.state_dict()) == {"real_label", "fake_label"}
    assert ls.real_label.shape == () and ls.real_label.item() == 1.0 and ls.fake_label.item() == 0.0
    torch.testing.assert_close(ls(pred, True), ((pred - 1) ** 2).mean())
    torch.testing.assert_close(ls(pred, False), (pred**2).mean())
    smooth = cyclegan.GANLoss("lsgan", target_real_label=0.9)
    torch.testing.assert_close(smooth(pred, True), ((pred - 0.9) ** 2).mean())
    van = cyclegan.GANLoss("vanilla")
    s = torch.sigmoid(pred)
    torch.testing.assert_close(van(pred, True), -torch.log(s).mean())
    torch.testing.assert_close(van(pred, False), -torch.log(1 - s).mean())
    wg = cyclegan.GANLoss("wgangp")
    torch.testing.assert_close(wg(pred, True), -pred.mean())
    torch.testing.assert_close(wg(pred, False), pred.mean())
    ns = cyclegan.GANLoss("nonsaturating")
    r = ns(pred, True)
    assert r.shape == (2,)
    torch.testing.assert_close(r, TF.softplus(-pred).view(2, -1).mean(1))
    torch.testing.assert_close(ns(pred, False), TF.softplus(pred).view(2, -1).mean(1))
    with pytest.raises(NotImplementedError):
        cyclegan.GANLoss("hinge")


def test_cal_gradient_penalty():
    # D(x) = sum(w * x) per sample: the gradient is w for every interpolate
    w = torch.randn(3, 4, 4)

    def netD(x):
        return (x * w).flatten(1).sum(1, keepdim=True)

    real, fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for kind in ("mixed", "real", "fake"):
        gp, grads = cyclegan.cal_gradient_penalty(netD, real, fake, "cpu", type=kind)
        assert grads.shape == (2, 48)
        torch.testing.assert_close(gp, ((w.norm() - 1) ** 2) * 10)
    assert cyclegan.cal_gradient_penalty(netD, real, fake, "cpu", lambda_gp=0.0) == (0.0, None)


def _cyclegan_nets(seed=0):
    torch.manual_seed(seed)
    nets = [cyclegan.define_G(3, 3, 4, "resnet_6blocks", norm="instance") for _ in range(2)]
    nets += [cyclegan.define_D(3, 4, "n_layers", n_layers_D=2, norm="instance") for _ in range(2)]
    return nets


def test_cyclegan_training_step_losses_and_updates():
    G_A, G_B, D_A, D_B = _cyclegan_nets()
    torch.manual_seed(1)
    real_A, real_B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    ref = [copy.deepcopy(n) for n in (G_A, G_B, D_A, D_B)]
    before = [copy.deepcopy(n.state_dict()) for n in (G_A, G_B, D_A, D_B)]
    opt_G = torch.optim.Adam(list(G_A.parameters()) + list(G_B.parameters()), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(list(D_A.parameters()) + list(D_B.parameters()), lr=2e-4, betas=(0.5, 0.999))
    losses = cyclegan.training_step(G_A, G_B, D_A, D_B, real_A, real_B, opt_G, opt_D)

    # the CycleGAN objective with its weights written out: lambda_A = lambda_B = 10, identity 0.5
    rGA, rGB, rDA, rDB = ref
    with torch.no_grad():
        fake_B, fake_A = rGA(real_A), rGB(real_B)
        mse, l1 = TF.mse_loss, TF.l1_loss
        g = (
            mse(rDA(fake_B), torch.ones(1, 1, 6, 6))
            + mse(rDB(fake_A), torch.ones(1, 1, 6, 6))
            + 10 * l1(rGB(fake_B), real_A)
            + 10 * l1(rGA(fake_A), real_B)
            + 5 * l1(rGA(real_B), real_B)
            + 5 * l1(rGB(real_A), real_A)
        )
        d_a = 0.5 * (mse(rDA(real_B), torch.ones(1, 1, 6, 6)) + mse(rDA(fake_B), torch.zeros(1, 1, 6, 6)))
        d_b = 0.5 * (mse(rDB(real_A), torch.ones(1, 1, 6, 6)) + mse(rDB(fake_A), torch.zeros(1, 1, 6, 6)))
    torch.testing.assert_close(losses["G"], g)
    torch.testing.assert_close(losses["D_A"], d_a)
    torch.testing.assert_close(losses["D_B"], d_b)
    assert all(not v.requires_grad for v in losses.values())
    for b, net in zip(before, (G_A, G_B, D_A, D_B)):
        assert params_changed(b, net)
    assert all(p.requires_grad for p in D_A.parameters())  # D unfrozen again

    # with image pools (the original's history of 50 fakes)
    pools = cyclegan.ImagePool(50), cyclegan.ImagePool(50)
    out = cyclegan.training_step(
        G_A, G_B, D_A, D_B, real_A, real_B, opt_G, opt_D, fake_A_pool=pools[0], fake_B_pool=pools[1]
    )
    assert pools[0].num_imgs == 1 and torch.isfinite(out["G"])


def test_image_pool():
    pool = cyclegan.ImagePool(2)
    a = torch.randn(2, 3, 4, 4)
    assert torch.equal(pool.query(a), a) and pool.num_imgs == 2
    b = torch.randn(3, 3, 4, 4)
    out = pool.query(b)
    assert out.shape == b.shape and pool.num_imgs == 2
    assert torch.equal(cyclegan.ImagePool(0).query(b), b)


# ============================================================================= U-GAT-IT


def expected_ugatit_generator(ngf, n_blocks, img_size, light, in_nc=3, out_nc=3):
    c = ngf * 4
    exp = {}
    exp.update(conv("DownBlock.1", ngf, in_nc, 7, False))
    exp.update(conv("DownBlock.5", ngf * 2, ngf, 3, False))
    exp.update(conv("DownBlock.9", c, ngf * 2, 3, False))
    for b in range(n_blocks):
        exp.update(conv(f"DownBlock.{12 + b}.conv_block.1", c, c, 3, False))
        exp.update(conv(f"DownBlock.{12 + b}.conv_block.5", c, c, 3, False))
    exp["gap_fc.weight"] = (1, c)
    exp["gmp_fc.weight"] = (1, c)
    exp.update(conv("conv1x1", c, 2 * c, 1, True))
    fc_in = c if light else (img_size // 4) ** 2 * c
    exp["FC.0.weight"] = (c, fc_in)
    exp["FC.2.weight"] = (c, c)
    exp["gamma.weight"] = (c, c)
    exp["beta.weight"] = (c, c)
    for b in range(1, n_blocks + 1):
        for j in (1, 2):
            exp.update(conv(f"UpBlock1_{b}.conv{j}", c, c, 3, False))
            exp[f"UpBlock1_{b}.norm{j}.rho"] = (1, c, 1, 1)
    # UpBlock2: 0 Upsample, 1 pad, 2 conv, 3 ILN, 4 ReLU, 5-9 again, 10 pad, 11 conv, 12 Tanh
    for i, (ci, co) in zip((2, 7), ((c, c // 2), (c // 2, ngf))):
        exp.update(conv(f"UpBlock2.{i}", co, ci, 3, False))
        for n in ("rho", "gamma", "beta"):
            exp[f"UpBlock2.{i + 1}.{n}"] = (1, co, 1, 1)
    exp.update(conv("UpBlock2.11", out_nc, ngf, 7, False))
    return exp


@pytest.mark.parametrize("light", [True, False])
def test_ugatit_generator_state_dict(light):
    with META:
        g = ugatit.ResnetGenerator(3, 3, ngf=64, n_blocks=4, img_size=256, light=light)
    assert shapes(g) == expected_ugatit_generator(64, 4, 256, light)
    if not light:
        assert g.FC[0].weight.shape == (256, 64 * 64 * 256)  # the 268M-parameter layer
        assert n_params(g.FC[0]) == 268_435_456
    assert isinstance(g.UpBlock2[0], torch.nn.Upsample) and g.UpBlock2[0].mode == "nearest"
    assert g.DownBlock[5].stride == (2, 2) and g.DownBlock[5].padding == (0, 0)
    assert isinstance(g.DownBlock[4], torch.nn.ReflectionPad2d)


def test_ugatit_norm_inits():
    g = ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=2, img_size=32, light=True)
    assert torch.all(g.UpBlock1_1.norm1.rho == 0.9) and torch.all(g.UpBlock1_2.norm2.rho == 0.9)
    iln = g.UpBlock2[3]
    assert torch.all(iln.rho == 0) and torch.all(iln.gamma == 1) and torch.all(iln.beta == 0)
    assert iln.eps == 1e-5 and g.UpBlock1_1.norm1.eps == 1e-5


@pytest.mark.parametrize("light", [True, False])
def test_ugatit_generator_forward(light):
    torch.manual_seed(0)
    g = ugatit.ResnetGenerator(3, 3, ngf=8, n_blocks=2, img_size=64, light=light)
    with torch.no_grad():
        res = g(torch.randn(2, 3, 64, 64))
    assert isinstance(res, tuple) and len(res) == 3
    out, cam_logit, heatmap = res
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    assert cam_logit.shape == (2, 2)
    assert heatmap.shape == (2, 1, 16, 16)


def _unbiased_var(x, dims):
    n = 1
    for d in dims:
        n *= x.shape[d]
    mean = x.mean(dim=dims, keepdim=True)
    return ((x - mean) ** 2).sum(dim=dims, keepdim=True) / (n - 1), mean


def _lin_formula(x, rho, eps=1e-5):
    var_in, mean_in = _unbiased_var(x, (2, 3))
    var_ln, mean_ln = _unbiased_var(x, (1, 2, 3))
    out_in = (x - mean_in) / (var_in + eps).sqrt()
    out_ln = (x - mean_ln) / (var_ln + eps).sqrt()
    return rho * out_in + (1 - rho) * out_ln


def test_ugatit_iln_adailn_math():
    torch.manual_seed(0)
    B, C = 3, 5
    x = torch.randn(B, C, 6, 7, dtype=torch.float64) * 2 + 0.5
    rho = torch.rand(1, C, 1, 1, dtype=torch.float64)
    gamma, beta = torch.randn(B, C, dtype=torch.float64), torch.randn(B, C, dtype=torch.float64)

    ada = ugatit.adaILN(C).double()
    ada.rho.data.copy_(rho)
    expect = _lin_formula(x, rho) * gamma.view(B, C, 1, 1) + beta.view(B, C, 1, 1)
    torch.testing.assert_close(ada(x, gamma, beta), expect)

    iln = ugatit.ILN(C).double()
    g1, b1 = torch.randn(1, C, 1, 1, dtype=torch.float64), torch.randn(1, C, 1, 1, dtype=torch.float64)
    iln.rho.data.copy_(rho)
    iln.gamma.data.copy_(g1)
    iln.beta.data.copy_(b1)
    torch.testing.assert_close(iln(x), _lin_formula(x, rho) * g1 + b1)
    # the variance really is the unbiased one: the biased version differs measurably
    xs = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    iln2 = ugatit.ILN(2).double()
    iln2.rho.data.fill_(1.0)
    biased = (xs - xs.mean((2, 3), keepdim=True)) / (xs.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert not torch.allclose(iln2(xs), biased, atol=1e-3)


def test_ugatit_resnet_adailn_block():
    torch.manual_seed(0)
    blk = ugatit.ResnetAdaILNBlock(4, use_bias=False)
    x, gamma, beta = torch.randn(2, 4, 6, 6), torch.randn(2, 4), torch.randn(2, 4)
    h = TF.conv2d(TF.pad(x, (1, 1, 1, 1), mode="reflect"), blk.conv1.weight)
    h = torch.relu(_lin_formula(h, blk.norm1.rho) * gamma[:, :, None, None] + beta[:, :, None, None])
    h = TF.conv2d(TF.pad(h, (1, 1, 1, 1), mode="reflect"), blk.conv2.weight)
    h = _lin_formula(h, blk.norm2.rho) * gamma[:, :, None, None] + beta[:, :, None, None]
    torch.testing.assert_close(blk(x, gamma, beta), h + x, atol=1e-5, rtol=1e-4)


def test_ugatit_generator_cam():
    """cam_logit = [gap_fc(avgpool), gmp_fc(maxpool)]; features scaled by each fc weight."""
    torch.manual_seed(0)
    g = ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=1, img_size=32, light=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, cam_logit, heatmap = g(x)
        f = g.DownBlock(x)
        w1, w2 = g.gap_fc.weight.view(-1), g.gmp_fc.weight.view(-1)
        exp_logit = torch.stack([(f.mean((2, 3)) * w1).sum(1), (f.amax((2, 3)) * w2).sum(1)], 1)
        h = torch.relu(g.conv1x1(torch.cat([f * w1.view(1, -1, 1, 1), f * w2.view(1, -1, 1, 1)], 1)))
    torch.testing.assert_close(cam_logit, exp_logit)
    torch.testing.assert_close(heatmap, h.sum(1, keepdim=True))


def expected_ugatit_discriminator(ndf, n_layers, in_nc=3):
    sn = lambda p, shape: {
        f"{p}.weight_orig": shape,
        f"{p}.weight_u": (shape[0],),
        f"{p}.weight_v": (int(torch.tensor(shape[1:]).prod()),),
    }
    exp = {}
    exp.update(sn("model.1", (ndf, in_nc, 4, 4)))
    exp["model.1.bias"] = (ndf,)
    c = ndf
    for i in range(1, n_layers - 1):  # n_layers - 3 stride-2 blocks, then the stride-1 one
        exp.update(sn(f"model.{1 + 3 * i}", (c * 2, c, 4, 4)))
        exp[f"model.{1 + 3 * i}.bias"] = (c * 2,)
        c *= 2
    exp.update(sn("gap_fc", (1, c)))
    exp.update(sn("gmp_fc", (1, c)))
    exp.update(conv("conv1x1", c, 2 * c, 1, True))
    exp.update(sn("conv", (1, c, 4, 4)))  # final conv: no bias
    return exp


def test_ugatit_discriminators():
    with META:
        gd = ugatit.Discriminator(3, 64, n_layers=7)
        ld = ugatit.Discriminator(3, 64, n_layers=5)
    assert shapes(gd) == expected_ugatit_discriminator(64, 7)
    assert shapes(ld) == expected_ugatit_discriminator(64, 5)
    assert gd.model[16].stride == (1, 1) and gd.model[13].stride == (2, 2)
    assert shapes(gd)["gap_fc.weight_orig"] == (1, 2048)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for d, side in ((ugatit.Discriminator(3, 2, n_layers=7), 6), (ugatit.Discriminator(3, 2, n_layers=5), 30)):
            out, cam_logit, heatmap = d(x)
            assert out.shape == (1, 1, side, side) and cam_logit.shape == (1, 2)
            assert heatmap.shape == (1, 1, side + 1, side + 1)


def test_ugatit_discriminator_cam_uses_raw_weight():
    """The original multiplies by list(fc.parameters())[0], i.e. spectral_norm's weight_orig;
    the logits use the normalised weight."""
    torch.manual_seed(0)
    d = ugatit.Discriminator(3, 4, n_layers=5).eval()  # eval: no power iteration, fixed u
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, cam_logit, heatmap = d(x)
        f = d.model(x)
        wo1, wo2 = d.gap_fc.weight_orig.view(-1), d.gmp_fc.weight_orig.view(-1)
        wn1, wn2 = d.gap_fc.weight.view(-1), d.gmp_fc.weight.view(-1)
        exp_logit = torch.stack([(f.mean((2, 3)) * wn1).sum(1), (f.amax((2, 3)) * wn2).sum(1)], 1)
        h = TF.leaky_relu(d.conv1x1(torch.cat([f * wo1.view(1, -1, 1, 1), f * wo2.view(1, -1, 1, 1)], 1)), 0.2)
    torch.testing.assert_close(cam_logit, exp_logit)
    torch.testing.assert_close(heatmap, h.sum(1, keepdim=True))
    torch.testing.assert_close(out, d.conv(TF.pad(h, (1, 1, 1, 1), mode="reflect")))


def test_ugatit_rho_clipper():
    g = ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=1, img_size=32, light=True)
    g.UpBlock1_1.norm1.rho.data.fill_(1.7)
    g.UpBlock2[3].rho.data.fill_(-0.3)
    g.apply(ugatit.RhoClipper(0, 1))
    assert torch.all(g.UpBlock1_1.norm1.rho == 1) and torch.all(g.UpBlock2[3].rho == 0)
    assert torch.all(g.UpBlock1_1.norm2.rho == 0.9)
    with pytest.raises(AssertionError):
        ugatit.RhoClipper(1, 0)


def test_ugatit_training_step():
    torch.manual_seed(0)
    gens = [ugatit.ResnetGenerator(3, 3, ngf=4, n_blocks=1, img_size=32, light=True) for _ in range(2)]
    dis = [ugatit.Discriminator(3, 4, n_layers=5) for _ in range(4)]  # GA, GB, LA, LB
    gens[0].UpBlock1_1.norm1.rho.data.fill_(0.999)  # pushed past 1 by Adam?
    before = [copy.deepcopy(m.state_dict()) for m in gens + dis]
    G_optim = torch.optim.Adam(
        [p for g in gens for p in g.parameters()], lr=1e-2, betas=(0.5, 0.999), weight_decay=1e-4
    )
    D_optim = torch.optim.Adam([p for d in dis for p in d.parameters()], lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4)
    real_A, real_B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    losses = ugatit.training_step(gens[0], gens[1], dis[0], dis[1], dis[2], dis[3], real_A, real_B, G_optim, D_optim)
    assert set(losses) >= {"D", "G"} and all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["D"], losses["D_A"] + losses["D_B"])
    for b, m in zip(before, gens + dis):
        assert params_changed(b, m)
    for g in gens:
        for m in g.modules():
            if hasattr(m, "rho"):
                assert m.rho.min() >= 0 and m.rho.max() <= 1


# ============================================================================== StarGAN


def _stargan_in(prefix, c):
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def test_stargan_state_dicts_and_shapes():
    with META:
        G = stargan.Generator(conv_dim=64, c_dim=5, repeat_num=6)
        D = stargan.Discriminator(image_size=128, conv_dim=64, c_dim=5, repeat_num=6)
        assert G(torch.empty(2, 3, 128, 128), torch.empty(2, 5)).shape == (2, 3, 128, 128)
        out_src, out_cls = D(torch.empty(1, 3, 128, 128))
        assert out_src.shape == (1, 1, 2, 2) and out_cls.shape == (1, 5)
    exp = {}
    exp.update(conv("main.0", 64, 8, 7, False))
    exp.update(_stargan_in("main.1", 64))
    exp.update(conv("main.3", 128, 64, 4, False))
    exp.update(_stargan_in("main.4", 128))
    exp.update(conv("main.6", 256, 128, 4, False))
    exp.update(_stargan_in("main.7", 256))
    for b in range(6):
        exp.update(conv(f"main.{9 + b}.main.0", 256, 256, 3, False))
        exp.update(_stargan_in(f"main.{9 + b}.main.1", 256))
        exp.update(conv(f"main.{9 + b}.main.3", 256, 256, 3, False))
        exp.update(_stargan_in(f"main.{9 + b}.main.4", 256))
    exp.update(convT("main.15", 256, 128, 4, False))
    exp.update(_stargan_in("main.16", 128))
    exp.update(convT("main.18", 128, 64, 4, False))
    exp.update(_stargan_in("main.19", 64))
    exp.update(conv("main.21", 3, 64, 7, False))
    assert shapes(G) == exp
    assert G.main[0].padding == (3, 3) and isinstance(G.main[22], torch.nn.Tanh)

    expd = {}
    c = 3
    for i in range(6):
        expd.update(conv(f"main.{2 * i}", 64 * 2**i, c, 4, True))
        c = 64 * 2**i
    expd.update(conv("conv1", 1, 2048, 3, False))
    expd.update(conv("conv2", 5, 2048, 2, False))
    assert shapes(D) == expd
    assert D.main[1].negative_slope == 0.01


def test_stargan_forward_small():
    torch.manual_seed(0)
    G = stargan.Generator(conv_dim=8, c_dim=3, repeat_num=2)
    D = stargan.Discriminator(image_size=64, conv_dim=4, c_dim=3, repeat_num=6)
    x, c = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    y = G(x, c)
    assert y.shape == (2, 3, 32, 32)
    # the label is tiled and concatenated: first conv sees 3 + c_dim channels
    assert G.main[0].in_channels == 6
    # training-mode IN uses the batch statistics and updates the running ones
    assert G.main[1].running_mean.abs().sum() > 0
    out_src, out_cls = D(torch.randn(2, 3, 64, 64))
    assert out_src.shape == (2, 1, 1, 1) and out_cls.shape == (2, 3)


def test_stargan_gradient_penalty_and_cls_loss():
    w = torch.randn(3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = (x * w).flatten(1).sum(1)
    torch.testing.assert_close(stargan.gradient_penalty(y, x), (w.norm() - 1) ** 2)
    logit, target = torch.randn(4, 5), torch.randint(0, 2, (4, 5)).float()
    expect = -(target * TF.logsigmoid(logit) + (1 - target) * TF.logsigmoid(-logit)).sum() / 4
    torch.testing.assert_close(stargan.classification_loss(logit, target), expect)


# ============================================================================ MUNIT / UNIT

GEN = dict(dim=64, style_dim=8, n_downsample=2, n_res=4, activ="relu", pad_type="reflect", mlp_dim=256)
DIS = dict(n_layer=4, gan_type="lsgan", dim=64, norm="none", activ="lrelu", num_scales=3, pad_type="reflect")


def _munit_block(prefix, cout, cin, k, norm):
    d = {}
    if norm == "ln":
        d.update({f"{prefix}.norm.gamma": (cout,), f"{prefix}.norm.beta": (cout,)})
    elif norm == "adain":
        d.update({f"{prefix}.norm.running_mean": (cout,), f"{prefix}.norm.running_var": (cout,)})
    d.update(conv(f"{prefix}.conv", cout, cin, k, True))
    return d


def expected_munit_decoder(prefix, dim, n_res, n_up, out_dim, res_norm):
    exp = {}
    for b in range(n_res):
        for j in (0, 1):
            exp.update(_munit_block(f"{prefix}.model.0.model.{b}.model.{j}", dim, dim, 3, res_norm))
    for u in range(n_up):  # Upsample at 1 + 2u, Conv2dBlock(5, 'ln') at 2 + 2u
        exp.update(_munit_block(f"{prefix}.model.{2 + 2 * u}", dim // 2, dim, 5, "ln"))
        dim //= 2
    exp.update(_munit_block(f"{prefix}.model.{1 + 2 * n_up}", out_dim, dim, 7, "none"))
    return exp


def expected_munit_content(prefix, dim, n_down, n_res, in_dim=3):
    exp = _munit_block(f"{prefix}.model.0", dim, in_dim, 7, "in")
    for i in range(n_down):
        exp.update(_munit_block(f"{prefix}.model.{1 + i}", dim * 2, dim, 4, "in"))
        dim *= 2
    for b in range(n_res):
        for j in (0, 1):
            exp.update(_munit_block(f"{prefix}.model.{1 + n_down}.model.{b}.model.{j}", dim, dim, 3, "in"))
    return exp


def test_munit_adaingen_state_dict():
    with META:
        g = munit.AdaINGen(3, GEN)
    exp = {}
    # style encoder: 7x7, 2 doubling 4x4 s2, 2 more 4x4 s2 (4 downsamplings), pool at 5, conv1x1 at 6
    exp.update(_munit_block("enc_style.model.0", 64, 3, 7, "none"))
    exp.update(_munit_block("enc_style.model.1", 128, 64, 4, "none"))
    exp.update(_munit_block("enc_style.model.2", 256, 128, 4, "none"))
    exp.update(_munit_block("enc_style.model.3", 256, 256, 4, "none"))
    exp.update(_munit_block("enc_style.model.4", 256, 256, 4, "none"))
    exp.update(conv("enc_style.model.6", 8, 256, 1))
    exp.update(expected_munit_content("enc_content", 64, 2, 4))
    exp.update(expected_munit_decoder("dec", 256, 4, 2, 3, "adain"))
    n_adain = 4 * 2 * 2 * 256  # 4 res blocks x 2 AdaIN layers x (mean, std) x 256
    exp.update(
        {
            "mlp.model.0.fc.weight": (256, 8),
            "mlp.model.0.fc.bias": (256,),
            "mlp.model.1.fc.weight": (256, 256),
            "mlp.model.1.fc.bias": (256,),
            "mlp.model.2.fc.weight": (n_adain, 256),
            "mlp.model.2.fc.bias": (n_adain,),
        }
    )
    assert shapes(g) == exp
    assert g.get_num_adain_params(g.dec) == n_adain
    assert isinstance(g.dec.model[1], torch.nn.Upsample) and g.dec.model[1].scale_factor == 2
    # Conv2dBlock registers its norm before its conv (state_dict order of the original)
    keys = list(g.state_dict())
    assert keys.index("dec.model.2.norm.gamma") < keys.index("dec.model.2.conv.weight")


def test_munit_vaegen_and_dis_state_dict():
    with META:
        v = munit.VAEGen(3, GEN)
        d = munit.MsImageDis(3, DIS)
    exp = expected_munit_content("enc", 64, 2, 4)
    exp.update(expected_munit_decoder("dec", 256, 4, 2, 3, "in"))
    assert shapes(v) == exp
    expd = {}
    for s in range(3):
        c = 3
        for i, co in enumerate((64, 128, 256, 512)):
            expd.update(_munit_block(f"cnns.{s}.{i}", co, c, 4, "none"))
            c = co
        expd.update(conv(f"cnns.{s}.4", 1, 512, 1))
    assert shapes(d) == expd


def test_munit_layer_norm_math():
    torch.manual_seed(0)
    ln = munit.LayerNorm(4, eps=0.5).double()  # a big eps makes inside/outside sqrt distinct
    assert torch.all((ln.gamma >= 0) & (ln.gamma < 1)) and torch.all(ln.beta == 0)
    assert set(ln.state_dict()) == {"gamma", "beta"}
    ln.beta.data.normal_()
    for B in (1, 3):
        x = torch.randn(B, 4, 5, 6, dtype=torch.float64) * 3 + 1
        flat = x.view(B, -1)
        n = flat.shape[1]
        mean = flat.sum(1) / n
        std = (((flat - mean[:, None]) ** 2).sum(1) / (n - 1)).sqrt()  # unbiased
        expect = (x - mean.view(B, 1, 1, 1)) / (std.view(B, 1, 1, 1) + 0.5)  # eps outside sqrt
        expect = expect * ln.gamma.view(1, -1, 1, 1) + ln.beta.view(1, -1, 1, 1)
        torch.testing.assert_close(ln(x), expect)
        inside = (x - mean.view(B, 1, 1, 1)) / (std.view(B, 1, 1, 1) ** 2 + 0.5).sqrt()
        assert not torch.allclose(ln(x), inside * ln.gamma.view(1, -1, 1, 1) + ln.beta.view(1, -1, 1, 1))
    assert set(munit.LayerNorm(4, affine=False).state_dict()) == set()


def test_munit_adain_math_and_buffers():
    torch.manual_seed(0)
    B, C = 2, 3
    m = munit.AdaptiveInstanceNorm2d(C)
    assert set(m.state_dict()) == {"running_mean", "running_var"}
    x = torch.randn(B, C, 5, 5) * 2 + 1
    with pytest.raises(AssertionError):
        m(x)
    w, b = torch.randn(B * C), torch.randn(B * C)
    m.weight, m.bias = w, b
    mean = x.mean((2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((2, 3), keepdim=True)  # biased
    expect = (x - mean) / (var + 1e-5).sqrt() * w.view(B, C, 1, 1) + b.view(B, C, 1, 1)
    torch.testing.assert_close(m(x), expect)
    assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)  # never updated
    assert set(m.state_dict()) == {"running_mean", "running_var"}  # weight/bias not saved


def test_munit_assign_adain_params():
    torch.manual_seed(0)
    gen = dict(GEN, dim=4, n_res=2, mlp_dim=8)
    g = munit.AdaINGen(3, gen)
    adains = [m for m in g.dec.modules() if isinstance(m, munit.AdaptiveInstanceNorm2d)]
    assert len(adains) == 4 and all(a.num_features == 16 for a in adains)
    B = 2
    params = torch.randn(B, g.get_num_adain_params(g.dec))
    g.assign_adain_params(params, g.dec)
    for i, a in enumerate(adains):  # block i takes columns [32i, 32i+16) as bias, next 16 as weight
        torch.testing.assert_close(a.bias, params[:, 32 * i : 32 * i + 16].reshape(-1))
        torch.testing.assert_close(a.weight, params[:, 32 * i + 16 : 32 * i + 32].reshape(-1))
    # decode runs the MLP on the style code and assigns before decoding
    x = torch.randn(B, 3, 32, 32)
    content, style = g.encode(x)
    assert content.shape == (B, 16, 8, 8) and style.shape == (B, 8, 1, 1)
    y = g.decode(content, style)
    assert y.shape == (B, 3, 32, 32)
    torch.testing.assert_close(adains[0].bias, g.mlp(style)[:, :16].reshape(-1))
    assert g(x).shape == (B, 3, 32, 32)


def test_munit_vaegen_forward():
    torch.manual_seed(0)
    v = munit.VAEGen(3, dict(GEN, dim=4, n_res=1))
    x = torch.randn(2, 3, 16, 16)
    h, noise = v.encode(x)
    assert h.shape == noise.shape == (2, 16, 4, 4)
    rec, hid = v(x)
    assert rec.shape == x.shape and hid.shape == h.shape
    v.eval()
    rec1, _ = v(x)
    torch.testing.assert_close(rec1, v.decode(v.enc(x)))


def test_munit_ms_image_dis():
    torch.manual_seed(0)
    d = munit.MsImageDis(3, dict(DIS, dim=4))
    x = torch.randn(1, 3, 256, 256)
    outs = d(x)
    assert [o.shape for o in outs] == [(1, 1, 16, 16), (1, 1, 8, 8), (1, 1, 4, 4)]
    # between scales: AvgPool2d(3, 2, 1) not counting the padding
    torch.testing.assert_close(d.cnns[1](TF.avg_pool2d(x, 3, 2, 1, count_include_pad=False)), outs[1])
    fake, real = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    of, orl = d(fake), d(real)
    torch.testing.assert_close(
        d.calc_dis_loss(fake, real), sum((a**2).mean() + ((b - 1) ** 2).mean() for a, b in zip(of, orl))
    )
    torch.testing.assert_close(d.calc_gen_loss(fake), sum(((a - 1) ** 2).mean() for a in of))
    assert isinstance(d.cnns[0][0].pad, torch.nn.ReflectionPad2d) and d.cnns[0][0].norm is None
    assert d.cnns[0][0].activation.negative_slope == 0.2


def test_unit_pytorch_gan():
    with META:
        shared_E, shared_G = unit.ResidualBlock(256), unit.ResidualBlock(256)
        E1, E2 = unit.Encoder(dim=64, n_downsample=2, shared_block=shared_E), unit.Encoder(shared_block=shared_E)
        G1 = unit.Generator(dim=64, n_upsample=2, shared_block=shared_G)
        D1 = unit.Discriminator((3, 256, 256))
    assert E1.shared_block is E2.shared_block
    res = lambda p, c: {**conv(f"{p}.conv_block.1", c, c, 3), **conv(f"{p}.conv_block.5", c, c, 3)}
    exp = {
        **conv("model_blocks.1", 64, 3, 7),
        **conv("model_blocks.4", 128, 64, 4),
        **conv("model_blocks.7", 256, 128, 4),
    }
    for i in range(3):
        exp.update(res(f"model_blocks.{10 + i}", 256))
    exp.update(res("shared_block", 256))
    assert shapes(E1) == exp
    expg = {**res("shared_block", 256)}
    for i in range(3):
        expg.update(res(f"model_blocks.{i}", 256))
    expg.update(
        {
            **convT("model_blocks.3", 256, 128, 4),
            **convT("model_blocks.6", 128, 64, 4),
            **conv("model_blocks.10", 3, 64, 7),
        }
    )
    assert shapes(G1) == expg
    expd = {
        **conv("model.0", 64, 3, 4),
        **conv("model.2", 128, 64, 4),
        **conv("model.5", 256, 128, 4),
        **conv("model.8", 512, 256, 4),
        **conv("model.11", 1, 512, 3),
    }
    assert shapes(D1) == expd and D1.output_shape == (1, 16, 16)
    assert shapes(unit.Discriminator(3)) == expd  # the older in_channels form

    torch.manual_seed(0)
    sE, sG = unit.ResidualBlock(32), unit.ResidualBlock(32)
    E, G = unit.Encoder(dim=8, shared_block=sE), unit.Generator(dim=8, shared_block=sG)
    D = unit.Discriminator((3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    mu, z = E(x)
    assert mu.shape == z.shape == (2, 32, 8, 8) and not torch.equal(mu, z)
    assert G(z).shape == (2, 3, 32, 32)
    assert D(x).shape == (2, *D.output_shape) == (2, 1, 2, 2)
    assert isinstance(E.model_blocks[3], torch.nn.LeakyReLU) and isinstance(G.model_blocks[5], torch.nn.LeakyReLU)
    torch.testing.assert_close(sE(mu), mu + sE.conv_block(mu))
    torch.testing.assert_close(unit.compute_kl(mu), (mu**2).mean())


# ================================================================== UNIT training step
# (PyTorch-GAN implementations/unit/unit.py's loop; i2i_fast.models.unit.training_step)


def _unit_setup(dtype=torch.float32, dim=4, size=32):
    torch.manual_seed(0)
    nets = [n.to(dtype) for n in unit.build(dim=dim, n_downsample=2, img_size=size)]
    g = torch.Generator().manual_seed(5)
    X1, X2 = ((torch.rand(1, 3, size, size, generator=g, dtype=torch.float64) * 2 - 1).to(dtype) for _ in range(2))
    return nets, X1, X2


def _unit_opts(nets):
    import itertools
    import warnings

    with warnings.catch_warnings():  # the script's chain lists the shared blocks twice
        warnings.simplefilter("ignore")
        opt_G = torch.optim.Adam(itertools.chain(*(n.parameters() for n in nets[:4])), lr=1e-4, betas=(0.5, 0.999))
    return (
        opt_G,
        torch.optim.Adam(nets[4].parameters(), lr=1e-4, betas=(0.5, 0.999)),
        torch.optim.Adam(nets[5].parameters(), lr=1e-4, betas=(0.5, 0.999)),
    )


def test_unit_build_shares_blocks_and_inits():
    E1, E2, G1, G2, D1, D2 = unit.build(dim=4, img_size=32)
    assert E1.shared_block is E2.shared_block and G1.shared_block is G2.shared_block
    assert E1.shared_block is not G1.shared_block
    assert D1.output_shape == (1, 2, 2)
    w = D1.model[0].weight
    assert abs(w.std().item() - 0.02) < 0.005  # weights_init_normal: N(0, 0.02)


def test_unit_training_step_losses_and_updates():
    """The ten G/E terms with unit.py's weights written out, MSE GAN criterion, D1/D2 terms."""
    nets, X1, X2 = _unit_setup()
    ref = copy.deepcopy(nets)  # one deepcopy: the shared blocks stay shared
    before = [copy.deepcopy(n.state_dict()) for n in nets]
    torch.manual_seed(7)
    losses = unit.training_step(*nets, X1, X2, *_unit_opts(nets))

    rE1, rE2, rG1, rG2, rD1, rD2 = ref
    mse, l1 = TF.mse_loss, TF.l1_loss
    with torch.no_grad():
        torch.manual_seed(7)  # the same reparameterization noise, same order
        mu1, Z1 = rE1(X1)
        mu2, Z2 = rE2(X2)
        rec1, rec2, fake1, fake2 = rG1(Z1), rG2(Z2), rG1(Z2), rG2(Z1)
        mu1_, Z1_ = rE1(fake1)
        mu2_, Z2_ = rE2(fake2)
        cyc1, cyc2 = rG1(Z2_), rG2(Z1_)
        ones, zeros = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
        terms = {
            "GAN_1": 10 * mse(rD1(fake1), ones),
            "GAN_2": 10 * mse(rD2(fake2), ones),
            "KL_1": 0.1 * (mu1**2).mean(),
            "KL_2": 0.1 * (mu2**2).mean(),
            "ID_1": 100 * l1(rec1, X1),
            "ID_2": 100 * l1(rec2, X2),
            "KL_1_": 0.1 * (mu1_**2).mean(),
            "KL_2_": 0.1 * (mu2_**2).mean(),
            "cyc_1": 100 * l1(cyc1, X1),
            "cyc_2": 100 * l1(cyc2, X2),
        }
        d1 = mse(rD1(X1), ones) + mse(rD1(fake1), zeros)
        d2 = mse(rD2(X2), ones) + mse(rD2(fake2), zeros)
    for k, v in terms.items():
        torch.testing.assert_close(losses[k], v, msg=k)
    torch.testing.assert_close(losses["G"], sum(terms.values()))
    torch.testing.assert_close(losses["D1"], d1)
    torch.testing.assert_close(losses["D2"], d2)
    torch.testing.assert_close(losses["D"], d1 + d2)
    assert all(not v.requires_grad for v in losses.values())
    for b, net in zip(before, nets):
        assert params_changed(b, net)


def test_unit_converted_step_parity_float64():
    """convert() of the six networks (together: the shared blocks stay shared) with the fused
    losses (two calls for the ten G/E terms, one for both discriminators) vs the original
    step, float64: first-step losses and every parameter after the step."""
    import i2i_fast
    from i2i_fast.convert import FusedResidualBlock

    def run(converted):
        nets, X1, X2 = _unit_setup(torch.float64, dim=8, size=64)
        if converted:
            nets = list(i2i_fast.convert(torch.nn.ModuleList(nets)))
            assert nets[0].shared_block is nets[1].shared_block
            assert isinstance(nets[0].shared_block, FusedResidualBlock)
        torch.manual_seed(3)
        return nets, unit.training_step(*nets, X1, X2, *_unit_opts(nets), fused_losses=converted)

    (ref, lr_), (conv_nets, lc) = run(False), run(True)
    assert set(lc) == {"G", "D"}
    for k in lc:
        torch.testing.assert_close(lc[k], lr_[k], rtol=1e-12, atol=1e-12, msg=k)
    for r, c in zip(ref, conv_nets):
        # a conv bias that feeds an affine-free InstanceNorm has a gradient that is zero by
        # math: both steps give rounding noise (~1e-17), which Adam's first step divides by
        # its own magnitude, so those biases move by noise * lr / (|noise| + 1e-8): <= 1e-8
        zero_grad = {
            f"{name}.{i}.bias"
            for name, m in r.named_modules()
            if isinstance(m, torch.nn.Sequential)
            for i in range(len(m) - 1)
            if isinstance(m[i + 1], torch.nn.InstanceNorm2d)
        }
        zero_grad = {k[1:] if k.startswith(".") else k for k in zero_grad}
        sr, sc = r.state_dict(), c.state_dict()
        assert sr.keys() == sc.keys()
        for k in sr:
            atol = 1e-8 if k in zero_grad else 1e-10
            torch.testing.assert_close(sc[k], sr[k], rtol=1e-9, atol=atol, msg=k)
        assert zero_grad <= sr.keys() and len(zero_grad) >= 2
