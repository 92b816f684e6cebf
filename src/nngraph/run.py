"""A trained run as a model to use: ``nngraph.load_run(path)``, ``.predict``, ``.embed``.

    run = nngraph.load_run("runs/ngt")          # no corpus needed, from any directory
    out = run.predict([net1, net2])             # classify: {"probabilities": [B, C], "label": [B]}
    z = run.embed([net1, net2])                 # [B, D] pooled states before the readout's head

A run folder holds ``config.json``, ``model.json`` (written by ``nngraph train`` at its
start: the architectures of the training example, input shape, edge window k_max x k_max
in ``width`` channels, model and task arguments, the embeddings' vocabulary; see
``train.model_record``) and ``best.safetensors``. The model is rebuilt on a batch of one
fresh network per recorded architecture, which gives every size and normalisation buffer
the trained shape, and the best weights are loaded into it. Nothing read runs code: JSON
through ``read_bounded`` and safetensors.

Networks are torch modules (converted by ``to_graph`` on a zero input of the run's input
shape) or NeuralGraphs, batched as in training: ``collate`` in the run's edge window. A
network the model cannot read (a wider kernel window, an activation or edge kind beyond
its vocabulary, another input shape or number of outputs) is refused in one line.
Predictions per task: classify {"probabilities" [B, C], "label" [B]}; generalize
{"prediction" [B]} (the predicted accuracy σ(u)); regress {"prediction" [B] or [B, d]}
(μ + σ u in the targets' units); dilate {parameter: [B, *shape]} (the edited INR's
parameters θ + s Δθ).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from nngraph.checkpoint import BEST, load_weights, refuse_legacy
from nngraph.data.templates import MAX_VALUE
from nngraph.errors import InputShapeError, NNGraphError
from nngraph.graph.batch import collate
from nngraph.graph.convert import to_graph
from nngraph.graph.graph import NeuralGraph
from nngraph.graph.signs import canonicalise_signs
from nngraph.train import MODEL_RECORD, TrainConfig, read_json_object

# Edge channels of a run's window: a flat edge holds an H x W map (64 x 64 = 4096), so 2^16 is far beyond any.
MAX_WIDTH = 2**16
_RECORD_KEYS = ("kind", "architectures", "input_shape", "k_max", "width", "model", "model_args", "task",
                "activations", "edge_kinds")


def run_files(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(config.json, model.json, best.safetensors) of run folder ``path``, or one line saying what is missing."""
    run = Path(path)
    if not run.is_dir():
        raise NNGraphError(f"{run} is not a run folder (it does not exist or is a file); pass a folder written by "
                           "`nngraph train`")
    refuse_legacy(run)
    files = run / "config.json", run / MODEL_RECORD, run / BEST
    for file in files:
        if not file.exists():
            why = ("it was trained before runs recorded their model; train it again" if file.name == MODEL_RECORD
                   else "it has no checkpoint yet (trained for no epoch); train it with `nngraph train`")
            raise NNGraphError(f"{run} has no {file.name}: {why}")
    return files


def read_record(path: Path) -> dict:
    """``model.json`` checked for the fields a rebuild needs (one line if damaged)."""
    record = read_json_object(path)
    missing = [k for k in _RECORD_KEYS if k not in record]
    shapes = (record.get("input_shape"), record.get("architectures"))
    if missing or not all(isinstance(v, list) and v for v in shapes) or not isinstance(record.get("task"), dict):
        what = f"no {missing[0]!r}" if missing else "an empty or malformed architectures, input_shape or task"
        raise NNGraphError(f"{path} is damaged ({what}); train the run again to rewrite it")
    # sizes that a rebuild allocates by ([1, *input_shape] inputs, [E, width] edge features): integers in range
    k_max, width, shape = record["k_max"], record["width"], record["input_shape"]
    if not all(_whole(v) and v >= 1 for v in (k_max, width, *shape)) or k_max * k_max > width \
            or width > MAX_WIDTH or math.prod(shape) > MAX_VALUE:
        raise NNGraphError(f"{path} is damaged (k_max {k_max!r}, width {width!r}, input_shape {shape!r}: not "
                           f"integers with k_max^2 <= width <= {MAX_WIDTH} and at most {MAX_VALUE} input values); "
                           "train the run again to rewrite it")
    return record


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_corpus(run: str | os.PathLike, data: str) -> str:
    """The run's corpus from here: ``data`` as recorded if it exists, else the absolute or the
    run-relative path of ``model.json``; ``data`` unchanged when none exists (the reader says so)."""
    if Path(data).exists():
        return data
    record = Path(run) / MODEL_RECORD
    paths = read_json_object(record).get("corpus_path") if record.exists() else None
    if isinstance(paths, dict):
        for candidate in (paths.get("absolute"), paths.get("relative")):
            if isinstance(candidate, str):
                found = Path(candidate) if Path(candidate).is_absolute() else Path(run) / candidate
                if found.exists():
                    return str(found)
    return data


