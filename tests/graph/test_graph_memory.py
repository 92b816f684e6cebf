"""The compact graph layout (geometry table + per-edge id) and the streamed executor plan."""

import torch

import nngraph
from nngraph.data import templates
from nngraph.graph.execute import Plan
from nngraph.graph.graph import GEOM_DIM, NO_GEOM, edge_geometry, geometry_table
from tests.graph.nets import CNN, MLP, PoolNet, randomise


def test_geometry_table_holds_each_distinct_row_once_and_gives_every_edge_its_row():
    graph = nngraph.to_graph(PoolNet().eval(), torch.randn(2, 3, 9, 9))
    table, ids = graph.geom_table, graph.edge_geom_id
    assert ids.dtype == torch.int32 and ids.shape == (graph.num_edges,)
    assert table.dtype == torch.long and table.shape[1] == GEOM_DIM
    assert torch.equal(table, torch.unique(table, dim=0))  # distinct and sorted
    assert tuple(table[0].tolist()) == NO_GEOM and len(table) > 2  # conv and pooling rows besides the zero row
    rows = edge_geometry(graph)
    again, again_ids = geometry_table(rows)
    assert torch.equal(again, table) and torch.equal(again_ids, ids)
    first = torch.tensor([3, 0, 1])
    assert torch.equal(edge_geometry(graph, first), rows[first])


def test_a_batch_offsets_each_graphs_geometry_ids_into_the_joined_table():
    graphs = [nngraph.to_graph(PoolNet().eval(), torch.randn(2, 3, 9, 9)),
              nngraph.to_graph(MLP([5, 7, 3]).eval(), torch.randn(2, 5))]
    batch = nngraph.collate(graphs)
    assert len(batch.geom_table) == sum(len(g.geom_table) for g in graphs)
    assert torch.equal(edge_geometry(batch), torch.cat([edge_geometry(g) for g in graphs]))
    assert torch.equal(edge_geometry(batch[1]), edge_geometry(graphs[1]))


def test_streamed_plan_gives_the_kept_plans_values_exactly():
    nets = [randomise(CNN(1, [(4, 3, 1, 1, 1), (5, 3, 2, 1, 1)], bn=True), seed=s) for s in range(2)]
    x = torch.randn(3, 1, 8, 8)
    batch = nngraph.collate([nngraph.to_graph(net, x) for net in nets])
    kept, streamed = Plan(batch, keep=True), Plan(batch, keep=False)
    assert streamed.layers == [] and len(kept.layers) > 3  # nothing per edge is held between runs
    y_kept, acts_kept = kept.run(batch, kept.inputs_of(x))
    for _ in range(2):  # a streamed plan rebuilds its layers on every run
        y, acts = streamed.run(batch, streamed.inputs_of(x))
        assert torch.equal(y, y_kept) and torch.equal(acts, acts_kept)
    with torch.no_grad():
        assert float((y[1] - nets[1](x)).abs().max()) <= 1e-5 * max(float(nets[1](x).abs().max()), 1.0)


def test_templates_keep_their_per_edge_geometry_on_disk():
    graph = nngraph.to_graph(PoolNet().eval(), torch.randn(2, 3, 9, 9))
    specs, tensors = templates.encode([graph])
    stored = tensors["arch0.edge_geom"]
    assert stored.dtype == torch.int64 and stored.shape == (graph.num_edges, GEOM_DIM)  # the format files hold
    back = templates.decode(specs, tensors, "test")[0]
    assert torch.equal(back.geom_table, graph.geom_table) and torch.equal(back.edge_geom_id, graph.edge_geom_id)
