"""U-GAT-IT reference networks (znxlwm/UGATIT-pytorch, networks.py).

Written from the original's layers with plain torch.nn layers plus the original's small
classes (ResnetBlock, ResnetAdaILNBlock, adaILN, ILN, RhoClipper). Attribute names follow the
original, so checkpoints load unchanged: ``DownBlock.N``, ``gap_fc``, ``gmp_fc``, ``conv1x1``,
``FC.N``, ``gamma``, ``beta``, ``UpBlock1_i.{conv1,norm1,conv2,norm2}``, ``UpBlock2.N``;
discriminator ``model.N.weight_orig/weight_u/weight_v`` (torch.nn.utils.spectral_norm).

``training_step`` reproduces one iteration of UGATIT.train() (D update, G update, rho clip).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parameter import Parameter

__all__ = [
    "ResnetGenerator",
    "ResnetBlock",
    "ResnetAdaILNBlock",
    "adaILN",
    "ILN",
    "Discriminator",
    "RhoClipper",
    "training_step",
]


def _iln_mix(x, rho, eps):
    """rho * IN(x) + (1 - rho) * LN(x), both with UNBIASED variance inside the sqrt."""
    in_mean = torch.mean(x, dim=[2, 3], keepdim=True)
    in_var = torch.var(x, dim=[2, 3], keepdim=True)
    out_in = (x - in_mean) / torch.sqrt(in_var + eps)
    ln_mean = torch.mean(x, dim=[1, 2, 3], keepdim=True)
    ln_var = torch.var(x, dim=[1, 2, 3], keepdim=True)
    out_ln = (x - ln_mean) / torch.sqrt(ln_var + eps)
    r = rho.expand(x.shape[0], -1, -1, -1)
    return r * out_in + (1 - r) * out_ln


class adaILN(nn.Module):
    """Adaptive instance-layer norm: mix(x) * gamma[:, :, None, None] + beta[:, :, None, None];
    rho (1, C, 1, 1) initialised to 0.9."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.rho = Parameter(torch.empty(1, num_features, 1, 1).fill_(0.9))

    def forward(self, input, gamma, beta):
        out = _iln_mix(input, self.rho, self.eps)
        return out * gamma.unsqueeze(2).unsqueeze(3) + beta.unsqueeze(2).unsqueeze(3)


class ILN(nn.Module):
    """Instance-layer norm with learned (1, C, 1, 1) rho (init 0), gamma (init 1), beta (init 0)."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.rho = Parameter(torch.empty(1, num_features, 1, 1).fill_(0.0))
        self.gamma = Parameter(torch.empty(1, num_features, 1, 1).fill_(1.0))
        self.beta = Parameter(torch.empty(1, num_features, 1, 1).fill_(0.0))

    def forward(self, input):
        out = _iln_mix(input, self.rho, self.eps)
        b = input.shape[0]
        return out * self.gamma.expand(b, -1, -1, -1) + self.beta.expand(b, -1, -1, -1)


class ResnetBlock(nn.Module):
    """Encoder residual block: [pad1, conv3x3, IN, ReLU, pad1, conv3x3, IN] + x (conv_block.N)."""

    def __init__(self, dim, use_bias):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetAdaILNBlock(nn.Module):
    """Decoder residual block: pad1, conv1, norm1(adaILN), relu1, pad2, conv2, norm2; + x."""

    def __init__(self, dim, use_bias):
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias)
        self.norm1 = adaILN(dim)
        self.relu1 = nn.ReLU(True)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=0, bias=use_bias)
        self.norm2 = adaILN(dim)

    def forward(self, x, gamma, beta):
        out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
        return out + x


def _cam(x, gap_fc, gmp_fc, gap_weight, gmp_weight):
    """Class activation map: logits of the avg- and max-pooled features, and the feature map
    scaled per channel by each fc's weight (concatenated: 2C channels)."""
    b = x.shape[0]
    gap_logit = gap_fc(F.adaptive_avg_pool2d(x, 1).view(b, -1))
    gmp_logit = gmp_fc(F.adaptive_max_pool2d(x, 1).view(b, -1))
    x_gap = x * gap_weight.unsqueeze(2).unsqueeze(3)
    x_gmp = x * gmp_weight.unsqueeze(2).unsqueeze(3)
    return torch.cat([gap_logit, gmp_logit], 1), torch.cat([x_gap, x_gmp], 1)


