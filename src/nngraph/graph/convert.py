"""to_graph / to_params: a PyTorch network <-> its NeuralGraph.

``to_graph`` traces the module with torch.fx, propagates the example input's shapes
through the trace, and converts node by node with the rules of ``ops.py``. Anything it
does not know raises ``UnsupportedModelError`` naming the module path and type: the
graph is either exact or not made at all.
"""

from __future__ import annotations

import contextlib
import io
import operator
from collections import Counter, OrderedDict
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from nngraph.errors import InputShapeError, NonFiniteError, UnsupportedModelError
from nngraph.graph import (activations, capture, conv_transpose, functional, guards, handwritten, layouts, lm, lora,
                           norms, ops, padding, pooling, products, recurrent, ties, tokens, upsample)
from nngraph.graph.builder import Value
from nngraph.graph.context import Context
from nngraph.graph.functional import ParamRef
from nngraph.graph.layout import read_params
from nngraph.graph.graph import (
    ROLE_INPUT,
    ROLE_OUTPUT,
    ArchSpec,
    NeuralGraph,
    ParamEntry,
)
from nngraph.graph.activations import Sine

SUPPORTED = (
    "Linear, Conv1d/Conv2d (any groups, depthwise), ConvTranspose1d/2d (any groups, output_padding), "
    "F.linear/F.conv1d/F.conv2d on parameters, BatchNorm1d/2d "
    "(eval), LayerNorm (features; channels of a channels-last map), GroupNorm, InstanceNorm1d/2d, RMSNorm, "
    "LayerNorm and RMSNorm written by hand from x.mean(dim, keepdim=True) and x.pow(2), "
    "softmax/log_softmax over features or channels, ReLU, ReLU6, GELU, SiLU, Tanh, Sigmoid, LeakyReLU, PReLU, "
    "Hardtanh, Hardswish, "
    "Hardsigmoid, ELU, SELU, Softplus, Mish, sin(w0*x)/Sine (also in place), residual a+b, x+constant, "
    "x[:, a:b] (+)= y, torch.cat, chunk and split on channels, unbind on channels (activations, stack back), "
    "x.permute(0, 2, 3, 1) (channels last: Linear and "
    "LayerNorm over C at every position) and back, gamma * x with one gamma per channel (layer scale), "
    "Max/AvgPool1d/2d, AdaptiveMax/AvgPool1d/2d, mean over H,W, flatten, "
    "a * b of one shape, x * gate with a [B, C, 1, 1] gate (squeeze-and-excitation; view/unsqueeze/expand_as of the "
    "gate), F.glu on features or channels, c * x and x / c for a constant c, "
    "Upsample/F.interpolate (nearest, bilinear/linear; size or whole scale_factor), F.pad/ZeroPad1d/2d with zeros, "
    "spatial crops x[:, :, a:b, c:d], "
    "Dropout, Identity; tokens [B, T, D]: flatten(2).transpose(1, 2), class token cat, + position embedding, "
    "Linear/LayerNorm/activations per token, a Linear over the positions of a [B, C, L] sequence (MLP-Mixer's "
    "token mixing after x.transpose(1, 2)), x[:, t], x.mean(1), MultiheadAttention (self-attention), "
    "F.scaled_dot_product_attention (also is_causal=True or a constant causal mask), Embedding, F.embedding; "
    "through torch.export (capture='export', or where fx fails): HuggingFace GPT-2/BERT/ViT, "
    "peft LoRA on them and on Conv2d, Conv1D, GELU-new, "
    "positions from arange, per-token outputs [B, T, V]"
)

_SINE = {torch.sin, "sin"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_PASS_MODULES = (nn.Dropout, nn.Identity)
_PASS_FUNCTIONS = {F.dropout, "contiguous"}
_FLATTEN = {torch.flatten, "flatten", "view", "reshape"}
_MUL = {operator.mul, torch.mul, "mul", "mul_"}
_EXPAND = {"expand", "expand_as"}
_UNSQUEEZE = {torch.unsqueeze, "unsqueeze"}
_DIV = {operator.truediv, torch.div, torch.true_divide, "div", "true_divide"}
_CAT = {torch.cat, torch.concat}
_POOL = {torch.mean, "mean"}
_TRANSPOSE = {torch.transpose, "transpose"}
_SOFTMAX = {F.softmax: False, torch.softmax: False, "softmax": False,  # target -> log_softmax?
            F.log_softmax: True, torch.log_softmax: True, "log_softmax": True}


class _Proxy(fx.Proxy):
    """An fx proxy that records ``x[idx] = y`` (fx's own refuses item assignment)."""

    def __setitem__(self, index: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})


