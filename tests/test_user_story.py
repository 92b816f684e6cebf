"""The user story of issue 33: a researcher's own zoo of CNNs, a generalization predictor trained
on it, and the run used from another directory on a network of a depth it never saw.

Only public names: ``nngraph.from_models``, the CLI (``nngraph.cli.main``), ``nngraph.load_run``.
"""

from __future__ import annotations

import json
import math

import torch
from torch import nn

import nngraph
from nngraph.cli import main


def cnn(depth: int, seed: int) -> nn.Module:
    """A user's CNN: ``depth`` 3x3 convolutions (4 channels, ReLU), max-pooled, flattened into a Linear."""
    torch.manual_seed(seed)
    layers, channels = [], 1
    for _ in range(depth):
        layers += [nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU()]
        channels = 4
    return nn.Sequential(*layers, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def trained(depth: int, seed: int, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, float]:
    """A few SGD steps on synthetic data; (model, its accuracy on that data)."""
    model = cnn(depth, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(seed % 5):  # 0..4 steps: accuracies spread
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        return model.eval(), float((model(x).argmax(1) == y).float().mean())


def test_own_zoo_to_a_trained_predictor_used_from_another_directory(tmp_path, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=generator)  # [64, 1, 8, 8] synthetic images
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long()  # [64] a learnable label
    zoo = [trained(1 + i % 2, i, x, y) for i in range(30)]  # two architectures: 1 and 2 conv layers
    models, accuracies = [m for m, _ in zoo], [a for _, a in zoo]

    corpus = nngraph.from_models(models, accuracies, torch.zeros(1, 1, 8, 8), out=tmp_path / "zoo", seed=1)
    assert len(corpus) == 30 and corpus.target_kind == "scalar" and len(corpus.architectures) == 2
    assert corpus.labels.tolist() == torch.tensor(accuracies).tolist()

    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "zoo"), "--task", "generalize", "--model", "nggnn", "--hidden",
                 "16", "--layers", "1", "--epochs", "2", "--warmup-steps", "1", "--batch-size", "8", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["kendall_tau"]) and (run / "best.safetensors").exists()
    assert main(["inspect", str(run)]) == 0 and main(["inspect", str(tmp_path / "zoo")]) == 0

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = nngraph.load_run(run)  # absolute path, no corpus needed
    new = trained(3, 99, x, y)[0]  # a depth the predictor never saw
    predicted = loaded.predict([new, nngraph.permute_neurons(new, seed=3, example_input=torch.zeros(1, 1, 8, 8))])["prediction"]  # [2]
    assert predicted.shape == (2,) and torch.isfinite(predicted).all() and ((predicted > 0) & (predicted < 1)).all()
    torch.testing.assert_close(predicted[0], predicted[1], atol=1e-5, rtol=1e-5)
    z = loaded.embed([new, models[0]])  # [2, D]
    assert z.ndim == 2 and z.shape[0] == 2 and torch.isfinite(z).all()
    # the stored zoo network predicts like the module it came from (its graph is its template + weights)
    torch.testing.assert_close(loaded.predict([corpus.graph(0)])["prediction"],
                               loaded.predict([models[0]])["prediction"], atol=1e-5, rtol=1e-5)
