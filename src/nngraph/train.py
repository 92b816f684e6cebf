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

Run folder and kill points: ``nngraph.training.folder`` (an epoch commits ``last.safetensors``
first; ``best.safetensors`` and ``metrics.jsonl`` are derived from it, so a resume after a kill
anywhere continues exactly). The corpus identity is checked on resume: a rebuilt corpus with
other content is refused.

The pieces: ``TrainConfig`` (``nngraph.training.config``: every setting declared once, checked
by ``validate`` before any data is read), ``training.build`` (corpus, task, loaders, model,
optimiser, schedule), ``training.folder`` (the run folder's files), ``training.evaluate``
(predictions over a split), ``training.distributed`` (torchrun). ``Trainer`` wires them; its
``fit`` and ``train_epoch`` are the loop.

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

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nngraph.checkpoint import LAST
from nngraph.device import autocast, float32, resolve_precision, to_device
from nngraph.errors import NNGraphError
from nngraph.io import lock_folder, unlock_folder
from nngraph.progress import Progress
from nngraph.training import distributed
from nngraph.training.build import build_run
from nngraph.training.config import TrainConfig, read_json_object
from nngraph.training.evaluate import first_examples, predict_split
from nngraph.training.folder import RUN_FILES, RunFolder, prepare_run_folder
from nngraph.training.record import MODEL_RECORD

__all__ = ["MODEL_RECORD", "RUN_FILES", "TrainConfig", "Trainer", "read_json_object", "train"]


class Trainer:
    """Wiring: a checked config, the run built from it (``training.build``), its folder
    (``training.folder``) and evaluation (``training.evaluate``); ``fit`` is the loop.

    ``checked``: the caller has already run ``config.validate()`` (``train`` does, before it touches
    the run folder); otherwise the config is checked here, before any data is read."""

    def __init__(self, config: TrainConfig, *, checked: bool = False):
        if not checked:
            config.validate()
        self.config, self.out = config, Path(config.out)
        self.rank, self.world = distributed.rank_and_world()
        self.device = distributed.process_device(config.device, self.world)
        self.precision = resolve_precision(config.precision)
        run = build_run(config, self.device, self.rank, self.world)
        self.task, self.loaders, self.train_index = run.task, run.loaders, run.train_index
        self.model, self.ddp_model, self.optimizer = run.model, run.ddp_model, run.optimizer
        self.schedule, self.record, self.corpus = run.schedule, run.record, run.corpus
        self.augment = config.augment
        self.folder = RunFolder(self.out, writer=self.rank == 0)
        self.step = 0
        self.epoch = 0
        self.train_seconds = 0.0  # training time so far, evaluation excluded
        self.evaluated_at = 0.0  # train_seconds at the last evaluation (time-budget runs)
        self.best: float | None = None
        self.best_epoch = -1
        self.history: list[dict] = []

    def lr_at(self, step: int) -> float:
        return self.schedule.lr_at(step, self.train_seconds)

    # ---- the loop -------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True) -> dict:
        state = self.folder.begin(resume)
        if state is not None:
            self.load(state)
            if self.rank == 0:
                self.folder.restore_derived(self.epoch, self.best_epoch, self.history, self.save_best)
        self.folder.write_records(self.config, self.record, resume)
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
            if self.rank == 0:  # the commit, then the files derived from it (see training.folder)
                self.folder.commit(self.state())
                if better:
                    self.save_best()
                self.write_metrics_lines()
            if progress and self.rank == 0:
                print(f"epoch {self.epoch}/{self.config.epochs}  train loss {train_loss:.4f}  "
                      f"val {self.task.metric} {score:.4f}  ({record['seconds']:.1f} s)", flush=True)
        if self.world > 1:  # every process tests the best checkpoint rank 0 has written
            dist.barrier()
        return self.finish()

    def train_epoch(self, progress: bool) -> float:
        """One pass over the shuffled training networks; the mean training loss."""
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
                weighted = loss * (len(shard) * self.world / len(index))  # DDP averages: each shard's share
                self.optimizer.zero_grad(set_to_none=True)
                weighted.backward()
                if c.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.optimizer.step()
                self.step += 1
                total += loss.item() * len(shard)
                seconds = time.perf_counter() - step_started
                if self.world > 1 and c.time_budget:  # every process stops after the same step
                    seconds = distributed.slowest(seconds, self.device)
                self.train_seconds += seconds
                count += len(shard)
                rate = count * self.world / max(time.perf_counter() - started, 1e-9)
                bar.update(len(index), f"{rate:.0f} networks/s  loss {total / count:.4f}")
        if self.world > 1:  # the mean over all processes' networks
            total, count = distributed.summed(total, count, self.device)
        return total / max(count, 1)

    # ---- when to evaluate and stop ------------------------------------------------
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

    # ---- checkpoints (the files: training.folder) ----------------------------------
    def state(self) -> dict:
        """Everything a resume needs: the epoch's commit."""
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

    def save_best(self) -> None:
        self.folder.save_best(self.model.state_dict(), self.epoch)

    def write_metrics_lines(self) -> None:
        self.folder.write_metrics_lines(self.history)

    # ---- evaluation (training.evaluate) ---------------------------------------------
    def evaluate(self, split: str, batch_size: int | None = None) -> dict:
        return self.task.metrics(self.predict(split, batch_size))

    def predict(self, split: str, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """The task's per-network predictions over a whole split, in its order."""
        return predict_split(self.model, self.task, self.loaders[split], self.device, self.precision,
                             batch_size or self.config.batch_size)

    def test_examples(self, n: int) -> tuple[Any, dict[str, torch.Tensor], Any]:
        """(model output in fp32, targets, batch) of the first ``n`` test networks, on the run's device."""
        return first_examples(self.model, self.task, self.loaders["test"], self.device, self.precision, n)

    def finish(self) -> dict:
        """The best checkpoint on validation and test: ``metrics.json`` and the plots."""
        best = self.folder.best_weights()
        if best is not None:
            self.load_model(best, self.out / "best.safetensors")
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
            self.folder.write_result(result)
        return result

    def write_plots(self, test: dict, predictions: dict[str, torch.Tensor]) -> list[Path]:
        """Learning curves, and the task's own figures of the test split."""
        from nngraph import plots

        paths = [plots.learning_curves(self.history, self.out / "learning_curves.png", self.task.metric)]
        return paths + self.task.figures(self.out, test, predictions, self.test_examples)


def train(config: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Run (or resume) a training run; returns the final metrics (also in ``metrics.json``).

    ``config.out`` may hold a run only with ``resume`` (same settings) or ``overwrite``
    (its files are cleared first); settings are validated before any data is read. One
    process writes a run folder at a time: another one training into it is refused.
    """
    config.validate()  # the one check of this path: before the device, the run folder or any data
    started_here = distributed.init_distributed(config.device)
    try:
        rank, world = distributed.rank_and_world()
        if rank == 0 and Path(config.out).is_dir():  # before anything in it is cleared or read
            lock_folder(config.out, "a training run")
        prepare_run_folder(config, resume, overwrite, clear=rank == 0)
        if world > 1:  # no process looks at the folder again before rank 0 has cleared it
            dist.barrier()
        return Trainer(config, checked=True).fit(resume=resume, progress=progress)
    finally:
        unlock_folder(config.out)
        if started_here:
            dist.destroy_process_group()
