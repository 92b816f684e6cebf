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

import torch
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph import mixing
from nngraph.graph.builder import Value
from nngraph.graph.graph import (
    ACT_PRELU,
    ACT_SINE,
    EDGE_CONV,
    EDGE_FLATTEN,
    EDGE_IDENTITY,
    EDGE_LINEAR,
    EDGE_POOL,
    EDGE_RESIDUAL,
    NORM_BATCH,
    NO_GEOM,
    NORM_LAYER,
    X_ACT_PARAM,
    X_ACT_PARAM2,
    X_BIAS,
    X_NORM_BIAS,
    X_NORM_MEAN,
    X_NORM_VAR,
    X_NORM_WEIGHT,
    X_OFFSET,
    kernel_hw,
)

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context


def _open(ctx: Context, value: Value, slot: str, where: str) -> list[int]:
    """Nodes that may take pointwise ``slot``: the value's own, or a fresh identity layer."""
    if value.kind not in ("vector", "map", "tokens", "tbd", "cl", "unbound"):  # unbound: one channel (layouts.py)
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


def _kept(value: Value, nodes: list[int], root: str) -> Value:
    """``value``'s layout on other nodes."""
    return Value(nodes, value.kind, value.hw, root, heads=value.heads)


def linear(ctx: Context, node: Node, module: nn.Linear, value: Value, path: str) -> Value:
    """nn.Linear: see ``linear_layer``."""
    return linear_layer(ctx, node, value, (f"{path}.weight", module.weight),
                        (f"{path}.bias", module.bias) if module.bias is not None else None, f"{path} (Linear)")


def linear_layer(ctx: Context, node: Node, value: Value, weight: tuple[str, torch.Tensor],
                 bias: tuple[str, torch.Tensor] | None, where: str) -> Value:
    """Linear: one node per output unit; edge i -> j carries W[j, i]; bias -> X_BIAS.

    On tokens [P, T, D] the same edges act at every token (a node's value is a 1 x T sequence).
    ``weight`` and ``bias`` are (state_dict name, tensor) of a module or of raw parameters.
    """
    name, w = weight
    if w.dim() != 2:
        raise UnsupportedModelError(f"{where}: a linear weight must be [out, in], got {list(w.shape)}")
    if value.kind == "unbound":
        raise UnsupportedModelError(f"{where} reads a channel of x.unbind(dim) (its channel axis removed); stack the "
                                    "channels back (torch.stack(pieces, dim)) or use x.chunk(C, dim)")
    builder = ctx.builder
    tokens = value.kind in ("tokens", "cl")  # a Linear over the last axis, at every position
    out_nodes = builder.new_layer(w.shape[0], value.hw if tokens else (1, 1))
    if value.kind == "vector" or tokens:
        first = builder.dense_edges(value.nodes, out_nodes, w, EDGE_LINEAR)
        ctx.record_edges(name, w, "kernel", first, len(value.nodes))
    elif value.kind == "flat":
        # W [out, C*H*W] -> per (j, c) the H*W weights that read channel c.
        h, wd = value.hw
        channels = len(value.nodes)
        weights = w.reshape(w.shape[0], channels, h * wd)
        first = builder.dense_edges(value.nodes, out_nodes, weights, EDGE_FLATTEN)
        ctx.record_edges(name, w, "flat", first, channels)
    elif mixing.is_sequence(ctx, node, value):  # token mixing: one [T', T] map shared by every channel
        return mixing.linear_over_positions(ctx, node, value, weight, bias, where)
    else:
        raise UnsupportedModelError(
            f"{where} reads a [batch, C, H, W] map; for a Linear over the channels permute it channels last "
            "(x.permute(0, 2, 3, 1)); a Linear over positions is supported only over the L positions of a "
            "[batch, C, L] sequence (MLP-Mixer's token mixing: x.flatten(2), or tokens .transpose(1, 2)); "
            "else flatten it or pool it first"
        )
    if bias is not None:
        builder.record_node_param(bias[0], out_nodes, X_BIAS, bias[1])
    if tokens:
        return Value(out_nodes, value.kind, value.hw, node.name)
    return Value(out_nodes, "vector", (1, 1), node.name)


