"""Local and adaptive pooling (max and average, 1-d and 2-d): conversion rule and execution.

Pooling acts on every channel alone, so it adds one node per channel fed by one edge of
kind EDGE_MAXPOOL or EDGE_AVGPOOL (weight 1, no parameter) whose ``edge_geometry`` row holds
the op (``GEOM_COLUMNS``): kernel, stride, padding, dilation, ceil_mode and
count_include_pad for a local pool; only the output size (out_h, out_w) for an adaptive
one. A 1-d pool of a sequence [C, L] is the 2-d pool of its 1 x L map with kernel 1 x k.
The node computes

    h_j = pool(w_ij * h_i)    (max: max over each window; avg: mean over each window)

with w_ij = 1 after conversion. Adaptive average pooling to 1 x 1 (the spatial mean)
stays the EDGE_POOL edge of ``ops.global_pool``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph.graph import EDGE_AVGPOOL, EDGE_MAXPOOL, GEOM_COLUMNS, NO_GEOM

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

# op -> (edge kind, spatial rank, adaptive, argument names after the input)
_LOCAL_MAX = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_LOCAL_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_ADAPTIVE = ("output_size", "return_indices")
FUNCTIONS: dict[Any, tuple[int, int, bool, tuple[str, ...]]] = {
    F.max_pool1d: (EDGE_MAXPOOL, 1, False, _LOCAL_MAX),
    F.max_pool2d: (EDGE_MAXPOOL, 2, False, _LOCAL_MAX),
    F.avg_pool1d: (EDGE_AVGPOOL, 1, False, _LOCAL_AVG[:-1]),
    F.avg_pool2d: (EDGE_AVGPOOL, 2, False, _LOCAL_AVG),
    F.adaptive_max_pool1d: (EDGE_MAXPOOL, 1, True, _ADAPTIVE),
    F.adaptive_max_pool2d: (EDGE_MAXPOOL, 2, True, _ADAPTIVE),
    F.adaptive_avg_pool1d: (EDGE_AVGPOOL, 1, True, _ADAPTIVE[:1]),
    F.adaptive_avg_pool2d: (EDGE_AVGPOOL, 2, True, _ADAPTIVE[:1]),
}
MODULES: dict[type, Any] = {
    nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.AvgPool1d: F.avg_pool1d, nn.AvgPool2d: F.avg_pool2d,
    nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
    nn.AdaptiveAvgPool1d: F.adaptive_avg_pool1d, nn.AdaptiveAvgPool2d: F.adaptive_avg_pool2d,
}


def module_arguments(module: nn.Module) -> dict[str, Any]:
    """The functional arguments of a pooling module (its attributes of the same names)."""
    names = FUNCTIONS[MODULES[type(module)]][3]
    return {name: getattr(module, name) for name in names if hasattr(module, name)}


def bind(target: Any, args: list, kwargs: dict) -> dict[str, Any]:
    """Positional and keyword arguments after the input, by name."""
    names = FUNCTIONS[target][3]
    bound = dict(zip(names, args[1:]))
    bound.update(kwargs)
    return bound


def geometry(target: Any, arguments: dict[str, Any], in_hw: tuple[int, int], where: str) -> tuple[int, tuple[int, ...]]:
    """(edge kind, geometry row) of a pooling call, or UnsupportedModelError.

    Returns kind None for an adaptive average pool to 1 x 1 (the global mean of ``ops.global_pool``).
    """
    kind, rank, adaptive, _ = FUNCTIONS[target]
    if arguments.get("return_indices") or arguments.get("divisor_override") is not None:
        raise UnsupportedModelError(f"{where}: return_indices and divisor_override are not supported")
    geom = dict(zip(GEOM_COLUMNS, NO_GEOM))
    if adaptive:
        size = _spatial(arguments["output_size"], rank, 1)
        out = tuple(in_hw[d] if s is None else int(s) for d, s in enumerate(size))
        if kind == EDGE_AVGPOOL and out == (1, 1):
            return None, NO_GEOM
        geom["out_h"], geom["out_w"] = out
        return kind, tuple(geom.values())
    kernel = _spatial(arguments["kernel_size"], rank, 1)
    stride = arguments.get("stride")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _spatial(stride, rank, 1)
    geom["kh"], geom["kw"] = kernel
    geom["stride_h"], geom["stride_w"] = stride
    geom["pad_h"], geom["pad_w"] = _spatial(arguments.get("padding", 0), rank, 0)
    geom["dil_h"], geom["dil_w"] = _spatial(arguments.get("dilation", 1), rank, 1)
    geom["ceil_mode"] = int(bool(arguments.get("ceil_mode", False)))
    geom["count_include_pad"] = int(bool(arguments.get("count_include_pad", True))) if kind == EDGE_AVGPOOL else 0
    return kind, tuple(int(v) for v in geom.values())


def _spatial(value: Any, rank: int, fill: int) -> tuple:
    """An int or tuple of ``rank`` entries -> (h, w); a 1-d value v -> (fill, v)."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * rank
    return values if rank == 2 else (fill, values[0])


def pool(ctx: Context, node: Node, value: Value, kind: int, geom: tuple[int, ...], where: str) -> Value:
    """A new node per channel, fed by one pooling edge of the given kind and geometry."""
    if value.kind != "map":
        raise UnsupportedModelError(f"{where}: pooling needs a [batch, C, H, W] or [batch, C, L] input")
    shape = ctx.shape(node)
    out_hw = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, int(shape[2]))
    builder = ctx.builder
    out = builder.new_layer(len(value.nodes), out_hw)
    builder.pair_edges(value.nodes, out, kind, geom)
    return Value(out, "map", out_hw, node.name)


def apply(h: torch.Tensor, kind: int, geom: list[int]) -> torch.Tensor:
    """The pooling of edge kind ``kind`` and geometry ``geom`` on maps h [E, P, H, W] -> [E, P, H', W']."""
    kh, kw, sh, sw, ph, pw, dh, dw, ceil, include_pad, oh, ow = geom[:12]
    if kind == EDGE_MAXPOOL:
        if oh:
            return F.adaptive_max_pool2d(h, (oh, ow))
        return F.max_pool2d(h, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode=bool(ceil))
    if oh:
        return F.adaptive_avg_pool2d(h, (oh, ow))
    return F.avg_pool2d(h, (kh, kw), (sh, sw), (ph, pw), ceil_mode=bool(ceil), count_include_pad=bool(include_pad))
