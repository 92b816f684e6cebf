"""Files someone else made stay harmless: import sources and corpora are read without
running code, without leaving their folder, without allocating what a crafted number
claims, and with their labels checked; imports stay consistent under kills, Ctrl-C and
concurrent writers. Every refusal is one line (NNGraphError, exit status 2)."""

from __future__ import annotations

import csv
import gzip
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from nngraph import cli
from nngraph.data import park
from nngraph.data.build import build_inr_corpus
from nngraph.data.importers import import_cnn_zoo, import_inr_folder, import_wild_park, inr_folder, torchfile
from nngraph.data.corpus import Corpus, InrDataset, ZooDataset
from nngraph.data.store import MANIFEST, read_manifest, write_shard
from nngraph.errors import DataError
from tests.data import originals

QUIET = dict(log=lambda *a: None)


def cli_error(capsys, args) -> str:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def dead_pid() -> int:
    """The PID of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class Payload:
    """Unpickling this calls os.mkdir(marker): proof that a file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# ----------------------------------------------------------------------------- 1. no code runs


def test_legacy_wild_park_checkpoint_is_refused_without_running_its_payload(tmp_path, capsys, monkeypatch):
    root = tmp_path / "park"
    nets = originals.write_wild_park(root, monkeypatch, per_split=(1, 1, 1))
    first = root / next(iter(nets))
    config, sd = nets[next(iter(nets))]
    fake = originals.fake_omegaconf(monkeypatch)
    marker = tmp_path / "payload-ran"
    checkpoint = {"model": sd, "config": originals.omegaconf_config(fake, config), "extra": Payload(marker)}
    args = ["data", "import", "--format", "wild-park", str(root), "--out", str(tmp_path / "out"), "--workers", "1"]
    torch.save(checkpoint, first, _use_new_zipfile_serialization=False)  # the legacy format
    err = cli_error(capsys, args)
    assert str(first) in err and "legacy" in err and "--trust" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.save(checkpoint, first)  # the zip format: read by the inert unpickler, the payload stays a record
    assert cli.main(args) == 0
    assert not marker.exists() and len(ZooDataset(tmp_path / "out")) == 3
    # --trust is the user's word that the file is safe: the legacy file is read (with its code)
    checkpoint.pop("extra")
    torch.save(checkpoint, first, _use_new_zipfile_serialization=False)
    assert cli.main(args[:-4] + ["--out", str(tmp_path / "trusted"), "--workers", "1", "--trust"]) == 0
    assert len(ZooDataset(tmp_path / "trusted")) == 3
    err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out", str(tmp_path / "x"),
                             "--trust"])
    assert "--trust applies to wild-park" in err


# ----------------------------------------------------------------------------- 2. paths stay inside


@pytest.fixture(name="inr_source")
def _inr_source(tmp_path):
    root = tmp_path / "dataset"
    nets = originals.write_mnist_inrs(root, per_split=(2, 1, 1))
    return root, list(nets)


def _edit_splits(root: Path, edit) -> None:
    path = root / "mnist_splits.json"
    table = json.loads(path.read_text())
    edit(table)
    path.write_text(json.dumps(table))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_split_file_paths_outside_the_source_are_refused(tmp_path, capsys, inr_source, how):
    root, rels = inr_source
    victim = tmp_path / "outside" / "victim.pth"
    victim.parent.mkdir()
    shutil.copy(root / rels[0], victim)
    if how == "symlink":
        (root / rels[1]).unlink()
        (root / rels[1]).symlink_to(victim)
        shown = rels[1]
    else:
        shown = "../outside/victim.pth" if how == "dotdot" else str(victim)
        _edit_splits(root, lambda t: t["train"]["path"].__setitem__(1, shown))
    out = tmp_path / "out"
    err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out", str(out)])
    assert "outside" in err and str(victim) in err and shown.split("/")[-1] in err
    assert not out.exists()


def test_source_files_of_a_cnn_zoo_that_link_outside_are_refused(tmp_path, capsys):
    root = tmp_path / "zoo"
    originals.write_small_zoo(root, runs=2)
    elsewhere = tmp_path / "elsewhere.npy"
    (root / "weights.npy").rename(elsewhere)
    (root / "weights.npy").symlink_to(elsewhere)
    err = cli_error(capsys, ["data", "import", "--format", "cnn-zoo", str(root), "--out", str(tmp_path / "out")])
    assert "weights.npy" in err and "outside" in err


