"""``nngraph train | eval | predict | embed | migrate-run | inspect | demo | bench``: the run side of the command line.

Each subcommand is one ``add_<name>(subparsers)`` function, as in ``cli.py``; ``HELP``
holds their one-line summaries (``nngraph --help`` lists them without building the
subcommands' parsers, which import torch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from nngraph.errors import NNGraphError

HELP = {
    "train": "train a metanetwork on a corpus",
    "eval": "evaluate a run's best checkpoint",
    "predict": "a trained run's predictions for networks (state_dict files) into a CSV",
    "embed": "a trained run's embeddings of networks (state_dict files) into .npy or .csv",
    "migrate-run": "convert a run folder of an earlier nngraph (pickle checkpoints) to safetensors",
    "inspect": "what a corpus, a run or a saved network holds; draw a network's graph",
    "demo": "the main job on embedded data",
    "bench": "run the benchmarks",
}


# Options of `nngraph train` that are not settings of their own: model arguments (they land in
# TrainConfig.model_kwargs, where --model-args puts the rest) and what to do with the run folder.
MODEL_SHORTCUTS = {
    "probes": "probe inputs of NG-GNN / NG-T / probe / probegen (default: the model's)",
    "hidden": "node width of NG-GNN / NG-T, head width of probe / probegen (default: the model's)",
    "layers": "layers of NG-GNN / NG-T, head layers of probe / probegen (default: the model's)",
}


def add_train(sub, formatter, common) -> None:
    from nngraph.cli_options import add_config_options
    from nngraph.training.config import TrainConfig

    p = sub.add_parser(
        "train", formatter_class=formatter, parents=[common], help=HELP["train"],
        description="Train MODEL on corpus DATA for TASK; writes config.json, metrics.jsonl (per epoch), "
                    "metrics.json, checkpoints (last.safetensors, best.safetensors) and plots into --out.\n"
                    "Launch with `torchrun --nproc_per_node=N -m nngraph.cli train ...` for data parallelism.",
    )
    add_config_options(p, TrainConfig)  # one option per setting, declared on TrainConfig's fields
    for name, text in MODEL_SHORTCUTS.items():
        p.add_argument(f"--{name}", type=int, default=None, help=text)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (with the settings it was started with)")
    p.add_argument("--overwrite", action="store_true", help="clear the run already in --out and start it again")
    p.add_argument("--no-progress", action="store_true", help="do not print per-epoch lines")
    p.set_defaults(func=run_train)


def _add_eval_device_options(p) -> None:
    """--device and --precision of `nngraph eval`: TrainConfig's, the precision defaulting to the run's."""
    from nngraph.cli_options import option_help
    from nngraph.training.config import TrainConfig

    p.add_argument("--device", default="auto", **option_help(TrainConfig, "device"))
    p.add_argument("--precision", default=None, **{
        **option_help(TrainConfig, "precision"),
        "help": option_help(TrainConfig, "precision")["help"] + " (default: the run's)"})


def run_train(args) -> int:
    from nngraph.cli_options import config_values
    from nngraph.train import TrainConfig, train

    given = config_values(args, TrainConfig)
    shortcuts = {key: getattr(args, key) for key in MODEL_SHORTCUTS if getattr(args, key) is not None}
    given["model_kwargs"] = {**given.get("model_kwargs", {}), **shortcuts}
    given.setdefault("out", str(Path("runs") / f"{args.task}-{args.model}"))
    result = train(TrainConfig(**given), resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    _print_result(result, given["out"])
    return 0


def _print_result(result: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['task']} with {result['model']} ({out})")
    table.add_column("split")
    metrics = [k for k, v in result["test"].items() if not isinstance(v, list)]
    for m in metrics:
        table.add_column(m, justify="right")
    for split in ("val", "test"):
        table.add_row(split, *(f"{result[split][m]:.4f}" for m in metrics))
    console = Console()
    console.print(table)
    for plot in result.get("plots", []):
        console.print(f"plot: {plot}")


def add_eval(sub, formatter, common) -> None:
    p = sub.add_parser("eval", formatter_class=formatter, parents=[common], help=HELP["eval"],
                       description="Evaluate the best checkpoint of RUN on the val and test splits of its corpus "
                                   "(or of --data, a corpus of the same kind and architecture layout).")
    p.add_argument("run", metavar="RUN", help="run folder written by `nngraph train`")
    p.add_argument("--data", default=None, metavar="DIR", help="corpus to evaluate on (default: the run's)")
    p.add_argument("--predictions", default=None, metavar="CSV",
                   help="write the test split's per-network predictions here (index: the network's item in the "
                        "corpus, target, prediction, loss)")
    _add_eval_device_options(p)
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from nngraph.checkpoint import BEST, load_weights, refuse_legacy
    from nngraph.run import resolve_corpus
    from nngraph.train import TrainConfig, Trainer

    run = Path(args.run)
    config_path, best = run / "config.json", run / BEST
    refuse_legacy(run)
    if not config_path.exists() or not best.exists():
        raise NNGraphError(f"{run} is not a run with a checkpoint (no config.json or {BEST}); train it with "
                           "`nngraph train`")
    config = TrainConfig.read(config_path)
    config.data = args.data or resolve_corpus(run, config.data)
    config.device = args.device
    config.precision = args.precision or config.precision
    trainer = Trainer(config)
    trainer.load_model(load_weights(best)[0], best)
    test = trainer.predict("test")
    result = {"task": config.task, "model": config.model,
              "val": trainer.evaluate("val"), "test": trainer.task.metrics(test)}
    _print_result(result, str(run))
    if args.predictions:
        _write_split_predictions(args.predictions, trainer.loaders["test"].dataset.rows, test)
        print(f"predictions: {args.predictions}")
    return 0


def _write_split_predictions(path: str, rows, predictions: dict) -> None:
    """CSV of a split's per-network predictions: index (item in the corpus), target, prediction
    and the task's other per-network numbers (loss, mse)."""
    names = {"label": "target", "predicted": "prediction"}
    first = [k for k in names if k in predictions]  # target, then prediction
    keys = first + sorted(k for k, v in predictions.items() if v.ndim == 1 and k not in names)
    lines = [",".join(["index", *(names.get(k, k) for k in keys)])]
    columns = [predictions[k].tolist() for k in keys]
    lines += [",".join([str(int(row)), *(repr(c[i]) for c in columns)]) for i, row in enumerate(rows)]
    _write_text(path, "\n".join(lines) + "\n")


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode())


