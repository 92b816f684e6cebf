"""Op rules for transformers: the token layout, learned per-token constants and attention.

A token tensor [P, T, D] is D nodes whose value is a 1 x T sequence, the analogue of a
channel whose value is a map (``Value.kind`` ``tokens``). Reshapes and transposes between
the layouts of attention (``split`` [P, T, H, d], ``heads`` [P, H, T, d], ``tbd`` [T, P, D])
relabel a value and add nothing; every rule that changes positions adds a layer.

Attention of one head h with query/key neurons q_c, k_c and value neurons v_c (c < d):

    s_c(t, t') = q_c(t) k_c(t')                 product node, value T x T (mul_a, mul_b edges; products.py)
    a_h        = softmax(scale * sum_c s_c, -1)  score node, act softmax (attn_sum edges)
    o_c(t)     = sum_t' a_h(t, t') v_c(t')       output node (attn_mix from a_h, attn_v from v_c)

so the permutations that keep the function are node permutations: c within a head's q/k
pairs (q_c, k_c, s_c move together), c within its v/o pairs (v_c, o_c and the O
projection's inputs), and whole heads. The continuous symmetry q -> A q, k -> A^-T k of
a head is not a permutation and is not captured.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from nngraph.errors import UnsupportedModelError
from nngraph.graph import ops
from nngraph.graph.builder import Value
from nngraph.graph.graph import (
    ACT_SOFTMAX,
    EDGE_ATTN_MIX,
    EDGE_ATTN_SUM,
    EDGE_ATTN_V,
    EDGE_IDENTITY,
    EDGE_LINEAR,
    EDGE_PLACE,
    NO_GEOM,
    ROLE_INPUT,
    X_ACT_PARAM,
    X_ACT_PARAM2,
)
from nngraph.graph.products import product_layer

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context
    from nngraph.graph.functional import ParamRef

# Columns of the geometry row (edge_geometry) used by place / const edges (see graph.py).
_KW, _PAD_W, _OUT_H, _OUT_W = 1, 5, 10, 11


def place_geom(length: int, offset: int, out_len: int) -> tuple[int, ...]:
    """Geometry of a place / const edge: ``length`` values at ``offset`` of a 1 x ``out_len`` target."""
    geom = list(NO_GEOM)
    geom[_KW], geom[_PAD_W], geom[_OUT_H], geom[_OUT_W] = length, offset, 1, out_len
    return tuple(geom)


def flatten_positions(ctx: Context, node: Node, value: Value, where: str) -> Value:
    """``x.flatten(2)`` of a [P, C, H, W] map: a layer of C nodes with 1 x HW sequences (place edges)."""
    if value.kind != "map":
        raise UnsupportedModelError(f"{where}: flatten(2) needs a [batch, C, H, W] map")
    length = value.hw[0] * value.hw[1]
    out = ctx.builder.new_layer(len(value.nodes), (1, length))
    ctx.builder.pair_edges(value.nodes, out, EDGE_PLACE, place_geom(length, 0, length))
    return Value(out, "map", (1, length), node.name)


def transpose(value: Value, dims: tuple[int, int], rank: int, where: str) -> Value:
    """A relabelling between the token layouts (no nodes are added)."""
    dims = tuple(sorted(d % rank for d in dims))
    moves = {
        ("map", 3, (1, 2)): "tokens", ("tokens", 3, (1, 2)): "map", ("tokens", 3, (0, 1)): "tbd",
        ("tbd", 3, (0, 1)): "tokens", ("split", 4, (1, 2)): "heads", ("heads", 4, (1, 2)): "split",
    }
    kind = moves.get((value.kind, rank, dims))
    if kind is None or (value.kind == "map" and value.hw[0] != 1):
        raise UnsupportedModelError(
            f"{where}: only the token transposes [B, D, T] <-> [B, T, D], [B, T, D] <-> [T, B, D] and "
            "[B, T, H, d] <-> [B, H, T, d] are supported"
        )
    return Value(value.nodes, kind, value.hw, value.root, heads=value.heads)


def reshape(value: Value, in_shape: tuple[int, ...], out_shape: tuple[int, ...], where: str) -> Value | None:
    """[B, T, D] <-> [B, T, H, d] (splitting into heads and joining them); None if not such a reshape."""
    if value.kind == "tokens" and len(out_shape) == 4 and tuple(out_shape[:2]) == tuple(in_shape[:2]):
        if out_shape[2] * out_shape[3] == in_shape[2]:
            return Value(value.nodes, "split", value.hw, value.root, heads=int(out_shape[2]))
    if value.kind == "split" and len(out_shape) == 3 and tuple(out_shape) == (*in_shape[:2], in_shape[2] * in_shape[3]):
        return Value(value.nodes, "tokens", value.hw, value.root)
    if value.kind == "tokens" and len(out_shape) == 5 and tuple(out_shape[:2]) == tuple(in_shape[:2]) \
            and out_shape[2] * out_shape[3] * out_shape[4] == in_shape[2]:  # timm's packed qkv [B, T, 3, H, d]
        return Value(value.nodes, "packed", value.hw, value.root, heads=int(out_shape[3]))
    if value.kind in ("tokens", "split", "heads", "tbd"):
        raise UnsupportedModelError(f"{where}: reshape {list(in_shape)} -> {list(out_shape)} of tokens is not supported")
    return None


def select_token(ctx: Context, node: Node, value: Value, index: int, where: str) -> Value:
    """``x[:, t]`` of tokens: a layer of D units, place edges reading position t."""
    length = value.hw[1]
    if not -length <= index < length:
        raise UnsupportedModelError(f"{where}: token {index} is out of range for {length} tokens")
    out = ctx.builder.new_layer(len(value.nodes), (1, 1))
    ctx.builder.pair_edges(value.nodes, out, EDGE_PLACE, place_geom(1, -(index % length), 1))
    return Value(out, "vector", (1, 1), node.name)


def concatenate_tokens(ctx: Context, node: Node, parts: list, where: str) -> Value:
    """``torch.cat([...], dim=1)`` of tokens and [1, L, D] parameters (a class token ``expand``-ed):
    a new layer of D nodes; tokens arrive by place edges, parameters as const self-loops."""
    dims = {len(p.nodes) if isinstance(p, Value) else p.tensor.shape[-1] for p in parts}
    if len(dims) != 1 or any(isinstance(p, Value) and p.kind != "tokens" for p in parts):
        raise UnsupportedModelError(f"{where}: torch.cat along tokens needs [batch, T, D] tensors of one D")
    if sum(not isinstance(p, Value) for p in parts) > 1:
        raise UnsupportedModelError(f"{where}: torch.cat along tokens takes one parameter (the class token); "
                                    "concatenate the parameters into one")
    lengths = [p.hw[1] if isinstance(p, Value) else _token_param(p, where) for p in parts]
    total = sum(lengths)
    d = len(next(p.nodes for p in parts if isinstance(p, Value)))
    builder = ctx.builder
    out = builder.new_layer(d, (1, total))
    offset = 0
    for part, length in zip(parts, lengths):
        if isinstance(part, Value):
            builder.pair_edges(part.nodes, out, EDGE_PLACE, place_geom(length, offset, total))
        else:
            _const(ctx, out, part, offset, total)
        offset += length
    return Value(out, "tokens", (1, total), node.name)


def add_token_param(ctx: Context, node: Node, value: Value, ref: ParamRef, where: str) -> Value:
    """``x + pos_embed`` ([1, T, D] parameter): a new layer fed by identity edges and const self-loops."""
    length = _token_param(ref, where)
    if value.kind != "tokens" or ref.tensor.shape[-1] != len(value.nodes) or length != value.hw[1]:
        raise UnsupportedModelError(f"{where}: a parameter added to tokens must be [1, T, D] of the tokens' shape")
    out = ctx.builder.new_layer(len(value.nodes), value.hw)
    ctx.builder.pair_edges(value.nodes, out, EDGE_IDENTITY)
    _const(ctx, out, ref, 0, length)
    return Value(out, "tokens", value.hw, node.name)


def _token_param(ref: ParamRef, where: str) -> int:
    """Length L of a [1, L, D] parameter."""
    if ref.tensor.dim() != 3 or ref.tensor.shape[0] != 1:
        raise UnsupportedModelError(f"{where}: {ref.name!r} must be a [1, L, D] token parameter")
    return int(ref.tensor.shape[1])


def _const(ctx: Context, nodes: list[int], ref: ParamRef, offset: int, total: int) -> None:
    """Const self-loops on ``nodes`` carrying ref [1, L, D] (node j gets ref[0, :, j]) at ``offset``."""
    values = ref.tensor[0].t()  # [D, L]
    first = ctx.builder.const_edges(nodes, values, place_geom(values.shape[1], offset, total))
    ctx.record_edges(ref.name, ref.tensor, "tokens", first, 1)


def attention(ctx: Context, node: Node, q: Value, k: Value, v: Value, heads: int, scale: float | None,
              where: str, causal: bool = False) -> list[int]:
    """The attention nodes of ``heads`` heads (see the module docstring); returns the output nodes
    o (node h * d_v + c is neuron c of head h), each with a 1 x T_q sequence."""
    if len(q.nodes) != len(k.nodes) or len(q.nodes) % heads or len(v.nodes) % heads:
        raise UnsupportedModelError(f"{where}: q and k need one size, and q, k, v a multiple of {heads} heads")
    if k.hw != v.hw:
        raise UnsupportedModelError(f"{where}: keys and values need the same number of tokens")
    d_qk = len(q.nodes) // heads
    builder = ctx.builder
    t_q, t_k = q.hw[1], k.hw[1]
    products = product_layer(ctx, q.nodes, (t_q, 1), k.nodes, (1, t_k), (t_q, t_k))  # q_c as a column, k_c as a row
    scores = builder.new_layer(heads, (t_q, t_k))
    builder.pair_edges(products, [scores[c // d_qk] for c in range(len(products))], EDGE_ATTN_SUM)
    for n in scores:
        builder.node_act[n] = ACT_SOFTMAX
    builder.set_feature(scores, X_ACT_PARAM, 1.0 / math.sqrt(d_qk) if scale is None else float(scale))
    builder.set_feature(scores, X_ACT_PARAM2, 1.0 if causal else 0.0)  # causal: keys t' > t dropped (lm.py)
    d_v = len(v.nodes) // heads
    out = builder.new_layer(len(v.nodes), (1, t_q))
    builder.pair_edges([scores[c // d_v] for c in range(len(out))], out, EDGE_ATTN_MIX)
    builder.pair_edges(v.nodes, out, EDGE_ATTN_V)
    return out


def scaled_dot_product(ctx: Context, node: Node, args: list, kwargs: dict, where: str) -> Value:
    """``F.scaled_dot_product_attention(q, k, v)`` on [B, H, T, d] values (no mask but ``is_causal``, no dropout)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    bound = dict(zip(names, args)) | kwargs
    q, k, v = bound.get("query"), bound.get("key"), bound.get("value")
    if not all(isinstance(t, Value) and t.kind == "heads" for t in (q, k, v)) or len({q.heads, k.heads, v.heads}) != 1:
        raise UnsupportedModelError(f"{where}: q, k, v must be [batch, heads, T, d] projections of one head count")
    if bound.get("attn_mask") is not None or bound.get("dropout_p", 0.0) \
            or set(bound) - set(names) - {"enable_gqa"} or bound.get("enable_gqa", False):
        raise UnsupportedModelError(f"{where}: attention masks other than is_causal=True, dropout and grouped-query "
                                    "attention are not supported")
    out = attention(ctx, node, q, k, v, q.heads, bound.get("scale"), where, causal=bool(bound.get("is_causal", False)))
    return Value(out, "heads", (1, q.hw[1]), node.name, heads=q.heads)


