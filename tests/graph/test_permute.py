"""permute_neurons keeps the function and permutes the graph's nodes, nothing else."""

import pytest
import torch
from hypothesis import given, settings

import nngraph
from nngraph.graph.graph import ROLE_HIDDEN
from nngraph.graph.permute import permute_graph
from tests.graph.helpers import assert_rel_close, assert_relabelled
from tests.graph.nets import op_family_cases
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
