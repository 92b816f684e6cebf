"""Products of two tensors as graph structure (mul_a / mul_b edges into product nodes): squeeze-and-
excitation gates as EfficientNet, MobileNetV3, EfficientNet-PyTorch and SENet write them, elementwise
products, a square; attention's q-k products are the same mechanism. Execute equals the model,
to_params is exact, permutations keep the function and move a gate's channels with the ones they gate."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.augment import random_permutation_augment
from nngraph.graph.execute import execute
from nngraph.graph.graph import EDGE_IDENTITY, EDGE_MUL_A, EDGE_MUL_B, GEOM_COLUMNS, centre, edge_geometry
from nngraph.graph.permute import permute_graph
from tests.graph.helpers import assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.modern_cnns import EfficientNetB0Small, LukeMelasSE, MobileNetV3DLi14Small, MobileNetV3Small, SENetSmall
from tests.graph.nets import randomise
from tests.graph.transformers import ViT

OUT_H, OUT_W = GEOM_COLUMNS.index("out_h"), GEOM_COLUMNS.index("out_w")


class Elementwise(nn.Module):
    """a * b of two maps of one shape, and a GLU-style x[:, :4] * sigmoid(x[:, 4:]) on units."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 1)
        self.fc = nn.Linear(4, 8)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.mul(self.a(x), torch.tanh(self.b(x))).mean((2, 3))
        g = self.fc(h)
        return self.out(g[:, :4] * torch.sigmoid(g[:, 4:]))


class TimmSqueezeExcite(nn.Module):
    """timm.layers.squeeze_excite.SqueezeExcite: x.mean keepdim, conv_reduce, act, conv_expand, gate."""

    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.act(self.bn(x_se))
        x_se = self.conv_expand(x_se)
        return x * self.gate(x_se)


class GatesWrittenOtherwise(nn.Module):
    """timm's SE; a Linear SE gate unsqueezed with [:, :, None, None] and F.hardsigmoid(inplace=True);
    one with .unsqueeze(-1).unsqueeze(-1); F.glu over channels and over features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.se = TimmSqueezeExcite(8, 4)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.fc3 = nn.Linear(8, 8)
        self.head = nn.Linear(4, 6)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = self.se(F.relu(self.conv(x)))
        g = F.hardsigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))), inplace=True)
        h = h * g[:, :, None, None]
        g = torch.tanh(self.fc3(h.mean((2, 3))))
        h = torch.mul(h, g.unsqueeze(-1).unsqueeze(-1))
        h = F.glu(h, dim=1).mean((2, 3))
        return self.out(F.glu(self.head(h), dim=-1))


class Square(nn.Module):
    """h * h: one tensor times itself."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = self.fc(x)
        return self.out(h * h)


CASES = {
    "efficientnet-b0": (lambda: EfficientNetB0Small(), (3, 8, 8)),
    "mobilenetv3": (lambda: MobileNetV3Small(), (3, 8, 8)),
    "mobilenetv3-dli14": (lambda: MobileNetV3DLi14Small(), (3, 8, 8)),
    "lukemelas-se": (lambda: LukeMelasSE(), (3, 6, 6)),
    "senet": (lambda: SENetSmall(), (3, 6, 6)),
    "elementwise": (lambda: Elementwise(), (2, 5, 5)),
    "gates-written-otherwise": (lambda: GatesWrittenOtherwise(), (2, 5, 5)),
    "square": (lambda: Square(), (3,)),
}


def _case(name: str, seed: int = 0):
    make, shape = CASES[name]
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed + 10))
    return randomise(make(), seed), x


@pytest.mark.parametrize("name", sorted(CASES))
def test_products_execute_exactly_and_give_back_parameters(name):
    model, x = _case(name)
    graph = nngraph.to_graph(model, x)
    assert int((graph.edge_kind == EDGE_MUL_A).sum()) == int((graph.edge_kind == EDGE_MUL_B).sum()) > 0
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


