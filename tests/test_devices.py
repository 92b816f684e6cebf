"""Devices and precision: nothing in nngraph assumes the CPU.

Three kinds of checks:

- a scan of ``src/`` for tensor factories that name no device (outside a short,
  justified allow-list of host-side places);
- device-parametrised tests of the executor, the fast path, every model's forward and
  backward, the fitting kernel and a training epoch: on "cpu" always, on "cuda" when
  CUDA is present (skipped otherwise). On the CPU they run under ``stray_factory_guard``:
  the default device is "meta", so a factory that names no device makes a meta tensor,
  and the guard fails on the first op that turns CPU inputs into a meta result, naming
  the nngraph line. That is the CUDA bug (a CPU tensor mixed into device data) caught
  on a machine without a GPU;
- bf16 autocast: a training epoch on the CPU is finite and close to fp32's.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import nngraph
from nngraph.data.fitting import FitRecipe, SirenSpec, fit_chunk, init_params, pack
from nngraph.data.inr import Siren
from nngraph.device import DeviceError, autocast, resolve_device, resolve_precision, to_device
from nngraph.graph.fast import graphs_from_params
from nngraph.models import create_model
from nngraph.train import TrainConfig, Trainer
from tests.graph.nets import randomise

SRC = Path(__file__).resolve().parents[1] / "src" / "nngraph"
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA"))]

# --------------------------------------------------------------------------- the scan

FACTORIES = {"arange", "zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm", "tensor",
             "as_tensor", "linspace", "eye"}

# (file under src/nngraph, function or "*" for the whole file) -> why a CPU tensor is right there.
HOST_SIDE = {
    ("graph/builder.py", "*"): "conversion builds a graph from a CPU module's Python lists; move it with .to()",
    ("graph/convert.py", "_assign_roles"): "conversion (as builder.py)",
    ("graph/products.py", "scale"): "a constant factor's edge weights, built on the host with the graph (as builder.py)",
    ("graph/lora.py", "scaled_sum"): "LoRA's constant scaling on identity edges, built on the host with the graph",
    ("graph/recurrent.py", "_recurrent"): "a zero const self-loop at step 0, built on the host with the graph",
    ("graph/recurrent.py", "_gru_step"): "the -1 weights of 1 - z, built on the host with the graph",
    ("graph/permute.py", "_tie_class_permutation"): "drawn on the host from Python lists; permute_graph moves it",
    ("graph/permute.py", "guess_input"): "example input for converting a CPU module",
    ("graph/augment.py", "*"): "augmentation indices computed on the host, then moved to the batch's device",
    ("models/baselines/standardise.py", "Standardised.init_standardisation"):
        "buffers of a module under construction; model.to(device) moves them",
    ("models/baselines/nfn.py", "chain_layout"): "layout read once per architecture from .cpu() copies, cached",
    ("models/baselines/nfn.py", "_NFN.set_normalisation"): "Python floats copied into the module's buffers",
    ("data/*", "*"): "corpora are made and stored on the host",
    ("pipeline/*", "*"): "batches are built on the host; the trainer moves each batch once",
    ("tasks/*", "*"): "targets from host dataset columns (moved with the batch) and metrics on the host",
    ("train.py", "*"): "split order and index batches: host-side, as the batches are built there",
    ("training/build.py", "build_run"): "the training split's index: host-side, as the batches are built there",
    ("training/evaluate.py", "*"): "a split's index batches: host-side, as the batches are built there",
    ("run.py", "TrainedRun._graph"): "example input for converting a user's module, on the host like to_graph",
    ("examples.py", "*"): "the bundled example networks and their inputs, on the CPU",
}


def _factories_without_device() -> list[tuple[str, str, int, str]]:
    """(file, enclosing function, line, factory) of every torch factory call with no device=."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        scope: list[str] = []

        class Visitor(ast.NodeVisitor):
            def visit_FunctionDef(self, node):
                scope.append(node.name)
                self.generic_visit(node)
                scope.pop()

            visit_ClassDef = visit_AsyncFunctionDef = visit_FunctionDef

            def visit_Call(self, node):
                f = node.func
                if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch"
                        and f.attr in FACTORIES and not any(k.arg == "device" for k in node.keywords)):
                    found.append((rel, ".".join(scope), node.lineno, f.attr))
                self.generic_visit(node)

        Visitor().visit(ast.parse(path.read_text()))
    return found


