"""Tiny corpora written exactly as the published releases lay them out, with their
networks' reference computations (written here independently of nngraph's modules).

- DWSNets / neural-graphs INR folders (``nn/inr.py``'s ``INR``: ``seq.N`` Siren layers
  with ``weight``/``bias`` and sin(30 z), a last ``nn.Linear``, output + 0.5);
- a Small CNN Zoo collection (weights.npy, layout.csv, metrics.csv.gz, index CSV) with a
  numpy forward in TensorFlow order (NHWC images, HWIO kernels, "valid" stride-2 convs);
- a CNN Wild Park folder: Ray Tune checkpoints whose config is an OmegaConf node of the
  sampler's CNNConfig (fake ``omegaconf`` classes with OmegaConf's pickled fields), and
  the sampler's forward (in-place partial residuals before the activation).
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- INR folders


class _SirenLayer(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in).uniform_(-0.3, 0.3))
        self.bias = nn.Parameter(torch.empty(dim_out).uniform_(-0.3, 0.3))

    def forward(self, x):
        return torch.sin(30.0 * F.linear(x, self.weight, self.bias))


class OfficialINR(nn.Module):
    def __init__(self, n_layers: int = 3, hidden: int = 32):
        super().__init__()
        layers = [_SirenLayer(2, hidden)] + [_SirenLayer(hidden, hidden) for _ in range(n_layers - 2)]
        self.seq = nn.Sequential(*layers, nn.Linear(hidden, 1))

    def forward(self, x):
        return self.seq(x) + 0.5


def write_mnist_inrs(root: Path, per_split=(4, 2, 3), seed: int = 0, hidden: int = 32) -> dict:
    """DWSNets MNIST layout: mnist-inrs/mnist_png_<split>_<label>_<id>/checkpoints/model_final.pth."""
    torch.manual_seed(seed)
    splits, nets = {}, {}
    k = 0
    for split, count in zip(("train", "val", "test"), per_split):
        paths, labels = [], []
        for _ in range(count):
            label = k % 10
            folder = "training" if split != "test" else "testing"
            rel = f"mnist-inrs/mnist_png_{folder}_{label}_{k}/checkpoints/model_final.pth"
            net = OfficialINR(hidden=hidden)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), root / rel)
            paths.append(rel)
            labels.append(str(label))  # DWSNets writes labels as strings
            nets[rel] = net
            k += 1
        splits[split] = {"path": paths, "label": labels}
    (root / "mnist_splits.json").write_text(json.dumps(splits))
    return nets


def write_fmnist_inrs(root: Path, per_split=(3, 2, 2), seed: int = 1) -> dict:
    """Fashion-MNIST release: fmnist_inrs/{train,test}/model_<k>.pth with an int label, splits as path lists."""
    torch.manual_seed(seed)
    splits, nets = {}, {}
    k = 0
    for split, count in zip(("train", "val", "test"), per_split):
        paths = []
        for _ in range(count):
            rel = f"fmnist_inrs/{'test' if split == 'test' else 'train'}/model_{k}.pth"
            net = OfficialINR()
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            torch.save({**net.state_dict(), "label": k % 10}, root / rel)
            paths.append(rel)
            nets[rel] = net
            k += 1
        splits[split] = paths
    (root / "splits.json").write_text(json.dumps(splits))
    return nets


# ----------------------------------------------------------------------------- Small CNN Zoo

ZOO_VARS = [  # the release's layout order: sorted variable names, bias before kernel
    ("sequential/conv2d/bias:0", (16,)),
    ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
    ("sequential/conv2d_1/bias:0", (16,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/dense/bias:0", (10,)),
    ("sequential/dense/kernel:0", (16, 10)),
]


def write_small_zoo(root: Path, runs: int = 10, steps=(0, 43, 86), seed: int = 0) -> dict:
    """A collection of ``runs`` CIFAR10-GS-like runs, every run saved at ``steps``; returns its arrays."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, start = [], 0
    for name, shape in ZOO_VARS:
        size = int(np.prod(shape))
        rows.append([name, start, start + size, str(shape)])
        start += size
    with open(root / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        w.writerows(rows)
    n_rows = runs * len(steps)
    weights = (rng.standard_normal((n_rows, start)) * 0.3).astype(np.float32)
    np.save(root / "weights.npy", weights)
    acts = ["relu", "tanh"]
    meta = []
    for r in range(n_rows):
        run, step = r // len(steps), steps[r % len(steps)]
        meta.append({"config.activation": acts[run % 2], "config.dataset": "cifar10", "config.dnn_architecture": "cnn",
                     "config.random_seed": str(100 + run), "step": str(step),
                     "test_accuracy": f"{0.1 + 0.05 * run + 0.001 * step:.4f}", "modeldir": f"run{run}"})
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(meta[0]))
        w.writeheader()
        w.writerows(meta)
    order = rng.permutation(n_rows)
    (root / "split.csv").write_text("".join(f"{i}\n" for i in order))
    return {"weights": weights, "layout": rows, "metrics": meta, "order": order}


