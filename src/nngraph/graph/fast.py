"""The fast path for corpora of one architecture.

Converting one network through torch.fx takes milliseconds; a corpus of 100k INRs of
one architecture would take minutes. All such networks share one graph structure, so
one template graph (from ``to_graph``) says where every parameter goes, and a stack of
B networks ({name: [B, *shape]}) becomes B graphs by slicing the stacked tensors into
the template's feature tensors: no Python loop per network.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError
from nngraph.graph.graph import ArchSpec, NeuralGraph, kernel_hw


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
    k = spec.k_max
    # Parameter edges are written below; a weight alone fills its row only when d_e == 1.
    edge_attr = template.edge_attr.new_empty(b, n_edges, width) if width == 1 else template.edge_attr.new_zeros(
        b, n_edges, width
    )  # [B, E, d_e]
    constant = torch.ones(n_edges, dtype=torch.bool)  # edges that carry no parameter (residual, pooling, ...)
    for entry in spec.params:
        if entry.name not in params:
            raise InputShapeError(f"stacked parameters lack {entry.name!r}; they must follow the template's state_dict")
        value = params[entry.name]
        if tuple(value.shape[1:]) != entry.shape:
            raise InputShapeError(
                f"stacked {entry.name!r} has shape {list(value.shape[1:])} per network; the template needs {list(entry.shape)}"
            )
        rows = slice(entry.offset, entry.offset + entry.count)
        if entry.source != "node":
            constant[rows] = False
        if entry.source == "node":
            x[:, rows, entry.channel] = value  # a shared [B, 1] value broadcasts over its nodes
        elif entry.source == "flat":
            hw = entry.shape[1] // entry.sources
            edge_attr[:, rows, :hw] = value.reshape(b, entry.count, hw)
        else:
            kh, kw = kernel_hw(entry.shape)
            top, left = (k - kh) // 2, (k - kw) // 2
            window = edge_attr[:, rows, : k * k].view(b, entry.count, k, k)
            window[:, :, top : top + kh, left : left + kw] = value.reshape(b, entry.count, kh, kw)
    if constant.any():
        edge_attr[:, constant] = template.edge_attr[constant]
    return x, edge_attr


def one_architecture(batch: Batch, who: str) -> tuple[ArchSpec, int, int, int]:
    """(spec, B, nodes per graph, edges per graph) of a batch whose graphs share one layout.

    Raises ``InputShapeError`` naming ``who`` (the caller) for a mixed-architecture batch.
    """
    specs = batch.spec if isinstance(batch.spec, list) else [batch.spec]
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
    k = spec.k_max
    out: dict[str, torch.Tensor] = {}
    for entry in spec.params:
        rows = slice(entry.offset, entry.offset + entry.count)
        if entry.source == "node":
            out[entry.name] = x[:, rows, entry.channel][:, : 1 if entry.shared else entry.count]
        elif entry.source == "flat":
            hw = entry.shape[1] // entry.sources
            out[entry.name] = edge_attr[:, rows, :hw].reshape(b, *entry.shape)
        else:
            kh, kw = kernel_hw(entry.shape)
            top, left = (k - kh) // 2, (k - kw) // 2
            window = edge_attr[:, rows, : k * k].reshape(b, entry.count, k, k)
            out[entry.name] = window[:, :, top : top + kh, left : left + kw].reshape(b, *entry.shape)
    return out


def graphs_from_params(template: NeuralGraph, params: dict[str, torch.Tensor]) -> Batch:
    """A PyG batch of B graphs, equal to ``collate([to_graph(m_b) ...])`` for the B networks."""
    x, edge_attr = stacked_features(template, params)
    b, n, _ = x.shape
    e = edge_attr.shape[1]
    offsets = torch.arange(b) * n  # [B]
    edge_index = (template.edge_index.unsqueeze(1) + offsets.view(1, b, 1)).reshape(2, b * e)
    fields = {
        "x": x.reshape(b * n, -1),
        "edge_index": edge_index,
        "edge_attr": edge_attr.reshape(b * e, -1),
        "batch": torch.arange(b).repeat_interleave(n),
        "ptr": torch.arange(b + 1) * n,
    }
    for key in ("edge_kind", "edge_geom"):
        t = template[key]
        fields[key] = t.unsqueeze(0).expand(b, *t.shape).reshape(b * e, *t.shape[1:])
    for key in ("node_layer", "node_pos", "node_act", "node_norm", "node_eps", "node_role", "node_hw"):
        t = template[key]
        fields[key] = t.unsqueeze(0).expand(b, *t.shape).reshape(b * n, *t.shape[1:])
    batch = Batch(_base_cls=NeuralGraph, **fields)
    batch.spec = [template.spec] * b
    batch._num_graphs = b
    batch._slice_dict = {key: _slices(key, b, n, e) for key in fields if key not in ("batch", "ptr")}
    batch._slice_dict["spec"] = torch.arange(b + 1)
    batch._inc_dict = {key: (offsets if key == "edge_index" else torch.zeros(b, dtype=torch.long)) for key in batch._slice_dict}
    batch._inc_dict["spec"] = None
    return batch


def _slices(key: str, b: int, n: int, e: int) -> torch.Tensor:
    per_graph = e if key.startswith("edge") else n
    return torch.arange(b + 1) * per_graph