class _Tracer(fx.Tracer):
    """fx tracer that keeps nngraph's own activation modules as leaves and records setitem."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Sine) or lora.is_lora_linear(m) or super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)


def _is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops whose output is the same set of neurons as their input (no new values)."""
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, _PASS_MODULES + (nn.Flatten,))
    if node.op in ("call_function", "call_method"):
        if node.target in _PASS_FUNCTIONS or node.target in _FLATTEN or node.target in _TRANSPOSE \
                or node.target in layouts.PERMUTE or _channel_slice(node) is not None:
            return True
        return node.target in _CAT and len(node.args[0]) == 1
    return False


def _first_tensor_arg(node: fx.Node) -> fx.Node:
    arg = node.args[0]
    return arg[0] if isinstance(arg, (list, tuple)) else arg


def _count_consumers(graph: fx.Graph, modules: dict[str, nn.Module]) -> Counter:
    """consumers[root]: how many non-passthrough ops (or the output) read each value's neurons."""
    root: dict[fx.Node, str] = {}
    for node in graph.nodes:
        passthrough = _is_passthrough(node, modules) and isinstance(_first_tensor_arg(node), fx.Node)
        root[node] = root[_first_tensor_arg(node)] if passthrough else node.name
    consumers: Counter = Counter()
    for node in graph.nodes:
        for user in node.users:
            if not _is_passthrough(user, modules):
                consumers[root[node]] += 1
    return consumers


def to_graph(model: nn.Module, example_input: torch.Tensor, *, k_max: int | None = None,
             weights: bool = True, capture: str = "auto") -> NeuralGraph:
    """Convert ``model`` into its NeuralGraph.

    Args:
        model: a network built from the supported ops (see ``SUPPORTED``).
        example_input: a batch shaped like the model's input, [P, F] or [P, C, H, W];
            it fixes the spatial sizes of feature maps.
        k_max: width of the kernel window of the edge features (default: the largest
            kernel of the model); set it to the largest kernel of a whole dataset.
        weights: False leaves ``edge_attr`` empty ([E, 0]): structure and node features only
            (what ``permute_neurons`` needs; the parameters stay readable from the spec's layout).
        capture: how the model's computation is recorded: ``"fx"`` (torch.fx symbolic tracing),
            ``"export"`` (torch.export, lowered by ``capture.py``: HuggingFace models) or ``"auto"``
            (fx, and torch.export where fx cannot trace the model).
    """
    name = type(model).__name__
    model, prefix = lora.unwrap(model)  # a PeftModel: its base model, names prefixed back at the end
    guards.check_not_meta(model, example_input, name)
    _check_input(example_input, name)
    guards.check_no_hooks(model, name)
    state = model.state_dict()
    _check_finite(state, name)
    _check_no_batch_statistics(model)
    gm, captured_buffers = _capture(model, example_input, capture, name)
    dtype = _param_dtype(state, name)
    ctx = Context(gm, dtype, name, _count_consumers(gm.graph, dict(gm.named_modules())), _SINE, set(state))
    ctx.buffers.update({k: v.detach().clone() for k, v in captured_buffers.items() if k in state})
    env: dict[fx.Node, Any] = {}
    output: Value | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = _placeholder(ctx, node, example_input, env)
        elif node.op == "output":
            output = _resolve(node.args[0], env)
        else:
            env[node] = _convert_node(ctx, node, env)
            if activations.mutates(node, ctx.modules):
                _rebind(env, node, ctx)
    guards.check_one_output(output, name)
    spec = ArchSpec(
        params=[],
        buffers=ctx.buffers,
        state_order=list(state.keys()),
        input_shape=tuple(example_input.shape[1:]),
        output_shape=tuple(ctx.shape(next(n for n in gm.graph.nodes if n.op == "output").args[0])[1:]),
        model_name=name,
        vocab=ctx.vocab,
        output_tokens=output.kind == "tokens" if isinstance(output, Value) else False,
    )
    _check_output(output, ctx, name)
    primaries, spec.ties = ties.separate(ctx.builder.params, model, spec.state_order, name)
    spec.params = _in_state_order(primaries, state, {**ctx.buffers, **dict.fromkeys(t.name for t in spec.ties)}, name)
    graph_out = ctx.builder.finish(spec, k_max, weights)
    _assign_roles(graph_out, output.nodes)
    lora.prefixed(graph_out.spec, prefix)
    return graph_out


def _capture(model: nn.Module, example: torch.Tensor, how: str, name: str) -> tuple[fx.GraphModule, dict]:
    """The model's computation as an fx graph with shapes, and the buffers that only constants read:
    torch.fx symbolic tracing, or torch.export lowered to the same vocabulary (``capture.py``)."""
    if how not in ("auto", "fx", "export"):
        raise ValueError(f"capture={how!r}: use 'auto', 'fx' or 'export'")
    if how != "export":
        try:
            graph = _Tracer().trace(model)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds; all mean "cannot trace"
            reason = f"{name} cannot be traced by torch.fx ({_first_line(exc)})"
            if how == "fx":
                raise UnsupportedModelError(f"{reason}; data-dependent control flow is not supported: write forward() "
                                            "as a fixed sequence of ops, or pass capture='export'") from None
        else:
            attribute = _proxy_attribute(graph)
            if how == "fx" or attribute is None:
                gm = fx.GraphModule(model, graph)
                _propagate_shapes(gm, example.detach(), name)
                return gm, {}
            reason = f"{name} reads {attribute} of a traced tensor, which torch.fx cannot follow"
    try:
        lowered = capture.export_graph(model, example.detach(), name)
    except UnsupportedModelError as exc:
        if how == "export":
            raise
        raise UnsupportedModelError(f"{reason}, and {exc}") from None
    return lowered.gm, lowered.buffers


