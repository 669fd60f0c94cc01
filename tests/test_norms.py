"""ILN, AdaLIN (U-GAT-IT), LayerNorm, AdaIN (MUNIT): the original formulas written out here,
state_dict layout, gradients and bad input of the drop-in modules, which run the selected backend's kernels."""

import pytest
import torch
import torch.nn.functional as TF
from conftest import cpu_backends

import i2i_fast
from i2i_fast import functional as F


# ---- the originals, written out from the original repositories ----
def orig_lin(x, rho, gamma, beta, eps=1e-5, per_sample=False):
    in_mean, in_var = torch.mean(x, dim=[2, 3], keepdim=True), torch.var(x, dim=[2, 3], keepdim=True)
    out_in = (x - in_mean) / torch.sqrt(in_var + eps)
    ln_mean, ln_var = torch.mean(x, dim=[1, 2, 3], keepdim=True), torch.var(x, dim=[1, 2, 3], keepdim=True)
    out_ln = (x - ln_mean) / torch.sqrt(ln_var + eps)
    out = rho.expand(x.shape[0], -1, -1, -1) * out_in + (1 - rho.expand(x.shape[0], -1, -1, -1)) * out_ln
    if per_sample:
        return out * gamma.unsqueeze(2).unsqueeze(3) + beta.unsqueeze(2).unsqueeze(3)
    return out * gamma.expand(x.shape[0], -1, -1, -1) + beta.expand(x.shape[0], -1, -1, -1)


