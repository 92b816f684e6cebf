"""collate, the dense view, and the one-architecture fast path."""

import torch

import nngraph
from nngraph.data.inr import Siren
from nngraph.graph.batch import relayout
from nngraph.graph.fast import graphs_from_params, stacked_features
from nngraph.graph.graph import EDGE_CONV, NODE_DIM
from tests.graph.helpers import assert_exact_params, assert_rel_close
from tests.graph.nets import CNN, MLP, randomise


def sirens(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [Siren(variant="standard", generator=gen) for _ in range(count)]


def test_fast_path_equals_per_network_conversion():
    models = sirens(5)
    coords = torch.rand(9, 2) * 2 - 1
    template = nngraph.to_graph(models[0], coords)
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in template.spec.state_order}
    fast = graphs_from_params(template, params)
    slow = nngraph.collate([nngraph.to_graph(m, coords) for m in models])
    for key in ("x", "edge_index", "edge_attr", "edge_kind", "node_layer", "node_pos", "node_act", "batch", "ptr"):
        assert torch.equal(fast[key], slow[key]), key
    y, _ = nngraph.execute(fast, coords)
    for b, m in enumerate(models):
        assert_rel_close(y[b], m(coords).detach())
    for b, graph in enumerate(fast.to_data_list()):
        assert_exact_params(nngraph.to_params(graph), models[b].state_dict())


def test_fast_path_for_cnns_with_batchnorm():
    models = [randomise(CNN(1, [(3, 3, 1, 1, 1), (3, 5, 1, 2, 1)], bn=True, residual=True), s) for s in range(3)]
    x = torch.randn(2, 1, 8, 8)
    template = nngraph.to_graph(models[0], x)
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in template.spec.state_order}
    fast = graphs_from_params(template, params)
    y, _ = nngraph.execute(fast, x)
    for b, m in enumerate(models):
        assert_rel_close(y[b], m(x).detach())


def test_fast_path_rejects_wrong_shapes():
    template = nngraph.to_graph(Siren(), torch.zeros(1, 2))
    params = {k: torch.stack([v, v]) for k, v in Siren(hidden=16).state_dict().items()}
    try:
        stacked_features(template, params)
    except nngraph.NNGraphError as exc:
        assert "hidden.0.weight" in str(exc)
    else:
        raise AssertionError("a shape mismatch was accepted")


def test_collate_relayouts_kernels_to_common_window():
    small = randomise(CNN(1, [(2, 3, 1, 1, 1)]))
    large = randomise(CNN(1, [(2, 5, 1, 2, 1)]))
    x = torch.randn(2, 1, 6, 6)
    g_small, g_large = nngraph.to_graph(small, x), nngraph.to_graph(large, x)
    batch = nngraph.collate([g_small, g_large])
    assert batch.edge_attr.shape[1] == 25
    first = batch.to_data_list()[0]
    assert first.spec.k_max == 5
    assert_exact_params(nngraph.to_params(first), small.state_dict())
    kernel = first.edge_attr[first.edge_kind == EDGE_CONV][0].view(5, 5)
    assert torch.equal(kernel[1:4, 1:4], small.convs[0].weight[0, 0].detach())
    y, _ = nngraph.execute(batch, x)
    assert_rel_close(y[0], small(x).detach())
    assert_rel_close(y[1], large(x).detach())
    assert relayout(g_small, 3, 9) is g_small


def test_dense_view_masks_padding():
    a = nngraph.to_graph(randomise(MLP([2, 3, 1])), torch.zeros(1, 2))
    b = nngraph.to_graph(randomise(MLP([2, 5, 5, 1])), torch.zeros(1, 2))
    dense = nngraph.to_dense(nngraph.collate([a, b]))
    assert dense.x.shape == (2, 13, NODE_DIM) and dense.edge_attr.shape == (2, 13, 13, 1)
    assert dense.node_mask.sum(1).tolist() == [6, 13]
    assert dense.edge_mask.sum((1, 2)).tolist() == [a.num_edges, b.num_edges]
    assert not dense.pair_mask[0, 6:].any() and not dense.pair_mask[0, :, 6:].any()
    assert (dense.edge_kind[~dense.edge_mask] == -1).all()
    s, d = a.edge_index[:, 0].tolist()
    assert dense.edge_attr[0, s, d, 0] == a.edge_attr[0, 0]
    assert (dense.x[0, 6:] == 0).all()


def test_stacked_params_inverts_the_fast_path():
    from nngraph.graph.fast import stacked_params

    models = [randomise(CNN(1, [(3, 3, 1, 1, 1), (2, 5, 1, 2, 1)], bn=True, head="flatten", hw=6), s) for s in range(3)]
    x = torch.randn(2, 1, 6, 6)
    template = nngraph.to_graph(models[0], x)
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in template.spec.state_order}
    back = stacked_params(graphs_from_params(template, params))
    for entry in template.spec.params:
        assert torch.equal(back[entry.name], params[entry.name]), entry.name
    collated = stacked_params(nngraph.collate([nngraph.to_graph(m, x) for m in models]))
    assert all(torch.equal(collated[k], back[k]) for k in back)