def zoo_reference_forward(flat: np.ndarray, layout: list, activation: str, images_nhwc: np.ndarray) -> np.ndarray:
    """The Keras CNN in numpy: 3 x (valid 3x3 stride-2 conv, act), global average pool, dense."""
    var = {name: flat[a:b].reshape(eval(shape)) for name, a, b, shape in layout}
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[activation]
    h = images_nhwc.astype(np.float64)
    for layer in ("conv2d", "conv2d_1", "conv2d_2"):
        kernel, bias = var[f"sequential/{layer}/kernel:0"], var[f"sequential/{layer}/bias:0"]
        kh, kw = kernel.shape[:2]
        out_h, out_w = (h.shape[1] - kh) // 2 + 1, (h.shape[2] - kw) // 2 + 1
        z = np.zeros((h.shape[0], out_h, out_w, kernel.shape[3]))
        for i in range(out_h):
            for j in range(out_w):
                patch = h[:, 2 * i:2 * i + kh, 2 * j:2 * j + kw, :]  # [B, kh, kw, C_in]
                z[:, i, j, :] = np.einsum("byxc,yxco->bo", patch, kernel) + bias
        h = act(z)
    pooled = h.mean(axis=(1, 2))  # [B, C]
    return pooled @ var["sequential/dense/kernel:0"] + var["sequential/dense/bias:0"]


# ----------------------------------------------------------------------------- CNN Wild Park

_FAKE_MODULES = ("omegaconf", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes", "omegaconf.base",
                 "experiments", "experiments.cnn_generalization", "experiments.cnn_generalization.dataset",
                 "experiments.cnn_generalization.dataset.cnn_sampler")


def fake_omegaconf(monkeypatch) -> dict:
    """Classes named as OmegaConf's (and the sampler's CNNConfig), registered for pickling."""
    for mod in _FAKE_MODULES:
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    classes = {
        "DictConfig": ("omegaconf.dictconfig", "DictConfig"), "ListConfig": ("omegaconf.listconfig", "ListConfig"),
        "AnyNode": ("omegaconf.nodes", "AnyNode"), "IntegerNode": ("omegaconf.nodes", "IntegerNode"),
        "StringNode": ("omegaconf.nodes", "StringNode"),
        "ContainerMetadata": ("omegaconf.base", "ContainerMetadata"), "Metadata": ("omegaconf.base", "Metadata"),
        "CNNConfig": ("experiments.cnn_generalization.dataset.cnn_sampler", "CNNConfig"),
    }
    out = {}
    for key, (mod, name) in classes.items():
        cls = type(name, (), {"__module__": mod, "__qualname__": name})
        setattr(sys.modules[mod], name, cls)
        out[key] = cls
    return out


def _node(fake: dict, value, parent):
    """An OmegaConf value node as pickled: __dict__ with _metadata, _parent, _val, _flags_cache."""
    kind = "IntegerNode" if isinstance(value, int) else "StringNode" if isinstance(value, str) else "AnyNode"
    node = fake[kind]()
    meta = fake["Metadata"]()
    meta.__dict__.update(ref_type=int if kind == "IntegerNode" else str, object_type=None, optional=True, key=None,
                         flags={}, flags_root=False, resolver_cache={})
    node.__dict__.update(_metadata=meta, _parent=parent, _val=value, _flags_cache=None)
    return node