def multihead_attention(ctx: Context, node: Node, module: torch.nn.MultiheadAttention, args: list, kwargs: dict,
                        path: str) -> tuple[Value, None]:
    """``nn.MultiheadAttention`` (self-attention, no masks; its dropout as in eval mode): packed
    in-projection (one Linear to 3D nodes: q, k, v), attention, out-projection; returns (output, None)."""
    where = f"{path} (MultiheadAttention)"
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
    bound = dict(zip(names, args)) | kwargs
    query = bound.get("query")
    layout = "tokens" if module.batch_first else "tbd"
    if not isinstance(query, Value) or bound.get("key") is not query or bound.get("value") is not query \
            or query.kind != layout:
        raise UnsupportedModelError(
            f"{where}: only self-attention attn(x, x, x) on one [{'batch, T' if module.batch_first else 'T, batch'}, D] "
            "tensor is supported"
        )
    if any(bound.get(m) is not None for m in ("key_padding_mask", "attn_mask")) or bound.get("is_causal", False) \
            or set(bound) - set(names):
        raise UnsupportedModelError(f"{where}: attention masks are not supported")
    if module.in_proj_weight is None or module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedModelError(
            f"{where}: only the packed in-projection without bias_k/bias_v or add_zero_attn is supported"
        )
    tokens = Value(query.nodes, "tokens", query.hw, query.root)
    bias = (f"{path}.in_proj_bias", module.in_proj_bias) if module.in_proj_bias is not None else None
    qkv = ops.linear_layer(ctx, node, tokens, (f"{path}.in_proj_weight", module.in_proj_weight), bias, where)
    d = module.embed_dim
    part = [Value(qkv.nodes[i * d:(i + 1) * d], "tokens", qkv.hw, qkv.root) for i in range(3)]
    out = attention(ctx, node, *part, module.num_heads, None, where)
    proj = module.out_proj
    bias = (f"{path}.out_proj.bias", proj.bias) if proj.bias is not None else None
    result = ops.linear_layer(ctx, node, Value(out, "tokens", qkv.hw, node.name),
                              (f"{path}.out_proj.weight", proj.weight), bias, where)
    return Value(result.nodes, layout, result.hw, node.name), None


