"""PNA aggregation as dense reductions over in-degree buckets.

Messages m_ij [E', d] are summarised per target node j by four aggregators and three
degree scalers (Corso et al., "Principal Neighbourhood Aggregation"):

    mean_j = (1/D_j) sum_i m_ij        min_j, max_j (elementwise over i)
    std_j  = sqrt(max(mean_i m_ij^2 - mean_j^2, 1e-5)), set to 0 where it is <= sqrt(1e-5)
    agg_j  = [mean_j, min_j, max_j, std_j]                                   [4d]
    y_j    = W_id agg_j + s_amp(D_j) W_amp agg_j + s_att(D_j) W_att agg_j + b
    s_amp(D) = log(D + 1) / delta,   s_att(D) = delta / log(max(D, 1) + 1)

with D_j the in-degree of j and delta the mean of log(deg + 1) over the training nodes;
a node without incoming messages aggregates to 0. This is
``DegreeScalerAggregation(["mean", "min", "max", "std"], ["identity", "amplification",
"attenuation"])`` followed by a Linear layer, computed differently:

Nodes with the same in-degree D form a bucket. With the messages ordered by (in-degree of
the target, target), the messages of a bucket's n_D nodes are one contiguous block that
views as [n_D, D, d], so every aggregator is a reduction over its middle dimension and
its backward is one elementwise expression over the block (``BucketAggregates``: no
scatter, not even for min and max). The scalers are
constant within a bucket, so they fold into one weight per bucket,
W_D = W_id + s_amp(D) W_amp + s_att(D) W_att, and the [N, 12d] concatenation is never
built. Networks of one architecture have a few in-degrees (an MLP: one per layer), so
a batch has a few buckets.

``gather_rows`` (x[index] for node rows) is an operator of its own, so that compiled
layers keep its backward as one ``index_add`` instead of generated atomic adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

AGGREGATORS = ("mean", "min", "max", "std")
SCALERS = ("identity", "amplification", "attenuation")


@dataclass(frozen=True)
class Bucket:
    """The n nodes of in-degree ``degree``: rows [node_start, node_start + n) of the layout's
    node order, messages [message_start, message_start + n * degree) of its message order."""

    degree: int
    nodes: torch.Tensor  # [n] node ids, increasing
    node_start: int
    message_start: int

    @property
    def size(self) -> int:
        return int(self.nodes.numel())


class InDegreeBuckets:
    """Messages grouped by the in-degree of their target (built once per batch, shared by the layers).

    ``order`` [E'] lists the message ids sorted by (in-degree of the target, target);
    ``node_order`` [N] the node ids sorted by (in-degree, id); ``buckets`` one ``Bucket``
    per distinct in-degree, ascending. Building it reads the distinct degrees on the host
    (one synchronisation per batch on a GPU).
    """

    def __init__(self, dst: torch.Tensor, num_nodes: int):
        n = num_nodes
        deg = torch.bincount(dst, minlength=n)  # [N]
        self.order = torch.argsort(deg[dst] * n + dst, stable=True)  # [E']
        self.node_order = torch.argsort(deg, stable=True)  # [N]
        degrees, counts = torch.unique_consecutive(deg[self.node_order], return_counts=True)
        self.buckets: list[Bucket] = []
        node_start = message_start = 0
        for d, c in zip(degrees.tolist(), counts.tolist()):
            self.buckets.append(Bucket(d, self.node_order[node_start:node_start + c], node_start, message_start))
            node_start += c
            message_start += c * d
        self.node_rank = torch.empty_like(self.node_order)  # [N] position of each node in node_order
        self.node_rank[self.node_order] = torch.arange(n, device=dst.device)

    def broadcast_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Node rows x [N, c] -> [E', c]: row m is x[target of message order[m]] (x[dst][order]),
        built per bucket by expanding instead of gathering (its backward is a sum, not a scatter)."""
        blocks = [x[b.nodes].unsqueeze(1).expand(b.size, b.degree, x.shape[1]).reshape(-1, x.shape[1])
                  for b in self.buckets if b.degree]
        return torch.cat(blocks) if blocks else x.new_zeros(0, x.shape[1])

    def to_node_order(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows in node order [N, c] (bucket after bucket) -> rows by node id [N, c]."""
        return rows[self.node_rank]


@torch.library.custom_op("nngraph::gather_rows", mutates_args=())
def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [N, c], index [M] -> x[index] [M, c]; backward: index_add of the gradient rows."""
    return x.index_select(0, index)


@gather_rows.register_fake
def _gather_rows_shape(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.new_empty(index.shape[0], x.shape[1])


@torch.library.custom_op("nngraph::add_rows", mutates_args=())
def add_rows(rows: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """rows [M, c] summed into [num_rows, c] at ``index`` [M] (the backward of ``gather_rows``)."""
    return rows.new_zeros(num_rows, rows.shape[1]).index_add_(0, index, rows)


@add_rows.register_fake
def _add_rows_shape(rows: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    return rows.new_empty(num_rows, rows.shape[1])


def _gather_rows_setup(ctx, inputs, output) -> None:
    x, index = inputs
    ctx.save_for_backward(index)
    ctx.num_rows = x.shape[0]


def _gather_rows_backward(ctx, grad: torch.Tensor):
    (index,) = ctx.saved_tensors
    return add_rows(grad.contiguous(), index, ctx.num_rows), None


gather_rows.register_autograd(_gather_rows_backward, setup_context=_gather_rows_setup)


def degree_scalers(degree: int, avg_deg_log: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_amp(D), s_att(D)) as 1-element tensors on ``avg_deg_log``'s device."""
    amplification = math.log(degree + 1) / avg_deg_log
    attenuation = avg_deg_log / math.log(max(degree, 1) + 1)
    return amplification, attenuation


class BucketAggregates(torch.autograd.Function):
    """Messages of n nodes of in-degree D, [n, D, d] -> [mean, min, max, std] [n, 4d], with
    a backward that is one elementwise expression over the block (no scatter):

        dL/dm_k = g_mean / D + [k = argmin] g_min + [k = argmax] g_max
                  + g_std (m_k - mean) / (D std)        (g_std := 0 where std was set to 0)

    At a tie the first tied message gets the min / max gradient (as ``min(1)`` with indices).
    Written out because autograd's min / max backward scatters into a zero [n, D, d] tensor,
    which compiled code keeps as a pass of its own; this form fuses with the message's backward.
    """

    @staticmethod
    def forward(ctx, block: torch.Tensor) -> torch.Tensor:
        mean = block.mean(1)  # [n, d]
        var = (block * block).mean(1) - mean * mean
        # the variance floor 1e-5 (as PyG's std aggregator) is written as a literal: dynamo makes a
        # global float a graph input, which it cannot pass into an autograd.Function (torch 2.13)
        std = var.clamp(min=1e-5).sqrt()
        kept = std > math.sqrt(1e-5)
        low, low_at = block.min(1)
        high, high_at = block.max(1)
        ctx.save_for_backward(block, mean, std, kept, low_at, high_at)
        return torch.cat([mean, low, high, std * kept], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        block, mean, std, kept, low_at, high_at = ctx.saved_tensors
        degree, width = block.shape[1], block.shape[2]
        g_mean, g_low, g_high, g_std = grad.split(width, dim=1)  # [n, d] each
        g_spread = torch.where(kept, g_std / (degree * std), 0.0)
        slot = torch.arange(degree, device=block.device).view(1, degree, 1)
        grad_block = ((g_mean / degree).unsqueeze(1) + (block - mean.unsqueeze(1)) * g_spread.unsqueeze(1)
                      + torch.where(slot == low_at.unsqueeze(1), g_low.unsqueeze(1), 0.0)
                      + torch.where(slot == high_at.unsqueeze(1), g_high.unsqueeze(1), 0.0))  # [n, D, d]
        return grad_block.to(block.dtype)


class PNAAggregation(nn.Module):
    """PNA aggregation of messages and its output projection, [E', d] -> [N, d] (module docstring).

    ``deg`` is the in-degree histogram of training graphs (``deg[k]`` nodes of in-degree k).
    """

    def __init__(self, hidden: int, deg: torch.Tensor):
        super().__init__()
        deg = deg.to(torch.float)
        bins = torch.arange(deg.numel(), dtype=torch.float, device=deg.device)
        total = float(deg.sum())
        avg_deg_log = float(((bins + 1).log() * deg).sum()) / total  # delta
        self.register_buffer("avg_deg_log", torch.tensor([avg_deg_log], device=deg.device))
        self.post = nn.Linear(len(AGGREGATORS) * len(SCALERS) * hidden, hidden)

    def forward(self, messages: torch.Tensor, layout: InDegreeBuckets) -> torch.Tensor:
        """messages [E', d] in ``layout.order`` -> y [N, d] by node id."""
        d = messages.shape[1]
        w_id, w_amp, w_att = self.post.weight.split(len(AGGREGATORS) * d, dim=1)  # each [d, 4d]
        rows = []
        for b in layout.buckets:
            if not b.degree:  # no incoming messages: the aggregates are 0
                rows.append(self.post.bias.expand(b.size, d))
                continue
            block = messages[b.message_start:b.message_start + b.size * b.degree].view(b.size, b.degree, d)
            amplification, attenuation = degree_scalers(b.degree, self.avg_deg_log)
            weight = w_id + amplification * w_amp + attenuation * w_att  # [d, 4d]
            rows.append(nn.functional.linear(BucketAggregates.apply(block), weight, self.post.bias))
        return layout.to_node_order(torch.cat(rows))
