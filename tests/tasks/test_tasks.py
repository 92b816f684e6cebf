"""Tasks: SIREN rendering, INR dilation, generalization metrics, classification counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn.metrics import r2_score as sk_r2

import nngraph
from nngraph.data.fitting import SirenSpec, init_params
from nngraph.data.inr import Siren, pixel_grid
from nngraph.errors import NNGraphError
from nngraph.tasks import (TASKS, ClassifyTask, DilateTask, GeneralizeTask, create_task, dilate_images,
                           dilation_floor, kendall_tau, r2_score, render_sirens)


def _stack(nets):
    """state_dicts of modules stacked over networks: {name: [B, *shape]}."""
    return {k: torch.stack([n.state_dict()[k] for n in nets]) for k in nets[0].state_dict()}


def _sirens(variant="dwsnet", n=3, **kwargs):
    return [Siren(variant=variant, generator=torch.Generator().manual_seed(s), **kwargs) for s in range(n)]


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize("variant", ["dwsnet", "standard"])
@pytest.mark.parametrize("depth,hidden,out", [(1, 5, 1), (2, 16, 1), (3, 8, 3)])
def test_render_equals_siren_modules(variant, depth, hidden, out):
    nets = _sirens(variant, n=4, hidden=hidden, depth=depth, out_features=out, w0=30.0)
    # perturb biases so the (zero-bias) dwsnet init does not hide a bias bug
    with torch.no_grad():
        for i, net in enumerate(nets):
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    coords = pixel_grid(7, 5)
    got = render_sirens(_stack(nets), coords, w0=30.0, offset=nets[0].output_offset)  # [B, P, out]
    assert got.shape == (4, 35, out)
    with torch.no_grad():
        want = torch.stack([net(coords) for net in nets])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_render_is_differentiable_in_params():
    nets = _sirens("standard", n=2, hidden=4, depth=2)
    params = {k: v.double().requires_grad_(True) for k, v in _stack(nets).items()}
    names = list(params)
    coords = pixel_grid(3, 3).double()

    def f(*tensors):
        return render_sirens(dict(zip(names, tensors)), coords, w0=3.0, offset=0.25)

    assert torch.autograd.gradcheck(f, tuple(params[k] for k in names))


def test_render_rejects_non_siren_params():
    with pytest.raises(NNGraphError, match="hidden"):
        render_sirens({"fc.weight": torch.zeros(1, 2, 2)}, pixel_grid(2, 2), 30.0)


# --------------------------------------------------------------------------- dilation target


def test_dilation_target_is_hand_computed_3x3_max():
    img = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                        [0.0, 0.7, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 0.2],
                        [0.0, 0.0, 0.0, 0.0]])
    want = torch.tensor([[0.7, 0.7, 0.7, 0.0],
                         [0.7, 0.7, 0.7, 0.2],
                         [0.7, 0.7, 0.7, 0.2],
                         [0.0, 0.0, 0.2, 0.2]])
    torch.testing.assert_close(dilate_images(img[None])[0], want)


def test_dilation_matches_loop_reference():
    img = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0))
    want = torch.empty_like(img)
    for b in range(2):
        for r in range(5):
            for c in range(6):
                want[b, r, c] = img[b, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].max()
    torch.testing.assert_close(dilate_images(img), want)
    task = DilateTask(5, 6, w0=30.0, offset=0.5)
    torch.testing.assert_close(task.targets({"image": img})["target"], want)


# --------------------------------------------------------------------------- dilate task

SPEC = SirenSpec(hidden=8, depth=2, w0=30.0, variant="dwsnet")
H = W = 8


def _batch_and_params(n=4, seed=0):
    params = init_params(SPEC, range(seed, seed + n))  # {name: [n, ...]}
    template = nngraph.to_graph(SPEC.build(), pixel_grid(H, W))
    return nngraph.graphs_from_params(template, params), params


def _zero_delta(params, requires_grad=False):
    return {k: torch.zeros_like(v, requires_grad=requires_grad) for k, v in params.items()}


def test_dilate_loss_is_zero_for_identity_edit_of_own_render():
    batch, params = _batch_and_params()
    task = DilateTask(H, W, SPEC.w0, SPEC.offset)
    own = task.render(params)  # [B, H, W]
    with torch.no_grad():
        net = SPEC.build()
        net.load_state_dict({k: v[1] for k, v in params.items()})
        torch.testing.assert_close(own[1], net(pixel_grid(H, W)).reshape(H, W), atol=1e-5, rtol=1e-5)
    targets = task.targets({"image": own, "params": params})
    targets["target"] = own  # the INR's own render instead of its dilation
    delta = _zero_delta(params)
    assert float(task.loss(delta, targets, batch)) == pytest.approx(0.0, abs=1e-10)
    assert float(task.loss(delta, targets, None)) == pytest.approx(0.0, abs=1e-10)  # items["params"] path
    # the real target (dilation) is not met by the identity edit
    real = task.targets({"image": own, "params": params})
    assert float(task.loss(delta, real, batch)) > 1e-4


def test_dilate_reads_the_permuted_batch_params():
    """Hidden neurons permuted in the batch: a zero edit still renders the same images."""
    _, params = _batch_and_params(n=2)
    nets = []
    for i in range(2):
        net = SPEC.build()
        net.load_state_dict({k: v[i] for k, v in params.items()})
        nets.append(nngraph.permute_neurons(net, seed=10 + i))
    permuted = _stack(nets)
    assert not torch.equal(permuted["hidden.0.weight"], params["hidden.0.weight"])
    coords = pixel_grid(H, W)
    batch = nngraph.collate([nngraph.to_graph(n, coords) for n in nets])
    task = DilateTask(H, W, SPEC.w0, SPEC.offset)
    targets = task.targets({"image": task.render(params), "params": params})
    targets["target"] = task.render(params)
    assert float(task.loss(_zero_delta(permuted), targets, batch)) < 1e-10
    # a non-zero edit is applied to the batch's (permuted) parameters, in the batch's order
    delta = {k: 0.01 * torch.ones_like(v) for k, v in permuted.items()}
    delta["hidden.1.weight"][:, 0, 3] = 0.05  # not permutation-symmetric
    edited = task.edited_params(delta, targets, batch)
    torch.testing.assert_close(edited["hidden.1.weight"], permuted["hidden.1.weight"] + delta["hidden.1.weight"])


def test_dilate_is_learnable_by_gradient_steps_on_delta():
    batch, params = _batch_and_params(n=3, seed=5)
    task = DilateTask(H, W, SPEC.w0, SPEC.offset)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(3, H, W, generator=gen) < 0.2).float()  # sparse strokes: dilation changes a lot
    targets = task.targets({"image": images, "params": params})
    delta = _zero_delta(params, requires_grad=True)
    opt = torch.optim.Adam(delta.values(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = task.loss(delta, targets, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in delta.values())
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])
    preds = task.predictions(delta, targets, batch)
    assert preds["mse"].shape == (3,)
    m = task.metrics(preds)
    assert m["mse"] == pytest.approx(float(preds["mse"].mean()))
    assert m["psnr"] > 0 and task.metric == "mse" and task.higher_is_better is False


def test_dilate_errors_are_one_line():
    batch, params = _batch_and_params(n=2)
    task = DilateTask(H, W, SPEC.w0, SPEC.offset)
    targets = task.targets({"image": torch.zeros(2, H, W), "params": params})
    with pytest.raises(NNGraphError, match="readout='parameters'"):
        task.loss(torch.zeros(2, 10), targets, batch)
    bad = _zero_delta(params)
    bad["out.bias"] = torch.zeros(2, 2)
    with pytest.raises(NNGraphError, match="out.bias"):
        task.loss(bad, targets, batch)
    with pytest.raises(NNGraphError, match="built for"):
        task.targets({"image": torch.zeros(2, 5, 5)})


# --------------------------------------------------------------------------- generalize


def test_generalize_monotone_prediction_has_tau_one():
    acc = torch.tensor([0.12, 0.55, 0.31, 0.9, 0.47, 0.66])
    task = GeneralizeTask()
    logits = (3.0 * acc - 1.0)[:, None] ** 3  # strictly increasing in acc, far from acc itself
    targets = task.targets({"label": acc.tolist()})
    m = task.metrics(task.predictions(logits, targets, None))
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["r2"] < 1.0  # the ranking is perfect, the values are not
    assert task.metric == "kendall_tau" and task.higher_is_better and task.out_dim == 1 and task.target_kinds == ("scalar",)


def test_generalize_metrics_agree_with_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    true = rng.uniform(0.1, 0.9, 50)
    pred = np.clip(true + rng.normal(0, 0.15, 50), 0.01, 0.99)
    pred[:5] = pred[5]  # ties
    task = GeneralizeTask()
    m = task.metrics({"predicted": torch.tensor(pred), "label": torch.tensor(true), "loss": torch.zeros(50)})
    assert m["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(pred, true).statistic, abs=1e-12)
    assert m["r2"] == pytest.approx(sk_r2(true, pred), abs=1e-12)
    want_r2 = 1 - np.sum((true - pred) ** 2) / np.sum((true - true.mean()) ** 2)
    assert m["r2"] == pytest.approx(want_r2, abs=1e-12)
    assert m["mse"] == pytest.approx(np.mean((pred - true) ** 2))
    # undefined cases stay finite (metrics go to JSON)
    assert kendall_tau(np.full(4, 0.5), true[:4]) == 0.0
    assert r2_score(np.full(3, 0.5), np.full(3, 0.5)) == 1.0
    assert r2_score(np.full(3, 0.4), np.full(3, 0.5)) == 0.0


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_generalize_losses(loss):
    acc = torch.tensor([0.2, 0.8, 0.5])
    out = torch.tensor([[0.3], [-1.0], [2.0]], requires_grad=True)
    task = GeneralizeTask(loss=loss)
    value = task.loss(out, task.targets({"label": acc}), None)
    p = torch.sigmoid(out[:, 0])
    want = F.binary_cross_entropy(p, acc) if loss == "bce" else F.mse_loss(p, acc)
    torch.testing.assert_close(value, want)
    value.backward()
    assert out.grad.abs().sum() > 0
    preds = task.predictions(out, task.targets({"label": acc}), None)
    assert task.metrics(preds)["loss"] == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(NNGraphError, match="bce"):
        GeneralizeTask(loss="hinge")


# --------------------------------------------------------------------------- classify


def test_classify_confusion_matrix_counts():
    task = ClassifyTask(3)
    label = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    logits = F.one_hot(predicted, 3).float() * 5.0
    m = task.metrics(task.predictions(logits, task.targets({"label": label}), None))
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(5 / 7)


# --------------------------------------------------------------------------- create_task on a real corpus


def test_create_task_from_corpus(inr_corpus):
    from nngraph.data.corpus import InrDataset

    ds = InrDataset(inr_corpus, "train")
    assert set(TASKS) == {"classify", "dilate", "generalize", "regress"}
    cls = create_task("classify", ds)
    all_labels = InrDataset(inr_corpus).labels
    assert cls.num_classes == int(all_labels.max()) + 1
    dil = create_task("dilate", ds)
    assert (dil.height, dil.width, dil.w0, dil.offset) == (8, 8, 30.0, 0.5)
    assert create_task("generalize", None, loss="mse").loss_name == "mse"
    with pytest.raises(NNGraphError, match="learns scalar targets, but .* holds class targets; use --task classify"):
        create_task("generalize", ds)
    with pytest.raises(NNGraphError, match="unknown task"):
        create_task("segment", ds)
    # items of the corpus through the task: zero edit of the stored INRs = their own fit
    items = {"image": ds.images[:4], "params": {k: v[:4] for k, v in ds.params.items()}, "label": ds.labels[:4]}
    targets = dil.targets(items)
    template = nngraph.to_graph(ds.module(0), pixel_grid(8, 8))
    batch = nngraph.graphs_from_params(template, items["params"])
    own = dil.render(items["params"])
    with torch.no_grad():
        torch.testing.assert_close(own[0], ds.module(0)(pixel_grid(8, 8)).reshape(8, 8), atol=1e-5, rtol=1e-5)
    zero = dil.predictions(_zero_delta(items["params"]), targets, batch)["mse"]
    torch.testing.assert_close(zero, (own - targets["target"]).square().flatten(1).mean(1))


def test_dilation_floor_fits_dilated_images(inr_corpus):
    from nngraph.data.corpus import InrDataset

    mean, per_image, params, targets = dilation_floor(inr_corpus, "train", steps=60, limit=6, return_fits=True)
    assert per_image.shape == (6,) and math.isfinite(mean)
    ds = InrDataset(inr_corpus, "train")
    torch.testing.assert_close(targets, dilate_images(ds.images[:6]))
    # far better than a constant image (the targets' variance) and than the unedited INRs
    assert mean < 0.3 * float(targets.var(dim=(1, 2), unbiased=False).mean())
    task = DilateTask.from_dataset(ds)
    unedited = (task.render({k: v[:6] for k, v in ds.params.items()}) - targets).square().mean()
    assert mean < float(unedited)
