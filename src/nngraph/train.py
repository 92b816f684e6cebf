"""One training loop for every task and model.

AdamW with a linear warm-up then cosine decay of the learning rate, gradient clipping,
evaluation on the validation split every epoch, the best checkpoint chosen on the
task's validation metric, and a final test evaluation of that checkpoint. Metrics are
written as JSON lines per epoch (``metrics.jsonl``) and ``metrics.json`` at the end.

Early stopping: with ``patience=N`` the run stops once the validation metric has not
improved for N epochs (every epoch is then evaluated, also under a time budget); the best
checkpoint is tested, as always, and ``metrics.json`` says what ended the run (``stop``:
patience, time budget or epochs).

Augmentations (training batches only): neuron permutations and the weight-space
augmentations of ``nngraph.pipeline.param_augment`` (coordinate rotation, translation
and scaling folded into an INR's first layer, Gaussian weight noise, weight dropout).

Reproducible: the model is initialised from the seed, each epoch's shuffling and
augmentation use a generator seeded by (seed, epoch), and the global RNG state is saved
with every checkpoint, so ``resume=True`` after a kill continues from the last finished
epoch and ends with the same numbers as an uninterrupted run.

Run folder and kill points (see ``nngraph.checkpoint``): checkpoints are safetensors,
which load without running code. An epoch ends with three writes, in this order:
``last.safetensors`` (atomic; the epoch's commit point: model, optimiser, counters,
history, RNG and the corpus identity), then ``best.safetensors`` when the epoch is the
best so far, then ``metrics.jsonl`` (rewritten atomically from the history). The last two
are derived from the first, so a resume after a kill between any two writes restores them
(the best weights are then the committed model's) and continues exactly; a run killed
before its first commit holds only ``config.json`` and ``model.json`` (written at the start:
what rebuilds the model without the corpus, see ``model_record`` and ``nngraph.run``) and
``--resume`` starts it from the beginning. The corpus identity (a digest of the manifest's
items and shard digests) is checked on resume: a rebuilt corpus with other content is refused.

Warm-up: ``warmup_steps`` linear steps, or with ``warmup_ratio`` r a fraction of the run
(r times its steps; with a time budget T, the first r T training seconds). A warm-up
longer than the run is reported: the learning rate would never reach its peak.

Memory: before the first step, models with pair states (NG-T: B N^2 per batch) are checked
against the memory of the run's device (``nngraph.memory``); a batch that does not fit is
refused in one line naming the batch size that does.

Time budget: with ``time_budget=T`` seconds a run trains until its training time (batch
building, forward, backward and step; evaluation excluded) reaches T, ``epochs`` being
only an upper bound. The cosine decay then runs over the budget, lr(t) = lr/2 (1 + cos(pi
t/T)) after the warm-up steps, and the model is evaluated on validation and test about 10
times over the budget, so ``history`` traces test accuracy against training seconds. This
is the equal-CPU-time comparison of models; its numbers depend on the machine's speed.

Distributed: launched by ``torchrun`` (WORLD_SIZE > 1), every global batch is split
across the processes and gradients are averaged by DistributedDataParallel (gloo on a
CPU, nccl on GPUs); each process's loss is weighted by its share of the batch, so the
update equals the single-process one. Off unless launched that way. On GPUs each process
takes the GPU of its LOCAL_RANK and NCCL averages the gradients.

Devices and precision: the model lives on ``config.device`` (``auto``: a GPU when there
is one); batches are built on the host and moved there once per step (pinned,
non-blocking). With ``precision="bf16"`` the forward passes run under bfloat16 autocast;
the loss and metrics are computed in float32 and parameters, optimiser state and
checkpoints stay float32. Checkpoints load onto the CPU first (``map_location``), so a
run trained on a GPU resumes or evaluates anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nngraph.checkpoint import BEST, LAST, LEGACY, load_state, load_weights, refuse_legacy, save_state, save_weights
from nngraph.device import autocast, float32, resolve_device, resolve_precision, to_device
from nngraph.errors import NNGraphError, storage_error
from nngraph.io import atomic_write_json, atomic_write_json_lines, lock_folder, read_bounded, unlock_folder
from nngraph.memory import check_fits, check_model_fits
from nngraph.models import create_model, model_info, models_with
from nngraph.models.readout import READOUTS
from nngraph.pipeline.loader import GraphLoader
from nngraph.pipeline.param_augment import ParamAugment
from nngraph.progress import Progress
from nngraph.schedule import cosine_decay


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in the run folder as ``config.json``."""

    task: str
    data: str
    model: str
    out: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    warmup_ratio: float | None = None  # warm-up as this fraction of the run (replaces warmup_steps)
    grad_clip: float = 1.0
    seed: int = 0
    permute_augment: bool = False
    canonical_signs: bool = False  # every network in its canonical sign pattern (odd activations; graph/signs.py)
    weight_noise: float = 0.0  # std of Gaussian noise on every training parameter
    rotate_augment: float = 0.0  # degrees: INR coordinates rotated by U(-r, r) (folded into the first layer)
    translate_augment: float = 0.0  # INR coordinates shifted by U(-t, t) per axis (the image spans [-1, 1])
    scale_augment: float = 0.0  # INR coordinates scaled by U(1 - s, 1 + s)
    weight_dropout: float = 0.0  # each training parameter zeroed with this probability, the rest / (1 - p)
    patience: int | None = None  # stop when the validation metric has not improved for this many epochs
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    compile: bool = False
    max_train: int | None = None  # use only the first N training networks (quick runs)
    time_budget: float | None = None  # seconds of training; then `epochs` is only an upper bound
    device: str = "auto"  # auto, cpu, cuda or cuda:N (under torchrun on GPUs: the GPU of LOCAL_RANK)
    precision: str = "fp32"  # fp32, or bf16 autocast of the forward passes

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Refuse settings no run can use, before any data is read: one line naming the
        option and its valid range (model arguments through the model registry)."""
        from nngraph.models.registry import check_model_args, model_names
        from nngraph.tasks import TASKS

        if self.task not in TASKS:
            raise NNGraphError(f"unknown task {self.task!r}; choose one of {', '.join(sorted(TASKS))}")
        counts = {"epochs": (self.epochs, 1), "batch_size": (self.batch_size, 1), "max_train": (self.max_train, 1),
                  "warmup_steps": (self.warmup_steps, 0), "seed": (self.seed, 0), "patience": (self.patience, 1)}
        for name, (value, low) in counts.items():
            if value is not None and (not isinstance(value, int) or value < low):
                raise NNGraphError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        amounts = {"lr": (self.lr, True), "time_budget": (self.time_budget, True),
                   "weight_decay": (self.weight_decay, False), "grad_clip": (self.grad_clip, False),
                   "weight_noise": (self.weight_noise, False), "rotate_augment": (self.rotate_augment, False),
                   "translate_augment": (self.translate_augment, False), "scale_augment": (self.scale_augment, False),
                   "weight_dropout": (self.weight_dropout, False)}
        if self.warmup_ratio is not None and not (math.isfinite(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1):
            raise NNGraphError(f"--warmup-ratio must be a fraction of the run between 0 and 1, got {self.warmup_ratio}")
        for name, (value, positive) in amounts.items():
            if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
                rule = "> 0" if positive else ">= 0"
                raise NNGraphError(f"--{name.replace('_', '-')} must be a finite number {rule}, got {value}")
        for name, value in (("scale_augment", self.scale_augment), ("weight_dropout", self.weight_dropout)):
            if value >= 1:
                raise NNGraphError(f"--{name.replace('_', '-')} must be below 1, got {value}")
        if self.augment.maps_coordinates and not TASKS[self.task].coordinate_invariant:
            keep = ", ".join(name for name, cls in sorted(TASKS.items()) if cls.coordinate_invariant)
            raise NNGraphError("--rotate-augment, --translate-augment and --scale-augment change the image an INR "
                               f"renders, which --task {self.task} depends on; use them with --task {keep}")
        check_model_args(self.model, self.model_kwargs)
        if self.compile and not hasattr(model_info(self.model).cls, "compile_layers"):
            compilable = [name for name in model_names() if hasattr(model_info(name).cls, "compile_layers")]
            raise NNGraphError(f"--compile compiles the layers of {', '.join(compilable)}; {self.model} has none "
                               "to compile: drop --compile")

    @classmethod
    def read(cls, path: str | os.PathLike) -> "TrainConfig":
        """The config a run folder records (``config.json``), checked like a new one: a
        damaged or hand-made file is refused in one line, and a run started before a field
        existed gets that field's default."""
        data = read_json_object(path)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise NNGraphError(f"{path} has fields no run of this nngraph records ({', '.join(unknown[:3])}); "
                               "pass a run folder written by `nngraph train`")
        try:
            config = cls(**data)
        except TypeError as exc:  # a required field missing
            raise NNGraphError(f"{path} is not a run's config ({exc}); pass a run folder written by "
                               "`nngraph train`") from None
        config.validate()
        return config

    @property
    def augment(self) -> ParamAugment:
        """The weight-space augmentations of training batches."""
        return ParamAugment(rotation=self.rotate_augment, translation=self.translate_augment,
                            scale=self.scale_augment, noise=self.weight_noise, dropout=self.weight_dropout)


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


