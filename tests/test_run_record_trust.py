"""A run folder's ``model.json`` from someone else: the architectures, their tensors and the sizes it
records are refused in one line (NNGraphError, exit status 2) before a model, an input or an edge
window of the size they claim is allocated (``nngraph.run.read_record``, the corpus classes' ``rebuild``)."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

import nngraph
from nngraph.cli import main
from nngraph.errors import NNGraphError
from nngraph.train import TrainConfig, train

SMALL_NGT = {"hidden": 8, "edge_hidden": 4, "layers": 1, "heads": 2, "probes": 2}


def small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 16, 3)).eval()


@pytest.fixture(scope="module", name="zoo_run")
def _zoo_run(tmp_path_factory):
    """A run of the regress task on a zoo of graph templates (``from_models``)."""
    folder = tmp_path_factory.mktemp("zoo_run")
    nngraph.from_models([small_cnn(i) for i in range(6)], [i / 10 for i in range(6)], torch.zeros(1, 1, 6, 6),
                        out=folder / "zoo", splits=["train"] * 4 + ["val", "test"])
    config = TrainConfig(task="regress", data=str(folder / "zoo"), model="ngt", out=str(folder / "run"), epochs=1,
                         batch_size=4, lr=1e-3, warmup_steps=1, model_kwargs=dict(SMALL_NGT))
    train(config, progress=False)
    return folder / "run"


@pytest.fixture(scope="module", name="inr_run")
def _inr_run(tmp_path_factory, inr_corpus):
    out = tmp_path_factory.mktemp("inr_run") / "run"
    config = TrainConfig(task="classify", data=str(inr_corpus), model="ngt", out=str(out), epochs=1, batch_size=8,
                         lr=1e-3, warmup_steps=1, model_kwargs=dict(SMALL_NGT))
    train(config, progress=False)
    return out


def edited(run, tmp_path, edit):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "model.json").read_text())
    edit(record)
    (copy / "model.json").write_text(json.dumps(record))
    return copy


def template_tensors(edit):
    def change(record):
        tensors = load(base64.b64decode(record["architecture_tensors"]))
        edit(tensors)
        record["architecture_tensors"] = base64.b64encode(save(tensors)).decode()
    return change


def huge_cnn() -> dict:
    """A CNN spec (``nngraph data zoo``'s kind) of 4 * 10^10 parameters: built for real, 160 GB."""
    from nngraph.data.zoo import FIXED_ARCHITECTURE

    layers = [{"channels": 10**5, "kernel": 3, "stride": 1, "residual": False}] * 5
    return {**FIXED_ARCHITECTURE, "layers": layers}


def refused(run, needle: str, capsys) -> None:
    with pytest.raises(NNGraphError) as info:
        nngraph.load_run(run)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    capsys.readouterr()
    assert main(["embed", str(run), str(run / "best.safetensors"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_the_untouched_runs_load(zoo_run, inr_run):
    assert nngraph.load_run(zoo_run).record["architectures"][0]["graph"]["params"]
    assert nngraph.load_run(inr_run).record["kind"] == "inr"


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.update(width=10**12), "width 1000000000000"),
    (lambda r: r.update(k_max=10**6), "k_max 1000000"),
    (lambda r: r.update(k_max=2.5), "k_max 2.5"),
    (lambda r: r.update(input_shape=[1, 10**5, 10**5]), "input_shape [1, 100000, 100000]"),
    (lambda r: r.update(input_shape=[1, -6, 6]), "input_shape [1, -6, 6]"),
    (lambda r: r["architectures"][0]["graph"].update(k_max=10**6), "architecture 0 has k_max 1000000"),
    (lambda r: r["architectures"][0]["graph"]["params"][0].update(shape=[10**6, 10**6]),
     "places '0.weight' [1000000, 1000000] outside"),
    (template_tensors(lambda t: t["arch0.node_hw"].fill_(10**6)), "node value size (node_hw)"),
    (template_tensors(lambda t: t["arch0.edge_index"].fill_(10**9)), "edges to nodes outside"),
    (template_tensors(lambda t: t["arch0.x"].fill_(float("nan"))), "NaN or infinite values in x"),
    (lambda r: r["architectures"].__setitem__(0, huge_cnn()), "parameters, over the 100,000,000"),
    (lambda r: r["architectures"].__setitem__(0, {"layers": "all"}), "architecture 0 is not a CNN spec"),
    (lambda r: r["task"]["args"].update(std=[float("inf")]), "finite positive std per target column"),
    (lambda r: r["task"]["args"].update(mean=["0.1"]), "one finite mean"),
])
def test_a_crafted_zoo_run_record_is_refused_before_allocating(zoo_run, tmp_path, capsys, edit, needle):
    refused(edited(zoo_run, tmp_path, edit), needle, capsys)


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["architectures"][0].update(hidden=10**6), "parameters, over the 100,000,000"),
    (lambda r: r["architectures"][0].update(hidden="many"), "architecture 0"),
    (lambda r: r["architectures"][0].update(exec="rm -rf /"), "is not a SIREN spec"),
])
def test_a_crafted_inr_run_record_is_refused_before_building(inr_run, tmp_path, capsys, edit, needle):
    refused(edited(inr_run, tmp_path, edit), needle, capsys)


@pytest.mark.parametrize("field, value, needle", [
    ("model_kwargs", None, "--model-args must be a JSON object, got None"),
    ("epochs", 2.5, "--epochs must be an integer, got 2.5"),
    ("compile", "yes", "--compile must be true or false"),
    ("data", 5, "--data must be a string"),
])
def test_config_values_of_another_type_are_one_line(zoo_run, tmp_path, capsys, field, value, needle):
    """Every TrainConfig field is checked against its type (a null model_kwargs was an AttributeError)."""
    run = tmp_path / "run"
    shutil.copytree(zoo_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, field: value}))
    refused(run, needle, capsys)
