"""Sign canonicalisation for odd activations: exact, idempotent, one pattern per sign class."""

import pytest
import torch
from torch import nn

import nngraph
from nngraph.data.inr import Siren
from nngraph.errors import NNGraphError
from nngraph.graph.permute import permute_graph
from nngraph.graph.signs import canonical_signs, canonicalise_signs, flip_signs, flippable_neurons
from tests.graph.nets import randomise


def _tanh_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def _tanh_upconv() -> nn.Module:
    """A transposed convolution between two tanh layers: its kernels flip with both of their channels."""
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.ConvTranspose2d(3, 4, 2, stride=2), nn.Tanh(),
                         nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))


def _bias_free_mlp() -> nn.Module:
    """No biases: the sum of incoming weights decides; one neuron's weights sum to 0: the first one decides."""
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.Tanh(), nn.Linear(5, 4, bias=False), nn.Tanh(),
                        nn.Linear(4, 2))
    randomise(net, 4)
    with torch.no_grad():
        net[0].weight[2] = torch.tensor([0.5, -0.25, -0.25])  # sums to 0 exactly
    return net


GEN = torch.Generator().manual_seed(0)
FAMILIES = {
    "siren": (lambda: randomise(Siren(hidden=16, depth=3, variant="standard"), 0),
              torch.rand(30, 2, generator=GEN) * 2 - 1),
    "tanh-mlp": (lambda: randomise(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(),
                                                 nn.Linear(6, 3)), 1), torch.randn(10, 4, generator=GEN)),
    "tanh-cnn": (lambda: randomise(_tanh_cnn(), 2), torch.randn(5, 1, 6, 6, generator=GEN)),
    "tanh-upconv": (lambda: randomise(_tanh_upconv(), 3), torch.randn(5, 1, 6, 6, generator=GEN)),
    "bias-free": (_bias_free_mlp, torch.randn(10, 3, generator=GEN)),
}


def _random_flips(graph, seed):
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand(graph.num_nodes, generator=gen) < 0.5
    return torch.where(flippable_neurons(graph) & draw, -1.0, 1.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_canonical_signs_keep_the_function_and_are_idempotent(family):
    make, x = FAMILIES[family]
    net = make()
    graph = nngraph.to_graph(net, x)
    free = flippable_neurons(graph)
    hidden = graph.node_role == 1
    assert free.sum() == hidden.sum() > 0  # every hidden neuron of these networks has a free sign
    canonical = canonicalise_signs(graph)
    signs = canonical_signs(graph)
    assert (signs == -1).any() and (signs == 1).any()  # the test moves something
    assert (canonical.x[free, 0] >= 0).all()
    if family == "bias-free":
        assert (canonical.x[free, 0] == 0).all()
    torch.testing.assert_close(nngraph.execute(canonical, x)[0], net(x), rtol=1e-5, atol=1e-5)
    rebuilt = make()
    rebuilt.load_state_dict(nngraph.to_params(canonical))  # the canonical network as a module
    torch.testing.assert_close(rebuilt(x), net(x), rtol=1e-5, atol=1e-5)
    again = canonicalise_signs(canonical)
    assert torch.equal(again.x, canonical.x) and torch.equal(again.edge_attr, canonical.edge_attr)
    assert not torch.equal(canonical.edge_attr, graph.edge_attr)
    assert torch.equal(graph.x, nngraph.to_graph(net, x).x)  # the input graph is not modified


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sign_flipped_copies_canonicalise_to_the_same_parameters(family):
    make, x = FAMILIES[family]
    net = make()
    graph = nngraph.to_graph(net, x)
    canonical = canonicalise_signs(graph)
    for seed in range(3):
        flipped = flip_signs(graph, _random_flips(graph, seed))
        assert not torch.equal(flipped.edge_attr, graph.edge_attr)
        torch.testing.assert_close(nngraph.execute(flipped, x)[0], net(x), rtol=1e-5, atol=1e-5)
        other = canonicalise_signs(flipped)
        assert torch.equal(other.x, canonical.x) and torch.equal(other.edge_attr, canonical.edge_attr)


@pytest.mark.parametrize("family", ["siren", "tanh-mlp", "tanh-cnn", "tanh-upconv"])
def test_canonicalisation_commutes_with_neuron_permutations(family):
    make, x = FAMILIES[family]
    graph = nngraph.to_graph(make(), x)
    permuted, perm = permute_graph(graph, seed=5)
    assert not torch.equal(perm, torch.arange(graph.num_nodes))
    expected, _ = permute_graph(canonicalise_signs(graph), seed=5)
    got = canonicalise_signs(permuted)
    assert torch.equal(got.x, expected.x) and torch.equal(got.edge_attr, expected.edge_attr)


def test_public_api():
    assert nngraph.canonicalise_signs is canonicalise_signs and "canonicalise_signs" in nngraph.__all__


def test_a_batch_canonicalises_like_its_graphs():
    graphs = [nngraph.to_graph(make(), x) for make, x in (FAMILIES["siren"], FAMILIES["tanh-mlp"])]
    graphs.append(flip_signs(graphs[0], _random_flips(graphs[0], 9)))
    batch = canonicalise_signs(nngraph.collate(graphs))
    expected = nngraph.collate([canonicalise_signs(g) for g in graphs])
    assert torch.equal(batch.x, expected.x) and torch.equal(batch.edge_attr, expected.edge_attr)
    assert isinstance(batch, type(expected)) and batch.num_graphs == 3


def test_only_free_signs_flip():
    """ReLU, residual and normalised neurons have no sign symmetry: nothing is free, flipping them is refused."""
    from nngraph.examples import ResidualCNN

    graph = nngraph.to_graph(randomise(ResidualCNN(channels=4, classes=5), 0), torch.zeros(1, 1, 8, 8))
    assert not flippable_neurons(graph).any()
    assert torch.equal(canonicalise_signs(graph).edge_attr, graph.edge_attr)
    signs = torch.ones(graph.num_nodes)
    signs[(graph.node_role == 1).nonzero()[0]] = -1
    with pytest.raises(NNGraphError):
        flip_signs(graph, signs)


def test_loader_gives_canonical_networks(inr_corpus):
    """GraphLoader(canonical_signs=True): the same functions as the stored INRs, every bias >= 0, and the
    task's params are the canonical ones the batch holds."""
    from nngraph.data.corpus import InrDataset
    from nngraph.graph.fast import stacked_params
    from nngraph.pipeline.loader import GraphLoader

    stored = GraphLoader.for_splits({"train": InrDataset(inr_corpus, "train")})["train"]
    loader = GraphLoader.for_splits({"train": InrDataset(inr_corpus, "train")}, canonical_signs=True)["train"]
    index = torch.arange(6)
    batch, items = loader.make_batch(index)
    original, _ = stored.make_batch(index)
    free = flippable_neurons(batch)
    assert free.any() and (batch.x[free, 0] >= 0).all() and (original.x[free, 0] < 0).any()
    coords = torch.rand(20, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(nngraph.execute(batch, coords)[0], nngraph.execute(original, coords)[0],
                               rtol=1e-5, atol=1e-5)
    for name, value in stacked_params(batch).items():
        assert torch.equal(items["params"][name], value), name
