"""nngraph: learning on neural networks as graphs.

    g = nngraph.to_graph(model, example_input)   # NeuralGraph
    y, acts = nngraph.execute(g, x)              # y == model(x); acts [N, P]
    params = nngraph.to_params(g)                # == model.state_dict()
    m2 = nngraph.permute_neurons(model, seed=0)  # same function, hidden units reordered
    batch = nngraph.collate([g1, g2])            # mixed architectures in one batch
    net = nngraph.create_model("ngt", example=batch, out_dim=10)   # metanetworks and baselines
    nngraph.draw_graph(g, "graph.png")           # the graph as a picture, layers left to right
    nngraph.from_models(models, targets, x, out="zoo")  # your own zoo as a corpus (nngraph train --data zoo)
    run = nngraph.load_run("runs/ngt")           # a trained run: run.predict(nets), run.embed(nets)

The names are imported on first use (PEP 562), so ``import nngraph`` (and the ``nngraph``
command's start-up) loads neither torch, PyTorch Geometric nor matplotlib until needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from nngraph.errors import NNGraphError

# public name -> module that defines it
_LAZY = {
    "NeuralGraph": "nngraph.graph.graph",
    "canonicalise_signs": "nngraph.graph.signs",
    "collate": "nngraph.graph.batch",
    "create_model": "nngraph.models",
    "draw_graph": "nngraph.draw",
    "execute": "nngraph.graph.execute",
    "from_models": "nngraph.data.from_models",
    "graphs_from_params": "nngraph.graph.fast",
    "load_run": "nngraph.run",
    "lora_graphs": "nngraph.graph.lora_updates",
    "permute_neurons": "nngraph.graph.permute",
    "to_dense": "nngraph.graph.batch",
    "to_graph": "nngraph.graph.convert",
    "to_params": "nngraph.graph.convert",
}

__all__ = ["NNGraphError", *sorted(_LAZY)]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nngraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
