"""DeepSets over neurons: an invariant baseline that sees each neuron and its weights as a set element.

Every node v of a network (input, hidden or output neuron, channel, sum/pool node) gets
a feature vector built only from itself and its incident edges:

    f_v = [ x_v,                                   # bias, norm gamma/beta/mean/var, act param, offset
            onehot(act_v), onehot(norm_v), onehot(role_v),
            mean_{u->v} e_uv, max_{u->v} e_uv,     # incoming weights (parametric edges only)
            mean_{v->w} e_vw, max_{v->w} e_vw,     # outgoing weights
            log(1 + deg_in), log(1 + deg_out) ]

where e_uv is a layout-independent encoding of the edge's weights (``edge_encoding``).
Then, per graph G and per node role r (input / hidden / output),

    h_v = phi(f_v),   s_G = concat_r [ mean_{v in G, role r} h_v, max_{v in G, role r} h_v ],
    y_G = rho(s_G).

Permuting hidden neurons permutes the set {f_v} of each role, so y is invariant; all
reductions are scatters over ``batch.batch`` / ``edge_index``, so a network's output
does not depend on its batch-mates, whatever their architectures (no padding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from nngraph.errors import InputShapeError, NNGraphError
from nngraph.graph import layout
from nngraph.graph.graph import (
    ACTIVATIONS,
    EDGE_CONV,
    EDGE_CONV_T,
    EDGE_FLATTEN,
    EDGE_LINEAR,
    NORMS,
    NODE_DIM,
    ROLES,
    centre,
    graph_specs,
)
from nngraph.models.baselines.mlp import mlp, reset_mlp
from nngraph.models.baselines.standardise import Standardised
from nngraph.models.registry import register_model

PARAM_KINDS = (EDGE_LINEAR, EDGE_CONV, EDGE_CONV_T, EDGE_FLATTEN)  # every edge that carries a weight tensor


def batch_k_max(batch: Batch) -> int:
    """The batch's common kernel window (collate re-lays every graph into it)."""
    return int(graph_specs(batch)[0].k_max)


def edge_encoding(batch: Batch, kernel: int) -> torch.Tensor:
    """Weights of every edge in a layout that does not depend on the batch: [E, kernel^2 + 2].

    - window edges (Linear, conv, transposed conv, residual, ...): the batch's k_max x k_max window
      centre-cropped/padded to ``kernel`` x ``kernel`` (a scalar weight at its centre);
    - flatten edges (the H*W weights from one channel to one Linear unit): the mean of
      those weights at the window's centre (what the unit would see of a constant map)
      and their standard deviation in the extra last-but-one channel;
    - the last channel marks flatten edges.
    """
    k_b = batch_k_max(batch)
    attr = batch.edge_attr  # [E, d_e]
    if k_b > kernel and (k_b - kernel) % 2:
        raise InputShapeError(f"batch kernel window {k_b} and model window {kernel} must both be odd")
    window = layout.decode_kernels(attr, k_b, k_b, k_b)  # [E, k_b, k_b]
    if k_b > kernel:
        inner = layout.decode_kernels(attr, k_b, kernel, kernel)  # [E, kernel, kernel]
        # Weights outside the model's window would be silently lost: refuse.
        lost = (window.abs().sum((1, 2)) - inner.abs().sum((1, 2)))[batch.edge_kind != EDGE_FLATTEN]
        if lost.numel() and lost.max() > 0:
            raise InputShapeError(
                f"the batch holds kernels larger than {kernel}x{kernel}; build the model with kernel >= {k_b}"
            )
        window = inner
    out = layout.encode_kernels(window, kernel, kernel * kernel)  # [E, kernel^2]
    flat = (batch.edge_kind == EDGE_FLATTEN).to(attr.dtype)  # [E]
    hw = batch.node_hw[batch.edge_index[0]].prod(1).clamp(min=1).to(attr.dtype)  # [E] size of the source map
    f_mean = attr.sum(1) / hw
    f_std = (attr.pow(2).sum(1) / hw - f_mean.pow(2)).clamp(min=0).add(1e-12).sqrt()
    out = out * (1 - flat).unsqueeze(1)
    out = out + nn.functional.one_hot(torch.tensor(centre(kernel), device=attr.device), kernel * kernel).to(attr.dtype) * (flat * f_mean).unsqueeze(1)
    return torch.cat([out, (flat * f_std).unsqueeze(1), flat.unsqueeze(1)], dim=1)  # [E, k^2 + 2]


