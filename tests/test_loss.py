"""Fused losses: F.gan_loss, F.l1_loss, F.gradient_penalty, i2i_fast.GANLoss.
Values and gradients against the ORIGINAL formulas written out here (MSELoss vs ones_like,
BCEWithLogitsLoss vs expand_as, softplus forms, hinge, WGAN, StarGAN/CycleGAN gradient
penalties, L1) on every backend that runs here, list forms vs sums of single terms,
determinism, opcheck, torch.compile(fullgraph=True), NaN/Inf and bad input."""

import copy

import pytest
import torch
import torch.nn.functional as TF
from conftest import HAS_CUDA, assert_parity, cpu_backends, cuda_backends, requires_cuda

import i2i_fast
from i2i_fast import functional as F
from i2i_fast.models import cyclegan, stargan

MODES = ["lsgan", "vanilla", "hinge", "wgan", "wgangp", "nonsaturating"]


# ------------------------------------------------------------------ the original formulas
def original(mode, pred, is_real, for_discriminator=True, real_label=1.0, fake_label=0.0):
    """Each repository's own formula, on pred (no fusion, targets materialized)."""
    if mode == "lsgan":  # CycleGAN GANLoss / U-GAT-IT: MSELoss vs a filled target
        target = torch.full_like(pred, real_label if is_real else fake_label)
        if real_label == 1.0 and fake_label == 0.0:
            target = torch.ones_like(pred) if is_real else torch.zeros_like(pred)
        return torch.nn.MSELoss()(pred, target)
    if mode == "vanilla":  # BCEWithLogitsLoss vs label.expand_as(pred)
        label = torch.tensor(real_label if is_real else fake_label, dtype=pred.dtype, device=pred.device)
        return torch.nn.BCEWithLogitsLoss()(pred, label.expand_as(pred))
    if mode == "hinge":
        if not for_discriminator:
            return -pred.mean() if is_real else pred.mean()
        return torch.relu(1 - pred).mean() if is_real else torch.relu(1 + pred).mean()
    if mode in ("wgan", "wgangp"):  # StarGAN d_loss_real = -mean(out_src), fake +mean
        return -pred.mean() if is_real else pred.mean()
    if mode == "nonsaturating":  # CUT, reduced to a scalar
        return TF.softplus(-pred).mean() if is_real else TF.softplus(pred).mean()
    raise AssertionError(mode)


def preds_like(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _run(fn, masters, dtype, device="cpu"):
    """fn on copies of the float64 masters cast to dtype; returns (out, grads)."""
    ts = [m.to(device=device, dtype=dtype).requires_grad_() for m in masters]
    out = fn(ts)
    grads = torch.autograd.grad(out, ts, allow_unused=True)
    return out, grads


def check(ours, orig, masters, dtype, device="cpu", what=""):
    # the float64 reference sees the inputs the dtype runs see (rounded)
    masters = [m.to(dtype).double() for m in masters]
    out, g = _run(ours, masters, dtype, device)
    same, gs = _run(orig, masters, dtype, device)
    ref, gr = _run(orig, masters, torch.float64, "cpu")
    assert out.dtype == same.dtype, f"{what}: dtype {out.dtype} != original {same.dtype}"
    assert out.shape == same.shape, f"{what}: shape"
    # A reduced loss is one rounded number: two correct summation orders may differ by an ulp
    # of the result even where torch happens to round exactly, so the scalar value gets the
    # section-5 rule plus 2 ulp of |ref| (gradients get the plain rule).
    ulp = 2 * torch.finfo(dtype).eps * ref.detach().abs().max().item()
    if out.numel() == 1 and abs(out.item() - ref.item()) <= ulp:
        pass
    else:
        assert_parity(out, same, ref, dtype, f"{what} value")
    for k, (a, b, c) in enumerate(zip(g, gs, gr)):
        assert_parity(a, b, c, dtype, f"{what} grad{k}")


def dtypes_for(backend):
    # every backend, triton included (its labels / weights travel as fp64 bit patterns)
    return [torch.float32, torch.float64]


# ------------------------------------------------------------------ gan_loss single terms
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("is_real", [True, False])
def test_gan_loss_single_vs_original(backend, mode, is_real):
    for dtype in dtypes_for(backend):
        for shape in [(1, 1, 30, 30), (2, 2), (3, 1, 7, 5)]:
            for_d = [True, False] if mode == "hinge" else [True]
            for fd in for_d:

                def ours(ts):
                    with i2i_fast.use_backend(backend):
                        return F.gan_loss(ts[0], is_real, mode, for_discriminator=fd)

                check(
                    ours,
                    lambda ts: original(mode, ts[0], is_real, fd),
                    [preds_like(shape)],
                    dtype,
                    what=f"{backend} {mode} real={is_real} D={fd} {shape} {dtype}",
                )


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("mode", ["lsgan", "vanilla"])
def test_gan_loss_custom_labels(backend, mode):
    for is_real in (True, False):

        def ours(ts):
            with i2i_fast.use_backend(backend):
                return F.gan_loss(ts[0], is_real, mode, target_real_label=0.9, target_fake_label=0.1)

        check(
            ours,
            lambda ts: original(mode, ts[0], is_real, real_label=0.9, fake_label=0.1),
            [preds_like((2, 1, 6, 6), seed=3)],
            torch.float32,
            what=f"{backend} {mode} smoothed labels",
        )


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "hinge", "nonsaturating"])
def test_gan_loss_reductions(backend, reduction, mode):
    def elementwise(p):
        if mode == "lsgan":
            return TF.mse_loss(p, torch.ones_like(p), reduction="none")
        if mode == "vanilla":
            return TF.binary_cross_entropy_with_logits(p, torch.ones_like(p), reduction="none")
        if mode == "hinge":
            return torch.relu(1 - p)
        return TF.softplus(-p)

    def orig(ts):
        e = elementwise(ts[0]) * 3.0
        return e.sum() if reduction == "sum" else e

    def ours(ts):
        with i2i_fast.use_backend(backend):
            return F.gan_loss(ts[0], True, mode, reduction=reduction, weights=3.0)

    if reduction == "none":  # non-scalar output: compare value and a weighted gradient
        masters = [preds_like((2, 1, 5, 3), seed=5)]
        gy = preds_like((2, 1, 5, 3), seed=6).float()
        outs = []
        for fn in (ours, orig):
            t = masters[0].float().requires_grad_()
            out = fn([t])
            out.backward(gy)
            outs.append((out.detach(), t.grad))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-6, atol=1e-6)
    else:
        check(ours, orig, [preds_like((2, 1, 5, 3), seed=5)], torch.float32, what=f"{backend} sum")


