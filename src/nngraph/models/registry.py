"""create_model(name, **kwargs): every metanetwork and baseline by name.

With ``example=batch`` the input sizes (feature channels, positions, output neurons,
degree histogram, probe input shape) are read off an example batch of training graphs;
explicit keyword arguments override them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.graph.graph import ROLE_OUTPUT, graph_specs
from nngraph.models.embeddings import WeightStatistics
from nngraph.models.gnn import NGGNN, degree_histogram
from nngraph.models.transformer import NGT

_GRAPH_MODELS: dict[str, type[nn.Module]] = {"nggnn": NGGNN, "ngt": NGT}


def graph_model_sizes(example: Batch, reverse_edges: bool = False, with_degrees: bool = False) -> dict[str, Any]:
    """Constructor sizes of a graph metanetwork read off an example batch."""
    spec = graph_specs(example)[0]
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


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
