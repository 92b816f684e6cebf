"""Modern CNN blocks written as their reference code writes them, at small widths.

- torchvision's ``SqueezeExcitation`` / ``Conv2dNormActivation`` / EfficientNet ``MBConv`` (SiLU,
  depthwise conv, SE with a SiLU squeeze, stochastic depth, ``result += input``);
- torchvision's MobileNetV3 ``InvertedResidual`` (Hardswish / ReLU, SE with Hardsigmoid, dilation), and
  d-li14/mobilenetv3.pytorch's (``h_sigmoid`` = ``relu6(x + 3) / 6``, ``h_swish`` = ``x * h_sigmoid(x)``,
  an SE of Linear layers on ``.view(b, c)``);
- the lukemelas EfficientNet-PyTorch SE (``F.adaptive_avg_pool2d``, ``torch.sigmoid(x_squeezed) * x``)
  and the original SENet block (Linear fc layers, ``.view(b, c, 1, 1)``, ``x * y.expand_as(x)``);
- milesial's Pytorch-UNet (``DoubleConv``, ``Down`` with MaxPool2d, ``Up`` with ConvTranspose2d or
  bilinear ``nn.Upsample``, ``F.pad`` to the skip's size, ``torch.cat([x2, x1], dim=1)``), and
  jvanvugt/pytorch-unet's (``nn.ModuleList`` paths, ``F.max_pool2d``, upconv or upsample + 1x1 conv,
  ``center_crop`` of the bridge by ``x.shape[2:]``, BatchNorm after ReLU).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcitation(nn.Module):
    """torchvision.ops.misc.SqueezeExcitation."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input):
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input):
        scale = self._scale(input)
        return scale * input


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation (Conv2d, BatchNorm2d, activation)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1, norm_layer=nn.BatchNorm2d,
                 activation_layer=nn.ReLU, dilation=1):
        padding = (kernel_size - 1) // 2 * dilation
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                            bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: the identity in eval mode."""

    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input):
        if not self.training or self.p == 0.0:
            return input
        keep = torch.empty([input.shape[0], 1, 1, 1], dtype=input.dtype, device=input.device).bernoulli_(1 - self.p)
        return input * keep / (1 - self.p)


class MBConv(nn.Module):
    """torchvision.models.efficientnet.MBConv (the EfficientNet-B0 block)."""

    def __init__(self, input_channels, out_channels, expand_ratio, kernel, stride, stochastic_depth_prob=0.2):
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        layers = []
        activation_layer = nn.SiLU
        expanded_channels = input_channels * expand_ratio
        if expanded_channels != input_channels:
            layers.append(Conv2dNormActivation(input_channels, expanded_channels, kernel_size=1,
                                               activation_layer=activation_layer))
        layers.append(Conv2dNormActivation(expanded_channels, expanded_channels, kernel_size=kernel, stride=stride,
                                           groups=expanded_channels, activation_layer=activation_layer))
        squeeze_channels = max(1, input_channels // 4)
        layers.append(SqueezeExcitation(expanded_channels, squeeze_channels, activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded_channels, out_channels, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class EfficientNetB0Small(nn.Module):
    """EfficientNet-B0's layout (stem, MBConv1 k3, MBConv6 k3/k5 stages, 1x1 head, pool, classifier), small widths."""

    def __init__(self, num_classes: int = 5, width: int = 8):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            Conv2dNormActivation(3, w, stride=2, activation_layer=nn.SiLU),
            MBConv(w, w, 1, 3, 1),
            MBConv(w, w + 4, 6, 3, 2),
            MBConv(w + 4, w + 4, 6, 5, 1),
            Conv2dNormActivation(w + 4, 4 * w, kernel_size=1, activation_layer=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidualV3(nn.Module):
    """torchvision.models.mobilenetv3.InvertedResidual."""

    def __init__(self, input_channels, kernel, expanded_channels, out_channels, use_se, use_hs, stride, dilation=1):
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        layers = []
        activation_layer = nn.Hardswish if use_hs else nn.ReLU
        if expanded_channels != input_channels:
            layers.append(Conv2dNormActivation(input_channels, expanded_channels, kernel_size=1,
                                               activation_layer=activation_layer))
        stride = 1 if dilation > 1 else stride
        layers.append(Conv2dNormActivation(expanded_channels, expanded_channels, kernel_size=kernel, stride=stride,
                                           dilation=dilation, groups=expanded_channels,
                                           activation_layer=activation_layer))
        if use_se:
            squeeze_channels = _make_divisible(expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(expanded_channels, squeeze_channels, scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(expanded_channels, out_channels, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small's layout (stem Hardswish, SE + ReLU block, SE + Hardswish blocks, head), small widths."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.Hardswish),
            InvertedResidualV3(8, 3, 8, 8, True, False, 2),
            InvertedResidualV3(8, 3, 24, 12, False, False, 1),
            InvertedResidualV3(12, 5, 24, 12, True, True, 1),
            InvertedResidualV3(12, 3, 24, 12, True, True, 1, dilation=2),
            Conv2dNormActivation(12, 24, kernel_size=1, activation_layer=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(inplace=True), nn.Dropout(p=0.2, inplace=True),
                                        nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class h_sigmoid(nn.Module):  # noqa: N801 - d-li14's names
    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):  # noqa: N801
    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class SELayerV3(nn.Module):
    """d-li14's SELayer."""

    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, _make_divisible(channel // reduction, 8)),
            nn.ReLU(inplace=True),
            nn.Linear(_make_divisible(channel // reduction, 8), channel),
            h_sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y


class InvertedResidualDLi14(nn.Module):
    """d-li14/mobilenetv3.pytorch's InvertedResidual."""

    def __init__(self, inp, hidden_dim, oup, kernel_size, stride, use_se, use_hs):
        super().__init__()
        self.identity = stride == 1 and inp == oup
        pad = (kernel_size - 1) // 2
        if inp == hidden_dim:
            self.conv = nn.Sequential(
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size, stride, pad, groups=hidden_dim, bias=False),
                nn.BatchNorm2d(hidden_dim),
                h_swish() if use_hs else nn.ReLU(inplace=True),
                SELayerV3(hidden_dim) if use_se else nn.Identity(),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            )
        else:
            self.conv = nn.Sequential(
                nn.Conv2d(inp, hidden_dim, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden_dim),
                h_swish() if use_hs else nn.ReLU(inplace=True),
                nn.Conv2d(hidden_dim, hidden_dim, kernel_size, stride, pad, groups=hidden_dim, bias=False),
                nn.BatchNorm2d(hidden_dim),
                SELayerV3(hidden_dim) if use_se else nn.Identity(),
                h_swish() if use_hs else nn.ReLU(inplace=True),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            )

    def forward(self, x):
        if self.identity:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV3DLi14Small(nn.Module):
    """d-li14's MobileNetV3 layout (conv_3x3_bn stem with h_swish, blocks, conv_1x1_bn, pool, classifier)."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), h_swish()),
            InvertedResidualDLi14(8, 8, 8, 3, 2, 1, 0),
            InvertedResidualDLi14(8, 24, 12, 3, 1, 0, 0),
            InvertedResidualDLi14(12, 24, 12, 5, 1, 1, 1),
        )
        self.conv = nn.Sequential(nn.Conv2d(12, 24, 1, 1, 0, bias=False), nn.BatchNorm2d(24), h_swish())
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Linear(24, 32), h_swish(), nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.conv(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class LukeMelasSE(nn.Module):
    """A conv with the SE of lukemelas/EfficientNet-PyTorch's MBConvBlock, then a pooled head."""

    def __init__(self, channels: int = 6, squeeze: int = 2, num_classes: int = 3):
        super().__init__()
        self._depthwise_conv = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self._se_reduce = nn.Conv2d(channels, squeeze, 1)
        self._se_expand = nn.Conv2d(squeeze, channels, 1)
        self._swish = nn.SiLU()
        self._fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self._swish(self._depthwise_conv(x))
        x_squeezed = F.adaptive_avg_pool2d(x, 1)
        x_squeezed = self._se_reduce(x_squeezed)
        x_squeezed = self._swish(x_squeezed)
        x_squeezed = self._se_expand(x_squeezed)
        x = torch.sigmoid(x_squeezed) * x
        return self._fc(x.mean((2, 3)))


class SELayer(nn.Module):
    """The original SENet block (hujie-frank / moskomule senet.pytorch)."""

    def __init__(self, channel: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENetSmall(nn.Module):
    """conv -> BN -> ReLU -> SELayer -> conv -> pool -> Linear."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.se = SELayer(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.se(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2"""

    def __init__(self, in_channels, out_channels, mid_channels=None):
        super().__init__()
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    """Downscaling with maxpool then double conv"""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upscaling then double conv"""

    def __init__(self, in_channels, out_channels, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):
    """milesial/Pytorch-UNet's UNet with base width ``width`` (64 there) and three levels (four there)."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False, width: int = 4):
        super().__init__()
        w = width
        self.inc = DoubleConv(n_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        factor = 2 if bilinear else 1
        self.down3 = Down(4 * w, 8 * w // factor)
        self.up1 = Up(8 * w, 4 * w // factor, bilinear)
        self.up2 = Up(4 * w, 2 * w // factor, bilinear)
        self.up3 = Up(2 * w, w, bilinear)
        self.outc = OutConv(w, n_classes)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(x4, x3)
        x = self.up2(x, x2)
        x = self.up3(x, x1)
        return self.outc(x)


class UNetConvBlock(nn.Module):
    """jvanvugt/pytorch-unet's UNetConvBlock (ReLU, then BatchNorm)."""

    def __init__(self, in_size, out_size, padding, batch_norm):
        super().__init__()
        block = [nn.Conv2d(in_size, out_size, kernel_size=3, padding=int(padding)), nn.ReLU()]
        if batch_norm:
            block.append(nn.BatchNorm2d(out_size))
        block += [nn.Conv2d(out_size, out_size, kernel_size=3, padding=int(padding)), nn.ReLU()]
        if batch_norm:
            block.append(nn.BatchNorm2d(out_size))
        self.block = nn.Sequential(*block)

    def forward(self, x):
        return self.block(x)


class UNetUpBlock(nn.Module):
    """jvanvugt/pytorch-unet's UNetUpBlock: upconv or bilinear upsample + 1x1 conv, centre crop of the bridge."""

    def __init__(self, in_size, out_size, up_mode, padding, batch_norm):
        super().__init__()
        if up_mode == "upconv":
            self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(mode="bilinear", scale_factor=2), nn.Conv2d(in_size, out_size, 1))
        self.conv_block = UNetConvBlock(in_size, out_size, padding, batch_norm)

    def center_crop(self, layer, target_size):
        _, _, layer_height, layer_width = layer.size()
        diff_y = (layer_height - target_size[0]) // 2
        diff_x = (layer_width - target_size[1]) // 2
        return layer[:, :, diff_y:(diff_y + target_size[0]), diff_x:(diff_x + target_size[1])]

    def forward(self, x, bridge):
        up = self.up(x)
        crop1 = self.center_crop(bridge, up.shape[2:])
        out = torch.cat([up, crop1], 1)
        return self.conv_block(out)


class UNetJvanvugt(nn.Module):
    """jvanvugt/pytorch-unet's UNet (padding=True: the crops keep every position), depth 3, wf 2."""

    def __init__(self, in_channels=3, n_classes=2, depth=3, wf=2, padding=True, batch_norm=True, up_mode="upconv"):
        super().__init__()
        self.padding = padding
        self.depth = depth
        prev_channels = in_channels
        self.down_path = nn.ModuleList()
        for i in range(depth):
            self.down_path.append(UNetConvBlock(prev_channels, 2 ** (wf + i), padding, batch_norm))
            prev_channels = 2 ** (wf + i)
        self.up_path = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up_path.append(UNetUpBlock(prev_channels, 2 ** (wf + i), up_mode, padding, batch_norm))
            prev_channels = 2 ** (wf + i)
        self.last = nn.Conv2d(prev_channels, n_classes, kernel_size=1)

    def forward(self, x):
        blocks = []
        for i, down in enumerate(self.down_path):
            x = down(x)
            if i != len(self.down_path) - 1:
                blocks.append(x)
                x = F.max_pool2d(x, 2)
        for i, up in enumerate(self.up_path):
            x = up(x, blocks[-i - 1])
        return self.last(x)


class Mlp(nn.Module):
    """timm.layers.Mlp: fc1, GELU, dropout, (identity norm), fc2, dropout."""

    def __init__(self, in_features, hidden_features, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(in_features, hidden_features), nn.GELU(), nn.Dropout(drop)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden_features, in_features), nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class DropPath(nn.Module):
    """timm's DropPath: the identity at eval (stochastic depth only while training)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MixerBlock(nn.Module):
    """timm.models.mlp_mixer.MixerBlock: token mixing over the transposed tokens, then channel mixing."""

    def __init__(self, dim, seq_len, mlp_ratio=(0.5, 4.0), drop_path=0.1):
        super().__init__()
        tokens_dim, channels_dim = int(mlp_ratio[0] * dim), int(mlp_ratio[1] * dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_dim)

    def forward(self, x):
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))
        return x


class PermuteMixerBlock(MixerBlock):
    """The same block written with ``x.permute(0, 2, 1)`` for the token transpose (as many re-implementations do)."""

    def forward(self, x):
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).permute(0, 2, 1)).permute(0, 2, 1))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class PatchEmbed(nn.Module):
    """timm.layers.PatchEmbed: a strided Conv2d, flatten(2).transpose(1, 2) to tokens [B, T, D]."""

    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class MlpMixer(nn.Module):
    """timm.models.mlp_mixer.MlpMixer (small): stem, blocks, LayerNorm, mean over tokens, head."""

    def __init__(self, num_classes=5, img_size=8, in_chans=3, patch_size=2, num_blocks=2, embed_dim=8, block=None):
        super().__init__()
        self.stem = PatchEmbed(patch_size, in_chans, embed_dim)
        seq_len = (img_size // patch_size) ** 2
        block = block or MixerBlock
        self.blocks = nn.Sequential(*[block(embed_dim, seq_len) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.blocks(x)
        x = self.norm(x)
        x = x.mean(dim=1)
        return self.head(x)


class _DenseLayer(nn.Module):
    """torchvision.models.densenet._DenseLayer (eval, no dropout): BN-ReLU-1x1 conv, BN-ReLU-3x3 conv of the cat."""

    def __init__(self, num_input_features, growth_rate, bn_size):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(num_input_features), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth_rate), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, input):
        prev_features = [input] if isinstance(input, torch.Tensor) else input
        concated_features = torch.cat(prev_features, 1)
        bottleneck_output = self.conv1(self.relu1(self.norm1(concated_features)))
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size))

    def forward(self, init_features):
        features = [init_features]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNetSmall(nn.Module):
    """torchvision.models.DenseNet's structure at small widths: stem, dense blocks, transition, final ReLU,
    F.adaptive_avg_pool2d, torch.flatten, classifier."""

    def __init__(self, growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)), ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(num_layers, num_features, bn_size, growth_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm2d(num_features)), ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv2d(num_features, num_features // 2, kernel_size=1, stride=1, bias=False)),
                    ("pool", nn.AvgPool2d(kernel_size=2, stride=2))])))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


class BasicConv2d(nn.Module):
    """torchvision.models.googlenet.BasicConv2d."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """torchvision.models.googlenet.Inception: four branches concatenated on channels."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x):
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)


class GoogLeNetSmall(nn.Module):
    """A GoogLeNet stem, two Inception blocks around a ceil-mode max pool, dropout, fc (eval)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, kernel_size=3, stride=1, padding=1)
        self.inception3a = Inception(8, 4, 4, 6, 2, 3, 3)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3b = Inception(16, 4, 4, 4, 2, 4, 4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.inception3b(self.maxpool3(self.inception3a(self.conv1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


class MixConvSlices(nn.Module):
    """A MixConv written with slices: channels [:4] get a 3x3 depthwise conv, [4:] a 5x5 one, then cat."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 3, padding=1)
        self.dw3 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dw5 = nn.Conv2d(6, 6, 5, padding=2, groups=6)
        self.pw = nn.Conv2d(10, 8, 1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.dw3(x[:, :4]), self.dw5(x[:, 4:])], dim=1)
        x = F.relu(self.pw(F.silu(x)))
        return self.head(x.mean((2, 3)))


class SplitClassifier(nn.Module):
    """A classifier that splits features with chunk and split: two branches summed, a head reading a split."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.fa, self.fb = nn.Linear(6, 8), nn.Linear(6, 8)
        self.head = nn.Linear(5, num_classes)

    def forward(self, x):
        h = torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)
        a, b = h.chunk(2, dim=1)
        s = torch.relu(self.fa(a)) + torch.tanh(self.fb(b))
        first, _ = torch.split(s, [5, 3], dim=1)
        return self.head(first)


class PreNormResidual(nn.Module):
    """lucidrains/mlp-mixer-pytorch's PreNormResidual: fn(norm(x)) + x."""

    def __init__(self, dim, fn):
        super().__init__()
        self.fn, self.norm = fn, nn.LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x)) + x


def FeedForward(dim, expansion_factor=4, dropout=0.0, dense=nn.Linear):  # noqa: N802 - the reference's name
    inner_dim = int(dim * expansion_factor)
    return nn.Sequential(dense(dim, inner_dim), nn.GELU(), nn.Dropout(dropout), dense(inner_dim, dim), nn.Dropout(dropout))


class LucidrainsMixer(nn.Module):
    """lucidrains' MLPMixer: token mixing by Conv1d(T, T * f, 1) on [B, T, D] (the tokens read as channels),
    channel mixing by Linear; the patch Rearrange written as a strided conv, the Reduce as a mean over tokens."""

    def __init__(self, image_size=8, channels=3, patch_size=2, dim=8, depth=2, num_classes=5, expansion_factor=4,
                 expansion_factor_token=0.5):
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        chan_first, chan_last = partial(nn.Conv1d, kernel_size=1), nn.Linear
        self.embed = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.layers = nn.Sequential(*[nn.Sequential(
            PreNormResidual(dim, FeedForward(num_patches, expansion_factor, 0.0, chan_first)),
            PreNormResidual(dim, FeedForward(dim, expansion_factor_token, 0.0, chan_last)),
        ) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.layers(x)).mean(1))