# ------------------------------------------------------------------ list forms (one launch)
def ugatit_d_terms(ts):
    """U-GAT-IT D step of one domain x2: LSGAN on global (1,1,6,6) / local (1,1,30,30) logits
    and CAM logits (1,2), real -> ones_like, fake -> zeros_like; 8 terms, weight adv_weight."""
    mse = TF.mse_loss
    loss = 0
    for k in range(0, 8, 2):
        loss = loss + mse(ts[k], torch.ones_like(ts[k])) + mse(ts[k + 1], torch.zeros_like(ts[k + 1]))
    return loss


UGATIT_SHAPES = [(1, 1, 6, 6), (1, 1, 6, 6), (1, 2), (1, 2), (1, 1, 30, 30), (1, 1, 30, 30), (1, 2), (1, 2)]


@pytest.mark.parametrize("backend", cpu_backends())
def test_ugatit_discriminator_terms_one_call(backend):
    masters = [preds_like(s, seed=i) for i, s in enumerate(UGATIT_SHAPES)]

    def ours(ts):
        with i2i_fast.use_backend(backend):
            return F.gan_loss(ts, [True, False] * 4, "lsgan")

    check(ours, ugatit_d_terms, masters, torch.float32, what=f"{backend} ugatit D")


@pytest.mark.parametrize("backend", cpu_backends())
def test_list_equals_weighted_sum_of_single_terms(backend):
    shapes = [(1, 1, 16, 16), (1, 1, 8, 8), (1, 1, 4, 4), (2, 3)]
    ws = [1.0, 0.5, 10.0, 1000.0]
    for mode in MODES:
        masters = [preds_like(s, seed=10 + i) for i, s in enumerate(shapes)]
        reals = [True, False, False, True]

        def ours(ts):
            with i2i_fast.use_backend(backend):
                return F.gan_loss(ts, reals, mode, weights=ws)

        def singles(ts):
            with i2i_fast.use_backend(backend):
                return sum(w * F.gan_loss(t, r, mode) for t, r, w in zip(ts, reals, ws))

        check(ours, singles, masters, torch.float32, what=f"{backend} {mode} list vs singles")
        check(
            ours,
            lambda ts: sum(w * original(mode, t, r) for t, r, w in zip(ts, reals, ws)),
            masters,
            torch.float32,
            what=f"{backend} {mode} list vs original",
        )


@pytest.mark.parametrize("backend", cpu_backends())
def test_munit_three_scale_lsgan(backend):
    """MsImageDis.calc_dis_loss / calc_gen_loss (lsgan) over (16,16), (8,8), (4,4) outputs."""
    shapes = [(1, 1, 16, 16), (1, 1, 8, 8), (1, 1, 4, 4)]
    masters = [preds_like(s, seed=20 + i) for i, s in enumerate(shapes)] + [
        preds_like(s, seed=30 + i) for i, s in enumerate(shapes)
    ]

    def orig_dis(ts):
        loss = 0
        for out0, out1 in zip(ts[:3], ts[3:]):
            loss = loss + torch.mean((out0 - 0) ** 2) + torch.mean((out1 - 1) ** 2)
        return loss

    def ours_dis(ts):
        with i2i_fast.use_backend(backend):
            return F.gan_loss(ts, [False] * 3 + [True] * 3, "lsgan")

    check(ours_dis, orig_dis, masters, torch.float32, what=f"{backend} munit D")

    def ours_gen(ts):
        with i2i_fast.use_backend(backend):
            return F.gan_loss(ts[:3], True, "lsgan")

    check(
        ours_gen,
        lambda ts: sum(torch.mean((o - 1) ** 2) for o in ts[:3]),
        masters[:3],
        torch.float32,
        what=f"{backend} munit G",
    )


