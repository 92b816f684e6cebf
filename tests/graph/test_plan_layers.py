"""Plan finds each layer's edges in one pass over all edges, in steps, with ids ascending per layer."""

import torch

import nngraph
from nngraph.graph import execute
from nngraph.graph.execute import Plan, _edges_by_layer
from tests.graph.nets import CNN, MLP, randomise


def _mixed_batch():
    """A residual CNN with BatchNorm and a residual MLP: several signature groups into some layers."""
    x = torch.randn(3, 1, 8, 8)
    cnn = randomise(CNN(1, [(4, 3, 1, 1, 1), (4, 3, 1, 1, 1), (5, 3, 2, 1, 1)], bn=True, residual=True), seed=1)
    graphs = [nngraph.to_graph(cnn, x), nngraph.to_graph(cnn, x)]
    return nngraph.collate(graphs), x


def _layer_edges(plan: Plan) -> list[list[torch.Tensor]]:
    return [[g.edges for g in layer.groups] for layer in plan.layers]


def test_edges_by_layer_gives_each_layers_edge_ids_ascending_in_any_step(monkeypatch):
    batch, _ = _mixed_batch()
    dst = batch.edge_index[1]
    edge_layer = batch.node_layer[dst]  # [E]
    expected = {int(level): torch.nonzero(edge_layer == level).squeeze(1) for level in torch.unique(edge_layer)}
    for step in (execute._EDGE_STEP, 7, 1000):  # one step; many small steps that cut layers apart
        monkeypatch.setattr(execute, "_EDGE_STEP", step)
        found = _edges_by_layer(dst, batch.node_layer)
        assert sorted(found) == sorted(expected)
        for level, ids in expected.items():
            assert torch.equal(torch.cat(found[level]).long(), ids)
        if step == 7:
            assert max(len(parts) for parts in found.values()) > 1  # a layer did span several steps


def test_plan_built_in_small_steps_is_the_same_plan_and_gives_the_same_values(monkeypatch):
    batch, x = _mixed_batch()
    whole = Plan(batch)
    y_whole, acts_whole = whole.run(batch, whole.inputs_of(x))
    monkeypatch.setattr(execute, "_EDGE_STEP", 13)
    stepped, streamed = Plan(batch), Plan(batch, keep=False)
    assert len(_layer_edges(stepped)) == len(_layer_edges(whole)) > 3
    for groups, groups_whole in zip(_layer_edges(stepped), _layer_edges(whole)):
        assert len(groups) == len(groups_whole)
        assert all(torch.equal(a, b) for a, b in zip(groups, groups_whole))
    for plan in (stepped, streamed):
        y, acts = plan.run(batch, plan.inputs_of(x))
        assert torch.equal(y, y_whole) and torch.equal(acts, acts_whole)


def test_a_deep_mlps_plan_has_one_layer_per_node_layer_in_order():
    net = randomise(MLP([3] + [5] * 12 + [2]), seed=0)
    x = torch.randn(4, 3)
    batch = nngraph.collate([nngraph.to_graph(net, x)])
    plan = Plan(batch)
    layers_of_targets = [int(batch.node_layer[layer.targets].unique()) for layer in plan.layers]
    assert layers_of_targets == list(range(1, 14))
    with torch.no_grad():
        y, _ = plan.run(batch, plan.inputs_of(x))
        assert torch.allclose(y[0], net(x), atol=1e-5)
