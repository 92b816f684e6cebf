"""NG-GNN and NG-T on a batch mixing ResNet, MobileNetV2 and VGG graphs: each graph's prediction
is the same alone as among the others, and invariant to neuron permutations."""

import pytest
import torch

import nngraph
from nngraph.graph.permute import permute_graph
from nngraph.models import create_model
from tests.graph.archs import VGG, MobileNetV2, ResNet
from tests.graph.helpers import assert_batch_independent
from tests.graph.nets import randomise


def mixed_graphs():
    x = torch.zeros(1, 3, 8, 8)
    models = [
        randomise(ResNet(width=4, num_classes=5), 0),
        randomise(MobileNetV2(num_classes=5, width=0.5, settings=((1, 8, 1, 1), (6, 12, 2, 2)), last=32), 1),
        randomise(VGG(num_classes=5), 2),
    ]
    return [nngraph.to_graph(m, x) for m in models]


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_mixed_architecture_batch_is_batch_independent(name):
    graphs = mixed_graphs()
    batch = nngraph.collate(graphs)
    torch.manual_seed(0)
    model = create_model(name, example=batch, out_dim=3, probes=1, hidden=16, edge_hidden=8, layers=2).eval()
    with torch.no_grad():
        together = assert_batch_independent(model, graphs)
        permuted = nngraph.collate([permute_graph(g, seed=3)[0] for g in graphs])
        assert (model(permuted) - together).abs().max() <= 1e-4
