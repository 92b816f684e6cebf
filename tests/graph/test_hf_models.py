"""HuggingFace models (a LoRA'd BERT among them) and a hand-written nanoGPT through the torch.export capture
(capture.py): tiny random configurations, nothing downloaded. execute equals the model, to_params is exact, a
permutation keeps the function and moves something, NG-GNN on a mixed batch is invariant and
batch-independent."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.execute import execute
from nngraph.graph.graph import X_ACT_PARAM2
from tests.graph.helpers import assert_exact_params, assert_invariant_on_mixed_batch, assert_rel_close

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB, T = 23, 6


class _LayerNorm(nn.Module):
    """nanoGPT's LayerNorm: F.layer_norm on its own parameters."""

    def __init__(self, d: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int, block: int, mask: str):
        super().__init__()
        self.c_attn, self.c_proj, self.heads, self.mask = nn.Linear(d, 3 * d), nn.Linear(d, d), heads, mask
        if mask == "buffer":
            self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)  # packed QKV split on the feature axis
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.mask == "buffer":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias[:, :, :t, :t] != 0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, block: int, mask: str):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = _LayerNorm(d), _Attention(d, heads, block, mask), _LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """Karpathy's nanoGPT as he writes it (untied head here): positions from torch.arange on idx.device."""

    def __init__(self, mask: str, d: int = 8, heads: int = 2, layers: int = 2, block: int = 10):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(block, d)
        self.h = nn.ModuleList(_Block(d, heads, block, mask) for _ in range(layers))
        self.ln_f, self.lm_head = _LayerNorm(d), nn.Linear(d, VOCAB, bias=False)

    def forward(self, idx):
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (norm weights included), so a permutation that breaks anything shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _gpt2(seed=0, tied=False):
    config = transformers.GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=10,
                                     tie_word_embeddings=tied)
    return _randomise(transformers.GPT2LMHeadModel(config), seed)


def _bert(seed=0):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=10, num_labels=3)
    return _randomise(transformers.BertForSequenceClassification(config), seed)


def _bert_lora(seed=0):
    """peft's LoRA on BERT's query and value (r = 2, alpha = 6: scaling 3), B random (peft starts it at 0)."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["query", "value"], lora_dropout=0.1)
    return _randomise(peft.get_peft_model(_bert(seed), config), seed + 1)


def _vit(seed=0):
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=16, num_labels=3)
    return _randomise(transformers.ViTForImageClassification(config), seed)


def _llama(seed=0, kv_heads=2):
    """LLaMA: RMSNorm, SwiGLU, rotary position embeddings and (kv_heads < 4) grouped-query attention."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=16)
    return _randomise(transformers.LlamaForCausalLM(config), seed)


def _qwen2(seed=0):
    """Qwen2: LLaMA's blocks with biases on q, k and v, grouped-query attention."""
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16)
    return _randomise(transformers.Qwen2ForCausalLM(config), seed)


MODELS = {
    "gpt2": (_gpt2, "ids"),
    "gpt2-tied": (lambda seed=0: _gpt2(seed, tied=True), "ids"),  # lm_head.weight is transformer.wte.weight
    "bert": (_bert, "ids"),
    "bert-lora": (_bert_lora, "ids"),
    "vit": (_vit, "images"),
    "nanogpt-causal": (lambda seed=0: _randomise(NanoGPT("is_causal"), seed), "ids"),
    "nanogpt-buffer": (lambda seed=0: _randomise(NanoGPT("buffer"), seed), "ids"),
    "llama": (lambda seed=0: _llama(seed, kv_heads=4), "ids"),
    "llama-gqa": (_llama, "ids"),
    "qwen2": (_qwen2, "ids"),
}


def _input(kind: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (4, T), generator=g) if kind == "ids" else torch.randn(4, 3, 8, 8, generator=g)


