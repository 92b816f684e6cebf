"""Language-model pieces: embeddings on raw parameters, constant-index embeddings (positions),
HuggingFace's Conv1D, the causal flag of attention scores, and the rule of ``lora.scaled_add`` (a
LoRA layer's sum, as the export capture lowers it).

- ``F.embedding(ids, W)`` of the model's token ids is ``nn.Embedding`` (``tokens.embedding_table``).
- ``linear_t(x, W, b) = x @ W + b`` with W stored [in, out] (HuggingFace ``Conv1D``, GPT-2): a
  Linear whose edge i -> j carries W[i, j] (layout ``kernel_t``, like an embedding table).
- ``constant_embedding(W, index)`` = W[index] for an index that depends on no input (positions
  ``torch.arange(T)``, BERT's token types): a layer of R *row nodes* (R = rows of W) whose value
  is constant, node r at token t being 1 where index[t] = r, else 0 (a const self-loop carrying
  that indicator; the row number r in its geometry's ``pad_h`` so that rows never trade places),
  and linear edges r -> j carrying W[r, j]:

      e_j(t) = sum_r W[r, j] [index[t] = r] = W[index[t], j]

  Every row of W is in the graph (the rows that this sequence length does not read have
  all-zero row nodes), so ``to_params`` gives W back whole and a permutation of the D
  embedding neurons moves every row's column j together.
- Causal attention: the score nodes of ``tokens.attention`` carry X_ACT_PARAM2 = 1; the
  executor's softmax then drops the keys t' > t (``causal_softmax``).
- ``rotary(x, cos, sin)`` = x cos + rotate_half(x) sin on [B, H, T, d] (LLaMA's rotary position
  embeddings; cos, sin [T, d] constant tables): 2d constant nodes shared by every head, pinned by
  their geometry, two product layers and their sum (``_rotary``).
- ``repeat_heads(x, n)``: grouped-query attention's ``repeat_kv``; the same key/value nodes are
  listed once per query head that reads them (``_repeat_heads``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nngraph.errors import UnsupportedModelError
from nngraph.graph import lora, tokens
from nngraph.graph.builder import Value
from nngraph.graph.functional import ParamRef
from nngraph.graph.graph import EDGE_IDENTITY, EDGE_LINEAR, X_BIAS
from nngraph.graph.products import product_layer

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

_PAD_H = 4  # geometry column of a row node's const self-loop that holds its row number


def linear_t(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W + b with W [in, out] (HuggingFace Conv1D); the target the export capture lowers ``addmm`` to."""
    out = x @ weight
    return out if bias is None else out + bias


def constant_embedding(weight: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    """W[index] [T, D] for a constant index (positions); the target the export capture lowers it to."""
    return weight[list(index)]


def rotary(x: torch.Tensor, cos: tuple, sin: tuple) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin of x [B, H, T, d] with [T, d] tables (rotary position embeddings);
    rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]). The target the export capture lowers the pattern to."""
    c, s = torch.tensor(cos, dtype=x.dtype, device=x.device), torch.tensor(sin, dtype=x.dtype, device=x.device)
    half = x.shape[-1] // 2
    return x * c + torch.cat((-x[..., half:], x[..., :half]), -1) * s


def repeat_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, H, T, d] with every head repeated n times in place: [B, H n, T, d] (grouped-query attention)."""
    return x.repeat_interleave(n, dim=1)


