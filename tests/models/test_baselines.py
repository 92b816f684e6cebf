"""Baselines: shapes, invariance, batch independence, gradients, augmentation, statistics."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import nngraph
from nngraph.data.inr import Siren
from nngraph.errors import UnsupportedModelError
from nngraph.examples import NormedMLP, ResidualCNN, TwoBranchCNN
from nngraph.graph.fast import graphs_from_params, stacked_params
from nngraph.graph.permute import permute_graph
from nngraph.graph.augment import random_permutation_augment
from nngraph.models.baselines import BASELINES, DeepSets, FlatMLP, StatNN
from nngraph.models.baselines.dwsnet import DWSLayer, from_features, to_features, weight_space
from nngraph.models.baselines.nfn import chain_params, to_wsfeat
from nngraph.models.baselines.statnn import segment_stats, stat_features
from tests.graph.nets import randomise

INVARIANT = ("deepsets", "statnn", "nfn-np", "nfn-hnp", "dwsnet", "probe", "probegen")
MIXED_OK = ("deepsets", "statnn")
OUT = 3
TOL = 1e-4


def _siren(seed: int) -> torch.nn.Module:
    # randomised (N(0, 0.25) parameters) so that outputs react visibly to the weights
    return randomise(Siren(hidden=16, depth=2, variant="standard"), seed)


def _cnn(seed: int) -> torch.nn.Module:
    return randomise(ResidualCNN(channels=4, classes=5), seed)


COORDS = torch.rand(20, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
IMAGES = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
FAMILIES = {"siren": (_siren, COORDS), "cnn": (_cnn, IMAGES)}


@cache  # conversions are the slow part; graphs are never modified in place
def _graphs(family: str, seeds=(0, 1, 2, 3)):
    make, x = FAMILIES[family]
    return tuple(nngraph.to_graph(make(s), x) for s in seeds)


def _model(name: str, example, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {"mlp": dict(hidden=32), "deepsets": dict(hidden=32), "statnn": dict(hidden=32),
             "nfn-np": dict(hidden_chan=8, head_hidden=32), "nfn-hnp": dict(hidden_chan=8, head_hidden=32),
             "dwsnet": dict(hidden_chan=8, hidden_layers=2, head_hidden=32, head_layers=2),
             "probe": dict(probes=8, hidden=32), "probegen": dict(probes=8, hidden=32)}[name]
    return BASELINES[name].from_example(example, OUT, **{**small, **kwargs}).eval()


@cache
def _mixed_graphs():
    gen = torch.Generator().manual_seed(5)
    return (
        nngraph.to_graph(_siren(7), COORDS),
        nngraph.to_graph(randomise(NormedMLP(features=4, hidden=6, classes=2), 8), torch.randn(3, 4, generator=gen)),
        nngraph.to_graph(_cnn(9), IMAGES),
        nngraph.to_graph(randomise(TwoBranchCNN(classes=3), 10), IMAGES),
    )


@pytest.mark.parametrize("family", ["siren", "cnn"])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_output_shape_and_gradients(name, family):
    batch = nngraph.collate(_graphs(family))
    model = _model(name, batch).train()
    y = model(batch)
    assert y.shape == (4, OUT) and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    reached = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert reached == len(list(model.parameters())), f"{reached} of {len(list(model.parameters()))} tensors got gradient"


def test_registry_names():
    assert set(BASELINES) == {"mlp", "deepsets", "statnn", "nfn-np", "nfn-hnp", "dwsnet", "probe", "probegen"}


@pytest.mark.parametrize("family", ["siren", "cnn"])
@pytest.mark.parametrize("name", INVARIANT)
def test_invariant_under_permute_graph(name, family):
    graphs = _graphs(family)
    batch = nngraph.collate(graphs)
    model = _model(name, batch)
    permuted = []
    for i, g in enumerate(graphs):
        pg, perm = permute_graph(g, seed=10 + i)
        assert not torch.equal(perm, torch.arange(g.num_nodes))
        permuted.append(pg)
    pbatch = nngraph.collate(permuted)
    # The permutation really changes what a non-invariant reader sees.
    assert not torch.equal(stacked_params(batch)[next(iter(stacked_params(batch)))], stacked_params(pbatch)[next(iter(stacked_params(pbatch)))])
    with torch.no_grad():
        assert (model(batch) - model(pbatch)).abs().max() <= TOL


@pytest.mark.parametrize("family", ["siren", "cnn"])
@pytest.mark.parametrize("name", INVARIANT)
def test_invariant_under_permute_neurons(name, family):
    make, x = FAMILIES[family]
    nets = [make(s) for s in (0, 1, 2)]
    batch = nngraph.collate([nngraph.to_graph(n, x) for n in nets])
    pnets = [nngraph.permute_neurons(n, seed=3 + i, example_input=x) for i, n in enumerate(nets)]
    for n, pn in zip(nets, pnets):  # function kept, parameters moved
        torch.testing.assert_close(pn(x), n(x), rtol=1e-4, atol=1e-5)
        assert any(not torch.equal(a, b) for a, b in zip(n.state_dict().values(), pn.state_dict().values()))
    pbatch = nngraph.collate([nngraph.to_graph(pn, x) for pn in pnets])
    model = _model(name, batch)
    with torch.no_grad():
        assert (model(batch) - model(pbatch)).abs().max() <= TOL


@pytest.mark.parametrize("family", ["siren", "cnn"])
def test_flat_mlp_is_not_invariant(family):
    """The invariance test can fail: the flattened-weights MLP sees permuted networks as new inputs."""
    graphs = _graphs(family)
    batch = nngraph.collate(graphs)
    pbatch = nngraph.collate([permute_graph(g, seed=10 + i)[0] for i, g in enumerate(graphs)])
    model = _model("mlp", batch)
    with torch.no_grad():
        assert (model(batch) - model(pbatch)).abs().max() > 100 * TOL


@pytest.mark.parametrize("family", ["siren", "cnn"])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_batch_independence_one_architecture(name, family):
    graphs = _graphs(family)
    batch = nngraph.collate(graphs)
    model = _model(name, batch)
    make, x = FAMILIES[family]
    fast = nngraph.graphs_from_params(graphs[0], {k: v.unsqueeze(0).expand(4, *v.shape) for k, v in make(0).state_dict().items()
                                                  if k in dict(stacked_params(batch))})
    with torch.no_grad():
        together = model(batch)
        for i, g in enumerate(graphs):
            alone = model(nngraph.collate([g]))
            assert (alone[0] - together[i]).abs().max() <= 1e-5
        # graphs_from_params builds the same batch as collate: same outputs
        assert (model(fast) - model(nngraph.collate([graphs[0]] * 4))).abs().max() <= 1e-5


@pytest.mark.parametrize("name", MIXED_OK)
def test_batch_independence_mixed_architectures(name):
    graphs = _mixed_graphs()
    mixed = nngraph.collate(graphs)
    model = _model(name, mixed)
    with torch.no_grad():
        together = model(mixed)
        assert together.shape == (len(graphs), OUT)
        for i, g in enumerate(graphs):
            alone = model(nngraph.collate([g]))  # its own (smaller) kernel window and width
            own_kind = model(nngraph.collate([g, g]))
            assert (alone[0] - together[i]).abs().max() <= 1e-5, i
            assert (own_kind[1] - together[i]).abs().max() <= 1e-5, i
        # and invariance holds in the mixed batch too
        permuted = nngraph.collate([permute_graph(g, seed=4)[0] for g in graphs])
        assert (model(permuted) - together).abs().max() <= TOL


def test_deepsets_refuses_kernels_larger_than_its_window():
    siren_batch = nngraph.collate(_graphs("siren"))
    model = DeepSets.from_example(siren_batch, OUT, hidden=8)  # kernel 1
    with pytest.raises(nngraph.NNGraphError, match="kernel"):
        model(nngraph.collate(_graphs("cnn")))


@pytest.mark.parametrize("family", ["siren", "cnn"])
def test_augmentation_keeps_function_and_differs_per_graph(family):
    make, x = FAMILIES[family]
    net = make(0)
    template = nngraph.to_graph(net, x)
    state = net.state_dict()
    names = list(stacked_params(nngraph.collate([template])))
    stack = {k: state[k].unsqueeze(0).repeat(6, *([1] * state[k].dim())) for k in names}
    batch = nngraph.graphs_from_params(template, stack)  # six copies of one network
    aug = random_permutation_augment(batch, torch.Generator().manual_seed(0))
    y, _ = nngraph.execute(batch, x)
    y_aug, _ = nngraph.execute(aug, x)
    torch.testing.assert_close(y_aug, y, rtol=1e-4, atol=1e-5)
    params = stacked_params(aug)
    hidden_w = params[names[0]]  # first weight: rows permuted
    assert not torch.equal(hidden_w[0], stack[names[0]][0])
    distinct = {tuple(hidden_w[i].flatten().tolist()) for i in range(6)}
    assert len(distinct) > 1, "every graph got the same permutation"
    # same multiset of values in every tensor (a relabelling, nothing else)
    for k in names:
        torch.testing.assert_close(params[k].flatten(1).sort(1).values, stack[k].flatten(1).sort(1).values, rtol=0, atol=0)
    # the augmented batch is valid input for the flat MLP, and changes what it sees
    model = _model("mlp", batch)
    with torch.no_grad():
        assert (model(aug) - model(batch)).abs().max() > 100 * TOL


def test_segment_stats_match_torch():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(50, generator=gen)
    seg = torch.randint(0, 4, (50,), generator=gen)
    seg[0] = 4  # a one-element segment
    out = segment_stats(values, seg, 6)  # segment 5 empty
    q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    for s in range(5):
        v = values[seg == s]
        expected = torch.cat([v.mean().view(1), v.var(unbiased=False).view(1), torch.quantile(v, q)])
        torch.testing.assert_close(out[s], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[5], torch.zeros(7))


def test_statnn_features_are_per_layer_statistics():
    """Slots hold the statistics of each layer's real weights (no window padding) and biases."""
    net = _cnn(0)
    batch = nngraph.collate([nngraph.to_graph(net, IMAGES), nngraph.to_graph(_siren(0), COORDS)])  # window 5x5
    f = stat_features(batch, 4, 1)
    q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])

    def stats(t):
        t = t.flatten()
        return torch.cat([t.mean().view(1), t.var(unbiased=False).view(1), torch.quantile(t, q)])

    sd = net.state_dict()
    layers = [("stem", "stem"), ("conv1", "conv1"), ("conv2", "conv2"), ("head", "head")]
    for slot, (w, b) in enumerate(layers):
        expected = torch.cat([stats(sd[f"{w}.weight"]), stats(sd[f"{b}.bias"]), torch.ones(1)])
        torch.testing.assert_close(f[0, slot * 15 : (slot + 1) * 15], expected, rtol=1e-5, atol=1e-6)
    # the single last-layer slot is the head again
    torch.testing.assert_close(f[0, 4 * 15 : 5 * 15], f[0, 3 * 15 : 4 * 15])
    # the SIREN has 3 parametric layers: slot 3 is absent (zeros, mask 0)
    assert torch.equal(f[1, 3 * 15 : 4 * 15], torch.zeros(15))
    w_all = torch.cat([sd[k].flatten() for k in ("stem.weight", "conv1.weight", "conv2.weight", "head.weight")])
    torch.testing.assert_close(f[0, 75:82], stats(w_all), rtol=1e-5, atol=1e-6)
    # StatNN's default on one architecture is the paper's layout: every layer in order
    model = StatNN.from_example(nngraph.collate([nngraph.to_graph(net, IMAGES)]), OUT)
    assert (model.first_k, model.last_k) == (4, 0)


