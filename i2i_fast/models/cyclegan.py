"""CycleGAN / pix2pix reference networks (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py).

Written from the original's layers with plain torch.nn layers. Class
names, constructor arguments, module attribute names and nn.Sequential indices follow the
original so that its checkpoints load with ``load_state_dict`` unchanged (``model.0...``,
``model.10.conv_block.1.weight``, ``model.model.1.model.3.weight``, ...).

Also here: ``GANLoss`` (with CUT's 'nonsaturating' mode), ``cal_gradient_penalty``,
``ImagePool``, ``init_weights``/``define_G``/``define_D`` and ``training_step``, one CycleGAN
optimisation step (G_A and G_B, then D_A and D_B) with the original loss weights.
"""

from __future__ import annotations

import functools
import random
from typing import Optional

import torch
from torch import nn

__all__ = [
    "Identity",
    "get_norm_layer",
    "init_weights",
    "define_G",
    "define_D",
    "ResnetGenerator",
    "ResnetBlock",
    "UnetGenerator",
    "UnetSkipConnectionBlock",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "GANLoss",
    "cal_gradient_penalty",
    "ImagePool",
    "set_requires_grad",
    "training_step",
]


class Identity(nn.Module):
    def forward(self, x):
        return x


def get_norm_layer(norm_type: str = "instance"):
    """'batch': BatchNorm2d(affine, running stats); 'instance': InstanceNorm2d without affine
    or running stats (no state_dict entries); 'none': Identity."""
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "none":

        def norm_layer(num_features):
            return Identity()

        return norm_layer
    raise NotImplementedError(f"normalization layer [{norm_type}] is not found")


def _uses_bias(norm_layer) -> bool:
    """Convs carry a bias exactly when the norm is InstanceNorm2d (BatchNorm has its own shift)."""
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func == nn.InstanceNorm2d
    return norm_layer == nn.InstanceNorm2d


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """The original initialisation: Conv*/Linear weights N(0, gain) (or xavier/kaiming/orthogonal),
    biases 0; BatchNorm2d weight N(1, gain), bias 0."""

    def init_func(m):
        name = m.__class__.__name__
        if hasattr(m, "weight") and (name.find("Conv") != -1 or name.find("Linear") != -1):
            if init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight.data, gain=init_gain)
            else:
                raise NotImplementedError(f"initialization method [{init_type}] is not implemented")
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif name.find("BatchNorm2d") != -1:
            nn.init.normal_(m.weight.data, 1.0, init_gain)
            nn.init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


def define_G(input_nc, output_nc, ngf, netG, norm="batch", use_dropout=False, init_type="normal", init_gain=0.02):
    """netG in resnet_9blocks, resnet_6blocks, unet_128, unet_256 (no DataParallel/gpu_ids)."""
    norm_layer = get_norm_layer(norm_type=norm)
    if netG == "resnet_9blocks":
        net = ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, use_dropout=use_dropout, n_blocks=9)
    elif netG == "resnet_6blocks":
        net = ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, use_dropout=use_dropout, n_blocks=6)
    elif netG == "unet_128":
        net = UnetGenerator(input_nc, output_nc, 7, ngf, norm_layer=norm_layer, use_dropout=use_dropout)
    elif netG == "unet_256":
        net = UnetGenerator(input_nc, output_nc, 8, ngf, norm_layer=norm_layer, use_dropout=use_dropout)
    else:
        raise NotImplementedError(f"Generator model name [{netG}] is not recognized")
    return init_weights(net, init_type, init_gain)


def define_D(input_nc, ndf, netD, n_layers_D=3, norm="batch", init_type="normal", init_gain=0.02):
    """netD in basic (70x70 PatchGAN), n_layers, pixel."""
    norm_layer = get_norm_layer(norm_type=norm)
    if netD == "basic":
        net = NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer)
    elif netD == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf, n_layers_D, norm_layer=norm_layer)
    elif netD == "pixel":
        net = PixelDiscriminator(input_nc, ndf, norm_layer=norm_layer)
    else:
        raise NotImplementedError(f"Discriminator model name [{netD}] is not recognized")
    return init_weights(net, init_type, init_gain)


# --------------------------------------------------------------------------- generators


