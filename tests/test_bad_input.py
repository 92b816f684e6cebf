"""Bad input from the command line, tried as a new user would: every case is one line on
stderr and exit status 2, found before any data is read, and nothing is written or lost."""

from __future__ import annotations

import errno
import json
import os

import pytest

from nngraph.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``nngraph ARGV`` (argparse's own errors exit via SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


# Every numeric and choice option of every subcommand with values outside its range. The data
# paths do not exist, so an error that is not the option's own would name the missing data:
# passing means the option was refused before anything was read.
TRAIN = ["train", "--task", "classify", "--data", "{tmp}/no-corpus", "--model", "ngt", "--out", "{tmp}/run"]
INRS = ["data", "inrs", "--images", "{tmp}/no-images", "--out", "{tmp}/corpus"]
ZOO = ["data", "zoo", "--images", "{tmp}/no-images", "--out", "{tmp}/zoo"]
INVALID = [
    (TRAIN + ["--epochs", "0"], "--epochs"),
    (TRAIN + ["--epochs", "-1"], "--epochs"),
    (TRAIN + ["--epochs", "two"], "--epochs"),
    (TRAIN + ["--batch-size", "0"], "--batch-size"),
    (TRAIN + ["--batch-size", "-4"], "--batch-size"),
    (TRAIN + ["--lr", "0"], "--lr"),
    (TRAIN + ["--lr", "nan"], "--lr"),
    (TRAIN + ["--lr", "inf"], "--lr"),
    (TRAIN + ["--lr", "-0.1"], "--lr"),
    (TRAIN + ["--weight-decay", "-1"], "--weight-decay"),
    (TRAIN + ["--weight-decay", "nan"], "--weight-decay"),
    (TRAIN + ["--warmup-steps", "-1"], "--warmup-steps"),
    (TRAIN + ["--grad-clip", "-1"], "--grad-clip"),
    (TRAIN + ["--grad-clip", "nan"], "--grad-clip"),
    (TRAIN + ["--seed", "-1"], "--seed"),
    (TRAIN + ["--probes", "-1"], "'probes'"),
    (TRAIN + ["--hidden", "0"], "'hidden'"),
    (TRAIN + ["--layers", "0"], "'layers'"),
    (TRAIN + ["--weight-noise", "-0.5"], "--weight-noise"),
    (TRAIN + ["--max-train", "0"], "--max-train"),
    (TRAIN + ["--time-budget", "-1"], "--time-budget"),
    (TRAIN + ["--time-budget", "0"], "--time-budget"),
    (TRAIN + ["--time-budget", "nan"], "--time-budget"),
    (TRAIN + ["--model-args", '{"bogus": 1}'], "'bogus'"),
    (TRAIN + ["--model-args", "[1, 2]"], "--model-args"),
    (TRAIN + ["--model-args", "{heads: 2"], "--model-args"),
    (TRAIN + ["--model-args", '{"dropout": 1.5}'], "'dropout'"),
    (TRAIN + ["--model-args", '{"heads": "four"}'], "'heads'"),
    (TRAIN + ["--hidden", "16", "--model-args", '{"heads": 3}'], "divisible by heads=3"),
    ([a if a != "ngt" else "deepsets" for a in TRAIN] + ["--layers", "1"], "'layers'"),
    ([a if a != "ngt" else "deepsets" for a in TRAIN] + ["--probes", "4"], "'probes'"),
    ([a if a != "ngt" else "deepsets" for a in TRAIN] + ["--model-args", '{"kernel": 2}'], "kernel must be odd"),
    ([a if a != "ngt" else "bogus" for a in TRAIN], "--model"),
    ([a if a != "ngt" else "statnn" for a in TRAIN] + ["--compile"], "--compile"),
    ([a if a != "classify" else "bogus" for a in TRAIN], "--task"),
    (TRAIN + ["--resume", "--overwrite"], "contradict"),
    (INRS + ["--steps", "-1"], "--steps"),
    (INRS + ["--lr", "0"], "--lr"),
    (INRS + ["--lr", "nan"], "--lr"),
    (INRS + ["--lr", "inf"], "--lr"),
    (INRS + ["--hidden", "0"], "hidden >= 1"),
    (INRS + ["--depth", "0"], "depth >= 1"),
    (INRS + ["--w0", "0"], "--w0"),
    (INRS + ["--w0", "nan"], "--w0"),
    (INRS + ["--w0", "-30"], "--w0"),
    (INRS + ["--limit", "0"], "--limit"),
    (INRS + ["--seed", "-1"], "--seed"),
    (INRS + ["--shard-size", "0"], "--shard-size"),
    (INRS + ["--workers", "0"], "--workers"),
    (INRS + ["--chunk-size", "0"], "--chunk-size"),
    (INRS + ["--chunk-size", "-2"], "--chunk-size"),
    (INRS + ["--first-layer-lr-scale", "0"], "--first-layer-lr-scale"),
    (INRS + ["--target-psnr", "nan"], "--target-psnr"),
    (INRS + ["--variant", "bogus"], "--variant"),
    (INRS + ["--schedule", "bogus"], "--schedule"),
    (ZOO + ["--count", "0"], "--count"),
    (ZOO + ["--downsample", "0"], "--downsample"),
    (ZOO + ["--test-limit", "0"], "--test-limit"),
    (ZOO + ["--seed", "-1"], "--seed"),
    (ZOO + ["--shard-size", "0"], "--shard-size"),
    (ZOO + ["--workers", "0"], "--workers"),
    (["demo", "--out", "{tmp}/demo", "--epochs", "0"], "--epochs"),
    (["demo", "--out", "{tmp}/demo", "--seed", "-1"], "--seed"),
    (["bogus"], "invalid choice"),
    (["data", "inrs"], "--out"),
    (["data", "inrs", "--out", "{tmp}/corpus", "--variant", "standard", "--recipe", "published"],
     "standard variant has no published recipe"),
    (["data", "inrs", "--out", "{tmp}/corpus", "--recipe", "mine"], "invalid choice"),
]


def _case_id(argv: list[str]) -> str:
    return " ".join(a for a in argv if "{tmp}" not in a and a not in ("--data", "--images", "--out"))


@pytest.mark.parametrize("argv, needle", INVALID, ids=[_case_id(a) for a, _ in INVALID])
def test_invalid_option_is_one_line_exit_2_and_nothing_written(argv, needle, tmp_path, capsys):
    code, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert_one_line(code, err, needle)
    assert list(tmp_path.iterdir()) == []  # no run folder, config.json or corpus left behind


# ---- run folders ----------------------------------------------------------------------

def _train(inr_corpus, run, *extra: str) -> list[str]:
    return ["train", "--task", "classify", "--data", str(inr_corpus), "--model", "mlp", "--out", str(run),
            "--epochs", "1", "--batch-size", "8", "--max-train", "8", "--hidden", "8", "--warmup-ratio", "0.1",
            "--no-progress", *extra]


def test_an_existing_run_is_never_overwritten_or_resumed_with_other_settings(tmp_path, inr_corpus, capsys):
    run = tmp_path / "run"
    assert main(_train(inr_corpus, run)) == 0
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.json", "last.safetensors", "best.safetensors"} <= set(files)

    code, err = run_cli(_train(inr_corpus, run), capsys)  # the same command again, without --resume
    assert_one_line(code, err, "already holds a run", "--resume", "--overwrite")
    for changed, shown in ((["--lr", "0.01"], "lr 0.001 -> 0.01"), (["--batch-size", "4"], "batch_size 8 -> 4"),
                           (["--seed", "3"], "seed 0 -> 3"), (["--max-train", "6"], "max_train 8 -> 6")):
        code, err = run_cli(_train(inr_corpus, run, "--resume", *changed), capsys)  # the later value wins
        assert_one_line(code, err, "--resume", shown)
    code, err = run_cli(_train(inr_corpus, run, "--resume", "--epochs", "3"), capsys)
    assert_one_line(code, err, "epochs 1 -> 3")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # nothing written, nothing lost

    assert main(_train(inr_corpus, run, "--resume")) == 0  # the same settings resume (here: nothing left to do)
    assert (run / "config.json").read_bytes() == files["config.json"]
    assert (run / "metrics.jsonl").read_bytes() == files["metrics.jsonl"]

    assert main(_train(inr_corpus, run, "--overwrite", "--lr", "0.01")) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # a fresh record, not appended to the old one
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01

    for path in run.iterdir():  # killed in its first epoch: only config.json, nothing trained to lose
        if path.name != "config.json":
            path.unlink()
    assert main(_train(inr_corpus, run)) == 0


def test_resume_without_checkpoint_fails_before_reading_data(tmp_path, capsys):
    code, err = run_cli(["train", "--task", "classify", "--data", str(tmp_path / "none"), "--model", "mlp",
                         "--out", str(tmp_path / "r"), "--resume"], capsys)
    assert_one_line(code, err, "--resume: no checkpoint")
    assert list(tmp_path.iterdir()) == []


# ---- file-system errors ------------------------------------------------------------------

def _fail_writes(monkeypatch, code: int) -> None:
    """Every write through nngraph's atomic writer fails with ``code`` (ENOSPC: full, EROFS: read-only)."""
    import nngraph.data.store as store

    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store.os, "fsync", fsync)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_file_system_is_one_line_with_the_path(code, tmp_path, inr_corpus, capsys, monkeypatch):
    _fail_writes(monkeypatch, code)
    out = tmp_path / "c"
    status, err = run_cli(["data", "inrs", "--out", str(out), "--limit", "12", "--steps", "5", "--no-progress"], capsys)
    assert_one_line(status, err, f"cannot write {out / 'manifest.json'}", os.strerror(code))
    assert not list(out.glob(".*.tmp"))  # the temporary file is gone
    run = tmp_path / "run"
    status, err = run_cli(_train(inr_corpus, run), capsys)
    assert_one_line(status, err, f"cannot write {run / 'config.json'}", os.strerror(code))


