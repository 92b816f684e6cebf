"""Portable runs: load_run without the corpus, predict / embed, `nngraph predict | embed | eval --predictions`."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import nngraph
from nngraph.checkpoint import load_weights
from nngraph.cli import main
from nngraph.data.corpus import InrDataset
from nngraph.errors import NNGraphError
from nngraph.train import TrainConfig, Trainer, train

SMALL_NGT = {"hidden": 16, "edge_hidden": 8, "layers": 1, "heads": 2, "probes": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, inr_corpus):
    """(folder, run): a copy of the INR corpus in folder/inrs and an NG-T run trained on it in
    folder/run, started from folder with the corpus given by a relative path ("inrs")."""
    folder = tmp_path_factory.mktemp("portable") / "a"
    shutil.copytree(inr_corpus, folder / "inrs")
    config = TrainConfig(task="classify", data="inrs", model="ngt", out=str(folder / "run"), epochs=1, batch_size=8,
                         lr=3e-3, warmup_steps=2, model_kwargs=dict(SMALL_NGT))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        train(config, progress=False)
    return folder, folder / "run"


def split_networks(folder) -> list[torch.nn.Module]:
    """The test split's INRs (of the corpus copy in folder/inrs) as torch modules."""
    return split_networks_of(folder / "inrs")


def split_networks_of(corpus) -> list[torch.nn.Module]:
    """The test split's INRs of ``corpus`` as torch modules."""
    dataset = InrDataset(corpus, "test")
    networks = []
    for i in range(len(dataset)):
        network = dataset.spec.build()
        network.load_state_dict(dataset[i]["params"])
        networks.append(network.eval())
    return networks


def test_model_json_records_what_rebuilds_the_model(trained):
    folder, run = trained
    record = json.loads((run / "model.json").read_text())
    assert record["kind"] == "inr" and record["input_shape"] == [2] and record["k_max"] == 1
    assert record["task"] == {"name": "classify", "args": {"num_classes": 10}}
    assert record["model_args"]["readout"] == "invariant" and record["model_args"]["out_dim"] == 10
    assert record["corpus_path"] == {"absolute": str((folder / "inrs").resolve()), "relative": "../inrs"}


def test_load_run_elsewhere_predicts_what_the_trainer_predicts(trained, tmp_path, monkeypatch):
    folder, run = trained
    networks = split_networks(folder)
    monkeypatch.chdir(tmp_path)  # the corpus path "inrs" means nothing here, and the run does not need it
    loaded = nngraph.load_run(run)
    assert not loaded.model.training
    predictions = loaded.predict(networks, batch_size=4)
    config = dataclasses.replace(TrainConfig.read(run / "config.json"), data=str(folder / "inrs"))
    trainer = Trainer(config)
    trainer.load_model(load_weights(run / "best.safetensors")[0], run / "best.safetensors")
    output, _, _ = trainer.test_examples(len(networks))
    torch.testing.assert_close(predictions["probabilities"], torch.softmax(output, dim=1))
    assert predictions["label"].tolist() == trainer.predict("test")["predicted"].tolist()


def test_embeddings_are_per_network_invariant_and_read_other_depths(trained):
    folder, run = trained
    loaded = nngraph.load_run(run)
    networks = split_networks(folder)
    z = loaded.embed(networks)
    assert z.shape == (len(networks), 3 * SMALL_NGT["hidden"])  # [mean, max, output neuron] of the hidden states
    alone = loaded.embed(networks[:1])
    torch.testing.assert_close(alone[0], z[0], atol=1e-5, rtol=1e-5)  # batch-mates change nothing
    permuted = nngraph.permute_neurons(networks[0], seed=3)
    torch.testing.assert_close(loaded.embed([permuted])[0], z[0], atol=1e-4, rtol=1e-4)
    spec = InrDataset(folder / "inrs", "test").spec
    deeper = dataclasses.replace(spec, depth=spec.depth + 2).build().eval()  # a depth the run never saw
    out = loaded.predict([deeper, networks[0]])
    assert out["probabilities"].shape == (2, 10) and torch.allclose(out["probabilities"].sum(1), torch.ones(2))
    torch.testing.assert_close(out["probabilities"][1], loaded.predict(networks[:1])["probabilities"][0])
    assert loaded.embed([deeper]).shape == (1, 3 * SMALL_NGT["hidden"])