def test_statnn_flatten_weights_counted_exactly():
    net = randomise(TwoBranchCNN(classes=3), 0)
    f = stat_features(nngraph.collate([nngraph.to_graph(net, IMAGES)]), 4, 0)  # narrow, wide, down, head
    head = net.state_dict()["head.weight"].flatten()  # flatten edges: H*W weights each
    assert f[0, 3 * 15] == pytest.approx(float(head.mean()), abs=1e-6)
    assert f[0, 3 * 15 + 6] == pytest.approx(float(head.max()), abs=1e-6)


def test_nfn_conversion_and_batchnorm_folding():
    net = _siren(0)
    ws = to_wsfeat(nngraph.collate([nngraph.to_graph(net, COORDS)]))
    sd = net.state_dict()
    assert [tuple(w.shape) for w in ws.weights] == [(1, 1, 16, 2), (1, 1, 16, 16), (1, 1, 1, 16)]
    torch.testing.assert_close(ws.weights[1][0, 0], sd["hidden.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(ws.biases[2][0, 0], sd["out.bias"], rtol=0, atol=0)
    cnn = _cnn(0)
    weights, biases = chain_params(nngraph.collate([nngraph.to_graph(cnn, IMAGES)]))
    assert weights[0].shape == (1, 4, 1, 3, 3) and weights[2].shape == (1, 4, 4, 5, 5)
    folded = torch.nn.functional.conv2d(IMAGES, weights[0][0], biases[0][0], padding=1)
    torch.testing.assert_close(folded, cnn.bn(cnn.stem(IMAGES)), rtol=1e-4, atol=1e-5)


class _UpConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(1, 2, 2, stride=2)
        self.head = torch.nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(x))).mean((2, 3))


