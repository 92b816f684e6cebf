"""Batches of graphs from a stored corpus, for training and evaluation.

``GraphLoader`` keeps one split of an INR corpus or CNN zoo in memory and builds PyG
batches of NeuralGraphs on demand: INR corpora (one architecture) through the fast path
from stacked parameters, zoos by converting every network once and collating with a
corpus-wide kernel window, so that every batch has the same feature sizes.
Augmentations (training only): random neuron permutations, and the weight-space
augmentations of ``param_augment`` (on an INR corpus's stacked parameters, before the
graphs are built: only real parameters change). On a zoo only Gaussian noise applies,
to the graph features (edge features and biases). With ``canonical_signs`` every network
is put in its canonical sign pattern once, when the loader is made (``graph.signs``: odd
activations only; the same functions, one sign pattern per function): the batches and
``items["params"]`` hold the canonical parameters, for training and evaluation alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.graph.augment import random_permutation_augment
from nngraph.graph.batch import collate
from nngraph.graph.convert import to_graph
from nngraph.graph.fast import graphs_from_params, stacked_params
from nngraph.graph.permute import permute_graph
from nngraph.graph.signs import canonicalise_signs
from nngraph.pipeline.param_augment import ParamAugment


BUCKET_WINDOW = 16  # batches whose networks are sorted by size together (mixed architectures)


class GraphLoader:
    def __init__(self, dataset, k_max: int | None = None, width: int | None = None, canonical_signs: bool = False):
        self.dataset = dataset
        self.kind = dataset.kind
        if self.kind == "inr":
            module = dataset.spec.build()
            self.template = to_graph(module, torch.zeros(1, module.hidden[0].in_features))
            self.graphs = None
            self.params = canonical_params(self.template, dataset.params) if canonical_signs else dataset.params
        else:
            example = torch.zeros(1, *zoo_input_shape(dataset))
            self.graphs = [to_graph(dataset.model(i), example) for i in range(len(dataset))]
            if canonical_signs:
                self.graphs = [canonicalise_signs(g) for g in self.graphs]
            self.template = None
        self.k_max = k_max
        self.width = width

    @classmethod
    def for_splits(cls, datasets: dict[str, Any], canonical_signs: bool = False) -> dict[str, "GraphLoader"]:
        """One loader per split of a corpus, all with the corpus-wide kernel window and edge
        width (the largest over the splits), so that every batch of the corpus has the same
        feature sizes whichever split it comes from."""
        loaders = {split: cls(dataset, canonical_signs=canonical_signs) for split, dataset in datasets.items()}
        k_max = max(loader.layout()[0] for loader in loaders.values())
        width = max(loader.layout()[1] for loader in loaders.values())
        for loader in loaders.values():
            loader.k_max, loader.width = k_max, width
        return loaders

    def __len__(self) -> int:
        return len(self.dataset)

    def layout(self) -> tuple[int, int]:
        """(k_max, edge feature width) of this split's graphs."""
        graphs = [self.template] if self.template is not None else self.graphs
        k = max(g.spec.k_max for g in graphs)
        return k, max([k * k] + [g.edge_attr.shape[1] for g in graphs])

    def node_counts(self) -> torch.Tensor | None:
        """Nodes per network [n], or None when every network has the same architecture."""
        if self.graphs is None:
            return None
        counts = torch.tensor([g.num_nodes for g in self.graphs])
        return None if bool((counts == counts[0]).all()) else counts

    def split_batches(self, order: torch.Tensor, batch_size: int, shuffle: bool = False,
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``order`` cut into batches; networks of different sizes are grouped by size.

        Dense models pay for the largest network of a batch (NG-T's pair states cost
        B * N_max^2), so with mixed architectures every window of ``BUCKET_WINDOW``
        batches is sorted by node count before it is cut, and, if ``shuffle``, the batches
        are put in random order. With one architecture the batches are consecutive chunks.
        """
        counts = self.node_counts()
        if counts is None:
            return list(order.split(batch_size))
        window = batch_size * BUCKET_WINDOW
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[torch.sort(counts[chunk], stable=True).indices]
            batches += list(chunk.split(batch_size))
        if shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def make_batch(self, index: torch.Tensor, permute: bool = False, augment: ParamAugment | None = None,
                   generator: torch.Generator | None = None) -> tuple[Batch, dict[str, Any]]:
        """(graphs, dataset columns) of the networks ``index``; ``augment`` and ``permute``
        (training) draw from ``generator``. ``items["params"]`` stay the stored ones."""
        items = self.columns(index)
        augment = augment if augment is not None and augment.active else None
        if self.kind == "inr":
            params = augment(items["params"], generator) if augment else items["params"]
            batch = graphs_from_params(self.template, params)
            if permute:
                batch = random_permutation_augment(batch, generator)
            return batch, items
        if augment and augment != ParamAugment(noise=augment.noise):
            raise NNGraphError("coordinate augmentations and weight dropout need an INR corpus; on a CNN zoo "
                               "use --weight-noise (and --permute-augment) only")
        graphs = [self.graphs[i] for i in index.tolist()]
        if permute:
            graphs = [permute_graph(g, _draw(generator))[0] for g in graphs]
        batch = collate(graphs, self.k_max, self.width)
        if augment:
            noise = augment.noise
            batch.edge_attr = batch.edge_attr + noise * torch.randn(batch.edge_attr.shape, generator=generator)
            noisy_bias = batch.x[:, 0] + noise * torch.randn(batch.x.shape[0], generator=generator)
            batch.x = torch.cat([noisy_bias[:, None], batch.x[:, 1:]], dim=1)
        return batch, items

    def columns(self, index: torch.Tensor) -> dict[str, Any]:
        ds = self.dataset
        labels = [ds[i]["label"] for i in index.tolist()] if self.kind == "zoo" else ds.labels[index]
        items: dict[str, Any] = {"label": torch.as_tensor(labels)}
        if self.kind == "inr":
            items["params"] = {k: v[index] for k, v in self.params.items()}
            items["image"] = ds.images[index]
        return items


def canonical_params(template, params: dict[str, torch.Tensor], chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Stacked parameters {name: [n, *shape]} of one architecture in their canonical sign pattern."""
    n = len(next(iter(params.values())))
    chunks = ({k: v[i:i + chunk] for k, v in params.items()} for i in range(0, n, chunk))
    parts = [stacked_params(canonicalise_signs(graphs_from_params(template, part))) for part in chunks]
    return {k: torch.cat([p[k] for p in parts]) for k in params}


def zoo_input_shape(dataset) -> tuple[int, int, int]:
    """(C, H, W) of the images the zoo's networks were trained on."""
    config = dataset.manifest.get("config", {})
    size = config.get("image_size") or (16, 16)
    arch = dataset[0]["arch"] if len(dataset) else {"in_channels": 1}
    return (int(arch.get("in_channels", 1)), int(size[0]), int(size[1]))


def _draw(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
