"""Probe features: learned inputs run through every input network.

K probe inputs p_1..p_K (initialised uniformly in the input domain, e.g. [-1, 1]^2 for
INRs, [0, 1] pixels for CNNs) are executed by every network of the batch with the graph
executor (batched over networks, differentiable in the probes). Node i's activation
a_i(p_k) for each probe (a conv channel: its spatial mean) gives K numbers, mapped to the
node state by a Linear layer and LayerNorm:  V_i += LN(W [a_i(p_1) .. a_i(p_K)]).

A token model (an ``nn.Embedding`` on integer ids [T]) takes real-valued probes of shape
``spec.probe_shape`` = [T, V]: weights over the vocabulary at each token (a one-hot row
is a real token; the embedding is linear in them, so any weights give a defined input).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.graph.execute import execute


class ProbeFeatures(nn.Module):
    def __init__(self, num_probes: int, input_shape: tuple[int, ...], hidden: int,
                 domain: tuple[float, float] = (-1.0, 1.0), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        low, high = domain
        self.probes = nn.Parameter(low + (high - low) * torch.rand(num_probes, *input_shape, generator=gen))
        self.proj = nn.Linear(num_probes, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Probe features [N, hidden] for every node of the batch."""
        _, acts = execute(batch, self.probes)  # [N, K]
        return self.norm(self.proj(acts))
