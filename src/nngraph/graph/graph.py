"""NeuralGraph: the one container every part of nngraph speaks.

A network becomes its computation graph. Every neuron (a unit of a Linear layer, a
channel of a Conv2d layer, an input coordinate or channel) is a node; every weight
between two neurons is an edge, directed in the forward direction of the network.

Node features ``x`` [N, NODE_DIM] (channels named by the ``X_*`` constants):

    X_BIAS        bias of the neuron (0 for inputs and parameter-free nodes)
    X_NORM_WEIGHT normalisation scale gamma (1 where the node has no norm)
    X_NORM_BIAS   normalisation shift beta (0 where none)
    X_NORM_MEAN   BatchNorm running mean (0 elsewhere)
    X_NORM_VAR    BatchNorm running variance (1 elsewhere)
    X_ACT_PARAM   activation parameter: w0 of sin(w0 z), negative slope of LeakyReLU, PReLU weight,
                  ELU alpha, Hardtanh min, Softplus beta
    X_OFFSET      constant added after the layer (the SIREN output offset), not a parameter
    X_ACT_PARAM2  second activation parameter: Hardtanh max, Softplus threshold (0 elsewhere)

A node computes, from the values h_i of its sources (edges i -> j of weight/kernel w_ij):

    z_j = sum_i op_k(w_ij, h_i) + bias_j + offset_j
    z_j = norm_j(z_j)            # BatchNorm (running stats) or LayerNorm over its layer
    h_j = act_j(z_j)

where op_k depends on the edge kind (``EDGE_*``): a product for Linear weights, a 2-D
cross-correlation for conv kernels, a transposed convolution for conv_transpose kernels
(stride, padding and dilation in ``edge_geometry``; the output padding is what the target's
size leaves over), the dot product over positions for the weights of a flattened C x H x W
map, a copy for residual/identity edges, a spatial mean for global average pooling, a
local (or adaptive) max / average pooling of the source's map for max-pool / avg-pool
edges, and a nearest / bilinear interpolation to (out_h, out_w) for up-sampling edges
(geometry in ``edge_geometry``). A sequence [C, L] (Conv1d, 1-d pooling) is the 1-D case of a
map: H = 1, W = L, kernels 1 x k.

Product nodes (``products.py``) multiply instead of summing: z_j = A_j * B_j, where A_j
sums the sources over the node's ``mul_a`` edges and B_j over its ``mul_b`` edges, each laid
out as out_h x out_w (``edge_geometry``) and broadcast to the node's size: an elementwise
product a * b, a squeeze-and-excitation gate (a 1 x 1 operand over a map), and attention's
q-k products (a T x 1 column times a 1 x T row).

Tokens [B, T, D] are D nodes whose value is a 1 x T sequence (a Linear per token is a
linear edge applied at every position). Token edges:

- ``place`` copies the source's flattened value into positions [o, o + S) of the target's
  1 x T_out sequence (o = ``pad_w`` column of ``edge_geometry``, may be negative to select:
  ``x[:, t]`` is o = -t into a 1 x 1 target); patch flatten, class-token concat;
- ``const`` is a self-loop carrying a learned per-token constant (class token, position
  embedding): its first L channels are added at positions [o, o + L) of the node's
  sequence (``kw`` = L, ``pad_w`` = o); the source value is not read;
- attention (per head h of d_h neurons, see ``tokens.attention``): ``mul_a`` / ``mul_b``
  join q_c and k_c to a product node s_c whose value is the T x T map q_c(t) k_c(t');
  ``attn_sum`` sums a head's s_c into its score node a_h (act softmax, param 1/sqrt(d_h)
  over the last axis); ``attn_mix`` (from a_h) and ``attn_v`` (from v_c) give the head's
  output o_c(t) = sum_t' a_h(t, t') v_c(t').
- ``token_mix`` (``mixing.py``): a Linear over positions, z_c(t') = sum_t M[t', t] h_c(t), one edge
  per channel c -> c' carrying the T' x T map M shared by every channel (MLP-Mixer's token mixing).

Edge features ``edge_attr`` [E, d_e] with d_e = max(k_max^2, max flattened H*W, max token constant L, 1),
k_max the largest kernel size rounded up to an odd number:

- a conv kernel (kh x kw) is centre-padded into a k_max x k_max window (top and left
  padding (k_max - kh) // 2 and (k_max - kw) // 2), flattened row-major;
- a scalar weight (Linear, residual, identity, pooling) sits where a 1x1 kernel would,
  at the centre of that window (index k_max^2 // 2);
- the H*W weights from one channel of a flattened map to one Linear unit fill the first
  H*W entries, in the row-major order of ``torch.flatten``.
- the L values of a const self-loop (a token constant) fill the first L entries.
- the T'·T weights of a ``token_mix`` edge (a Linear over the T positions of a channel, shared by
  every channel: ``mixing.py``) fill the first T'·T entries, row-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

# Node feature channels.
X_BIAS, X_NORM_WEIGHT, X_NORM_BIAS, X_NORM_MEAN, X_NORM_VAR, X_ACT_PARAM, X_OFFSET, X_ACT_PARAM2 = range(8)
NODE_DIM = 8
NEUTRAL_NODE = (0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)

# Edge kinds.
(EDGE_LINEAR, EDGE_CONV, EDGE_RESIDUAL, EDGE_FLATTEN, EDGE_POOL, EDGE_IDENTITY, EDGE_MAXPOOL, EDGE_AVGPOOL,
 EDGE_PLACE, EDGE_CONST, EDGE_MUL_A, EDGE_MUL_B, EDGE_ATTN_SUM, EDGE_ATTN_MIX, EDGE_ATTN_V,
 EDGE_CONV_T, EDGE_UPSAMPLE_NEAREST, EDGE_UPSAMPLE_BILINEAR, EDGE_PAD, EDGE_TOKEN_MIX) = range(20)
EDGE_KINDS = ("linear", "conv", "residual", "flatten", "pool", "identity", "maxpool", "avgpool",
              "place", "const", "mul_a", "mul_b", "attn_sum", "attn_mix", "attn_v",
              "conv_transpose", "upsample_nearest", "upsample_bilinear", "pad", "token_mix")
# The two operands of a product node (see the module docstring): z_j = A_j * B_j.
PRODUCT_KINDS = (EDGE_MUL_A, EDGE_MUL_B)
# Kinds whose values fill the first channels of edge_attr (not the centred kernel window).
FLAT_KINDS = (EDGE_FLATTEN, EDGE_CONST, EDGE_TOKEN_MIX)

# Activations applied at a node.
# ReLU6 is Hardtanh(0, 6); PReLU is a LeakyReLU whose slope is a parameter (own id: it varies across networks).
# Softmax (attention scores) normalises over the last axis of the node's value: softmax(param * z, -1).
(ACT_NONE, ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU, ACT_TANH, ACT_SIGMOID, ACT_LEAKY_RELU, ACT_SINE,
 ACT_HARDTANH, ACT_HARDSWISH, ACT_HARDSIGMOID, ACT_ELU, ACT_SELU, ACT_SOFTPLUS, ACT_MISH, ACT_PRELU, ACT_SOFTMAX) = range(18)
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "leaky_relu", "sine",
               "hardtanh", "hardswish", "hardsigmoid", "elu", "selu", "softplus", "mish", "prelu", "softmax")

# Normalisations applied at a node.
# GroupNorm, InstanceNorm, softmax / log-softmax and RMSNorm over a layer's neurons: see ``norms.py``.
NORM_NONE, NORM_BATCH, NORM_LAYER, NORM_GROUP, NORM_INSTANCE, NORM_SOFTMAX, NORM_LOG_SOFTMAX, NORM_RMS = range(8)
NORMS = ("none", "batchnorm", "layernorm", "groupnorm", "instancenorm", "softmax", "log_softmax", "rmsnorm")

# Node roles: inputs and outputs keep their order under permutations; hidden nodes move.
ROLE_INPUT, ROLE_HIDDEN, ROLE_OUTPUT = range(3)
ROLES = ("input", "hidden", "output")

def centre(k_max: int) -> int:
    """Channel of edge_attr that holds a scalar weight: the centre of the k_max x k_max window."""
    return (k_max * k_max) // 2


def graph_specs(data: Data) -> list[ArchSpec]:
    """The ArchSpec of every graph of ``data``: a NeuralGraph carries one, a PyG batch a list (one per graph)."""
    spec = data.spec
    return spec if isinstance(spec, list) else [spec]


# Columns of a geometry row (``edge_geometry``): kernel size, stride, padding and dilation of conv, transposed conv and
# local pooling edges; ceil_mode and count_include_pad (0/1) of pooling edges; the output size of
# adaptive pooling edges (out_h, out_w > 0 marks an adaptive pool, whose other columns are 0) and of
# up-sampling edges; the shape out_h x out_w a product operand takes before it is broadcast to the
# product's size; align_corners (0/1) of bilinear up-sampling edges.
GEOM_COLUMNS = ("kh", "kw", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w",
                "ceil_mode", "count_include_pad", "out_h", "out_w", "align_corners")
GEOM_DIM = len(GEOM_COLUMNS)
NO_GEOM = (0,) * GEOM_DIM
# A graph holds few distinct geometry rows (one per kind of conv / pooling / token layout; an LM's row
# nodes one per row): ``geom_table`` [G, GEOM_DIM] long holds them, sorted and distinct, and
# ``edge_geom_id`` [E] int32 names each edge's row, 4 bytes per edge where a row per edge took 104.
GEOM_ID_DTYPE = torch.int32


def geometry_table(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(geom_table [G, GEOM_DIM] long: the distinct rows of ``rows`` [E, GEOM_DIM], sorted;
    edge_geom_id [E] int32: each row's index in it), so that geom_table[edge_geom_id] == rows."""
    if rows.dim() != 2 or rows.shape[1] != GEOM_DIM:
        raise ValueError(f"geometry rows must be [E, {GEOM_DIM}], got {list(rows.shape)}")
    table, ids = torch.unique(rows.long(), dim=0, return_inverse=True)
    return table, ids.to(GEOM_ID_DTYPE)


