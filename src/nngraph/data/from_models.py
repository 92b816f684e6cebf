"""Bring your own zoo: torch modules and their targets -> an ordinary nngraph corpus.

    nngraph.from_models(models, accuracies, torch.zeros(1, 1, 16, 16), out="my_zoo")
    # then: nngraph train --data my_zoo --task generalize (or classify / regress)

Every model is converted once (``to_graph`` on ``example_input``: an unconvertible one is
refused in one line, naming it). A model may also be a ``torch.export.ExportedProgram`` (what
``torch.export.load`` returns): its ATen graph, as a module without the program's hooks, goes
through the export capture (``to_graph(..., capture="export")``) on an input of the shape it
was exported for, whose [C, H, W] must be ``example_input``'s. Models whose graphs have one
structure share an architecture, stored as a graph template (``data.templates``) in ``architectures.safetensors``;
each network is its state_dict in the shards (``net{i}.{name}``), so the corpus is read back
(``NetworkZoo``) without the user's classes and without running code.

Targets, one per model: integers -> ``class``; numbers -> ``scalar`` (accuracy, loss);
rows of d numbers -> ``vector``. Splits: fractions (train, val, test) over a permutation
seeded by ``seed``; or one name per model; or k-fold (``folds=k, fold=j``): fold j is the
test split, fold (j + 1) mod k validation, the rest training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.export import ExportedProgram

from nngraph.data import templates
from nngraph.data.corpus import TEMPLATES_FILE, NetworkZoo
from nngraph.data.store import MANIFEST, CorpusWriter, write_shard, writer_lock
from nngraph.errors import DataError, NNGraphError
from nngraph.graph.convert import to_graph
from nngraph.graph.graph import NeuralGraph

SPLITS = ("train", "val", "test")
STRUCTURE = ("edge_index", "edge_kind", "geom_table", "edge_geom_id", "node_layer", "node_pos", "node_act", "node_norm",
             "node_role", "node_hw")


def from_models(models: Sequence[nn.Module | ExportedProgram], targets: Any, example_input: torch.Tensor,
                out: str | os.PathLike, splits: Sequence[float] | Sequence[str] = (0.8, 0.1, 0.1), seed: int = 0,
                folds: int | None = None, fold: int | None = None, target_names: Sequence[str] | None = None,
                shard_size: int = 256, model_names: Sequence[str] | None = None) -> NetworkZoo:
    """Write the models and their targets as a corpus in folder ``out`` (new or empty); return it opened.

    ``model_names``: one name per model for messages (file names; default "model i").
    """
    models = list(models)
    if not models:
        raise NNGraphError("from_models needs at least one model")
    names_of = list(model_names) if model_names is not None else [f"model {i}" for i in range(len(models))]
    values, kind = _targets(targets, len(models))
    names = list(target_names) if target_names is not None else (
        ["label"] if kind != "vector" else [f"target{j}" for j in range(len(values[0]))])
    columns = len(values[0]) if kind == "vector" else 1
    if len(names) != columns:
        raise NNGraphError(f"target_names has {len(names)} names for targets of {columns} column(s); "
                           "give one name per column")
    split = _splits(len(models), splits, seed, folds, fold)
    arch_of, structures = [], []
    for i, model in enumerate(models):
        if isinstance(model, ExportedProgram):
            models[i], example, capture = *_exported_module(model, example_input, names_of[i]), "export"
        elif isinstance(model, nn.Module):
            example, capture = example_input, "auto"
        else:
            raise NNGraphError(f"{names_of[i]} is a {type(model).__name__}; pass torch modules or ExportedPrograms")
        bad = next((k for k, v in models[i].state_dict().items()
                    if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:  # refused now, not when the written corpus is opened
            raise NNGraphError(f"{names_of[i]}: {bad} holds NaN or infinity; train or fix that network, or leave it "
                               "out")
        try:
            graph = to_graph(models[i].eval(), example, capture=capture)
        except NNGraphError as exc:
            raise NNGraphError(f"{names_of[i]} cannot be converted: {exc}") from None
        a = next((k for k, g in enumerate(structures) if _same_structure(g, graph)), None)
        if a is None:
            a = len(structures)
            structures.append(graph)
        arch_of.append(a)
    specs, tensors = templates.encode(structures)
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"--out {root} exists and is not an empty folder; choose a new folder")
    plan = {"kind": NetworkZoo.kind, "layout": "per_item", "architectures": specs,
            "command": "nngraph.from_models",
            "config": {"source": "from_models", "targets": {"kind": kind, "size": len(names), "names": names},
                       "input_shape": list(example_input.shape[1:]), "seed": seed, "splits": _describe(splits, folds,
                                                                                                        fold),
                       "shard_size": shard_size},
            "items": {"split": split}}
    with writer_lock(root):
        writer = CorpusWriter(root, plan, len(models), shard_size, result_columns=("label", "arch"))
        info = write_shard(root / TEMPLATES_FILE, tensors)
        writer.manifest["templates"] = {"file": TEMPLATES_FILE, **info}
        for k, start, stop in writer.pending():
            shard = {f"net{i}.{name}": value.detach().cpu().clone(memory_format=torch.contiguous_format)
                     for i in range(start, stop) for name, value in models[i].state_dict().items()}
            writer.write(k, shard, {"label": values[start:stop], "arch": [specs[a] for a in arch_of[start:stop]]})
        writer.finish({"networks": len(models), "architectures": len(specs)})
    if not (root / MANIFEST).exists():
        raise DataError(f"{root}: the corpus was not written; rerun from_models")
    return NetworkZoo(root)


def _exported_module(program: ExportedProgram, example_input: torch.Tensor,
                     name: str) -> tuple[nn.Module, torch.Tensor]:
    """(the program's ATen graph as a plain GraphModule, a zero input of the shape it was exported for).

    ``program.module()`` carries input-checking hooks, which ``to_graph`` refuses; a GraphModule
    rebuilt on the same graph holds the same parameters under the same state_dict names and none.
    A dimension exported as dynamic takes ``example_input``'s size.
    """
    signature = program.graph_signature
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in signature.user_inputs]
    value = inputs[0].meta.get("val") if len(inputs) == 1 else None
    if not isinstance(value, torch.Tensor):
        raise NNGraphError(f"{name} takes {len(inputs)} inputs; nngraph converts networks of one tensor input")
    shape = [s if isinstance(s, int) else example_input.shape[k] for k, s in enumerate(value.shape)]
    if len(shape) != example_input.dim() or shape[1:] != list(example_input.shape[1:]):
        expected = ", ".join(map(str, example_input.shape[1:]))
        raise NNGraphError(f"{name} was exported for inputs {shape}, not [B, {expected}]; give the input shape it "
                           "was exported with")
    unlifted = program.module()
    return fx.GraphModule(unlifted, unlifted.graph), torch.zeros(shape, dtype=value.dtype, device=example_input.device)


def _same_structure(a: NeuralGraph, b: NeuralGraph) -> bool:
    """Whether two graphs share one architecture: parameter layout, tied uses, input/output form and every
    structural field (a tie or a per-token output changes what one template computes)."""
    sa, sb = a.spec, b.spec
    return (sa.params == sb.params and sa.ties == sb.ties and sa.state_order == sb.state_order
            and (sa.input_shape, sa.output_shape, sa.vocab, sa.output_tokens)
            == (sb.input_shape, sb.output_shape, sb.vocab, sb.output_tokens)
            and a.edge_attr.shape == b.edge_attr.shape
            and all(a[f].shape == b[f].shape and torch.equal(a[f], b[f]) for f in STRUCTURE))


def _targets(targets: Any, n: int) -> tuple[list, str]:
    """(JSON values, kind) of the targets: integers -> class, numbers -> scalar, rows -> vector."""
    array = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if array.dtype == object or array.ndim not in (1, 2) or len(array) != n:
        raise NNGraphError(f"targets must be {n} numbers or {n} rows of numbers (one per model), got shape "
                           f"{list(array.shape)}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise NNGraphError(f"targets must be numbers, got {array.dtype}")
    if not np.isfinite(array.astype(np.float64)).all():
        raise NNGraphError("targets hold NaN or infinity; give every model a finite target")
    if array.ndim == 2:
        return array.astype(np.float64).tolist(), "vector"
    if np.issubdtype(array.dtype, np.integer) and not isinstance(targets, torch.Tensor) or \
            (isinstance(targets, torch.Tensor) and not targets.is_floating_point()):
        if array.min() < 0:
            raise NNGraphError(f"class targets must be >= 0, got {int(array.min())}")
        return [int(v) for v in array], "class"
    return array.astype(np.float64).tolist(), "scalar"


def _splits(n: int, splits, seed: int, folds: int | None, fold: int | None) -> list[str]:
    """One split name per model (see the module's docstring)."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    out = np.empty(n, dtype=object)
    if folds is not None or fold is not None:
        if folds is None or fold is None or not 3 <= folds <= n or not 0 <= fold < folds:
            raise NNGraphError(f"k-fold needs folds in 3..{n} (the number of models) and 0 <= fold < folds, got "
                               f"folds={folds}, fold={fold}")
        parts = np.array_split(order, folds)
        out[:] = "train"
        out[parts[fold]], out[parts[(fold + 1) % folds]] = "test", "val"
        return out.tolist()
    splits = list(splits)
    if splits and all(isinstance(s, str) for s in splits):
        if len(splits) != n or not set(splits) <= set(SPLITS):
            raise NNGraphError(f"splits given by name need one of {', '.join(SPLITS)} per model ({n})")
        return splits
    if len(splits) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in splits) or \
            not abs(sum(splits) - 1) < 1e-6:
        raise NNGraphError(f"splits must be three fractions (train, val, test) summing to 1, or a split name per "
                           f"model; got {splits}")
    cut = np.cumsum([int(round(f * n)) for f in splits[:2]])
    for name, part in zip(SPLITS, np.split(order, cut)):
        out[part] = name
    return out.tolist()


def _describe(splits, folds, fold) -> Any:
    if folds is not None:
        return {"folds": folds, "fold": fold}
    return "given" if splits and all(isinstance(s, str) for s in splits) else list(splits)
