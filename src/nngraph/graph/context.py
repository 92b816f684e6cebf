"""Context: the state of one conversion, shared by ``convert.py`` (the walk over the fx
graph) and the op rules of ``ops.py``."""

from __future__ import annotations

from collections import Counter

import torch
import torch.fx as fx

from nngraph.graph.builder import GraphBuilder
from nngraph.graph.graph import ParamEntry


class Context:
    """State of one conversion: the builder, fx shapes, value aliasing and parameter bookkeeping.

    ``consumers[root]``: how many ops read each value's neurons (a pointwise op folds into
    its input's nodes only when it is their one reader); ``sine_targets``: the fx targets
    that compute ``sin`` (a constant factor is allowed only as their argument);
    ``state_names``: the model's state_dict keys (a ``get_attr`` of one of them is a parameter
    or buffer reference, any other a plain tensor attribute).
    """

    def __init__(self, gm: fx.GraphModule, dtype: torch.dtype, name: str, consumers: Counter, sine_targets: set,
                 state_names: set[str]):
        self.gm = gm
        self.name = name
        self.modules = dict(gm.named_modules())
        self.builder = GraphBuilder(dtype)
        self.buffers: dict[str, torch.Tensor] = {}
        self.consumers = consumers
        self.sine_targets = sine_targets
        self.state_names = state_names
        self.vocab = 0  # size of the vocabulary of a token-id input (set by an Embedding)

    def shape(self, node: fx.Node) -> torch.Size:
        return node.meta["tensor_meta"].shape

    def record_edges(self, name: str, weight: torch.Tensor, source: str, first: int, sources: int) -> None:
        self.builder.params.append(ParamEntry(name, tuple(weight.shape), source, first, sources=sources))

    def record_buffer(self, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            self.buffers[name] = tensor.detach().clone()
