"""Activation modules by the names of ``graph.ACTIVATIONS``, and ``Sine``, the SIREN
activation sin(w0 * z), which ``to_graph`` converts to a node activation (ACT_SINE, w0 in
the node's X_ACT_PARAM feature)."""

from __future__ import annotations

import torch
from torch import nn


class Sine(nn.Module):
    """The SIREN activation: sin(w0 * z)."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * z)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


# Activation name (as in ``graph.ACTIVATIONS``) -> the module that computes it with its defaults.
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "sine": Sine,
}