def _gates(graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(product node, its mul_a source, its mul_b source) of every product node, sorted by product."""
    a = graph.edge_kind == EDGE_MUL_A
    b = graph.edge_kind == EDGE_MUL_B
    pa, sa = graph.edge_index[1, a], graph.edge_index[0, a]
    pb, sb = graph.edge_index[1, b], graph.edge_index[0, b]
    oa, ob = torch.argsort(pa), torch.argsort(pb)
    assert torch.equal(pa[oa], pb[ob]), "every product node has one mul_a and one mul_b edge"
    return pa[oa], sa[oa], sb[ob]


@pytest.mark.parametrize("name", sorted(CASES))
def test_permutations_keep_the_function_and_move_gates_with_their_channels(name):
    model, x = _case(name)
    graph = nngraph.to_graph(model, x)
    products, a, b = _gates(graph)
    with torch.no_grad():
        expected = model(x)
        moved = False
        for seed in (0, 1):
            permuted, perm = permute_graph(graph, seed)
            assert_relabelled(permuted, graph, perm)
            assert_rel_close(execute(permuted, x)[0], expected)
            # a product's two operands move with it: the node that now holds product p's value
            # reads the new homes of p's mul_a and mul_b sources
            inverse = torch.argsort(perm)
            new_products, new_a, new_b = _gates(permuted)
            assert torch.equal(new_products, torch.sort(inverse[products]).values)
            order = torch.argsort(inverse[products])
            assert torch.equal(new_a, inverse[a][order]) and torch.equal(new_b, inverse[b][order])
            moved |= bool((perm[products] != products).any() and (perm[b] != b).any())
    assert moved, "some product node and its gate must move under one of the seeds"


def test_gate_operand_is_laid_out_as_one_value_per_channel():
    model, x = _case("mobilenetv3")
    graph = nngraph.to_graph(model, x)
    products, a, b = _gates(graph)
    geom = edge_geometry(graph)
    gate = geom[graph.edge_kind == EDGE_MUL_B][:, [OUT_H, OUT_W]]
    assert (gate == 1).all(), "an SE gate is a 1 x 1 value broadcast over the map"
    assert torch.equal(graph.node_hw[products], graph.node_hw[a]), "the product has the size of the gated map"


def test_attention_scores_are_products_of_the_same_mechanism():
    """q_c is laid out as a T x 1 column, k_c as a 1 x T row: s_c(t, t') = q_c(t) k_c(t')."""
    model = randomise(ViT(), 0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    graph = nngraph.to_graph(model, x)
    tokens = int(graph.node_hw[graph.edge_index[0, graph.edge_kind == EDGE_MUL_A][0], 1])
    q = edge_geometry(graph)[graph.edge_kind == EDGE_MUL_A][:, [OUT_H, OUT_W]]
    k = edge_geometry(graph)[graph.edge_kind == EDGE_MUL_B][:, [OUT_H, OUT_W]]
    assert (q == torch.tensor([tokens, 1])).all() and (k == torch.tensor([1, tokens])).all()
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], model(x))


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(0.5 * self.fc(x)) / 4)


def test_constant_factors_are_identity_edges_weighted_by_them():
    """c * x and x / c outside sin(w0 * x): a layer of identity edges of weight c (1 / c)."""
    model = randomise(_Scaled(), 0)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    graph = nngraph.to_graph(model, x)
    weights = graph.edge_attr[graph.edge_kind == EDGE_IDENTITY, centre(graph.spec.k_max)]
    assert sorted(set(weights.tolist())) == [0.25, 0.5] and len(weights) == 8
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


def test_a_square_gets_one_factor_copied_so_no_edge_repeats():
    model, x = _case("square")
    graph = nngraph.to_graph(model, x)
    pairs = graph.edge_index.t().tolist()
    assert len(set(map(tuple, pairs))) == len(pairs)


def test_networks_with_products_run_batched_with_others():
    """SE networks of two architectures and an MLP in one batch: each row equals its model."""
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    models = [randomise(LukeMelasSE(), 0), randomise(SENetSmall(), 1), randomise(LukeMelasSE(channels=4), 2)]
    batch = nngraph.collate([nngraph.to_graph(m, x) for m in models])
    with torch.no_grad():
        y, _ = execute(batch, x)
        for i, m in enumerate(models):
            assert_rel_close(y[i], m(x))


class _GateNet(nn.Module):
    """conv -> (pool -> 1x1 conv -> sigmoid) gate -> product: the product is the 4th layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.out = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.out((h * torch.sigmoid(self.fc(h.mean((2, 3), keepdim=True)))).mean((2, 3)))


class _MapProductNet(nn.Module):
    """conv -> two 1x1 convs -> product of two maps: the product is the 4th layer too."""

    def __init__(self):
        super().__init__()
        self.conv, self.b1, self.b2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.out((h * self.b2(torch.tanh(self.b1(h)))).mean((2, 3)))


def test_one_product_layer_of_a_batch_mixes_gates_and_maps():
    """Product nodes of one layer index in two graphs, one with 1 x 1 gate operands and one with H x W
    operands, are executed as one block (operands broadcast per graph)."""
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(4))
    models = [randomise(_GateNet(), 0), randomise(_MapProductNet(), 1)]
    graphs = [nngraph.to_graph(m, x) for m in models]
    layers = {int(g.node_layer[_gates(g)[0][0]]) for g in graphs}
    assert len(layers) == 1, "the two product layers must share a layer index"
    with torch.no_grad():
        y, _ = execute(nngraph.collate(graphs), x)
        for i, m in enumerate(models):
            assert_rel_close(y[i], m(x))


class _SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 1, 1)

    def forward(self, x):
        h = self.conv(x)
        return (h * torch.sigmoid(self.gate(h))).mean((2, 3))


class _ExpandOther(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        g = F.adaptive_avg_pool2d(h, 1).expand_as(h)
        return (g + h).mean((2, 3))


@pytest.mark.parametrize("model,words", [
    (_SpatialGate(), ["mul", "[batch, C, 1, 1] gate"]),
    (_ExpandOther(), ["expand", "multiplied"]),
], ids=["spatial-gate", "expand-not-multiplied"])
def test_unsupported_broadcasts_are_refused_in_one_line(model, words):
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(model.eval(), torch.randn(1, 2, 5, 5))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name", ["efficientnet-b0", "mobilenetv3"])
def test_permute_neurons_and_the_augmentation_keep_the_function(name):
    """The model-level API (a permuted copy of the module) and the training augmentation (one permutation per
    graph of a batch built by graphs_from_params)."""
    model, x = _case(name)
    with torch.no_grad():
        expected = model(x)
        permuted = nngraph.permute_neurons(model, seed=1, example_input=x)
        assert_rel_close(permuted(x), expected)
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), permuted.state_dict().values()))
        graph = nngraph.to_graph(model, x)
        stacked = {k: v.unsqueeze(0).repeat(3, *([1] * v.dim())) for k, v in model.state_dict().items()}
        plain = nngraph.graphs_from_params(graph, stacked)
        batch = random_permutation_augment(plain, torch.Generator().manual_seed(0))
        assert not torch.equal(batch.edge_attr, plain.edge_attr)
        y, _ = execute(batch, x)
        for i in range(3):
            assert_rel_close(y[i], expected)