def _allowed(rel: str, function: str) -> tuple | None:
    """The HOST_SIDE key that covers a call, if any. Parameters and buffers made in a
    module's ``__init__`` under models/ move with ``model.to(device)``."""
    if rel.startswith("models/") and function.endswith("__init__"):
        return ("models", "__init__")
    for key in ((rel, function), (rel, "*"), (rel.split("/")[0] + "/*", "*")):
        if key in HOST_SIDE:
            return key
    return None


def test_every_tensor_factory_names_its_device():
    found = _factories_without_device()
    assert len(found) > 20  # the scan sees the code
    stray = [f"{rel}:{line} torch.{name} in {fn or '<module>'}" for rel, fn, line, name in found
             if _allowed(rel, fn) is None]
    assert not stray, "tensor factories without device= (add device=..., or justify in HOST_SIDE):\n" + "\n".join(stray)
    used = {_allowed(rel, fn) for rel, fn, _, _ in found}
    assert not set(HOST_SIDE) - used, f"stale HOST_SIDE entries: {sorted(set(HOST_SIDE) - used)}"


def test_the_scan_catches_a_factory_without_device(tmp_path, monkeypatch):
    bad = tmp_path / "nngraph"
    (bad / "models").mkdir(parents=True)
    (bad / "models" / "x.py").write_text("import torch\ndef f(v):\n    return v + torch.arange(3)\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", bad)
    found = _factories_without_device()
    assert found == [("models/x.py", "f", 3, "arange")] and _allowed("models/x.py", "f") is None


# --------------------------------------------------------------------------- the guard


class _StrayFactoryGuard(TorchFunctionMode):
    """Fails on an op that mixes a default-device (meta) tensor with the data's tensors.

    The CUDA rule it mirrors: a CPU tensor may meet CUDA data only as a 0-dim scalar. So
    a meta tensor of one or more dimensions next to any real tensor is the bug. (Host-side
    tensors that never meet the data pass.) PyG's own factories (its collation's slice
    and increment bookkeeping, which it reads back with ``.item()``) are made on the CPU,
    where PyG makes them outside this test: only nngraph's code is under the guard.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in FACTORIES and kwargs.get("device") is None and _called_from_pyg():
            kwargs = {**kwargs, "device": "cpu"}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t.is_meta and t.dim() > 0 for t in inputs) and any(not t.is_meta for t in inputs):
            ours = [f for f in traceback.extract_stack() if "/nngraph/" in f.filename and "/tests/" not in f.filename]
            where = f"{ours[-1].filename}:{ours[-1].lineno} {ours[-1].line}" if ours else "outside nngraph"
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes a tensor made without device= "
                                 f"with the data: {where}")
        return func(*args, **kwargs)


def _called_from_pyg() -> bool:
    """Whether the innermost caller outside torch itself is PyTorch Geometric's code."""
    frame = sys._getframe(2)
    while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
        frame = frame.f_back
    return frame is not None and f"{os.sep}torch_geometric{os.sep}" in frame.f_code.co_filename


class stray_factory_guard:
    """On the CPU: default device "meta" plus the guard; elsewhere: nothing (the device
    itself mixes no CPU tensor in)."""

    def __init__(self, device: str):
        self.active = device == "cpu"
        self.modes = [torch.device("meta"), _StrayFactoryGuard()]

    def __enter__(self):
        if self.active:
            for mode in self.modes:
                mode.__enter__()

    def __exit__(self, *exc):
        if self.active:
            for mode in reversed(self.modes):
                mode.__exit__(*exc)