def edge_geometry(graph: Data, edges: torch.Tensor | None = None) -> torch.Tensor:
    """GEOM_COLUMNS rows [E, GEOM_DIM] (long) of the graph's edges, or of the edges ``edges`` [E']:
    geom_table[edge_geom_id] (a batch concatenates its graphs' tables and offsets their ids)."""
    ids = graph.edge_geom_id if edges is None else graph.edge_geom_id[edges]
    return graph.geom_table[ids.long()]


def kernel_hw(shape: tuple[int, ...]) -> tuple[int, int]:
    """(kh, kw) of a weight: [out, in, kh, kw] (Conv2d), [out, in, k] (Conv1d: 1 x k), [out, in] (1 x 1)."""
    if len(shape) == 4:
        return shape[2], shape[3]
    return (1, shape[2]) if len(shape) == 3 else (1, 1)


@dataclass(frozen=True)
class ParamEntry:
    """Where one state_dict tensor lives in the graph.

    ``source`` is one of:
      - ``"kernel"``: weight [out, in] or [out, in, kh, kw]; element (j, i) is edge
        ``offset + j * in + i``, its kernel centred in the k_max x k_max window;
      - ``"flat"``: weight [out, C*H*W] of a Linear on a flattened C x H x W map; edge
        ``offset + j * C + c`` holds W[j, c*H*W:(c+1)*H*W] in its first H*W entries;
      - ``"node"``: a per-neuron vector [n]; element j is ``x[offset + j, channel]``.
        With ``shared`` > 0 the tensor is one value [1] held by ``shared`` consecutive
        nodes (PReLU with one parameter for a whole layer); it is read from the first.
      - ``"tokens"``: a per-token constant [1, L, D] (class token, position embedding);
        edge ``offset + j`` (a ``const`` self-loop of node j) holds W[0, :, j] in its first L entries;
      - ``"kernel_t"``: a weight stored input-major, [in, out / g] or [in, out / g, kh, kw]
        (g groups of in_g = ``sources`` inputs): an embedding table [V, D] (g = 1) or a
        ConvTranspose weight. Edge ``offset + j * in_g + i`` holds W[g_j * in_g + i, j - g_j * out / g]
        with g_j the group of output j (for an embedding: edge ``offset + j * V + v`` holds W[v, j]).

      - ``"diag"``: one value per channel, any shape of that many elements ([C], [C, 1, 1],
        [1, C, 1, 1]: layer scale); edge ``offset + j`` (an identity edge into node j) holds element j.
      - ``"copies"``: one tensor of any shape (a token-mixing weight [T', T] or bias [T'], ``mixing.py``)
        repeated on the ``sources`` consecutive edges from ``offset``: each holds it flattened in its
        first entries; it is read from the first.

    ``sources`` is the number of source nodes per output unit (in, or C for ``flat``;
    in / groups for a grouped convolution, whose edges stay within their group).
    """

    name: str
    shape: tuple[int, ...]
    source: str
    offset: int
    channel: int = 0
    sources: int = 0
    shared: int = 0
    tie: str = ""  # a further use of the tensor of state_dict entry ``tie`` (``ties.py``)

    @property
    def count(self) -> int:
        """Number of edges (kernel/flat) or nodes (node) the tensor occupies."""
        if self.source == "node":
            return self.shared or self.shape[0]
        if self.source == "tokens":
            return self.shape[-1] * self.sources
        if self.source == "kernel_t":
            return self.shape[0] * self.shape[1]
        if self.source == "diag":
            return math.prod(self.shape)
        if self.source == "copies":
            return self.sources
        return self.shape[0] * self.sources


