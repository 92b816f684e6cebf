"""A NeuralGraph drawn as a picture, in the style of Figure 1 of Kofinas et al. (ICLR 2024).

Layers run left to right (x = ``node_layer``), so every edge points rightwards. Two modes:

- **nodes** (small graphs): one marker per node, i.e. per unit, input coordinate or
  channel, whatever the graph holds. Marker shape = role (input ■, hidden ●, output ◆),
  fill = activation, ring = normalisation. One line per edge, coloured by its kind; its
  opacity and width grow with the edge's strength s = ||edge_attr|| (|w| for a scalar
  weight, the kernel's L2 norm for a conv edge, the norm of the H·W weights for a flatten
  edge) relative to the strongest edge of its bundle, and shrink as bundles get crowded.
  Edges that skip layers bow upwards so they pass between the rows of nodes they cross.
- **summary** (large graphs: a layer of more than ``max_layer_nodes`` nodes, or more
  than ``max_edges`` edges): one block per layer (height ∝ √nodes, labelled with its
  node count, filled with its most common activation) and one line per bundle,
  labelled with kind, kernel size and edge count.

A *bundle* is the set of edges of one kind from one layer to another (mostly one
weight tensor). Colours are read from the kind tuples of ``graph.py`` by index
(``EDGE_KINDS``, ``ACTIVATIONS``, ``NORMS``), cycling over a palette, so kinds added
there get colours without a change here. Only matplotlib (Agg backend) and the graph's
tensors are used.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nngraph.errors import NNGraphError
from nngraph.graph.graph import ACTIVATIONS, EDGE_KINDS, NORMS, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, edge_geometry
from nngraph.plots import pyplot, save_figure

MAX_LAYER_NODES = 64  # above this many nodes in one layer, draw the summary
MAX_EDGES = 5000  # above this many edges, draw the summary
ROLE_MARKERS = ("s", "o", "D")  # input, hidden, output (ROLE_* order)
ROLE_NAMES = ("input", "hidden", "output")
MAX_PIXELS_WIDE = 7200  # very deep networks get a lower resolution, not a larger file


# --------------------------------------------------------------------------- palettes


def _edge_colour(kind: int) -> tuple:
    """Saturated colours: tab20's dark tones, then its light ones (20 kinds before a repeat)."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    order = list(tab20[0::2]) + list(tab20[1::2])
    return order[kind % len(order)]


def _act_colour(act: int) -> tuple:
    """Pastel fills; "none" (index 0) is white."""
    from matplotlib import colormaps

    if act == 0:
        return (1.0, 1.0, 1.0)
    pastel = list(colormaps["Set3"].colors) + list(colormaps["Pastel1"].colors) + list(colormaps["Pastel2"].colors)
    return pastel[(act - 1) % len(pastel)]


def _norm_style(norm: int) -> tuple[tuple, float]:
    """(ring colour, ring width): thin grey for no norm, a thick dark colour per norm kind."""
    if norm == 0:
        return (0.35, 0.35, 0.35), 0.6
    dark = ((0.05, 0.05, 0.05), (0.55, 0.0, 0.45), (0.0, 0.25, 0.55), (0.45, 0.25, 0.0))
    return dark[(norm - 1) % len(dark)], 2.0


def _name(names: tuple[str, ...], index: int) -> str:
    return names[index] if index < len(names) else f"kind {index}"


# --------------------------------------------------------------------------- the graph's arrays


@dataclass
class GraphDrawing:
    """Where ``draw_graph`` put things, in data coordinates (x grows with the layer).

    ``node_xy`` [N, 2]: a node's marker (nodes mode) or the centre of its layer's block
    (summary mode). ``layer_x`` [L]: the x of each layer.
    """

    path: Path
    summary: bool
    node_xy: np.ndarray
    layer_x: np.ndarray


@dataclass
class _Arrays:
    """The graph's tensors the drawing reads, as numpy on the CPU."""

    layer: np.ndarray  # [N]
    role: np.ndarray  # [N]
    act: np.ndarray  # [N]
    norm: np.ndarray  # [N]
    hw: np.ndarray  # [N, 2]
    src: np.ndarray  # [E]
    dst: np.ndarray  # [E]
    kind: np.ndarray  # [E]
    geom: np.ndarray | None  # [E, 8] GEOM_COLUMNS (kh, kw, stride_h, stride_w, ...)

    @property
    def layer_sizes(self) -> np.ndarray:  # [L]
        return np.bincount(self.layer, minlength=int(self.layer.max()) + 1)


