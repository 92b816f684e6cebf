import pytest
import torch

from nngraph.data import zoo
from nngraph.data.build import build_zoo_corpus
from nngraph.data.images import load_images
from nngraph.data.corpus import ZooDataset
from nngraph.data.store import read_manifest

OPTS = dict(count=3, images="digits", seed=0, test_limit=100, shard_size=2, workers=1, progress=False,
            log=lambda *a: None)


def _cheap_training(rng):
    """The zoo's sampled recipe, cut to a few steps so that the test stays fast."""
    return {**_real_sample_training(rng), "steps": 5, "batch_size": 16}


_real_sample_training = zoo.sample_training


@pytest.fixture(autouse=True, scope="module")
def _fast_training():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo, "sample_training", _cheap_training)
        yield


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory, _fast_training):
    root = tmp_path_factory.mktemp("zoo") / "z"
    build_zoo_corpus(root, **OPTS)
    return root


def _accuracy(net, images, labels):
    with torch.no_grad():
        return float((net(images[:, None]).argmax(1) == labels).float().mean())


def test_zoo_round_trip_and_labels_reproduce(zoo_root):
    m = read_manifest(zoo_root, "zoo")
    assert m["layout"] == "per_item" and m["n_items"] == 3 and len(m["shards"]) == 2
    ds = ZooDataset(zoo_root)
    test = load_images("digits").subset("test")
    for i in range(len(ds)):
        item = ds[i]
        assert 0.0 <= item["label"] <= 1.0 and "layers" in item["arch"]
        acc = _accuracy(ds.model(i), test.images[:100], test.labels[:100])
        assert acc == pytest.approx(item["label"], abs=1e-6)
    stats = ds.weight_stats()
    assert all(std >= 0 for _, std in stats.values())


def test_zoo_rerun_does_nothing_and_heterogeneous_stack_refused(zoo_root, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in zoo_root.iterdir()}
    monkeypatch.setattr(zoo, "generate", lambda *a, **k: pytest.fail("retrained a finished shard"))
    build_zoo_corpus(zoo_root, **OPTS)
    assert {p.name: p.stat().st_mtime_ns for p in zoo_root.glob("shard-*")} == {
        k: v for k, v in before.items() if k.startswith("shard-")}
    ds = ZooDataset(zoo_root)
    if len({ds[i]["arch"]["layers"].__repr__() for i in range(len(ds))}) > 1:
        from nngraph.errors import DataError

        with pytest.raises(DataError, match="--fixed-arch"):
            ds.stacked_params()


def test_fixed_arch_zoo_is_stacked(tmp_path):
    root = tmp_path / "fz"
    build_zoo_corpus(root, fixed_arch=True, **{**OPTS, "count": 2})
    ds = ZooDataset(root)
    stacked = ds.stacked_params()
    assert read_manifest(root)["layout"] == "stacked"
    assert all(v.shape[0] == 2 for v in stacked.values())
    assert torch.equal(stacked[next(iter(stacked))][1], ds[1]["params"][next(iter(stacked))])
