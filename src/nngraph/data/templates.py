"""Architectures stored as graph templates: a network rebuilt from its state_dict without code.

A zoo of any convertible networks cannot name a builder function per architecture (the
user's classes are not nngraph's). What every network of one architecture shares is its
graph structure: ``to_graph`` of one of them is a *template*, and ``stacked_features``
(the fast path) writes any state_dict of that architecture into the template's feature
tensors. So an architecture is stored as

- JSON (``encode`` -> ``spec``): the template's ``ArchSpec``: parameter entries (name, shape,
  source, offset, ...), state_dict order, input/output shapes, k_max, vocabulary size;
- tensors (``encode`` -> ``tensors``, named ``arch{a}.{field}``): its graph fields
  ``x`` [N, NODE_DIM], ``edge_index`` [2, E], ``edge_attr`` [E, d_e], ``edge_kind`` [E],
  ``edge_geom`` [E, GEOM_DIM], ``node_*`` [N] (``node_hw`` [N, 2]) and its buffers
  (``arch{a}.buffer.{name}``, e.g. BatchNorm's batch counter).

``decode`` reads them back and trusts nothing: every field has its dtype and shape, node
indices lie in [0, N), kinds, activations, norms and roles are in the vocabularies, every
parameter entry lies inside the nodes or edges it names, and the spec's sizes are bounded
by the tensors present (so no allocation is sized by the JSON alone). No code runs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from nngraph.errors import DataError
from nngraph.graph.fast import stacked_features
from nngraph.graph.graph import (ACTIVATIONS, EDGE_KINDS, GEOM_DIM, NODE_DIM, NORMS, ROLES, ArchSpec,
                                 NeuralGraph, ParamEntry)

# field -> (dtype, trailing shape, what its first axis counts: "nodes" | "edges"); edge_index apart
NODE_FIELDS = {"x": (torch.float32, (NODE_DIM,)), "node_layer": (torch.int64, ()), "node_pos": (torch.int64, ()),
               "node_act": (torch.int64, ()), "node_norm": (torch.int64, ()), "node_eps": (torch.float32, ()),
               "node_role": (torch.int64, ()), "node_hw": (torch.int64, (2,))}
EDGE_FIELDS = {"edge_kind": (torch.int64, ()), "edge_geom": (torch.int64, (GEOM_DIM,))}
VOCABULARIES = {"edge_kind": EDGE_KINDS, "node_act": ACTIVATIONS, "node_norm": NORMS, "node_role": ROLES}
SOURCES = ("kernel", "flat", "node", "tokens", "kernel_t", "diag")
BUFFER = "buffer."


def encode(graphs: list[NeuralGraph]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(JSON specs, tensors ``arch{a}.*``) of template graphs, one per architecture."""
    specs, tensors = [], {}
    for a, graph in enumerate(graphs):
        spec = graph.spec
        specs.append({"graph": {
            "params": [{"name": p.name, "shape": list(p.shape), "source": p.source, "offset": p.offset,
                        "channel": p.channel, "sources": p.sources, "shared": p.shared} for p in spec.params],
            "state_order": list(spec.state_order), "input_shape": list(spec.input_shape),
            "output_shape": list(spec.output_shape), "k_max": spec.k_max, "model_name": spec.model_name,
            "vocab": spec.vocab, "buffers": sorted(spec.buffers)}})
        for name in ("edge_index", "edge_attr", *NODE_FIELDS, *EDGE_FIELDS):
            tensors[f"arch{a}.{name}"] = graph[name].detach().cpu().contiguous()
        for name, value in spec.buffers.items():
            tensors[f"arch{a}.{BUFFER}{name}"] = value.detach().cpu().contiguous()
    return specs, tensors


def is_template(arch: Any) -> bool:
    """Whether an ``architectures`` entry is a stored graph template (else a builder's spec)."""
    return isinstance(arch, dict) and isinstance(arch.get("graph"), dict)


def decode(specs: list[dict], tensors: dict[str, torch.Tensor], where: str) -> list[NeuralGraph]:
    """The template graphs of ``encode``'s output, or one ``DataError`` naming ``where`` and the problem."""
    return [_decode_one(spec, tensors, a, where) for a, spec in enumerate(specs)]


