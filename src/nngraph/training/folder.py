"""A training run's folder: which files it holds, when each is written, and where a resume
picks up.

Kill points (checkpoints are safetensors, see ``nngraph.checkpoint``): a run starts with
``config.json`` and ``model.json``; an epoch ends with three writes, in this order:
``last.safetensors`` (atomic; the epoch's commit point: model, optimiser, counters,
history, RNG and the corpus identity), then ``best.safetensors`` when the epoch is the best
so far, then ``metrics.jsonl`` (rewritten atomically from the history). The last two are
derived from the first, so a resume after a kill between any two writes restores them
(``restore_derived``) and continues exactly; a run killed before its first commit holds only
``config.json`` and ``model.json``, and ``--resume`` starts it from the beginning. One process
(rank 0 of a distributed run) writes; the folder is locked against a second training run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from nngraph.checkpoint import BEST, LAST, LEGACY, load_state, load_weights, refuse_legacy, save_state, save_weights
from nngraph.errors import NNGraphError, storage_error
from nngraph.io import atomic_write_json, atomic_write_json_lines, lock_folder
from nngraph.training.config import TrainConfig
from nngraph.training.record import MODEL_RECORD, corpus_paths

# Files of a run folder (cleared by --overwrite). A folder holding any of the records has trained
# at least one epoch; one with only config.json and model.json (killed in its first epoch) has
# nothing to lose.
RUN_RECORDS = ("metrics.jsonl", "metrics.json", LAST, BEST, *LEGACY)
RUN_FILES = (*RUN_RECORDS, "config.json", "model.json", "learning_curves.png", "confusion_matrix.png",
             "predicted_vs_true.png", "dilation.png")
# config.json fields that a resumed run may change: they do not alter what is trained.
_RESUMABLE_CHANGES = ("out", "compile")


def prepare_run_folder(config: TrainConfig, resume: bool, overwrite: bool, clear: bool = True) -> None:
    """Protect a run folder: a run in ``config.out`` is continued only with ``resume`` (and
    the settings it was started with) or cleared first with ``overwrite`` (by the process
    with ``clear``, rank 0 of a distributed run); never mixed."""
    out = Path(config.out)
    if resume and overwrite:
        raise NNGraphError("--resume and --overwrite contradict each other; pass one of them")
    if out.exists() and not out.is_dir():
        raise NNGraphError(f"--out {out} is a file; choose a folder")
    is_run = any((out / name).exists() for name in RUN_RECORDS)
    if resume:
        refuse_legacy(out)
        if not (out / LAST).exists() and not (out / "config.json").exists():
            raise NNGraphError(f"--resume: no checkpoint in {out}; start the run without --resume")
        if (out / "config.json").exists():
            old = TrainConfig.read(out / "config.json").to_json()  # with the defaults of fields added since
            new = config.to_json()
            changed = [k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k]
                       and not (k == "data" and isinstance(old[k], str)
                                and Path(old[k]).resolve() == Path(new[k]).resolve())]
            if changed:
                diff = ", ".join(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new[k])}" for k in changed)
                raise NNGraphError(f"--resume: {out} was started with other settings ({diff}); resume with its "
                                   f"settings (see {out / 'config.json'}), or start again with --overwrite")
    elif is_run and not overwrite:
        raise NNGraphError(f"{out} already holds a run; continue it with --resume, start it again with "
                           "--overwrite, or choose another --out")
    elif is_run and clear:
        for name in RUN_FILES:
            try:
                (out / name).unlink(missing_ok=True)
            except OSError as exc:
                raise storage_error(out / name, exc) from exc


class RunFolder:
    """The files of run folder ``out``; only the ``writer`` process writes them."""

    def __init__(self, out: str | Path, writer: bool = True):
        self.out, self.writer = Path(out), writer

    def begin(self, resume: bool) -> dict | None:
        """Create and lock the folder; with ``resume``, the last commit's state (None: the run
        was killed before its first commit and starts from the beginning)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(self.out, exc) from exc
        if self.writer:  # one writer per run folder
            lock_folder(self.out, "a training run")
        if not resume:
            return None
        refuse_legacy(self.out)
        if (self.out / LAST).exists():
            return load_state(self.out / LAST)
        if not (self.out / "config.json").exists():
            raise NNGraphError(f"--resume: no checkpoint in {self.out}; start the run without --resume")
        return None

    def write_records(self, config: TrainConfig, record: dict, resume: bool) -> None:
        """``config.json`` (a resumed run keeps its own) and ``model.json`` with where the corpus is."""
        if not self.writer:
            return
        if not (resume and (self.out / "config.json").exists()):
            atomic_write_json(self.out / "config.json", config.to_json(), indent=2, allow_nan=True)
        atomic_write_json(self.out / MODEL_RECORD, {**record, "corpus_path": corpus_paths(config.data, self.out)},
                          indent=2)

    def commit(self, state: dict) -> None:
        """The epoch's commit point: everything a resume needs, in one atomic write."""
        save_state(self.out / LAST, state)

    def save_best(self, model_state: dict[str, torch.Tensor], epoch: int) -> None:
        save_weights(self.out / BEST, model_state, epoch=epoch)

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        best = self.out / BEST
        return load_weights(best)[0] if best.exists() else None

    def write_metrics_lines(self, history: list[dict]) -> None:
        """``metrics.jsonl``: one JSON line per evaluation, rewritten from the history."""
        atomic_write_json_lines(self.out / "metrics.jsonl", history)

    def write_result(self, result: dict) -> None:
        atomic_write_json(self.out / "metrics.json", result, indent=2, allow_nan=True)

    def restore_derived(self, epoch: int, best_epoch: int, history: list[dict], save_best: Callable[[], None]) -> None:
        """After loading the last commit (of ``epoch``): the best checkpoint and the metrics
        lines a kill after the commit may have left behind it."""
        best = self.out / BEST
        saved_epoch = load_weights(best)[1].get("epoch") if best.exists() else None
        if best_epoch == epoch and saved_epoch != epoch:
            save_best()  # the committed model is the best one
        elif best_epoch >= 0 and saved_epoch != best_epoch:
            raise NNGraphError(f"{best} does not hold the best epoch {best_epoch} of {self.out} (it was "
                               "removed or replaced); start the run again with --overwrite")
        self.write_metrics_lines(history)
