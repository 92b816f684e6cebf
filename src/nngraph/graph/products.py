"""Products of two tensors: one mechanism for gates, elementwise products and attention scores.

A product node j has two operands, each the weighted sum of its sources over the edges of
one kind (weights 1 after conversion):

    A_j = sum_{i -(mul_a)-> j} w_ij h_i        laid out as out_h x out_w (the edge's ``edge_geometry``)
    B_j = sum_{i -(mul_b)-> j} w_ij h_i        likewise
    z_j = A_j * B_j                            broadcast to the node's H x W (``node_hw``)

then, like every node, z_j + bias_j + offset_j -> norm -> act. An operand's layout is its
flattened value reshaped to out_h x out_w; broadcasting does the rest:

- ``a * b`` of two tensors of one shape: both operands keep their H x W (or 1 x 1, 1 x T);
- a squeeze-and-excitation gate ``x * sigmoid(fc2(relu(fc1(pool(x)))))``: x keeps its
  H x W (mul_a), the gate of channel c is a 1 x 1 value (mul_b) broadcast over the map;
- attention (``tokens.attention``): q_c [1, Tq] is laid out as a Tq x 1 column (mul_a) and
  k_c [1, Tk] as a 1 x Tk row (mul_b), so s_c(t, t') = q_c(t) k_c(t').

Operand k of a product layer reads neuron k of each factor, so the product node, its two
operands' neurons and (through them) the layers that compute them form one tie class
under permutations: a gate's channel moves with the channel it gates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nngraph.errors import UnsupportedModelError
from nngraph.graph import ops
from nngraph.graph.builder import Value
from nngraph.graph.graph import ACT_SIGMOID, EDGE_IDENTITY, EDGE_MUL_A, EDGE_MUL_B, GEOM_COLUMNS, NO_GEOM

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

_OUT_H, _OUT_W = GEOM_COLUMNS.index("out_h"), GEOM_COLUMNS.index("out_w")


def operand_geom(layout: tuple[int, int]) -> tuple[int, ...]:
    """``edge_geometry`` row of a product operand whose value is laid out as ``layout`` (out_h, out_w)."""
    geom = list(NO_GEOM)
    geom[_OUT_H], geom[_OUT_W] = layout
    return tuple(geom)


def product_layer(ctx: Context, a: list[int], a_layout: tuple[int, int], b: list[int], b_layout: tuple[int, int],
                  out_hw: tuple[int, int]) -> list[int]:
    """A layer of product nodes p_k = a_k * b_k (a mul_a and a mul_b edge each) of value size ``out_hw``.

    A factor that reads the same neuron as the other at one position (``x * x``) first gets
    a copy through identity edges, so that no two edges join the same pair of nodes.
    """
    builder = ctx.builder
    if any(i == j for i, j in zip(a, b)):
        copy = builder.new_layer(len(b), tuple(builder.node_hw[b[0]]))
        builder.pair_edges(b, copy, EDGE_IDENTITY)
        b = copy
    out = builder.new_layer(len(a), out_hw)
    builder.pair_edges(a, out, EDGE_MUL_A, operand_geom(a_layout))
    builder.pair_edges(b, out, EDGE_MUL_B, operand_geom(b_layout))
    return out


def multiply(ctx: Context, node: Node, a: Value, b: Value, where: str) -> Value:
    """``a * b`` of two computed tensors: an elementwise product of one shape, or a per-channel
    gate [batch, C, 1, 1] (or [batch, C, 1]) broadcast over a map [batch, C, H, W] (or [batch, C, L]).

    The operand with the full size is mul_a, the gate mul_b; of two of one shape, the first is mul_a.
    """
    kinds = ("vector", "map", "tokens")
    if a.kind not in kinds or b.kind not in kinds or a.scale is not None or b.scale is not None:
        raise UnsupportedModelError(
            f"{where}: only products of [batch, F], [batch, C(, L)(, H, W)] or [batch, T, D] tensors are supported"
        )
    if b.hw != (1, 1) and a.hw == (1, 1) and a.kind == "map":
        a, b = b, a
    same = a.kind == b.kind and a.hw == b.hw
    gate = a.kind == "map" and b.kind == "map" and b.hw == (1, 1)
    if len(a.nodes) != len(b.nodes) or not (same or gate):
        raise UnsupportedModelError(
            f"{where}: a product needs two tensors of one shape, or a [batch, C, 1, 1] gate of a [batch, C, H, W] map "
            "(the same C); other broadcasts are not supported"
        )
    out = product_layer(ctx, a.nodes, a.hw, b.nodes, b.hw, a.hw)
    return Value(out, a.kind, a.hw, node.name)


def glu(ctx: Context, node: Node, value: Value, dim: int, where: str) -> Value:
    """``F.glu(x, dim)`` over features or channels: a * sigmoid(b) of x's two halves a, b (one product layer)."""
    rank = len(ctx.shape(node.args[0]))
    n = len(value.nodes)
    if value.kind not in ("vector", "map") or dim % rank != 1 or n % 2:
        raise UnsupportedModelError(f"{where}: F.glu is supported over the features or channels (dim=1) of an even count")
    half = n // 2
    a = Value(value.nodes[:half], value.kind, value.hw, value.root)
    b = ops.activation(ctx, node, Value(value.nodes[half:], value.kind, value.hw, value.root), ACT_SIGMOID, 0.0, where)
    return multiply(ctx, node, a, b, where)


def scale(ctx: Context, node: Node, value: Value, factor: float, where: str) -> Value:
    """``c * x`` or ``x / c`` (factor 1 / c) for a constant c, outside ``sin(w0 * x)``: a fresh layer fed by
    identity edges x_k -> s_k of weight c, s_k = c x_k (MobileNetV3's h_sigmoid ``relu6(x + 3) / 6``)."""
    if value.kind not in ("vector", "map", "tokens") or value.scale is not None:
        raise UnsupportedModelError(f"{where}: only [batch, F], [batch, C(, L)(, H, W)] or [batch, T, D] tensors can be "
                                    "multiplied by a constant")
    n = len(value.nodes)
    builder = ctx.builder
    out = builder.new_layer(n, value.hw)
    builder.dense_edges(value.nodes, out, torch.full((n, 1), factor, dtype=builder.dtype), EDGE_IDENTITY, groups=n)
    return Value(out, value.kind, value.hw, node.name)
