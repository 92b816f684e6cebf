"""NG-GNN: message passing on neural graphs (PNA aggregation, FiLM messages, edge updates).

One layer, for every edge i -> j (and j -> i when reverse edges are on, with a learned
direction vector added to the edge state):

    E_ij <- LN(E_ij + phi_e([V_i, E_ij, V_j]))                           edge update
    m_ij  = phi_scale(E_ij) * phi_m([V_i, V_j]) + phi_shift(E_ij)        FiLM message
    a_j   = W_a [ s(d_j) * agg_{i -> j} m_ij  for agg in (mean, min, max, std),
                  s in (identity, amplification, attenuation) ]          PNA
    V_j  <- LN(V_j + Dropout(phi_u([V_j, a_j])))                         node update

The aggregation runs as dense reductions over groups of nodes with the same in-degree
(``models/aggregation.py``): the layers keep the edges ordered by (in-degree of the
target, target), so the target terms are broadcasts and no scatter is needed.

Everything is a function of node and edge states only, so relabelling the nodes of a
graph relabels the outputs: the model is equivariant to neuron permutations, and a
graph's output does not depend on the other graphs of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import degree

from nngraph.models.aggregation import InDegreeBuckets, PNAAggregation, gather_rows
from nngraph.models.base import GraphMetanetwork
from nngraph.models.embeddings import WeightStatistics
from nngraph.models.readout import mlp
from nngraph.models.registry import register_model


class NGGNNLayer(nn.Module):
    def __init__(self, hidden: int, edge_hidden: int, deg: torch.Tensor, dropout: float = 0.0):
        super().__init__()
        # phi_e = Linear -> GELU -> Linear on [V_i, E_ij, V_j]; its first Linear is split
        # into a source, an edge and a target projection, so the node terms are computed
        # once per node (N rows) and then spread over the edges.
        self.edge_in_src = nn.Linear(hidden, edge_hidden, bias=False)
        self.edge_in_self = nn.Linear(edge_hidden, edge_hidden)
        self.edge_in_dst = nn.Linear(hidden, edge_hidden, bias=False)
        self.edge_out = nn.Linear(edge_hidden, edge_hidden)
        self.edge_norm = nn.LayerNorm(edge_hidden)
        # phi_m on [V_i, V_j], split the same way.
        self.message_src = nn.Linear(hidden, hidden)
        self.message_dst = nn.Linear(hidden, hidden, bias=False)
        self.film = nn.Linear(edge_hidden, 2 * hidden)  # scale and shift
        self.aggregate = PNAAggregation(hidden, deg)  # PNA + its output projection
        self.update = mlp([2 * hidden, hidden, hidden], dropout)
        self.node_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, e: torch.Tensor, edges: MessageEdges) -> tuple[torch.Tensor, torch.Tensor]:
        """v [N, d]; e [E, d_e] edge states in ``edges``' order -> updated (v, e)."""
        layout, de = edges.layout, e.shape[1]
        if edges.direction is None:  # the edges are the messages, in layout order: targets broadcast
            edge_src, msg_src = gather_rows(torch.cat([self.edge_in_src(v), self.message_src(v)], dim=1),
                                            edges.src).split([de, v.shape[1]], dim=1)  # [E, d_e], [E, d]
            edge_dst, msg_dst = layout.broadcast_targets(
                torch.cat([self.edge_in_dst(v), self.message_dst(v)], dim=1)).split([de, v.shape[1]], dim=1)
            pre = edge_src + linear_then_bias(e, self.edge_in_self.weight, self.edge_in_self.bias) + edge_dst
            e = self.edge_norm(e + linear_then_bias(F.gelu(pre), self.edge_out.weight, self.edge_out.bias))
            e_msg, nodes = e, msg_src + msg_dst  # [E, d_e], [E, d]
        else:  # forward edges in batch order; messages both ways, in layout order
            pre = (gather_rows(self.edge_in_src(v), edges.edge_src)
                   + linear_then_bias(e, self.edge_in_self.weight, self.edge_in_self.bias)
                   + gather_rows(self.edge_in_dst(v), edges.edge_dst))
            e = self.edge_norm(e + linear_then_bias(F.gelu(pre), self.edge_out.weight, self.edge_out.bias))
            e_msg = torch.cat([e + edges.direction[0], e + edges.direction[1]], dim=0)[layout.order]  # [2E, d_e]
            nodes = gather_rows(self.message_src(v), edges.src) + layout.broadcast_targets(self.message_dst(v))
        scale, shift = linear_then_bias(e_msg, self.film.weight, self.film.bias).chunk(2, dim=1)
        a = self.aggregate(scale * nodes + shift, layout)  # [N, d]
        v = self.node_norm(v + self.dropout(self.update(torch.cat([v, a], dim=1))))
        return v, e


