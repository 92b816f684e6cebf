"""NG-GNN and NG-T: invariance, equivariance, batch independence, probes and ablations."""

import pytest
import torch

import nngraph
from nngraph.data.inr import Siren
from nngraph.examples import ResidualCNN, TwoBranchCNN, example_networks
from nngraph.graph.fast import graphs_from_params, stacked_params
from nngraph.graph.permute import permute_graph
from nngraph.models import create_model

TOL = 1e-4


def siren_graphs(count, seed=0, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return [nngraph.to_graph(Siren(generator=gen, **kwargs), torch.zeros(1, 2)) for _ in range(count)]


def cnn_graphs(count, seed=0):
    graphs = []
    for i in range(count):
        torch.manual_seed(seed + i)
        net = ResidualCNN() if i % 2 == 0 else TwoBranchCNN()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        graphs.append(nngraph.to_graph(net.eval(), torch.zeros(1, 1, 8, 8)))
    return graphs


def build(name, example, seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model(name, example=example, out_dim=3, **kwargs).eval()


CONFIGS = [
    ("nggnn", {}),
    ("nggnn", {"probes": 4, "reverse_edges": True}),
    ("ngt", {}),
    ("ngt", {"probes": 4, "reverse_edges": True, "fourier_features": 2}),
    ("nggnn", {"probes": 4, "probe_generator": "deep-linear"}),
    ("ngt", {"probes": 4, "probe_generator": "deep-linear", "reverse_edges": True}),
    ("ngt", {"probes": 4, "probe_generator": "free"}),
    ("nggnn", {"probes": 4, "probe_generator": "deep-linear", "head_width": 48, "head_layers": 4}),
]


@pytest.mark.parametrize("family", ["siren", "cnn"])
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_invariance_under_neuron_permutations(family, name, kwargs):
    graphs = siren_graphs(3) if family == "siren" else cnn_graphs(3)
    model = build(name, nngraph.collate(graphs), **kwargs)
    with torch.no_grad():
        y = model(nngraph.collate(graphs))
        permuted = [permute_graph(g, seed=s + 1)[0] for s, g in enumerate(graphs)]
        assert any(not torch.equal(p.edge_attr, g.edge_attr) for p, g in zip(permuted, graphs))
        y_perm = model(nngraph.collate(permuted))
    assert (y - y_perm).abs().max() <= TOL


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_parameter_readout_is_equivariant(name):
    graphs = siren_graphs(2)
    batch = nngraph.collate(graphs)
    model = build(name, batch, readout="parameters", probes=4)
    with torch.no_grad():
        for p in model.readout.parameters():  # the heads start at zero ("no edit"); make them informative
            p.normal_(0, 0.2)
        deltas = model(batch)
        assert all(v.abs().max() > 1e-3 for v in deltas.values())
        permuted = [permute_graph(g, seed=7) for g in graphs]
        deltas_perm = model(nngraph.collate([p for p, _ in permuted]))
    # Lay the predicted deltas out as networks, permute those the same way, compare.
    template = graphs[0]
    for b, (_, perm) in enumerate(permuted):
        as_graph = graphs_from_params(template, {k: v[b : b + 1] for k, v in deltas.items()}).to_data_list()[0]
        expected = stacked_params(nngraph.collate([permute_graph(as_graph, seed=7)[0]]))
        for key, value in expected.items():
            assert value.shape[1:] == template.spec.params[[p.name for p in template.spec.params].index(key)].shape
            assert (deltas_perm[key][b] - value[0]).abs().max() <= TOL, key


@pytest.mark.parametrize("generator", [None, "deep-linear"])
@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_output_does_not_depend_on_batch_mates(name, generator):
    small = siren_graphs(2, seed=1, hidden=16, depth=3)
    large = siren_graphs(3, seed=2)
    model = build(name, nngraph.collate(small + large), probes=4, probe_generator=generator)
    with torch.no_grad():
        mixed = model(nngraph.collate(small + large))  # the small networks are padded here
        for index, graph in [(0, small[0]), (2, large[0])]:
            alone = model(nngraph.collate([graph]))
            own_kind = model(nngraph.collate(small if index < 2 else large))[index % 2 : index % 2 + 1]
            assert (alone - own_kind).abs().max() <= 1e-5
            assert (alone - mixed[index : index + 1]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_mixed_cnn_batch_matches_single_graphs(name):
    graphs = cnn_graphs(4)
    model = build(name, nngraph.collate(graphs), probes=2)
    with torch.no_grad():
        together = model(nngraph.collate(graphs))
        for i, g in enumerate(graphs):
            assert (model(nngraph.collate([g])) - together[i : i + 1]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_probes_receive_gradients_and_ablations_change_outputs(name):
    graphs = siren_graphs(3)
    batch = nngraph.collate(graphs)
    model = build(name, batch, probes=4)
    model(batch).pow(2).sum().backward()
    assert model.probes.probes.grad is not None and model.probes.probes.grad.abs().sum() > 0
    with torch.no_grad():
        full = model(batch)
        for ablation in ({"probes": 0}, {"probes": 4, "position_embeddings": False}):
            other = build(name, batch, **ablation)
            other.load_state_dict(model.state_dict(), strict=False)
            out = other(batch)
            assert out.shape == full.shape
            assert (out - full).abs().max() > 1e-4, ablation


def test_unknown_model_name():
    with pytest.raises(nngraph.NNGraphError):
        create_model("transformer9000")


def test_models_read_the_bundled_examples():
    nets = [(n, m, x) for n, m, x in example_networks() if "CNN" in n]
    batch = nngraph.collate([nngraph.to_graph(m, x) for _, m, x in nets])
    for name in ("nggnn", "ngt"):
        assert build(name, batch, probes=2)(batch).shape == (len(nets), 3)


@pytest.mark.parametrize("fourier_features", [0, 2])
def test_encoder_edge_states_follow_the_formula_and_the_given_order(fourier_features):
    """E_ij = W_e f(norm(w_ij)) + K_e[kind_ij] (one matmul with a one-hot of the kind), and
    with an edge order [E] the rows come in that order."""
    batch = nngraph.collate(cnn_graphs(2))
    assert batch.edge_kind.unique().numel() > 1  # conv, residual, ... : the kind term matters
    encoder = build("nggnn", batch, fourier_features=fourier_features).encoder
    _, w = encoder.stats(batch)
    if fourier_features:
        w = encoder.edge_fourier(w)
    expected = encoder.edge_proj(w) + encoder.edge_kind(batch.edge_kind)  # [E, d_e]
    v, e = encoder(batch)
    assert torch.allclose(e, expected, atol=1e-6)
    order = torch.randperm(e.shape[0], generator=torch.Generator().manual_seed(0))
    v_ordered, e_ordered = encoder(batch, order)
    assert torch.equal(v_ordered, v)
    assert torch.allclose(e_ordered, expected[order], atol=1e-6)


def test_ngt_layer_matches_the_relational_attention_formula():
    """The factorised NG-T layer equals the formula with explicit per-pair queries, keys, values."""
    import math

    import torch.nn.functional as F

    from nngraph.models.transformer import NGTLayer

    torch.manual_seed(0)
    b, n, d, de, h = 2, 5, 8, 4, 2
    layer = NGTLayer(d, de, h).eval()
    v, e = torch.randn(b, n, d), torch.randn(b, n, n, de)
    node_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    pair_mask = node_mask[:, :, None] & node_mask[:, None, :]
    v, e = v * node_mask[..., None], e * pair_mask[..., None]
    with torch.no_grad():
        got_v, got_e = layer(v, e, node_mask, pair_mask)
        dh = d // h
        q, k, val = layer.qkv(v).chunk(3, dim=-1)
        eq, ek, scale, shift = layer.pair(e).chunk(4, dim=-1)  # [B, N, N, d] each
        qij = (q[:, :, None] + eq).view(b, n, n, h, dh)
        kij = (k[:, None, :] + ek).view(b, n, n, h, dh)
        score = (qij * kij).sum(-1) / math.sqrt(dh)
        score = score.masked_fill(~node_mask[:, None, :, None], float("-inf"))
        attn = torch.softmax(score, dim=2).masked_fill(~node_mask[:, :, None, None], 0.0)
        vij = (scale * val[:, None, :, :] + shift).view(b, n, n, h, dh)
        agg = (attn[..., None] * vij).sum(2).reshape(b, n, d)
        ref_v = layer.norm1(v + layer.out(agg))
        ref_v = layer.norm2(ref_v + layer.ffn(ref_v)) * node_mask[..., None]
        pre = (layer.e_self(e) + layer.e_transpose(e.transpose(1, 2))
               + layer.e_source(ref_v)[:, :, None] + layer.e_target(ref_v)[:, None])
        ref_e = layer.e_norm(e + layer.e_out(F.gelu(pre))) * pair_mask[..., None]
    assert (got_v - ref_v).abs().max() <= 1e-5
    assert (got_e - ref_e).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_generated_probes_and_their_outputs_reach_the_readout(name):
    """probe_generator: the probes come from the generator, the outputs on them join the invariant
    readout's input (changing them changes the prediction); without one, the published model."""
    batch = nngraph.collate(siren_graphs(3))
    plain = build(name, batch, probes=4)
    assert [n for n, _ in plain.probes.named_parameters()] == ["probes", "proj.weight", "proj.bias", "norm.weight",
                                                               "norm.bias"]
    assert plain.readout.head[0].in_features == 3 * 64  # [mean, max, one output neuron] x hidden
    model = build(name, batch, probes=8, probe_generator="deep-linear")
    assert model.readout.head[0].in_features == 3 * 64 + 8
    _, _, outputs = model.encode(batch)  # [B, m K]
    y, _ = nngraph.execute(batch, model.probes.inputs())  # [B, K, 1]
    torch.testing.assert_close(outputs, y.reshape(3, 8))
    with torch.no_grad():
        full = model(batch)
        model.readout.head[0].weight[:, -8:].zero_()  # the readout's weights on the outputs
        assert (model(batch) - full).abs().max() > 1e-4
    model = build(name, batch, probes=8, probe_generator="deep-linear").train()
    model(batch).pow(2).sum().backward()
    for pname, p in model.probes.generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    edit = build(name, batch, probes=4, probe_generator="deep-linear", readout="parameters")
    assert edit.probe_outputs == 0 and set(edit(batch)) == set(stacked_params(batch))


def test_probe_generator_arguments_are_checked():
    from nngraph.models.registry import check_model_args

    for name in ("nggnn", "ngt"):
        check_model_args(name, {"probes": 128, "probe_generator": "deep-linear"})
        with pytest.raises(nngraph.NNGraphError, match="needs probes"):
            check_model_args(name, {"probe_generator": "deep-linear"})
        with pytest.raises(nngraph.NNGraphError, match="unknown probe_generator"):
            check_model_args(name, {"probes": 4, "probe_generator": "gan"})


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_readout_head_width_and_depth(name):
    batch = nngraph.collate(siren_graphs(2))
    model = build(name, batch, hidden=16, probes=4, probe_generator="deep-linear", head_width=40, head_layers=5)
    linears = [m for m in model.readout.head if isinstance(m, torch.nn.Linear)]
    # [(2 + m) d + m K] -> 40 x 4 -> out_dim: mean, max and one output node of width 16, 4 probe outputs
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(3 * 16 + 4, 40), (40, 40), (40, 40),
                                                                         (40, 40), (40, 3)]
    assert model(batch).shape == (2, 3)
    default = build(name, batch, hidden=16)
    assert [m.out_features for m in default.readout.head if isinstance(m, torch.nn.Linear)] == [16, 3]


@pytest.mark.parametrize("name, arg, low", [("probegen", "generator_width", 1), ("deepsets", "kernel", 1),
                                             ("statnn", "first_k", 0), ("statnn", "last_k", 0),
                                             ("nggnn", "head_width", 1)])
def test_size_arguments_without_a_default_are_checked_by_their_annotation(name, arg, low):
    """An ``int | None`` argument (None: derived from other sizes) takes None or an integer >= its floor."""
    from nngraph.models.registry import check_model_args

    base = {"probes": 4} if name == "probegen" else {}
    check_model_args(name, {**base, arg: None})
    check_model_args(name, {**base, arg: low + 1 if name != "deepsets" else 3})
    for bad in (2.5, "3", True, low - 1):
        with pytest.raises(nngraph.NNGraphError, match=f"{arg}.* must be an integer >= {low}"):
            check_model_args(name, {**base, arg: bad})


def test_readout_head_arguments_are_checked():
    from nngraph.models.registry import check_model_args

    for name in ("nggnn", "ngt"):
        check_model_args(name, {"head_width": 256, "head_layers": 6})
        for bad in ({"head_width": 0}, {"head_width": 2.5}, {"head_width": True}, {"head_layers": 0},
                    {"head_layers": 2.5}):
            with pytest.raises(nngraph.NNGraphError, match=f"{next(iter(bad))}.* must be"):
                check_model_args(name, bad)
