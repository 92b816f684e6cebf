"""Flattened-weights MLP baseline.

The simplest metanetwork: concatenate every parameter of a network (state_dict order)
into one vector and read it with an MLP,

    theta = concat_k vec(P_k)                  # [B, D], P_k the k-th state_dict tensor
    h_0 = theta,  h_l = Dropout(ReLU(W_l h_{l-1} + b_l)),  y = W_L h_{L-1} + b_L

It ignores the neuron-permutation symmetry (a permuted copy of a network is a different
input vector), which is why it is usually trained with random function-preserving
permutations of its inputs: ``nngraph.graph.augment.random_permutation_augment``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError
from nngraph.graph.fast import stacked_params
from nngraph.models.readout import mlp as shared_mlp
from nngraph.models.registry import register_model


def mlp(dims: list[int], dropout: float = 0.0, final_act: bool = False) -> nn.Sequential:
    """The baselines' MLPs: ``models.readout.mlp`` with ReLU."""
    return shared_mlp(dims, dropout, nn.ReLU, final_act)


def reset_mlp(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()


def flatten_params(batch: Batch) -> torch.Tensor:
    """All parameters of a one-architecture batch, state_dict order, flattened: [B, D]."""
    params = stacked_params(batch)  # {name: [B, *shape]}
    return torch.cat([p.reshape(p.shape[0], -1) for p in params.values()], dim=1)


@register_model("mlp", baseline=True)
class FlatMLP(nn.Module):
    """MLP on the flattened parameter vector of networks of one architecture.

    Args:
        in_dim: number of parameters D of the architecture (incl. BatchNorm statistics).
        hidden: width of the hidden layers.
        out_dim: output size.
        layers: number of Linear layers (>= 1).
        dropout: dropout after every hidden activation.

    Forward: batch of one architecture -> [B, out_dim]. Not permutation invariant.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        if layers < 1:
            raise ValueError("FlatMLP needs layers >= 1")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("scale", torch.ones(in_dim))  # input scale per coordinate (set_normalisation)
        self.net = mlp([in_dim] + [hidden] * (layers - 1) + [out_dim], dropout)

    @classmethod
    def from_example(
        cls, batch: Batch, out_dim: int, hidden: int = 256, layers: int = 3, dropout: float = 0.0, normalise: bool = True
    ) -> "FlatMLP":
        """Size from the batch; with ``normalise``, each tensor scaled by 1/RMS on it (pass training data)."""
        model = cls(flatten_params(batch).shape[1], hidden, out_dim, layers, dropout)
        if normalise:
            with torch.no_grad():
                params = stacked_params(batch)
                rms = torch.cat([p.pow(2).mean().sqrt().expand(p[0].numel()) for p in params.values()])
                model.set_normalisation(rms)
        return model

    @torch.no_grad()
    def set_normalisation(self, rms: torch.Tensor) -> None:
        """Divide input coordinate i by rms[i] (left as is where rms ~ 0)."""
        self.scale.copy_(torch.where(rms > 1e-8, 1.0 / rms.clamp(min=1e-8), torch.ones_like(rms)))

    def reset_parameters(self) -> None:
        reset_mlp(self.net)

    def forward(self, batch: Batch) -> torch.Tensor:
        theta = flatten_params(batch)  # [B, D]
        if theta.shape[1] != self.in_dim:
            raise InputShapeError(
                f"FlatMLP was built for networks with {self.in_dim} parameters, got {theta.shape[1]}; "
                "build it from an example of this architecture"
            )
        return self.net(theta * self.scale)  # [B, out_dim]
