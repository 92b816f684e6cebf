"""Weight-space augmentations of INRs, on stacked parameters ({name: [B, *shape]}).

The augmentations the published INR-classification numbers were trained with
(neural-graphs ``experiments/data.py``, ``INRDataset._augment``; on by
``data.train.augmentation=True`` in its Fashion-MNIST scripts), done exactly:

- **input-coordinate maps**, folded into the first layer. An INR
  f(p) = W_L ... s(W_1 p + b_1) of coordinates p in [-1, 1]^d and an affine map
  p -> A p + t give g(p) = f(A p + t), whose first layer is

      W_1' = W_1 A,    b_1' = b_1 + W_1 t        (every later layer unchanged)

  so g renders the image of f seen through the map, and g is again an INR of the same
  architecture. A = s R(theta) with theta ~ U(-rotation, rotation) degrees (d = 2 only),
  s ~ U(1 - scale, 1 + scale) and t ~ U(-translation, translation)^d per network.
  Published magnitudes: rotation 45 degrees, translation 0.25, scale 0.2 (coordinates on
  [-1, 1], as here). The published code folds its translation into the first bias half
  of the time and, the other half, pushes it through the second layer linearly, which
  is not a translation of a sine network; here it is always the exact one.
- **Gaussian weight noise**: every parameter plus N(0, std^2) (``std`` absolute). The
  published code's "noise" adds ``0.1 * std(tensor)`` without a random draw: a fixed
  shift of every weight, not noise; it is not reproduced.
- **weight dropout**: every parameter (weights and biases of every layer) zeroed with
  probability p and the survivors rescaled by 1 / (1 - p), as ``F.dropout`` in training
  mode does in the published code (p = 0.01 there).

Order: coordinate map, noise, dropout. Draws come from the caller's generator (the
training epoch's, seeded by seed and epoch), so runs are reproducible and resume
exactly. Every network gets its own draws and its result depends only on its own
parameters and draws, never on its batch-mates. The coordinate map touches only the
input side of the first layer and noise and dropout act elementwise, so all three
commute with permutations of hidden neurons: the augmentations keep equivariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nngraph.errors import NNGraphError

FIRST_WEIGHT, FIRST_BIAS = "hidden.0.weight", "hidden.0.bias"  # the first layer of a stacked Siren


def fold_coordinate_map(params: dict[str, torch.Tensor], a: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameters of g(p) = f(A_b p + t_b) for each network b of stacked SIRENs f.

    params: {name: [B, *shape]} with ``hidden.0.weight`` [B, h, d], ``hidden.0.bias`` [B, h];
    a: [B, d, d]; t: [B, d]. Returns a new dict (inputs untouched): W_1' = W_1 A, b_1' = b_1 + W_1 t.
    """
    w, b = params[FIRST_WEIGHT], params[FIRST_BIAS]  # [B, h, d], [B, h]
    out = dict(params)
    out[FIRST_WEIGHT] = torch.bmm(w, a.to(w.dtype))  # [B, h, d]
    out[FIRST_BIAS] = b + torch.bmm(w, t.to(w.dtype).unsqueeze(-1)).squeeze(-1)  # [B, h]
    return out


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """2-d rotations by ``angles`` (radians) [B] -> [B, 2, 2], counter-clockwise in (row, col)."""
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B, 2, 2]


@dataclass(frozen=True)
class ParamAugment:
    """Magnitudes of the weight-space augmentations (0 = off); see the module doc."""

    rotation: float = 0.0  # degrees, max |theta|
    translation: float = 0.0  # coordinate units, max |t_i| (the image spans [-1, 1])
    scale: float = 0.0  # max |s - 1|
    noise: float = 0.0  # std of Gaussian noise on every parameter
    dropout: float = 0.0  # probability that a parameter is zeroed

    @property
    def active(self) -> bool:
        return any((self.rotation, self.translation, self.scale, self.noise, self.dropout))

    @property
    def maps_coordinates(self) -> bool:
        return any((self.rotation, self.translation, self.scale))

    def __call__(self, params: dict[str, torch.Tensor], generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]:
        """Augmented copies of stacked SIREN parameters {name: [B, *shape]}."""
        if self.maps_coordinates:
            params = fold_coordinate_map(params, *self.draw_coordinate_maps(params, generator))
        if self.noise:
            params = {k: v + self.noise * _randn_like(v, generator) for k, v in params.items()}
        if self.dropout:
            keep = 1.0 - self.dropout
            params = {k: v * (_rand_like(v, generator) < keep).to(v.dtype) / keep for k, v in params.items()}
        return params

    def draw_coordinate_maps(self, params: dict[str, torch.Tensor], generator: torch.Generator | None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, d, d], t [B, d]) of one random map per network: A = s R(theta)."""
        if FIRST_WEIGHT not in params or FIRST_BIAS not in params:
            raise NNGraphError("coordinate augmentations need SIREN parameters (hidden.0.weight / hidden.0.bias); "
                               "use them on an INR corpus")
        w = params[FIRST_WEIGHT]
        b, d = w.shape[0], w.shape[2]
        if self.rotation and d != 2:
            raise NNGraphError(f"--rotate-augment rotates 2-d coordinates; these INRs take {d}-d inputs: leave it at 0")

        def uniform(*shape: int) -> torch.Tensor:  # U(-1, 1), drawn on the CPU generator, moved to w's device
            return (2 * torch.rand(*shape, generator=generator) - 1).to(device=w.device, dtype=w.dtype)

        a = torch.eye(d, dtype=w.dtype, device=w.device).expand(b, d, d)  # [B, d, d]
        if self.rotation:
            a = rotation_matrices(uniform(b) * math.radians(self.rotation))
        if self.scale:
            a = a * (1 + self.scale * uniform(b))[:, None, None]
        t = self.translation * uniform(b, d) if self.translation else w.new_zeros(b, d)  # [B, d]
        return a, t


def _rand_like(v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(v.shape, generator=generator).to(device=v.device, dtype=v.dtype)


def _randn_like(v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(v.shape, generator=generator).to(device=v.device, dtype=v.dtype)
