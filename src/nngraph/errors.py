"""Errors that nngraph raises on bad input.

Every message is one line: what is wrong, then what to do about it. The CLI prints
the message without a traceback and exits with status 2.
"""


class NNGraphError(Exception):
    """Base class: a problem with the user's input, model or files (not a bug in nngraph)."""


class UnsupportedModelError(NNGraphError):
    """The network uses a layer, op or control flow that nngraph cannot convert."""


class InputShapeError(NNGraphError):
    """An input tensor has a shape that does not fit the network or graph."""


class NonFiniteError(NNGraphError):
    """A parameter or input holds NaN or infinity."""


class DataError(NNGraphError):
    """A data file, corpus or manifest is missing, corrupt or of the wrong format."""
