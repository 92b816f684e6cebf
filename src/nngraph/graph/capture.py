"""Capture with torch.export: a model that torch.fx cannot trace (HuggingFace transformers) as an
fx graph in the vocabulary the converter already speaks.

``torch.export.export(model, (x,), strict=False)`` runs the model once and records an ATen
graph in which Python control flow, attribute reads and iteration are resolved. ``lower``
rewrites that graph node by node:

- parameters become ``get_attr`` nodes named by their state_dict keys (the graph signature's
  ``inputs_to_parameters``), exactly what torch.fx gives for ``F.linear(x, self.weight)``;
- every node that depends only on shapes, constants and buffers (masks built from ``arange``,
  position ids) is computed once, here, and folded into a constant; the buffers it read are
  kept as the graph's buffers (given back by ``to_params``, as a BatchNorm counter is);
- ``aten.batch_norm`` (eval mode) -> ``F.batch_norm`` on get_attr running statistics; the
  BatchNorm's step counter ``num_batches_tracked``, which no op reads, is kept as a buffer;
- ATen ops become the fx targets of the converter's rules (``aten.linear`` -> ``F.linear``,
  ``aten.view`` -> ``tensor.reshape``, ``aten.split`` -> ``tensor.split``, ...); ops that only
  relabel (dropout in eval mode, ``alias``, ``to`` of the same dtype) vanish;
- patterns become the op they compute: ``addmm(b, x.view(-1, in), W)`` of a HuggingFace
  Conv1D -> ``lm.linear_t(x, W, b)``; ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))`` (GPT-2's
  GELU-new) -> ``F.gelu(x, approximate='tanh')`` and ``x * sigmoid(x)`` -> ``F.silu``, each
  checked numerically against the activation; ``W[index]`` of a constant index -> ``lm.constant_embedding``;
  a constant attention mask -> ``is_causal=True`` (lower-triangular) or no mask (all visible);
  ``out + s * update`` inside a peft LoRA layer -> ``lora.scaled_add(out, update, s)``;
  ``x * cos + cat(-x[..., d/2:], x[..., :d/2]) * sin`` with constant tables -> ``lm.rotary(x, cos, sin)``
  (a product with a constant tensor waits as ``_ConstProduct`` for that sum; anything else reading it
  is refused); ``x[:, :, None].expand(...).reshape(B, H n, T, d)`` -> ``lm.repeat_heads(x, n)``.

An ATen op without a rule is kept as it is, so the converter's refusal names it exactly
(``aten.cumsum.default``). Shapes come from the capture's own metadata (``node.meta['val']``).
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from nngraph.errors import UnsupportedModelError
from nngraph.graph import lm, lora

aten = torch.ops.aten

# ATen op -> (fx op, target) of the converter's vocabulary, arguments passed through.
_FUNCTIONS = {
    aten.linear.default: F.linear,
    aten.conv1d.default: F.conv1d,
    aten.conv2d.default: F.conv2d,
    aten.add.Tensor: operator.add,
    aten.sub.Tensor: operator.sub,
    aten.mul.Tensor: operator.mul,
    aten.div.Tensor: operator.truediv,
    aten.relu.default: F.relu,
    aten.silu.default: F.silu,
    aten.tanh.default: torch.tanh,
    aten.sigmoid.default: torch.sigmoid,
    aten.sin.default: torch.sin,
    aten.flatten.using_ints: torch.flatten,
    aten.cat.default: torch.cat,
    aten.glu.default: F.glu,
    aten.pow.Tensor_Scalar: operator.pow,  # x.pow(2) of a hand-written norm (handwritten.py)
    aten.sqrt.default: torch.sqrt,
    aten.rsqrt.default: torch.rsqrt,
    aten.rms_norm.default: F.rms_norm,
    aten.stack.default: torch.stack,
    aten.max_pool2d.default: F.max_pool2d,  # pooling of a CNN saved with torch.export (.pt2 zoos)
    aten.avg_pool2d.default: F.avg_pool2d,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
}
_METHODS = {
    aten.transpose.int: "transpose",
    aten.permute.default: "permute",
    aten.split.Tensor: "split",
    aten.split_with_sizes.default: "split",
    aten.chunk.default: "chunk",
    aten.unsqueeze.default: "unsqueeze",
    aten.mean.dim: "mean",
    aten.unbind.int: "unbind",
    aten.var.dim: "var",
    aten.var.correction: "var",
    aten.expand.default: "expand",
}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_ALIASES = {aten.alias.default, aten.clone.default, aten.contiguous.default, aten.detach.default,
            aten.lift_fresh_copy.default}
_CASTS = {aten.to.dtype_layout, aten.to.dtype, aten._to_copy.default, aten.to.device}
_DROPPED = {aten._assert_tensor_metadata.default}
_HF_FLAGS = {"use_cache": False, "return_dict": False, "output_attentions": False, "output_hidden_states": False}
_GELU_TANH = {0.5, 0.044715, math.sqrt(2 / math.pi), 1.0, 3.0}


@dataclass
class Lowered:
    """An fx GraphModule in the converter's vocabulary (``tensor_meta`` on every tensor node) and the
    state_dict buffers that only constants were computed from."""

    gm: fx.GraphModule
    buffers: dict[str, torch.Tensor]


@dataclass
class _Const:
    """A value computed at capture time (depends on no input and no parameter)."""

    value: Any


@dataclass
class _Param:
    """A parameter placeholder: its state_dict names (several for a tied weight)."""

    names: list[str]


@dataclass
class _ConstProduct:
    """``x * C`` of a lowered value x and a constant tensor C, waiting for the rotary sum that reads it
    (``q * cos + rotate_half(q) * sin``); ``factor`` is x's node in the exported graph."""

    node: fx.Node
    table: torch.Tensor
    factor: fx.Node


