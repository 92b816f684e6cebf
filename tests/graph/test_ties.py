"""Tied weights (ties.py): one tensor used in several places converts, reads back once, permutes alike."""

import torch
from torch import nn

import nngraph
from nngraph.graph.fast import graphs_from_params, stacked_params
from nngraph.graph.permute import permute_graph, tie_class_of
from nngraph.graph.ties import consistent
from tests.graph.helpers import assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.nets import randomise


class TwoNames(nn.Module):
    """b reuses a's weight: one Parameter under two state_dict names (GPT-2's lm_head / wte)."""

    def __init__(self):
        super().__init__()
        self.inp, self.a, self.b, self.out = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.relu(self.a(torch.relu(self.inp(x)))))))


class CalledTwice(nn.Module):
    """One module applied twice (a weight tied across two layers, as an RNN across steps)."""

    def __init__(self):
        super().__init__()
        self.inp, self.f, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.tanh(self.f(torch.relu(self.f(h)))))


class MidTwice(nn.Module):
    """A square hidden layer applied twice between two others (weight and bias tied)."""

    def __init__(self):
        super().__init__()
        self.enc, self.mid, self.dec = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.dec(torch.relu(self.mid(torch.relu(self.mid(torch.relu(self.enc(x)))))))


CASES = [("two_names", TwoNames, 3), ("called_twice", CalledTwice, 3), ("mid_twice", MidTwice, 4)]


def _models():
    for name, cls, d in CASES:
        yield name, randomise(cls().eval(), 1), torch.randn(7, d)


def test_tied_networks_execute_exactly_and_read_back_every_name():
    for name, model, x in _models():
        graph = nngraph.to_graph(model, x)
        assert graph.spec.ties, name
        y, _ = nngraph.execute(graph, x)
        with torch.no_grad():
            assert_rel_close(y, model(x), rel=1e-5)
        params = nngraph.to_params(graph)
        assert_exact_params(params, model.state_dict())
        clone = type(model)()
        clone.load_state_dict(params)
        with torch.no_grad():
            assert torch.equal(clone(x), model(x)), name


def test_two_names_of_one_tensor_are_one_primary_and_an_alias():
    model = randomise(TwoNames().eval(), 2)
    graph = nngraph.to_graph(model, torch.randn(2, 3))
    names = [p.name for p in graph.spec.params]
    assert "a.weight" in names and "b.weight" not in names
    (tie,) = graph.spec.ties
    assert (tie.name, tie.tie) == ("b.weight", "a.weight")
    params = nngraph.to_params(graph)
    assert torch.equal(params["b.weight"], model.a.weight)


def test_graphs_from_params_writes_every_use_of_a_tied_tensor():
    models = [randomise(CalledTwice().eval(), s) for s in range(3)]
    x = torch.randn(5, 3)
    template = nngraph.to_graph(models[0], x)
    stack = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    batch = graphs_from_params(template, stack)
    expected = nngraph.collate([nngraph.to_graph(m, x) for m in models])
    assert torch.equal(batch.edge_attr, expected.edge_attr) and torch.equal(batch.x, expected.x)
    for k, v in stacked_params(batch).items():
        assert torch.equal(v, stack[k]), k


def test_permutations_move_tied_uses_alike_and_keep_the_function():
    for name, model, x in _models():
        graph = nngraph.to_graph(model, x)
        moved = False
        for seed in range(4):
            permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
            with torch.no_grad():
                assert_rel_close(permuted(x), model(x), rel=1e-4)
            new = nngraph.to_graph(permuted, x)
            reference, perm = permute_graph(graph, seed)
            assert consistent(graph, perm)
            assert_relabelled(new, graph, perm)
            assert torch.equal(new.edge_attr, reference.edge_attr)
            moved |= bool((perm != torch.arange(graph.num_nodes)).any())
        assert moved, f"{name}: nothing moved in four draws"


def test_a_tie_joins_the_layers_it_is_used_in_into_one_class():
    model = randomise(CalledTwice().eval(), 0)
    graph = nngraph.to_graph(model, torch.randn(2, 3))
    root = tie_class_of(graph)
    h1 = [n for n in range(graph.num_nodes) if int(graph.node_layer[n]) == 1]
    uses = [graph.edge_index[1, t.offset:t.offset + t.count:t.sources].tolist()
            for t in (next(p for p in graph.spec.params if p.name == "f.weight"), graph.spec.ties[0])]
    # unit j of the first use of f and unit j of the second share one class; the input layer of f moves with them
    assert all(root[a] == root[b] for a, b in zip(*uses))
    assert all(root[a] == root[b] for a, b in zip(h1, uses[0]))


def test_a_relabelling_that_moves_one_use_only_is_refused_by_the_check():
    model = randomise(CalledTwice().eval(), 0)
    graph = nngraph.to_graph(model, torch.randn(2, 3))
    first = next(p for p in graph.spec.params if p.name == "f.weight")
    rows = graph.edge_index[1, first.offset:first.offset + first.count:first.sources]
    perm = torch.arange(graph.num_nodes)
    perm[rows[0]], perm[rows[1]] = rows[1], rows[0]
    assert not consistent(graph, perm)