def _run(model, x):
    with torch.no_grad():
        out = model(x) if isinstance(model, NanoGPT) else model(x, return_dict=False)[0]
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_executes_exactly_and_gives_back_its_parameters(name):
    build, kind = MODELS[name]
    model, x = build(), _input(kind)
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], _run(model, x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_permutation_keeps_the_function_and_moves_weights(name):
    build, kind = MODELS[name]
    model, x = build(), _input(kind)
    permuted = nngraph.permute_neurons(model, seed=3, example_input=x)
    state, moved = model.state_dict(), permuted.state_dict()
    assert any(not torch.equal(state[k], moved[k]) for k in state), "the permutation moved nothing"
    assert_rel_close(_run(permuted, x), _run(model, x))
    if name == "gpt2-tied":
        assert permuted.lm_head.weight is permuted.transformer.wte.weight
    if name == "bert-lora":  # the rank nodes move too: A's rows, B's columns
        a = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
        assert not torch.equal(state[a], moved[a])


def test_lora_bert_is_the_adapters_own_structure_and_training_mode_is_refused():
    """Each adapted Linear (2 layers x query, value) adds r = 2 rank nodes, B's 8 outputs and 8 sums fed by a
    residual edge from the base layer and an identity edge of weight s = 3 from B: the fx path's graph of a LoRA
    layer (lora.py); training-mode LoRA dropout is refused in one line."""
    from nngraph.graph.graph import EDGE_IDENTITY

    model, x = _bert_lora(), _input("ids")
    plain = nngraph.to_graph(_bert(), x)
    graph = nngraph.to_graph(model, x)
    assert graph.num_nodes - plain.num_nodes == 4 * (2 + 8 + 8)  # rank nodes, B's outputs, the sums
    scaling = graph.edge_attr[graph.edge_kind == EDGE_IDENTITY, graph.spec.k_max ** 2 // 2]
    assert int((scaling == 3.0).sum()) == 4 * 8
    with pytest.raises(UnsupportedModelError, match="training mode") as info:
        nngraph.to_graph(model.train(), x)
    assert "\n" not in str(info.value)


def test_causal_flag_is_on_the_score_nodes_and_lm_outputs_every_token():
    model, x = MODELS["nanogpt-causal"][0](), _input("ids")
    graph = nngraph.to_graph(model, x)
    assert graph.spec.output_shape == (T, VOCAB) and graph.spec.output_tokens
    assert int((graph.x[:, X_ACT_PARAM2] == 1).sum()) == 2 * 2  # two heads in each of two blocks
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB  # the last token reaches no earlier position
    y, y2 = execute(graph, x)[0], execute(graph, changed)[0]
    assert torch.equal(y[:, :-1], y2[:, :-1]) and not torch.equal(y[:, -1], y2[:, -1])


def test_fx_stays_the_first_capture_and_export_can_be_forced():
    model, x = MODELS["nanogpt-causal"][0](), _input("ids")
    with pytest.raises(UnsupportedModelError, match="capture='export'") as info:
        nngraph.to_graph(model, x, capture="fx")
    assert "\n" not in str(info.value)
    assert_rel_close(execute(nngraph.to_graph(model, x, capture="export"), x)[0], _run(model, x))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.AvgPool2d(3, stride=2, padding=1), nn.AdaptiveAvgPool2d(4)],
                         ids=["max", "avg", "adaptive-avg"])
def test_pooling_through_export_is_the_fx_graph(pool):
    """A CNN's pooling lowered from ATen (a .pt2 zoo has no fx path) gives the graph fx gives, exactly."""
    model = _randomise(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), pool, nn.Conv2d(4, 3, 3), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), 0).eval()
    x = torch.randn(2, 2, 8, 8)
    exported, traced = (nngraph.to_graph(model, x, capture=c) for c in ("export", "fx"))
    assert_rel_close(execute(exported, x)[0], model(x))
    for field in ("x", "edge_index", "edge_attr", "edge_kind", "geom_table", "edge_geom_id", "node_layer"):
        assert torch.equal(getattr(exported, field), getattr(traced, field)), field


def test_an_unknown_aten_op_is_named():
    class Cube(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.shape[0] > 0:  # keeps fx out: the export capture is used
                x = self.fc(x)
            return torch.cumsum(x, 1)

    with pytest.raises(UnsupportedModelError, match="cumsum") as info:
        nngraph.to_graph(Cube(), torch.randn(2, 4), capture="export")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_rotary_channels_stay_in_place_and_grouped_heads_share_their_key_nodes(kv_heads):
    """Rotary embeddings are 2 d constant nodes per use (cos and signed sin of each channel, pinned by their
    geometry): no permutation moves them, so no query or key channel leaves its place in its head; whole
    heads still move. With grouped-query attention the 4 / kv_heads query heads of a group read one set of
    key nodes: each key node is the second factor of that many score products, and of no other."""
    from nngraph.graph.graph import EDGE_ATTN_SUM, EDGE_CONST, EDGE_MUL_B
    from nngraph.graph.permute import permute_graph

    graph = nngraph.to_graph(_llama(0, kv_heads), _input("ids"))
    src, dst = graph.edge_index
    constants = src[graph.edge_kind == EDGE_CONST]
    assert len(constants) == 2 * 2 * 2 * 4  # 2 layers x (q, k) x (cos, sin) x head size 4
    moved = False
    for seed in range(4):
        _, perm = permute_graph(graph, seed=seed)
        assert torch.equal(perm[constants], constants)
        moved |= not torch.equal(perm, torch.arange(len(perm)))
    assert moved
    scores = src[graph.edge_kind == EDGE_ATTN_SUM]  # the q_c k_c products
    key_reads = src[(graph.edge_kind == EDGE_MUL_B) & torch.isin(dst, scores)]
    assert len(key_reads) == 2 * 16  # one product per query channel, 2 layers of 4 heads x 4
    assert torch.bincount(key_reads).max() == torch.bincount(key_reads)[key_reads].min() == 4 // kv_heads


def test_a_constant_tensor_times_a_value_other_than_rotary_is_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * torch.arange(1.0, 5.0)

    with pytest.raises(UnsupportedModelError, match="constant tensor of shape \\[4\\] multiplies a value.*rotary"):
        nngraph.to_graph(Scaled(), torch.randn(2, 4), capture="export")


@pytest.mark.parametrize("names", [("gpt2", "nanogpt-causal", "nanogpt-buffer"), ("bert-lora", "bert", "bert-lora"),
                                   ("llama", "qwen2", "llama-gqa")])
def test_nggnn_on_a_mixed_batch_is_invariant_and_batch_independent(names):
    x = _input("ids")
    graphs = [nngraph.to_graph(MODELS[n][0](seed), x) for seed, n in enumerate(names)]
    assert_invariant_on_mixed_batch(graphs, probes=2, permute_seed=5)
