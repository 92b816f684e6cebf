"""Flattened-weights MLP baseline, and random permutation augmentation for it.

The simplest metanetwork: concatenate every parameter of a network (state_dict order)
into one vector and read it with an MLP,

    theta = concat_k vec(P_k)                  # [B, D], P_k the k-th state_dict tensor
    h_0 = theta,  h_l = Dropout(ReLU(W_l h_{l-1} + b_l)),  y = W_L h_{L-1} + b_L

It ignores the neuron-permutation symmetry (a permuted copy of a network is a different
input vector), which is why it is usually trained with random function-preserving
permutations of its inputs: ``random_permutation_augment``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError
from nngraph.graph.fast import one_architecture, stacked_params
from nngraph.graph.permute import interchangeable_groups
from nngraph.models.readout import mlp as shared_mlp


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


# --------------------------------------------------------------------------- augmentation


def interchangeable_classes(graph) -> list[torch.Tensor]:
    """``permute.interchangeable_groups`` as one tensor [m, L_g] per group (m classes, L_g nodes)."""
    return [torch.tensor(classes) for classes in interchangeable_groups(graph)]


_CLASSES: dict[tuple, list[torch.Tensor]] = {}  # interchangeable classes per architecture


def random_permutation_augment(batch: Batch, generator: torch.Generator | None = None) -> Batch:
    """Each network of a one-architecture batch with its own random hidden-neuron permutation.

    Function-preserving (the same relabelling ``permute_graph`` draws, independently per
    graph). Vectorised over the batch: the interchangeable classes are found once on the
    first graph, then B permutations are drawn at once and node / edge fields gathered.
    The result keeps the canonical edge layout (edge e joins the same node ids), so
    ``stacked_params`` of it gives the permuted parameters.
    """
    spec, b, n, e = one_architecture(batch, "random_permutation_augment")
    device = batch.x.device
    edge_index0 = batch.edge_index[:, :e]  # graph 0 uses node ids 0..n-1
    kinds0 = batch.edge_kind[:e].cpu()
    key = (tuple(spec.params), n, e, tuple(torch.bincount(kinds0, minlength=8).tolist()))
    if key not in _CLASSES:
        template = SimpleNamespace(
            num_nodes=n, node_layer=batch.node_layer[:n].cpu(), node_role=batch.node_role[:n].cpu(),
            edge_kind=kinds0, edge_index=edge_index0.cpu(),
        )
        _CLASSES[key] = interchangeable_classes(template)
    perm = torch.arange(n).repeat(b, 1)  # [B, n]: new node k of graph b holds old node perm[b, k]
    for classes in _CLASSES[key]:  # classes [m, L_g]
        m = classes.shape[0]
        sigma = torch.argsort(torch.rand(b, m, generator=generator), dim=1)  # [B, m]
        perm[:, classes.reshape(-1)] = classes[sigma].reshape(b, -1)
    # Edge (i -> j) of the new graph carries old edge (perm[i] -> perm[j]).
    src, dst = edge_index0.cpu()
    edge_key = src * n + dst  # [e]
    order = torch.argsort(edge_key)
    wanted = perm[:, src] * n + perm[:, dst]  # [B, e]
    old_edge = order[torch.searchsorted(edge_key[order], wanted)]  # [B, e]
    if not torch.equal(edge_key[old_edge], wanted):
        raise RuntimeError("permutation does not map edges onto edges; the graph is malformed")
    node_idx = (perm + torch.arange(b).unsqueeze(1) * n).reshape(-1).to(device)  # [B*n]
    edge_idx = (old_edge + torch.arange(b).unsqueeze(1) * e).reshape(-1).to(device)  # [B*e]
    out = batch.clone()
    for field in ("x", "node_act", "node_norm", "node_eps", "node_hw", "node_layer", "node_pos", "node_role"):
        if field in batch:
            out[field] = batch[field][node_idx]
    for field in ("edge_attr", "edge_kind", "edge_geom"):
        if field in batch:
            out[field] = batch[field][edge_idx]
    return out
