"""The task interface: what a model's head outputs, the loss, the metrics, reports and figures.

A task is built from a corpus (``from_dataset``), turns dataset items into targets,
tells the model factory which readout it needs ("invariant": one vector per network,
"parameters": a value per parameter), scores predictions, adds its own entries to a
run's ``metrics.json`` (``reports``) and draws its own figures (``figures``). The
training loop (``nngraph.train``) knows nothing else about tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
from torch_geometric.data import Batch


class Task(ABC):
    name: str = ""
    readout: str = "invariant"  # or "parameters"
    target_kinds: tuple[str, ...] = ("class",)  # the corpus targets it learns: "class", "scalar", "vector"
    metric: str = ""  # validation metric used to pick the best checkpoint
    higher_is_better: bool = True
    # Whether the target survives a change of an INR's input coordinates (rotation,
    # translation, scaling of the image it renders): then coordinate augmentations apply.
    coordinate_invariant: bool = False

    @classmethod
    def check_corpus(cls, dataset) -> None:
        """Refuse, in one line, a corpus whose networks this task cannot learn from."""
        from nngraph.errors import NNGraphError

        kind = getattr(dataset, "target_kind", None)
        if kind is not None and kind not in cls.target_kinds:
            fits = {"class": "classify", "scalar": "generalize (accuracies) or regress", "vector": "regress"}
            raise NNGraphError(f"task {cls.name!r} learns {' or '.join(cls.target_kinds)} targets, but "
                               f"{getattr(dataset, 'root', 'the corpus')} holds {kind} targets; use --task {fits[kind]}")

    @classmethod
    def from_dataset(cls, dataset, **kwargs: Any) -> "Task":
        """The task for ``dataset`` (sizes read off the corpus); ``kwargs`` override."""
        return cls(**kwargs)

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

    def reports(self, test_dataset) -> dict[str, Any]:
        """Entries of ``metrics.json`` beyond the split metrics (e.g. a reference error)."""
        return {}

    def figures(self, out: Path, test: dict[str, Any], predictions: dict[str, torch.Tensor],
                examples: Callable[[int], tuple[Any, dict[str, torch.Tensor], Batch]]) -> list[Path]:
        """The task's figures of the test split, written into folder ``out``; their paths.

        ``test``: the split's metrics; ``predictions``: its per-network predictions;
        ``examples(n)``: (model output, targets, batch) of the split's first n networks.
        """
        return []