def test_a_split_file_found_in_the_source_must_not_link_outside(tmp_path, capsys, inr_source):
    root, _ = inr_source
    (root / "mnist_splits.json").rename(tmp_path / "elsewhere.json")
    (root / "mnist_splits.json").symlink_to(tmp_path / "elsewhere.json")
    err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out", str(tmp_path / "o")])
    assert "the split file" in err and "outside" in err


def _copy(corpus: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "corpus"
    shutil.copytree(corpus, root)
    return root, json.loads((root / MANIFEST).read_text())


def _save(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_a_shard_name_pointing_out_never_causes_a_write_outside(tmp_path, tiny, tiny_corpus, capsys):
    root, manifest = _copy(tiny_corpus, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    manifest["shards"][0]["file"] = "../victim.txt"
    _save(root, manifest)
    with pytest.raises(DataError, match="not a plain"):
        build_inr_corpus(root, **tiny)  # the command the repair hint suggests
    assert victim.read_text() == "precious"
    err = cli_error(capsys, ["inspect", str(root)])
    assert "'../victim.txt'" in err and victim.read_text() == "precious"


def test_a_shard_linked_out_of_the_corpus_is_not_read(tmp_path, tiny_corpus, capsys):
    root, manifest = _copy(tiny_corpus, tmp_path)
    (root / "shard-00000.safetensors").unlink()
    (root / "shard-00000.safetensors").symlink_to("/dev/zero")
    err = cli_error(capsys, ["inspect", str(root)])
    assert "outside the corpus" in err and "/dev/zero" in err
    with pytest.raises(DataError, match="outside the corpus"):
        InrDataset(root)


def test_a_fifo_in_place_of_a_shard_is_refused_without_waiting_for_a_writer(tmp_path, tiny_corpus):
    root, _ = _copy(tiny_corpus, tmp_path)
    (root / "shard-00002.safetensors").unlink()
    os.mkfifo(root / "shard-00002.safetensors")
    outcome = []

    def read():
        try:
            InrDataset(root)
        except DataError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=read, daemon=True)  # the old code blocks in open() for good
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and "shard-00002.safetensors is not a regular file" in outcome[0]


# ----------------------------------------------------------------------------- 3. sizes before allocation


@pytest.mark.parametrize("kind", ["device", "huge"])
def test_a_manifest_that_is_a_device_or_huge_is_refused_unread(tmp_path, tiny_corpus, capsys, kind):
    root, _ = _copy(tiny_corpus, tmp_path)
    (root / MANIFEST).unlink()
    if kind == "device":
        (root / MANIFEST).symlink_to("/dev/zero")
    else:
        with open(root / MANIFEST, "wb") as f:
            f.truncate(300 << 20)  # sparse
    tracemalloc.start()
    try:
        err = cli_error(capsys, ["inspect", str(root)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "manifest.json is not a regular file of at most 256 MB" in err and peak < 20 << 20


def test_reads_are_bounded_by_the_recorded_byte_count(tmp_path, tiny_corpus, capsys):
    root, manifest = _copy(tiny_corpus, tmp_path)
    with open(root / "shard-00001.safetensors", "wb") as f:
        f.truncate(200 << 20)  # a sparse 200 MB file where a 20 kB shard was
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="has 209715200 bytes, the manifest says"):
            InrDataset(root)
        err = cli_error(capsys, ["inspect", str(root)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "shard-00001.safetensors has 209715200 bytes" in err
    assert peak < 20 << 20  # the file's size came from os.stat; its bytes were never read


def test_a_manifest_architecture_is_checked_against_the_shards_before_a_model_is_built(
        tmp_path, tiny_corpus, capsys, monkeypatch):
    root, manifest = _copy(tiny_corpus, tmp_path)
    for spec in (manifest["architectures"][0], manifest["config"]["spec"]):
        spec["hidden"] = 50000  # 2.5e9 weights: 10 GB if anything were built from it
    _save(root, manifest)

    def no_build(*args, **kwargs):
        raise AssertionError("a SIREN was built from the crafted architecture")

    monkeypatch.setattr("nngraph.data.inr.Siren.__init__", no_build)
    err = cli_error(capsys, ["inspect", str(root)])
    assert "hidden.0.weight" in err and "[10, 50000, 2]" in err and "[10, 32, 2]" in err
    with pytest.raises(DataError, match="50000"):
        InrDataset(root, "train")
    for entry in manifest["shards"]:  # an incomplete corpus: nothing confirms the architecture
        entry["complete"] = False
    manifest["complete"] = False
    _save(root, manifest)
    err = cli_error(capsys, ["inspect", str(root)])
    assert "no complete shard confirms it" in err


def _move_boundary(manifest: dict, stop: int) -> None:
    """Shards 0 and 1 split at ``stop`` instead of 10, items.shard to match: consistent
    with itself, not with the shard files."""
    manifest["shards"][0]["stop"] = manifest["shards"][1]["start"] = stop
    manifest["items"]["shard"] = [0] * stop + [1] * (20 - stop) + [2] * 10


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m["shards"][-1].update(stop=10**12), "shard 2 covers items 20..1000000000000"),
    (lambda m: m["items"]["label"].pop(), "items.label has 29 values, items.split has 30"),
    (lambda m: m["items"]["label"].__setitem__(3, 100000), "item 3 has label 100000"),
    (lambda m: m["items"]["label"].__setitem__(3, 2.5), "item 3 has label 2.5"),
    (lambda m: m["shards"][1].update(start=12), "shard 1 covers items 12..20"),
    (lambda m: m["shards"][0].update(file="/dev/zero"), "shard file '/dev/zero'"),
    (lambda m: m["shards"][0].pop("bytes"), "complete shard 0 lacks its byte count"),
    (lambda m: _move_boundary(m, 9), "of shape [10, 32] for its 9 items 0..8"),
])
def test_hand_edited_manifests_are_refused_in_one_line(tmp_path, tiny_corpus, capsys, edit, needle):
    root, manifest = _copy(tiny_corpus, tmp_path)
    edit(manifest)
    _save(root, manifest)
    with pytest.raises(DataError, match="hand-edited"):
        Corpus.open(root)
    assert needle in cli_error(capsys, ["inspect", str(root)])


@pytest.fixture(name="park_corpus")
def _park_corpus(tmp_path, monkeypatch):
    src = tmp_path / "park"
    originals.write_wild_park(src, monkeypatch, per_split=(1, 1, 1))
    import_wild_park(src, tmp_path / "c", workers=1, **QUIET)
    return tmp_path / "c"


def test_a_shard_replaced_by_a_file_of_another_size_is_rebuilt_not_refused(tmp_path, tiny, tiny_corpus):
    """Header checks skip shards whose size is not the recorded one: those are damaged, and a
    rerun rebuilds them (a crafted manifest is refused; a damaged file is repaired)."""
    root, _ = _copy(tiny_corpus, tmp_path)
    write_shard(root / "shard-00001.safetensors", {"hidden.0.weight": torch.zeros(10, 8, 2)}, {"psnr": [0.0] * 10})
    build_inr_corpus(root, **tiny)
    assert (root / "shard-00001.safetensors").read_bytes() == (tiny_corpus / "shard-00001.safetensors").read_bytes()


@pytest.mark.parametrize("column, value, needle", [("label", "0.5", "network 1 has label '0.5'"),
                                                   ("label", None, "network 1 has label None"),
                                                   ("arch", 7, "network 1 names architecture 7")])
def test_hand_edited_zoo_columns_are_refused_in_one_line(tmp_path, park_corpus, capsys, column, value, needle):
    root, manifest = _copy(park_corpus, tmp_path)
    manifest["items"][column][1] = value
    _save(root, manifest)
    with pytest.raises(DataError, match="hand-edited"):
        ZooDataset(root)
    assert needle in cli_error(capsys, ["inspect", str(root)])


def test_a_zoo_architecture_is_checked_on_the_meta_device(tmp_path, park_corpus, monkeypatch):
    root, manifest = _copy(park_corpus, tmp_path)
    manifest["architectures"][0]["channels"] = [20000] * len(manifest["architectures"][0]["channels"])
    _save(root, manifest)
    built_for_real = []
    real_init = park.ParkCNN.__init__

    def spy(self, arch):
        built_for_real.append(torch.get_default_device().type != "meta")
        real_init(self, arch)

    monkeypatch.setattr(park.ParkCNN, "__init__", spy)
    with pytest.raises(DataError, match="does not match its architecture"):
        ZooDataset(root)
    assert built_for_real and not any(built_for_real)


def test_a_wild_park_config_is_checked_against_its_tensors_before_a_model_is_built(tmp_path, capsys, monkeypatch):
    root = tmp_path / "park"
    nets = originals.write_wild_park(root, monkeypatch, per_split=(1, 1, 1))
    rel = next(iter(nets))
    config, sd = nets[rel]
    fake = originals.fake_omegaconf(monkeypatch)
    huge = {**config, "channels": [3, 20000, 20000, 20000][:len(config["channels"])]}
    originals.save_park_checkpoint(root / rel, huge, sd, fake)

    def no_build(*args, **kwargs):
        raise AssertionError("a CNN was built from the crafted config")

    monkeypatch.setattr(park.ParkCNN, "__init__", no_build)
    err = cli_error(capsys, ["data", "import", "--format", "wild-park", str(root), "--out", str(tmp_path / "o"),
                             "--workers", "1"])
    assert str(root / rel) in err and "layers.0.weight has shape" in err and "20000" in err


def test_a_huge_sparse_inr_file_is_refused_by_its_size(tmp_path, capsys, inr_source, monkeypatch):
    root, rels = inr_source
    real_read = torchfile.read_torch_file
    opened = []

    def spy(path, *args):
        opened.append(path)
        return real_read(path, *args)

    monkeypatch.setattr(inr_folder, "read_torch_file", spy)
    args = ["data", "import", "--format", "inr-folder", str(root), "--out", str(tmp_path / "o"), "--workers", "1"]
    for k in (2, 0):  # a later file (capped by the first's architecture), then the first file (fixed cap)
        huge = root / rels[k]
        opened.clear()
        with open(huge, "wb") as f:
            f.truncate(16 << 30)  # 16 GB, sparse: no disk used
        err = cli_error(capsys, args)
        assert str(huge) in err and "17,179,869,184 bytes" in err
        assert huge not in opened
        torch.save(originals.OfficialINR().state_dict(), huge)


# ----------------------------------------------------------------------------- 4. imports under faults


def test_out_is_checked_before_any_network_is_read(tmp_path, capsys, inr_source, monkeypatch):
    root, _ = inr_source
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")

    def no_read(*args, **kwargs):
        raise AssertionError("a network was read")

    monkeypatch.setattr(inr_folder, "_load_state", no_read)
    err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out", str(out)])
    assert "already exists" in err


def test_dead_staging_folders_are_removed_and_dead_locks_taken_over(tmp_path, inr_source):
    root, _ = inr_source
    out = tmp_path / "out"
    pid = dead_pid()
    stale = tmp_path / f".out.importing-{pid}"
    (stale / "partial").mkdir(parents=True)
    (tmp_path / ".out.lock").write_text(f"{pid}\n")
    lines = []
    import_inr_folder(root, out, image_size=4, workers=1, log=lines.append)
    assert not stale.exists() and len(InrDataset(out)) == 4
    assert any("removed 1 staging folder" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "out"]  # no lock, no stage left


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_to_one_out_is_refused(tmp_path, capsys, inr_source, tiny):
    root, _ = inr_source
    for name in ("out", "corpus"):
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / f".{name}.lock")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "locked\n"
            if name == "out":
                err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out",
                                         str(tmp_path / "out")])
                assert f"another nngraph process (PID {holder.pid}) is writing" in err
            else:
                with pytest.raises(DataError, match=f"PID {holder.pid}"):
                    build_inr_corpus(tmp_path / "corpus", **tiny)
            assert not (tmp_path / name).exists() and (tmp_path / f".{name}.lock").exists()
        finally:
            holder.kill()
            holder.wait()
    import_inr_folder(root, tmp_path / "out", image_size=4, workers=1, **QUIET)  # the holder died: taken over
    assert len(InrDataset(tmp_path / "out")) == 4 and not (tmp_path / ".out.lock").exists()


