"""A Linear over positions: MLP-Mixer's token mixing, as one map shared by every channel.

Tokens [B, T, D] are D nodes whose value is a 1 x T sequence. ``x.transpose(1, 2)`` makes
them a [B, D, T] tensor (the same D nodes: ``tokens.transpose``), and a ``Linear(T, T')``
on it mixes the T positions of each channel with one weight M [T', T] shared by all
channels (timm / google-research ``MixerBlock``: ``mlp_tokens(norm1(x).transpose(1, 2))``).
The same holds for a Linear on the last axis of any [B, C, L] sequence (a Conv1d's output), and for a
pointwise ``Conv1d(T, T', 1)`` on the tokens [B, T, D] themselves (lucid-rains' ``mlp-mixer-pytorch``).
In the graph it is a layer of C nodes of length T' fed by ``token_mix`` edges, one per
channel c -> c' (the c-th node of the new layer), each carrying M:

    z_c'(t') = sum_t M[t', t] h_c(t) + b(t')            t' < T'

M sits in the first T'·T entries of the edge's features, row-major (entry t'·T + t), like
the H·W weights of a flatten edge; ``edge_geometry`` holds kw = T and out_w = T'. The bias b [T']
is a ``const`` self-loop on every new node carrying b at positions [0, T') (as a position
embedding is). Positions are not neurons: they never move. Channels do: the edge c -> c'
ties channel c to c' (``permute.py``), so a permutation of the channels moves both together
and every edge keeps its (identical) M. Weight and bias are read back once, from the first
channel's edge (``ParamEntry`` source ``copies``); every copy is written when parameters are
laid out (``layout.write_params``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph.graph import EDGE_CONST, EDGE_TOKEN_MIX, GEOM_COLUMNS, NO_GEOM, ParamEntry

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

_KW, _PAD_W, _OUT_H, _OUT_W = (GEOM_COLUMNS.index(c) for c in ("kw", "pad_w", "out_h", "out_w"))


def is_sequence(ctx: Context, node: Node, value: Value) -> bool:
    """Whether ``value`` (the input of ``node``) is a [B, C, L] sequence, whose last axis is positions."""
    return value.kind == "map" and value.hw[0] == 1 and len(ctx.shape(node.args[0])) == 3


def mix_geom(length: int, out_length: int) -> tuple[int, ...]:
    """``edge_geometry`` of a token-mix edge from a 1 x ``length`` to a 1 x ``out_length`` sequence."""
    geom = list(NO_GEOM)
    geom[_KW], geom[_OUT_H], geom[_OUT_W] = length, 1, out_length
    return tuple(geom)


def _bias_geom(length: int) -> tuple[int, ...]:
    """``edge_geometry`` of a const self-loop carrying ``length`` values at position 0 of a 1 x ``length`` sequence."""
    geom = list(NO_GEOM)
    geom[_KW], geom[_PAD_W], geom[_OUT_H], geom[_OUT_W] = length, 0, 1, length
    return tuple(geom)


def linear_over_positions(ctx: Context, node: Node, value: Value, weight: tuple[str, torch.Tensor],
                          bias: tuple[str, torch.Tensor] | None, where: str) -> Value:
    """``Linear(T, T')`` applied to a [B, C, T] sequence: C nodes of length T' (see the module docstring)."""
    name, w = weight  # [T', T] (or a pointwise Conv1d's [T', T, 1])
    length = value.hw[1]
    if w.dim() not in (2, 3) or w.shape[1] != length:
        raise UnsupportedModelError(f"{where}: a Linear over the {length} positions needs a [T', {length}] weight, "
                                    f"got {list(w.shape)}")
    out_length = int(w.shape[0])
    c = len(value.nodes)
    builder = ctx.builder
    out = builder.new_layer(c, (1, out_length))
    copies = w.detach().reshape(1, -1).expand(c, -1)  # [C, T'·T]: one copy of M per channel
    first = builder.flat_edges(value.nodes, out, copies, EDGE_TOKEN_MIX, mix_geom(length, out_length))
    builder.params.append(ParamEntry(name, tuple(w.shape), "copies", first, sources=c))
    if bias is not None:
        b_name, b = bias  # [T']
        values = b.detach().reshape(1, -1).expand(c, -1)  # [C, T']
        first = builder.flat_edges(out, out, values, EDGE_CONST, _bias_geom(out_length))
        builder.params.append(ParamEntry(b_name, tuple(b.shape), "copies", first, sources=c))
    return Value(out, "map", (1, out_length), node.name)


def conv_over_tokens(ctx: Context, node: Node, value: Value, weight: tuple[str, torch.Tensor],
                     bias: tuple[str, torch.Tensor] | None, options: tuple, where: str) -> Value:
    """``nn.Conv1d(T, T', 1)`` applied to tokens [B, T, D] (lucid-rains' Mixer: the token axis read as channels):
    the Linear over positions with M = W[:, :, 0]; the result stays tokens [B, T', D]."""
    name, w = weight  # [T', T, 1]
    stride, padding, dilation, groups = options
    if w.dim() != 3 or w.shape[2] != 1 or tuple(stride) != (1,) or tuple(padding) != (0,) or groups != 1:
        raise UnsupportedModelError(f"{where}: a Conv1d over the token axis of [batch, T, D] tokens must be pointwise "
                                    "(kernel 1, stride 1, no padding, groups 1): it mixes the T positions")
    mixed = linear_over_positions(ctx, node, value, (name, w), bias, where)
    return Value(mixed.nodes, "tokens", mixed.hw, node.name)


def apply(h: torch.Tensor, attr: torch.Tensor, geom: list[int]) -> torch.Tensor:
    """Messages of token-mix edges: h [E, P, 1, T] (each edge's source), attr [E, d_e] -> [E, P, 1, T']."""
    length, out_length = geom[_KW], geom[_OUT_W]
    m = attr[:, : out_length * length].reshape(-1, out_length, length)  # [E, T', T]
    return torch.einsum("ept,eot->epo", h[:, :, 0], m).unsqueeze(2)