def _write_bytes(path: str, data: bytes) -> None:
    """``data`` written atomically to ``path``, or one line naming the storage problem."""
    from nngraph.errors import storage_error
    from nngraph.io import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise storage_error(path, exc) from exc


def add_predict(sub, formatter, common) -> None:
    p = sub.add_parser("predict", formatter_class=formatter, parents=[common], help=HELP["predict"],
                       description="Predict with the best model of RUN (no corpus needed): one CSV row per network "
                                   "file, in order. classify: label and class probabilities; generalize: the "
                                   "predicted accuracy.\n\nNetworks are state_dicts of an architecture the run "
                                   "was trained on (recorded in RUN/model.json): .safetensors, or .pt / .pth "
                                   "loaded as tensors only (no code runs). Other networks (any architecture the "
                                   "model can read) go through Python: nngraph.load_run(RUN).predict([module]).")
    _add_run_and_networks(p)
    p.add_argument("--out", default="predictions.csv", metavar="CSV", help="where to write (default: predictions.csv)")
    p.set_defaults(func=run_predict)


def _add_run_and_networks(p) -> None:
    """The arguments `predict` and `embed` share: RUN, the network files, --device."""
    p.add_argument("run", metavar="RUN", help="run folder written by `nngraph train`")
    p.add_argument("networks", nargs="+", metavar="NETWORK", help="state_dict files (.safetensors, .pt, .pth)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where to run: auto takes a GPU when there is one (default: auto)")


