"""Function-preserving permutations of hidden neurons.

Reordering the units of a hidden layer (and the matching rows and columns of the
weights around it) leaves a network's function unchanged. On the graph this is a
relabelling of nodes. Neurons joined by residual, identity or pooling edges carry one
value forward (z_s = z_a + z_b, a copy, a channel's mean or pooling) and must move
together: they form one *tie class*. A grouped convolution (edges only within a group)
joins the input and output channels of each of its groups into one class as well: whole
groups move, consistently in the layer it reads and the layer it writes (a depthwise
conv ties channel c of its input to channel c of its output). Classes that touch the
same layers are permuted among each other, node k of a layer onto node k of the same
layer; classes holding an input or output neuron never move.

A product node (``products.py``) is tied to its two operands: a squeeze-and-excitation
gate's channel moves with the channel it gates. Attention (see ``tokens.py``) ties q_c, k_c
and their product node s_c (a q/k pair), and v_c with the head's output o_c (a v/o pair);
place edges tie a token channel to its copy.
The classes of one attention are permuted head-aware: whole heads (score node a_h with
its pairs) move to other heads, and the q/k pairs and the v/o pairs within each head are
shuffled, each among themselves.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nngraph.errors import InputShapeError, UnsupportedModelError
from nngraph.graph.convert import SUPPORTED, first_unsupported_module, to_graph, to_params
from nngraph.graph.graph import (
    EDGE_ATTN_MIX,
    EDGE_ATTN_SUM,
    EDGE_ATTN_V,
    EDGE_AVGPOOL,
    EDGE_CONV,
    EDGE_CONV_T,
    EDGE_IDENTITY,
    EDGE_MAXPOOL,
    EDGE_MUL_A,
    EDGE_MUL_B,
    EDGE_PLACE,
    EDGE_POOL,
    EDGE_RESIDUAL,
    EDGE_UPSAMPLE_BILINEAR,
    EDGE_UPSAMPLE_NEAREST,
    ROLE_HIDDEN,
    NeuralGraph,
)

_TIE_KINDS = (EDGE_RESIDUAL, EDGE_IDENTITY, EDGE_POOL, EDGE_MAXPOOL, EDGE_AVGPOOL, EDGE_UPSAMPLE_NEAREST,
              EDGE_UPSAMPLE_BILINEAR, EDGE_PLACE, EDGE_MUL_A, EDGE_MUL_B, EDGE_ATTN_V)


def permute_graph(graph: NeuralGraph, seed: int = 0) -> tuple[NeuralGraph, torch.Tensor]:
    """A random function-preserving relabelling of the hidden nodes.

    Returns the permuted graph in the same canonical layout (edge e joins the same node
    ids as before) and ``perm`` [N]: new node k holds what old node ``perm[k]`` held, so
    ``x_new = x[perm]`` and edge (i -> j) of the new graph carries old edge
    (perm[i] -> perm[j]).
    """
    device = graph.edge_index.device
    perm = _tie_class_permutation(graph, torch.Generator().manual_seed(seed), several=True).to(device)
    if not _is_automorphism(graph, perm):  # the positional matching does not fit: move classes of one node per layer only
        perm = _tie_class_permutation(graph, torch.Generator().manual_seed(seed), several=False).to(device)
    n = graph.num_nodes
    src, dst = graph.edge_index
    old_key = src * n + dst
    order = torch.argsort(old_key)
    wanted = perm[src] * n + perm[dst]
    old_edge = order[torch.searchsorted(old_key[order], wanted)]
    if not torch.equal(old_key[old_edge], wanted):
        raise RuntimeError("permutation does not map edges onto edges; the graph is malformed")
    new = graph.clone()
    for key in ("x", "node_act", "node_norm", "node_eps", "node_hw", "node_layer", "node_pos", "node_role"):
        new[key] = graph[key][perm]
    for key in ("edge_attr", "edge_kind", "edge_geom"):
        new[key] = graph[key][old_edge]
    return new, perm


def _is_automorphism(graph: NeuralGraph, perm: torch.Tensor) -> bool:
    """Whether relabelling by ``perm`` maps every edge onto an edge of the same kind and geometry,
    within layers of nodes of the same kind (then the relabelled graph computes the same function)."""
    for key in ("node_layer", "node_act", "node_norm", "node_hw", "node_role"):
        if not torch.equal(graph[key][perm], graph[key]):
            return False
    n = graph.num_nodes
    src, dst = graph.edge_index
    old_key = src * n + dst
    order = torch.argsort(old_key)
    wanted = perm[src] * n + perm[dst]
    found = order[torch.searchsorted(old_key[order], wanted).clamp_max(len(order) - 1)]
    return (torch.equal(old_key[found], wanted) and torch.equal(graph.edge_kind[found], graph.edge_kind)
            and torch.equal(graph.edge_geom[found], graph.edge_geom))


def _group_pairs(graph: NeuralGraph) -> torch.Tensor:
    """Edges [2, E'] of grouped (transposed) convolutions: conv edges into a layer that do not join every
    source to every target (a groups=1 conv joins all of them and ties nothing)."""
    kinds = torch.tensor((EDGE_CONV, EDGE_CONV_T), device=graph.edge_kind.device)
    conv = torch.nonzero(torch.isin(graph.edge_kind, kinds)).squeeze(1)
    if conv.numel() == 0:
        return graph.edge_index[:, :0]
    src, dst = graph.edge_index[:, conv]
    layer = graph.node_layer[dst]
    pairs = []
    for target_layer in layer.unique().tolist():
        mine = layer == target_layer
        s, d = src[mine], dst[mine]
        if len(s) < s.unique().numel() * d.unique().numel():
            pairs.append(torch.stack([s, d]))
    return torch.cat(pairs, dim=1) if pairs else graph.edge_index[:, :0]


def tie_class_of(graph: NeuralGraph, grouped: bool = False) -> list[int]:
    """Representative node of each node's tie class (union-find over residual/identity/pooling edges;
    with ``grouped``, also over the edges of grouped convolutions)."""
    parent = list(range(graph.num_nodes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tie = torch.isin(graph.edge_kind, torch.tensor(_TIE_KINDS, device=graph.edge_kind.device))
    pairs = graph.edge_index[:, tie]
    if grouped:
        pairs = torch.cat([pairs, _group_pairs(graph)], dim=1)
    for a, b in pairs.t().tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(v) for v in range(graph.num_nodes)]


def interchangeable_groups(graph: NeuralGraph, several: bool = False) -> list[list[list[int]]]:
    """Groups of tie classes (grouped convolutions included) that may be permuted among each other.

    Classes with an input/output neuron never move, nor, unless ``several``, those with
    two neurons in one layer (whole groups of a grouped convolution with several channels
    per group); classes with the same layers are interchangeable. Each class is listed as
    its nodes sorted by (layer, id), so class k's node at position l corresponds to class k''s.
    ``permute_graph`` checks that the matching with ``several`` is an automorphism.
    """
    members = _members(graph)
    layer = graph.node_layer.tolist()
    role = graph.node_role.tolist()
    attention = _attention_nodes(graph)
    by_signature: dict[tuple[int, ...], list[list[int]]] = {}
    for nodes in members.values():
        layers = [layer[v] for v in nodes]
        if any(role[v] != ROLE_HIDDEN for v in nodes) or (not several and len(set(layers)) != len(layers)):
            continue
        if attention.intersection(nodes):  # moved head-aware by _attention_permutation
            continue
        by_signature.setdefault(tuple(sorted(layers)), []).append(sorted(nodes, key=lambda v: (layer[v], v)))
    return [classes for classes in by_signature.values() if len(classes) > 1]


def _attention_nodes(graph: NeuralGraph) -> set[int]:
    """Nodes of attention: product nodes summed into scores, the scores, and the heads' outputs."""
    kind = graph.edge_kind
    src, dst = graph.edge_index
    heads = torch.isin(kind, torch.tensor((EDGE_ATTN_SUM, EDGE_ATTN_MIX, EDGE_ATTN_V), device=kind.device))
    return set(dst[heads].tolist()) | set(src[kind == EDGE_ATTN_SUM].tolist())