@pytest.mark.parametrize("backend", cpu_backends())
def test_large_multi_chunk_terms(backend):
    """Terms larger than one chunk (PixelDiscriminator (1,1,256,256) is 16 chunks) and more
    terms than one Triton launch holds (10 > 8): the partial-sum path."""
    big = (1, 1, 128, 160) if backend == "triton" else (1, 1, 256, 256)
    shapes = [big] + [(1, 1, 3, 3)] * 9
    masters = [preds_like(s, seed=40 + i) for i, s in enumerate(shapes)]
    ws = [float(i + 1) for i in range(len(shapes))]

    def ours(ts):
        with i2i_fast.use_backend(backend):
            return F.gan_loss(ts, True, "vanilla", weights=ws)

    check(
        ours,
        lambda ts: sum(w * original("vanilla", t, True) for t, w in zip(ts, ws)),
        masters,
        torch.float32,
        what=f"{backend} large",
    )


def test_one_op_call_for_all_terms():
    """The 8 U-GAT-IT terms run as ONE loss_fwd and at most ONE loss_bwd (none for a unit
    gradient on CPU: the saved gradients are the answer), and no mse/ones_like."""
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    ts = [preds_like(s, seed=i).float().requires_grad_() for i, s in enumerate(UGATIT_SHAPES)]
    for seed_grad, n_bwd in ((None, 0), (torch.tensor(0.5), 1)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss = F.gan_loss(ts, [True, False] * 4)
            loss.backward(seed_grad)
        names = [e.name for e in prof.events()]
        assert names.count("i2i_fast::loss_fwd") == 1, names
        assert names.count("i2i_fast::loss_bwd") == n_bwd, names
    # (aten::ones_like is autograd's own seed gradient of loss.backward())
    assert not any(
        n in ("aten::mse_loss", "aten::zeros_like", "aten::add", "aten::sub", "aten::pow", "aten::mean") for n in names
    ), names


def test_unit_gradient_backward_hands_out_the_saved_gradients_safely():
    """CPU, incoming gradient exactly 1, graph not retained: the backward returns the gradients
    the forward wrote (no loss_bwd copy). Same values as the copying path, bitwise; with
    retain_graph it copies, so a gradient modified in place cannot leak into a second backward;
    accumulation into .grad stays right."""
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    ts = [preds_like(s, seed=i).float().requires_grad_() for i, s in enumerate(UGATIT_SHAPES)]
    targets = [True, False] * 4
    fast = torch.autograd.grad(F.gan_loss(ts, targets), ts)
    copied = torch.autograd.grad(F.gan_loss(ts, targets), ts, torch.tensor(1.0), retain_graph=True)
    for a, b in zip(fast, copied):
        assert torch.equal(a, b)
    loss = F.gan_loss(ts, targets)
    first = torch.autograd.grad(loss, ts, retain_graph=True)
    for g in first:
        g.mul_(0)  # the caller owns what it got
    second = torch.autograd.grad(loss, ts)
    for a, b in zip(second, fast):
        assert torch.equal(a, b)
    for _ in range(2):
        F.gan_loss(ts, targets).backward()
    for t, g in zip(ts, fast):
        torch.testing.assert_close(t.grad, 2 * g, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss2 = F.gan_loss(ts, targets)
        loss2.backward()
        loss2.backward()
    # asked for (need_grad=True) the op returns its gradients; the backward then copies
    outs, grads = torch.ops.i2i_fast.loss_fwd(ts, [], [1.0, 0.0] * 4, [1.0] * 8, 0, 1, True)
    kept = [g.clone() for g in grads]
    got = torch.autograd.grad(outs[0], ts)
    for g, k, a in zip(grads, kept, got):
        assert torch.equal(g, k) and torch.equal(a, k) and a.data_ptr() != g.data_ptr()


# ------------------------------------------------------------------ GANLoss drop-in
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "wgangp", "nonsaturating"])
def test_ganloss_drop_in(backend, mode):
    orig = cyclegan.GANLoss(mode)
    ours = i2i_fast.GANLoss(mode)
    assert list(ours.state_dict()) == list(orig.state_dict()) == ["real_label", "fake_label"]
    ours.load_state_dict(orig.state_dict())
    for shape in [(1, 1, 30, 30), (2, 1, 30, 30)]:
        for is_real in (True, False):

            def f_ours(ts):
                with i2i_fast.use_backend(backend):
                    return ours(ts[0], is_real).sum()

            def f_orig(ts):
                return cyclegan.GANLoss(mode).to(ts[0].dtype)(ts[0], is_real).sum()

            check(
                f_ours,
                f_orig,
                [preds_like(shape, seed=7)],
                torch.float32,
                what=f"{backend} GANLoss {mode} {shape} {is_real}",
            )
            p = preds_like(shape, seed=7).float()
            assert ours(p, is_real).shape == orig(p, is_real).shape


