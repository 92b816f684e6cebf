"""Command-line options generated from a config dataclass's fields (``TrainConfig``).

Each field becomes one option: ``--batch-size`` for ``batch_size`` (or the field's
``flag``), parsed by the field's type (int, float, str; a bool is a switch; a dict is a
JSON object), with its help, metavar and choices from the field's metadata and
``(default: X)`` from its default. Every option's parser default is None, so
``config_values`` returns only the options given and the dataclass fills in the rest:
the default is written once, on the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

from nngraph.errors import NNGraphError
from nngraph.training.config import option_name, value_type


def json_object(text: str) -> dict:
    """A JSON object from the command line (``--model-args '{"heads": 4}'``)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}; write e.g. '{{\"hidden\": 64}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-args takes a JSON object")
    return value


def add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of dataclass ``cls`` (see the module's docstring)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, value_type(hints[f.name])
        text = meta.get("help", "")
        if f.default not in (dataclasses.MISSING, None) and kind is not bool and "default" not in text:
            text += f" (default: {f.default})"
        required = meta.get("cli_required")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
            if required is None else required
        if kind is bool:
            parser.add_argument(option_name(f), dest=f.name, action="store_true", default=None, help=text)
            continue
        choices = meta.get("choices")
        parser.add_argument(option_name(f), dest=f.name, type=json_object if kind is dict else kind, default=None,
                            required=required, metavar=meta.get("metavar"), help=text,
                            choices=list(choices() if callable(choices) else choices) if choices else None)


def config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` whose options were given; two options that set one thing (a
    field's ``conflicts``) are refused in one line."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in given:
        conflict = fields[name].metadata.get("conflicts")
        if conflict and conflict[0] in given:
            raise NNGraphError(f"{option_name(fields[name])} and {option_name(fields[conflict[0]])} both set "
                               f"{conflict[1]}; pass one of them")
    return given


def option_help(cls: type, name: str) -> dict[str, Any]:
    """help, metavar and choices of field ``name``, for a command that takes the same option
    with its own default (``nngraph eval --device``)."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    choices = meta.get("choices")
    return {"help": meta.get("help", ""), "metavar": meta.get("metavar"),
            "choices": list(choices() if callable(choices) else choices) if choices else None}
