"""Transposed convolutions (``nn.ConvTranspose1d`` / ``nn.ConvTranspose2d``): the conversion rule.

A transposed convolution spreads every input position over a kh x kw patch of the output:

    z_j = sum_i conv_transpose(h_i, W[i, j]) + bias_j        (stride s, padding p, dilation d)

one node per output channel, one ``conv_transpose`` edge i -> j per input channel i of j's
group carrying the kernel W[i, j'] (PyTorch's weight is input-major, [in, out / groups, kh, kw];
the graph stores it output-major like a conv's, ParamEntry source ``kernel_t``). Stride,
padding and dilation sit in ``edge_geometry``; the output padding is not stored: the executor
reads it off the target's size, out = (in - 1) s - 2 p + d (k - 1) + 1 + output_padding.
A 1-d transposed convolution of a sequence [C, L] is the 2-d one of its 1 x L map (kernel 1 x k).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph.graph import EDGE_CONV_T, NO_GEOM, X_BIAS, kernel_hw

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d)


def conv_transpose(ctx: Context, node: Node, module: nn.ConvTranspose1d | nn.ConvTranspose2d, value: Value,
                   path: str) -> Value:
    """A layer of out channels; edges from the input channels of each output's group (see the module docstring)."""
    where = f"{path} ({type(module).__name__})"
    if module.padding_mode != "zeros":
        raise UnsupportedModelError(f"{where} has padding_mode={module.padding_mode!r}; only 'zeros' is supported")
    w = module.weight  # [in, out / groups, (kh,) kw]
    spatial = w.dim() - 2
    shape = ctx.shape(node)
    if value.kind != "map" or len(shape) != spatial + 2:
        raise UnsupportedModelError(f"{where} needs a [batch, C{', L' if spatial == 1 else ', H, W'}] input")
    lift = (lambda t, fill: (fill, t[0])) if spatial == 1 else (lambda t, fill: tuple(t))
    kh, kw = kernel_hw(tuple(w.shape))
    geom = (kh, kw, *lift(module.stride, 1), *lift(module.padding, 0), *lift(module.dilation, 1)) + NO_GEOM[8:]
    out_hw = (int(shape[2]), int(shape[3])) if spatial == 2 else (1, int(shape[2]))
    groups = module.groups
    in_g, out_g = w.shape[0] // groups, w.shape[1]
    kernels = w.reshape(groups, in_g, out_g, kh, kw).transpose(1, 2).reshape(groups * out_g, in_g, kh, kw)
    builder = ctx.builder
    out_nodes = builder.new_layer(groups * out_g, out_hw)
    first = builder.dense_edges(value.nodes, out_nodes, kernels, EDGE_CONV_T, geom, groups=groups)
    ctx.record_edges(f"{path}.weight", w, "kernel_t", first, in_g)
    if module.bias is not None:
        builder.record_node_param(f"{path}.bias", out_nodes, X_BIAS, module.bias)
    return Value(out_nodes, "map", out_hw, node.name)
