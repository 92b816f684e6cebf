"""Regression: a network's weights -> a scalar or vector of numbers (its loss, accuracies, ...).

Targets y_i ∈ R^d are standardised with the training split's per-column mean μ and
standard deviation σ (σ = 1 for a constant column); the invariant head outputs
u_i ∈ R^d [B, d] and the prediction is ŷ_i = μ + σ ⊙ u_i:

    loss = (1/(B d)) Σ_i ||u_i - (y_i - μ) / σ||²

Metrics over a split: R² (1 - SS_res / SS_tot per column, averaged over the d columns;
the validation metric), MSE = (1/(n d)) Σ ||ŷ_i - y_i||² in the targets' units, and the loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.tasks.base import Task
from nngraph.tasks.generalize import r2_score


class RegressTask(Task):
    """Network -> d numbers (invariant readout, d outputs).

    Args:
        mean, std: per-column μ and σ of the training targets (``from_dataset`` reads them).
    """

    name = "regress"
    target_kinds = ("scalar", "vector")
    metric = "r2"
    higher_is_better = True

    def __init__(self, mean: list[float], std: list[float]):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std])
        if not mean or len(mean) != len(std) or not numbers or not np.isfinite([*mean, *std]).all() \
                or not all(s > 0 for s in std):  # model.json may carry them: checked as untrusted
            raise NNGraphError(f"regress needs one finite mean and finite positive std per target column, got mean "
                               f"{str(mean)[:80]} and std {str(std)[:80]}")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    @classmethod
    def from_dataset(cls, dataset, **kwargs: Any) -> "RegressTask":
        """μ and σ of the corpus split's targets (the training split in ``nngraph train``) unless given."""
        if dataset is not None and "mean" not in kwargs:
            labels = dataset.labels.double().reshape(len(dataset), -1)  # [n, d]
            if not len(labels):
                raise NNGraphError(f"{dataset.root} has no networks in this split; the regress task needs targets")
            std = labels.std(dim=0, unbiased=False) if len(labels) > 1 else \
                torch.ones(labels.shape[1], dtype=labels.dtype, device=labels.device)
            kwargs.update(mean=labels.mean(dim=0).tolist(), std=torch.where(std > 0, std, 1.0).tolist())
        return cls(**kwargs)

    @property
    def out_dim(self) -> int:
        return len(self.mean)

    def _scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.mean, dtype=like.dtype, device=like.device),
                torch.tensor(self.std, dtype=like.dtype, device=like.device))  # [d], [d]

    def targets(self, items: dict[str, Any]) -> dict[str, torch.Tensor]:
        label = torch.as_tensor(items["label"], dtype=torch.float32)
        return {"label": label.reshape(len(label), -1)}  # [B, d]

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """ŷ = μ + σ ⊙ u [B, d] from the head's output u [B, d]."""
        if output.ndim != 2 or output.shape[1] != self.out_dim:
            raise NNGraphError(f"the regress task needs a model output [B, {self.out_dim}], got {tuple(output.shape)}")
        mean, std = self._scale(output)
        return mean + std * output

    def _loss_per_network(self, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale(output)
        return (output - (label.to(output.dtype) - mean) / std).square().mean(dim=1)  # [B]

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        self.predict(output)  # checks the shape
        return self._loss_per_network(output, targets["label"]).mean()

    def predictions(self, output, targets, batch) -> dict[str, torch.Tensor]:
        output = output.detach()
        return {"predicted": self.predict(output), "label": targets["label"],
                "loss": self._loss_per_network(output, targets["label"])}

    def metrics(self, predictions: dict[str, torch.Tensor]) -> dict[str, Any]:
        p = predictions["predicted"].detach().double().cpu().numpy()  # [n, d]
        t = predictions["label"].detach().double().cpu().numpy()  # [n, d]
        if not p.size:
            return {"r2": 0.0, "mse": float("nan"), "loss": float("nan")}
        return {"r2": float(np.mean([r2_score(p[:, j], t[:, j]) for j in range(p.shape[1])])),
                "mse": float(np.mean((p - t) ** 2)), "loss": float(predictions["loss"].double().mean())}

    def figures(self, out: Path, test, predictions, examples) -> list[Path]:
        from nngraph import plots

        return [plots.predicted_vs_true(predictions["predicted"][:, 0], predictions["label"][:, 0],
                                        out / "predicted_vs_true.png", label="target",
                                        scores=f"R² = {test['r2']:.3f}")]
