"""Plots: every function writes one non-empty PNG atomically and returns its path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from nngraph import plots  # noqa: E402
from nngraph.errors import NNGraphError  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, folder):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left behind


def test_learning_curves(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "val_accuracy": 0.1 * e,
                "val_confusion": [[1]]} for e in range(6)]
    path = plots.learning_curves(history, tmp_path / "curves.png")
    _check_png(path, tmp_path)
    with pytest.raises(NNGraphError):
        plots.learning_curves([], tmp_path / "empty.png")


def test_learning_curves_overwrites(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    plots.learning_curves([{"epoch": 0, "train_loss": 0.5, "val_mse": 0.1}], path)
    _check_png(path, tmp_path)


def test_confusion_matrix(tmp_path):
    m = torch.tensor([[5, 1, 0], [0, 4, 2], [1, 0, 6]])
    path = plots.confusion_matrix(m, tmp_path / "confusion.png", class_names=["shirt", "bag", "boot"])
    _check_png(path, tmp_path)
    with pytest.raises(NNGraphError, match="square"):
        plots.confusion_matrix(np.zeros((2, 3)), tmp_path / "bad.png")


def test_dilation_grid(tmp_path):
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(5, 8, 8, generator=gen)
    path = plots.dilation_grid(src, src.clamp(0.2, 1.0), src * 0.9, tmp_path / "grid.png", n=8)
    _check_png(path, tmp_path)
    with pytest.raises(NNGraphError, match="one size"):
        plots.dilation_grid(src, src[:, :4], src, tmp_path / "bad.png")


def test_predicted_vs_true(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.uniform(0.1, 0.9, 40)
    path = plots.predicted_vs_true(true + rng.normal(0, 0.05, 40), true, tmp_path / "pvt.png")
    _check_png(path, tmp_path)


def test_lines(tmp_path):
    series = {"a": ([1, 2, 4], [0.1, 0.5, 0.7]), "b": ([1, 3], [0.2, 0.4])}
    path = plots.lines(series, tmp_path / "lines.png", "seconds", "accuracy", title="t", logx=True)
    _check_png(path, tmp_path)
