"""Norms written by hand from ``x.mean(dim, keepdim=True)``, recognised step by step where they are
exactly a known norm; ``dim`` is the channel axis (1 of a map or of [B, F]; -1 of tokens [B, T, D],
of a channels-last map or of [B, F]).

LayerNorm (ConvNeXt's ``LayerNorm`` with ``data_format="channels_first"``, or over the last axis):

    u = x.mean(dim, keepdim=True)                -> Mean(x)        (the mean over channels)
    x - u                                        -> Centred(x)
    Centred(x).pow(2) / ** 2 / * itself          -> Square(x)
    Square(x).mean(dim, keepdim=True)            -> Variance(x)    (also x.var(dim, keepdim=True, unbiased=False))
    Variance(x) + eps                            -> Variance(x, eps)
    torch.sqrt(Variance(x, eps))                 -> Deviation(x, eps)
    torch.rsqrt(Variance(x, eps))                -> InverseDeviation(x, eps)
    Centred(x) / Deviation(x, eps), Centred(x) * InverseDeviation(x, eps)
                                                 -> LayerNorm over the C nodes at each position (NORM_LAYER)

RMSNorm (LLaMA's ``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``):

    x.pow(2) / x ** 2                            -> Power(x)
    Power(x).mean(dim, keepdim=True)             -> MeanSquare(x)
    MeanSquare(x) + eps                          -> MeanSquare(x, eps)
    torch.rsqrt(...) / torch.sqrt(...)           -> InverseRMS(x, eps) / RMS(x, eps)
    x * InverseRMS(x, eps), x / RMS(x, eps)      -> z / sqrt(mean_c z_c^2 + eps) over the C nodes at each
                                                    position (NORM_RMS, ``norms.py``)

``F.rms_norm(x, (C,), weight, eps)`` on the model's parameters is the same norm with gamma = weight.
Then ``weight * x`` is a layer scale (``layouts.layer_scale``) and ``x + bias`` (``bias[:, None, None]``
of a map) a per-channel bias: a fresh layer fed by identity edges whose nodes hold the bias (X_BIAS).
The intermediate values are markers, not tensors of the graph: any other use of them is refused,
so only the exact formulas become norms.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nngraph.errors import UnsupportedModelError
from nngraph.graph import functional, norms, ops
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
_RSQRT = {torch.rsqrt, "rsqrt"}
_DIV = {operator.truediv, torch.div, "div"}
_MUL = {operator.mul, torch.mul, "mul"}
_VAR = {torch.var, "var"}
_RMS_NORM = {F.rms_norm, torch.rms_norm}
# (step, op) -> the next step of a formula: + eps, sqrt, rsqrt (see the module docstring).
_EPS = {"variance": "variance+eps", "mean_square": "mean_square+eps"}
_ROOT = {("variance+eps", "sqrt"): "deviation", ("variance+eps", "rsqrt"): "inverse_deviation",
         ("mean_square+eps", "sqrt"): "rms", ("mean_square+eps", "rsqrt"): "inverse_rms"}


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
    if target in ("reshape", "view", "unsqueeze") and args and isinstance(args[0], ParamRef):
        # timm: gamma.reshape(1, -1, 1, 1); the export capture's w[:, None, None]: w.unsqueeze(1).unsqueeze(2)
        shape = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        view = args[0].tensor.unsqueeze(*shape) if target == "unsqueeze" else args[0].tensor.reshape(*shape)
        if sum(d != 1 for d in args[0].tensor.shape) > 1 or sum(d != 1 for d in view.shape) > 1:
            raise UnsupportedModelError(f"{where}: parameter {args[0].name!r} is reshaped; only a per-channel view of a "
                                        "[C] parameter (gamma.reshape(1, -1, 1, 1)) is supported")
        return ParamRef(args[0].name, view)
    if target in _RMS_NORM and args and isinstance(args[0], Value):
        return _rms_norm_function(ctx, node, args, kwargs, where)
    formula = _step(ctx, node, target, args, kwargs, markers, where)
    if formula is not None:
        return formula
    if target in _ADD and len(args) == 2 and any(isinstance(a, ParamRef) for a in args):
        value = next((a for a in args if isinstance(a, Value)), None)
        ref = next(a for a in args if isinstance(a, ParamRef))
        per_feature = value is not None and value.kind in ("tokens", "cl") and tuple(ref.tensor.shape) == (
            len(value.nodes),)  # x + b, b [D]: a per-feature bias (tokens' other constants are tokens.py's)
        if value is not None and (value.kind in ("map", "vector") or per_feature):
            return channel_bias(ctx, node, value, ref, where)
    if markers:
        raise UnsupportedModelError(
            f"{where}: x.mean(dim, keepdim=True) over the channels and x.pow(2) are supported only in a LayerNorm "
            "written out as (x - u) / torch.sqrt((x - u).pow(2).mean(dim, keepdim=True) + eps) or an RMSNorm "
            "x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps)"
        )
    return None


def _step(ctx: Context, node: Node, target: Any, args: list, kwargs: dict, markers: list[Marker],
          where: str) -> Any:
    """The next step of a LayerNorm or RMSNorm formula (module docstring), the norm at its last step, or None."""
    first = args[0] if args else None
    if target in _MEAN and isinstance(first, (Value, Marker)) and _over_channels(ctx, node, first, args, kwargs):
        if isinstance(first, Value):
            return Marker("mean", first)
        if first.step in ("square", "power"):
            return Marker("variance" if first.step == "square" else "mean_square", first.of)
    if target in _VAR and isinstance(first, Value) and _over_channels(ctx, node, first, args, kwargs) \
            and _biased(args, kwargs):
        return Marker("variance", first)
    if target in _POW and len(args) == 2 and args[1] == 2 and isinstance(first, Value):
        return Marker("power", first)
    if target in _SUB and len(args) == 2 and isinstance(first, Value) and isinstance(args[1], Marker) \
            and args[1].step == "mean" and args[1].of is first:
        return Marker("centred", first)
    if markers and markers[0].step == "centred" and _squares(target, args):
        return Marker("square", markers[0].of)
    if target in _ADD and len(args) == 2 and markers and markers[0].step in _EPS:
        other = args[1 - args.index(markers[0])]
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return Marker(_EPS[markers[0].step], markers[0].of, float(other))
    root = "sqrt" if target in _SQRT else "rsqrt" if target in _RSQRT else None
    if root and markers and (markers[0].step, root) in _ROOT:
        return Marker(_ROOT[markers[0].step, root], markers[0].of, markers[0].eps)
    if len(args) == 2 and len(markers) >= 1 and (target in _DIV or target in _MUL):
        return _normalised(ctx, node, target, args, where)
    return None


def _normalised(ctx: Context, node: Node, target: Any, args: list, where: str) -> Value | None:
    """The norm of ``centred / deviation``, ``centred * inverse_deviation``, ``x / rms`` or ``x * inverse_rms``."""
    if target in _DIV:
        num, den = args
        ends = {("centred", "deviation"), ("value", "rms")}
    else:
        den = next(a for a in args if isinstance(a, Marker) and a.step in ("inverse_deviation", "inverse_rms")) \
            if any(isinstance(a, Marker) and a.step in ("inverse_deviation", "inverse_rms") for a in args) else None
        if den is None:
            return None
        num = args[1 - args.index(den)]
        ends = {("centred", "inverse_deviation"), ("value", "inverse_rms")}
    x = num.of if isinstance(num, Marker) else num
    steps = (num.step if isinstance(num, Marker) else "value", den.step if isinstance(den, Marker) else None)
    if steps not in ends or not isinstance(den, Marker) or den.of is not x:
        return None
    if steps[0] == "value":
        return norms.rms_norm(ctx, node, x, (len(x.nodes),), den.eps, None, where)
    layout = "cl" if x.kind == "map" else x.kind  # the LayerNorm over the C nodes at each position
    normed = ops.layer_norm(ctx, node, Value(x.nodes, layout, x.hw, x.root), (len(x.nodes),), den.eps, None, None,
                            where)
    return Value(normed.nodes, x.kind, x.hw, node.name)


def _rms_norm_function(ctx: Context, node: Node, args: list, kwargs: dict, where: str) -> Value:
    """``F.rms_norm(x, normalized_shape, weight, eps)`` with weight a parameter of the model (or None)."""
    names = ("input", "normalized_shape", "weight", "eps")
    bound = dict(zip(names, args)) | kwargs
    weight = bound.get("weight")
    if weight is not None and not isinstance(weight, ParamRef):
        raise UnsupportedModelError(f"{where}: F.rms_norm's weight must be a parameter of the model")
    if bound["input"].kind == "map":
        raise UnsupportedModelError(f"{where}: F.rms_norm on a [batch, C, ...] map normalises its last spatial "
                                    "axis; only an RMSNorm over features, tokens' features or a channels-last map is "
                                    "supported")
    shape = bound["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    pair = (weight.name, functional.state_tensor(ctx, weight.name)) if weight is not None else None
    return norms.rms_norm(ctx, node, bound["input"], shape, bound.get("eps"), pair, where)


def _over_channels(ctx: Context, node: Node, first: Value | Marker, args: list, kwargs: dict) -> bool:
    """Whether a reduction of ``node`` runs over the channel axis of ``first``'s map (module docstring), keeping it."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    at = 3 if node.target in _VAR else 2  # x.mean(dim, keepdim), x.var(dim, unbiased, keepdim)
    keepdim = kwargs.get("keepdim", args[at] if len(args) > at else False)
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    if keepdim is not True or len(dims) != 1 or not isinstance(dims[0], int):
        return False
    value = first.of if isinstance(first, Marker) else first
    rank = len(ctx.shape(node))
    axes = {"map": {1}, "vector": {1}, "tokens": {rank - 1}, "cl": {rank - 1}}.get(value.kind, set())
    return dims[0] % rank in axes


def _biased(args: list, kwargs: dict) -> bool:
    """``x.var(..., unbiased=False)`` or ``correction=0``: the population variance of a norm."""
    if "correction" in kwargs:
        return kwargs["correction"] == 0
    unbiased = kwargs.get("unbiased", args[2] if len(args) > 2 and isinstance(args[2], bool) else True)
    return unbiased is False


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
    fits = {(c,)} if value.kind in ("vector", "tokens", "cl") else {(c, *(1,) * (rank - 2)), (1, c, *(1,) * (rank - 2))}
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
