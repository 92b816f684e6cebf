"""NG-GNN: message passing on neural graphs (PNA aggregation, FiLM messages, edge updates).

One layer, for every edge i -> j (and j -> i when reverse edges are on, with a learned
direction vector added to the edge state):

    E_ij <- LN(E_ij + phi_e([V_i, E_ij, V_j]))                           edge update
    m_ij  = phi_scale(E_ij) * phi_m([V_i, V_j]) + phi_shift(E_ij)        FiLM message
    a_j   = W_a [ s(d_j) * agg_{i -> j} m_ij  for agg in (mean, min, max, std),
                  s in (identity, amplification, attenuation) ]          PNA
    V_j  <- LN(V_j + Dropout(phi_u([V_j, a_j])))                         node update

Everything is a function of node and edge states only, so relabelling the nodes of a
graph relabels the outputs: the model is equivariant to neuron permutations, and a
graph's output does not depend on the other graphs of its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn.aggr import DegreeScalerAggregation
from torch_geometric.utils import degree

from nngraph.models.base import GraphMetanetwork
from nngraph.models.embeddings import WeightStatistics
from nngraph.models.readout import mlp
from nngraph.models.registry import register_model

AGGREGATORS = ["mean", "min", "max", "std"]
SCALERS = ["identity", "amplification", "attenuation"]


class NGGNNLayer(nn.Module):
    def __init__(self, hidden: int, edge_hidden: int, deg: torch.Tensor, dropout: float = 0.0):
        super().__init__()
        # phi_e = Linear -> GELU -> Linear on [V_i, E_ij, V_j]; its first Linear is split
        # into a source, an edge and a target projection, so the node terms are computed
        # once per node (N rows) and gathered, instead of once per edge on a concatenation.
        self.edge_in_src = nn.Linear(hidden, edge_hidden, bias=False)
        self.edge_in_self = nn.Linear(edge_hidden, edge_hidden)
        self.edge_in_dst = nn.Linear(hidden, edge_hidden, bias=False)
        self.edge_out = nn.Linear(edge_hidden, edge_hidden)
        self.edge_norm = nn.LayerNorm(edge_hidden)
        # phi_m on [V_i, V_j], split the same way.
        self.message_src = nn.Linear(hidden, hidden)
        self.message_dst = nn.Linear(hidden, hidden, bias=False)
        self.film = nn.Linear(edge_hidden, 2 * hidden)  # scale and shift
        self.aggregate = DegreeScalerAggregation(AGGREGATORS, SCALERS, deg)
        self.post = nn.Linear(len(AGGREGATORS) * len(SCALERS) * hidden, hidden)
        self.update = mlp([2 * hidden, hidden, hidden], dropout)
        self.node_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, e: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                direction: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """v [N, d]; e [E, d_e] forward edges; src/dst [E'] message edges (E' = E or 2E)."""
        n_forward = e.shape[0]
        fwd_src, fwd_dst = src[:n_forward], dst[:n_forward]
        pre = self.edge_in_src(v)[fwd_src] + self.edge_in_self(e) + self.edge_in_dst(v)[fwd_dst]  # [E, d_e]
        e = self.edge_norm(e + self.edge_out(F.gelu(pre)))
        e_msg = e if direction is None else torch.cat([e + direction[0], e + direction[1]], dim=0)  # [E', d_e]
        scale, shift = self.film(e_msg).chunk(2, dim=1)
        m = scale * (self.message_src(v)[src] + self.message_dst(v)[dst]) + shift  # [E', d]
        a = self.post(self.aggregate(m, dst, dim_size=v.shape[0]))  # [N, d]
        v = self.node_norm(v + self.dropout(self.update(torch.cat([v, a], dim=1))))
        return v, e


@register_model("nggnn", readouts=("invariant", "parameters"), probes=True)
class NGGNN(GraphMetanetwork):
    """NG-GNN metanetwork: encoder (+ probe features) -> L layers -> readout.

    Args:
        node_in, edge_in: channels of the graphs' node and edge features.
        max_positions: size of the position-embedding table (> largest ``node_pos``).
        num_outputs: output neurons of the input networks (read in order by the readout).
        out_dim: size of the prediction (classes, 1 for regression); ignored for
            ``readout="parameters"``, which predicts one value per parameter.
        deg: in-degree histogram of training graphs (PNA scalers); see ``degree_histogram``.
        probes: number of probe inputs (0 = off); ``input_shape`` and ``probe_domain`` say
            where they live.
    """

    def __init__(
        self,
        node_in: int,
        edge_in: int,
        max_positions: int,
        num_outputs: int,
        out_dim: int,
        deg: torch.Tensor,
        hidden: int = 64,
        edge_hidden: int = 32,
        layers: int = 4,
        dropout: float = 0.0,
        position_embeddings: bool = True,
        reverse_edges: bool = False,
        fourier_features: int = 0,
        probes: int = 0,
        input_shape: tuple[int, ...] = (),
        probe_domain: tuple[float, float] = (-1.0, 1.0),
        stats: WeightStatistics | None = None,
        readout: str = "invariant",
    ):
        super().__init__(node_in, edge_in, max_positions, num_outputs, out_dim, hidden, edge_hidden, dropout,
                         position_embeddings, fourier_features, probes, input_shape, probe_domain, stats, readout)
        self.layers = nn.ModuleList(NGGNNLayer(hidden, edge_hidden, deg, dropout) for _ in range(layers))
        self.direction = nn.Parameter(torch.randn(2, edge_hidden) * 0.1) if reverse_edges else None
        self.add_readout()

    @classmethod
    def example_sizes(cls, example: Batch, **kwargs) -> dict:
        """The base's sizes and the in-degree histogram of the example (PNA scalers)."""
        return {**super().example_sizes(example), "deg": degree_histogram(example, kwargs.get("reverse_edges", False))}

    def forward(self, batch: Batch):
        v, e = self.encode(batch)  # [N, d], [E, d_e]
        src, dst = batch.edge_index
        if self.direction is not None:
            src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        for layer in self.layers:
            v, e = layer(v, e, src, dst, self.direction)
        return self.readout(v, e, batch)  # [B, out_dim] or {name: [B, *shape]}


def degree_histogram(batch: Batch, reverse_edges: bool = False) -> torch.Tensor:
    """Histogram of node in-degrees (counting reverse edges if used), for the PNA scalers."""
    src, dst = batch.edge_index
    index = torch.cat([dst, src]) if reverse_edges else dst
    deg = degree(index, num_nodes=batch.num_nodes, dtype=torch.long)
    return torch.bincount(deg)