class _LayerScaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.gamma, self.out = torch.nn.Linear(4, 5), torch.nn.Parameter(torch.rand(5)), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.gamma * torch.relu(self.fc(x)))


def test_nfn_refuses_what_it_cannot_read():
    cases = [
        (randomise(TwoBranchCNN(classes=3), 0), IMAGES, "flattened"),  # flatten head (and concatenation)
        (randomise(NormedMLP(features=4, hidden=6, classes=2), 0), torch.randn(3, 4), "BatchNorm"),  # LayerNorm
        (_UpConv().eval(), IMAGES, "kernel_t"),  # a ConvTranspose2d weight
        (_LayerScaled().eval(), torch.randn(3, 4), "diag"),  # a layer scale gamma * x
    ]
    for net, x, match in cases:
        batch = nngraph.collate([nngraph.to_graph(net, x)])
        for name in ("nfn-np", "nfn-hnp"):
            with pytest.raises(UnsupportedModelError, match=match):
                BASELINES[name].from_example(batch, OUT)


def test_flat_mlp_refuses_other_architecture():
    model = FlatMLP.from_example(nngraph.collate(_graphs("siren")), OUT, hidden=8)
    with pytest.raises(nngraph.NNGraphError):
        model(nngraph.collate(_graphs("cnn")))


