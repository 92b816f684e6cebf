"""Readouts: invariant pooling for per-network predictions, and per-parameter heads.

Invariant: hidden nodes can be permuted, so they are pooled (mean and max per graph);
input and output nodes never move, so the output nodes are read in their fixed order:

    r_b = MLP([mean_{i hidden} V_i, max_{i hidden} V_i, V_{out_1}, ..., V_{out_m}])

Equivariant: a head per node and per edge, laid out like the graph's own features (bias
in channel 0 of the node, a weight or kernel in the edge's window), then read back
through the parameter layout: {name: [B, *shape]} of exactly the input network's shapes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from nngraph.graph.fast import stacked_params
from nngraph.graph.graph import ROLE_HIDDEN, ROLE_OUTPUT


def mlp(dims: list[int], dropout: float = 0.0, activation: type[nn.Module] = nn.GELU,
        final_act: bool = False) -> nn.Sequential:
    """Linear layers through ``dims`` with ``activation`` (and dropout) between them,
    and after the last one only with ``final_act``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or final_act:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class InvariantReadout(nn.Module):
    """``extra`` > 0: a vector of that size per network joins the head's input (the
    network's outputs on the probes, ``forward``'s ``extra`` [B, extra]).

    The head has ``head_layers`` Linear layers, the hidden ones ``head_width`` wide
    (default: the node width d): [(2 + m) d + extra] -> head_width x (head_layers - 1) -> out_dim.
    """

    def __init__(self, hidden: int, num_outputs: int, out_dim: int, dropout: float = 0.0, extra: int = 0,
                 head_width: int | None = None, head_layers: int = 2):
        super().__init__()
        self.num_outputs = num_outputs
        width = head_width or hidden
        self.head = mlp([(2 + num_outputs) * hidden + extra] + [width] * (head_layers - 1) + [out_dim], dropout)

    def forward(self, v: torch.Tensor, e: torch.Tensor, batch: Batch,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """v [N, d] -> [B, out_dim]; the edge states e are not read (an invariant pooling of nodes)."""
        return self.head(self.pool(v, e, batch, extra))

    def pool(self, v: torch.Tensor, e: torch.Tensor, batch: Batch,
             extra: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input r_b before the MLP: [mean, max, V_out_1..m(, extra)] [B, (2 + m) d (+ extra)],
        a network's embedding (invariant to its hidden neurons' order)."""
        b = int(batch.num_graphs)
        hidden = batch.node_role == ROLE_HIDDEN
        graph = batch.batch[hidden]
        mean = scatter(v[hidden], graph, dim=0, dim_size=b, reduce="mean")  # [B, d]
        big = torch.finfo(v.dtype).max
        top = scatter(v[hidden], graph, dim=0, dim_size=b, reduce="max")
        has_hidden = torch.bincount(graph, minlength=b)[:, None] > 0
        top = torch.where(has_hidden, top, torch.zeros_like(top)).clamp(-big, big)
        outputs = torch.nonzero(batch.node_role == ROLE_OUTPUT).squeeze(1)
        order = torch.argsort(batch.batch[outputs] * (int(batch.node_pos.max()) + 1) + batch.node_pos[outputs])
        out_states = v[outputs[order]]  # [B * m, d] in (graph, position) order
        if out_states.shape[0] != b * self.num_outputs:
            raise ValueError(f"every network must have {self.num_outputs} output neurons for this readout")
        parts = [mean, top, out_states.reshape(b, -1)] + ([] if extra is None else [extra.to(v.dtype)])
        return torch.cat(parts, dim=1)


class ParameterReadout(nn.Module):
    """Per-parameter outputs: node head -> node features, edge head -> edge features."""

    def __init__(self, hidden: int, edge_hidden: int, node_dim: int, edge_dim: int):
        super().__init__()
        self.node_head = mlp([hidden, hidden, node_dim])
        self.edge_head = mlp([edge_hidden, edge_hidden, edge_dim])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero last layers: the first prediction is "no change" (a SIREN's weights are ~0.05)."""
        for head in (self.node_head, self.edge_head):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(self, v: torch.Tensor, e: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """v [N, d], e [E, d_edge] -> {name: [B, *shape]} (e.g. dW, db of every layer)."""
        return stacked_params(batch, x=self.node_head(v), edge_attr=self.edge_head(e))


# Readout kinds and how messages name them.
READOUTS = {"invariant": "invariant", "parameters": "per-parameter"}


def make_readout(kind: str, hidden: int, edge_hidden: int, num_outputs: int, out_dim: int,
                 node_in: int, edge_in: int, dropout: float = 0.0, extra: int = 0,
                 head_width: int | None = None, head_layers: int = 2) -> nn.Module:
    """``"invariant"``: one vector per network (``extra`` more inputs per network; an MLP head of
    ``head_layers`` Linear layers ``head_width`` wide); ``"parameters"``: a value per parameter.

    Both are called as ``readout(v [N, d], e [E, d_edge], batch)``.
    """
    if kind == "invariant":
        return InvariantReadout(hidden, num_outputs, out_dim, dropout, extra, head_width, head_layers)
    if kind == "parameters":
        return ParameterReadout(hidden, edge_hidden, node_in, edge_in)
    raise ValueError(f"readout must be 'invariant' or 'parameters', got {kind!r}")
