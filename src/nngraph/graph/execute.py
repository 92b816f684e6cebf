"""Run a NeuralGraph (or a batch of them) as a computation.

This is the oracle for conversion (``execute(to_graph(m), x)`` equals ``m(x)``) and the
source of probe features: it returns every node's value for every input. It reads only
the graph's tensors, so gradients flow into node features, edge features and inputs.

Per layer l = 1..L (layers are in topological order), the edges into layer l are split
into groups of one signature (edge kind, conv geometry, source spatial size); for each
group, over all graphs of the batch at once:

- Linear / conv / transposed conv / flatten edges are scattered into one dense block per
  graph, W[b, j, i] (a kernel for conv edges, H*W weights for flatten edges), and applied
  with one batched matmul or one grouped (transposed) convolution: z[b, j] = sum_i W[b, j, i] * h[b, i];
- residual / identity edges copy their source, pooling edges its spatial mean, max-pool
  and avg-pool edges its local or adaptive pooling (``pooling.apply``), up-sampling edges
  its interpolation (``upsample.apply``), times the edge's scalar weight (1 after
  conversion), summed per target;

- place edges put the source's flattened value at an offset of a token sequence; const
  self-loops add their learned per-token values;

the groups into one value block (the targets of one layer with one value size, over all
graphs) are summed; product nodes multiply their two operands instead (gates, elementwise
products, attention's q-k products: ``products.py``), and attention's outputs mix values by
the softmax scores (``tokens.py``). Then every target node
applies z + bias + offset -> norm -> activation. There is a Python loop over blocks and
signature groups, never over nodes or graphs.

The index bookkeeping (groups, ranks, block layouts) depends only on the batch's
structure; it is computed once per batch as a ``Plan``, and reused for batches built by
``graphs_from_params`` from one template (same structure, other weights). A batch of more
than ``_STREAM_EDGES`` edges gets a streamed plan instead: each layer's bookkeeping is built
when the layer runs and dropped after it, so that memory beyond the graph is bounded by the
largest layer's edges (GPT-2 small: 163 M edges in all, 38.6 M in its largest layer).

Node activations ``acts`` [N, P]: the value of each node for each of the P inputs; for
a node whose value is a feature map (a conv channel), its mean over the H x W positions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError, NonFiniteError
from nngraph.graph import lm, mixing, norms, padding, pooling, upsample
from nngraph.graph.layout import decode_kernels
from nngraph.graph.graph import (
    graph_specs,
    ACT_ELU,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_HARDTANH,
    ACT_LEAKY_RELU,
    ACT_MISH,
    ACT_NONE,
    ACT_PRELU,
    ACT_RELU,
    ACT_SELU,
    ACT_SIGMOID,
    ACT_SILU,
    ACT_SINE,
    ACT_SOFTMAX,
    ACT_SOFTPLUS,
    ACT_TANH,
    EDGE_ATTN_MIX,
    EDGE_ATTN_V,
    EDGE_AVGPOOL,
    EDGE_CONST,
    EDGE_CONV,
    EDGE_CONV_T,
    EDGE_FLATTEN,
    EDGE_LINEAR,
    EDGE_MAXPOOL,
    EDGE_MUL_A,
    EDGE_MUL_B,
    EDGE_PAD,
    EDGE_PLACE,
    EDGE_POOL,
    EDGE_TOKEN_MIX,
    NORM_BATCH,
    NORM_LAYER,
    PRODUCT_KINDS,
    ROLE_INPUT,
    ROLE_OUTPUT,
    X_ACT_PARAM,
    X_ACT_PARAM2,
    X_BIAS,
    X_NORM_BIAS,
    X_NORM_MEAN,
    X_NORM_VAR,
    X_NORM_WEIGHT,
    X_OFFSET,
    NeuralGraph,
    centre,
)

_DENSE_KINDS = (EDGE_LINEAR, EDGE_CONV, EDGE_CONV_T, EDGE_FLATTEN)
_PLAN_CACHE: OrderedDict = OrderedDict()  # (id(spec), B) -> (spec, Plan), for template batches
_PLAN_CACHE_SIZE = 8
# A graph of more edges runs a streamed plan (layer by layer, ``Plan(keep=False)``): GPT-2 small has 163 M.
_STREAM_EDGES = 2**24
_EDGE_STEP = 2**24  # edges per step of a pass over all edges


def execute(graph: NeuralGraph | Batch, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network(s) a graph describes.

    Args:
        graph: one NeuralGraph, or a batch from ``collate`` / ``graphs_from_params``.
        x: inputs [P, *input_shape] shared by all graphs, or [B, P, *input_shape] with
            one set of inputs per graph of a batch.

    Returns:
        y: outputs [P, *output_shape] for one graph, [B, P, *output_shape] for a batch.
        acts: [N, P] every node's value per input (spatial mean for feature maps).
    """
    if not torch.isfinite(x).all():
        raise NonFiniteError("the input of execute holds NaN or inf; pass finite values")
    single = not isinstance(graph, Batch)
    batch = _as_batch(graph) if single else graph
    plan = plan_for(batch)
    y, acts = plan.run(batch, plan.inputs_of(x))
    return (y[0] if single else y), acts


