"""Input encoding of neural graphs: normalised scalars, learned projections and embeddings.

Node state  V_i = W_v f(norm(x_i)) + P[pos_i] + A[act_i] + K_v[kind_i] + R[role_i] (+ probe features)
Edge state  E_ij = W_e f(norm(w_ij)) + K_e[edge_kind_ij]

where norm standardises each scalar with the mean and standard deviation of its layer
and channel over the training split (``WeightStatistics``), f is the identity or random
Fourier features [sin(2 pi b x), cos(2 pi b x)], P is the position embedding (own vector
per input and output neuron, one per hidden layer; optional), A the activation kind,
K the layer/edge kind (for zoos that mix them) and R the node role (input/hidden/output).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from nngraph.graph.graph import ACTIVATIONS, EDGE_KINDS, NODE_DIM


class WeightStatistics(nn.Module):
    """Per-layer mean / std of node and edge features, fitted on training batches.

    Node features are standardised per (node_layer, channel); edge features per (layer of
    the target node, channel). Layers deeper than any seen use the deepest statistics;
    constant features (std 0) are only centred.
    """

    def __init__(self, num_layers: int, node_dim: int = NODE_DIM, edge_dim: int = 1):
        super().__init__()
        self.register_buffer("node_mean", torch.zeros(num_layers, node_dim))
        self.register_buffer("node_std", torch.ones(num_layers, node_dim))
        self.register_buffer("edge_mean", torch.zeros(num_layers, edge_dim))
        self.register_buffer("edge_std", torch.ones(num_layers, edge_dim))

    @classmethod
    @torch.no_grad()
    def fit(cls, batch: Batch) -> WeightStatistics:
        """Statistics of one (large) batch of training graphs."""
        layers = int(batch.node_layer.max()) + 1
        stats = cls(layers, batch.x.shape[1], batch.edge_attr.shape[1])
        edge_layer = batch.node_layer[batch.edge_index[1]]
        for field, index, mean, std in (
            (batch.x, batch.node_layer, stats.node_mean, stats.node_std),
            (batch.edge_attr, edge_layer, stats.edge_mean, stats.edge_std),
        ):
            count = scatter(torch.ones_like(index, dtype=field.dtype), index, dim_size=layers, reduce="sum")
            m = scatter(field, index, dim=0, dim_size=layers, reduce="sum") / count.clamp_min(1)[:, None]
            var = scatter((field - m[index]) ** 2, index, dim=0, dim_size=layers, reduce="sum") / count.clamp_min(1)[:, None]
            mean.copy_(m)
            std.copy_(torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var)))
        return stats

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised (x [N, d_v], edge_attr [E, d_e])."""
        last = self.node_mean.shape[0] - 1
        node_layer = batch.node_layer.clamp_max(last)
        edge_layer = node_layer[batch.edge_index[1]]
        x = (batch.x - self.node_mean[node_layer]) / self.node_std[node_layer]
        e = batch.edge_attr
        d = min(e.shape[1], self.edge_mean.shape[1])
        e = torch.cat([(e[:, :d] - self.edge_mean[edge_layer, :d]) / self.edge_std[edge_layer, :d], e[:, d:]], dim=1)
        return x, e


class FourierFeatures(nn.Module):
    """Each scalar x -> [sin(2 pi b_k x), cos(2 pi b_k x)]_k with fixed b_k ~ N(0, sigma^2)."""

    def __init__(self, channels: int, features: int, sigma: float = 1.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freq", torch.randn(channels, features, generator=gen) * sigma)
        self.out_dim = channels * 2 * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * x.unsqueeze(-1) * self.freq  # [*, C, F]
        return torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(-2)  # [*, C*2F]


class GraphEncoder(nn.Module):
    """Batch of neural graphs -> initial node states V [N, d] and edge states E [E, d_edge]."""

    def __init__(
        self,
        node_in: int,
        edge_in: int,
        hidden: int,
        edge_hidden: int,
        max_positions: int,
        stats: WeightStatistics | None = None,
        position_embeddings: bool = True,
        fourier_features: int = 0,
    ):
        super().__init__()
        self.stats = stats
        self.node_fourier = FourierFeatures(node_in, fourier_features, seed=0) if fourier_features else None
        self.edge_fourier = FourierFeatures(edge_in, fourier_features, seed=1) if fourier_features else None
        node_dim = self.node_fourier.out_dim if self.node_fourier else node_in
        edge_dim = self.edge_fourier.out_dim if self.edge_fourier else edge_in
        self.node_proj = nn.Linear(node_dim, hidden)
        self.edge_proj = nn.Linear(edge_dim, edge_hidden)
        self.positions = nn.Embedding(max_positions, hidden) if position_embeddings else None
        self.max_positions = max_positions
        self.act = nn.Embedding(len(ACTIVATIONS), hidden)
        self.node_kind = nn.Embedding(len(EDGE_KINDS) + 1, hidden)  # + 1: input nodes have no incoming edge
        self.role = nn.Embedding(3, hidden)
        self.edge_kind = nn.Embedding(len(EDGE_KINDS), edge_hidden)
        self.edge_in = edge_in

    def forward(self, batch: Batch, edge_order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> V [N, d], E [E, d_edge]; E's row k is edge ``edge_order[k]`` when an order [E] is
        given (the input scalars are reordered, so no [E, d_edge] gather or its backward runs)."""
        x, e = self.stats(batch) if self.stats is not None else (batch.x, batch.edge_attr)
        edge_kind = batch.edge_kind
        if edge_order is not None:
            e, edge_kind = e[edge_order], edge_kind[edge_order]
        if e.shape[1] != self.edge_in:
            raise ValueError(f"edge features have {e.shape[1]} channels; this model was built for {self.edge_in}")
        if self.node_fourier is not None:
            x, e = self.node_fourier(x), self.edge_fourier(e)
        v = self.node_proj(x) + self.act(batch.node_act) + self.role(batch.node_role)
        kind = scatter(batch.edge_kind + 1, batch.edge_index[1], dim_size=batch.num_nodes, reduce="max")  # [N]
        v = v + self.node_kind(kind)
        if self.positions is not None:
            if int(batch.node_pos.max()) >= self.max_positions:
                raise ValueError(
                    f"position id {int(batch.node_pos.max())} exceeds the model's {self.max_positions} positions"
                )
            v = v + self.positions(batch.node_pos)
        # W_e f(norm(w)) + K_e[kind] as one matmul of [f(norm(w)), onehot(kind)]: its weight
        # gradient is a matmul too, where an embedding's backward sorts the E indices
        kinds = self.edge_kind.num_embeddings
        weight = torch.cat([self.edge_proj.weight, self.edge_kind.weight.T], dim=1)  # [d_edge, c + kinds]
        e = torch.cat([e, nn.functional.one_hot(edge_kind, kinds).to(e.dtype)], dim=1)  # [E, c + kinds]
        return v, nn.functional.linear(e, weight, self.edge_proj.bias)  # [N, d], [E, d_edge]
