"""Layouts of a map and per-channel operations: channels-last, chunks of channels, layer scale.

A map [B, C, H, W] is C nodes whose value is an H x W map. ``x.permute(0, 2, 3, 1)`` gives
the same neurons in the channels-last layout [B, H, W, C] (``Value.kind`` ``cl``): nothing
is added, and the ops of that layout act on the last axis as they act on tokens' features:
a Linear over C is a linear edge applied at every position (ConvNeXt's pointwise
"convolutions"), a LayerNorm(C) normalises over the C nodes at each position.
``x.permute(0, 3, 1, 2)`` goes back; timm's packed attention projection
``qkv(x).reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)`` (or ``qkv[0]``, ``qkv[1]``, ``qkv[2]``)
gives q, k, v as three thirds of the Linear's neurons, laid out as heads; ``x.permute(0, 2, 1)`` of tokens [B, T, D] is their
transpose to [B, D, T] (``tokens.transpose``: a Linear on it mixes positions, ``mixing.py``).

``x.chunk(k, dim)`` / ``x.split(size, dim)`` on the channel (or feature) axis are channel
slices: views of the value's nodes, no node added. ``x.unbind(dim)`` on that axis gives each
channel without its axis ([B, C, H, W] -> C of [B, H, W]): one node each (``Value.kind``
``unbound``), which activations keep (a pointwise op of one channel), ``torch.stack(pieces, dim)``
on the channel axis joins back into the layout it names (rank 2: features; dim 1: a map; the
last axis: tokens, or channels last at rank 4) and ``piece.unsqueeze(dim)`` makes a one-channel
tensor of; any other use of a piece is refused (``x.chunk(C, dim)`` keeps the axis).

Layer scale ``gamma * x`` (ConvNeXt, DeiT-III / CaiT's ``LayerScale``) with a parameter
gamma of one value per channel: a fresh layer s fed by identity edges x_c -> s_c whose
weights are gamma_c (a diagonal weight; ``ParamEntry`` source ``diag``):

    s_c = gamma_c * x_c
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph import activations, functional, tokens
from nngraph.graph.functional import ParamRef
from nngraph.graph.graph import EDGE_IDENTITY, ParamEntry

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

PERMUTE = {torch.permute, "permute"}
_MUL = {operator.mul, torch.mul, "mul"}
_SPLIT = {torch.chunk, "chunk", torch.split, "split"}
_UNBIND = {torch.unbind, "unbind"}
_STACK = {torch.stack}
_UNSQUEEZE = {torch.unsqueeze, "unsqueeze"}
# Channel axis of each layout, counted from the end for the channels-last ones.
_LAST_AXIS_KINDS = ("tokens", "cl")


def rule(ctx: Context, node: Node, args: list, kwargs: dict, values: list, where: str) -> Any:
    """The value of ``node`` if it is an op of this module, else None."""
    target = node.target
    if target in PERMUTE and len(values) == 1 and args[0] is values[0]:
        dims = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
        return permute(values[0], tuple(dims), where)
    if target in _MUL and len(args) == 2 and len(values) == 1 and any(isinstance(a, ParamRef) for a in args):
        ref = next(a for a in args if isinstance(a, ParamRef))
        return layer_scale(ctx, node, values[0], ref, where)
    if target in _SPLIT and values and args[0] is values[0]:
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        return split_channels(ctx, node, values[0], dim, where)
    if target in _UNBIND and values and values[0].kind == "packed_heads" \
            and kwargs.get("dim", args[1] if len(args) > 1 else 0) == 0:
        return unpack(values[0], int(ctx.shape(node.args[0])[0]))
    if target is operator.getitem and values and values[0].kind == "packed_heads" and isinstance(args[1], int):
        return unpack(values[0], int(ctx.shape(node.args[0])[0]))[args[1]]  # qkv[0], qkv[1], qkv[2]
    if target in _UNBIND and values and args[0] is values[0]:
        return unbind(ctx, node, values[0], kwargs.get("dim", args[1] if len(args) > 1 else 0), where)
    if target in _STACK and args and isinstance(args[0], (list, tuple)) \
            and any(isinstance(a, Value) and a.kind == "unbound" for a in args[0]):
        return stack(ctx, node, list(args[0]), kwargs.get("dim", args[1] if len(args) > 1 else 0), where)
    if any(isinstance(a, Value) and a.kind == "unbound" for a in _flat([*args, *kwargs.values()])):
        if target in _UNSQUEEZE and len(values) == 1 and args[0] is values[0]:
            return stack(ctx, node, values, kwargs.get("dim", args[1] if len(args) > 1 else None), where)
        if values and args[0] is values[0] and activations.parse_function(node, args, kwargs) is not None:
            return None  # an activation of one channel: ops.activation
        raise UnsupportedModelError(f"{where}: a channel of x.unbind(dim) (its channel axis removed) is supported only "
                                    "in activations, torch.stack(pieces, dim) back and piece.unsqueeze(dim); use "
                                    "x.chunk(C, dim) (keeps the axis) for other ops")
    return None


def _flat(args: Any) -> list:
    return [x for a in args for x in (_flat(a) if isinstance(a, (list, tuple)) else (a,))]


def permute(value: Value, dims: tuple[int, ...], where: str) -> Value:
    """[B, C, H, W] <-> [B, H, W, C]: the same nodes in the other layout."""
    if value.kind == "map" and dims == (0, 2, 3, 1):
        return Value(value.nodes, "cl", value.hw, value.root)
    if value.kind == "cl" and dims == (0, 3, 1, 2):
        return Value(value.nodes, "map", value.hw, value.root)
    if value.kind == "packed" and dims == (2, 0, 3, 1, 4):  # [B, T, 3, H, d] -> [3, B, H, T, d]
        return Value(value.nodes, "packed_heads", value.hw, value.root, heads=value.heads)
    if value.kind in ("map", "tokens") and tuple(d % 3 for d in dims) == (0, 2, 1):  # [B, D, T] <-> [B, T, D]
        return tokens.transpose(value, (1, 2), 3, where)
    raise UnsupportedModelError(
        f"{where}: only x.permute(0, 2, 3, 1) of a [batch, C, H, W] map (channels last) and x.permute(0, 3, 1, 2) "
        f"back, and x.permute(0, 2, 1) of tokens [batch, T, D] are supported, got dims {list(dims)}"
    )


def unpack(value: Value, parts: int) -> tuple[Value, ...]:
    """``qkv.unbind(0)`` of timm's packed projection [parts, B, H, T, d]: the parts' neurons (part s holds the
    Linear's outputs s·D .. (s + 1)·D - 1, in the order h·d + c of attention heads) as [B, H, T, d] values."""
    size = len(value.nodes) // parts
    return tuple(Value(value.nodes[s * size:(s + 1) * size], "heads", value.hw, value.root, heads=value.heads)
                 for s in range(parts))


def _channel_axis(value: Value, rank: int) -> int:
    return rank - 1 if value.kind in _LAST_AXIS_KINDS else 1


def split_channels(ctx: Context, node: Node, value: Value, dim: int, where: str) -> tuple[Value, ...]:
    """``x.chunk(k, dim)`` / ``x.split(size or sizes, dim)`` along the channels: a tuple of channel slices."""
    rank = len(ctx.shape(node.args[0]))
    if value.kind not in ("vector", "map", *_LAST_AXIS_KINDS) or value.scale is not None \
            or dim % rank != _channel_axis(value, rank):
        raise UnsupportedModelError(f"{where}: chunk / split is supported only along the channel (feature) axis")
    pieces = []
    start = 0
    for meta in node.meta["tensor_meta"]:  # one shape per piece, as the example ran
        size = int(meta.shape[dim])
        pieces.append(Value(value.nodes[start:start + size], value.kind, value.hw, node.name))
        start += size
    return tuple(pieces)


def unbind(ctx: Context, node: Node, value: Value, dim: int, where: str) -> tuple[Value, ...]:
    """``x.unbind(dim)`` along the channels: one ``unbound`` value (a node without its channel axis) per channel."""
    rank = len(ctx.shape(node.args[0]))
    if value.kind not in ("vector", "map", *_LAST_AXIS_KINDS) or value.scale is not None \
            or dim % rank != _channel_axis(value, rank):
        raise UnsupportedModelError(f"{where}: unbind is supported along the channel (feature) axis, and unbind(0) on "
                                    "timm's packed qkv [3, B, H, T, d]; use x.chunk(C, dim) for other splits")
    return tuple(Value([n], "unbound", value.hw, node.name) for n in value.nodes)


def stack(ctx: Context, node: Node, pieces: list, dim: int | None, where: str) -> Value:
    """``torch.stack(pieces, dim)`` of unbound channels (``piece.unsqueeze(dim)``: one piece) along the channel
    axis of the layout of ``node``'s output shape [B, C(, L)(, H, W)] / [B, T, C] / [B, H, W, C]."""
    rank = len(ctx.shape(node))
    dim = None if dim is None else dim % rank
    kind = "vector" if rank == 2 else "map" if dim == 1 else "tokens" if rank == 3 and dim == 2 else \
        "cl" if rank == 4 and dim == 3 else None
    if kind is None or not all(isinstance(p, Value) and p.kind == "unbound" for p in pieces) \
            or len({p.hw for p in pieces}) != 1:
        raise UnsupportedModelError(f"{where}: channels of x.unbind(dim) stack back only on a channel axis (dim 1, or "
                                    "the last), all of them unbound channels of one size")
    return Value([n for p in pieces for n in p.nodes], kind, pieces[0].hw, node.name)


def layer_scale(ctx: Context, node: Node, value: Value, ref: ParamRef, where: str) -> Value:
    """``gamma * x`` with one gamma per channel: identity edges weighted by gamma into a fresh layer."""
    rank = len(ctx.shape(node))
    c = len(value.nodes)
    per_channel = {1: (c,)} if value.kind in _LAST_AXIS_KINDS or value.kind == "vector" else {
        1: (c, *(1,) * (rank - 2)), 2: (1, c, *(1,) * (rank - 2))}
    shape = tuple(ref.tensor.shape)
    if value.kind not in ("vector", "map", *_LAST_AXIS_KINDS) or shape not in per_channel.values():
        raise UnsupportedModelError(
            f"{where}: parameter {ref.name!r} multiplied in must hold one value per channel (layer scale), shaped "
            f"{list(next(iter(per_channel.values())))}; got {list(shape)}"
        )
    builder = ctx.builder
    out = builder.new_layer(c, value.hw)
    first = builder.pair_edges(value.nodes, out, EDGE_IDENTITY, weights=ref.tensor.reshape(c))
    builder.params.append(ParamEntry(ref.name, tuple(functional.state_tensor(ctx, ref.name).shape), "diag", first,
                                     sources=1))
    return Value(out, value.kind, value.hw, node.name)