@dataclass
class ArchSpec:
    """What a graph needs besides its tensors to give back parameters and outputs.

    ``params`` follow the state_dict order of the converted model; ``buffers`` are
    state_dict tensors that carry no per-neuron meaning (BatchNorm's batch counter).
    """

    params: list[ParamEntry]
    ties: list[ParamEntry] = field(default_factory=list)  # further uses of tied tensors (ties.py)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    state_order: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    k_max: int = 1
    model_name: str = ""
    vocab: int = 0  # > 0: the input is token ids [T] (integers < vocab), one-hot over the vocab input nodes
    output_tokens: bool = False  # the output is per token, [T, D] (D output nodes of 1 x T values)

    @property
    def probe_shape(self) -> tuple[int, ...]:
        """Shape of one real-valued input: ``input_shape``, or [T, vocab] weights over the vocabulary for token ids."""
        return (*self.input_shape, self.vocab) if self.vocab else tuple(self.input_shape)


class NeuralGraph(Data):
    """One network as a graph (a torch_geometric ``Data`` so that PyG can batch it).

    Fields (N nodes, E edges):
        x          [N, NODE_DIM] float   node features, channel 0 = bias
        edge_index [2, E] long           source -> target, forward direction
        edge_attr  [E, d_e] float        weights / kernels (see module docstring)
        edge_kind  [E] long              EDGE_* kind
        geom_table [G, GEOM_DIM] long    the distinct GEOM_COLUMNS rows of the graph's edges, sorted
        edge_geom_id [E] int32           each edge's row of geom_table (conv, pooling, token layouts;
                                         the all-zero row elsewhere): ``edge_geometry(graph)``
        node_layer [N] long              layer index, 0 = inputs, topological order
        node_pos   [N] long              position-embedding id (own id per input/output,
                                         one id per hidden layer)
        node_act   [N] long              ACT_* activation at the node
        node_norm  [N] long              NORM_* normalisation at the node
        node_eps   [N] float             epsilon of that normalisation
        node_role  [N] long              ROLE_* input / hidden / output
        node_hw    [N, 2] long           spatial size of the node's value (1, 1 for units)
        spec       ArchSpec              parameter layout, buffers, input/output shapes
    """

    def __inc__(self, key: str, value, *args, **kwargs):
        """Batching offsets each graph's geometry ids by the table rows of the graphs before it."""
        if key == "edge_geom_id":
            return self.geom_table.shape[0]
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def num_layers(self) -> int:
        return int(self.node_layer.max()) + 1

    @property
    def k_max(self) -> int:
        return self.spec.k_max

    def __repr__(self) -> str:
        name = getattr(self.spec, "model_name", "") if self.spec is not None else ""
        return (
            f"NeuralGraph({name + ', ' if name else ''}nodes={self.num_nodes}, "
            f"edges={self.edge_index.shape[1]}, d_v={self.x.shape[1]}, d_e={self.edge_attr.shape[1]})"
        )


# A NeuralGraph loads with plain torch.load (weights_only=True): these are the classes its pickle names.
torch.serialization.add_safe_globals([NeuralGraph, ArchSpec, ParamEntry, DataEdgeAttr, DataTensorAttr, GlobalStorage])
