"""INR classification: which class is the image an INR represents?

Loss: cross-entropy of the logits [B, C]. Metrics: accuracy and the confusion matrix
M[true, predicted] (counts).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from nngraph.tasks.base import Task


class ClassifyTask(Task):
    name = "classify"
    corpus = "inr"
    metric = "accuracy"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

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
