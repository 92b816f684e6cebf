"""nngraph.from_models: a user's networks of several architectures as an ordinary corpus."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import nngraph
from nngraph.data.corpus import Corpus, NetworkZoo
from nngraph.errors import DataError, NNGraphError

X = torch.zeros(1, 1, 6, 6)


def mlp_cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.Tanh(), nn.Flatten(), nn.Linear(width * 16, 3)).eval()


@pytest.fixture(name="models")
def _models():
    return [mlp_cnn(2 + i % 2, i) for i in range(9)]


def test_networks_round_trip_as_graphs_equal_to_their_conversion(tmp_path, models):
    zoo = nngraph.from_models(models, [i / 10 for i in range(9)], X, out=tmp_path / "z", seed=3)
    opened = Corpus.open(tmp_path / "z")
    assert isinstance(opened, NetworkZoo) and len(opened.architectures) == 2 and opened.target_kind == "scalar"
    x = torch.randn(5, 1, 6, 6)
    for i in range(9):
        direct = nngraph.to_graph(models[i], X)
        stored = zoo.graph(i)
        assert torch.equal(stored.x, direct.x) and torch.equal(stored.edge_attr, direct.edge_attr)
        torch.testing.assert_close(nngraph.execute(stored, x)[0], models[i](x), atol=1e-6, rtol=1e-6)
        params = nngraph.to_params(stored)
        assert all(torch.equal(params[k], v) for k, v in models[i].state_dict().items())
    # a permuted copy (same function, other neuron order) stores another graph of the same function
    permuted = nngraph.permute_neurons(models[0], seed=1, example_input=X)
    again = nngraph.from_models([permuted, models[1], models[2]], [0.1, 0.2, 0.3], X, out=tmp_path / "p",
                                splits=["train", "val", "test"])
    assert not torch.equal(again.graph(0).x, zoo.graph(0).x)
    torch.testing.assert_close(nngraph.execute(again.graph(0), x)[0], models[0](x), atol=1e-5, rtol=1e-5)


def test_targets_kinds_and_k_fold(tmp_path, models):
    classes = nngraph.from_models(models, [i % 3 for i in range(9)], X, out=tmp_path / "c", folds=3, fold=1)
    assert classes.target_kind == "class" and classes.labels.dtype == torch.long
    splits = classes.manifest["items"]["split"]
    assert [splits.count(s) for s in ("train", "val", "test")] == [3, 3, 3]
    other = nngraph.from_models(models, [i % 3 for i in range(9)], X, out=tmp_path / "c2", folds=3, fold=2)
    test_1 = {i for i, s in enumerate(splits) if s == "test"}
    test_2 = {i for i, s in enumerate(other.manifest["items"]["split"]) if s == "test"}
    assert not test_1 & test_2  # folds are disjoint test sets
    vectors = nngraph.from_models(models, torch.randn(9, 2), X, out=tmp_path / "v", target_names=["loss", "err"])
    assert vectors.target_kind == "vector" and vectors.labels.shape == (len(vectors), 2)
    from nngraph.tasks import create_task

    task = create_task("regress", Corpus.open(tmp_path / "v", "train"))
    assert task.out_dim == 2
    with pytest.raises(NNGraphError, match="learns scalar targets, but .* holds vector targets"):
        create_task("generalize", vectors)


@pytest.mark.parametrize("call, needle", [
    (lambda m, out: nngraph.from_models(m, [0.1] * 8, X, out=out), "targets must be 9 numbers"),
    (lambda m, out: nngraph.from_models(m, [float("nan")] * 9, X, out=out), "NaN"),
    (lambda m, out: nngraph.from_models(m, [0.1] * 9, X, out=out, splits=(0.5, 0.5)), "three fractions"),
    (lambda m, out: nngraph.from_models(m, [0.1] * 9, X, out=out, folds=3), "k-fold needs"),
    (lambda m, out: nngraph.from_models([*m, nn.LSTM(3, 3)], [0.1] * 10, X, out=out), "model 9 cannot be converted"),
    (lambda m, out: nngraph.from_models([*m, _with_nan(mlp_cnn(2, 9))], [0.1] * 10, X, out=out),
     r"model 9: 0.weight holds NaN"),
])
def test_bad_input_is_refused_in_one_line(tmp_path, models, call, needle):
    with pytest.raises(NNGraphError, match=needle) as info:
        call(models, tmp_path / "z")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "z").exists()  # refused before anything is written


def _with_nan(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


def test_a_hand_edited_template_is_refused(tmp_path, models):
    nngraph.from_models(models, [0.5] * 9, X, out=tmp_path / "z")
    manifest = json.loads((tmp_path / "z" / "manifest.json").read_text())
    manifest["architectures"][0]["graph"]["params"][0]["offset"] = 10**6
    (tmp_path / "z" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="architecture 0 places"):
        Corpus.open(tmp_path / "z")


def make_net(arch: str = "2") -> nn.Module:
    """The architecture factory named on the command line (``tests.data.test_from_models:make_net``)."""
    return mlp_cnn(int(arch), 0)


def test_cli_imports_a_folder_of_state_dicts_with_a_labels_csv(tmp_path, models, capsys):
    from safetensors.torch import save_file

    from nngraph.cli import main

    src = tmp_path / "weights"
    src.mkdir()
    rows = ["file,arch,accuracy"]
    for i, model in enumerate(models):
        name = f"net{i}.safetensors" if i % 2 else f"net{i}.pt"
        (save_file(model.state_dict(), src / name) if i % 2 else torch.save(model.state_dict(), src / name))
        rows.append(f"{name},{2 + i % 2},{i / 10}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["data", "import", str(src), "--format", "models", "--labels", str(tmp_path / "labels.csv"),
            "--architecture", "tests.data.test_from_models:make_net", "--input-shape", "1,6,6"]
    assert main([*args, "--out", str(tmp_path / "zoo")]) == 0
    zoo = Corpus.open(tmp_path / "zoo")
    assert len(zoo) == 9 and zoo.labels.tolist() == pytest.approx([i / 10 for i in range(9)])
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(nngraph.execute(zoo.graph(4), x)[0], models[4](x), atol=1e-6, rtol=1e-6)
    (tmp_path / "labels.csv").write_text("file,accuracy\n../labels.csv,0.5\n")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad")]) == 2  # a name outside SRC is never read
    assert "'../labels.csv' is not a plain file name inside" in capsys.readouterr().err


def test_one_module_given_twice_is_stored_twice(tmp_path, models):
    """The shards hold copies: a module (or ExportedProgram) passed twice shares no memory between entries."""
    zoo = nngraph.from_models([models[0], models[0], models[1]], [0.1, 0.2, 0.3], X, out=tmp_path / "z",
                              splits=["train", "val", "test"])
    assert torch.equal(zoo.graph(0).edge_attr, zoo.graph(1).edge_attr)
    assert torch.equal(nngraph.to_params(zoo.graph(1))["0.weight"], models[0][0].weight)


def test_inspect_verifies_the_graph_templates(tmp_path, models, capsys):
    from nngraph.cli import main

    nngraph.from_models(models, [0.1] * len(models), X, out=tmp_path / "z")
    assert main(["inspect", str(tmp_path / "z")]) == 0
    stored = json.loads((tmp_path / "z" / "manifest.json").read_text())["templates"]["file"]
    data = bytearray((tmp_path / "z" / stored).read_bytes())
    data[-1] ^= 1  # same size, other bytes
    (tmp_path / "z" / stored).write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and stored in err and "SHA-256" in err, err
