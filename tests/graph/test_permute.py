"""permute_neurons keeps the function and permutes the graph's nodes, nothing else."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nngraph
from nngraph.errors import InputShapeError
from nngraph.graph.augment import random_permutation_augment
from nngraph.graph.fast import stacked_params
from nngraph.graph.graph import ROLE_HIDDEN
from nngraph.graph.permute import permute_graph
from tests.graph.helpers import assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.nets import op_family_cases, randomise
from tests.graph.test_convert import random_cnns, random_mlps

CASES = op_family_cases()


def check_permutation(model, x, seed):
    permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
    with torch.no_grad():
        assert_rel_close(permuted(x), model(x), rel=1e-4)
    old = nngraph.to_graph(model, x)
    new = nngraph.to_graph(permuted, x)
    reference, perm = permute_graph(old, seed)
    assert_relabelled(new, old, perm)
    assert torch.equal(new.x, reference.x) and torch.equal(new.edge_attr, reference.edge_attr)
    return perm, old


@pytest.mark.parametrize("name,model,x", CASES, ids=[c[0] for c in CASES])
def test_permutation_preserves_function_and_relabels_graph(name, model, x):
    moved = False
    for seed in range(3):
        perm, old = check_permutation(model, x, seed)
        moved |= bool((perm != torch.arange(old.num_nodes)).any())
    assert moved, "no hidden neuron moved in three draws"


def test_permutation_moves_weights_of_the_module():
    _, model, x = next(c for c in CASES if c[0] == "siren_dwsnet")
    permuted = nngraph.permute_neurons(model, seed=0)
    assert not torch.equal(permuted.hidden[0].weight, model.hidden[0].weight)
    # a permutation of rows: same multiset of rows
    rows = lambda w: sorted(map(tuple, w.detach().tolist()))  # noqa: E731
    assert rows(permuted.hidden[0].weight) == rows(model.hidden[0].weight)


def test_residual_tied_channels_share_one_permutation():
    _, model, x = next(c for c in CASES if c[0] == "batchnorm2d_residual")
    graph = nngraph.to_graph(model, x)
    _, perm = permute_graph(graph, seed=3)
    hidden = graph.node_role == ROLE_HIDDEN
    layers = graph.node_layer
    # within each hidden layer, the permutation expressed as local indices
    local = {}
    for layer in layers[hidden].unique().tolist():
        nodes = torch.nonzero(layers == layer).squeeze(1)
        local[layer] = tuple((perm[nodes] - nodes[0]).tolist())
    # residual sums and both operands use the same channel order
    src, dst = graph.edge_index[:, graph.edge_kind == 2]
    for s, d in zip(src.tolist(), dst.tolist()):
        if graph.node_role[s] == ROLE_HIDDEN:
            assert local[int(layers[s])] == local[int(layers[d])]


@settings(max_examples=25, deadline=None)
@given(random_mlps())
def test_random_mlp_permutations(case):
    model, x = case
    check_permutation(model, x, seed=1)


@settings(max_examples=25, deadline=None)
@given(random_cnns())
def test_random_cnn_permutations(case):
    model, x = case
    check_permutation(model, x, seed=2)


# ---- slices of one layer read by different layers (issue 31 item 5) -----------------------


class _Sliced(torch.nn.Module):
    """A hidden layer h of ``width`` units (or channels) whose slices feed different layers.

    ``kind``: ``branches`` fa(h[:, :a]) and fb(h[:, a:]) concatenated; ``head`` a head that
    reads h[:, :a] only; ``overlap`` fa(h[:, :b]) and fb(h[:, a:]) with a < b; ``residual``
    h + g(h) and a head on a slice of the sum. ``conv``: channels of a map (a MixConv with
    kernels 3 and 5 for ``branches``).
    """

    def __init__(self, kind: str, width: int, a: int, b: int, conv: bool):
        super().__init__()
        self.kind, self.a, self.b, self.conv = kind, a, b, conv
        lin = (lambda i, o, k: torch.nn.Conv2d(i, o, k, padding=k // 2)) if conv else (lambda i, o, k: torch.nn.Linear(i, o))
        self.f = lin(2, width, 3)
        if kind == "branches":
            self.fa, self.fb, self.out = lin(a, 3, 3), lin(width - a, 2, 5), lin(5, 2, 1)
        elif kind == "head":
            self.out = lin(a, 2, 1)
        elif kind == "overlap":
            self.fa, self.fb, self.out = lin(b, 3, 3), lin(width - a, 2, 1), lin(5, 2, 1)
        else:
            self.g, self.out = lin(width, width, 3), lin(width - a, 2, 1)

    def forward(self, x):
        h = torch.relu(self.f(x))
        if self.kind == "branches":
            y = self.out(torch.cat([torch.tanh(self.fa(h[:, :self.a])), torch.relu(self.fb(h[:, self.a:]))], 1))
        elif self.kind == "head":
            y = self.out(h[:, :self.a])
        elif self.kind == "overlap":
            y = self.out(torch.cat([torch.tanh(self.fa(h[:, :self.b])), self.fb(h[:, self.a:])], 1))
        else:
            s = h + torch.relu(self.g(h))
            y = self.out(s[:, self.a:])
        return y.mean((2, 3)) if self.conv else y


@st.composite
def sliced_networks(draw):
    kind = draw(st.sampled_from(["branches", "head", "overlap", "residual"]))
    width = draw(st.integers(3, 9))
    a = draw(st.integers(1, width - 2))
    b = draw(st.integers(a + 1, width))
    conv = draw(st.booleans())
    model = randomise(_Sliced(kind, width, a, b, conv), draw(st.integers(0, 1000)))
    return model, torch.randn(3, 2, 5, 5) if conv else torch.randn(4, 2)


@settings(max_examples=30, deadline=None)
@given(sliced_networks(), st.integers(0, 2**31 - 1))
def test_sliced_layers_permute_without_error_and_keep_the_function(case, seed):
    model, x = case
    perm, old = check_permutation(model, x, seed)  # function kept, graph relabelled exactly
    hidden = old.node_role == ROLE_HIDDEN
    moved = any(bool((permute_graph(old, s)[1] != torch.arange(old.num_nodes)).any()) for s in range(seed, seed + 24))
    # every hidden layer here has >= 2 interchangeable neurons except a lone slice unit of width 1; a class of two
    # stays put in one draw with probability 1/2, so in 24 draws with probability 6e-8
    assert moved or int(hidden.sum()) <= 2, "nothing moved in 24 draws"


@settings(max_examples=15, deadline=None)
@given(sliced_networks())
def test_sliced_layers_augment_without_error_and_keep_the_function(case):
    model, x = case
    template = nngraph.to_graph(model, x)
    state = model.state_dict()
    names = list(stacked_params(nngraph.collate([template])))
    stack = {k: state[k].unsqueeze(0).repeat(4, *([1] * state[k].dim())) for k in names}
    batch = nngraph.graphs_from_params(template, stack)
    augmented = random_permutation_augment(batch, torch.Generator().manual_seed(0))
    assert_rel_close(nngraph.execute(augmented, x)[0], nngraph.execute(batch, x)[0], rel=1e-4)


@pytest.mark.parametrize("kind", ["branches", "head", "overlap", "residual"])
def test_each_slice_moves_only_within_itself(kind):
    model = randomise(_Sliced(kind, 8, 3, 5, conv=False), 0)
    x = torch.randn(4, 2)
    graph = nngraph.to_graph(model, x)
    h = torch.nonzero(graph.node_layer == 1).squeeze(1)  # the sliced layer: nodes 2..9
    for seed in range(5):
        _, perm = permute_graph(graph, seed)
        local = perm[h] - h[0]
        # a unit read by the first slice only stays among units read by the first slice only, and so on
        for start, stop in {"branches": [(0, 3), (3, 8)], "head": [(0, 3), (3, 8)], "overlap": [(0, 3), (3, 5), (5, 8)],
                            "residual": [(0, 8)]}[kind]:
            assert sorted(local[start:stop].tolist()) == list(range(start, stop))


class _Doubled(torch.nn.Module):
    """The same neurons read twice by one op: ``fc(cat([h, h]))`` and ``h + h``."""

    def __init__(self):
        super().__init__()
        self.f, self.fc, self.g = torch.nn.Linear(2, 4), torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.f(x))
        return self.g(torch.relu(self.fc(torch.cat([h, h], 1))) + h + h)


def test_neurons_read_twice_are_matched_copy_to_copy():
    model, x = randomise(_Doubled(), 1), torch.randn(5, 2)
    moved = False
    for seed in range(4):
        permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
        with torch.no_grad():
            assert_rel_close(permuted(x), model(x), rel=1e-4)
        graph_path, perm = permute_graph(nngraph.to_graph(model, x), seed)
        assert_exact_params(permuted.state_dict(), nngraph.to_params(graph_path))
        moved |= not torch.equal(permuted.fc.weight, model.fc.weight)
    assert moved


def test_permute_neurons_builds_no_edge_weights_and_equals_the_graph_path():
    model, x = randomise(_Sliced("branches", 8, 3, 5, conv=True), 2), torch.randn(2, 2, 5, 5)
    bare = nngraph.to_graph(model, x, weights=False)
    full = nngraph.to_graph(model, x)
    assert bare.edge_attr.shape == (full.num_edges, 0)
    assert torch.equal(bare.edge_index, full.edge_index) and torch.equal(bare.x, full.x)
    permuted, _ = permute_graph(full, 3)
    assert_exact_params(nngraph.permute_neurons(model, seed=3, example_input=x).state_dict(), nngraph.to_params(permuted))


class _Mnist28(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.MaxPool2d(2), torch.nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_a_guessed_input_that_does_not_fit_says_it_was_guessed():
    with pytest.raises(InputShapeError) as info:
        nngraph.permute_neurons(_Mnist28(), seed=0)
    message = str(info.value)
    assert "guessed the input shape [1, 32, 32]" in message and "example_input=" in message
    assert "MaxPool" not in message and "\n" not in message
    nngraph.permute_neurons(_Mnist28().eval(), seed=0, example_input=torch.zeros(1, 1, 28, 28))
