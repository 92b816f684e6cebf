"""Corpora under bad conditions: read-only, moved, damaged, odd options; and shards whose
bytes depend only on their tensors."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

import nngraph.data.store as store
from nngraph.data.build import build_inr_corpus
from nngraph.data.images import load_images
from nngraph.data.corpus import InrDataset
from nngraph.data.store import MANIFEST, read_manifest, shard_metadata, write_shard
from nngraph.errors import DataError


def test_shards_of_equal_tensors_are_byte_identical(tmp_path):
    """safetensors orders its metadata by a hash map; nngraph's shards do not depend on it."""
    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2), "item.image": torch.zeros(2, 4)}
    results = {"psnr": [40.5, 41.0], "steps": [10, 12]}
    digests = set()
    for i in range(8):  # 3 metadata keys: 6 orders, so one of 8 hash-map writes differs almost surely
        info = write_shard(tmp_path / f"s{i}.safetensors", tensors, results)
        data = (tmp_path / f"s{i}.safetensors").read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        digests.add(info["sha256"])
    assert len(digests) == 1
    loaded = store.load_shard(tmp_path, {"file": "s0.safetensors", **info})
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert json.loads(shard_metadata(data)["items"]) == results


def test_a_resumed_build_equals_an_uninterrupted_one_byte_for_byte(tmp_path, tiny, tiny_corpus):
    root = tmp_path / "c"
    build_inr_corpus(root, **tiny)
    (root / "shard-00001.safetensors").unlink()  # as if killed before this shard was written
    build_inr_corpus(root, **tiny)
    resumed = read_manifest(root)["shards"]
    uninterrupted = read_manifest(tiny_corpus)["shards"]
    assert [s["sha256"] for s in resumed] == [s["sha256"] for s in uninterrupted]
    for entry in resumed:
        assert (root / entry["file"]).read_bytes() == (tiny_corpus / entry["file"]).read_bytes()


def test_rerun_of_a_complete_build_writes_nothing(tiny, tiny_corpus, monkeypatch):
    before = (tiny_corpus / MANIFEST).stat().st_mtime_ns, (tiny_corpus / MANIFEST).read_bytes()

    def read_only(path, data):
        raise store.storage_error(path, OSError(30, "Read-only file system"))

    monkeypatch.setattr(store, "atomic_write_bytes", read_only)
    manifest = build_inr_corpus(tiny_corpus, **{**tiny, "command": "nngraph data inrs --out elsewhere"})
    assert manifest["complete"]
    assert ((tiny_corpus / MANIFEST).stat().st_mtime_ns, (tiny_corpus / MANIFEST).read_bytes()) == before


def _copy(corpus, tmp_path, command: str | None = None):
    moved = tmp_path / "moved"
    shutil.copytree(corpus, moved)
    manifest = json.loads((moved / MANIFEST).read_text())
    if command is not None:
        manifest["command"] = command
    return moved, manifest


def test_repair_hints_quote_the_corpus_current_folder(tmp_path, tiny_corpus):
    moved, manifest = _copy(tiny_corpus, tmp_path, "nngraph data inrs --out /old/place --limit 30 --steps 40")
    (moved / MANIFEST).write_text(json.dumps(manifest))
    (moved / "shard-00002.safetensors").write_bytes(b"damaged")
    with pytest.raises(DataError) as info:
        InrDataset(moved, "test")
    message = str(info.value)
    assert f"--out {moved} --limit 30" in message and "/old/place" not in message and "shard-00002" in message
    manifest["complete"] = False
    (moved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"incomplete.*--out {moved}"):
        InrDataset(moved)


@pytest.mark.parametrize("key", ["shards", "items", "kind"])
def test_a_manifest_missing_a_key_is_a_one_line_data_error(tmp_path, tiny_corpus, key):
    moved, manifest = _copy(tiny_corpus, tmp_path)
    del manifest[key]
    (moved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"lacks the key '{key}'"):
        InrDataset(moved)


def test_images_option_pointing_at_a_file_says_so(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not images")
    with pytest.raises(DataError, match="notes.txt is a file, not a folder"):
        load_images(str(notes))


def test_limit_larger_than_the_dataset_is_refused_with_its_size():
    with pytest.raises(DataError, match="--limit 5000 is larger than digits, which holds 1797 images"):
        load_images("digits", limit=5000)
    assert len(load_images("digits", limit=1797)) == 1797


def test_rebuild_hint_replaces_only_the_out_of_a_data_command():
    from nngraph.data.store import rebuild_hint

    assert rebuild_hint("/new/c", {"command": "nngraph data inrs --out old --limit 3"}) == \
        "rerun `nngraph data inrs --out /new/c --limit 3`"
    assert rebuild_hint("/new/c", {"command": "nngraph data zoo --out=old"}) == "rerun `nngraph data zoo --out=/new/c`"
    # the demo's --out is the folder above the corpus: quoted as it was
    assert rebuild_hint("/new/c", {"command": "nngraph demo --out runs/demo"}) == "rerun `nngraph demo --out runs/demo`"
