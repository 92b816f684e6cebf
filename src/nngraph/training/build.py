"""A training run built from a checked ``TrainConfig``: the corpus's splits, the task, the
loaders, the model (checked against the device's memory before it is allocated), its
distributed wrapper, the optimiser and the learning-rate schedule.

Seeded: the model is initialised right after ``torch.manual_seed(config.seed)`` and the
example batch it is sized on, so one config builds one model.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import nn

from nngraph.errors import NNGraphError
from nngraph.memory import check_fits, check_model_fits
from nngraph.models import create_model, model_info
from nngraph.pipeline.loader import GraphLoader
from nngraph.pipeline.param_augment import ParamAugment
from nngraph.schedule import WarmupCosine
from nngraph.training.config import TrainConfig
from nngraph.training.record import corpus_identity, model_record

EXAMPLE_NETWORKS = 512  # the model is sized on a batch of the first this many training networks


@dataclass
class Run:
    """What a run trains with; ``model`` is the bare module, ``ddp_model`` the one a step calls
    (the same module outside distributed runs)."""

    task: object
    loaders: dict[str, GraphLoader]
    train_index: torch.Tensor  # [n_train] the training networks used (--max-train keeps the first n)
    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    record: dict  # model.json
    corpus: str  # corpus identity, checked on resume


def open_dataset(root: str, split: str):
    """One split of the corpus in ``root``, of the corpus class its manifest names."""
    from nngraph.data.corpus import Corpus

    return Corpus.open(root, split)


def build_run(config: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> Run:
    """The run of ``config`` (already validated) on ``device``, process ``rank`` of ``world``."""
    from nngraph.tasks import create_task

    train_set = open_dataset(config.data, "train")
    task = create_task(config.task, train_set)
    if not train_set.weight_augments and config.augment not in (ParamAugment(), ParamAugment(noise=config.weight_noise)):
        raise NNGraphError("coordinate augmentations and --weight-dropout need an INR corpus; "
                           f"{config.data} is a {train_set.kind} corpus")
    loaders = GraphLoader.for_splits(
        {"train": train_set, **{split: open_dataset(config.data, split) for split in ("val", "test")}},
        canonical_signs=config.canonical_signs)
    train_index = torch.arange(len(train_set))
    if config.max_train is not None:
        train_index = train_index[: config.max_train]
    model, record = _build_model(config, task, train_set, loaders, train_index, device, world)
    device_ids = [device.index] if device.type == "cuda" else None
    ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = WarmupCosine.for_run(config.lr, math.ceil(len(train_index) / config.batch_size), config.epochs,
                                    config.warmup_steps, config.warmup_ratio, config.time_budget)
    if schedule.warmup_outlasts_the_run() and rank == 0:
        print(f"warning: --warmup-steps {schedule.warmup_steps} exceeds this run's {schedule.total_steps} steps, so "
              f"the learning rate never reaches --lr {config.lr:g}; pass --warmup-ratio 0.1 (a tenth of the run) or "
              "fewer --warmup-steps", file=sys.stderr, flush=True)
    return Run(task, loaders, train_index, model, ddp_model, optimizer, schedule, record,
               corpus_identity(train_set.manifest))


def _build_model(config: TrainConfig, task, train_set, loaders: dict[str, GraphLoader], train_index: torch.Tensor,
                 device: torch.device, world: int) -> tuple[nn.Module, dict]:
    """(the seeded model on ``device``, its ``model.json`` record); a model or batch too large
    for the device's memory is refused before it is allocated."""
    torch.manual_seed(config.seed)
    example_index = train_index[: min(EXAMPLE_NETWORKS, len(train_index))]
    example, _ = loaders["train"].make_batch(example_index)
    kwargs = dict(config.model_kwargs)
    if model_info(config.model).chooses_readout:
        kwargs.setdefault("readout", task.readout)
    record = model_record(config, task, train_set, example_index, loaders["train"],
                          {**kwargs, "out_dim": task.out_dim})

    def build():
        return create_model(config.model, example=example, out_dim=task.out_dim, **kwargs)

    check_model_fits(config.model, build, device)
    model = build().to(device)
    # the processes of a distributed run share the host's memory, and each has its own GPU
    per_device = config.batch_size if device.type == "cpu" else math.ceil(config.batch_size / world)
    check_fits(model, per_device, largest_graph(loaders), device)
    if config.compile:
        model.compile_layers()
    return model, record


def largest_graph(loaders: dict[str, GraphLoader]) -> int:
    """Nodes of the largest network in any split."""
    return max(loader.largest_graph() for loader in loaders.values())
