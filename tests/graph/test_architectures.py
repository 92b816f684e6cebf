"""Real architectures (hand-written in the structure of their reference code) convert, execute,
give their parameters back and permute exactly; bare layers and functional layers too."""

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nngraph
from nngraph.graph.fast import graphs_from_params, stacked_params
from nngraph.graph.graph import EDGE_AVGPOOL, EDGE_CONV, EDGE_MAXPOOL, EDGE_RESIDUAL, X_ACT_PARAM, edge_geometry
from nngraph.graph.permute import permute_graph
from tests.graph.archs import VGG, Conv1dNet, FunctionalSiren, MobileNetV2, PartialResidualCNN, ResNet
from tests.graph.helpers import assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.nets import randomise

SMALL_MOBILENET = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2))


def architecture_cases():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(3, 3, 32, 32, generator=g)
    cases = [
        ("resnet18", randomise(ResNet(width=4, num_classes=5), 1), img),
        ("mobilenetv2", randomise(MobileNetV2(num_classes=5, width=0.5, settings=SMALL_MOBILENET, last=32), 2), img),
        ("vgg", randomise(VGG(num_classes=5), 3), img[:, :, :16, :16]),
        ("vgg_bn", randomise(VGG(batch_norm=True, num_classes=5), 4), img[:, :, :16, :16]),
        ("conv1d", randomise(Conv1dNet(), 5), torch.randn(4, 2, 20, generator=g)),
        ("functional_siren", FunctionalSiren(seed=6), torch.rand(16, 2, generator=g) * 2 - 1),
        ("partial_residual", randomise(PartialResidualCNN(), 7), img[:, :, :8, :8]),
    ]
    return cases


CASES = architecture_cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_converts_executes_and_gives_parameters_back(name, model, x):
    graph = nngraph.to_graph(model, x)
    y, acts = nngraph.execute(graph, x)
    with torch.no_grad():
        assert_rel_close(y, model(x))
    assert acts.shape == (graph.num_nodes, x.shape[0])
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


@pytest.mark.parametrize("name,model,x", CASES, ids=IDS)
def test_permutations_keep_the_function_and_move_neurons(name, model, x):
    old = nngraph.to_graph(model, x)
    moved = 0
    for seed in range(2):
        permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
        with torch.no_grad():
            assert_rel_close(permuted(x), model(x), rel=1e-4)
        reference, perm = permute_graph(old, seed)
        new = nngraph.to_graph(permuted, x)
        assert_relabelled(new, old, perm)
        assert torch.equal(new.x, reference.x) and torch.equal(new.edge_attr, reference.edge_attr)
        moved += int((perm != torch.arange(old.num_nodes)).sum())
    assert moved > 0


def test_resnet_graph_structure():
    _, model, x = CASES[0]
    graph = nngraph.to_graph(model, x)
    kinds = graph.edge_kind
    # 8 blocks: one residual sum each, two operands per channel
    widths = [4] * 2 + [8] * 2 + [16] * 2 + [32] * 2
    assert int((kinds == EDGE_RESIDUAL).sum()) == 2 * sum(widths)
    assert int((kinds == EDGE_MAXPOOL).sum()) == 4  # the stem's max pool, one edge per channel
    assert graph.spec.k_max == 7


def test_depthwise_convolutions_tie_their_channels():
    _, model, x = CASES[1]
    graph = nngraph.to_graph(model, x)
    conv = graph.edge_kind == EDGE_CONV
    src, dst = graph.edge_index[:, conv]
    layer = graph.node_layer
    depthwise = [t for t in layer[dst].unique().tolist() if int((layer[dst] == t).sum()) == int((layer == t).sum())]
    assert len(depthwise) == 5  # one per inverted residual block: one edge per output channel
    for seed in range(3):
        _, perm = permute_graph(graph, seed)
        for t in depthwise:
            s, d = src[layer[dst] == t], dst[layer[dst] == t]
            first_s, first_d = int(s.min()), int(d.min())
            # channel c of the input and channel c of the output move together
            assert torch.equal(perm[s] - first_s, perm[d] - first_d)


