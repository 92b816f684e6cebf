"""The ``nngraph`` command.

Every subcommand is one ``add_<name>(subparsers)`` function that declares its options
and sets ``func`` to the function that runs it; ``main`` dispatches. Errors that are the
user's to fix (``NNGraphError``) print one line ``error: ...`` on stderr and exit with
status 2; ``--debug`` shows the traceback instead.

Start-up stays light: ``main`` builds the options of the one subcommand it runs (the
others are listed by their one-line help only), so ``nngraph --help`` and ``--version``
import neither torch nor PyTorch Geometric. ``--threads N`` (any command) sets torch's
thread count, and ``OMP_NUM_THREADS`` of the processes it starts; without it torch follows
``OMP_NUM_THREADS`` as usual.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from nngraph import __version__, cli_runs
from nngraph.errors import NNGraphError, storage_error

EXIT_USAGE = 2
# File-system errors that are the user's to fix: read-only, full, over quota, not permitted.
_STORAGE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}
DEVICE_METAVAR = "{auto,cpu,cuda,cuda:N}"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to options whose help does not say its default; keeps
    description line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors (unknown choice, not a number, missing option) as one line
    ``error: ...`` and exit status 2, like every other error of the command."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}; see `{self.prog} --help`\n")


# Options every command accepts, before or after the subcommand name.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="show the traceback of errors (default: one line)")
COMMON.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N",
                    help="CPU threads of torch (default: OMP_NUM_THREADS, else torch's choice)")


# --------------------------------------------------------------------------- data inrs


def add_data_inrs(sub) -> None:
    from nngraph.data.fitting import RECIPES

    recipes = "\n".join(
        f"  {v}, {name}: {r.steps} steps, Adam lr {r.lr:g}, {r.schedule} schedule"
        + (f" to {r.final_lr_ratio:g}x" if r.schedule == "cosine" else "")
        + (f", first layer lr x{r.first_layer_lr_scale:g}" if r.first_layer_lr_scale != 1 else "")
        + f", stop at {r.target_psnr} dB"
        for name, table in RECIPES.items() for v, r in table.items()
    )
    p = sub.add_parser(
        "inrs", formatter_class=_Formatter, parents=[COMMON],
        help="fit one SIREN INR per image into a sharded corpus",
        description="Fit one SIREN per image (batched, seeded, resumable) into DIR as sharded safetensors "
                    "plus manifest.json.\nRerunning the same command resumes an interrupted build and does "
                    f"nothing when it is complete.\n\nRecipes (variant, --recipe; --steps/--lr/--schedule/--target-psnr/"
                    f"--first-layer-lr-scale override them):\n{recipes}",
    )
    p.add_argument("--images", default="digits", metavar="{digits,mnist,fashion-mnist,PATH}",
                   help="image source: scikit-learn digits (8x8, built in), MNIST (the four standard IDX files "
                        "in $NNGRAPH_MNIST or ~/.local/share/nngraph/mnist, SHA-256 checked), Fashion-MNIST "
                        "from the Debian package dataset-fashion-mnist, or a folder of MNIST-format IDX files")
    p.add_argument("--out", required=True, metavar="DIR", help="corpus folder (created; reused to resume); required")
    p.add_argument("--variant", default="dwsnet", choices=["dwsnet", "standard"],
                   help="SIREN initialisation and output convention (see nngraph.data.inr)")
    p.add_argument("--recipe", default="default", choices=["default", "published"],
                   help="fitting recipe: nngraph's (to 40 dB) or the published corpora's (dwsnet only: 1,000 "
                        "steps at lr 5e-4, about 28 dB; the corpus the papers' weight-space baselines saw)")
    p.add_argument("--steps", type=int, default=None, help="Adam step budget per INR (default: the variant's recipe)")
    p.add_argument("--lr", type=float, default=None, help="peak Adam learning rate (default: the variant's recipe)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                   help="learning-rate schedule (default: the variant's recipe)")
    p.add_argument("--first-layer-lr-scale", type=float, default=None,
                   help="learning-rate multiplier of the first layer (default: the variant's recipe)")
    p.add_argument("--target-psnr", type=float, default=None,
                   help="freeze an INR once it reaches this PSNR in dB (default: the variant's recipe)")
    p.add_argument("--no-early-stop", action="store_true", help="always run the full step budget")
    p.add_argument("--hidden", type=int, default=32, help="width of every hidden layer")
    p.add_argument("--depth", type=int, default=2, help="number of hidden (sine) layers")
    p.add_argument("--w0", type=float, default=30.0, help="sine frequency w0")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="keep N images in total, shared among train/val/test by size, class-stratified "
                        "(default: all)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the INR initialisations")
    p.add_argument("--shard-size", type=int, default=1024, help="INRs per shard (the unit of resumption)")
    p.add_argument("--workers", type=int, default=None, help="fitting threads (default: torch's thread count)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="INRs fitted together per thread (default: 8 on the CPU, a whole shard on a GPU)")
    p.add_argument("--device", default="auto", metavar=DEVICE_METAVAR,
                   help="where to fit: auto takes a GPU when there is one")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run_data_inrs)


def run_data_inrs(args) -> int:
    from nngraph.data.build import build_inr_corpus, command_line
    from nngraph.device import resolve_device

    device = resolve_device(args.device)
    chunk_size = args.chunk_size if args.chunk_size is not None else (8 if device.type == "cpu" else args.shard_size)
    build_inr_corpus(
        args.out, args.images, args.variant, recipe=args.recipe, steps=args.steps, lr=args.lr, schedule=args.schedule,
        target_psnr=args.target_psnr, first_layer_lr_scale=args.first_layer_lr_scale,
        no_early_stop=args.no_early_stop, hidden=args.hidden, depth=args.depth,
        w0=args.w0, limit=args.limit, seed=args.seed, shard_size=args.shard_size, chunk_size=chunk_size,
        workers=args.workers, progress=not args.no_progress, command=command_line(), device=str(device),
    )
    return 0


# --------------------------------------------------------------------------- data zoo


def add_data_zoo(sub) -> None:
    p = sub.add_parser(
        "zoo", formatter_class=_Formatter, parents=[COMMON],
        help="train a zoo of small CNNs labelled with their test accuracy",
        description="Train COUNT small CNNs with sampled architectures and training recipes into DIR "
                    "(sharded, resumable); each network's label is its accuracy on held-out test images.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="corpus folder (created; reused to resume); required")
    p.add_argument("--count", type=int, default=1000, metavar="N", help="number of networks")
    p.add_argument("--images", default="fashion-mnist", metavar="{digits,fashion-mnist,PATH}",
                   help="training images: the train split trains, the test split gives the label")
    p.add_argument("--fixed-arch", action="store_true",
                   help="one architecture (nngraph.data.zoo.FIXED_ARCHITECTURE), varied training only")
    p.add_argument("--downsample", type=int, default=None,
                   help="average-pool images by this factor (default: 2 for images of 16+ pixels, else 1)")
    p.add_argument("--test-limit", type=int, default=2000, help="held-out test images per accuracy label")
    p.add_argument("--seed", type=int, default=0, help="zoo seed (network i depends only on seed and i)")
    p.add_argument("--shard-size", type=int, default=100, help="networks per shard (the unit of resumption)")
    p.add_argument("--workers", type=int, default=None, help="training processes (default: CPU count; 1 on a GPU)")
    p.add_argument("--device", default="auto", metavar=DEVICE_METAVAR,
                   help="where to train the CNNs: auto takes a GPU when there is one")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run_data_zoo)


def run_data_zoo(args) -> int:
    from nngraph.data.build import build_zoo_corpus, command_line
    from nngraph.device import resolve_device

    device = resolve_device(args.device)
    build_zoo_corpus(
        args.out, args.count, args.images, fixed_arch=args.fixed_arch, seed=args.seed, downsample=args.downsample,
        test_limit=args.test_limit, shard_size=args.shard_size, workers=args.workers,
        progress=not args.no_progress, command=command_line(), device=str(device),
    )
    return 0


# --------------------------------------------------------------------------- data import

# Options of `data import` and the formats they apply to.
_IMPORT_OPTIONS = {"image_size": ("inr-folder",), "workers": ("inr-folder", "wild-park"), "trust": ("wild-park", "models"),
                   "labels": ("models",), "architecture": ("models",), "input_shape": ("models",)}


def add_data_import(sub) -> None:
    p = sub.add_parser(
        "import", formatter_class=_Formatter, parents=[COMMON],
        help="import a published INR corpus or CNN zoo into an nngraph corpus",
        description="Convert a published corpus into DIR (an ordinary nngraph corpus: manifest.json plus shards). "
                    "Nothing is written unless every network is read and checked.\n\nFormats:\n"
                    "  inr-folder  DWSNets / neural-graphs SIREN INRs: SRC holds the .pth files and a split JSON\n"
                    "  cnn-zoo     Small CNN Zoo collection: SRC holds weights.npy, layout.csv, metrics.csv.gz\n"
                    "  wild-park   neural-graphs CNN Wild Park: SRC holds the checkpoints and cnn_park_splits.json\n"
                    "  models      your own zoo: SRC holds state_dicts (.safetensors, .pt), --labels a CSV (file, "
                    "targets[, arch, split]), --architecture module:function builds each model (your code, never "
                    "read from SRC); or torch.export.save archives (.pt2, with --trust), which need no "
                    "--architecture. TorchScript is refused: re-save it with torch.export.save",
    )
    p.add_argument("src", metavar="SRC", help="folder of the published corpus (split-file paths are relative to it)")
    p.add_argument("--format", required=True, choices=["inr-folder", "cnn-zoo", "wild-park", "models"],
                   help="layout of SRC; required")
    p.add_argument("--out", required=True, metavar="DIR", help="corpus folder to create (must not exist); required")
    p.add_argument("--splits", default=None, metavar="FILE",
                   help="split file: the JSON of inr-folder / wild-park (default: the one *splits*.json in SRC), "
                        "the row-index CSV of cnn-zoo (default: none, file order)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="inr-folder: render each INR on an N x N grid as its image (default: 28)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="networks per shard (default: 1024 inr-folder, 1000 cnn-zoo, 256 wild-park)")
    p.add_argument("--workers", type=int, default=None,
                   help="inr-folder, wild-park: file-reading processes (default: CPU count, at most 8)")
    p.add_argument("--trust", action="store_true", default=None,
                   help="wild-park: also read legacy (non-zip) torch.save checkpoints, with plain pickle; models: "
                        "read .pt2 archives with torch.export.load, which unpickles parts of them. Either can run "
                        "code from the files: only for files from a source you trust (default: refused)")
    p.add_argument("--labels", default=None, metavar="CSV", help="models: file,<targets>[,arch,split] per network")
    p.add_argument("--architecture", default=None, metavar="MODULE:FUNCTION",
                   help="models: the function (or class) that builds a model, called with the CSV's arch value if any "
                        "(not needed for .pt2 files)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="models: shape of one input of the networks (default for .pt2: the one they were exported for)")
    p.set_defaults(func=run_data_import)


def run_data_import(args) -> int:
    from nngraph.data.build import command_line
    from nngraph.data.importers import FORMATS

    options = {"splits": args.splits, "shard_size": args.shard_size}
    for name, formats in _IMPORT_OPTIONS.items():
        value = getattr(args, name)
        if value is not None and args.format not in formats:
            raise NNGraphError(f"--{name.replace('_', '-')} applies to {', '.join(formats)}, not {args.format}; "
                               f"drop it")
        options[name] = value
    if options["shard_size"] is not None and options["shard_size"] < 1:
        raise NNGraphError(f"--shard-size must be >= 1, got {options['shard_size']}")
    try:
        FORMATS[args.format](args.src, args.out, command=command_line(),
                             **{k: v for k, v in options.items() if v is not None})
    except KeyboardInterrupt:  # the worker pool is already shut down and the staging folder removed
        if getattr(args, "debug", False):
            raise
        print(f"error: import interrupted; nothing was written to {args.out}; rerun the command to import again",
              file=sys.stderr)
        return 130
    return 0


# --------------------------------------------------------------------------- parser


DATA_HELP = "build or import INR corpora and CNN zoos"


def add_data(sub) -> None:
    p = sub.add_parser("data", help=DATA_HELP, formatter_class=_Formatter,
                       description="Build datasets of networks (INR corpora and CNN zoos) or import published ones.")
    data_sub = p.add_subparsers(dest="data_command", metavar="{inrs,zoo,import}", required=True)
    add_data_inrs(data_sub)
    add_data_zoo(data_sub)
    add_data_import(data_sub)


def _run_side(name: str):
    """A subcommand of ``cli_runs`` with this module's formatter and common options."""

    def add(sub) -> None:
        getattr(cli_runs, f"add_{name.replace('-', '_')}")(sub, _Formatter, COMMON)

    return add


