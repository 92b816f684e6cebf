"""Plots of a run, saved as PNG (matplotlib, Agg backend: no display needed).

Every function draws one figure, writes it atomically (temporary file in the target
folder, then ``os.replace``, so a reader never sees half a PNG) and returns its path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from nngraph.errors import NNGraphError
from nngraph.io import atomic_open


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); shared with ``draw.py``."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        raise NNGraphError("plots need matplotlib; install it with `pip install matplotlib`") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    plt = pyplot()
    path = Path(path)
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- learning curves


def learning_curves(history: Sequence[dict], path: str | os.PathLike, metric: str | None = None) -> Path:
    """Training loss (and validation loss) per epoch on the left, validation metric(s) on the right.

    ``history``: one dict per epoch with ``epoch``, ``train_loss`` and ``val_<name>`` keys
    (e.g. ``val_loss``, ``val_accuracy``). ``metric``: the validation metric to show
    (default: every numeric ``val_*`` key but ``val_loss``). A loss that stays positive
    is drawn on a log scale.
    """
    plt = pyplot()
    if not history:
        raise NNGraphError("learning_curves needs at least one epoch of history")
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]

    def series(key):
        ys = [h.get(key) for h in history]
        xs = [e for e, y in zip(epochs, ys) if isinstance(y, (int, float)) and math.isfinite(y)]
        ys = [float(y) for y in ys if isinstance(y, (int, float)) and math.isfinite(y)]
        return xs, ys

    if metric is not None:
        val_keys = [f"val_{metric}"]
    else:
        keys = dict.fromkeys(k for h in history for k in h)
        val_keys = [k for k in keys if k.startswith("val_") and k != "val_loss"
                    and any(isinstance(h.get(k), (int, float)) and not isinstance(h.get(k), bool) for h in history)]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    positive = True
    for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "validation", "-s")):
        xs, ys = series(key)
        if ys:
            ax_loss.plot(xs, ys, style, ms=3, label=label)
            positive &= min(ys) > 0
    if positive and ax_loss.lines:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend()
    for key in val_keys:
        xs, ys = series(key)
        if ys:
            ax_metric.plot(xs, ys, "-o", ms=3, label=key[4:])
    ax_metric.set(xlabel="epoch", title="validation")
    ax_metric.grid(alpha=0.3)
    if ax_metric.lines:
        ax_metric.legend()
    else:
        ax_metric.text(0.5, 0.5, "no validation metric", ha="center", va="center", transform=ax_metric.transAxes)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- classification


def confusion_matrix(matrix, path: str | os.PathLike, class_names: Sequence[str] | None = None,
                     title: str = "confusion matrix") -> Path:
    """Heat map of M[true, predicted] (counts), each row normalised to its class's recall.

    Cell text: the count (and the row share when there are at most 12 classes).
    """
    plt = pyplot()
    m = _numpy(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise NNGraphError(f"a confusion matrix must be square, got shape {m.shape}")
    c = m.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise NNGraphError(f"{len(names)} class names for {c} classes")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)  # row-normalised
    size = max(4.0, 0.55 * c + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(c), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right" if
                  max(map(len, names)) > 2 else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="predicted", ylabel="true")
    total = m.sum()
    acc = np.trace(m) / total if total else float("nan")
    ax.set_title(f"{title} (accuracy {acc:.3f}, n = {int(total)})")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if m[i, j] == 0:
                    continue
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color=colour,
                        fontsize=8 if c <= 12 else 6)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- INR editing


def _fmt(x: float) -> str:
    return f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def dilation_grid(sources, targets, edited, path: str | os.PathLike, n: int = 8,
                  mse: Sequence[float] | None = None,
                  labels: Sequence[str] = ("source", "target", "edited")) -> Path:
    """Rows: source render, dilated target, edited INR's render; one column per INR.

    ``sources``, ``targets``, ``edited``: images [m, H, W] (values in [0, 1]; renders are
    clipped to it for display); the first ``n`` (at most the shortest stack) are shown. The edited row's titles give
    each INR's MSE to its target; ``labels`` name the three rows.
    """
    plt = pyplot()
    imgs = [_numpy(x) for x in (sources, targets, edited)]
    if any(x.ndim != 3 for x in imgs) or len({x.shape[1:] for x in imgs}) != 1:
        raise NNGraphError(f"sources, targets and edited must be [n, H, W] images of one size, got "
                           f"{[x.shape for x in imgs]}")
    k = min(n, *(x.shape[0] for x in imgs))
    if k == 0:
        raise NNGraphError("dilation_grid needs at least one image")
    errors = np.mean((imgs[2][:k] - imgs[1][:k]) ** 2, axis=(1, 2)) if mse is None else _numpy(mse)[:k]
    fig, axes = plt.subplots(3, k, figsize=(1.3 * k + 1.0, 4.4), squeeze=False)
    for row, (label, stack) in enumerate(zip(labels, imgs)):
        for col in range(k):
            ax = axes[row, col]
            ax.imshow(np.clip(stack[col], 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=10)
            if row == 2:
                ax.set_title(_fmt(float(errors[col])), fontsize=8, y=-0.28)
    fig.suptitle(f"INR dilation: {' / '.join(labels)} (MSE to the target below; mean {_fmt(float(errors.mean()))})",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- generalization


def predicted_vs_true(predicted, true, path: str | os.PathLike, label: str = "test accuracy",
                      scores: str = "") -> Path:
    """Scatter of predicted vs true values with the diagonal; ``scores`` (e.g. Kendall τ, R²) and n in the title."""
    plt = pyplot()
    p, t = _numpy(predicted).reshape(-1), _numpy(true).reshape(-1)
    if p.shape != t.shape:
        raise NNGraphError(f"predicted and true must have the same length, got {p.size} and {t.size}")
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.scatter(t, p, s=12, alpha=0.6, edgecolors="none")
    if p.size:
        lo, hi = float(min(p.min(), t.min())), float(max(p.max(), t.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 0.05
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left")
    ax.set_aspect("equal")
    ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}")
    ax.set_title(f"{scores}   n = {p.size}" if scores else f"n = {p.size}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- several curves


def lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, xlabel: str,
          ylabel: str, title: str = "", logx: bool = False, logy: bool = False) -> Path:
    """One line with markers per ``label: (x, y)`` on shared axes (benchmark figures)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (x, y) in series.items():
        ax.plot(_numpy(x), _numpy(y), marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