def _proxy_attribute(graph: fx.Graph) -> str | None:
    """'x.device' where forward reads a tensor attribute other than its shape (``torch.arange(T, device=idx.device)``):
    fx records it as a proxy it cannot evaluate, so the export capture takes over."""
    for node in graph.nodes:
        if node.op == "call_function" and node.target is getattr and node.args[1] not in ("shape",):
            return f"{node.args[0]}.{node.args[1]}"
    return None


def _rebind(env: dict, node: fx.Node, ctx: Context) -> None:
    """An in-place op (``relu_``, ``inplace=True``, ``x[:, a:b] = y``): every later read of the
    tensor it wrote into, under any alias, sees the result."""
    old, new = _resolve(node.args[0], env), env[node]
    if not isinstance(old, Value) or not isinstance(new, Value):
        raise _unsupported(node, ctx)
    for key, value in env.items():
        if value is old:
            env[key] = new


def _propagate_shapes(gm: fx.GraphModule, example: torch.Tensor, name: str) -> None:
    """Record every fx node's output shape (``node.meta['tensor_meta']``) from one example."""
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback
            ShapeProp(gm).propagate(example[:1])
    except Exception as exc:  # noqa: BLE001
        raise InputShapeError(
            f"example_input of shape {list(example.shape)} does not fit {name}: {_root_cause(exc)}; "
            "pass a batch shaped like the model's input"
        ) from None


def to_params(graph: NeuralGraph) -> OrderedDict[str, torch.Tensor]:
    """The network's state_dict, read back from the graph (exact inverse of ``to_graph``)."""
    spec: ArchSpec = graph.spec
    stacked = read_params(spec, graph.x.unsqueeze(0), graph.edge_attr.unsqueeze(0))  # the B = 1 case
    out = {name: _copy(t[0]) for name, t in stacked.items()}
    out.update({alias: out[name] for alias, name in ties.aliases(spec).items()})  # one tensor, several names
    out.update({name: _copy(t) for name, t in spec.buffers.items()})
    return OrderedDict((name, out[name]) for name in spec.state_order)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A detached contiguous copy (a state_dict must not alias or stride into the graph)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


# ---- conversion of one fx node ------------------------------------------------------


def _convert_node(ctx: Context, node: fx.Node, env: dict) -> Any:
    if node.op == "get_attr" and "tensor_meta" in node.meta:
        return functional.param_ref(ctx, node, ctx.state_names)
    if node.op == "call_function" and node.target is operator.setitem:
        return _setitem(ctx, node, env)
    if "tensor_meta" not in node.meta:  # x.size(0), shape arithmetic: not part of the network
        return _shape_constant(ctx, node, env)
    if node.op == "call_module":
        return _call_module(ctx, node, env)
    if node.op in ("call_function", "call_method"):
        return _call_function(ctx, node, env)
    raise _unsupported(node, ctx)


_SHAPE_ARITHMETIC = {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv}


def _shape_constant(ctx: Context, node: fx.Node, env: dict) -> Any:
    """``x.shape``, ``x.size(d)`` and integer arithmetic on them, as seen on the example input
    (batch size 1), e.g. the c of ``out[:, :x.shape[1]] += x``; None for other non-tensor values."""
    args = _args(node, env)
    if node.op == "call_function" and node.target is getattr and args[1:] == ["shape"] and isinstance(args[0], Value):
        return tuple(ctx.shape(node.args[0]))
    if node.op == "call_method" and node.target == "size" and isinstance(args[0], Value):
        shape = tuple(ctx.shape(node.args[0]))
        return shape[args[1]] if len(args) > 1 else shape
    if node.op == "get_attr" or any(isinstance(a, (Value, ParamRef)) for a in args):
        raise _unsupported(node, ctx)
    if node.op == "call_function" and node.target in _SHAPE_ARITHMETIC and all(
        isinstance(a, (int, tuple)) and not isinstance(a, bool) for a in args
    ):
        return node.target(*args)
    if node.op == "call_function" and node.target is operator.getitem and isinstance(args[0], tuple) \
            and isinstance(args[1], slice):  # x.shape[2:]
        return args[0][args[1]]
    return None


