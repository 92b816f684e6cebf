"""Probing baselines and probe sources: invariance, batch independence, what is read, generators."""

import pytest
import torch

import nngraph
from nngraph.data.inr import Siren
from nngraph.graph.permute import permute_graph
from nngraph.models import create_model, model_info, models_with
from nngraph.models.probes import ProbeSource, layer_responses, output_responses
from nngraph.models.registry import check_model_args
from tests.graph.nets import randomise
from tests.models.test_graph_models import cnn_graphs

TOL = 1e-4
SMALL = {"probes": 8, "hidden": 32, "layers": 3}
VARIANTS = [("probe", {}), ("probegen", {}), ("probe", {"hidden_responses": True}),
            ("probegen", {"hidden_responses": True})]
IDS = [f"{name}{'-hidden' if kw else ''}" for name, kw in VARIANTS]


def sirens(count, seed=0, **kwargs):
    return [nngraph.to_graph(randomise(Siren(**kwargs), seed + i), torch.zeros(1, 2)) for i in range(count)]


def build(name, example, **kwargs):
    torch.manual_seed(0)
    return create_model(name, example=example, out_dim=3, **{**SMALL, **kwargs}).eval()


@pytest.mark.parametrize("family", ["siren", "cnn"])
@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_probing_models_are_invariant_to_neuron_permutations(family, name, kwargs):
    graphs = sirens(3) if family == "siren" else cnn_graphs(3)
    model = build(name, nngraph.collate(graphs), **kwargs)
    permuted = [permute_graph(g, seed=s + 1)[0] for s, g in enumerate(graphs)]
    assert any(not torch.equal(p.edge_attr, g.edge_attr) for p, g in zip(permuted, graphs))
    with torch.no_grad():
        y = model(nngraph.collate(graphs))
        y_perm = model(nngraph.collate(permuted))
    assert y.shape == (3, 3) and y.abs().max() > 1e-3
    assert (y - y_perm).abs().max() <= TOL


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_probing_prediction_does_not_depend_on_batch_mates(name, kwargs):
    """SIRENs of two depths in one batch (the shallow ones leave a hidden-layer slot empty)."""
    shallow, deep = sirens(2, seed=1, hidden=16, depth=2), sirens(2, seed=5, hidden=8, depth=4)
    model = build(name, nngraph.collate(shallow + deep), **kwargs)
    with torch.no_grad():
        mixed = model(nngraph.collate(shallow + deep))
        for i, graph in enumerate(shallow + deep):
            assert (model(nngraph.collate([graph])) - mixed[i : i + 1]).abs().max() <= 1e-5
    cnns = cnn_graphs(4)  # two CNN architectures
    model = build(name, nngraph.collate(cnns), **kwargs)
    with torch.no_grad():
        together = model(nngraph.collate(cnns))
        for i, graph in enumerate(cnns):
            assert (model(nngraph.collate([graph])) - together[i : i + 1]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["probe", "probegen"])
def test_probing_reads_the_outputs_on_the_probes_and_trains_the_probes(name):
    graphs = sirens(3)
    batch = nngraph.collate(graphs)
    model = build(name, batch).train()
    probes = model.source.inputs()  # [K, 2]
    y, _ = nngraph.execute(batch, probes.detach())  # [B, K, 1]
    torch.testing.assert_close(model.features(batch), y.reshape(3, -1))
    model(batch).pow(2).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    source = dict(model.source.named_parameters())
    assert set(source) == ({"probes"} if name == "probe" else
                           {"generator.codes", "generator.layers.0.weight", "generator.layers.0.bias",
                            "generator.layers.1.weight", "generator.layers.1.bias"})


def test_hidden_responses_are_layer_means_and_maxima_in_layer_order():
    graphs = sirens(2, hidden=6, depth=3)
    batch = nngraph.collate(graphs)
    acts = torch.randn(batch.num_nodes, 5)
    got = layer_responses(batch, acts, 4)  # [B, 4, 10]
    for b in range(2):
        nodes = (batch.batch == b) & (batch.node_role == 1)
        layers = sorted(batch.node_layer[nodes].unique().tolist())
        assert len(layers) == 3
        for slot, layer in enumerate(layers):
            rows = acts[nodes & (batch.node_layer == layer)]
            torch.testing.assert_close(got[b, slot], torch.cat([rows.mean(0), rows.amax(0)]))
        assert got[b, 3].abs().max() == 0  # no fourth hidden layer
    with pytest.raises(nngraph.NNGraphError, match="hidden layers"):
        layer_responses(batch, acts, 2)
    out = output_responses(batch, acts, 1)
    torch.testing.assert_close(out, acts[batch.node_role == 2])


def test_deep_linear_generators():
    """Vectors and tokens: an affine map of the codes, no activation; images: transposed convolutions to the
    image size, values in (-1, 1) after the one tanh; free probes start uniform in their domain."""
    vector = ProbeSource(16, (2,), generator="deep-linear")
    assert vector.inputs().shape == (16, 2)
    gen = vector.generator
    with torch.no_grad():
        mid = gen.layers((gen.codes[0] + gen.codes[1]) / 2)
        torch.testing.assert_close(mid, (gen.layers(gen.codes[0]) + gen.layers(gen.codes[1])) / 2)
    deeper = ProbeSource(4, (5, 7), generator="deep-linear", generator_layers=3, generator_width=8)
    assert deeper.inputs().shape == (4, 5, 7) and len(deeper.generator.layers) == 3
    for shape in [(1, 28, 28), (3, 32, 32), (1, 8, 8), (2, 9, 5)]:
        images = ProbeSource(3, shape, generator="deep-linear").inputs()
        assert images.shape == (3, *shape) and images.abs().max() < 1
        assert images.std() > 0
    free = ProbeSource(500, (2,), domain=(0.0, 1.0)).inputs()
    assert free.min() >= 0 and free.max() <= 1 and free.std() > 0.2
    with pytest.raises(nngraph.NNGraphError, match="probe generator"):
        ProbeSource(4, (2,), generator="gan")


def test_probing_models_in_the_registry():
    for name in ("probe", "probegen"):
        info = model_info(name)
        assert info.baseline and info.probes and info.readouts == ("invariant",)  # no edits
        assert name not in models_with("parameters")
    with pytest.raises(nngraph.NNGraphError, match="probes must be >= 1"):
        check_model_args("probe", {"probes": 0})
    with pytest.raises(nngraph.NNGraphError, match="generator_layers"):
        check_model_args("probe", {"generator_layers": 3})  # free probes have no generator
    check_model_args("probegen", {"probes": 128, "generator_layers": 3, "hidden_responses": True})
    model = create_model("probegen", example=nngraph.collate(sirens(2)), out_dim=10)
    assert model.source.inputs().shape == (128, 2)  # the published size by default
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [256] * 5 + [10]