def run_predict(args) -> int:
    from nngraph.run import load_run

    run = load_run(args.run, args.device)
    predictions = run.predict([run.load_network(f) for f in args.networks])
    if "probabilities" in predictions:
        probabilities = predictions["probabilities"]
        header = ["network", "label", *(f"p{c}" for c in range(probabilities.shape[1]))]
        rows = [[int(label), *(repr(float(p)) for p in ps)]
                for label, ps in zip(predictions["label"], probabilities)]
    elif "prediction" in predictions:
        values = predictions["prediction"].reshape(len(args.networks), -1)  # [n, d]: d > 1 for vector targets
        names = ["prediction"] if values.shape[1] == 1 else [f"prediction{j}" for j in range(values.shape[1])]
        header, rows = ["network", *names], [[repr(float(v)) for v in row] for row in values]
    else:
        raise NNGraphError(f"the {run.config.task} task predicts whole networks (edited parameters), not a "
                           "table; use nngraph.load_run(RUN).predict(networks) from Python")
    lines = [",".join(header)] + [",".join(map(str, [_csv_field(f), *row])) for f, row in zip(args.networks, rows)]
    _write_text(args.out, "\n".join(lines) + "\n")
    print(f"{len(rows)} predictions: {args.out}")
    return 0


def _csv_field(text: str) -> str:
    """A CSV field: quoted when it holds a comma, quote or line break."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def add_embed(sub, formatter, common) -> None:
    p = sub.add_parser("embed", formatter_class=formatter, parents=[common], help=HELP["embed"],
                       description="Embed networks with the best model of RUN (no corpus needed): per network, the "
                                   "readout's pooled states before its head [D] (mean and max of the hidden "
                                   "neurons' states and the output neurons' states), for retrieval or "
                                   "clustering. --out .npy: an array [n, D] in the files' order; .csv: one row per "
                                   "file (network, e0..e{D-1}).\n\nNetworks as for `nngraph predict`.")
    _add_run_and_networks(p)
    p.add_argument("--out", default="embeddings.npy", metavar="FILE",
                   help="embeddings.npy (numpy array) or .csv (default: embeddings.npy)")
    p.set_defaults(func=run_embed)


def run_embed(args) -> int:
    import io

    import numpy as np

    from nngraph.run import load_run

    suffix = Path(args.out).suffix
    if suffix not in (".npy", ".csv"):
        raise NNGraphError(f"--out {args.out}: write embeddings to a .npy or .csv file")
    run = load_run(args.run, args.device)
    z = run.embed([run.load_network(f) for f in args.networks]).numpy()  # [n, D]
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, z)
        _write_bytes(args.out, buffer.getvalue())
    else:
        lines = [",".join(["network", *(f"e{d}" for d in range(z.shape[1]))])]
        lines += [",".join([_csv_field(f), *(repr(float(v)) for v in row)]) for f, row in zip(args.networks, z)]
        _write_text(args.out, "\n".join(lines) + "\n")
    print(f"{z.shape[0]} embeddings of size {z.shape[1]}: {args.out}")
    return 0


def add_migrate_run(sub, formatter, common) -> None:
    p = sub.add_parser("migrate-run", formatter_class=formatter, parents=[common], help=HELP["migrate-run"],
                       description="Convert the best.pt / last.pt checkpoints of a run folder written by an earlier "
                                   "nngraph into best.safetensors / last.safetensors, which load without running "
                                   "code, and remove the pickles; then `nngraph eval` and `train --resume` accept "
                                   "the run.\n\nTrust: the pickles are read as tensors only (weights_only); one "
                                   "that needs more (a crafted or foreign file) is refused unless --trust.")
    p.add_argument("run", metavar="RUN", help="run folder written by an earlier `nngraph train`")
    p.add_argument("--trust", action="store_true",
                   help="unpickle checkpoints that do not load as tensors only (runs code from the files: only "
                        "for runs you made or whose source you trust)")
    p.set_defaults(func=run_migrate_run)


def run_migrate_run(args) -> int:
    from nngraph.checkpoint import migrate_run

    done = migrate_run(args.run, trust=args.trust)
    print(f"{args.run}: " + ("; ".join(done) if done else "nothing to convert (no best.pt or last.pt)"))
    return 0


def add_inspect(sub, formatter, common) -> None:
    p = sub.add_parser("inspect", formatter_class=formatter, parents=[common], help=HELP["inspect"],
                       description="Describe PATH: a corpus folder (architecture, graph size, splits, fit quality "
                                   "or accuracy spread), a run folder (config, best epoch, metrics) or a saved "
                                   "network (a .pt file of a whole torch.save'd module: its graph, drawn with "
                                   "--draw; of a state_dict: its tensors).\n\n"
                                   "Trust: a whole module is a pickle, and unpickling runs code from the file. "
                                   "State_dicts load safely (weights_only); a module is loaded only with --trust, "
                                   "so pass it only for files you made or whose source you trust.")
    p.add_argument("path", metavar="PATH", help="corpus folder, run folder or .pt file")
    p.add_argument("--draw", metavar="PNG", default=None,
                   help="draw the saved network's graph into this PNG: layers left to right, one node per unit "
                        "or channel; a block per layer for large networks")
    p.add_argument("--input-shape", metavar="C,H,W", default=None,
                   help="shape of one input of the saved network, e.g. 3,32,32 or 784 (default: guessed from "
                        "its first layer: F of a Linear, C x 32 x 32 of a Conv2d)")
    p.add_argument("--trust", action="store_true",
                   help="unpickle a whole saved module (runs code from the file: only for files you trust)")
    p.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table

    path = Path(args.path)
    console = Console()
    table = Table(title=str(path), show_header=False)
    table.add_column("what")
    table.add_column("value")
    if (args.draw or args.input_shape) and path.is_dir():
        raise NNGraphError(f"--draw and --input-shape take a saved network (.pt file); {path} is a folder")
    if (path / "manifest.json").exists():
        _inspect_corpus(path, table)
    elif (path / "config.json").exists():
        _inspect_run(path, table)
    elif path.is_file():
        _inspect_saved(path, table, draw=args.draw, input_shape=args.input_shape, trust=args.trust)
    elif not path.exists():
        raise NNGraphError(f"{path} does not exist; check the path")
    else:
        raise NNGraphError(f"{path} is neither a corpus (manifest.json), a run (config.json) nor a .pt file; "
                           "check the path")
    console.print(table)
    return 0


def _inspect_run(path: Path, table) -> None:
    """A run folder's settings, progress and results: JSON files only, nothing executed."""
    from nngraph.checkpoint import legacy_files
    from nngraph.io import read_bounded
    from nngraph.train import read_json_object

    config = read_json_object(path / "config.json")
    for key in ("task", "model", "data", "epochs", "batch_size", "lr", "seed", "model_kwargs"):
        table.add_row(key, json.dumps(config.get(key)))
    if legacy_files(path):
        table.add_row("checkpoints", f"pickles of an earlier nngraph: convert with `nngraph migrate-run {path}`")
    if (path / "metrics.json").exists():
        metrics = read_json_object(path / "metrics.json")
        table.add_row("best epoch", json.dumps(metrics.get("best_epoch")))
        count = metrics.get("parameters")
        table.add_row("parameters", f"{count:,}" if isinstance(count, int) else json.dumps(count))
        for split in ("val", "test"):
            scores = metrics.get(split) if isinstance(metrics.get(split), dict) else {}
            values = {k: round(v, 4) for k, v in scores.items() if isinstance(v, (int, float))}
            table.add_row(split, json.dumps(values))
    elif (path / "metrics.jsonl").exists():
        lines = read_bounded(path / "metrics.jsonl").splitlines()
        table.add_row("epochs done", f"{len(lines)} of {config.get('epochs')} (resume with --resume)")


