"""LoRA adapters (lora.py): a peft model converts unmerged, exactly, under peft's state_dict names; LoRA on
Conv2d (peft's lora.Conv2d) through the torch.export capture. A LoRA'd BERT: tests/graph/test_hf_models.py."""

import pytest
import torch
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.graph import EDGE_CONV, EDGE_IDENTITY
from tests.graph.helpers import assert_exact_params, assert_invariant_on_mixed_batch, assert_rel_close

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


def lora_cnn(seed: int = 0, targets: tuple = ("0", "2", "5")):
    """LoRA (r = 2, alpha = 6) on two Conv2d layers (a 3x3 with padding, a strided 3x3) and the head Linear:
    peft's lora.Conv2d is A = Conv2d(in, r, k, stride, padding), B = Conv2d(r, out, 1)."""
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 3 * 3, 4))
    if not targets:
        return base.eval()
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=6, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))
    return model.eval()


def test_export_capture_gives_the_fx_graph_of_a_lora_model():
    """peft's forward recorded by torch.export lowers to the graph the fx path builds from lora.Linear."""
    model, x = lora_mlp(4), torch.randn(3, 3)
    fx, exported = (nngraph.to_graph(model, x, capture=c) for c in ("fx", "export"))
    for key in ("edge_index", "edge_attr", "edge_kind", "x", "node_layer"):
        assert torch.equal(getattr(fx, key), getattr(exported, key)), key


def test_lora_conv2d_converts_exactly_and_permutes():
    model, x = lora_cnn(), torch.randn(5, 3, 8, 8)
    graph = nngraph.to_graph(model, x)  # peft's forward defeats torch.fx: the export capture takes it
    with torch.no_grad():
        assert_rel_close(nngraph.execute(graph, x)[0], model(x), rel=1e-5)
    assert_exact_params(nngraph.to_params(graph), model.state_dict())
    a = "base_model.model.2.lora_A.default.weight"
    spec = {p.name: p for p in graph.spec.params}
    assert spec[a].source == "kernel" and int((graph.edge_kind == EDGE_CONV).sum()) > 0
    moved = False
    for seed in range(3):
        permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
        with torch.no_grad():
            assert_rel_close(permuted(x), model(x), rel=1e-4)
        moved |= not torch.equal(permuted.state_dict()[a], model.state_dict()[a])
    assert moved, "the rank channels never moved"


def test_lora_graphs_give_a_conv_adapters_update_alone():
    model = lora_cnn(5)
    graphs = nngraph.lora_graphs(model)
    assert sorted(graphs) == ["base_model.model.0", "base_model.model.2", "base_model.model.5"]
    layer, graph = model.get_base_model()[2], graphs["base_model.model.2"]
    x = torch.randn(4, 6, 3, 3)  # the dilated kernel's size
    with torch.no_grad():
        expected = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    assert_rel_close(nngraph.execute(graph, x)[0], expected, rel=1e-5)
    params, state = nngraph.to_params(graph), model.state_dict()
    assert list(params) == ["base_model.model.2.lora_A.default.weight", "base_model.model.2.lora_B.default.weight"]
    assert all(torch.equal(v, state[k]) for k, v in params.items())


def test_nggnn_is_invariant_on_lora_and_plain_cnns_in_one_batch():
    x = torch.zeros(1, 3, 8, 8)
    graphs = [nngraph.to_graph(lora_cnn(0), x), nngraph.to_graph(lora_cnn(1, targets=()), x),
              nngraph.to_graph(lora_cnn(2, targets=("2",)), x)]
    assert_invariant_on_mixed_batch(graphs, probes=1, permute_seed=4)
