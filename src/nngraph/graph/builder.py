"""GraphBuilder: accumulates nodes, edges and parameter locations while a network is traced.

The op rules in ``ops.py`` call it; ``finish`` lays the edge weights out into the
centre-padded k_max x k_max window (see ``graph.py``) and returns a NeuralGraph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nngraph.graph import layout
from nngraph.graph.graph import (
    EDGE_CONST,
    EDGE_FLATTEN,
    FLAT_KINDS,
    GEOM_DIM,
    GEOM_ID_DTYPE,
    NEUTRAL_NODE,
    NO_GEOM,
    NODE_DIM,
    ROLE_HIDDEN,
    ArchSpec,
    NeuralGraph,
    ParamEntry,
)

# Pipeline slots of a node, in the order they are applied: z + offset -> norm -> act.
SLOTS = ("offset", "norm", "act")


@dataclass
class Value:
    """The graph-side view of one traced tensor.

    ``kind``: ``vector`` ([P, n] units), ``map`` ([P, C, H, W] channels) or ``flat`` (a
    flattened C x H x W map, only a Linear may read it). ``scale`` is set on ``w0 * z``
    waiting for ``sin``. ``root`` names the fx node whose node set this value aliases.
    """

    nodes: list[int]
    kind: str
    hw: tuple[int, int]
    root: str
    scale: float | None = None
    heads: int = 0


@dataclass
class _EdgeChunk:
    src: torch.Tensor  # [E] long
    dst: torch.Tensor  # [E] long
    weights: torch.Tensor  # [E, kh, kw] (window-laid) or [E, H*W] (flat)
    kind: int
    geom: tuple[int, ...]


class GraphBuilder:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.node_layer: list[int] = []
        self.node_act: list[int] = []
        self.node_norm: list[int] = []
        self.node_eps: list[float] = []
        self.node_role: list[int] = []
        self.node_hw: list[tuple[int, int]] = []
        self.features: list[list[float]] = []
        self.layer_slots: list[set[str]] = []  # filled pipeline slots per layer
        self.layer_size: list[int] = []
        self.chunks: list[_EdgeChunk] = []
        self.num_edges = 0
        self.params: list[ParamEntry] = []

    # ---- nodes -------------------------------------------------------------------
    def new_layer(self, n: int, hw: tuple[int, int], role: int = ROLE_HIDDEN) -> list[int]:
        layer = len(self.layer_size)
        start = len(self.node_layer)
        self.layer_size.append(n)
        self.layer_slots.append(set())
        for _ in range(n):
            self.node_layer.append(layer)
            self.node_act.append(0)
            self.node_norm.append(0)
            self.node_eps.append(0.0)
            self.node_role.append(role)
            self.node_hw.append(hw)
            self.features.append(list(NEUTRAL_NODE))
        return list(range(start, start + n))

    def set_feature(self, nodes: list[int], channel: int, values: torch.Tensor | float) -> None:
        vals = values.detach().reshape(-1).tolist() if isinstance(values, torch.Tensor) else [values] * len(nodes)
        for node, value in zip(nodes, vals, strict=True):
            self.features[node][channel] = value

    def record_node_param(self, name: str, nodes: list[int], channel: int, tensor: torch.Tensor) -> None:
        """A per-neuron tensor stored in feature ``channel`` of consecutive ``nodes``."""
        self.set_feature(nodes, channel, tensor)
        self.params.append(ParamEntry(name, tuple(tensor.shape), "node", nodes[0], channel=channel))

    def record_shared_param(self, name: str, nodes: list[int], channel: int, tensor: torch.Tensor) -> None:
        """A one-element tensor [1] held by every node of ``nodes`` (consecutive) in feature ``channel``."""
        self.set_feature(nodes, channel, float(tensor.detach().reshape(())))
        self.params.append(ParamEntry(name, tuple(tensor.shape), "node", nodes[0], channel=channel, shared=len(nodes)))

    def free_slots(self, nodes: list[int], slot: str) -> bool:
        """Whether ``nodes`` are one whole hidden layer whose ``slot`` and later ones are free."""
        layer = self.node_layer[nodes[0]]
        if layer == 0 or len(nodes) != self.layer_size[layer]:
            return False
        if any(self.node_layer[n] != layer for n in nodes) or len(set(nodes)) != len(nodes):
            return False
        later = SLOTS[SLOTS.index(slot):]
        return not (self.layer_slots[layer] & set(later))

    def fill_slot(self, nodes: list[int], slot: str) -> None:
        self.layer_slots[self.node_layer[nodes[0]]].add(slot)

    # ---- edges -------------------------------------------------------------------
    def dense_edges(self, src: list[int], dst: list[int], weights: torch.Tensor, kind: int,
                    geom: tuple[int, ...] = NO_GEOM, groups: int = 1) -> int:
        """Edges i -> j for every (j, i), j-major; ``weights`` [out, in / groups, *w]. Returns the first edge id.

        With ``groups`` > 1 (grouped convolution), output j of group g = j // (out / groups)
        reads only the sources of that group: src[g * in_g + i] for i < in_g.
        """
        n_out, n_in = weights.shape[:2]
        if groups == 1:
            src_t = torch.tensor(src, dtype=torch.long).repeat(n_out)  # [out*in]
        else:
            src_all = torch.tensor(src, dtype=torch.long)
            group = torch.arange(n_out, device=src_all.device) // (n_out // groups)  # [out]
            local = group[:, None] * n_in + torch.arange(n_in, device=src_all.device)  # [out, in_g] positions in src
            src_t = src_all[local.reshape(-1)]  # [out*in_g]
        dst_t = torch.tensor(dst, dtype=torch.long).repeat_interleave(n_in)  # [out*in]
        flat = weights.detach().reshape(n_out * n_in, *weights.shape[2:])
        if kind != EDGE_FLATTEN and flat.dim() == 1:
            flat = flat.reshape(-1, 1, 1)
        return self._add(_EdgeChunk(src_t, dst_t, flat.to(self.dtype), kind, geom))

    def pair_edges(self, src: list[int], dst: list[int], kind: int, geom: tuple[int, ...] = NO_GEOM,
                   weights: torch.Tensor | None = None) -> int:
        """Edges src[k] -> dst[k] of weight 1 (residual, identity, pooling), or ``weights[k]`` (layer scale)."""
        values = torch.ones(len(src), 1, 1, dtype=self.dtype) if weights is None else \
            weights.detach().reshape(len(src), 1, 1).to(self.dtype)
        return self._add(_EdgeChunk(torch.tensor(src), torch.tensor(dst), values, kind, geom))

    def const_edges(self, nodes: list[int], values: torch.Tensor, geom: tuple[int, ...]) -> int:
        """Self-loops j -> j carrying values[k] [L] for nodes[k] (a per-token constant, see graph.py)."""
        idx = torch.tensor(nodes, dtype=torch.long)
        return self._add(_EdgeChunk(idx, idx.clone(), values.detach().to(self.dtype), EDGE_CONST, geom))

    def flat_edges(self, src: list[int], dst: list[int], values: torch.Tensor, kind: int,
                   geom: tuple[int, ...]) -> int:
        """Edges src[k] -> dst[k] of a flat kind (``FLAT_KINDS``) carrying values[k] [L] in their first L entries."""
        return self._add(_EdgeChunk(torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long),
                                    values.detach().to(self.dtype), kind, geom))

    def _add(self, chunk: _EdgeChunk) -> int:
        first = self.num_edges
        self.chunks.append(chunk)
        self.num_edges += len(chunk.src)
        return first

    # ---- result ------------------------------------------------------------------
    def finish(self, spec: ArchSpec, k_max: int | None = None, weights: bool = True) -> NeuralGraph:
        """The NeuralGraph; with ``weights`` False its edge_attr is left empty ([E, 0]): the structure
        and node features only, all a permutation needs (a full-width ResNet's edge_attr is ~370 MB)."""
        window = [c for c in self.chunks if c.kind not in FLAT_KINDS]
        flat = [c for c in self.chunks if c.kind in FLAT_KINDS]
        needed = max([max(c.weights.shape[1:]) for c in window] + [1])
        needed += 1 - needed % 2  # odd, so that the window has one centre
        if k_max is None:
            k_max = needed
        elif k_max < needed:
            raise ValueError(f"k_max={k_max} is smaller than the largest kernel ({needed})")
        elif k_max % 2 == 0:
            raise ValueError(f"k_max={k_max} must be odd (the window needs a centre)")
        width = max([k_max * k_max] + [c.weights.shape[1] for c in flat]) if weights else 0
        # Written chunk by chunk into preallocated tensors, each chunk dropped once written (GPT-2 small
        # has 163 M edges: the chunks and the graph must not be held twice).
        device = self.chunks[0].src.device if self.chunks else torch.device("cpu")
        weights_device = self.chunks[0].weights.device if self.chunks else device
        edge_index = torch.empty(2, self.num_edges, dtype=torch.long, device=device)
        edge_attr = torch.empty(self.num_edges, width, dtype=self.dtype, device=weights_device)  # rows written below
        edge_kind = torch.empty(self.num_edges, dtype=torch.long, device=device)
        rows_of = sorted({c.geom for c in self.chunks} | {NO_GEOM})  # distinct and sorted, as geometry_table's
        row_id = {row: i for i, row in enumerate(rows_of)}
        edge_geom_id = torch.empty(self.num_edges, dtype=GEOM_ID_DTYPE, device=device)
        start = 0
        chunks, self.chunks = self.chunks, []
        while chunks:
            chunk = chunks.pop(0)
            rows = slice(start, start + len(chunk.src))
            edge_index[0, rows], edge_index[1, rows] = chunk.src, chunk.dst
            if weights and chunk.kind in FLAT_KINDS:
                edge_attr[rows] = 0
                edge_attr[rows, :chunk.weights.shape[1]] = chunk.weights
            elif weights:
                edge_attr[rows] = 0
                kh, kw = chunk.weights.shape[1:]
                top, left = layout.offsets(k_max, kh, kw)  # the layout of layout.encode_kernels, in place
                edge_attr[rows, :k_max * k_max].view(-1, k_max, k_max)[:, top:top + kh, left:left + kw] = chunk.weights
            edge_kind[rows] = chunk.kind
            edge_geom_id[rows] = row_id[chunk.geom]
            start = rows.stop
        spec.k_max = k_max
        return NeuralGraph(
            x=torch.tensor(self.features, dtype=self.dtype).reshape(-1, NODE_DIM),
            edge_index=edge_index,
            edge_attr=edge_attr,
            edge_kind=edge_kind,
            geom_table=torch.tensor(rows_of, dtype=torch.long, device=device).reshape(-1, GEOM_DIM),
            edge_geom_id=edge_geom_id,
            node_layer=torch.tensor(self.node_layer, dtype=torch.long),
            node_pos=torch.zeros(len(self.node_layer), dtype=torch.long),
            node_act=torch.tensor(self.node_act, dtype=torch.long),
            node_norm=torch.tensor(self.node_norm, dtype=torch.long),
            node_eps=torch.tensor(self.node_eps, dtype=self.dtype),
            node_role=torch.tensor(self.node_role, dtype=torch.long),
            node_hw=torch.tensor(self.node_hw, dtype=torch.long).reshape(-1, 2),
            spec=spec,
        )
