"""The training loop end to end on tiny corpora: every task, resume, two processes."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from nngraph.checkpoint import load_weights
from nngraph.data.build import build_zoo_corpus
from nngraph.errors import NNGraphError
from nngraph.train import TrainConfig, Trainer, train

SMALL_NGT = {"hidden": 16, "edge_hidden": 8, "layers": 1, "heads": 2, "probes": 2}


@pytest.fixture(scope="module")
def zoo_corpus(tmp_path_factory):
    """10 sampled CNNs on digits, each trained for only 20 steps (accuracies still spread)."""
    from nngraph.data import zoo

    sample = zoo.sample_training
    root = tmp_path_factory.mktemp("train") / "zoo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo, "sample_training", lambda rng: {**sample(rng), "steps": 20, "batch_size": 32})
        build_zoo_corpus(root, 10, "digits", seed=0, test_limit=200, shard_size=5, workers=1, progress=False,
                         log=lambda *a: None)
    return root


def config(tmp_path, data, **kwargs) -> TrainConfig:
    base = dict(task="classify", data=str(data), model="ngt", out=str(tmp_path / "run"), epochs=2, batch_size=8,
                lr=3e-3, warmup_steps=2, model_kwargs=dict(SMALL_NGT))
    base.update(kwargs)
    return TrainConfig(**base)


def test_classify_end_to_end(tmp_path, inr_corpus):
    result = train(config(tmp_path, inr_corpus, epochs=3, permute_augment=True, weight_noise=0.001), progress=False)
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epoch"] == 3
    saved = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= saved["test"]["accuracy"] <= 1.0 and saved["test"]["accuracy"] == result["test"]["accuracy"]
    assert sum(map(sum, saved["test"]["confusion"])) > 0
    assert json.loads((run / "config.json").read_text())["permute_augment"] is True
    for name in ("learning_curves.png", "confusion_matrix.png", "best.safetensors", "last.safetensors"):
        assert (run / name).stat().st_size > 0
    # the training loss goes down over the epochs on this tiny problem
    history = [json.loads(line) for line in lines]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_same_command_same_numbers(tmp_path, inr_corpus):
    a = train(config(tmp_path / "a", inr_corpus), progress=False)
    b = train(config(tmp_path / "b", inr_corpus), progress=False)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["test"] == b["test"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, inr_corpus, monkeypatch):
    straight = train(config(tmp_path / "straight", inr_corpus, epochs=3), progress=False)
    killed = config(tmp_path / "killed", inr_corpus, epochs=3)
    original = Trainer.train_epoch

    def dies_in_epoch_two(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(killed, progress=False)
    assert len((tmp_path / "killed" / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = train(killed, resume=True, progress=False)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]
    a = load_weights(tmp_path / "straight" / "run" / "best.safetensors")[0]
    b = load_weights(tmp_path / "killed" / "run" / "best.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_on_time_and_traces_test_accuracy(tmp_path, inr_corpus, monkeypatch):
    # A fake clock that advances 0.05 s per reading, so every training step counts as exactly 0.05 s
    # whatever else runs on the machine.
    ticks = itertools.count()
    monkeypatch.setattr("nngraph.train.time", SimpleNamespace(perf_counter=lambda: 0.05 * next(ticks)))
    budget = 3.0
    result = train(config(tmp_path, inr_corpus, epochs=10_000, time_budget=budget), progress=False)
    history = result["history"]
    assert budget <= result["train_seconds"] < budget + 0.05 + 1e-9  # stopped by the first step past the budget
    assert history[-1]["epoch"] < 10_000
    assert 3 <= len(history) <= 11  # an evaluation every 1/10 of the budget, and one at its end
    times = [h["train_seconds"] for h in history]
    assert times == sorted(times) and all(0.0 <= h["test_accuracy"] <= 1.0 for h in history)
    assert history[-1]["lr"] < 0.05 * 3e-3  # the cosine decay ends with the budget


def test_dilate_end_to_end(tmp_path, inr_corpus):
    result = train(config(tmp_path, inr_corpus, task="dilate", epochs=2), progress=False)
    assert result["test"]["mse"] >= 0 and result["test"]["mse"] == result["test"]["mse"]
    # the floor: SIRENs fitted directly to the dilated images beat the untrained editor
    assert 0 <= result["floor_mse"] < result["test"]["mse"]
    assert (tmp_path / "run" / "dilation.png").stat().st_size > 0


def test_dilate_with_an_nfn_editor_and_refused_for_invariant_models(tmp_path, inr_corpus):
    kwargs = {"hidden_chan": 8}
    result = train(config(tmp_path, inr_corpus, task="dilate", model="nfn-np", epochs=1, model_kwargs=kwargs),
                   progress=False)
    assert 0 <= result["floor_mse"] < result["test"]["mse"]
    with pytest.raises(NNGraphError, match="per-parameter readout"):
        train(config(tmp_path / "mlp", inr_corpus, task="dilate", model="mlp", model_kwargs={}), progress=False)


@pytest.mark.parametrize("model", ["nggnn", "statnn"])
def test_generalize_end_to_end(tmp_path, zoo_corpus, model):
    kwargs = {"hidden": 16, "edge_hidden": 8, "layers": 1} if model == "nggnn" else {}
    result = train(config(tmp_path, zoo_corpus, task="generalize", model=model, model_kwargs=kwargs), progress=False)
    assert -1.0 <= result["test"]["kendall_tau"] <= 1.0
    assert (tmp_path / "run" / "predicted_vs_true.png").stat().st_size > 0


def test_mixed_architectures_batched_by_size_and_predictions_in_split_order(tmp_path, zoo_corpus):
    kwargs = {"hidden": 16, "edge_hidden": 8, "layers": 1, "heads": 2}
    trainer = Trainer(config(tmp_path, zoo_corpus, task="generalize", model="ngt", model_kwargs=kwargs))
    loader = trainer.loaders["train"]
    counts = loader.node_counts()
    assert counts is not None and len(set(counts.tolist())) > 1  # the zoo mixes architectures
    batches = loader.split_batches(torch.arange(len(loader)), 3, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(len(loader)))  # every network once
    sizes = [counts[b] for b in batches]
    assert sorted(max(s) for s in sizes) != [max(s) for s in sizes] or len(batches) < 3  # batches shuffled
    by_size = sorted(sizes, key=lambda s: int(s.min()))
    assert all(int(a.max()) <= int(b.min()) for a, b in zip(by_size, by_size[1:]))  # grouped by size
    predictions = trainer.predict("train", batch_size=3)  # size-sorted batches, answers in the split's order
    torch.testing.assert_close(predictions["label"], loader.dataset.labels.to(predictions["label"].dtype))


def test_wrong_corpus_for_task(tmp_path, inr_corpus):
    from nngraph.errors import NNGraphError

    with pytest.raises(NNGraphError):
        train(config(tmp_path, inr_corpus, task="generalize"), progress=False)


def test_two_processes_match_one(tmp_path, inr_corpus):
    """torchrun with 2 processes (gloo) gives the same run as one process."""
    single = train(config(tmp_path / "one", inr_corpus, epochs=2), progress=False)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from nngraph.train import TrainConfig, train
        torch.set_num_threads(1)
        cfg = TrainConfig(task="classify", data={str(inr_corpus)!r}, model="ngt", out={str(tmp_path / 'two' / 'run')!r},
                          epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, model_kwargs={SMALL_NGT!r})
        train(cfg, progress=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                    str(script)], check=True, env=env, capture_output=True, timeout=300)
    two = json.loads((tmp_path / "two" / "run" / "metrics.json").read_text())
    for a, b in zip(single["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4
    assert abs(single["test"]["loss"] - two["test"]["loss"]) <= 1e-4
    assert single["test"]["accuracy"] == two["test"]["accuracy"]


def test_early_stopping_on_patience_tests_the_best_epoch_and_resumes(tmp_path, inr_corpus, monkeypatch):
    """Validation accuracy 0.1, 0.3, 0.2, 0.25, ... : best at epoch 2, patience 2 stops after epoch 4."""
    scores = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.25, 5: 0.9}
    original = Trainer.evaluate

    def scripted(self, split, batch_size=None):
        real = original(self, split, batch_size)
        return {**real, "accuracy": scores.get(self.epoch, 0.0)} if split == "val" else real

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    result = train(config(tmp_path, inr_corpus, epochs=50, patience=2), progress=False)
    assert (result["epochs_run"], result["best_epoch"], result["stop"]) == (4, 2, "patience")
    assert load_weights(tmp_path / "run" / "best.safetensors")[1]["epoch"] == 2
    # a run killed after epoch 3 resumes with its patience count and stops at the same place
    original_epoch = Trainer.train_epoch

    def dies_in_epoch_four(self, progress):
        if self.epoch == 3:
            raise KeyboardInterrupt("killed")
        return original_epoch(self, progress)

    killed = config(tmp_path / "killed", inr_corpus, epochs=50, patience=2)
    monkeypatch.setattr(Trainer, "train_epoch", dies_in_epoch_four)
    with pytest.raises(KeyboardInterrupt):
        train(killed, progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", original_epoch)
    resumed = train(killed, resume=True, progress=False)
    assert (resumed["epochs_run"], resumed["best_epoch"], resumed["stop"]) == (4, 2, "patience")
    assert resumed["test"] == result["test"]
    with pytest.raises(NNGraphError, match="patience 2 -> 3"):
        train(config(tmp_path / "killed", inr_corpus, epochs=50, patience=3), resume=True, progress=False)


# ---- guard-rails ------------------------------------------------------------------------------


def test_memory_estimate_covers_the_pair_states_autograd_saves():
    """NG-T's estimate is at least what a training step's forward saves for backward (its
    N^2 pair states), and not wildly more."""
    from torch import nn

    from nngraph.graph.batch import collate
    from nngraph.graph.convert import to_graph
    from nngraph.memory import step_bytes
    from nngraph.models import create_model

    mlp = nn.Sequential(nn.Linear(4, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 2))
    graph = to_graph(mlp, torch.zeros(1, 4))
    batch = collate([graph] * 3)
    for kwargs in (dict(SMALL_NGT), {"hidden": 32, "edge_hidden": 16, "layers": 3, "heads": 4}):
        model = create_model("ngt", example=batch, out_dim=10, **kwargs)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch)
        saved = sum(storages.values())
        estimate = step_bytes(model, 3, graph.num_nodes)
        assert saved <= estimate <= 3 * saved, (kwargs, saved, estimate)


def test_a_batch_too_large_for_memory_is_refused_naming_one_that_fits(tmp_path, inr_corpus, monkeypatch):
    from nngraph import memory
    from nngraph.training.build import largest_graph

    fits = Trainer(config(tmp_path, inr_corpus))
    per_network = memory.step_bytes(fits.model, 1, largest_graph(fits.loaders))
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(3.5 * per_network / memory.FRACTION))
    with pytest.raises(NNGraphError, match=r"about .* GB per training step.*use --batch-size 3 or smaller"):
        Trainer(config(tmp_path, inr_corpus, batch_size=8))
    Trainer(config(tmp_path, inr_corpus, batch_size=3))  # the size it names fits
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_network // 2)
    with pytest.raises(NNGraphError, match="not enough for even one network"):
        Trainer(config(tmp_path, inr_corpus, batch_size=1))


def test_warmup_ratio_is_a_fraction_of_the_run_and_a_too_long_warmup_warns(tmp_path, inr_corpus, capsys):
    trainer = Trainer(config(tmp_path, inr_corpus, warmup_ratio=0.25))  # 28 networks / 8: 4 steps x 2 epochs
    assert (trainer.schedule.total_steps, trainer.schedule.warmup_steps) == (8, 2)
    assert [trainer.lr_at(s) / 3e-3 for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert trainer.lr_at(7) < 0.1 * 3e-3
    assert "warning" not in capsys.readouterr().err
    Trainer(config(tmp_path, inr_corpus, warmup_steps=50))
    assert "warning: --warmup-steps 50 exceeds this run's 8 steps" in capsys.readouterr().err
    budget = Trainer(config(tmp_path, inr_corpus, warmup_ratio=0.1, time_budget=10.0))  # warm-up in seconds
    lrs = []
    for seconds in (0.5, 1.0, 5.5, 10.0):
        budget.train_seconds = seconds
        lrs.append(budget.lr_at(0) / 3e-3)
    assert lrs == pytest.approx([0.5, 1.0, 0.5, 0.0], abs=1e-9)
    with pytest.raises(NNGraphError, match="--warmup-ratio"):
        train(config(tmp_path, inr_corpus, warmup_ratio=1.5), progress=False)


def test_progress_lines_at_a_steady_interval_when_output_is_not_a_terminal(capsys):
    from nngraph.progress import Progress

    now = [0.0]
    with Progress("epoch 1", 100, "networks", terminal=False, interval=30.0, clock=lambda: now[0]) as bar:
        for step in range(10):
            now[0] += 10.0
            bar.update(10, f"loss {step}")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["epoch 1: 30/100 networks, loss 2", "epoch 1: 60/100 networks, loss 5",
                     "epoch 1: 90/100 networks, loss 8"]
    with Progress("quiet", 10, enabled=False, terminal=False, interval=0.0) as bar:
        bar.update(10)
    assert capsys.readouterr().out == ""


def test_a_model_too_large_for_memory_is_refused_before_it_is_allocated(tmp_path, inr_corpus, monkeypatch):
    """A config asking for a huge model (a hand-made config.json) is counted on the meta device first."""
    from nngraph import memory

    allocated = []
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * 1024 ** 3)
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters",
                        lambda self: allocated.append((self.weight.device.type, self.weight.numel())))
    with pytest.raises(NNGraphError, match=r"ngt with these arguments has [\d,]+ parameters: about .* GB"):
        Trainer(config(tmp_path, inr_corpus, model_kwargs={**SMALL_NGT, "hidden": 20_000, "heads": 2}))
    assert max(n for device, n in allocated if device == "meta") >= 20_000 ** 2  # counted on the meta device
    assert max(n for device, n in allocated if device != "meta") < 10_000  # only the corpus's small INRs were built


def test_canonical_signs_reach_every_split_and_the_loaded_run(tmp_path, inr_corpus):
    """--canonical-signs: the trainer's batches of every split hold canonical networks (every free bias
    >= 0, some negative in the stored ones), and a loaded run canonicalises the networks it is given, so
    a network and its sign-flipped copy get one prediction."""
    import nngraph
    from nngraph.graph.signs import flip_signs, flippable_neurons

    result = train(config(tmp_path, inr_corpus, epochs=1, canonical_signs=True), progress=False)
    assert result["test"]["accuracy"] >= 0.0
    trainer = Trainer(config(tmp_path / "again", inr_corpus, canonical_signs=True))
    plain = Trainer(config(tmp_path / "plain", inr_corpus))
    for split in ("train", "val", "test"):
        batch, _ = trainer.loaders[split].make_batch(torch.arange(4))
        stored, _ = plain.loaders[split].make_batch(torch.arange(4))
        free = flippable_neurons(batch)
        assert free.any() and (batch.x[free, 0] >= 0).all() and (stored.x[free, 0] < 0).any(), split
    run = nngraph.load_run(tmp_path / "run")
    g = nngraph.to_graph(plain.loaders["test"].dataset.module(0), torch.zeros(1, 2))
    flip = flippable_neurons(g) & (torch.arange(g.num_nodes) % 2 == 0)
    flipped = flip_signs(g, torch.where(flip, -1, 1))
    assert not torch.equal(flipped.x, g.x)
    a, b = run.predict([g])["probabilities"], run.predict([flipped])["probabilities"]
    assert torch.equal(a, b)
