"""What a run records about its model and corpus: ``model.json`` (what rebuilds the model
without the corpus, read by ``nngraph.run``), where the corpus is, and the corpus identity
a resume checks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from nngraph.pipeline.loader import GraphLoader
from nngraph.training.config import TrainConfig

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


def corpus_identity(manifest: dict) -> str:
    """SHA-256 of what a corpus holds: its kind, layout, architectures, items (labels,
    splits, ...) and the SHA-256 of every shard; the same for a rebuild with the same content."""
    content = [manifest["kind"], manifest["layout"], manifest["architectures"], manifest["items"],
               [[s.get("file"), s.get("sha256")] for s in manifest["shards"]]]
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=True).encode()).hexdigest()