def test_pooling_edges_hold_their_geometry():
    _, model, x = CASES[4]
    graph = nngraph.to_graph(model, x)
    geom = edge_geometry(graph)[graph.edge_kind == EDGE_MAXPOOL]
    assert geom[0].tolist() == [1, 2, 1, 2, 0, 0, 1, 1, 0, 0, 0, 0, 0]  # MaxPool1d(2) on a 1 x L map
    assert geom[-1].tolist()[10:12] == [1, 3]  # AdaptiveMaxPool1d(3): out_h, out_w
    avg = edge_geometry(graph)[graph.edge_kind == EDGE_AVGPOOL][0].tolist()
    assert avg[:6] == [1, 3, 1, 1, 0, 1] and avg[9] == 0  # count_include_pad=False


def test_full_width_resnet18_converts_quickly_and_exactly():
    model = randomise(ResNet(), 0)
    x = torch.randn(1, 3, 32, 32)
    start = time.perf_counter()
    graph = nngraph.to_graph(model, x)
    seconds = time.perf_counter() - start
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert graph.num_edges == 1_909_248
    assert_exact_params(nngraph.to_params(graph), model.state_dict())
    assert seconds < 30  # ~1-2 s on a quiet machine; generous for a loaded one


@pytest.mark.parametrize("model,x", [
    (nn.Linear(3, 2), torch.randn(4, 3)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(2, 4, 7, 7)),
    (nn.Conv1d(2, 4, 3, padding=1), torch.randn(2, 2, 9)),
], ids=["linear", "conv2d", "conv1d"])
def test_a_bare_layer_is_a_whole_model(model, x):
    model = randomise(model)
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        assert_rel_close(nngraph.execute(graph, x)[0], model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())
    assert [p.name for p in graph.spec.params] == list(model.state_dict())


class SharedPReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(3, 5), nn.PReLU(), nn.Linear(5, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_one_prelu_parameter_is_held_by_its_whole_layer():
    models = [randomise(SharedPReLU(), s) for s in range(3)]
    x = torch.randn(4, 3)
    graph = nngraph.to_graph(models[0], x)
    hidden = graph.x[3:8, X_ACT_PARAM]
    assert torch.equal(hidden, models[0].act.weight.detach().expand(5))
    stack = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    batch = graphs_from_params(graph, stack)
    y, _ = nngraph.execute(batch, x)
    for b, m in enumerate(models):
        with torch.no_grad():
            assert_rel_close(y[b], m(x))
    back = stacked_params(batch)
    assert all(torch.equal(back[k], stack[k]) for k in stack)


class ScaledByParameter(nn.Module):
    """One scale for the whole layer (a per-unit scale of 3 values is layer scale, converted)."""

    def __init__(self):
        super().__init__()
        self.a, self.scale = nn.Linear(3, 3), nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.a(x) * self.scale


class PlainTensorAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.randn(2, 3)

    def forward(self, x):
        return F.linear(x, self.w)


class StridedSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 1)

    def forward(self, x):
        return self.b(self.a(x)[:, ::2])


@pytest.mark.parametrize("model,x,words", [
    (ScaledByParameter(), torch.randn(2, 3), ["'scale'"]),
    (PlainTensorAttribute(), torch.randn(2, 3), ["'w'", "register_buffer"]),
    (StridedSlice(), torch.randn(2, 3), ["x[:, a:b]"]),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, return_indices=True)), torch.randn(1, 1, 6, 6),
     ["1 (MaxPool2d)", "return_indices"]),
    (nn.Sequential(nn.Conv3d(1, 2, 3)), torch.randn(1, 1, 4, 4, 4), ["[batch, C, L]"]),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2, mode="bicubic")), torch.randn(1, 1, 6, 6),
     ["1 (Upsample)", "'bicubic'"]),
], ids=["param-arithmetic", "plain-tensor", "strided-slice", "return-indices", "conv3d", "upsample"])
def test_unsupported_gets_one_line_naming_it(model, x, words):
    with pytest.raises(nngraph.NNGraphError) as info:
        nngraph.to_graph(model.eval(), x)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# ---- the 14 families of issue 31, written as their reference code writes them ---------------------------------