def test_networks_the_model_cannot_read_are_refused_in_one_line(trained):
    folder, run = trained
    loaded = nngraph.load_run(run)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    with pytest.raises(NNGraphError, match="inputs of shape 2"):
        loaded.predict([cnn])
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    wide = nngraph.to_graph(mlp, torch.zeros(1, 2), k_max=3)
    with pytest.raises(NNGraphError, match="3x3 kernel window; this run's model reads at most 1x1"):
        loaded.predict([wide])
    loaded.record["activations"] = ["none", "relu"]  # a model made before tanh was known
    with pytest.raises(NNGraphError, match="activation this run's model was not made for"):
        loaded.embed([mlp])
    with pytest.raises(NNGraphError, match="torch modules or NeuralGraphs"):
        loaded.predict(["net.pt"])


def test_cli_predict_embed_and_eval_predictions(trained, tmp_path, monkeypatch, capsys):
    folder, run = trained
    networks = split_networks(folder)[:3]
    files = [tmp_path / "a.safetensors", tmp_path / "b.pt", tmp_path / "c,d.pth"]
    save_file(networks[0].state_dict(), files[0])
    torch.save(networks[1].state_dict(), files[1])
    torch.save(networks[2].state_dict(), files[2])
    monkeypatch.chdir(tmp_path)
    expected = nngraph.load_run(run).predict(networks)
    assert main(["predict", str(run), *map(str, files), "--out", "p.csv", "--device", "cpu"]) == 0
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["network", "label"] + [f"p{c}" for c in range(10)]
    assert [r[0] for r in rows[1:]] == list(map(str, files))
    assert [int(r[1]) for r in rows[1:]] == expected["label"].tolist()
    np.testing.assert_allclose(np.array([r[2:] for r in rows[1:]], dtype=float), expected["probabilities"], rtol=1e-6)

    assert main(["embed", str(run), *map(str, files), "--out", "z.npy", "--device", "cpu"]) == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (3, 3 * SMALL_NGT["hidden"])
    assert main(["embed", str(run), *map(str, files), "--out", "z.csv", "--device", "cpu"]) == 0
    rows = list(csv.reader((tmp_path / "z.csv").open()))
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], dtype=float), z, rtol=1e-6)

    # eval from another directory: the run's corpus through model.json's absolute path
    assert main(["eval", str(run), "--predictions", "test.csv", "--device", "cpu"]) == 0
    assert (tmp_path / "test.csv").read_text().splitlines()[0] == "index,target,prediction,loss"
    rows = list(csv.DictReader((tmp_path / "test.csv").open()))
    dataset = InrDataset(folder / "inrs", "test")
    assert [int(r["index"]) for r in rows] == dataset.rows.tolist()
    assert [int(float(r["target"])) for r in rows] == dataset.labels.tolist()
    predicted = nngraph.load_run(run).predict(split_networks(folder))["label"].tolist()
    assert [int(float(r["prediction"])) for r in rows] == predicted and "loss" in rows[0]


