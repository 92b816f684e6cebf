"""Batched, differentiable rendering of many SIRENs at once (functional forward).

For B networks with parameters ``{name: [B, *shape]}`` in :class:`nngraph.data.inr.Siren`
state_dict order (``hidden.{l}.weight`` [B, h_l, h_{l-1}], ``hidden.{l}.bias`` [B, h_l],
``out.weight`` [B, o, h_L], ``out.bias`` [B, o]) and coordinates p [P, d]:

    z_1 = p W_1^T + b_1                  a_1 = sin(w0 z_1)        [B, P, h_1]
    z_l = a_{l-1} W_l^T + b_l            a_l = sin(w0 z_l)        [B, P, h_l]
    f   = a_L W_out^T + b_out + offset                            [B, P, o]

Each product is one ``baddbmm`` over the batch (bias added in the same kernel), so the
result is differentiable in every parameter (the INR-editing loss back-propagates through
it into the metanetwork's predicted ΔW, Δb) and costs one batched matmul per layer.
"""

from __future__ import annotations

import torch

from nngraph.errors import NNGraphError


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
