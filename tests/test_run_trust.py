"""Run folders as someone else's files, and runs under faults.

Nothing read from a run folder runs code (checkpoints are safetensors; earlier pickles are
refused and migrate as tensors only); every kill point of an epoch's writes leaves a run
that ``--resume`` continues exactly; a changed corpus is refused on resume.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import pickle
import shutil

import pytest
import torch

from nngraph.checkpoint import BEST, LAST, load_state, load_weights
from nngraph.cli import main
from nngraph.train import TrainConfig, Trainer, train

MLP = {"hidden": 16}


def _argv(corpus, run, *extra: str) -> list[str]:
    return ["train", "--task", "classify", "--data", str(corpus), "--model", "mlp", "--out", str(run),
            "--epochs", "2", "--batch-size", "8", "--hidden", "16", "--warmup-steps", "2", "--no-progress", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


class Payload:
    """Unpickling this creates the marker file: a stand-in for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _write_payload(path, marker, how: str) -> None:
    obj = {"model": Payload(marker), "epoch": 1}
    if how == "zip":
        torch.save(obj, path)
    elif how == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle
        path.write_bytes(pickle.dumps(obj))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, inr_corpus):
    run = tmp_path_factory.mktemp("trust") / "run"
    assert main(_argv(inr_corpus, run)) == 0
    return run


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
def test_a_crafted_pickle_in_a_run_folder_never_runs(tmp_path, finished_run, inr_corpus, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "payload-ran"
    for name in (BEST, LAST):
        (run / name).unlink()
    for name in ("best.pt", "last.pt"):
        _write_payload(run / name, marker, how)
    assert main(["eval", str(run)]) == 2
    assert "nngraph migrate-run" in _one_line_error(capsys)
    assert main(_argv(inr_corpus, run, "--resume")) == 2
    assert "nngraph migrate-run" in _one_line_error(capsys)
    assert main(["migrate-run", str(run)]) == 2
    assert "--trust" in _one_line_error(capsys)
    assert not marker.exists()
    assert (run / "best.pt").exists() and not (run / BEST).exists()  # nothing converted, nothing lost
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: unpickled, it runs
    assert marker.exists()


def test_an_earlier_run_migrates_without_trust_and_evaluates_the_same(tmp_path, finished_run, inr_corpus, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(["eval", str(run)]) == 0
    before = capsys.readouterr().out
    # the layout of earlier versions: torch.save pickles of the same state
    weights, meta = load_weights(run / BEST)
    torch.save({"model": weights, "epoch": meta["epoch"]}, run / "best.pt")
    state = load_state(run / LAST)
    del state["corpus"]
    torch.save(state, run / "last.pt")
    (run / BEST).unlink()
    (run / LAST).unlink()
    assert main(["migrate-run", str(run)]) == 0
    assert "best.pt -> best.safetensors" in capsys.readouterr().out
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert main(["eval", str(run)]) == 0
    assert capsys.readouterr().out == before
    migrated = load_weights(run / BEST)[0]
    assert migrated.keys() == weights.keys() and all(torch.equal(migrated[k], weights[k]) for k in weights)
    assert main(_argv(inr_corpus, run, "--resume")) == 0  # finished: --resume only evaluates again


def test_checkpoints_are_safetensors_and_hold_what_a_resume_needs(finished_run):
    header = (finished_run / LAST).read_bytes()[:8]
    assert int.from_bytes(header, "little") > 0  # a safetensors header, not a zip or pickle
    state = load_state(finished_run / LAST)
    assert state["epoch"] == 2 and state["step"] > 0 and len(state["history"]) == 2
    assert state["rng"].dtype == torch.uint8 and isinstance(state["corpus"], str)
    assert all(isinstance(k, int) for k in state["optimizer"]["state"])  # parameter ids stay integers
    assert load_weights(finished_run / BEST)[1]["epoch"] in (1, 2)


def test_state_round_trip_keeps_keys_types_and_tensors(tmp_path):
    from nngraph.checkpoint import save_state

    w = torch.arange(6.0).view(2, 3)
    state = {"a/b": w.t(), "a": {"b": w, 7: w[0]}, "mixed": [1, 2.5, None, float("inf"), "x", True],
             "half": w.bfloat16(), "rng": torch.get_rng_state()}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert torch.equal(back["a/b"], w.t()) and torch.equal(back["a"]["b"], w)  # no key collision
    assert list(back["a"]) == ["b", 7] and torch.equal(back["a"][7], w[0])  # integer keys stay integers
    assert back["mixed"] == state["mixed"] and back["half"].dtype == torch.bfloat16
    assert torch.equal(back["rng"], state["rng"])


def test_resume_refuses_a_changed_corpus(tmp_path, inr_corpus, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(inr_corpus, corpus)
    run = tmp_path / "run"
    assert main(_argv(corpus, run, "--epochs", "1")) == 0
    capsys.readouterr()
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["items"]["label"][0] = (manifest["items"]["label"][0] + 1) % 10  # rebuilt with other content
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    assert main(_argv(corpus, run, "--epochs", "1", "--resume")) == 2
    err = _one_line_error(capsys)
    assert "corpus" in err and "changed" in err


# ---- kill points ---------------------------------------------------------------------------

EPOCHS = 3


def _config(out, corpus) -> TrainConfig:
    return TrainConfig(task="classify", data=str(corpus), model="mlp", out=str(out), epochs=EPOCHS, batch_size=8,
                       lr=3e-3, warmup_steps=2, model_kwargs=dict(MLP))


def _improving(monkeypatch):
    """Validation accuracy rises every epoch, so every epoch writes the best checkpoint."""
    original = Trainer.evaluate

    def scripted(self, split, batch_size=None):
        real = original(self, split, batch_size)
        return {**real, "accuracy": 0.1 * self.epoch} if split == "val" else real

    monkeypatch.setattr(Trainer, "evaluate", scripted)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, inr_corpus):
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as mp:
        _improving(mp)
        result = train(_config(out, inr_corpus), progress=False)
    return out, result


def _kill(monkeypatch, owner, name, epoch, after=False):
    """``owner.name`` raises KeyboardInterrupt (a kill) in epoch ``epoch``, before or after its work."""
    original = getattr(owner, name)

    def killed(*args, **kwargs):
        trainer = args[0] if isinstance(args[0], Trainer) else None
        current = trainer.epoch if trainer is not None else args[1]["epoch"]  # save_state(path, state)
        if current == epoch and not after:
            raise KeyboardInterrupt("killed")
        value = original(*args, **kwargs)
        if current == epoch:
            raise KeyboardInterrupt("killed")
        return value

    monkeypatch.setattr(owner, name, killed)


KILL_POINTS = {
    "first epoch, before its commit": ("nngraph.training.folder", "save_state", 1, False),
    "before the commit": ("nngraph.training.folder", "save_state", 2, False),
    "after the commit, before best": (Trainer, "save_best", 2, False),
    "after best, before the metrics lines": (Trainer, "write_metrics_lines", 2, False),
    "after the metrics lines": (Trainer, "write_metrics_lines", 2, True),
    "after the last epoch, before metrics.json": (Trainer, "write_plots", EPOCHS, False),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_every_kill_point_resumes_to_the_uninterrupted_run(tmp_path, inr_corpus, straight, monkeypatch, point):
    straight_out, expected = straight
    owner, name, epoch, after = KILL_POINTS[point]
    if isinstance(owner, str):
        owner = importlib.import_module(owner)
    _improving(monkeypatch)
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _kill(mp, owner, name, epoch, after)
        with pytest.raises(KeyboardInterrupt):
            train(_config(out, inr_corpus), progress=False)
    resumed = train(_config(out, inr_corpus), resume=True, progress=False)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in expected["history"]]
    assert resumed["test"] == expected["test"] and resumed["best_epoch"] == expected["best_epoch"] == EPOCHS

    def lines(run):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert lines(out) == lines(straight_out)  # every epoch's line, once
    a, b = load_weights(out / BEST), load_weights(straight_out / BEST)
    assert a[1] == b[1] and all(torch.equal(a[0][k], b[0][k]) for k in b[0])


def _damage(run, case: str) -> None:
    from safetensors.torch import save

    if case == "config not JSON":
        (run / "config.json").write_text("{not json")
    elif case == "config with a foreign field":
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "exec": "rm -rf /"}))
    elif case == "last not safetensors":
        (run / LAST).write_bytes(b"\x00" * 64)
    elif case == "last with a broken state tree":
        (run / LAST).write_bytes(save({"x": torch.zeros(1)}, metadata={"nngraph": '{"$dict": {"model": {"$tensor": '
                                                                                   '"missing"}}}'}))
    elif case == "best of another model":
        (run / BEST).write_bytes(save({"weight": torch.zeros(50_000)}, metadata={"epoch": "1"}))
    elif case == "metrics not JSON":
        (run / "metrics.json").write_text("[1, 2")
    elif case == "config is /dev/zero":  # an unbounded read
        (run / "config.json").unlink()
        (run / "config.json").symlink_to("/dev/zero")
    elif case == "last is a FIFO":  # a read that would block forever
        (run / LAST).unlink()
        os.mkfifo(run / LAST)


