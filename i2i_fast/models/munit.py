"""MUNIT / UNIT reference networks (NVlabs/MUNIT and mingyuliutw/UNIT, networks.py), written from
the originals' layers with plain torch.nn layers plus the originals' small classes.

Constructors take the originals' params dicts:
  gen: dim, style_dim, n_downsample, n_res, activ, pad_type, mlp_dim (AdaINGen);
       dim, n_downsample, n_res, activ, pad_type (VAEGen)
  dis: n_layer, gan_type, dim, norm, activ, num_scales, pad_type (MsImageDis)
Keys: ``enc_style.model.N``, ``enc_content.model.N``, ``dec.model.N`` (ResBlocks
``dec.model.0.model.i.model.j.{norm,conv}``), ``mlp.model.N.fc``; VAEGen ``enc``/``dec``;
MsImageDis ``cnns.s.N.conv`` and ``cnns.s.<last>.weight``. Conv2dBlock registers its norm (and a
PReLU activation) before its conv, as the original does, so state_dict order matches too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MsImageDis",
    "AdaINGen",
    "VAEGen",
    "StyleEncoder",
    "ContentEncoder",
    "Decoder",
    "ResBlocks",
    "MLP",
    "ResBlock",
    "Conv2dBlock",
    "LinearBlock",
    "AdaptiveInstanceNorm2d",
    "LayerNorm",
]


# ------------------------------------------------------------------------ normalizations


class AdaptiveInstanceNorm2d(nn.Module):
    """Instance norm (biased variance) with per-(sample, channel) affine ``weight``/``bias`` of
    shape (B*C,), assigned from outside (AdaINGen.assign_adain_params) before each forward.
    running_mean / running_var are dummy buffers: in the state_dict, never used or updated."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = None  # plain attributes, assigned per forward; not in the state_dict
        self.bias = None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        assert self.weight is not None and self.bias is not None, "Please assign weight and bias before calling AdaIN!"
        b, c = x.size(0), x.size(1)
        # batch_norm in training mode over a (1, B*C, H, W) view is instance norm; it updates the
        # repeated copies of the buffers, not the buffers themselves.
        out = F.batch_norm(
            x.contiguous().view(1, b * c, *x.size()[2:]),
            self.running_mean.repeat(b),
            self.running_var.repeat(b),
            self.weight,
            self.bias,
            True,
            self.momentum,
            self.eps,
        )
        return out.view(b, c, *x.size()[2:])

    def __repr__(self):
        return f"{self.__class__.__name__}({self.num_features})"


class LayerNorm(nn.Module):
    """Per-sample norm over (C, H, W): (x - mean) / (std + eps) with the UNBIASED std and eps
    OUTSIDE the sqrt; then per-channel gamma (init uniform[0, 1)) and beta (init 0)."""

    def __init__(self, num_features, eps=1e-5, affine=True):
        super().__init__()
        self.num_features = num_features
        self.affine = affine
        self.eps = eps
        if affine:
            self.gamma = nn.Parameter(torch.empty(num_features).uniform_())
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        shape = [-1] + [1] * (x.dim() - 1)
        flat = x.view(x.size(0), -1)
        mean = flat.mean(1).view(*shape)
        std = flat.std(1).view(*shape)
        x = (x - mean) / (std + self.eps)
        if self.affine:
            shape = [1, -1] + [1] * (x.dim() - 2)
            x = x * self.gamma.view(*shape) + self.beta.view(*shape)
        return x


# -------------------------------------------------------------------------- basic blocks


def _activation(name):
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "prelu":
        return nn.PReLU()
    if name == "selu":
        return nn.SELU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    if name == "none":
        return None
    raise ValueError(f"Unsupported activation: {name}")


def _norm(kind, dim, table):
    """The norm layer named by MUNIT's `norm` option ("none": no layer)."""
    if kind == "none":
        return None
    if kind not in table:
        raise ValueError(f"Unsupported normalization: {kind}")
    return table[kind](dim)


def _norm_act(block, x):
    """A block's optional norm, then its optional activation."""
    if block.norm is not None:
        x = block.norm(x)
    return x if block.activation is None else block.activation(x)


