"""nn.LSTM and nn.GRU unrolled over the example's sequence length (unidirectional, with biases).

The input [batch, T, D] is T input nodes whose value is a 1 x D sequence (a [batch, C, L] map);
step t of layer 0 reads node t through flatten edges (edge t -> j carries W_ih[j, :]), a deeper
layer reads the previous layer's h_t (H units) through linear edges. Per step (H hidden units):

LSTM  G_t = W_ih x_t + b_ih (4H nodes: gates i, f, g, o);  S_t = G_t + W_hh h_{t-1} + b_hh, act
      sigmoid (i, f, o) / tanh (g);  c_t = f * c_{t-1} + i * g (two product layers, a sum);
      h_t = o * tanh(c_t) (a tanh copy of c_t, a product layer).
GRU   G_t = W_ih x_t + b_ih, K_t = W_hh h_{t-1} + b_hh (3H each: r, z, n);  rz_t = sigmoid(G + K)
      over r, z;  n_t = tanh(G_n + r * K_n);  h_t = (1 - z) * n_t + z * h_{t-1}
      (1 - z: an identity edge of weight -1 and offset 1).

At t = 0 the state is zero: the terms of h_{-1} and c_{-1} are left out (K_0 is b_hh alone).
Every weight is used at every step: the first use is the primary, the others ties
(``ties.py``), so ``to_params`` reads each tensor once and a permutation of the hidden units is
the same at every step and in every gate block (the product nodes tie the blocks together).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nngraph.errors import UnsupportedModelError
from nngraph.graph import products
from nngraph.graph.builder import Value
from nngraph.graph.graph import (ACT_SIGMOID, ACT_TANH, EDGE_FLATTEN, EDGE_IDENTITY, EDGE_LINEAR, EDGE_RESIDUAL,
                                 GEOM_COLUMNS, NO_GEOM, X_BIAS, X_OFFSET)

if TYPE_CHECKING:
    from torch.fx import Node

    from nngraph.graph.context import Context

MODULES = (nn.LSTM, nn.GRU)


@dataclass
class Steps(Value):
    """The output sequence [batch, T, H] of a recurrent layer: nodes step-major (t * H + k)."""

    width: int = 0
    batch_first: bool = True


@dataclass
class States:
    """h_n (or c_n) [layers, batch, H]: the last state of each layer."""

    layers: list[list[int]]


def module(ctx: Context, node: Node, rnn: nn.Module, value: Value, path: str) -> tuple:
    """The unrolled graph of ``rnn`` on ``value``; returns (output Steps, h_n States[, c_n States])."""
    where = f"{path} ({type(rnn).__name__})"
    if rnn.bidirectional or not rnn.bias or getattr(rnn, "proj_size", 0):
        raise UnsupportedModelError(f"{where}: only unidirectional layers with biases are supported; build it with "
                                    "bidirectional=False, bias=True and proj_size=0")
    if rnn.training and rnn.dropout and rnn.num_layers > 1:
        raise UnsupportedModelError(f"{where} has dropout between layers in training mode; call model.eval() first")
    if value.kind != "map" or value.hw[0] != 1 or value.hw[1] != rnn.input_size:
        raise UnsupportedModelError(f"{where}: the input must be the model's [batch, T, {rnn.input_size}] input "
                                    "(batch_first, or x.transpose(0, 1) for batch_first=False)")
    steps = len(value.nodes)
    if steps < 2:
        raise UnsupportedModelError(f"{where}: the example sequence needs at least 2 steps (W_hh acts from step 1)")
    lstm = isinstance(rnn, nn.LSTM)
    inputs: list[list[int]] = [[n] for n in value.nodes]  # per step: one 1 x D node, or H units
    h_last, c_last = [], []
    for layer in range(rnn.num_layers):
        names = {k: (f"{path}.{k}_l{layer}", getattr(rnn, f"{k}_l{layer}")) for k in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        cell = _lstm_step if lstm else _gru_step
        h, c, outs = None, None, []
        for t in range(steps):
            h, c = cell(ctx, names, inputs[t], layer == 0, h, c, rnn.hidden_size)
            outs.append(h)
        inputs = outs
        h_last.append(h)
        c_last.append(c)
    out = Steps([n for h in inputs for n in h], "steps", (1, 1), node.name, width=rnn.hidden_size,
                batch_first=rnn.batch_first)
    return (out, (States(h_last), States(c_last))) if lstm else (out, States(h_last))


def _inputs(ctx: Context, names: dict, x: list[int], first: bool, rows: int) -> list[int]:
    """G = W_ih x + b_ih: flatten edges from a 1 x D input node, or linear edges from H units."""
    builder = ctx.builder
    name, w = names["weight_ih"]
    g = builder.new_layer(rows, (1, 1))
    if first:
        start = builder.dense_edges(x, g, w.detach().reshape(rows, 1, -1), EDGE_FLATTEN)
        ctx.record_edges(name, w, "flat", start, 1)
    else:
        start = builder.dense_edges(x, g, w, EDGE_LINEAR)
        ctx.record_edges(name, w, "kernel", start, len(x))
    builder.record_node_param(names["bias_ih"][0], g, X_BIAS, names["bias_ih"][1])
    return g


def _recurrent(ctx: Context, names: dict, h: list[int] | None, into: list[int]) -> None:
    """W_hh h_{t-1} into ``into`` and b_hh as its bias; at t = 0 (h = 0) a const self-loop of value 0
    instead, so that the nodes have an incoming edge (the executor computes a layer from its edges)."""
    if h is None:
        geom = list(NO_GEOM)
        geom[GEOM_COLUMNS.index("kw")] = geom[GEOM_COLUMNS.index("out_w")] = 1  # one value at position 0 of 1
        ctx.builder.const_edges(into, torch.zeros(len(into), 1, dtype=ctx.builder.dtype), tuple(geom))
    else:
        name, w = names["weight_hh"]
        start = ctx.builder.dense_edges(h, into, w, EDGE_LINEAR)
        ctx.record_edges(name, w, "kernel", start, len(h))
    ctx.builder.record_node_param(names["bias_hh"][0], into, X_BIAS, names["bias_hh"][1])


def _acts(ctx: Context, nodes: list[int], acts: list[int]) -> None:
    for n, act in zip(nodes, acts, strict=True):
        ctx.builder.node_act[n] = act


def _sum(ctx: Context, a: list[int], b: list[int]) -> list[int]:
    out = ctx.builder.new_layer(len(a), (1, 1))
    ctx.builder.pair_edges(a, out, EDGE_RESIDUAL)
    ctx.builder.pair_edges(b, out, EDGE_RESIDUAL)
    return out


def _product(ctx: Context, a: list[int], b: list[int]) -> list[int]:
    return products.product_layer(ctx, a, (1, 1), b, (1, 1), (1, 1))


def _lstm_step(ctx: Context, names: dict, x: list[int], first: bool, h: list[int] | None, c: list[int] | None,
               size: int) -> tuple[list[int], list[int]]:
    builder = ctx.builder
    g = _inputs(ctx, names, x, first, 4 * size)
    s = builder.new_layer(4 * size, (1, 1))
    builder.pair_edges(g, s, EDGE_RESIDUAL)
    _recurrent(ctx, names, h, s)
    _acts(ctx, s, [ACT_SIGMOID] * 2 * size + [ACT_TANH] * size + [ACT_SIGMOID] * size)
    i, f, gg, o = (s[k * size:(k + 1) * size] for k in range(4))
    new_c = _product(ctx, i, gg)
    if c is not None:
        new_c = _sum(ctx, _product(ctx, f, c), new_c)
    tanh_c = builder.new_layer(size, (1, 1))
    builder.pair_edges(new_c, tanh_c, EDGE_IDENTITY)
    _acts(ctx, tanh_c, [ACT_TANH] * size)
    return _product(ctx, o, tanh_c), new_c


def _gru_step(ctx: Context, names: dict, x: list[int], first: bool, h: list[int] | None, c: Any,
              size: int) -> tuple[list[int], None]:
    builder = ctx.builder
    g = _inputs(ctx, names, x, first, 3 * size)
    k = builder.new_layer(3 * size, (1, 1))
    _recurrent(ctx, names, h, k)
    rz = _sum(ctx, g[:2 * size], k[:2 * size])
    _acts(ctx, rz, [ACT_SIGMOID] * 2 * size)
    r, z = rz[:size], rz[size:]
    n = _sum(ctx, g[2 * size:], _product(ctx, r, k[2 * size:]))
    _acts(ctx, n, [ACT_TANH] * size)
    one_minus_z = builder.new_layer(size, (1, 1))
    builder.dense_edges(z, one_minus_z, torch.full((size, 1), -1.0, dtype=builder.dtype), EDGE_IDENTITY, groups=size)
    builder.set_feature(one_minus_z, X_OFFSET, 1.0)
    new_h = _product(ctx, one_minus_z, n)
    if h is not None:
        new_h = _sum(ctx, new_h, _product(ctx, z, h))
    return new_h, None


def read(ctx: Context, node: Node, args: list, where: str) -> Any:
    """``out[:, t]`` / ``out[t]`` (batch_first False), ``h_n[k]``, ``out.flatten(1)`` / ``out.reshape(B, -1)``
    of a recurrent layer's outputs; None when ``node`` reads none."""
    if not args:
        return None
    first = args[0]
    target = node.target
    if isinstance(first, States) and target is operator.getitem and isinstance(args[1], int):
        return Value(first.layers[args[1]], "vector", (1, 1), node.name)
    if not isinstance(first, Steps):
        return None
    steps = len(first.nodes) // first.width
    if target is operator.getitem:
        index = args[1]
        t = index if not first.batch_first else (index[1] if isinstance(index, tuple) and len(index) == 2
                                                    and index[0] == slice(None) else None)
        if isinstance(t, int):
            t = t % steps
            return Value(first.nodes[t * first.width:(t + 1) * first.width], "vector", (1, 1), node.name)
    if target in (torch.flatten, "flatten", "reshape", "view") and first.batch_first \
            and len(ctx.shape(node)) == 2:
        return Value(first.nodes, "vector", (1, 1), first.root)
    raise UnsupportedModelError(f"{where}: a recurrent layer's output is read only as out[:, t] (out[t] for "
                                "batch_first=False), h_n[k] or out.flatten(1) (batch_first)")


def transposed_input(ctx: Context, node: Node, args: list) -> Value | None:
    """``x.transpose(0, 1)`` of the [batch, T, D] input read only by a batch_first=False recurrent layer: x itself."""
    if node.target not in (torch.transpose, "transpose") or len(args) != 3 or sorted(args[1:]) != [0, 1]:
        return None
    if not isinstance(args[0], Value) or args[0].kind != "map" or not node.users:
        return None
    users = [u for u in node.users if u.op == "call_module"]
    if len(users) != len(node.users) or not all(isinstance(ctx.modules[u.target], MODULES)
                                                and not ctx.modules[u.target].batch_first for u in users):
        return None
    return args[0]
