"""Tied weights: one parameter tensor used in several places of a network.

GPT-2's LM head reads the token embedding (``lm_head.weight`` is ``transformer.wte.weight``),
a module called twice (``fc(relu(fc(x)))``) reuses its weight, a recurrent network uses its
weights at every step. Each *use* becomes its own edges (or node features), laid out as any
parameter is (``graph.ParamEntry``). The first use in state_dict order is the *primary*
(``spec.params``); every other use is a *tie* (``spec.ties``): a ParamEntry whose ``tie`` names
the primary's state_dict entry and whose ``name`` is the state_dict name it was used under
(the primary's own, or an alias such as ``lm_head.weight``).

- ``to_params`` reads each tensor once, from its primary, and gives it back under every name
  it had (``aliases``); ``layout.write_params`` writes it into every use.
- Permutations: a tensor of shape [n_0, n_1, ...] indexes, along each axis k, a list of nodes
  in every use (``axis_nodes``: the targets and sources of a weight, the nodes of a bias). A
  relabelling keeps a tie exactly when it permutes axis k alike in every use, i.e. when it maps
  node u_k[a] of use u to u_k[b] iff it maps v_k[a] of use v to v_k[b]. ``node_pairs`` joins
  u_k[a] with v_k[a] into one tie class of ``permute.tie_class_of`` (classes move as a whole), and
  an axis with nodes in one use but not in another is pinned (joined with an input node, which
  never moves). ``consistent`` checks a relabelling exactly (``symmetry.edge_map`` calls it).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph.graph import ROLE_INPUT, ArchSpec, NeuralGraph, ParamEntry


def separate(entries: list[ParamEntry], model: nn.Module, state_order: list[str],
             name: str) -> tuple[list[ParamEntry], list[ParamEntry]]:
    """(primaries, ties) of the recorded parameter uses: uses of one tensor (one state_dict name,
    or several names of one tensor object) after the first in state order become ties."""
    tensor_of = {path: id(t) for path, t in [*model.named_parameters(remove_duplicate=False),
                                            *model.named_buffers(remove_duplicate=False)]}
    rank = {key: k for k, key in enumerate(state_order)}
    order = sorted(range(len(entries)), key=lambda k: (rank.get(entries[k].name, len(rank)), k))
    primary: dict[object, ParamEntry] = {}
    primaries, ties = [], []
    for k in order:
        entry = entries[k]
        key = tensor_of.get(entry.name, entry.name)
        if key not in primary:
            primary[key] = entry
            primaries.append(entry)
            continue
        first = primary[key]
        for use in (first, entry):
            if use.source in ("kernel", "kernel_t") and _grouped(use):
                raise UnsupportedModelError(
                    f"{name}: {use.name} is a grouped convolution's weight used in several places; tied grouped "
                    "weights are not supported: give each use its own copy")
        if first.source == "node" and (first.shared or entry.shared) and first.shared != entry.shared:
            raise UnsupportedModelError(f"{name}: {entry.name} is used both per neuron and as one shared value; "
                                        "give each use its own copy")
        ties.append(dataclasses.replace(entry, tie=first.name))
    return primaries, ties


def spec_ties(spec: ArchSpec) -> list[ParamEntry]:
    """The ties of a spec (an ArchSpec saved before ties existed has none)."""
    return getattr(spec, "ties", None) or []


def aliases(spec: ArchSpec) -> dict[str, str]:
    """{state_dict name: primary name} of the names that hold a tied tensor but are no primary."""
    own = {p.name for p in spec.params}
    return {t.name: t.tie for t in spec_ties(spec) if t.name not in own}


def _grouped(entry: ParamEntry) -> bool:
    """Whether a kernel / kernel_t weight belongs to a grouped (transposed) convolution."""
    inputs = entry.shape[0] if entry.source == "kernel_t" else None
    return inputs != entry.sources if inputs is not None else False


def axis_nodes(entry: ParamEntry, edge_index: torch.Tensor) -> list[torch.Tensor | None]:
    """Per axis of the tensor, the node that each index along it belongs to in this use ([n_k]),
    or None where the axis indexes no node (a kernel's positions, a token constant's tokens)."""
    src, dst = edge_index
    first, count, width = entry.offset, entry.count, entry.sources
    shape = entry.shape
    none = [None] * len(shape)
    device = edge_index.device
    if entry.source == "node":
        return none if entry.shared else [torch.arange(first, first + count, device=device)]
    if entry.source == "kernel":
        grouped = not torch.equal(src[first:first + width], src[first + count - width:first + count])
        return [dst[first:first + count:width], None if grouped else src[first:first + width], *none[2:]]
    if entry.source == "flat":
        return [dst[first:first + count:width], src[first:first + width].repeat_interleave(shape[1] // width)]
    if entry.source == "kernel_t":  # edge first + j * in + i holds W[i, j]
        return [src[first:first + width], dst[first:first + count:width], *none[2:]]
    if entry.source == "tokens":  # [1, L, D]: edge first + j is node j's self-loop
        return [None, None, dst[first:first + shape[-1]]]
    if entry.source == "diag":  # C values, one per identity edge into node j
        axis = next((k for k, n in enumerate(shape) if n == count), None)
        return [dst[first:first + count] if k == axis else None for k in range(len(shape))]
    return none


def _pairs_of(graph: NeuralGraph) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """(nodes of the primary, nodes of the tie) per axis of every tie."""
    spec = getattr(graph, "spec", None)
    if spec is None or isinstance(spec, list):
        specs = spec or []
        if len(specs) > 1:
            raise ValueError("ties are read per graph, not from a batch")
        spec = specs[0] if specs else None
    if spec is None:
        return []
    by_name = {p.name: p for p in spec.params}
    out = []
    for tie in spec_ties(spec):
        ours = axis_nodes(tie, graph.edge_index)
        theirs = axis_nodes(by_name[tie.tie], graph.edge_index)
        out.extend(zip(theirs, ours))
    return out


def node_pairs(graph: NeuralGraph) -> torch.Tensor:
    """[2, P] node pairs that must share one tie class so that every tie is permuted alike
    (unique pairs; an axis with nodes in only one use is paired with an input node: pinned)."""
    device = graph.edge_index.device
    found = []
    inputs = torch.nonzero(graph.node_role == ROLE_INPUT).squeeze(1)
    for a, b in _pairs_of(graph):
        if a is not None and b is not None:
            found.append(torch.stack([a, b]))
        elif (a if a is not None else b) is not None and len(inputs):
            nodes = a if a is not None else b
            found.append(torch.stack([nodes, inputs[:1].expand_as(nodes)]))
    if not found:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    return torch.unique(torch.cat(found, dim=1), dim=1)


def consistent(graph: NeuralGraph, perm: torch.Tensor) -> bool:
    """Whether relabelling ``perm`` (new node k holds old node perm[k]) permutes every axis of every
    tied tensor alike in all its uses (and leaves pinned axes in place)."""
    n = graph.num_nodes
    for a, b in _pairs_of(graph):
        if a is None and b is None:
            continue
        if a is None or b is None:
            nodes = a if a is not None else b
            if not torch.equal(perm[nodes], nodes):
                return False
            continue
        if not torch.equal(_index_map(a, perm, n), _index_map(b, perm, n)):
            return False
    return True


def _index_map(nodes: torch.Tensor, perm: torch.Tensor, n: int) -> torch.Tensor:
    """[n_k] the index along the axis whose node perm[nodes[k]] is (the first one; -1 if it leaves the axis)."""
    place = torch.full((n,), len(nodes), dtype=torch.long, device=nodes.device)
    place.scatter_reduce_(0, nodes, torch.arange(len(nodes), device=nodes.device), "amin")
    found = place[perm[nodes]]
    return torch.where(found == len(nodes), -1, found)