def _arrays(graph) -> _Arrays:
    fields = ("node_layer", "node_role", "node_act", "node_norm", "node_hw", "edge_index", "edge_kind")
    if not all(isinstance(getattr(graph, f, None), torch.Tensor) for f in fields):
        raise NNGraphError(f"draw_graph takes a NeuralGraph (from nngraph.to_graph), got {type(graph).__name__}")
    if getattr(graph, "num_graphs", 1) != 1:
        raise NNGraphError(f"draw_graph draws one network, got a batch of {graph.num_graphs}; pass batch[i]")
    if graph.node_layer.numel() == 0:
        raise NNGraphError("draw_graph got a graph without nodes; convert a network with nngraph.to_graph")

    def np_(t):
        return t.detach().cpu().numpy()

    geom = edge_geometry(graph) if isinstance(getattr(graph, "geom_table", None), torch.Tensor) else None
    return _Arrays(np_(graph.node_layer), np_(graph.node_role), np_(graph.node_act), np_(graph.node_norm),
                   np_(graph.node_hw).reshape(-1, 2), np_(graph.edge_index[0]), np_(graph.edge_index[1]),
                   np_(graph.edge_kind), np_(geom) if isinstance(geom, torch.Tensor) else None)


@dataclass
class _Bundles:
    """The edges grouped by (source layer, target layer, kind); B bundles."""

    of_edge: np.ndarray  # [E] bundle of each edge
    src: np.ndarray  # [B] source layer
    dst: np.ndarray  # [B] target layer
    kind: np.ndarray  # [B]
    count: np.ndarray  # [B] edges
    geom: np.ndarray | None  # [B, 4] kh, kw, stride_h, stride_w shared by the bundle's edges, -1 where they differ


def _bundles(a: _Arrays) -> _Bundles:
    n_layers, n_kinds = a.layer_sizes.size, int(a.kind.max(initial=0)) + 1
    key = (a.layer[a.src].astype(np.int64) * n_layers + a.layer[a.dst]) * n_kinds + a.kind  # [E]
    keys, of_edge, count = np.unique(key, return_inverse=True, return_counts=True)
    of_edge = of_edge.reshape(-1)
    pair, kind = np.divmod(keys, n_kinds)
    src, dst = np.divmod(pair, n_layers)
    geom = None
    if a.geom is not None and of_edge.size:
        order = np.argsort(of_edge, kind="stable")  # edges grouped by bundle
        grouped = a.geom[order, :4]  # [E, 4]
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])  # [B]
        geom = grouped[starts].copy()  # [B, 4] the first edge's geometry
        same = np.logical_and.reduceat(np.all(grouped == geom[of_edge[order]], axis=1), starts)  # [B]
        geom[~same] = -1
    return _Bundles(of_edge, src, dst, kind, count, geom)


def _bundle_label(b: _Bundles, i: int) -> str:
    """'conv 3×3 /2': kind, then kernel size and stride where the bundle's edges share them."""
    text = _name(EDGE_KINDS, int(b.kind[i]))
    if b.geom is None:
        return text
    kh, kw, sh, sw = b.geom[i].tolist()
    if kh < 0:
        return text + " (mixed)"
    if kh > 0 and kw > 0:
        text += f" {kh}×{kw}" + (f" /{sh}" if sh == sw > 1 else f" /{sh}×{sw}" if max(sh, sw) > 1 else "")
    return text


def needs_summary(graph, max_layer_nodes: int = MAX_LAYER_NODES, max_edges: int = MAX_EDGES) -> bool:
    """True when a node-per-node drawing would be unreadable: a layer wider than
    ``max_layer_nodes`` or more than ``max_edges`` edges."""
    return _needs_summary(_arrays(graph), max_layer_nodes, max_edges)


def _needs_summary(a: _Arrays, max_layer_nodes: int, max_edges: int) -> bool:
    return bool(a.layer_sizes.max() > max_layer_nodes or a.src.size > max_edges)


