"""Batched fitting of many SIREN INRs at once, with a hand-written forward and backward.

Each INR ``i`` fits one image ``T_i`` (values in [0, 1], H x W pixels) on the pixel grid
``p`` of :func:`nngraph.data.inr.pixel_grid`. The loss of one INR is its mean squared
error, and the batch loss is the *sum* over INRs, so every INR gets exactly the gradient
it would get if it were fitted alone (Adam is elementwise, so the update is per INR too):

    L = sum_i L_i,    L_i = (1/P) * sum_p (f_i(p) - T_i(p))^2,    PSNR_i = -10 log10(L_i)

Parameters of a batch live in one flat buffer ``theta`` [B, n_params]; layer ``l`` is the
augmented matrix ``A_l = [W_l | b_l]`` [B, out_l, in_l + 1] (row-major), so one batched
matrix product applies weight and bias to activations that carry a constant row of ones.

Forward (``S_0 = [p; 1]``, ``U_l = w0 * A_l S_{l-1}``, ``S_l = [sin U_l; 1]``,
``f = A_out S_L + offset``) and backward (``R = f - T``, ``D = 2R/P``):

    dA_out = D S_L^T
    E_L    = (W_out^T D) * cos(U_L)                  # dL/dU_L
    dA_l   = w0 * E_l S_{l-1}^T
    E_l-1  = w0 * (W_l^T E_l) * cos(U_{l-1})

Constant factors (2/P and powers of w0) are carried as a scalar and applied to the small
gradient matrices only. Two tricks make it fast on a CPU:

- the first layer is separable on a pixel grid: with ``a = w0 (w_r r + b)`` per row and
  ``c = w0 w_c col`` per column, ``sin(a + c) = sin a cos c + cos a sin c`` and
  ``cos(a + c) = cos a cos c - sin a sin c``, so it needs H + W sines per neuron, not H*W;
- sin and cos of the hidden layers use numpy's SIMD kernels (about twice torch's speed),
  writing into preallocated buffers; chunks of INRs run on worker threads (torch and
  numpy release the GIL) with one intra-op thread each.

On a GPU (``device="cuda"``) the same kernel runs with torch's sin and cos into the same
preallocated device buffers, one chunk after another (a chunk should then hold
thousands of INRs); results come back to the CPU.

Per-INR early stop: at step t the forward pass gives L_i(theta_t); an INR whose PSNR has
reached the target keeps theta_t (it is frozen and removed from the active batch before
the update), so its recorded PSNR is exactly that of its stored parameters. The final
PSNR of every other INR comes from one extra forward pass after the last update.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch

from nngraph.data.inr import VARIANT_OFFSET, VARIANTS, Siren, init_bounds, pixel_grid
from nngraph.errors import NNGraphError
from nngraph.progress import Progress
from nngraph.schedule import cosine_decay


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SirenSpec:
    """The architecture of every INR in a corpus (the arguments of :class:`Siren`)."""

    in_features: int = 2
    hidden: int = 32
    depth: int = 2
    out_features: int = 1
    w0: float = 30.0
    variant: str = "dwsnet"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise NNGraphError(f"unknown SIREN variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.depth < 1 or self.hidden < 1:
            raise NNGraphError(f"a SIREN needs depth >= 1 and hidden >= 1, got depth={self.depth}, hidden={self.hidden}")
        if not 0 < self.w0 < math.inf:
            raise NNGraphError(f"--w0 must be a positive finite number, got {self.w0}")

    @property
    def offset(self) -> float:
        return VARIANT_OFFSET[self.variant]

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(in, out) of every Linear, in :class:`Siren` order (hidden..., out)."""
        widths = [self.in_features] + [self.hidden] * self.depth
        return list(zip(widths[:-1], widths[1:])) + [(self.hidden, self.out_features)]

    def layer_names(self) -> list[str]:
        return [f"hidden.{i}" for i in range(self.depth)] + ["out"]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """state_dict names and shapes of one INR, in :class:`Siren` order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, (fan_in, fan_out) in zip(self.layer_names(), self.layer_sizes()):
            shapes[f"{name}.weight"] = (fan_out, fan_in)
            shapes[f"{name}.bias"] = (fan_out,)
        return shapes

    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    def build(self) -> Siren:
        return Siren(self.in_features, self.hidden, self.depth, self.out_features, self.w0, self.variant)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SirenSpec":
        return cls(**d)


@dataclass(frozen=True)
class FitRecipe:
    """How to fit: Adam on the summed loss, a step budget and a learning-rate schedule.

    ``lr_t = lr * (final + (1 - final) * (1 + cos(pi * t / steps)) / 2)`` for
    ``schedule="cosine"`` (``final = final_lr_ratio``), ``lr_t = lr`` for ``"constant"``;
    the first-layer learning rate is ``first_layer_lr_scale * lr_t``. ``target_psnr``
    (dB, None = never) freezes an INR as soon as it is reached.
    """

    steps: int = 1000
    lr: float = 5e-4
    schedule: str = "constant"
    final_lr_ratio: float = 0.0
    first_layer_lr_scale: float = 1.0
    target_psnr: float | None = 40.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self):
        if self.steps < 0:
            raise NNGraphError(f"--steps must be >= 0, got {self.steps}")
        if not 0 < self.lr < math.inf:
            raise NNGraphError(f"--lr must be a positive finite number, got {self.lr}")
        if not 0 < self.first_layer_lr_scale < math.inf:
            raise NNGraphError(f"--first-layer-lr-scale must be a positive finite number, got {self.first_layer_lr_scale}")
        if self.target_psnr is not None and not math.isfinite(self.target_psnr):
            raise NNGraphError(f"--target-psnr must be a finite number of dB, got {self.target_psnr}")
        if self.schedule not in ("constant", "cosine"):
            raise NNGraphError(f"unknown learning-rate schedule {self.schedule!r}; choose constant or cosine")

    def lr_at(self, step: int) -> float:
        if self.schedule == "constant" or self.steps <= 1:
            return self.lr
        frac = cosine_decay(step, self.steps)
        return self.lr * (self.final_lr_ratio + (1.0 - self.final_lr_ratio) * frac)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FitRecipe":
        d = dict(d)
        d["betas"] = tuple(d.get("betas", (0.9, 0.999)))
        return cls(**d)


# Default recipes, chosen on 256 Fashion-MNIST training images (2->32->32->1, 28x28):
#
# - dwsnet: the published recipe FitRecipe(1000, 5e-4, "constant", target_psnr=40) reaches
#   a mean of only ~27.5 dB: the first layer starts at very low frequency (|W| <= 0.058,
#   times w0 = 30) and Adam moves it by about lr per step. A first-layer learning rate
#   25x the rest (0.075) with lr 3e-3 and a cosine decay reaches the 40 dB stop for
#   almost every image, in ~180 steps on average (budget 500). Constant lr 2e-3 cosine
#   without the first-layer boost: ~25 dB; boost 80x: unstable.
# - standard: lr 2e-3 with a cosine decay over 300 steps reaches ~40 dB (mean) in
#   ~140 steps on average; the first layer already has high frequencies.
#
# benchmarks/bench_inr_fit.py measures both on 512 images (benchmarks/results/inr_fit.json).
DEFAULT_RECIPES: dict[str, FitRecipe] = {
    "dwsnet": FitRecipe(steps=500, lr=3e-3, schedule="cosine", final_lr_ratio=0.05,
                        first_layer_lr_scale=25.0, target_psnr=40.0),
    "standard": FitRecipe(steps=300, lr=2e-3, schedule="cosine", final_lr_ratio=0.05,
                          first_layer_lr_scale=1.0, target_psnr=40.0),
}


# The recipe of the published corpora (DWSNets' MNIST INRs, the neural-graphs Fashion-MNIST INRs):
# Adam lr 5e-4, constant, 1,000 steps, without the first-layer boost. It stops far short of 40 dB
# (27.7 dB mean on 512 Fashion-MNIST images, 28.2 dB on 7,000 MNIST images), and that matters to
# the weight-space models: their first layers stay near the initialisation (mean |W_1| 0.05
# against 0.24 with the default recipe, MNIST): trained on 5,500 MNIST INRs of each corpus for 15
# epochs, NFN-NP reached 39.9 % test accuracy on this one against 24.3 % on the default one,
# DWSNet 51.8 % against 24.0 % (benchmarks/results/mnist_rows_default_fit/README.md). Only ``dwsnet`` has one.
PUBLISHED_RECIPES: dict[str, FitRecipe] = {
    "dwsnet": FitRecipe(steps=1000, lr=5e-4, schedule="constant", first_layer_lr_scale=1.0, target_psnr=40.0),
}
RECIPES = {"default": DEFAULT_RECIPES, "published": PUBLISHED_RECIPES}


def default_recipe(variant: str, recipe: str = "default", **overrides) -> FitRecipe:
    """The ``recipe`` ("default" or "published", ``RECIPES``) of ``variant`` with the non-None
    ``overrides`` applied."""
    if variant not in DEFAULT_RECIPES:
        raise NNGraphError(f"unknown SIREN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if recipe not in RECIPES:
        raise NNGraphError(f"unknown fitting recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if variant not in RECIPES[recipe]:
        raise NNGraphError(f"the {variant} variant has no {recipe} recipe (only {', '.join(RECIPES[recipe])}); "
                           f"drop --recipe {recipe} or use --variant {next(iter(RECIPES[recipe]))}")
    d = RECIPES[recipe][variant].to_dict()
    d.update({k: v for k, v in overrides.items() if v is not None})
    return FitRecipe.from_dict(d)


# --------------------------------------------------------------------------- init


def init_params(spec: SirenSpec, seeds) -> dict[str, torch.Tensor]:
    """Initial parameters of one INR per seed, stacked: {name: [B, *shape]}.

    INR ``i`` is exactly ``Siren(..., generator=torch.Generator().manual_seed(seeds[i]))``:
    the same uniform draws in the same order as :meth:`Siren.reset_parameters`.
    """
    seeds = [int(s) for s in seeds]
    shapes = spec.param_shapes()
    out = {name: torch.empty((len(seeds), *shape)) for name, shape in shapes.items()}
    bounds = [init_bounds(spec.variant, i, fan_in, spec.w0) for i, (fan_in, _) in enumerate(spec.layer_sizes())]
    names = spec.layer_names()
    gen = torch.Generator()
    for row, seed in enumerate(seeds):
        gen.manual_seed(seed)
        for name, (wb, bb) in zip(names, bounds):
            out[f"{name}.weight"][row].uniform_(-wb, wb, generator=gen)
            out[f"{name}.bias"][row].uniform_(-bb, bb, generator=gen)
    return out


# --------------------------------------------------------------------------- packing


def _layout(spec: SirenSpec) -> list[tuple[int, int, int]]:
    """(offset, out, in) of every augmented layer block [out, in+1] in the flat buffer."""
    blocks, off = [], 0
    for fan_in, fan_out in spec.layer_sizes():
        blocks.append((off, fan_out, fan_in))
        off += fan_out * (fan_in + 1)
    return blocks


def pack(spec: SirenSpec, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """{name: [B, *shape]} -> flat [B, n_params] of augmented blocks [W | b]."""
    B = next(iter(params.values())).shape[0]
    theta = torch.empty(B, spec.n_params(), dtype=torch.float32)
    for name, (off, o, i) in zip(spec.layer_names(), _layout(spec)):
        block = theta[:, off:off + o * (i + 1)].view(B, o, i + 1)
        block[:, :, :i] = params[f"{name}.weight"]
        block[:, :, i] = params[f"{name}.bias"]
    return theta


def unpack(spec: SirenSpec, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """flat [B, n_params] -> {name: [B, *shape]} (contiguous copies)."""
    B = theta.shape[0]
    out = {}
    for name, (off, o, i) in zip(spec.layer_names(), _layout(spec)):
        block = theta[:, off:off + o * (i + 1)].view(B, o, i + 1)
        out[f"{name}.weight"] = block[:, :, :i].contiguous()
        out[f"{name}.bias"] = block[:, :, i].contiguous()
    return out


# --------------------------------------------------------------------------- kernel


class _BatchFit:
    """Forward, backward and Adam for up to ``capacity`` INRs on one H x W grid.

    All activation buffers are allocated once for ``capacity`` INRs; a smaller active
    batch uses their leading rows.
    """

    def __init__(self, spec: SirenSpec, height: int, width: int, capacity: int, separable: bool = True,
                 device: torch.device | str = "cpu"):
        if spec.in_features != 2:
            raise NNGraphError(f"image INRs need in_features=2, got {spec.in_features}")
        self.spec, self.H, self.W, self.P = spec, height, width, height * width
        self.separable = separable
        self.blocks = _layout(spec)
        h, P, L = spec.hidden, self.P, spec.depth
        dev = torch.device(device)
        # numpy's SIMD sin/cos on CPU buffers (through .numpy() views), torch's elsewhere
        self.host = dev.type == "cpu"
        self.sin, self.cos = (np.sin, np.cos) if self.host else (torch.sin, torch.cos)
        grid = pixel_grid(height, width, device=dev)  # [P, 2] (row, col)
        self.rows = torch.linspace(-1.0, 1.0, height, device=dev)  # [H]
        self.cols = torch.linspace(-1.0, 1.0, width, device=dev)  # [W]
        self.coords_aug = torch.cat([grid.T, torch.ones(1, P, device=dev)], 0).contiguous()  # [3, P]
        # S[l]: sin of hidden layer l plus a constant row of ones  [cap, h+1, P]
        self.S = [torch.empty(capacity, h + 1, P, device=dev) for _ in range(L)]
        for s in self.S:
            s[:, h].fill_(1.0)
        # cos of hidden layer l [cap, h, P] (the separable first layer keeps its own in sc1)
        self.C = [None if (l == 0 and separable) else torch.empty(capacity, h, P, device=dev) for l in range(L)]
        if separable:  # first layer: sin and cos side by side per pixel row
            self.ang = torch.empty(capacity, h, height + width, device=dev)
            self.lhs = torch.empty(capacity, h, height, 2, device=dev)
            self.rhs = torch.empty(capacity, h, 2, 2 * width, device=dev)
            self.sc1 = torch.empty(capacity, h, height, 2 * width, device=dev)
        self.U = torch.empty(capacity, h, P, device=dev)  # pre-activation scratch
        self.E = torch.empty(capacity, h, P, device=dev)  # dL/dU scratch
        self.E2 = torch.empty(capacity, h, P, device=dev)
        self.Y = torch.empty(capacity, spec.out_features, P, device=dev)
        self.grad = torch.empty(capacity, spec.n_params(), device=dev)

    def _blocks(self, flat: torch.Tensor):
        B = flat.shape[0]
        return [flat[:, off:off + o * (i + 1)].view(B, o, i + 1) for off, o, i in self.blocks]

    def _bind(self, theta: torch.Tensor):
        """Views of every buffer for the active batch ``theta`` [B, n], built once per batch.

        Python-side slicing costs microseconds per view, so the views are cached while the
        same ``theta`` tensor is passed (Adam updates it in place).
        """
        key = (id(theta), theta.data_ptr(), theta.shape[0])
        if getattr(self, "_key", None) == key:
            return self._v
        B, h, L, Hh, Ww = theta.shape[0], self.spec.hidden, self.spec.depth, self.H, self.W
        v = SimpleNamespace()
        v.B = B
        v.A = self._blocks(theta)
        v.G = self._blocks(self.grad[:B])
        v.grad = self.grad[:B]
        v.S = [s[:B] for s in self.S]
        host = (lambda t: t.numpy()) if self.host else (lambda t: t)  # what self.sin / self.cos write into
        v.S_np = [host(s[:B, :h]) for s in self.S]
        v.C = [c[:B] if c is not None else None for c in self.C]
        v.C_np = [host(c) if c is not None else None for c in v.C]
        v.U = self.U[:B]
        v.U_np = host(v.U)
        v.Y = self.Y[:B]
        v.E = [self.E[:B], self.E2[:B]]
        v.W_t = [a[:, :, :h].transpose(1, 2) for a in v.A]  # W_l^T  [B, in, out]
        if self.separable:
            A1 = v.A[0]
            v.w_row, v.w_col, v.b1 = A1[:, :, 0:1], A1[:, :, 1:2], A1[:, :, 2:3]
            v.ang = self.ang[:B]
            v.ang_r, v.ang_c = v.ang[:, :, :Hh], v.ang[:, :, Hh:]
            lhs, rhs = self.lhs[:B], self.rhs[:B]
            v.lhs_s, v.lhs_c = lhs[..., 0], lhs[..., 1]
            v.rhs_00, v.rhs_01, v.rhs_10, v.rhs_11 = rhs[:, :, 0, :Ww], rhs[:, :, 0, Ww:], rhs[:, :, 1, :Ww], rhs[:, :, 1, Ww:]
            v.lhs_mat, v.rhs_mat = lhs.view(B * h, Hh, 2), rhs.view(B * h, 2, 2 * Ww)
            sc = self.sc1[:B]
            v.sc_mat = sc.view(B * h, Hh, 2 * Ww)
            v.sc_sin, v.sc_cos = sc[..., :Ww], sc[..., Ww:]
            v.S0_4d = v.S[0][:, :h].view(B, h, Hh, Ww)
        v.cos = [v.sc_cos if (l == 0 and self.separable) else v.C[l] for l in range(L)]
        self._key, self._v = key, v
        return v

    def forward(self, theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """theta [B, n], target [B, out, P] (offset already subtracted) -> residual R [B, out, P]."""
        spec, w0 = self.spec, self.spec.w0
        v = self._bind(theta)
        if self.separable:
            # angles of rows a = w0 (w_r r + b) and columns c = w0 w_c col per neuron  [B, h, H+W]
            torch.mul(v.w_row, self.rows, out=v.ang_r).add_(v.b1)
            torch.mul(v.w_col, self.cols, out=v.ang_c)
            v.ang.mul_(w0)
            torch.sin(v.ang_r, out=v.lhs_s)  # lhs [B, h, H, 2] = (sin a, cos a)
            torch.cos(v.ang_r, out=v.lhs_c)
            torch.cos(v.ang_c, out=v.rhs_00)  # rhs [B, h, 2, 2W] = [[cos c, -sin c], [sin c, cos c]]
            torch.sin(v.ang_c, out=v.rhs_10)
            torch.neg(v.rhs_10, out=v.rhs_01)
            v.rhs_11.copy_(v.rhs_00)
            torch.bmm(v.lhs_mat, v.rhs_mat, out=v.sc_mat)  # [B*h, H, 2W] = (sin(a+c) | cos(a+c))
            v.S0_4d.copy_(v.sc_sin)
        else:
            torch.matmul(v.A[0], self.coords_aug, out=v.U).mul_(w0)  # [B, h, P]
            self.sin(v.U_np, out=v.S_np[0])
            self.cos(v.U_np, out=v.C_np[0])
        for l in range(1, spec.depth):
            torch.baddbmm(v.U, v.A[l], v.S[l - 1], beta=0.0, alpha=w0, out=v.U)  # [B, h, P]
            self.sin(v.U_np, out=v.S_np[l])
            self.cos(v.U_np, out=v.C_np[l])
        torch.bmm(v.A[-1], v.S[-1], out=v.Y)  # [B, out, P]
        return v.Y.sub_(target)

    def backward(self, theta: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Gradient of sum_i mean_p R_i^2 with respect to theta: [B, n] (a reused buffer)."""
        spec, h, w0, L = self.spec, self.spec.hidden, self.spec.w0, self.spec.depth
        v = self._bind(theta)
        B, G, S = v.B, v.G, v.S
        scale = 2.0 / self.P
        # output layer: dA_out = scale * R S_L^T
        G[-1].copy_(torch.bmm(R, S[-1].transpose(1, 2)).mul_(scale))  # [B, out, h+1]
        free = list(v.E)
        if spec.out_features == 1:
            # E_L = w_out[:, None] * (cos(U_L) * R): keep F = cos * R (in the cos buffer, no
            # longer needed) and the row scale w_out, applied to the small matrices only.
            F = v.cos[L - 1]
            F.mul_(R.view(B, 1, *F.shape[2:]))
            F = F.reshape(B, h, self.P)
            rowscale = v.W_t[-1]  # [B, h, 1]
        else:
            F = free.pop()
            torch.bmm(v.W_t[-1], R, out=F)  # [B, h, P]
            F.view(v.cos[L - 1].shape).mul_(v.cos[L - 1])
            rowscale = None
        # dL/dU_l = scale * rowscale * F
        for l in range(L - 1, -1, -1):
            if l > 0:
                gt = torch.bmm(S[l - 1], F.transpose(1, 2))  # [B, h+1, h] (faster than F S^T)
                g = G[l].copy_(gt.transpose(1, 2)).mul_(w0 * scale)  # [B, h, h+1]
                Wt = v.W_t[l]  # [B, h, h]
                if rowscale is not None:
                    g.mul_(rowscale)
                    Wt = Wt * rowscale.transpose(1, 2)
                E_next = free.pop()
                torch.bmm(Wt, F, out=E_next)  # [B, h, P]
                E_next.view(v.cos[l - 1].shape).mul_(v.cos[l - 1])
                if any(F.data_ptr() == e.data_ptr() for e in v.E):
                    free.append(F)
                F, rowscale, scale = E_next, None, scale * w0
            else:
                g1 = torch.mm(self.coords_aug, F.reshape(B * h, self.P).T)  # [3, B*h]
                g = G[0].copy_(g1.T.reshape(B, h, 3)).mul_(w0 * scale)
                if rowscale is not None:
                    g.mul_(rowscale)
        return v.grad


