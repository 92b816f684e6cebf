"""Weight-space augmentations: their exact meaning, equivariance, reproducibility, and the
train options that switch them on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nngraph.data.fitting import SirenSpec, init_params
from nngraph.data.inr import pixel_grid, render_sirens
from nngraph.errors import NNGraphError
from nngraph.pipeline.param_augment import ParamAugment, fold_coordinate_map, rotation_matrices
from nngraph.train import TrainConfig, train

SPEC = SirenSpec(hidden=8, depth=2, variant="standard")  # biases non-zero: the fold must keep them right


def _params(b: int = 3) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in init_params(SPEC, list(range(b))).items()}


def _render(params, coords):
    return render_sirens(params, coords.double(), SPEC.w0, SPEC.offset)  # [B, P, 1]


def test_a_rotated_first_layer_renders_the_rotated_image():
    """90 degrees maps the square pixel grid onto itself, so the render is the image turned by rot90."""
    params = _params()
    h = w = 9
    grid = pixel_grid(h, w).double()
    a = rotation_matrices(torch.full((3,), math.pi / 2, dtype=torch.float64))  # [3, 2, 2]
    turned = fold_coordinate_map(params, a, torch.zeros(3, 2, dtype=torch.float64))
    image = _render(params, grid).reshape(3, h, w)
    image_of_turned = _render(turned, grid).reshape(3, h, w)
    # g(p) = f(R p) with R (r, c) = (-c, r): g[i, j] = f[n-1-j, i], the image turned a quarter clockwise
    torch.testing.assert_close(image_of_turned, torch.rot90(image, k=-1, dims=(1, 2)), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(image_of_turned, image)


@pytest.mark.parametrize("rotation,translation,scale", [(30.0, 0.0, 0.0), (0.0, 0.25, 0.0), (0.0, 0.0, 0.2),
                                                         (45.0, 0.25, 0.2)])
def test_the_augmented_inr_is_the_inr_of_mapped_coordinates(rotation, translation, scale):
    """g(p) = f(A p + t) at arbitrary coordinates, with the A, t the augmentation drew."""
    params = _params()
    augment = ParamAugment(rotation=rotation, translation=translation, scale=scale)
    a, t = augment.draw_coordinate_maps(params, torch.Generator().manual_seed(5))
    out = augment(params, torch.Generator().manual_seed(5))
    coords = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    for b in range(3):
        mapped = coords @ a[b].T + t[b]
        one = {k: v[b : b + 1] for k, v in params.items()}
        torch.testing.assert_close(_render({k: v[b : b + 1] for k, v in out.items()}, coords), _render(one, mapped))
    # the draws stay inside the stated ranges
    angle = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs()
    zoom = torch.linalg.det(a).sqrt()
    assert float(angle.max()) <= math.radians(rotation) + 1e-12
    assert float((zoom - 1).abs().max()) <= scale + 1e-12 and float(t.abs().max()) <= translation
    # only the first layer changes
    assert all(torch.equal(out[k], params[k]) for k in params if not k.startswith("hidden.0."))


def test_dropout_zeroes_and_rescales_every_parameter_and_noise_is_gaussian():
    params = {k: torch.ones(2000, *v.shape[1:]) for k, v in _params(1).items()}
    dropped = ParamAugment(dropout=0.25)(params, torch.Generator().manual_seed(0))
    values = torch.cat([v.flatten() for v in dropped.values()])
    assert set(values.unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}  # zeroed, or kept and rescaled by 1/(1-p)
    assert abs(float((values == 0).double().mean()) - 0.25) < 0.01
    noisy = ParamAugment(noise=0.1)(params, torch.Generator().manual_seed(0))
    residual = torch.cat([(noisy[k] - params[k]).flatten() for k in params])
    assert abs(float(residual.mean())) < 3e-3 and abs(float(residual.std()) - 0.1) < 3e-3


def _permute_hidden(params: dict[str, torch.Tensor], perms: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Relabel the hidden neurons of layer l by perms[l] (the same function)."""
    out = dict(params)
    for l, p in enumerate(perms):
        out[f"hidden.{l}.weight"] = out[f"hidden.{l}.weight"][:, p]
        out[f"hidden.{l}.bias"] = out[f"hidden.{l}.bias"][:, p]
        nxt = f"hidden.{l + 1}.weight" if l + 1 < len(perms) else "out.weight"
        out[nxt] = out[nxt][:, :, p]
    return out


def test_equivariant_reproducible_and_independent_of_batch_mates():
    params = _params(4)
    augment = ParamAugment(rotation=45, translation=0.25, scale=0.2)
    out = augment(params, torch.Generator().manual_seed(1))
    # permuting hidden neurons before or after the coordinate map gives the same networks
    perms = [torch.randperm(8), torch.randperm(8)]
    permuted_first = augment(_permute_hidden(params, perms), torch.Generator().manual_seed(1))
    for k, v in _permute_hidden(out, perms).items():
        torch.testing.assert_close(permuted_first[k], v)
    # the same generator state gives the same augmentation (resumed runs continue exactly)
    again = augment(params, torch.Generator().manual_seed(1))
    assert all(torch.equal(again[k], out[k]) for k in out)
    # a network's result depends only on its own parameters and draws: batch-mates replaced, same result
    a, t = augment.draw_coordinate_maps(params, torch.Generator().manual_seed(1))
    mates = {k: torch.cat([v[:1], torch.randn_like(v[1:])]) for k, v in params.items()}
    alone = fold_coordinate_map(mates, a, t)
    assert all(torch.equal(alone[k][0], out[k][0]) for k in out)


def test_train_options_resume_and_refusals(tmp_path, inr_corpus):
    small = {"hidden": 16, "edge_hidden": 8, "layers": 1, "heads": 2}
    base = dict(task="classify", data=str(inr_corpus), model="ngt", out=str(tmp_path / "run"), epochs=1,
                batch_size=8, warmup_steps=2, model_kwargs=small, rotate_augment=45.0, translate_augment=0.25,
                scale_augment=0.2, weight_dropout=0.01)
    result = train(TrainConfig(**base), progress=False)
    assert 0 <= result["test"]["accuracy"] <= 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["rotate_augment"] == 45.0 and saved["weight_dropout"] == 0.01
    with pytest.raises(NNGraphError, match="rotate_augment 45.0 -> 30.0"):
        train(TrainConfig(**{**base, "rotate_augment": 30.0, "epochs": 2}), resume=True, progress=False)
    with pytest.raises(NNGraphError, match="--task classify"):
        TrainConfig(**{**base, "task": "dilate"}).validate()
    for key, value in (("weight_dropout", 1.0), ("scale_augment", 1.5), ("rotate_augment", -1.0)):
        with pytest.raises(NNGraphError, match=f"--{key.replace('_', '-')}"):
            TrainConfig(**{**base, key: value}).validate()


def test_cli_defaults_come_from_train_config():
    from nngraph.cli import build_parser
    from nngraph.cli_options import config_values

    args = build_parser().parse_args(["train", "--task", "classify", "--data", "x", "--model", "ngt"])
    parsed = TrainConfig(**config_values(args, TrainConfig), out="o")  # options not given: the fields' defaults
    defaults = TrainConfig(task="classify", data="x", model="ngt", out="o")
    assert parsed == defaults
    for key in ("rotate_augment", "translate_augment", "scale_augment", "weight_dropout", "weight_noise", "patience"):
        assert getattr(args, key) is None  # argparse holds no second copy of a default