def _call_module(ctx: Context, node: fx.Node, env: dict) -> Value:
    path = node.target
    module = ctx.modules[path]
    if type(module) in recurrent.MODULES:  # nn.LSTM / nn.GRU, unrolled
        value = _resolve(node.args[0], env)
        if not isinstance(value, Value) or len(node.args) != 1 or node.kwargs:
            raise UnsupportedModelError(f"{path} ({type(module).__name__}): only rnn(x) with a zero initial state")
        return recurrent.module(ctx, node, module, value, path)
    if type(module) is nn.MultiheadAttention:
        kwargs = {k: _resolve(v, env) for k, v in node.kwargs.items()}
        return tokens.multihead_attention(ctx, node, module, _args(node, env), kwargs, path)
    value = _resolve(node.args[0], env)
    if type(module) in conv_transpose.MODULES and isinstance(value, Value) and len(node.args) + len(node.kwargs) <= 2 \
            and set(node.kwargs) <= {"output_size"}:  # output_size fixes the output padding: read off the traced shape
        return conv_transpose.conv_transpose(ctx, node, module, value, path)
    if not isinstance(value, Value) or len(node.args) != 1 or node.kwargs:
        raise _unsupported(node, ctx)
    where = f"{path} ({type(module).__name__})"
    if lora.is_lora_linear(module):
        return lora.linear(ctx, node, module, value, path)
    if type(module) is nn.Linear:
        return ops.linear(ctx, node, module, value, path)
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return ops.conv2d(ctx, node, module, value, path)
    if type(module) is nn.PReLU:
        return ops.prelu(ctx, node, value, (f"{path}.weight", module.weight), where)
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return ops.batchnorm(ctx, node, module, value, path)
    if type(module) is nn.Embedding:
        return tokens.embedding(ctx, node, module, value, path)
    if type(module) is nn.LayerNorm:
        return ops.layernorm(ctx, node, module, value, path)
    if type(module) in norms.MODULES:
        return norms.module_rule(ctx, node, module, value, path)
    if type(module) in activations.MODULES:
        act, param, param2 = activations.MODULES[type(module)](module)
        return ops.activation(ctx, node, value, act, param, where, param2)
    if isinstance(module, _PASS_MODULES):
        return value
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return ops.flatten(ctx, node, value, where)
    if type(module) in conv_transpose.MODULES:
        return conv_transpose.conv_transpose(ctx, node, module, value, path)
    if type(module) in upsample.MODULES:
        return upsample.upsample(ctx, node, value, upsample.module_arguments(module), where)
    if type(module) in padding.MODULES:
        return padding.pad(ctx, node, value, padding.module_pads(module, where), "constant", 0, where)
    if type(module) in pooling.MODULES:
        target = pooling.MODULES[type(module)]
        return _pool(ctx, node, value, target, pooling.module_arguments(module), where)
    raise _unsupported(node, ctx)