def _members(graph: NeuralGraph) -> dict[int, list[int]]:
    """Nodes of each tie class (grouped convolutions included), keyed by representative."""
    members: dict[int, list[int]] = {}
    for node, root in enumerate(tie_class_of(graph, grouped=True)):
        members.setdefault(root, []).append(node)
    return members


def attention_heads(graph: NeuralGraph) -> list[list[tuple[int, list[int], list[int]]]]:
    """Per attention (one layer of score nodes): per head (a_h, its product nodes s_c, its output nodes o_c)."""
    src, dst = graph.edge_index.tolist()
    kind = graph.edge_kind.tolist()
    qk: dict[int, list[int]] = {}
    vo: dict[int, list[int]] = {}
    for s, d, k in zip(src, dst, kind):
        if k == EDGE_ATTN_SUM:
            qk.setdefault(d, []).append(s)
        elif k == EDGE_ATTN_MIX:
            vo.setdefault(s, []).append(d)
    layer = graph.node_layer.tolist()
    by_layer: dict[int, list[tuple[int, list[int], list[int]]]] = {}
    for a in sorted(qk):
        by_layer.setdefault(layer[a], []).append((a, sorted(qk[a]), sorted(vo.get(a, []))))
    return list(by_layer.values())


def _attention_permutation(graph: NeuralGraph, perm: torch.Tensor, generator: torch.Generator) -> None:
    """Head-aware moves (in place on ``perm``): heads onto heads, pairs within each head shuffled."""
    attentions = attention_heads(graph)
    if not attentions:
        return
    members = _members(graph)
    root = {v: r for r, nodes in members.items() for v in nodes}
    layer = graph.node_layer.tolist()

    def move(target: int, source: int) -> None:  # the class of node ``target`` takes the class of ``source``
        t = sorted(members[root[target]], key=lambda v: (layer[v], v))
        s = sorted(members[root[source]], key=lambda v: (layer[v], v))
        perm[torch.tensor(t, device=perm.device)] = torch.tensor(s, device=perm.device)

    for heads in attentions:
        order = torch.randperm(len(heads), generator=generator, device=generator.device).tolist()
        for (a, qk, vo), h in zip(heads, order):
            a_src, qk_src, vo_src = heads[h]  # every head of one attention has the same sizes
            move(a, a_src)
            for c, c_src in enumerate(torch.randperm(len(qk), generator=generator, device=generator.device).tolist()):
                move(qk[c], qk_src[c_src])
            for c, c_src in enumerate(torch.randperm(len(vo), generator=generator, device=generator.device).tolist()):
                move(vo[c], vo_src[c_src])


