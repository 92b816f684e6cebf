"""The task interface: what a model's head outputs, the loss, and the metrics.

A task turns dataset items into targets, tells the model factory which readout it
needs ("invariant": one vector per network, "parameters": a value per parameter), and
scores predictions. The training loop (``nngraph.train``) knows nothing else about tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch_geometric.data import Batch


class Task(ABC):
    name: str = ""
    readout: str = "invariant"  # or "parameters"
    corpus: str = "inr"  # dataset kind the task reads: "inr" or "zoo"
    metric: str = ""  # validation metric used to pick the best checkpoint
    higher_is_better: bool = True

    @property
    def out_dim(self) -> int:
        """Size of the invariant head's output (unused for per-parameter readouts)."""
        return 0

    @abstractmethod
    def targets(self, items: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Targets of a batch from the dataset columns selected for it (labels, images, ...)."""

    @abstractmethod
    def loss(self, output: Any, targets: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Scalar loss, a mean over the networks of the batch."""

    @abstractmethod
    def predictions(self, output: Any, targets: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Per-network tensors to keep for the split's metrics (detached)."""

    @abstractmethod
    def metrics(self, predictions: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Metrics of a whole split from the concatenated ``predictions``."""
