"""SIREN implicit neural representations (INRs) and their initialisation conventions.

A SIREN with hidden widths h_1..h_L maps a coordinate p in [-1, 1]^d to

    z_1 = W_1 p + b_1,            a_1 = sin(w0 * z_1)
    z_l = W_l a_{l-1} + b_l,      a_l = sin(w0 * z_l)      (l = 2..L)
    f(p) = W_out a_L + b_out + offset

Variants (the initialisation and output convention; width, depth and w0 are options):

- ``dwsnet``: the convention of the DWSNets / neural-graphs MNIST and Fashion-MNIST
  corpora. Every layer, the first included, W ~ U(-sqrt(6/fan_in)/w0, +sqrt(6/fan_in)/w0),
  all biases 0, offset = 0.5 (images in [0, 1], so the INR fits the image minus 0.5).
- ``standard``: Sitzmann et al. (2020). First layer W ~ U(-1/fan_in, 1/fan_in), later
  layers W ~ U(-sqrt(6/fan_in)/w0, +sqrt(6/fan_in)/w0), biases PyTorch's default
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), offset = 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nngraph.errors import NNGraphError
from nngraph.graph.activations import Sine

VARIANTS = ("dwsnet", "standard")
VARIANT_OFFSET = {"dwsnet": 0.5, "standard": 0.0}


class Siren(nn.Module):
    """A SIREN: ``in_features -> hidden x depth -> out_features`` with sine activations.

    Args:
        in_features: coordinate dimension (2 for images).
        hidden: width of every hidden layer.
        depth: number of hidden layers (each Linear + Sine).
        out_features: channels of the signal (1 for grey images).
        w0: sine frequency, the same on every hidden layer.
        variant: initialisation and output convention, one of ``VARIANTS``.
        generator: random generator for the initialisation (for seeded corpora).
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: int = 32,
        depth: int = 2,
        out_features: int = 1,
        w0: float = 30.0,
        variant: str = "dwsnet",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise NNGraphError(f"unknown SIREN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if depth < 1 or hidden < 1:
            raise NNGraphError(f"a SIREN needs depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
        self.variant = variant
        self.w0 = float(w0)
        self.output_offset = VARIANT_OFFSET[variant]
        widths = [in_features] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(Sine(w0) for _ in range(depth))
        self.out = nn.Linear(hidden, out_features)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        layers = [*self.hidden, self.out]
        for index, layer in enumerate(layers):
            w_bound, b_bound = init_bounds(self.variant, index, layer.in_features, self.w0)
            layer.weight.uniform_(-w_bound, w_bound, generator=generator)
            layer.bias.uniform_(-b_bound, b_bound, generator=generator)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [P, in_features] -> values [P, out_features]."""
        h = coords
        for layer, act in zip(self.hidden, self.activations):
            h = act(layer(h))
        out = self.out(h)
        if self.output_offset:
            out = out + self.output_offset
        return out


def init_bounds(variant: str, layer_index: int, fan_in: int, w0: float) -> tuple[float, float]:
    """Half-widths (weight, bias) of the uniform initialisation of layer ``layer_index``."""
    if variant == "dwsnet":
        return math.sqrt(6.0 / fan_in) / w0, 0.0
    weight = 1.0 / fan_in if layer_index == 0 else math.sqrt(6.0 / fan_in) / w0
    return weight, 1.0 / math.sqrt(fan_in)


def pixel_grid(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel-centre coordinates on [-1, 1]^2, row-major: [H*W, 2] as (row, col)."""
    rows = torch.linspace(-1.0, 1.0, height, device=device)
    cols = torch.linspace(-1.0, 1.0, width, device=device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # [H, W, 2]
    return grid.reshape(-1, 2)


# --------------------------------------------------------------------------- batched rendering
#
# Batched, differentiable rendering of many SIRENs at once (functional forward).
#
# For B networks with parameters ``{name: [B, *shape]}`` in :class:`nngraph.data.inr.Siren`
# state_dict order (``hidden.{l}.weight`` [B, h_l, h_{l-1}], ``hidden.{l}.bias`` [B, h_l],
# ``out.weight`` [B, o, h_L], ``out.bias`` [B, o]) and coordinates p [P, d]:
#
#     z_1 = p W_1^T + b_1                  a_1 = sin(w0 z_1)        [B, P, h_1]
#     z_l = a_{l-1} W_l^T + b_l            a_l = sin(w0 z_l)        [B, P, h_l]
#     f   = a_L W_out^T + b_out + offset                            [B, P, o]
#
# Each product is one ``baddbmm`` over the batch (bias added in the same kernel), so the
# result is differentiable in every parameter (the INR-editing loss back-propagates through
# it into the metanetwork's predicted ΔW, Δb) and costs one batched matmul per layer.


def siren_depth(params: dict[str, torch.Tensor]) -> int:
    """Number of hidden layers L of stacked SIREN parameters (``hidden.0`` .. ``hidden.{L-1}``)."""
    depth = 0
    while f"hidden.{depth}.weight" in params:
        depth += 1
    missing = [k for k in ("out.weight", "out.bias") if k not in params]
    missing += [f"hidden.{l}.bias" for l in range(depth) if f"hidden.{l}.bias" not in params]
    if depth == 0 or missing:
        raise NNGraphError(
            f"SIREN parameters need hidden.{{l}}.weight/bias and out.weight/bias, got {sorted(params)}; "
            f"pass a Siren state_dict stacked over networks")
    return depth


def render_sirens(params: dict[str, torch.Tensor], coords: torch.Tensor, w0: float,
                  offset: float = 0.0) -> torch.Tensor:
    """Evaluate B SIRENs at the same P coordinates: returns [B, P, out_features].

    Args:
        params: {state_dict name: [B, *shape]}, e.g. ``hidden.0.weight`` [B, 32, 2].
        coords: [P, in_features] coordinates (``pixel_grid(H, W)`` for images).
        w0: sine frequency of every hidden layer.
        offset: constant added to the output (0.5 for the ``dwsnet`` variant).

    Equals ``Siren.forward(coords)`` of each network up to float rounding.
    """
    depth = siren_depth(params)
    w = params["hidden.0.weight"]  # [B, h_1, d]
    B = w.shape[0]
    if coords.ndim != 2 or coords.shape[1] != w.shape[2]:
        raise NNGraphError(f"coords must be [P, {w.shape[2]}] for these SIRENs, got {tuple(coords.shape)}")
    coords = coords.to(dtype=w.dtype, device=w.device)
    h = coords.unsqueeze(0).expand(B, -1, -1)  # [B, P, d] (a view, no copy)
    for l in range(depth):
        weight, bias = params[f"hidden.{l}.weight"], params[f"hidden.{l}.bias"]  # [B, o, i], [B, o]
        z = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))  # [B, P, o]
        h = torch.sin(w0 * z)  # [B, P, o]
    out = torch.baddbmm(params["out.bias"].unsqueeze(1), h, params["out.weight"].transpose(1, 2))  # [B, P, out]
    if offset:
        out = out + offset
    return out