def test_ganloss_labels_follow_state_dict():
    orig = cyclegan.GANLoss("lsgan", target_real_label=0.9, target_fake_label=0.2)
    ours = i2i_fast.GANLoss("lsgan")
    ours.load_state_dict(orig.state_dict())
    p = preds_like((1, 1, 6, 6)).float()
    for r in (True, False):
        torch.testing.assert_close(ours(p, r), orig(p, r))
    with pytest.raises(NotImplementedError, match="gan mode"):
        i2i_fast.GANLoss("lsgann")


# ------------------------------------------------------------------ StarGAN classification
@pytest.mark.parametrize("backend", cpu_backends())
def test_stargan_classification_constant_target(backend):
    """classification_loss = BCE-with-logits summed / batch; with a constant target (as the
    U-GAT-IT CAM loss) it is gan_loss(vanilla, reduction='sum', weights=1/B)."""
    for is_real in (True, False):

        def ours(ts):
            with i2i_fast.use_backend(backend):
                return F.gan_loss(ts[0], is_real, "vanilla", reduction="sum", weights=1.0 / ts[0].shape[0])

        def orig(ts):
            t = torch.ones_like(ts[0]) if is_real else torch.zeros_like(ts[0])
            return stargan.classification_loss(ts[0], t)

        check(ours, orig, [preds_like((16, 5), seed=9)], torch.float32, what=f"{backend} stargan cls")


@pytest.mark.parametrize("backend", cpu_backends())
def test_stargan_classification_label_tensor(backend):
    """StarGAN's classification_loss with its per-attribute 0/1 label tensor (real images' labels,
    and the target labels of the fakes): bce_with_logits((logit, label), 1/B, reduction='sum');
    a list of pairs = the sum of single pairs; reductions mean and none against torch's BCE."""
    g = torch.Generator().manual_seed(4)
    labels = [(torch.rand(16, 5, generator=g) > 0.5).double(), (torch.rand(4, 3, generator=g) > 0.3).double()]
    for dtype in dtypes_for(backend):

        def ours(ts):
            with i2i_fast.use_backend(backend):
                return F.bce_with_logits(
                    [(ts[0], labels[0].to(dtype)), (ts[1], labels[1].to(dtype))], [1.0 / 16, 0.25], reduction="sum"
                )

        def orig(ts):
            return stargan.classification_loss(ts[0], labels[0].to(ts[0].dtype)) + stargan.classification_loss(
                ts[1], labels[1].to(ts[1].dtype)
            )

        check(
            ours,
            orig,
            [preds_like((16, 5), seed=11), preds_like((4, 3), seed=12)],
            dtype,
            what=f"{backend} stargan cls labels {dtype}",
        )
        for red in ("mean", "none"):

            def ours1(ts, red=red):
                with i2i_fast.use_backend(backend):
                    return F.bce_with_logits((ts[0], labels[0].to(dtype)), reduction=red)

            def orig1(ts, red=red):
                return TF.binary_cross_entropy_with_logits(ts[0], labels[0].to(ts[0].dtype), reduction=red)

            if red == "none":
                p = [preds_like((16, 5), seed=13).to(dtype)]
                torch.testing.assert_close(ours1(p), orig1(p))
            else:
                check(ours1, orig1, [preds_like((16, 5), seed=13)], dtype, what=f"{backend} bce {red}")


@pytest.mark.parametrize("backend", cpu_backends())
def test_bce_with_logits_bad_input(backend):
    x, lab = torch.randn(4, 5, requires_grad=True), torch.rand(4, 5)
    with i2i_fast.use_backend(backend):
        with pytest.raises(ValueError, match="target takes no gradient"):
            F.bce_with_logits((x, lab.clone().requires_grad_()))
        with pytest.raises(ValueError, match="does not broadcast"):
            F.bce_with_logits((x, lab[:, :1]))
        with pytest.raises(ValueError, match="empty list"):
            F.bce_with_logits([])
        with pytest.raises(TypeError, match="floating point"):
            F.bce_with_logits((x, lab.long()))
    if backend == "cpu":  # the op itself, called directly with a target that wants a gradient
        with pytest.raises(RuntimeError, match="target of a bce_target loss takes no gradient"):
            torch.ops.i2i_fast.loss_fwd([x], [lab.clone().requires_grad_()], [0.0], [1.0], 6, 1, False)


# ------------------------------------------------------------------ L1
@pytest.mark.parametrize("backend", cpu_backends())
def test_l1_pairs_vs_original(backend):
    """CycleGAN: cycle L1 x10 per direction + identity L1 x5; gradients for a and b."""
    shapes = [(1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 17, 9), (2, 1, 5, 3)]
    ws = [10.0, 10.0, 5.0, 0.5]
    for dtype in dtypes_for(backend):
        masters = [preds_like(s, seed=50 + i) for i, s in enumerate(shapes)] + [
            preds_like(s, seed=60 + i) for i, s in enumerate(shapes)
        ]

        def ours(ts):
            with i2i_fast.use_backend(backend):
                return F.l1_loss(list(zip(ts[:4], ts[4:])), ws)

        def orig(ts):
            return sum(w * torch.nn.L1Loss()(a, b) for a, b, w in zip(ts[:4], ts[4:], ws))

        check(ours, orig, masters, dtype, what=f"{backend} l1 {dtype}")


