"""DWSNet baseline (Navon et al., ICML 2023, "Equivariant Architectures for Learning in
Deep Weight Spaces"), written from the paper's layer definitions.

The weight space of a chain of L layers: W_i [n_i, n_{i-1}(, kh, kw)] and b_i [n_i],
i = 1..L, read off the graph as the NFN baselines read it (``nfn.chain_params``: a chain
of Linear / Conv2d layers, BatchNorm folded). Neuron layers are 0..L; the hidden ones,
1..L-1, may be permuted, the inputs (0) and outputs (L) may not:

    W_i -> P_i W_i P_{i-1}^T,   b_i -> P_i b_i,   P_0 = P_L = I.

Features. Every tensor t carries C channels and is held as [B, *A_t, F_t]: its axes over
hidden layers A_t (in ascending layer order) and F_t = (its fixed dims) x C, the fixed
dims being input or output neurons and kernel positions (not permuted, so a linear map
may mix them freely):

    W_i, 1 < i < L:  [B, n_{i-1}, n_i, k C]      W_1: [B, n_1, n_0 k C]      W_L: [B, n_{L-1}, n_L k C]
    b_i, i < L:      [B, n_i, C]                 b_L: [B, n_L C]              (k = kh kw, 1 for Linear)

The equivariant linear layer (the paper's Section 4: every block weight->weight,
weight->bias, bias->weight and bias->bias between every pair of layers). A linear map from
tensor s to tensor t commutes with the permutations exactly when it is a sum of terms,
one for each subset K of the hidden layers both tensors index: a layer in K is the same
neuron in input and output (its axis kept), a layer of s not in K is averaged over, a
layer of t not in K is broadcast:

    Y_t = c_t + sum_s sum_{K ⊆ A_s ∩ A_t} broadcast_{A_t \\ K}( Theta_{s,t,K} mean_{A_s \\ K}(X_s) )

(within one tensor every hidden layer indexes at most one axis, so these are all the
terms). The terms with the same (t, K) share the layout of their pooled inputs
[B, *K, F_s]: they are concatenated along features and mapped by one Linear, so a layer is
one matmul per (output tensor, kept axes). For the SIREN 2-32-32-1 that is W_2's four
terms (identity, rows pooled, columns pooled, both pooled) and so on, 13 in all.

Model (DWSNets' MNIST configuration: width 32, five equivariant layers, ReLU between
them, an invariant pooling head; its BatchNorm is left out, since it would make a
network's output depend on its batch-mates; inputs are scaled by 1/RMS per tensor, as the
NFN baselines do):

    h^0 = s * theta,   h^l = ReLU(DWS_l(h^{l-1}))
    y = head( concat_t [ mean_{A_t}(h_t), max_{A_t}(h_t) ] )                (readout "invariant")
    Delta theta = DWS_out(h^{L'}) / s, DWS_out zero at the start           (readout "parameters")

The invariant head pools every tensor over its hidden axes (mean and max, both
invariant) and reads the concatenation with an MLP; the editor's output layer maps to one
channel and is laid out like the parameters (the dilation task's edit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError, UnsupportedModelError
from nngraph.models.baselines.mlp import mlp, reset_mlp
from nngraph.models.baselines.nfn import chain_layout, chain_params
from nngraph.models.registry import register_model


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the weight space: its hidden axes (layer labels, ascending), their sizes,
    and the torch layout it came from (``perm``: torch dims -> [B, *set axes, *fixed dims])."""

    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    fixed: int  # product of the fixed dims (input / output neurons, kernel positions)
    shape: tuple[int, ...]  # the torch tensor's shape without the batch dim
    perm: tuple[int, ...]  # the permutation of the torch tensor's dims (batch included) into feature order


def weight_space(layer_shapes: list[tuple[int, ...]]) -> list[TensorSpec]:
    """TensorSpecs of W_1, b_1, ..., W_L, b_L (this order) of a chain with these weight shapes."""
    depth = len(layer_shapes)
    hidden = range(1, depth)  # permutable neuron layers
    specs = []
    for i, shape in enumerate(layer_shapes, start=1):
        # W_i: dim 1 = rows (layer i), dim 2 = columns (layer i-1), dims 3.. = kernel positions
        labelled = sorted((layer, dim) for layer, dim in ((i, 1), (i - 1, 2)) if layer in hidden)
        set_dims = [dim for _, dim in labelled]
        fixed_dims = [d for d in range(1, len(shape) + 1) if d not in set_dims]
        fixed = math.prod(shape[d - 1] for d in fixed_dims)
        specs.append(TensorSpec(tuple(layer for layer, _ in labelled), tuple(shape[d - 1] for d in set_dims), fixed,
                                tuple(shape), (0, *set_dims, *fixed_dims)))
        if i in hidden:  # b_i over its neurons, or b_L with the output neurons fixed
            specs.append(TensorSpec((i,), (shape[0],), 1, (shape[0],), (0, 1)))
        else:
            specs.append(TensorSpec((), (), shape[0], (shape[0],), (0, 1)))
    return specs


