"""Probing baselines: run every network on K learned inputs and read its answers with an MLP.

For a network f and probes p_1..p_K (``models.probes.ProbeSource``: free parameters for
``probe``, a deep linear generator's output for ``probegen``, ProbeGen, Kahana et al.,
ICLR 2025):

    z = [f_1(p_1) .. f_m(p_1), ..., f_1(p_K) .. f_m(p_K)]          output neurons' values [m K]
    z = [z, mean_l(p_k), max_l(p_k) for every hidden layer l]     with ``hidden_responses``
    y = MLP(z)                                                    ``layers`` Linear layers of
                                                                  width ``hidden``, ReLU between

(mean_l / max_l over the hidden neurons of the l-th hidden layer, in topological order:
slots for as many hidden layers as the deepest example network has). A feature-map
output is read as its spatial mean. The executor runs the whole batch on the probes in
one call; the probes get gradients through it. Only the networks' values are read, never
their weights, so the model is invariant to neuron permutations by construction and a
network's prediction does not depend on its batch-mates. It predicts one vector per
network (``classify``, ``generalize``); it cannot edit a network (no per-parameter readout).

The published recipe (ProbeGen's INR runs: 128 probes, a 6-layer width-256 MLP, Adam
lr 3e-4 without weight decay, cosine decay per step without warm-up, batch 32, no
gradient clipping, 30 epochs) is these defaults plus the training options
``--lr 3e-4 --batch-size 32 --weight-decay 0 --warmup-steps 0 --grad-clip 0``.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.graph.graph import ROLE_OUTPUT, graph_specs
from nngraph.models.baselines.mlp import mlp
from nngraph.models.probes import ProbeSource, hidden_layer_count, layer_responses, output_responses
from nngraph.models.registry import register_model


class ProbingModel(torch.nn.Module):
    """MLP on a network's values on K probes (module docstring).

    Args:
        num_outputs: output neurons m of the input networks.
        out_dim: size of the prediction.
        input_shape: shape of one probe (``spec.probe_shape``).
        layer_slots: hidden layers read with ``hidden_responses`` (0 without).
        probes: number of probes K.
        hidden, layers: width and number of Linear layers of the MLP.
        hidden_responses: also read every hidden layer's mean and max response per probe.
        probe_domain: interval the free probes are drawn from at initialisation.
        generator, generator_layers, generator_width: the probe source (``ProbeSource``).
    """

    def __init__(self, num_outputs: int, out_dim: int, input_shape: tuple[int, ...], layer_slots: int,
                 probes: int = 128, hidden: int = 256, layers: int = 6, hidden_responses: bool = False,
                 probe_domain: tuple[float, float] = (-1.0, 1.0), generator: str | None = None,
                 generator_layers: int = 2, generator_width: int | None = None):
        super().__init__()
        self.num_outputs = num_outputs
        self.layer_slots = layer_slots if hidden_responses else 0
        self.source = ProbeSource(probes, tuple(input_shape), tuple(probe_domain), 0, generator,
                                  generator_layers, generator_width)
        dim = probes * (num_outputs + 2 * self.layer_slots)
        self.head = mlp([dim] + [hidden] * (layers - 1) + [out_dim])

    @classmethod
    def check_args(cls, kwargs: dict) -> None:
        """One line before any data is read: a probing model needs at least one probe."""
        if kwargs["probes"] < 1:
            raise NNGraphError(f"a probing model reads the networks' values on its probes: probes must be >= 1, "
                               f"got {kwargs['probes']}")

    @classmethod
    def from_example(cls, batch: Batch, out_dim: int, **kwargs) -> "ProbingModel":
        """Sizes from an example batch: output neurons, probe shape, hidden layers of the deepest network."""
        num_outputs = int((batch.node_role == ROLE_OUTPUT).sum()) // int(batch.num_graphs)
        slots = hidden_layer_count(batch) if kwargs.get("hidden_responses") else 0
        return cls(num_outputs, out_dim, graph_specs(batch)[0].probe_shape, slots, **kwargs)

    def features(self, batch: Batch) -> torch.Tensor:
        """z [B, K (m + 2 S)]: the output neurons' values, then the hidden layers' pooled ones."""
        acts = self.source.run(batch)  # [N, K]
        z = output_responses(batch, acts, self.num_outputs)  # [B, m K]
        if self.layer_slots:
            z = torch.cat([z, layer_responses(batch, acts, self.layer_slots).flatten(1)], dim=1)  # [B, K (m + 2 S)]
        return z

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.features(batch))  # [B, out_dim]


@register_model("probe", probes=True, baseline=True)
class Probe(ProbingModel):
    """Vanilla probing: K free probe inputs (uniform in ``probe_domain`` at the start)."""

    def __init__(self, num_outputs: int, out_dim: int, input_shape: tuple[int, ...], layer_slots: int,
                 probes: int = 128, hidden: int = 256, layers: int = 6, hidden_responses: bool = False,
                 probe_domain: tuple[float, float] = (-1.0, 1.0)):
        super().__init__(num_outputs, out_dim, input_shape, layer_slots, probes, hidden, layers, hidden_responses,
                         probe_domain)


@register_model("probegen", probes=True, baseline=True)
class ProbeGen(ProbingModel):
    """ProbeGen: probes from a shared deep linear generator of K latent codes (``"deep-linear"``)."""

    def __init__(self, num_outputs: int, out_dim: int, input_shape: tuple[int, ...], layer_slots: int,
                 probes: int = 128, hidden: int = 256, layers: int = 6, hidden_responses: bool = False,
                 generator_layers: int = 2, generator_width: int | None = None):
        super().__init__(num_outputs, out_dim, input_shape, layer_slots, probes, hidden, layers, hidden_responses,
                         generator="deep-linear", generator_layers=generator_layers, generator_width=generator_width)
