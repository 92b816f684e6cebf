"""Reference architectures, written as their reference implementations write them: a
ResNet (torchvision.models.resnet's structure) and a ViT (patch conv, class token, position
embedding, pre-norm blocks with explicit Q/K/V/O + SDPA or nn.MultiheadAttention), plus
``randomise`` (non-trivial parameters and BatchNorm statistics, so a conversion check is not
fooled by an initialisation's zeros and ones).

The tests' conversion checks and the benchmarks (``benchmarks/bench_arch.py``,
``bench_vit.py``) build these networks from here. Parameters are made on the host (a
module's ``__init__``); move the module with ``.to(device)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MHA", "Attention", "BasicBlock", "Block", "ResNet", "ViT", "conv1x1", "conv3x3", "randomise"]


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial parameters and BatchNorm statistics, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, device="cpu") * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, device="cpu") * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, device="cpu") + 0.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


# ---- ResNet (torchvision.models.resnet) ------------------------------------------------


def conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """ResNet-18 for layers=(2, 2, 2, 2) and width=64 (11.7 M parameters at 1000 classes)."""

    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# ---- ViT ---------------------------------------------------------------------------


class Attention(nn.Module):
    """Explicit Q/K/V/O projections and F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = self.k(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = self.v(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class MHA(nn.Module):
    """nn.MultiheadAttention (packed in-projection), batch_first or [T, B, D]."""

    def __init__(self, dim: int, heads: int, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)

    def forward(self, x):
        if self.batch_first:
            return self.attn(x, x, x, need_weights=False)[0]
        x = x.transpose(0, 1)
        return self.attn(x, x, x, need_weights=False)[0].transpose(0, 1)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads) if attention == "sdpa" else MHA(dim, heads, attention == "mha")
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch conv, class token (or mean pooling), position embedding, encoder blocks, head."""

    def __init__(self, image=8, patch=4, dim=8, heads=2, depth=2, classes=3, attention="sdpa", pool="cls"):
        super().__init__()
        self.pool = pool
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2 + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, device="cpu")) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim, device="cpu"))
        self.blocks = nn.Sequential(*(Block(dim, heads, attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)  # [B, T, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))
