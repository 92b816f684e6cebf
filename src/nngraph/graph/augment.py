"""Random function-preserving permutations of a batch of networks (training augmentation).

Each network of a one-architecture batch gets its own random relabelling of its hidden
neurons, the one ``permute.permute_graph`` would draw: within every tie class of
``permute.interchangeable_groups`` the classes are shuffled, and node and edge fields are
gathered accordingly. The network's function is unchanged; a model that is not
permutation invariant (the flat MLP baseline) learns the symmetry from it.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from nngraph.graph.fast import one_architecture
from nngraph.graph.graph import EDGE_KINDS, NeuralGraph
from nngraph.graph.permute import interchangeable_groups


def interchangeable_classes(graph) -> list[torch.Tensor]:
    """``permute.interchangeable_groups`` as one tensor [m, L_g] per group (m classes, L_g nodes); only
    groups whose every shuffle is checked to map edges onto edges, so no draw can fail."""
    return [torch.tensor(classes) for classes in interchangeable_groups(graph)]


_CLASSES: dict[tuple, list[torch.Tensor]] = {}  # interchangeable classes per architecture


def random_permutation_augment(batch: Batch, generator: torch.Generator | None = None) -> Batch:
    """Each network of a one-architecture batch with its own random hidden-neuron permutation.

    Function-preserving (the same relabelling ``permute_graph`` draws, independently per
    graph). Vectorised over the batch: the interchangeable classes are found once on the
    first graph, then B permutations are drawn at once and node / edge fields gathered.
    The result keeps the canonical edge layout (edge e joins the same node ids), so
    ``stacked_params`` of it gives the permuted parameters.
    """
    spec, b, n, e = one_architecture(batch, "random_permutation_augment")
    device = batch.x.device
    edge_index0 = batch.edge_index[:, :e]  # graph 0 uses node ids 0..n-1
    kinds0 = batch.edge_kind[:e].cpu()
    key = (tuple(spec.params), n, e, tuple(torch.bincount(kinds0, minlength=len(EDGE_KINDS)).tolist()))
    if key not in _CLASSES:
        fields = {f: batch[f][:n].cpu() for f in ("node_layer", "node_role", "node_act", "node_norm", "node_hw")}
        template = NeuralGraph(edge_index=edge_index0.cpu(), edge_kind=kinds0, geom_table=batch.geom_table.cpu(),
                               edge_geom_id=batch.edge_geom_id[:e].cpu(),
                               spec=spec, num_nodes=n, **fields)
        _CLASSES[key] = interchangeable_classes(template)
    perm = torch.arange(n).repeat(b, 1)  # [B, n]: new node k of graph b holds old node perm[b, k]
    for classes in _CLASSES[key]:  # classes [m, L_g]
        m = classes.shape[0]
        sigma = torch.argsort(torch.rand(b, m, generator=generator), dim=1)  # [B, m]
        perm[:, classes.reshape(-1)] = classes[sigma].reshape(b, -1)
    # Edge (i -> j) of the new graph carries old edge (perm[i] -> perm[j]).
    src, dst = edge_index0.cpu()
    edge_key = src * n + dst  # [e]
    order = torch.argsort(edge_key)
    wanted = perm[:, src] * n + perm[:, dst]  # [B, e]
    old_edge = order[torch.searchsorted(edge_key[order], wanted)]  # [B, e]
    if not torch.equal(edge_key[old_edge], wanted):
        raise RuntimeError("permutation does not map edges onto edges; the graph is malformed")
    node_idx = (perm + torch.arange(b).unsqueeze(1) * n).reshape(-1).to(device)  # [B*n]
    edge_idx = (old_edge + torch.arange(b).unsqueeze(1) * e).reshape(-1).to(device)  # [B*e]
    out = batch.clone()
    for field in ("x", "node_act", "node_norm", "node_eps", "node_hw", "node_layer", "node_pos", "node_role"):
        if field in batch:
            out[field] = batch[field][node_idx]
    for field in ("edge_attr", "edge_kind", "edge_geom_id"):
        if field in batch:
            out[field] = batch[field][edge_idx]
    return out
