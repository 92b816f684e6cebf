"""``TrainConfig``: everything that defines a training run, each setting declared once.

A field carries its type and default (the dataclass) and, in its metadata, its help text,
its valid range (``AtLeast``, ``Finite``, ``Between``) or choices, and how the command line
shows it (``metavar``, ``flag``). ``validate()`` checks every range and choice from that
declaration and the device's name, then the rules that join settings (a task's readout,
coordinate augmentations, model arguments, --compile); the CLI's ``nngraph train`` options
are generated from the same fields (``nngraph.cli_options``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from nngraph.device import DEVICE_CHOICES, PRECISIONS, parse_device_name
from nngraph.errors import NNGraphError
from nngraph.io import read_bounded
from nngraph.pipeline.param_augment import ParamAugment


@dataclass(frozen=True)
class AtLeast:
    """An integer n >= low."""

    low: int

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= self.low
        return None if ok else f"an integer >= {self.low}"


@dataclass(frozen=True)
class Finite:
    """A finite real x with x > low (``strict``) or x >= low, and x < ``below`` when given."""

    low: float = 0.0
    strict: bool = False
    below: float | None = None

    def problem(self, value: Any) -> str | None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (value <= self.low if self.strict else value < self.low):
            return f"a finite number {'>' if self.strict else '>='} {self.low:g}"
        if self.below is not None and value >= self.below:
            return f"below {self.below:g}"
        return None


@dataclass(frozen=True)
class Between:
    """A finite real low <= x <= high, described as ``what``."""

    low: float
    high: float
    what: str = "a number"

    def problem(self, value: Any) -> str | None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = number and self.low <= value <= self.high
        return None if ok else f"{self.what} between {self.low:g} and {self.high:g}"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, range: Any = None,  # noqa: A002 - argparse's name
            choices: Callable[[], list[str]] | tuple[str, ...] | None = None, metavar: str | None = None,
            flag: str | None = None, cli_required: bool | None = None, conflicts: tuple[str, str] | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """A ``TrainConfig`` field with its declaration in the metadata.

    ``range``: an ``AtLeast`` / ``Finite`` / ``Between`` (None passes: the setting is off);
    ``choices``: the valid values (a callable when they come from a registry);
    ``flag``: the option's name when it is not ``--field-name``; ``cli_required``: whether
    the option must be given (default: when the field has no default); ``conflicts``:
    (other field, what both set): giving both options is refused.
    """
    metadata = {"help": help, "range": range, "choices": choices, "metavar": metavar, "flag": flag,
                "cli_required": cli_required, "conflicts": conflicts}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _task_names() -> list[str]:
    from nngraph.tasks import TASKS

    return sorted(TASKS)


def _model_names() -> list[str]:
    from nngraph.models import model_names

    return model_names()


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in the run folder as ``config.json``."""

    task: str = setting(help="what to predict; required", choices=_task_names)
    data: str = setting(help="corpus folder built by `nngraph data`; required", metavar="DIR")
    model: str = setting(help="metanetwork or baseline; required", choices=_model_names)
    out: str = setting(help="run folder (default: runs/<task>-<model>)", metavar="RUN", cli_required=False)
    epochs: int = setting(10, "training epochs", range=AtLeast(1))
    batch_size: int = setting(64, "networks per batch", range=AtLeast(1))
    lr: float = setting(1e-3, "peak AdamW learning rate", range=Finite(strict=True))
    weight_decay: float = setting(0.01, "AdamW weight decay", range=Finite())
    warmup_steps: int = setting(50, "linear warm-up steps before the cosine decay", range=AtLeast(0),
                                conflicts=("warmup_ratio", "the warm-up"))
    warmup_ratio: float | None = setting(
        None, "warm-up over this fraction of the run instead (0..1; with --time-budget, of its seconds)",
        range=Between(0, 1, "a fraction of the run"), metavar="R")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: off)", range=Finite())
    seed: int = setting(0, "seed of initialisation, shuffling and augmentation", range=AtLeast(0))
    permute_augment: bool = setting(False, "random neuron permutations of training networks")
    canonical_signs: bool = setting(
        False, "put every network in its canonical sign pattern first (hidden neurons of odd activations, "
               "sine/tanh, flipped so that their bias is >= 0; the function is unchanged)")
    weight_noise: float = setting(0.0, "std of Gaussian noise added to every training parameter", range=Finite())
    rotate_augment: float = setting(
        0.0, "rotate each training INR's input coordinates by U(-D, D) degrees, folded exactly into its first "
             "layer (classify; the published runs: 45)", range=Finite(), metavar="DEGREES")
    translate_augment: float = setting(
        0.0, "shift each training INR's coordinates by U(-T, T) per axis, image on [-1, 1] (classify; the "
             "published runs: 0.25)", range=Finite(), metavar="T")
    scale_augment: float = setting(
        0.0, "scale each training INR's coordinates by U(1-S, 1+S) (classify; the published runs: 0.2)",
        range=Finite(below=1), metavar="S")
    weight_dropout: float = setting(
        0.0, "zero each training parameter with probability P, the rest rescaled by 1/(1-P) (INR corpora; the "
             "published runs: 0.01)", range=Finite(below=1), metavar="P")
    patience: int | None = setting(
        None, "early stopping: stop when the validation metric has not improved for N epochs (the best "
              "checkpoint is tested; default: off)", range=AtLeast(1), metavar="N")
    model_kwargs: dict[str, Any] = setting(
        help="further model keyword arguments, e.g. '{\"heads\": 4, \"reverse_edges\": true}'", factory=dict,
        flag="--model-args", metavar="JSON")
    compile: bool = setting(False, "torch.compile the model's layers (needs a C++ compiler)")
    max_train: int | None = setting(None, "use only the first N training networks", range=AtLeast(1))
    time_budget: float | None = setting(
        None, "train for this many seconds (evaluation excluded), --epochs being an upper bound; the cosine "
              "decay spans the budget", range=Finite(strict=True), metavar="SECONDS")
    device: str = setting("auto", "where to run: auto takes a GPU when there is one (under torchrun on GPUs: "
                                  "the GPU of LOCAL_RANK)", metavar="{auto,cpu,cuda,cuda:N}")
    precision: str = setting("fp32", "bf16: bfloat16 autocast of the model (loss, metrics and checkpoints stay "
                                     "fp32)", choices=PRECISIONS)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Refuse settings no run can use, before any data is read: one line naming the
        option and its type, valid range or choices (model arguments through the model registry)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, declared = getattr(self, f.name), f.metadata
            kind = value_type(hints[f.name])
            if not (value is None and _optional(hints[f.name]) or _is_a(value, kind)):
                raise NNGraphError(f"{option_name(f)} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
            choices = declared["choices"]() if callable(declared["choices"]) else declared["choices"]
            if choices is not None and value not in choices:
                raise NNGraphError(f"{option_name(f)} must be one of {', '.join(choices)}, got {value!r}")
            rule = declared["range"].problem(value) if declared["range"] is not None and value is not None else None
            if rule is not None:
                raise NNGraphError(f"{option_name(f)} must be {rule}, got {value!r}")
        if parse_device_name(self.device) is None:  # whether it exists: when the run starts (resolve_device)
            raise NNGraphError(f"--device: unknown device {self.device!r}; use {DEVICE_CHOICES} (N an integer >= 0)")
        self._check_combinations()

    def _check_combinations(self) -> None:
        """The rules that join settings: the task's readout and coordinates, the model's arguments."""
        from nngraph.models import model_info, models_with
        from nngraph.models.readout import READOUTS
        from nngraph.models.registry import check_model_args
        from nngraph.tasks import TASKS

        task = TASKS[self.task]
        if self.augment.maps_coordinates and not task.coordinate_invariant:
            keep = ", ".join(name for name, cls in sorted(TASKS.items()) if cls.coordinate_invariant)
            raise NNGraphError("--rotate-augment, --translate-augment and --scale-augment change the image an INR "
                               f"renders, which --task {self.task} depends on; use them with --task {keep}")
        check_model_args(self.model, self.model_kwargs)
        info = model_info(self.model)
        if task.readout not in info.readouts:
            raise NNGraphError(f"the {self.task} task needs a {READOUTS[task.readout]} readout, which "
                               f"{self.model} does not have; use {', '.join(models_with(task.readout))}")
        if self.compile and not hasattr(info.cls, "compile_layers"):
            compilable = [name for name in _model_names() if hasattr(model_info(name).cls, "compile_layers")]
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


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a JSON object"}


def value_type(hint: Any) -> type:
    """The type a field holds (``int`` of ``int | None``), which its option's text is parsed as."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _is_a(value: Any, kind: type) -> bool:
    """Whether a (JSON) value is of a field's type: a bool is no number, an integer is a float."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def option_name(f: dataclasses.Field) -> str:
    """The command-line option of a ``TrainConfig`` field: ``--batch-size`` for ``batch_size``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


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
