"""StatNN: weight statistics + MLP (Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights").

For every parametric layer l of a network (the nodes that Linear / (transposed) conv / flatten edges
point into, numbered 0..L-1 in topological order), two sets of numbers are summarised:
its weights W_l (every real kernel entry of its incoming parametric edges, no window
padding) and its biases b_l (channel 0 of those target nodes). Each set S gets

    stats(S) = [mean, var, q_0, q_25, q_50, q_75, q_100]      (population variance,
                                                               linearly interpolated quantiles)

so a layer gives 14 numbers. Unterthiner et al. concatenate these for all layers of a
fixed architecture. Zoos of mixed depth need a fixed size, so the summary is

    z = [ slot_1 .. slot_first_k,  slot'_1 .. slot'_last_k,  stats(all W), stats(all b),
          log L, log(1 + #weights) ]
    slot_s   = [stats(W_s), stats(b_s), 1]          for s < L, else 0 (the 1 is a presence mask)
    slot'_t  = the same for layer L - last_k + t    (the last layers), 0 where that is < 0

(with first_k = L, last_k = 0 on a one-architecture zoo this is exactly the paper's
feature vector plus the pooled statistics). Statistics of sets are invariant to
permutations of hidden neurons. Then y = MLP((z - mu) / sigma) with mu, sigma fixed
buffers (``set_normalisation``; identity by default). ``features(batch)`` exposes z for a
gradient-boosted variant.

Everything is computed for the whole batch at once: one segmented sort gives all
quantiles; there is no loop over networks or layers. BatchNorm / LayerNorm parameters
are not part of the paper's statistics and are left out.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from nngraph.graph.graph import EDGE_CONV, EDGE_CONV_T, EDGE_FLATTEN, X_BIAS, centre, graph_specs
from nngraph.graph.layout import kernel_mask
from nngraph.models.baselines.deepsets import PARAM_KINDS, batch_k_max
from nngraph.models.baselines.mlp import mlp, reset_mlp
from nngraph.models.baselines.standardise import Standardised
from nngraph.models.registry import register_model

N_STATS = 7
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def segment_stats(values: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """stats of each segment: values [M], seg [M] in [0, S) -> [S, 7] (0 for empty segments)."""
    counts = torch.bincount(seg, minlength=num_segments)  # [S]
    c = counts.clamp(min=1).to(values.dtype)
    mean = scatter(values, seg, 0, dim_size=num_segments, reduce="sum") / c  # [S]
    var = scatter((values - mean[seg]).pow(2), seg, 0, dim_size=num_segments, reduce="sum") / c
    # Segmented sort: by value, then (stably) by segment.
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(seg[order], stable=True)]
    ordered = values[order]  # [M] sorted within each segment
    start = torch.cumsum(counts, 0) - counts  # [S]
    q = torch.tensor(QUANTILES, dtype=values.dtype, device=values.device)  # [5]
    pos = q.unsqueeze(0) * (c - 1).unsqueeze(1)  # [S, 5]
    lo = pos.floor()
    frac = pos - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, (counts.clamp(min=1) - 1).unsqueeze(1))
    empty = counts == 0
    last = max(values.shape[0] - 1, 0)
    i_lo = (start.unsqueeze(1) + lo).clamp(max=last)
    i_hi = (start.unsqueeze(1) + hi).clamp(max=last)
    if values.numel() == 0:
        quant = values.new_zeros(num_segments, len(QUANTILES))
    else:
        quant = ordered[i_lo] * (1 - frac) + ordered[i_hi] * frac  # [S, 5]
    out = torch.cat([mean.unsqueeze(1), var.unsqueeze(1), quant], dim=1)  # [S, 7]
    return out.masked_fill(empty.unsqueeze(1), 0.0)


def weight_values(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Every real weight of every parametric edge: (values [M], edge id [M]).

    Conv and transposed-conv edges contribute their kh x kw kernel (from ``edge_geometry``), Linear edges their
    scalar at the window centre, flatten edges their first H*W entries.
    """
    k = batch_k_max(batch)
    attr = batch.edge_attr  # [E, d_e]
    e, width = attr.shape
    kind = batch.edge_kind
    cols = torch.arange(width, device=attr.device)  # [d_e]
    kh, kw = batch.geom_table[:, :2][batch.edge_geom_id.long()].clamp(min=1).t()  # [E] each
    conv_mask = kernel_mask(k, kh, kw, width)  # [E, d_e]
    lin_mask = (cols == centre(k)).unsqueeze(0).expand(e, width)
    hw = batch.node_hw[batch.edge_index[0]].prod(1)  # [E]
    flat_mask = cols.unsqueeze(0) < hw.unsqueeze(1)
    mask = torch.where(
        ((kind == EDGE_CONV) | (kind == EDGE_CONV_T)).unsqueeze(1), conv_mask, torch.where((kind == EDGE_FLATTEN).unsqueeze(1), flat_mask, lin_mask)
    )
    mask = mask & torch.isin(kind, torch.tensor(PARAM_KINDS, device=kind.device)).unsqueeze(1)
    edge_id = torch.arange(e, device=attr.device).unsqueeze(1).expand(e, width)
    return attr[mask], edge_id[mask]


