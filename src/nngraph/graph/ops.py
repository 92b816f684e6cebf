"""Op rules: how each supported layer or function adds nodes, edges and features.

Each rule takes the conversion context, the fx node being converted and the graph-side
``Value`` of its inputs, and returns the ``Value`` of its output. Pointwise ops (offset,
norm, activation) are folded into the nodes that produce their input when those nodes
form one whole hidden layer, nothing else reads the pre-op value and the slot is still
free (a node applies offset -> norm -> act in that order); otherwise they get a fresh
layer fed by identity edges, so the graph always stays the computation graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph.builder import Value
from nngraph.graph.graph import (
    ACT_SINE,
    EDGE_CONV,
    EDGE_FLATTEN,
    EDGE_IDENTITY,
    EDGE_LINEAR,
    EDGE_POOL,
    EDGE_RESIDUAL,
    NORM_BATCH,
    NORM_LAYER,
    X_ACT_PARAM,
    X_BIAS,
    X_NORM_BIAS,
    X_NORM_MEAN,
    X_NORM_VAR,
    X_NORM_WEIGHT,
    X_OFFSET,
)

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context


def _open(ctx: Context, value: Value, slot: str, where: str) -> list[int]:
    """Nodes that may take pointwise ``slot``: the value's own, or a fresh identity layer."""
    if value.kind not in ("vector", "map"):
        raise UnsupportedModelError(
            f"{where}: a pointwise op on a flattened C x H x W map is not supported; "
            "flatten right before a Linear, or pool first"
        )
    builder = ctx.builder
    if ctx.consumers[value.root] == 1 and builder.free_slots(value.nodes, slot):
        builder.fill_slot(value.nodes, slot)
        return value.nodes
    fresh = builder.new_layer(len(value.nodes), value.hw)
    builder.pair_edges(value.nodes, fresh, EDGE_IDENTITY)
    builder.fill_slot(fresh, slot)
    return fresh


def linear(ctx: Context, node: Node, module: nn.Linear, value: Value, path: str) -> Value:
    """Linear: one node per output unit; edge i -> j carries W[j, i]; bias -> X_BIAS."""
    builder = ctx.builder
    out_nodes = builder.new_layer(module.out_features, (1, 1))
    if value.kind == "vector":
        first = builder.dense_edges(value.nodes, out_nodes, module.weight, EDGE_LINEAR)
        ctx.record_edges(f"{path}.weight", module.weight, "kernel", first, len(value.nodes))
    elif value.kind == "flat":
        # W [out, C*H*W] -> per (j, c) the H*W weights that read channel c.
        h, w = value.hw
        channels = len(value.nodes)
        weights = module.weight.reshape(module.out_features, channels, h * w)
        first = builder.dense_edges(value.nodes, out_nodes, weights, EDGE_FLATTEN)
        ctx.record_edges(f"{path}.weight", module.weight, "flat", first, channels)
    else:
        raise UnsupportedModelError(
            f"{path} ({type(module).__name__}) reads a C x H x W map; flatten it or pool it first"
        )
    if module.bias is not None:
        builder.record_node_param(f"{path}.bias", out_nodes, X_BIAS, module.bias)
    return Value(out_nodes, "vector", (1, 1), node.name)


def conv2d(ctx: Context, node: Node, module: nn.Conv2d, value: Value, path: str) -> Value:
    """Conv2d: one node per output channel; edge c -> j carries the kernel W[j, c]."""
    where = f"{path} (Conv2d)"
    if value.kind != "map":
        raise UnsupportedModelError(f"{where} needs a [batch, C, H, W] input")
    if module.groups != 1:
        raise UnsupportedModelError(f"{where} has groups={module.groups}; only groups=1 is supported")
    if module.padding_mode != "zeros":
        raise UnsupportedModelError(f"{where} has padding_mode={module.padding_mode!r}; only 'zeros' is supported")
    kh, kw = module.kernel_size
    padding = _conv_padding(module, where)
    geom = (kh, kw, *module.stride, *padding, *module.dilation)
    out_hw = tuple(ctx.shape(node)[2:])
    builder = ctx.builder
    out_nodes = builder.new_layer(module.out_channels, out_hw)
    first = builder.dense_edges(value.nodes, out_nodes, module.weight, EDGE_CONV, geom)
    ctx.record_edges(f"{path}.weight", module.weight, "kernel", first, len(value.nodes))
    if module.bias is not None:
        builder.record_node_param(f"{path}.bias", out_nodes, X_BIAS, module.bias)
    return Value(out_nodes, "map", out_hw, node.name)