def node_set_features(batch: Batch, kernel: int) -> torch.Tensor:
    """f_v of every node (see module docstring): [N, node_feature_dim(kernel)]."""
    n = batch.num_nodes
    enc = edge_encoding(batch, kernel)  # [E, d]
    param = torch.isin(batch.edge_kind, torch.tensor(PARAM_KINDS, device=enc.device))
    enc, (src, dst) = enc[param], batch.edge_index[:, param]
    ones = torch.ones_like(src, dtype=enc.dtype)
    deg_in = scatter(ones, dst, 0, dim_size=n, reduce="sum")  # [N]
    deg_out = scatter(ones, src, 0, dim_size=n, reduce="sum")
    parts = [
        batch.x,  # [N, 7]
        nn.functional.one_hot(batch.node_act, len(ACTIVATIONS)).to(enc.dtype),
        nn.functional.one_hot(batch.node_norm, len(NORMS)).to(enc.dtype),
        nn.functional.one_hot(batch.node_role, len(ROLES)).to(enc.dtype),
        scatter(enc, dst, 0, dim_size=n, reduce="mean"),  # [N, d] 0 where no incoming edge
        scatter(enc, dst, 0, dim_size=n, reduce="max"),
        scatter(enc, src, 0, dim_size=n, reduce="mean"),
        scatter(enc, src, 0, dim_size=n, reduce="max"),
        torch.log1p(deg_in).unsqueeze(1),
        torch.log1p(deg_out).unsqueeze(1),
    ]
    return torch.cat(parts, dim=1)


def node_feature_dim(kernel: int) -> int:
    return NODE_DIM + len(ACTIVATIONS) + len(NORMS) + len(ROLES) + 4 * (kernel * kernel + 2) + 2


@register_model("deepsets", baseline=True)
class DeepSets(Standardised):
    r"""Invariant DeepSets over the neurons of each network.

    .. math::
        y_G = \rho\Big(\big\Vert_{r \in \{in, hid, out\}} \big[\operatorname{mean}_{v \in G_r} \phi(f_v),
              \max_{v \in G_r} \phi(f_v)\big]\Big)

    Args:
        in_dim: size of f_v, ``node_feature_dim(kernel)``.
        hidden: width of phi and rho.
        out_dim: output size.
        kernel: odd kernel window the edge encoding uses (>= the largest kernel seen).
        phi_layers, rho_layers: Linear layers in phi and rho.
        dropout: dropout in rho.

    Forward: any batch from ``collate`` / ``graphs_from_params`` -> [B, out_dim].
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        kernel: int = 1,
        phi_layers: int = 2,
        rho_layers: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError("DeepSets kernel window must be odd (kernels are centre-padded)")
        if in_dim != node_feature_dim(kernel):
            raise ValueError(f"in_dim must be node_feature_dim(kernel) = {node_feature_dim(kernel)}")
        self.kernel = kernel
        self.init_standardisation(in_dim)  # f_v standardisation (set_normalisation)
        self.phi = mlp([in_dim] + [hidden] * phi_layers, final_act=True)
        self.rho = mlp([2 * len(ROLES) * hidden] + [hidden] * (rho_layers - 1) + [out_dim], dropout)

    @classmethod
    def from_example(
        cls, batch: Batch, out_dim: int, hidden: int = 128, kernel: int | None = None, normalise: bool = True, **kwargs
    ) -> "DeepSets":
        """Window from the batch (its largest kernel); with ``normalise``, f_v standardised
        with mean/std over the batch's nodes (pass training data)."""
        kernel = kernel if kernel is not None else batch_k_max(batch)
        model = cls(node_feature_dim(kernel), hidden, out_dim, kernel=kernel, **kwargs)
        if normalise:
            with torch.no_grad():
                model.fit_normalisation(node_set_features(batch, kernel))  # [N, in_dim]
        return model

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> None:
        """One line before any data is read: kernels are centre-padded, so the window is odd."""
        if kwargs.get("kernel") is not None and kwargs["kernel"] % 2 == 0:
            raise NNGraphError(f"deepsets: kernel must be odd (kernels are centre-padded), got {kwargs['kernel']}")

    def reset_parameters(self) -> None:
        reset_mlp(self.phi)
        reset_mlp(self.rho)

    def forward(self, batch: Batch) -> torch.Tensor:
        f = self.standardise(node_set_features(batch, self.kernel))  # [N, in_dim]
        h = self.phi(f)  # [N, hidden]
        b = int(batch.num_graphs)
        r = len(ROLES)
        # Pool per (graph, role): segment id = r * graph + role.
        seg = batch.batch * r + batch.node_role  # [N]
        mean = scatter(h, seg, 0, dim_size=r * b, reduce="mean").view(b, -1)  # [B, r * hidden]
        mx = scatter(h, seg, 0, dim_size=r * b, reduce="max").view(b, -1)  # [B, r * hidden]
        return self.rho(torch.cat([mean, mx], dim=1))  # [B, out_dim]
