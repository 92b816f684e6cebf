"""NG-T: a relational transformer over all node pairs of a neural graph.

Dense states: V [B, N, d] per node, E [B, N, N, d_e] per ordered pair (i, j). A pair that
is an edge i -> j starts from that edge's encoding; every other pair from a learned
no-edge token (with reverse edges on, a pair j -> i of an edge i -> j starts from the
edge's encoding plus a learned direction vector). One layer, with heads h of size d_h:

    q_ij = V_i W_q + E_ij W_eq,   k_ij = V_j W_k + E_ij W_ek                 (per head)
    a_ij = softmax_j( <q_ij, k_ij> / sqrt(d_h) )       over real nodes j only
    v_ij = (E_ij W_scale) * (V_j W_v) + E_ij W_shift                        modulated values
    V_i <- LN(V_i + W_o sum_j a_ij v_ij),   V_i <- LN(V_i + FFN(V_i))
    E_ij <- LN(E_ij + FFN_e([E_ij, E_ji, V_i, V_j]))

The pair projections eq, ek and the value scale come from one matmul of E; the score
<q_i + eq_ij, k_j + ek_ij> and the modulated values are elementwise products summed over
a head's channels or over j (each one fused kernel when the layer is compiled), and the
shift term is (sum_j a_ij E_ij) W_shift, so the shift is never materialised per pair.
Padded nodes are masked out of the attention, the edge updates (states kept at zero) and
the pooling, so a graph's output does not depend on its batch-mates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

from nngraph.errors import NNGraphError
from nngraph.models.base import GraphMetanetwork
from nngraph.models.embeddings import WeightStatistics
from nngraph.models.readout import mlp
from nngraph.models.registry import register_model


class NGTLayer(nn.Module):
    def __init__(self, hidden: int, edge_hidden: int, heads: int, dropout: float = 0.0, update_edges: bool = True):
        super().__init__()
        self.update_edges = update_edges
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.pair = nn.Linear(edge_hidden, 4 * hidden)  # eq, ek, scale, shift
        self.out = nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = mlp([hidden, 2 * hidden, hidden], dropout)
        self.dropout = nn.Dropout(dropout)
        if not update_edges:  # the last layer of an invariant model: nothing reads the edge states
            return
        # Edge update: Linear on [E_ij, E_ji, V_i, V_j] written as a sum of four projections.
        self.e_self = nn.Linear(edge_hidden, edge_hidden)
        self.e_transpose = nn.Linear(edge_hidden, edge_hidden, bias=False)
        self.e_source = nn.Linear(hidden, edge_hidden, bias=False)
        self.e_target = nn.Linear(hidden, edge_hidden, bias=False)
        self.e_out = nn.Linear(edge_hidden, edge_hidden)
        self.e_norm = nn.LayerNorm(edge_hidden)

    def forward(self, v: torch.Tensor, e: torch.Tensor, node_mask: torch.Tensor,
                pair_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v [B, N, d], e [B, N, N, d_e], node_mask [B, N], pair_mask [B, N, N]."""
        b, n, d = v.shape
        h, dh = self.heads, self.head_dim
        de = e.shape[-1]
        q, k, val = self.qkv(v).view(b, n, 3, h, dh).unbind(2)  # each [B, N, H, dh]
        eq, ek, scale = F.linear(e, self.pair.weight[:3 * d], self.pair.bias[:3 * d]).view(
            b, n, n, 3, h, dh).unbind(3)  # each [B, N, N, H, dh]
        # <q_i + eq_ij, k_j + ek_ij>: one elementwise product and sum (fused when compiled)
        score = ((q[:, :, None] + eq) * (k[:, None] + ek)).sum(-1) / math.sqrt(dh)  # [B, N, N, H]
        score = score.masked_fill(~node_mask[:, None, :, None], float("-inf"))
        attn = torch.softmax(score, dim=2)
        attn = attn.masked_fill(~node_mask[:, :, None, None], 0.0)  # padded queries: no NaN rows
        attn = self.dropout(attn)
        # sum_j a_ij (E_ij W_scale + b) * v_j  and  sum_j a_ij (E_ij W_shift + b) = (sum_j a_ij E_ij) W_shift + ...
        w_shift, b_shift = self.pair.weight[3 * d:].view(h, dh, de), self.pair.bias[3 * d:].view(h, dh)
        agg = (attn.unsqueeze(-1) * scale * val[:, None]).sum(2)  # [B, N, H, dh]
        pooled_e = torch.matmul(attn.permute(0, 1, 3, 2), e)  # [B, N, H, d_e]
        agg = agg + torch.einsum("bihe,hce->bihc", pooled_e, w_shift) + b_shift * attn.sum(2).unsqueeze(-1)
        v = self.norm1(v + self.dropout(self.out(agg.reshape(b, n, d))))
        v = self.norm2(v + self.dropout(self.ffn(v)))
        v = v * node_mask[..., None]
        if not self.update_edges:
            return v, e
        pre = (self.e_self(e) + self.e_transpose(e.transpose(1, 2))
               + self.e_source(v)[:, :, None, :] + self.e_target(v)[:, None, :, :])
        e = self.e_norm(e + self.dropout(self.e_out(F.gelu(pre))))
        return v, e * pair_mask[..., None]


