"""How much memory a training step needs, checked before the first one.

NG-T keeps dense states per ordered node pair: E [B, N, N, d_e] and, per layer, attention
tensors [B, N, N, d] and [B, N, N, H]. Autograd saves them for the backward pass, so a
training step holds, per pair of a padded batch (floats, measured with
``torch.autograd.graph.saved_tensors_hooks`` on NG-T at several widths and depths):

    saved ≈ 2 d_e + L (6 d + 2 H) + L_e 6 d_e          L layers, L_e of them updating E

plus the transients of one layer (its forward products and backward gradients, about
4 d + 4 d_e). Bytes = 4 (float32, also the conservative figure under bf16 autocast)
x pairs, pairs = B N_max^2 with N_max the largest network of the corpus (every network of a
batch is padded to its largest). Everything else of a step (node states, parameters,
optimiser) scales with N, not N^2, and is left out. On the CPU the peak RSS growth of a
forward and backward pass (N = 126, B = 4, five widths and depths) measured 0.96 to 1.06
times this count, so the estimate is ``MARGIN`` = 1.25 times it.

The model itself is counted before it is allocated: built on the ``meta`` device (shapes,
no storage), its parameters cost 16 bytes each in training (weights, gradients and
AdamW's two moments), so a config asking for a huge model (a hand-made ``config.json``
with ``hidden = 50000``) is refused before anything is allocated.

The policy: a batch whose estimate exceeds 80 % of the memory available on the run's
device (``MemAvailable`` of /proc/meminfo, or ``os.sysconf`` where there is none; the free
memory of a GPU) is refused in one line naming the largest batch size that fits. The run's
numbers then never depend on the machine's memory (gradient accumulation over smaller
micro-batches would change its rounding).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from nngraph.errors import NNGraphError

FRACTION = 0.8  # of the available memory a training step may plan to use
MARGIN = 1.25  # estimate / the floats counted above (measured peaks: 0.96 to 1.06 of the count)


def pair_floats(model: nn.Module) -> int:
    """Floats a training step holds per node pair of a padded batch (0 for models without
    pair states)."""
    from nngraph.models.transformer import NGT

    if not isinstance(model, NGT):
        return 0
    d = model.layers[0].qkv.in_features
    d_e = model.layers[0].pair.in_features
    heads = model.layers[0].heads
    updating = sum(1 for layer in model.layers if layer.update_edges)
    return 2 * d_e + len(model.layers) * (6 * d + 2 * heads) + updating * 6 * d_e + 4 * d + 4 * d_e


def step_bytes(model: nn.Module, batch_size: int, nodes: int) -> int:
    """Estimated bytes of one training step on ``batch_size`` networks of ``nodes`` nodes."""
    return int(MARGIN * 4 * pair_floats(model) * batch_size * nodes * nodes)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a run on ``device``, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_model_fits(name: str, build: Callable[[], nn.Module], device: torch.device) -> None:
    """Refuse, in one line, a model whose training state would not fit the memory of
    ``device``; ``build`` makes it (called on the meta device: nothing is allocated). Models
    that cannot be built on the meta device are not checked."""
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError, TypeError, ValueError):  # an op without a meta kernel
        return
    count = sum(p.numel() for p in model.parameters())
    available = available_bytes(device)
    if available is None or 16 * count <= FRACTION * available:
        return
    gb = 1024 ** 3
    raise NNGraphError(f"{name} with these arguments has {count:,} parameters: about {16 * count / gb:.1f} GB with "
                       f"gradients and AdamW state, and {available / gb:.1f} GB is available on {device}; use a "
                       "smaller --hidden / --layers / --model-args")


def check_fits(model: nn.Module, batch_size: int, nodes: int, device: torch.device) -> None:
    """Refuse, in one line, a batch of ``batch_size`` networks of up to ``nodes`` nodes whose
    training step would not fit the memory of ``device``."""
    per_network = step_bytes(model, 1, nodes)
    if not per_network:
        return
    available = available_bytes(device)
    if available is None:
        return
    budget = FRACTION * available
    needed = per_network * batch_size
    if needed <= budget:
        return
    fits = int(budget // per_network)
    gb = 1024 ** 3
    what = (f"{type(model).__name__} keeps pair states for B x N^2 = {batch_size} x {nodes}^2 node pairs (its "
            f"largest network has {nodes} nodes): about {needed / gb:.1f} GB per training step, and "
            f"{available / gb:.1f} GB is available on {device}")
    if fits >= 1:
        raise NNGraphError(f"{what}; use --batch-size {fits} or smaller")
    raise NNGraphError(f"{what}, not enough for even one network ({per_network / gb:.1f} GB); use fewer --layers "
                       "or a smaller --hidden / edge_hidden, or a machine with more memory")
