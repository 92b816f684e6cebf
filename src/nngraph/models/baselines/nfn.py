"""Neural functional baselines (Zhou et al. 2023, "Permutation Equivariant Neural
Functionals"), wrapping the ``nfn`` package (pinned at 0.1.2).

NFNs read the weights of a *chain* of layers, W_1 .. W_L (Linear [out, in] or conv
[out, in, kh, kw]) with biases b_1 .. b_L, as ``nfn.common.WeightSpaceFeatures``:
weights [B, C, n_i, n_{i-1}(, kh, kw)] and biases [B, C, n_i] with C feature channels
(C = 1 at the input). An NF-layer is a linear map that commutes with the permutation
group acting on the neurons, W_i -> P_i W_i P_{i-1}^T, b_i -> P_i b_i:

- NP ("neural permutation", ``NPLinear``): every layer's neurons permutable,
  including the network's inputs and outputs (P_0, P_L arbitrary);
- HNP ("hidden neural permutation", ``HNPLinear``): only hidden neurons (P_0 = P_L = I),
  so input and output neurons keep their identity; more parameters, more expressive.

The invariant model is, as in the package's examples,

    y = head( flatten( Pool( sigma( NF_K( ... sigma( NF_1( s * theta ))))) ) )

with sigma = ReLU applied entrywise (``TupleOp``), Pool = ``NPPool`` / ``HNPPool``
(means over the permuted axes) and head an MLP. ``s`` is a fixed per-tensor input scale
(1 / RMS of that tensor on the example batch ``from_example`` saw; ``set_normalisation``).

With ``readout="parameters"`` (editing tasks) the model is equivariant instead: one more
NF layer maps the hidden channels to one, and its output, divided by ``s``, is the
change of every weight and bias, {name: [B, *shape]}:

    Delta theta = NF_out( sigma( NF_K( ... sigma( NF_1( s * theta ))))) / s

NF_out starts at zero, so the first edit is "no change".

From the graph: ``stacked_params(batch)`` gives the state_dict tensors; the weights
(``kernel`` entries, in state_dict order) must form a chain: the source neurons of
W_i are the target neurons of W_{i-1}, directly or through residual / identity /
global-pooling edges (checked on the graph). A BatchNorm directly after a layer is
folded into it (function-preserving, eval mode):

    s = gamma / sqrt(var + eps),  W' = s * W  (per output unit),  b' = s * (b - mean) + beta.

Residual connections are not represented (NFNs have no notion of them): the real
symmetry of a residual network ties the permutations of the layers a residual stream
joins, a subgroup of the NFN's group, so the NFN stays invariant, only blind to the
skip. Flatten-into-Linear heads, concatenations and projection shortcuts break the
chain and raise ``UnsupportedModelError``; use DeepSets / StatNN / the graph models.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torch_geometric.data import Batch

from nngraph.errors import InputShapeError, UnsupportedModelError
from nngraph.graph.fast import one_architecture, stacked_params
from nngraph.graph.graph import (
    EDGE_KINDS,
    NORM_BATCH,
    ROLE_INPUT,
    ROLE_OUTPUT,
    X_BIAS,
    X_NORM_BIAS,
    X_NORM_MEAN,
    X_NORM_VAR,
    X_NORM_WEIGHT,
)
from nngraph.graph.permute import tie_class_of
from nngraph.models.baselines.mlp import mlp, reset_mlp
from nngraph.models.registry import register_model

try:  # the optional dependency; the error says how to get it
    from nfn.common import ArraySpec, NetworkSpec, WeightSpaceFeatures
    from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp
except ImportError:  # pragma: no cover - exercised only without the package
    NetworkSpec = WeightSpaceFeatures = None  # type: ignore[assignment]


def _require_nfn() -> None:
    if WeightSpaceFeatures is None:
        raise UnsupportedModelError("the nfn-np / nfn-hnp baselines need the nfn package: pip install nfn==0.1.2")


@dataclass(frozen=True)
class ChainLayer:
    """One layer of the chain: its weight, bias (or None) and BatchNorm tensors (or None)."""

    weight: str
    shape: tuple[int, ...]
    bias: str | None
    norm: tuple[str, str, str, str] | None  # gamma, beta, running mean, running var
    eps: float


_LAYOUTS: dict[tuple, list[ChainLayer]] = {}


def chain_layout(batch: Batch) -> list[ChainLayer]:
    """The chain W_1..W_L of a one-architecture batch (cached per architecture)."""
    spec, b, n, e = one_architecture(batch, "nfn baselines")
    key = (tuple(spec.params), n, e, tuple(torch.bincount(batch.edge_kind[:e].cpu(), minlength=len(EDGE_KINDS)).tolist()))
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    ei = batch.edge_index[:, :e].cpu()  # graph 0: node ids 0..n-1, canonical edge order
    role = batch.node_role[:n].cpu()
    norm_kind = batch.node_norm[:n].cpu()
    eps = batch.node_eps[:n].cpu()
    weights = [p for p in spec.params if p.source != "node"]
    if any(p.source == "flat" for p in weights):
        raise UnsupportedModelError(
            "nfn baselines cannot read a Linear on a flattened feature map; use global pooling, or the deepsets/statnn/graph models"
        )
    if any(p.source == "tokens" for p in weights):
        raise UnsupportedModelError(
            "nfn baselines cannot read transformers (token constants, embeddings); use the deepsets/statnn/graph models"
        )
    unread = sorted({p.source for p in weights if p.source != "kernel"})
    if unread:
        raise UnsupportedModelError(
            f"nfn baselines read only Linear and Conv2d weights, not {', '.join(unread)} parameters (transposed "
            "convolutions, layer scales, ...); use the deepsets/statnn/graph models"
        )
    if not weights:
        raise UnsupportedModelError("nfn baselines need at least one Linear or Conv2d layer")
    # Tie classes: neurons joined by residual / identity / pooling edges carry one value.
    root = tie_class_of(SimpleNamespace(num_nodes=n, edge_kind=batch.edge_kind[:e].cpu(), edge_index=ei))
    targets, sources = [], []
    for p in weights:
        out, inn = p.shape[0], p.shape[1]
        t = ei[1, p.offset + torch.arange(out) * inn]  # [out] target node of each row
        s = ei[0, p.offset + torch.arange(inn)]  # [in] source node of each column
        if not torch.equal(t, t[0] + torch.arange(out)):
            raise UnsupportedModelError(f"nfn baselines: the units of {p.name} are not one graph layer")
        targets.append(t)
        sources.append(s)
    if not bool((role[sources[0]] == ROLE_INPUT).all()) or not bool((role[targets[-1]] == ROLE_OUTPUT).all()):
        raise UnsupportedModelError("nfn baselines need the first weight to read the inputs and the last to write the outputs")
    for i in range(1, len(weights)):
        prev, cur = targets[i - 1], sources[i]
        if prev.numel() != cur.numel() or any(root[a] != root[c] for a, c in zip(prev.tolist(), cur.tolist())):
            raise UnsupportedModelError(
                f"nfn baselines need a chain of layers: {weights[i].name} does not read the outputs of {weights[i - 1].name} "
                "(concatenation or projection shortcut); use the deepsets/statnn/graph models"
            )
    start = {int(t[0]): i for i, t in enumerate(targets)}
    bias: dict[int, str] = {}
    norm: dict[int, dict[int, str]] = {}
    for p in spec.params:
        if p.source != "node":
            continue
        i = start.get(p.offset)
        if i is None or p.shape[0] != weights[i].shape[0]:
            raise UnsupportedModelError(
                f"nfn baselines: {p.name} does not belong to the units of a Linear/Conv2d (a norm after a residual sum?)"
            )
        if p.channel == X_BIAS:
            bias[i] = p.name
        elif p.channel in (X_NORM_WEIGHT, X_NORM_BIAS, X_NORM_MEAN, X_NORM_VAR):
            if int(norm_kind[p.offset]) != NORM_BATCH:
                raise UnsupportedModelError(f"nfn baselines fold only BatchNorm into the layer before it, not {p.name}")
            norm.setdefault(i, {})[p.channel] = p.name
        else:
            raise UnsupportedModelError(f"nfn baselines cannot read {p.name}")
    layers = []
    for i, p in enumerate(weights):
        bn = norm.get(i)
        if bn is not None and len(bn) != 4:
            raise UnsupportedModelError(f"nfn baselines need all BatchNorm tensors after {p.name}")
        layers.append(
            ChainLayer(
                weight=p.name,
                shape=tuple(p.shape),
                bias=bias.get(i),
                norm=None if bn is None else (bn[X_NORM_WEIGHT], bn[X_NORM_BIAS], bn[X_NORM_MEAN], bn[X_NORM_VAR]),
                eps=float(eps[targets[i][0]]),
            )
        )
    _LAYOUTS[key] = layers
    return layers


def chain_params(batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights [B, out, in(, kh, kw)] and biases [B, out] of the chain, BatchNorm folded in."""
    layers = chain_layout(batch)
    params = stacked_params(batch)  # {name: [B, *shape]}
    weights, biases = [], []
    for layer in layers:
        w = params[layer.weight]  # [B, out, in(, kh, kw)]
        bsz, out = w.shape[:2]
        bias = params[layer.bias] if layer.bias is not None else w.new_zeros(bsz, out)  # [B, out]
        if layer.norm is not None:
            gamma, beta, mean, var = (params[name] for name in layer.norm)  # [B, out] each
            scale = gamma / torch.sqrt(var + layer.eps)  # [B, out]
            w = w * scale.view(bsz, out, *([1] * (w.dim() - 2)))
            bias = (bias - mean) * scale + beta
        weights.append(w)
        biases.append(bias)
    return weights, biases


