import math

import pytest
import torch

from nngraph.data.fitting import (
    FitProgress, FitRecipe, SirenSpec, _BatchFit, default_recipe, fit_chunk, fit_inrs, init_params, pack, psnr_of, render,
    unpack,
)
from nngraph.data.images import load_images
from nngraph.data.inr import Siren, pixel_grid
from nngraph.errors import NNGraphError


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", limit=24).images  # [24, 8, 8]


@pytest.mark.parametrize("variant", ["dwsnet", "standard"])
def test_init_matches_siren_generator(variant):
    spec = SirenSpec(variant=variant, hidden=8, depth=3)
    params = init_params(spec, [5, 11])
    for i, seed in enumerate([5, 11]):
        ref = Siren(hidden=8, depth=3, variant=variant, generator=torch.Generator().manual_seed(seed)).state_dict()
        assert ref.keys() == params.keys()
        for k in ref:
            assert torch.equal(ref[k], params[k][i]), k
    assert all(torch.equal(a, b) for a, b in zip(unpack(spec, pack(spec, params)).values(), params.values()))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("variant", ["dwsnet", "standard"])
@pytest.mark.parametrize("separable", [True, False])
def test_handwritten_gradient_equals_autograd(depth, variant, separable):
    spec = SirenSpec(variant=variant, depth=depth, hidden=8)
    params = init_params(spec, [1, 2, 3])
    images = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(0))
    kern = _BatchFit(spec, 6, 7, 3, separable=separable)
    theta = pack(spec, params)
    R = kern.forward(theta, images.reshape(3, 1, 42) - spec.offset).clone()
    grad = kern.backward(theta, R).clone()
    ref = []
    for i in range(3):
        net = spec.build()
        net.load_state_dict({k: v[i] for k, v in params.items()})
        loss = (net(pixel_grid(6, 7)).reshape(6, 7) - images[i]).square().mean()
        loss.backward()
        ref.append({k: p.grad for k, p in net.named_parameters()})
        assert torch.allclose(R[i].reshape(6, 7), net(pixel_grid(6, 7)).reshape(6, 7).detach() - images[i], atol=1e-5)
    ref_flat = pack(spec, {k: torch.stack([r[k] for r in ref]) for k in ref[0]})
    assert torch.allclose(grad, ref_flat, atol=1e-5, rtol=1e-4)


def test_fitting_reduces_loss(digits):
    spec = SirenSpec(variant="dwsnet")
    recipe = FitRecipe(steps=60, lr=2e-3, target_psnr=None)
    theta = pack(spec, init_params(spec, range(8)))
    _, psnr, steps, losses = fit_chunk(spec, recipe, digits[:8], theta)
    assert losses[-1] < 0.5 * losses[0]
    assert all(b <= a * 1.05 for a, b in zip(losses[::10], losses[10::10]))
    assert (steps == 60).all()
    # the recorded PSNRs are those of the final loss: mean_i 10^(-PSNR_i/10) = mean MSE
    assert math.isclose(float((10 ** (-psnr / 10)).mean()), losses[-1], rel_tol=1e-3)


def test_result_independent_of_batch_mates(digits):
    spec = SirenSpec(variant="standard")
    recipe = FitRecipe(steps=30, lr=1e-3, target_psnr=None)
    seeds = list(range(100, 108))
    together = fit_inrs(digits[:8], spec, recipe, seeds, chunk_size=8, workers=1, progress=False)
    alone = fit_inrs(digits[3:4], spec, recipe, seeds[3:4], chunk_size=1, workers=1, progress=False)
    for k in together.params:
        assert torch.allclose(together.params[k][3], alone.params[k][0], atol=1e-4), k
    assert abs(float(together.psnr[3] - alone.psnr[0])) < 1e-2


def test_early_stop_freezes_at_target_and_recorded_psnr_is_exact(digits):
    spec = SirenSpec(variant="standard")
    recipe = FitRecipe(steps=200, lr=1e-3, schedule="cosine", target_psnr=25.0)
    res = fit_inrs(digits[:12], spec, recipe, range(12), chunk_size=5, workers=2, progress=False)
    assert (res.steps < 200).any()
    stopped = res.steps < 200
    assert (res.psnr[stopped] >= 25.0).all()
    rendered = render(spec, res.params, 8, 8)
    assert torch.allclose(psnr_of(rendered, digits[:12]), res.psnr, atol=0.02)


def test_recipe_validation_and_defaults():
    assert default_recipe("dwsnet", steps=7).steps == 7
    assert default_recipe("standard", lr=None).lr == default_recipe("standard").lr
    published = default_recipe("dwsnet", "published", steps=30)
    assert (published.steps, published.lr, published.schedule, published.first_layer_lr_scale) == (
        30, 5e-4, "constant", 1.0)
    assert default_recipe("dwsnet").first_layer_lr_scale == 25.0
    with pytest.raises(NNGraphError, match="standard variant has no published recipe"):
        default_recipe("standard", "published")
    with pytest.raises(NNGraphError, match="unknown fitting recipe 'mine'"):
        default_recipe("dwsnet", "mine")
    with pytest.raises(NNGraphError, match="--lr"):
        FitRecipe(lr=0.0)
    with pytest.raises(NNGraphError, match="variant"):
        SirenSpec(variant="nope")
    with pytest.raises(NNGraphError, match="one seed per image"):
        fit_inrs(torch.rand(3, 4, 4), SirenSpec(), FitRecipe(steps=1), [1, 2], progress=False)
    r = FitRecipe(steps=100, lr=1.0, schedule="cosine", final_lr_ratio=0.1)
    assert r.lr_at(0) == 1.0 and math.isclose(r.lr_at(50), 0.55) and math.isclose(r.lr_at(100), 0.1)


def test_a_fit_off_a_terminal_prints_progress_lines(digits, capsys, monkeypatch):
    """With output redirected (not a terminal) a long build prints a progress line at a steady
    interval instead of nothing between its first and last line."""
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    bar = FitProgress(12, "INRs (dwsnet)", enabled=True)
    bar.progress.interval = 0.0  # every update is past the interval
    fit_inrs(digits[:12], SirenSpec(variant="dwsnet"), FitRecipe(steps=5, lr=1e-3, target_psnr=None), range(12),
             chunk_size=4, workers=1, progress=bar)
    bar.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("INRs (dwsnet): ")]
    assert lines[-1].startswith("INRs (dwsnet): 12/12 INRs") and "mean PSNR" in lines[-1]
    assert len(lines) == 3  # one per chunk of 4
