"""Function-preserving permutations of hidden neurons.

Reordering the units of a hidden layer (and the matching rows and columns of the
weights around it) leaves a network's function unchanged. On the graph this is a
relabelling of nodes. Neurons joined by residual, identity or pooling edges carry one
value forward (z_s = z_a + z_b, a copy, a channel's mean or pooling) and must move
together: they form one *tie class*. A grouped convolution (edges only within a group)
joins the input and output channels of each of its groups into one class as well: whole
groups move, consistently in the layer it reads and the layer it writes (a depthwise
conv ties channel c of its input to channel c of its output). Classes whose nodes have
the same colours (``symmetry.node_colours``: the same layers, and there the same producers
and consumers, so that slices of one layer read by different layers stay apart) are
permuted among each other, node onto node of the same colour; classes holding an input or
output neuron never move. Every draw is checked to map edges onto edges
(``symmetry.edge_map``), so a network that converts always gets a permutation.

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
from collections import OrderedDict

import torch
from torch import nn

from nngraph.errors import InputShapeError, UnsupportedModelError
from nngraph.graph import layout, ties
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
    EDGE_PAD,
    EDGE_PLACE,
    EDGE_POOL,
    EDGE_RESIDUAL,
    EDGE_TOKEN_MIX,
    EDGE_UPSAMPLE_BILINEAR,
    EDGE_UPSAMPLE_NEAREST,
    ROLE_HIDDEN,
    ArchSpec,
    NeuralGraph,
)
from nngraph.graph.symmetry import Blocks, EdgeMap, edge_blocks, edge_map, node_colours

_TIE_KINDS = (EDGE_RESIDUAL, EDGE_IDENTITY, EDGE_POOL, EDGE_MAXPOOL, EDGE_AVGPOOL, EDGE_UPSAMPLE_NEAREST,
              EDGE_UPSAMPLE_BILINEAR, EDGE_PAD, EDGE_PLACE, EDGE_MUL_A, EDGE_MUL_B, EDGE_ATTN_V, EDGE_TOKEN_MIX)


def permute_graph(graph: NeuralGraph, seed: int = 0) -> tuple[NeuralGraph, torch.Tensor]:
    """A random function-preserving relabelling of the hidden nodes.

    Returns the permuted graph in the same canonical layout (edge e joins the same node
    ids as before) and ``perm`` [N]: new node k holds what old node ``perm[k]`` held, so
    ``x_new = x[perm]`` and edge (i -> j) of the new graph carries old edge
    (perm[i] -> perm[j]).
    """
    perm, mapped = draw_permutation(graph, seed)
    old_edge = mapped.full(graph.num_edges)
    new = copy.copy(graph)  # shallow: every field that moves is replaced below, the rest is shared
    new.edge_index = graph.edge_index.clone()
    for key in ("x", "node_act", "node_norm", "node_eps", "node_hw", "node_layer", "node_pos", "node_role"):
        new[key] = graph[key][perm]
    for key in ("edge_attr", "edge_kind", "edge_geom_id"):
        new[key] = graph[key][old_edge]
    return new, perm


def draw_permutation(graph: NeuralGraph, seed: int) -> tuple[torch.Tensor, EdgeMap]:
    """(perm [N], its ``EdgeMap``) of a random automorphism of ``graph``: new node k holds old node perm[k].

    Every group of interchangeable classes is shuffled and attention is permuted head-aware;
    the whole is checked (``symmetry.edge_map``). Should the check fail (colour refinement
    cannot see every asymmetry), each move is checked alone and only those that map edges
    onto edges are kept: a network that converts always gets a permutation.
    """
    device = graph.edge_index.device
    blocks = edge_blocks(graph)
    generator = torch.Generator().manual_seed(seed)
    moves = _tie_class_permutation(graph, generator, interchangeable_groups(graph, blocks, checked=False))
    perm = torch.arange(graph.num_nodes, device=device)
    for target, source in moves:
        perm[target.to(device)] = source.to(device)
    mapped = edge_map(graph, perm, blocks)
    if mapped is None:
        perm = torch.arange(graph.num_nodes, device=device)
        for target, source in moves:
            alone = torch.arange(graph.num_nodes, device=device)
            alone[target.to(device)] = source.to(device)
            if edge_map(graph, alone, blocks) is not None:
                perm[target.to(device)] = source.to(device)
        mapped = edge_map(graph, perm, blocks)  # automorphisms on disjoint nodes compose into one
    return perm, mapped


def _group_pairs(graph: NeuralGraph, blocks: Blocks) -> torch.Tensor:
    """Edges [2, E'] of grouped (transposed) convolutions: conv edges outside the dense blocks (a groups=1
    conv joins all of its sources to all of its targets and ties nothing)."""
    kind = graph.edge_kind[blocks.loose]
    conv = blocks.loose[(kind == EDGE_CONV) | (kind == EDGE_CONV_T)]
    return graph.edge_index[:, conv]


def tie_class_of(graph: NeuralGraph, grouped: bool = False) -> list[int]:
    """Representative node of each node's tie class (union-find over residual/identity/pooling edges;
    with ``grouped``, also over the edges of grouped convolutions)."""
    parent = list(range(graph.num_nodes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if grouped:  # tie kinds carry no weight tensor: they are all loose edges
        blocks = edge_blocks(graph)
        loose = blocks.loose[torch.isin(graph.edge_kind[blocks.loose], _kinds(graph, _TIE_KINDS))]
        pairs = torch.cat([graph.edge_index[:, loose], _group_pairs(graph, blocks)], dim=1)
    else:
        pairs = graph.edge_index[:, torch.isin(graph.edge_kind, _kinds(graph, _TIE_KINDS))]
    if getattr(graph, "spec", None) is not None:  # a tied tensor's uses are permuted alike (ties.py)
        pairs = torch.cat([pairs, ties.node_pairs(graph).to(pairs.device)], dim=1)
    for a, b in pairs.t().tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(v) for v in range(graph.num_nodes)]


def interchangeable_groups(graph: NeuralGraph, blocks: Blocks | None = None,
                           checked: bool = True) -> list[list[list[int]]]:
    """Groups of tie classes (grouped convolutions included) that may be permuted among each other.

    Classes with an input/output neuron never move; classes with the same multiset of
    colours (``symmetry.node_colours``: same layers, and there the same producers and
    consumers) are interchangeable. Each class is listed as its nodes sorted by (colour, id),
    so class k's node at position l corresponds to class k''s. With ``checked``, a group is
    kept only if swapping its first two classes and rotating all of them both map edges onto
    edges: then every shuffle of the group does, as the two generate them all.
    """
    if blocks is None:
        blocks = edge_blocks(graph)
    colour = node_colours(graph, blocks).tolist()
    role = graph.node_role.tolist()
    attention = _attention_nodes(graph)
    by_signature: dict[tuple[int, ...], list[list[int]]] = {}
    for nodes in _members(graph).values():
        if any(role[v] != ROLE_HIDDEN for v in nodes):
            continue
        if attention.intersection(nodes):  # moved head-aware by _attention_permutation
            continue
        by_signature.setdefault(tuple(sorted(colour[v] for v in nodes)), []).append(
            sorted(nodes, key=lambda v: (colour[v], v)))
    groups = [classes for classes in by_signature.values() if len(classes) > 1]
    if checked:
        groups = [classes for classes in groups if _shuffles_keep_edges(graph, classes, blocks)]
    return groups


def _shuffles_keep_edges(graph: NeuralGraph, classes: list[list[int]], blocks: Blocks) -> bool:
    """Whether the swap of classes 0 and 1 and the rotation of all classes are automorphisms."""
    device = graph.edge_index.device
    for order in ([1, 0, *range(2, len(classes))], [*range(1, len(classes)), 0]):
        perm = torch.arange(graph.num_nodes, device=device)
        perm[torch.tensor(classes, device=device).reshape(-1)] = torch.tensor(
            [classes[k] for k in order], device=device).reshape(-1)
        if edge_map(graph, perm, blocks) is None:
            return False
    return True


def _kinds(graph: NeuralGraph, kinds: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(kinds, device=graph.edge_kind.device)


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
    heads = (graph.edge_kind == EDGE_ATTN_SUM) | (graph.edge_kind == EDGE_ATTN_MIX)  # only these edges are read
    src, dst = graph.edge_index[:, heads].tolist()
    kind = graph.edge_kind[heads].tolist()
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


def _tie_class_permutation(graph: NeuralGraph, generator: torch.Generator,
                           groups: list[list[list[int]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The random moves, one (targets, sources) pair per group and one for attention: new node
    targets[k] holds old node sources[k]. Moves touch disjoint nodes."""
    moves = []
    for classes in groups:
        shuffled = torch.randperm(len(classes), generator=generator).tolist()
        moves.append((torch.tensor(classes).reshape(-1), torch.tensor([classes[s] for s in shuffled]).reshape(-1)))
    perm = torch.arange(graph.num_nodes)
    _attention_permutation(graph, perm, generator)
    moved = torch.nonzero(perm != torch.arange(graph.num_nodes)).squeeze(1)
    if moved.numel():
        moves.append((moved, perm[moved]))
    return moves