def to_features(tensor: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """A torch tensor [B, *shape, C] -> features [B, *A, fixed * C]."""
    x = tensor.permute(*spec.perm, tensor.dim() - 1)  # [B, *A, *fixed dims, C]
    return x.reshape(x.shape[0], *spec.sizes, -1)


def from_features(x: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """Features [B, *A, fixed * C] -> the torch layout [B, *shape, C] (inverse of ``to_features``)."""
    permuted = [spec.shape[d - 1] for d in spec.perm[1:]]  # sizes in feature order
    x = x.reshape(x.shape[0], *permuted, -1)  # [B, *A, *fixed dims, C]
    inverse = [0] * len(spec.perm)
    for position, dim in enumerate(spec.perm):
        inverse[dim] = position
    return x.permute(*inverse, x.dim() - 1)


class DWSLayer(nn.Module):
    """The equivariant linear map between weight spaces (module doc): ``in_chan`` -> ``out_chan``
    channels per tensor, one Linear per (output tensor, kept hidden axes)."""

    def __init__(self, specs: list[TensorSpec], in_chan: int, out_chan: int):
        super().__init__()
        self.specs = specs
        self.terms: list[tuple[int, tuple[int, ...], list[int]]] = []  # (output tensor, kept axes K, inputs)
        maps = []
        for t, out in enumerate(specs):
            subsets = [k for r in range(len(out.axes) + 1) for k in combinations(out.axes, r)]
            for kept in subsets:
                inputs = [s for s, spec in enumerate(specs) if set(kept) <= set(spec.axes)]
                self.terms.append((t, kept, inputs))
                maps.append(nn.Linear(sum(specs[s].fixed for s in inputs) * in_chan, out.fixed * out_chan,
                                      bias=not kept))  # c_t once per output tensor: on its fully pooled term
            count = len(subsets)
            for m in maps[-count:]:  # He initialisation of the sum of the tensor's terms
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / (m.in_features * count)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.maps = nn.ModuleList(maps)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        pooled: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

        def pool(s: int, kept: tuple[int, ...]) -> torch.Tensor:  # mean over A_s \ K: [B, *K, F_s]
            if (s, kept) not in pooled:
                axes = self.specs[s].axes
                dims = [1 + j for j, a in enumerate(axes) if a not in kept]
                pooled[(s, kept)] = xs[s].mean(dim=dims) if dims else xs[s]
            return pooled[(s, kept)]

        out: list[torch.Tensor | None] = [None] * len(self.specs)
        for (t, kept, inputs), linear in zip(self.terms, self.maps):
            spec = self.specs[t]
            y = linear(torch.cat([pool(s, kept) for s in inputs], dim=-1))  # [B, *K, F_t]
            view = [n if a in kept else 1 for a, n in zip(spec.axes, spec.sizes)]
            y = y.reshape(y.shape[0], *view, y.shape[-1])  # broadcast over A_t \ K
            out[t] = y if out[t] is None else out[t] + y
        batch = xs[0].shape[0]
        return [y.expand(batch, *spec.sizes, y.shape[-1]) for y, spec in zip(out, self.specs)]


@register_model("dwsnet", readouts=("invariant", "parameters"), baseline=True)
class DWSNet(nn.Module):
    """DWSNet: equivariant layers between weight spaces of a chain of layers (module doc).

    Args: layer_shapes (weight shape per layer, (out, in) or (out, in, kh, kw)), out_dim,
    hidden_chan (channels per weight and bias, 32 in DWSNets' MNIST runs), hidden_layers
    (equivariant layers, 5 there), head_hidden, head_layers (the invariant head's MLP; 1 = one
    Linear, as there), dropout (in the head), readout ("invariant", or "parameters" for
    edits), param_names ((weight, bias) name per layer; ``from_example`` fills it in).
    """

    def __init__(
        self,
        layer_shapes: list[tuple[int, ...]],
        out_dim: int,
        hidden_chan: int = 32,
        hidden_layers: int = 5,
        head_hidden: int = 128,
        head_layers: int = 1,
        dropout: float = 0.0,
        readout: str = "invariant",
        param_names: list[tuple[str, str]] | None = None,
    ):
        super().__init__()
        if readout not in ("invariant", "parameters"):
            raise ValueError(f"readout must be 'invariant' or 'parameters', got {readout!r}")
        if readout == "parameters" and (param_names is None or len(param_names) != len(layer_shapes)):
            raise ValueError("readout='parameters' needs param_names: (weight name, bias name) per layer")
        self.readout, self.param_names = readout, param_names
        self.layer_shapes = [tuple(int(d) for d in s) for s in layer_shapes]
        self.specs = weight_space(self.layer_shapes)
        chans = [1] + [hidden_chan] * hidden_layers
        self.layers = nn.ModuleList(DWSLayer(self.specs, a, b) for a, b in zip(chans[:-1], chans[1:]))
        if readout == "parameters":
            self.edit = DWSLayer(self.specs, chans[-1], 1)
            for param in self.edit.parameters():
                nn.init.zeros_(param)
        else:
            pooled = 2 * chans[-1] * sum(spec.fixed for spec in self.specs)  # mean and max of every tensor
            self.head = mlp([pooled] + [head_hidden] * (head_layers - 1) + [out_dim], dropout)
        n = len(self.layer_shapes)
        self.register_buffer("w_scale", torch.ones(n))
        self.register_buffer("b_scale", torch.ones(n))

    @classmethod
    def from_example(cls, batch: Batch, out_dim: int, normalise: bool = True, **kwargs):
        """Shapes from the batch; with ``normalise``, input scales 1/RMS per tensor from it (use training data)."""
        layers = chain_layout(batch)
        if kwargs.get("readout") == "parameters":
            if any(layer.norm is not None or layer.bias is None for layer in layers):
                raise UnsupportedModelError("a dwsnet editing model needs every layer to have a bias and no BatchNorm")
            kwargs["param_names"] = [(layer.weight, layer.bias) for layer in layers]
        model = cls([tuple(layer.shape) for layer in layers], out_dim, **kwargs)
        if normalise:
            with torch.no_grad():
                weights, biases = chain_params(batch)
                model.set_normalisation([w.pow(2).mean().sqrt() for w in weights],
                                        [b.pow(2).mean().sqrt() for b in biases])
        return model

    @torch.no_grad()
    def set_normalisation(self, weight_rms, bias_rms) -> None:
        """Scale layer i's weights by 1/weight_rms[i] and biases by 1/bias_rms[i] (1 where the RMS is ~0)."""
        for buf, rms in ((self.w_scale, weight_rms), (self.b_scale, bias_rms)):
            r = torch.as_tensor([float(v) for v in rms], device=buf.device)
            buf.copy_(torch.where(r > 1e-8, 1.0 / r.clamp(min=1e-8), torch.ones_like(r)))

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        weights, biases = chain_params(batch)  # [B, out, in(, kh, kw)], [B, out]
        shapes = [tuple(w.shape[1:]) for w in weights]
        if shapes != self.layer_shapes:
            raise InputShapeError(f"dwsnet was built for layers {self.layer_shapes}, got {shapes}")
        tensors = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            tensors += [w * self.w_scale[i], b * self.b_scale[i]]
        h = [to_features(x.unsqueeze(-1), spec) for x, spec in zip(tensors, self.specs)]  # [B, *A_t, F_t]
        for layer in self.layers:
            h = [torch.relu(x) for x in layer(h)]
        if self.readout == "parameters":
            delta = [from_features(x, spec)[..., 0] for x, spec in zip(self.edit(h), self.specs)]  # torch layouts
            edits = {}
            for i, (weight_name, bias_name) in enumerate(self.param_names):
                edits[weight_name] = delta[2 * i] / self.w_scale[i]
                edits[bias_name] = delta[2 * i + 1] / self.b_scale[i]
            return edits
        pooled = []
        for x, spec in zip(h, self.specs):
            dims = list(range(1, 1 + len(spec.axes)))
            pooled += [x.mean(dim=dims), x.amax(dim=dims)] if dims else [x, x]  # [B, F_t] each
        return self.head(torch.cat(pooled, dim=-1))