def _call_function(ctx: Context, node: fx.Node, env: dict) -> Value:
    target = node.target
    where = _where(node, ctx)
    args = _args(node, env)
    kwargs = {k: _resolve(v, env) for k, v in node.kwargs.items()}
    values = [a for a in args if isinstance(a, Value)]
    sequence = recurrent.read(ctx, node, args, where) or recurrent.transposed_input(ctx, node, args)
    if sequence is not None:
        return sequence
    formula = handwritten.rule(ctx, node, args, kwargs, where)
    if formula is not None:
        return formula
    lm_value = lm.rule(ctx, node, args, kwargs, values, where)  # embeddings on parameters, Conv1D (export capture)
    if lm_value is not None:
        return lm_value
    token_value = _token_op(ctx, node, args, kwargs, values, where)
    if token_value is not None:
        return token_value
    layout_value = layouts.rule(ctx, node, args, kwargs, values, where)
    if layout_value is not None:
        return layout_value
    if target in _SOFTMAX and len(values) == 1 and args[0] is values[0] and kwargs.get("dtype") is None:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        return norms.softmax(ctx, node, values[0], dim, _SOFTMAX[target], where)
    if any(isinstance(a, ParamRef) for a in [*args, *kwargs.values()]):
        if functional.is_layer(target):
            return functional.layer(ctx, node, args, kwargs, where)
        ref = next(a for a in [*args, *kwargs.values()] if isinstance(a, ParamRef))
        raise UnsupportedModelError(
            f"{where} uses parameter {ref.name!r} directly; nngraph converts parameters only as the weights of "
            "F.linear, F.conv1d, F.conv2d, F.prelu, F.layer_norm and F.batch_norm, or as one factor per channel "
            "(gamma * x)"
        )
    if (target in _UNSQUEEZE or (target is operator.getitem and isinstance(args[1], tuple) and None in args[1])) \
            and len(values) == 1 and args[0] is values[0]:
        return _unsqueeze_units(ctx, node, values[0], where)
    if target is operator.getitem and len(values) == 1 and args[0] is values[0]:
        cropped = padding.crop(ctx, node, values[0], args[1], where) if isinstance(args[1], tuple) else None
        if cropped is not None:
            return cropped
        return ops.channel_slice(ctx, node, values[0], _channel_index(_whole_positions(ctx, node, args[1]), where), where)
    if target in _ADD and len(args) == 2 and not set(kwargs) - {"alpha"} and kwargs.get("alpha", 1) == 1:
        if len(values) == 2:
            return ops.residual(ctx, node, args[0], args[1], where)
        if len(values) == 1 and _is_number(args[1 - args.index(values[0])]):
            return ops.add_constant(ctx, node, values[0], float(args[1 - args.index(values[0])]), where)
    if target in (operator.sub, torch.sub, "sub") and len(values) == 1 and args[0] is values[0] and _is_number(args[1]):
        return ops.add_constant(ctx, node, values[0], -float(args[1]), where)
    if target in _MUL and len(values) == 2 and len(args) == 2 and not kwargs:
        return products.multiply(ctx, node, args[0], args[1], where)
    if target is F.glu and len(values) == 1 and args[0] is values[0]:
        return products.glu(ctx, node, values[0], kwargs.get("dim", args[1] if len(args) > 1 else -1), where)
    if target in _EXPAND and values and args[0] is values[0]:
        return _expand_gate(ctx, node, values[0], where)
    if target in upsample.FUNCTIONS and values and args[0] is values[0]:
        return upsample.upsample(ctx, node, values[0], upsample.bind(args, kwargs), where)
    if target in (operator.mul, torch.mul, "mul") and len(values) == 1 and len(args) == 2:
        other = args[1 - args.index(values[0])]
        if _is_number(other) and node.users and all(u.target in ctx.sine_targets for u in node.users):
            return ops.scale(ctx, node, values[0], float(other), where)  # sin(w0 * x): w0 is the activation's
        if _is_number(other):
            return products.scale(ctx, node, values[0], float(other), where)
    if target in _DIV and len(values) == 1 and len(args) == 2 and args[0] is values[0] and _is_number(args[1]) \
            and not kwargs and args[1] != 0:
        return products.scale(ctx, node, values[0], 1.0 / float(args[1]), where)
    if target in _SINE and len(values) == 1:
        return ops.sine(ctx, node, values[0], where)
    parsed = activations.parse_function(node, args, kwargs) if values and args[0] is values[0] else None
    if parsed is not None:
        act, param, param2 = parsed
        return ops.activation(ctx, node, values[0], act, param, where, param2)
    if target is F.pad and values and args[0] is values[0]:
        bound = dict(zip(("pad", "mode", "value"), args[1:])) | kwargs
        return padding.pad(ctx, node, values[0], bound.get("pad"), bound.get("mode"), bound.get("value"), where)
    if target in _PASS_FUNCTIONS and values:
        return values[0]
    if target in _FLATTEN and values:
        return _flatten(ctx, node, values[0], args, kwargs, where)
    if target is operator.getitem and values and args[0] is values[0] and _channel_slice(node) is not None:
        return _slice_channels(ctx, node, values[0], where)
    if target in _CAT and _cat_dim_ok(node, args, kwargs, ctx):
        return ops.concatenate(ctx, node, list(args[0]), where)
    if target in _POOL and values and _is_global_pool(node, args, kwargs, ctx):
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        return ops.global_pool(ctx, node, values[0], bool(keepdim), where)
    if target in pooling.FUNCTIONS and values and args[0] is values[0]:
        return _pool(ctx, node, values[0], target, pooling.bind(target, args, kwargs), where)
    raise _unsupported(node, ctx)


_TOKEN_KINDS = ("tokens", "split", "heads", "tbd")