@pytest.mark.parametrize("backend", cpu_backends())
def test_l1_single_pair_reductions_and_no_grad_target(backend):
    a = preds_like((2, 3, 4, 5), seed=1).float().requires_grad_()
    b = preds_like((2, 3, 4, 5), seed=2).float()  # the real image: no gradient
    with i2i_fast.use_backend(backend):
        loss = F.l1_loss((a, b))
        s = F.l1_loss((a, b), 2.0, reduction="sum")
        n = F.l1_loss((a, b), reduction="none")
    torch.testing.assert_close(loss, TF.l1_loss(a, b))
    torch.testing.assert_close(s, 2 * TF.l1_loss(a, b, reduction="sum"))
    torch.testing.assert_close(n, TF.l1_loss(a, b, reduction="none"))
    (ga,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(ga, torch.autograd.grad(TF.l1_loss(a, b), a)[0])


# ------------------------------------------------------------------ gradient penalty
class _Critic(torch.nn.Module):
    def __init__(self, two_outputs=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(4, 1, 3)
        self.two = two_outputs

    def forward(self, x):
        h = TF.leaky_relu(self.conv(x), 0.01)
        out = self.head(h)
        return (out, h.mean((2, 3))) if self.two else out


@pytest.mark.parametrize("backend", cpu_backends())
def test_gradient_penalty_stargan(backend):
    torch.manual_seed(0)
    d = _Critic(two_outputs=True).double()
    real, fake = torch.randn(4, 3, 9, 9, dtype=torch.float64), torch.randn(4, 3, 9, 9, dtype=torch.float64)
    d_ref = copy.deepcopy(d)
    torch.manual_seed(1)
    with i2i_fast.use_backend(backend):
        gp = F.gradient_penalty(d, real, fake, 10.0, style="stargan")
    gp.backward()
    torch.manual_seed(1)  # the original draws alpha the same way
    alpha = torch.rand(real.size(0), 1, 1, 1)
    x_hat = (alpha * real.data + (1 - alpha) * fake.data).requires_grad_(True)
    out_src, _ = d_ref(x_hat)
    ref = 10.0 * stargan.gradient_penalty(out_src, x_hat)
    ref.backward()
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gp, ref, **tol)
    for (k, p), q in zip(d.named_parameters(), d_ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=k, **tol)


@pytest.mark.parametrize("backend", cpu_backends())
def test_gradient_penalty_cyclegan(backend):
    torch.manual_seed(0)
    d = _Critic().double()
    real, fake = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    d_ref = copy.deepcopy(d)
    torch.manual_seed(3)
    with i2i_fast.use_backend(backend):
        gp, g = F.gradient_penalty(d, real, fake, 10.0, style="cyclegan", return_gradients=True)
    gp.backward()
    torch.manual_seed(3)
    ref, g_ref = cyclegan.cal_gradient_penalty(d_ref, real, fake, "cpu", lambda_gp=10.0)
    ref.backward()
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gp, ref, **tol)
    torch.testing.assert_close(g, g_ref)
    for (k, p), q in zip(d.named_parameters(), d_ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=k, **tol)


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("mode", MODES)
def test_nan_inf_propagate_like_original(backend, mode):
    p = torch.tensor([[0.5, float("nan"), float("inf"), -float("inf"), 30.0, -30.0, 0.0, 1.0, -1.0]])
    for is_real in (True, False):
        with i2i_fast.use_backend(backend):
            ours = F.gan_loss(p, is_real, mode, reduction="none")
        ref = original(mode, p, is_real) if False else None  # elementwise form below
        elem = {
            "lsgan": lambda q: (q - (1.0 if is_real else 0.0)) ** 2,
            "vanilla": lambda q: TF.binary_cross_entropy_with_logits(
                q, torch.full_like(q, 1.0 if is_real else 0.0), reduction="none"
            ),
            "hinge": lambda q: torch.relu(1 - q) if is_real else torch.relu(1 + q),
            "wgan": lambda q: -q if is_real else q,
            "wgangp": lambda q: -q if is_real else q,
            "nonsaturating": lambda q: TF.softplus(-q) if is_real else TF.softplus(q),
        }[mode]
        ref = elem(p)
        torch.testing.assert_close(ours, ref, equal_nan=True, msg=f"{mode} {is_real}")
        with i2i_fast.use_backend(backend):
            total = F.gan_loss(p, is_real, mode)
        assert torch.isnan(total) == torch.isnan(original(mode, p, is_real)), mode


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("mode", MODES)
def test_nan_inf_gradients_like_original(backend, mode):
    """The backward of every mode with NaN/Inf predictions: the original's gradient element for
    element (Triton's hinge, linear and abs derivatives were NaN at a NaN input where
    torch gives the constant -1/n)."""
    p = torch.tensor([[0.5, float("nan"), float("inf"), -float("inf"), 30.0, -30.0, 0.0, 1.0, -1.0]])
    for is_real in (True, False):
        pa, pb = p.clone().requires_grad_(), p.clone().requires_grad_()
        with i2i_fast.use_backend(backend):
            F.gan_loss(pa, is_real, mode).backward()
        original(mode, pb, is_real).backward()
        torch.testing.assert_close(pa.grad, pb.grad, equal_nan=True, msg=f"{mode} {is_real}")
    a, b = p.clone().requires_grad_(), torch.zeros_like(p)
    with i2i_fast.use_backend(backend):
        F.l1_loss([(a, b)]).backward()
    ref = p.clone().requires_grad_()
    torch.nn.L1Loss()(ref, b).backward()
    torch.testing.assert_close(a.grad, ref.grad, equal_nan=True, msg="l1")


