"""Reference architectures written by hand in the structure of their reference implementations
(torchvision cannot be installed here): ResNet-18, MobileNetV2, VGG, a Conv1d network, a
functional SIREN on raw parameters and a CNN with partial-channel in-place residuals.
Widths are arguments so that tests run them small and benchmarks at full size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ---- ResNet (torchvision.models.resnet) ------------------------------------------------


from nngraph.architectures import BasicBlock, ResNet, conv1x1, conv3x3  # noqa: E402,F401  (moved)


# ---- MobileNetV2 (torchvision.models.mobilenetv2) --------------------------------------


class ConvBNReLU(nn.Sequential):
    def __init__(self, inp: int, out: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, out, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise-linear
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2; ``settings`` rows (t, c, n, s) as in the paper, channels scaled by ``width``."""

    FULL = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0, settings=FULL, last: int = 1280):
        super().__init__()
        scale = lambda c: max(4, int(c * width))  # noqa: E731
        inp = scale(32)
        features: list[nn.Module] = [ConvBNReLU(3, inp, stride=2)]
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(inp, scale(c), s if i == 0 else 1, expand_ratio=t))
                inp = scale(c)
        self.last_channel = scale(last)
        features.append(ConvBNReLU(inp, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ---- VGG (torchvision.models.vgg) ------------------------------------------------------


class VGG(nn.Module):
    """VGG: 3x3 conv + ReLU stacks and 2x2 max pools ("M"), adaptive average pooling, dropout MLP head."""

    def __init__(self, cfg=(8, "M", 16, "M", 32, 32, "M"), batch_norm: bool = False, pool: int = 3,
                 hidden: int = 32, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ---- sequences -------------------------------------------------------------------------


class Conv1dNet(nn.Module):
    """A 1-D CNN on [batch, C, L]: BatchNorm1d, max / average / adaptive pooling, grouped Conv1d, PReLU."""

    def __init__(self, in_channels: int = 2, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1, groups=2)
        self.act2 = nn.PReLU(8)
        self.pool2 = nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
        self.conv3 = nn.Conv1d(8, 6, 3, dilation=2, padding="same")
        self.pool3 = nn.AdaptiveMaxPool1d(3)
        self.fc = nn.Linear(6 * 3, classes)

    def forward(self, x):
        h = self.pool1(F.relu(self.bn1(self.conv1(x))))
        h = self.pool2(self.act2(self.conv2(h)))
        h = self.pool3(F.elu(self.conv3(h), 0.5))
        return self.fc(h.flatten(1))


# ---- functional INR (the seed paper's SIRENs on raw parameters) ------------------------


class FunctionalSiren(nn.Module):
    """sin(w0 (W x + b)) layers written with F.linear on parameters held in ParameterLists."""

    def __init__(self, widths=(2, 16, 16, 1), w0: float = 30.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w0 = w0
        self.weights = nn.ParameterList(
            nn.Parameter(torch.rand(b, a, generator=gen) * 2 / a - 1 / a) for a, b in zip(widths[:-1], widths[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.rand(b, generator=gen) * 0.2 - 0.1) for b in widths[1:])

    def forward(self, x):
        for w, b in zip(list(self.weights)[:-1], list(self.biases)[:-1]):
            x = torch.sin(self.w0 * F.linear(x, w, b))
        return F.linear(x, self.weights[-1], self.biases[-1]) + 0.5


# ---- partial-channel in-place residuals (the seed paper's CNN Wild Park) ----------------


class PartialResidualCNN(nn.Module):
    """Blocks that add their input onto the first channels of their output in place: out[:, :c] += x."""

    def __init__(self, in_channels: int = 3, widths=(4, 6, 8), classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        h = F.relu(self.stem(x))
        for conv, bn in zip(self.convs, self.bns):
            out = bn(conv(h))
            out[:, : h.shape[1]] += h
            h = F.relu(out)
        return self.fc(h.mean((2, 3)))
