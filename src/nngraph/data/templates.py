"""Architectures stored as graph templates: a network rebuilt from its state_dict without code.

A zoo of any convertible networks cannot name a builder function per architecture (the
user's classes are not nngraph's). What every network of one architecture shares is its
graph structure: ``to_graph`` of one of them is a *template*, and ``stacked_features``
(the fast path) writes any state_dict of that architecture into the template's feature
tensors. So an architecture is stored as

- JSON (``encode`` -> ``spec``): the template's ``ArchSpec``: parameter entries (name, shape,
  source, offset, ...) and the further uses of tied tensors (``ties``, ``graph.ties``), state_dict
  order, input/output shapes, whether the output is per token, k_max, vocabulary size;
- tensors (``encode`` -> ``tensors``, named ``arch{a}.{field}``): its graph fields
  ``x`` [N, NODE_DIM], ``edge_index`` [2, E], ``edge_attr`` [E, d_e], ``edge_kind`` [E],
  ``edge_geom`` [E, GEOM_DIM], ``node_*`` [N] (``node_hw`` [N, 2]) and its buffers
  (``arch{a}.buffer.{name}``, e.g. BatchNorm's batch counter).

``decode`` reads them back and trusts nothing (no code runs, and no size is taken from the
JSON alone):

- every field has its dtype and shape, and the features are finite;
- node indices lie in [0, N), every edge runs to a later layer (or is a node's self-loop), layer
  and position ids lie in [0, N) (a metanetwork sizes its tables by them);
- kinds, activations, norms and roles are in the vocabularies;
- a node's value is h x w with 1 <= h, w <= ``MAX_SIDE`` and h w <= ``MAX_VALUE``, an edge's
  geometry lies in [-MAX_SIDE, MAX_SIDE] and its output size (out_h, out_w) within its target's;
- the input nodes are what ``input_shape`` (and ``vocab``) say, the output nodes hold
  prod(``output_shape``) values, and k_max^2 <= d_e;
- every parameter entry and tie lies inside the nodes or edges it names, holds at most as many
  values as those rows (so its shape never sizes more than the file backs), and a tie has its
  primary's shape;
- the structure computes: its nodes hold at most ``MAX_ACTIVATIONS`` values per input, and a
  zero input executes to an output of ``output_shape`` (kinds, geometry and sizes agree).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from nngraph.errors import DataError, NNGraphError
from nngraph.graph.execute import execute
from nngraph.graph.fast import stacked_features
from nngraph.graph.graph import (ACTIVATIONS, EDGE_KINDS, GEOM_COLUMNS, GEOM_DIM, NODE_DIM, NORMS, ROLE_INPUT,
                                 ROLE_OUTPUT, ROLES, ArchSpec, NeuralGraph, ParamEntry, edge_geometry, geometry_table)
from nngraph.graph.ties import aliases

# field -> (dtype, trailing shape); the first axis counts nodes (NODE_FIELDS) or edges (EDGE_FIELDS)
NODE_FIELDS = {"x": (torch.float32, (NODE_DIM,)), "node_layer": (torch.int64, ()), "node_pos": (torch.int64, ()),
               "node_act": (torch.int64, ()), "node_norm": (torch.int64, ()), "node_eps": (torch.float32, ()),
               "node_role": (torch.int64, ()), "node_hw": (torch.int64, (2,))}
EDGE_FIELDS = {"edge_kind": (torch.int64, ()), "edge_geom": (torch.int64, (GEOM_DIM,))}
VOCABULARIES = {"edge_kind": EDGE_KINDS, "node_act": ACTIVATIONS, "node_norm": NORMS, "node_role": ROLES}
SOURCES = ("kernel", "flat", "node", "tokens", "kernel_t", "diag", "copies")  # graph.ParamEntry's sources
BUFFER = "buffer."
# A node's value is at most MAX_SIDE x MAX_SIDE and MAX_VALUE values (a 4096 x 4096 map): the
# executor and the probes allocate h x w per node and probe, so a template is refused before a
# hand-edited size (node_hw, an edge's output size) would make them allocate more.
MAX_SIDE = 2**14
MAX_VALUE = 2**24
# All nodes together hold at most MAX_ACTIVATIONS values per input (1 GiB of float32; a ResNet-50
# on a 224 x 224 image holds about 2.5e7): ``decode`` runs a zero input through the template.
MAX_ACTIVATIONS = 2**28
_OUT_HW = [GEOM_COLUMNS.index("out_h"), GEOM_COLUMNS.index("out_w")]


def encode(graphs: list[NeuralGraph]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(JSON specs, tensors ``arch{a}.*``) of template graphs, one per architecture."""
    specs, tensors = [], {}
    for a, graph in enumerate(graphs):
        spec = graph.spec
        specs.append({"graph": {
            "params": [_entry_json(p) for p in spec.params], "ties": [_entry_json(t) for t in spec.ties],
            "state_order": list(spec.state_order), "input_shape": list(spec.input_shape),
            "output_shape": list(spec.output_shape), "output_tokens": bool(spec.output_tokens),
            "k_max": spec.k_max, "model_name": spec.model_name, "vocab": spec.vocab, "buffers": sorted(spec.buffers)}})
        for name in ("edge_index", "edge_attr", *NODE_FIELDS, "edge_kind"):
            tensors[f"arch{a}.{name}"] = graph[name].detach().cpu().contiguous()
        tensors[f"arch{a}.edge_geom"] = edge_geometry(graph).detach().cpu().contiguous()  # [E, GEOM_DIM]
        for name, value in spec.buffers.items():
            tensors[f"arch{a}.{BUFFER}{name}"] = value.detach().cpu().contiguous()
    return specs, tensors


