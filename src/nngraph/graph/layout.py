"""The edge-window layout: where a weight sits in a row of ``edge_attr``, written once.

A row of ``edge_attr`` has d_e channels. A kernel K of kh x kw (a Linear weight is the
1 x 1 case) is centre-padded into a k_max x k_max window (k_max odd) and flattened
row-major into the first k_max^2 channels:

    row[(top + r) * k_max + (left + c)] = K[r, c],   top = (k_max - kh) // 2,  left = (k_max - kw) // 2

and every other channel is 0. The H*W weights of a flatten edge (one channel of a
C x H x W map to one Linear unit) fill the first H*W channels instead.

Every function is batched over leading dimensions ``[...]`` (edges, or networks x
edges); ``write_params`` / ``read_params`` apply the layout to a whole state_dict of B
networks at once (``to_params`` is their B = 1 case).
"""

from __future__ import annotations

import math

import torch

from nngraph.graph.graph import ArchSpec, kernel_hw


def offsets(k_max: int, kh, kw):
    """(top, left) of a kh x kw kernel in the k_max x k_max window (ints or tensors of them)."""
    return (k_max - kh) // 2, (k_max - kw) // 2


def encode_kernels(kernels: torch.Tensor, k_max: int, width: int) -> torch.Tensor:
    """Kernels [..., kh, kw] -> edge_attr rows [..., width], centred in the k_max window."""
    *lead, kh, kw = kernels.shape
    out = kernels.new_zeros(*lead, width)
    top, left = offsets(k_max, kh, kw)
    window = out[..., : k_max * k_max].view(*lead, k_max, k_max)
    window[..., top : top + kh, left : left + kw] = kernels
    return out


def encode_flat(weights: torch.Tensor, width: int) -> torch.Tensor:
    """Flatten-edge weights [..., H*W] -> edge_attr rows [..., width] (first H*W channels)."""
    out = weights.new_zeros(*weights.shape[:-1], width)
    out[..., : weights.shape[-1]] = weights
    return out


def decode_kernels(attr: torch.Tensor, k_max: int, kh: int, kw: int) -> torch.Tensor:
    """Inverse of ``encode_kernels``: edge_attr rows [..., d_e] -> kernels [..., kh, kw] (a view)."""
    top, left = offsets(k_max, kh, kw)
    window = attr[..., : k_max * k_max].reshape(*attr.shape[:-1], k_max, k_max)
    return window[..., top : top + kh, left : left + kw]


def kernel_mask(k_max: int, kh: torch.Tensor, kw: torch.Tensor, width: int) -> torch.Tensor:
    """Channels [E, width] that hold a kernel entry, for a kernel size per row (kh, kw [E])."""
    cols = torch.arange(width, device=kh.device)  # [d_e]
    r, c = cols // k_max, cols % k_max  # window row / column of each channel (meaningful below k_max^2)
    top, left = offsets(k_max, kh, kw)  # [E]
    return (
        (cols < k_max * k_max)
        & (r.unsqueeze(0) >= top.unsqueeze(1)) & (r.unsqueeze(0) < (top + kh).unsqueeze(1))
        & (c.unsqueeze(0) >= left.unsqueeze(1)) & (c.unsqueeze(0) < (left + kw).unsqueeze(1))
    )  # [E, d_e]


def write_params(spec: ArchSpec, params: dict[str, torch.Tensor], x: torch.Tensor, edge_attr: torch.Tensor) -> None:
    """Lay B networks' parameters {name: [B, *shape]} into x [B, N, d_v] and edge_attr [B, E, d_e] (in place).

    Only the rows the parameters occupy are written (whole rows for edges, one channel
    for nodes); the caller's tensors keep everything else.
    """
    b, k, width = x.shape[0], spec.k_max, edge_attr.shape[-1]
    for entry in [*spec.params, *(getattr(spec, "ties", None) or [])]:  # a tied tensor goes into every use
        value = params[entry.tie or entry.name]
        rows = slice(entry.offset, entry.offset + entry.count)
        if entry.source == "node":
            x[:, rows, entry.channel] = value  # a shared [B, 1] value broadcasts over its nodes
        elif entry.source == "flat":
            hw = entry.shape[1] // entry.sources
            edge_attr[:, rows] = encode_flat(value.reshape(b, entry.count, hw), width)
        elif entry.source == "tokens":  # [B, 1, L, D] -> edge j holds [L]
            edge_attr[:, rows] = encode_flat(value.reshape(b, entry.shape[1], entry.count).transpose(1, 2), width)
        elif entry.source == "copies":  # [B, *shape] -> every one of its edges holds it flattened
            edge_attr[:, rows] = encode_flat(value.reshape(b, 1, -1).expand(b, entry.count, -1), width)
        elif entry.source == "kernel_t":  # [B, in, out_g, kh, kw] -> kernels [B, out, in_g, kh, kw]
            edge_attr[:, rows] = encode_kernels(_to_kernels(entry, value), k, width)
        else:
            kh, kw = kernel_hw(entry.shape)
            edge_attr[:, rows] = encode_kernels(value.reshape(b, entry.count, kh, kw), k, width)