@pytest.mark.parametrize("name", ["nfn-np", "nfn-hnp", "dwsnet"])
def test_nfn_edits_are_equivariant_and_start_at_no_change(name):
    graphs = _graphs("siren")
    batch = nngraph.collate(graphs)
    model = _model(name, batch, readout="parameters")
    names = set(stacked_params(batch))
    with torch.no_grad():
        deltas = model(batch)
        assert set(deltas) == names and all(v.abs().max() == 0 for v in deltas.values())  # zero-initialised edit
        for p in model.edit.parameters():
            p.normal_(0, 0.2)
        deltas = model(batch)
        assert all(v.abs().max() > 1e-3 for v in deltas.values())
        permuted = [permute_graph(g, seed=20 + i) for i, g in enumerate(graphs)]
        deltas_perm = model(nngraph.collate([p for p, _ in permuted]))
    # The predicted edits, laid out as networks and permuted the same way, are the edits of the permuted networks.
    for b, (g, _) in enumerate(zip(graphs, permuted)):
        as_graph = graphs_from_params(g, {k: v[b : b + 1] for k, v in deltas.items()}).to_data_list()[0]
        expected = stacked_params(nngraph.collate([permute_graph(as_graph, seed=20 + b)[0]]))
        for key, value in expected.items():
            assert value.shape == deltas_perm[key][b : b + 1].shape
            assert (deltas_perm[key][b] - value[0]).abs().max() <= TOL, key


def test_nfn_edits_refuse_folded_batchnorm():
    with pytest.raises(UnsupportedModelError, match="bias and no BatchNorm"):
        _model("nfn-np", nngraph.collate(_graphs("cnn")), readout="parameters")


def _weight_space_permutation(shapes, perms):
    """Indices of the flattened weight space (W_1, b_1, ..., W_L, b_L, torch layouts) after permuting
    hidden layer k's neurons by ``perms[k]`` (inputs and outputs fixed): x_permuted = x[index]."""
    index, start = [], 0
    sizes = [shapes[0][1]] + [s[0] for s in shapes]
    perm = [torch.arange(n) for n in sizes]
    for k, p in perms.items():
        perm[k] = p
    for i, (out, inn) in enumerate(shapes, start=1):
        w = torch.arange(out * inn).view(out, inn)[perm[i]][:, perm[i - 1]]
        b = torch.arange(out)[perm[i]]
        index += [start + w.flatten(), start + out * inn + b]
        start += out * inn + out
    return torch.cat(index)


