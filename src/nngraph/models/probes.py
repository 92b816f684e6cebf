"""Probes: learned inputs run through every input network, and what is read off them.

A probe source gives K inputs P = [p_1 .. p_K] of shape ``spec.probe_shape`` each:

- free probes (``generator=None``): K parameters, initialised uniformly in the input
  domain (e.g. [-1, 1]^2 for INRs) -- vanilla probing;
- ``"deep-linear"`` (ProbeGen, Kahana et al., ICLR 2025): K latent codes z_k ~ N(0, I_32)
  mapped by one shared generator with no activation between its layers, so that the
  probes are a low-rank, smooth family rather than K independent points:

    vectors, sequences, tokens:  p_k = reshape(W_L (... (W_1 z_k + b_1) ...) + b_L)
                                 (``generator_layers`` Linear layers, width ``generator_width``)
    images [C, H, W]:            p_k = tanh(crop_HxW(T_L ... T_1 z_k))
                                 transposed convolutions from a 1 x 1 x 32 code: 4 x 4, then
                                 x2 per layer up to the image size, a 3 x 3 one to C channels

A token model (an ``nn.Embedding`` on integer ids [T]) takes real-valued probes of shape
[T, V]: weights over the vocabulary at each token (a one-hot row is a real token; the
embedding is linear in them, so any weights give a defined input).

The executor runs every network of a batch on the K probes at once (one call, no loop
over networks) and gives every node's value per probe, ``acts`` [N, K] (a conv channel:
its spatial mean). Read off them:

- ``ProbeFeatures``: node features V_i += LN(W [a_i(p_1) .. a_i(p_K)]) for the graph models;
- ``output_responses``: the output neurons' values [B, m K], in the neurons' fixed order;
- ``layer_responses``: mean and max over the hidden neurons of each hidden layer [B, S, 2K],
  layers in topological order (permutation invariant: a layer's neurons are pooled).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from nngraph.errors import NNGraphError
from nngraph.graph.execute import execute
from nngraph.graph.graph import ROLE_HIDDEN, ROLE_OUTPUT

GENERATORS = ("deep-linear",)
LATENT = 32  # size of a probe's latent code (ProbeGen)


class LinearProbeGenerator(nn.Module):
    """p_k = reshape(W_L ... W_1 z_k): a deep linear map of K latent codes [K, z] -> [K, *shape]."""

    def __init__(self, num_probes: int, shape: tuple[int, ...], layers: int = 2, width: int = LATENT,
                 seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.shape = tuple(shape)
        self.codes = nn.Parameter(torch.randn(num_probes, LATENT, generator=gen))
        dims = [LATENT] + [width] * (layers - 1) + [math.prod(shape)]
        self.layers = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])))

    def forward(self) -> torch.Tensor:
        return self.layers(self.codes).reshape(-1, *self.shape)  # [K, *shape]


class ConvProbeGenerator(nn.Module):
    """p_k = tanh(crop(T_L ... T_1 z_k)): transposed convolutions from 1 x 1 x 32 codes to [K, C, H, W].

    Channels: 8w at 4 x 4, halved (not below w) at every x2 upsampling, C at the end."""

    def __init__(self, num_probes: int, shape: tuple[int, int, int], width: int = 16, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        channels, self.height, self.width = shape
        self.codes = nn.Parameter(torch.randn(num_probes, LATENT, 1, 1, generator=gen))
        c, size = 8 * width, 4
        layers: list[nn.Module] = [nn.ConvTranspose2d(LATENT, c, 4, 1, 0)]  # 1 x 1 -> 4 x 4
        while size < max(self.height, self.width):
            layers.append(nn.ConvTranspose2d(c, max(c // 2, width), 4, 2, 1))  # size -> 2 size
            c, size = max(c // 2, width), 2 * size
        layers.append(nn.ConvTranspose2d(c, channels, 3, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        y = self.layers(self.codes)  # [K, C, S, S], S >= H, W
        top, left = (y.shape[2] - self.height) // 2, (y.shape[3] - self.width) // 2
        return torch.tanh(y[:, :, top:top + self.height, left:left + self.width])  # [K, C, H, W]


class ProbeSource(nn.Module):
    """K probe inputs [K, *input_shape]: free parameters ``probes`` or a ``generator``'s output.

    ``generator``: None (free probes, uniform in ``domain``) or ``"deep-linear"``: for
    images [C, H, W] the transposed-convolution stack (base channel count w =
    ``generator_width``, default 16), else ``generator_layers`` Linear layers (width
    ``generator_width``, default 32). The seed draws the initial probes or codes.
    """

    def __init__(self, num_probes: int, input_shape: tuple[int, ...], domain: tuple[float, float] = (-1.0, 1.0),
                 seed: int = 0, generator: str | None = None, generator_layers: int = 2,
                 generator_width: int | None = None):
        super().__init__()
        check_generator(generator)
        if generator is None:
            gen = torch.Generator().manual_seed(seed)
            low, high = domain
            self.probes = nn.Parameter(low + (high - low) * torch.rand(num_probes, *input_shape, generator=gen))
            self.generator = None
        elif len(input_shape) == 3:  # images
            self.generator = ConvProbeGenerator(num_probes, input_shape, generator_width or 16, seed)
        else:
            self.generator = LinearProbeGenerator(num_probes, input_shape, generator_layers,
                                                  generator_width or LATENT, seed)

    def inputs(self) -> torch.Tensor:
        """The probes [K, *input_shape]."""
        return self.probes if self.generator is None else self.generator()

    def run(self, batch: Batch) -> torch.Tensor:
        """Every node's value on every probe, ``acts`` [N, K] (one executor call for the batch)."""
        _, acts = execute(batch, self.inputs())
        return acts


