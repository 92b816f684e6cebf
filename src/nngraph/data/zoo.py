"""CNN zoo: small CNNs with sampled architectures and training, for accuracy prediction.

A zoo item is a small image classifier trained here, labelled with its accuracy on
held-out images. Architectures and training recipes are sampled so that the test
accuracies spread from near chance to the best these small nets reach.

Architecture spec (a JSON-serialisable dict, see ``sample_architecture``)::

    {"version": 1, "in_channels": 1, "num_classes": 10,
     "activation": "relu", "batchnorm": False,
     "layers": [{"channels": 16, "kernel": 3, "stride": 1, "residual": False}, ...]}

``build_cnn`` turns it into blocks ``h = act(bn(conv(h)))`` (``bn`` only with
``batchnorm``); a block with ``residual`` computes ``h = skip(h) + act(bn(conv(h)))``
where ``skip`` is the identity when shape is kept and a bias-free 1x1 conv (with the
block's stride) otherwise. Then global average pooling, flatten and a linear head.
Convs use ``padding = kernel // 2`` so stride 1 keeps the spatial size; a stride-2
conv halves it (rounding up). A layer may set ``"padding"`` explicitly (imported Small
CNN Zoo networks use 0, TensorFlow's ``"valid"``). A spec with ``"family":
"wild-park"`` describes a neural-graphs CNN Wild Park network instead
(:mod:`nngraph.data.park`).

Training spec (see ``sample_training``)::

    {"optimizer": "adam" | "sgd", "lr", "weight_decay", "momentum", "schedule":
     "constant" | "cosine", "batch_size", "steps", "data_fraction", "label_noise"}

``steps`` optimiser steps on minibatches drawn epoch by epoch from a random subset of
``data_fraction`` of the training images, of which a fraction ``label_noise`` have their
label replaced by a uniformly random class. ``adam`` is AdamW (decoupled weight decay),
``sgd`` is SGD with momentum and L2 weight decay. Gradients are clipped to norm 10.

Net ``i`` of a zoo depends only on ``(seed, i)`` (see ``net_rngs``), so any range of a
zoo can be regenerated on its own; ``generate`` trains every net with one torch thread,
because conv kernels sum in a thread-dependent order and a net must come out bitwise the
same whichever process or shard trains it.

Speed (2-core CPU, 14x14 Fashion-MNIST, ``benchmarks/bench_zoo.py``): cost is dominated
by conv arithmetic, so one-thread worker processes (one per core) are the fast layout;
measured alternatives that did not help: channels_last, training several nets of one
architecture as one grouped conv, and oneDNN off (2x slower).
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nngraph.device import to_device
from nngraph.errors import NNGraphError
from nngraph.graph.activations import ACTIVATION_MODULES
from nngraph.progress import Progress
from nngraph.schedule import cosine_decay

SPEC_VERSION = 1
CHANNELS = (4, 8, 16, 32)
KERNELS = (3, 5)
MIN_DEPTH, MAX_DEPTH = 2, 5
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "leaky_relu")  # the ones sampled (ACTIVATION_MODULES names)
NUM_CLASSES = 10
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
GRAD_CLIP = 10.0
EVAL_BATCH = 1000

FIXED_ARCHITECTURE: dict = {
    "version": SPEC_VERSION,
    "in_channels": 1,
    "num_classes": NUM_CLASSES,
    "activation": "relu",
    "batchnorm": False,
    "layers": [
        {"channels": 16, "kernel": 3, "stride": 2, "residual": False},
        {"channels": 16, "kernel": 3, "stride": 2, "residual": False},
        {"channels": 16, "kernel": 3, "stride": 2, "residual": False},
    ],
}
"""The one architecture of the fixed-architecture zoo (varied training only).

