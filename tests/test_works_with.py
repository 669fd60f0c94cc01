"""Everyday PyTorch features on converted models (docs/works_with.md lists these with the tests
elsewhere): an autocast training step with GradScaler, channels_last, activation
checkpointing and torch.export. Small CycleGAN / MUNIT networks on CPU."""

import pytest
import torch
from test_convert import MUNIT_GEN
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import i2i_fast
from i2i_fast import functional as F
from i2i_fast.bench import counting
from i2i_fast.models import cyclegan, munit


def _nets():
    torch.manual_seed(0)
    return (
        cyclegan.define_G(3, 3, 4, "resnet_6blocks", norm="instance"),
        cyclegan.define_D(3, 4, "n_layers", n_layers_D=2, norm="instance"),
    )


def _img(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


A, B = _img(2, 1, 3, 32, 32), _img(3, 1, 3, 32, 32)
AMP_RTOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}  # a few units of the autocast dtype's rounding
SCALE = 2.0**10


def _amp_step(G, D, dtype, fused):
    """One generator step under torch.autocast (dtype None: autocast off, the fp32 step) with
    torch.amp.GradScaler: LSGAN + 10 x L1, the fused losses when `fused`. Returns (loss,
    {name: scaled grad}, scale after the step)."""
    opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        fake = G(A)
        pred = D(fake)
        assert fake.dtype == (dtype or torch.float32)  # the convolutions ran in the autocast dtype
        if fused:
            loss = F.gan_loss(pred, True, "lsgan") + F.l1_loss((fake, B), 10.0)
        else:
            loss = nn.functional.mse_loss(pred, torch.ones_like(pred)) + 10.0 * nn.functional.l1_loss(fake, B)
    scaler.scale(loss).backward()
    grads = {n: p.grad.float().clone() for n, p in G.named_parameters()}
    scaler.step(opt)
    scaler.update()
    return float(loss), grads, scaler.get_scale()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_grad_scaler_training_step(dtype):
    """A converted G (fused losses) trains under autocast + GradScaler: the loss is the
    original's to the autocast dtype's rounding, the gradients are finite (the scale is kept)
    and no farther from the fp32 step's than the original's under the same autocast (the fused
    norms keep their statistics in fp32), and the parameters are updated."""
    G, D = _nets()
    G_c, D_c = i2i_fast.convert(G, copy=True), i2i_fast.convert(D, copy=True)
    before = [p.detach().clone() for p in G_c.parameters()]
    _, grads_32, _ = _amp_step(*_nets(), None, fused=False)
    loss_o, grads_o, _ = _amp_step(G, D, dtype, fused=False)
    loss_c, grads_c, scale = _amp_step(G_c, D_c, dtype, fused=True)
    assert loss_c == pytest.approx(loss_o, rel=AMP_RTOL[dtype])
    assert scale == SCALE, "GradScaler found inf/NaN gradients and skipped the step"
    flat = lambda g: torch.cat([g[n].flatten() for n in grads_32])
    g_32, g_o, g_c = flat(grads_32), flat(grads_o), flat(grads_c)
    assert torch.isfinite(g_c).all()
    assert (g_c - g_32).norm() <= (g_o - g_32).norm()
    assert all(not torch.equal(a, b) for a, b in zip(before, G_c.parameters()))


def test_channels_last_converted_model():
    """A converted model in channels_last takes and returns channels_last tensors and computes
    what the original computes."""
    G, _ = _nets()
    G_c = i2i_fast.convert(G, copy=True).to(memory_format=torch.channels_last)
    x = A.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = G_c(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, G(A), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("how", ["checkpoint", "checkpoint_sequential"])
def test_activation_checkpointing(how):
    """torch.utils.checkpoint (non-reentrant) around a converted generator, or its blocks:
    the same gradients as without checkpointing, and as the original's."""
    G, _ = _nets()
    G_c = i2i_fast.convert(G, copy=True)

    def grads(model, run):
        model.zero_grad(set_to_none=True)
        x = A.clone().requires_grad_()
        (run(model, x) * B).sum().backward()
        return [x.grad] + [p.grad for p in model.parameters()]

    if how == "checkpoint":
        ckpt = lambda m, x: checkpoint(m, x, use_reentrant=False)
    else:
        ckpt = lambda m, x: checkpoint_sequential(m.model, 3, x, use_reentrant=False)
    plain = grads(G_c, lambda m, x: m(x))
    with counting.OpCounter() as ops:
        checked = grads(G_c, ckpt)
    assert any(k.startswith("i2i_fast::") for k in ops.names), "the checkpointed model ran no fused op"
    for a, b, c in zip(checked, plain, grads(G, lambda m, x: m(x))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)  # fp32 sums of ~1e3 terms of |g| ~ 1


@pytest.mark.parametrize("name", ["cyclegan_resnet", "munit_adaingen"])
def test_torch_export(name):
    """torch.export.export of a converted generator keeps the fused ops in the graph (their
    fake kernels give the shapes) and the exported program computes the original's output."""
    torch.manual_seed(0)
    G = _nets()[0] if name == "cyclegan_resnet" else munit.AdaINGen(3, MUNIT_GEN)
    G.eval()
    G_c = i2i_fast.convert(G, copy=True).eval()
    ep = torch.export.export(G_c, (A,))
    fused = {str(n.target) for n in ep.graph.nodes if "i2i_fast" in str(n.target)}
    assert fused, ep.graph
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(A), G(A), atol=1e-5, rtol=1e-5)