def _token_op(ctx: Context, node: fx.Node, args: list, kwargs: dict, values: list, where: str) -> Any:
    """The transformer rules of ``tokens.py``, or None when ``node`` is not a token op."""
    target = node.target
    if target is operator.getitem and isinstance(args[0], tuple):  # attn(x, x, x)[0]
        return args[0][args[1]]
    if target is F.scaled_dot_product_attention:
        return tokens.scaled_dot_product(ctx, node, args, kwargs, where)
    if target == "expand" and isinstance(args[0], ParamRef):  # cls_token.expand(B, -1, -1): one value for all
        return args[0]
    if target in _CAT and isinstance(args[0], (list, tuple)) and len(ctx.shape(node)) == 3:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        parts = args[0]
        if dim % 3 == 1 and any(isinstance(p, ParamRef) or (isinstance(p, Value) and p.kind == "tokens") for p in parts):
            if not all(isinstance(p, (Value, ParamRef)) for p in parts):
                raise UnsupportedModelError(f"{where}: torch.cat along tokens takes tokens and [1, L, D] parameters")
            return tokens.concatenate_tokens(ctx, node, list(parts), where)
    if target in _ADD and len(args) == 2 and len(values) == 1 and any(isinstance(a, ParamRef) for a in args):
        ref = next(a for a in args if isinstance(a, ParamRef))
        return tokens.add_token_param(ctx, node, values[0], ref, where)
    if len(values) != 1 or args[0] is not values[0]:
        return None
    value = values[0]
    if target in _TRANSPOSE:
        dims = tuple(kwargs.get(k, args[i] if len(args) > i else 0) for i, k in ((1, "dim0"), (2, "dim1")))
        return tokens.transpose(value, dims, len(ctx.shape(node)), where)
    if target in _FLATTEN:
        in_shape, out_shape = tuple(ctx.shape(node.args[0])), tuple(ctx.shape(node))
        if value.kind == "map" and len(in_shape) == 4 and len(out_shape) == 3:
            return tokens.flatten_positions(ctx, node, value, where)
        return tokens.reshape(value, in_shape, out_shape, where)
    if value.kind in _TOKEN_KINDS and target is operator.getitem:
        index = args[1]
        if value.kind == "tokens" and isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) \
                and isinstance(index[1], int):
            return tokens.select_token(ctx, node, value, index[1], where)
        raise UnsupportedModelError(f"{where}: only x[:, t] (one token) of a [batch, T, D] tensor is supported")
    if value.kind == "tokens" and target in _POOL:
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if dims not in (1, -2, (1,), (-2,), [1], [-2]) or keepdim:
            raise UnsupportedModelError(f"{where}: only x.mean(1) (the mean over tokens) of a [batch, T, D] tensor is supported")
        return ops.global_pool(ctx, node, value, False, where)
    if value.kind in ("split", "heads"):
        raise UnsupportedModelError(f"{where}: only reshapes, transposes and F.scaled_dot_product_attention are "
                                    "supported on attention heads (write q @ k.transpose(-2, -1) ... @ v as it)")
    return None


def _pool(ctx: Context, node: fx.Node, value: Value, target: Any, arguments: dict, where: str) -> Value:
    """A pooling call: local / adaptive pooling edges, or the global mean for adaptive average to 1."""
    kind, geom = pooling.geometry(target, arguments, value.hw, where)
    spatial = pooling.FUNCTIONS[target][1]
    if len(ctx.shape(node)) != spatial + 2 or value.kind != "map":
        raise UnsupportedModelError(f"{where}: a {spatial}-d pooling needs a [batch, C{', L' if spatial == 1 else ', H, W'}] input")
    if kind is None:
        return ops.global_pool(ctx, node, value, True, where)
    return pooling.pool(ctx, node, value, kind, geom, where)


def _channel_index(index: Any, where: str) -> slice:
    """The channel slice of ``x[:, a:b]`` (trailing full slices allowed); anything else is refused."""
    parts = index if isinstance(index, tuple) else (index,)
    full = slice(None, None, None)
    if len(parts) >= 2 and parts[0] == full and isinstance(parts[1], slice) and all(p == full for p in parts[2:]):
        if all(v is None or isinstance(v, int) for v in (parts[1].start, parts[1].stop, parts[1].step)):
            return parts[1]
    raise UnsupportedModelError(f"{where}: only channel/feature slices x[:, a:b] are supported, got index {index!r}")


def _setitem(ctx: Context, node: fx.Node, env: dict) -> Value:
    """``x[:, a:b] = y`` (what ``x[:, a:b] += y`` ends in): x's neurons a..b-1 become y's."""
    target, index, new = (_resolve(a, env) for a in node.args)
    where = _where(node, ctx)
    if not isinstance(target, Value) or not isinstance(new, Value):
        raise UnsupportedModelError(f"{where}: only x[:, a:b] = y with tensors computed from the input is supported")
    return ops.assign_slice(ctx, node, target, _channel_index(index, where), new, where)


def _flatten(ctx: Context, node: fx.Node, value: Value, args, kwargs, where: str) -> Value:
    in_shape = ctx.shape(node.args[0])
    out_shape = ctx.shape(node)
    ones = (1,) * (len(out_shape) - 2)
    if value.kind == "vector" and len(out_shape) in (3, 4) and tuple(out_shape[1:]) == (in_shape[1], *ones):
        return Value(value.nodes, "map", (1, 1), value.root)  # [B, C] -> [B, C, 1(, 1)]: C maps of 1 x 1 (a gate)
    if len(out_shape) != 2 or out_shape[0] != in_shape[0]:
        raise UnsupportedModelError(
            f"{where}: only flattening to [batch, features] is supported, got {list(in_shape)} -> {list(out_shape)}"
        )
    return ops.flatten(ctx, node, value, where)


def _whole_positions(ctx: Context, node: fx.Node, index: Any) -> Any:
    """``index`` without its slices of H, W (or L) when they select every position (a U-Net's centre crop of a
    skip that already has the target size: ``x[:, :, 0:H, 0:W]``)."""
    if not isinstance(index, tuple) or len(index) < 3:
        return index
    spatial = index[2:]
    same = tuple(ctx.shape(node))[2:] == tuple(ctx.shape(node.args[0]))[2:]
    if same and all(isinstance(p, slice) and p.step in (None, 1) for p in spatial):
        return index[:2]
    return index


