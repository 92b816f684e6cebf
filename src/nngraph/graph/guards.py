"""Refusals before conversion: what would make a graph silently differ from the model.

- forward hooks and pre-hooks (on any module, or registered globally) change what a module
  computes without showing up in the trace: a hook that rescales a layer's output would
  give a graph that is exact for the module and wrong for the model;
- tensors on the ``meta`` device have shapes but no values;
- a forward that returns a tuple or a dict has several outputs, a NeuralGraph one.

Each refusal is one ``UnsupportedModelError`` / ``InputShapeError`` line naming the module
and the fix.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module

from nngraph.errors import InputShapeError, UnsupportedModelError


def check_no_hooks(model: nn.Module, name: str) -> None:
    """Refuse forward hooks / pre-hooks, on a module of ``model`` or global."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        raise UnsupportedModelError(
            f"{name}: global forward hooks are registered (nn.modules.module.register_module_forward_hook / "
            "_pre_hook), which nngraph cannot represent; remove them (handle.remove()) before converting"
        )
    for path, module in model.named_modules():
        which = ("forward hook" if module._forward_hooks
                 else "forward pre-hook" if module._forward_pre_hooks else None)
        if which:
            raise UnsupportedModelError(
                f"{f'{name}.{path}' if path else name} ({type(module).__name__}) has a {which}, which nngraph cannot represent; remove it "
                "(handle.remove()) or write what it does into forward()"
            )


def check_not_meta(model: nn.Module, example: Any, name: str) -> None:
    """Refuse parameters, buffers or an example input on the meta device (shapes without values)."""
    for path, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise UnsupportedModelError(
                f"{name}: {path} is on the meta device (shapes without values); materialise the model first "
                "(model.to_empty(device='cpu') then load_state_dict)"
            )
    if isinstance(example, torch.Tensor) and example.is_meta:
        raise InputShapeError(f"example_input for {name} is on the meta device; pass a real tensor (e.g. torch.zeros)")


def check_one_output(output: Any, name: str) -> None:
    """Refuse a forward that returns a tuple/list or a dict (a NeuralGraph has one output tensor)."""
    if isinstance(output, dict):
        raise UnsupportedModelError(
            f"{name}.forward returns a dict ({', '.join(map(str, list(output)[:4]))}); nngraph converts a network with one "
            "output tensor: return one tensor (torch.cat the outputs), or convert each head as its own model"
        )
    if isinstance(output, (tuple, list)):
        raise UnsupportedModelError(
            f"{name}.forward returns a {type(output).__name__} of {len(output)}; nngraph converts a network with one "
            "output tensor: return one tensor (torch.cat the outputs), or convert each head as its own model"
        )
