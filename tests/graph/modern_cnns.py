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
