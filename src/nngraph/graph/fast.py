"""The fast path for corpora of one architecture.

Converting one network through torch.fx takes milliseconds; a corpus of 100k INRs of
one architecture would take minutes. All such networks share one graph structure, so
one template graph (from ``to_graph``) says where every parameter goes, and a stack of
B networks ({name: [B, *shape]}) becomes B graphs by slicing the stacked tensors into
the template's feature tensors: no Python loop per network.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError
from nngraph.graph import layout
from nngraph.graph.graph import ArchSpec, NeuralGraph, graph_specs


def stacked_features(template: NeuralGraph, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Node and edge features of B networks of the template's architecture.

    Returns x [B, N, d_v] and edge_attr [B, E, d_e], in the template's node/edge order.
    """
    spec = template.spec
    sizes = {t.shape[0] for t in params.values()}
    if len(sizes) != 1:
        raise InputShapeError(f"stacked parameters disagree on the number of networks: {sorted(sizes)}")
    b = sizes.pop()
    x = template.x.unsqueeze(0).expand(b, -1, -1).clone()  # [B, N, d_v]
    n_edges, width = template.edge_attr.shape
    edge_attr = template.edge_attr.new_empty(b, n_edges, width)  # [B, E, d_e]: every row is written below
    constant = torch.ones(n_edges, dtype=torch.bool, device=edge_attr.device)  # edges that carry no parameter (residual, pooling, ...)
    for entry in spec.params:
        if entry.name not in params:
            raise InputShapeError(f"stacked parameters lack {entry.name!r}; they must follow the template's state_dict")
        value = params[entry.name]
        if tuple(value.shape[1:]) != entry.shape:
            raise InputShapeError(
                f"stacked {entry.name!r} has shape {list(value.shape[1:])} per network; the template needs {list(entry.shape)}"
            )
        if entry.source != "node":
            constant[entry.offset : entry.offset + entry.count] = False
    for entry in getattr(spec, "ties", None) or []:  # further uses of tied tensors (ties.py)
        if entry.source != "node":
            constant[entry.offset : entry.offset + entry.count] = False
    layout.write_params(spec, params, x, edge_attr)
    if constant.any():
        edge_attr[:, constant] = template.edge_attr[constant]
    return x, edge_attr


def one_architecture(batch: Batch, who: str) -> tuple[ArchSpec, int, int, int]:
    """(spec, B, nodes per graph, edges per graph) of a batch whose graphs share one layout.

    Raises ``InputShapeError`` naming ``who`` (the caller) for a mixed-architecture batch.
    """
    specs = graph_specs(batch)
    spec, b = specs[0], len(specs)
    n, e = batch.num_nodes // b, batch.num_edges // b
    if n * b != batch.num_nodes or e * b != batch.num_edges or any(s.params != spec.params for s in specs):
        raise InputShapeError(f"{who} needs a batch of networks of one architecture; build one corpus per architecture")
    return spec, b, n, e


def stacked_params(batch: Batch, x: torch.Tensor | None = None,
                   edge_attr: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Inverse of ``graphs_from_params``: {name: [B, *shape]} of a batch of one architecture.

    The batch's graphs must share the first graph's layout (same ``spec``, same node and
    edge counts), as batches of one corpus do; node/edge features are read per graph in
    canonical order, so gradients flow back into them. ``x`` [N, d_v] and ``edge_attr``
    [E, d_e] replace the batch's own features (e.g. per-parameter predictions laid out
    like the graph).
    """
    spec, b, n, e = one_architecture(batch, "stacked_params")
    x = (batch.x if x is None else x).reshape(b, n, -1)
    edge_attr = (batch.edge_attr if edge_attr is None else edge_attr).reshape(b, e, -1)
    return layout.read_params(spec, x, edge_attr)


_COLLATED: OrderedDict = OrderedDict()  # (id(template), B) -> (template, B copies of it collated by PyG)
_COLLATED_SIZE = 16


def _collated_template(template: NeuralGraph, b: int) -> Batch:
    """``Batch.from_data_list([template] * b)``, collated once per (template, B) and reused."""
    key = (id(template), b)
    if key not in _COLLATED or _COLLATED[key][0] is not template:
        _COLLATED[key] = (template, Batch.from_data_list([template] * b))
        if len(_COLLATED) > _COLLATED_SIZE:
            _COLLATED.popitem(last=False)
    _COLLATED.move_to_end(key)
    return _COLLATED[key][1]


def graphs_from_params(template: NeuralGraph, params: dict[str, torch.Tensor]) -> Batch:
    """A PyG batch of B graphs, equal to ``collate([to_graph(m_b) ...])`` for the B networks.

    The structure (edges, kinds, roles, ``spec``) is the same for every network: PyG
    collates B copies of the template once per (template, B); each call takes a shallow
    copy of that batch (its own field store) and puts the stacked features in.
    """
    x, edge_attr = stacked_features(template, params)
    batch = copy.copy(_collated_template(template, x.shape[0]))
    batch.x = x.reshape(-1, x.shape[-1])  # [B*N, d_v]
    batch.edge_attr = edge_attr.reshape(-1, edge_attr.shape[-1])  # [B*E, d_e]
    return batch
