"""Batches of graphs from a stored corpus, for training and evaluation.

``GraphLoader`` keeps one split of a corpus (``data.corpus``: an INR corpus or a network
zoo) in memory and asks it for PyG batches of NeuralGraphs; the corpus knows how (an INR
corpus through the fast path from stacked parameters, a zoo by collating its networks'
graphs). The loader fixes the corpus-wide kernel window and edge width, so that every
batch has the same feature sizes, cuts orders into batches (grouped by size when
architectures are mixed), and checks the augmentations: random neuron permutations, and
the weight-space augmentations of ``param_augment`` (on an INR corpus's stacked
parameters, before the graphs are built: only real parameters change; on a zoo only
Gaussian noise applies, to the graph features: edge features and biases). With
``canonical_signs`` every network is put in its canonical sign pattern once, when the
loader is made (``graph.signs``: odd activations only; the same functions, one sign
pattern per function): the batches and ``items["params"]`` hold the canonical
parameters, for training and evaluation alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch_geometric.data import Batch

from nngraph.errors import NNGraphError
from nngraph.pipeline.param_augment import ParamAugment


BUCKET_WINDOW = 16  # batches whose networks are sorted by size together (mixed architectures)


class GraphLoader:
    def __init__(self, dataset, k_max: int | None = None, width: int | None = None, canonical_signs: bool = False):
        self.dataset = dataset.canonical() if canonical_signs else dataset
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
        graphs = self.dataset.layout_graphs()
        k = max(g.spec.k_max for g in graphs)
        return k, max([k * k] + [g.edge_attr.shape[1] for g in graphs])

    def largest_graph(self) -> int:
        """Nodes of the largest network of this split."""
        return max(g.num_nodes for g in self.dataset.layout_graphs())

    def node_counts(self) -> torch.Tensor | None:
        """Nodes per network [n], or None when every network has the same architecture."""
        return self.dataset.node_counts()

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
        augment = augment if augment is not None and augment.active else None
        if augment and not self.dataset.weight_augments and augment != ParamAugment(noise=augment.noise):
            raise NNGraphError("coordinate augmentations and weight dropout need an INR corpus; on a network zoo "
                               "use --weight-noise (and --permute-augment) only")
        batch = self.dataset.batch(index, self.k_max, self.width, permute=permute, augment=augment,
                                   generator=generator)
        return batch, self.columns(index)

    def columns(self, index: torch.Tensor) -> dict[str, Any]:
        return self.dataset.columns(index)