def _as_batch(graph: NeuralGraph) -> Batch:
    """``collate([graph])`` without copying the graph's tensors (a large graph is not held twice)."""
    from nngraph.graph.batch import collate  # batch imports nothing from here; avoids a cycle

    if graph.edge_attr.shape[1] < graph.spec.k_max ** 2:  # edge features to lay out: collate does it
        return collate([graph])
    n = graph.num_nodes
    batch = Batch(_base_cls=type(graph), **{key: graph[key] for key in graph.keys() if key != "spec"})
    batch.spec = [graph.spec]
    batch.batch = torch.zeros(n, dtype=torch.long, device=graph.x.device)
    batch.ptr = torch.tensor([0, n], device=graph.x.device)
    batch._num_graphs = 1
    return batch


def plan_for(batch: Batch) -> Plan:
    """The batch's plan; cached when every graph shares one spec object (a template batch)."""
    specs = graph_specs(batch)
    shared = all(s is specs[0] for s in specs)
    key = (id(specs[0]), len(specs), batch.num_nodes, batch.num_edges, batch.x.device)
    if shared and key in _PLAN_CACHE and _PLAN_CACHE[key][0] is specs[0]:
        _PLAN_CACHE.move_to_end(key)
        return _PLAN_CACHE[key][1]
    plan = Plan(batch, keep=batch.num_edges <= _STREAM_EDGES)
    if shared:
        _PLAN_CACHE[key] = (specs[0], plan)
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
    return plan


@dataclass
class _Gather:
    """How to collect the values of a list of nodes: per source block, positions and rows."""

    parts: list[tuple[int, torch.Tensor, torch.Tensor]]  # (block, positions in the list, rows in the block)
    count: int


@dataclass
class _Group:
    """Edges of one signature into one set of target nodes (which become one value block)."""

    kind: int
    geom: list[int]
    edges: torch.Tensor  # [E_g] edge ids
    targets: torch.Tensor  # [n_T] node ids, sorted
    gather: _Gather | None  # sources (dense kinds) or edge sources (copy kinds); None for const self-loops
    # dense kinds: block layout
    graphs: int = 0
    n_out: int = 0
    n_in: int = 0
    s_graph: torch.Tensor | None = None
    s_rank: torch.Tensor | None = None
    t_graph: torch.Tensor | None = None
    t_rank: torch.Tensor | None = None
    e_graph: torch.Tensor | None = None
    e_j: torch.Tensor | None = None
    e_i: torch.Tensor | None = None
    out_hw: tuple[int, int] = (1, 1)  # the targets' value size (a transposed conv's output padding)
    # copy kinds: target position of each edge
    e_target: torch.Tensor | None = None
    # position of each target among its layer's targets
    slot: torch.Tensor | None = None


@dataclass
class _Layer:
    """The targets of one layer (one value block) and the signature groups of the edges into it."""

    targets: torch.Tensor  # [n_T] node ids, sorted
    groups: list[_Group]
    # layernorm statistics groups (graph of each target) if any target has a LayerNorm
    ln_graph: torch.Tensor | None = None
    ln_count: torch.Tensor | None = None


