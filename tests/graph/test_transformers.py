"""Transformers as graphs: a ViT (patch conv, class token, position embedding, pre-norm encoder
blocks, head) with explicit Q/K/V/O + SDPA or nn.MultiheadAttention, and a token classifier with
an embedding, written as their reference implementations write them. Execute equals the model,
to_params is exact, permutations of heads and of neurons within heads keep the function."""

import pytest
import torch

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.execute import execute
from nngraph.graph.graph import EDGE_ATTN_SUM, EDGE_CONST
from nngraph.graph.permute import attention_heads, permute_graph, permute_neurons
from nngraph.models import create_model
from tests.graph.archs import ResNet
from tests.graph.helpers import assert_batch_independent, assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.nets import randomise
from tests.graph.transformers import TokenClassifier, ViT

CASES = {
    "vit-sdpa": dict(attention="sdpa"),
    "vit-mha": dict(attention="mha"),
    "vit-mha-tbd-mean": dict(attention="mha-tbd", pool="mean"),
}


def _vit(seed: int = 0, **kwargs) -> ViT:
    return randomise(ViT(**kwargs), seed).eval()


def _images(seed: int = 1) -> torch.Tensor:
    return torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", sorted(CASES))
def test_vit_executes_exactly_and_gives_back_its_parameters(case):
    model = _vit(**CASES[case])
    x = _images()
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


def _moves(graph, perm: torch.Tensor) -> tuple[bool, bool]:
    """(a head moved onto another head, a q/k or v/o neuron moved within its head)."""
    heads = attention_heads(graph)
    moved_head = any(int(perm[a]) != a for h in heads for a, _, _ in h)
    inside = any(int(perm[n]) in set(group) and int(perm[n]) != n
                 for h in heads for _, qk, vo in h for group in (qk, vo) for n in group)
    return moved_head, inside


@pytest.mark.parametrize("case", sorted(CASES))
def test_vit_permutation_keeps_the_function_and_moves_heads_and_neurons(case):
    model = _vit(**CASES[case])
    x = _images()
    graph = nngraph.to_graph(model, x)
    heads = attention_heads(graph)
    assert len(heads) == 2 and all(len(h) == 2 for h in heads)
    seen = set()
    with torch.no_grad():
        for seed in range(6):
            permuted, perm = permute_graph(graph, seed=seed)
            assert_relabelled(permuted, graph, perm)
            assert_rel_close(execute(permuted, x)[0], model(x))
            seen.update(i for i, moved in enumerate(_moves(graph, perm)) if moved)
    assert seen == {0, 1}, "no seed moved a whole head, or none moved a neuron within its head"
    clone = permute_neurons(model, seed=4, example_input=x)
    with torch.no_grad():
        assert_rel_close(clone(x), model(x))
    assert any(not torch.equal(a, b) for a, b in zip(clone.state_dict().values(), model.state_dict().values()))


def test_vit_graph_holds_the_class_token_and_position_embedding_as_const_self_loops():
    graph = nngraph.to_graph(_vit(), _images())
    const = graph.edge_kind == EDGE_CONST
    assert torch.equal(graph.edge_index[0, const], graph.edge_index[1, const])
    assert int(const.sum()) == 2 * 8  # class token and position embedding, one self-loop per channel
    assert int((graph.edge_kind == EDGE_ATTN_SUM).sum()) == 2 * 8  # 2 blocks x D product nodes


def test_token_classifier_with_an_embedding():
    model = randomise(TokenClassifier(), 0).eval()
    ids = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(0))
    graph = nngraph.to_graph(model, ids)
    assert graph.spec.vocab == 11 and graph.spec.input_shape == (6,)
    with torch.no_grad():
        assert_rel_close(execute(graph, ids)[0], model(ids))
        permuted, perm = permute_graph(graph, seed=2)
        assert_rel_close(execute(permuted, ids)[0], model(ids))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())
    clone = permute_neurons(model, seed=2, example_input=ids)
    with torch.no_grad():
        assert_rel_close(clone(ids), model(ids))


def _metanet_graphs():
    x = torch.zeros(1, 3, 8, 8)
    return [nngraph.to_graph(_vit(0), x), nngraph.to_graph(randomise(ResNet(width=4, num_classes=3), 1), x),
            nngraph.to_graph(_vit(2, attention="mha"), x)]


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_metanetworks_read_vits_mixed_with_cnns(name):
    graphs = _metanet_graphs()
    batch = nngraph.collate(graphs)
    torch.manual_seed(0)
    model = create_model(name, example=batch, out_dim=3, probes=1, hidden=16, edge_hidden=8, layers=2).eval()
    with torch.no_grad():
        together = assert_batch_independent(model, graphs)
        moves = set()
        for seed in (3, 7):
            permuted = nngraph.collate([permute_graph(g, seed=seed)[0] for g in graphs])
            assert (model(permuted) - together).abs().max() <= 1e-4
            moves.update(i for i, moved in enumerate(_moves(graphs[0], permute_graph(graphs[0], seed=seed)[1])) if moved)
        assert moves == {0, 1}, "the seeds must move whole heads and neurons within heads"


def test_probe_features_of_a_token_model_are_permutation_invariant():
    """Probes of a token model are learned weights over the vocabulary [T, V]."""
    graph = nngraph.to_graph(randomise(TokenClassifier(), 0).eval(), torch.zeros(1, 6, dtype=torch.long))
    assert graph.spec.probe_shape == (6, 11)
    batch = nngraph.collate([graph])
    torch.manual_seed(0)
    model = create_model("nggnn", example=batch, out_dim=2, probes=3, hidden=16, edge_hidden=8, layers=2).eval()
    assert tuple(model.probes.probes.shape) == (3, 6, 11)
    with torch.no_grad():
        base = model(batch)
        assert (model(nngraph.collate([permute_graph(graph, seed=1)[0]])) - base).abs().max() <= 1e-4


class _Causal(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 4, 4, stride=4)
        self.q, self.k, self.v = (torch.nn.Linear(4, 4) for _ in range(3))
        self.head = torch.nn.Linear(4, 2)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        b, t, d = x.shape
        q, k, v = (f(x).reshape(b, t, 2, 2).transpose(1, 2) for f in (self.q, self.k, self.v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(out.transpose(1, 2).reshape(b, t, d).mean(1))


def test_causal_attention_and_token_outputs_convert_exactly():
    """is_causal=True is a flag on the score nodes (lm.py); a [B, T, D] output is per token."""
    model, x = randomise(_Causal(), 0).eval(), _images()
    with torch.no_grad():
        assert_rel_close(execute(nngraph.to_graph(model, x), x)[0], model(x))

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 4, 4, stride=4)

        def forward(self, img):
            return self.patch(img).flatten(2).transpose(1, 2)

    tokens = randomise(Tokens(), 1).eval()
    with torch.no_grad():
        assert_rel_close(execute(nngraph.to_graph(tokens, x), x)[0], tokens(x))