class ResnetGenerator(nn.Module):
    """Encoder (DownBlock) -> CAM -> gamma/beta MLP -> n_blocks ResnetAdaILNBlock -> UpBlock2.
    forward returns (out, cam_logit (B, 2), heatmap (B, 1, h, w))."""

    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=6, img_size=256, light=False):
        assert n_blocks >= 0
        super().__init__()
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        self.n_blocks = n_blocks
        self.img_size = img_size
        self.light = light

        down = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, stride=1, padding=0, bias=False),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        n_downsampling = 2
        for i in range(n_downsampling):
            c = ngf * 2**i
            down += [
                nn.ReflectionPad2d(1),
                nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=0, bias=False),
                nn.InstanceNorm2d(c * 2),
                nn.ReLU(True),
            ]
        mult = 2**n_downsampling
        c = ngf * mult
        for _ in range(n_blocks):
            down.append(ResnetBlock(c, use_bias=False))

        # class activation map
        self.gap_fc = nn.Linear(c, 1, bias=False)
        self.gmp_fc = nn.Linear(c, 1, bias=False)
        self.conv1x1 = nn.Conv2d(c * 2, c, kernel_size=1, stride=1, bias=True)
        self.relu = nn.ReLU(True)

        # gamma, beta MLP
        fc_in = c if light else (img_size // mult) * (img_size // mult) * c
        fc = [nn.Linear(fc_in, c, bias=False), nn.ReLU(True), nn.Linear(c, c, bias=False), nn.ReLU(True)]
        self.gamma = nn.Linear(c, c, bias=False)
        self.beta = nn.Linear(c, c, bias=False)

        for i in range(n_blocks):
            setattr(self, "UpBlock1_" + str(i + 1), ResnetAdaILNBlock(c, use_bias=False))

        up = []
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            up += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.ReflectionPad2d(1),
                nn.Conv2d(c, c // 2, kernel_size=3, stride=1, padding=0, bias=False),
                ILN(c // 2),
                nn.ReLU(True),
            ]
        up += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, stride=1, padding=0, bias=False),
            nn.Tanh(),
        ]

        self.DownBlock = nn.Sequential(*down)
        self.FC = nn.Sequential(*fc)
        self.UpBlock2 = nn.Sequential(*up)

    def forward(self, input):
        x = self.DownBlock(input)
        cam_logit, x = _cam(x, self.gap_fc, self.gmp_fc, self.gap_fc.weight, self.gmp_fc.weight)
        x = self.relu(self.conv1x1(x))
        heatmap = torch.sum(x, dim=1, keepdim=True)
        if self.light:
            x_ = F.adaptive_avg_pool2d(x, 1)
            x_ = self.FC(x_.view(x_.shape[0], -1))
        else:
            x_ = self.FC(x.view(x.shape[0], -1))
        gamma, beta = self.gamma(x_), self.beta(x_)
        for i in range(self.n_blocks):
            x = getattr(self, "UpBlock1_" + str(i + 1))(x, gamma, beta)
        return self.UpBlock2(x), cam_logit, heatmap