class Plan:
    """Structure-only bookkeeping of a batch: which edges form which dense blocks."""

    def __init__(self, batch: Batch, keep: bool = True):
        """``keep`` False: a streamed plan, whose layers are built while it runs and dropped after (large graphs)."""
        self.num_graphs = int(batch.num_graphs)
        specs = graph_specs(batch)
        self.k_max = specs[0].k_max
        shapes = {s.input_shape for s in specs}
        if len(shapes) != 1:
            raise InputShapeError("graphs in one batch take inputs of different shapes; execute them separately")
        self.input_shape = shapes.pop()
        vocabs = {s.vocab for s in specs}
        if len(vocabs) != 1:
            raise InputShapeError("graphs in one batch take different vocabularies; execute them separately")
        self.vocab = vocabs.pop()
        shapes = {s.output_shape for s in specs}
        if len(shapes) != 1:
            raise InputShapeError("graphs in one batch give outputs of different shapes; execute them separately")
        self.output_shape = shapes.pop()
        self.output_tokens = specs[0].output_tokens  # one output shape, so one layout
        self.inputs = torch.nonzero(batch.node_role == ROLE_INPUT).squeeze(1)  # sorted = (graph, position)
        if self.inputs.numel() % self.num_graphs:
            raise InputShapeError("graphs in one batch have different numbers of inputs; execute them separately")
        self.outputs = torch.nonzero(batch.node_role == ROLE_OUTPUT).squeeze(1)
        self.keep = keep
        self.layers: list[_Layer] = list(self._layers(batch)) if keep else []
        if keep:
            self._finish(batch)

    def _finish(self, batch: Batch) -> None:
        """Where the outputs are read, once every layer's block is laid out."""
        outputs = self.outputs
        order = torch.argsort(batch.batch[outputs] * (int(batch.node_pos.max()) + 1) + batch.node_pos[outputs])
        self.output_gather = _gather_of(self.outputs[order], self.block_of, self.row_of)

    def _layers(self, batch: Batch):
        """The layers' value blocks in order, each with its signature groups (a generator: a streamed plan
        builds one layer, runs it and drops it, so that no per-edge bookkeeping of the whole graph is held).

        The edges into each node layer come from one pass over all edges (``_edges_by_layer``); their
        signatures are mixed-radix codes of (target size, way of combining, kind, geometry, source
        size), the block columns first, so that sorting by code orders blocks first."""
        n = batch.num_nodes
        device = batch.node_role.device
        self.block_of = torch.full((n,), -1, dtype=torch.long, device=device)
        self.row_of = torch.zeros(n, dtype=torch.long, device=device)
        self.block_of[self.inputs] = 0
        self.row_of[self.inputs] = torch.arange(len(self.inputs), device=device)
        self.block_nodes = [self.inputs]  # the nodes of each value block, block 0 = the inputs
        src, dst = batch.edge_index
        edges_by_layer = _edges_by_layer(dst, batch.node_layer)
        # geometry ids of one row are equal across the graphs of a batch (each graph has its own table)
        canon = torch.unique(batch.geom_table, dim=0, return_inverse=True)[1]
        products = torch.tensor(PRODUCT_KINDS, device=device)
        mixes = torch.tensor((EDGE_ATTN_MIX, EDGE_ATTN_V), device=device)
        for level in sorted(edges_by_layer):
            ids = torch.cat(edges_by_layer.pop(level)).long()  # [E_l] ascending
            kind = batch.edge_kind[ids]
            # A value block: the targets of one layer with one value size and one way of combining their
            # inputs (a sum; a product of two operands; attention's mixing), over all graphs of the batch.
            combine = torch.isin(kind, products).long() + 2 * torch.isin(kind, mixes).long()
            hw = batch.node_hw[dst[ids]]
            block_code = _signature_code([hw[:, 0], hw[:, 1], combine])
            del hw, combine
            hw = batch.node_hw[src[ids]]
            key = _signature_code([block_code, kind, canon[batch.edge_geom_id[ids].long()], hw[:, 0], hw[:, 1]])
            del hw, kind
            if bool((key == key[0]).all()):  # one group (most layers of a large model): no sort
                groups = [ids]
            else:
                _, key = torch.unique(key, return_inverse=True)  # groups sorted by block first
                order = torch.argsort(key, stable=True)  # edges of one group stay in ascending order
                groups = list(torch.split(ids[order], torch.bincount(key).tolist()))
                del order
            del key
            pending: list[_Group] = []
            pending_block = -1
            for group in groups:
                block = int(block_code[int(torch.searchsorted(ids, group[0]))])
                if pending and block != pending_block:
                    yield self._close_layer(batch, pending)
                    pending = []
                pending_block = block
                pending.append(self._group(batch, group, src, dst))
            del groups
            if pending:
                yield self._close_layer(batch, pending)

    def _group(self, batch: Batch, group: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> _Group:
        """The bookkeeping of one signature group (edge ids ``group``)."""
        kind = int(batch.edge_kind[group[0]])
        geom = batch.geom_table[int(batch.edge_geom_id[group[0]])].tolist()
        targets = torch.unique(dst[group])
        if kind in _DENSE_KINDS:
            return self._dense_group(kind, geom, group, targets, src, dst, batch.batch, batch.node_hw)
        e_target = torch.searchsorted(targets, dst[group])
        gather = None if kind == EDGE_CONST else _gather_of(src[group], self.block_of, self.row_of)
        return _Group(kind, geom, group, targets, gather, e_target=e_target)

    def _close_layer(self, batch: Batch, groups: list[_Group]) -> _Layer:
        """The groups of one layer become one value block over the union of their targets."""
        targets = torch.unique(torch.cat([g.targets for g in groups]))
        for g in groups:
            g.slot = torch.searchsorted(targets, g.targets)
        layer = _Layer(targets, groups)
        statistics = torch.tensor((NORM_LAYER, *norms.LAYER_NORMS), device=targets.device)  # over a layer's nodes
        if torch.isin(batch.node_norm[targets], statistics).any():
            graphs, which = torch.unique(batch.batch[targets], return_inverse=True)
            layer.ln_graph, layer.ln_count = which, torch.bincount(which, minlength=len(graphs))
        self.block_of[targets] = len(self.block_nodes)
        self.row_of[targets] = torch.arange(len(targets), device=targets.device)
        self.block_nodes.append(targets)
        return layer

    def _dense_group(self, kind, geom, group, targets, src, dst, gid, node_hw) -> _Group:
        s, d = src[group], dst[group]
        sources = torch.unique(s)
        graphs, t_graph = torch.unique(gid[targets], return_inverse=True)
        s_graph = torch.searchsorted(graphs, gid[sources])
        t_rank, n_out = _rank_in_graph(t_graph, len(graphs))
        s_rank, n_in = _rank_in_graph(s_graph, len(graphs))
        return _Group(
            kind, geom, group, targets, _gather_of(sources, self.block_of, self.row_of),
            graphs=len(graphs), n_out=n_out, n_in=n_in, out_hw=tuple(node_hw[targets[0]].tolist()), s_graph=s_graph,
            s_rank=s_rank, t_graph=t_graph,
            t_rank=t_rank, e_graph=torch.searchsorted(graphs, gid[d]),
            e_j=t_rank[torch.searchsorted(targets, d)], e_i=s_rank[torch.searchsorted(sources, s)],
        )

    def inputs_of(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs as [B, P, *input_shape] (token models: ids [B, P, T], or weights over the vocabulary
        [B, P, T, V] such as probes; a one-hot row is a real token)."""
        shape = self.input_shape
        if self.vocab and x.is_floating_point():
            shape = (*shape, self.vocab)
        if tuple(x.shape[1:]) == shape:
            return x.unsqueeze(0).expand(self.num_graphs, *x.shape)
        if x.dim() == len(shape) + 2 and tuple(x.shape[2:]) == shape and x.shape[0] == self.num_graphs:
            return x
        raise InputShapeError(
            f"input of shape {list(x.shape)} does not fit graphs that take [P, {', '.join(map(str, shape))}]; "
            f"pass [P, *input] or [{self.num_graphs}, P, *input]"
        )

    # ---- the computation -----------------------------------------------------------
    def run(self, batch: Batch, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, P, *input_shape] -> (y [B, P, *output_shape], acts [N, P])."""
        p = x.shape[1]
        dtype = batch.edge_attr.dtype
        if self.vocab:  # ids [B, P, T] (one-hot) or weights [B, P, T, V] -> per vocabulary entry [P, 1, T]
            weights = x if x.is_floating_point() else F.one_hot(x.long(), self.vocab)
            values = weights.permute(0, 3, 1, 2).reshape(-1, p, 1, x.shape[2])
        elif x.dim() == 3:  # [B, P, F] -> per unit [P, 1, 1]
            values = x.permute(0, 2, 1).reshape(-1, p, 1, 1)
        elif x.dim() == 4:  # [B, P, C, L] -> per channel [P, 1, L]
            values = x.transpose(1, 2).reshape(-1, p, 1, x.shape[3])
        else:  # [B, P, C, H, W] -> per channel [P, H, W]
            values = x.transpose(1, 2).reshape(-1, p, *x.shape[3:])
        if values.shape[0] != self.inputs.numel():
            raise InputShapeError("input size does not match the graphs' input nodes")
        blocks = [values.to(dtype)]  # values [n, P, h, w] per block
        for layer in self.layers if self.keep else self._layers(batch):
            blocks.append(self._node_pipeline(batch, layer, self._layer_input(batch, layer, blocks, p)))
        if not self.keep:
            self._finish(batch)
        acts = torch.zeros(batch.num_nodes, p, dtype=dtype, device=x.device)
        for nodes, value in zip(self.block_nodes, blocks):
            acts = acts.index_copy(0, nodes, value.mean(dim=(-2, -1)))
        out = _collect(self.output_gather, blocks)  # [B * n_out, P, h, w]
        b = self.num_graphs
        out = out.reshape(b, -1, *out.shape[1:]).transpose(1, 2)  # [B, P, n_out, h, w]
        if self.output_tokens:  # D nodes of 1 x T values -> [B, P, T, D]
            out = out.flatten(3).transpose(2, 3)
        return out.reshape(b, p, *self.output_shape), acts

    def _layer_input(self, batch: Batch, layer: _Layer, blocks: list[torch.Tensor], p: int) -> torch.Tensor:
        """z of the layer's targets: the sum of its groups' messages; product nodes multiply their two
        operands (mul_a, mul_b; products.py) and attention's outputs mix (a @ v over attn_mix / attn_v)."""
        n = len(layer.targets)
        parts = {}
        for g in layer.groups:
            zg = self._dense(batch, g, blocks, p) if g.kind in _DENSE_KINDS else self._copy(batch, g, blocks)
            full = zg if len(g.targets) == n else zg.new_zeros(n, *zg.shape[1:]).index_add(0, g.slot, zg)
            parts[g.kind] = parts[g.kind] + full if g.kind in parts else full
        if EDGE_MUL_A in parts:  # operands laid out by their edges, broadcast: e.g. [n, P, Tq, 1] x [n, P, 1, Tk]
            return parts[EDGE_MUL_A] * parts[EDGE_MUL_B]
        if EDGE_ATTN_MIX in parts:  # [n, P, Tq, Tk] @ [n, P, Tk, 1] -> [n, P, 1, Tq]
            return (parts[EDGE_ATTN_MIX] @ parts[EDGE_ATTN_V].transpose(-1, -2)).transpose(-1, -2)
        z = None
        for part in parts.values():
            z = part if z is None else z + part
        return z.expand(-1, p, *z.shape[2:])  # a layer of constants only (lm.py's row nodes) holds one value for all P

    def _dense(self, batch: Batch, g: _Group, blocks: list[torch.Tensor], p: int) -> torch.Tensor:
        """z[t] = sum_i W[b, j, i] (*) h[b, i] as one batched matmul / grouped conv."""
        h = _collect(g.gather, blocks)  # [n_S, P, hs, ws]
        G, n_in, n_out = g.graphs, g.n_in, g.n_out
        hd = h.new_zeros(G, n_in, p, *h.shape[2:])
        hd[g.s_graph, g.s_rank] = h  # [G, Cin, P, hs, ws]
        if g.kind == EDGE_LINEAR:  # the same weights at every position of a token sequence
            wd = batch.edge_attr.new_zeros(G, n_out, n_in)
            wd[g.e_graph, g.e_j, g.e_i] = batch.edge_attr[g.edges, centre(self.k_max)]
            z = torch.bmm(wd, hd.reshape(G, n_in, -1)).reshape(G, n_out, p, *h.shape[2:])  # [G, Cout, P, hs, ws]
        elif g.kind == EDGE_FLATTEN:
            hw = h.shape[2] * h.shape[3]
            wd = batch.edge_attr.new_zeros(G, n_out, n_in, hw)
            wd[g.e_graph, g.e_j, g.e_i] = batch.edge_attr[g.edges, :hw]
            z = torch.einsum("bjis,bips->bjp", wd, hd.reshape(G, n_in, p, hw))[..., None, None]
        else:
            kh, kw, sh, sw, ph, pw, dh, dw = g.geom[:8]
            attr = batch.edge_attr[g.edges]
            wd = attr.new_zeros(G, n_out, n_in, kh, kw)
            wd[g.e_graph, g.e_j, g.e_i] = decode_kernels(attr, self.k_max, kh, kw)
            inp = hd.permute(2, 0, 1, 3, 4).reshape(p, G * n_in, *h.shape[2:])
            if g.kind == EDGE_CONV:
                out = F.conv2d(inp, wd.reshape(G * n_out, n_in, kh, kw), None, (sh, sw), (ph, pw), (dh, dw), groups=G)
            else:  # the output padding o is what the target's size leaves: out = (in - 1) s - 2 p + d (k - 1) + 1 + o
                extra = [o - ((i - 1) * s - 2 * q + d * (k - 1) + 1)
                         for o, i, s, q, d, k in zip(g.out_hw, h.shape[2:], (sh, sw), (ph, pw), (dh, dw), (kh, kw))]
                weight = wd.transpose(1, 2).reshape(G * n_in, n_out, kh, kw)  # [in, out / groups, kh, kw]
                out = F.conv_transpose2d(inp, weight, None, (sh, sw), (ph, pw), tuple(extra), G, (dh, dw))
            z = out.reshape(p, G, n_out, *out.shape[2:]).permute(1, 2, 0, 3, 4)  # [G, Cout, P, h, w]
        return z[g.t_graph, g.t_rank]  # [n_T, P, h, w]

    def _copy(self, batch: Batch, g: _Group, blocks: list[torch.Tensor]) -> torch.Tensor:
        """Residual / identity / attention edges copy h_i, pooling edges its spatial mean or local pooling,
        up-sampling edges its interpolation, product operands its value laid out as out_h x out_w, place
        edges put it at an offset of a sequence, times w_ij; const self-loops add their values."""
        if g.kind == EDGE_CONST:
            length, offset, out_len = g.geom[1], g.geom[5], g.geom[11]
            values = batch.edge_attr[g.edges, :length]  # [E_g, L]
            msg = F.pad(values, (offset, out_len - offset - length))[:, None, None, :]  # [E_g, 1, 1, T]
            return msg.new_zeros(len(g.targets), *msg.shape[1:]).index_add(0, g.e_target, msg)
        h = _collect(g.gather, blocks)  # [E_g, P, h, w]
        if g.kind == EDGE_TOKEN_MIX:  # a Linear over positions, its T' x T map on every edge (mixing.py)
            msg = mixing.apply(h, batch.edge_attr[g.edges], g.geom)
            return msg.new_zeros(len(g.targets), *msg.shape[1:]).index_add(0, g.e_target, msg)
        if g.kind == EDGE_PLACE:  # flattened source at positions [o, o + S) of a 1 x T_out target
            flat = h.reshape(*h.shape[:2], 1, -1)
            offset, out_len = g.geom[5], g.geom[11]
            h = F.pad(flat, (offset, out_len - offset - flat.shape[-1]))
        elif g.kind == EDGE_POOL:
            h = h.mean(dim=(-2, -1), keepdim=True)
        elif g.kind in (EDGE_MAXPOOL, EDGE_AVGPOOL):
            h = pooling.apply(h, g.kind, g.geom)  # [E_g, P, h', w']
        elif g.kind in upsample.KINDS:
            h = upsample.apply(h, g.kind, g.geom)  # [E_g, P, out_h, out_w]
        elif g.kind == EDGE_PAD:
            h = padding.apply(h, g.geom)  # [E_g, P, out_h, out_w]
        elif g.kind in PRODUCT_KINDS:  # the operand's layout in the product (products.py)
            h = h.reshape(*h.shape[:2], g.geom[10], g.geom[11])
        msg = h * batch.edge_attr[g.edges, centre(self.k_max)].view(-1, 1, 1, 1)
        z = msg.new_zeros(len(g.targets), *msg.shape[1:])
        return z.index_add(0, g.e_target, msg)

    def _node_pipeline(self, batch: Batch, g: _Layer, z: torch.Tensor) -> torch.Tensor:
        """z + bias + offset -> norm -> activation, per node; z [n, P, h, w]."""
        nodes = g.targets
        feats = batch.x[nodes]  # [n, d_v]
        view = (-1, 1, 1, 1)
        z = z + (feats[:, X_BIAS] + feats[:, X_OFFSET]).view(view)
        norm = batch.node_norm[nodes]
        if (norm == NORM_BATCH).any():
            eps = batch.node_eps[nodes].view(view)
            scale = feats[:, X_NORM_WEIGHT].view(view) / torch.sqrt(feats[:, X_NORM_VAR].view(view) + eps)
            normed = (z - feats[:, X_NORM_MEAN].view(view)) * scale + feats[:, X_NORM_BIAS].view(view)
            z = torch.where((norm == NORM_BATCH).view(view), normed, z)
        if g.ln_graph is not None and (norm == NORM_LAYER).any():
            z = torch.where((norm == NORM_LAYER).view(view), self._layernorm(batch, g, z, feats), z)
        if (norm > NORM_LAYER).any():
            z = norms.apply(z, norm, batch.node_eps[nodes], feats[:, X_NORM_WEIGHT], feats[:, X_NORM_BIAS],
                            g.ln_graph, g.ln_count)
        return _activate(z, batch.node_act[nodes], feats[:, X_ACT_PARAM], feats[:, X_ACT_PARAM2])

    def _layernorm(self, batch: Batch, g: _Layer, z: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Normalise over the target nodes of each graph (one layer): statistics per graph, input and position."""
        which, count = g.ln_graph, g.ln_count.to(z.dtype).view(-1, 1, 1, 1)
        mean = z.new_zeros(len(count), *z.shape[1:]).index_add(0, which, z) / count
        centred = z - mean[which]
        var = z.new_zeros(len(count), *z.shape[1:]).index_add(0, which, centred * centred) / count
        eps = batch.node_eps[g.targets].view(-1, 1, 1, 1)
        gamma, beta = feats[:, X_NORM_WEIGHT].view(-1, 1, 1, 1), feats[:, X_NORM_BIAS].view(-1, 1, 1, 1)
        return centred / torch.sqrt(var[which] + eps) * gamma + beta


def _edges_by_layer(dst: torch.Tensor, node_layer: torch.Tensor) -> dict[int, list[torch.Tensor]]:
    """The ids of the edges into each node layer, ascending: {layer: pieces, one per step of edges}.

    One pass over the edges (O(E), not one pass per layer): each step of ``_EDGE_STEP`` edges is
    sorted by its edges' target layer node_layer[dst[e]] (a stable sort, so ids stay ascending
    within a layer) and cut at the layers' counts (bincount); steps come in ascending order, so
    a layer's pieces joined are its edge ids in ascending order. The ids are int32 where they
    fit: 4 bytes per edge in all, no int64 copy of all edges.
    """
    num_edges = len(dst)
    id_dtype = torch.int32 if num_edges <= torch.iinfo(torch.int32).max else torch.long
    node_layer = node_layer.to(torch.int32)
    num_layers = int(node_layer.max()) + 1 if len(node_layer) else 0
    pieces: dict[int, list[torch.Tensor]] = {}
    for first in range(0, num_edges, _EDGE_STEP):
        edge_layer = node_layer[dst[first:first + _EDGE_STEP]]  # [S] int32
        edge_layer, order = torch.sort(edge_layer, stable=True)  # order [S]: positions within the step
        counts = torch.bincount(edge_layer, minlength=num_layers).tolist()  # [L]
        ids = (order + first).to(id_dtype)  # [S] edge ids grouped by layer
        del edge_layer, order
        for level, part in enumerate(torch.split(ids, counts)):
            if len(part):
                pieces.setdefault(level, []).append(part)
    return pieces


def _signature_code(columns: list[torch.Tensor]) -> torch.Tensor:
    """One int64 per row of small non-negative integer columns, equal iff the rows are equal
    (mixed radix; a column is first compacted with ``unique`` only where the code would overflow)."""
    code = torch.zeros_like(columns[0])
    room = 1
    for column in columns:
        low = int(column.min()) if column.numel() else 0
        radix = (int(column.max()) - low + 1) if column.numel() else 1
        values = column - low
        if room * radix >= 2**62:
            _, values = torch.unique(column, return_inverse=True)
            radix = int(values.max()) + 1 if values.numel() else 1
            if room * radix >= 2**62:
                code = torch.unique(code, return_inverse=True)[1]
                room = int(code.max()) + 1 if code.numel() else 1
        code = code * radix + values
        room *= radix
    return code


def _gather_of(nodes: torch.Tensor, block_of: torch.Tensor, row_of: torch.Tensor) -> _Gather:
    blocks = block_of[nodes]
    parts = []
    for b in blocks.unique().tolist():
        positions = torch.nonzero(blocks == b).squeeze(1)
        parts.append((b, positions, row_of[nodes[positions]]))
    return _Gather(parts, len(nodes))


def _collect(gather: _Gather, blocks: list[torch.Tensor]) -> torch.Tensor:
    """Values [count, P, h, w] of the nodes a ``_Gather`` describes."""
    if len(gather.parts) == 1 and len(gather.parts[0][1]) == gather.count:
        block, _, rows = gather.parts[0]
        return blocks[block][rows]
    first = blocks[gather.parts[0][0]]
    out = first.new_empty(gather.count, *first.shape[1:])
    for block, positions, rows in gather.parts:
        out = out.index_copy(0, positions, blocks[block][rows])
    return out


def _rank_in_graph(graph_of: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, int]:
    """Rank of each item among the items of its graph (items sorted by graph); and the max count."""
    counts = torch.bincount(graph_of, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(graph_of), device=graph_of.device) - starts[graph_of], int(counts.max())


def _activate(z: torch.Tensor, act: torch.Tensor, param: torch.Tensor, param2: torch.Tensor) -> torch.Tensor:
    """Apply each node's activation; z [n, P, h, w], act [n], param, param2 [n] (see activations.py).

    Branches that are not taken are computed on clamped inputs (ELU, Softplus), so that
    neither they nor their gradients overflow.
    """
    out = z
    view = (-1, 1, 1, 1)
    for kind in act.unique().tolist():
        if kind == ACT_NONE:
            continue
        p, p2 = param.view(view), param2.view(view)
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
        elif kind in (ACT_LEAKY_RELU, ACT_PRELU):
            a = torch.where(z >= 0, z, z * p)
        elif kind == ACT_HARDTANH:
            a = torch.minimum(torch.maximum(z, p), p2)
        elif kind == ACT_HARDSWISH:
            a = F.hardswish(z)
        elif kind == ACT_HARDSIGMOID:
            a = F.hardsigmoid(z)
        elif kind == ACT_ELU:
            a = torch.where(z > 0, z, p * torch.expm1(z.clamp_max(0)))
        elif kind == ACT_SELU:
            a = F.selu(z)
        elif kind == ACT_SOFTPLUS:
            beta = torch.where(p == 0, torch.ones_like(p), p)  # 0 only at nodes of other kinds
            bz = beta * z
            linear = bz > p2
            a = torch.where(linear, z, torch.log1p(torch.exp(bz.masked_fill(linear, 0))) / beta)
        elif kind == ACT_MISH:
            a = F.mish(z)
        elif kind == ACT_SINE:
            a = torch.sin(p * z)
        elif kind == ACT_SOFTMAX:  # attention scores; param2 = 1: causal (lm.py)
            a = lm.causal_softmax(p * z, param2) if bool((param2 != 0).any()) else torch.softmax(p * z, dim=-1)
        else:
            raise ValueError(f"unknown activation id {kind}")
        out = torch.where((act == kind).view(view), a, out)
    return out
