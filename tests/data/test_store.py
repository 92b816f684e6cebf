import json
import shutil

import pytest
import torch

from nngraph.data import build as build_mod
from nngraph.data.build import build_inr_corpus
from nngraph.data.fitting import SirenSpec, psnr_of
from nngraph.data.images import load_images
from nngraph.data.inr import pixel_grid
from nngraph.data.corpus import InrDataset, ZooDataset
from nngraph.data.store import FORMAT_VERSION, MANIFEST, read_manifest
from nngraph.errors import DataError


def _snapshot(root):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.glob("shard-*.safetensors"))}


def test_manifest_round_trip(tiny_corpus):
    m = read_manifest(tiny_corpus, "inr")
    assert m["format_version"] == FORMAT_VERSION and m["complete"]
    assert m["n_items"] == 30 and len(m["shards"]) == 3
    assert SirenSpec.from_dict(m["architectures"][0]) == SirenSpec(variant="dwsnet")
    assert m["config"]["recipe"]["steps"] == 40
    source = load_images("digits", limit=30)
    assert m["items"]["label"] == source.labels.tolist()
    assert m["items"]["source_index"] == source.index.tolist()
    assert m["items"]["split"] == source.split.tolist()
    assert all(isinstance(p, float) for p in m["items"]["psnr"])
    assert len(set(m["items"]["seed"])) == 30


def test_dataset_items_render_to_recorded_psnr(tiny_corpus):
    ds = InrDataset(tiny_corpus)
    source = load_images("digits", limit=30)
    assert len(ds) == 30
    for i in range(0, 30, 7):
        item = ds[i]
        assert torch.equal(item["image"], source.images[i])
        assert item["label"] == int(source.labels[i])
        net = ds.module(i)
        with torch.no_grad():
            rendered = net(pixel_grid(8, 8)).reshape(1, 8, 8)
        assert abs(float(psnr_of(rendered, item["image"][None])[0]) - item["psnr"]) < 0.02


def test_splits_stacked_params_and_train_stats(tiny_corpus):
    full = InrDataset(tiny_corpus)
    train, test = InrDataset(tiny_corpus, "train"), InrDataset(tiny_corpus, "test")
    counts = {s: len(InrDataset(tiny_corpus, s)) for s in ("train", "val", "test")}
    assert sum(counts.values()) == 30 and counts["train"] > counts["test"] > 0
    stacked = train.stacked_params()
    assert stacked["hidden.1.weight"].shape == (counts["train"], 32, 32)
    assert stacked["out.bias"].shape == (counts["train"], 1)
    stats = test.weight_stats()  # always from the training split
    w = stacked["hidden.0.weight"].double()
    assert stats["hidden.0.weight"] == pytest.approx((float(w.mean()), float(w.std())))
    assert set(stats) == set(stacked)
    assert len(full.stacked_params()["out.weight"]) == 30


def test_rerun_of_complete_build_does_nothing(tiny_corpus, monkeypatch, tiny):
    before = _snapshot(tiny_corpus)
    manifest = (tiny_corpus / MANIFEST).read_bytes()
    monkeypatch.setattr(build_mod, "fit_inrs", lambda *a, **k: pytest.fail("refit a finished shard"))
    build_inr_corpus(tiny_corpus, **tiny)
    assert _snapshot(tiny_corpus) == before
    assert json.loads((tiny_corpus / MANIFEST).read_bytes())["items"] == json.loads(manifest)["items"]


def test_resume_after_interrupt_fits_only_missing_shards(tmp_path, monkeypatch, tiny):
    root = tmp_path / "c"
    real = build_mod.fit_inrs
    calls = []

    def flaky(images, *a, **k):
        if calls:
            raise KeyboardInterrupt  # killed while fitting the second shard
        calls.append(len(images))
        return real(images, *a, **k)

    monkeypatch.setattr(build_mod, "fit_inrs", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_inr_corpus(root, **tiny)
    first = _snapshot(root)
    assert list(first) == ["shard-00000.safetensors"]
    assert not read_manifest(root)["complete"]
    with pytest.raises(DataError, match="incomplete.*rerun"):
        InrDataset(root)

    sizes = []
    monkeypatch.setattr(build_mod, "fit_inrs", lambda images, *a, **k: sizes.append(len(images)) or real(images, *a, **k))
    build_inr_corpus(root, **tiny)
    assert sizes == [10, 10]  # only shards 1 and 2
    assert _snapshot(root)["shard-00000.safetensors"] == first["shard-00000.safetensors"]
    assert len(InrDataset(root)) == 30


def test_shard_written_but_not_recorded_is_adopted(tiny_corpus, tmp_path, monkeypatch, tiny):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    m = json.loads((root / MANIFEST).read_text())
    m["shards"][2]["complete"] = False  # killed between writing the shard and the manifest
    m["items"]["psnr"][20:] = [None] * 10
    m["complete"] = False
    (root / MANIFEST).write_text(json.dumps(m))
    monkeypatch.setattr(build_mod, "fit_inrs", lambda *a, **k: pytest.fail("refit an adopted shard"))
    build_inr_corpus(root, **tiny)
    assert read_manifest(root)["items"]["psnr"] == read_manifest(tiny_corpus)["items"]["psnr"]


def test_truncated_shard_is_rejected_then_rebuilt(tiny_corpus, tmp_path, tiny):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    shard = root / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match="shard-00001.safetensors.*truncated.*rerun") as e:
        InrDataset(root)
    assert "\n" not in str(e.value)
    build_inr_corpus(root, **tiny)  # refits the bad shard only
    assert len(InrDataset(root)) == 30


def test_corrupt_missing_and_wrong_version(tiny_corpus, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    shard = root / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00000.*SHA-256"):
        InrDataset(root)
    shard.unlink()
    with pytest.raises(DataError, match="shard-00000.safetensors is missing"):
        InrDataset(root)
    m = json.loads((root / MANIFEST).read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="format version .*rebuild"):
        InrDataset(root)
    (root / MANIFEST).write_text("{ not json")
    with pytest.raises(DataError, match="not valid JSON"):
        InrDataset(root)
    with pytest.raises(DataError, match="does not exist"):
        InrDataset(tmp_path / "nothing")
    with pytest.raises(DataError, match="'inr' corpus, not 'zoo'"):
        ZooDataset(tiny_corpus)


def test_other_options_into_same_folder_rejected(tiny_corpus, tiny):
    with pytest.raises(DataError, match="other options \\(differs in recipe\\)"):
        build_inr_corpus(tiny_corpus, **{**tiny, "steps": 41})


def test_leftover_temp_file_of_a_killed_write_is_removed(tiny_corpus, tmp_path, tiny):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    (root / ".shard-00001.safetensors.x1y2.tmp").write_bytes(b"half a shard")
    build_inr_corpus(root, **tiny)
    assert not list(root.glob(".*.tmp"))
    assert len(InrDataset(root)) == 30
