"""A zoo of graph templates (``from_models``, ``data.templates``) made by someone else stays harmless:
hand-edited template JSON, graph tensors, weights and manifest entries are refused in one line
(a DataError naming the problem and the fix, exit status 2 on the CLI) before any size they claim
is allocated, and nothing outside the corpus folder is read. Sizes are crafted so that allocating
them would fail (terabytes) or hang: a clean, quick DataError shows the check came first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import nngraph
from nngraph import cli
from nngraph.data import templates
from nngraph.data.corpus import TEMPLATES_FILE, Corpus
from nngraph.data.store import MANIFEST, write_shard
from nngraph.errors import DataError
from nngraph.graph.graph import ACTIVATIONS, EDGE_KINDS, GEOM_COLUMNS, NORMS
from nngraph.graph.ties import aliases

X = torch.zeros(1, 1, 6, 6)
HUGE = 10**6  # a side: 10^12 values (4 TB) if anything were sized by it


def small_cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.Tanh(), nn.Flatten(),
                         nn.Linear(width * 16, 3)).eval()


@pytest.fixture(scope="module", name="zoo")
def _zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "z"
    nngraph.from_models([small_cnn(2 + i % 2, i) for i in range(4)], [0.1, 0.2, 0.3, 0.4], X, out=root,
                        splits=["train", "train", "val", "test"])
    return root


@pytest.fixture(name="copy")
def _copy(zoo, tmp_path) -> Path:
    root = tmp_path / "z"
    shutil.copytree(zoo, root)
    return root


def manifest_of(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def save_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest))


def rewrite(root: Path, entry_of, edit) -> None:
    """Edit the tensors of a file the manifest lists (``entry_of(manifest)``) and record its new size and
    SHA-256, as a careful forger would: the integrity checks pass, the content checks must refuse."""
    manifest = manifest_of(root)
    entry = entry_of(manifest)
    tensors = load_file(root / entry["file"])
    edit(tensors)
    entry.update(write_shard(root / entry["file"], tensors))
    save_manifest(root, manifest)


def edit_templates(root: Path, edit) -> None:
    rewrite(root, lambda m: m["templates"], edit)


def refused(root: Path, needle: str, capsys=None) -> str:
    with pytest.raises(DataError) as info:
        Corpus.open(root)
    message = str(info.value)
    assert needle in message and "\n" not in message and ("rebuild" in message or "rerun" in message), message
    if capsys is not None:  # the CLI: one line, exit status 2
        capsys.readouterr()
        assert cli.main(["inspect", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    return message


def spec_edit(path: str, value):
    """Set ``architectures[0].graph`` at ``path`` ("params.0.shape") to ``value``."""
    def edit(manifest: dict) -> None:
        node, *keys = manifest["architectures"][0]["graph"], *path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


# ----------------------------------------------------------------------------- the template's JSON


@pytest.mark.parametrize("edit, needle", [
    (spec_edit("params.0.shape", [HUGE, HUGE]), "places '0.weight' [1000000, 1000000] outside its"),
    (spec_edit("params.0.shape", [2, 1, 3, 0]), "malformed parameter entry '0.weight'"),
    (spec_edit("params.0.offset", -5), "malformed parameter entry '0.weight'"),
    (spec_edit("params.0.offset", 10**15), "places '0.weight'"),
    (spec_edit("params.1.channel", -1), "malformed parameter entry '0.bias'"),
    (spec_edit("params.1.channel", 99), "malformed parameter entry '0.bias'"),
    (spec_edit("params.0.sources", 0), "malformed parameter entry '0.weight'"),
    (spec_edit("params.0.source", "pickle"), "malformed parameter entry '0.weight'"),
    (spec_edit("params.0.name", "elsewhere.weight"), "malformed parameter entry 'elsewhere.weight'"),
    (spec_edit("params.0.shape", [2.5, 1, 3, 3]), "malformed graph spec"),
    (spec_edit("params.0", {"name": "0.weight"}), "malformed graph spec (KeyError"),
    (spec_edit("params.0.tie", "0.bias"), "marked as a tie"),
    (spec_edit("ties", [{"name": "0.bias", "shape": [2], "source": "node", "offset": 0, "channel": 0,
                         "sources": 0, "shared": 0, "tie": "nowhere"}]), "ties '0.bias' to 'nowhere'"),
    (spec_edit("k_max", HUGE), "k_max 1000000 for 16 edge channels"),
    (spec_edit("k_max", 0), "k_max 0"),
    (spec_edit("k_max", "3"), "malformed graph spec"),
    (spec_edit("input_shape", [1, HUGE, HUGE]), "input_shape [1, 1000000, 1000000]"),
    (spec_edit("input_shape", [1, 6, 6, 6]), "input_shape [1, 6, 6, 6]"),
    (spec_edit("vocab", 10**9), "vocab 1000000000"),
    (spec_edit("vocab", -1), "vocab -1"),
    (spec_edit("output_shape", [HUGE]), "output_shape [1000000]"),
    (spec_edit("output_tokens", "yes"), "malformed graph spec"),
    (spec_edit("state_order", ["0.weight", "0.weight"]), "repeated parameter names"),
    (spec_edit("buffers", ["1.ghost"]), "malformed graph spec (KeyError"),
    (spec_edit("params", "all of them"), "malformed graph spec"),
    (lambda m: m["architectures"][0].update(graph=[]), "is not a CNN spec"),
])
def test_hand_edited_template_json_is_refused_in_one_line(copy, edit, needle):
    manifest = manifest_of(copy)
    edit(manifest)
    save_manifest(copy, manifest)
    refused(copy, needle)


# ----------------------------------------------------------------------------- the template's tensors


def set_at(name: str, index, value):
    def edit(tensors: dict) -> None:
        tensors[name][index] = value
    return edit


OUT_H = GEOM_COLUMNS.index("out_h")


@pytest.mark.parametrize("edit, needle", [
    (set_at("arch0.edge_index", (1, 0), 10**9), "edges to nodes outside 0.."),
    (set_at("arch0.edge_index", (0, 0), -1), "edges to nodes outside 0.."),
    (set_at("arch0.edge_kind", 0, len(EDGE_KINDS)), f"edge_kind values outside 0..{len(EDGE_KINDS) - 1}"),
    (set_at("arch0.node_act", 0, -1), f"node_act values outside 0..{len(ACTIVATIONS) - 1}"),
    (set_at("arch0.node_norm", 3, 99), f"node_norm values outside 0..{len(NORMS) - 1}"),
    (set_at("arch0.node_role", 3, 7), "node_role values outside"),
    (set_at("arch0.node_layer", 5, 10**12), "node_layer values outside"),
    (set_at("arch0.node_pos", 5, 10**12), "node_pos values outside"),
    (set_at("arch0.node_layer", 0, 5), "not a topological order"),
    (set_at("arch0.node_hw", 5, HUGE), "node value size (node_hw)"),
    (set_at("arch0.node_hw", 5, 0), "node value size (node_hw)"),
    (set_at("arch0.edge_geom", (0, 0), 10**12), "edge geometry (edge_geom)"),
    (set_at("arch0.edge_geom", (0, OUT_H), 5000), "output size (out_h, out_w) exceeds"),
    (set_at("arch0.x", (4, 0), float("nan")), "NaN or infinite values in x"),
    (set_at("arch0.edge_attr", (0, 0), float("inf")), "NaN or infinite values in edge_attr"),
    (set_at("arch0.node_eps", 4, -1.0), "negative normalisation epsilon"),
    (lambda t: t["arch0.edge_kind"].fill_(EDGE_KINDS.index("conv")), "does not execute"),
    (lambda t: t["arch0.edge_geom"].zero_(), "does not execute"),
    (lambda t: t.pop("arch0.x"), "lacks its tensor x"),
    (lambda t: t.pop("arch0.buffer.1.num_batches_tracked"), "malformed graph spec (KeyError"),
    (lambda t: t.update({"arch0.x": t["arch0.x"][:-1]}), "has node_layer torch.int64 [6], not torch.int64 [5]"),
    (lambda t: t.update({"arch0.x": t["arch0.x"][:, :4]}), "has x torch.float32 [6, 4]"),
    (lambda t: t.update({"arch0.edge_index": t["arch0.edge_index"].float()}), "has edge_index of shape"),
    (lambda t: t.update({"arch0.edge_index": t["arch0.edge_index"].flatten()}), "has edge_index of shape"),
    (lambda t: t.update({"arch0.edge_attr": t["arch0.edge_attr"][:, :4]}), "k_max 3 for 4 edge channels"),
    (lambda t: t.update({"arch0.node_hw": t["arch0.node_hw"].int()}), "has node_hw torch.int32"),
])
def test_hand_edited_template_tensors_are_refused_in_one_line(copy, edit, needle):
    edit_templates(copy, edit)
    refused(copy, needle)


def test_swapped_input_nodes_do_not_match_the_input_shape(copy):
    def edit(tensors):
        hw = tensors["arch0.node_hw"]
        hw[0] = torch.tensor([3, 3])  # the image input is 6 x 6
    edit_templates(copy, edit)
    refused(copy, "input_shape [1, 6, 6] (vocab 0) but 1 input nodes of other sizes")


# ----------------------------------------------------------------------------- files and paths


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd.safetensors", "sub/architectures.safetensors",
                                  "architectures.json", ""])
def test_a_template_file_outside_the_corpus_is_never_read(copy, name, capsys):
    outside = copy.parent / "outside.safetensors"
    shutil.copy(copy / TEMPLATES_FILE, outside)
    manifest = manifest_of(copy)
    manifest["templates"]["file"] = name
    save_manifest(copy, manifest)
    refused(copy, "not a plain *.safetensors name" if name else "shard file ''", capsys)


def test_a_template_file_linked_out_of_the_corpus_is_not_read(copy):
    outside = copy.parent / "outside.safetensors"
    (copy / TEMPLATES_FILE).rename(outside)
    (copy / TEMPLATES_FILE).symlink_to(outside)
    with pytest.raises(DataError, match="outside the corpus") as info:
        Corpus.open(copy)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda e: e.pop("bytes"), "names no file with its byte count and SHA-256"),
    (lambda e: e.update(bytes="12"), "names no file with its byte count and SHA-256"),
    (lambda e: e.pop("sha256"), "names no file with its byte count and SHA-256"),
    (lambda e: e.update(sha256="0" * 64), "does not match its SHA-256"),
    (lambda e: e.update(bytes=e["bytes"] + 1), "the manifest says"),
])
def test_the_template_file_entry_bounds_and_checks_the_read(copy, edit, needle):
    manifest = manifest_of(copy)
    edit(manifest["templates"])
    save_manifest(copy, manifest)
    refused(copy, needle)


def test_a_manifest_without_its_template_entry_is_refused(copy):
    manifest = manifest_of(copy)
    del manifest["templates"]
    save_manifest(copy, manifest)
    refused(copy, "names no file with its byte count")


@pytest.mark.parametrize("which", ["templates", "shard"])
def test_truncated_files_are_refused(copy, which):
    manifest = manifest_of(copy)
    path = copy / (manifest["templates"]["file"] if which == "templates" else manifest["shards"][0]["file"])
    path.write_bytes(path.read_bytes()[:100])
    refused(copy, "(truncated or replaced)")


def test_a_truncated_template_file_with_a_forged_entry_is_not_a_readable_file(copy):
    manifest = manifest_of(copy)
    path = copy / TEMPLATES_FILE
    data = path.read_bytes()[:-64]
    path.write_bytes(data)
    import hashlib

    manifest["templates"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    save_manifest(copy, manifest)
    refused(copy, "is not a readable safetensors file")


# ----------------------------------------------------------------------------- the networks' weights


def edit_network(root: Path, edit) -> None:
    rewrite(root, lambda m: m["shards"][0], edit)


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.update({"net0.0.weight": t["net0.0.weight"][:1]}), "network 0 does not match its architecture"),
    (lambda t: t.update({"net0.extra.weight": torch.zeros(2)}), "network 0 does not match its architecture"),
    (lambda t: t.update({"net0.renamed.weight": t.pop("net0.0.weight")}), "network 0 does not match"),
    (lambda t: t.pop("net1.4.bias"), "network 1 does not match its architecture"),
    (set_at("net0.4.weight", (0, 0), float("nan")), "network 0 has NaN or infinite values in 4.weight"),
    (set_at("net1.1.running_var", 0, float("-inf")), "network 1 has NaN or infinite values in 1.running_var"),
    (lambda t: t.update({"net0.4.bias": t["net0.4.bias"].double().fill_(1e300)}),
     "network 0 has NaN or infinite values in 4.bias"),  # infinite in float32, the graphs' dtype
    (lambda t: t.update({"net99.0.weight": torch.zeros(2)}), "holds net99.0.weight, outside its networks"),
])
def test_weights_that_disagree_with_their_template_are_refused(copy, edit, needle):
    edit_network(copy, edit)
    refused(copy, needle)


def test_a_network_naming_an_architecture_out_of_range_is_refused(copy, capsys):
    manifest = manifest_of(copy)
    manifest["items"]["arch"][1] = 2**40
    save_manifest(copy, manifest)
    refused(copy, f"network 1 names architecture {2**40}", capsys)


# ----------------------------------------------------------------------------- what templates must keep


class CalledTwice(nn.Module):
    """One layer applied twice: its weight is tied across two uses (graph.ties)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.f, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.f(torch.relu(self.f(torch.relu(self.inp(x)))))))


