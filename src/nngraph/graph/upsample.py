"""Up-sampling by interpolation (``nn.Upsample``, ``F.interpolate``): conversion rule and execution.

Interpolation acts on every channel alone, so it adds one node per channel fed by one edge
of kind EDGE_UPSAMPLE_NEAREST or EDGE_UPSAMPLE_BILINEAR (weight 1, no parameter) whose
``edge_geometry`` row holds the output size (out_h, out_w) and, for bilinear, align_corners.
The node computes

    h_j = interpolate(w_ij * h_i, size=(out_h, out_w), mode)     (w_ij = 1 after conversion)

A sequence [C, L] is the 1 x L map: 1-d ``nearest`` is 2-d nearest and ``linear`` is
bilinear with one row (H = 1 maps to itself with weight 1). A ``scale_factor`` is kept as
the output size it gives: the interpolation weights are the same only where input size x
scale is whole (then in / out = 1 / scale exactly), so other scales are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph.graph import EDGE_UPSAMPLE_BILINEAR, EDGE_UPSAMPLE_NEAREST, GEOM_COLUMNS, NO_GEOM

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

KINDS = (EDGE_UPSAMPLE_NEAREST, EDGE_UPSAMPLE_BILINEAR)
MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
FUNCTIONS = (F.interpolate,)
_ARGUMENTS = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
_MODES = {"nearest": (EDGE_UPSAMPLE_NEAREST, (1, 2)), "bilinear": (EDGE_UPSAMPLE_BILINEAR, (2,)),
          "linear": (EDGE_UPSAMPLE_BILINEAR, (1,))}  # mode -> (edge kind, spatial ranks it takes)
_OUT_H, _OUT_W, _ALIGN = (GEOM_COLUMNS.index(c) for c in ("out_h", "out_w", "align_corners"))


def module_arguments(module: nn.Upsample) -> dict[str, Any]:
    """The F.interpolate arguments of an up-sampling module (UpsamplingBilinear2d: align_corners=True)."""
    return {"size": module.size, "scale_factor": module.scale_factor, "mode": module.mode,
            "align_corners": module.align_corners, "recompute_scale_factor": module.recompute_scale_factor}


def bind(args: list, kwargs: dict) -> dict[str, Any]:
    """Positional and keyword arguments of ``F.interpolate`` after the input, by name."""
    bound = dict(zip(_ARGUMENTS, args[1:]))
    bound.update(kwargs)
    return bound


def upsample(ctx: Context, node: Node, value: Value, arguments: dict[str, Any], where: str) -> Value:
    """A new node per channel, fed by one up-sampling edge holding the output size and mode."""
    shape = ctx.shape(node)
    spatial = len(shape) - 2
    mode = arguments.get("mode") or "nearest"
    if value.kind != "map" or spatial not in (1, 2):
        raise UnsupportedModelError(f"{where}: interpolation needs a [batch, C, H, W] or [batch, C, L] input")
    if mode not in _MODES or spatial not in _MODES[mode][1]:
        raise UnsupportedModelError(
            f"{where}: mode={mode!r} on a {spatial}-d input is not supported; use 'nearest', or 'bilinear' on maps "
            "and 'linear' on sequences"
        )
    if arguments.get("antialias"):
        raise UnsupportedModelError(f"{where}: antialias=True is not supported; use antialias=False")
    out_hw = (int(shape[2]), int(shape[3])) if spatial == 2 else (1, int(shape[2]))
    scale = arguments.get("scale_factor")
    if scale is not None and not arguments.get("recompute_scale_factor"):
        scales = tuple(scale) if isinstance(scale, (list, tuple)) else (scale,) * spatial
        sizes = value.hw if spatial == 2 else value.hw[1:]
        if any(float(s) * n != int(float(s) * n) for s, n in zip(scales, sizes)):
            raise UnsupportedModelError(
                f"{where}: scale_factor={scale} does not give a whole output size from {list(sizes)}; "
                "pass size=... (or recompute_scale_factor=True)"
            )
    kind = _MODES[mode][0]
    geom = list(NO_GEOM)
    geom[_OUT_H], geom[_OUT_W] = out_hw
    geom[_ALIGN] = int(bool(arguments.get("align_corners"))) if kind == EDGE_UPSAMPLE_BILINEAR else 0
    builder = ctx.builder
    out = builder.new_layer(len(value.nodes), out_hw)
    builder.pair_edges(value.nodes, out, kind, tuple(geom))
    return Value(out, "map", out_hw, node.name)


def apply(h: torch.Tensor, kind: int, geom: list[int]) -> torch.Tensor:
    """The interpolation of edge kind ``kind`` and geometry ``geom`` on maps h [E, P, H, W] -> [E, P, out_h, out_w]."""
    size = (geom[_OUT_H], geom[_OUT_W])
    if kind == EDGE_UPSAMPLE_NEAREST:
        return F.interpolate(h, size=size, mode="nearest")
    return F.interpolate(h, size=size, mode="bilinear", align_corners=bool(geom[_ALIGN]))
