"""Bundled example networks: one per family of layers nngraph converts.

Used by the demo and handy for trying the API without a model of one's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nngraph.data.inr import Siren


class ResidualCNN(nn.Module):
    """Conv + BatchNorm stem, one residual block, global average pooling, linear head."""

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 5, padding=2)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.conv2(F.gelu(self.bn1(self.conv1(h)))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class TwoBranchCNN(nn.Module):
    """Two conv branches joined by torch.cat on channels; a strided conv; flatten into a Linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.narrow, self.wide = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 5, padding=2)
        self.down = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.tanh(self.narrow(x)), F.silu(self.wide(x))], dim=1)
        return self.head(torch.flatten(F.leaky_relu(self.down(h), 0.1), 1))


class NormedMLP(nn.Module):
    """MLP with LayerNorm and a residual connection."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.inp, self.norm = nn.Linear(features, hidden), nn.LayerNorm(hidden)
        self.mid, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm(self.inp(x)))
        h = h + torch.sigmoid(self.mid(h))
        return self.out(h)


def example_networks(seed: int = 0) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, network in eval mode with random parameters and BN statistics, example input)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nets = [
        ("SIREN (dwsnet)", Siren(variant="dwsnet", generator=gen), torch.rand(64, 2, generator=gen) * 2 - 1),
        ("SIREN (standard)", Siren(variant="standard", generator=gen), torch.rand(64, 2, generator=gen) * 2 - 1),
        ("MLP + LayerNorm + residual", NormedMLP(), torch.randn(16, 16, generator=gen)),
        ("CNN + BatchNorm + residual", ResidualCNN(), torch.rand(8, 1, 8, 8, generator=gen)),
        ("CNN + cat + flatten", TwoBranchCNN(), torch.rand(8, 1, 8, 8, generator=gen)),
    ]
    with torch.no_grad():
        for _, net, _ in nets:
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.running_mean.normal_(0, 0.1, generator=gen)
                    module.running_var.uniform_(0.5, 1.5, generator=gen)
            net.eval()
    return nets
