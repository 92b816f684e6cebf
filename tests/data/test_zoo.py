"""CNN zoo: architectures, training and generation on scikit-learn digits (8x8)."""

from __future__ import annotations

import copy
import json
import operator

import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from nngraph.data import zoo
from nngraph.errors import NNGraphError

ALLOWED_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU,
                   nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)


@pytest.fixture(scope="module")
def digits() -> zoo.ZooData:
    """scikit-learn digits: 1,400 train and 397 test images, [n, 1, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images / 16.0  # [1797, 8, 8]
    return zoo.make_zoo_data(x[:1400], d.target[:1400], x[1400:], d.target[1400:])


def _good_training(**changes) -> dict:
    """A recipe that learns digits in a fraction of a second."""
    recipe = dict(optimizer="adam", lr=1e-2, weight_decay=0.0, momentum=0.0, schedule="cosine",
                  batch_size=32, steps=150, data_fraction=1.0, label_noise=0.0)
    return {**recipe, **changes}


def _small_arch(**changes) -> dict:
    """Three 3x3 convs of 16 channels, the second with stride 2 (8x8 -> 4x4)."""
    arch = copy.deepcopy(zoo.FIXED_ARCHITECTURE)
    arch["layers"] = [dict(channels=16, kernel=3, stride=s, residual=False) for s in (1, 2, 1)]
    return {**arch, **changes}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as zoo generation uses: tiny nets run fastest so, even on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cheap_sampled_training(rng):
    """The sampled recipe, with the step count cut so that generation tests stay fast."""
    recipe = _real_sample_training(rng)
    return {**recipe, "steps": min(recipe["steps"], 8)}


_real_sample_training = zoo.sample_training


def test_sampled_architectures_build_run_and_trace():
    rng = np.random.default_rng(0)
    x = torch.rand(3, 1, 8, 8)  # [B, 1, H, W]
    for _ in range(25):
        arch = zoo.sample_architecture(rng)
        assert json.loads(json.dumps(arch)) == arch
        model = zoo.build_cnn(arch).eval()
        traced = torch.fx.symbolic_trace(model)
        y = model(x)
        assert y.shape == (3, 10)
        torch.testing.assert_close(traced(x), y)
        for node in traced.graph.nodes:
            if node.op == "call_module":
                module = traced.get_submodule(node.target)
                assert isinstance(module, ALLOWED_MODULES), type(module)
                if isinstance(module, nn.Conv2d):
                    assert module.groups == 1
            elif node.op == "call_function":
                assert node.target in (operator.add, torch.flatten), node.target
            else:
                assert node.op in ("placeholder", "output"), node.op


def test_architectures_cover_the_stated_ranges():
    rng = np.random.default_rng(1)
    archs = [zoo.sample_architecture(rng) for _ in range(600)]
    layers = [layer for a in archs for layer in a["layers"]]
    assert {len(a["layers"]) for a in archs} == {2, 3, 4, 5}
    assert {layer["channels"] for layer in layers} == set(zoo.CHANNELS)
    assert {layer["kernel"] for layer in layers} == set(zoo.KERNELS)
    assert {a["activation"] for a in archs} == set(zoo.ACTIVATIONS)
    assert {a["batchnorm"] for a in archs} == {True, False}
    assert {sum(layer["stride"] == 2 for layer in a["layers"]) for a in archs} == {0, 1, 2}
    assert {layer["stride"] for layer in layers} == {1, 2}
    residual = [a for a in archs if any(layer["residual"] for layer in a["layers"])]
    assert 0 < len(residual) < len(archs)
    assert not any(a["layers"][0]["residual"] for a in archs)  # the stem has no skip
    # residual nets need both kinds of skip: identity and 1x1 projection
    skips = [blk.skip is None for a in residual[:60] for blk in zoo.build_cnn(a).blocks[1:]]
    assert True in skips and False in skips


def test_residual_block_computes_skip_plus_body():
    arch = _small_arch(activation="tanh", batchnorm=True)
    arch["layers"] = [dict(channels=4, kernel=3, stride=1, residual=False),
                      dict(channels=4, kernel=5, stride=1, residual=True),
                      dict(channels=8, kernel=3, stride=2, residual=True)]
    model = zoo.build_cnn(arch).eval()
    b0, b1, b2 = model.blocks
    x = torch.rand(2, 1, 8, 8)
    h0 = torch.tanh(b0.norm(b0.conv(x)))
    h1 = h0 + torch.tanh(b1.norm(b1.conv(h0)))  # identity skip
    h2 = b2.skip(h1) + torch.tanh(b2.norm(b2.conv(h1)))  # 1x1 stride-2 projection
    assert b1.skip is None and b2.skip.kernel_size == (1, 1) and h2.shape == (2, 8, 4, 4)
    expected = model.head(h2.mean(dim=(2, 3)))
    torch.testing.assert_close(model(x), expected)


def test_fixed_architecture_builds_and_is_json():
    arch = zoo.FIXED_ARCHITECTURE
    assert json.loads(json.dumps(arch)) == arch
    model = zoo.build_cnn(arch)
    torch.fx.symbolic_trace(model)
    assert model(torch.rand(2, 1, 14, 14)).shape == (2, 10)


def test_bad_architecture_is_rejected():
    with pytest.raises(NNGraphError, match="activation"):
        zoo.build_cnn(_small_arch(activation="softsign"))
    bad = _small_arch()
    bad["layers"][0]["kernel"] = 4
    with pytest.raises(NNGraphError, match="kernel"):
        zoo.build_cnn(bad)


def test_sampled_training_is_in_range_and_json():
    rng = np.random.default_rng(2)
    recipes = [zoo.sample_training(rng) for _ in range(300)]
    assert json.loads(json.dumps(recipes)) == recipes
    assert {r["optimizer"] for r in recipes} == set(zoo.OPTIMIZERS)
    assert {r["schedule"] for r in recipes} == set(zoo.SCHEDULES)
    lrs = np.array([r["lr"] for r in recipes])
    assert lrs.max() / lrs.min() > 100  # log-uniform over several decades
    assert all(0 < r["data_fraction"] <= 1 and 0 <= r["label_noise"] < 1 for r in recipes)
    assert any(r["label_noise"] == 0 for r in recipes) and any(r["label_noise"] > 0 for r in recipes)


def test_training_beats_chance_and_untrained(digits):
    arch = _small_arch(batchnorm=True)
    _, untrained = zoo.train_and_evaluate(arch, _good_training(steps=0), digits, seed=0)
    state, trained = zoo.train_and_evaluate(arch, _good_training(), digits, seed=0)
    assert trained > 0.8 and untrained < 0.3
    assert zoo.is_finite_state(state)
    assert "blocks.0.norm.running_mean" in state


def test_returned_weights_give_the_reported_accuracy(digits):
    arch = _small_arch(batchnorm=True)
    state, accuracy = zoo.train_and_evaluate(arch, _good_training(steps=40), digits, seed=3)
    model = zoo.build_cnn(arch)
    model.load_state_dict(state)
    assert zoo.evaluate(model, digits.test_x, digits.test_y) == accuracy


def test_training_is_deterministic_for_a_seed(digits):
    arch = _small_arch(batchnorm=True, activation="gelu")
    recipe = _good_training(steps=30, label_noise=0.3, data_fraction=0.5)
    a, acc_a = zoo.train_and_evaluate(arch, recipe, digits, seed=7)
    b, acc_b = zoo.train_and_evaluate(arch, recipe, digits, seed=7)
    c, _ = zoo.train_and_evaluate(arch, recipe, digits, seed=8)
    assert acc_a == acc_b
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.conv.weight"], c["blocks.0.conv.weight"])


def test_label_noise_hurts(digits):
    arch = _small_arch(batchnorm=True)
    _, clean = zoo.train_and_evaluate(arch, _good_training(), digits, seed=0)
    _, noisy = zoo.train_and_evaluate(arch, _good_training(label_noise=0.9), digits, seed=0)
    assert noisy < clean - 0.1


def test_generate_records_depend_only_on_seed_and_index(digits, monkeypatch):
    monkeypatch.setattr(zoo, "sample_training", _cheap_sampled_training)
    records = list(zoo.generate(3, digits, seed=5, progress=False))
    assert [r["index"] for r in records] == [0, 1, 2]
    for r in records:
        assert set(r) == {"index", "arch", "training", "seed", "attempts", "state_dict", "test_accuracy"}
        json.dumps({k: r[k] for k in ("arch", "training", "seed", "test_accuracy")})
        assert 0.0 <= r["test_accuracy"] <= 1.0
        model = zoo.build_cnn(r["arch"])
        model.load_state_dict(r["state_dict"])
    assert len({json.dumps(r["arch"], sort_keys=True) for r in records}) == 3
    (again,) = zoo.generate(1, digits, seed=5, progress=False, start=2)
    assert again["arch"] == records[2]["arch"] and again["training"] == records[2]["training"]
    assert again["test_accuracy"] == records[2]["test_accuracy"]
    assert all(torch.equal(again["state_dict"][k], v) for k, v in records[2]["state_dict"].items())
    (other,) = zoo.generate(1, digits, seed=6, progress=False, start=2)
    assert other["arch"] != records[2]["arch"]


def test_generate_with_workers_matches_in_process(digits, monkeypatch):
    monkeypatch.setattr(zoo, "sample_training", _cheap_sampled_training)
    one = list(zoo.generate(3, digits, seed=1, progress=False, start=4))
    two = list(zoo.generate(3, digits, seed=1, progress=False, start=4, workers=2))
    assert [r["index"] for r in two] == [4, 5, 6]
    for a, b in zip(one, two):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_fixed_arch_generation_varies_training_only(digits, monkeypatch):
    monkeypatch.setattr(zoo, "sample_training", _cheap_sampled_training)
    records = list(zoo.generate(3, digits, seed=0, fixed_arch=True, progress=False))
    assert all(r["arch"] == zoo.FIXED_ARCHITECTURE for r in records)
    assert len({json.dumps(r["training"], sort_keys=True) for r in records}) == 3


def test_diverged_recipe_is_replaced(digits, monkeypatch):
    recipes = iter([_good_training(optimizer="sgd", lr=1e30, momentum=0.9, steps=20),
                    _good_training(steps=5)])
    monkeypatch.setattr(zoo, "sample_training", lambda rng: next(recipes))
    record = zoo.make_net(0, digits, seed=0)
    assert record["attempts"] == 2
    assert record["training"]["lr"] == 1e-2
    assert zoo.is_finite_state(record["state_dict"])


def test_prepare_images_scales_and_downsamples():
    raw = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    x = zoo.prepare_images(raw.astype(np.uint8), factor=2)  # [2, 1, 14, 14]
    assert x.shape == (2, 1, 14, 14) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = raw[0, :2, :2].mean() / 255.0
    assert abs(float(x[0, 0, 0, 0]) - expected) < 1e-6
    assert zoo.downsample(torch.ones(1, 1, 15, 15), 2).shape == (1, 1, 7, 7)


def test_bad_data_is_rejected():
    with pytest.raises(NNGraphError, match="train images"):
        zoo.ZooData(torch.rand(5, 8, 8), torch.zeros(5, dtype=torch.long),
                    torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(NNGraphError, match="missing keys"):
        zoo.as_zoo_data({"train_x": torch.rand(2, 1, 8, 8)})