def open_dataset(root: str, split: str):
    """One split of the corpus in ``root``, of the corpus class its manifest names."""
    from nngraph.data.corpus import Corpus

    return Corpus.open(root, split)


class Trainer:
    def __init__(self, config: TrainConfig):
        from nngraph.tasks import create_task

        self.config = config
        self.out = Path(config.out)
        self.rank, self.world = _distributed_rank()
        self.device = _process_device(config.device, self.world)
        self.precision = resolve_precision(config.precision)
        train_set = open_dataset(config.data, "train")
        self.corpus = corpus_identity(train_set.manifest)
        self.task = create_task(config.task, train_set)
        if not train_set.weight_augments and config.augment not in (ParamAugment(),
                                                                    ParamAugment(noise=config.weight_noise)):
            raise NNGraphError("coordinate augmentations and --weight-dropout need an INR corpus; "
                               f"{config.data} is a {train_set.kind} corpus")
        self.loaders = GraphLoader.for_splits(
            {"train": train_set, **{split: open_dataset(config.data, split) for split in ("val", "test")}},
            canonical_signs=config.canonical_signs)
        self.train_index = torch.arange(len(train_set))
        if config.max_train is not None:
            self.train_index = self.train_index[: config.max_train]
        torch.manual_seed(config.seed)
        example_index = self.train_index[: min(512, len(self.train_index))]
        example, _ = self.loaders["train"].make_batch(example_index)
        kwargs = dict(config.model_kwargs)
        info = model_info(config.model)
        if self.task.readout not in info.readouts:
            raise NNGraphError(f"the {config.task} task needs a {READOUTS[self.task.readout]} readout, which "
                               f"{config.model} does not have; use {', '.join(models_with(self.task.readout))}")
        if info.chooses_readout:
            kwargs.setdefault("readout", self.task.readout)
        self.record = model_record(config, self.task, train_set, example_index, self.loaders["train"],
                                   {**kwargs, "out_dim": self.task.out_dim})

        def build():
            return create_model(config.model, example=example, out_dim=self.task.out_dim, **kwargs)

        check_model_fits(config.model, build, self.device)
        self.model = build().to(self.device)
        # the processes of a distributed run share the host's memory, and each has its own GPU
        per_device = config.batch_size if self.device.type == "cpu" else math.ceil(config.batch_size / self.world)
        check_fits(self.model, per_device, _largest_graph(self.loaders), self.device)
        if config.compile:
            self.model.compile_layers()
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp_model = (nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
                          if self.world > 1 else self.model)
        self.augment = config.augment
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = math.ceil(len(self.train_index) / config.batch_size)
        self.total_steps = steps_per_epoch * config.epochs
        ratio = config.warmup_ratio
        self.warmup_steps = config.warmup_steps if ratio is None else math.ceil(ratio * self.total_steps)
        if ratio is None and not config.time_budget and self.warmup_steps > self.total_steps and self.rank == 0:
            print(f"warning: --warmup-steps {self.warmup_steps} exceeds this run's {self.total_steps} steps, so the "
                  f"learning rate never reaches --lr {config.lr:g}; pass --warmup-ratio 0.1 (a tenth of the run) or "
                  "fewer --warmup-steps", file=sys.stderr, flush=True)
        self.step = 0
        self.epoch = 0
        self.train_seconds = 0.0  # training time so far, evaluation excluded
        self.evaluated_at = 0.0  # train_seconds at the last evaluation (time-budget runs)
        self.best: float | None = None
        self.best_epoch = -1
        self.history: list[dict] = []

    # ---- schedule ---------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up to lr over the warm-up steps, then cosine decay to 0 at the last step
        (or, with a time budget, at the end of the budget).

        With ``warmup_ratio`` r and a time budget T the warm-up is in training seconds t:
        lr t / (r T) up to r T, then lr/2 (1 + cos(pi (t - r T) / (T - r T))).
        """
        c = self.config
        if c.time_budget and c.warmup_ratio is not None:
            warm = c.warmup_ratio * c.time_budget
            if self.train_seconds < warm:
                return c.lr * self.train_seconds / warm
            return c.lr * cosine_decay(self.train_seconds - warm, max(c.time_budget - warm, 1e-9))
        if step < self.warmup_steps:
            return c.lr * (step + 1) / self.warmup_steps
        if c.time_budget:
            progress = self.train_seconds / c.time_budget
        else:
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return c.lr * cosine_decay(progress)

    # ---- checkpoints --------------------------------------------------------------
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "step": self.step, "train_seconds": self.train_seconds, "evaluated_at": self.evaluated_at,
                "best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                "rng": torch.get_rng_state(), "config": self.config.to_json(), "corpus": self.corpus}

    def load(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("corpus") not in (None, self.corpus):  # None: a migrated run
            raise NNGraphError(f"--resume: the corpus {self.config.data} changed since {self.out} started (other "
                               "items or shard digests); resume on the corpus it was trained on, or start again "
                               "with --overwrite")
        self.load_model(state.get("model"), self.out / LAST)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.train_seconds, self.evaluated_at = float(state["train_seconds"]), float(state["evaluated_at"])
            self.best, self.best_epoch, self.history = state["best"], int(state["best_epoch"]), list(state["history"])
            torch.set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise NNGraphError(f"{self.out / LAST} is damaged or not a checkpoint of this nngraph "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:80]}); start the run again "
                               "with --overwrite") from None

    def load_model(self, weights: Any, path: Path) -> None:
        """The model's parameters from a checkpoint's ``weights`` (a state_dict), or one line."""
        try:
            self.model.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError):
            raise NNGraphError(f"the checkpoint {path} does not fit this model (its config or nngraph changed, or "
                               "the file was replaced); start the run in a new --out folder") from None

    # ---- loop ---------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True) -> dict:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(self.out, exc) from exc
        if self.rank == 0:  # one writer per run folder
            lock_folder(self.out, "a training run")
        last = self.out / LAST
        if resume:
            refuse_legacy(self.out)
        if resume and last.exists():
            self.load(load_state(last))
            if self.rank == 0:
                self.restore_derived()
        elif resume and not (self.out / "config.json").exists():
            raise NNGraphError(f"--resume: no checkpoint in {self.out}; start the run without --resume")
        if self.rank == 0 and not (resume and (self.out / "config.json").exists()):  # a resumed run keeps its record
            atomic_write_json(self.out / "config.json", self.config.to_json(), indent=2, allow_nan=True)
        if self.rank == 0:  # what rebuilds the model without the corpus (nngraph.run.load_run)
            atomic_write_json(self.out / MODEL_RECORD, {**self.record, "corpus_path": corpus_paths(self.config.data,
                                                                                                   self.out)}, indent=2)
        while self.epoch < self.config.epochs and not self.out_of_time() and not self.plateaued():
            start = time.perf_counter()
            train_loss = self.train_epoch(progress)
            self.epoch += 1
            if not self.evaluation_due():
                continue
            val = self.evaluate("val")
            record = {"epoch": self.epoch, "train_loss": train_loss, "lr": self.lr_at(self.step - 1),
                      "seconds": time.perf_counter() - start, "train_seconds": self.train_seconds,
                      **{f"val_{k}": v for k, v in val.items() if not isinstance(v, list)}}
            if self.config.time_budget:  # the accuracy-against-time curve
                self.evaluated_at = self.train_seconds
                test = self.evaluate("test")
                record.update({f"test_{k}": v for k, v in test.items() if not isinstance(v, list)})
            self.history.append(record)
            score = val[self.task.metric]
            better = self.best is None or (score > self.best if self.task.higher_is_better else score < self.best)
            if better:
                self.best, self.best_epoch = score, self.epoch
            if self.rank == 0:  # the commit, then the files derived from it (see the module's docstring)
                save_state(last, self.state())
                if better:
                    self.save_best()
                self.write_metrics_lines()
            if progress and self.rank == 0:
                print(f"epoch {self.epoch}/{self.config.epochs}  train loss {train_loss:.4f}  "
                      f"val {self.task.metric} {score:.4f}  ({record['seconds']:.1f} s)", flush=True)
        if self.world > 1:  # every process tests the best checkpoint rank 0 has written
            dist.barrier()
        return self.finish()

    def save_best(self) -> None:
        save_weights(self.out / BEST, self.model.state_dict(), epoch=self.epoch)

    def write_metrics_lines(self) -> None:
        """``metrics.jsonl``: one JSON line per evaluation, rewritten from the history."""
        atomic_write_json_lines(self.out / "metrics.jsonl", self.history)

    def restore_derived(self) -> None:
        """After loading the last commit: the best checkpoint and the metrics lines a kill
        after the commit may have left behind it."""
        best = self.out / BEST
        saved_epoch = load_weights(best)[1].get("epoch") if best.exists() else None
        if self.best_epoch == self.epoch and saved_epoch != self.epoch:
            self.save_best()  # the committed model is the best one
        elif self.best_epoch >= 0 and saved_epoch != self.best_epoch:
            raise NNGraphError(f"{best} does not hold the best epoch {self.best_epoch} of {self.out} (it was "
                               "removed or replaced); start the run again with --overwrite")
        self.write_metrics_lines()

    def out_of_time(self) -> bool:
        return bool(self.config.time_budget) and self.train_seconds >= self.config.time_budget

    def plateaued(self) -> bool:
        """Early stopping: the last ``patience`` epochs brought no better validation metric."""
        patience = self.config.patience
        return patience is not None and self.best_epoch >= 0 and self.epoch - self.best_epoch >= patience

    def stop_reason(self) -> str:
        return "patience" if self.plateaued() else "time budget" if self.out_of_time() else "epochs"

    def evaluation_due(self) -> bool:
        """Every epoch; with a time budget (and no patience), after each 1/10 of it and when it runs out."""
        budget = self.config.time_budget
        if not budget or self.config.patience is not None:
            return True
        return (self.out_of_time() or self.epoch >= self.config.epochs
                or self.train_seconds - self.evaluated_at >= budget / 10)

    def train_epoch(self, progress: bool) -> float:
        c = self.config
        gen = torch.Generator().manual_seed(c.seed * 100_003 + self.epoch)
        order = self.train_index[torch.randperm(len(self.train_index), generator=gen)]
        self.ddp_model.train()
        total, count = 0.0, 0
        started = time.perf_counter()
        with Progress(f"epoch {self.epoch + 1}", len(order), "networks", enabled=progress and self.rank == 0) as bar:
            for index in self.loaders["train"].split_batches(order, c.batch_size, shuffle=True, generator=gen):
                if self.out_of_time():
                    break
                step_started = time.perf_counter()
                shard = index.tensor_split(self.world)[self.rank] if self.world > 1 else index
                batch, items = self.loaders["train"].make_batch(shard, c.permute_augment, self.augment, gen)
                batch, targets = to_device(batch, self.device), to_device(self.task.targets(items), self.device)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(self.step)
                with autocast(self.device, self.precision):
                    output = self.ddp_model(batch)
                loss = self.task.loss(float32(output), targets, batch)
                weighted = loss * (len(shard) * self.world / len(index))
                self.optimizer.zero_grad(set_to_none=True)
                weighted.backward()
                if c.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.optimizer.step()
                self.step += 1
                total += loss.item() * len(shard)
                self.train_seconds += self._agreed_seconds(time.perf_counter() - step_started)
                count += len(shard)
                rate = count * self.world / max(time.perf_counter() - started, 1e-9)
                bar.update(len(index), f"{rate:.0f} networks/s  loss {total / count:.4f}")
        if self.world > 1:  # the mean over all processes' networks
            sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        return total / max(count, 1)

    def _agreed_seconds(self, seconds: float) -> float:
        """One step's time, the same in every process (the slowest one's), so that all
        processes of a distributed time-budget run stop after the same step."""
        if self.world > 1 and self.config.time_budget:
            t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return float(t)
        return seconds

    @torch.no_grad()
    def evaluate(self, split: str, batch_size: int | None = None) -> dict:
        return self.task.metrics(self.predict(split, batch_size))

    @torch.no_grad()
    def predict(self, split: str, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """The task's per-network predictions over a whole split."""
        self.model.eval()
        loader = self.loaders[split]
        parts: dict[str, list[torch.Tensor]] = {}
        batches = loader.split_batches(torch.arange(len(loader)), batch_size or self.config.batch_size)
        for index in batches:
            batch, items = loader.make_batch(index)
            batch, targets = to_device(batch, self.device), to_device(self.task.targets(items), self.device)
            with autocast(self.device, self.precision):
                output = self.model(batch)
            for k, v in self.task.predictions(float32(output), targets, batch).items():
                parts.setdefault(k, []).append(v.cpu())
        item_order = torch.argsort(torch.cat(batches))  # back to the split's order
        return {k: torch.cat(v)[item_order] for k, v in parts.items()}

    def finish(self) -> dict:
        best = self.out / BEST
        if best.exists():
            self.load_model(load_weights(best)[0], best)
        test_predictions = self.predict("test")
        test = self.task.metrics(test_predictions)
        val = self.evaluate("val")
        result = {"task": self.config.task, "model": self.config.model, "best_epoch": self.best_epoch,
                  "val": val, "test": test, "parameters": sum(p.numel() for p in self.model.parameters()),
                  "train_seconds": self.train_seconds, "epochs_run": self.epoch, "stop": self.stop_reason(),
                  "history": self.history}
        if self.rank == 0:
            result.update(self.task.reports(self.loaders["test"].dataset))
            result["plots"] = [str(p) for p in self.write_plots(test, test_predictions)]
            atomic_write_json(self.out / "metrics.json", result, indent=2, allow_nan=True)
        return result

    def write_plots(self, test: dict, predictions: dict[str, torch.Tensor]) -> list[Path]:
        """Learning curves, and the task's own figures of the test split."""
        from nngraph import plots

        paths = [plots.learning_curves(self.history, self.out / "learning_curves.png", self.task.metric)]
        return paths + self.task.figures(self.out, test, predictions, self.test_examples)

    @torch.no_grad()
    def test_examples(self, n: int) -> tuple[Any, dict[str, torch.Tensor], Any]:
        """(model output in fp32, targets, batch) of the first ``n`` test networks, on the run's device."""
        loader = self.loaders["test"]
        batch, items = loader.make_batch(torch.arange(min(n, len(loader))))
        batch, targets = to_device(batch, self.device), to_device(self.task.targets(items), self.device)
        with autocast(self.device, self.precision):
            output = self.model(batch)
        return float32(output), targets, batch