class ResnetBlock(nn.Module):
    """pad, conv3x3, norm, ReLU, [Dropout(0.5)], pad, conv3x3, norm; out = x + block(x).
    Keys conv_block.N (N shifts by one with dropout; 'zero' padding has no pad modules)."""

    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias)

    @staticmethod
    def _pad(padding_type):
        if padding_type == "reflect":
            return [nn.ReflectionPad2d(1)], 0
        if padding_type == "replicate":
            return [nn.ReplicationPad2d(1)], 0
        if padding_type == "zero":
            return [], 1
        raise NotImplementedError(f"padding [{padding_type}] is not implemented")

    def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        layers = []
        pad, p = self._pad(padding_type)
        layers += pad + [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        pad, p = self._pad(padding_type)
        layers += pad + [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]
        return nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ReflectionPad(3), conv7, norm, ReLU | 2x [conv3 s2 p1, norm, ReLU] | n_blocks ResnetBlock |
    2x [convT3 s2 p1 op1, norm, ReLU] | ReflectionPad(3), conv7 (bias), Tanh. All in ``model``."""

    def __init__(
        self,
        input_nc,
        output_nc,
        ngf=64,
        norm_layer=nn.BatchNorm2d,
        use_dropout=False,
        n_blocks=6,
        padding_type="reflect",
    ):
        assert n_blocks >= 0
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        layers = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        n_downsampling = 2
        for i in range(n_downsampling):
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(c * 2),
                nn.ReLU(True),
            ]
        c = ngf * 2**n_downsampling
        for _ in range(n_blocks):
            layers.append(
                ResnetBlock(
                    c, padding_type=padding_type, norm_layer=norm_layer, use_dropout=use_dropout, use_bias=use_bias
                )
            )
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias),
                norm_layer(c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, input):
        return self.model(input)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down = [LReLU(0.2)], conv4 s2 p1, [norm]; submodule; up = ReLU, convT4 s2
    p1, norm | Tanh, [Dropout(0.5)]. Non-outermost levels return cat([x, model(x)], 1)."""

    def __init__(
        self,
        outer_nc,
        inner_nc,
        input_nc=None,
        submodule=None,
        outermost=False,
        innermost=False,
        norm_layer=nn.BatchNorm2d,
        use_dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        use_bias = _uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net built from the innermost level outwards; num_downs=8 (unet_256) brings 256 to 1x1."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        block = UnetSkipConnectionBlock(
            ngf * 8, ngf * 8, input_nc=None, submodule=None, norm_layer=norm_layer, innermost=True
        )
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(
                ngf * 8, ngf * 8, input_nc=None, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout
            )
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, input_nc=None, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, input_nc=None, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, input_nc=None, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer
        )

    def forward(self, input):
        return self.model(input)


# ----------------------------------------------------------------------- discriminators


class NLayerDiscriminator(nn.Module):
    """PatchGAN: conv4 s2 p1 + LReLU(0.2) | (n_layers-1)x [conv4 s2, norm, LReLU] |
    conv4 s1, norm, LReLU | conv4 s1 -> 1 channel. n_layers=3 on 256 -> 30x30 (70x70 patches)."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        kw, padw = 4, 1
        layers = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw))
        self.model = nn.Sequential(*layers)

    def forward(self, input):
        return self.model(input)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN (pixelGAN): conv1x1, LReLU, conv1x1, norm, LReLU, conv1x1 -> 1 channel."""

    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, input):
        return self.net(input)


# ------------------------------------------------------------------------------- losses


class GANLoss(nn.Module):
    """lsgan: MSE to label.expand_as(pred); vanilla: BCE-with-logits; wgangp: -mean / +mean;
    nonsaturating (CUT): per-sample mean of softplus(-pred) / softplus(pred).
    real_label and fake_label are 0-d buffers (state_dict keys)."""

    def __init__(self, gan_mode, target_real_label=1.0, target_fake_label=0.0):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.gan_mode = gan_mode
        if gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        elif gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        elif gan_mode in ("wgangp", "nonsaturating"):
            self.loss = None
        else:
            raise NotImplementedError(f"gan mode {gan_mode} not implemented")

    def get_target_tensor(self, prediction, target_is_real):
        target = self.real_label if target_is_real else self.fake_label
        return target.expand_as(prediction)

    def forward(self, prediction, target_is_real):
        if self.gan_mode in ("lsgan", "vanilla"):
            return self.loss(prediction, self.get_target_tensor(prediction, target_is_real))
        if self.gan_mode == "wgangp":
            return -prediction.mean() if target_is_real else prediction.mean()
        bs = prediction.size(0)
        if target_is_real:
            return nn.functional.softplus(-prediction).view(bs, -1).mean(dim=1)
        return nn.functional.softplus(prediction).view(bs, -1).mean(dim=1)