def read_params(spec: ArchSpec, x: torch.Tensor, edge_attr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of ``write_params``: x [B, N, d_v], edge_attr [B, E, d_e] -> {name: [B, *shape]} (views)."""
    b, k = x.shape[0], spec.k_max
    out: dict[str, torch.Tensor] = {}
    for entry in spec.params:
        rows = slice(entry.offset, entry.offset + entry.count)
        if entry.source == "node":
            out[entry.name] = x[:, rows, entry.channel][:, : 1 if entry.shared else entry.count]
        elif entry.source == "flat":
            hw = entry.shape[1] // entry.sources
            out[entry.name] = edge_attr[:, rows, :hw].reshape(b, *entry.shape)
        elif entry.source == "tokens":
            out[entry.name] = edge_attr[:, rows, : entry.shape[1]].transpose(1, 2).reshape(b, *entry.shape)
        elif entry.source == "copies":  # read from the first of its edges
            out[entry.name] = edge_attr[:, entry.offset, : math.prod(entry.shape)].reshape(b, *entry.shape)
        elif entry.source == "kernel_t":
            out[entry.name] = _from_kernels(entry, decode_kernels(edge_attr[:, rows], k, *kernel_hw(entry.shape)))
        else:
            kh, kw = kernel_hw(entry.shape)
            out[entry.name] = decode_kernels(edge_attr[:, rows], k, kh, kw).reshape(b, *entry.shape)
    return out


def _grouped(entry, b: int) -> tuple[int, ...]:
    """[B, g, in_g, out_g, kh, kw]: a ``kernel_t`` weight [in, out_g(, kh, kw)] of g groups of in_g = sources inputs."""
    return (b, entry.shape[0] // entry.sources, entry.sources, entry.shape[1], *kernel_hw(entry.shape))


def _to_kernels(entry, value: torch.Tensor) -> torch.Tensor:
    """A ``kernel_t`` weight [B, in, out_g(, kh, kw)] -> its edges' kernels [B, out * in_g, kh, kw], output-major
    (W[g * in_g + i, j'] is the kernel from input i of group g to its output j')."""
    grouped = _grouped(entry, value.shape[0])
    return value.reshape(grouped).transpose(2, 3).reshape(grouped[0], -1, *grouped[4:])


def _from_kernels(entry, kernels: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_to_kernels``: [B, out * in_g, kh, kw] -> [B, *entry.shape]."""
    b, g, in_g, out_g, kh, kw = _grouped(entry, kernels.shape[0])
    return kernels.reshape(b, g, out_g, in_g, kh, kw).transpose(2, 3).reshape(b, *entry.shape)


def edge_rows(entry, value: torch.Tensor) -> torch.Tensor:
    """A weight tensor of ``entry`` (kernel, flat, kernel_t, tokens) as one row per edge it occupies,
    [count, ...] in edge order: row e is what edge ``entry.offset + e`` holds."""
    if entry.source == "tokens":  # [1, L, D] -> edge j holds [L]
        return value.reshape(entry.shape[1], entry.count).t()
    if entry.source == "copies":
        return value.reshape(1, -1).expand(entry.count, -1)
    if entry.source == "kernel_t":
        return _to_kernels(entry, value.unsqueeze(0))[0]
    return value.reshape(entry.count, -1)


def from_edge_rows(entry, rows: torch.Tensor) -> torch.Tensor:
    """Inverse of ``edge_rows``: rows [count, ...] -> a tensor of ``entry.shape``."""
    if entry.source == "tokens":
        return rows.t().reshape(entry.shape)
    if entry.source == "copies":
        return rows[0].reshape(entry.shape)
    if entry.source == "kernel_t":
        return _from_kernels(entry, rows.unsqueeze(0))[0]
    return rows.reshape(entry.shape)