def causal_softmax(z: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of z [n, P, Tq, Tk]; where causal [n] is set, keys t' > t are dropped
    (the top-left aligned mask of ``F.scaled_dot_product_attention(is_causal=True)``)."""
    later = torch.ones(z.shape[-2:], dtype=torch.bool, device=z.device).triu(1)  # [Tq, Tk]
    masked = z.masked_fill(later & causal.view(-1, 1, 1, 1).bool(), float("-inf"))
    return torch.softmax(masked, dim=-1)


def rule(ctx: Context, node: Node, args: list, kwargs: dict, values: list, where: str) -> Any:
    """The value of ``node`` if it is an op of this module, else None."""
    target = node.target
    if target is F.embedding and len(args) >= 2 and isinstance(args[0], Value) and isinstance(args[1], ParamRef):
        if len(args) > 2 and any(a not in (None, False, 2.0, -1) for a in args[2:]) or kwargs:
            raise UnsupportedModelError(f"{where}: F.embedding with padding_idx, max_norm or sparse is not supported")
        return tokens.embedding_table(ctx, node, args[0], args[1].name, args[1].tensor, where)
    if target is linear_t:
        return _linear_t(ctx, node, args, kwargs, where)
    if target is constant_embedding:
        return _constant_embedding(ctx, node, args[0], tuple(args[1]), where)
    if target is rotary:
        # the tables exactly (float64), on the host like the builder
        cos, sin = (torch.tensor(t, dtype=torch.float64, device="cpu") for t in args[1:3])
        return _rotary(ctx, node, args[0], cos, sin, where)
    if target is repeat_heads:
        return _repeat_heads(node, args[0], int(args[1]), where)
    if target is lora.scaled_add and all(isinstance(a, Value) for a in args[:2]):  # a LoRA layer (export capture)
        return lora.scaled_sum(ctx, node, args[0], args[1], float(args[2]), where)
    return None


def _linear_t(ctx: Context, node: Node, args: list, kwargs: dict, where: str) -> Value:
    """x @ W + b, W [in, out]: edges i -> j carrying W[i, j] (``kernel_t``), b in X_BIAS."""
    bound = dict(zip(("x", "weight", "bias"), args)) | kwargs
    value, weight, bias = bound["x"], bound["weight"], bound.get("bias")
    if not isinstance(value, Value) or value.kind not in ("vector", "tokens"):
        raise UnsupportedModelError(f"{where}: a Conv1D (x @ W + b) needs [batch, F] or [batch, T, D] inputs")
    if not isinstance(weight, ParamRef) or weight.tensor.dim() != 2 or (bias is not None and not isinstance(bias, ParamRef)):
        raise UnsupportedModelError(f"{where}: x @ W + b needs W [in, out] and b [out] parameters of the model")
    if weight.tensor.shape[0] != len(value.nodes):
        raise UnsupportedModelError(f"{where}: x @ W needs W [{len(value.nodes)}, out], got {list(weight.tensor.shape)}")
    builder = ctx.builder
    out = builder.new_layer(weight.tensor.shape[1], value.hw)
    first = builder.dense_edges(value.nodes, out, weight.tensor.t(), EDGE_LINEAR)
    ctx.record_edges(weight.name, weight.tensor, "kernel_t", first, len(value.nodes))
    if bias is not None:
        builder.record_node_param(bias.name, out, X_BIAS, bias.tensor)
    return Value(out, value.kind, value.hw, node.name)


def _constant_embedding(ctx: Context, node: Node, ref: Any, index: tuple[int, ...], where: str) -> Value:
    """W[index] for a constant index: R row nodes with constant indicators, edges r -> j carrying W[r, j]."""
    if not isinstance(ref, ParamRef) or ref.tensor.dim() != 2:
        raise UnsupportedModelError(f"{where}: an embedding of constant indices needs a [rows, D] parameter table")
    rows, d = ref.tensor.shape
    length = len(index)
    if any(not 0 <= i < rows for i in index):
        raise UnsupportedModelError(f"{where}: constant index out of range for {ref.name!r} of {rows} rows")
    builder = ctx.builder
    indicator = torch.zeros(rows, length, dtype=builder.dtype, device=ref.tensor.device)  # [R, T]: row r is read at the tokens t of index[t] = r
    indicator[list(index), list(range(length))] = 1.0
    row_nodes = _pinned_constants(ctx, indicator)
    out = builder.new_layer(d, (1, length))
    first = builder.dense_edges(row_nodes, out, ref.tensor.t(), EDGE_LINEAR)
    ctx.record_edges(ref.name, ref.tensor, "kernel_t", first, rows)
    return Value(out, "tokens", (1, length), node.name)


def _pinned_constants(ctx: Context, values: torch.Tensor) -> list[int]:
    """A layer of R nodes of constant 1 x T values ``values`` [R, T]: node r's const self-loop carries
    row r, and r itself in its geometry's ``pad_h``, so that no permutation trades two of them."""
    rows, length = values.shape
    nodes = ctx.builder.new_layer(rows, (1, length))
    for r, n in enumerate(nodes):
        geom = list(tokens.place_geom(length, 0, length))
        geom[_PAD_H] = r
        ctx.builder.const_edges([n], values[r:r + 1], tuple(geom))
    return nodes


def _rotary(ctx: Context, node: Node, value: Any, cos: torch.Tensor, sin: torch.Tensor, where: str) -> Value:
    """Rotary position embeddings on a [B, H, T, d] value (see the module docstring): with partner
    pi(c) = c + d/2 (mod d) and sign s_c = -1 for c < d/2, +1 above,

        x'_c(t) = cos[t, c] x_c(t) + s_c sin[t, c] x_pi(c)(t)

    as 2d constant nodes (cos_c and s_c sin_c, one per channel, shared by every head, pinned:
    ``_pinned_constants``, so that channels never trade places),
    two product layers (x_c cos_c, x_pi(c) s_c sin_c) and a layer summing them (identity edges)."""
    if not isinstance(value, Value) or value.kind != "heads":
        raise UnsupportedModelError(f"{where}: rotary position embeddings need a [batch, heads, T, d] value")
    length, d = cos.shape
    if value.hw != (1, length) or len(value.nodes) % d or d % 2:
        raise UnsupportedModelError(f"{where}: rotary tables [{length}, {d}] do not fit the value's heads")
    builder = ctx.builder
    half = d // 2
    sign = torch.cat([-torch.ones(half, device=cos.device), torch.ones(half, device=cos.device)]).to(builder.dtype)
    constants = [_pinned_constants(ctx, table.T) for table in (cos.to(builder.dtype), sin.to(builder.dtype) * sign)]
    x = value.nodes
    partner = [x[k - k % d + (k % d + half) % d] for k in range(len(x))]
    seq = (1, length)
    direct = product_layer(ctx, x, seq, [constants[0][k % d] for k in range(len(x))], seq, seq)
    rotated = product_layer(ctx, partner, seq, [constants[1][k % d] for k in range(len(x))], seq, seq)
    out = builder.new_layer(len(x), seq)
    builder.pair_edges(direct, out, EDGE_IDENTITY)
    builder.pair_edges(rotated, out, EDGE_IDENTITY)
    return Value(out, "heads", seq, node.name, heads=value.heads)


def _repeat_heads(node: Node, value: Any, n: int, where: str) -> Value:
    """Every head of a [B, H, T, d] value read n times in place (grouped-query attention): the same
    nodes, listed again; no nodes or edges are added."""
    if not isinstance(value, Value) or value.kind != "heads" or not value.heads:
        raise UnsupportedModelError(f"{where}: repeating heads needs a [batch, heads, T, d] value")
    d = len(value.nodes) // value.heads
    nodes = [k for h in range(value.heads) for _ in range(n) for k in value.nodes[h * d:(h + 1) * d]]
    return Value(nodes, "heads", value.hw, node.name, heads=value.heads * n)
