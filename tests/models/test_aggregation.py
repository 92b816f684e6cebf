"""NG-GNN's PNA aggregation over in-degree buckets against torch_geometric's scatter version."""

import math
import shutil

import pytest
import torch
from torch_geometric.nn.aggr import DegreeScalerAggregation

from nngraph.models.aggregation import (AGGREGATORS, SCALERS, BucketAggregates, InDegreeBuckets, PNAAggregation,
                                        gather_rows)
from nngraph.models.gnn import NGGNNLayer, MessageEdges


def random_messages(num_nodes=40, num_edges=300, width=6, seed=0):
    """Messages to a random target set: nodes >= 30 receive none, degrees vary from 1 to ~20."""
    gen = torch.Generator().manual_seed(seed)
    dst = torch.randint(0, 30, (num_edges,), generator=gen)
    messages = torch.randn(num_edges, width, generator=gen, dtype=torch.float64)
    return dst, messages


def test_buckets_group_messages_by_target_degree():
    dst, _ = random_messages()
    layout = InDegreeBuckets(dst, 40)
    degree = torch.bincount(dst, minlength=40)
    assert [b.degree for b in layout.buckets] == sorted(set(degree.tolist()))
    assert sum(b.size for b in layout.buckets) == 40
    for b in layout.buckets:
        assert (degree[b.nodes] == b.degree).all()
        block = dst[layout.order][b.message_start:b.message_start + b.size * b.degree].view(b.size, b.degree)
        assert (block == b.nodes[:, None]).all()  # each row: the messages of one node
    x = torch.randn(40, 3)
    assert torch.equal(layout.broadcast_targets(x), x[dst][layout.order])
    assert torch.equal(layout.to_node_order(x[layout.node_order]), x)


def test_pna_equals_torch_geometric_with_gradients():
    dst, messages = random_messages()
    histogram = torch.bincount(torch.bincount(dst, minlength=40))
    mine = PNAAggregation(6, histogram).double()
    reference = DegreeScalerAggregation(list(AGGREGATORS), list(SCALERS), histogram).double()
    messages.requires_grad_(True)
    expected = mine.post(reference(messages, dst, dim_size=40))  # [N, d]: the same Linear on PyG's [N, 12d]
    layout = InDegreeBuckets(dst, 40)
    got = mine(messages[layout.order], layout)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(got[30:], mine.post.bias.expand(10, -1))  # no incoming messages: aggregates 0
    seed = torch.randn_like(expected)
    grads = [torch.autograd.grad(y, [messages, mine.post.weight], seed) for y in (got, expected)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)


def autograd_aggregates(block: torch.Tensor) -> torch.Tensor:
    """[mean, min, max, std] of [n, D, d] by torch's own ops, differentiated by autograd."""
    mean = block.mean(1)
    std = ((block * block).mean(1) - mean * mean).clamp(min=1e-5).sqrt()  # PyG's variance floor
    std = std.masked_fill(std <= math.sqrt(1e-5), 0.0)
    return torch.cat([mean, block.min(1).values, block.max(1).values, std], dim=1)


def test_bucket_aggregates_backward_equals_autograd_with_ties_and_constant_rows():
    gen = torch.Generator().manual_seed(1)
    block = torch.randint(-2, 3, (6, 5, 4), generator=gen).double()  # 5 values over 5 slots: many ties
    block[0, :, 1] = 0.5  # a constant row: std set to 0, no std gradient
    block[1] += torch.randn(5, 4, generator=gen, dtype=torch.float64)  # no ties
    block.requires_grad_(True)
    seed = torch.randn(6, 16, generator=gen, dtype=torch.float64)
    got, expected = BucketAggregates.apply(block), autograd_aggregates(block)
    assert torch.equal(got, expected)
    assert got[0, 12 + 1] == 0
    (grad_got,), (grad_expected,) = (torch.autograd.grad(y, [block], seed) for y in (got, expected))
    assert torch.allclose(grad_got, grad_expected, atol=1e-12)
    first_tied_only = seed[0, 1] / 5 + (torch.arange(5) == 0) * (seed[0, 5] + seed[0, 9])  # min and max tied
    assert torch.allclose(grad_got[0, :, 1], first_tied_only, atol=1e-12)


def test_gather_rows_and_its_gradient():
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 6, 6, 2, 0, 0])
    assert torch.equal(gather_rows(x, index), x[index])
    torch.autograd.gradcheck(lambda t: gather_rows(t, index), (x,))


def mlp_edges(sizes=(4, 6, 6, 2), seed=0) -> torch.Tensor:
    """edge_index [2, E] of a fully connected MLP's graph, node ids shuffled: a few distinct
    in-degrees (here 0, 4 and 6; with reverse edges 6, 8 and 10), as in real batches."""
    starts = torch.tensor((0, *sizes)).cumsum(0)
    src, dst = zip(*[torch.cartesian_prod(torch.arange(starts[k], starts[k + 1]),
                                          torch.arange(starts[k + 1], starts[k + 2])).T
                     for k in range(len(sizes) - 1)])
    relabel = torch.randperm(int(starts[-1]), generator=torch.Generator().manual_seed(seed))
    return relabel[torch.stack([torch.cat(src), torch.cat(dst)])]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("reverse", [False, True])
def test_compiled_layer_equals_eager(reverse):
    """The custom gather operator and the bucket loop compile; outputs and gradients match eager."""
    torch.manual_seed(0)
    edge_index = mlp_edges()  # [2, 72], 18 nodes
    num_nodes, num_edges = int(edge_index.max()) + 1, edge_index.shape[1]
    degree_of = torch.cat([edge_index[1], edge_index[0]]) if reverse else edge_index[1]
    histogram = torch.bincount(torch.bincount(degree_of, minlength=num_nodes))
    layer = NGGNNLayer(8, 4, histogram)
    direction = torch.randn(2, 4) if reverse else None
    edges = MessageEdges.of(edge_index, num_nodes, direction)
    assert len(edges.layout.buckets) == 3
    v, e = torch.randn(num_nodes, 8), torch.randn(num_edges, 4)  # e: edge states in the layers' order
    compiled = torch.compile(layer, dynamic=False)
    outputs = [f(v, e, edges) for f in (layer, compiled)]
    for a, b in zip(*outputs):
        assert torch.allclose(a, b, atol=1e-5)
    grads = [torch.autograd.grad(sum(y.sum() for y in out), list(layer.parameters())) for out in outputs]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)