def test_the_guard_catches_a_factory_without_device():
    x = torch.ones(3)
    with pytest.raises(AssertionError, match="without device="), stray_factory_guard("cpu"):
        _ = x + torch.arange(3)
    with stray_factory_guard("cpu"):
        y = x + torch.arange(3, device=x.device)
    assert y.tolist() == [1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- inputs


def _siren_batch(count=3, hidden=8):
    """A template graph and a fast-path batch of ``count`` random SIRENs (host-built)."""
    gen = torch.Generator().manual_seed(0)
    template = nngraph.to_graph(Siren(hidden=hidden), torch.zeros(1, 2))
    params = {k: torch.randn(count, *v.shape, generator=gen) * 0.5 for k, v in Siren(hidden=hidden).state_dict().items()}
    return template, params, graphs_from_params(template, params)


def _cnn_batch():
    from nngraph.examples import ResidualCNN, TwoBranchCNN

    graphs = [nngraph.to_graph(randomise(net().eval(), seed), torch.zeros(1, 1, 8, 8))
              for seed, net in enumerate((ResidualCNN, TwoBranchCNN))]
    return nngraph.collate(graphs)


def _close(a: torch.Tensor, b: torch.Tensor, device: str, tol: float = 1e-4) -> bool:
    """Bitwise on the CPU (the same code), to ``tol`` across devices: |a - b| <= tol (1 + |b| + max|b|).

    The max|b| term measures rounding against the tensor's scale: an entry that is a sum of
    large terms cancelling to a small value (a probe's gradient through sin(30 z)) carries the
    rounding of those terms, not of its own size (on an H200: 5e-3 on an entry of 1.5 in a
    gradient whose largest entry is 594, 9e-6 of that scale)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if device == "cpu":
        return torch.equal(a, b)
    scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
    return torch.allclose(a, b, atol=tol * scale, rtol=tol)


# --------------------------------------------------------------------------- execute, fast path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["siren", "cnn"])
def test_execute_runs_where_the_graph_is(device, family):
    if family == "siren":
        batch, x = _siren_batch()[2], torch.rand(5, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    else:
        batch, x = _cnn_batch(), torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y_cpu, acts_cpu = nngraph.execute(batch, x)
    on = batch.clone().to(device)
    with stray_factory_guard(device):
        y, acts = nngraph.execute(on, x.to(device))
    assert y.device.type == acts.device.type == device
    assert _close(y, y_cpu, device) and _close(acts, acts_cpu, device)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_builds_graphs_on_the_template_device(device):
    template, params, batch = _siren_batch()
    with stray_factory_guard(device):
        moved = graphs_from_params(template.clone().to(device), {k: v.to(device) for k, v in params.items()})
    for key in ("x", "edge_attr", "edge_index", "batch", "ptr", "node_act"):
        assert moved[key].device.type == device and _close(moved[key], batch[key], device), key
    x = torch.rand(4, 2, generator=torch.Generator().manual_seed(2))
    assert _close(nngraph.execute(moved, x.to(device))[0], nngraph.execute(batch, x)[0], device)


def test_a_batch_moves_back_and_forth_and_stays_equal():
    batch = _siren_batch()[2]
    assert to_device(batch, torch.device("cpu")) is batch  # on the CPU nothing is copied
    back = batch.clone().to("cpu")
    assert torch.equal(back.x, batch.x) and back.spec == batch.spec


# --------------------------------------------------------------------------- models

MODELS = [
    ("nggnn", {}),
    ("nggnn", {"probes": 4, "reverse_edges": True}),
    ("ngt", {}),
    ("ngt", {"probes": 4, "reverse_edges": True}),
    ("ngt", {"probes": 4, "readout": "parameters"}),
    *((name, {}) for name in ("mlp", "deepsets", "statnn", "nfn-np", "nfn-hnp")),
]
SMALL = {"nggnn": dict(hidden=16, edge_hidden=8, layers=2), "ngt": dict(hidden=16, edge_hidden=8, layers=2, heads=2),
         "mlp": dict(hidden=16), "deepsets": dict(hidden=16), "statnn": dict(hidden=16),
         "nfn-np": dict(hidden_chan=4, head_hidden=16), "nfn-hnp": dict(hidden_chan=4, head_hidden=16)}


def _output_sum(out) -> torch.Tensor:
    leaves = list(out.values()) if isinstance(out, dict) else [out]
    return sum(leaf.float().square().sum() for leaf in leaves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kwargs", MODELS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MODELS)])
def test_model_forward_backward_on_device(device, name, kwargs):
    batch = _siren_batch()[2]
    torch.manual_seed(0)
    model = create_model(name, example=batch, out_dim=3, **SMALL[name], **kwargs)
    if kwargs.get("readout") == "parameters":
        with torch.no_grad():
            for p in model.readout.parameters():  # the edit heads start at zero; make them informative
                p.normal_(0, 0.2)
    reference = _output_sum(model(batch))
    reference.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.to(device)
    on = batch.clone().to(device)
    with stray_factory_guard(device):
        loss = _output_sum(model(on))
    loss.backward()
    assert loss.device.type == device and _close(loss, reference, device, tol=1e-3)
    for n, p in model.named_parameters():
        if n in grads:
            assert p.grad.device.type == device and _close(p.grad, grads[n], device, tol=1e-3), n


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("separable", [True, False])
def test_fitting_kernel_on_device(device, separable):
    spec = SirenSpec(hidden=8, depth=2)
    images = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(0))
    theta = pack(spec, init_params(spec, [0, 1, 2]))
    recipe = FitRecipe(steps=15, lr=1e-3, target_psnr=None)
    ref = fit_chunk(spec, recipe, images, theta, separable=separable)
    with stray_factory_guard(device):
        out = fit_chunk(spec, recipe, images.to(device), theta.to(device), separable=separable)
    assert out[0].device.type == device
    assert ref[2].tolist() == out[2].cpu().tolist() == [15, 15, 15]
    # numpy's sin/cos on the CPU, torch's on a GPU: the same fit up to rounding
    assert _close(out[0], ref[0], device, tol=1e-3) and _close(out[1], ref[1], device, tol=1e-2)
    assert ref[3][-1] < ref[3][0]


@pytest.mark.parametrize("separable", [True, False])
def test_the_fitting_kernels_torch_sin_cos_match_numpys(separable):
    """The GPU branch of the kernel (torch.sin/cos into the buffers) on the CPU, against numpy's."""
    from nngraph.data.fitting import _BatchFit

    spec = SirenSpec(hidden=8, depth=3)
    theta = pack(spec, init_params(spec, [0, 1]))
    target = torch.rand(2, 1, 42, generator=torch.Generator().manual_seed(0)) - 0.5
    results = []
    for host in (True, False):
        kern = _BatchFit(spec, 6, 7, 2, separable=separable)
        if not host:
            kern.host, kern.sin, kern.cos = False, torch.sin, torch.cos
        residual = kern.forward(theta, target).clone()
        results.append((residual, kern.backward(theta, residual).clone()))
    (r_np, g_np), (r_t, g_t) = results
    assert torch.allclose(r_np, r_t, atol=1e-5) and torch.allclose(g_np, g_t, atol=1e-4)
    assert g_np.abs().max() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_zoo_training_on_device(device):
    from nngraph.data import zoo

    gen = torch.Generator().manual_seed(0)
    data = zoo.make_zoo_data(torch.rand(64, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen),
                             torch.rand(32, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen))
    training = dict(optimizer="adam", lr=1e-2, weight_decay=0.0, momentum=0.0, schedule="cosine", batch_size=16,
                    steps=5, data_fraction=1.0, label_noise=0.0)
    ref, acc_ref = zoo.train_and_evaluate(zoo.FIXED_ARCHITECTURE, training, data, seed=0)
    state, acc = zoo.train_and_evaluate(zoo.FIXED_ARCHITECTURE, training, data, seed=0, device=device)
    assert all(v.device.type == "cpu" for v in state.values())  # stored as a CPU state dict
    assert all(_close(state[k].float(), ref[k].float(), device, tol=1e-3) for k in ref)
    assert device != "cpu" or acc == acc_ref


# --------------------------------------------------------------------------- training


def _config(tmp_path, data, **kwargs) -> TrainConfig:
    base = dict(task="classify", data=str(data), model="ngt", out=str(tmp_path / "run"), epochs=1, batch_size=8,
                lr=3e-3, warmup_steps=2, model_kwargs={"hidden": 16, "edge_hidden": 8, "layers": 1, "heads": 2,
                                                       "probes": 2})
    return TrainConfig(**{**base, **kwargs})


@pytest.mark.parametrize("device", DEVICES)
def test_one_training_epoch_on_device(tmp_path, inr_corpus, device):
    trainer = Trainer(_config(tmp_path, inr_corpus, device=device))
    assert all(p.device.type == device for p in trainer.model.parameters())
    loss = trainer.train_epoch(progress=False)
    metrics = trainer.evaluate("val")
    assert torch.isfinite(torch.tensor(loss)) and 0 <= metrics["accuracy"] <= 1
    if device != "cpu":  # the same epoch on the CPU gives the same loss up to rounding
        cpu = Trainer(_config(tmp_path / "cpu", inr_corpus, device="cpu"))
        assert abs(cpu.train_epoch(progress=False) - loss) < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoints_load_on_the_cpu(tmp_path, inr_corpus, device):
    from nngraph.checkpoint import load_weights
    from nngraph.train import train

    train(_config(tmp_path, inr_corpus, device=device, precision="bf16"), progress=False)
    state = load_weights(tmp_path / "run" / "best.safetensors")[0]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())  # checkpoints stay fp32
    config = _config(tmp_path, inr_corpus, device="cpu")
    Trainer(config).model.load_state_dict(state)