def _unsqueeze_units(ctx: Context, node: fx.Node, value: Value, where: str) -> Value:
    """``y.unsqueeze(-1)``, ``y[:, :, None, None]`` of units [B, C] (or of a [B, C, 1] gate): C maps of 1 x 1."""
    in_shape, out_shape = tuple(ctx.shape(node.args[0])), tuple(ctx.shape(node))
    rank = len(out_shape)
    if value.kind not in ("vector", "map") or value.hw != (1, 1) or rank not in (3, 4) \
            or out_shape[:2] != in_shape[:2] or any(d != 1 for d in out_shape[2:]):
        raise UnsupportedModelError(f"{where}: only [batch, C] -> [batch, C, 1(, 1)] (a per-channel gate) is supported")
    return Value(value.nodes, "map", (1, 1), value.root)


def _expand_gate(ctx: Context, node: fx.Node, value: Value, where: str) -> Value:
    """``gate.expand_as(x)`` of a [B, C, 1, 1] gate read only by products: the gate itself (a product broadcasts it)."""
    if value.kind != "map" or value.hw != (1, 1) or any(u.target not in _MUL for u in node.users):
        raise UnsupportedModelError(f"{where}: expand/expand_as is supported only on a [batch, C, 1, 1] gate that is "
                                    "multiplied into a map")
    return value


def _channel_slice(node: fx.Node) -> slice | None:
    """The slice of ``x[:, a:b]`` (channels/features, step 1), else None."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return None
    index = node.args[1]
    if not isinstance(index, tuple) or len(index) != 2 or index[0] != slice(None) or not isinstance(index[1], slice):
        return None
    part = index[1]
    ok = all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (part.start, part.stop))
    return part if ok and part.step in (None, 1) else None


def _slice_channels(ctx: Context, node: fx.Node, value: Value, where: str) -> Value:
    """``x[:, a:b]``: the value's nodes a..b-1 (no new nodes; the slice aliases them)."""
    if value.kind not in ("vector", "map") or value.scale is not None:
        raise UnsupportedModelError(f"{where}: only units or channels of a [batch, C(, H, W)] tensor can be sliced")
    start, stop, _ = _channel_slice(node).indices(len(value.nodes))
    nodes = value.nodes[start:stop]
    if not nodes:
        raise UnsupportedModelError(f"{where}: the channel slice selects nothing")
    return Value(nodes, value.kind, value.hw, value.root)


def _cat_dim_ok(node: fx.Node, args, kwargs, ctx: Context) -> bool:
    tensors = args[0]
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Value) for t in tensors):
        return False
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    rank = len(ctx.shape(node))
    return dim % rank == 1


def _is_global_pool(node: fx.Node, args, kwargs, ctx: Context) -> bool:
    """``x.mean((2, 3))`` of a map, ``x.mean(2)`` / ``x.mean(-1)`` of a sequence."""
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    rank = len(ctx.shape(node.args[0]))
    if rank not in (3, 4) or dims is None:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return sorted(d % rank for d in dims) == list(range(2, rank))


def _placeholder(ctx: Context, node: fx.Node, example: torch.Tensor, env: dict) -> Value | None:
    if any(isinstance(v, Value) for v in env.values()):
        raise UnsupportedModelError(f"{ctx.name}.forward takes several inputs; only one is supported")
    shape = example.shape
    if not example.is_floating_point():  # token ids [B, T]: the Embedding makes the input nodes
        return Value([], "ids", (1, shape[1]), node.name)
    if example.dim() == 2:
        nodes = ctx.builder.new_layer(shape[1], (1, 1), ROLE_INPUT)
        return Value(nodes, "vector", (1, 1), node.name)
    hw = (shape[2], shape[3]) if example.dim() == 4 else (1, shape[2])  # a sequence [C, L] is a 1 x L map
    nodes = ctx.builder.new_layer(shape[1], hw, ROLE_INPUT)
    return Value(nodes, "map", hw, node.name)


def _assign_roles(graph: NeuralGraph, output_nodes: list[int]) -> None:
    """Roles and position ids: own id per input and output, one id per hidden layer."""
    role = graph.node_role
    n_in = int((role == ROLE_INPUT).sum())
    n_out = len(output_nodes)
    pos = n_in + n_out + graph.node_layer - 1
    pos[role == ROLE_INPUT] = torch.arange(n_in)
    out = torch.tensor(output_nodes, dtype=torch.long)
    role[out] = ROLE_OUTPUT
    pos[out] = n_in + torch.arange(n_out)
    graph.node_pos = pos


def _check_output(output: Any, ctx: Context, name: str) -> None:
    if not isinstance(output, Value):
        raise UnsupportedModelError(f"{name}.forward must return one tensor computed from its input")
    if output.kind not in ("vector", "map", "flat", "tokens"):
        raise UnsupportedModelError(f"{name}: the output is a [batch, T, D] token tensor; take x[:, 0] or x.mean(1)")
    if output.scale is not None:
        raise UnsupportedModelError(f"{name}: the output is multiplied by a constant; fold it into the last layer")
    layer = ctx.builder.node_layer
    if len(set(output.nodes)) != len(output.nodes) or any(layer[n] == 0 for n in output.nodes):
        raise UnsupportedModelError(f"{name}: the output repeats neurons or passes an input through unchanged")


