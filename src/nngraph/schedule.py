"""The cosine learning-rate decay every training loop of nngraph uses (INR fitting, CNN
zoos, metanetworks, the benchmark's image CNN), and the metanetworks' warm-up before it."""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_decay(t: float, total: float = 1.0) -> float:
    """Multiplier 1/2 (1 + cos(pi min(t, T) / T)): 1 at t = 0, falling to 0 at t = T and staying there.

    ``t`` and ``T`` in any unit (steps, seconds); with the default T = 1, ``t`` is the
    fraction of the schedule done.
    """
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))


@dataclass(frozen=True)
class WarmupCosine:
    """A metanetwork's learning rate: linear warm-up to ``lr`` over ``warmup_steps``, then
    cosine decay to 0 at step ``total_steps`` (or, with a time budget T, at T training seconds).

    With ``warmup_ratio`` r and a time budget T the warm-up is in training seconds t:
    lr t / (r T) up to r T, then lr/2 (1 + cos(pi (t - r T) / (T - r T))).
    """

    lr: float
    warmup_steps: int
    total_steps: int
    time_budget: float | None = None
    warmup_ratio: float | None = None

    @classmethod
    def for_run(cls, lr: float, steps_per_epoch: int, epochs: int, warmup_steps: int,
                warmup_ratio: float | None, time_budget: float | None) -> "WarmupCosine":
        """The schedule of ``epochs`` epochs; ``warmup_ratio`` r replaces ``warmup_steps`` by r of the steps."""
        total = steps_per_epoch * epochs
        warmup = warmup_steps if warmup_ratio is None else math.ceil(warmup_ratio * total)
        return cls(lr, warmup, total, time_budget, warmup_ratio)

    def lr_at(self, step: int, train_seconds: float) -> float:
        if self.time_budget and self.warmup_ratio is not None:
            warm = self.warmup_ratio * self.time_budget
            if train_seconds < warm:
                return self.lr * train_seconds / warm
            return self.lr * cosine_decay(train_seconds - warm, max(self.time_budget - warm, 1e-9))
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.time_budget:
            progress = train_seconds / self.time_budget
        else:
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.lr * cosine_decay(progress)

    def warmup_outlasts_the_run(self) -> bool:
        """A step warm-up longer than a run of steps: the rate never reaches its peak."""
        return self.warmup_ratio is None and not self.time_budget and self.warmup_steps > self.total_steps
