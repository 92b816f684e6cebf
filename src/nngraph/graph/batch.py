"""Batching: many networks (of any architectures) in one sparse PyG batch, and a dense view.

``collate`` first lays every graph's edge features out in the batch's common kernel
window (k_max = the largest of the batch) and width, so a conv kernel of one graph and
a Linear weight of another sit at the same channels. ``to_dense`` pads the batch to
N_max nodes for attention models; masks say which entries are real.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_adj, to_dense_batch

from nngraph.errors import InputShapeError
from nngraph.graph import layout
from nngraph.graph.graph import FLAT_KINDS, NeuralGraph


def relayout(graph: NeuralGraph, k_max: int, width: int) -> NeuralGraph:
    """A copy of ``graph`` whose edge features use a k_max x k_max window and ``width`` channels."""
    old_k = graph.spec.k_max
    if old_k == k_max and graph.edge_attr.shape[1] == width:
        return graph
    if k_max < old_k:
        raise ValueError(f"cannot shrink the kernel window from {old_k} to {k_max}")
    attr = graph.edge_attr
    out = attr.new_zeros(attr.shape[0], width)
    flat = torch.isin(graph.edge_kind, torch.tensor(FLAT_KINDS, device=graph.edge_kind.device))
    if flat.any():
        out[flat] = layout.encode_flat(attr[flat], width)
    window = ~flat
    if window.any():
        out[window] = layout.encode_kernels(layout.decode_kernels(attr[window], old_k, old_k, old_k), k_max, width)
    new = graph.clone()
    new.edge_attr = out
    new.spec = replace(graph.spec, k_max=k_max)
    return new


def collate(graphs: list[NeuralGraph], k_max: int | None = None, width: int | None = None) -> Batch:
    """One PyG ``Batch`` of graphs of any architectures (``batch.batch`` maps nodes to graphs).

    Edge features are laid out in a common k_max x k_max window and ``width`` channels:
    by default the batch's largest; pass a corpus-wide k_max and width so that every
    batch of a corpus has the same edge feature size.
    """
    if not graphs:
        raise InputShapeError("collate needs at least one graph; pass a non-empty list of NeuralGraphs")
    k_max = max([g.spec.k_max for g in graphs] + ([k_max] if k_max else []))
    width = max([k_max * k_max] + [g.edge_attr.shape[1] for g in graphs] + ([width] if width else []))
    return Batch.from_data_list([relayout(g, k_max, width) for g in graphs])


@dataclass
class DenseGraphs:
    """A batch padded to N_max nodes (B graphs).

    x          [B, N_max, d_v]          node features (0 at padding)
    edge_attr  [B, N_max, N_max, d_e]   features of edge i -> j at [b, i, j] (0 where none)
    edge_kind  [B, N_max, N_max]        kind of edge i -> j, -1 where there is none
    node_mask  [B, N_max]               real nodes
    pair_mask  [B, N_max, N_max]        pairs of real nodes
    edge_mask  [B, N_max, N_max]        pairs joined by an edge i -> j
    node_layer, node_pos, node_act, node_role [B, N_max] (0 at padding)
    """

    x: torch.Tensor
    edge_attr: torch.Tensor
    edge_kind: torch.Tensor
    node_mask: torch.Tensor
    pair_mask: torch.Tensor
    edge_mask: torch.Tensor
    node_layer: torch.Tensor
    node_pos: torch.Tensor
    node_act: torch.Tensor
    node_role: torch.Tensor


def to_dense(batch: Batch) -> DenseGraphs:
    """Dense, masked view of a batch from ``collate`` (for relational transformers)."""
    x, node_mask = to_dense_batch(batch.x, batch.batch)
    n_max = x.shape[1]

    def nodes(field: torch.Tensor) -> torch.Tensor:
        return to_dense_batch(field, batch.batch, max_num_nodes=n_max)[0]

    def pairs(field: torch.Tensor) -> torch.Tensor:
        return to_dense_adj(batch.edge_index, batch.batch, field, max_num_nodes=n_max)

    ones = torch.ones(batch.edge_index.shape[1], dtype=batch.x.dtype, device=batch.x.device)
    edge_mask = pairs(ones) > 0
    kind = pairs((batch.edge_kind + 1).to(batch.x.dtype)).long() - 1
    return DenseGraphs(
        x=x,
        edge_attr=pairs(batch.edge_attr),
        edge_kind=kind,
        node_mask=node_mask,
        pair_mask=node_mask[:, :, None] & node_mask[:, None, :],
        edge_mask=edge_mask,
        node_layer=nodes(batch.node_layer),
        node_pos=nodes(batch.node_pos),
        node_act=nodes(batch.node_act),
        node_role=nodes(batch.node_role),
    )