def _in_state_order(params: list[ParamEntry], state: dict, buffers: dict, name: str) -> list[ParamEntry]:
    by_name = {p.name: p for p in params}
    missing = [k for k in state if k not in by_name and k not in buffers]
    if missing:
        raise UnsupportedModelError(
            f"{name}: state_dict entry {missing[0]!r} is not used by forward() in a supported way; "
            "remove unused parameters and buffers"
        )
    return [by_name[k] for k in state if k in by_name]


# ---- small helpers -----------------------------------------------------------------


def _resolve(arg: Any, env: dict) -> Any:
    if isinstance(arg, fx.Node):
        return env.get(arg)
    if isinstance(arg, (list, tuple)):
        return type(arg)(_resolve(a, env) for a in arg)
    if isinstance(arg, slice):
        return slice(_resolve(arg.start, env), _resolve(arg.stop, env), _resolve(arg.step, env))
    return arg


def _args(node: fx.Node, env: dict) -> list:
    return [_resolve(a, env) for a in node.args]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _where(node: fx.Node, ctx: Context) -> str:
    """'path (Type): op' of the module whose forward() holds the node."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, (_, cls) = next(reversed(stack.items()))
        return f"{path} ({cls.__name__ if isinstance(cls, type) else cls}): {_op_name(node)}"
    return f"{ctx.name}.forward: {_op_name(node)}"


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"tensor.{target}()"
    if target is getattr and len(node.args) == 2:  # e.g. idx.device: torch.fx cannot follow it
        return f"reading {node.args[0]}.{node.args[1]} (torch.fx cannot follow it; pass capture='export')"
    return getattr(target, "__name__", str(target))


def _unsupported(node: fx.Node, ctx: Context) -> UnsupportedModelError:
    if node.op == "call_module":
        module = ctx.modules[node.target]
        what = f"{node.target} ({type(module).__name__})"
    elif node.op == "get_attr":
        what = f"direct use of tensor attribute {node.target!r}"
    else:
        what = _where(node, ctx)
    return UnsupportedModelError(f"{what} is not supported; nngraph converts: {SUPPORTED}")


def _check_input(example: Any, name: str) -> None:
    ids = isinstance(example, torch.Tensor) and not example.is_floating_point() and not example.is_complex() \
        and example.dtype != torch.bool
    if ids and (example.dim() != 2 or (example < 0).any()):
        raise InputShapeError(f"example_input for {name}: token ids must be non-negative integers shaped [batch, T]")
    if ids:
        return
    if not isinstance(example, torch.Tensor) or not example.is_floating_point():
        raise InputShapeError(
            f"example_input for {name} must be a float tensor shaped [batch, F], [batch, C, L] or [batch, C, H, W] "
            "(or integer token ids [batch, T])"
        )
    if example.dim() not in (2, 3, 4):
        raise InputShapeError(
            f"example_input for {name} has shape {list(example.shape)}; use [batch, F], [batch, C, L] or [batch, C, H, W]"
        )
    if not torch.isfinite(example).all():
        raise NonFiniteError(f"example_input for {name} holds NaN or inf; pass finite values")


def first_unsupported_module(model: nn.Module) -> str | None:
    """'path (Type)' of the first module ``forward`` calls that no conversion rule knows, or None.

    Needs no input (symbolic trace only), so it can name the layer where a guessed input
    fails to run through the model.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - not traceable: to_graph says so itself
        return None
    known = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Flatten, nn.AdaptiveAvgPool2d,
             *conv_transpose.MODULES, *upsample.MODULES, *padding.MODULES, nn.Conv1d, nn.PReLU, *pooling.MODULES, *norms.MODULES,
             nn.MultiheadAttention, nn.Embedding,
             *activations.MODULES, *_PASS_MODULES)
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and type(modules[node.target]) not in known:
            return f"{node.target} ({type(modules[node.target]).__name__})"
    return None


def _check_no_batch_statistics(model: nn.Module) -> None:
    """BatchNorm must use running statistics (tracing runs the model, which would update them)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise UnsupportedModelError(
                f"{path} ({type(module).__name__}) is in training mode; call model.eval() before converting"
            )


def _check_finite(state: dict, name: str) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteError(f"{name}: parameter {key!r} holds NaN or inf; fix or retrain the model before converting")


def _param_dtype(state: dict, name: str) -> torch.dtype:
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) > 1:
        raise UnsupportedModelError(f"{name} mixes parameter dtypes {sorted(map(str, dtypes))}; convert it to one dtype")
    return dtypes.pop() if dtypes else torch.float32


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _first_line(exc)