READING_MARK = Path()


def _slow_chunk(task):
    """A worker task that says it started, then reads for a minute (a worker pool pickles
    its function by name, so it lives at module level)."""
    READING_MARK.touch()
    time.sleep(60)


def _import_in_own_session(args: list[str], err_path: Path) -> None:
    """A forked child: its own process group (as a shell job), stderr to a file, exit with
    the command's status."""
    os.setsid()
    sys.stderr = open(err_path, "w", buffering=1)  # noqa: SIM115 - the child exits below
    os.dup2(sys.stderr.fileno(), 2)  # the workers' stderr too
    code = cli.main(args)
    sys.stderr.flush()
    os._exit(code)


def test_ctrl_c_ends_an_import_in_one_line(tmp_path, monkeypatch):
    root = tmp_path / "dataset"
    originals.write_mnist_inrs(root, per_split=(2, 1, 1))
    reading = tmp_path / "reading"
    monkeypatch.setattr(sys.modules[__name__], "READING_MARK", reading)
    monkeypatch.setattr(inr_folder, "_load_chunk", _slow_chunk)
    monkeypatch.setattr(inr_folder, "LOAD_CHUNK", 2)  # two worker tasks
    args = ["data", "import", "--format", "inr-folder", str(root), "--out", str(tmp_path / "out"), "--workers", "2"]
    err_path = tmp_path.parent / f"{tmp_path.name}-stderr"
    child = multiprocessing.get_context("fork").Process(target=_import_in_own_session, args=(args, err_path))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not reading.exists() and time.monotonic() < deadline:  # the workers are reading
            time.sleep(0.05)
        time.sleep(0.3)
        t0 = time.monotonic()
        os.killpg(child.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        child.join(timeout=30)
        assert time.monotonic() - t0 < 15 and child.exitcode == 130
    finally:
        if child.is_alive():
            os.killpg(child.pid, signal.SIGKILL)
            child.join()
    err = err_path.read_text()
    assert err.startswith("error: import interrupted") and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "reading"]