def embedding(ctx: Context, node: Node, module: torch.nn.Embedding, value: Value, path: str) -> Value:
    """``nn.Embedding(V, D)`` on token ids [B, T]: V input nodes (node v holds, at each token, 1 where the
    id is v and 0 elsewhere) and D token nodes; edge v -> j carries W[v, j] (a Linear of the one-hot ids)."""
    where = f"{path} (Embedding)"
    if module.max_norm is not None:
        raise UnsupportedModelError(f"{where}: max_norm is not supported (it rewrites the weights in forward)")
    return embedding_table(ctx, node, value, f"{path}.weight", module.weight, where)


def embedding_table(ctx: Context, node: Node, value: Value, name: str, weight: torch.Tensor, where: str) -> Value:
    """The embedding table ``name`` [V, D] on the model's token ids (``nn.Embedding`` or ``F.embedding``)."""
    if value.kind != "ids" or value.nodes:
        raise UnsupportedModelError(f"{where}: an Embedding must read the model's integer input [batch, T] directly")
    vocab, d = weight.shape
    builder = ctx.builder
    ids = builder.new_layer(vocab, value.hw, ROLE_INPUT)
    out = builder.new_layer(d, value.hw)
    first = builder.dense_edges(ids, out, weight.t(), EDGE_LINEAR)
    ctx.record_edges(name, weight, "kernel_t", first, vocab)
    ctx.vocab = vocab
    return Value(out, "tokens", value.hw, node.name)