# --------------------------------------------------------------------------- bf16


def test_bf16_training_is_finite_and_close_to_fp32(tmp_path, inr_corpus):
    from nngraph.train import train

    runs = {p: train(_config(tmp_path / p, inr_corpus, epochs=2, device="cpu", precision=p), progress=False)
            for p in ("fp32", "bf16")}
    for p in ("fp32", "bf16"):
        for record in runs[p]["history"]:
            assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()
    fp32, bf16 = runs["fp32"]["history"], runs["bf16"]["history"]
    assert bf16[-1]["train_loss"] != fp32[-1]["train_loss"]  # bf16 really ran in lower precision
    for a, b in zip(fp32, bf16):
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.05 * abs(a["train_loss"])
        assert abs(a["val_loss"] - b["val_loss"]) <= 0.05 * abs(a["val_loss"])
    assert abs(runs["fp32"]["test"]["accuracy"] - runs["bf16"]["test"]["accuracy"]) <= 0.25


def test_bf16_autocast_runs_the_products_in_bf16():
    batch = _siren_batch()[2]
    torch.manual_seed(0)
    model = create_model("ngt", example=batch, out_dim=3, **SMALL["ngt"])
    with autocast(torch.device("cpu"), "bf16"):
        out = model(batch)
    assert out.dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert model(batch).dtype == torch.float32


