"""Generalization prediction: a trained CNN's weights -> its test accuracy.

The invariant head outputs one logit u_i per network [B, 1]; the predicted accuracy is
ŷ_i = σ(u_i) in (0, 1) for both losses, so metrics compare across them:

    bce:  loss = -(1/B) Σ_i [y_i log σ(u_i) + (1 - y_i) log(1 - σ(u_i))]   (y_i ∈ [0, 1], soft labels)
    mse:  loss = (1/B) Σ_i (σ(u_i) - y_i)^2

Metrics over a split (n networks):

- Kendall τ (τ-b, ties counted as in ``scipy.stats.kendalltau``) between ŷ and y: the
  fraction of concordant minus discordant pairs; the validation metric, since ranking
  networks by quality is the use. Undefined when ŷ or y is constant: reported as 0
  (no ranking information).
- R² = 1 - Σ_i (y_i - ŷ_i)^2 / Σ_i (y_i - ȳ)^2; when y is constant it is 1 for a
  perfect prediction and 0 otherwise (``sklearn.metrics.r2_score``'s finite convention).
- MSE = (1/n) Σ_i (ŷ_i - y_i)^2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.tasks.base import Task

LOSSES = ("bce", "mse")


def kendall_tau(predicted, true) -> float:
    """Kendall's τ-b of two vectors (scipy); 0.0 when undefined (constant input, n < 2)."""
    from scipy.stats import kendalltau

    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.size < 2:
        return 0.0
    tau = kendalltau(p, t).statistic
    return float(tau) if math.isfinite(tau) else 0.0


def r2_score(predicted, true) -> float:
    """Coefficient of determination R² = 1 - SS_res / SS_tot (finite when SS_tot = 0)."""
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if t.size == 0:
        return 0.0
    ss_res = float(np.sum((t - p) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


class GeneralizeTask(Task):
    """CNN -> its test accuracy (invariant readout, one output).

    Args:
        loss: ``"bce"`` (default) or ``"mse"``, both on σ(output) against the accuracy.
    """

    name = "generalize"
    target_kinds = ("scalar",)
    metric = "kendall_tau"
    higher_is_better = True

    def __init__(self, loss: str = "bce"):
        if loss not in LOSSES:
            raise NNGraphError(f"unknown generalize loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.loss_name = loss

    @property
    def out_dim(self) -> int:
        return 1

    def targets(self, items: dict[str, Any]) -> dict[str, torch.Tensor]:
        label = torch.as_tensor(items["label"], dtype=torch.float32).reshape(-1)  # [B]
        if label.numel() and (label.min() < 0 or label.max() > 1):
            raise NNGraphError("generalize targets must be accuracies in [0, 1]; is this a CNN zoo corpus?")
        return {"label": label}

    def _logit(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim == 2 and output.shape[1] == 1:
            return output[:, 0]  # [B]
        if output.ndim == 1:
            return output
        raise NNGraphError(f"the generalize task needs a model output [B, 1], got {tuple(output.shape)}")

    def _loss_per_network(self, logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = label.to(logit.dtype)
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(logit, label, reduction="none")  # [B]
        return (torch.sigmoid(logit) - label).square()  # [B]

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return self._loss_per_network(self._logit(output), targets["label"]).mean()

    def predictions(self, output, targets, batch) -> dict[str, torch.Tensor]:
        logit = self._logit(output).detach()
        return {"predicted": torch.sigmoid(logit), "label": targets["label"],
                "loss": self._loss_per_network(logit, targets["label"])}

    def metrics(self, predictions: dict[str, torch.Tensor]) -> dict[str, Any]:
        p = predictions["predicted"].detach().double().cpu().numpy()  # [n]
        t = predictions["label"].detach().double().cpu().numpy()  # [n]
        return {
            "kendall_tau": kendall_tau(p, t),
            "r2": r2_score(p, t),
            "mse": float(np.mean((p - t) ** 2)) if p.size else float("nan"),
            "loss": float(predictions["loss"].double().mean()) if p.size else float("nan"),
        }

    def figures(self, out: Path, test, predictions, examples) -> list[Path]:
        from nngraph import plots

        scores = f"Kendall τ = {test['kendall_tau']:.3f}   R² = {test['r2']:.3f}"
        return [plots.predicted_vs_true(predictions["predicted"], predictions["label"], out / "predicted_vs_true.png",
                                        scores=scores)]
