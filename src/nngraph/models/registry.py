"""create_model(name, **kwargs): every metanetwork and baseline by name, and what each can do.

A model class registers itself where it is defined, timm-style:

    @register_model("ngt", readouts=("invariant", "parameters"), probes=True)
    class NGT(GraphMetanetwork): ...

and states its capabilities there (``ModelInfo``), so the training loop asks the
registry (``model_info(name)``) instead of knowing model names. With ``example=batch``
the input sizes (feature channels, positions, output neurons, degree histogram, probe
input shape) are read off an example batch of training graphs by the class's
``from_example``; explicit keyword arguments override them.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError


@dataclass(frozen=True)
class ModelInfo:
    """A registered model and its capabilities.

    ``readouts``: the heads it can build, ``"invariant"`` (one vector per network) and/or
    ``"parameters"`` (a value per parameter); a model with more than one takes
    ``readout=`` as a keyword. ``probes``: takes probe features (``probes=``).
    ``baseline``: one of the baselines the metanetworks are compared with.
    """

    name: str
    cls: type[nn.Module]
    readouts: tuple[str, ...] = ("invariant",)
    probes: bool = False
    baseline: bool = False

    @property
    def chooses_readout(self) -> bool:
        return len(self.readouts) > 1


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, *, readouts: tuple[str, ...] = ("invariant",), probes: bool = False,
                   baseline: bool = False) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` available as ``create_model(name, ...)``."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, cls, tuple(readouts), probes, baseline)
        return cls

    return register


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise NNGraphError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    return _MODELS[name]


def models_with(readout: str | None = None, probes: bool | None = None) -> list[str]:
    """Names of the models that can build ``readout`` / take probe features."""
    return [name for name, info in sorted(_MODELS.items())
            if (readout is None or readout in info.readouts) and (probes is None or info.probes == probes)]


def create_model(name: str, example: Batch | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name``; ``example`` fills in input sizes, ``kwargs`` the rest."""
    cls = model_info(name).cls
    if example is not None:
        return cls.from_example(example, **kwargs)
    return cls(**kwargs)


# Constructor arguments that create_model / the training loop fill in, not the user.
_FILLED_IN = {"node_in", "edge_in", "max_positions", "num_outputs", "out_dim", "deg", "input_shape", "stats",
              "readout", "param_names", "batch", "example"}
_MAY_BE_ZERO = {"probes", "fourier_features", "first_k", "last_k"}


def _signature_parameters(name: str) -> list[inspect.Parameter]:
    """The parameters a user may reach: ``from_example``'s, and the constructor's with defaults
    when ``from_example`` passes ``**kwargs`` on."""
    cls = model_info(name).cls
    params = list(inspect.signature(cls.from_example).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        params += [p for p in inspect.signature(cls).parameters.values() if p.default is not p.empty]
    return [p for p in params if p.name not in _FILLED_IN and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _optional_ints(name: str) -> set[str]:
    """Arguments of model ``name`` annotated ``int | None`` (None: a size derived from others)."""
    return {p.name for p in _signature_parameters(name)
            if str(p.annotation).replace(" ", "") in ("int|None", "Optional[int]", "None|int")}


def model_arguments(name: str) -> dict[str, Any]:
    """{argument: default (None if it has none)} that a user may pass to model ``name``.

    The arguments of the class's ``from_example``, plus the constructor's arguments with
    defaults when ``from_example`` passes ``**kwargs`` on. Sizes read off the example
    batch and the readout (the task's choice) are not the user's to pass.
    """
    found: dict[str, Any] = {}
    for p in _signature_parameters(name):
        found.setdefault(p.name, None if p.default is p.empty else p.default)
    return found


def check_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse, before any data is read, keyword arguments that model ``name`` does not take
    or cannot be built with (one line naming the argument and its valid values).

    Generic checks by the type of each argument's default (or its ``int | None`` annotation
    where the default is None); a model class with rules of its
    own (NG-T: heads divide hidden) states them in a classmethod ``check_args(kwargs)``.
    """
    info, valid = model_info(name), model_arguments(name)
    if kwargs.get("probes") and not info.probes:
        raise NNGraphError(f"{name} takes no 'probes' (probe features); drop --probes or use "
                           f"{', '.join(models_with(probes=True))}")
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise NNGraphError(f"model {name} takes no argument {unknown[0]!r} (from --model-args, --hidden, --layers "
                           f"or --probes); its arguments are: {', '.join(sorted(valid))}")
    optional_ints = _optional_ints(name)
    for arg, value in kwargs.items():
        default = valid[arg]
        if arg in optional_ints and value is None:
            continue
        if arg in optional_ints and (isinstance(value, bool) or not isinstance(value, int)):
            low = 0 if arg in _MAY_BE_ZERO else 1
            raise NNGraphError(f"model argument {arg!r} of {name} must be an integer >= {low} (or left out), "
                               f"got {value!r}")
        if isinstance(default, bool) or isinstance(value, bool):
            if not isinstance(value, bool) or not isinstance(default, bool):
                raise NNGraphError(f"model argument {arg!r} of {name} must be {type(default).__name__}, got {value!r}")
        elif isinstance(value, int) or isinstance(default, int):
            low = 0 if arg in _MAY_BE_ZERO else 1
            if not isinstance(value, int) or value < low:
                raise NNGraphError(f"model argument {arg!r} of {name} must be an integer >= {low}, got {value!r}")
        elif isinstance(default, float):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise NNGraphError(f"model argument {arg!r} of {name} must be a finite number >= 0, got {value!r}")
            if arg == "dropout" and value >= 1:
                raise NNGraphError(f"model argument 'dropout' of {name} must be in [0, 1), got {value!r}")
    check_args = getattr(info.cls, "check_args", None)
    if check_args is not None:
        check_args({**valid, **kwargs})
