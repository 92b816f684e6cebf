"""NG-GNN and NG-T on batches mixing architectures (ResNet, MobileNetV2, VGG; squeeze-and-excitation
classifiers; U-Nets): each graph's prediction is the same alone as among the others, and invariant to
neuron permutations."""

import pytest
import torch

import nngraph
from tests.graph.archs import VGG, MobileNetV2, ResNet
from tests.graph.helpers import assert_invariant_on_mixed_batch
from tests.graph.modern_cnns import EfficientNetB0Small, MobileNetV3Small, SENetSmall, UNet
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
    assert_invariant_on_mixed_batch(mixed_graphs(), probes=1, permute_seed=3, kind=name, out_dim=3, hidden=16)


def modern_graphs(family: str):
    """Squeeze-and-excitation classifiers (EfficientNet-B0, MobileNetV3, SENet), or U-Nets with transposed-conv
    and bilinear decoders (map outputs: one batch has one output shape)."""
    x = torch.zeros(1, 3, 8, 8)
    if family == "se-classifiers":
        models = [randomise(EfficientNetB0Small(num_classes=5, width=4), 0),
                  randomise(MobileNetV3Small(num_classes=5), 1), randomise(SENetSmall(num_classes=5), 2)]
    else:
        models = [randomise(UNet(bilinear=False), 4), randomise(UNet(bilinear=True), 5)]
    return [nngraph.to_graph(m, x) for m in models]


@pytest.mark.parametrize("family", ["se-classifiers", "unets"])
@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_modern_cnn_batch_is_batch_independent_and_invariant(name, family):
    assert_invariant_on_mixed_batch(modern_graphs(family), probes=1, permute_seed=3, kind=name, out_dim=3, hidden=16)
