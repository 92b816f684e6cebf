"""A LayerNorm over the channels of a map written by hand from ``x.mean(1, keepdim=True)``
(ConvNeXt's ``LayerNorm`` with ``data_format="channels_first"``), recognised step by step:

    u = x.mean(1, keepdim=True)              -> Moment(x)      (the mean over channels)
    x - u                                    -> Centred(x)
    Centred(x).pow(2) / ** 2 / * itself      -> Square(x)
    Square(x).mean(1, keepdim=True)          -> Variance(x)
    Variance(x) + eps                        -> Variance(x, eps)
    torch.sqrt(Variance(x, eps))             -> Deviation(x, eps)
    Centred(x) / Deviation(x, eps)           -> LayerNorm over the C nodes at each position (NORM_LAYER)

then ``weight[:, None, None] * x`` is a layer scale (``layouts.layer_scale``) and
``x + bias[:, None, None]`` a per-channel bias: a fresh layer fed by identity edges whose
nodes hold the bias (X_BIAS). The intermediate values are markers, not tensors of the graph:
any other use of them is refused, so only the exact formula becomes a norm.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from nngraph.errors import UnsupportedModelError
from nngraph.graph import functional, ops
from nngraph.graph.builder import Value
from nngraph.graph.functional import ParamRef
from nngraph.graph.graph import EDGE_IDENTITY, X_BIAS

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

_MEAN = {torch.mean, "mean"}
_SUB = {operator.sub, torch.sub, "sub"}
_ADD = {operator.add, torch.add, "add"}
_POW = {operator.pow, torch.pow, "pow"}
_SQRT = {torch.sqrt, "sqrt"}
_DIV = {operator.truediv, torch.div, "div"}


@dataclass(frozen=True)
class Marker:
    """A step of the formula: ``step`` of the map ``of`` (eps once added)."""

    step: str
    of: Value
    eps: float = 0.0


def rule(ctx: Context, node: Node, args: list, kwargs: dict, where: str) -> Any:
    """The value of ``node`` if it is a step of the formula (or a per-channel view / bias of a
    parameter), else None; a marker in any other op is refused."""
    target = node.target
    markers = [a for a in args if isinstance(a, Marker)]
    if target is operator.getitem and isinstance(args[0], ParamRef):
        return _expand(args[0], args[1], where)
    if target in ("reshape", "view") and args and isinstance(args[0], ParamRef):  # timm: gamma.reshape(1, -1, 1, 1)
        shape = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        view = args[0].tensor.reshape(*shape)
        if args[0].tensor.dim() != 1 or sum(d != 1 for d in view.shape) > 1:
            raise UnsupportedModelError(f"{where}: parameter {args[0].name!r} is reshaped; only a per-channel view of a "
                                        "[C] parameter (gamma.reshape(1, -1, 1, 1)) is supported")
        return ParamRef(args[0].name, view)
    if target in _MEAN and args and isinstance(args[0], (Value, Marker)) and _over_channels(args, kwargs):
        if isinstance(args[0], Value) and args[0].kind == "map":
            return Marker("mean", args[0])
        if isinstance(args[0], Marker) and args[0].step == "square":
            return Marker("variance", args[0].of)
    if target in _SUB and len(args) == 2 and isinstance(args[0], Value) and isinstance(args[1], Marker) \
            and args[1].step == "mean" and args[1].of is args[0]:
        return Marker("centred", args[0])
    if markers and markers[0].step == "centred" and _squares(target, args):
        return Marker("square", markers[0].of)
    if target in _ADD and len(args) == 2 and markers and markers[0].step == "variance":
        other = args[1 - args.index(markers[0])]
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return Marker("variance+eps", markers[0].of, float(other))
    if target in _SQRT and markers and markers[0].step == "variance+eps":
        return Marker("deviation", markers[0].of, markers[0].eps)
    if target in _DIV and len(args) == 2 and all(isinstance(a, Marker) for a in args) and args[0].step == "centred" \
            and args[1].step == "deviation" and args[0].of is args[1].of:
        x = args[0].of
        normed = ops.layer_norm(ctx, node, Value(x.nodes, "cl", x.hw, x.root), (len(x.nodes),), args[1].eps,
                                None, None, where)
        return Value(normed.nodes, "map", x.hw, node.name)
    if target in _ADD and len(args) == 2 and any(isinstance(a, ParamRef) for a in args):
        value = next((a for a in args if isinstance(a, Value)), None)
        if value is not None and value.kind in ("map", "vector"):
            return channel_bias(ctx, node, value, next(a for a in args if isinstance(a, ParamRef)), where)
    if markers:
        raise UnsupportedModelError(
            f"{where}: x.mean(1, keepdim=True) is supported only in a LayerNorm over channels written out as "
            "(x - u) / torch.sqrt((x - u).pow(2).mean(1, keepdim=True) + eps)"
        )
    return None


def _over_channels(args: list, kwargs: dict) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    return keepdim is True and dim in (1, (1,), [1])


def _squares(target: Any, args: list) -> bool:
    """``c.pow(2)``, ``c ** 2`` or ``c * c`` of one centred marker."""
    if target in _POW and len(args) == 2 and args[1] == 2:
        return True
    return target in (operator.mul, torch.mul, "mul") and len(args) == 2 and args[0] == args[1]


def _expand(ref: ParamRef, index: Any, where: str) -> ParamRef:
    """``w[:, None, None]`` (or ``w[None, :, None, None]``) of a [C] parameter: the same parameter, viewed per channel."""
    parts = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if ref.tensor.dim() == 1 and sum(p == full for p in parts) == 1 and all(p is None or p == full for p in parts):
        return ParamRef(ref.name, ref.tensor[index])
    raise UnsupportedModelError(f"{where}: parameter {ref.name!r} is indexed; only w[:, None, None] views are supported")


def channel_bias(ctx: Context, node: Node, value: Value, ref: ParamRef, where: str) -> Value:
    """``x + b`` with one b per channel: a fresh layer fed by identity edges, its nodes holding b (X_BIAS)."""
    c = len(value.nodes)
    rank = len(ctx.shape(node))
    fits = {(c,)} if value.kind == "vector" else {(c, *(1,) * (rank - 2)), (1, c, *(1,) * (rank - 2))}
    if tuple(ref.tensor.shape) not in fits:
        raise UnsupportedModelError(
            f"{where}: parameter {ref.name!r} added to a [batch, C(, H, W)] tensor must hold one value per channel, "
            f"got {list(ref.tensor.shape)}"
        )
    builder = ctx.builder
    out = builder.new_layer(c, value.hw)
    builder.pair_edges(value.nodes, out, EDGE_IDENTITY)
    builder.record_node_param(ref.name, out, X_BIAS, functional.state_tensor(ctx, ref.name))
    return Value(out, value.kind, value.hw, node.name)
