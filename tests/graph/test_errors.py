"""Bad input gets one clear line: what is wrong and what to do."""

import pytest
import torch
from torch import nn

import nngraph
from nngraph.errors import InputShapeError, NonFiniteError, UnsupportedModelError
from tests.graph.nets import MLP, randomise


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


class WithPixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelShuffle(2))
        self.fc = nn.Linear(1, 1)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class CustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(2, 3))
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        return self.out(torch.exp(self.block(x)))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else x


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.spare = nn.Linear(3, 2), nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x)


def test_unsupported_module_names_path_and_type():
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(WithPixelShuffle(), torch.zeros(1, 1, 8, 8))
    message = one_line(info)
    assert "features.1" in message and "PixelShuffle" in message and "Conv2d" in message


def test_custom_function_names_enclosing_module():
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(CustomOp(), torch.zeros(1, 2))
    assert "exp" in one_line(info)


def test_data_dependent_control_flow():
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(DataDependent(), torch.zeros(1, 2))
    assert "control flow" in one_line(info)


def test_unused_parameters():  # shared weights convert as ties: tests/graph/test_ties.py
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(Unused(), torch.zeros(1, 3))
    assert "spare.weight" in one_line(info)


def test_wrong_example_input_shape():
    model = randomise(MLP([4, 3, 2]))
    with pytest.raises(InputShapeError) as info:
        nngraph.to_graph(model, torch.zeros(2, 5))
    assert "[2, 5]" in one_line(info)
    with pytest.raises(InputShapeError):
        nngraph.to_graph(model, torch.zeros(2, 1, 1, 1, 4))
    with pytest.raises(UnsupportedModelError) as info:  # a map [batch, C, H, W] is valid input, but not for a Linear
        nngraph.to_graph(model, torch.zeros(2, 1, 4, 4))  # (on a sequence [batch, C, L] it mixes positions: mixing.py)
    assert "layers.0 (Linear)" in one_line(info)
    with pytest.raises(InputShapeError):
        nngraph.to_graph(model, torch.zeros(2, 4, dtype=torch.long))


def test_non_finite_parameters_and_inputs():
    model = randomise(MLP([4, 3, 2]))
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        nngraph.to_graph(model, torch.zeros(1, 4))
    assert "layers.1.weight" in one_line(info)
    with pytest.raises(NonFiniteError):
        nngraph.to_graph(randomise(MLP([4, 3, 2])), torch.full((1, 4), float("inf")))


def test_batchnorm_in_training_mode():
    model = MLP([4, 3, 2], norm="bn").train()
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(model, torch.zeros(2, 4))
    assert "model.eval()" in one_line(info)


def test_execute_rejects_inputs_of_the_wrong_shape():
    graph = nngraph.to_graph(randomise(MLP([4, 3, 2])), torch.zeros(1, 4))
    with pytest.raises(InputShapeError):
        nngraph.execute(graph, torch.zeros(5, 3))


def test_errors_are_nngraph_errors():
    assert issubclass(UnsupportedModelError, nngraph.NNGraphError)