@pytest.mark.parametrize("shapes, commutant_dim, terms", [
    ([(3, 2), (3, 3), (1, 3)], 75, 13),  # 2-3-3-1: W_1 2 terms, b_1 2, W_2 4, b_2 2, W_3 2, b_3 1
    ([(3, 2), (2, 3), (3, 2), (1, 3)], None, None),  # 2-3-2-3-1: blocks between layers two and more apart
])
def test_dwsnet_layer_spans_every_equivariant_linear_map(shapes, commutant_dim, terms):
    """The layer's linear maps (one channel, biases left out) are exactly the commutant of the hidden-neuron
    permutations of an MLP's weight space: every one commutes, and together they span all of them.
    The permutations act by permuting coordinates, so a commuting M is one constant per orbit of the
    coordinate pairs (i, j) -> (g[i], g[j]): the commutant's dimension is the number of those orbits."""
    specs = weight_space(shapes)
    dim = sum(o * i + o for o, i in shapes)
    gens = [_weight_space_permutation(shapes, {k: torch.roll(torch.arange(n), 1)})
            for k, n in enumerate((s[0] for s in shapes[:-1]), start=1)]  # a cycle and a transposition per layer
    gens += [_weight_space_permutation(shapes, {k: torch.tensor([1, 0, *range(2, n)])})
             for k, n in enumerate((s[0] for s in shapes[:-1]), start=1)]
    parent = list(range(dim * dim))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for g in gens:
        for i in range(dim):
            for j in range(dim):
                parent[root(i * dim + j)] = root(int(g[i]) * dim + int(g[j]))
    commutant = len({root(a) for a in range(dim * dim)})
    layer = DWSLayer(specs, 1, 1).double()
    weights = [m.weight for m in layer.maps]

    def as_matrix():  # the layer's linear map on the flattened weight space [dim, dim]
        basis = torch.eye(dim, dtype=torch.float64)
        tensors, start = [], 0
        for spec in specs:
            size = int(torch.tensor(spec.shape).prod())
            tensors.append(to_features(basis[:, start:start + size].reshape(dim, *spec.shape, 1), spec))
            start += size
        with torch.no_grad():
            out = layer(tensors)
        cols = [from_features(y, spec).reshape(dim, -1) for y, spec in zip(out, specs)]
        return torch.cat(cols, dim=1).T  # column j = image of basis vector j

    for m in layer.maps:
        if m.bias is not None:
            torch.nn.init.zeros_(m.bias)
    spans = []
    with torch.no_grad():
        for w in weights:
            for j in range(w.numel()):
                for v in weights:
                    v.zero_()
                w.view(-1)[j] = 1.0
                spans.append(as_matrix().flatten())
        for v in weights:
            v.normal_()
        matrix = as_matrix()
    for g in gens:  # a generic map commutes with every generator
        assert torch.allclose(matrix[g][:, g], matrix, atol=1e-9)
    assert int(torch.linalg.matrix_rank(torch.stack(spans))) == commutant
    assert commutant == (commutant_dim or commutant) and len(layer.terms) == (terms or len(layer.terms))


def test_dwsnet_trains():
    """A few AdamW steps on one batch lower the classification loss and the editing loss."""
    batch = nngraph.collate(_graphs("siren"))
    labels = torch.tensor([0, 1, 2, 0])
    for readout in ("invariant", "parameters"):
        model = _model("dwsnet", batch, **({"readout": readout} if readout == "parameters" else {})).train()
        opt = torch.optim.AdamW(model.parameters(), 1e-2)
        target = {k: 0.1 * torch.ones_like(v) for k, v in stacked_params(batch).items()}
        losses = []
        for _ in range(12):
            out = model(batch)
            loss = (torch.nn.functional.cross_entropy(out, labels) if readout == "invariant" else
                    sum((out[k] - target[k]).pow(2).mean() for k in target))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        assert losses[-1] < 0.5 * losses[0], (readout, losses[0], losses[-1])