# ----------------------------------------------------------------------------- 5. labels


@pytest.mark.parametrize("label, needle", [(2.5, "label 2.5"), (100000, "label 100000"),
                                           (True, "label True")])
def test_labels_are_integer_classes_in_range(tmp_path, capsys, inr_source, label, needle):
    root, _ = inr_source
    _edit_splits(root, lambda t: t["val"]["label"].__setitem__(0, label))
    err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out", str(tmp_path / "o")])
    assert needle in err and not (tmp_path / "o").exists()


def test_a_file_listed_in_two_splits_is_refused_naming_it(tmp_path, capsys, inr_source):
    root, rels = inr_source
    _edit_splits(root, lambda t: t["test"]["path"].__setitem__(0, rels[0]))
    err = cli_error(capsys, ["data", "import", "--format", "inr-folder", str(root), "--out", str(tmp_path / "o")])
    assert rels[0] in err and "twice (in train and test)" in err


def test_a_zoo_index_file_listing_a_row_twice_is_refused(tmp_path, capsys):
    root = tmp_path / "zoo"
    originals.write_small_zoo(root, runs=2)
    (root / "split.csv").write_text("".join(f"{i}\n" for i in [0, 1, 2, 3, 4, 5, 2]))
    err = cli_error(capsys, ["data", "import", "--format", "cnn-zoo", str(root), "--splits", str(root / "split.csv"),
                             "--out", str(tmp_path / "o")])
    assert "split.csv lists row 2 twice" in err