class Conv2dBlock(nn.Module):
    """pad (reflect / replicate / zero), conv (bias, padding 0), [norm: bn, in, ln, adain],
    [activation: relu, lrelu(0.2), prelu, selu, tanh]."""

    def __init__(
        self, input_dim, output_dim, kernel_size, stride, padding=0, norm="none", activation="relu", pad_type="zero"
    ):
        super().__init__()
        self.use_bias = True
        if pad_type == "reflect":
            self.pad = nn.ReflectionPad2d(padding)
        elif pad_type == "replicate":
            self.pad = nn.ReplicationPad2d(padding)
        elif pad_type == "zero":
            self.pad = nn.ZeroPad2d(padding)
        else:
            raise ValueError(f"Unsupported padding type: {pad_type}")
        self.norm = _norm(
            norm,
            output_dim,
            {"bn": nn.BatchNorm2d, "in": nn.InstanceNorm2d, "ln": LayerNorm, "adain": AdaptiveInstanceNorm2d},
        )
        self.activation = _activation(activation)
        self.conv = nn.Conv2d(input_dim, output_dim, kernel_size, stride, bias=self.use_bias)

    def forward(self, x):
        return _norm_act(self, self.conv(self.pad(x)))


class LinearBlock(nn.Module):
    """fc (bias), [norm: bn, in, ln], [activation]."""

    def __init__(self, input_dim, output_dim, norm="none", activation="relu"):
        super().__init__()
        self.fc = nn.Linear(input_dim, output_dim, bias=True)
        self.norm = _norm(norm, output_dim, {"bn": nn.BatchNorm1d, "in": nn.InstanceNorm1d, "ln": LayerNorm})
        self.activation = _activation(activation)

    def forward(self, x):
        return _norm_act(self, self.fc(x))


class ResBlock(nn.Module):
    """x + [Conv2dBlock(3,1,1,norm,activation), Conv2dBlock(3,1,1,norm,none)](x)."""

    def __init__(self, dim, norm="in", activation="relu", pad_type="zero"):
        super().__init__()
        self.model = nn.Sequential(
            Conv2dBlock(dim, dim, 3, 1, 1, norm=norm, activation=activation, pad_type=pad_type),
            Conv2dBlock(dim, dim, 3, 1, 1, norm=norm, activation="none", pad_type=pad_type),
        )

    def forward(self, x):
        return self.model(x) + x


class ResBlocks(nn.Module):
    def __init__(self, num_blocks, dim, norm="in", activation="relu", pad_type="zero"):
        super().__init__()
        self.model = nn.Sequential(
            *[ResBlock(dim, norm=norm, activation=activation, pad_type=pad_type) for _ in range(num_blocks)]
        )

    def forward(self, x):
        return self.model(x)


class MLP(nn.Module):
    """n_blk LinearBlocks: input_dim -> dim (activ) -> ... -> output_dim (no norm, no activation)."""

    def __init__(self, input_dim, output_dim, dim, n_blk, norm="none", activ="relu"):
        super().__init__()
        blocks = [LinearBlock(input_dim, dim, norm=norm, activation=activ)]
        blocks += [LinearBlock(dim, dim, norm=norm, activation=activ) for _ in range(n_blk - 2)]
        blocks.append(LinearBlock(dim, output_dim, norm="none", activation="none"))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x.view(x.size(0), -1))


# ---------------------------------------------------------------------- encoders/decoder


class StyleEncoder(nn.Module):
    """Conv2dBlock(7,1,3) | 2x Conv2dBlock(4,2,1) doubling | (n_downsample-2)x Conv2dBlock(4,2,1) |
    global average pool | conv1x1 -> style_dim."""

    def __init__(self, n_downsample, input_dim, dim, style_dim, norm, activ, pad_type):
        super().__init__()
        layers = [Conv2dBlock(input_dim, dim, 7, 1, 3, norm=norm, activation=activ, pad_type=pad_type)]
        for _ in range(2):
            layers.append(Conv2dBlock(dim, 2 * dim, 4, 2, 1, norm=norm, activation=activ, pad_type=pad_type))
            dim *= 2
        for _ in range(n_downsample - 2):
            layers.append(Conv2dBlock(dim, dim, 4, 2, 1, norm=norm, activation=activ, pad_type=pad_type))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, style_dim, 1, 1, 0)]
        self.model = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x):
        return self.model(x)


