"""Networks and inputs nngraph must refuse with its own one-line errors, not convert wrongly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nngraph
from nngraph.errors import InputShapeError, NNGraphError, NonFiniteError, UnsupportedModelError


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


# ---- hooks, meta tensors, several outputs (issue 34 item 5), saving a graph (item 6) --------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and isinstance(exc_info.value, NNGraphError)
    return message


def test_a_forward_hook_that_rescales_a_layer_is_refused():
    model, x = _mlp(), torch.randn(5, 3)
    handle = model[0].register_forward_hook(lambda module, args, out: out * 1.5)
    try:
        for convert in (lambda: nngraph.to_graph(model, x), lambda: nngraph.permute_neurons(model, example_input=x)):
            with pytest.raises(UnsupportedModelError) as info:
                convert()
            assert "Sequential.0 (Linear) has a forward hook" in _one_line(info)
    finally:
        handle.remove()
    nngraph.to_graph(model, x)  # without the hook it converts


def test_forward_pre_hooks_and_global_hooks_are_refused():
    model, x = _mlp(), torch.randn(5, 3)
    handle = model[2].register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(model, x)
    handle.remove()
    assert "forward pre-hook" in _one_line(info)
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: out)
    try:
        with pytest.raises(UnsupportedModelError) as info:
            nngraph.to_graph(model, x)
        assert "global forward hooks" in _one_line(info)
    finally:
        handle.remove()


def test_meta_tensors_are_refused():
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(nn.Linear(3, 2, device="meta"), torch.randn(2, 3))
    assert "weight is on the meta device" in _one_line(info)
    with pytest.raises(InputShapeError) as info:
        nngraph.to_graph(_mlp(), torch.randn(2, 3, device="meta"))
    assert "meta device" in _one_line(info)


class _TwoHeads(nn.Module):
    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict, self.a, self.b = as_dict, nn.Linear(3, 2), nn.Linear(3, 1)

    def forward(self, x):
        return {"logits": self.a(x), "value": self.b(x)} if self.as_dict else (self.a(x), self.b(x))


@pytest.mark.parametrize("as_dict,words", [(False, "returns a tuple of 2"), (True, "returns a dict (logits, value)")])
def test_several_outputs_are_refused_in_one_line(as_dict, words):
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(_TwoHeads(as_dict), torch.randn(2, 3))
    assert words in _one_line(info) and "one output tensor" in str(info.value)


def test_a_graph_saves_and_loads_with_plain_torch_save_and_load(tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
    x = torch.randn(4, 2, 4, 4)
    graph = nngraph.to_graph(model, x)
    torch.save(graph, tmp_path / "g.pt")
    loaded = torch.load(tmp_path / "g.pt")  # weights_only=True: the default, no code runs
    assert isinstance(loaded, type(graph)) and loaded.spec == graph.spec
    for key in graph.keys():
        if isinstance(graph[key], torch.Tensor):
            assert torch.equal(loaded[key], graph[key]), key
    assert torch.equal(nngraph.execute(loaded, x)[0], nngraph.execute(graph, x)[0])
