"""The CNN of the neural-graphs CNN Wild Park, as a module nngraph converts exactly.

Architecture spec (from a Wild Park checkpoint's sampler config)::

    {"family": "wild-park", "in_channels": 3, "num_classes": 10,
     "channels": [c_1, ..., c_L], "kernel": [k_1, ...], "stride": [s_1, ...],
     "padding": [p_1, ...], "residual": [r_1, ...], "activation": [a_1, ...]}

Layer i (0-based) computes, with h_{-1} the input image and ``act_i`` its activation
(``"none"`` is the identity)::

    z_i = conv_i(h_{i-1})                                   [B, c_i, H, W]
    z_i[:, :m] += h_{r_i}[:, :m]   if r_i >= 0,  m = min(c_{r_i}, c_i)
    h_i = act_i(z_i)

then global average pooling and a linear head ``fc``. The residual adds the first m
channels of an earlier layer's output (after its activation) before the activation, as
the Wild Park's sampler does; here it is written with channel slices and ``torch.cat``
so that the graph conversion sees a sum over exactly those channels. State-dict names
are the release's: ``layers.{i}.weight/bias``, ``fc.weight/bias``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nngraph.errors import NNGraphError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, as F.leaky_relu's default
    "none": nn.Identity,
}


def validate_park_architecture(arch: Mapping) -> None:
    """Raise ``NNGraphError`` (one line) if ``arch`` is not a valid Wild Park spec."""

    def bad(what: str) -> NNGraphError:
        return NNGraphError(f"Wild Park architecture spec: {what}; see nngraph.data.park for the format")

    keys = ("channels", "kernel", "stride", "padding", "residual", "activation")
    lists = [arch.get(k) for k in keys]
    if any(not isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1 or not lists[0]:
        raise bad(f"{', '.join(keys)} must be lists of one equal, positive length")
    for key in ("in_channels", "num_classes"):
        if not isinstance(arch.get(key), int) or arch[key] < 1:
            raise bad(f"{key} must be a positive int, got {arch.get(key)!r}")
    for i, (c, k, s, p, r, a) in enumerate(zip(*lists)):
        if not all(isinstance(v, int) for v in (c, k, s, p, r)) or c < 1 or k < 1 or s < 1 or p < 0:
            raise bad(f"layer {i} needs positive ints channels/kernel/stride and padding >= 0")
        if a not in ACTIVATIONS:
            raise bad(f"layer {i} activation {a!r} is not one of {sorted(ACTIVATIONS)}")
        if r >= i or r < -1:
            raise bad(f"layer {i} residual {r} must be -1 or an earlier layer")


def park_param_shapes(arch: Mapping) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of ``ParkCNN(arch)``, computed without building it
    (so a spec claiming huge channels allocates nothing)::

        layers.{i}.weight  [c_i, c_{i-1}, k_i, k_i]    (c_{-1} = in_channels)
        layers.{i}.bias    [c_i]
        fc.weight          [num_classes, c_L]
        fc.bias            [num_classes]
    """
    validate_park_architecture(arch)
    widths = [arch["in_channels"], *arch["channels"]]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, k in enumerate(arch["kernel"]):
        shapes[f"layers.{i}.weight"] = (widths[i + 1], widths[i], k, k)
        shapes[f"layers.{i}.bias"] = (widths[i + 1],)
    shapes["fc.weight"] = (arch["num_classes"], widths[-1])
    shapes["fc.bias"] = (arch["num_classes"],)
    return shapes


class ParkCNN(nn.Module):
    """A Wild Park CNN (see the module docstring); input ``[B, in_channels, H, W]``."""

    def __init__(self, arch: Mapping):
        super().__init__()
        validate_park_architecture(arch)
        widths = [arch["in_channels"], *arch["channels"]]
        self.layers = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], k, stride=s, padding=p)
            for i, (k, s, p) in enumerate(zip(arch["kernel"], arch["stride"], arch["padding"]))
        )
        self.acts = nn.ModuleList(ACTIVATIONS[a]() for a in arch["activation"])
        self.residual = list(arch["residual"])
        self.widths = widths[1:]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], arch["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        for i, (conv, act) in enumerate(zip(self.layers, self.acts)):
            z = conv(x)  # [B, c_i, H, W]
            r = self.residual[i]
            if r >= 0:
                m = min(self.widths[r], self.widths[i])
                added = z[:, :m] + saved[r][:, :m]  # [B, m, H, W]
                z = added if m == self.widths[i] else torch.cat([added, z[:, m:]], dim=1)
            x = act(z)
            if i in self.residual:
                saved[i] = x
        return self.fc(self.flatten(self.pool(x)))  # [B, num_classes]
