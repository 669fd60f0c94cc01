"""UNIT as in eriklindernoren/PyTorch-GAN (implementations/unit/models.py and the training loop
of implementations/unit/unit.py), written from the original's layers with plain torch.nn
layers.

The two encoders share their last ResidualBlock and the two generators their first, by passing
the same module as ``shared_block``; it appears in each owner's state_dict as
``shared_block.conv_block.N``. Other keys: ``model_blocks.N``; discriminator ``model.N``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ResidualBlock",
    "Encoder",
    "Generator",
    "Discriminator",
    "compute_kl",
    "weights_init_normal",
    "build",
    "LAMBDAS",
    "training_step",
]


def weights_init_normal(m):
    """Conv* weights N(0, 0.02); BatchNorm2d weight N(1, 0.02), bias 0 (applied by unit.py)."""
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm2d") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0.0)


class ResidualBlock(nn.Module):
    """x + [ReflectionPad(1), conv3x3 (bias), IN, ReLU, ReflectionPad(1), conv3x3, IN](x)."""

    def __init__(self, features):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3),
            nn.InstanceNorm2d(features),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3),
            nn.InstanceNorm2d(features),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class Encoder(nn.Module):
    """ReflectionPad(3), conv7, IN, LReLU(0.2) | n_downsample x [conv4 s2 p1, IN, ReLU] |
    3 ResidualBlocks | shared ResidualBlock -> mu; forward returns (mu, z = mu + N(0, 1))."""

    def __init__(self, in_channels=3, dim=64, n_downsample=2, shared_block=None):
        super().__init__()
        layers = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, dim, 7),
            nn.InstanceNorm2d(dim),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(n_downsample):
            layers += [
                nn.Conv2d(dim, dim * 2, 4, stride=2, padding=1),
                nn.InstanceNorm2d(dim * 2),
                nn.ReLU(inplace=True),
            ]
            dim *= 2
        for _ in range(3):
            layers.append(ResidualBlock(dim))
        self.model_blocks = nn.Sequential(*layers)
        self.shared_block = shared_block

    def reparameterization(self, mu):
        # The original draws the noise with numpy (np.random.normal); same distribution here.
        return mu + torch.randn_like(mu)

    def forward(self, x):
        mu = self.shared_block(self.model_blocks(x))
        return mu, self.reparameterization(mu)


class Generator(nn.Module):
    """shared ResidualBlock | 3 ResidualBlocks | n_upsample x [convT4 s2 p1, IN, LReLU(0.2)] |
    ReflectionPad(3), conv7, Tanh."""

    def __init__(self, out_channels=3, dim=64, n_upsample=2, shared_block=None):
        super().__init__()
        self.shared_block = shared_block
        dim = dim * 2**n_upsample
        layers = [ResidualBlock(dim) for _ in range(3)]
        for _ in range(n_upsample):
            layers += [
                nn.ConvTranspose2d(dim, dim // 2, 4, stride=2, padding=1),
                nn.InstanceNorm2d(dim // 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            dim //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(dim, out_channels, 7), nn.Tanh()]
        self.model_blocks = nn.Sequential(*layers)

    def forward(self, x):
        return self.model_blocks(self.shared_block(x))


class Discriminator(nn.Module):
    """PatchGAN: [conv4 s2 p1, LReLU] then 3x [conv4 s2 p1, IN, LReLU] (64..512), conv3x3 p1 -> 1.
    ``input_shape`` is (C, H, W) as in the current PyTorch-GAN (``output_shape`` =
    (1, H/16, W/16)); an int is taken as the channel count (the older ``in_channels`` form)."""

    def __init__(self, input_shape=(3, 256, 256)):
        super().__init__()
        if isinstance(input_shape, int):
            channels, height, width = input_shape, None, None
        else:
            channels, height, width = input_shape
        self.output_shape = None if height is None else (1, height // 2**4, width // 2**4)

        def block(cin, cout, normalize=True):
            layers = [nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
            if normalize:
                layers.append(nn.InstanceNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *block(channels, 64, normalize=False),
            *block(64, 128),
            *block(128, 256),
            *block(256, 512),
            nn.Conv2d(512, 1, 3, padding=1),
        )

    def forward(self, img):
        return self.model(img)


def compute_kl(mu):
    """KL term of unit.py: mean(mu^2)."""
    return torch.mean(torch.pow(mu, 2))


# ----------------------------------------------------------------------- training step

LAMBDAS = (10.0, 0.1, 100.0, 0.1, 100.0)
"""unit.py's loss weights lambda_0..lambda_4: GAN, KL of mu1/mu2, identity (reconstruction) L1,
KL of the cycle mus, cycle L1."""


def build(dim=64, n_downsample=2, img_size=256, channels=3):
    """(E1, E2, G1, G2, D1, D2) as unit.py builds them: the encoders share one ResidualBlock
    (shared_E), the generators another (shared_G); every network weights_init_normal'ed."""
    shared_dim = dim * 2**n_downsample
    shared_E, shared_G = ResidualBlock(shared_dim), ResidualBlock(shared_dim)
    nets = [
        Encoder(channels, dim, n_downsample, shared_E),
        Encoder(channels, dim, n_downsample, shared_E),
        Generator(channels, dim, n_downsample, shared_G),
        Generator(channels, dim, n_downsample, shared_G),
        Discriminator((channels, img_size, img_size)),
        Discriminator((channels, img_size, img_size)),
    ]
    for n in nets:
        n.apply(weights_init_normal)
    return tuple(nets)