def test_cli_bad_input_is_one_line_with_exit_code_2(trained, tmp_path, capsys):
    folder, run = trained
    other = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    torch.export.save(torch.export.export(other, (torch.zeros(1, 2),)), tmp_path / "other.pt2")
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "model.json").write_text('{"kind": "inr"')
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    record = json.loads((edited / "model.json").read_text())
    record["model_args"]["hidden"] = 4096  # not the trained model, and a large one
    (edited / "model.json").write_text(json.dumps(record))
    missing_record = tmp_path / "old"
    shutil.copytree(run, missing_record)
    (missing_record / "model.json").unlink()
    cases = [
        (["predict", str(tmp_path / "nothing"), str(tmp_path / "other.safetensors")], "not a run folder"),
        (["predict", str(damaged), str(tmp_path / "other.safetensors")], "not readable JSON"),
        (["embed", str(missing_record), str(tmp_path / "other.safetensors")], "no model.json"),
        (["embed", str(edited), str(tmp_path / "other.safetensors")], "does not describe the model of"),
        (["predict", str(run), str(tmp_path / "other.safetensors")], "fits none of this run's 1 architecture"),
        (["predict", str(run), str(tmp_path / "other.pt2")], "pass a state_dict as .safetensors"),
        (["predict", str(run), str(tmp_path / "absent.pt")], "is not a file"),
        (["embed", str(run), str(tmp_path / "other.safetensors"), "--out", "z.txt"], "a .npy or .csv file"),
    ]
    for argv, message in cases:
        assert main([*argv, "--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (argv, err)


def test_eval_finds_the_corpus_beside_a_moved_run(trained, tmp_path, monkeypatch, capsys):
    """Run and corpus moved together: the recorded relative path ("inrs" from where training
    ran, the absolute path) no longer exists, the run-relative one does."""
    folder, run = trained
    moved = tmp_path / "b"
    shutil.copytree(folder, moved)
    hidden = folder.with_name("a-away")
    folder.rename(hidden)  # the absolute path recorded at training goes away
    try:
        monkeypatch.chdir(tmp_path)
        assert main(["eval", str(moved / "run"), "--device", "cpu"]) == 0
        assert "test" in capsys.readouterr().out
    finally:
        hidden.rename(folder)


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """An NG-GNN generalization run on a zoo of 10 CNNs of mixed architectures (20 training steps each)."""
    from nngraph.data import zoo
    from nngraph.data.build import build_zoo_corpus

    folder = tmp_path_factory.mktemp("zoo-run")
    sample = zoo.sample_training
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo, "sample_training", lambda rng: {**sample(rng), "steps": 20, "batch_size": 32})
        build_zoo_corpus(folder / "zoo", 10, "digits", seed=0, test_limit=200, shard_size=5, workers=1,
                         progress=False, log=lambda *a: None)
    config = TrainConfig(task="generalize", data=str(folder / "zoo"), model="nggnn", out=str(folder / "run"), epochs=1,
                         batch_size=4, lr=3e-3, warmup_steps=1,
                         model_kwargs={"hidden": 16, "edge_hidden": 8, "layers": 1})
    train(config, progress=False)
    return config


def test_a_zoo_run_of_mixed_architectures_rebuilds_and_reads_other_depths(zoo_run, tmp_path):
    from nngraph.data.zoo import build_cnn

    loaded = nngraph.load_run(zoo_run.out)
    archs = loaded.record["architectures"]
    assert len({len(a["layers"]) for a in archs}) > 1  # the example mixed depths
    trainer = Trainer(zoo_run)
    trainer.load_model(load_weights(loaded.path / "best.safetensors")[0], loaded.path / "best.safetensors")
    dataset = trainer.loaders["train"].dataset
    predictions = loaded.predict([dataset.model(i) for i in range(len(dataset))], batch_size=3)
    torch.testing.assert_close(predictions["prediction"], trainer.predict("train")["predicted"])
    shallow = build_cnn({**archs[0], "layers": archs[0]["layers"][:1]}).eval()  # one conv layer: a new depth
    out = loaded.predict([shallow])["prediction"]
    assert out.shape == (1,) and 0 < float(out) < 1
    assert loaded.embed([shallow, dataset.model(0)]).shape == (2, (2 + 10) * 16)  # mean, max, 10 outputs
    wide = build_cnn({**archs[0], "layers": [{**archs[0]["layers"][0], "kernel": 7}]}).eval()
    with pytest.raises(NNGraphError, match="7x7 kernel window; this run's model reads at most 5x5"):
        loaded.predict([wide])
    # a state_dict file is matched to the run's architectures by its tensors, never by a guess
    save_file(dataset.model(0).state_dict(), tmp_path / "net.safetensors")
    network = loaded.load_network(tmp_path / "net.safetensors")
    torch.testing.assert_close(loaded.predict([network])["prediction"], predictions["prediction"][:1])
    shapes = {k: v.shape for k, v in network.state_dict().items()}
    arch = next(a for a in archs if {k: v.shape for k, v in build_cnn(a).state_dict().items()} == shapes)
    other = "relu" if arch["activation"] != "relu" else "tanh"
    loaded.record["architectures"].append({**arch, "activation": other})  # same tensors, another function
    with pytest.raises(NNGraphError, match="fits 2 of this run's architectures"):
        loaded.load_network(tmp_path / "net.safetensors")


def test_an_editing_run_predicts_edited_parameters_and_refuses_embeddings(tmp_path, inr_corpus):
    """dilate: the task's image size, w0 and offset come back from model.json; the per-parameter
    readout's edits equal the Trainer's; such a model has no per-network embedding."""
    config = TrainConfig(task="dilate", data=str(inr_corpus), model="ngt", out=str(tmp_path / "run"), epochs=1,
                         batch_size=8, warmup_steps=1,
                         model_kwargs={k: SMALL_NGT[k] for k in SMALL_NGT if k != "probes"})
    train(config, progress=False)
    loaded = nngraph.load_run(tmp_path / "run")
    trainer = Trainer(config)
    trainer.load_model(load_weights(tmp_path / "run" / "best.safetensors")[0], tmp_path / "run" / "best.safetensors")
    output, targets, batch = trainer.test_examples(3)
    expected = trainer.task.edited_params(output, targets, batch)
    got = loaded.predict(split_networks_of(inr_corpus)[:3])
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    with pytest.raises(NNGraphError, match="per-parameter readout, which makes no per-network embedding"):
        loaded.embed(split_networks_of(inr_corpus)[:1])