class Discriminator(nn.Module):
    """Spectral-norm PatchGAN with CAM. n_layers=7 (global): 256 -> (1, 1, 6, 6);
    n_layers=5 (local): 256 -> (1, 1, 30, 30). forward returns (out, cam_logit, heatmap)."""

    def __init__(self, input_nc, ndf=64, n_layers=5):
        super().__init__()
        sn = nn.utils.spectral_norm
        layers = [
            nn.ReflectionPad2d(1),
            sn(nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=0, bias=True)),
            nn.LeakyReLU(0.2, True),
        ]
        for i in range(1, n_layers - 2):
            c = ndf * 2 ** (i - 1)
            layers += [
                nn.ReflectionPad2d(1),
                sn(nn.Conv2d(c, c * 2, kernel_size=4, stride=2, padding=0, bias=True)),
                nn.LeakyReLU(0.2, True),
            ]
        c = ndf * 2 ** (n_layers - 2 - 1)
        layers += [
            nn.ReflectionPad2d(1),
            sn(nn.Conv2d(c, c * 2, kernel_size=4, stride=1, padding=0, bias=True)),
            nn.LeakyReLU(0.2, True),
        ]

        c = ndf * 2 ** (n_layers - 2)
        self.gap_fc = sn(nn.Linear(c, 1, bias=False))
        self.gmp_fc = sn(nn.Linear(c, 1, bias=False))
        self.conv1x1 = nn.Conv2d(c * 2, c, kernel_size=1, stride=1, bias=True)
        self.leaky_relu = nn.LeakyReLU(0.2, True)
        self.pad = nn.ReflectionPad2d(1)
        self.conv = sn(nn.Conv2d(c, 1, kernel_size=4, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)

    def forward(self, input):
        x = self.model(input)
        # The original scales the map by ``list(fc.parameters())[0]``, which under spectral_norm
        # is the raw ``weight_orig`` (the logits themselves use the normalised weight).
        cam_logit, x = _cam(x, self.gap_fc, self.gmp_fc, self.gap_fc.weight_orig, self.gmp_fc.weight_orig)
        x = self.leaky_relu(self.conv1x1(x))
        heatmap = torch.sum(x, dim=1, keepdim=True)
        out = self.conv(self.pad(x))
        return out, cam_logit, heatmap


class RhoClipper:
    """``module.apply(RhoClipper(0, 1))`` clamps every ``rho`` into [min, max]."""

    def __init__(self, min, max):
        self.clip_min = min
        self.clip_max = max
        assert min < max

    def __call__(self, module):
        if hasattr(module, "rho"):
            module.rho.data = module.rho.data.clamp(self.clip_min, self.clip_max)


def _discriminate(genA2B, genB2A, disGA, disGB, disLA, disLB, real_A, real_B, D_optim):
    """The D update's forward passes (D gradients zeroed first): per domain the real logit,
    fake logit, real CAM logit, fake CAM logit of the global, then the local D."""
    D_optim.zero_grad()
    fake_A2B, _, _ = genA2B(real_A)
    fake_B2A, _, _ = genB2A(real_B)
    out = {}
    for dom, real, fake, dG, dL in (("A", real_A, fake_B2A, disGA, disLA), ("B", real_B, fake_A2B, disGB, disLB)):
        out[dom] = []
        for d in (dG, dL):
            r_logit, r_cam, _ = d(real)
            f_logit, f_cam, _ = d(fake)
            out[dom] += [r_logit, f_logit, r_cam, f_cam]
    return out


def _generate(genA2B, genB2A, disGA, disGB, disLA, disLB, real_A, real_B, G_optim):
    """The G update's forward passes (G gradients zeroed first); per domain (name, real, fake,
    reconstruction, identity, fake CAM logit, identity CAM logit, global D, local D)."""
    G_optim.zero_grad()
    fake_A2B, fake_A2B_cam, _ = genA2B(real_A)
    fake_B2A, fake_B2A_cam, _ = genB2A(real_B)
    fake_A2B2A, _, _ = genB2A(fake_A2B)
    fake_B2A2B, _, _ = genA2B(fake_B2A)
    fake_A2A, fake_A2A_cam, _ = genB2A(real_A)
    fake_B2B, fake_B2B_cam, _ = genA2B(real_B)
    return (
        ("A", real_A, fake_B2A, fake_A2B2A, fake_A2A, fake_B2A_cam, fake_A2A_cam, disGA, disLA),
        ("B", real_B, fake_A2B, fake_B2A2B, fake_B2B, fake_A2B_cam, fake_B2B_cam, disGB, disLB),
    )


def training_step(
    genA2B,
    genB2A,
    disGA,
    disGB,
    disLA,
    disLB,
    real_A,
    real_B,
    G_optim,
    D_optim,
    adv_weight=1.0,
    cycle_weight=10.0,
    identity_weight=10.0,
    cam_weight=1000.0,
    rho_clipper=None,
    fused_losses: bool = False,
):
    """One iteration of UGATIT.train(): D update (LSGAN on logits and CAM logits of the global
    and local D of both domains: 8 MSE pairs), then G update (adversarial x adv_weight, CAM BCE
    x cam_weight, cycle L1 x cycle_weight, identity L1 x identity_weight), then RhoClipper(0, 1).
    As in the original, the D step's fakes are not detached (their G gradients are discarded by
    G_optim.zero_grad()). ``fused_losses``: the same losses through i2i_fast.functional (per
    domain: one gan_loss for the 8 D terms; for G one gan_loss for the 4 adversarial terms, one
    for the 2 CAM terms, one l1_loss for cycle + identity). Returns a dict of detached loss
    tensors."""
    if rho_clipper is None:
        rho_clipper = RhoClipper(0, 1)
    d_loss, g_loss = _losses(fused_losses, adv_weight, cycle_weight, identity_weight, cam_weight)

    # discriminators
    D_loss = {
        dom: d_loss(preds)
        for dom, preds in _discriminate(genA2B, genB2A, disGA, disGB, disLA, disLB, real_A, real_B, D_optim).items()
    }
    Discriminator_loss = D_loss["A"] + D_loss["B"]
    Discriminator_loss.backward()
    D_optim.step()

    # generators
    G_loss = {}
    for dom, real, fake, rec, idt, fake_cam, idt_cam, dG, dL in _generate(
        genA2B, genB2A, disGA, disGB, disLA, disLB, real_A, real_B, G_optim
    ):
        adv = [p for d in (dG, dL) for p in d(fake)[:2]]  # logit, CAM logit of each D
        G_loss[dom] = g_loss(adv, fake_cam, idt_cam, rec, idt, real)
    Generator_loss = G_loss["A"] + G_loss["B"]
    Generator_loss.backward()
    G_optim.step()

    genA2B.apply(rho_clipper)
    genB2A.apply(rho_clipper)
    return {
        "D": Discriminator_loss.detach(),
        "G": Generator_loss.detach(),
        "D_A": D_loss["A"].detach(),
        "D_B": D_loss["B"].detach(),
        "G_A": G_loss["A"].detach(),
        "G_B": G_loss["B"].detach(),
    }


def _losses(fused, adv_weight, cycle_weight, identity_weight, cam_weight):
    """(d_loss(preds), g_loss(adv, fake_cam, idt_cam, rec, idt, real)) of one domain: the
    original's MSE/BCE/L1 calls, or the same sums through i2i_fast.functional (fused)."""
    if fused:
        from .. import functional as F

        def d_loss(preds):
            return F.gan_loss(preds, [True, False] * 4, "lsgan", weights=adv_weight)

        def g_loss(adv, fake_cam, idt_cam, rec, idt, real):
            return (
                F.gan_loss(adv, True, "lsgan", weights=adv_weight, for_discriminator=False)
                + F.gan_loss([fake_cam, idt_cam], [True, False], "vanilla", weights=cam_weight)
                + F.l1_loss([(rec, real), (idt, real)], [cycle_weight, identity_weight])
            )

        return d_loss, g_loss
    mse, l1 = nn.functional.mse_loss, nn.functional.l1_loss
    bce = nn.functional.binary_cross_entropy_with_logits

    def lsgan(pred, real):
        return mse(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def d_loss(p):  # (real, fake) logit pairs then CAM pairs, global then local D
        return adv_weight * sum(lsgan(p[i], True) + lsgan(p[i + 1], False) for i in range(0, 8, 2))

    def g_loss(adv, fake_cam, idt_cam, rec, idt, real):
        cam = bce(fake_cam, torch.ones_like(fake_cam)) + bce(idt_cam, torch.zeros_like(idt_cam))
        return (
            adv_weight * sum(lsgan(a, True) for a in adv)
            + cycle_weight * l1(rec, real)
            + identity_weight * l1(idt, real)
            + cam_weight * cam
        )

    return d_loss, g_loss