@dataclass
class _FlatLead:
    """``x.view(-1, F)`` of a [B, T, F] value, waiting for the ``addmm`` / ``mm`` that reads it."""

    node: fx.Node


def export_graph(model: nn.Module, example: torch.Tensor, name: str) -> Lowered:
    """Capture ``model`` on ``example`` with torch.export and lower the ATen graph (see the module docstring)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        parameters = {}
    kwargs = {k: v for k, v in _HF_FLAGS.items() if k in parameters}
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), kwargs=kwargs, strict=False)
    except Exception as exc:  # noqa: BLE001 - export raises many kinds; all mean "cannot capture"
        raise UnsupportedModelError(f"torch.export cannot capture {name} ({_first_line(exc)})") from None
    return _Lowering(program, model, name, kwargs).run()


class _Lowering:
    """One pass over the exported graph, in order (see the module docstring)."""

    def __init__(self, program: torch.export.ExportedProgram, model: nn.Module, name: str, kwargs: dict):
        self.program, self.model, self.name, self.kwargs = program, model, name, kwargs
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.state = dict(model.state_dict(keep_vars=True))
        self.names: dict[int, list[str]] = {}  # every state_dict name of each tensor (tied weights have several)
        for path, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            self.names.setdefault(id(tensor), []).append(path)
        self.attrs: dict[str, fx.Node] = {}

    def run(self) -> Lowered:
        signature = self.program.graph_signature
        parameters, buffers = signature.inputs_to_parameters, signature.inputs_to_buffers
        constants = signature.inputs_to_lifted_tensor_constants
        user_inputs = [n for n in self.program.graph.nodes if n.op == "placeholder" and n.name in signature.user_inputs]
        first_input = user_inputs[0] if user_inputs else None
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in parameters:
                    self.env[node] = _Param(self.names[id(self.state[parameters[node.name]])])
                elif node.name in buffers:
                    self.env[node] = _Const(_Buffer(buffers[node.name], self.program.state_dict.get(
                        buffers[node.name], self.program.constants.get(buffers[node.name]))))
                elif node.name in constants:
                    self.env[node] = _Const(self.program.constants[constants[node.name]])
                elif node is first_input:
                    self.env[node] = self.graph.placeholder(node.name)
                    self.env[node].meta["tensor_meta"] = _tensor_meta(node.meta["val"])
                else:  # the flags passed as keyword arguments (use_cache=False, ...)
                    self.env[node] = _Const(self.kwargs.get(node.name))
            elif node.op == "output":
                self._output(node)
            else:
                self.env[node] = self._lower(node)
        self.graph.eliminate_dead_code()
        gm = fx.GraphModule(self.model, self.graph)
        return Lowered(gm, self.buffers)

    # ---- nodes -------------------------------------------------------------------
    def _get_attr(self, target: str, like: fx.Node) -> fx.Node:
        node = self.graph.get_attr(target)
        node.meta["tensor_meta"] = _extract_tensor_metadata(self.state[target].detach())
        return node

    def _emit(self, target: Any, args: tuple, kwargs: dict, like: fx.Node, method: bool = False,
              val: Any = None) -> fx.Node:
        """A node of the lowered graph with ``like``'s shape (or ``val``'s) and module path."""
        node = self.graph.create_node("call_method" if method else "call_function", target, args, kwargs)
        meta = like.meta.get("val") if val is None else val
        node.meta["tensor_meta"] = _tensor_meta(meta)
        stack = like.meta.get("nn_module_stack")
        if stack:  # export: {key: (path, type)}; the converter reads fx's {path: (path, type)}
            node.meta["nn_module_stack"] = {path: (path, cls) for path, cls in stack.values()}
        return node

    def _lower(self, node: fx.Node) -> Any:
        if node.op != "call_function":
            raise UnsupportedModelError(f"{self.name}: torch.export produced a {node.op} node ({node.target}); "
                                        "it cannot be converted")
        target = node.target
        args = tuple(self._arg(a, node) for a in node.args)
        kwargs = {k: self._arg(v, node) for k, v in node.kwargs.items()}
        if target in _DROPPED:
            return None
        if _all_constant(args, kwargs):
            return self._fold(node, args, kwargs)
        if target is aten.mul.Tensor and not kwargs:
            scaled = _constant_product(node, args)
            if scaled is not None:
                return scaled
        pattern = self._pattern(node, args, kwargs)
        if pattern is not None:
            return pattern
        if target is aten.embedding.default:
            return self._embedding(node, args)
        if target is aten.scaled_dot_product_attention.default:
            return self._attention(node, args, kwargs)
        args, kwargs = self._materialise(args), self._materialise(kwargs)
        if target in _ALIASES or (target in _CASTS and _same_dtype(node, args[0])):
            return args[0]
        if target is aten.dropout.default:
            if args[2] and args[1]:
                raise UnsupportedModelError(f"{_where(node, self.name)} runs dropout in training mode; call model.eval() "
                                            "before converting")
            return args[0]
        if target in _RESHAPES:
            return self._reshape(node, args)
        if target is operator.getitem:
            return self._emit(operator.getitem, args, {}, node)
        if target is aten.layer_norm.default:
            return self._emit(F.layer_norm, args[:5], {}, node)
        if target is aten.batch_norm.default:  # (x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
            x, weight, bias, mean, var, training, momentum, eps = args[:8]
            return self._batch_norm(node, (x, mean, var, weight, bias, training, momentum, eps))
        if target is aten.gelu.default:
            return self._emit(F.gelu, args, kwargs, node)
        if target in (aten.softmax.int, aten._softmax.default):
            return self._emit(F.softmax, (args[0], args[1]), {}, node)
        if target is aten.select.int and args[1] % len(_shape(node.args[0])) == 1:  # x[:, i]
            return self._emit(operator.getitem, (args[0], (slice(None), args[2])), {}, node)
        if target is aten.slice.Tensor:
            return self._slice(node, args)
        if target in _FUNCTIONS:
            return self._emit(_FUNCTIONS[target], args, kwargs, node)
        if target in _METHODS:
            return self._emit(_METHODS[target], args, kwargs, node, method=True)
        return self._emit(target, args, kwargs, node)  # no rule: the converter names the ATen op

    def _arg(self, arg: Any, user: fx.Node) -> Any:
        if isinstance(arg, fx.Node):
            value = self.env[arg]
            return self._parameter(value, user) if isinstance(value, _Param) else value
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._arg(a, user) for a in arg)
        return arg

    def _parameter(self, param: _Param, user: fx.Node) -> fx.Node:
        """The get_attr of a parameter, under the name of the module that reads it (a tied weight has several:
        GPT-2's lm_head reads ``lm_head.weight``, its embedding ``transformer.wte.weight``), as torch.fx names it."""
        stack = user.meta.get("nn_module_stack") or {}
        path = next(reversed(stack.values()))[0] if stack else ""
        name = next((n for n in param.names if n.rpartition(".")[0] == path), param.names[0])
        if name not in self.attrs:
            self.attrs[name] = self._get_attr(name, user)
        return self.attrs[name]

    def _materialise(self, arg: Any) -> Any:
        """Arguments for an emitted node: constants as plain values (a buffer read by the network
        becomes a get_attr), a waiting ``x.view(-1, F)`` as its reshape."""
        if isinstance(arg, _Const):
            value = arg.value
            if isinstance(value, _Buffer):
                return self._get_attr(value.name, next(iter(self.env)))
            if isinstance(value, torch.Tensor):
                if value.numel() == 1 and value.dim() == 0:
                    return value.item()
                raise UnsupportedModelError(f"{self.name}: a constant tensor of shape {list(value.shape)} is used by the "
                                            "network (only constant attention masks and indices are supported)")
            return value
        if isinstance(arg, _FlatLead):
            return arg.node
        if isinstance(arg, _ConstProduct):
            raise UnsupportedModelError(f"{self.name}: a constant tensor of shape {list(arg.table.shape)} multiplies a "
                                        "value of the network (only rotary position embeddings, q * cos + "
                                        "rotate_half(q) * sin, are supported)")
        if isinstance(arg, dict):
            return {k: self._materialise(v) for k, v in arg.items()}
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._materialise(a) for a in arg)
        return arg

    def _fold(self, node: fx.Node, args: tuple, kwargs: dict) -> _Const:
        """A node of constants only: computed now (buffers it reads are kept as buffers)."""
        values = _unwrap(args, self.buffers), _unwrap(kwargs, self.buffers)
        with torch.no_grad():
            return _Const(node.target(*values[0], **values[1]))

    # ---- rules ------------------------------------------------------------------------
    def _batch_norm(self, node: fx.Node, args: tuple) -> fx.Node:
        """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``; the
        BatchNorm's step counter (``num_batches_tracked``, read by no op) is kept as a buffer."""
        mean = args[1]
        if isinstance(mean, fx.Node) and mean.op == "get_attr":
            counter = f"{mean.target.rpartition('.')[0]}.num_batches_tracked".lstrip(".")
            if counter in self.state:
                self.buffers[counter] = self.state[counter]
        return self._emit(F.batch_norm, args, {}, node)

    def _reshape(self, node: fx.Node, args: tuple) -> Any:
        source, shape = args[0], tuple(_shape(node))
        repeated = _repeated_heads(node)
        if repeated is not None and isinstance(self.env.get(repeated[0]), fx.Node):
            return self._emit(lm.repeat_heads, (self.env[repeated[0]], repeated[1]), {}, node)
        if isinstance(source, fx.Node) and tuple(source.meta["tensor_meta"].shape) == shape:
            return source  # the lowered value already has this shape (a Conv1D's view back, a heads reshape)
        in_shape = tuple(source.meta["tensor_meta"].shape) if isinstance(source, fx.Node) else ()
        if len(in_shape) == 3 and len(shape) == 2 and shape == (in_shape[0] * in_shape[1], in_shape[2]) \
                and all(u.target in (aten.addmm.default, aten.mm.default) for u in node.users):
            return _FlatLead(source)
        return self._emit("reshape", (source, shape), {}, node, method=True)

    def _slice(self, node: fx.Node, args: tuple) -> Any:
        """``aten.slice(x, dim, start, end)``: the whole axis is x itself, else ``x[..., a:b]``."""
        source = args[0]
        dim = args[1] if len(args) > 1 else 0
        start, end = (args[2] if len(args) > 2 else None), (args[3] if len(args) > 3 else None)
        step = args[4] if len(args) > 4 else 1
        in_shape = _shape(node.args[0])
        if tuple(_shape(node)) == tuple(in_shape):
            return source
        index = (slice(None),) * (dim % len(in_shape)) + (slice(start, min(end, in_shape[dim]) if end is not None
                                                                 else None, None if step == 1 else step),)
        return self._emit(operator.getitem, (source, index), {}, node)

    def _pattern(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        """A subgraph ending at ``node`` that computes one known op (Conv1D, GELU-new, SiLU), or None."""
        target = node.target
        if target is aten.addmm.default and isinstance(args[1], _FlatLead) and len(args) == 3 and not kwargs:
            flat = args[1].node
            shape = (*flat.meta["tensor_meta"].shape[:2], _shape(node)[-1])
            return self._emit(lm.linear_t, (flat, args[2], args[0]), {}, node, val=_meta_tensor(shape, node))
        if target is aten.add.Tensor and len(args) == 2 and all(isinstance(a, _ConstProduct) for a in args):
            return self._rotary(node, args)
        if target is aten.add.Tensor and _in_lora_layer(node):
            for out, scaled in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
                pair = _scalar_mul(scaled)
                if pair and isinstance(self.env.get(out), fx.Node) and isinstance(self.env.get(pair[0]), fx.Node):
                    return self._emit(lora.scaled_add, (self.env[out], self.env[pair[0]], pair[1]), {}, node)
        if target is aten.mul.Tensor:
            x = _gelu_tanh_input(node)
            if x is not None and isinstance(self.env.get(x), fx.Node) and _matches(_gelu_new(node), F.gelu, "tanh"):
                return self._emit(F.gelu, (self.env[x],), {"approximate": "tanh"}, node)
            x = _silu_input(node)
            if x is not None and isinstance(self.env.get(x), fx.Node):
                return self._emit(F.silu, (self.env[x],), {}, node)
        return None

    def _rotary(self, node: fx.Node, args: tuple) -> fx.Node:
        """``x * cos + rotate_half(x) * sin`` (rotary position embeddings, LLaMA's ``apply_rotary_pos_emb``),
        rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]), with cos and sin [T, d] tables known at capture
        time -> ``lm.rotary(x, cos, sin)``."""
        shape = tuple(_shape(node))
        for plain, rotated in ((args[0], args[1]), (args[1], args[0])):
            if _rotate_half_source(rotated.factor) is plain.factor:
                cos, sin = _per_token(plain.table, shape), _per_token(rotated.table, shape)
                if cos is None or sin is None:
                    raise UnsupportedModelError(f"{_where(node, self.name)}: rotary tables that differ between "
                                                "batch entries or heads are not supported")
                return self._emit(lm.rotary, (plain.node, _rows(cos), _rows(sin)), {}, node)
        raise UnsupportedModelError(f"{_where(node, self.name)}: a sum of products with constant tensors that is not "
                                    "a rotary position embedding (x * cos + rotate_half(x) * sin) is not supported")

    def _embedding(self, node: fx.Node, args: tuple) -> Any:
        weight, index = args[0], args[1]
        if isinstance(index, _Const):  # positions, token types: W[index] with the index known now
            ids = _unwrap(index, self.buffers)  # a tensor computed at capture time
            rows = ids.reshape(-1, ids.shape[-1])
            if not bool((rows == rows[:1]).all()):
                raise UnsupportedModelError(f"{_where(node, self.name)}: constant indices that differ between batch "
                                            "entries are not supported")
            shape = (*_shape(node)[:-2], _shape(node)[-2], _shape(node)[-1])
            return self._emit(lm.constant_embedding, (weight, tuple(rows[0].tolist())), {}, node,
                              val=_meta_tensor(shape, node))
        return self._emit(F.embedding, (self._materialise(index), weight), {}, node)

    def _attention(self, node: fx.Node, args: tuple, kwargs: dict) -> fx.Node:
        """``F.scaled_dot_product_attention`` with its constant mask read as causal or absent."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        bound = dict(zip(names, args)) | kwargs
        mask = bound.pop("attn_mask", None)
        if isinstance(mask, _Const):
            kind = _mask_kind(_unwrap(mask, self.buffers))
            if kind is None:
                raise UnsupportedModelError(
                    f"{_where(node, self.name)}: a constant attention mask other than causal (lower-triangular) or "
                    "all-visible is not supported")
            bound["is_causal"] = bound.get("is_causal", False) or kind == "causal"
        elif mask is not None:
            raise UnsupportedModelError(f"{_where(node, self.name)}: an attention mask computed from the input is "
                                        "not supported (pass no attention_mask, or a causal one)")
        bound = self._materialise(bound)
        q, k, v = bound.pop("query"), bound.pop("key"), bound.pop("value")
        return self._emit(F.scaled_dot_product_attention, (q, k, v), bound, node)

    def _output(self, node: fx.Node) -> None:
        outputs = [self.env[a] for a in _flat(node.args[0])]
        self._materialise([o for o in outputs if isinstance(o, _ConstProduct)])  # refused: no rotary sum read it
        tensors = [o for o in outputs if isinstance(o, fx.Node)]
        if len(tensors) != 1:
            raise UnsupportedModelError(f"{self.name}.forward returns {len(tensors)} tensors computed from its input; "
                                        "only one output is supported")
        self.graph.output(tensors[0])


@dataclass
class _Buffer:
    """A state_dict buffer read at capture time."""

    name: str
    tensor: torch.Tensor


def _unwrap(arg: Any, used: dict[str, torch.Tensor]) -> Any:
    """Concrete values of constants; records the buffers read in ``used``."""
    if isinstance(arg, _Const):
        return _unwrap(arg.value, used)
    if isinstance(arg, _Buffer):
        used[arg.name] = arg.tensor
        return arg.tensor
    if isinstance(arg, dict):
        return {k: _unwrap(v, used) for k, v in arg.items()}
    if isinstance(arg, (list, tuple)):
        return type(arg)(_unwrap(a, used) for a in arg)
    return arg


def _all_constant(args: tuple, kwargs: dict) -> bool:
    """Whether a node reads no value of the network (only constants, buffers and numbers)."""
    return not any(isinstance(a, (fx.Node, _FlatLead, _ConstProduct)) for a in _flat(list(args) + list(kwargs.values())))


def _constant_product(node: fx.Node, args: tuple) -> _ConstProduct | None:
    """``x * C`` of a lowered x and a constant tensor C of more than one value, else None."""
    if len(args) != 2:
        return None
    for i in (0, 1):
        value, const = args[i], args[1 - i]
        if isinstance(value, fx.Node) and isinstance(const, _Const) and isinstance(const.value, torch.Tensor) \
                and const.value.numel() > 1:
            return _ConstProduct(value, const.value, node.args[i])
    return None


def _repeated_heads(node: fx.Node) -> tuple[fx.Node, int] | None:
    """(x, n) of ``x[:, :, None].expand(B, H, n, T, d).reshape(B, H n, T, d)`` (grouped-query attention's
    ``repeat_kv``: every key/value head read by n query heads), in the exported graph; else None."""
    expand = node.args[0]
    if not isinstance(expand, fx.Node) or expand.target is not aten.expand.default:
        return None
    unsqueeze = expand.args[0]
    if not isinstance(unsqueeze, fx.Node) or unsqueeze.target is not aten.unsqueeze.default or unsqueeze.args[1] != 2:
        return None
    x = unsqueeze.args[0]
    b, heads, t, d = _shape(x) if len(_shape(x)) == 4 else (None,) * 4
    if heads is None or len(_shape(expand)) != 5:
        return None
    n = _shape(expand)[2]
    if tuple(_shape(expand)) != (b, heads, n, t, d) or tuple(_shape(node)) != (b, heads * n, t, d):
        return None
    return x, n


def _rotate_half_source(node: Any) -> fx.Node | None:
    """x of ``cat((-x[..., d/2:], x[..., :d/2]), -1)`` (in the exported graph), else None."""
    if not isinstance(node, fx.Node) or node.target is not aten.cat.default or len(node.args[0]) != 2:
        return None
    rank = len(_shape(node))
    if (node.args[1] if len(node.args) > 1 else 0) % rank != rank - 1:
        return None
    neg, low = node.args[0]
    if not isinstance(neg, fx.Node) or neg.target is not aten.neg.default:
        return None
    high, d = neg.args[0], _shape(node)[-1]
    for part, (start, end) in ((high, (d // 2, d)), (low, (0, d // 2))):
        if not isinstance(part, fx.Node) or part.target is not aten.slice.Tensor or part.args[1] % rank != rank - 1:
            return None
        if (part.args[2] if len(part.args) > 2 else 0) != start or min(part.args[3] if len(part.args) > 3 else d,
                                                                        d) != end:
            return None
    return low.args[0] if high.args[0] is low.args[0] and d % 2 == 0 else None


def _per_token(table: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A constant ``table`` broadcast to ``shape`` [..., T, d] as one [T, d] table, or None where it differs
    across the leading axes."""
    try:
        full = table.expand(shape).reshape(-1, *shape[-2:])
    except RuntimeError:
        return None
    return full[0] if bool((full == full[:1]).all()) else None


def _rows(table: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    """A [T, d] table as nested tuples (an fx node's constant argument)."""
    return tuple(tuple(row) for row in table.tolist())  # Python floats: exact for float32 and float64


def _flat(arg: Any) -> list:
    if isinstance(arg, (list, tuple)):
        return [x for a in arg for x in _flat(a)]
    return [arg]


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["val"].shape)


def _tensor_meta(val: Any) -> Any:
    if isinstance(val, (list, tuple)):
        return [_tensor_meta(v) for v in val]
    if isinstance(val, torch.Tensor):
        return _extract_tensor_metadata(torch.empty(val.shape, dtype=val.dtype, device="meta"))
    return None


def _meta_tensor(shape: tuple[int, ...], like: fx.Node) -> torch.Tensor:
    return torch.empty(shape, dtype=like.meta["val"].dtype, device="meta")


def _same_dtype(node: fx.Node, source: Any) -> bool:
    return isinstance(source, fx.Node) and node.meta["val"].dtype == source.meta["tensor_meta"].dtype


def _mask_kind(mask: torch.Tensor) -> str | None:
    """'causal' (lower-triangular), 'none' (every key visible) or None, for a boolean or additive mask [..., Tq, Tk]."""
    visible = mask if mask.dtype == torch.bool else mask == 0
    if not mask.dtype == torch.bool and not bool(((mask == 0) | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
        return None
    t_q, t_k = visible.shape[-2:]
    if bool(visible.all()):
        return "none"
    causal = torch.ones(t_q, t_k, dtype=torch.bool, device=mask.device).tril()
    return "causal" if bool((visible == causal).all()) else None


def _args_of(node: Any, target: Any) -> tuple | None:
    return tuple(node.args) if isinstance(node, fx.Node) and node.target is target else None


def _scalar_mul(node: Any) -> tuple[Any, float] | None:
    """(x, c) of ``x * c`` or ``c * x`` for a Python number c."""
    args = _args_of(node, aten.mul.Tensor)
    if args is None:
        return None
    if isinstance(args[1], (int, float)):
        return args[0], float(args[1])
    if isinstance(args[0], (int, float)):
        return args[1], float(args[0])
    return None


def _gelu_tanh_input(node: fx.Node) -> fx.Node | None:
    """x of ``(0.5 x) * (1 + tanh(c1 (x + c2 x^3)))`` (either factor order), else None."""
    for half, rest in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        scaled = _scalar_mul(half)
        plus = _args_of(rest, aten.add.Tensor)
        if scaled is None or plus is None or plus[1] != 1.0:
            continue
        x = scaled[0]
        inner = _scalar_mul(_args_of(plus[0], aten.tanh.default)[0]) if _args_of(plus[0], aten.tanh.default) else None
        poly = _args_of(inner[0], aten.add.Tensor) if inner else None
        cubic = _scalar_mul(poly[1]) if poly and poly[0] is x else None
        power = _args_of(cubic[0], aten.pow.Tensor_Scalar) if cubic else None
        if power and power[0] is x and power[1] == 3:
            return x
    return None


def _gelu_new(node: fx.Node):
    """The formula of a matched GELU-new with its own constants, as a function of x."""
    for half, rest in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        scaled = _scalar_mul(half)
        if scaled is None or _args_of(rest, aten.add.Tensor) is None:
            continue
        tanh_arg = _scalar_mul(_args_of(_args_of(rest, aten.add.Tensor)[0], aten.tanh.default)[0])
        c_outer = tanh_arg[1]
        c_cubic = _scalar_mul(_args_of(tanh_arg[0], aten.add.Tensor)[1])[1]
        half_c = scaled[1]
        return lambda x: (half_c * x) * (1.0 + torch.tanh(c_outer * (x + c_cubic * x.pow(3))))
    raise AssertionError("not a GELU-new")


def _matches(formula, activation, approximate: str) -> bool:
    """Whether ``formula`` equals the activation to float32 rounding on [-10, 10]."""
    x = torch.linspace(-10, 10, 4001, dtype=torch.float64, device="cpu")  # a check at capture time, on the host
    reference = activation(x, approximate=approximate)
    return bool(((formula(x) - reference).abs() <= 1e-7 * (1 + reference.abs())).all())


def _in_lora_layer(node: fx.Node) -> bool:
    """Whether ``node`` runs in a peft LoRA layer's own forward (not in one of its sub-modules)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return False
    cls = next(reversed(stack.values()))[1]
    name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return name.startswith("peft.tuners.lora.")


def _silu_input(node: fx.Node) -> fx.Node | None:
    """x of ``x * sigmoid(x)`` (either order), else None."""
    a, b = node.args[:2]
    for x, s in ((a, b), (b, a)):
        if _args_of(s, aten.sigmoid.default) is not None and _args_of(s, aten.sigmoid.default)[0] is x:
            return x
    return None


def _where(node: fx.Node, name: str) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = next(reversed(stack.values()))
        return f"{path} ({getattr(cls, '__name__', cls)}): {node.target}"
    return f"{name}.forward: {node.target}"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