def omegaconf_config(fake: dict, config: dict):
    """``OmegaConf.create(CNNConfig(...))``'s structure: a DictConfig of nodes and ListConfigs."""
    root = fake["DictConfig"]()
    meta = fake["ContainerMetadata"]()
    meta.__dict__.update(ref_type=fake["CNNConfig"], object_type=fake["CNNConfig"], optional=True, key=None,
                         flags={}, flags_root=False, resolver_cache={}, key_type=str, element_type=None)
    content = {}
    for key, value in config.items():
        if isinstance(value, list):
            lst = fake["ListConfig"]()
            lmeta = fake["ContainerMetadata"]()
            lmeta.__dict__.update(ref_type=list, object_type=list, optional=True, key=key, flags={},
                                  flags_root=False, resolver_cache={}, key_type=int, element_type=None)
            lst.__dict__.update(_metadata=lmeta, _parent=root, _content=[_node(fake, v, None) for v in value],
                                _flags_cache=None)
            content[key] = lst
        else:
            content[key] = _node(fake, value, root)
    root.__dict__.update(_metadata=meta, _parent=None, _content=content, _flags_cache=None)
    return root


PARK_CONFIGS = [
    dict(n_layers=3, n_classes=10, channels=[3, 8, 4, 8], kernel_size=[3, 5, 3], stride=[1, 1, 1], padding=[1, 2, 1],
         residual=[-1, -1, 0], activation=["relu", "gelu", "tanh"]),
    dict(n_layers=2, n_classes=10, channels=[3, 4, 6], kernel_size=[7, 3], stride=[1, 1], padding=[3, 1],
         residual=[-1, -1], activation=["sigmoid", "leaky_relu"]),
    dict(n_layers=4, n_classes=10, channels=[3, 6, 4, 4, 8], kernel_size=[3, 3, 5, 3], stride=[1, 1, 1, 1],
         padding=[1, 1, 2, 1], residual=[-1, -1, 0, 1], activation=["none", "relu", "tanh", "gelu"]),
]


def park_state_dict(config: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ch, ks = config["channels"], config["kernel_size"]
    sd = {}
    for i in range(config["n_layers"]):
        sd[f"layers.{i}.weight"] = torch.randn(ch[i + 1], ch[i], ks[i], ks[i], generator=gen) * 0.3
        sd[f"layers.{i}.bias"] = torch.randn(ch[i + 1], generator=gen) * 0.1
    sd["fc.weight"] = torch.randn(config["n_classes"], ch[-1], generator=gen) * 0.3
    sd["fc.bias"] = torch.randn(config["n_classes"], generator=gen) * 0.1
    return sd


def park_reference_forward(config: dict, sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The Wild Park sampler's forward: in-place partial residuals, then the layer's activation."""
    acts = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "leaky_relu": F.leaky_relu, "none": lambda z: z}
    saved = {}
    for i in range(config["n_layers"]):
        x = F.conv2d(x, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"], stride=config["stride"][i],
                     padding=config["padding"][i])
        r = config["residual"][i]
        if r > -1:
            ch = min(config["channels"][r + 1], config["channels"][i + 1])
            x = x.clone()
            x[:, :ch] += saved[r][:, :ch]
        x = acts[config["activation"][i]](x)
        if i in config["residual"]:
            saved[i] = x
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def save_park_checkpoint(path: Path, config: dict, sd: dict, fake: dict) -> None:
    """A Ray Tune checkpoint as the Wild Park's trainer saves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
                "config": omegaconf_config(fake, config), "iteration": 10, "timesteps_total": None,
                "last_result": {"test/acc": 0.3, "test/loss": 1.9, "config": {"model": fake["CNNConfig"]()}},
                "ray_version": "2.3.0"}, path)


def write_wild_park(root: Path, monkeypatch, per_split=(4, 2, 2), seed: int = 0) -> dict:
    """cifar10_zooV2/<trial>/checkpoint_<k>/checkpoint.pt files and cnn_park_splits.json."""
    fake = fake_omegaconf(monkeypatch)
    gen = torch.Generator().manual_seed(seed)
    splits, nets = {}, {}
    k = 0
    for split, count in zip(("train", "val", "test"), per_split):
        entry = {"path": [], "score": [], "step": []}
        for _ in range(count):
            config = PARK_CONFIGS[k % len(PARK_CONFIGS)]
            sd = park_state_dict(config, gen)
            rel = f"cifar10_zooV2/trial_{k:05d}/checkpoint_000010/checkpoint.pt"
            save_park_checkpoint(root / rel, config, sd, fake)
            entry["path"].append(rel)
            entry["score"].append(0.2 + 0.05 * k)
            entry["step"].append(10)
            nets[rel] = (config, sd)
            k += 1
        splits[split] = entry
    (root / "cnn_park_splits.json").write_text(json.dumps(splits))
    for mod in _FAKE_MODULES:  # the importer must read the files without these classes
        monkeypatch.delitem(sys.modules, mod)
    return nets