def to_wsfeat(batch: Batch) -> "WeightSpaceFeatures":
    """The batch as nfn ``WeightSpaceFeatures``: weights [B, 1, out, in(, kh, kw)], biases [B, 1, out]."""
    _require_nfn()
    weights, biases = chain_params(batch)
    return WeightSpaceFeatures([w.unsqueeze(1) for w in weights], [b.unsqueeze(1) for b in biases])


def network_spec(layer_shapes: list[tuple[int, ...]]) -> "NetworkSpec":
    """nfn ``NetworkSpec`` of a chain (as ``nfn.common.network_spec_from_wsfeat`` builds it)."""
    _require_nfn()
    w_specs, b_specs = [], []
    last = len(layer_shapes) - 1
    for i, shape in enumerate(layer_shapes):
        w = [-1, -1, *shape[2:]]
        if i == 0:
            w[1] = shape[1]
        if i == last:
            w[0] = shape[0]
        w_specs.append(ArraySpec(tuple(w)))
        b_specs.append(ArraySpec((shape[0],) if i == last else (-1,)))
    return NetworkSpec(w_specs, b_specs)


class _NFN(nn.Module):
    mode = ""

    def __init__(
        self,
        layer_shapes: list[tuple[int, ...]],
        out_dim: int,
        hidden_chan: int = 64,
        hidden_layers: int = 2,
        head_hidden: int = 256,
        head_layers: int = 2,
        dropout: float = 0.0,
        readout: str = "invariant",
        param_names: list[tuple[str, str]] | None = None,
    ):
        super().__init__()
        _require_nfn()
        if readout not in ("invariant", "parameters"):
            raise ValueError(f"readout must be 'invariant' or 'parameters', got {readout!r}")
        if readout == "parameters" and (param_names is None or len(param_names) != len(layer_shapes)):
            raise ValueError("readout='parameters' needs param_names: (weight name, bias name) per layer")
        self.readout = readout
        self.param_names = param_names
        self.layer_shapes = [tuple(int(d) for d in s) for s in layer_shapes]
        if self.mode == "HNP" and len(self.layer_shapes) < 2:
            raise UnsupportedModelError("nfn-hnp needs at least two layers (one hidden layer); use nfn-np")
        spec = network_spec(self.layer_shapes)
        linear, pool = (NPLinear, NPPool) if self.mode == "NP" else (HNPLinear, HNPPool)
        mods: list[nn.Module] = []
        chans = 1
        for _ in range(hidden_layers):
            mods += [linear(spec, chans, hidden_chan), TupleOp(nn.ReLU())]
            chans = hidden_chan
        self.features = nn.Sequential(*mods)
        if readout == "parameters":
            self.edit = linear(spec, chans, 1)
            for param in self.edit.parameters():
                nn.init.zeros_(param)
        else:
            self.pool = pool(spec)
            self.head = mlp([chans * pool.get_num_outs(spec)] + [head_hidden] * (head_layers - 1) + [out_dim], dropout)
        n = len(self.layer_shapes)
        self.register_buffer("w_scale", torch.ones(n))
        self.register_buffer("b_scale", torch.ones(n))

    @classmethod
    def from_example(cls, batch: Batch, out_dim: int, normalise: bool = True, **kwargs):
        """Shapes from the batch; with ``normalise``, input scales 1/RMS per tensor from it (use training data)."""
        _require_nfn()
        layers = chain_layout(batch)
        if kwargs.get("readout") == "parameters":
            if any(layer.norm is not None or layer.bias is None for layer in layers):
                raise UnsupportedModelError("an nfn editing model needs every layer to have a bias and no BatchNorm")
            kwargs["param_names"] = [(layer.weight, layer.bias) for layer in layers]
        model = cls([tuple(layer.shape) for layer in layers], out_dim, **kwargs)
        if normalise:
            with torch.no_grad():
                weights, biases = chain_params(batch)
                model.set_normalisation([w.pow(2).mean().sqrt() for w in weights], [b.pow(2).mean().sqrt() for b in biases])
        return model

    @torch.no_grad()
    def set_normalisation(self, weight_rms, bias_rms) -> None:
        """Scale layer i's weights by 1/weight_rms[i] and biases by 1/bias_rms[i] (1 where the RMS is ~0)."""
        for buf, rms in ((self.w_scale, weight_rms), (self.b_scale, bias_rms)):
            r = torch.as_tensor([float(v) for v in rms])
            buf.copy_(torch.where(r > 1e-8, 1.0 / r.clamp(min=1e-8), torch.ones_like(r)))

    def reset_parameters(self) -> None:
        for m in self.features.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                m.reset_parameters()
        if self.readout == "parameters":
            for param in self.edit.parameters():
                nn.init.zeros_(param)
        else:
            reset_mlp(self.head)

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        ws = to_wsfeat(batch)  # weights [B, 1, out, in(, kh, kw)], biases [B, 1, out]
        shapes = [tuple(w.shape[2:]) for w in ws.weights]
        if shapes != self.layer_shapes:
            raise InputShapeError(f"nfn-{self.mode.lower()} was built for layers {self.layer_shapes}, got {shapes}")
        ws = WeightSpaceFeatures(
            [w * self.w_scale[i] for i, w in enumerate(ws.weights)], [b * self.b_scale[i] for i, b in enumerate(ws.biases)]
        )
        h = self.features(ws)
        if self.readout == "parameters":
            delta = self.edit(h)  # weights [B, 1, out, in(, kh, kw)], biases [B, 1, out]
            edits = {}
            for i, (weight_name, bias_name) in enumerate(self.param_names):
                edits[weight_name] = delta.weights[i][:, 0] / self.w_scale[i]
                edits[bias_name] = delta.biases[i][:, 0] / self.b_scale[i]
            return edits
        return self.head(self.pool(h).flatten(1))  # pool: [B, C, num_outs] -> [B, out_dim]


@register_model("nfn-np", readouts=("invariant", "parameters"), baseline=True)
class NFNNP(_NFN):
    """NFN with NP layers (all neurons, incl. inputs/outputs, exchangeable).

    Args: layer_shapes (weight shape per layer, (out, in) or (out, in, kh, kw)), out_dim,
    hidden_chan, hidden_layers (NF layers), head_hidden, head_layers, dropout (in the head),
    readout ("invariant", or "parameters" for edits), param_names ((weight, bias) name per
    layer; ``from_example`` fills it in).
    """

    mode = "NP"


@register_model("nfn-hnp", readouts=("invariant", "parameters"), baseline=True)
class NFNHNP(_NFN):
    """NFN with HNP layers (only hidden neurons exchangeable). Same arguments as ``NFNNP``."""

    mode = "HNP"