class TwoNames(nn.Module):
    """GPT-2's lm_head / wte: one Parameter under two state_dict names."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.relu(self.a(x)))))


def test_a_zoo_of_tied_networks_runs_as_its_models(tmp_path):
    """Every use of a tied weight is in the stored template (the ties were dropped before: the stored
    graph then ran its second use with zero weights)."""
    models = [CalledTwice(s).eval() for s in range(3)]
    nngraph.from_models(models, [0.1, 0.2, 0.3], torch.zeros(1, 3), out=tmp_path / "z",
                        splits=["train", "val", "test"])
    zoo, x = Corpus.open(tmp_path / "z"), torch.randn(7, 3)
    for i, model in enumerate(models):
        assert torch.equal(zoo.graph(i).edge_attr, nngraph.to_graph(model, x).edge_attr)
        torch.testing.assert_close(nngraph.execute(zoo.graph(i), x)[0], model(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make, x", [
    (TwoNames, torch.randn(4, 3)),
    (lambda: __import__("tests.graph.modern_cnns", fromlist=["MlpMixer"]).MlpMixer().eval(), torch.randn(2, 3, 8, 8)),
])
def test_templates_keep_ties_aliases_token_mixing_and_token_outputs(make, x):
    """encode -> JSON -> decode gives the graph back: ties (and a tied tensor's second name, which
    ``fits`` accepts only when it equals the tensor it names), ``copies`` entries (token mixing)."""
    model = make()
    graph = nngraph.to_graph(model, x)
    specs, tensors = templates.encode([graph])
    template = templates.decode(json.loads(json.dumps(specs)), tensors, "here")[0]
    state = model.state_dict()
    assert templates.fits(template, state)
    again = templates.graph_of(template, state)
    assert torch.equal(again.x, graph.x) and torch.equal(again.edge_attr, graph.edge_attr)
    torch.testing.assert_close(nngraph.execute(again, x)[0], model(x), atol=1e-5, rtol=1e-5)
    alias = aliases(template.spec)
    if alias:
        name = next(iter(alias))
        state = {**state, name: state[name] + 1}  # the second name no longer holds the tied tensor
        assert not templates.fits(template, state)


def test_a_template_with_token_outputs_keeps_them():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 4, 4, stride=4)

        def forward(self, img):
            return self.patch(img).flatten(2).transpose(1, 2)  # [B, T, D]

    model, x = Tokens().eval(), torch.randn(2, 3, 8, 8)
    specs, tensors = templates.encode([nngraph.to_graph(model, x)])
    template = templates.decode(json.loads(json.dumps(specs)), tensors, "here")[0]
    assert template.spec.output_tokens
    torch.testing.assert_close(nngraph.execute(templates.graph_of(template, model.state_dict()), x)[0], model(x),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("value", [["train"], {"a": 1}, "holdout", None])
def test_a_split_value_that_is_no_split_name_is_refused(copy, capsys, value):
    manifest = manifest_of(copy)
    manifest["items"]["split"][2] = value  # a list or dict was unhashable: a TypeError traceback
    save_manifest(copy, manifest)
    refused(copy, "items.split holds", capsys)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(kind=[]), "which this nngraph does not read"),
    (lambda m: m.update(config=None), "config is not a mapping"),
    (lambda m: m.update(command=-1), "command not a string"),
    (lambda m: m["items"]["label"].__setitem__(1, 10**400), "network 1 has label"),
    (lambda m: m["config"]["targets"].update(size=10**20), "config.targets is"),
    (lambda m: m["config"]["targets"].update(names=7), "config.targets is"),
    (lambda m: m["architectures"][0]["graph"]["input_shape"].__setitem__(1, 10**20), "input_shape [1, "),
    (lambda m: m["config"].update(image_size=[10**6, 10**6]), "config.image_size is"),  # a CNN spec's input
    (lambda m: m["config"].update(image_size="16"), "config.image_size is"),
])
def test_json_values_of_other_types_are_refused_not_tracebacks(copy, edit, needle):
    """Found by replacing every manifest value by None, [], {}, "x", -1, 1e20, 1.5, true, ...: these
    raised TypeError, AttributeError, ValueError or OverflowError."""
    manifest = manifest_of(copy)
    edit(manifest)
    save_manifest(copy, manifest)
    with pytest.raises(DataError, match=needle.replace("[", r"\[")) as info:
        Corpus.open(copy)
    assert "\n" not in str(info.value)


def test_a_torch_error_inside_a_refusal_stays_one_line():
    """torch's errors span lines (a C++ trace): a CNN spec of 1e20 channels was refused in 3 lines."""
    from nngraph.data.corpus import NetworkZoo
    from nngraph.data.zoo import FIXED_ARCHITECTURE

    arch = {**FIXED_ARCHITECTURE, "layers": [{**FIXED_ARCHITECTURE["layers"][0], "channels": 10**20}]}
    with pytest.raises(DataError, match="architecture 0 is not a CNN spec") as info:
        NetworkZoo.rebuild([arch], {}, "model.json")
    assert "\n" not in str(info.value)