# Subcommands in help order: name -> (one-line help, add function). A new one is one
# add_<name>(subparsers) function here or in cli_runs.
SUBCOMMANDS = {"data": (DATA_HELP, add_data), **{name: (text, _run_side(name)) for name, text in cli_runs.HELP.items()}}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or with ``command`` of that one only (the others
    appear in ``--help`` by their summary)."""
    parser = _Parser(
        prog="nngraph", formatter_class=_Formatter, parents=[COMMON],
        description="Learning on neural networks as graphs: build corpora of networks, train and evaluate "
                    "metanetworks on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (text, add) in SUBCOMMANDS.items():
        if command is None or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=text)
    return parser


def _command(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ('' when none is: then only the summaries are needed)."""
    words = iter(argv)
    for word in words:
        if word == "--threads":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def _set_threads(threads: int) -> None:
    if threads < 1:
        raise NNGraphError(f"--threads must be an integer >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # processes started by this one


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser(command if command in SUBCOMMANDS else None if command else "")
    args = parser.parse_args(argv)
    try:
        try:
            if getattr(args, "threads", None) is not None:
                _set_threads(args.threads)
            return int(args.func(args) or 0)
        except OSError as exc:  # a write nngraph does not wrap itself
            if exc.errno not in _STORAGE_ERRNOS:
                raise
            raise storage_error(None, exc) from exc
    except NNGraphError as exc:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        again = ("rerun it with --resume to continue the run" if args.command == "train" and not args.resume
                 else "rerun the same command to resume")
        print(f"error: interrupted; {again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
