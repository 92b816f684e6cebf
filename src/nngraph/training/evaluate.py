"""A model's answers over a split: the task's per-network predictions, in the split's order,
and the first networks' raw outputs (for the task's figures).

Batches are built on the host and moved to ``device``; the forward pass runs under the run's
``precision`` (bf16 autocast) and the task sees float32 outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nngraph.device import autocast, float32, to_device
from nngraph.pipeline.loader import GraphLoader


@torch.no_grad()
def predict_split(model: nn.Module, task, loader: GraphLoader, device: torch.device, precision: str,
                  batch_size: int) -> dict[str, torch.Tensor]:
    """The task's per-network predictions over every network of ``loader``, in its order
    (batches are grouped by size; their answers are put back)."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    batches = loader.split_batches(torch.arange(len(loader)), batch_size)
    for index in batches:
        output, targets, batch = _answer(model, task, loader, index, device, precision)
        for k, v in task.predictions(output, targets, batch).items():
            parts.setdefault(k, []).append(v.cpu())
    item_order = torch.argsort(torch.cat(batches))  # back to the split's order
    return {k: torch.cat(v)[item_order] for k, v in parts.items()}


@torch.no_grad()
def first_examples(model: nn.Module, task, loader: GraphLoader, device: torch.device, precision: str,
                   n: int) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """(model output in fp32, targets, batch) of the first ``n`` networks of ``loader``, on ``device``."""
    return _answer(model, task, loader, torch.arange(min(n, len(loader))), device, precision)


def _answer(model: nn.Module, task, loader: GraphLoader, index: torch.Tensor, device: torch.device,
            precision: str) -> tuple[Any, dict[str, torch.Tensor], Any]:
    batch, items = loader.make_batch(index)
    batch, targets = to_device(batch, device), to_device(task.targets(items), device)
    with autocast(device, precision):
        output = model(batch)
    return float32(output), targets, batch