def test_zoo_rows_without_a_finite_accuracy_are_dropped_and_counted(tmp_path):
    root = tmp_path / "zoo"
    arrays = originals.write_small_zoo(root, runs=6)
    meta = arrays["metrics"]
    final = [r for r, row in enumerate(meta) if row["step"] == "86"]
    meta[final[1]]["test_accuracy"] = ""
    meta[final[4]]["test_accuracy"] = "nan"
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(meta[0]))
        w.writeheader()
        w.writerows(meta)
    lines = []
    import_cnn_zoo(root, tmp_path / "c", log=lines.append)
    ds = ZooDataset(tmp_path / "c")
    assert len(ds) == 4 and all(0 <= ds[i]["label"] <= 1 for i in range(4))
    assert any(f"dropped 2 networks whose test_accuracy is empty or not finite (rows {final[1]}, {final[4]})" in line
               for line in lines)


def test_wild_park_networks_without_a_finite_score_are_dropped(tmp_path, monkeypatch):
    root = tmp_path / "park"
    originals.write_wild_park(root, monkeypatch, per_split=(2, 1, 1))
    table = json.loads((root / "cnn_park_splits.json").read_text())
    table["train"]["score"][1] = None
    (root / "cnn_park_splits.json").write_text(json.dumps(table))
    lines = []
    import_wild_park(root, tmp_path / "c", workers=1, log=lines.append)
    assert len(ZooDataset(tmp_path / "c")) == 3
    assert any("dropped 1 networks whose score is empty or not finite" in line for line in lines)