def train(config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Run (or resume) a training run; returns the final metrics (also in ``metrics.json``).

    ``config.out`` may hold a run only with ``resume`` (same settings) or ``overwrite``
    (its files are cleared first); settings are validated before any data is read. One
    process writes a run folder at a time: another one training into it is refused.
    """
    config.validate()
    started_here = _init_distributed(config.device)
    try:
        rank, world = _distributed_rank()
        if rank == 0 and Path(config.out).is_dir():  # before anything in it is cleared or read
            lock_folder(config.out, "a training run")
        prepare_run_folder(config, resume, overwrite, clear=rank == 0)
        if world > 1:  # no process looks at the folder again before rank 0 has cleared it
            dist.barrier()
        return Trainer(config).fit(resume=resume, progress=progress)
    finally:
        unlock_folder(config.out)
        if started_here:
            dist.destroy_process_group()


MODEL_RECORD = "model.json"


def model_record(config: TrainConfig, task, train_set, example_index: torch.Tensor, loader: GraphLoader,
                 model_args: dict[str, Any]) -> dict:
    """What rebuilds a run's model without its corpus (``model.json``, read by ``nngraph.run``).

    The model is rebuilt by ``create_model(model, example=batch, **model_args)`` on a batch of
    one freshly built network per architecture of the training example (``architectures``:
    SIREN specs of an INR corpus, CNN specs or graph templates of a zoo, whose tensors are
    ``architecture_tensors``: a base64 safetensors file), taking inputs of ``input_shape`` and
    collated in the corpus's edge window (``k_max``, ``width``): that batch has the example's
    layers, positions, degrees and kernel window, so every size (and every normalisation
    buffer's shape) is the trained model's; the buffers' values then come from the weights.
    ``task``: its name and constructor arguments (classes, loss, image size); ``activations``
    and ``edge_kinds``: the vocabulary the model's embeddings were made for.
    """
    import base64

    from safetensors.torch import save as st_save

    from nngraph.data.store import canonical_safetensors
    from nngraph.graph.graph import ACTIVATIONS, EDGE_KINDS

    architectures, input_shape, tensors = train_set.architecture_record(example_index)
    extra = {"architecture_tensors": base64.b64encode(canonical_safetensors(st_save(tensors))).decode()} \
        if tensors else {}
    return {"format": 1, "kind": train_set.kind, "architectures": architectures, "input_shape": input_shape, **extra,
            "k_max": loader.k_max, "width": loader.width, "model": config.model, "model_args": model_args,
            "task": {"name": config.task, "args": task_arguments(task)}, "activations": list(ACTIVATIONS),
            "edge_kinds": list(EDGE_KINDS)}


def task_arguments(task) -> dict[str, Any]:
    """The constructor arguments that rebuild ``task`` without its corpus (``create_task(name, **args)``):
    each argument of its class's ``__init__`` read back from the attribute ``<name>_name`` or, when
    there is none, ``<name>`` (a value, not a method: GeneralizeTask keeps ``loss`` as ``loss_name``)."""
    import inspect

    found = {}
    for name in list(inspect.signature(type(task).__init__).parameters)[1:]:
        value = getattr(task, f"{name}_name", getattr(task, name, None))
        if value is not None and not callable(value):
            found[name] = value
    return found


def corpus_paths(data: str, out: Path) -> dict[str, str]:
    """The corpus as an absolute path and relative to the run folder (either may still exist
    when the run is read from elsewhere or moved together with its corpus)."""
    absolute = Path(data).resolve()
    return {"absolute": str(absolute), "relative": os.path.relpath(absolute, out.resolve())}


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from a file, or one line saying why it is not one."""
    try:
        data = json.loads(read_bounded(path))
    except (OSError, ValueError, RecursionError) as exc:
        raise NNGraphError(f"{path} is not readable JSON ({type(exc).__name__}); pass a run folder written by "
                           "`nngraph train`, or start the run again with --overwrite") from None
    if not isinstance(data, dict):
        raise NNGraphError(f"{path} holds no JSON object; pass a run folder written by `nngraph train`")
    return data


def corpus_identity(manifest: dict) -> str:
    """SHA-256 of what a corpus holds: its kind, layout, architectures, items (labels,
    splits, ...) and the SHA-256 of every shard; the same for a rebuild with the same content."""
    content = [manifest["kind"], manifest["layout"], manifest["architectures"], manifest["items"],
               [[s.get("file"), s.get("sha256")] for s in manifest["shards"]]]
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=True).encode()).hexdigest()


def _largest_graph(loaders: dict[str, GraphLoader]) -> int:
    """Nodes of the largest network in any split."""
    return max(loader.largest_graph() for loader in loaders.values())


def _distributed_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _process_device(name: str, world: int) -> torch.device:
    """This process's device: ``name`` resolved; under torchrun on GPUs, the GPU of LOCAL_RANK."""
    device = resolve_device(name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _init_distributed(device: str = "auto") -> bool:
    """Join the process group when launched by torchrun; returns whether this call created it.

    NCCL when the run's device is a GPU (each process on the GPU of its LOCAL_RANK), else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = _process_device(device, int(os.environ["WORLD_SIZE"])).type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    return True