def permute_neurons(model: nn.Module, seed: int = 0, example_input: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with hidden neurons/channels randomly reordered; same function.

    Residual-tied channels share one permutation and norm parameters move with their
    channels; inputs and outputs never move. ``example_input`` is needed only when the
    input size cannot be guessed from the first layer (a flatten into a Linear).

    It is an index permutation: the graph is built without its edge weights and the
    model's tensors are gathered directly (``permuted_state``).
    """
    guessed = example_input is None
    if guessed:
        example_input = guess_input(model)
    try:
        graph = to_graph(model, example_input, weights=False)
    except InputShapeError as exc:
        if not guessed:
            raise
        culprit = first_unsupported_module(model)
        if culprit is not None:
            raise UnsupportedModelError(f"{culprit} is not supported; nngraph converts: {SUPPORTED}") from None
        raise InputShapeError(
            f"permute_neurons guessed the input shape {list(example_input.shape[1:])} of {type(model).__name__} from "
            f"its first layer and it does not fit ({exc}); pass example_input=, a batch shaped like the model's input"
        ) from None
    perm, mapped = draw_permutation(graph, seed)
    state = permuted_state(graph.spec, model.state_dict(), perm, mapped)
    if state is None:  # a weight whose edges moved to another tensor's: go through the full graph
        permuted, _ = permute_graph(to_graph(model, example_input), seed)
        state = to_params(permuted)
    result = copy.deepcopy(model)
    result.load_state_dict(state)
    return result


def permuted_state(spec: ArchSpec, state: dict[str, torch.Tensor], perm: torch.Tensor,
                   mapped: EdgeMap) -> OrderedDict[str, torch.Tensor] | None:
    """The state_dict of the relabelled network, gathered from ``state`` without a graph:
    a per-neuron tensor takes rows perm[offset + k] - offset; a weight tensor of a dense block
    rows j' and, within them, columns i' ([out, in, ...] read as its edges); any other the rows
    of its edges' old edges (``layout.edge_rows``). None if an index leaves its tensor."""
    out = OrderedDict(state)
    for entry in spec.params:
        if entry.source == "node" and entry.shared:
            continue
        value = state[entry.name]
        if entry.source == "node":
            rows = perm[entry.offset:entry.offset + entry.count] - entry.offset
            if bool((rows < 0).any()) or bool((rows >= entry.count).any()):
                return None
            out[entry.name] = value[rows.to(value.device)]
            continue
        edges = layout.edge_rows(entry, value)  # [count, ...]
        where = mapped.rows(entry.offset, entry.count)
        if isinstance(where, tuple):
            j, i = (t.to(value.device) for t in where)
            moved = edges.reshape(len(j), len(i), -1)[j][:, i].reshape(edges.shape)
        else:
            if bool((where < 0).any()) or bool((where >= entry.count).any()):
                return None
            moved = edges[where.to(value.device)]
        out[entry.name] = layout.from_edge_rows(entry, moved).contiguous()
    out.update({alias: out[name] for alias, name in ties.aliases(spec).items()})
    return out


def guess_input(model: nn.Module) -> torch.Tensor:
    """A [1, F] or [1, C, 32, 32] zero input read off the model's first Linear / Conv2d (a guess:
    ``permute_neurons`` says so when it does not fit)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.zeros(1, module.in_features)
        if isinstance(module, nn.Conv2d):
            return torch.zeros(1, module.in_channels, 32, 32)
        if isinstance(module, nn.Conv1d):
            return torch.zeros(1, module.in_channels, 32)
    raise InputShapeError(f"cannot guess the input of {type(model).__name__}; pass example_input")
