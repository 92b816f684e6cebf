"""LoRA adapters (lora.py): a peft model converts unmerged, exactly, under peft's state_dict names."""

import pytest
import torch
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.graph import EDGE_IDENTITY
from tests.graph.helpers import assert_exact_params, assert_rel_close

peft = pytest.importorskip("peft")


def lora_mlp(seed: int = 0, r: int = 2, alpha: int = 6):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    model = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["0", "2"],
                                                      lora_dropout=0.1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0: a zero update would test nothing
                p.copy_(torch.randn_like(p))
    return model.eval()


def test_lora_mlp_converts_unmerged_and_exactly():
    model, x = lora_mlp(), torch.randn(9, 3)
    graph = nngraph.to_graph(model, x)
    y, _ = nngraph.execute(graph, x)
    with torch.no_grad():
        assert_rel_close(y, model(x), rel=1e-5)
    assert_exact_params(nngraph.to_params(graph), model.state_dict())  # peft's names, bit for bit
    # rank nodes: the layer right after the input holds the base layer's 8 units, then the r = 2 rank nodes
    sizes = torch.bincount(graph.node_layer).tolist()
    assert 2 in sizes
    scaling = 6 / 2  # alpha / r, a constant edge weight
    k = graph.spec.k_max ** 2 // 2
    identity = graph.edge_attr[graph.edge_kind == EDGE_IDENTITY, k]
    assert identity.numel() == 16 and bool((identity == scaling).all())


def test_lora_permutation_keeps_the_function_and_moves_rank_nodes():
    model, x = lora_mlp(1), torch.randn(5, 3)
    moved_a = False
    for seed in range(3):
        permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
        with torch.no_grad():
            assert_rel_close(permuted(x), model(x), rel=1e-4)
        a = "base_model.model.0.lora_A.default.weight"
        moved_a |= not torch.equal(permuted.state_dict()[a], model.state_dict()[a])
    assert moved_a, "the rank nodes never moved"


def test_merged_or_training_lora_is_refused_in_one_line():
    model = lora_mlp(2)
    model.train()
    with pytest.raises(UnsupportedModelError, match="training mode"):
        nngraph.to_graph(model, torch.randn(2, 3))


def test_lora_graphs_give_each_adapters_update_alone():
    model, x = lora_mlp(3), torch.randn(4, 8)
    graphs = nngraph.lora_graphs(model)
    assert sorted(graphs) == ["base_model.model.0", "base_model.model.2"]
    layer = model.get_base_model()[2]
    graph = graphs["base_model.model.2"]
    y, _ = nngraph.execute(graph, x)
    with torch.no_grad():
        expected = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    assert_rel_close(y, expected, rel=1e-5)
    state = model.state_dict()
    params = nngraph.to_params(graph)
    assert list(params) == ["base_model.model.2.lora_A.default.weight", "base_model.model.2.lora_B.default.weight"]
    for k, v in params.items():
        assert torch.equal(v, state[k]), k
    assert nngraph.collate(list(graphs.values())).num_graphs == 2  # adapters of several layers batch together