def test_unwrapped_os_errors_of_storage_are_one_line(tmp_path, capsys, monkeypatch):
    import nngraph.cli_runs as cli_runs

    def fail(args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x.png"))

    monkeypatch.setattr(cli_runs, "run_inspect", fail)
    status, err = run_cli(["inspect", str(tmp_path)], capsys)
    assert_one_line(status, err, f"cannot write {tmp_path / 'x.png'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_folder(tmp_path, inr_corpus, capsys):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        status, err = run_cli(_train(inr_corpus, run), capsys)
    finally:
        run.chmod(0o755)
    assert_one_line(status, err, f"cannot write {run}")


# ---- inspect verifies a corpus ----------------------------------------------------------

def test_inspect_names_a_damaged_shard_with_the_corpus_current_path(tmp_path, inr_corpus, capsys):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(inr_corpus, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["command"] = "nngraph data inrs --out /old/place --limit 40"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(moved)]) == 0
    assert "2 of 2 verified" in capsys.readouterr().out
    shard = moved / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # same size, other bytes
    shard.write_bytes(bytes(data))
    code, err = run_cli(["inspect", str(moved)], capsys)
    assert_one_line(code, err, manifest["shards"][1]["file"], "SHA-256", f"--out {moved}")
    assert "/old/place" not in err
    shard.write_bytes(bytes(data[:-10]))
    code, err = run_cli(["inspect", str(moved)], capsys)
    assert_one_line(code, err, manifest["shards"][1]["file"], "bytes")