@register_model("ngt", readouts=("invariant", "parameters"), probes=True)
class NGT(GraphMetanetwork):
    """NG-T metanetwork: encoder (+ probe features) -> dense relational transformer -> readout.

    Arguments as for ``NGGNN`` (no degree histogram, same ``probes`` and ``probe_generator``), plus ``heads``.
    """

    def __init__(
        self,
        node_in: int,
        edge_in: int,
        max_positions: int,
        num_outputs: int,
        out_dim: int,
        hidden: int = 64,
        edge_hidden: int = 32,
        layers: int = 4,
        heads: int = 8,
        dropout: float = 0.0,
        position_embeddings: bool = True,
        reverse_edges: bool = False,
        fourier_features: int = 0,
        probes: int = 0,
        input_shape: tuple[int, ...] = (),
        probe_domain: tuple[float, float] = (-1.0, 1.0),
        stats: WeightStatistics | None = None,
        readout: str = "invariant",
        probe_generator: str | None = None,
        head_width: int | None = None,
        head_layers: int = 2,
    ):
        super().__init__(node_in, edge_in, max_positions, num_outputs, out_dim, hidden, edge_hidden, dropout,
                         position_embeddings, fourier_features, probes, input_shape, probe_domain, stats, readout,
                         probe_generator, head_width, head_layers)
        self.no_edge = nn.Parameter(torch.randn(edge_hidden) * 0.1)
        self.reverse = nn.Parameter(torch.randn(edge_hidden) * 0.1) if reverse_edges else None
        self.layers = nn.ModuleList(
            NGTLayer(hidden, edge_hidden, heads, dropout, update_edges=readout != "invariant" or i < layers - 1)
            for i in range(layers)
        )
        self.add_readout()

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> None:
        """One line before any data is read: the attention heads must split ``hidden`` evenly
        (and the base's rules on probes)."""
        super().check_args(kwargs)
        hidden, heads = kwargs["hidden"], kwargs["heads"]
        if hidden % heads:
            raise NNGraphError(f"ngt: --hidden {hidden} must be divisible by heads={heads}; "
                               "choose heads among the divisors of hidden")

    def forward(self, batch: Batch):
        v, e, probe_outputs = self.encode(batch)  # [N, d], [E, d_e], [B, m K] or None
        dense_v, node_mask = to_dense_batch(v, batch.batch)  # [B, N_max, d]
        b, n_max, _ = dense_v.shape
        graph = batch.batch[batch.edge_index[0]]
        local = torch.arange(batch.num_nodes, device=v.device) - batch.ptr[batch.batch]  # node index within its graph
        src, dst = local[batch.edge_index[0]], local[batch.edge_index[1]]
        pair_mask = node_mask[:, :, None] & node_mask[:, None, :]
        dense_e = self.no_edge.to(e.dtype).expand(b, n_max, n_max, -1).clone()  # e: bf16 under bf16 autocast
        if self.reverse is not None:
            dense_e[graph, dst, src] = (e + self.reverse).to(e.dtype)
        dense_e[graph, src, dst] = e
        dense_e = dense_e * pair_mask[..., None]
        for layer in self.layers:
            dense_v, dense_e = layer(dense_v, dense_e, node_mask, pair_mask)
        v = dense_v[node_mask]  # [N, d] in batch order
        return self.read(v, dense_e[graph, src, dst], batch, probe_outputs)  # [B, out_dim] or {name: [B, *shape]}
