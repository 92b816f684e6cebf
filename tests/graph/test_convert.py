"""to_graph / execute / to_params on every op family and on random MLPs and CNNs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nngraph
from nngraph.graph.graph import (
    EDGE_CONV,
    EDGE_FLATTEN,
    EDGE_LINEAR,
    EDGE_RESIDUAL,
    NODE_DIM,
    ROLE_INPUT,
    ROLE_OUTPUT,
    X_BIAS,
)
from tests.graph.helpers import assert_exact_params, assert_rel_close
from tests.graph.nets import CNN, MLP, make_act, op_family_cases, randomise

CASES = op_family_cases()


@pytest.mark.parametrize("name,model,x", CASES, ids=[c[0] for c in CASES])
def test_execute_matches_model(name, model, x):
    graph = nngraph.to_graph(model, x)
    y, acts = nngraph.execute(graph, x)
    with torch.no_grad():
        expected = model(x)
    assert_rel_close(y, expected)
    assert acts.shape == (graph.num_nodes, x.shape[0])


@pytest.mark.parametrize("name,model,x", CASES, ids=[c[0] for c in CASES])
def test_to_params_is_exact(name, model, x):
    assert_exact_params(nngraph.to_params(nngraph.to_graph(model, x)), model.state_dict())


def test_mlp_graph_layout():
    model = randomise(MLP([3, 4, 2], act="relu"))
    g = nngraph.to_graph(model, torch.zeros(1, 3))
    assert g.num_nodes == 3 + 4 + 2 and g.edge_index.shape == (2, 3 * 4 + 4 * 2)
    assert g.x.shape == (9, NODE_DIM) and g.edge_attr.shape == (20, 1)
    assert torch.equal(g.x[3:7, X_BIAS], model.layers[0].bias.detach())
    # edge i -> j of the first layer carries W[j, i]
    w = model.layers[0].weight.detach()
    for (s, d), a in zip(g.edge_index.t()[:12].tolist(), g.edge_attr[:12, 0].tolist()):
        assert a == w[d - 3, s].item()
    assert g.node_pos.tolist() == [0, 1, 2, 5, 5, 5, 5, 3, 4]  # inputs 0-2, outputs 3-4, one id for the hidden layer
    assert (g.edge_kind == EDGE_LINEAR).all()


def test_conv_kernels_are_centre_padded():
    model = randomise(CNN(1, [(2, 3, 1, 1, 1), (2, 5, 1, 2, 1)], head="pool"))
    g = nngraph.to_graph(model, torch.zeros(1, 1, 6, 6))
    assert g.spec.k_max == 5 and g.edge_attr.shape[1] == 25
    conv3 = g.edge_attr[g.edge_kind == EDGE_CONV][:2].view(2, 5, 5)
    assert torch.equal(conv3[0, 1:4, 1:4], model.convs[0].weight[0, 0].detach())
    assert conv3[:, 0].abs().sum() == 0 and conv3[:, :, 4].abs().sum() == 0
    linear = g.edge_attr[g.edge_kind == EDGE_LINEAR]
    assert (linear[:, torch.arange(25) != 12] == 0).all()  # scalar weights sit at the centre


def test_flatten_edges_hold_hw_weights():
    model = randomise(CNN(1, [(2, 3, 1, 0, 1)], head="flatten", hw=5, classes=2))
    g = nngraph.to_graph(model, torch.zeros(1, 1, 5, 5))
    flat = g.edge_attr[g.edge_kind == EDGE_FLATTEN]
    w = model.fc.weight.detach().view(2, 2, 9)  # [out, C, H*W] with H = W = 3
    assert torch.equal(flat[:, :9], w.reshape(4, 9))


def test_residual_edges_tie_channels():
    model = randomise(CNN(2, [(2, 3, 1, 1, 1), (2, 3, 1, 1, 1)], residual=True))
    g = nngraph.to_graph(model, torch.zeros(1, 2, 5, 5))
    src, dst = g.edge_index[:, g.edge_kind == EDGE_RESIDUAL]
    assert len(src) == 2 * 2 * 2  # two residual adds, two channels, two operands
    assert (g.node_layer[dst] > g.node_layer[src]).all()


def test_batch_of_mixed_architectures_executes_each_network():
    cases = [c for c in CASES if c[2].shape[1:] == (3, 9, 9)]
    graphs = [nngraph.to_graph(m, x) for _, m, x in cases]
    x = cases[0][2]
    batch = nngraph.collate(graphs)
    assert len({g.spec.k_max for g in graphs}) > 1
    # every model of this group maps [P, 3, 9, 9] -> [P, 3] or [P, 4]; group by output size
    for out in {tuple(m(x).shape[1:]) for _, m, _ in cases}:
        sub = [(m, g) for (_, m, _), g in zip(cases, graphs) if tuple(m(x).shape[1:]) == out]
        y, acts = nngraph.execute(nngraph.collate([g for _, g in sub]), x)
        for b, (m, _) in enumerate(sub):
            assert_rel_close(y[b], m(x).detach())
    assert batch.num_graphs == len(graphs)


def test_execute_per_graph_inputs_and_gradients():
    models = [randomise(MLP([2, 5, 1], act="tanh"), s) for s in range(3)]
    graphs = [nngraph.to_graph(m, torch.zeros(1, 2)) for m in models]
    batch = nngraph.collate(graphs)
    x = torch.randn(3, 4, 2, requires_grad=True)
    batch.edge_attr.requires_grad_(True)
    y, acts = nngraph.execute(batch, x)
    for b, m in enumerate(models):
        assert_rel_close(y[b], m(x[b]).detach())
    y.sum().backward()
    assert x.grad.abs().sum() > 0 and batch.edge_attr.grad.abs().sum() > 0


def test_input_and_output_roles():
    model = randomise(MLP([4, 3, 2]))
    g = nngraph.to_graph(model, torch.zeros(1, 4))
    assert (g.node_role == ROLE_INPUT).sum() == 4 and (g.node_role == ROLE_OUTPUT).sum() == 2


# ---- random networks (hypothesis) ---------------------------------------------------

ACTS = st.sampled_from(["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "none"])


@st.composite
def random_mlps(draw):
    widths = draw(st.lists(st.integers(1, 7), min_size=2, max_size=5))
    model = MLP(widths, act=draw(ACTS), norm=draw(st.sampled_from([None, "bn", "ln"])),
                residual=draw(st.booleans()), out_act=draw(st.sampled_from([None, "sigmoid"])))
    return randomise(model, draw(st.integers(0, 1000))), torch.randn(5, widths[0])


@st.composite
def random_cnns(draw):
    in_ch = draw(st.integers(1, 3))
    hw = draw(st.integers(6, 10))
    convs = []
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.sampled_from([1, 2, 3, 5]))
        dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
        pad = draw(st.integers(0, (k - 1) * dil // 2 + 1))
        convs.append((draw(st.integers(1, 5)), k, draw(st.sampled_from([1, 2])), pad, dil))
    # keep the maps at least 1x1
    size = hw
    for _, k, s, p, d in convs:
        size = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if size < 1:
            return draw(random_cnns())
    model = CNN(in_ch, convs, act=draw(ACTS), bn=draw(st.booleans()), residual=draw(st.booleans()),
                head=draw(st.sampled_from(["pool", "flatten"])), hw=hw, classes=draw(st.integers(1, 4)))
    return randomise(model, draw(st.integers(0, 1000))), torch.randn(3, in_ch, hw, hw)


@settings(max_examples=40, deadline=None)
@given(random_mlps())
def test_random_mlps(case):
    model, x = case
    g = nngraph.to_graph(model, x)
    assert_rel_close(nngraph.execute(g, x)[0], model(x).detach())
    assert_exact_params(nngraph.to_params(g), model.state_dict())


@settings(max_examples=40, deadline=None)
@given(random_cnns())
def test_random_cnns(case):
    model, x = case
    g = nngraph.to_graph(model, x)
    assert_rel_close(nngraph.execute(g, x)[0], model(x).detach())
    assert_exact_params(nngraph.to_params(g), model.state_dict())


def test_make_act_covers_every_activation():
    assert make_act("leaky_relu").negative_slope == 0.2


class _PartialResidual(torch.nn.Module):
    """A residual over the first m channels only (x[:, a:b] slices and torch.cat), as in the CNN Wild Park."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))  # [B, 3, H, W]
        z = self.b(h)  # [B, 5, H, W]
        z = torch.relu(torch.cat([z[:, :3] + h[:, 0:3], z[:, 3:]], dim=1))
        return self.head(z.mean((2, 3)))


def test_channel_slices_select_nodes_exactly():
    model = randomise(_PartialResidual())
    x = torch.randn(4, 2, 6, 6)
    graph = nngraph.to_graph(model, x)
    y, _ = nngraph.execute(graph, x)
    with torch.no_grad():
        assert_rel_close(y, model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())
    assert int((graph.edge_kind == EDGE_RESIDUAL).sum()) == 6  # three sums, two residual edges each
    permuted = nngraph.permute_neurons(model, seed=2, example_input=x)
    with torch.no_grad():
        assert_rel_close(permuted(x), model(x))


class _Sliced(torch.nn.Module):
    def __init__(self, index):
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)
        self.index = index

    def forward(self, x):
        return self.lin(x)[self.index]


@pytest.mark.parametrize("index", [(slice(None), slice(0, 4, 2)), (slice(0, 2), slice(None)), 0])
def test_other_slices_are_refused(index):
    from nngraph.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError):
        nngraph.to_graph(_Sliced(index), torch.randn(3, 4))