def _inspect_corpus(path: Path, table) -> None:
    from rich.console import Console

    from nngraph.data.corpus import corpus_class
    from nngraph.data.store import read_manifest, rebuild_hint, shard_problem
    from nngraph.errors import DataError

    manifest = read_manifest(path)
    corpus = corpus_class(manifest["kind"], path)
    corpus.check(path, manifest)
    items = manifest["items"]
    table.add_row("kind", manifest["kind"])
    table.add_row("networks", str(len(items["split"])))
    splits = {s: items["split"].count(s) for s in ("train", "val", "test")}
    table.add_row("splits", json.dumps(splits))
    damaged = [(entry["file"], problem) for entry in manifest["shards"] if entry.get("complete")
               for problem in [shard_problem(path, entry)] if problem]
    table.add_row("complete", str(manifest.get("complete", False) and not damaged))
    table.add_row("shards", f"{sum(1 for e in manifest['shards'] if e.get('complete')) - len(damaged)} of "
                            f"{len(manifest['shards'])} verified (size and SHA-256)"
                  + "".join(f"; {name} {problem}" for name, problem in damaged))
    stored = manifest.get("templates")  # a zoo's graph templates: checked by size and SHA-256 like a shard
    problem = shard_problem(path, stored) if isinstance(stored, dict) else None
    if problem:
        raise DataError(f"corpus {path} is damaged: its graph templates {stored.get('file')} {problem}; "
                        f"{rebuild_hint(path, manifest)} to write it again")
    if damaged:
        Console().print(table)
        name, problem = damaged[0]
        raise DataError(f"corpus {path} is damaged: shard {name} {problem}"
                        + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else "")
                        + f"; {rebuild_hint(path, manifest)} to rebuild the damaged shards")
    for name, value in corpus.describe(manifest).items():
        table.add_row(name, value)
    table.add_row("summary", json.dumps(manifest.get("summary", {})))


