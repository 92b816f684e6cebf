"""create_model(name, **kwargs): every metanetwork and baseline by name.

With ``example=batch`` the input sizes (feature channels, positions, output neurons,
degree histogram, probe input shape) are read off an example batch of training graphs;
explicit keyword arguments override them.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.graph.graph import ROLE_OUTPUT
from nngraph.models.embeddings import WeightStatistics
from nngraph.models.gnn import NGGNN, degree_histogram
from nngraph.models.transformer import NGT

_GRAPH_MODELS: dict[str, type[nn.Module]] = {"nggnn": NGGNN, "ngt": NGT}


def graph_model_sizes(example: Batch, reverse_edges: bool = False, with_degrees: bool = False) -> dict[str, Any]:
    """Constructor sizes of a graph metanetwork read off an example batch."""
    spec = example.spec[0] if isinstance(example.spec, list) else example.spec
    sizes: dict[str, Any] = {
        "node_in": example.x.shape[1],
        "edge_in": example.edge_attr.shape[1],
        "max_positions": int(example.node_pos.max()) + 1 + 16,  # room for deeper networks than the example
        "num_outputs": int((example.node_role == ROLE_OUTPUT).sum()) // int(example.num_graphs),
        "input_shape": tuple(spec.input_shape),
        "stats": WeightStatistics.fit(example),
    }
    if with_degrees:
        sizes["deg"] = degree_histogram(example, reverse_edges)
    return sizes


def _baselines() -> dict[str, Callable[..., nn.Module]]:
    try:
        from nngraph.models.baselines import BASELINES
    except ImportError:  # the baselines package is optional until it lands
        return {}
    return dict(BASELINES)


def model_names() -> list[str]:
    return sorted([*_GRAPH_MODELS, *_baselines()])


def create_model(name: str, example: Batch | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name``; ``example`` fills in input sizes, ``kwargs`` the rest."""
    if name in _GRAPH_MODELS:
        cls = _GRAPH_MODELS[name]
        if example is not None:
            sizes = graph_model_sizes(example, kwargs.get("reverse_edges", False), with_degrees=cls is NGGNN)
            kwargs = {**sizes, **kwargs}
        return cls(**kwargs)
    baselines = _baselines()
    if name in baselines:
        cls = baselines[name]
        if example is not None:
            return cls.from_example(example, **kwargs)
        return cls(**kwargs)
    raise NNGraphError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")


# Constructor arguments that create_model / the training loop fill in, not the user.
_FILLED_IN = {"node_in", "edge_in", "max_positions", "num_outputs", "out_dim", "deg", "input_shape", "stats",
              "readout", "param_names", "batch"}
_MAY_BE_ZERO = {"probes", "fourier_features", "first_k", "last_k"}


def model_arguments(name: str) -> dict[str, Any]:
    """{argument: default (None if it has none)} that a user may pass to model ``name``.

    Graph models: their constructor's arguments; baselines: those of ``from_example``,
    plus the constructor's arguments with defaults when ``from_example`` passes
    ``**kwargs`` on. Sizes read off the example batch are not the user's to pass.
    """
    if name not in model_names():
        raise NNGraphError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    if name in _GRAPH_MODELS:
        params = list(inspect.signature(_GRAPH_MODELS[name]).parameters.values())
    else:
        cls = _baselines()[name]
        params = list(inspect.signature(cls.from_example).parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in params):
            params += [p for p in inspect.signature(cls).parameters.values() if p.default is not p.empty]
    found: dict[str, Any] = {}
    for p in params:
        if p.name not in _FILLED_IN and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            found.setdefault(p.name, None if p.default is p.empty else p.default)
    return found


def check_model_args(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse, before any data is read, keyword arguments that model ``name`` does not take
    or cannot be built with (one line naming the argument and its valid values)."""
    valid = model_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise NNGraphError(f"model {name} takes no argument {unknown[0]!r} (from --model-args, --hidden, --layers "
                           f"or --probes); its arguments are: {', '.join(sorted(valid))}")
    for arg, value in kwargs.items():
        default = valid[arg]
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
    if name == "ngt":
        hidden, heads = kwargs.get("hidden", valid["hidden"]), kwargs.get("heads", valid["heads"])
        if hidden % heads:
            raise NNGraphError(f"ngt: --hidden {hidden} must be divisible by heads={heads}; "
                               "choose heads among the divisors of hidden")
    if name == "deepsets" and kwargs.get("kernel") is not None and kwargs["kernel"] % 2 == 0:
        raise NNGraphError(f"deepsets: kernel must be odd (kernels are centre-padded), got {kwargs['kernel']}")


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