def _adam_step(theta, grad, m, v, step: int, lr: float, recipe: FitRecipe, first_cols: int, first_scale: float):
    """One Adam update of flat buffers [B, n] in place (bias-corrected, step counts from 1)."""
    b1, b2 = recipe.betas
    m.mul_(b1).add_(grad, alpha=1.0 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
    bc1 = 1.0 - b1 ** step
    bc2 = 1.0 - b2 ** step
    denom = v.sqrt().div_(math.sqrt(bc2)).add_(recipe.eps)
    if first_scale == 1.0:
        theta.addcdiv_(m, denom, value=-lr / bc1)
    else:
        theta[:, :first_cols].addcdiv_(m[:, :first_cols], denom[:, :first_cols], value=-lr * first_scale / bc1)
        theta[:, first_cols:].addcdiv_(m[:, first_cols:], denom[:, first_cols:], value=-lr / bc1)


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10.0 * torch.log10(mse.double().clamp_min(1e-20))


def fit_chunk(
    spec: SirenSpec,
    recipe: FitRecipe,
    images: torch.Tensor,
    theta: torch.Tensor,
    separable: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """Fit the INRs of one chunk on the device of ``images``. images [B, H, W] in [0, 1], theta [B, n] initial (flat).

    Returns (theta [B, n] final, psnr [B] float64, steps [B] int64 (updates applied), and
    the mean loss of the still-active INRs at every step).
    """
    B, H, W = images.shape
    device = images.device
    kern = _BatchFit(spec, H, W, B, separable=separable, device=device)
    target = (images.reshape(B, spec.out_features, H * W).float() - spec.offset).contiguous()  # [B, out, P]
    theta = theta.to(device).clone().float().contiguous()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    final = torch.empty_like(theta)
    psnr = torch.full((B,), float("nan"), dtype=torch.float64, device=device)
    steps_done = torch.full((B,), recipe.steps, dtype=torch.int64, device=device)
    active = torch.arange(B, device=device)
    first_cols = spec.hidden * (spec.in_features + 1)
    losses = []
    for step in range(recipe.steps + 1):
        R = kern.forward(theta, target)  # [b, out, P]
        mse = R.square().sum(dim=(1, 2)) / R[0].numel()  # [b]
        losses.append(float(mse.mean()))
        p = _psnr(mse)
        done = p >= recipe.target_psnr if recipe.target_psnr is not None else torch.zeros_like(p, dtype=torch.bool)
        if step == recipe.steps:
            done = torch.ones_like(done)
        if done.any():
            idx = active[done]
            final[idx] = theta[done]
            psnr[idx] = p[done]
            steps_done[idx] = step
            keep = ~done
            if not keep.any():
                break
            active, theta, m, v, target = active[keep], theta[keep], m[keep], v[keep], target[keep]
            R = kern.forward(theta, target)  # recompute the buffers of the kept rows
        grad = kern.backward(theta, R)
        _adam_step(theta, grad, m, v, step + 1, recipe.lr_at(step), recipe, first_cols, recipe.first_layer_lr_scale)
    return final, psnr, steps_done, losses


# --------------------------------------------------------------------------- driver


@dataclass
class FitResult:
    """Fitted INRs: params {name: [B, *shape]}, psnr [B] (dB), steps [B] (updates applied)."""

    params: dict[str, torch.Tensor]
    psnr: torch.Tensor
    steps: torch.Tensor
    seconds: float = 0.0
    inr_steps: int = 0


class FitProgress:
    """INRs done of ``total``, with INRs/s and the running mean PSNR: a live bar on a terminal,
    one line every 30 s elsewhere (``nngraph.progress``), so a long build is never silent."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.progress = Progress(description, total, "INRs", enabled and total > 0)
        self.progress.__enter__()
        self.t0 = time.perf_counter()
        self.done = 0
        self.psnr_sum = 0.0

    def update(self, n: int, psnr_sum: float):
        self.done += n
        self.psnr_sum += psnr_sum
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(n, f"{rate:.1f} INRs/s, mean PSNR {self.psnr_sum / max(self.done, 1):.2f} dB")

    def close(self):
        self.progress.__exit__(None, None, None)


def fit_inrs(
    images: torch.Tensor,
    spec: SirenSpec,
    recipe: FitRecipe,
    seeds,
    *,
    chunk_size: int = 8,
    workers: int | None = None,
    progress: "bool | FitProgress" = True,
    description: str = "fitting",
    separable: bool = True,
    device: torch.device | str = "cpu",
) -> FitResult:
    """Fit one INR per image. images [B, H, W] float in [0, 1]; seeds: B ints.

    INR ``i`` starts from ``init_params(spec, [seeds[i]])`` and its result does not
    depend on the other images of the call (chunks only group work). ``workers`` threads
    (default: torch's thread count) each fit one chunk at a time with one intra-op thread.
    ``progress``: show a bar, or a :class:`FitProgress` shared by several calls.
    ``device``: where the chunks are fitted; on a GPU one after another (``workers`` is 1).
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 3:
        raise NNGraphError(f"images must be [n, H, W], got shape {tuple(images.shape)}")
    if spec.out_features != 1 or spec.in_features != 2:
        raise NNGraphError(f"fit_inrs fits grey images: need in_features=2, out_features=1, got "
                           f"{spec.in_features} and {spec.out_features}")
    seeds = [int(s) for s in seeds]
    if len(seeds) != images.shape[0]:
        raise NNGraphError(f"need one seed per image: {len(seeds)} seeds for {images.shape[0]} images")
    n = images.shape[0]
    n_threads = torch.get_num_threads()
    device = torch.device(device)
    workers = max(1, workers or n_threads) if device.type == "cpu" else 1
    theta0 = pack(spec, init_params(spec, seeds)) if n else torch.empty(0, spec.n_params())
    final = torch.empty_like(theta0)
    psnr = torch.empty(n, dtype=torch.float64)
    steps = torch.empty(n, dtype=torch.int64)
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    todo: queue.Queue = queue.Queue()
    for c in chunks:
        todo.put(c)
    own_bar = not isinstance(progress, FitProgress)
    bar = FitProgress(n, description, bool(progress)) if own_bar else progress
    lock = threading.Lock()
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def work():
        while not errors:
            try:
                a, b = todo.get_nowait()
            except queue.Empty:
                return
            try:
                th, ps, st, _ = fit_chunk(spec, recipe, images[a:b].to(device), theta0[a:b], separable=separable)
            except BaseException as exc:  # surfaced in the caller
                errors.append(exc)
                return
            final[a:b], psnr[a:b], steps[a:b] = th, ps, st
            with lock:
                bar.update(b - a, float(ps.sum()))

    torch.set_num_threads(1)
    try:
        if workers == 1:
            work()
        else:
            threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        torch.set_num_threads(n_threads)
        if own_bar:
            bar.close()
    if errors:
        raise errors[0]
    seconds = time.perf_counter() - t0
    return FitResult(unpack(spec, final), psnr, steps, seconds, int(steps.sum()))


def render(spec: SirenSpec, params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """Render stacked INRs with :class:`Siren` itself: {name: [B, ...]} -> [B, H, W] (the oracle)."""
    B = next(iter(params.values())).shape[0]
    net = spec.build()
    grid = pixel_grid(height, width)
    out = torch.empty(B, height, width)
    with torch.no_grad():
        for i in range(B):
            net.load_state_dict({k: v[i] for k, v in params.items()})
            out[i] = net(grid).reshape(height, width)
    return out


def psnr_of(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB (peak 1) per item: [B, ...] x [B, ...] -> [B] float64."""
    mse = (pred.double() - target.double()).square().flatten(1).mean(1)
    return _psnr(mse)