def stat_features(batch: Batch, first_k: int, last_k: int) -> torch.Tensor:
    """The fixed-size summary z of every network (module docstring): [B, feature_dim]."""
    b = int(batch.num_graphs)
    dtype = batch.x.dtype
    n_layers_all = int(batch.node_layer.max()) + 1
    values, edge_id = weight_values(batch)  # [M], [M]
    dst = batch.edge_index[1, edge_id]  # [M] target node of each weight
    # Parametric layers: (graph, layer) pairs that parametric edges point into.
    node_key = batch.batch * n_layers_all + batch.node_layer  # [N]
    is_target = torch.zeros(batch.num_nodes, dtype=torch.bool, device=dst.device)
    is_target[dst] = True
    keys, node_seg = torch.unique(node_key[is_target], return_inverse=True)  # [S] sorted: graph major
    s = keys.shape[0]
    seg_of_node = torch.full_like(node_key, -1)
    seg_of_node[is_target] = node_seg
    w_stats = segment_stats(values, seg_of_node[dst], s)  # [S, 7]
    b_stats = segment_stats(batch.x[is_target, X_BIAS], node_seg, s)  # [S, 7]
    layer_stats = torch.cat([w_stats, b_stats, torch.ones(s, 1, dtype=dtype, device=values.device)], 1)  # [S, 15]
    seg_graph = keys // n_layers_all  # [S]
    per_graph = torch.bincount(seg_graph, minlength=b)  # [B] L of each network
    rank = torch.arange(s, device=keys.device) - (torch.cumsum(per_graph, 0) - per_graph)[seg_graph]  # [S]
    slots = layer_stats.new_zeros(b, first_k + last_k, 2 * N_STATS + 1)
    head = rank < first_k
    slots[seg_graph[head], rank[head]] = layer_stats[head]
    if last_k > 0:
        t = rank - (per_graph[seg_graph] - last_k)  # position among the last_k layers
        tail = t >= 0
        slots[seg_graph[tail], first_k + t[tail]] = layer_stats[tail]
    graph_of_weight = batch.batch[dst]
    pooled_w = segment_stats(values, graph_of_weight, b)  # [B, 7]
    pooled_b = segment_stats(batch.x[is_target, X_BIAS], batch.batch[is_target], b)  # [B, 7]
    n_weights = torch.bincount(graph_of_weight, minlength=b).to(dtype)
    extra = torch.stack([per_graph.to(dtype).clamp(min=1).log(), torch.log1p(n_weights)], 1)  # [B, 2]
    return torch.cat([slots.reshape(b, -1), pooled_w, pooled_b, extra], dim=1)


def stat_feature_dim(first_k: int, last_k: int) -> int:
    return (first_k + last_k) * (2 * N_STATS + 1) + 2 * N_STATS + 2


@register_model("statnn", baseline=True)
class StatNN(Standardised):
    """MLP on per-layer weight statistics (Unterthiner et al. 2020).

    Args:
        first_k: statistics slots for the first layers (use the depth L on one architecture).
        last_k: slots for the last layers (0 on one architecture).
        hidden: MLP width.
        out_dim: output size.
        layers: Linear layers of the MLP.
        dropout: dropout after hidden activations.

    Forward: any batch -> [B, out_dim]; invariant to hidden-neuron permutations.
    """

    def __init__(self, first_k: int, last_k: int, hidden: int, out_dim: int, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.first_k, self.last_k = first_k, last_k
        dim = stat_feature_dim(first_k, last_k)
        self.in_dim = dim
        self.init_standardisation(dim)
        self.net = mlp([dim] + [hidden] * (layers - 1) + [out_dim], dropout)

    @classmethod
    def from_example(
        cls,
        batch: Batch,
        out_dim: int,
        hidden: int = 256,
        first_k: int | None = None,
        last_k: int | None = None,
        normalise: bool = True,
        **kwargs,
    ) -> "StatNN":
        """One architecture: first_k = its depth, last_k = 0 (the paper's setting); mixed: 3 and 3.
        With ``normalise``, features standardised with the batch's mean/std (pass training data)."""
        if first_k is None and last_k is None:
            specs = graph_specs(batch)
            if all(sp.params == specs[0].params for sp in specs):
                depth = int(stat_depths(batch).max())
                first_k, last_k = depth, 0
            else:
                first_k, last_k = 3, 3
        model = cls(first_k if first_k is not None else 3, last_k if last_k is not None else 3, hidden, out_dim, **kwargs)
        if normalise:
            with torch.no_grad():
                model.fit_normalisation(model.features(batch))  # [B, in_dim]
        return model

    def reset_parameters(self) -> None:
        reset_mlp(self.net)

    def features(self, batch: Batch) -> torch.Tensor:
        return stat_features(batch, self.first_k, self.last_k)  # [B, in_dim]

    def forward(self, batch: Batch) -> torch.Tensor:
        z = self.standardise(self.features(batch))  # [B, in_dim]
        return self.net(z)  # [B, out_dim]


def stat_depths(batch: Batch) -> torch.Tensor:
    """Number of parametric layers L of every network: [B]."""
    n_layers_all = int(batch.node_layer.max()) + 1
    param = torch.isin(batch.edge_kind, torch.tensor(PARAM_KINDS, device=batch.edge_kind.device))
    dst = batch.edge_index[1, param]
    keys = torch.unique(batch.batch[dst] * n_layers_all + batch.node_layer[dst])
    return torch.bincount(keys // n_layers_all, minlength=int(batch.num_graphs))