def _patch_shape(D, X, pred=None):
    """(B, *D.output_shape): the shape of unit.py's valid/fake targets."""
    if getattr(D, "output_shape", None) is not None:
        return (X.size(0), *D.output_shape)
    return tuple(pred.shape)  # Discriminator(in_channels) form: no output_shape, use the output's


def training_step(
    E1, E2, G1, G2, D1, D2, X1, X2, optimizer_G, optimizer_D1, optimizer_D2, lambdas=LAMBDAS, fused_losses: bool = False
):
    """One iteration of PyTorch-GAN's unit.py training loop (X1 from domain A, X2 from B).

    Encoders and generators first (one optimizer over E1, E2, G1, G2; the discriminators are
    not frozen, as in the original, so their .grad is filled and then zeroed by their own
    step): mu, Z = E(X) (Z = mu + N(0, 1)); recon_X1 = G1(Z1), fake_X1 = G1(Z2) (and the
    mirrored ones); mu1_, Z1_ = E1(fake_X1), cycle_X1 = G1(Z2_) (and mirrored);
    loss_G = lambda_0 * GAN(D(fake), valid) (x2) + lambda_1 * KL(mu1), KL(mu2)
    + lambda_2 * L1(recon, X) (x2) + lambda_3 * KL(mu1_), KL(mu2_) + lambda_4 * L1(cycle, X) (x2),
    KL(mu) = mean(mu^2). Then D1 and D2, each with its own optimizer:
    GAN(D(X), valid) + GAN(D(fake.detach()), fake).

    The GAN criterion is ``torch.nn.MSELoss`` (LSGAN) as in the repository's code
    (``criterion_GAN = torch.nn.MSELoss()``); the paper text and some copies show BCELoss.
    Targets valid/fake are ones/zeros of shape (B, *D.output_shape), built per step as the
    original does.

    ``fused_losses``: the same losses as an i2i_fast user writes them: the ten G/E terms in two
    fused calls (i2i_fast.functional.gan_loss for the two GAN terms and the four KL terms,
    which are squared-error terms against the label 0: mean((mu - 0)^2); l1_loss for the four
    L1 terms) and both discriminators' four terms in one gan_loss call (one backward, then
    both optimizers step: D1 and D2 share no parameter, so this is the original's update).
    Returns detached losses: G, D (= D1 + D2) always; the individual terms when not fused.
    """
    l0, l1, l2, l3, l4 = lambdas
    optimizer_G.zero_grad()
    mu1, Z1 = E1(X1)
    mu2, Z2 = E2(X2)
    recon_X1, recon_X2 = G1(Z1), G2(Z2)
    fake_X1, fake_X2 = G1(Z2), G2(Z1)
    mu1_, Z1_ = E1(fake_X1)
    mu2_, Z2_ = E2(fake_X2)
    cycle_X1, cycle_X2 = G1(Z2_), G2(Z1_)
    if fused_losses:
        from .. import functional as F

        loss_G = F.gan_loss(
            [D1(fake_X1), D2(fake_X2), mu1, mu2, mu1_, mu2_],
            [True, True, False, False, False, False],
            "lsgan",
            weights=[l0, l0, l1, l1, l3, l3],
        ) + F.l1_loss([(recon_X1, X1), (recon_X2, X2), (cycle_X1, X1), (cycle_X2, X2)], [l2, l2, l4, l4])
        loss_G.backward()
        optimizer_G.step()
        optimizer_D1.zero_grad()
        optimizer_D2.zero_grad()
        loss_D = F.gan_loss(
            [D1(X1), D1(fake_X1.detach()), D2(X2), D2(fake_X2.detach())], [True, False, True, False], "lsgan"
        )
        loss_D.backward()
        optimizer_D1.step()
        optimizer_D2.step()
        return {"G": loss_G.detach(), "D": loss_D.detach()}

    criterion_GAN = nn.MSELoss()
    criterion_pixel = nn.L1Loss()
    pred1, pred2 = D1(fake_X1), D2(fake_X2)
    valid = torch.ones(_patch_shape(D1, X1, pred1), device=X1.device, dtype=X1.dtype)
    fake = torch.zeros(_patch_shape(D1, X1, pred1), device=X1.device, dtype=X1.dtype)
    loss_GAN_1 = l0 * criterion_GAN(pred1, valid)
    loss_GAN_2 = l0 * criterion_GAN(pred2, valid)
    loss_KL_1 = l1 * compute_kl(mu1)
    loss_KL_2 = l1 * compute_kl(mu2)
    loss_ID_1 = l2 * criterion_pixel(recon_X1, X1)
    loss_ID_2 = l2 * criterion_pixel(recon_X2, X2)
    loss_KL_1_ = l3 * compute_kl(mu1_)
    loss_KL_2_ = l3 * compute_kl(mu2_)
    loss_cyc_1 = l4 * criterion_pixel(cycle_X1, X1)
    loss_cyc_2 = l4 * criterion_pixel(cycle_X2, X2)
    loss_G = (
        loss_KL_1
        + loss_KL_2
        + loss_ID_1
        + loss_ID_2
        + loss_GAN_1
        + loss_GAN_2
        + loss_KL_1_
        + loss_KL_2_
        + loss_cyc_1
        + loss_cyc_2
    )
    loss_G.backward()
    optimizer_G.step()

    optimizer_D1.zero_grad()
    loss_D1 = criterion_GAN(D1(X1), valid) + criterion_GAN(D1(fake_X1.detach()), fake)
    loss_D1.backward()
    optimizer_D1.step()

    optimizer_D2.zero_grad()
    loss_D2 = criterion_GAN(D2(X2), valid) + criterion_GAN(D2(fake_X2.detach()), fake)
    loss_D2.backward()
    optimizer_D2.step()
    losses = dict(
        GAN_1=loss_GAN_1,
        GAN_2=loss_GAN_2,
        KL_1=loss_KL_1,
        KL_2=loss_KL_2,
        ID_1=loss_ID_1,
        ID_2=loss_ID_2,
        KL_1_=loss_KL_1_,
        KL_2_=loss_KL_2_,
        cyc_1=loss_cyc_1,
        cyc_2=loss_cyc_2,
        G=loss_G,
        D1=loss_D1,
        D2=loss_D2,
        D=loss_D1 + loss_D2,
    )
    return {k: v.detach() for k, v in losses.items()}
