"""Activations: ``Sine`` (the SIREN activation sin(w0 * z)), the activation modules by the
names of ``graph.ACTIVATIONS``, and what nngraph converts: modules, functions and tensor
methods, with their parameters.

Each activation becomes ``(act, p1, p2)``: an ``ACT_*`` id and the node features
X_ACT_PARAM and X_ACT_PARAM2 that the executor reads (``_activate`` in execute.py):

    relu, gelu, gelu_tanh, silu, tanh, sigmoid, selu, mish, hardswish, hardsigmoid: no parameter
    leaky_relu      max(z, 0) + p1 min(z, 0)             (p1 = negative slope)
    hardtanh        min(max(z, p1), p2)                  (ReLU6 = hardtanh(0, 6))
    elu             z if z > 0 else p1 (exp(z) - 1)      (p1 = alpha)
    softplus        z if p1 z > p2 else log(1 + exp(p1 z)) / p1   (p1 = beta, p2 = threshold)

    sine            sin(p1 z)                            (p1 = w0; the module ``Sine``)

PReLU (a LeakyReLU whose slope is a parameter) is converted by ``ops.prelu``, ``sin(w0 * z)``
written as a function by ``ops.sine``. In-place forms (``inplace=True``, ``relu_``) are the same activation; the
conversion then also rebinds the mutated tensor (see ``mutates``).
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nngraph.graph.graph import (
    ACT_ELU,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_HARDTANH,
    ACT_LEAKY_RELU,
    ACT_MISH,
    ACT_RELU,
    ACT_SELU,
    ACT_SIGMOID,
    ACT_SILU,
    ACT_SINE,
    ACT_SOFTPLUS,
    ACT_TANH,
)


class Sine(nn.Module):
    """The SIREN activation: sin(w0 * z)."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * z)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


# Activation name (as in ``graph.ACTIVATIONS``) -> the module that computes it with its defaults.
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "sine": Sine,
}


Activation = tuple[int, float, float]  # (ACT_*, X_ACT_PARAM, X_ACT_PARAM2)

MODULES: dict[type, Callable[[nn.Module], Activation]] = {
    nn.ReLU: lambda m: (ACT_RELU, 0.0, 0.0),
    nn.GELU: lambda m: (ACT_GELU_TANH if m.approximate == "tanh" else ACT_GELU, 0.0, 0.0),
    nn.SiLU: lambda m: (ACT_SILU, 0.0, 0.0),
    nn.Tanh: lambda m: (ACT_TANH, 0.0, 0.0),
    nn.Sigmoid: lambda m: (ACT_SIGMOID, 0.0, 0.0),
    nn.LeakyReLU: lambda m: (ACT_LEAKY_RELU, float(m.negative_slope), 0.0),
    nn.ReLU6: lambda m: (ACT_HARDTANH, 0.0, 6.0),
    nn.Hardtanh: lambda m: (ACT_HARDTANH, float(m.min_val), float(m.max_val)),
    nn.Hardswish: lambda m: (ACT_HARDSWISH, 0.0, 0.0),
    nn.Hardsigmoid: lambda m: (ACT_HARDSIGMOID, 0.0, 0.0),
    nn.ELU: lambda m: (ACT_ELU, float(m.alpha), 0.0),
    nn.SELU: lambda m: (ACT_SELU, 0.0, 0.0),
    nn.Softplus: lambda m: (ACT_SOFTPLUS, float(m.beta), float(m.threshold)),
    nn.Mish: lambda m: (ACT_MISH, 0.0, 0.0),
    Sine: lambda m: (ACT_SINE, float(m.w0), 0.0),
}

# target -> (act, positional parameters after the input with their defaults, has an ``inplace`` argument)
_F = tuple[int, tuple[tuple[str, float], ...], bool]
FUNCTIONS: dict[Any, _F] = {
    **{t: (ACT_RELU, (), True) for t in (torch.relu, F.relu, "relu")},
    **{t: (ACT_TANH, (), False) for t in (torch.tanh, F.tanh, "tanh")},
    **{t: (ACT_SIGMOID, (), False) for t in (torch.sigmoid, F.sigmoid, "sigmoid")},
    **{t: (ACT_SELU, (), True) for t in (torch.selu, F.selu)},
    F.silu: (ACT_SILU, (), True),
    F.gelu: (ACT_GELU, (), False),  # approximate="tanh" -> ACT_GELU_TANH (parse)
    F.leaky_relu: (ACT_LEAKY_RELU, (("negative_slope", 0.01),), True),
    F.relu6: (ACT_HARDTANH, (), True),  # p = (0, 6) (parse)
    F.hardtanh: (ACT_HARDTANH, (("min_val", -1.0), ("max_val", 1.0)), True),
    F.hardswish: (ACT_HARDSWISH, (), True),
    F.hardsigmoid: (ACT_HARDSIGMOID, (), True),
    F.elu: (ACT_ELU, (("alpha", 1.0),), True),
    F.softplus: (ACT_SOFTPLUS, (("beta", 1.0), ("threshold", 20.0)), False),
    F.mish: (ACT_MISH, (), True),
}
# Always in place: the trailing-underscore forms.
_INPLACE: dict[Any, Any] = {
    torch.relu_: torch.relu, F.relu_: F.relu, "relu_": "relu", torch.sigmoid_: torch.sigmoid,
    "sigmoid_": "sigmoid", torch.tanh_: torch.tanh, "tanh_": "tanh", torch.selu_: torch.selu,
    F.elu_: F.elu, F.leaky_relu_: F.leaky_relu, F.hardtanh_: F.hardtanh,
}


def parse_function(node: fx.Node, args: list, kwargs: dict) -> Activation | None:
    """``(act, p1, p2)`` of a call_function / call_method activation, None if it is not one."""
    target = _INPLACE.get(node.target, node.target)
    entry = FUNCTIONS.get(target)
    if entry is None:
        return None
    act, names, _ = entry
    values = [args[1 + k] if len(args) > 1 + k else kwargs.get(name, default) for k, (name, default) in enumerate(names)]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    if target is F.gelu and kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh":
        act = ACT_GELU_TANH
    if target is F.relu6:
        values = [0.0, 6.0]
    values = [float(v) for v in values] + [0.0] * (2 - len(values))
    return act, values[0], values[1]


def mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes into its first argument (``relu_``, ``inplace=True``, ``add_``, setitem)."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return isinstance(node.target, str) and node.target.endswith("_")
    if node.op != "call_function":
        return False
    if node.target is operator.setitem or node.target in _INPLACE:
        return True
    entry = FUNCTIONS.get(node.target)
    if entry is None or not entry[2]:
        return False
    at = 1 + len(entry[1])  # position of the inplace argument
    return bool(node.args[at] if len(node.args) > at else node.kwargs.get("inplace", False))