def cal_gradient_penalty(netD, real_data, fake_data, device, type="mixed", constant=1.0, lambda_gp=10.0):
    """WGAN-GP penalty ((||grad + 1e-16||_2 - constant)^2).mean() * lambda_gp on real, fake or
    per-sample interpolated ('mixed') inputs. Returns (penalty, gradients) or (0.0, None)."""
    if lambda_gp <= 0.0:
        return 0.0, None
    if type == "real":
        interpolates = real_data
    elif type == "fake":
        interpolates = fake_data
    elif type == "mixed":
        b = real_data.shape[0]
        alpha = torch.rand(b, 1, device=device)
        alpha = alpha.expand(b, real_data.nelement() // b).contiguous().view(*real_data.shape)
        interpolates = alpha * real_data + ((1 - alpha) * fake_data)
    else:
        raise NotImplementedError(f"{type} not implemented")
    interpolates.requires_grad_(True)
    disc = netD(interpolates)
    grads = torch.autograd.grad(
        outputs=disc,
        inputs=interpolates,
        grad_outputs=torch.ones(disc.size()).to(device),
        create_graph=True,
        retain_graph=True,
        only_inputs=True,
    )
    grads = grads[0].view(real_data.size(0), -1)
    penalty = (((grads + 1e-16).norm(2, dim=1) - constant) ** 2).mean() * lambda_gp
    return penalty, grads


# ----------------------------------------------------------------------- training step


class ImagePool:
    """History of generated images (util/image_pool.py): once full, each query image is, with
    probability 1/2, swapped for a random stored one (which it replaces)."""

    def __init__(self, pool_size):
        self.pool_size = pool_size
        self.num_imgs = 0
        self.images = []

    def query(self, images):
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs += 1
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                idx = random.randint(0, self.pool_size - 1)
                tmp = self.images[idx].clone()
                self.images[idx] = image
                out.append(tmp)
            else:
                out.append(image)
        return torch.cat(out, 0)


def set_requires_grad(nets, requires_grad=False):
    if not isinstance(nets, (list, tuple)):
        nets = [nets]
    for net in nets:
        if net is not None:
            for p in net.parameters():
                p.requires_grad = requires_grad


def _generate(G_A, G_B, D_A, D_B, real_A, real_B, opt_G):
    """The G half's start: fakes and reconstructions, Ds frozen, G gradients zeroed."""
    fake_B = G_A(real_A)
    rec_A = G_B(fake_B)
    fake_A = G_B(real_B)
    rec_B = G_A(fake_A)
    set_requires_grad([D_A, D_B], False)
    opt_G.zero_grad()
    return fake_B, rec_A, fake_A, rec_B


def training_step(
    G_A,
    G_B,
    D_A,
    D_B,
    real_A,
    real_B,
    opt_G,
    opt_D,
    criterionGAN=None,
    lambda_A=10.0,
    lambda_B=10.0,
    lambda_identity=0.5,
    fake_A_pool: Optional[ImagePool] = None,
    fake_B_pool: Optional[ImagePool] = None,
    fused_losses: bool = False,
):
    """One CycleGANModel.optimize_parameters(): G_A: A->B, G_B: B->A, D_A judges B, D_B judges A.

    G step (Ds frozen): GAN(D_A(G_A(A)), True) + GAN(D_B(G_B(B)), True)
      + lambda_A*|G_B(G_A(A)) - A|_1 + lambda_B*|G_A(G_B(B)) - B|_1
      + lambda_identity*(lambda_B*|G_A(B) - B|_1 + lambda_A*|G_B(A) - A|_1).
    D step: 0.5*(GAN(D(real), True) + GAN(D(fake.detach()), False)) for each D.
    The original draws the D's fakes from a 50-image ImagePool; pass ``fake_A_pool`` /
    ``fake_B_pool`` (ImagePool(50)) for that. Without pools (the default here) the current fakes
    are used, which makes the step deterministic and is what a benchmark wants.
    ``criterionGAN`` defaults to GANLoss('lsgan') on real_A's device.
    ``fused_losses``: the same losses through i2i_fast.functional (one gan_loss call for both
    G adversarial terms, one l1_loss call for the four L1 terms, one gan_loss per D), as a user
    of i2i_fast writes the step; then the dict holds G, D_A and D_B only.
    Returns a dict of the detached loss tensors (no host sync)."""
    if fused_losses:
        return _training_step_fused(
            G_A,
            G_B,
            D_A,
            D_B,
            real_A,
            real_B,
            opt_G,
            opt_D,
            criterionGAN,
            lambda_A,
            lambda_B,
            lambda_identity,
            fake_A_pool,
            fake_B_pool,
        )
    if criterionGAN is None:
        criterionGAN = GANLoss("lsgan").to(real_A.device)
    l1 = nn.functional.l1_loss
    fake_B, rec_A, fake_A, rec_B = _generate(G_A, G_B, D_A, D_B, real_A, real_B, opt_G)
    if lambda_identity > 0:
        loss_idt_A = l1(G_A(real_B), real_B) * lambda_B * lambda_identity
        loss_idt_B = l1(G_B(real_A), real_A) * lambda_A * lambda_identity
    else:
        loss_idt_A = loss_idt_B = torch.zeros((), device=real_A.device)
    loss_G_A = criterionGAN(D_A(fake_B), True)
    loss_G_B = criterionGAN(D_B(fake_A), True)
    loss_cycle_A = l1(rec_A, real_A) * lambda_A
    loss_cycle_B = l1(rec_B, real_B) * lambda_B
    loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
    loss_G.backward()
    opt_G.step()

    # discriminators
    set_requires_grad([D_A, D_B], True)
    opt_D.zero_grad()

    def backward_D_basic(netD, real, fake):
        loss_real = criterionGAN(netD(real), True)
        loss_fake = criterionGAN(netD(fake.detach()), False)
        loss = (loss_real + loss_fake) * 0.5
        loss.backward()
        return loss

    fB = fake_B_pool.query(fake_B) if fake_B_pool is not None else fake_B
    loss_D_A = backward_D_basic(D_A, real_B, fB)
    fA = fake_A_pool.query(fake_A) if fake_A_pool is not None else fake_A
    loss_D_B = backward_D_basic(D_B, real_A, fA)
    opt_D.step()

    losses = dict(
        D_A=loss_D_A,
        G_A=loss_G_A,
        cycle_A=loss_cycle_A,
        idt_A=loss_idt_A,
        D_B=loss_D_B,
        G_B=loss_G_B,
        cycle_B=loss_cycle_B,
        idt_B=loss_idt_B,
        G=loss_G,
    )
    return {k: v.detach() for k, v in losses.items()}


def _training_step_fused(
    G_A,
    G_B,
    D_A,
    D_B,
    real_A,
    real_B,
    opt_G,
    opt_D,
    criterionGAN,
    lambda_A,
    lambda_B,
    lambda_identity,
    fake_A_pool,
    fake_B_pool,
):
    """training_step(fused_losses=True): the same step, losses by i2i_fast.functional."""
    from .. import functional as F

    if criterionGAN is None:
        mode, labels = "lsgan", (1.0, 0.0)
    else:  # i2i_fast.GANLoss keeps host copies of its labels; else read the buffers (a sync on GPU)
        mode = criterionGAN.gan_mode
        labels = getattr(criterionGAN, "_labels", None) or (
            float(criterionGAN.real_label),
            float(criterionGAN.fake_label),
        )
    if mode not in ("lsgan", "vanilla", "wgangp"):
        raise ValueError(f"fused_losses supports GAN modes lsgan, vanilla and wgangp, got {mode!r}")
    labels = dict(zip(("target_real_label", "target_fake_label"), labels))
    fake_B, rec_A, fake_A, rec_B = _generate(G_A, G_B, D_A, D_B, real_A, real_B, opt_G)
    pairs = [(rec_A, real_A), (rec_B, real_B)]
    weights = [lambda_A, lambda_B]
    if lambda_identity > 0:
        pairs += [(G_A(real_B), real_B), (G_B(real_A), real_A)]
        weights += [lambda_B * lambda_identity, lambda_A * lambda_identity]
    loss_G = F.gan_loss([D_A(fake_B), D_B(fake_A)], True, mode, for_discriminator=False, **labels) + F.l1_loss(
        pairs, weights
    )
    loss_G.backward()
    opt_G.step()

    set_requires_grad([D_A, D_B], True)
    opt_D.zero_grad()
    losses = {"G": loss_G}
    for name, netD, real, fake, pool in (
        ("D_A", D_A, real_B, fake_B, fake_B_pool),
        ("D_B", D_B, real_A, fake_A, fake_A_pool),
    ):
        fake = pool.query(fake) if pool is not None else fake
        loss = F.gan_loss([netD(real), netD(fake.detach())], [True, False], mode, weights=0.5, **labels)
        loss.backward()
        losses[name] = loss
    opt_D.step()
    return {k: v.detach() for k, v in losses.items()}
