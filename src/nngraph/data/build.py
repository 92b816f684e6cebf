"""Build corpora into a store: plan every item up front, then fit or train shard by shard.

The plan (items, splits, seeds, shard ranges) depends only on the options, so a rerun
after a kill finds the same plan in ``manifest.json`` and builds only the shards that are
not complete; a rerun of a complete build does nothing.

INR seeds: item ``i`` with source image index ``k`` starts from
``Siren(..., generator=torch.Generator().manual_seed(seed * 2**32 + k))``, so an image's
INR does not depend on ``--limit``, the shard size or its batch-mates.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nngraph.data.fitting import FitProgress, FitRecipe, SirenSpec, default_recipe, fit_inrs
from nngraph.data.images import SPLITS, load_images
from nngraph.data.store import ITEM_PREFIX, CorpusWriter, writer_lock
from nngraph.errors import NNGraphError


def inr_seed(seed: int, source_index: int) -> int:
    """The initialisation seed of the INR of source image ``source_index``."""
    if not 0 <= seed < 2**31:
        raise NNGraphError(f"--seed must be in [0, 2**31), got {seed}")
    return seed * 2**32 + int(source_index)


def build_inr_corpus(
    out: str | os.PathLike,
    images: str = "digits",
    variant: str = "dwsnet",
    *,
    recipe: str = "default",
    steps: int | None = None,
    lr: float | None = None,
    schedule: str | None = None,
    target_psnr: float | None = None,
    first_layer_lr_scale: float | None = None,
    no_early_stop: bool = False,
    hidden: int = 32,
    depth: int = 2,
    w0: float = 30.0,
    limit: int | None = None,
    seed: int = 0,
    shard_size: int = 1024,
    chunk_size: int = 8,
    workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
    log=print,
    device: str = "cpu",
) -> dict:
    """Fit one INR per image of ``images`` into the corpus ``out``; returns the manifest.

    ``recipe``: the variant's "default" or "published" fitting recipe (``fitting.RECIPES``), which
    ``steps`` .. ``first_layer_lr_scale`` override one by one.

    ``device``: where the INRs are fitted (``fit_inrs``); the corpus is the same kind of file.
    """
    _check_counts(limit=limit, seed=seed, shard_size=shard_size, chunk_size=chunk_size, workers=workers)
    spec = SirenSpec(hidden=hidden, depth=depth, w0=w0, variant=variant)
    overrides = dict(steps=steps, lr=lr, schedule=schedule, target_psnr=target_psnr,
                     first_layer_lr_scale=first_layer_lr_scale)
    recipe = default_recipe(variant, recipe, **overrides)
    if no_early_stop:
        recipe = FitRecipe.from_dict({**recipe.to_dict(), "target_psnr": None})
    data = load_images(images, limit=limit)
    n = len(data)
    height, width = data.images.shape[1:]
    seeds = [inr_seed(seed, k) for k in data.index.tolist()]
    plan = {
        "kind": "inr",
        "layout": "stacked",
        "architectures": [spec.to_dict()],
        "command": command,
        "config": {
            "images": data.source, "limit": limit, "image_size": [int(height), int(width)],
            "spec": spec.to_dict(), "recipe": recipe.to_dict(), "seed": seed, "shard_size": shard_size,
            "n_items": n,
        },
        "items": {
            "split": data.split.tolist(),
            "label": data.labels.tolist(),
            "source_index": data.index.tolist(),
            "seed": seeds,
        },
    }
    with writer_lock(out):  # one writer per corpus: a concurrent build is refused
        writer = CorpusWriter(out, plan, n, shard_size, result_columns=("psnr", "steps"))
        pending = writer.pending()
        if not pending:
            log(f"{out}: complete ({n} INRs); nothing to do")
            return writer.finish(writer.manifest.get("summary"))
        todo = sum(b - a for _, a, b in pending)
        log(f"{out}: fitting {todo} of {n} INRs ({variant}, {recipe.steps} steps, lr {recipe.lr}, "
            f"{recipe.schedule}, stop at {recipe.target_psnr} dB) in {len(pending)} shards")
        t0 = time.perf_counter()
        inr_steps = 0
        bar = FitProgress(todo, f"INRs ({variant})", progress)
        try:
            for k, a, b in pending:
                result = fit_inrs(data.images[a:b], spec, recipe, seeds[a:b], chunk_size=chunk_size, workers=workers,
                                  progress=bar, device=device)
                tensors = dict(result.params)
                tensors[ITEM_PREFIX + "image"] = data.images[a:b]
                writer.write(k, tensors, {"psnr": result.psnr.tolist(), "steps": result.steps.tolist()})
                inr_steps += result.inr_steps
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        psnr = np.asarray(writer.manifest["items"]["psnr"], dtype=np.float64)
        summary = _psnr_summary(psnr)
        summary.update(last_run_seconds=round(seconds, 2), last_run_inrs=todo,
                       last_run_inr_steps_per_s=round(inr_steps / max(seconds, 1e-9), 1))
        manifest = writer.finish(summary)
        _print_table(f"{out}: {n} INRs ({variant})", summary, log)
        return manifest


def _check_counts(**counts: int | None) -> None:
    """Every given count is >= 1 (``seed`` >= 0), before any image is read; None means the default."""
    for name, value in counts.items():
        low = 0 if name == "seed" else 1
        if value is not None and value < low:
            raise NNGraphError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _print_table(title: str, summary: dict, log) -> None:
    """The build summary as a table (rich when logging to the console)."""
    if log is print:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("measure")
        table.add_column("value", justify="right")
        for k, v in summary.items():
            table.add_row(k, str(v))
        Console().print(table)
    else:
        log(title + ": " + ", ".join(f"{k} {v}" for k, v in summary.items()))


def _psnr_summary(psnr: np.ndarray) -> dict:
    psnr = psnr[np.isfinite(psnr)]
    if not len(psnr):
        return {}
    out = {"psnr_mean": round(float(psnr.mean()), 3)}
    for q in (5, 25, 50, 75, 95):
        out[f"psnr_p{q}"] = round(float(np.percentile(psnr, q)), 3)
    return out


ZOO_SPLIT = (0.8, 0.1, 0.1)


def zoo_splits(count: int, seed: int) -> list[str]:
    """Net splits: a seeded permutation cut 80/10/10 into train / val / test."""
    order = np.random.default_rng([seed, 0x200]).permutation(count)
    cut = np.cumsum([int(round(f * count)) for f in ZOO_SPLIT[:-1]])
    split = np.empty(count, dtype=object)
    for name, part in zip(SPLITS, np.split(order, cut)):
        split[part] = name
    return split.tolist()


def build_zoo_corpus(
    out: str | os.PathLike,
    count: int = 1000,
    images: str = "fashion-mnist",
    *,
    fixed_arch: bool = False,
    seed: int = 0,
    downsample: int | None = None,
    test_limit: int | None = 2000,
    shard_size: int = 100,
    workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
    log=print,
    device: str = "cpu",
) -> dict:
    """Train ``count`` CNNs (``nngraph.data.zoo``) into the corpus ``out``; returns the manifest.

    Nets train on the ``train`` split of ``images`` (downsampled by ``downsample``; default
    2 for images of 16 pixels or more, else 1); their label is the accuracy on the first
    ``test_limit`` images of the ``test`` split.
    """
    from nngraph.data import zoo

    _check_counts(count=count, seed=seed, downsample=downsample, test_limit=test_limit, shard_size=shard_size,
                  workers=workers)
    data = load_images(images)
    size = data.images.shape[1]
    factor = downsample if downsample is not None else (2 if size >= 16 else 1)
    train, test = data.subset("train"), data.subset("test")
    zdata = zoo.make_zoo_data(train.images, train.labels, test.images, test.labels, factor=factor,
                              test_limit=test_limit)
    workers = workers or os.cpu_count() or 1
    layout = "stacked" if fixed_arch else "per_item"
    plan = {
        "kind": "zoo",
        "layout": layout,
        "architectures": [zoo.FIXED_ARCHITECTURE] if fixed_arch else [],
        "command": command,
        "config": {
            "images": data.source, "downsample": factor, "image_size": list(zdata.image_size),
            "test_limit": test_limit, "count": count,
            "fixed_arch": fixed_arch, "seed": seed, "shard_size": shard_size,
            "zoo_spec_version": zoo.SPEC_VERSION,
        },
        "items": {"split": zoo_splits(count, seed)},
    }
    columns = ("label", "arch", "training", "seed", "attempts")
    with writer_lock(out):  # one writer per corpus: a concurrent build is refused
        writer = CorpusWriter(out, plan, count, shard_size, result_columns=columns)
        pending = writer.pending()
        if not pending:
            log(f"{out}: complete ({count} networks); nothing to do")
            return writer.finish(writer.manifest.get("summary"))
        todo = sum(b - a for _, a, b in pending)
        log(f"{out}: training {todo} of {count} CNNs in {len(pending)} shards ({workers} workers)")
        t0 = time.perf_counter()
        for run in _contiguous_runs(pending):  # one worker pool and progress bar per run of shards
            start, stop = run[0][1], run[-1][2]
            records_iter = zoo.generate(stop - start, zdata, seed, fixed_arch=fixed_arch, progress=progress,
                                        start=start, workers=workers, device=device)
            try:
                for k, a, b in run:
                    records = [next(records_iter) for _ in range(b - a)]
                    _write_zoo_shard(writer, k, records, fixed_arch)
            finally:
                records_iter.close()  # stops the worker pool
        seconds = time.perf_counter() - t0
        acc = np.asarray(writer.manifest["items"]["label"], dtype=np.float64)
        hist, edges = np.histogram(acc, bins=10, range=(0.0, 1.0))
        summary = {"accuracy_mean": round(float(acc.mean()), 4), "accuracy_min": round(float(acc.min()), 4),
                   "accuracy_max": round(float(acc.max()), 4), "accuracy_histogram": hist.tolist(),
                   "histogram_edges": [round(float(e), 2) for e in edges],
                   "last_run_seconds": round(seconds, 2), "last_run_networks": todo}
        manifest = writer.finish(summary)
        _print_table(f"{out}: {count} CNNs", summary, log)
        return manifest


def _contiguous_runs(pending: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Group (shard, start, stop) triples into runs of adjacent item ranges."""
    runs: list[list[tuple[int, int, int]]] = []
    for entry in pending:
        if runs and runs[-1][-1][2] == entry[1]:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _write_zoo_shard(writer: CorpusWriter, k: int, records: list[dict], fixed_arch: bool) -> None:
    """Stacked tensors (one architecture) or ``net{index}.{param}`` tensors, plus results."""
    if fixed_arch:
        tensors = {name: torch.stack([r["state_dict"][name] for r in records]) for name in records[0]["state_dict"]}
    else:
        tensors = {f"net{r['index']}.{name}": t for r in records for name, t in r["state_dict"].items()}
    results = {
        "label": [r["test_accuracy"] for r in records],
        "arch": [r["arch"] for r in records],
        "training": [r["training"] for r in records],
        "seed": [r["seed"] for r in records],
        "attempts": [r["attempts"] for r in records],
    }
    writer.write(k, tensors, results)


def command_line() -> str:
    """The command being run, for the manifest's rerun hint."""
    return " ".join(["nngraph", *sys.argv[1:]]) if Path(sys.argv[0]).name == "nngraph" else " ".join(sys.argv)