def _families():
    """name -> (model factory (seed -> eval model), input shape). Small widths, except the full-width ResNet-18;
    five outputs each (five classes, or five maps for the U-Net), so that one readout reads them all."""
    from tests.graph.modern_cnns import (DenseNetSmall, EfficientNetB0Small, GoogLeNetSmall, MixConvSlices,
                                         MlpMixer, MobileNetV3Small, SplitClassifier, UNet)
    from tests.graph.norm_nets import ConvNeXtBlocks, MnistNet, ResNetGN, TimmDeiT3

    image = (3, 8, 8)
    return {
        "efficientnet-b0-block": (lambda s: randomise(EfficientNetB0Small(width=4), s), image),
        "mobilenetv3-block": (lambda s: randomise(MobileNetV3Small(), s), image),
        "resnet-gn": (lambda s: randomise(ResNetGN(classes=5), s), image),
        "unet": (lambda s: randomise(UNet(n_classes=5, bilinear=False), s), image),
        "convnext-t-blocks": (lambda s: randomise(ConvNeXtBlocks(classes=5), s), image),
        "mlp-mixer": (lambda s: randomise(MlpMixer(), s), image),
        "deit3-layerscale": (lambda s: randomise(TimmDeiT3(classes=5), s), image),  # timm: packed qkv, unbind(0)
        "mnist-example": (lambda s: randomise(MnistNet(), s), (1, 28, 28)),
        "densenet": (lambda s: randomise(DenseNetSmall(), s), image),
        "googlenet-inception": (lambda s: randomise(GoogLeNetSmall(), s), image),
        "functional-siren": (lambda s: FunctionalSiren(seed=s), (2,)),
        "resnet18-full-width": (lambda s: randomise(ResNet(), s), (3, 32, 32)),
        "mixconv-slices": (lambda s: randomise(MixConvSlices(), s), image),
        "chunk-split-classifier": (lambda s: randomise(SplitClassifier(), s), image),
    }


FAMILIES = _families()
FULL_WIDTH = "resnet18-full-width"


def _family(name: str, seed: int = 0, batch: int = 3):
    make, shape = FAMILIES[name]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + 40))
    if name == "functional-siren":
        x = x.clamp(-1, 1)
    return make(seed).eval(), x


def test_the_issue_lists_fourteen_families():
    assert len(FAMILIES) == 14


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_executes_exactly_and_gives_its_parameters_back(name):
    model, x = _family(name, batch=1 if name == FULL_WIDTH else 3)
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        assert_rel_close(nngraph.execute(graph, x)[0], model(x), rel=1e-4)
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_permutations_keep_the_function_and_move_neurons(name):
    model, x = _family(name, batch=1 if name == FULL_WIDTH else 3)
    with torch.no_grad():
        expected = model(x)
        for seed in (0,) if name == FULL_WIDTH else (0, 1):
            permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
            assert_rel_close(permuted(x), expected, rel=1e-4)
            assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                             permuted.state_dict().values()))
    if name != FULL_WIDTH:  # the graph-side relabelling, edge by edge (1.9 M edges would take minutes)
        graph = nngraph.to_graph(model, x)
        new, perm = permute_graph(graph, 1)
        assert_relabelled(new, graph, perm)
        assert bool((perm != torch.arange(graph.num_nodes)).any())
        assert_exact_params(nngraph.to_params(new), nngraph.permute_neurons(model, seed=1, example_input=x).state_dict())


def _metanetwork_batches() -> list[list[str]]:
    """Every family that reads a 3 x 8 x 8 image (11 of them; and ResNet-18 at width 4), in three mixed batches of
    similar sizes (NG-T's attention costs the batch's largest graph squared: one batch of all takes ~45 s here)."""
    names = [n for n, (_, shape) in FAMILIES.items() if shape == (3, 8, 8)] + ["resnet18-width-4"]
    return [names[i::3] for i in range(3)]


def _image_family(name: str, seed: int) -> nn.Module:
    if name == "resnet18-width-4":
        return randomise(ResNet(width=4, num_classes=5), seed).eval()
    return _family(name, seed=seed)[0]


@pytest.mark.parametrize("names", _metanetwork_batches(), ids=["batch-a", "batch-b", "batch-c"])
@pytest.mark.parametrize("kind", ["nggnn", "ngt"])
def test_metanetworks_are_invariant_and_batch_independent_on_the_families(kind, names):
    """NG-GNN and NG-T on a mixed batch of families: each graph's prediction does not depend on its batch-mates,
    and permuted graphs predict the same."""
    from tests.graph.helpers import assert_invariant_on_mixed_batch

    x = torch.zeros(1, 3, 8, 8)
    graphs = [nngraph.to_graph(_image_family(n, seed=i), x) for i, n in enumerate(names)]
    together = assert_invariant_on_mixed_batch(graphs, probes=0, permute_seed=3, kind=kind, out_dim=3, hidden=16)
    assert together.std(0).max() > 0  # the networks get different predictions
