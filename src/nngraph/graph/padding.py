"""Zero padding and spatial crops of a map (``F.pad``, ``nn.ZeroPad1d/2d``, ``x[:, :, a:b, c:d]``): conversion
rule and execution.

Both act on every channel alone, so they add one node per channel fed by one ``pad`` edge
(weight 1, no parameter) whose ``edge_geometry`` row holds the offset (pad_h = top, pad_w =
left) of the source's map in the target's out_h x out_w map:

    h_j[r, c] = w_ij * h_i[r - top, c - left]   where that position exists, else 0

A negative offset crops (a U-Net's centre crop of its skip), a positive one pads with
zeros (a U-Net's ``F.pad`` of an up-sampled map to its skip's size). A sequence [C, L] is
the 1 x L map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph.graph import EDGE_PAD, GEOM_COLUMNS, NO_GEOM

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)
_TOP, _LEFT, _OUT_H, _OUT_W = (GEOM_COLUMNS.index(c) for c in ("pad_h", "pad_w", "out_h", "out_w"))


def module_pads(module: nn.Module, where: str) -> list[int]:
    """The F.pad list of a zero-padding module (ConstantPad with value 0 only)."""
    if getattr(module, "value", 0.0) != 0:
        raise UnsupportedModelError(f"{where}: only padding with zeros is supported, got value={module.value}")
    return list(module.padding)


def pad(ctx: Context, node: Node, value: Value, pads: Any, mode: Any, fill: Any, where: str) -> Value:
    """``F.pad(x, pads)`` with zeros: the same nodes when every pad is 0, else a layer fed by pad edges."""
    if not isinstance(pads, (list, tuple)) or not all(isinstance(p, int) for p in pads):
        raise UnsupportedModelError(f"{where}: F.pad needs its pads as integers, got {pads!r}")
    if mode not in (None, "constant") or fill not in (None, 0, 0.0):
        raise UnsupportedModelError(f"{where}: only F.pad with zeros (mode='constant', value=0) is supported")
    if not any(pads):
        return value
    spatial = len(ctx.shape(node)) - 2
    if value.kind != "map" or len(pads) > 2 * spatial:
        raise UnsupportedModelError(f"{where}: F.pad is supported on the H, W (or L) axes of a [batch, C, ...] map")
    left = pads[0]
    top = pads[2] if len(pads) > 2 else 0
    return _place(ctx, node, value, top, left, where)


def crop(ctx: Context, node: Node, value: Value, index: tuple, where: str) -> Value | None:
    """``x[:, :, a:b, c:d]`` (or ``x[:, :, a:b]`` of a sequence) with steps of 1: the same nodes when every
    position is kept, a layer fed by pad edges of negative offset otherwise; None if not such an index."""
    full = slice(None)
    spatial = len(ctx.shape(node.args[0])) - 2
    if len(index) != 2 + spatial or index[:2] != (full, full) or value.kind != "map" \
            or not all(isinstance(p, slice) and p.step in (None, 1) for p in index[2:]):
        return None
    in_hw = tuple(ctx.shape(node.args[0]))[2:]
    starts = [p.indices(n)[0] for p, n in zip(index[2:], in_hw)]
    if tuple(ctx.shape(node))[2:] == in_hw:
        return value
    top, left = (starts[0], starts[1]) if spatial == 2 else (0, starts[0])
    return _place(ctx, node, value, -top, -left, where)


def _place(ctx: Context, node: Node, value: Value, top: int, left: int, where: str) -> Value:
    shape = ctx.shape(node)
    out_hw = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, int(shape[2]))
    if any(n <= 0 for n in out_hw):
        raise UnsupportedModelError(f"{where}: the padded or cropped map is empty")
    geom = list(NO_GEOM)
    geom[_TOP], geom[_LEFT], geom[_OUT_H], geom[_OUT_W] = top, left, *out_hw
    builder = ctx.builder
    out = builder.new_layer(len(value.nodes), out_hw)
    builder.pair_edges(value.nodes, out, EDGE_PAD, tuple(geom))
    return Value(out, "map", out_hw, node.name)


def apply(h: torch.Tensor, geom: list[int]) -> torch.Tensor:
    """Maps h [E, P, H, W] placed at (top, left) of out_h x out_w maps (zeros around, cropped outside)."""
    top, left, out_h, out_w = geom[_TOP], geom[_LEFT], geom[_OUT_H], geom[_OUT_W]
    return F.pad(h, (left, out_w - h.shape[-1] - left, top, out_h - h.shape[-2] - top))
