"""Layers written as functions on raw parameters: ``F.linear(x, self.weight, self.bias)``,
``F.conv1d/conv2d(x, w, b, ...)``, ``F.prelu(x, w)``, parameters in ``nn.ParameterList``,
and a bare ``nn.Linear`` / ``nn.Conv2d`` as the whole model (fx traces its forward into
those functions).

torch.fx records each use of a parameter as a ``get_attr`` node whose target is its
attribute path; for parameters and buffers that path is the state_dict key. Such a node
becomes a ``ParamRef``; the layer rules of ``ops.py`` take (name, tensor) pairs, so a
functional layer gives exactly the graph and ParamEntry names of the module form.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nngraph.errors import UnsupportedModelError
from nngraph.graph import ops
from nngraph.graph.builder import Value

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context


@dataclass
class ParamRef:
    """A parameter or buffer read by ``forward`` as a tensor: its state_dict name and value."""

    name: str
    tensor: torch.Tensor


def param_ref(ctx: Context, node: Node, state_names: set[str]) -> ParamRef:
    """The ``ParamRef`` of a get_attr node; a plain tensor attribute (not in the state_dict) is refused."""
    if node.target not in state_names:
        raise UnsupportedModelError(
            f"{ctx.name}: tensor attribute {node.target!r} is not a parameter or buffer; register it with "
            "nn.Parameter or register_buffer"
        )
    return ParamRef(node.target, state_tensor(ctx, node.target))


def state_tensor(ctx: Context, name: str) -> torch.Tensor:
    """The model's parameter or buffer of state_dict name ``name`` (a ``ParamRef`` may hold a view of it)."""
    return functools.reduce(getattr, name.split("."), ctx.gm)


_CONV = {F.conv1d: 1, F.conv2d: 2}
_CONV_ARGS = ("weight", "bias", "stride", "padding", "dilation", "groups")
TARGETS = (F.linear, F.conv1d, F.conv2d, F.prelu, F.layer_norm, F.batch_norm)


def layer(ctx: Context, node: Node, args: list, kwargs: dict, where: str) -> Value:
    """F.linear / F.conv1d / F.conv2d / F.prelu / F.layer_norm / F.batch_norm of a Value with ParamRef weights."""
    value = args[0]
    if not isinstance(value, Value):
        raise UnsupportedModelError(f"{where}: the input of a functional layer must be computed from the model's input")
    if node.target is F.layer_norm:
        return _layer_norm(ctx, node, value, args, kwargs, where)
    if node.target is F.batch_norm:
        return _batch_norm(ctx, node, value, args, kwargs, where)
    names = ("weight", "bias") if node.target is F.linear else ("weight",) if node.target is F.prelu else _CONV_ARGS
    bound, weight, bias = _bind_parameters(ctx, names, args, kwargs, where)
    w = (weight.name, weight.tensor)
    b = (bias.name, bias.tensor) if bias is not None else None
    if node.target is F.linear:
        return ops.linear_layer(ctx, node, value, w, b, where)
    if node.target is F.prelu:
        return ops.prelu(ctx, node, value, w, where)
    spatial = _CONV[node.target]
    tup = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * spatial  # noqa: E731
    kernel = tuple(weight.tensor.shape[2:])
    dilation = tup(bound.get("dilation", 1))
    padding = ops.conv_padding(bound.get("padding", 0) if isinstance(bound.get("padding", 0), str)
                               else tup(bound.get("padding", 0)), kernel, dilation, where)
    options = (tup(bound.get("stride", 1)), padding, dilation, int(bound.get("groups", 1)))
    return ops.conv_layer(ctx, node, value, w, b, options, where)


def _bind_parameters(ctx: Context, names: tuple[str, ...], args: list, kwargs: dict,
                     where: str) -> tuple[dict, ParamRef | None, ParamRef | None]:
    """The call's arguments after the input by name, and its weight and bias, which must be
    the model's own parameters (each marked as used)."""
    bound = dict(zip(names, args[1:]))
    bound.update(kwargs)
    weight, bias = bound.get("weight"), bound.get("bias")
    for p in (weight, bias):
        if p is not None and not isinstance(p, ParamRef):
            raise UnsupportedModelError(f"{where}: weights must be parameters of the model (nn.Parameter), not computed")
    return bound, weight, bias


def _layer_norm(ctx: Context, node: Node, value: Value, args: list, kwargs: dict, where: str) -> Value:
    """F.layer_norm(x, normalized_shape, weight, bias, eps) (ConvNeXt's channels-last LayerNorm)."""
    bound, weight, bias = _bind_parameters(ctx, ("normalized_shape", "weight", "bias", "eps"), args, kwargs, where)
    shape = bound["normalized_shape"]
    return ops.layer_norm(ctx, node, value, tuple(shape) if isinstance(shape, (list, tuple)) else (shape,),
                          float(bound.get("eps", 1e-5)), (weight.name, weight.tensor) if weight is not None else None,
                          (bias.name, bias.tensor) if bias is not None else None, where)


def _batch_norm(ctx: Context, node: Node, value: Value, args: list, kwargs: dict, where: str) -> Value:
    """F.batch_norm(x, running_mean, running_var, weight, bias, training=False, momentum, eps) on the
    model's buffers and parameters (a BatchNorm as torch.export records it); training mode is refused."""
    names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound, weight, bias = _bind_parameters(ctx, names, args, kwargs, where)
    mean, var = bound.get("running_mean"), bound.get("running_var")
    if bound.get("training") or not (isinstance(mean, ParamRef) and isinstance(var, ParamRef)):
        raise UnsupportedModelError(f"{where}: batch_norm must use the model's running statistics in eval mode; "
                                    "call model.eval() before exporting or converting")
    if (weight is None) != (bias is None):
        raise UnsupportedModelError(f"{where}: batch_norm with a weight but no bias (or a bias but no weight) "
                                    "is not supported; give it both or neither")
    affine = ((weight.name, weight.tensor), (bias.name, bias.tensor)) if weight is not None else None
    return ops.batch_norm(ctx, node, value, (mean.name, mean.tensor), (var.name, var.tensor), affine,
                          float(bound.get("eps", 1e-5)), where)


def is_layer(target: Any) -> bool:
    return any(target is t for t in TARGETS)