Three 3x3 convs with 16 channels and stride 2, ReLU, global average pooling and a
linear head: the shape of the "Small CNN Zoo" (Unterthiner et al., 2020) that
NFN-style baselines were built for (14x14 -> 7x7 -> 4x4 -> 2x2)."""


# --------------------------------------------------------------------------- architectures


def sample_architecture(rng: np.random.Generator) -> dict:
    """Sample an architecture spec.

    Depth uniform in 2..5; every layer's channels uniform in ``CHANNELS`` and kernel in
    ``KERNELS``; one activation, one BatchNorm flag and one residual flag per network
    (residual applies to every block after the first); 0, 1 or 2 layers (uniformly,
    at most ``depth``), chosen uniformly, have stride 2 and downsample.
    """
    depth = int(rng.integers(MIN_DEPTH, MAX_DEPTH + 1))
    activation = ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]
    batchnorm = bool(rng.random() < 0.5)
    residual = bool(rng.random() < 0.5)
    n_down = min(int(rng.integers(3)), depth)
    down = {int(i) for i in rng.choice(depth, size=n_down, replace=False)}
    layers = []
    for i in range(depth):
        layers.append(
            {
                "channels": int(CHANNELS[int(rng.integers(len(CHANNELS)))]),
                "kernel": int(KERNELS[int(rng.integers(len(KERNELS)))]),
                "stride": 2 if i in down else 1,
                "residual": residual and i > 0,
            }
        )
    return {
        "version": SPEC_VERSION,
        "in_channels": 1,
        "num_classes": NUM_CLASSES,
        "activation": activation,
        "batchnorm": batchnorm,
        "layers": layers,
    }


def validate_architecture(arch: Mapping) -> None:
    """Raise ``NNGraphError`` (one line) if ``arch`` is not a valid architecture spec."""

    def bad(what: str) -> NNGraphError:
        return NNGraphError(f"CNN architecture spec: {what}; see nngraph.data.zoo for the format")

    if not isinstance(arch, Mapping):
        raise bad(f"expected a dict, got {type(arch).__name__}")
    if arch.get("version") != SPEC_VERSION:
        raise bad(f"version {arch.get('version')!r} is not {SPEC_VERSION}")
    if arch.get("activation") not in ACTIVATION_MODULES:
        raise bad(f"activation {arch.get('activation')!r} is not one of {tuple(ACTIVATION_MODULES)}")
    for key in ("in_channels", "num_classes"):
        if not isinstance(arch.get(key), int) or arch[key] < 1:
            raise bad(f"{key} must be a positive int, got {arch.get(key)!r}")
    layers = arch.get("layers")
    if not isinstance(layers, list) or not layers:
        raise bad("layers must be a non-empty list")
    for i, layer in enumerate(layers):
        c, k, s = layer.get("channels"), layer.get("kernel"), layer.get("stride")
        if not isinstance(c, int) or c < 1:
            raise bad(f"layer {i} channels must be a positive int, got {c!r}")
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise bad(f"layer {i} kernel must be a positive odd int, got {k!r}")
        if s not in (1, 2):
            raise bad(f"layer {i} stride must be 1 or 2, got {s!r}")
        p = layer.get("padding", k // 2)
        if not isinstance(p, int) or p < 0:
            raise bad(f"layer {i} padding must be an int >= 0, got {p!r}")


class ConvBlock(nn.Module):
    """``y = act(bn(conv(x)))``, or ``y = skip(x) + act(bn(conv(x)))`` when residual.

    ``skip`` is the identity when channels and stride allow it, else a 1x1 conv without
    bias. The conv has a bias only without BatchNorm (BN's shift replaces it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        activation: str,
        batchnorm: bool,
        residual: bool,
        padding: int | None = None,
    ):
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=padding, bias=not batchnorm
        )
        self.norm = nn.BatchNorm2d(out_channels) if batchnorm else None
        self.act = ACTIVATION_MODULES[activation]()
        self.residual = residual
        needs_projection = residual and (in_channels != out_channels or stride != 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # [B, C_out, H', W']
        if self.norm is not None:
            h = self.norm(h)
        h = self.act(h)
        if not self.residual:
            return h
        s = x if self.skip is None else self.skip(x)  # [B, C_out, H', W']
        return s + h


class ZooCNN(nn.Module):
    """Conv blocks, global average pooling and a linear head; input ``[B, C_in, H, W]``."""

    def __init__(self, arch: Mapping):
        super().__init__()
        validate_architecture(arch)
        blocks = []
        c_in = arch["in_channels"]
        for layer in arch["layers"]:
            blocks.append(
                ConvBlock(
                    c_in,
                    layer["channels"],
                    layer["kernel"],
                    layer["stride"],
                    arch["activation"],
                    bool(arch["batchnorm"]),
                    bool(layer.get("residual", False)),
                    layer.get("padding"),
                )
            )
            c_in = layer["channels"]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c_in, arch["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)  # [B, C, H', W']
        h = self.pool(h)  # [B, C, 1, 1]
        h = self.flatten(h)  # [B, C]
        return self.head(h)  # [B, num_classes]


def build_cnn(arch: Mapping) -> nn.Module:
    """Build the (untrained, PyTorch-default-initialised) CNN of an architecture spec."""
    if isinstance(arch, Mapping) and arch.get("family") == "wild-park":
        from nngraph.data.park import ParkCNN

        return ParkCNN(arch)
    return ZooCNN(arch)


def forward_macs(arch: Mapping, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass on one ``height x width`` image."""
    macs, c_in, h, w = 0, arch["in_channels"], height, width
    for layer in arch["layers"]:
        c, k, s = layer["channels"], layer["kernel"], layer["stride"]
        p = layer.get("padding", k // 2)
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        macs += c_in * c * k * k * h * w
        if layer.get("residual") and (c_in != c or s != 1):
            macs += c_in * c * h * w
        c_in = c
    return macs + c_in * arch["num_classes"]


# --------------------------------------------------------------------------- training recipes


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A sample of ``exp(U(log low, log high))``."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_training(rng: np.random.Generator) -> dict:
    """Sample a training recipe (see the module docstring for the fields).

    The ranges are chosen so that accuracies spread from chance to the best: learning
    rates reach both too small and too large values, the step budget is log-uniform,
    the data fraction goes down to a few hundred Fashion-MNIST images, and half of the
    nets get label noise.
    """
    optimizer = "adam" if rng.random() < 0.6 else "sgd"
    lr = _log_uniform(rng, 1e-4, 3e-2) if optimizer == "adam" else _log_uniform(rng, 3e-3, 1.0)
    weight_decay = 0.0 if rng.random() < 0.3 else _log_uniform(rng, 1e-6, 1e-2)
    return {
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": 0.9 if optimizer == "sgd" else 0.0,
        "schedule": SCHEDULES[int(rng.integers(len(SCHEDULES)))],
        "batch_size": int((16, 32, 64)[int(rng.integers(3))]),
        "steps": int(round(_log_uniform(rng, 30, 1500))),
        "data_fraction": _log_uniform(rng, 0.005, 0.5),
        "label_noise": 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.6)),
    }


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ZooData:
    """Images and labels for zoo training.

    Attributes:
        train_x: ``[n_train, C, H, W]`` float32 in [0, 1].
        train_y: ``[n_train]`` int64 class indices.
        test_x: ``[n_test, C, H, W]`` float32 in [0, 1] (held out; the accuracy label).
        test_y: ``[n_test]`` int64.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise NNGraphError(
                    f"zoo data: {split} images must be [n, C, H, W] with n labels [n], got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}; use nngraph.data.zoo.prepare_images"
                )
            if not x.is_floating_point() or y.dtype != torch.int64:
                raise NNGraphError(
                    f"zoo data: {split} images must be float and labels int64, got {x.dtype} and "
                    f"{y.dtype}; use nngraph.data.zoo.prepare_images"
                )

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])


def as_zoo_data(data) -> ZooData:
    """``data`` as ``ZooData``: a ``ZooData`` or a mapping with the same four keys."""
    if isinstance(data, ZooData):
        return data
    if isinstance(data, Mapping):
        missing = {"train_x", "train_y", "test_x", "test_y"} - set(data)
        if missing:
            raise NNGraphError(f"zoo data: missing keys {sorted(missing)}; give train_x, train_y, test_x, test_y")
        return ZooData(data["train_x"], data["train_y"], data["test_x"], data["test_y"])
    raise NNGraphError(f"zoo data: expected ZooData or a dict, got {type(data).__name__}")


def downsample(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average-pool images by an integer ``factor`` (``[n, C, H, W] -> [n, C, H/f, W/f]``).

    Extra rows/columns that do not fill a ``factor x factor`` window are dropped.
    """
    if factor < 1:
        raise NNGraphError(f"downsample factor must be >= 1, got {factor}")
    if factor == 1:
        return images
    return F.avg_pool2d(images, factor)


def prepare_images(images, factor: int = 1) -> torch.Tensor:
    """Images (``[n, H, W]`` or ``[n, C, H, W]``; uint8 0..255 or float in [0, 1]) as
    float32 ``[n, C, H/factor, W/factor]`` in [0, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    if x.dim() == 3:
        x = x.unsqueeze(1)  # [n, 1, H, W]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return downsample(x, factor).contiguous()


def make_zoo_data(train_x, train_y, test_x, test_y, factor: int = 1, test_limit: int | None = None) -> ZooData:
    """``ZooData`` from raw arrays: images through ``prepare_images``, labels to int64.

    ``test_limit`` keeps the first ``test_limit`` test images (for a cheaper label).
    """
    if test_limit is not None:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    return ZooData(
        prepare_images(train_x, factor),
        torch.as_tensor(np.asarray(train_y)).long(),
        prepare_images(test_x, factor),
        torch.as_tensor(np.asarray(test_y)).long(),
    )


# --------------------------------------------------------------------------- train and evaluate


def _make_optimizer(params, training: Mapping) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, as the recipe says."""
    if training["optimizer"] == "adam":
        return torch.optim.AdamW(params, lr=training["lr"], weight_decay=training["weight_decay"])
    if training["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=training["lr"], momentum=training.get("momentum", 0.9), weight_decay=training["weight_decay"]
        )
    raise NNGraphError(f"training recipe: optimizer {training['optimizer']!r} is not one of {OPTIMIZERS}")


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``steps``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return cosine_decay(step, steps)
    raise NNGraphError(f"training recipe: schedule {schedule!r} is not one of {SCHEDULES}")


def train_subset_size(training: Mapping, n_train: int) -> int:
    """Number of training images a recipe uses out of ``n_train`` (at least 10 per class).

    A net sees ``steps * batch_size / train_subset_size(...)`` epochs of its subset.
    """
    return min(n_train, max(int(round(training["data_fraction"] * n_train)), 10 * NUM_CLASSES))


def _training_subset(data: ZooData, training: Mapping, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random ``data_fraction`` subset of the training set, with label noise applied."""
    n = data.train_x.shape[0]
    n_used = train_subset_size(training, n)
    idx = torch.randperm(n, generator=gen)[:n_used]
    x, y = data.train_x[idx], data.train_y[idx].clone()  # [n_used, C, H, W], [n_used]
    noisy = torch.rand(n_used, generator=gen) < training["label_noise"]
    y[noisy] = torch.randint(0, NUM_CLASSES, (int(noisy.sum()),), generator=gen)
    return x, y


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches, epoch by epoch over a fresh permutation of ``range(n)``."""
    batch_size = min(batch_size, n)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch
            yield perm[start : start + batch_size]
            done += 1
            if done == steps:
                return


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on images ``x`` with labels ``y``."""
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])  # [b, num_classes]
        correct += int((logits.argmax(1) == y[start : start + EVAL_BATCH]).sum())
    return correct / x.shape[0]


def is_finite_state(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if every floating tensor of a state dict is finite."""
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


def train_and_evaluate(
    arch: Mapping, training: Mapping, data, seed: int, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], float]:
    """Train ``build_cnn(arch)`` with a recipe and return its weights and test accuracy.

    Deterministic for a given ``seed`` (initialisation, subset, label noise and batch
    order all come from it) and torch thread count. The returned state dict is that of
    the model in eval mode (BatchNorm running statistics included); the accuracy is
    measured on ``data.test_x`` in eval mode. If training diverges the weights may be
    non-finite (see ``is_finite_state``) and the accuracy is then chance level or below.
    On another ``device`` the net is initialised and its data drawn on the CPU as here,
    then trained there; the state dict comes back on the CPU.
    """
    data = as_zoo_data(data)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_cnn(arch).to(device)
    gen = torch.Generator().manual_seed(seed)
    x, y = to_device(_training_subset(data, training, gen), device)  # [n, C, H, W], [n]
    opt = _make_optimizer(model.parameters(), training)
    steps = int(training["steps"])
    model.train()
    for step, idx in enumerate(_batches(x.shape[0], int(training["batch_size"]), steps, gen)):
        for group in opt.param_groups:
            group["lr"] = training["lr"] * _lr_factor(training["schedule"], step, steps)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if not torch.isfinite(loss):
            break  # diverged: the caller sees non-finite weights
    accuracy = evaluate(model, *to_device((data.test_x, data.test_y), device))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, accuracy


# --------------------------------------------------------------------------- many nets


MAX_ATTEMPTS = 10


def net_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, int]:
    """Independent random sources of net ``index`` of zoo ``seed``.

    Returns the architecture generator, the training-recipe generator and the torch
    seed; they depend only on ``(seed, index)``.
    """
    arch_rng = np.random.default_rng([seed, index, 0])
    train_rng = np.random.default_rng([seed, index, 1])
    torch_seed = int(np.random.default_rng([seed, index, 2]).integers(2**62))
    return arch_rng, train_rng, torch_seed


def make_net(index: int, data, seed: int, fixed_arch: bool = False, device: torch.device | str = "cpu") -> dict:
    """Sample, train and evaluate net ``index`` of zoo ``seed``; the record ``generate`` yields.

    A recipe whose training diverges (non-finite weights) is replaced by the next
    sample of the same recipe generator, so the result still depends only on
    ``(seed, index)``; ``attempts`` says how many recipes were tried.
    """
    arch_rng, train_rng, torch_seed = net_rngs(seed, index)
    arch = copy.deepcopy(FIXED_ARCHITECTURE) if fixed_arch else sample_architecture(arch_rng)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        training = sample_training(train_rng)
        state, accuracy = train_and_evaluate(arch, training, data, torch_seed, device)
        if is_finite_state(state):
            break
    else:
        raise RuntimeError(f"zoo net {index} (seed {seed}) diverged {MAX_ATTEMPTS} times")
    return {
        "index": index,
        "arch": arch,
        "training": training,
        "seed": torch_seed,
        "attempts": attempt,
        "state_dict": state,
        "test_accuracy": accuracy,
    }


_WORKER_DATA: ZooData | None = None


def _make_net_single_thread(index: int, data: ZooData, seed: int, fixed_arch: bool,
                            device: torch.device | str = "cpu") -> dict:
    """``make_net`` with one torch thread (as in the workers), restoring the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_net(index, data, seed, fixed_arch, device)
    finally:
        torch.set_num_threads(threads)


def _worker_init(data: ZooData) -> None:
    """Pool initialiser: one torch thread per worker, data kept in the worker."""
    global _WORKER_DATA
    torch.set_num_threads(1)
    _WORKER_DATA = data


def _worker_make_net(args: tuple[int, int, bool]) -> dict:
    """Pool task: ``make_net`` on the worker's data."""
    index, seed, fixed_arch = args
    return make_net(index, _WORKER_DATA, seed, fixed_arch)


def generate(
    count: int,
    data,
    seed: int,
    fixed_arch: bool = False,
    progress: bool = True,
    start: int = 0,
    workers: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[dict]:
    """Yield ``count`` zoo records for nets ``start .. start + count - 1``, in order.

    Each record is ``{"index", "arch", "training", "seed", "attempts", "state_dict",
    "test_accuracy"}``; ``train_and_evaluate(arch, training, data, seed)`` reproduces it.
    Every net trains with one torch thread, in this process (``workers == 1``) or in
    ``workers`` forked processes, so records are bitwise the same for any ``workers``
    and any shard boundaries. On small CNNs, processes with one thread each beat one
    process with several threads. On a GPU (``device``) the nets train one after another
    in this process (``workers`` is ignored: forked processes cannot share CUDA).
    """
    data = as_zoo_data(data)
    indices = range(start, start + count)
    pool = None
    if workers <= 1 or torch.device(device).type != "cpu":
        records = (_make_net_single_thread(i, data, seed, fixed_arch, device) for i in indices)
    else:
        # fork, as torch's DataLoader workers do: the data is inherited, not pickled, and
        # each worker runs one torch thread (no OpenMP region is entered after the fork).
        # The pool starts before the progress bar so that no bar thread exists at the fork.
        pool = multiprocessing.get_context("fork").Pool(workers, _worker_init, (data,))
        records = pool.imap(_worker_make_net, [(i, seed, fixed_arch) for i in indices])
    try:
        label = "CNN zoo" + (" (fixed arch)" if fixed_arch else "")
        with Progress(label, count, "nets", progress) as bar:  # a live bar, or a line every 30 s
            total_acc, started = 0.0, time.perf_counter()
            for done, record in enumerate(records, 1):
                total_acc += record["test_accuracy"]
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(1, f"{rate:.2f} nets/s, mean acc {total_acc / done:.3f}")
                yield record
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
