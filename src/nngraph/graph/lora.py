"""LoRA adapters (peft) as graph structure, unmerged.

peft's ``lora.Linear`` computes ``y = W x + b + s * B(A(dropout(x)))`` with A [r, in], B [out, r]
and the scaling s = alpha / r. Its graph (``linear``): the base layer's out nodes O (edges W,
bias b), r rank nodes R (edges A, no bias), out nodes U (edges B), and a sum layer

    y_j = O_j + s * U_j        (a residual edge O_j -> y_j, an identity edge U_j -> y_j of weight s)

so every tensor keeps its own edges and ``to_params`` gives back peft's state_dict exactly;
the scaling is a constant edge weight, not a parameter. Dropout is ignored (the model must be
in eval mode). A ``PeftModel`` is converted through its base model (``unwrap``), its state_dict
names (``base_model.model.``...) restored on the spec (``prefixed``). peft is optional: nothing
here imports it unless the user has.

Where torch.fx cannot trace the model (HuggingFace models, peft's ``lora.Conv2d``, whose forward
fx cannot follow), the torch.export capture records peft's forward as its ops: ``F.linear`` /
``F.conv2d`` on the base layer's and the adapter's weights (A: r channels with the base layer's
kernel, stride and padding; B: 1 x 1), then ``out + s * update`` inside the adapted layer, which
the capture lowers to ``scaled_add(out, update, s)``: the same graph as above (``scaled_sum``),
to_params giving peft's names back the same way.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph import ops
from nngraph.graph.builder import Value
from nngraph.graph.graph import EDGE_IDENTITY, EDGE_RESIDUAL, ArchSpec

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

PREFIX = "base_model.model."


def _peft():
    return sys.modules.get("peft")


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """(the module to trace, the prefix of its state_dict names in ``model``): a PeftModel's base model."""
    peft = _peft()
    if peft is not None and isinstance(model, peft.PeftModel):
        inner = model.get_base_model()
        if set(model.state_dict()) != {PREFIX + k for k in inner.state_dict()}:
            raise UnsupportedModelError(f"{type(model).__name__}: its state_dict is not its base model's under "
                                        f"{PREFIX!r} (prompt-learning adapters are not supported; LoRA is)")
        return inner, PREFIX
    return model, ""


def is_lora_linear(module: nn.Module) -> bool:
    """Whether ``module`` is peft's LoRA-adapted Linear (a leaf of the fx trace)."""
    peft = _peft()
    if peft is None:
        return False
    from peft.tuners.lora.layer import Linear  # noqa: PLC0415 - peft is optional
    return isinstance(module, Linear)


def is_lora_conv2d(module: nn.Module) -> bool:
    """Whether ``module`` is peft's LoRA-adapted Conv2d (converted through the export capture)."""
    peft = _peft()
    if peft is None:
        return False
    from peft.tuners.lora.layer import Conv2d  # noqa: PLC0415 - peft is optional
    return isinstance(module, Conv2d)


def linear(ctx: Context, node: Node, module: nn.Module, value: Value, path: str) -> Value:
    """peft ``lora.Linear``: base layer, rank nodes, B's out nodes, and the scaled sum (module docstring)."""
    where = f"{path} ({type(module).__name__})"
    adapters = list(module.active_adapters)
    if module.merged:
        raise UnsupportedModelError(f"{where} is merged; unmerge it (or convert the merged model without peft)")
    if len(adapters) != 1:
        raise UnsupportedModelError(f"{where} has {len(adapters)} active adapters; activate exactly one")
    name = adapters[0]
    if module.use_dora.get(name, False) or getattr(module, "lora_bias", {}).get(name, False):
        raise UnsupportedModelError(f"{where}: DoRA and LoRA biases are not supported; plain LoRA is")
    if module.lora_dropout[name].training and not isinstance(module.lora_dropout[name], nn.Identity):
        raise UnsupportedModelError(f"{where}: its LoRA dropout is in training mode; call model.eval() before converting")
    base = module.get_base_layer()
    if type(base) is not nn.Linear:
        raise UnsupportedModelError(f"{where}: only LoRA on nn.Linear is supported, got {type(base).__name__}")
    a, b = module.lora_A[name], module.lora_B[name]
    scaling = float(module.scaling[name])
    out = ops.linear_layer(ctx, node, value, (f"{path}.base_layer.weight", base.weight),
                           (f"{path}.base_layer.bias", base.bias) if base.bias is not None else None, where)
    rank = ops.linear_layer(ctx, node, value, (f"{path}.lora_A.{name}.weight", a.weight), None, where)
    update = ops.linear_layer(ctx, node, rank, (f"{path}.lora_B.{name}.weight", b.weight), None, where)
    return scaled_sum(ctx, node, out, update, scaling, where)


def scaled_add(out: torch.Tensor, update: torch.Tensor, scaling: float) -> torch.Tensor:
    """out + scaling * update: the target the export capture lowers a LoRA layer's sum to (``scaled_sum``)."""
    return out + scaling * update


def scaled_sum(ctx: Context, node: Node, out: Value, update: Value, scaling: float, where: str = "") -> Value:
    """y_j = out_j + scaling * update_j: a residual edge and an identity edge of weight ``scaling`` per unit."""
    if out.kind not in ("vector", "map", "tokens") or (update.kind, update.hw, len(update.nodes)) != (
            out.kind, out.hw, len(out.nodes)):
        raise UnsupportedModelError(f"{where}: a LoRA sum out + s * update needs two [batch, F], [batch, T, D] or "
                                    "[batch, C, H, W] tensors of one shape")
    builder = ctx.builder
    n = len(out.nodes)
    total = builder.new_layer(n, out.hw)
    builder.pair_edges(out.nodes, total, EDGE_RESIDUAL)
    builder.dense_edges(update.nodes, total, torch.full((n, 1), scaling, dtype=builder.dtype), EDGE_IDENTITY, groups=n)
    return Value(total, out.kind, out.hw, node.name)


def prefixed(spec: ArchSpec, prefix: str) -> None:
    """Prefix every state_dict name of ``spec`` (in place): the base model's names -> the PeftModel's."""
    if not prefix:
        return
    def rename(e):  # noqa: E306
        return dataclasses.replace(e, name=prefix + e.name, tie=prefix + e.tie if e.tie else "")
    spec.params = [rename(e) for e in spec.params]
    spec.ties = [rename(e) for e in spec.ties]
    spec.buffers = {prefix + k: v for k, v in spec.buffers.items()}
    spec.state_order = [prefix + k for k in spec.state_order]
