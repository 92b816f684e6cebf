"""The cosine learning-rate decay every training loop of nngraph uses (INR fitting, CNN
zoos, metanetworks, the benchmark's image CNN)."""

from __future__ import annotations

import math


def cosine_decay(t: float, total: float = 1.0) -> float:
    """Multiplier 1/2 (1 + cos(pi min(t, T) / T)): 1 at t = 0, falling to 0 at t = T and staying there.

    ``t`` and ``T`` in any unit (steps, seconds); with the default T = 1, ``t`` is the
    fraction of the schedule done.
    """
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
