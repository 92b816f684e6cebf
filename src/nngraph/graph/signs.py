"""Sign symmetry of odd activations, and one canonical sign pattern per function.

A hidden neuron j with an odd activation (f(-z) = -f(z): tanh, sin(w0 z), none) computes
h_j = f(sum_i w_ij h_i + b_j). Negating its incoming weights w_.j and its bias b_j negates
h_j; negating its outgoing weights w_j. as well gives the next layer the same sums:

    sum_j (-w_jk) f(-(sum_i w_ij h_i + b_j)) = sum_j w_jk f(sum_i w_ij h_i + b_j)

so every hidden layer of n such neurons has 2^n sign patterns of one function. In the
graph a flip s_j = -1 multiplies bias and offset of node j and every edge at j by -1:
x_j <- s_j x_j (bias, offset channels), w_ij <- s_i s_j w_ij. This holds for a neuron
whose edges in and out are all weights (Linear, conv, transposed conv, flattened-map weights:
a kernel is linear in its source's map) and which has no normalisation; other neurons (inputs,
outputs, residual/pooling/attention nodes, normalised or non-odd units) keep s = +1.

``canonicalise_signs`` picks, layer by layer in topological order, the pattern in which
every flippable neuron has

    b_j > 0,  or b_j = 0 and  sum_i s_i w_ij > 0  (the sum of its incoming weights, its
                              sources already canonical), or both 0 and its first nonzero
                              incoming weight (edge order) > 0

(as ScaleGMN canonicalises signs, with a permutation-invariant first tie-break). Two
networks that differ by sign flips get the same parameters; a network that differs by a
neuron permutation gets the permuted canonical parameters (up to the second tie-break).
A neuron whose bias and incoming weights are all 0 keeps its sign. Flips are products by
+-1, so the transform is exact and idempotent.
"""

from __future__ import annotations

import copy

import torch
from torch_geometric.data import Data

from nngraph.errors import NNGraphError
from nngraph.graph.graph import (
    ACT_NONE,
    ACT_SINE,
    ACT_TANH,
    EDGE_CONV,
    EDGE_CONV_T,
    EDGE_FLATTEN,
    EDGE_LINEAR,
    NORM_NONE,
    ROLE_HIDDEN,
    X_BIAS,
    X_OFFSET,
)

ODD_ACTIVATIONS = (ACT_NONE, ACT_TANH, ACT_SINE)
WEIGHT_KINDS = (EDGE_LINEAR, EDGE_CONV, EDGE_CONV_T, EDGE_FLATTEN)


def flippable_neurons(graph: Data) -> torch.Tensor:
    """[N] bool: hidden neurons with an odd activation, no normalisation, and only weight edges in and out."""
    device = graph.edge_index.device
    odd = torch.isin(graph.node_act, torch.tensor(ODD_ACTIVATIONS, device=device))
    ok = (graph.node_role == ROLE_HIDDEN) & odd & (graph.node_norm == NORM_NONE)
    other = ~torch.isin(graph.edge_kind, torch.tensor(WEIGHT_KINDS, device=device))  # [E]
    src, dst = graph.edge_index
    blocked = torch.zeros_like(ok)
    blocked[src[other]] = True
    blocked[dst[other]] = True
    has_input = torch.zeros_like(ok)
    has_input[dst] = True
    return ok & ~blocked & has_input


def flip_signs(graph: Data, signs: torch.Tensor) -> Data:
    """The same network with neuron j's sign flipped where ``signs`` [N] is -1 (+1 elsewhere).

    Only flippable neurons (``flippable_neurons``) may be flipped; returns a new graph (or
    batch), the input is not modified."""
    if bool((signs != 1).logical_and(~flippable_neurons(graph)).any()):
        raise NNGraphError("signs flip a neuron whose sign is not free; "
                           "flip only where flippable_neurons(graph) is True")
    s = signs.to(graph.x.dtype)
    src, dst = graph.edge_index
    new = copy.copy(graph)
    scale = torch.ones_like(graph.x)
    scale[:, X_BIAS] = s
    scale[:, X_OFFSET] = s
    new.x = graph.x * scale  # [N, d_v]
    new.edge_attr = graph.edge_attr * (s[src] * s[dst]).unsqueeze(1)  # [E, d_e]
    return new


def canonical_signs(graph: Data) -> torch.Tensor:
    """[N] +-1: the flips that put ``graph`` (a NeuralGraph or a batch) in its canonical sign pattern."""
    x, attr = graph.x, graph.edge_attr
    src, dst = graph.edge_index
    n, e = x.shape[0], attr.shape[0]
    free = flippable_neurons(graph)
    signs = torch.ones(n, dtype=x.dtype, device=x.device)
    row_sum = attr.sum(1)  # [E] the weight (or kernel) total of each edge
    nonzero = attr != 0
    first_entry = attr.gather(1, nonzero.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1)  # [E]
    edge_id = torch.arange(e, device=x.device)
    first_edge = torch.full((n,), e, dtype=torch.long, device=x.device)
    has = nonzero.any(1)
    first_edge.scatter_reduce_(0, dst[has], edge_id[has], reduce="amin")  # [N] first nonzero incoming edge
    found = first_edge < e
    for layer in torch.unique(graph.node_layer[free]).tolist():  # topological order: sources are final
        nodes = free & (graph.node_layer == layer)
        total = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, dst, signs[src] * row_sum)
        first = torch.zeros(n, dtype=x.dtype, device=x.device)
        edge = first_edge[found]
        first[found] = signs[src[edge]] * first_entry[edge]
        bias = x[:, X_BIAS]
        key = torch.where(bias != 0, bias, torch.where(total != 0, total, first))  # [N]
        signs = torch.where(nodes & (key < 0), -torch.ones_like(signs), signs)
    return signs


def canonicalise_signs(graph: Data) -> Data:
    """``graph`` (a NeuralGraph or a batch) in its canonical sign pattern: same function,
    every flippable neuron's bias >= 0 (module docstring). A new graph; the input is kept."""
    return flip_signs(graph, canonical_signs(graph))
