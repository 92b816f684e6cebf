"""`nngraph data import`: published corpora laid out as released -> ordinary nngraph corpora.

Every imported network must compute what the original computes (checked against the
reference computations of ``originals.py``, and through nngraph's graph executor), a
model must train on every imported corpus, and bad input must fail in one line naming
the file, with nothing written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nngraph
from nngraph import cli
from nngraph.data.importers import import_cnn_zoo, import_inr_folder, import_wild_park
from nngraph.data.inr import pixel_grid
from nngraph.data.corpus import InrDataset, ZooDataset
from nngraph.train import TrainConfig, train
from tests.data import originals

QUIET = dict(log=lambda *a: None)
SMALL_NGT = {"hidden": 8, "edge_hidden": 4, "layers": 1, "heads": 2, "probes": 2}


def one_epoch(tmp_path, data, task, model="ngt", **kwargs):
    config = TrainConfig(task=task, data=str(data), model=model, out=str(tmp_path / f"run-{task}-{model}"), epochs=1,
                         batch_size=4, lr=1e-3, warmup_steps=1, model_kwargs=kwargs or dict(SMALL_NGT))
    return train(config, progress=False)


def cli_error(capsys, args) -> str:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.importing")]


# ----------------------------------------------------------------------------- INR folders


@pytest.fixture(scope="module")
def mnist_inrs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist") / "dataset"
    nets = originals.write_mnist_inrs(root)
    out = root.parent / "corpus"
    import_inr_folder(root, out, image_size=8, workers=2, **QUIET)
    return root, out, nets


def test_imported_inrs_compute_the_official_inrs(mnist_inrs):
    root, out, nets = mnist_inrs
    listed = json.loads((root / "mnist_splits.json").read_text())
    ds = InrDataset(out)
    manifest = ds.manifest
    assert manifest["config"]["import"]["format"] == "inr-folder"
    assert manifest["config"]["import"]["split_file"].endswith("mnist_splits.json")
    assert ds.spec.variant == "dwsnet" and ds.spec.depth == 2 and ds.spec.hidden == 32 and ds.spec.w0 == 30
    expected_paths = [p for s in ("train", "val", "test") for p in listed[s]["path"]]
    assert ds.column("source_path") == expected_paths
    assert ds.column("split") == [s for s in ("train", "val", "test") for _ in listed[s]["path"]]
    coords = torch.rand(50, 2) * 2 - 1
    for i, rel in enumerate(expected_paths):
        official = nets[rel]
        assert ds[i]["label"] == int(rel.split("/")[1].split("_")[-2])  # DWSNets: the folder name
        params = official.state_dict()
        for j in range(2):
            assert torch.equal(ds.params[f"hidden.{j}.weight"][i], params[f"seq.{j}.weight"])  # bit for bit
        assert torch.equal(ds.params["out.bias"][i], params["seq.2.bias"])
        with torch.no_grad():
            want = official(coords)
            assert torch.equal(ds.module(i)(coords), want)
            graph = nngraph.to_graph(ds.module(i), coords)
            got, _ = nngraph.execute(graph, coords)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            image = official(pixel_grid(8, 8)).reshape(8, 8)  # the stored image: the INR on nngraph's grid
            torch.testing.assert_close(ds.images[i], image, atol=1e-6, rtol=1e-6)
    assert all(v is None for v in manifest["items"]["psnr"])


def test_fmnist_release_layout_labels_come_from_the_files(tmp_path):
    root = tmp_path / "dataset"
    nets = originals.write_fmnist_inrs(root)
    import_inr_folder(root, tmp_path / "c", splits=root / "splits.json", image_size=4, workers=1, **QUIET)
    ds = InrDataset(tmp_path / "c")
    assert ds.labels.tolist() == list(range(7))
    coords = torch.rand(10, 2)
    for i, rel in enumerate(ds.column("source_path")):
        torch.testing.assert_close(ds.module(i)(coords), nets[rel](coords), atol=0, rtol=0)


def test_models_and_tasks_train_on_imported_inrs(tmp_path, mnist_inrs):
    _, out, _ = mnist_inrs
    result = one_epoch(tmp_path, out, "classify")
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
    result = one_epoch(tmp_path, out, "dilate", model="nggnn", hidden=8, layers=1)
    assert np.isfinite(result["test"]["mse"])


def test_inr_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    root = tmp_path / "dataset"
    nets = originals.write_mnist_inrs(root, per_split=(2, 1, 1))
    paths = list(nets)
    out = tmp_path / "out"
    args = ["data", "import", "--format", "inr-folder", str(root), "--out", str(out), "--workers", "1"]
    # a path listed in the split file but missing
    missing = root / paths[1]
    data = missing.read_bytes()
    missing.unlink()
    err = cli_error(capsys, args)
    assert str(missing) in err and "mnist_splits.json" in err and "missing" in err
    assert_nothing_written(out)
    missing.write_bytes(data)
    # an unknown parameter name
    bad = root / paths[2]
    state = torch.load(bad, weights_only=True)
    torch.save({**state, "seq.1.gamma": torch.ones(3)}, bad)
    err = cli_error(capsys, args)
    assert str(bad) in err and "unknown parameter name 'seq.1.gamma'" in err
    assert_nothing_written(out)
    # a shape that does not match the other INRs
    torch.save(originals.OfficialINR(hidden=16).state_dict(), bad)
    err = cli_error(capsys, args)
    assert str(bad) in err and "shape" in err
    assert_nothing_written(out)
    # a file that is not a checkpoint
    bad.write_bytes(b"not a zip file")
    err = cli_error(capsys, args)
    assert str(bad) in err and "not a readable PyTorch file" in err
    assert_nothing_written(out)
    torch.save(state, bad)
    # an existing corpus is never touched
    assert cli.main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = cli_error(capsys, args)
    assert "already exists" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # options of another format are refused
    err = cli_error(capsys, ["data", "import", "--format", "cnn-zoo", str(root), "--out", str(tmp_path / "z"),
                             "--image-size", "8"])
    assert "--image-size applies to inr-folder" in err


def test_inr_import_rate(tmp_path):
    """Reads and stores many INRs per second (the aim: 70,000 in <= 2 minutes needs 583/s)."""
    root = tmp_path / "dataset"
    originals.write_mnist_inrs(root, per_split=(150, 25, 25))
    manifest = import_inr_folder(root, tmp_path / "c", **QUIET)
    assert manifest["n_items"] == 200
    assert manifest["summary"]["inrs_per_second"] > 50  # a floor that a loaded 2-core machine passes


# ----------------------------------------------------------------------------- Small CNN Zoo


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "small-zoo-cifar10"
    arrays = originals.write_small_zoo(root)
    out = root.parent / "corpus"
    import_cnn_zoo(root, out, splits=root / "split.csv", shard_size=4, **QUIET)
    return root, out, arrays


def test_imported_zoo_networks_compute_the_tensorflow_networks(small_zoo):
    root, out, arrays = small_zoo
    ds = ZooDataset(out)
    meta, order = arrays["metrics"], arrays["order"]
    final = [int(r) for r in order if meta[r]["step"] == "86"]  # index-file order, final checkpoints
    assert len(ds) == len(final) == 10
    assert ds.manifest["config"]["import"]["split_file"].endswith("split.csv")
    assert ds.column("source_path") == [f"weights.npy[{r}]" for r in final]
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(3, 32, 32, 1)).astype(np.float32)  # NHWC, as TensorFlow reads them
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    for i, r in enumerate(final):
        item = ds[i]
        assert item["label"] == pytest.approx(float(meta[r]["test_accuracy"]))
        assert item["arch"]["activation"] == meta[r]["config.activation"]
        assert item["training"]["random_seed"] == meta[r]["config.random_seed"]
        want = originals.zoo_reference_forward(arrays["weights"][r], arrays["layout"], item["arch"]["activation"], images)
        model = ds.model(i)
        with torch.no_grad():
            torch.testing.assert_close(model(x).double(), torch.from_numpy(want), atol=1e-4, rtol=1e-4)
            graph = nngraph.to_graph(model, x)
            got, _ = nngraph.execute(graph, x)
            torch.testing.assert_close(got.double(), torch.from_numpy(want), atol=1e-4, rtol=1e-4)
    # the NFN split: second half test, first half train/val 80/20
    split = ds.column("split")
    assert split[5:] == ["test"] * 5 and sorted(split[:5]) == ["train"] * 4 + ["val"]


def test_models_train_on_imported_zoo(tmp_path, small_zoo):
    _, out, _ = small_zoo
    result = one_epoch(tmp_path, out, "generalize", model="nfn-hnp", hidden_chan=8, hidden_layers=1, head_hidden=16)
    assert np.isfinite(result["test"]["kendall_tau"])


def test_zoo_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    root = tmp_path / "zoo"
    originals.write_small_zoo(root, runs=4)
    out = tmp_path / "out"
    args = ["data", "import", "--format", "cnn-zoo", str(root), "--out", str(out)]
    layout = (root / "layout.csv").read_text()
    # a shape that does not match the layout's span
    (root / "layout.csv").write_text(layout.replace('"(16, 10)"', '"(16, 11)"'))
    err = cli_error(capsys, args)
    assert "layout.csv" in err and "(16, 11)" in err
    assert_nothing_written(out)
    # an unknown parameter name
    (root / "layout.csv").write_text(layout.replace("sequential/dense/bias:0", "sequential/dense/gamma:0"))
    err = cli_error(capsys, args)
    assert "layout.csv" in err and "unknown parameter name 'sequential/dense/gamma:0'" in err
    assert_nothing_written(out)
    (root / "layout.csv").write_text(layout)
    # a truncated .npy
    data = (root / "weights.npy").read_bytes()
    (root / "weights.npy").write_bytes(data[: len(data) // 2])
    err = cli_error(capsys, args)
    assert "weights.npy" in err and "truncated" in err
    assert_nothing_written(out)
    (root / "weights.npy").write_bytes(data)
    # an index file of another collection
    (root / "split.csv").write_text("0\n99999\n")
    err = cli_error(capsys, args + ["--splits", str(root / "split.csv")])
    assert "split.csv" in err and "outside" in err
    assert_nothing_written(out)
    assert cli.main(args) == 0  # without an index file: the file's order


# ----------------------------------------------------------------------------- CNN Wild Park


@pytest.fixture(scope="module")
def wild_park(tmp_path_factory):
    root = tmp_path_factory.mktemp("park") / "dataset"
    with pytest.MonkeyPatch.context() as mp:
        nets = originals.write_wild_park(root, mp)
    out = root.parent / "corpus"
    import_wild_park(root, out, shard_size=3, workers=2, **QUIET)
    return root, out, nets


def test_imported_wild_park_networks_compute_the_originals(wild_park):
    root, out, nets = wild_park
    ds = ZooDataset(out)
    assert len(ds) == 8 and len(ds.manifest["architectures"]) == 3
    assert ds.manifest["config"]["import"]["format"] == "wild-park"
    listed = json.loads((root / "cnn_park_splits.json").read_text())
    assert ds.column("source_path") == [p for s in ("train", "val", "test") for p in listed[s]["path"]]
    score = {p: v for s in ("train", "val", "test") for p, v in zip(listed[s]["path"], listed[s]["score"])}
    x = torch.randn(2, 3, 10, 10)
    for i, rel in enumerate(ds.column("source_path")):
        config, sd = nets[rel]
        assert ds[i]["label"] == pytest.approx(score[rel])
        model = ds.model(i)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
        want = originals.park_reference_forward(config, sd, x)
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
            graph = nngraph.to_graph(model, x)
            got, _ = nngraph.execute(graph, x)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            permuted = nngraph.permute_neurons(model, seed=i, example_input=x)
            torch.testing.assert_close(permuted(x), want, atol=1e-5, rtol=1e-5)


def test_models_train_on_imported_wild_park(tmp_path, wild_park):
    _, out, _ = wild_park
    result = one_epoch(tmp_path, out, "generalize")
    assert np.isfinite(result["test"]["kendall_tau"])


def test_wild_park_bad_input_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    root = tmp_path / "dataset"
    nets = originals.write_wild_park(root, monkeypatch, per_split=(2, 1, 1))
    out = tmp_path / "out"
    args = ["data", "import", "--format", "wild-park", str(root), "--out", str(out), "--workers", "1"]
    first = root / next(iter(nets))
    data = first.read_bytes()
    first.unlink()
    err = cli_error(capsys, args)
    assert str(first) in err and "cnn_park_splits.json" in err
    assert_nothing_written(out)
    first.write_bytes(data)
    config, sd = nets[next(iter(nets))]
    fake = originals.fake_omegaconf(monkeypatch)
    # a parameter shape that does not match the checkpoint's config
    originals.save_park_checkpoint(first, config, {**sd, "layers.0.weight": torch.zeros(8, 3, 5, 5)}, fake)
    err = cli_error(capsys, args)
    assert str(first) in err and "layers.0.weight has shape (8, 3, 5, 5)" in err
    assert_nothing_written(out)
    # an unknown parameter name
    originals.save_park_checkpoint(first, config, {**sd, "layers.0.kernel": torch.zeros(8, 3, 3, 3)}, fake)
    err = cli_error(capsys, args)
    assert str(first) in err and "unknown parameter name 'layers.0.kernel'" in err
    assert_nothing_written(out)


def test_fast_torch_reader_equals_torch_load_or_declines(tmp_path):
    from nngraph.data.importers.torchfile import read_torch_file

    state = {"w": torch.arange(12.0).reshape(3, 4).t(), "b": torch.arange(10.0)[3:7], "n": torch.arange(3),
             "label": 7, "empty": torch.zeros(0, 2)}
    torch.save(state, tmp_path / "new.pth")
    got = read_torch_file(tmp_path / "new.pth")
    assert got["label"] == 7
    for key in ("w", "b", "n", "empty"):
        assert got[key].dtype == state[key].numpy().dtype and np.array_equal(got[key], state[key].numpy())
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert read_torch_file(tmp_path / "legacy.pth") is None  # the caller falls back to torch.load
    torch.save({"m": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")
    assert read_torch_file(tmp_path / "module.pth") is None  # pickled classes are never imported
    data = (tmp_path / "new.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 100])
    assert read_torch_file(tmp_path / "cut.pth") is None
