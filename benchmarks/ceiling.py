"""The ceiling of INR classification: a small CNN trained on the source images themselves.

The CNN sees the same train / val / test images as the INR corpus (the ``limit`` subset of
the same image set, so the same stratified split), which bounds what any metanetwork
reading the INRs of those images can hope for. Architecture:
conv3x3(1->32) -> ReLU -> maxpool2 -> conv3x3(32->64) -> ReLU -> maxpool2 -> Linear(64*7*7 -> 128)
-> ReLU -> dropout 0.3 -> Linear(128 -> 10); AdamW lr 1e-3, batch 64, cosine decay.

With ``time_budget`` it trains for that many seconds (evaluation excluded) like
``nngraph.train``; otherwise for ``epochs``. Test accuracy after every epoch is kept as
the accuracy-against-seconds curve; the reported accuracy is that of the epoch with the
best validation accuracy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from nngraph.io import atomic_write_json
from nngraph.schedule import cosine_decay


def image_cnn(height: int, width: int, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((predicted == y).float().mean())


def train_image_cnn(out: str, images: str, limit: int | None, epochs: int = 10, time_budget: float | None = None,
                    seed: int = 0, lr: float = 1e-3, batch_size: int = 64) -> dict:
    from nngraph.data.images import load_images

    data = load_images(images, limit=limit)
    split = {s: data.subset(s) for s in ("train", "val", "test")}
    x = {s: d.images.unsqueeze(1) for s, d in split.items()}  # [n, 1, H, W]
    y = {s: d.labels for s, d in split.items()}
    torch.manual_seed(seed)
    model = image_cnn(*x["train"].shape[2:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(y["train"]) / batch_size)
    gen = torch.Generator().manual_seed(seed)
    history, train_seconds, step = [], 0.0, 0
    for epoch in range(1, 10_000):
        if (time_budget and train_seconds >= time_budget) or (not time_budget and epoch > epochs):
            break
        model.train()
        order = torch.randperm(len(y["train"]), generator=gen)
        for start in range(0, len(order), batch_size):
            if time_budget and train_seconds >= time_budget:
                break
            t0 = time.perf_counter()
            progress = train_seconds / time_budget if time_budget else step / (steps_per_epoch * epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr * cosine_decay(progress)
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x["train"][index]), y["train"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            train_seconds += time.perf_counter() - t0
        history.append({"epoch": epoch, "train_seconds": train_seconds,
                        "val_accuracy": accuracy(model, x["val"], y["val"]),
                        "test_accuracy": accuracy(model, x["test"], y["test"])})
    best = max(history, key=lambda h: h["val_accuracy"])
    stop = "time budget" if time_budget and train_seconds >= time_budget else "epochs"
    result = {"model": "cnn on images", "parameters": sum(p.numel() for p in model.parameters()),
              "train_images": len(y["train"]), "best_epoch": best["epoch"], "train_seconds": train_seconds,
              "stop": stop, "val": {"accuracy": best["val_accuracy"]}, "test": {"accuracy": best["test_accuracy"]},
              "history": history}
    atomic_write_json(Path(out) / "metrics.json", result, indent=2, allow_nan=True)
    return result