def _tie_class_permutation(graph: NeuralGraph, generator: torch.Generator, several: bool) -> torch.Tensor:
    perm = torch.arange(graph.num_nodes)
    for classes in interchangeable_groups(graph, several):
        shuffled = torch.randperm(len(classes), generator=generator).tolist()
        for target, source in zip(classes, (classes[s] for s in shuffled)):
            perm[torch.tensor(target)] = torch.tensor(source)
    _attention_permutation(graph, perm, generator)
    return perm


def permute_neurons(model: nn.Module, seed: int = 0, example_input: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with hidden neurons/channels randomly reordered; same function.

    Residual-tied channels share one permutation and norm parameters move with their
    channels; inputs and outputs never move. ``example_input`` is needed only when the
    input size cannot be guessed from the first layer (a flatten into a Linear).
    """
    guessed = example_input is None
    if guessed:
        example_input = guess_input(model)
    try:
        graph = to_graph(model, example_input)
    except InputShapeError:
        culprit = first_unsupported_module(model) if guessed else None
        if culprit is None:
            raise
        raise UnsupportedModelError(f"{culprit} is not supported; nngraph converts: {SUPPORTED}") from None
    permuted, _ = permute_graph(graph, seed)
    result = copy.deepcopy(model)
    result.load_state_dict(to_params(permuted))
    return result


def guess_input(model: nn.Module) -> torch.Tensor:
    """A [1, F] or [1, C, 32, 32] zero input read off the model's first Linear / Conv2d."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.zeros(1, module.in_features)
        if isinstance(module, nn.Conv2d):
            return torch.zeros(1, module.in_channels, 32, 32)
        if isinstance(module, nn.Conv1d):
            return torch.zeros(1, module.in_channels, 32)
    raise InputShapeError(f"cannot guess the input of {type(model).__name__}; pass example_input")
