"""UNIT as in eriklindernoren/PyTorch-GAN (implementations/unit/models.py), written from
shared/REFERENCE_MODELS.md with plain torch.nn layers.

The two encoders share their last ResidualBlock and the two generators their first, by passing
the same module as ``shared_block``; it appears in each owner's state_dict as
``shared_block.conv_block.N``. Other keys: ``model_blocks.N``; discriminator ``model.N``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualBlock", "Encoder", "Generator", "Discriminator", "compute_kl", "weights_init_normal"]


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
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), nn.InstanceNorm2d(features),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), nn.InstanceNorm2d(features))

    def forward(self, x):
        return x + self.conv_block(x)


class Encoder(nn.Module):
    """ReflectionPad(3), conv7, IN, LReLU(0.2) | n_downsample x [conv4 s2 p1, IN, ReLU] |
    3 ResidualBlocks | shared ResidualBlock -> mu; forward returns (mu, z = mu + N(0, 1))."""

    def __init__(self, in_channels=3, dim=64, n_downsample=2, shared_block=None):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, dim, 7), nn.InstanceNorm2d(dim),
                  nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n_downsample):
            layers += [nn.Conv2d(dim, dim * 2, 4, stride=2, padding=1), nn.InstanceNorm2d(dim * 2),
                       nn.ReLU(inplace=True)]
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
        dim = dim * 2 ** n_upsample
        layers = [ResidualBlock(dim) for _ in range(3)]
        for _ in range(n_upsample):
            layers += [nn.ConvTranspose2d(dim, dim // 2, 4, stride=2, padding=1), nn.InstanceNorm2d(dim // 2),
                       nn.LeakyReLU(0.2, inplace=True)]
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
        self.output_shape = None if height is None else (1, height // 2 ** 4, width // 2 ** 4)

        def block(cin, cout, normalize=True):
            layers = [nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
            if normalize:
                layers.append(nn.InstanceNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(*block(channels, 64, normalize=False), *block(64, 128), *block(128, 256),
                                   *block(256, 512), nn.Conv2d(512, 1, 3, padding=1))

    def forward(self, img):
        return self.model(img)


def compute_kl(mu):
    """KL term of unit.py: mean(mu^2)."""
    return torch.mean(torch.pow(mu, 2))
