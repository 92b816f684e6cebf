"""GroupNorm, InstanceNorm, LayerNorm over channels (channels last), chunk / split / unbind, layer scale,
softmax outputs, RMSNorm and norms written by hand (issue 31 items 2 and 4): execute equals the model,
to_params is exact, permutations keep the function and move neurons, and the metanetworks read the new graphs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.graph import NORM_GROUP, NORM_INSTANCE, NORM_LAYER, NORM_LOG_SOFTMAX, NORM_RMS, NORMS, ROLE_HIDDEN
from nngraph.graph.permute import permute_graph
from nngraph.models import create_model
from tests.graph.helpers import assert_batch_independent, assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.nets import randomise
from tests.graph.norm_nets import ChunkGLU, ConvNeXtBlocks, DeiT3, MnistNet, Norms, ReshapedLayerScale, ResNetGN


class LlamaRMSNorm(nn.Module):
    """LLaMA's RMSNorm as its reference code writes it: weight * (x * rsqrt(mean(x^2) + eps)) over the last axis."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class HandLayerNorm(nn.Module):
    """A LayerNorm over the last axis written from its mean and (population) variance."""

    def __init__(self, d: int, eps: float = 1e-5, var: bool = False):
        super().__init__()
        self.weight, self.bias, self.eps, self.var = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps, var

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        v = x.var(-1, keepdim=True, unbiased=False) if self.var else (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * ((x - u) / torch.sqrt(v + self.eps)) + self.bias


class HandNormTokens(nn.Module):
    """Tokens through hand-written LayerNorms (mean / var), LLaMA's RMSNorm and nn.RMSNorm (eps None)."""

    def __init__(self):
        super().__init__()
        self.emb, self.ln, self.fc, self.rms = nn.Embedding(11, 8), HandLayerNorm(8), nn.Linear(8, 8), LlamaRMSNorm(8)
        self.ln2, self.rms2, self.out = HandLayerNorm(8, var=True), nn.RMSNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.gelu(self.rms(self.fc(self.ln(self.emb(x)))))
        return self.out(self.rms2(self.ln2(h)))


class RMSNormMLP(nn.Module):
    """RMSNorm of features: by hand, then F.rms_norm on the model's own weight."""

    def __init__(self):
        super().__init__()
        self.a, self.rms, self.b, self.c = nn.Linear(5, 8), LlamaRMSNorm(8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.w = nn.Parameter(torch.ones(8))

    def forward(self, x):
        h = torch.relu(self.rms(self.a(x)))
        return self.c(F.rms_norm(self.b(h), (8,), self.w, 1e-5))


class RMSNormUnbindCNN(nn.Module):
    """An RMSNorm over a map's channels written by hand (channels first), nn.RMSNorm channels last, and the
    channels unbound, each through its own activation, stacked back."""

    def __init__(self):
        super().__init__()
        self.conv, self.g = nn.Conv2d(3, 4, 3, padding=1), nn.Parameter(torch.ones(4))
        self.norm, self.pw, self.head = nn.RMSNorm(4), nn.Linear(4, 4), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.conv(x)
        h = h / torch.sqrt(h.pow(2).mean(1, keepdim=True) + 1e-6) * self.g[:, None, None]
        h = self.pw(self.norm(h.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        a, b, c, d = h.unbind(1)
        h = torch.stack([torch.relu(a), torch.tanh(b), c, d], dim=1)
        return self.head(h).mean((2, 3))


class FunctionalBatchNorm(nn.Module):
    """BatchNorm written as F.batch_norm on the module's own buffers and parameters (a map, then a vector)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(2, 4, 3), nn.Linear(4, 6), nn.Linear(6, 3)
        for name, size in (("map", 4), ("vec", 6)):
            self.register_buffer(f"{name}_mean", torch.linspace(-0.5, 0.5, size))
            self.register_buffer(f"{name}_var", torch.linspace(0.5, 1.5, size))
        self.gamma, self.beta = nn.Parameter(torch.linspace(0.5, 1.5, 4)), nn.Parameter(torch.linspace(-1, 1, 4))

    def forward(self, x):
        h = torch.relu(F.batch_norm(self.conv(x), self.map_mean, self.map_var, self.gamma, self.beta, False, 0.1, 1e-5))
        h = torch.tanh(F.batch_norm(self.fc(h.mean((2, 3))), self.vec_mean, self.vec_var, eps=1e-3))
        return self.head(h)


def _cases():
    img = torch.randn(3, 3, 8, 8)
    return [
        ("resnet-gn", lambda s: ResNetGN(), img),
        ("convnext", lambda s: ConvNeXtBlocks(), img),
        ("deit3-layerscale", lambda s: DeiT3(), img),
        ("mnist-example", lambda s: MnistNet(), torch.randn(2, 1, 28, 28)),
        ("instancenorm", lambda s: Norms(affine=False, track=False), torch.randn(3, 2, 5, 5)),
        ("instancenorm-affine-running", lambda s: Norms(affine=True, track=True), torch.randn(3, 2, 5, 5)),
        ("chunk-glu-softmax", lambda s: ChunkGLU(), torch.randn(3, 2, 6, 6)),
        ("layer-scale-reshaped", lambda s: ReshapedLayerScale(), torch.randn(3, 2, 5, 5)),
        ("rmsnorm-unbind-cnn", lambda s: RMSNormUnbindCNN(), torch.randn(3, 3, 6, 6)),
        ("hand-norms-tokens", lambda s: HandNormTokens(), torch.randint(0, 11, (3, 5))),
        ("rmsnorm-mlp", lambda s: RMSNormMLP(), torch.randn(4, 5)),
        ("functional-batchnorm", lambda s: FunctionalBatchNorm(), torch.randn(3, 2, 6, 6)),
    ]


CASES = _cases()


def _model(make, seed: int = 0) -> nn.Module:
    model = randomise(make(seed), seed)
    for m in model.modules():  # non-trivial running statistics of the instance norms too
        if isinstance(m, nn.InstanceNorm2d) and m.track_running_stats:
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name,make,x", CASES, ids=[c[0] for c in CASES])
def test_executes_exactly_and_gives_its_parameters_back(name, make, x):
    model = _model(make)
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        assert_rel_close(nngraph.execute(graph, x)[0], model(x), rel=1e-4)
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


@pytest.mark.parametrize("name,make,x", CASES, ids=[c[0] for c in CASES])
def test_permutations_keep_the_function_and_move_neurons(name, make, x):
    model = _model(make)
    graph = nngraph.to_graph(model, x)
    moved = False
    for seed in range(3):
        permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
        with torch.no_grad():
            assert_rel_close(permuted(x), model(x), rel=1e-4)
        new, perm = permute_graph(graph, seed)
        assert_relabelled(new, graph, perm)
        assert_exact_params(permuted.state_dict(), nngraph.to_params(new))
        moved |= bool((perm != torch.arange(graph.num_nodes)).any())
    assert moved


def test_group_norm_is_one_layer_per_group_and_channels_stay_in_their_group():
    model = _model(lambda s: ResNetGN(width=4))
    graph = nngraph.to_graph(model, torch.randn(1, 3, 8, 8))
    grouped = graph.node_norm == NORM_GROUP
    layers = graph.node_layer[grouped].unique()
    assert len(layers) == 2 * 6  # six GroupNorm(2, C): two layers each
    assert all(int((graph.node_layer == l).sum()) in (2, 4) for l in layers.tolist())  # C / 2 channels per group
    for seed in range(4):
        _, perm = permute_graph(graph, seed)
        assert torch.equal(graph.node_layer[perm], graph.node_layer)  # nodes never leave their group's layer


def test_layer_norms_over_channels_linear_and_layer_scale_are_graph_structure():
    model = _model(lambda s: ConvNeXtBlocks())
    graph = nngraph.to_graph(model, torch.randn(1, 3, 8, 8))
    spec = {p.name: p for p in graph.spec.params}
    assert spec["stage1.0.gamma"].source == "diag" and spec["stage1.0.pwconv1.weight"].source == "kernel"
    first = spec["stage1.0.gamma"].offset
    gamma = graph.edge_attr[first:first + 4, graph.spec.k_max ** 2 // 2]
    assert torch.equal(gamma, model.stage1[0].gamma.detach())  # the layer scale is carried by identity edges
    ln = graph.node_norm == NORM_LAYER
    assert int(ln.sum()) == 4 + 2 * 4 + 4 + 8 + 8  # stem, blocks (4, 4), down-sampling, block (8), head (8)
    assert {tuple(hw) for hw in graph.node_hw[ln].tolist()} == {(4, 4), (2, 2), (1, 1)}


def test_instance_norm_and_log_softmax_are_node_norms():
    graph = nngraph.to_graph(_model(lambda s: Norms(False, False)), torch.randn(1, 2, 5, 5))
    assert int((graph.node_norm == NORM_INSTANCE).sum()) == 6 + 4
    mnist = nngraph.to_graph(_model(lambda s: MnistNet()), torch.randn(1, 1, 28, 28))
    out = mnist.node_role == 2
    assert torch.equal(mnist.node_norm[out], torch.full((10,), NORM_LOG_SOFTMAX))


class _Bad(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op, self.conv, self.scale = op, nn.Conv2d(2, 4, 3), nn.Parameter(torch.ones(1))
        self.mix3 = nn.Linear(3, 3)

    def forward(self, x):
        h = self.conv(x)
        if self.op == "softmax-batch":
            return torch.softmax(h, dim=0).mean((2, 3))
        if self.op == "permute-other":
            return h.permute(0, 3, 2, 1).mean((1, 2))
        if self.op == "split-spatial":
            return h.split(2, dim=2)[0].mean((2, 3))
        if self.op == "unbind":
            return h.unbind(1)[0].mean((1, 2))
        if self.op == "unbind-linear":  # a Linear over the W positions of one channel
            return self.mix3(h.unbind(1)[0]).mean((1, 2))
        if self.op == "unbind-spatial":
            return h.unbind(2)[0].mean(2)
        if self.op == "rms-plus-one":  # not x * rsqrt(...): no known norm
            return (h * (torch.rsqrt(h.pow(2).mean(1, keepdim=True) + 1e-6) + 1)).mean((2, 3))
        if self.op == "linear-over-width":  # a Linear over the W positions of a 2-d map: not a sequence
            return self.mix3(h).mean((2, 3))
        if self.op == "centre-only":
            return (h - h.mean(1, keepdim=True)).mean((2, 3))
        return self.scale * h.mean((2, 3))


@pytest.mark.parametrize("op,words", [
    ("softmax-batch", "softmax / log_softmax over the features or channels"),
    ("permute-other", "x.permute(0, 2, 3, 1)"),
    ("split-spatial", "along the channel"),
    ("unbind", "a channel of x.unbind(dim)"),
    ("unbind-spatial", "unbind is supported along the channel"),
    ("unbind-linear", "reads a channel of x.unbind(dim)"),
    ("rms-plus-one", "or an RMSNorm x * torch.rsqrt"),
    ("scale", "one value per channel"),
    ("centre-only", "LayerNorm written out"),
    ("linear-over-width", "over the L positions of a [batch, C, L] sequence"),
])
def test_other_layouts_are_refused_in_one_line(op, words):
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(_Bad(op).eval(), torch.randn(2, 2, 5, 5))
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["nggnn", "ngt"])
def test_metanetworks_read_the_new_families_in_one_batch(name):
    x = torch.zeros(1, 3, 8, 8)
    graphs = [nngraph.to_graph(_model(make, i), x) for i, (_, make, _) in enumerate(CASES[:3])]
    batch = nngraph.collate(graphs)
    torch.manual_seed(0)
    model = create_model(name, example=batch, out_dim=3, probes=1, hidden=16, edge_hidden=8, layers=2).eval()
    with torch.no_grad():
        together = assert_batch_independent(model, graphs)
        for seed in (1, 2):
            permuted = nngraph.collate([permute_graph(g, seed=seed)[0] for g in graphs])
            assert (model(permuted) - together).abs().max() <= 1e-4
    hidden = torch.cat([g.node_role for g in graphs]) == ROLE_HIDDEN
    assert bool(hidden.any())


class _SequenceMixing(nn.Module):
    """A Linear over the positions of a Conv1d's [B, C, L] output (no bias), then one with a bias."""

    def __init__(self):
        super().__init__()
        self.conv, self.mix1, self.mix2 = nn.Conv1d(2, 4, 3), nn.Linear(5, 6, bias=False), nn.Linear(6, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.mix2(torch.relu(self.mix1(self.conv(x)))).mean(2))


def test_token_mixing_is_one_shared_map_per_channel_and_positions_never_move():
    """Every token_mix edge carries the same T' x T map (and every bias self-loop the same bias); a permutation
    moves channels together through the edge and leaves the maps as they are; the fast path writes every copy."""
    from nngraph.graph.fast import graphs_from_params, stacked_params
    from nngraph.graph.graph import EDGE_CONST, EDGE_TOKEN_MIX
    from tests.graph.modern_cnns import LucidrainsMixer, MlpMixer, PermuteMixerBlock

    for model, x in ((randomise(_SequenceMixing(), 1).eval(), torch.randn(3, 2, 7)),
                     (randomise(MlpMixer(block=PermuteMixerBlock), 3).eval(), torch.randn(2, 3, 8, 8)),
                     (randomise(LucidrainsMixer(), 4).eval(), torch.randn(2, 3, 8, 8)),
                     (randomise(MlpMixer(), 2).eval(), torch.randn(2, 3, 8, 8))):
        graph = nngraph.to_graph(model, x)
        with torch.no_grad():
            assert_rel_close(nngraph.execute(graph, x)[0], model(x), rel=1e-4)
        assert_exact_params(nngraph.to_params(graph), model.state_dict())
        mix = graph.edge_kind == EDGE_TOKEN_MIX
        assert bool(mix.any())
        src, dst = graph.edge_index[:, mix]
        assert len(set(src.tolist())) == len(src) == len(set(dst.tolist()))  # one edge per channel
        for layer in graph.node_layer[dst].unique():
            rows = graph.edge_attr[mix][graph.node_layer[dst] == layer]
            assert torch.equal(rows, rows[:1].expand_as(rows))  # the same map on every channel
        for seed in (0, 1):
            new, perm = permute_graph(graph, seed)
            assert_relabelled(new, graph, perm)
            with torch.no_grad():
                assert_rel_close(nngraph.execute(new, x)[0], model(x), rel=1e-4)
        stack = {k: torch.stack([v, 2 * v]) for k, v in model.state_dict().items()}
        batch = graphs_from_params(graph, stack)
        back = stacked_params(batch)
        assert all(torch.equal(back[k], stack[k]) for k in stack)
        twice = batch.edge_attr[graph.num_edges:][mix]
        assert torch.equal(twice, 2 * graph.edge_attr[mix])  # every copy written, not only the first
    consts = graph.edge_kind == EDGE_CONST
    assert int(consts.sum()) == 8 * 4  # the token MLPs' biases: one self-loop per channel, 4 Linear layers


def test_timm_packed_qkv_unbinds_into_heads_and_indexing_does_the_same():
    """timm's ``q, k, v = qkv.unbind(0)`` and the older ``qkv[0], qkv[1], qkv[2]`` give the same graph, exact."""
    from tests.graph.norm_nets import TimmAttention, TimmDeiT3

    class IndexedAttention(TimmAttention):
        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(B, N, C))

    x = torch.randn(2, 3, 8, 8)
    unbound = randomise(TimmDeiT3(), 5).eval()
    indexed = randomise(TimmDeiT3(), 5).eval()
    for block in indexed.blocks:
        attn = IndexedAttention(8, 2)
        attn.load_state_dict(block.attn.state_dict())
        block.attn = attn
    graphs = [nngraph.to_graph(m, x) for m in (unbound, indexed)]
    assert torch.equal(graphs[0].edge_index, graphs[1].edge_index)
    assert torch.equal(graphs[0].edge_attr, graphs[1].edge_attr)
    with torch.no_grad():
        assert_rel_close(nngraph.execute(graphs[1], x)[0], indexed(x), rel=1e-4)
    assert_exact_params(nngraph.to_params(graphs[1]), indexed.state_dict())


def test_rmsnorm_and_hand_written_norms_are_node_norms_under_either_capture():
    """RMSNorm is NORM_RMS (appended: older vocabularies keep their ids), hand-written LayerNorms NORM_LAYER;
    fx and torch.export give the same graph; the unbound channels are the same nodes stacked back."""
    assert NORMS[NORM_RMS] == "rmsnorm" and NORM_RMS == 7  # after the seven kinds older vocabularies hold
    for make, x, rms, layer in ((HandNormTokens, torch.randint(0, 11, (2, 5)), 16, 16),
                                (RMSNormMLP, torch.randn(2, 5), 16, 0),
                                (RMSNormUnbindCNN, torch.randn(2, 3, 6, 6), 8, 0)):
        model = _model(lambda s: make())
        fx, exported = (nngraph.to_graph(model, x, capture=c) for c in ("fx", "export"))
        assert int((fx.node_norm == NORM_RMS).sum()) == rms and int((fx.node_norm == NORM_LAYER).sum()) == layer
        assert torch.equal(fx.edge_index, exported.edge_index) and torch.equal(fx.x, exported.x)
        assert torch.equal(fx.node_norm, exported.node_norm)
    eps = fx.node_eps[fx.node_norm == NORM_RMS]
    assert sorted(set(eps.tolist())) == sorted({float(torch.tensor(1e-6)), torch.finfo(torch.float32).eps})


def test_metanetworks_are_invariant_on_rms_and_unbind_graphs_among_others():
    x = torch.zeros(1, 3, 8, 8)
    graphs = [nngraph.to_graph(_model(make, i), x) for i, make in
              enumerate((lambda s: RMSNormUnbindCNN(), lambda s: ResNetGN(), lambda s: RMSNormUnbindCNN()))]
    batch = nngraph.collate(graphs)
    torch.manual_seed(0)
    model = create_model("nggnn", example=batch, out_dim=3, probes=1, hidden=16, edge_hidden=8, layers=2).eval()
    with torch.no_grad():
        together = assert_batch_independent(model, graphs)
        for seed in (1, 2):
            permuted = nngraph.collate([permute_graph(g, seed=seed)[0] for g in graphs])
            assert (model(permuted) - together).abs().max() <= 1e-4