def orig_munit_ln(x, gamma, beta, eps=1e-5):
    shape = [-1] + [1] * (x.dim() - 1)
    if x.size(0) == 1:
        mean, std = x.view(-1).mean().view(*shape), x.view(-1).std().view(*shape)
    else:
        mean = x.view(x.size(0), -1).mean(1).view(*shape)
        std = x.view(x.size(0), -1).std(1).view(*shape)
    x = (x - mean) / (std + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return x * gamma.view(*shape) + beta.view(*shape)


def orig_adain(x, weight, bias, running_mean, running_var, eps=1e-5, momentum=0.1):
    b, c = x.size(0), x.size(1)
    out = TF.batch_norm(
        x.contiguous().view(1, b * c, *x.size()[2:]),
        running_mean.repeat(b),
        running_var.repeat(b),
        weight,
        bias,
        True,
        momentum,
        eps,
    )
    return out.view(b, c, *x.size()[2:])


SHAPES = [(1, 4, 5, 7), (2, 3, 6, 6), (3, 2, 1, 2), (1, 8, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("rho_val", [0.0, 1.0, 0.3])
def test_iln_and_adalin_match_original(shape, rho_val):
    torch.manual_seed(0)
    n, c = shape[:2]
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    iln = i2i_fast.ILN(c).double()
    with torch.no_grad():
        iln.rho.fill_(rho_val)
        iln.gamma.uniform_(0.5, 1.5)
        iln.beta.normal_()
    torch.testing.assert_close(iln(x), orig_lin(x, iln.rho, iln.gamma, iln.beta))
    ada = i2i_fast.AdaLIN(c).double()
    assert torch.all(i2i_fast.AdaLIN(c).rho == torch.tensor(0.9))
    with torch.no_grad():
        ada.rho.fill_(rho_val)
    g, b = torch.randn(n, c, dtype=torch.float64), torch.randn(n, c, dtype=torch.float64)
    torch.testing.assert_close(ada(x, g, b), orig_lin(x, ada.rho, g, b, per_sample=True))


def test_lin_epilogues():
    x, r = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    m = i2i_fast.AdaLIN(3, activation="relu")
    g, b = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(m(x, g, b, residual=r), torch.relu(orig_lin(x, m.rho, g, b, per_sample=True)) + r)
    m = i2i_fast.ILN(3, activation="leaky_relu", negative_slope=0.1)
    torch.testing.assert_close(m(x), TF.leaky_relu(orig_lin(x, m.rho, m.gamma, m.beta), 0.1))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_matches_munit(shape):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64) + 2
    m = i2i_fast.LayerNorm(shape[1]).double()
    assert torch.all((m.gamma >= 0) & (m.gamma < 1)) and torch.all(m.beta == 0)
    torch.testing.assert_close(m(x), orig_munit_ln(x, m.gamma, m.beta))
    plain = i2i_fast.LayerNorm(shape[1], affine=False)
    assert list(plain.state_dict()) == []
    ones = torch.ones(shape[1], dtype=torch.float64)
    torch.testing.assert_close(plain(x), orig_munit_ln(x, ones, 0 * ones))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:] + [(3, 5, 7, 4)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_adain_matches_munit(backend, shape, channels_last):
    """AdaIN runs the fused instance-norm kernels with a per-(n, c) affine."""
    torch.manual_seed(2)
    n, c = shape[:2]
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    m = i2i_fast.AdaIN(c, activation="relu").double()
    w = (torch.rand(n * c, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(n * c, dtype=torch.float64, requires_grad=True)
    m.weight, m.bias = w, b
    with i2i_fast.use_backend(backend):
        y = m(x)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    expected = torch.relu(orig_adain(x2, w2, b2, m.running_mean.clone(), m.running_var.clone()))
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    for a, e in ((x, x2), (w, w2), (b, b2)):
        torch.testing.assert_close(a.grad, e.grad)
    assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)  # never updated


@pytest.mark.parametrize("backend", cpu_backends())
def test_adain_gradcheck(backend):
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        with i2i_fast.use_backend(backend):
            return F.adain(x, w, b, activation="tanh")

    torch.autograd.gradcheck(f, (x, w, b))
    torch.autograd.gradgradcheck(f, (x, w, b))


def test_opcheck_per_plane_affine():
    if not i2i_fast.backends()["cpu"][0]:
        pytest.skip("extension not built")
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    w, b = torch.rand(6, requires_grad=True), torch.randn(6, requires_grad=True)
    torch.library.opcheck(torch.ops.i2i_fast.instance_norm_fwd.default, (x, w, b, None, None, None, 1e-5, 1, 0.2))
    with pytest.raises(RuntimeError, match="same number of elements"):
        torch.ops.i2i_fast.instance_norm_fwd(x.detach(), torch.ones(3), torch.ones(6), None, None, None, 1e-5, 0, 0.2)


def test_state_dict_layouts():
    assert {k: tuple(v.shape) for k, v in i2i_fast.ILN(5).state_dict().items()} == {
        "rho": (1, 5, 1, 1),
        "gamma": (1, 5, 1, 1),
        "beta": (1, 5, 1, 1),
    }
    assert {k: tuple(v.shape) for k, v in i2i_fast.AdaLIN(5).state_dict().items()} == {"rho": (1, 5, 1, 1)}
    assert {k: tuple(v.shape) for k, v in i2i_fast.LayerNorm(5).state_dict().items()} == {"gamma": (5,), "beta": (5,)}
    assert {k: tuple(v.shape) for k, v in i2i_fast.AdaIN(5).state_dict().items()} == {
        "running_mean": (5,),
        "running_var": (5,),
    }
    # an original-layout checkpoint loads strictly
    i2i_fast.AdaLIN(5).load_state_dict({"rho": torch.full((1, 5, 1, 1), 0.3)})


def test_gradients_of_every_input():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    rho = torch.rand(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda *a: F.adalin(*a[:4], residual=a[4], activation="tanh"), (x, rho, g, b, r))
    torch.autograd.gradcheck(lambda x, g, b: F.layer_norm(x, g[0], b[0]), (x, g, b))
    torch.autograd.gradcheck(lambda x, g, b: F.adain(x, g.reshape(-1), b.reshape(-1)), (x, g, b))


def test_rho_clipper_keeps_working():
    m = i2i_fast.AdaLIN(4)
    with torch.no_grad():  # U-GAT-IT's RhoClipper clamps the parameter in place
        m.rho.data = m.rho.data.clamp(0, 1)
    assert isinstance(m.rho, torch.nn.Parameter)


def test_bad_input():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="gamma must have 6 elements"):
        F.adalin(x, torch.zeros(3), torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        F.adalin(x, torch.zeros(3), torch.ones(6), torch.zeros(6))
    with pytest.raises(ValueError, match="rho must have 3 elements"):
        F.iln(x, torch.zeros(4), torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="4D input"):
        F.layer_norm(torch.randn(3, 4))
    with pytest.raises(ValueError, match="floating point"):
        F.layer_norm(torch.ones(2, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="gamma and beta"):
        F.layer_norm(x, torch.ones(3))
    with pytest.raises(ValueError, match="eps"):
        F.iln(x, torch.zeros(3), torch.ones(3), torch.zeros(3), eps=-1)
    with pytest.raises(ValueError, match="weight must have 6 elements"):
        F.adain(x, torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.adain(torch.randn(2, 3, 1, 1), torch.ones(6), torch.zeros(6))
    with pytest.raises(RuntimeError, match="assign weight and bias"):
        i2i_fast.AdaIN(3)(x)
    with pytest.raises(ValueError, match="activation"):
        i2i_fast.LayerNorm(3, activation="gelu")


def test_compile_fullgraph():
    torch._dynamo.reset()
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), i2i_fast.LayerNorm(4, activation="relu"), i2i_fast.ILN(4))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(1, 256, 64, 64), (4, 64, 33, 31), (1, 16, 256, 256)], ids=str)
def test_adain_cuda(backend, shape):
    if not i2i_fast.backends()[backend][0]:
        pytest.skip(i2i_fast.backends()[backend][1])
    n, c = shape[:2]
    x = torch.randn(shape, device="cuda", requires_grad=True)
    w = (torch.rand(n * c, device="cuda") + 0.5).requires_grad_()
    b = torch.randn(n * c, device="cuda", requires_grad=True)
    with i2i_fast.use_backend(backend):
        y = F.adain(x, w, b, activation="relu")
    x2, w2, b2 = (t.detach().double().requires_grad_() for t in (x, w, b))
    e = torch.relu(
        orig_adain(
            x2,
            w2,
            b2,
            torch.zeros(c, device="cuda", dtype=torch.float64),
            torch.ones(c, device="cuda", dtype=torch.float64),
        )
    )
    g = torch.randn_like(y)
    y.backward(g)
    e.backward(g.double())
    torch.testing.assert_close(y.double(), e, atol=1e-4, rtol=1e-4)
    for a, r in ((x, x2), (w, w2), (b, b2)):
        torch.testing.assert_close(a.grad.double(), r.grad, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend", cpu_backends())
def test_adain_bitwise_deterministic(backend):
    torch.manual_seed(4)
    x0, w0, b0 = torch.randn(3, 6, 9, 7), torch.rand(18) + 0.5, torch.randn(18)
    g = torch.randn(3, 6, 9, 7)
    runs = []
    for _ in range(2):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        with i2i_fast.use_backend(backend):
            y = F.adain(x, w, b, activation="leaky_relu")
        y.backward(g)
        runs.append((y, x.grad, w.grad, b.grad))
    assert all(torch.equal(a, c) for a, c in zip(*runs))