@pytest.mark.parametrize("backend", cpu_backends())
def test_empty_prediction_mean_is_nan_like_torch(backend):
    p = torch.zeros(0, 1, 3, 3)
    with i2i_fast.use_backend(backend):
        ours = F.gan_loss(p, True, "lsgan")
    assert torch.isnan(ours) and torch.isnan(TF.mse_loss(p, torch.ones_like(p)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs_fp32_accumulation(dtype):
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    masters = [preds_like(s, seed=i) for i, s in enumerate(UGATIT_SHAPES)]

    def ours(ts):
        with i2i_fast.use_backend("cpu"):
            return F.gan_loss(ts, [True, False] * 4, "lsgan")

    check(ours, ugatit_d_terms, masters, dtype, what=f"cpu {dtype}")
    l1m = [preds_like((1, 3, 64, 64), seed=1), preds_like((1, 3, 64, 64), seed=2)]

    def l1_ours(ts):
        with i2i_fast.use_backend("cpu"):
            return F.l1_loss((ts[0], ts[1]), 10.0)

    check(l1_ours, lambda ts: 10.0 * TF.l1_loss(ts[0], ts[1]), l1m, dtype, what=f"cpu l1 {dtype}")


@pytest.mark.parametrize("backend", [b for b in cpu_backends() if b != "triton"])
def test_gradcheck(backend):
    for mode in MODES:
        ts = [preds_like((1, 1, 3, 4), seed=1).requires_grad_(), preds_like((2, 2), seed=2).requires_grad_()]

        def f(a, b):
            with i2i_fast.use_backend(backend):
                return F.gan_loss([a, b], [True, False], mode, weights=[1.0, 3.0])

        torch.autograd.gradcheck(f, ts)
        torch.autograd.gradgradcheck(f, ts)
    a, b = preds_like((2, 3), seed=3).requires_grad_(), preds_like((2, 3), seed=4).requires_grad_()

    def g(a, b):
        with i2i_fast.use_backend(backend):
            return F.l1_loss((a, b), 2.0)

    torch.autograd.gradcheck(g, (a, b))


@pytest.mark.parametrize("backend", cpu_backends())
def test_bitwise_deterministic(backend):
    big = (1, 1, 128, 160) if backend == "triton" else (1, 3, 256, 256)
    ts = [preds_like(big, seed=1).float().requires_grad_(), preds_like((1, 1, 30, 30), seed=2).float().requires_grad_()]
    b = [preds_like(big, seed=3).float(), preds_like((1, 1, 30, 30), seed=4).float()]
    res = []
    for _ in range(2):
        with i2i_fast.use_backend(backend):
            loss = (
                F.gan_loss(ts, [True, False], "vanilla", weights=[1.0, 2.0])
                + F.l1_loss(list(zip(ts, b)), [10.0, 5.0])
                + F.bce_with_logits([(t, u.sigmoid()) for t, u in zip(ts, b)], 3.0)
            )
        res.append((loss.detach(), torch.autograd.grad(loss, ts)))
    assert torch.equal(res[0][0], res[1][0])
    for g0, g1 in zip(res[0][1], res[1][1]):
        assert torch.equal(g0, g1)


def test_cpu_result_independent_of_thread_count():
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    p = preds_like((1, 3, 256, 256), seed=1).float()
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = F.gan_loss(p, True, "lsgan")
        torch.set_num_threads(max(2, n))
        many = F.gan_loss(p, True, "lsgan")
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, many)


# ------------------------------------------------------------------ custom-op machinery
def test_opcheck_cpp():
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    x = [torch.randn(1, 1, 6, 6, requires_grad=True), torch.randn(1, 2, requires_grad=True)]
    for red in (0, 1, 2):
        torch.library.opcheck(torch.ops.i2i_fast.loss_fwd.default, (x, [], [1.0, 0.0], [1.0, 2.0], 0, red, True))
    y = [torch.randn(1, 1, 6, 6), torch.randn(1, 2, requires_grad=True)]
    torch.library.opcheck(torch.ops.i2i_fast.loss_fwd.default, (x, y, [0.0, 0.0], [10.0, 5.0], 5, 1, True))
    saved = [torch.randn(1, 1, 6, 6), torch.randn(1, 2)]
    torch.library.opcheck(
        torch.ops.i2i_fast.loss_bwd.default, ([torch.tensor(2.0)], saved, [0, 1, 1], [1.0, 1.0, -1.0])
    )
    torch.library.opcheck(
        torch.ops.i2i_fast.loss_bwd.default, ([torch.randn(1, 1, 6, 6), torch.randn(1, 2)], saved, [1], [1.0])
    )


@pytest.mark.skipif("triton" not in cpu_backends() and not HAS_CUDA, reason="triton unavailable")
def test_opcheck_triton():
    dev = "cuda" if HAS_CUDA else "cpu"
    x = [torch.randn(1, 1, 6, 6, device=dev, requires_grad=True), torch.randn(1, 2, device=dev, requires_grad=True)]
    utils = ("test_schema", "test_autograd_registration") + (
        ("test_faketensor", "test_aot_dispatch_dynamic") if HAS_CUDA else ()
    )
    torch.library.opcheck(
        torch.ops.i2i_fast.triton_loss_fwd.default, (x, [], [1.0, 0.0], [1.0, 2.0], 0, 1, True), test_utils=utils
    )


@pytest.mark.parametrize("backend", [b for b in ("cpu", "reference") if b in cpu_backends()])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    crit = i2i_fast.GANLoss("lsgan")

    def step(d_out, cam, fake, real):
        adv = crit([d_out, cam], True)
        return adv + F.l1_loss([(fake, real)], [10.0]) + F.gan_loss(d_out, False, "hinge")

    args = [
        preds_like((1, 1, 30, 30), seed=1).float().requires_grad_(),
        preds_like((1, 2), seed=2).float().requires_grad_(),
        preds_like((1, 3, 8, 8), seed=3).float().requires_grad_(),
        preds_like((1, 3, 8, 8), seed=4).float(),
    ]
    with i2i_fast.use_backend(backend):
        out = torch.compile(step, fullgraph=True)(*args)
        g = torch.autograd.grad(out, args[:3])
        ref = step(*args)
        gr = torch.autograd.grad(ref, args[:3])
    torch.testing.assert_close(out, ref)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("backend", cpu_backends())
def test_bad_input(backend):
    p = torch.randn(1, 1, 4, 4)
    with i2i_fast.use_backend(backend):
        with pytest.raises(ValueError, match="pred must be a Tensor or a non-empty list"):
            F.gan_loss([], True)
        with pytest.raises(ValueError, match="mode must be one of"):
            F.gan_loss(p, True, "lsgann")
        with pytest.raises(TypeError, match=r"pred\[0\] must be floating point"):
            F.gan_loss(torch.ones(2, 2, dtype=torch.int64), True)
        with pytest.raises(TypeError, match=r"pred\[1\] must be floating point"):
            F.gan_loss([p, torch.ones(2, dtype=torch.bool)], True)
        with pytest.raises(ValueError, match=r"pred\[1\] is on meta"):
            F.gan_loss([p, torch.randn(2, device="meta")], True)
        with pytest.raises(ValueError, match="weights must have one value per term"):
            F.gan_loss([p, p], True, weights=[1.0])
        with pytest.raises(ValueError, match="target_is_real must be a bool or one bool per term"):
            F.gan_loss([p, p], [True])
        with pytest.raises(ValueError, match="reduction must be"):
            F.gan_loss(p, True, reduction="avg")
        with pytest.raises(TypeError, match="pred must be a Tensor"):
            F.gan_loss("x", True)
        with pytest.raises(ValueError, match=r"pairs\[1\]: a has shape"):
            F.l1_loss([(p, p), (p, torch.randn(1, 1, 4, 5))])
        with pytest.raises(ValueError, match="non-empty list of pairs"):
            F.l1_loss([])
        with pytest.raises(TypeError, match=r"pairs\[0\] must be an \(a, b\) pair"):
            F.l1_loss([(p,)])
        with pytest.raises(ValueError, match=r"pairs\[1\] is on meta"):
            F.l1_loss([(p, torch.randn(1, 1, 4, 4, device="meta"))])
        with pytest.raises(ValueError, match="style must be"):
            F.gradient_penalty(lambda x: x, p, p, style="wgan")
        with pytest.raises(ValueError, match="real has shape"):
            F.gradient_penalty(lambda x: x, p, torch.randn(2, 1, 4, 4))


def test_cpp_op_checks_its_own_arguments():
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    op = torch.ops.i2i_fast.loss_fwd
    p = torch.randn(3)
    with pytest.raises(RuntimeError, match="no tensor arguments|at least one tensor"):  # the dispatcher's
        op([], [], [], [], 0, 1, False)
    with pytest.raises(RuntimeError, match="unknown loss kind"):
        op([p], [], [1.0], [1.0], 9, 1, False)
    with pytest.raises(RuntimeError, match="must be floating point"):
        op([torch.ones(3, dtype=torch.int32)], [], [1.0], [1.0], 0, 1, False)
    with pytest.raises(RuntimeError, match="share dtype and device"):
        op([p, p.double()], [], [1.0, 1.0], [1.0, 1.0], 0, 1, False)
    with pytest.raises(RuntimeError, match=r"y\[0\] has shape"):
        op([p], [torch.randn(4)], [0.0], [1.0], 5, 1, False)
    with pytest.raises(RuntimeError, match="one value per term"):
        op([p], [], [1.0, 2.0], [1.0], 0, 1, False)


def test_mixed_float_dtypes_are_promoted():
    a = torch.randn(1, 1, 6, 6, dtype=torch.float16)
    b = torch.randn(1, 2, dtype=torch.float32)
    out = F.gan_loss([a, b], True)
    assert out.dtype == torch.float32
    ref = TF.mse_loss(a.float(), torch.ones(1, 1, 6, 6)) + TF.mse_loss(b, torch.ones(1, 2))
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------ CUDA (lent GPU)
@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_parity(backend, dtype):
    masters = [preds_like(s, seed=i) for i, s in enumerate(UGATIT_SHAPES)]
    for mode in MODES:
        reals = [True, False] * 4

        def ours(ts):
            with i2i_fast.use_backend(backend):
                return F.gan_loss(ts, reals, mode)

        check(
            ours,
            lambda ts: sum(original(mode, t, r) for t, r in zip(ts, reals)),
            masters,
            dtype,
            device="cuda",
            what=f"{backend} {mode} {dtype}",
        )
    big = [
        preds_like((1, 3, 256, 256), seed=1),
        preds_like((1, 3, 256, 256), seed=2),
        preds_like((1, 1, 256, 256), seed=3),
        preds_like((1, 1, 256, 256), seed=4),
    ]

    def l1(ts):
        with i2i_fast.use_backend(backend):
            return F.l1_loss([(ts[0], ts[1]), (ts[2], ts[3])], [10.0, 5.0])

    check(
        l1,
        lambda ts: 10 * TF.l1_loss(ts[0], ts[1]) + 5 * TF.l1_loss(ts[2], ts[3]),
        big,
        dtype,
        device="cuda",
        what=f"{backend} l1 {dtype}",
    )


@requires_cuda
@pytest.mark.parametrize("backend", cuda_backends())
def test_cuda_deterministic_and_launches(backend):
    ts = [preds_like(s, seed=i).float().cuda().requires_grad_() for i, s in enumerate(UGATIT_SHAPES)]
    big = [preds_like((4, 1, 256, 256), seed=9).float().cuda().requires_grad_()]
    res = []
    for _ in range(2):
        with i2i_fast.use_backend(backend):
            loss = F.gan_loss(ts, [True, False] * 4) + F.gan_loss(big, True, "vanilla")
        res.append((loss.detach(), torch.autograd.grad(loss, ts + big)))
    assert torch.equal(res[0][0], res[1][0])
    assert all(torch.equal(a, b) for a, b in zip(res[0][1], res[1][1]))
    with i2i_fast.use_backend(backend):
        F.gan_loss(ts, [True, False] * 4).backward()  # warm-up (triton compile)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            F.gan_loss(ts, [True, False] * 4).backward()
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # one fused forward + one backward (+ autograd's grad accumulation of the 8 .grad's
    # happens in place after the first backward: adds, not ours)
    ours = [e.name for e in kernels if "loss" in e.name]
    assert len(ours) == 2, [e.name for e in kernels]


@requires_cuda
def test_cuda_large_call_is_one_launch():
    """A call past one block (PixelDiscriminator-size terms + small ones) is still ONE forward
    launch: the last block adds the partials (ticket counter). Repeated calls, and calls on a
    second stream, find the counter reset and give bitwise the same loss."""
    shapes = [(4, 1, 256, 256), (1, 1, 30, 30), (1, 2)]
    ts = [preds_like(s, seed=20 + i).float().cuda() for i, s in enumerate(shapes)]
    ref = sum(original("vanilla", t.double(), True) for t in ts)
    with i2i_fast.use_backend("cuda"):
        first = F.gan_loss(ts, True, "vanilla")
        torch.testing.assert_close(first.double(), ref, rtol=1e-5, atol=1e-6)
        for _ in range(3):
            assert torch.equal(F.gan_loss(ts, True, "vanilla"), first)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            on_side = F.gan_loss(ts, True, "vanilla")
        torch.cuda.current_stream().wait_stream(side)
        assert torch.equal(on_side, first)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            F.gan_loss(ts, True, "vanilla")
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len([k for k in kernels if "loss" in k]) == 1, kernels


@pytest.mark.parametrize("backend", cpu_backends())
def test_no_grad_and_partly_used_outputs(backend):
    a, b = (
        preds_like((1, 1, 4, 4), seed=1).float().requires_grad_(),
        preds_like((1, 2), seed=2).float().requires_grad_(),
    )
    with i2i_fast.use_backend(backend):
        with torch.no_grad():
            assert not F.gan_loss([a, b], True).requires_grad
        outs = F.gan_loss([a, b], True, reduction="none")  # only the first term is used
        ga, gb = torch.autograd.grad(outs[0].sum(), [a, b], allow_unused=True)
    torch.testing.assert_close(ga, 2 * (a.detach() - 1))
    assert gb is None or torch.equal(gb, torch.zeros_like(b))
