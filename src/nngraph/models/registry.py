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

from dataclasses import dataclass
from typing import Any, Callable

import torch
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


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