def _conv_padding(module: nn.Conv2d, where: str) -> tuple[int, int]:
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0)
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(t % 2 for t in totals):
            raise UnsupportedModelError(f"{where}: padding='same' is asymmetric here; use an odd kernel")
        return (totals[0] // 2, totals[1] // 2)
    return tuple(module.padding)


def batchnorm(ctx: Context, node: Node, module: nn.modules.batchnorm._BatchNorm, value: Value, path: str) -> Value:
    """BatchNorm (eval; checked by to_graph): z <- (z - mean) / sqrt(var + eps) * gamma + beta, per node."""
    where = f"{path} ({type(module).__name__})"
    if not module.track_running_stats or module.running_mean is None:
        raise UnsupportedModelError(f"{where} has no running statistics; use track_running_stats=True")
    expected = "map" if isinstance(module, nn.BatchNorm2d) else "vector"
    if value.kind != expected:
        raise UnsupportedModelError(f"{where} must follow a {'Conv2d' if expected == 'map' else 'Linear'} output")
    nodes = _open(ctx, value, "norm", where)
    builder = ctx.builder
    for n in nodes:
        builder.node_norm[n] = NORM_BATCH
        builder.node_eps[n] = float(module.eps)
    if module.affine:
        builder.record_node_param(f"{path}.weight", nodes, X_NORM_WEIGHT, module.weight)
        builder.record_node_param(f"{path}.bias", nodes, X_NORM_BIAS, module.bias)
    builder.record_node_param(f"{path}.running_mean", nodes, X_NORM_MEAN, module.running_mean)
    builder.record_node_param(f"{path}.running_var", nodes, X_NORM_VAR, module.running_var)
    ctx.record_buffer(f"{path}.num_batches_tracked", module.num_batches_tracked)
    return Value(nodes, value.kind, value.hw, node.name)


def layernorm(ctx: Context, node: Node, module: nn.LayerNorm, value: Value, path: str) -> Value:
    """LayerNorm over the units of one layer: z <- (z - mean_layer) / sqrt(var_layer + eps) * gamma + beta."""
    where = f"{path} (LayerNorm)"
    if value.kind != "vector" or tuple(module.normalized_shape) != (len(value.nodes),):
        raise UnsupportedModelError(f"{where}: only LayerNorm over the features of a [batch, F] tensor is supported")
    nodes = _open(ctx, value, "norm", where)
    builder = ctx.builder
    for n in nodes:
        builder.node_norm[n] = NORM_LAYER
        builder.node_eps[n] = float(module.eps)
    if module.weight is not None:
        builder.record_node_param(f"{path}.weight", nodes, X_NORM_WEIGHT, module.weight)
    if module.bias is not None:
        builder.record_node_param(f"{path}.bias", nodes, X_NORM_BIAS, module.bias)
    return Value(nodes, value.kind, value.hw, node.name)


def activation(ctx: Context, node: Node, value: Value, act: int, param: float, where: str) -> Value:
    """Activation ``act`` at every node of the value (``param``: w0 or negative slope)."""
    nodes = _open(ctx, value, "act", where)
    for n in nodes:
        ctx.builder.node_act[n] = act
    ctx.builder.set_feature(nodes, X_ACT_PARAM, param)
    return Value(nodes, value.kind, value.hw, node.name)


def sine(ctx: Context, node: Node, value: Value, where: str) -> Value:
    """``sin(w0 * z)``: a scaled value gives its w0; a plain one has w0 = 1."""
    w0 = 1.0 if value.scale is None else value.scale
    base = Value(value.nodes, value.kind, value.hw, value.root)
    return activation(ctx, node, base, ACT_SINE, w0, where)


def scale(ctx: Context, node: Node, value: Value, factor: float, where: str) -> Value:
    """``factor * z``: allowed only as the argument of ``sin`` (the SIREN activation)."""
    if value.kind not in ("vector", "map") or any(u.target not in ctx.sine_targets for u in node.users):
        raise UnsupportedModelError(
            f"{where}: multiplying by a constant is supported only as sin(w0 * x); fold the factor into the weights"
        )
    return Value(value.nodes, value.kind, value.hw, value.root, scale=factor)


def add_constant(ctx: Context, node: Node, value: Value, constant: float, where: str) -> Value:
    """``z + c``: a constant offset at every node (the SIREN output offset)."""
    nodes = _open(ctx, value, "offset", where)
    ctx.builder.set_feature(nodes, X_OFFSET, constant)
    return Value(nodes, value.kind, value.hw, node.name)


def residual(ctx: Context, node: Node, a: Value, b: Value, where: str) -> Value:
    """``a + b``: a new layer s with residual edges a_k -> s_k and b_k -> s_k."""
    if a.kind != b.kind or len(a.nodes) != len(b.nodes) or a.hw != b.hw or a.kind not in ("vector", "map"):
        raise UnsupportedModelError(
            f"{where}: residual addition needs two tensors of the same shape (no broadcasting, no flattened maps)"
        )
    builder = ctx.builder
    out = builder.new_layer(len(a.nodes), a.hw)
    builder.pair_edges(a.nodes, out, EDGE_RESIDUAL)
    builder.pair_edges(b.nodes, out, EDGE_RESIDUAL)
    return Value(out, a.kind, a.hw, node.name)


def concatenate(ctx: Context, node: Node, values: list[Value], where: str) -> Value:
    """``torch.cat`` along features/channels: the node lists are joined, nothing is added."""
    kinds = {v.kind for v in values}
    if len(kinds) != 1 or kinds - {"vector", "map"} or len({v.hw for v in values}) != 1:
        raise UnsupportedModelError(f"{where}: torch.cat needs tensors of one kind and spatial size")
    nodes = [n for v in values for n in v.nodes]
    return Value(nodes, values[0].kind, values[0].hw, node.name)


def flatten(ctx: Context, node: Node, value: Value, where: str) -> Value:
    """Flatten [P, C, H, W] -> [P, C*H*W]; a 1x1 map becomes plain units."""
    if value.kind == "vector" or value.kind == "flat":
        return value
    if value.kind != "map":
        raise UnsupportedModelError(f"{where}: cannot flatten this tensor")
    kind = "vector" if value.hw == (1, 1) else "flat"
    return Value(value.nodes, kind, value.hw, value.root)


def global_pool(ctx: Context, node: Node, value: Value, keepdim: bool, where: str) -> Value:
    """Global average pooling: a new node per channel, fed by a pooling edge (spatial mean)."""
    if value.kind != "map":
        raise UnsupportedModelError(f"{where}: global average pooling needs a [batch, C, H, W] input")
    builder = ctx.builder
    out = builder.new_layer(len(value.nodes), (1, 1))
    builder.pair_edges(value.nodes, out, EDGE_POOL)
    return Value(out, "map" if keepdim else "vector", (1, 1), node.name)
