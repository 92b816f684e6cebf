"""Run a NeuralGraph (or a batch of them) as a computation.

This is the oracle for conversion (``execute(to_graph(m), x)`` equals ``m(x)``) and the
source of probe features: it returns every node's value for every input. It reads only
the graph's tensors, so gradients flow into node features, edge features and inputs.

Per layer l = 1..L (layers are in topological order), the edges into layer l are split
into groups of one signature (edge kind, conv geometry, source spatial size); for each
group, over all graphs of the batch at once:

- Linear / conv / flatten edges are scattered into one dense block per graph,
  W[b, j, i] (a kernel for conv edges, H*W weights for flatten edges), and applied with
  one batched matmul or one grouped convolution: z[b, j] = sum_i W[b, j, i] * h[b, i];
- residual / identity edges copy their source, pooling edges its spatial mean, times
  the edge's scalar weight (1 after conversion), summed per target;

then every target node applies z + bias + offset -> norm -> activation. There is a
Python loop over layers and signature groups, never over nodes or graphs.

Node activations ``acts`` [N, P]: the value of each node for each of the P inputs; for
a node whose value is a feature map (a conv channel), its mean over the H x W positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError
from nngraph.graph.builder import window_of
from nngraph.graph.graph import (
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_LEAKY_RELU,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_SILU,
    ACT_SINE,
    ACT_TANH,
    EDGE_CONV,
    EDGE_FLATTEN,
    EDGE_LINEAR,
    EDGE_POOL,
    NORM_BATCH,
    NORM_LAYER,
    ROLE_INPUT,
    ROLE_OUTPUT,
    X_ACT_PARAM,
    X_BIAS,
    X_NORM_BIAS,
    X_NORM_MEAN,
    X_NORM_VAR,
    X_NORM_WEIGHT,
    X_OFFSET,
    NeuralGraph,
    centre,
)

_DENSE_KINDS = (EDGE_LINEAR, EDGE_CONV, EDGE_FLATTEN)


def execute(graph: NeuralGraph | Batch, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network(s) a graph describes.

    Args:
        graph: one NeuralGraph, or a batch from ``collate``.
        x: inputs [P, *input_shape] shared by all graphs, or [B, P, *input_shape] with
            one set of inputs per graph of a batch.

    Returns:
        y: outputs [P, *output_shape] for one graph, [B, P, *output_shape] for a batch.
        acts: [N, P] every node's value per input (spatial mean for feature maps).
    """
    from nngraph.graph.batch import collate  # batch imports nothing from here; avoids a cycle

    single = not isinstance(graph, Batch)
    batch = collate([graph]) if single else graph
    run = _Run(batch, x)
    y = run.forward()
    return (y[0] if single else y), run.acts