def _parse_shape(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32): positive integers, comma- or x-separated."""
    parts = text.replace("x", ",").replace("×", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise NNGraphError(f"--input-shape {text!r} is not a shape; write positive integers such as 3,32,32 or 784")
    return shape


def _load_saved(path: Path, trust: bool):
    """What ``torch.save`` wrote to ``path``: tensors and containers load safely (weights_only);
    anything that needs unpickling code (a whole module) loads only with ``trust``."""
    import zipfile

    import torch

    is_zip = zipfile.is_zipfile(path)  # torch.save's format since torch 1.6, and TorchScript's
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                raise NNGraphError(f"{path} is a TorchScript archive, which torch.fx cannot trace; "
                                   "save the module itself with torch.save(model)")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for files it cannot read
        failure = type(exc).__name__
    if is_zip:  # a torch.save checkpoint: its classes can be listed without unpickling
        try:
            classes = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001
            classes = []
        if not classes:
            raise NNGraphError(f"{path} is not a file torch.load can read ({failure}); "
                               "pass a .pt file written by torch.save")
        if not trust:
            own = sorted(c for c in classes if not c.startswith("torch.")) or sorted(classes)
            raise NNGraphError(f"{path} is a pickled object ({', '.join(own[:3])}{', ...' if len(own) > 3 else ''}): "
                               "loading it runs code from the file; rerun with --trust if you made it or trust "
                               "its source")
    elif not trust:
        raise NNGraphError(f"{path} is not a torch.save checkpoint that loads safely ({failure}); if it is an "
                           "old-format torch.save file you trust, rerun with --trust")
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - e.g. the module's class is not importable here
        message = " ".join(str(exc).split())[:200]
        raise NNGraphError(f"cannot unpickle {path} ({type(exc).__name__}: {message}); a saved module's class "
                           "must be importable here (not defined in a script's __main__)") from None


def _inspect_saved(path: Path, table, draw: str | None = None, input_shape: str | None = None,
                   trust: bool = False) -> None:
    import torch
    from torch import nn

    from nngraph.errors import InputShapeError
    from nngraph.graph.convert import to_graph
    from nngraph.graph.graph import ACTIVATIONS, EDGE_KINDS
    from nngraph.graph.permute import guess_input

    obj = _load_saved(path, trust)
    if isinstance(obj, nn.Module):
        name = type(obj).__name__
        if input_shape:
            param = next((p for p in obj.parameters() if p.is_floating_point()), None)  # its dtype and device
            example = torch.zeros(1, *_parse_shape(input_shape), dtype=getattr(param, "dtype", None),
                                  device=getattr(param, "device", None))
        else:
            try:
                example = guess_input(obj)
            except InputShapeError:
                raise InputShapeError(f"cannot guess the input of {name} from its first layer; "
                                      "pass --input-shape C,H,W (or F)") from None
        try:
            graph = to_graph(obj.eval(), example)
        except InputShapeError as exc:
            if input_shape:
                raise InputShapeError(f"--input-shape {input_shape} does not fit {name} ({exc})") from None
            raise InputShapeError(f"the input {list(example.shape[1:])} guessed from {name}'s first layer does "
                                  f"not fit ({exc}); pass --input-shape C,H,W (or F)") from None
        table.add_row("network", name)
        shape = ",".join(map(str, example.shape[1:]))
        table.add_row("input shape", shape + ("" if input_shape else " (guessed; set it with --input-shape)"))
        table.add_row("graph", f"{graph.num_nodes} nodes in {graph.num_layers} layers, {graph.num_edges} edges")
        kinds = {EDGE_KINDS[k]: int((graph.edge_kind == k).sum()) for k in graph.edge_kind.unique().tolist()}
        table.add_row("edge kinds", json.dumps(kinds))
        acts = sorted({ACTIVATIONS[a] for a in graph.node_act.tolist()})
        table.add_row("activations", ", ".join(acts))
        table.add_row("features", f"d_v={graph.x.shape[1]}, d_e={graph.edge_attr.shape[1]} (k_max={graph.spec.k_max})")
        if draw:
            from nngraph.draw import draw_graph

            drawing = draw_graph(graph, draw)
            style = "one block per layer" if drawing.summary else "one node per unit or channel"
            table.add_row("drawing", f"{drawing.path} ({style})")
        return
    if draw or input_shape:
        raise NNGraphError(f"{path} holds no module (a state_dict or other data): --draw and --input-shape need "
                           "the whole module saved with torch.save(model); or call "
                           "nngraph.draw_graph(nngraph.to_graph(model, x), 'graph.png')")
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NNGraphError(f"{path} holds neither a module nor a state_dict; save one with torch.save")
    for name, tensor in state.items():
        table.add_row(name, f"{list(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}")


def add_demo(sub, formatter, common) -> None:
    p = sub.add_parser("demo", formatter_class=formatter, parents=[common], help=HELP["demo"],
                       description="Check conversion on the bundled networks, build the digits INR corpus "
                                   "(embedded in scikit-learn) and train NG-T with probe features and a "
                                   "baseline on it; prints their test accuracy.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where the corpus and runs go")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of both models")
    p.add_argument("--seed", type=int, default=0, help="seed of corpus and training")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from nngraph.demo import run

    if args.epochs is not None and args.epochs < 1:
        raise NNGraphError(f"--epochs must be >= 1, got {args.epochs}")
    if args.seed < 0:
        raise NNGraphError(f"--seed must be >= 0, got {args.seed}")
    return run(args.out, seed=args.seed, epochs=args.epochs)


def add_bench(sub, formatter, common) -> None:
    p = sub.add_parser("bench", formatter_class=formatter, parents=[common], help=HELP["bench"],
                       description="Run the benchmark suite of a source checkout (benchmarks/run.py: the "
                                   "paper's tables, speed and memory; about 2 hours on 2 cores) and render "
                                   "benchmarks/RESULTS.md from its JSON results.")
    p.add_argument("--quick", action="store_true", help="the small protocol (about 10 minutes; quick_* results)")
    p.add_argument("--render", action="store_true", help="only render RESULTS.md from the existing results")
    p.add_argument("--paper", action="store_true",
                   help="the paper protocol: the whole Fashion-MNIST INR corpus, every row to its plateau (at most "
                        "60 minutes a row), row by row over several sittings; a rerun skips finished rows")
    p.add_argument("--suite", default=None, choices=["fashion-mnist", "mnist"],
                   help="with --paper: the Fashion-MNIST protocol (default) or the paper's own MNIST tables")
    p.add_argument("--rows", default=None, metavar="NAME[,NAME]", help="with --paper: run only these rows")
    p.add_argument("--dry-run", action="store_true", help="with --paper: list the rows, budgets and state")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="device of the model-speed and precision benchmarks (the task tables run on the CPU)")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not script.exists():
        raise NNGraphError("the benchmarks live in the source checkout; run `nngraph bench` from a git clone")
    from nngraph.device import resolve_device

    if (args.rows or args.dry_run or args.suite) and not args.paper:
        raise NNGraphError("--suite, --rows and --dry-run go with --paper; e.g. `nngraph bench --paper --dry-run`")
    if args.paper:
        flags = (["--paper"] + (["--suite", args.suite] if args.suite else []) + (["--rows", args.rows] if args.rows else [])
                 + (["--dry-run"] if args.dry_run else []))
        return subprocess.call([sys.executable, str(script), *flags])
    flags = ["--render"] if args.render else ["--quick"] if args.quick else []
    return subprocess.call([sys.executable, str(script), *flags, "--device", str(resolve_device(args.device))])
