"""The graph of each LoRA adapter's low-rank update alone (``nngraph.lora_graphs``).

A LoRA zoo is studied adapter by adapter: for an adapted Linear (in -> out, rank r) the update
dW x = s B A x is a small network of its own, converted here with ``to_graph`` like any other; for
an adapted Conv2d (peft's ``lora.Conv2d``: A a Conv2d in -> r with the base layer's kernel, stride,
padding and dilation, B a 1 x 1 Conv2d r -> out) the update s B(A(x)) on a k x k input (k the
dilated kernel size: one output position of A without padding; the graph does not depend on it but
for its maps' sizes)
(``lora.py`` holds the rules that convert an adapted layer inside its model; this module sits
above ``convert`` because it calls it).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph import lora
from nngraph.graph.convert import to_graph
from nngraph.graph.graph import NeuralGraph


class _LowRank(nn.Module):
    """The update of one adapted layer: x -> scaling * B(A(x)), A and B the adapter's own modules."""

    def __init__(self, a: nn.Module, b: nn.Module, scaling: float):
        super().__init__()
        self.A, self.B, self.scaling = a, b, scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x)) * self.scaling


def lora_graphs(model: nn.Module, k_max: int | None = None) -> dict[str, NeuralGraph]:
    """The graph of each adapter's low-rank update alone, keyed by the adapted layer's path in ``model``.

    For a LoRA'd Linear (in -> out, rank r): in input nodes, r rank nodes (edges A), out nodes (edges B)
    and out output nodes fed by identity edges of weight s = alpha / r: the graph of dW x = s B A x. For a
    LoRA'd Conv2d the same with conv edges, on a k x k input (module docstring).
    ``to_params`` of a graph gives the adapter's two tensors under their names in ``model.state_dict()``.
    LoRA zoos are studied adapter by adapter: these graphs batch like any others.
    """
    inner, prefix = lora.unwrap(model)
    graphs = {}
    for path, module in inner.named_modules():
        if not (lora.is_lora_linear(module) or lora.is_lora_conv2d(module)):
            continue
        (name,) = module.active_adapters if len(module.active_adapters) == 1 else (None,)
        if name is None:
            raise UnsupportedModelError(f"{path}: {len(module.active_adapters)} active adapters; activate exactly one")
        a, b = module.lora_A[name], module.lora_B[name]
        update = _LowRank(a, b, float(module.scaling[name]))
        if isinstance(a, nn.Conv2d):  # k x k positions: one output of A without padding
            size = [(k - 1) * d + 1 for k, d in zip(a.kernel_size, a.dilation)]
            shape = (1, a.in_channels, *size)
        else:
            shape = (1, a.in_features)
        graph = to_graph(update, torch.zeros(shape, dtype=a.weight.dtype, device=a.weight.device), k_max=k_max)
        renamed = {"A.weight": f"{prefix}{path}.lora_A.{name}.weight", "B.weight": f"{prefix}{path}.lora_B.{name}.weight"}
        spec = graph.spec
        spec.params = [dataclasses.replace(e, name=renamed[e.name]) for e in spec.params]
        spec.state_order = [renamed[k] for k in spec.state_order]
        spec.model_name = f"{type(model).__name__}.{path} (LoRA update)"
        graphs[prefix + path] = graph
    if not graphs:
        raise UnsupportedModelError(f"{type(model).__name__} has no LoRA-adapted Linear or Conv2d layer")
    return graphs