def conv2d(ctx: Context, node: Node, module: nn.Conv1d | nn.Conv2d, value: Value, path: str) -> Value:
    """nn.Conv1d / nn.Conv2d: see ``conv_layer``."""
    where = f"{path} ({type(module).__name__})"
    if module.padding_mode != "zeros":
        raise UnsupportedModelError(f"{where} has padding_mode={module.padding_mode!r}; only 'zeros' is supported")
    padding = _conv_padding(module, where)
    return conv_layer(ctx, node, value, (f"{path}.weight", module.weight),
                      (f"{path}.bias", module.bias) if module.bias is not None else None,
                      (module.stride, padding, module.dilation, module.groups), where)


def conv_layer(ctx: Context, node: Node, value: Value, weight: tuple[str, torch.Tensor],
               bias: tuple[str, torch.Tensor] | None, options: tuple, where: str) -> Value:
    """Conv1d/Conv2d: one node per output channel; edge c -> j carries the kernel W[j, c].

    ``options`` = (stride, padding, dilation, groups) as the module holds them (1-tuples
    for Conv1d: its kernel k becomes 1 x k on the 1 x L map of a sequence). With groups
    g, output j reads only the input channels of its group (in / g edges per output).
    """
    if value.kind == "tokens":  # Conv1d(T, T', 1) on [B, T, D]: token mixing
        return mixing.conv_over_tokens(ctx, node, value, weight, bias, options, where)
    stride, padding, dilation, groups = options
    name, w = weight
    spatial = w.dim() - 2
    rank = len(ctx.shape(node))
    if value.kind != "map" or rank != spatial + 2:
        raise UnsupportedModelError(f"{where} needs a [batch, C{', L' if spatial == 1 else ', H, W'}] input")
    lift = (lambda t, fill: (fill, t[0])) if spatial == 1 else (lambda t, fill: tuple(t))
    kh, kw = kernel_hw(tuple(w.shape))
    geom = (kh, kw, *lift(stride, 1), *lift(padding, 0), *lift(dilation, 1)) + NO_GEOM[8:]
    out_hw = tuple(ctx.shape(node)[2:]) if spatial == 2 else (1, int(ctx.shape(node)[2]))
    builder = ctx.builder
    out_nodes = builder.new_layer(w.shape[0], out_hw)
    kernels = w.reshape(w.shape[0], w.shape[1], kh, kw)  # Conv1d [out, in_g, k] -> [out, in_g, 1, k]
    first = builder.dense_edges(value.nodes, out_nodes, kernels, EDGE_CONV, geom, groups=groups)
    ctx.record_edges(name, w, "kernel", first, w.shape[1])
    if bias is not None:
        builder.record_node_param(bias[0], out_nodes, X_BIAS, bias[1])
    return Value(out_nodes, "map", out_hw, node.name)


def _conv_padding(module: nn.Conv1d | nn.Conv2d, where: str) -> tuple[int, ...]:
    return conv_padding(module.padding, module.kernel_size, module.dilation, where)


