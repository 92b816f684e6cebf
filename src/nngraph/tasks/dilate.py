"""INR editing: dilate the image an INR represents by editing the INR's weights.

The NFN / neural-graphs editing protocol. For an INR f_θ of image T (H x W, values in
[0, 1]) the target is T dilated with a 3x3 maximum filter,

    D(T)[r, c] = max_{|dr| <= 1, |dc| <= 1} T[r + dr, c + dc]      (pixels outside ignored)

A per-parameter metanetwork g outputs an edit Δθ = g(θ) (ΔW, Δb of every layer, laid
out like θ); the edited INR θ' = θ + s·Δθ (s = ``delta_scale``, 1 in the protocol) is
rendered on the pixel grid p_1..p_P (P = H·W) and compared with the dilated image:

    loss_i = (1/P) Σ_p (f_{θ_i + s·Δθ_i}(p) - D(T_i)(p))^2,     loss = mean_i loss_i

The metric is the same per-INR MSE averaged over a split (lower is better). The floor is
:func:`dilation_floor`: the MSE of SIRENs of the same size fitted *directly* to the
dilated images, i.e. what an ideal edit of this architecture could reach.

Which θ is edited: the parameters of the graphs the model actually saw, read back from
the batch (``stacked_params(batch)``). With augmentations that permute hidden neurons,
the per-parameter output is in the permuted order, so adding it to the dataset's
un-permuted ``items["params"]`` would be wrong; the batch's own parameters are always in
the model's order. ``items["params"]`` is the fallback when no batch is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from nngraph.data.inr import pixel_grid
from nngraph.errors import NNGraphError
from nngraph.io import atomic_write_json
from nngraph.tasks.base import Task
from nngraph.tasks.render import render_sirens

PARAM_PREFIX = "params."


def dilate_images(images: torch.Tensor) -> torch.Tensor:
    """3x3 maximum filter (grey dilation) of images [B, H, W] -> [B, H, W].

    ``max_pool2d`` pads with -inf, so a border pixel is the max over its in-image neighbours.
    """
    if images.ndim != 3:
        raise NNGraphError(f"images must be [B, H, W], got shape {tuple(images.shape)}")
    return F.max_pool2d(images.unsqueeze(1), kernel_size=3, stride=1, padding=1).squeeze(1)  # [B, H, W]


class DilateTask(Task):
    """INR -> edited INR whose render is the 3x3-dilated image (per-parameter readout).

    Args:
        height, width: image size H, W of the corpus (the render grid).
        w0: the SIRENs' sine frequency.
        offset: constant added to the SIREN output (0.5 for ``dwsnet``, 0 for ``standard``).
        delta_scale: s in θ' = θ + s·Δθ (1 = the published protocol).
    """

    name = "dilate"
    readout = "parameters"
    metric = "mse"
    higher_is_better = False

    def __init__(self, height: int, width: int, w0: float, offset: float, delta_scale: float = 1.0):
        if height < 1 or width < 1:
            raise NNGraphError(f"image size must be positive, got {height}x{width}")
        self.height, self.width = int(height), int(width)
        self.w0, self.offset, self.delta_scale = float(w0), float(offset), float(delta_scale)
        self.coords = pixel_grid(self.height, self.width)  # [P, 2]

    @classmethod
    def from_dataset(cls, dataset, **kwargs) -> "DilateTask":
        """Image size from ``dataset.images`` [n, H, W]; w0 and offset from ``dataset.spec``
        (without a dataset, all from ``kwargs``)."""
        if dataset is None:
            return cls(**kwargs)
        spec = getattr(dataset, "spec", None)
        images = getattr(dataset, "images", None)
        if spec is None or images is None or images.ndim != 3:
            raise NNGraphError("the dilate task needs an INR corpus (built with `nngraph data inrs`)")
        if spec.out_features != 1:
            raise NNGraphError(f"the dilate task edits grey-image INRs (out_features=1), got {spec.out_features}")
        return cls(images.shape[1], images.shape[2], spec.w0, spec.offset, **kwargs)

    # ------------------------------------------------------------------ pieces

    def render(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Render stacked SIRENs on the pixel grid: {name: [B, ...]} -> [B, H, W]."""
        out = render_sirens(params, self.coords, self.w0, self.offset)  # [B, P, 1]
        return out.reshape(-1, self.height, self.width)

    def source_params(self, targets: dict[str, torch.Tensor], batch: Batch | None) -> dict[str, torch.Tensor]:
        """θ of the networks the model saw: from the batch when given, else from the targets."""
        if batch is not None and hasattr(batch, "spec"):
            from nngraph.graph.fast import stacked_params

            return stacked_params(batch)
        params = {k[len(PARAM_PREFIX):]: v for k, v in targets.items() if k.startswith(PARAM_PREFIX)}
        if not params:
            raise NNGraphError("the dilate task needs the INRs' parameters: pass the batch or items['params']")
        return params

    def edited_params(self, output: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                      batch: Batch | None) -> dict[str, torch.Tensor]:
        """θ' = θ + s·Δθ for every parameter: {name: [B, *shape]}."""
        if not isinstance(output, dict):
            raise NNGraphError("the dilate task needs a per-parameter model output {name: [B, *shape]} "
                               "(build the model with readout='parameters')")
        theta = self.source_params(targets, batch)
        if set(output) != set(theta):
            raise NNGraphError(f"model output names {sorted(output)} do not match the INR's parameters "
                               f"{sorted(theta)}")
        edited = {}
        for name, value in theta.items():
            delta = output[name]
            if delta.shape != value.shape:
                raise NNGraphError(f"predicted Δ{name} has shape {tuple(delta.shape)}, the parameter "
                                   f"{tuple(value.shape)}")
            edited[name] = value.to(delta.dtype) + self.delta_scale * delta
        return edited

    def edited_images(self, output, targets, batch) -> torch.Tensor:
        """Renders of the edited INRs [B, H, W] (for plots)."""
        return self.render(self.edited_params(output, targets, batch))

    def _per_network_mse(self, output, targets, batch) -> torch.Tensor:
        pred = self.edited_images(output, targets, batch)  # [B, H, W]
        return (pred - targets["target"].to(pred.dtype)).square().flatten(1).mean(1)  # [B]

    # ------------------------------------------------------------------ Task interface

    def targets(self, items: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"target": dilated image [B, H, W], "image": source [B, H, W], "params.<name>": θ [B, ...]}."""
        image = torch.as_tensor(items["image"], dtype=torch.float32)
        if image.ndim == 2:
            image = image.unsqueeze(0)
        if tuple(image.shape[1:]) != (self.height, self.width):
            raise NNGraphError(f"images are {tuple(image.shape[1:])}, the task was built for "
                               f"{(self.height, self.width)}; build it from this corpus")
        out = {"target": dilate_images(image), "image": image}
        for name, value in (items.get("params") or {}).items():
            out[PARAM_PREFIX + name] = value
        return out

    def loss(self, output, targets, batch) -> torch.Tensor:
        return self._per_network_mse(output, targets, batch).mean()

    def predictions(self, output, targets, batch) -> dict[str, torch.Tensor]:
        return {"mse": self._per_network_mse(output, targets, batch).detach()}

    def metrics(self, predictions: dict[str, torch.Tensor]) -> dict[str, Any]:
        mse = predictions["mse"].double()
        psnr = -10.0 * torch.log10(mse.clamp_min(1e-20))
        value = float(mse.mean()) if mse.numel() else float("nan")
        return {"mse": value, "loss": value, "psnr": float(psnr.mean()) if mse.numel() else float("nan")}

    def reports(self, test_dataset) -> dict[str, Any]:
        """The floor (see ``corpus_dilation_floor``): computed once per corpus, then read back."""
        return {"floor_mse": corpus_dilation_floor(test_dataset)}

    def figures(self, out: Path, test, predictions, examples) -> list[Path]:
        """Source, dilated target and edited render of the first 8 test INRs."""
        from nngraph import plots

        output, targets, batch = examples(8)
        edited = self.edited_images(output, targets, batch)
        return [plots.dilation_grid(targets["image"], targets["target"], edited, out / "dilation.png")]


# --------------------------------------------------------------------------- floor


FLOOR_IMAGES = 256  # the floor fits this many images of a split: its sampling error is far below the models' MSE


def dilation_floor(dataset, split: str | None = "test", steps: int | None = None, limit: int | None = FLOOR_IMAGES,
                   recipe=None, progress: bool = False, return_fits: bool = False):
    """Mean MSE of SIRENs of the corpus's architecture fitted directly to dilated images.

    The reference an editing metanetwork is compared with: no edit can do better than
    (roughly) fitting the target itself with the same architecture. Uses
    :func:`nngraph.data.fitting.fit_inrs` with the recipe that built the corpus (from its
    manifest; the variant's default recipe if it has none; ``steps`` overrides the budget)
    and the corpus's own per-INR seeds, on the first ``limit`` items of ``split``, so the
    floor and the source INRs come from the same fitting procedure. Note the recipe's
    early stop: an INR that reaches ``target_psnr`` (40 dB, MSE 1e-4) stops there. The
    MSE is measured by rendering the fitted INRs with :func:`render_sirens` (not read
    back from the fitter).

    Args:
        dataset: an ``InrDataset`` or a corpus folder.
        split: the split to use (``None`` = the dataset as given / all items).
        steps: Adam steps per INR (default: the recipe's).
        limit: at most this many images (``None`` = all).
        recipe: a ``FitRecipe`` (default: the corpus's recipe, ``steps`` applied).
        return_fits: also return ``(mse [n], fitted params, dilated targets)``.

    Returns the mean MSE (float), or ``(mean, per_image_mse, params, targets)`` with ``return_fits``.
    """
    from nngraph.data.fitting import fit_inrs
    from nngraph.data.corpus import InrDataset

    if isinstance(dataset, (str, os.PathLike)):
        dataset = InrDataset(dataset, split)
    elif split is not None and getattr(dataset, "split", None) != split:
        dataset = InrDataset(dataset.root, split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise NNGraphError(f"split {split!r} of the corpus is empty; choose another split for the dilation floor")
    spec = dataset.spec
    targets = dilate_images(dataset.images[:n].float())  # [n, H, W]
    try:
        seeds = [int(s) for s in dataset.column("seed")[:n]]
    except (KeyError, AttributeError):
        seeds = list(range(n))
    if recipe is None:
        recipe = _corpus_recipe(dataset, steps)
    fit = fit_inrs(targets, spec, recipe, seeds, progress=progress, description="dilation floor")
    task = DilateTask(targets.shape[1], targets.shape[2], spec.w0, spec.offset)
    with torch.no_grad():
        mse = (task.render(fit.params) - targets).square().flatten(1).mean(1)  # [n]
    mean = float(mse.mean())
    if return_fits:
        return mean, mse, fit.params, targets
    return mean


FLOOR_FILE = "dilation_floor.json"


def corpus_dilation_floor(dataset, split: str = "test") -> float:
    """``dilation_floor`` of a corpus split with its defaults (its first ``FLOOR_IMAGES``
    images), computed once per corpus.

    The result is kept in the corpus folder (``dilation_floor.json``: {split: mse} and the
    SHA-256 of the shards it was computed on, written atomically), so the runs and
    benchmarks that report it read it back instead of refitting the SIRENs; a rebuilt
    corpus gets a new one. The corpus's shards and manifest are not touched.
    """
    from nngraph.data.corpus import InrDataset

    if isinstance(dataset, (str, os.PathLike)):
        dataset = InrDataset(dataset, split)
    path = Path(dataset.root) / FLOOR_FILE
    shards = [s.get("sha256") for s in dataset.manifest["shards"]]
    floors = json.loads(path.read_text()) if path.exists() else {}
    if floors.get("shards") != shards:
        floors = {"shards": shards}
    if split not in floors:
        floors[split] = dilation_floor(dataset, split=split)
        atomic_write_json(path, floors)
    return float(floors[split])


def _corpus_recipe(dataset, steps: int | None):
    """The FitRecipe recorded in the corpus manifest (else the variant default), ``steps`` applied."""
    from nngraph.data.fitting import FitRecipe, default_recipe

    config = (getattr(dataset, "manifest", None) or {}).get("config", {})
    if config.get("recipe"):
        d = dict(config["recipe"])
        if steps is not None:
            d["steps"] = int(steps)
        return FitRecipe.from_dict(d)
    return default_recipe(dataset.spec.variant, steps=steps)