class ProbeFeatures(ProbeSource):
    """Node features from the probes: V_i += LN(W [a_i(p_1) .. a_i(p_K)])."""

    def __init__(self, num_probes: int, input_shape: tuple[int, ...], hidden: int,
                 domain: tuple[float, float] = (-1.0, 1.0), seed: int = 0, generator: str | None = None):
        super().__init__(num_probes, input_shape, domain, seed, generator)
        self.proj = nn.Linear(num_probes, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(probe features [N, hidden], node values on the probes acts [N, K]) for every node of the batch."""
        acts = self.run(batch)  # [N, K]
        return self.norm(self.proj(acts)), acts


def check_generator(generator: str | None) -> None:
    if generator is not None and generator not in GENERATORS:
        raise NNGraphError(f"unknown probe generator {generator!r}; choose {' or '.join(GENERATORS)} "
                           "(or none for free probes)")


def output_responses(batch: Batch, acts: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """The output neurons' values on the probes, acts [N, K] -> [B, m K] (neurons in position order)."""
    b = int(batch.num_graphs)
    outputs = torch.nonzero(batch.node_role == ROLE_OUTPUT).squeeze(1)
    order = torch.argsort(batch.batch[outputs] * (int(batch.node_pos.max()) + 1) + batch.node_pos[outputs])
    if outputs.shape[0] != b * num_outputs:
        raise NNGraphError(f"every network of the batch must have {num_outputs} output neurons (as the "
                           "training networks); read networks with another number of outputs with another model")
    return acts[outputs[order]].reshape(b, -1)  # [B, m K]


def hidden_layer_slots(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """For every hidden node: (its graph, the rank of its layer among its graph's hidden layers), [H] each."""
    hidden = torch.nonzero(batch.node_role == ROLE_HIDDEN).squeeze(1)
    graph, layer = batch.batch[hidden], batch.node_layer[hidden]
    span = int(batch.node_layer.max()) + 1
    keys, inverse = torch.unique(graph * span + layer, return_inverse=True)  # sorted: graph major, then layer
    key_graph = keys // span
    per_graph = torch.bincount(key_graph, minlength=int(batch.num_graphs))
    first = torch.cumsum(per_graph, 0) - per_graph
    rank = torch.arange(keys.shape[0], device=keys.device) - first[key_graph]  # layer rank within its graph
    return hidden, rank[inverse]


def layer_responses(batch: Batch, acts: torch.Tensor, slots: int) -> torch.Tensor:
    """Mean and max of the hidden neurons' values per hidden layer: acts [N, K] -> [B, slots, 2K].

    Hidden layers in topological order (slot s = the s-th hidden layer of the network);
    slots past a network's depth are 0."""
    b, k = int(batch.num_graphs), acts.shape[1]
    hidden, rank = hidden_layer_slots(batch)
    if hidden.numel() and int(rank.max()) >= slots:
        raise NNGraphError(f"a network of the batch has {int(rank.max()) + 1} hidden layers; this model reads "
                           f"at most {slots} (the deepest training network's): train it on such networks too")
    segment = batch.batch[hidden] * slots + rank  # [H]
    mean = scatter(acts[hidden], segment, dim=0, dim_size=b * slots, reduce="mean")  # [B * S, K]
    top = scatter(acts[hidden], segment, dim=0, dim_size=b * slots, reduce="max")
    filled = torch.bincount(segment, minlength=b * slots)[:, None] > 0
    top = torch.where(filled, top, torch.zeros_like(top))
    return torch.cat([mean, top], dim=1).reshape(b, slots, 2 * k)


def hidden_layer_count(batch: Batch) -> int:
    """The most hidden layers any network of the batch has."""
    _, rank = hidden_layer_slots(batch)
    return int(rank.max()) + 1 if rank.numel() else 0
