"""gan_loss's eager fast path (functional._gan_loss_fast): the common call skips the Python
argument walk (cached plan, the C++ op checks the terms). It must give exactly what the checked
path gives, and step aside for everything it does not check itself."""

import pytest
import torch

import i2i_fast
from i2i_fast import functional as F

requires_cpp = pytest.mark.skipif(not i2i_fast.backends()["cpu"][0], reason="needs the C++ extension")


def _terms(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 1, 30, 30), (1, 2), (1, 1, 6, 6), (1, 2)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes for _ in range(2)]


def _checked(monkeypatch, *args, **kw):
    with monkeypatch.context() as m:
        m.setattr(F, "_gan_loss_fast", lambda *a, **k: None)
        return F.gan_loss(*args, **kw)


def _grads(out, ts):
    outs = out if isinstance(out, list) else [out]
    return torch.autograd.grad([o.sum() for o in outs], ts)


CALLS = [
    dict(target_is_real=[True, False] * 4, mode="lsgan"),
    dict(target_is_real=(True, False) * 4, mode="vanilla", weights=0.5),
    dict(target_is_real=True, mode="hinge", for_discriminator=False),
    dict(target_is_real=False, mode="hinge", target_real_label=0.9),
    dict(target_is_real=True, mode="wgangp", reduction="sum"),
    dict(target_is_real=[False] * 8, mode="nonsaturating", reduction="none"),
    dict(target_is_real=True, mode="lsgan", target_real_label=1, target_fake_label=0, weights=2),
]


@requires_cpp
@pytest.mark.parametrize("kw", CALLS, ids=str)
@pytest.mark.parametrize("container", [list, tuple, "single"])
def test_fast_equals_checked(monkeypatch, kw, container):
    kw = dict(kw)
    ts = _terms()
    if container == "single":
        ts = ts[:1]
        if isinstance(kw["target_is_real"], (list, tuple)):
            kw["target_is_real"] = kw["target_is_real"][0]
        pred = ts[0]
    else:
        pred = container(ts)
    tr = kw.pop("target_is_real")
    fast = F.gan_loss(pred, tr, **kw)
    slow = _checked(monkeypatch, pred, tr, **kw)
    assert type(fast) is type(slow)
    for a, b in zip(fast if isinstance(fast, list) else [fast], slow if isinstance(slow, list) else [slow]):
        assert torch.equal(a, b)
    for a, b in zip(_grads(fast, ts), _grads(slow, ts)):
        assert torch.equal(a, b)


@requires_cpp
def test_fast_path_is_taken(monkeypatch):
    """The U-GAT-IT discriminator call does not walk its arguments in Python."""
    ts = _terms(torch.float32)
    F.gan_loss(ts, [True, False] * 4, "lsgan")  # plan cached

    def walked(*a, **k):
        raise AssertionError("the checked path ran")

    monkeypatch.setattr(F, "_as_terms", walked)
    monkeypatch.setattr(F, "_gan_plan", walked)
    loss = F.gan_loss(ts, [True, False] * 4, "lsgan")
    want = sum(torch.mean((t - (1.0 if k % 2 == 0 else 0.0)) ** 2) for k, t in enumerate(ts))
    torch.testing.assert_close(loss, want)


@requires_cpp
def test_fast_path_steps_aside():
    p = torch.randn(1, 1, 4, 4)
    # mixed dtypes: promoted by the checked path, as before
    out = F.gan_loss([p, p.double()], True)
    assert out.dtype == torch.float64
    # meta, Parameter, numpy-like bools, tensor labels: the checked path and its errors
    with pytest.raises(ValueError, match=r"pred\[1\] is on meta"):
        F.gan_loss([p, torch.empty(2, device="meta")], True)
    w = torch.nn.Parameter(torch.randn(3))
    torch.testing.assert_close(F.gan_loss(w, True), torch.mean((w - 1) ** 2))
    with pytest.raises(TypeError, match="floating point"):
        F.gan_loss([p, torch.ones(2, dtype=torch.int64)], True)
    with pytest.raises(ValueError, match="one bool per term"):
        F.gan_loss([p, p], [True])
    with pytest.raises(ValueError, match="mode must be one of"):
        F.gan_loss(p, True, "lsgann")
    with pytest.raises(ValueError, match="reduction"):
        F.gan_loss(p, True, reduction="avg")
    for _ in range(3):
        F.gan_loss(p, True)
    assert len(F._GAN_PLANS) <= 1024