def _in_memory(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The NeuralGraph fields of the file's fields: per-edge ``edge_geom`` rows [E, GEOM_DIM] become
    ``geom_table`` + ``edge_geom_id`` (``graph.geometry_table``; ``encode`` writes ``edge_geometry``)."""
    out = {k: v for k, v in fields.items() if k != "edge_geom"}
    out["geom_table"], out["edge_geom_id"] = geometry_table(fields["edge_geom"])
    return out


def _entry_json(p: ParamEntry) -> dict[str, Any]:
    return {"name": p.name, "shape": list(p.shape), "source": p.source, "offset": p.offset, "channel": p.channel,
            "sources": p.sources, "shared": p.shared, "tie": p.tie}


def _entry(p: dict) -> ParamEntry:
    """A ParamEntry of its JSON (KeyError, TypeError or ValueError when malformed)."""
    return ParamEntry(str(p["name"]), tuple(_int(s) for s in p["shape"]), str(p["source"]), _int(p["offset"]),
                      _int(p["channel"]), _int(p["sources"]), _int(p["shared"]), str(p.get("tie", "")))


def _int(value: Any) -> int:
    """An integer of the JSON (not a bool, a float or a string that int() would accept)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value


def is_template(arch: Any) -> bool:
    """Whether an ``architectures`` entry is a stored graph template (else a builder's spec)."""
    return isinstance(arch, dict) and isinstance(arch.get("graph"), dict)


def decode(specs: list[dict], tensors: dict[str, torch.Tensor], where: str) -> list[NeuralGraph]:
    """The template graphs of ``encode``'s output, or one ``DataError`` naming ``where`` and the problem."""
    return [_decode_one(spec, tensors, a, where) for a, spec in enumerate(specs)]


def _decode_one(arch: dict, tensors: dict[str, torch.Tensor], a: int, where: str) -> NeuralGraph:
    def bad(what: str) -> DataError:
        return DataError(f"{where}: architecture {a} {what} (damaged or hand-edited); rebuild it with "
                         "nngraph.from_models or `nngraph data import --format models`")

    if not is_template(arch):
        raise bad("is not a graph template")
    fields = {}
    for name in ("edge_index", "edge_attr", *NODE_FIELDS, *EDGE_FIELDS):
        value = tensors.get(f"arch{a}.{name}")
        if not isinstance(value, torch.Tensor):
            raise bad(f"lacks its tensor {name}")
        fields[name] = value
    _check_fields(fields, bad)
    graph_spec = arch["graph"]
    try:
        spec = ArchSpec(
            params=[_entry(p) for p in graph_spec["params"]],
            ties=[_entry(t) for t in graph_spec.get("ties", [])],  # none in templates written before ties
            buffers={str(name): tensors[f"arch{a}.{BUFFER}{name}"] for name in graph_spec["buffers"]},
            state_order=[str(s) for s in graph_spec["state_order"]],
            input_shape=tuple(_int(s) for s in graph_spec["input_shape"]),
            output_shape=tuple(_int(s) for s in graph_spec["output_shape"]),
            k_max=_int(graph_spec["k_max"]), model_name=str(graph_spec["model_name"]), vocab=_int(graph_spec["vocab"]),
            output_tokens=_bool(graph_spec.get("output_tokens", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise bad(f"has a malformed graph spec ({type(exc).__name__}: {exc})") from None
    _check_io(spec, fields, bad)
    _check_entries(spec, len(fields["x"]), fields["edge_attr"].shape[1], len(fields["edge_kind"]), bad)
    graph = NeuralGraph(spec=spec, **_in_memory(fields))
    device = graph.x.device  # the checks run where the template's tensors are
    try:  # the template's own parameters go through the fast path: every entry fits its tensors
        stacked_features(graph, {p.name: torch.zeros(1, *p.shape, device=device) for p in spec.params})
    except (NNGraphError, RuntimeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise bad(f"does not lay out its parameters ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})") \
            from None
    try:  # the structure computes: a zero input runs through it to an output of output_shape
        y = execute(graph, torch.zeros(1, *spec.probe_shape, device=device))[0]  # [1, *output_shape]
    except (NNGraphError, RuntimeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise bad(f"does not execute ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})") from None
    if tuple(y.shape) != (1, *spec.output_shape):
        raise bad(f"computes outputs {list(y.shape[1:])}, not its output_shape {list(spec.output_shape)}")
    return graph


def _check_fields(fields: dict[str, torch.Tensor], bad) -> None:
    """Dtypes, shapes, index ranges, vocabularies, finite features and bounded sizes of the graph tensors."""
    n, edge_index = (len(fields["x"]) if fields["x"].ndim else 0), fields["edge_index"]
    e = edge_index.shape[-1] if edge_index.ndim else 0
    if edge_index.dtype != torch.int64 or tuple(edge_index.shape) != (2, e):
        raise bad(f"has edge_index of shape {list(edge_index.shape)}, not [2, E] integers")
    attr = fields["edge_attr"]
    if attr.dtype != torch.float32 or attr.ndim != 2 or len(attr) != e or attr.shape[1] < 1:
        raise bad(f"has edge_attr of shape {list(attr.shape)} for {e} edges")
    for table, count in ((NODE_FIELDS, n), (EDGE_FIELDS, e)):
        for name, (dtype, tail) in table.items():
            value = fields[name]
            if value.dtype != dtype or tuple(value.shape) != (count, *tail):
                raise bad(f"has {name} {value.dtype} {list(value.shape)}, not {dtype} {[count, *tail]}")
    for name in ("x", "edge_attr", "node_eps"):
        if not bool(torch.isfinite(fields[name]).all()):
            raise bad(f"has NaN or infinite values in {name}")
    if bool((fields["node_eps"] < 0).any()):
        raise bad("has a negative normalisation epsilon (node_eps)")
    for name, names in VOCABULARIES.items():
        if not _within(fields[name], 0, len(names) - 1):
            raise bad(f"has {name} values outside 0..{len(names) - 1}")
    for name in ("node_layer", "node_pos"):  # a metanetwork sizes its layer / position tables by their maximum
        if not _within(fields[name], 0, n - 1):
            raise bad(f"has {name} values outside 0..{n - 1}")
    if not _within(edge_index, 0, n - 1):
        raise bad(f"has edges to nodes outside 0..{n - 1}")
    src, dst = edge_index
    layer = fields["node_layer"]
    if not bool(((layer[src] < layer[dst]) | (src == dst)).all()):
        raise bad("has an edge that does not run to a later layer (node_layer is not a topological order)")
    hw = fields["node_hw"]
    if not _within(hw, 1, MAX_SIDE) or (n and int(hw.prod(1).max()) > MAX_VALUE):
        raise bad(f"has a node value size (node_hw) outside 1..{MAX_SIDE} per side or over {MAX_VALUE} values")
    if int(hw.prod(1).sum()) > MAX_ACTIVATIONS:
        raise bad(f"has nodes holding {int(hw.prod(1).sum()):,} values per input, over {MAX_ACTIVATIONS:,}")
    geom = fields["edge_geom"]
    if not _within(geom, -MAX_SIDE, MAX_SIDE):
        raise bad(f"has edge geometry (edge_geom) outside -{MAX_SIDE}..{MAX_SIDE}")
    if e and bool(((geom[:, _OUT_HW] < 0) | (geom[:, _OUT_HW] > hw[dst])).any()):
        raise bad("has an edge whose output size (out_h, out_w) exceeds its target node's (node_hw)")


def _within(value: torch.Tensor, low: int, high: int) -> bool:
    """Whether every element lies in [low, high] (an empty tensor does)."""
    return not value.numel() or (int(value.min()) >= low and int(value.max()) <= high)


def _check_io(spec: ArchSpec, fields: dict[str, torch.Tensor], bad) -> None:
    """The input nodes are what ``input_shape`` / ``vocab`` say (the executor lays an input out on
    them: [F] -> F nodes of 1 x 1, [C, L] -> C of 1 x L, [C, H, W] -> C of H x W, token ids [T] ->
    ``vocab`` nodes of 1 x T), and the output nodes hold prod(``output_shape``) values."""
    role, hw = fields["node_role"], fields["node_hw"]
    inputs = hw[role == ROLE_INPUT]  # [n_in, 2]
    shape = spec.input_shape
    if spec.vocab < 0 or len(shape) not in (1, 2, 3) or (spec.vocab and len(shape) != 1) \
            or not all(1 <= s <= MAX_VALUE for s in shape):  # each a count of nodes or a side of their values
        raise bad(f"has input_shape {list(shape)} and vocab {spec.vocab}, not [F], [C, L], [C, H, W] or token ids [T]")
    count, size = (spec.vocab, (1, shape[0])) if spec.vocab else (shape[0], (1, 1, *shape[1:])[-2:])
    if len(inputs) != count or not bool((inputs == torch.tensor(size, device=hw.device)).all()):
        raise bad(f"has input_shape {list(shape)} (vocab {spec.vocab}) but {len(inputs)} input nodes of other sizes")
    outputs = int(hw[role == ROLE_OUTPUT].prod(1).sum())
    if min(spec.output_shape, default=1) < 1 or math.prod(spec.output_shape) != outputs:
        raise bad(f"has output_shape {list(spec.output_shape)} but output nodes holding {outputs} values")


def _check_entries(spec: ArchSpec, n: int, width: int, e: int, bad) -> None:
    """Every parameter entry and tie lies inside the nodes or edges it names, and its tensor holds at
    most as many values as those rows (so a spec's shapes never size an allocation the file does not
    back); a tie names a primary of its shape; names are unique and in ``state_order``."""
    if not 1 <= spec.k_max or spec.k_max * spec.k_max > width:
        raise bad(f"has k_max {spec.k_max} for {width} edge channels")
    known = set(spec.state_order)
    primary = {p.name: p for p in spec.params}
    if len(known) != len(spec.state_order) or len(primary) != len(spec.params) or not set(spec.buffers) <= known:
        raise bad("has repeated parameter names or buffers outside its state_order")
    for p in [*spec.params, *spec.ties]:
        try:
            count = p.count if p.source in SOURCES else 0  # kernel_t reads shape[1]
        except IndexError:
            count = 0
        if (count < 1 or p.offset < 0 or min(p.shape, default=1) < 1 or p.name not in known
                or not 0 <= p.channel < NODE_DIM or p.sources < 0 or p.shared < 0):
            raise bad(f"has a malformed parameter entry {p.name!r}")
        rows = n if p.source == "node" else e
        if p.offset + count > rows or math.prod(p.shape) > rows * max(width, NODE_DIM):
            raise bad(f"places {p.name!r} {list(p.shape)} outside its {rows} {'nodes' if rows == n else 'edges'}")
    for t in spec.ties:
        if t.tie not in primary or primary[t.tie].shape != t.shape:
            raise bad(f"ties {t.name!r} to {t.tie!r}, which is no parameter of shape {list(t.shape)}")
    if any(p.tie for p in spec.params):
        raise bad("has a parameter entry marked as a tie")


def graph_of(template: NeuralGraph, state_dict: dict[str, torch.Tensor]) -> NeuralGraph:
    """One network's graph: its state_dict written into its architecture's template.

    Equal to ``to_graph(model)`` for the model whose state_dict it is (the fast path's
    promise; a tied tensor goes into every use); raises ``InputShapeError`` when the
    state_dict does not fit the template.
    """
    x, edge_attr = stacked_features(template, {p.name: state_dict[p.name][None] for p in template.spec.params
                                               if p.name in state_dict})
    graph = copy.copy(template)  # shares the structure tensors; features are its own
    graph.x, graph.edge_attr = x[0], edge_attr[0]
    return graph


def fits(template: NeuralGraph, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state_dict holds exactly the template's parameters (names and shapes; buffers
    ignored), plus any further name of a tied tensor (GPT-2's ``lm_head.weight``, ``ties.aliases``),
    which must then equal the tensor it names."""
    spec = template.spec
    shapes = {p.name: p.shape for p in spec.params}
    alias = aliases(spec)
    names = {k for k in state_dict if k not in spec.buffers and k not in alias}
    return (names == set(shapes) and all(tuple(state_dict[k].shape) == s for k, s in shapes.items())
            and all(torch.equal(state_dict[k], state_dict[v]) for k, v in alias.items() if k in state_dict))
