"""Normalisations beyond BatchNorm and LayerNorm: GroupNorm, InstanceNorm, softmax over neurons, RMSNorm.

A node applies its norm between z + bias + offset and its activation (``graph.py``). The
statistics of these norms are taken over a node's *layer* (within its graph), as for
LayerNorm, or over the node's own value:

    NORM_GROUP        z <- (z - mean) / sqrt(var + eps) * gamma + beta, mean and var over the
                      nodes of the layer and all their positions (H x W)
    NORM_INSTANCE     the same, over the node's own positions only
    NORM_SOFTMAX      z <- exp(z - m) / sum_layer exp(z - m), over the nodes of the layer at
                      each position (m the maximum: the same value, computed stably)
    NORM_LOG_SOFTMAX  z <- z - m - log sum_layer exp(z - m)
    NORM_RMS          z <- z / sqrt(mean_layer z^2 + eps) * gamma + beta, the mean over the nodes of the
                      layer at each position (beta 0: RMSNorm has no shift)

GroupNorm(G, C) becomes G layers of C / G nodes each, fed by identity edges (one layer per
group: the statistics of a group are those of its layer). Permutations keep nodes within
their layer, so channels move only within their group. InstanceNorm with running statistics
in eval mode is BatchNorm (``NORM_BATCH``); without, ``NORM_INSTANCE``. A softmax or
log-softmax over the feature/channel axis (the PyTorch MNIST example's trailing
``F.log_softmax(x, dim=1)``) is a norm of the layer it reads. ``nn.RMSNorm(D)`` (and
``F.rms_norm``, and LLaMA's ``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``, see
``handwritten.py``) over the last axis of tokens / features / a channels-last map, or over the
channels of a map, is ``NORM_RMS`` on the layer it reads (eps None: the dtype's machine epsilon).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph import ops
from nngraph.graph.builder import Value
from nngraph.graph.graph import (
    EDGE_IDENTITY,
    NORM_BATCH,
    NORM_GROUP,
    NORM_INSTANCE,
    NORM_LOG_SOFTMAX,
    NORM_RMS,
    NORM_SOFTMAX,
    X_NORM_BIAS,
    X_NORM_MEAN,
    X_NORM_VAR,
    X_NORM_WEIGHT,
)

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

# Norms whose statistics are taken over the nodes of a layer (within one graph).
LAYER_NORMS = (NORM_GROUP, NORM_SOFTMAX, NORM_LOG_SOFTMAX, NORM_RMS)
MODULES = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.Softmax, nn.LogSoftmax, nn.RMSNorm)


def _set(ctx: Context, nodes: list[int], norm: int, eps: float) -> None:
    for n in nodes:
        ctx.builder.node_norm[n] = norm
        ctx.builder.node_eps[n] = eps


def _affine(ctx: Context, module: nn.Module, path: str, nodes: list[int]) -> None:
    if getattr(module, "weight", None) is not None:
        ctx.builder.record_node_param(f"{path}.weight", nodes, X_NORM_WEIGHT, module.weight)
    if getattr(module, "bias", None) is not None:
        ctx.builder.record_node_param(f"{path}.bias", nodes, X_NORM_BIAS, module.bias)


def group_norm(ctx: Context, node: Node, module: nn.GroupNorm, value: Value, path: str) -> Value:
    """nn.GroupNorm(G, C) on [batch, C] or [batch, C(, L)(, H, W)]: G layers of C / G nodes (one per group)."""
    where = f"{path} (GroupNorm)"
    if value.kind not in ("vector", "map") or len(value.nodes) != module.num_channels:
        raise UnsupportedModelError(f"{where} needs a [batch, {module.num_channels}(, H, W)] input of channels")
    size = len(value.nodes) // module.num_groups
    if module.num_groups == 1:
        nodes = ops._open(ctx, value, "norm", where)
    else:
        builder = ctx.builder
        nodes = []
        for g in range(module.num_groups):
            group = builder.new_layer(size, value.hw)
            builder.pair_edges(value.nodes[g * size:(g + 1) * size], group, EDGE_IDENTITY)
            builder.fill_slot(group, "norm")
            nodes += group
    _set(ctx, nodes, NORM_GROUP, float(module.eps))
    if module.affine:
        _affine(ctx, module, path, nodes)
    return Value(nodes, value.kind, value.hw, node.name)


def instance_norm(ctx: Context, node: Node, module: nn.modules.instancenorm._InstanceNorm, value: Value,
                  path: str) -> Value:
    """nn.InstanceNorm1d/2d: per channel over its own positions (NORM_INSTANCE), or with running
    statistics in eval mode the BatchNorm formula (NORM_BATCH)."""
    where = f"{path} ({type(module).__name__})"
    spatial = 2 if isinstance(module, nn.InstanceNorm2d) else 1
    wrong_size = module.affine and len(value.nodes) != module.num_features
    if value.kind != "map" or len(ctx.shape(node)) != spatial + 2 or wrong_size:
        raise UnsupportedModelError(f"{where} needs a [batch, C{', L' if spatial == 1 else ', H, W'}] input")
    if module.track_running_stats and module.training:
        raise UnsupportedModelError(f"{where} is in training mode with running statistics; call model.eval() first")
    nodes = ops._open(ctx, value, "norm", where)
    builder = ctx.builder
    if module.track_running_stats:
        _set(ctx, nodes, NORM_BATCH, float(module.eps))
        builder.record_node_param(f"{path}.running_mean", nodes, X_NORM_MEAN, module.running_mean)
        builder.record_node_param(f"{path}.running_var", nodes, X_NORM_VAR, module.running_var)
        ctx.record_buffer(f"{path}.num_batches_tracked", module.num_batches_tracked)
    else:
        _set(ctx, nodes, NORM_INSTANCE, float(module.eps))
    if module.affine:
        _affine(ctx, module, path, nodes)
    return Value(nodes, value.kind, value.hw, node.name)


def softmax(ctx: Context, node: Node, value: Value, dim: int | None, log: bool, where: str) -> Value:
    """softmax / log_softmax over the neurons of a layer (dim: the feature or channel axis)."""
    rank = len(ctx.shape(node))
    axis = rank - 1 if value.kind in ("tokens", "cl") else 1
    if value.kind not in ("vector", "map", "tokens", "cl") or dim is None or dim % rank != axis:
        raise UnsupportedModelError(
            f"{where}: only a softmax / log_softmax over the features or channels (dim={axis}) is supported"
        )
    nodes = ops._open(ctx, value, "norm", where)
    _set(ctx, nodes, NORM_LOG_SOFTMAX if log else NORM_SOFTMAX, 0.0)
    return Value(nodes, value.kind, value.hw, node.name)


def rms_norm(ctx: Context, node: Node, value: Value, shape: tuple[int, ...], eps: float | None,
             weight: tuple[str, torch.Tensor] | None, where: str) -> Value:
    """RMSNorm over the last axis (``shape`` = (D,)) of [batch, D], tokens [batch, T, D] or a channels-last map,
    or over the channels of a map [batch, C(, L)(, H, W)] (handwritten.py): NORM_RMS on the D nodes it reads,
    gamma (``weight``: state_dict name, tensor) in X_NORM_WEIGHT."""
    if value.kind not in ("vector", "tokens", "cl", "map") or tuple(shape) != (len(value.nodes),):
        raise UnsupportedModelError(f"{where}: only an RMSNorm over the features / channels (the last axis of tokens) "
                                    f"is supported, got normalized_shape {list(shape)} on {len(value.nodes)} nodes")
    nodes = ops._open(ctx, value, "norm", where)
    _set(ctx, nodes, NORM_RMS, float(torch.finfo(ctx.builder.dtype).eps if eps is None else eps))
    if weight is not None:
        ctx.builder.record_node_param(weight[0], nodes, X_NORM_WEIGHT, weight[1])
    return Value(nodes, value.kind, value.hw, node.name)


def module_rule(ctx: Context, node: Node, module: nn.Module, value: Value, path: str) -> Value:
    """The rule of a module of ``MODULES``."""
    if isinstance(module, nn.RMSNorm):
        where = f"{path} (RMSNorm)"
        if value.kind == "map":  # it would normalise over W (or L), not over the channels
            raise UnsupportedModelError(f"{where} on a [batch, C, ...] map normalises its last spatial axis; only an "
                                        "RMSNorm over features, tokens' features or a channels-last map is supported")
        weight = (f"{path}.weight", module.weight) if module.weight is not None else None
        return rms_norm(ctx, node, value, tuple(module.normalized_shape), module.eps, weight, where)
    if isinstance(module, nn.GroupNorm):
        return group_norm(ctx, node, module, value, path)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        log = isinstance(module, nn.LogSoftmax)
        return softmax(ctx, node, value, module.dim, log, f"{path} ({type(module).__name__})")
    return instance_norm(ctx, node, module, value, path)


# ---- the computation (execute.py) ---------------------------------------------------------


def apply(z: torch.Tensor, norm: torch.Tensor, eps: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
          which: torch.Tensor | None, count: torch.Tensor | None) -> torch.Tensor:
    """The norms of this module on z [n, P, h, w] (norm, eps, gamma, beta [n]); ``which`` [n] the graph
    of each node among ``count`` [G] nodes per graph (the layer's statistics groups). Others pass."""
    view = (-1, 1, 1, 1)
    mine = (norm == NORM_INSTANCE) | (norm == NORM_GROUP) | (norm == NORM_RMS)
    eps = torch.where(mine, eps, torch.ones_like(eps))  # other nodes' branches stay finite (and their gradients)
    eps, gamma, beta = eps.view(view), gamma.view(view), beta.view(view)
    out = z
    if (norm == NORM_INSTANCE).any():
        mean = z.mean(dim=(-2, -1), keepdim=True)
        var = z.var(dim=(-2, -1), unbiased=False, keepdim=True)
        out = torch.where((norm == NORM_INSTANCE).view(view), (z - mean) / torch.sqrt(var + eps) * gamma + beta, out)
    if which is None:
        return out
    groups = z.new_zeros(len(count), *z.shape[1:])
    if (norm == NORM_GROUP).any():  # over the nodes and positions of the layer
        size = count.to(z.dtype).view(view) * z.shape[-2] * z.shape[-1]
        mean = groups.index_add(0, which, z).sum(dim=(-2, -1), keepdim=True) / size
        centred = z - mean[which]
        var = groups.index_add(0, which, centred * centred).sum(dim=(-2, -1), keepdim=True) / size
        out = torch.where((norm == NORM_GROUP).view(view), centred / torch.sqrt(var[which] + eps) * gamma + beta, out)
    if (norm == NORM_RMS).any():  # over the nodes of the layer at each position
        mean_square = groups.index_add(0, which, z * z) / count.to(z.dtype).view(view)
        out = torch.where((norm == NORM_RMS).view(view), z / torch.sqrt(mean_square[which] + eps) * gamma + beta, out)
    soft = (norm == NORM_SOFTMAX) | (norm == NORM_LOG_SOFTMAX)
    if soft.any():  # over the nodes of the layer at each position
        top = groups.index_reduce(0, which, z.detach(), "amax", include_self=False)[which]
        shifted = z - top
        total = groups.index_add(0, which, torch.exp(shifted))[which]
        out = torch.where((norm == NORM_SOFTMAX).view(view), torch.exp(shifted) / total, out)
        out = torch.where((norm == NORM_LOG_SOFTMAX).view(view), shifted - torch.log(total), out)
    return out