# --------------------------------------------------------------------------- resolution


def test_device_strings():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_precision("bf16") == "bf16"
    for bad in ("gpu", "cuda:x", "tpu", "cuda0"):
        with pytest.raises(DeviceError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="precision"):
        resolve_precision("fp16")


@pytest.mark.skipif(CUDA, reason="checks the message where CUDA is absent")
def test_cuda_asked_for_without_cuda_names_it():
    with pytest.raises(DeviceError, match="'cuda:1' asked for, but this torch sees no CUDA GPU"):
        resolve_device("cuda:1")


def test_cli_device_errors_are_one_line(tmp_path, inr_corpus, capsys):
    from nngraph.cli import main

    code = main(["train", "--task", "classify", "--data", str(inr_corpus), "--model", "ngt",
                 "--out", str(tmp_path / "r"), "--device", "tpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "unknown device 'tpu'" in err
    assert main(["data", "inrs", "--out", str(tmp_path / "c"), "--device", "gpu0", "--no-progress"]) == 2
    assert main(["data", "zoo", "--out", str(tmp_path / "z"), "--device", "gpu0", "--no-progress"]) == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- several GPUs


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_match_one(tmp_path, inr_corpus):
    """torchrun with 2 processes on 2 GPUs (NCCL) gives the same run as one GPU."""
    from nngraph.train import train

    single = train(_config(tmp_path / "one", inr_corpus, epochs=2, device="cuda"), progress=False)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        from nngraph.train import TrainConfig, train
        cfg = TrainConfig(**{_config(tmp_path / 'two', inr_corpus, epochs=2, device='cuda').to_json()!r})
        train(cfg, progress=False)
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                    str(script)], check=True, env=env, capture_output=True, timeout=300)
    import json

    two = json.loads((tmp_path / "two" / "run" / "metrics.json").read_text())
    for a, b in zip(single["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-3
    assert abs(single["test"]["loss"] - two["test"]["loss"]) <= 1e-3