class TrainedRun:
    """A run's best model, rebuilt without its corpus, with ``predict`` and ``embed``.

    ``model`` (eval mode, on ``device``), ``config`` (a ``TrainConfig``), ``task``, ``record``
    (``model.json``), ``input_shape`` (one input of the networks it reads).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        from nngraph.device import resolve_device
        from nngraph.models import create_model
        from nngraph.tasks import create_task

        config_path, record_path, best = run_files(path)
        self.path = Path(path)
        self.config = TrainConfig.read(config_path)
        self.record = read_record(record_path)
        self.device = resolve_device(device)
        self.input_shape = tuple(int(s) for s in self.record["input_shape"])
        self.k_max, self.width = int(self.record["k_max"]), int(self.record["width"])
        task = self.record["task"]
        try:
            self.task = create_task(task["name"], None, **task["args"])
            self._check_agrees(record_path)
            networks = self._networks(record_path)
            example = collate([self._graph(n, i) for i, n in enumerate(networks)], self.k_max, self.width)
            with torch.random.fork_rng(devices=[]):  # the rebuild's initial weights are overwritten
                self.model = create_model(self.record["model"], example=example, **self.record["model_args"])
        except NNGraphError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise NNGraphError(f"{record_path} is damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:80]}); "
                               "train the run again to rewrite it") from None
        try:
            self.model.load_state_dict(load_weights(best)[0])
        except (RuntimeError, TypeError, AttributeError):
            raise NNGraphError(f"{best} does not fit the model {record_path} describes (one of them was replaced); "
                               "train the run again") from None
        self.model.to(self.device).eval()

    def _check_agrees(self, record_path: Path) -> None:
        """``model.json`` names the model, arguments and task of ``config.json`` (checked there):
        a hand-edited record cannot build another model than the one trained."""
        args = dict(self.record["model_args"])
        out_dim, _ = args.pop("out_dim", None), args.pop("readout", None)
        if (self.record["model"], args, self.task.name, out_dim) != (self.config.model, self.config.model_kwargs,
                                                                     self.config.task, self.task.out_dim):
            raise NNGraphError(f"{record_path} does not describe the model of {self.path / 'config.json'} (one of "
                               "them was edited or replaced); train the run again")

    def _networks(self, record_path: Path) -> list[nn.Module | NeuralGraph]:
        """A network per recorded architecture, rebuilt by the class of the run's corpus: a module
        (fresh weights, drawn without touching the global RNG: only its structure is used, or the
        weights a state_dict then loads) or a graph template (``architecture_tensors``)."""
        import base64
        import binascii

        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        from nngraph.data.corpus import corpus_class

        tensors = {}
        if "architecture_tensors" in self.record:
            try:
                tensors = st_load(base64.b64decode(self.record["architecture_tensors"], validate=True))
            except (SafetensorError, binascii.Error, TypeError, ValueError):
                raise NNGraphError(f"{record_path}: architecture_tensors is not a base64 safetensors file "
                                   "(damaged); train the run again to rewrite it") from None
        with torch.random.fork_rng(devices=[]):
            return corpus_class(self.record["kind"], self.path).rebuild(self.record["architectures"], tensors,
                                                                        str(record_path))

    def _graph(self, network: Any, i: int) -> NeuralGraph:
        """Network ``i`` as a graph the model can read, or one line saying why it cannot be."""
        shape = "x".join(map(str, self.input_shape))
        if isinstance(network, NeuralGraph):
            graph = network
        elif isinstance(network, nn.Module):
            try:
                graph = to_graph(network.eval(), torch.zeros(1, *self.input_shape))
            except InputShapeError:  # the network itself fails on the run's inputs
                raise NNGraphError(f"network {i} does not take inputs of shape {shape}, which this run's networks "
                                   "take; pass networks of the kind the run was trained on") from None
            except NNGraphError as exc:
                raise NNGraphError(f"network {i}: {exc}") from None
        else:
            raise NNGraphError(f"network {i} is a {type(network).__name__}; pass torch modules or NeuralGraphs")
        if tuple(graph.spec.probe_shape) != self.input_shape:
            raise NNGraphError(f"network {i} takes inputs of shape {'x'.join(map(str, graph.spec.probe_shape))}; "
                               f"this run reads networks taking {shape}")
        if graph.spec.k_max > self.k_max or graph.edge_attr.shape[1] > self.width:
            raise NNGraphError(f"network {i} has a {graph.spec.k_max}x{graph.spec.k_max} kernel window; this run's "
                               f"model reads at most {self.k_max}x{self.k_max} ({self.width} edge channels)")
        for field, names, what in ((graph.node_act, self.record["activations"], "activation"),
                                   (graph.edge_kind, self.record["edge_kinds"], "edge kind")):
            if field.numel() and int(field.max()) >= len(names):
                raise NNGraphError(f"network {i} has an {what} this run's model was not made for (it knows "
                                   f"{', '.join(names)}); pass networks built from those")
        return graph

    def load_network(self, path: str | os.PathLike) -> nn.Module | NeuralGraph:
        """A network of one of the run's architectures from a state_dict file: ``.safetensors``, or
        ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)`` (tensors only, no code runs).

        The run knows its architectures (``model.json``), so a state_dict is enough: the one
        architecture whose parameter names and shapes it fits is built (fitting several, which
        differ only in strides or activations, is refused: that would be a guess). Networks of other architectures are
        passed as modules from Python (``predict([module])``). ``.pt2`` files of ``torch.export``
        are refused: the exported module is an aten graph with hooks, which ``to_graph`` cannot read.
        """
        path = Path(path)
        if not path.is_file():  # missing, a folder, a device or a FIFO: never opened
            raise NNGraphError(f"{path} is not a file; pass state_dict files (.safetensors, .pt)")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(path)
            except (SafetensorError, OSError, ValueError) as exc:
                raise NNGraphError(f"{path} is not a readable safetensors file ({type(exc).__name__}); pass a "
                                   "state_dict saved with safetensors.torch.save_file") from None
        elif path.suffix in (".pt", ".pth"):
            try:
                state = torch.load(path, weights_only=True, map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - torch raises many kinds for files it cannot read
                raise NNGraphError(f"{path} does not load as tensors only ({type(exc).__name__}); pass a state_dict "
                                   "(torch.save(model.state_dict(), ...)) or a .safetensors file") from None
        else:
            raise NNGraphError(f"{path}: pass a state_dict as .safetensors, .pt or .pth (of an architecture of the "
                               "run); other networks go through Python: nngraph.load_run(RUN).predict([module])")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise NNGraphError(f"{path} holds no state_dict (a dict of tensors); save one with "
                               "torch.save(model.state_dict(), ...)")
        from nngraph.data import templates

        fitting = []
        for network in self._networks(self.path / MODEL_RECORD):
            if isinstance(network, NeuralGraph):  # a stored architecture: the state_dict into its template
                if templates.fits(network, state):
                    fitting.append(templates.graph_of(network, state))
                continue
            try:
                network.load_state_dict(state)
            except RuntimeError:
                continue
            fitting.append(network.eval())
        if len(fitting) == 1:
            return fitting[0]
        if fitting:  # same tensors, other strides or activations: another function, so no guess
            raise NNGraphError(f"{path} fits {len(fitting)} of this run's architectures (same tensors, other strides "
                               "or activations); pass it as a module from Python: "
                               "nngraph.load_run(RUN).predict([module])")
        raise NNGraphError(f"{path} fits none of this run's {len(self.record['architectures'])} architecture(s) "
                           f"(see {self.path / MODEL_RECORD}); pass networks of another architecture as modules "
                           "from Python: nngraph.load_run(RUN).predict([module])")

    def graphs(self, networks: Iterable[Any]) -> list[NeuralGraph]:
        networks = [networks] if isinstance(networks, (nn.Module, NeuralGraph)) else list(networks)
        if not networks:
            raise NNGraphError("no networks given; pass a list of torch modules or NeuralGraphs")
        graphs = [self._graph(n, i) for i, n in enumerate(networks)]
        return [canonicalise_signs(g) for g in graphs] if self.config.canonical_signs else graphs

    @torch.no_grad()
    def _run(self, networks: Iterable[Any], batch_size: int, embed: bool) -> list[tuple[Any, Any]]:
        """(model output or embedding, batch) of consecutive batches of the networks."""
        graphs = self.graphs(networks)
        results = []
        for start in range(0, len(graphs), batch_size):
            batch = collate(graphs[start:start + batch_size], self.k_max, self.width).to(self.device)
            try:
                output = self.model.embed(batch) if embed else self.model(batch)
            except NNGraphError:
                raise
            except (ValueError, RuntimeError, IndexError) as exc:
                last = start + int(batch.num_graphs) - 1
                raise NNGraphError(f"this run's {self.config.model} model cannot read networks {start}..{last} "
                                   f"({' '.join(str(exc).split())[:120]}); pass networks like the ones it was "
                                   "trained on") from None
            results.append((output, batch))
        return results

    def predict(self, networks: Iterable[Any], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Per-network predictions (see the module's docstring), on the CPU, in the networks' order."""
        from nngraph.tasks import ClassifyTask, DilateTask, GeneralizeTask, RegressTask

        parts: dict[str, list[torch.Tensor]] = {}
        for output, batch in self._run(networks, batch_size, embed=False):
            if isinstance(self.task, ClassifyTask):
                probabilities = torch.softmax(output.float(), dim=1)  # [B, C]
                found = {"probabilities": probabilities, "label": probabilities.argmax(dim=1)}
            elif isinstance(self.task, GeneralizeTask):
                found = {"prediction": torch.sigmoid(output.float().reshape(len(output), -1)[:, 0])}  # [B]
            elif isinstance(self.task, RegressTask):
                predicted = self.task.predict(output.float())  # [B, d]
                found = {"prediction": predicted[:, 0] if predicted.shape[1] == 1 else predicted}  # [B] or [B, d]
            elif isinstance(self.task, DilateTask):
                found = self.task.edited_params(output, {}, batch)  # {name: [B, *shape]}
            else:
                raise NNGraphError(f"predict does not know the outputs of the {self.config.task} task")
            for k, v in found.items():
                parts.setdefault(k, []).append(v.cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def embed(self, networks: Iterable[Any], batch_size: int = 64) -> torch.Tensor:
        """Per-network embeddings [B, D] (the readout's pooled states before its head), on the CPU."""
        if not hasattr(self.model, "embed"):
            raise NNGraphError(f"the {self.config.model} model makes no embeddings; embed with a run of a graph "
                               "metanetwork (nggnn, ngt)")
        return torch.cat([output.float().cpu() for output, _ in self._run(networks, batch_size, embed=True)])


def load_run(path: str | os.PathLike, device: str = "cpu") -> TrainedRun:
    """The best model of run folder ``path`` with ``predict`` / ``embed`` (no corpus needed)."""
    return TrainedRun(path, device)