def conv_padding(padding, kernel: tuple[int, ...], dilation: tuple[int, ...], where: str) -> tuple[int, ...]:
    """Numeric padding per spatial dim of a conv's padding (numbers, 'valid' or symmetric 'same')."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(kernel)
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in totals):
            raise UnsupportedModelError(f"{where}: padding='same' is asymmetric here; use an odd kernel")
        return tuple(t // 2 for t in totals)
    return tuple(padding)


def batchnorm(ctx: Context, node: Node, module: nn.modules.batchnorm._BatchNorm, value: Value, path: str) -> Value:
    """nn.BatchNorm1d / 2d (eval; checked by to_graph): see ``batch_norm``."""
    where = f"{path} ({type(module).__name__})"
    if not module.track_running_stats or module.running_mean is None:
        raise UnsupportedModelError(f"{where} has no running statistics; use track_running_stats=True")
    rank = len(ctx.shape(node))
    expected = {nn.BatchNorm2d: (4,), nn.BatchNorm1d: (2, 3)}[type(module)]
    if rank not in expected:
        raise UnsupportedModelError(f"{where} must follow a {'Conv2d' if rank == 4 else 'Linear or Conv1d'} output")
    affine = ((f"{path}.weight", module.weight), (f"{path}.bias", module.bias)) if module.affine else None
    value = batch_norm(ctx, node, value, (f"{path}.running_mean", module.running_mean),
                       (f"{path}.running_var", module.running_var), affine, float(module.eps), where)
    ctx.record_buffer(f"{path}.num_batches_tracked", module.num_batches_tracked)
    return value


def batch_norm(ctx: Context, node: Node, value: Value, mean: tuple[str, torch.Tensor], var: tuple[str, torch.Tensor],
               affine: tuple[tuple[str, torch.Tensor], tuple[str, torch.Tensor]] | None, eps: float,
               where: str) -> Value:
    """BatchNorm with running statistics, per channel node: z <- (z - mean) / sqrt(var + eps) * gamma + beta
    (``affine`` = the (name, tensor) of gamma and beta, None for gamma = 1, beta = 0)."""
    rank = len(ctx.shape(node))
    if value.kind != ("vector" if rank == 2 else "map") or rank not in (2, 3, 4):
        raise UnsupportedModelError(f"{where} must follow a Linear, Conv1d or Conv2d output")
    nodes = _open(ctx, value, "norm", where)
    builder = ctx.builder
    for n in nodes:
        builder.node_norm[n] = NORM_BATCH
        builder.node_eps[n] = eps
    if affine is not None:
        (gamma_name, gamma), (beta_name, beta) = affine
        builder.record_node_param(gamma_name, nodes, X_NORM_WEIGHT, gamma)
        builder.record_node_param(beta_name, nodes, X_NORM_BIAS, beta)
    builder.record_node_param(mean[0], nodes, X_NORM_MEAN, mean[1])
    builder.record_node_param(var[0], nodes, X_NORM_VAR, var[1])
    return Value(nodes, value.kind, value.hw, node.name)


def layernorm(ctx: Context, node: Node, module: nn.LayerNorm, value: Value, path: str) -> Value:
    """nn.LayerNorm: see ``layer_norm``."""
    return layer_norm(ctx, node, value, tuple(module.normalized_shape), float(module.eps),
                      (f"{path}.weight", module.weight) if module.weight is not None else None,
                      (f"{path}.bias", module.bias) if module.bias is not None else None, f"{path} (LayerNorm)")


def layer_norm(ctx: Context, node: Node, value: Value, shape: tuple[int, ...], eps: float,
               weight: tuple[str, torch.Tensor] | None, bias: tuple[str, torch.Tensor] | None, where: str) -> Value:
    """LayerNorm over the units of one layer: z <- (z - mean_layer) / sqrt(var_layer + eps) * gamma + beta.

    On tokens (and a channels-last map) the statistics are taken over the D nodes at each
    position. ``weight`` and ``bias`` are (state_dict name, tensor) of a module or of raw parameters.
    """
    if value.kind not in ("vector", "tokens", "cl") or tuple(shape) != (len(value.nodes),):
        raise UnsupportedModelError(
            f"{where}: only LayerNorm over the features of a [batch, F] tensor (or of tokens, or the channels of a "
            "channels-last map) is supported"
        )
    nodes = _open(ctx, value, "norm", where)
    builder = ctx.builder
    for n in nodes:
        builder.node_norm[n] = NORM_LAYER
        builder.node_eps[n] = eps
    if weight is not None:
        builder.record_node_param(weight[0], nodes, X_NORM_WEIGHT, weight[1])
    if bias is not None:
        builder.record_node_param(bias[0], nodes, X_NORM_BIAS, bias[1])
    return Value(nodes, value.kind, value.hw, node.name)


def activation(ctx: Context, node: Node, value: Value, act: int, param: float, where: str,
               param2: float = 0.0) -> Value:
    """Activation ``act`` at every node of the value (``param``, ``param2``: see activations.py)."""
    nodes = _open(ctx, value, "act", where)
    for n in nodes:
        ctx.builder.node_act[n] = act
    ctx.builder.set_feature(nodes, X_ACT_PARAM, param)
    ctx.builder.set_feature(nodes, X_ACT_PARAM2, param2)
    return Value(nodes, value.kind, value.hw, node.name)


def prelu(ctx: Context, node: Node, value: Value, weight: tuple[str, torch.Tensor], where: str) -> Value:
    """PReLU: max(z, 0) + a min(z, 0); its weight a sits in X_ACT_PARAM of every node.

    One weight per channel/unit moves with its node under permutations; a single weight
    for the whole layer is held by every node of the layer (and read back from the first).
    """
    name, w = weight
    if w.numel() not in (1, len(value.nodes)) or w.dim() != 1:
        raise UnsupportedModelError(f"{where}: PReLU needs 1 or {len(value.nodes)} parameters, got {list(w.shape)}")
    nodes = _open(ctx, value, "act", where)
    builder = ctx.builder
    for n in nodes:
        builder.node_act[n] = ACT_PRELU
    if w.numel() == 1 and len(nodes) > 1:
        builder.record_shared_param(name, nodes, X_ACT_PARAM, w)
    else:
        builder.record_node_param(name, nodes, X_ACT_PARAM, w)
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
    if a.kind != b.kind or len(a.nodes) != len(b.nodes) or a.hw != b.hw or a.kind not in ("vector", "map", "tokens", "tbd", "cl"):
        raise UnsupportedModelError(
            f"{where}: residual addition needs two tensors of the same shape (no broadcasting, no flattened maps)"
        )
    builder = ctx.builder
    out = builder.new_layer(len(a.nodes), a.hw)
    builder.pair_edges(a.nodes, out, EDGE_RESIDUAL)
    builder.pair_edges(b.nodes, out, EDGE_RESIDUAL)
    return _kept(a, out, node.name)


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
    """Global average pooling: a new node per channel, fed by a pooling edge (spatial mean); on tokens
    ``x.mean(1)``, the mean over tokens."""
    if value.kind not in ("map", "tokens"):
        raise UnsupportedModelError(f"{where}: global average pooling needs a [batch, C, H, W] input")
    builder = ctx.builder
    out = builder.new_layer(len(value.nodes), (1, 1))
    builder.pair_edges(value.nodes, out, EDGE_POOL)
    return Value(out, "map" if keepdim else "vector", (1, 1), node.name)


def channel_slice(ctx: Context, node: Node, value: Value, index: slice, where: str) -> Value:
    """``x[:, a:b]``: the value's neurons a..b-1 (a view: no node is added)."""
    if value.kind not in ("vector", "map") or index.step not in (None, 1):
        raise UnsupportedModelError(f"{where}: only x[:, a:b] slices of channels/features are supported")
    return Value(value.nodes[index], value.kind, value.hw, value.root)


def assign_slice(ctx: Context, node: Node, value: Value, index: slice, new: Value, where: str) -> Value:
    """``x[:, a:b] = y`` (and ``x[:, a:b] += y``): x's neurons a..b-1 are replaced by y's."""
    if value.kind not in ("vector", "map") or index.step not in (None, 1):
        raise UnsupportedModelError(f"{where}: only x[:, a:b] = y on channels/features is supported")
    positions = range(len(value.nodes))[index]
    if new.kind != value.kind or new.hw != value.hw or len(new.nodes) != len(positions):
        raise UnsupportedModelError(f"{where}: x[:, a:b] = y needs y of the slice's shape")
    nodes = list(value.nodes)
    nodes[index] = new.nodes
    return Value(nodes, value.kind, value.hw, node.args[0].name)
