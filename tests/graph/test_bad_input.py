"""Networks and inputs nngraph must refuse with its own one-line errors, not convert wrongly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nngraph
from nngraph.errors import InputShapeError, NNGraphError, NonFiniteError, UnsupportedModelError


class SharedWeight(nn.Module):
    """b reuses a's weight: one Parameter, two modules (a tied autoencoder-style layer)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_shared_parameter_is_refused_naming_both_modules():
    model = SharedWeight()
    with pytest.raises(UnsupportedModelError, match=r"a\.weight and b\.weight .*shared") as info:
        nngraph.to_graph(model, torch.zeros(1, 4))
    assert "\n" not in str(info.value)
    with pytest.raises(UnsupportedModelError, match=r"a\.weight and b\.weight"):
        nngraph.permute_neurons(model, seed=0)  # never a copy with a different function


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


def test_permute_neurons_names_the_unsupported_layer_instead_of_a_guessed_input_shape():
    with pytest.raises(UnsupportedModelError, match=r"conv \(Conv3d\) is not supported"):
        nngraph.permute_neurons(Conv3dNet(), seed=0)
    with pytest.raises(InputShapeError):  # an input of the caller's is still the caller's to fix
        nngraph.permute_neurons(nn.Sequential(nn.Linear(3, 2)), example_input=torch.zeros(1, 5))


def test_execute_refuses_non_finite_inputs():
    graph = nngraph.to_graph(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteError, match="NaN or inf"):
            nngraph.execute(graph, torch.tensor([[bad, 0.0, 0.0]]))


def test_collate_of_nothing_is_an_nngraph_error():
    with pytest.raises(NNGraphError, match="at least one graph"):
        nngraph.collate([])