class _Run:
    def __init__(self, batch: Batch, x: torch.Tensor):
        self.g = batch
        self.num_graphs = int(batch.num_graphs)
        self.gid = batch.batch  # [N] graph of each node
        self.N = batch.num_nodes
        specs = batch.spec if isinstance(batch.spec, list) else [batch.spec]
        self.specs = specs
        self.k_max = specs[0].k_max
        self.x = self._inputs(x)  # [B, P, *input_shape]
        self.P = self.x.shape[1]
        dtype = batch.edge_attr.dtype
        self.acts = torch.zeros(self.N, self.P, dtype=dtype)
        self.block_of = torch.full((self.N,), -1, dtype=torch.long)
        self.row_of = torch.zeros(self.N, dtype=torch.long)
        self.blocks: list[torch.Tensor] = []  # each [n, P, h, w]
        self.src, self.dst = batch.edge_index
        self.edge_layer = batch.node_layer[self.dst]

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        shapes = {s.input_shape for s in self.specs}
        if len(shapes) != 1:
            raise InputShapeError("graphs in one batch take inputs of different shapes; execute them separately")
        shape = shapes.pop()
        if tuple(x.shape[1:]) == shape:
            return x.unsqueeze(0).expand(self.num_graphs, *x.shape)
        if x.dim() == len(shape) + 2 and tuple(x.shape[2:]) == shape and x.shape[0] == self.num_graphs:
            return x
        raise InputShapeError(
            f"input of shape {list(x.shape)} does not fit graphs that take [P, {', '.join(map(str, shape))}]; "
            f"pass [P, *input] or [{self.num_graphs}, P, *input]"
        )

    # ---- values ------------------------------------------------------------------
    def _store(self, nodes: torch.Tensor, values: torch.Tensor) -> None:
        """Keep values [n, P, h, w] of ``nodes`` (sorted global ids) as one block."""
        self.block_of[nodes] = len(self.blocks)
        self.row_of[nodes] = torch.arange(len(nodes))
        self.blocks.append(values)
        self.acts = self.acts.index_copy(0, nodes, values.mean(dim=(-2, -1)))

    def _gather(self, nodes: torch.Tensor) -> torch.Tensor:
        """Values [len(nodes), P, h, w] of already computed nodes."""
        blocks = self.block_of[nodes]
        first = self.blocks[int(blocks[0])]
        out = first.new_empty(len(nodes), *first.shape[1:])
        for b in blocks.unique().tolist():
            mask = blocks == b
            out[mask] = self.blocks[b][self.row_of[nodes[mask]]]
        return out

    # ---- the run -----------------------------------------------------------------
    def forward(self) -> torch.Tensor:
        g = self.g
        inputs = torch.nonzero(g.node_role == ROLE_INPUT).squeeze(1)  # ids sorted = (graph, position)
        n_in = inputs.numel() // self.num_graphs
        x = self.x
        if x.dim() == 3:  # [B, P, F] -> per unit [P, 1, 1]
            values = x.permute(0, 2, 1).reshape(-1, self.P, 1, 1)
        else:  # [B, P, C, H, W] -> per channel [P, H, W]
            values = x.transpose(1, 2).reshape(-1, self.P, *x.shape[3:])
        if values.shape[0] != inputs.numel() or n_in * self.num_graphs != inputs.numel():
            raise InputShapeError("input size does not match the graphs' input nodes")
        self._store(inputs, values.to(self.acts.dtype))
        for layer in range(1, int(g.node_layer.max()) + 1):
            self._layer(layer)
        return self._outputs()

    def _layer(self, layer: int) -> None:
        g = self.g
        edges = torch.nonzero(self.edge_layer == layer).squeeze(1)
        signature = torch.cat(
            [g.edge_kind[edges, None], g.edge_geom[edges], g.node_hw[self.src[edges]]], dim=1
        )  # [E_l, 11]
        groups, which = torch.unique(signature, dim=0, return_inverse=True)
        for k in range(len(groups)):
            group = edges[which == k]
            kind = int(groups[k, 0])
            targets = torch.unique(self.dst[group])
            if kind in _DENSE_KINDS:
                z = self._dense(group, targets, kind, groups[k, 1:9].tolist())
            else:
                z = self._copy(group, targets, kind)
            self._store(targets, self._node_pipeline(targets, z))

    def _dense(self, edges: torch.Tensor, targets: torch.Tensor, kind: int, geom: list[int]) -> torch.Tensor:
        """z[t] = sum_i W[b, j, i] (*) h[b, i] as one batched matmul / grouped conv."""
        src, dst = self.src[edges], self.dst[edges]
        sources = torch.unique(src)
        graphs, t_graph = torch.unique(self.gid[targets], return_inverse=True)
        s_graph = torch.searchsorted(graphs, self.gid[sources])
        t_rank, n_out = _rank_in_graph(t_graph, len(graphs))
        s_rank, n_in = _rank_in_graph(s_graph, len(graphs))
        e_graph = torch.searchsorted(graphs, self.gid[dst])
        e_j = t_rank[torch.searchsorted(targets, dst)]
        e_i = s_rank[torch.searchsorted(sources, src)]
        h = self._gather(sources)  # [n_S, P, hs, ws]
        G, P = len(graphs), self.P
        hd = h.new_zeros(G, n_in, P, *h.shape[2:])
        hd[s_graph, s_rank] = h  # [G, Cin, P, hs, ws]
        attr = self.g.edge_attr[edges]
        if kind == EDGE_LINEAR:
            w = attr[:, centre(self.k_max)]
            wd = w.new_zeros(G, n_out, n_in)
            wd[e_graph, e_j, e_i] = w
            z = torch.bmm(wd, hd.reshape(G, n_in, P))  # [G, Cout, P]
            z = z[..., None, None]
        elif kind == EDGE_FLATTEN:
            hw = h.shape[2] * h.shape[3]
            wd = attr.new_zeros(G, n_out, n_in, hw)
            wd[e_graph, e_j, e_i] = attr[:, :hw]
            z = torch.einsum("bjis,bips->bjp", wd, hd.reshape(G, n_in, P, hw))[..., None, None]
        else:
            kh, kw, sh, sw, ph, pw, dh, dw = geom
            wd = attr.new_zeros(G, n_out, n_in, kh, kw)
            wd[e_graph, e_j, e_i] = window_of(attr, self.k_max, kh, kw)
            inp = hd.permute(2, 0, 1, 3, 4).reshape(P, G * n_in, *h.shape[2:])
            out = F.conv2d(inp, wd.reshape(G * n_out, n_in, kh, kw), None, (sh, sw), (ph, pw), (dh, dw), groups=G)
            z = out.reshape(P, G, n_out, *out.shape[2:]).permute(1, 2, 0, 3, 4)  # [G, Cout, P, h, w]
        return z[t_graph, t_rank]  # [n_T, P, h, w]

    def _copy(self, edges: torch.Tensor, targets: torch.Tensor, kind: int) -> torch.Tensor:
        """Residual / identity edges copy h_i, pooling edges its spatial mean, times w_ij."""
        src, dst = self.src[edges], self.dst[edges]
        h = self._gather(src)  # [E_g, P, h, w]
        if kind == EDGE_POOL:
            h = h.mean(dim=(-2, -1), keepdim=True)
        w = self.g.edge_attr[edges, centre(self.k_max)]
        msg = h * w.view(-1, 1, 1, 1)
        z = msg.new_zeros(len(targets), *msg.shape[1:])
        return z.index_add(0, torch.searchsorted(targets, dst), msg)

    def _node_pipeline(self, nodes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """z + bias + offset -> norm -> activation, per node; z [n, P, h, w]."""
        feats = self.g.x[nodes]  # [n, d_v]
        z = z + (feats[:, X_BIAS] + feats[:, X_OFFSET]).view(-1, 1, 1, 1)
        norm = self.g.node_norm[nodes]
        if (norm == NORM_BATCH).any():
            eps = self.g.node_eps[nodes].view(-1, 1, 1, 1)
            scale = feats[:, X_NORM_WEIGHT].view(-1, 1, 1, 1) / torch.sqrt(feats[:, X_NORM_VAR].view(-1, 1, 1, 1) + eps)
            normed = (z - feats[:, X_NORM_MEAN].view(-1, 1, 1, 1)) * scale + feats[:, X_NORM_BIAS].view(-1, 1, 1, 1)
            z = torch.where((norm == NORM_BATCH).view(-1, 1, 1, 1), normed, z)
        if (norm == NORM_LAYER).any():
            z = torch.where((norm == NORM_LAYER).view(-1, 1, 1, 1), self._layernorm(nodes, z, feats), z)
        return _activate(z, self.g.node_act[nodes], feats[:, X_ACT_PARAM])

    def _layernorm(self, nodes: torch.Tensor, z: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Normalise over the nodes of each graph (one layer): statistics per graph and input."""
        graphs, which = torch.unique(self.gid[nodes], return_inverse=True)
        count = torch.bincount(which, minlength=len(graphs)).to(z.dtype).view(-1, 1, 1, 1)
        mean = z.new_zeros(len(graphs), *z.shape[1:]).index_add(0, which, z) / count
        centred = z - mean[which]
        var = z.new_zeros(len(graphs), *z.shape[1:]).index_add(0, which, centred * centred) / count
        eps = self.g.node_eps[nodes].view(-1, 1, 1, 1)
        return centred / torch.sqrt(var[which] + eps) * feats[:, X_NORM_WEIGHT].view(-1, 1, 1, 1) + feats[
            :, X_NORM_BIAS
        ].view(-1, 1, 1, 1)

    def _outputs(self) -> torch.Tensor:
        g = self.g
        outputs = torch.nonzero(g.node_role == ROLE_OUTPUT).squeeze(1)
        order = torch.argsort(self.gid[outputs] * (int(g.node_pos.max()) + 1) + g.node_pos[outputs])
        outputs = outputs[order]
        shapes = {s.output_shape for s in self.specs}
        if len(shapes) != 1:
            raise InputShapeError("graphs in one batch give outputs of different shapes; execute them separately")
        values = self._gather(outputs)  # [B * n_out, P, h, w]
        B = self.num_graphs
        values = values.reshape(B, -1, *values.shape[1:]).transpose(1, 2)  # [B, P, n_out, h, w]
        return values.reshape(B, self.P, *shapes.pop())


def _rank_in_graph(graph_of: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, int]:
    """Rank of each item among the items of its graph (items sorted by graph); and the max count."""
    counts = torch.bincount(graph_of, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(graph_of)) - starts[graph_of], int(counts.max())


def _activate(z: torch.Tensor, act: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Apply each node's activation; z [n, P, h, w], act [n], param [n] (w0 or slope)."""
    out = z
    view = (-1, 1, 1, 1)
    for kind in act.unique().tolist():
        if kind == ACT_NONE:
            continue
        p = param.view(view)
        if kind == ACT_RELU:
            a = torch.relu(z)
        elif kind == ACT_GELU:
            a = F.gelu(z)
        elif kind == ACT_GELU_TANH:
            a = F.gelu(z, approximate="tanh")
        elif kind == ACT_SILU:
            a = F.silu(z)
        elif kind == ACT_TANH:
            a = torch.tanh(z)
        elif kind == ACT_SIGMOID:
            a = torch.sigmoid(z)
        elif kind == ACT_LEAKY_RELU:
            a = torch.where(z >= 0, z, z * p)
        elif kind == ACT_SINE:
            a = torch.sin(p * z)
        else:
            raise ValueError(f"unknown activation id {kind}")
        out = torch.where((act == kind).view(view), a, out)
    return out
