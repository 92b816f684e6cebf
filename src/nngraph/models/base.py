"""What NG-GNN and NG-T share: encoder (+ probe features) -> layers -> readout, and their
construction from an example batch.

    V, E = encode(G)            # GraphEncoder: node and edge states [N, d], [E, d_e]
    V    = V + probes(G)        # with probes: the network's values on learned inputs
    V, E = layers(V, E)         # the subclass's message passing / attention
    y    = readout(V, E, G)     # [B, out_dim] (invariant) or {name: [B, *shape]} (per parameter)

With a ``probe_generator`` ("free" or "deep-linear", see ``models.probes``) the probes
come from that source and the network's outputs on them, o = [f(p_1) .. f(p_K)] [B, m K],
also join the invariant readout's input: y = MLP([pooled V, V_out, o]) -- what a probing
model reads, next to what the graph model computed from the weights. Without one
(``None``) the probes are free and only enter the node features, as published.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.graph.graph import ROLE_OUTPUT, graph_specs
from nngraph.models.embeddings import GraphEncoder, WeightStatistics
from nngraph.models.probes import GENERATORS, ProbeFeatures, output_responses
from nngraph.models.readout import make_readout

# Spare position ids above the example's largest: node_pos gives every hidden layer its
# own id after the input and output ids, so a network with up to this many more hidden
# layers than the example batch still finds its layers in the position-embedding table.
POSITION_HEADROOM = 16


class GraphMetanetwork(nn.Module):
    """Base of the graph metanetworks: the encoder and probes here, the readout by ``add_readout``.

    A subclass builds, in this order (the order of initialisation, so seeded models stay
    the same): ``super().__init__`` (encoder, probes), its own layers, ``add_readout()``.
    Arguments as documented on ``NGGNN``.
    """

    def __init__(self, node_in: int, edge_in: int, max_positions: int, num_outputs: int, out_dim: int,
                 hidden: int, edge_hidden: int, dropout: float, position_embeddings: bool, fourier_features: int,
                 probes: int, input_shape: tuple[int, ...], probe_domain: tuple[float, float],
                 stats: WeightStatistics | None, readout: str, probe_generator: str | None = None,
                 head_width: int | None = None, head_layers: int = 2):
        super().__init__()
        self.encoder = GraphEncoder(node_in, edge_in, hidden, edge_hidden, max_positions, stats,
                                    position_embeddings, fourier_features)
        generator = None if probe_generator == "free" else probe_generator
        self.probes = (ProbeFeatures(probes, tuple(input_shape), hidden, probe_domain, generator=generator)
                       if probes else None)
        # The outputs on the probes, [B, m K], join an invariant readout when a probe source is chosen.
        self.probe_outputs = num_outputs if probes and probe_generator is not None and readout == "invariant" else 0
        self._readout_args = (readout, hidden, edge_hidden, num_outputs, out_dim, node_in, edge_in, dropout,
                              self.probe_outputs * probes, head_width, head_layers)

    def add_readout(self) -> None:
        """The readout, built after the subclass's layers."""
        self.readout = make_readout(*self._readout_args)

    def compile_layers(self) -> None:
        """torch.compile each layer in place (``nn.Module.compile``: parameter names unchanged),
        with shapes free to vary between batches; compilation happens on the first batches.

        Compiled code is cached per layer class, up to torch's recompile limit, and a model
        needs several versions (training and evaluation, layers with and without edge
        updates, fp32 and bf16): the cache is emptied first, so the models compiled earlier
        in this process do not use up this model's share (theirs compile again if called).
        """
        torch._dynamo.reset()
        for layer in self.layers:
            layer.compile(dynamic=True)

    def encode(self, batch: Batch, edge_order: torch.Tensor | None = None):
        """Initial node and edge states: V [N, d] (probe features added), E [E, d_e] (rows in
        ``edge_order`` if given, see ``GraphEncoder.forward``), and the outputs on the probes
        [B, m K] that the readout reads (None unless ``probe_generator`` is set)."""
        v, e = self.encoder(batch, edge_order)  # [N, d], [E, d_e]
        outputs = None
        if self.probes is not None:
            features, acts = self.probes(batch)  # [N, d], [N, K]
            v = v + features
            if self.probe_outputs:
                outputs = output_responses(batch, acts, self.probe_outputs)  # [B, m K]
        return v, e, outputs

    def read(self, v: torch.Tensor, e: torch.Tensor, batch: Batch, probe_outputs: torch.Tensor | None):
        """The readout of the final states (and of the outputs on the probes, when given); inside
        ``embed``, the invariant readout's pooled representation instead of its head's output."""
        readout = self.readout.pool if self._pooling else self.readout
        if probe_outputs is None:
            return readout(v, e, batch)
        return readout(v, e, batch, probe_outputs)

    _pooling = False  # True only while ``embed`` runs the forward pass

    def embed(self, batch: Batch) -> torch.Tensor:
        """Per-network embeddings [B, D]: the invariant readout's pooled states (``InvariantReadout.pool``),
        what its head maps to the output; the same forward pass up to the head."""
        if not hasattr(self.readout, "pool"):
            raise NNGraphError(f"{type(self).__name__} has a per-parameter readout, which makes no per-network "
                               "embedding; embed with a model trained with an invariant readout")
        self._pooling = True
        try:
            return self(batch)
        finally:
            self._pooling = False

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> None:
        """One line before any data is read: a known probe source, and probes for it to make."""
        source = kwargs.get("probe_generator")
        if source is not None and source not in ("free", *GENERATORS):
            raise NNGraphError(f"{cls.__name__.lower()}: unknown probe_generator {source!r}; choose free, "
                               f"{', '.join(GENERATORS)} or none (free probes in the node features only)")
        if source is not None and not kwargs.get("probes"):
            raise NNGraphError(f"{cls.__name__.lower()}: probe_generator={source!r} needs probes; "
                               "pass probes=K (e.g. 128)")

    @classmethod
    def example_sizes(cls, example: Batch, **kwargs: Any) -> dict[str, Any]:
        """Constructor sizes read off an example batch of training graphs."""
        return {
            "node_in": example.x.shape[1],
            "edge_in": example.edge_attr.shape[1],
            "max_positions": int(example.node_pos.max()) + 1 + POSITION_HEADROOM,
            "num_outputs": int((example.node_role == ROLE_OUTPUT).sum()) // int(example.num_graphs),
            "input_shape": graph_specs(example)[0].probe_shape,
            "stats": WeightStatistics.fit(example),
        }

    @classmethod
    def from_example(cls, example: Batch, **kwargs: Any) -> "GraphMetanetwork":
        """The model sized for ``example``; explicit ``kwargs`` override the sizes."""
        return cls(**{**cls.example_sizes(example, **kwargs), **kwargs})