@pytest.mark.parametrize("case", ["config not JSON", "config with a foreign field", "last not safetensors",
                                  "last with a broken state tree", "best of another model", "metrics not JSON",
                                  "config is /dev/zero", "last is a FIFO"])
def test_a_damaged_or_crafted_run_folder_is_one_line(tmp_path, finished_run, inr_corpus, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _damage(run, case)
    commands = {"inspect": ["inspect", str(run)], "eval": ["eval", str(run)],
                "resume": _argv(inr_corpus, run, "--resume")}  # the last: a resume rewrites metrics.json
    failing = {"config not JSON": ("eval", "resume", "inspect"), "config with a foreign field": ("eval", "resume"),
               "last not safetensors": ("resume",), "last with a broken state tree": ("resume",),
               "best of another model": ("eval", "resume"), "metrics not JSON": ("inspect",),
               "config is /dev/zero": ("inspect", "eval", "resume"), "last is a FIFO": ("resume",)}[case]
    for name, argv in commands.items():
        code = main(argv)
        if name in failing:
            assert code == 2, name
            _one_line_error(capsys)
        else:
            capsys.readouterr()


def test_a_second_writer_to_a_run_folder_is_refused(tmp_path, inr_corpus, capsys):
    """While another process trains into --out, a second `nngraph train` there is one line; once it ends
    (here: killed), the folder is free again."""
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom nngraph.io import lock_folder\n"
                               f"lock_folder({str(run)!r}, 'test')\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ((), ("--overwrite",), ("--resume",)):
            assert main(_argv(inr_corpus, run, *extra)) == 2
            assert "in use by another nngraph process" in _one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert main(_argv(inr_corpus, run, "--epochs", "1")) == 0


def test_run_folder_writes_never_follow_a_symlink_out(tmp_path, inr_corpus, monkeypatch, capsys):
    """A received run folder whose files link outside it: writes replace the links, never the targets."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "run"
    original = Trainer.train_epoch

    def dies_in_epoch_two(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self, progress)

    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", dies_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            train(_config(out, inr_corpus), progress=False)
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(victim)
    train(_config(out, inr_corpus), resume=True, progress=False)
    assert victim.read_text() == "keep me\n"
    assert not (out / "metrics.jsonl").is_symlink() and len((out / "metrics.jsonl").read_text().splitlines()) == EPOCHS
    (out / ".nngraph.lock").unlink()
    (out / ".nngraph.lock").symlink_to(tmp_path / "created-outside")
    assert main(_argv(inr_corpus, out, "--resume")) == 2
    assert ".nngraph.lock" in _one_line_error(capsys)
    assert not (tmp_path / "created-outside").exists()