def _layout(a: _Arrays, summary: bool) -> tuple[np.ndarray, np.ndarray]:
    """(node_xy [N, 2], layer_x [L]): layer l at x = l; in nodes mode the nodes of a layer
    stacked top to bottom in index order, one unit apart and centred on y = 0; in
    summary mode every node at its layer block's centre (y = 0)."""
    sizes = a.layer_sizes
    layer_x = np.arange(sizes.size, dtype=np.float64)
    x = layer_x[a.layer]
    if summary:
        return np.stack([x, np.zeros_like(x)], 1), layer_x
    order = np.argsort(a.layer, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - starts[a.layer[order]]  # index of a node within its layer
    y = (sizes[a.layer] - 1) / 2.0 - rank
    return np.stack([x, y], 1), layer_x


def _bezier(p0: np.ndarray, p1: np.ndarray, lift: np.ndarray, steps: int = 16) -> np.ndarray:
    """Quadratic Bézier curves [E, steps, 2] from p0 to p1 [E, 2], control point at the
    midpoint raised by ``lift`` [E] (the curve's apex is lift / 2 above the chord)."""
    t = np.linspace(0.0, 1.0, steps)[None, :, None]  # [1, S, 1]
    ctrl = (p0 + p1) / 2.0
    ctrl[:, 1] += lift
    p0, ctrl, p1 = p0[:, None], ctrl[:, None], p1[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p1


# --------------------------------------------------------------------------- text


def _layer_title(a: _Arrays, layer: int, last: int) -> str:
    roles = set(a.role[a.layer == layer].tolist())
    if roles == {ROLE_INPUT} or layer == 0:
        return "input"
    if roles == {ROLE_OUTPUT} or layer == last:
        return "output"
    return f"layer {layer}"


def _layer_detail(a: _Arrays, layer: int) -> str:
    """'32 units' or '8 ch 8×8', then the norms and activations of the layer."""
    mask = a.layer == layer
    n = int(mask.sum())
    sizes = {tuple(hw) for hw in a.hw[mask].tolist()}
    if sizes == {(1, 1)}:
        text = f"{n:,} unit{'s' if n != 1 else ''}"
    else:
        text = f"{n:,} ch " + ("/".join(f"{h}×{w}" for h, w in sorted(sizes)) if len(sizes) <= 2 else "mixed")
    ops = [_name(NORMS, k) for k in sorted(set(a.norm[mask].tolist())) if k] + \
          [_name(ACTIVATIONS, k) for k in sorted(set(a.act[mask].tolist())) if k]
    return text + ("\n" + ", ".join(ops) if ops else "")


def _title(graph, a: _Arrays, summary: bool) -> str:
    spec = getattr(graph, "spec", None)
    name = getattr(spec, "model_name", "") or "network"
    shape = getattr(spec, "input_shape", ())
    text = (f"{name}{' (input ' + '×'.join(map(str, shape)) + ')' if shape else ''}: "
            f"{a.layer.size:,} nodes in {a.layer_sizes.size} layers, {a.src.size:,} edges")
    return text + ("\nsummary: one block per layer, one line per bundle of edges of one kind" if summary else "")


def _legend(ax, a: _Arrays, summary: bool) -> None:
    """Only the roles, activations, norms and edge kinds the graph holds."""
    from matplotlib.lines import Line2D

    handles = []
    marker = "s" if summary else "o"

    def header(text):
        handles.append(Line2D([], [], linestyle="none", label=text))

    def entry(label, **style):
        handles.append(Line2D([], [], linestyle="none", label=f"  {label}", **{"markersize": 8, **style}))

    if not summary:
        header("node shape = role")
        for role in sorted(set(a.role.tolist())):
            entry(_name(ROLE_NAMES, role), marker=ROLE_MARKERS[role], markerfacecolor="white",
                  markeredgecolor="0.35", markersize=7)
    header("block fill = activation" if summary else "fill = activation")
    for act in sorted(set(a.act.tolist())):
        entry(_name(ACTIVATIONS, act), marker=marker, markerfacecolor=_act_colour(act), markeredgecolor="0.35")
    norms = sorted(set(a.norm.tolist()) - {0})
    if norms:
        header("ring = normalisation")
        for norm in norms:
            colour, width = _norm_style(norm)
            entry(_name(NORMS, norm), marker=marker, markerfacecolor="white", markeredgecolor=colour,
                  markeredgewidth=width)
    header("edge kind" + (" (width ∝ log count)" if summary else " (opacity ∝ |w|)"))
    for kind in sorted(set(a.kind.tolist())):
        handles.append(Line2D([], [], color=_edge_colour(kind), linewidth=2.5, label=f"  {_name(EDGE_KINDS, kind)}"))
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                       handlelength=1.5, borderaxespad=0.0)
    for text in legend.get_texts():
        if not text.get_text().startswith("  "):
            text.set_fontweight("bold")


# --------------------------------------------------------------------------- drawing


def draw_graph(graph, path: str | os.PathLike, *, summary: bool | None = None,
               max_layer_nodes: int = MAX_LAYER_NODES, max_edges: int = MAX_EDGES,
               title: str | None = None) -> GraphDrawing:
    """Draw ``graph`` (one NeuralGraph) as a PNG at ``path``, written atomically.

    ``summary``: force the summary (True) or the node-per-node drawing (False); by default
    the summary is drawn when a layer has more than ``max_layer_nodes`` nodes or the graph
    more than ``max_edges`` edges. ``title`` replaces the default title (the model name,
    input shape and graph size). Returns where nodes and layers were placed.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise NNGraphError(f"draw_graph writes PNG files; name the file *.png, not {path.name!r}")
    a = _arrays(graph)
    if summary is None:
        summary = _needs_summary(a, max_layer_nodes, max_edges)
    node_xy, layer_x = _layout(a, summary)
    plt = pyplot()
    fig = _draw_summary(plt, a, layer_x) if summary else _draw_nodes(plt, graph, a, node_xy, layer_x)
    fig.axes[0].set_title(title if title is not None else _title(graph, a, summary), fontsize=10, loc="left")
    _legend(fig.axes[0], a, summary)
    dpi = int(min(120, MAX_PIXELS_WIDE / (fig.get_size_inches()[0] + 2.5)))  # + 2.5 in: the legend
    try:
        written = save_figure(fig, path, dpi=dpi)
    except OSError as exc:
        raise NNGraphError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None
    return GraphDrawing(written, summary, node_xy, layer_x)


def _draw_nodes(plt, graph, a: _Arrays, node_xy: np.ndarray, layer_x: np.ndarray):
    """One marker per node, one line per edge."""
    from matplotlib.collections import LineCollection

    sizes = a.layer_sizes
    tallest = int(sizes.max())
    height = float(np.clip(0.22 * tallest + 1.6, 3.0, 16.0))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * sizes.size + 0.5), height))
    row_pt = (height - 1.6) * 72.0 / max(tallest, 1)  # points between two rows of nodes
    marker_pt = float(np.clip(0.62 * row_pt, 3.0, 16.0))

    if a.src.size:
        b = _bundles(a)
        # Strength ||edge_attr|| (|w| for scalars), relative to the strongest edge of its bundle.
        strength = graph.edge_attr.detach().float().norm(dim=1).cpu().numpy()  # [E]
        top = np.zeros(b.count.size)
        np.maximum.at(top, b.of_edge, strength)
        top = top[b.of_edge]  # [E]
        rel = np.divide(strength, top, out=np.ones_like(strength), where=top > 0)
        dense = np.clip(1.1 - np.log10(b.count[b.of_edge]) / 3.5, 0.2, 0.95)  # [E] fainter when crowded
        alpha = 0.05 + (dense - 0.05) * rel
        width = 0.25 + 1.6 * dense * rel
        lift = np.where(a.layer[a.dst] - a.layer[a.src] > 1, 1.0, 0.0)  # a layer-skipping edge passes between rows
        curves = _bezier(node_xy[a.src], node_xy[a.dst], lift)  # [E, S, 2]
        rgba = np.concatenate([np.array([_edge_colour(int(k)) for k in a.kind]), alpha[:, None]], 1)  # [E, 4]
        order = np.argsort(rel, kind="stable")  # strongest on top
        ax.add_collection(LineCollection(curves[order], colors=rgba[order], linewidths=width[order],
                                         capstyle="round", zorder=1))

    for role in sorted(set(a.role.tolist())):
        for norm in sorted(set(a.norm.tolist())):
            mask = (a.role == role) & (a.norm == norm)
            if not mask.any():
                continue
            ring, ring_width = _norm_style(norm)
            ax.scatter(node_xy[mask, 0], node_xy[mask, 1], s=marker_pt ** 2 * (1.0 if role == ROLE_HIDDEN else 0.8),
                       marker=ROLE_MARKERS[role], c=[_act_colour(int(k)) for k in a.act[mask]],
                       edgecolors=[ring], linewidths=ring_width, zorder=3)

    bottom = -(tallest - 1) / 2.0 - 0.7
    for layer, x in enumerate(layer_x):
        ax.text(x, bottom, f"{_layer_title(a, layer, sizes.size - 1)}\n{_layer_detail(a, layer)}",
                ha="center", va="top", fontsize=8)
    ax.set_xlim(layer_x[0] - 0.5, layer_x[-1] + 0.5)
    ax.set_ylim(bottom - 0.3 * (1 + tallest / 24), (tallest - 1) / 2.0 + 1.0)
    ax.axis("off")
    return fig


def _draw_summary(plt, a: _Arrays, layer_x: np.ndarray):
    """One block per layer, one labelled line per bundle."""
    from matplotlib.patches import FancyBboxPatch

    sizes = a.layer_sizes
    n_layers = sizes.size
    half = 0.25 + 1.25 * np.sqrt(sizes / sizes.max())  # [L] half-height of each block
    top = float(half.max())
    block_w = 0.3
    fig, ax = plt.subplots(figsize=(max(6.0, 1.35 * n_layers + 1.0), 4.5))

    for layer, x in enumerate(layer_x):
        mask = a.layer == layer
        act = Counter(a.act[mask].tolist()).most_common(1)[0][0]
        ring, ring_width = _norm_style(Counter(a.norm[mask].tolist()).most_common(1)[0][0])
        ax.add_patch(FancyBboxPatch((x - block_w / 2, -half[layer]), block_w, 2 * half[layer],
                                    boxstyle="round,pad=0.02", facecolor=_act_colour(act), edgecolor=ring,
                                    linewidth=ring_width, zorder=3))
        ax.text(x, 0.0, f"{sizes[layer]:,}", rotation=90, ha="center", va="center", fontsize=8, zorder=4)
        ax.text(x, -top - 0.15, f"{_layer_title(a, layer, n_layers - 1)}\n{_layer_detail(a, layer)}",
                ha="center", va="top", fontsize=7)

    b = _bundles(a)
    per_pair = Counter(zip(b.src.tolist(), b.dst.tolist()))
    slot: Counter = Counter()
    lanes: list[int] = []  # lanes[i]: the layer where the last arc of lane i ends
    for i, (s, d, kind, count) in enumerate(zip(b.src.tolist(), b.dst.tolist(), b.kind.tolist(), b.count.tolist())):
        colour = _edge_colour(kind)
        lw = float(np.clip(0.8 + 0.9 * math.log10(count), 0.8, 5.0))
        label = f"{_bundle_label(b, i)}\n{count:,}"
        if d - s == 1:  # neighbours: a straight line between the blocks, several kinds side by side
            k, n = slot[(s, d)], per_pair[(s, d)]
            slot[(s, d)] += 1
            y = (k - (n - 1) / 2) * 0.5
            ax.plot([layer_x[s] + block_w / 2, layer_x[d] - block_w / 2], [y, y], color=colour, lw=lw,
                    solid_capstyle="butt", zorder=2)
            ax.text((layer_x[s] + layer_x[d]) / 2, y + 0.08, label, ha="center", va="bottom", fontsize=6.5,
                    color="0.1", zorder=5)
            continue
        # A layer-skipping bundle arcs over the blocks, in the lowest lane free from layer s on.
        lane = next((k for k, end in enumerate(lanes) if end <= s), len(lanes))
        if lane == len(lanes):
            lanes.append(d)
        lanes[lane] = d
        start, end = np.array([[layer_x[s], half[s]]]), np.array([[layer_x[d], half[d]]])
        apex = top + 0.3 + 0.45 * lane
        lift = np.array([2 * apex - (half[s] + half[d])])  # the curve peaks at the apex
        curve = _bezier(start, end, lift, steps=40)[0]
        ax.plot(curve[:, 0], curve[:, 1], color=colour, lw=lw, zorder=2)
        ax.text((layer_x[s] + layer_x[d]) / 2, apex + 0.04, label.replace("\n", " "), ha="center",
                va="bottom", fontsize=6.5, color="0.1", zorder=5,
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))
    ax.set_xlim(layer_x[0] - 0.6, layer_x[-1] + 0.6)
    ax.set_ylim(-top - 1.1, top + 0.6 + 0.45 * max(len(lanes), 1))
    ax.axis("off")
    return fig