def linear_then_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [E, c_in] -> x W^T + b [E, c_out] as a matmul and a separate add. On the CPU, F.linear
    with a bias is addmm, which first copies the bias into its [E, c_out] output (a pass over
    the edges of its own); compiled layers fold this add into the next elementwise kernel.
    Under autocast the bias is added in the matmul's dtype, as addmm adds it."""
    y = F.linear(x, weight)
    return y + bias.to(y.dtype)


@dataclass
class MessageEdges:
    """The message edges of a batch, built once and shared by the layers.

    Without reverse edges (``direction`` None) the messages are the edges: ``layout``
    groups them by their target's in-degree, the edge states are kept in ``layout.order``
    and ``src`` [E] is their sources in that order. With reverse edges every edge i -> j
    also sends j -> i: the edge states stay in batch order with ends ``edge_src`` and
    ``edge_dst`` [E], and the 2E messages (forward edges, then reversed) are taken in
    ``layout.order``, ``src`` [2E] being their sources in that order.
    """

    layout: InDegreeBuckets
    src: torch.Tensor
    direction: torch.Tensor | None = None  # [2, d_e]
    edge_src: torch.Tensor | None = None
    edge_dst: torch.Tensor | None = None

    @classmethod
    def of(cls, edge_index: torch.Tensor, num_nodes: int, direction: torch.Tensor | None) -> MessageEdges:
        src, dst = edge_index  # [E] each
        if direction is None:
            layout = InDegreeBuckets(dst, num_nodes)
            return cls(layout, src[layout.order])
        layout = InDegreeBuckets(torch.cat([dst, src]), num_nodes)
        return cls(layout, torch.cat([src, dst])[layout.order], direction, src, dst)

    @property
    def edge_order(self) -> torch.Tensor | None:
        """The order [E] the layers keep the edge states in (None: batch order)."""
        return self.layout.order if self.direction is None else None

    def unsort_edges(self, e: torch.Tensor) -> torch.Tensor:
        """Edge states [E, d_e] in ``edge_order`` -> in batch order."""
        if self.edge_order is None:
            return e
        return torch.empty_like(e).index_copy(0, self.edge_order, e)


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
        probe_generator: None (free probes, node features only), ``"free"`` or
            ``"deep-linear"`` (that probe source, and the outputs on the probes also go to
            the invariant readout; see ``models.base``).
        head_width, head_layers: the invariant readout's MLP head, ``head_layers`` Linear
            layers whose hidden ones are ``head_width`` wide (default: ``hidden``, 2 layers).
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
        probe_generator: str | None = None,
        head_width: int | None = None,
        head_layers: int = 2,
    ):
        super().__init__(node_in, edge_in, max_positions, num_outputs, out_dim, hidden, edge_hidden, dropout,
                         position_embeddings, fourier_features, probes, input_shape, probe_domain, stats, readout,
                         probe_generator, head_width, head_layers)
        self.layers = nn.ModuleList(NGGNNLayer(hidden, edge_hidden, deg, dropout) for _ in range(layers))
        self.direction = nn.Parameter(torch.randn(2, edge_hidden) * 0.1) if reverse_edges else None
        self.add_readout()

    @classmethod
    def example_sizes(cls, example: Batch, **kwargs) -> dict:
        """The base's sizes and the in-degree histogram of the example (PNA scalers)."""
        return {**super().example_sizes(example), "deg": degree_histogram(example, kwargs.get("reverse_edges", False))}

    def forward(self, batch: Batch):
        edges = MessageEdges.of(batch.edge_index, batch.num_nodes, self.direction)
        v, e, probe_outputs = self.encode(batch, edges.edge_order)  # [N, d], [E, d_e] in the layers' edge order
        for layer in self.layers:
            v, e = layer(v, e, edges)
        return self.read(v, edges.unsort_edges(e), batch, probe_outputs)  # [B, out_dim] or {name: [B, *shape]}


def degree_histogram(batch: Batch, reverse_edges: bool = False) -> torch.Tensor:
    """Histogram of node in-degrees (counting reverse edges if used), for the PNA scalers."""
    src, dst = batch.edge_index
    index = torch.cat([dst, src]) if reverse_edges else dst
    deg = degree(index, num_nodes=batch.num_nodes, dtype=torch.long)
    return torch.bincount(deg)
