"""Corpus classes: one per kind of corpus, each owning its spec, targets, checks and batches.

    corpus = Corpus.open("zoo/", "train")     # the class is picked from the manifest's kind
    batch = corpus.batch(index, k_max, width)  # PyG batch of NeuralGraphs [B networks]
    items = corpus.columns(index)              # {"label": targets [B] or [B, d], ...}

- :class:`INRCorpus` (manifest kind ``inr``): SIRENs of one architecture (a ``SirenSpec``),
  stored stacked; batches through the fast path (``graphs_from_params`` on the stacked
  parameters of the batch), so weight-space augmentations apply before graphs are built.
  Targets: the class of the image each INR fits.
- :class:`NetworkZoo` (manifest kind ``zoo``): networks of any convertible architectures,
  one state_dict per network. An architecture is either a stored graph template
  (``data.templates``: written by ``from_models``, rebuilt without code) or, in zoos built by
  ``nngraph data zoo`` and the CNN Zoo / Wild Park importers, a CNN spec, turned into a
  template once by its builder. Every network's graph is its state_dict written into its
  architecture's template; batches collate those graphs in the corpus-wide edge window.
  Targets: a class, a scalar (accuracy, loss) or a vector per network
  (``config.targets.kind``; zoos without it hold test accuracies: scalar).

``store`` is the byte layer below (manifest, shards, integrity); it imports no builder.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch

from nngraph.data import templates
from nngraph.data.store import (ITEM_PREFIX, MAX_CLASSES, MAX_UNVERIFIED_PARAMS, check_complete, complete_headers,
                                SPLITS, damaged, load_shard, read_manifest, rebuild_hint, shard_path)
from nngraph.errors import DataError, NNGraphError
from nngraph.graph.augment import random_permutation_augment
from nngraph.graph.batch import collate
from nngraph.graph.convert import to_graph
from nngraph.graph.fast import graphs_from_params, stacked_params
from nngraph.graph.graph import NeuralGraph
from nngraph.graph.permute import permute_graph
from nngraph.graph.signs import canonicalise_signs

TARGET_KINDS = ("class", "scalar", "vector")
TEMPLATES_FILE = "architectures.safetensors"


class Corpus:
    """Shared reading logic of every corpus: manifest, split selection, shard loading.

    Subclasses set ``kind`` (the manifest value they read) and implement the batching
    interface ``layout_graphs``, ``node_counts``, ``batch``, ``columns``, ``canonical``,
    ``architecture_record`` and ``rebuild``.
    """

    kind = ""
    build_command = "nngraph data"  # what makes a corpus of this class (for messages)
    weight_augments = False  # coordinate augmentations and weight dropout apply (stacked parameters)
    renders_images = False  # the corpus stores the image each network renders (INRs)

    @staticmethod
    def open(root: str | os.PathLike, split: str | None = None) -> "Corpus":
        """The corpus in folder ``root`` (one split, or all), of the class its manifest names."""
        manifest = read_manifest(root)
        return corpus_class(manifest["kind"], root)(root, split, manifest=manifest)

    def __init__(self, root: str | os.PathLike, split: str | None = None, manifest: dict | None = None):
        """``manifest``: ``read_manifest(root)`` when the caller has just read it (``open``), else read here."""
        self.root = Path(root)
        self.manifest = manifest if manifest is not None else read_manifest(self.root)
        if self.manifest["kind"] != self.kind:
            raise DataError(f"{self.root / 'manifest.json'} describes a {self.manifest['kind']!r} corpus, not "
                            f"{self.kind!r}; open it with nngraph.data.corpus.Corpus.open")
        self.check(self.root, self.manifest)
        check_complete(self.root, self.manifest)
        splits = np.asarray(self.manifest["items"]["split"], dtype=object)  # of SPLITS (read_manifest)
        if split is not None and split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose train, val or test")
        self.split = split
        self.rows = np.flatnonzero(splits == split) if split is not None else np.arange(len(splits))
        self._stats: dict | None = None

    @classmethod
    def check(cls, root: Path, manifest: dict) -> None:
        """Kind-specific checks of a manifest (and its shards' headers), before anything is built."""

    @classmethod
    def describe(cls, manifest: dict) -> dict[str, str]:
        """Rows of ``nngraph inspect`` about this kind of corpus (read from the manifest only)."""
        return {}

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        col = self.manifest["items"][name]
        return [col[i] for i in self.rows]

    @property
    def target_kind(self) -> str:
        """"class", "scalar" or "vector": what one network's target is."""
        return "class"

    @property
    def labels(self) -> torch.Tensor:
        """Targets of the split: classes [n] long, scalars [n] or vectors [n, d] float32."""
        dtype = torch.long if self.target_kind == "class" else torch.float32
        return torch.tensor(self.column("label"), dtype=dtype)

    def _load_rows(self, rows: np.ndarray) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Tensors of the shards that hold ``rows``: {key: [(shard tensor, local rows)]}."""
        shards = self.manifest["shards"]
        shard_of = np.asarray(self.manifest["items"]["shard"])
        parts: dict[str, list] = {}
        for k in np.unique(shard_of[rows]):
            entry = shards[int(k)]
            tensors = load_shard(self.root, entry, self._hint())
            local = rows[shard_of[rows] == k] - entry["start"]
            for key, t in tensors.items():
                parts.setdefault(key, []).append((t, torch.from_numpy(local)))
        return parts

    def _hint(self) -> str:
        return f"{rebuild_hint(self.root, self.manifest)} to rebuild it"

    def split_view(self, split: str) -> "Corpus":
        """The same corpus restricted to ``split`` (self when it already is)."""
        return self if self.split == split else type(self)(self.root, split, self.manifest)


class INRCorpus(Corpus):
    """A homogeneous INR corpus (``nngraph data inrs``), optionally one split.

    Item ``i``: ``{"params": {name: tensor}, "label": int, "image": [H, W], "psnr": float,
    "index": source image index, "seed": int}``. All items of the split are loaded at
    construction (a 70k Fashion-MNIST corpus is about 0.6 GB).
    """

    kind = "inr"
    build_command = "nngraph data inrs"
    weight_augments = True
    renders_images = True

    def __init__(self, root: str | os.PathLike, split: str | None = None, manifest: dict | None = None):
        super().__init__(root, split, manifest)
        from nngraph.data.fitting import SirenSpec

        self.spec = SirenSpec.from_dict(self.manifest["architectures"][0])
        self.param_names = list(self.spec.param_shapes())
        parts = self._load_rows(self.rows)
        keys = self.param_names + [ITEM_PREFIX + "image"]
        try:
            cat = {k: torch.cat([t[i] for t, i in parts[k]]) if parts.get(k) else torch.empty(0) for k in keys}
        except KeyError as exc:
            raise DataError(f"corpus {self.root}: a shard lacks tensor {exc}; {self._hint()}") from None
        self.params = {k: cat[k] for k in self.param_names}  # {name: [n, *shape]}
        self.images = cat[ITEM_PREFIX + "image"]  # [n, H, W]
        module = self.spec.build()
        self.template = to_graph(module, torch.zeros(1, self.spec.in_features))

    @classmethod
    def check(cls, root: Path, manifest: dict) -> None:
        """Labels are classes in range; the architecture matches the shards' tensor shapes
        (their safetensors headers, read without the data) before anything is built from it."""
        from nngraph.data.fitting import SirenSpec

        path = root / "manifest.json"
        for i, label in enumerate(manifest["items"].get("label", [])):
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < MAX_CLASSES:
                raise damaged(path, f"item {i} has label {label!r}; INR labels are integer classes "
                                    f"0..{MAX_CLASSES - 1}")
        try:
            spec = SirenSpec.from_dict(manifest["architectures"][0])
        except (IndexError, TypeError, ValueError, NNGraphError) as exc:
            raise damaged(path, f"architectures[0] is not a SIREN spec ({_one_line(exc)})") from None
        shapes = spec.param_shapes()
        headers = complete_headers(root, manifest)
        for entry, header in headers:
            m = entry["stop"] - entry["start"]
            for name, shape in shapes.items():
                got = header.get(name, {}).get("shape") if isinstance(header.get(name), dict) else None
                if got != [m, *shape]:
                    raise damaged(path, f"the architecture says {name} is {[m, *shape]} for shard {entry['file']}, "
                                        f"its file holds {got}")
        if not headers and spec.n_params() > MAX_UNVERIFIED_PARAMS:
            raise damaged(path, f"its SIREN has {spec.n_params():,} parameters per INR and no complete shard "
                                f"confirms it (at most {MAX_UNVERIFIED_PARAMS:,} unconfirmed)")

    @classmethod
    def describe(cls, manifest: dict) -> dict[str, str]:
        from nngraph.data.fitting import SirenSpec

        spec = SirenSpec.from_dict(manifest["architectures"][0])
        graph = to_graph(spec.build(), torch.zeros(1, spec.in_features))
        return {"architecture": json.dumps(manifest["architectures"][0]),
                "graph": f"{graph.num_nodes} nodes, {graph.num_edges} edges",
                "fitting": json.dumps(manifest.get("config", {}).get("recipe"))}

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        items = self.manifest["items"]
        return {"params": {k: v[i] for k, v in self.params.items()}, "label": int(items["label"][row]),
                "image": self.images[i], "psnr": items["psnr"][row], "index": int(items["source_index"][row]),
                "seed": int(items["seed"][row])}

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """The whole split as {name: [n, *shape]} (the input of the graph fast path)."""
        return self.params

    def module(self, i: int):
        """Item ``i`` as a :class:`nngraph.data.inr.Siren` with its stored weights."""
        net = self.spec.build()
        net.load_state_dict({k: v[i] for k, v in self.params.items()})
        return net

    def weight_stats(self) -> dict[str, tuple[float, float]]:
        """{name: (mean, std)} of every parameter tensor over the *training* split."""
        if self._stats is None:
            self._stats = _stats(self.split_view("train").params)
        return self._stats

    # ------------------------------------------------------------------ batching

    def layout_graphs(self) -> list[NeuralGraph]:
        return [self.template]

    def node_counts(self) -> torch.Tensor | None:
        return None  # one architecture

    def canonical(self) -> "INRCorpus":
        """A copy whose INRs are in their canonical sign pattern (``graph.signs``)."""
        out = copy.copy(self)
        n = len(next(iter(self.params.values()))) if self.params else 0
        chunks = [{k: v[i:i + 4096] for k, v in self.params.items()} for i in range(0, n, 4096)]
        parts = [stacked_params(canonicalise_signs(graphs_from_params(self.template, part))) for part in chunks]
        out.params = {k: torch.cat([p[k] for p in parts]) for k in self.params} if parts else self.params
        return out

    def batch(self, index: torch.Tensor, k_max: int, width: int, permute: bool = False, augment=None,
              generator: torch.Generator | None = None) -> Batch:
        """The INRs ``index`` through the fast path; ``augment`` (a weight-space augmentation,
        ``pipeline.param_augment``) applies to their stacked parameters first."""
        params = {k: v[index] for k, v in self.params.items()}
        batch = graphs_from_params(self.template, augment(params, generator) if augment else params)
        return random_permutation_augment(batch, generator) if permute else batch

    def columns(self, index: torch.Tensor) -> dict[str, Any]:
        return {"label": self.labels[index], "params": {k: v[index] for k, v in self.params.items()},
                "image": self.images[index]}

    # ------------------------------------------------------------------ runs

    def architecture_record(self, index: torch.Tensor) -> tuple[list[dict], list[int], dict[str, torch.Tensor]]:
        """(architectures, input shape, tensors) that rebuild networks of this corpus without it."""
        return [self.spec.to_dict()], [self.spec.in_features], {}

    @staticmethod
    def rebuild(architectures: list[dict], tensors: dict[str, torch.Tensor], where: str) -> list[Any]:
        """A fresh network (module) per recorded architecture; a spec of more than
        ``MAX_UNVERIFIED_PARAMS`` parameters (no stored tensor confirms it) is refused unbuilt."""
        from nngraph.data.fitting import SirenSpec

        out = []
        for a, arch in enumerate(architectures):
            try:
                spec = SirenSpec.from_dict(arch)
                count = spec.n_params()
            except (TypeError, ValueError, NNGraphError) as exc:
                raise DataError(f"{where}: architecture {a} is not a SIREN spec ({_one_line(exc)}) (damaged or "
                                "hand-edited); train the run again to rewrite it") from None
            _check_unverified(count, a, where)
            out.append(spec.build())
        return out


class NetworkZoo(Corpus):
    """A zoo of networks of any convertible architectures, optionally one split.

    Item ``i``: ``{"params": state_dict, "label": target, "arch": architecture index,
    "index": int}`` (plus ``training`` and ``seed`` where the manifest has them).
    """

    kind = "zoo"
    build_command = "nngraph data zoo"

    def __init__(self, root: str | os.PathLike, split: str | None = None, manifest: dict | None = None):
        super().__init__(root, split, manifest)
        self.architectures = self.manifest["architectures"]
        self.arch_of = [self.manifest["items"]["arch"][r] for r in self.rows]
        parts = self._load_rows(self.rows)
        pos = {int(r): j for j, r in enumerate(self.rows)}
        self.items: list[dict[str, torch.Tensor]] = [dict() for _ in self.rows]
        for key, chunks in parts.items():
            if key.startswith(ITEM_PREFIX):
                continue
            if self.manifest["layout"] == "per_item":
                net, _, name = key.partition(".")
                row = int(net[3:]) if net.startswith("net") and net[3:].isdigit() else -1
                if row in pos:
                    self.items[pos[row]][name] = chunks[0][0]
            else:
                stacked = torch.cat([t[i] for t, i in chunks])
                for j in range(len(self.rows)):
                    self.items[j][key] = stacked[j]
        for j, params in enumerate(self.items):
            if not params:
                raise DataError(f"corpus {self.root}: network {self.rows[j]} has no tensors; {self._hint()}")
            # nngraph's zoo builders and importers drop diverged networks, so a non-finite weight is an edit
            # (in float32, the graphs' dtype: a float64 1e300 is one too)
            infinite = next((k for k, v in params.items()
                             if v.is_floating_point() and not bool(v.float().isfinite().all())), None)
            if infinite is not None:
                raise DataError(f"corpus {self.root}: network {self.rows[j]} has NaN or infinite values in "
                                f"{infinite} (damaged or hand-edited); {self._hint()}")
        self.templates = self._templates()
        self._graphs: list[NeuralGraph] | None = None

    @classmethod
    def check(cls, root: Path, manifest: dict) -> None:
        """Every network of a complete shard has a finite target of the zoo's target kind and an
        architecture index into ``architectures``."""
        path = root / "manifest.json"
        items, n_archs = manifest["items"], len(manifest["architectures"])
        if any(col not in items for col in ("label", "arch")):
            raise damaged(path, "a zoo needs the columns items.label and items.arch")
        kind, size = _target_spec(path, manifest)
        side = manifest["config"].get("image_size", [1, 1])  # CNN specs are converted on an image of this size
        if not isinstance(side, list) or len(side) != 2 or not all(_finite(v) and isinstance(v, int) for v in side) \
                or not all(1 <= v <= templates.MAX_SIDE for v in side) or side[0] * side[1] > templates.MAX_VALUE:
            raise damaged(path, f"config.image_size is {str(side)[:40]}, not [H, W] of 1..{templates.MAX_SIDE} with "
                                f"H W <= {templates.MAX_VALUE}")
        if any(templates.is_template(a) for a in manifest["architectures"]):
            entry = manifest.get("templates")
            if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) \
                    or isinstance(entry["bytes"], bool) or not isinstance(entry.get("sha256"), str):
                raise damaged(path, "its architectures are graph templates but `templates` names no file with its "
                                    "byte count and SHA-256 (reads are bounded by them)")
            shard_path(root, entry)  # a plain *.safetensors name inside the corpus
        for entry in manifest["shards"]:
            if not entry.get("complete"):
                continue
            for i in range(entry["start"], entry["stop"]):
                label, arch = items["label"][i], items["arch"][i]
                values = label if kind == "vector" and isinstance(label, list) and len(label) == size else [label]
                if kind == "class" and not (isinstance(label, int) and not isinstance(label, bool)
                                            and 0 <= label < MAX_CLASSES):
                    raise damaged(path, f"network {i} has label {label!r}, not a class 0..{MAX_CLASSES - 1}")
                if not all(_finite(v) for v in values) or (kind == "vector" and values == [label]):
                    what = f"a vector of {size} finite numbers" if kind == "vector" else "a finite number"
                    raise damaged(path, f"network {i} has label {label!r}, not {what}")
                if not isinstance(arch, int) or isinstance(arch, bool) or not 0 <= arch < n_archs:
                    raise damaged(path, f"network {i} names architecture {arch!r}, the manifest lists {n_archs}")

    @classmethod
    def describe(cls, manifest: dict) -> dict[str, str]:
        kind, size = _target_spec(Path("manifest.json"), manifest)
        names = manifest["config"].get("targets", {}).get("names", ["label (test accuracy)"])  # checked by ``check``
        stored = sum(templates.is_template(a) for a in manifest["architectures"])
        return {"architectures": f"{len(manifest['architectures'])} ({stored} stored as graph templates)",
                "targets": f"{kind}, {size} column(s): {', '.join(map(str, names))}"}

    @property
    def target_kind(self) -> str:
        return _target_spec(self.root / "manifest.json", self.manifest)[0]

    @property
    def target_names(self) -> list[str]:
        """Names of the target's columns (one for a class or scalar)."""
        return list(self.manifest["config"].get("targets", {}).get("names", ["label"]))

    def _templates(self) -> dict[int, NeuralGraph]:
        """{architecture index: template graph} of the architectures of this split, each network's
        tensors checked against its architecture (names and shapes) before any graph is built."""
        used = sorted(set(self.arch_of))
        stored = [a for a in used if templates.is_template(self.architectures[a])]
        found: dict[int, NeuralGraph] = {}
        if stored:  # ``check`` made sure the manifest names the file, its size and SHA-256
            tensors = load_shard(self.root, self.manifest["templates"], self._hint())
            for a in stored:
                found[a] = _decoded(self.manifest["templates"]["sha256"], a, self.architectures[a], tensors,
                                    str(self.root))
        built = [a for a in used if a not in found]
        if built:
            found.update(_cnn_templates(self, built))
        for j, a in enumerate(self.arch_of):
            if not templates.fits(found[a], self.items[j]):
                raise DataError(f"corpus {self.root}: network {self.rows[j]} does not match its architecture's "
                                f"parameters (names or shapes); {self._hint()}")
        return found

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input of the zoo's networks (C, H, W for CNNs)."""
        specs = {tuple(t.spec.probe_shape) for t in self.templates.values()}
        if len(specs) > 1:
            raise DataError(f"corpus {self.root}: its networks take inputs of {len(specs)} shapes; a zoo's networks "
                            "must all take one input shape")
        return specs.pop() if specs else ()

    @property
    def graphs(self) -> list[NeuralGraph]:
        """Every network of the split as a graph (its state_dict in its architecture's template)."""
        if self._graphs is None:
            self._graphs = [templates.graph_of(self.templates[a], params)
                            for a, params in zip(self.arch_of, self.items)]
        return self._graphs

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        items = self.manifest["items"]
        out = {"params": self.items[i], "label": items["label"][row], "arch": self.architectures[items["arch"][row]],
               "index": int(row)}
        out.update({k: items[k][row] for k in ("training", "seed") if k in items})
        return out

    def graph(self, i: int) -> NeuralGraph:
        """Network ``i`` as a NeuralGraph (``nngraph.execute(graph, x)`` runs it)."""
        return self.graphs[i]

    def model(self, i: int):
        """Network ``i`` as a torch module, for zoos whose architectures are CNN specs (``build_cnn``);
        the networks of a zoo of templates are read as graphs (``graph(i)``)."""
        arch = self.architectures[self.arch_of[i]]
        if templates.is_template(arch):
            raise DataError(f"corpus {self.root} stores its architectures as graph templates, not modules; "
                            "use NetworkZoo.graph(i) (nngraph.execute runs it)")
        from nngraph.data.zoo import build_cnn

        net = build_cnn(arch)
        net.load_state_dict(self.items[i])
        return net.eval()

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """{name: [n, *shape]}; only for zoos of one architecture (``--fixed-arch``)."""
        if len(set(self.arch_of)) > 1:
            raise DataError(f"zoo {self.root} has {len(set(self.arch_of))} architectures; stacked parameters need "
                            f"one (build it with --fixed-arch)")
        if not self.items:
            return {}
        return {k: torch.stack([p[k] for p in self.items]) for k in self.items[0]}

    def weight_stats(self) -> dict[str, tuple[float, float]]:
        """{name: (mean, std)} per parameter name over the training split's networks."""
        if self._stats is None:
            groups: dict[str, list[torch.Tensor]] = {}
            for params in self.split_view("train").items:
                for k, v in params.items():
                    if v.is_floating_point():
                        groups.setdefault(k, []).append(v.reshape(-1))
            self._stats = _stats({k: torch.cat(v) for k, v in groups.items()})
        return self._stats

    # ------------------------------------------------------------------ batching

    def layout_graphs(self) -> list[NeuralGraph]:
        return self.graphs

    def node_counts(self) -> torch.Tensor | None:
        """Nodes per network [n], or None when every network has the same number."""
        counts = torch.tensor([g.num_nodes for g in self.graphs])
        return None if not len(counts) or bool((counts == counts[0]).all()) else counts

    def canonical(self) -> "NetworkZoo":
        """A copy whose networks are in their canonical sign pattern (``graph.signs``)."""
        out = copy.copy(self)
        out._graphs = [canonicalise_signs(g) for g in self.graphs]
        return out

    def batch(self, index: torch.Tensor, k_max: int, width: int, permute: bool = False, augment=None,
              generator: torch.Generator | None = None) -> Batch:
        """The networks ``index`` collated in the k_max x k_max window of ``width`` channels;
        ``augment``'s Gaussian noise (std ``augment.noise``) goes on edge features and biases."""
        graphs = [self.graphs[i] for i in index.tolist()]
        if permute:
            graphs = [permute_graph(g, _draw(generator))[0] for g in graphs]
        batch = collate(graphs, k_max, width)
        if augment:
            noise = augment.noise
            batch.edge_attr = batch.edge_attr + noise * torch.randn(batch.edge_attr.shape, generator=generator)
            noisy_bias = batch.x[:, 0] + noise * torch.randn(batch.x.shape[0], generator=generator)
            batch.x = torch.cat([noisy_bias[:, None], batch.x[:, 1:]], dim=1)
        return batch

    def columns(self, index: torch.Tensor) -> dict[str, Any]:
        return {"label": self.labels[index]}

    # ------------------------------------------------------------------ runs

    def architecture_record(self, index: torch.Tensor) -> tuple[list[dict], list[int], dict[str, torch.Tensor]]:
        """(architectures, input shape, tensors) of the networks ``index``, one entry per architecture:
        CNN specs as they are, templates as ``templates.encode`` gives them (JSON + tensors)."""
        seen = list(dict.fromkeys(self.arch_of[i] for i in index.tolist()))
        archs = [self.architectures[a] for a in seen]
        graphs = [self.templates[a] for a in seen if templates.is_template(self.architectures[a])]
        specs, tensors = templates.encode(graphs)
        it = iter(specs)
        return [next(it) if templates.is_template(arch) else arch for arch in archs], list(self.input_shape), tensors

    @staticmethod
    def rebuild(architectures: list[dict], tensors: dict[str, torch.Tensor], where: str) -> list[Any]:
        """A fresh network per recorded architecture: a module (CNN spec) or a template graph."""
        from nngraph.data.zoo import build_cnn

        out, t = [], 0
        for a, arch in enumerate(architectures):
            if templates.is_template(arch):
                out.append(templates.decode([arch], _renumber(tensors, t), where)[0])
                t += 1
                continue
            try:  # shapes only first: no stored tensor confirms a CNN spec's size
                with torch.device("meta"):
                    count = sum(v.numel() for v in build_cnn(arch).state_dict().values())
            except (NNGraphError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise DataError(f"{where}: architecture {a} is not a CNN spec ({_one_line(exc)}) (damaged or "
                                "hand-edited); train the run again to rewrite it") from None
            _check_unverified(count, a, where)
            out.append(build_cnn(arch))
        return out


CORPORA: dict[str, type[Corpus]] = {cls.kind: cls for cls in (INRCorpus, NetworkZoo)}


def corpus_class(kind: Any, root: str | os.PathLike = "") -> type[Corpus]:
    """The corpus class of a manifest's ``kind`` (one line for an unknown kind)."""
    if not isinstance(kind, str) or kind not in CORPORA:
        raise DataError(f"{root} is a corpus of kind {kind!r}, which this nngraph does not read (it reads "
                        f"{', '.join(CORPORA)}); rebuild it with this nngraph")
    return CORPORA[kind]


def _check_unverified(count: int, a: int, where: str) -> None:
    """Refuse a recorded architecture whose size no stored tensor confirms when it exceeds
    ``MAX_UNVERIFIED_PARAMS`` parameters (far beyond any network of a corpus nngraph builds)."""
    if count > MAX_UNVERIFIED_PARAMS:
        raise DataError(f"{where}: architecture {a} has {count:,} parameters, over the {MAX_UNVERIFIED_PARAMS:,} "
                        "a recorded architecture may claim (damaged or hand-edited); train the run again to rewrite it")


def _one_line(exc: Exception) -> str:
    """An exception's text on one line, cut to 100 characters (torch's can span lines, with a C++ trace)."""
    return " ".join(str(exc).split())[:100]


def _finite(value: Any) -> bool:
    """Whether a JSON value is a finite number (not a bool; an integer too large for a float is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _target_spec(path: Path, manifest: dict) -> tuple[str, int]:
    """(kind, size) of a zoo's targets from ``config.targets`` (whose ``names``, when given, are
    ``size`` strings); a zoo without it holds accuracies."""
    spec = manifest["config"].get("targets", {"kind": "scalar", "size": 1})
    kind, size, names = (spec.get("kind"), spec.get("size", 1), spec.get("names")) if isinstance(spec, dict) \
        else (None, None, None)
    if kind not in TARGET_KINDS or not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 4096 \
            or (names is not None and (not isinstance(names, list) or len(names) != size
                                       or not all(isinstance(n, str) for n in names))):
        raise damaged(path, f"config.targets is {str(spec)[:80]}, not a kind ({', '.join(TARGET_KINDS)}), size "
                            "and that many names")
    return kind, size


_DECODED: OrderedDict = OrderedDict()  # (templates SHA-256, index, spec JSON) -> template graph
_DECODED_SIZE = 64


def _decoded(sha256: str, a: int, arch: dict, tensors: dict[str, torch.Tensor], where: str) -> NeuralGraph:
    """``templates.decode`` of architecture ``a``, once per content: the splits of one corpus (a
    run opens three) share it. The key is the template file's verified SHA-256 and the spec."""
    key = (sha256, a, json.dumps(arch, sort_keys=True))
    if key not in _DECODED:
        _DECODED[key] = templates.decode([arch], _renumber(tensors, a), where)[0]
        if len(_DECODED) > _DECODED_SIZE:
            _DECODED.popitem(last=False)
    _DECODED.move_to_end(key)
    return _DECODED[key]


def _renumber(tensors: dict[str, torch.Tensor], a: int) -> dict[str, torch.Tensor]:
    """The tensors of architecture ``a`` renamed as architecture 0 (``templates.decode`` of one)."""
    prefix = f"arch{a}."
    return {"arch0." + k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _cnn_templates(zoo: NetworkZoo, used: list[int]) -> dict[int, NeuralGraph]:
    """Templates of CNN-spec architectures (zoos of ``nngraph data zoo`` and its importers): each
    spec is first built on the ``meta`` device (shapes only), so a spec claiming huge channels is
    refused against the stored tensors before a real model of its size is allocated."""
    from nngraph.data.zoo import build_cnn

    config = zoo.manifest.get("config", {})
    size = config.get("image_size") or (16, 16)
    found = {}
    for a in used:
        arch = zoo.architectures[a]
        try:
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in build_cnn(arch).state_dict().items()}
        except (NNGraphError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DataError(f"corpus {zoo.root}: architecture {a} is not a CNN spec ({_one_line(exc)}); "
                            f"{zoo._hint()}") from None
        for j, b in enumerate(zoo.arch_of):
            params = zoo.items[j]
            if b == a and (set(shapes) != set(params) or any(tuple(params[k].shape) != s for k, s in shapes.items())):
                raise DataError(f"corpus {zoo.root}: network {zoo.rows[j]} does not match its architecture's "
                                f"parameters (names or shapes); {zoo._hint()}")
        with torch.random.fork_rng(devices=[]):  # only its structure is used
            net = build_cnn(arch).eval()
        found[a] = to_graph(net, torch.zeros(1, int(arch.get("in_channels", 1)), int(size[0]), int(size[1])))
    return found


def _stats(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in tensors.items():
        v = v.double()
        out[k] = (float(v.mean()), float(v.std())) if v.numel() > 1 else (float(v.sum()), 0.0)
    return out


def _draw(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


# The names of the classes before corpus classes (tests and scripts import them).
InrDataset = INRCorpus
ZooDataset = NetworkZoo
