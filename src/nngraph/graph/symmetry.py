"""Automorphisms of a NeuralGraph: which hidden neurons look alike, and checking a relabelling.

A relabelling ``perm`` of the nodes (new node k holds old node perm[k]) keeps a network's
function when it maps every node onto a node of the same layer, activation, norm, size
and role, and every edge onto an edge of the same kind and geometry (its *label*); the
weights then move with their edges. This module finds candidates and checks them,
without touching ``edge_attr``, in time linear in the number of weight tensors and
loose edges rather than in E (a full-width ResNet-18 has 1.9 M edges):

- **Blocks.** The edges of a weight tensor whose rows all read the same sources (a Linear,
  an ungrouped convolution, a flatten-Linear, an embedding) join every node of a source
  list S to every node of a target list T: edge ``first + j * |S| + i`` is S[i] -> T[j].
  A relabelling maps the block onto itself iff it maps S onto S and T onto T, and then the
  edge S[i] -> T[j] goes to S[i'] -> T[j'] with i', j' the places of perm's nodes. All
  other edges (residual, identity, pooling, constants, products, attention, a grouped
  convolution's) are *loose* and handled one by one.
- **Colours** (``node_colours``): colour refinement (1-WL) to a fixed point, started from
  (layer, activation, norm, H x W, role; the node itself for inputs and outputs) and refined
  by the multisets of (colour, label) of a node's producers and of its consumers. Nodes of
  one colour lie in one layer and read from, and feed, alike: ``fa(h[:, :8])`` and
  ``fb(h[:, 8:])`` give h two colours, a head reading ``h[:, :8]`` too.
- **Checking** (``edge_map``): exact; block edges by position, loose edges by sorted
  (source, target) keys among the loose edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nngraph.graph import ties
from nngraph.graph.graph import ROLE_HIDDEN, NeuralGraph, edge_geometry

_NODE_KEYS = ("node_layer", "node_act", "node_norm", "node_hw", "node_role")
_WEIGHT_SOURCES = ("kernel", "flat", "kernel_t")


@dataclass
class Blocks:
    """A graph's edges as dense blocks and loose edges (see the module docstring).

    ``dense``: per block (first edge, label, S [in] node ids, T [out] node ids);
    ``loose``: [E_l] edge ids (ascending) and ``loose_label`` [E_l] their labels.
    """

    dense: list[tuple[int, int, torch.Tensor, torch.Tensor]]
    loose: torch.Tensor
    loose_label: torch.Tensor


def edge_blocks(graph: NeuralGraph) -> Blocks:
    """Split the edges into dense blocks (weight tensors whose first and last rows read the
    same sources; the builder writes all rows of an ungrouped layer alike, and the groups of a
    grouped one read disjoint sources) and loose edges; give each distinct (kind, geometry) a label."""
    src, dst = graph.edge_index
    device = src.device
    e = src.numel()
    in_block = torch.zeros(e, dtype=torch.bool, device=device)
    found = []
    for entry in [*graph.spec.params, *ties.spec_ties(graph.spec)]:
        if entry.source not in _WEIGHT_SOURCES:
            continue
        first, count, width = entry.offset, entry.count, entry.sources
        sources = src[first:first + width]
        if torch.equal(sources, src[first + count - width:first + count]) and len(sources.unique()) == width:
            found.append((first, src[first:first + width], dst[first:first + count:width]))
            in_block[first:first + count] = True
    loose = torch.nonzero(~in_block).squeeze(1)
    firsts = torch.tensor([f for f, _, _ in found], dtype=torch.long, device=device)
    ids = torch.cat([firsts, loose])
    rows = torch.cat([graph.edge_kind[ids, None], edge_geometry(graph, ids)], dim=1)
    label = torch.unique(rows, dim=0, return_inverse=True)[1] if len(ids) else ids
    dense = [(f, int(label[k]), s, t) for k, (f, s, t) in enumerate(found)]
    return Blocks(dense, loose, label[len(found):])


def node_colours(graph: NeuralGraph, blocks: Blocks) -> torch.Tensor:
    """[N] colour refinement (1-WL) of the nodes to a fixed point.

    colour_0(v) = (layer, activation, norm, H x W, role; the node itself for inputs and outputs)
    colour_{r+1}(v) = (colour_r(v), {{(colour_r(u), label(u->v))}}_u, {{(colour_r(w), label(v->w))}}_w)

    A multiset is a sum of random 40-bit codes (colour code XOR label code; sums stay exact in
    int64); a dense block adds the sum over its sources to every target, and the sum over its
    targets to every source. A hash collision could only merge two colours, which
    ``edge_map`` catches. The partition only splits, so it is stable once its count stops growing.
    """
    n, device = graph.num_nodes, graph.edge_index.device
    ids = torch.arange(n, device=device)
    fixed = graph.node_role != ROLE_HIDDEN
    start = torch.stack([graph.node_layer, graph.node_act, graph.node_norm, graph.node_hw[:, 0], graph.node_hw[:, 1],
                         graph.node_role, torch.where(fixed, ids, -1)], dim=1)
    colour = torch.unique(start, dim=0, return_inverse=True)[1]
    count = int(colour.max()) + 1 if n else 0
    generator = torch.Generator().manual_seed(0)
    loose_max = [int(blocks.loose_label.max())] if blocks.loose_label.numel() else []
    labels = 1 + max([lab for _, lab, _, _ in blocks.dense] + loose_max + [0])

    def codes(size: int) -> torch.Tensor:
        return torch.randint(0, 2**40, (size,), generator=generator, device=torch.device("cpu")).to(device)

    in_code, out_code = codes(labels), codes(labels)
    src, dst = graph.edge_index[:, blocks.loose]
    loose_in, loose_out = in_code[blocks.loose_label], out_code[blocks.loose_label]
    while True:
        from_src, from_dst = codes(count), codes(count)
        in_hash = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, dst, from_src[colour[src]] ^ loose_in)
        out_hash = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, src, from_dst[colour[dst]] ^ loose_out)
        for _, label, s, t in blocks.dense:
            in_hash[t] += (from_src[colour[s]] ^ in_code[label]).sum()
            out_hash[s] += (from_dst[colour[t]] ^ out_code[label]).sum()
        refined = torch.unique(torch.stack([colour, in_hash, out_hash], dim=1), dim=0, return_inverse=True)[1]
        refined_count = int(refined.max()) + 1 if n else 0
        if refined_count == count:
            return colour
        colour, count = refined, refined_count


@dataclass
class EdgeMap:
    """Where each new edge's weight comes from under a relabelling (see ``edge_map``).

    ``dense``: per block (first edge, j' [out], i' [in]): new edge first + j * in + i is old
    edge first + j'[j] * in + i'[i]; ``loose_old`` [E_l]: the old edge of each loose edge.
    """

    blocks: Blocks
    dense: list[tuple[int, torch.Tensor, torch.Tensor]]
    loose_old: torch.Tensor

    def full(self, num_edges: int) -> torch.Tensor:
        """old_edge [E]: new edge e carries old edge old_edge[e]."""
        old = torch.empty(num_edges, dtype=torch.long, device=self.loose_old.device)
        old[self.blocks.loose] = self.loose_old
        for first, j, i in self.dense:
            old[first:first + len(j) * len(i)] = (first + j[:, None] * len(i) + i[None, :]).reshape(-1)
        return old

    def rows(self, first: int, count: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """For the weight tensor of edges [first, first + count): (j', i') of its dense block, or
        the old edge of each of its edges minus ``first``."""
        for start, j, i in self.dense:
            if start == first:
                return j, i
        loose = self.blocks.loose
        lo, hi = torch.searchsorted(loose, torch.tensor([first, first + count], device=loose.device)).tolist()
        return self.loose_old[lo:hi] - first


def edge_map(graph: NeuralGraph, perm: torch.Tensor, blocks: Blocks) -> EdgeMap | None:
    """The ``EdgeMap`` of relabelling ``perm``, or None when it is not an automorphism: a node
    onto a node of another layer, activation, norm, size or role, a block not onto itself, or
    a loose edge onto a non-edge (among the loose edges) or one of another label."""
    for key in _NODE_KEYS:
        if not torch.equal(graph[key][perm], graph[key]):
            return None
    n, device = graph.num_nodes, graph.edge_index.device
    place = torch.full((n,), -1, dtype=torch.long, device=device)
    dense = []
    for first, _, s, t in blocks.dense:
        place[s] = torch.arange(len(s), device=device)
        i = place[perm[s]]
        place[s] = -1
        place[t] = torch.arange(len(t), device=device)
        j = place[perm[t]]
        place[t] = -1
        if bool((i < 0).any()) or bool((j < 0).any()):
            return None
        dense.append((first, j, i))
    src, dst = graph.edge_index[:, blocks.loose]
    key = _occurrence_keys(src * n + dst)
    order = torch.argsort(key)
    wanted = _occurrence_keys(perm[src] * n + perm[dst])  # a bijection keeps the copies' count and order
    found = order[torch.searchsorted(key[order], wanted).clamp_max(max(len(order) - 1, 0))] if len(order) else order
    if not (torch.equal(key[found], wanted) and torch.equal(blocks.loose_label[found], blocks.loose_label)):
        return None
    if not ties.consistent(graph, perm):  # every use of a tied tensor permuted alike
        return None
    return EdgeMap(blocks, dense, blocks.loose[found])


def _occurrence_keys(key: torch.Tensor) -> torch.Tensor:
    """(key, k) as one int64 for the k-th edge (in id order) of each key: edges that join the
    same two nodes (``x + x``, ``torch.cat([h, h])`` into a Linear) are matched copy to copy."""
    if key.numel() == 0:
        return key
    order = torch.argsort(key, stable=True)
    ordered = key[order]
    rank = torch.empty_like(key)
    rank[order] = torch.arange(len(key), device=key.device) - torch.searchsorted(ordered, ordered)
    return key * (int(rank.max()) + 1) + rank