def _decode_one(arch: dict, tensors: dict[str, torch.Tensor], a: int, where: str) -> NeuralGraph:
    def bad(what: str) -> DataError:
        return DataError(f"{where}: architecture {a} {what} (damaged or hand-edited); rebuild it with "
                         "nngraph.from_models or `nngraph data import-models`")

    if not is_template(arch):
        raise bad("is not a graph template")
    fields = {}
    for name in ("edge_index", "edge_attr", *NODE_FIELDS, *EDGE_FIELDS):
        value = tensors.get(f"arch{a}.{name}")
        if not isinstance(value, torch.Tensor):
            raise bad(f"lacks its tensor {name}")
        fields[name] = value
    n, e = len(fields["x"]), fields["edge_index"].shape[-1]
    if fields["edge_index"].dtype != torch.int64 or tuple(fields["edge_index"].shape) != (2, e):
        raise bad(f"has edge_index of shape {list(fields['edge_index'].shape)}, not [2, E] integers")
    if e and not bool(((fields["edge_index"] >= 0) & (fields["edge_index"] < n)).all()):
        raise bad(f"has edges to nodes outside 0..{n - 1}")
    attr = fields["edge_attr"]
    if attr.dtype != torch.float32 or attr.ndim != 2 or len(attr) != e:
        raise bad(f"has edge_attr of shape {list(attr.shape)} for {e} edges")
    for table, count in ((NODE_FIELDS, n), (EDGE_FIELDS, e)):
        for name, (dtype, tail) in table.items():
            value = fields[name]
            if value.dtype != dtype or tuple(value.shape) != (count, *tail):
                raise bad(f"has {name} {value.dtype} {list(value.shape)}, not {dtype} {[count, *tail]}")
    for name, names in VOCABULARIES.items():
        value = fields[name]
        if value.numel() and not (0 <= int(value.min()) and int(value.max()) < len(names)):
            raise bad(f"has {name} values outside 0..{len(names) - 1}")
    graph_spec = arch["graph"]
    try:
        spec = ArchSpec(
            params=[ParamEntry(str(p["name"]), tuple(int(s) for s in p["shape"]), str(p["source"]), int(p["offset"]),
                               int(p["channel"]), int(p["sources"]), int(p["shared"])) for p in graph_spec["params"]],
            buffers={str(name): tensors[f"arch{a}.{BUFFER}{name}"] for name in graph_spec["buffers"]},
            state_order=[str(s) for s in graph_spec["state_order"]],
            input_shape=tuple(int(s) for s in graph_spec["input_shape"]),
            output_shape=tuple(int(s) for s in graph_spec["output_shape"]),
            k_max=int(graph_spec["k_max"]), model_name=str(graph_spec["model_name"]), vocab=int(graph_spec["vocab"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"has a malformed graph spec ({type(exc).__name__}: {exc})") from None
    _check_entries(spec, n, e, attr.shape[1], bad)
    graph = NeuralGraph(edge_index=fields["edge_index"], edge_attr=attr, spec=spec,
                        **{k: fields[k] for k in (*NODE_FIELDS, *EDGE_FIELDS)})
    try:  # the template's own parameters go through the fast path: every entry fits its tensors
        stacked_features(graph, {p.name: torch.zeros(1, *p.shape) for p in spec.params})
    except Exception as exc:  # noqa: BLE001 - any failure here is a damaged template
        raise bad(f"does not lay out its parameters ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})") \
            from None
    return graph


def _check_entries(spec: ArchSpec, n: int, e: int, width: int, bad) -> None:
    """Every parameter entry lies inside the nodes or edges it names, and its tensor holds at most
    as many values as those rows (so a spec's shapes never size an allocation the file does not back)."""
    if not 1 <= spec.k_max or spec.k_max * spec.k_max > max(width, 1) or math.prod(spec.input_shape) > 10**9:
        raise bad(f"has k_max {spec.k_max} for {width} edge channels")
    known = set(spec.state_order)
    for p in spec.params:
        if p.source not in SOURCES or p.offset < 0 or min(p.shape, default=1) < 1 or p.name not in known:
            raise bad(f"has a malformed parameter entry {p.name!r}")
        rows = n if p.source == "node" else e
        if p.offset + p.count > rows or math.prod(p.shape) > rows * max(width, NODE_DIM):
            raise bad(f"places {p.name!r} {list(p.shape)} outside its {rows} {'nodes' if rows == n else 'edges'}")


def graph_of(template: NeuralGraph, state_dict: dict[str, torch.Tensor]) -> NeuralGraph:
    """One network's graph: its state_dict written into its architecture's template.

    Equal to ``to_graph(model)`` for the model whose state_dict it is (the fast path's
    promise); raises ``InputShapeError`` when the state_dict does not fit the template.
    """
    x, edge_attr = stacked_features(template, {p.name: state_dict[p.name][None] for p in template.spec.params
                                               if p.name in state_dict})
    graph = copy.copy(template)  # shares the structure tensors; features are its own
    graph.x, graph.edge_attr = x[0], edge_attr[0]
    return graph


def fits(template: NeuralGraph, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state_dict has exactly the template's parameter names and shapes (buffers ignored)."""
    shapes = {p.name: p.shape for p in template.spec.params}
    names = {k for k in state_dict if k not in template.spec.buffers}
    return names == set(shapes) and all(tuple(state_dict[k].shape) == s for k, s in shapes.items())