class ContentEncoder(nn.Module):
    """Conv2dBlock(7,1,3) | n_downsample x Conv2dBlock(4,2,1) doubling | ResBlocks(n_res)."""

    def __init__(self, n_downsample, n_res, input_dim, dim, norm, activ, pad_type):
        super().__init__()
        layers = [Conv2dBlock(input_dim, dim, 7, 1, 3, norm=norm, activation=activ, pad_type=pad_type)]
        for _ in range(n_downsample):
            layers.append(Conv2dBlock(dim, 2 * dim, 4, 2, 1, norm=norm, activation=activ, pad_type=pad_type))
            dim *= 2
        layers.append(ResBlocks(n_res, dim, norm=norm, activation=activ, pad_type=pad_type))
        self.model = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x):
        return self.model(x)


class Decoder(nn.Module):
    """ResBlocks(n_res, res_norm) | n_upsample x [Upsample(x2, nearest), Conv2dBlock(5,1,2,'ln')] |
    Conv2dBlock(7,1,3, none, tanh)."""

    def __init__(self, n_upsample, n_res, dim, output_dim, res_norm="adain", activ="relu", pad_type="zero"):
        super().__init__()
        layers = [ResBlocks(n_res, dim, res_norm, activ, pad_type=pad_type)]
        for _ in range(n_upsample):
            layers += [
                nn.Upsample(scale_factor=2),
                Conv2dBlock(dim, dim // 2, 5, 1, 2, norm="ln", activation=activ, pad_type=pad_type),
            ]
            dim //= 2
        layers.append(Conv2dBlock(dim, output_dim, 7, 1, 3, norm="none", activation="tanh", pad_type=pad_type))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


# ----------------------------------------------------------------------------- generators


def _is_adain(m):
    # matched by class name, as the original does, so look-alike classes count too
    return m.__class__.__name__ == "AdaptiveInstanceNorm2d"


class AdaINGen(nn.Module):
    """MUNIT generator: style encoder (4 downsamplings, no norm), content encoder ('in'),
    AdaIN decoder whose AdaIN weight/bias come from mlp(style)."""

    def __init__(self, input_dim, params):
        super().__init__()
        dim = params["dim"]
        style_dim = params["style_dim"]
        n_downsample = params["n_downsample"]
        n_res = params["n_res"]
        activ = params["activ"]
        pad_type = params["pad_type"]
        mlp_dim = params["mlp_dim"]
        self.enc_style = StyleEncoder(4, input_dim, dim, style_dim, norm="none", activ=activ, pad_type=pad_type)
        self.enc_content = ContentEncoder(n_downsample, n_res, input_dim, dim, "in", activ, pad_type=pad_type)
        self.dec = Decoder(
            n_downsample,
            n_res,
            self.enc_content.output_dim,
            input_dim,
            res_norm="adain",
            activ=activ,
            pad_type=pad_type,
        )
        self.mlp = MLP(style_dim, self.get_num_adain_params(self.dec), mlp_dim, 3, norm="none", activ=activ)

    def forward(self, images):
        content, style_fake = self.encode(images)
        return self.decode(content, style_fake)

    def encode(self, images):
        style_fake = self.enc_style(images)
        content = self.enc_content(images)
        return content, style_fake

    def decode(self, content, style):
        self.assign_adain_params(self.mlp(style), self.dec)
        return self.dec(content)

    def assign_adain_params(self, adain_params, model):
        """Walk model's AdaIN layers in module order; each takes the next 2*C columns:
        the first C are its bias (mean), the next C its weight (std), flattened to (B*C,)."""
        for m in model.modules():
            if _is_adain(m):
                c = m.num_features
                m.bias = adain_params[:, :c].contiguous().view(-1)
                m.weight = adain_params[:, c : 2 * c].contiguous().view(-1)
                if adain_params.size(1) > 2 * c:
                    adain_params = adain_params[:, 2 * c :]

    def get_num_adain_params(self, model):
        return sum(2 * m.num_features for m in model.modules() if _is_adain(m))


class VAEGen(nn.Module):
    """UNIT generator: content encoder ('in') and a decoder with 'in' residual blocks; the latent
    is Gaussian with mean = hiddens and unit std."""

    def __init__(self, input_dim, params):
        super().__init__()
        dim = params["dim"]
        n_downsample = params["n_downsample"]
        n_res = params["n_res"]
        activ = params["activ"]
        pad_type = params["pad_type"]
        self.enc = ContentEncoder(n_downsample, n_res, input_dim, dim, "in", activ, pad_type=pad_type)
        self.dec = Decoder(
            n_downsample, n_res, self.enc.output_dim, input_dim, res_norm="in", activ=activ, pad_type=pad_type
        )

    def forward(self, images):
        # The original assigns encode()'s (hiddens, noise) tuple to one name here (the trainers
        # call encode/decode directly); this is the evident intent.
        hiddens, noise = self.encode(images)
        images_recon = self.decode(hiddens + noise) if self.training else self.decode(hiddens)
        return images_recon, hiddens

    def encode(self, images):
        hiddens = self.enc(images)
        return hiddens, torch.randn_like(hiddens)

    def decode(self, hiddens):
        return self.dec(hiddens)


# -------------------------------------------------------------------------- discriminator


class MsImageDis(nn.Module):
    """num_scales PatchGANs, each: Conv2dBlock(4,2,1, no norm, activ) + (n_layer-1)x
    Conv2dBlock(4,2,1, norm, activ) doubling + conv1x1 -> 1; the input is average-pooled
    (3, 2, 1, count_include_pad=False) between scales. forward returns the list of outputs."""

    def __init__(self, input_dim, params):
        super().__init__()
        self.n_layer = params["n_layer"]
        self.gan_type = params["gan_type"]
        self.dim = params["dim"]
        self.norm = params["norm"]
        self.activ = params["activ"]
        self.num_scales = params["num_scales"]
        self.pad_type = params["pad_type"]
        self.input_dim = input_dim
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)
        self.cnns = nn.ModuleList([self._make_net() for _ in range(self.num_scales)])

    def _make_net(self):
        dim = self.dim
        layers = [Conv2dBlock(self.input_dim, dim, 4, 2, 1, norm="none", activation=self.activ, pad_type=self.pad_type)]
        for _ in range(self.n_layer - 1):
            layers.append(
                Conv2dBlock(dim, dim * 2, 4, 2, 1, norm=self.norm, activation=self.activ, pad_type=self.pad_type)
            )
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1, 1, 0))
        return nn.Sequential(*layers)

    def forward(self, x):
        outputs = []
        for model in self.cnns:
            outputs.append(model(x))
            x = self.downsample(x)
        return outputs

    def calc_dis_loss(self, input_fake, input_real):
        """lsgan: sum over scales of mean(out_fake^2) + mean((out_real - 1)^2)."""
        loss = 0
        for out0, out1 in zip(self.forward(input_fake), self.forward(input_real)):
            if self.gan_type == "lsgan":
                loss += torch.mean((out0 - 0) ** 2) + torch.mean((out1 - 1) ** 2)
            elif self.gan_type == "nsgan":
                loss += torch.mean(
                    F.binary_cross_entropy(torch.sigmoid(out0), torch.zeros_like(out0))
                    + F.binary_cross_entropy(torch.sigmoid(out1), torch.ones_like(out1))
                )
            else:
                raise ValueError(f"Unsupported GAN type: {self.gan_type}")
        return loss

    def calc_gen_loss(self, input_fake):
        """lsgan: sum over scales of mean((out_fake - 1)^2)."""
        loss = 0
        for out0 in self.forward(input_fake):
            if self.gan_type == "lsgan":
                loss += torch.mean((out0 - 1) ** 2)
            elif self.gan_type == "nsgan":
                loss += torch.mean(F.binary_cross_entropy(torch.sigmoid(out0), torch.ones_like(out0)))
            else:
                raise ValueError(f"Unsupported GAN type: {self.gan_type}")
        return loss
