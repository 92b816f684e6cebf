"""INR classification: which class is the image an INR represents?

Loss: cross-entropy of the logits [B, C]. Metrics: accuracy and the confusion matrix
M[true, predicted] (counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.tasks.base import Task


def num_classes(dataset) -> int:
    """Classes of a corpus: 1 + the largest label over *all* splits (a split may miss a class)."""
    manifest = getattr(dataset, "manifest", None)
    if manifest is not None and manifest.get("items", {}).get("label") is not None:
        labels = [int(v) for v in manifest["items"]["label"] if v is not None]
    else:
        labels = [int(v) for v in dataset.labels.tolist()]
    if not labels:
        raise NNGraphError("the corpus has no labels; the classify task needs a labelled INR corpus")
    if min(labels) < 0:
        raise NNGraphError(f"class labels must be >= 0, the corpus has {min(labels)}")
    return max(labels) + 1


class ClassifyTask(Task):
    name = "classify"
    metric = "accuracy"
    coordinate_invariant = True  # a rotated or shifted digit keeps its class

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    @classmethod
    def from_dataset(cls, dataset, **kwargs: Any) -> "ClassifyTask":
        """``num_classes`` from the corpus's labels (over all splits) unless given."""
        if "num_classes" not in kwargs:
            if dataset is None:
                raise NNGraphError("the classify task needs a dataset or num_classes")
            kwargs["num_classes"] = num_classes(dataset)
        return cls(**kwargs)

    @property
    def out_dim(self) -> int:
        return self.num_classes

    def targets(self, items: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"label": torch.as_tensor(items["label"], dtype=torch.long)}

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return F.cross_entropy(output, targets["label"])

    def predictions(self, output, targets, batch) -> dict[str, torch.Tensor]:
        return {"predicted": output.argmax(dim=1).detach(), "label": targets["label"],
                "loss": F.cross_entropy(output.detach(), targets["label"], reduction="none")}

    def metrics(self, predictions: dict[str, torch.Tensor]) -> dict[str, Any]:
        label, predicted = predictions["label"], predictions["predicted"]
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        confusion.index_put_((label, predicted), torch.ones_like(label), accumulate=True)
        return {"accuracy": float((label == predicted).float().mean()), "loss": float(predictions["loss"].mean()),
                "confusion": confusion.tolist()}

    def figures(self, out: Path, test, predictions, examples) -> list[Path]:
        from nngraph import plots

        return [plots.confusion_matrix(test["confusion"], out / "confusion_matrix.png")]
