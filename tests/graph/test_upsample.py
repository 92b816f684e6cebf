"""Up-sampling as graph structure: ConvTranspose1d/2d (conv_transpose kernel edges; stride, padding,
output padding, dilation, groups), nn.Upsample / F.interpolate (nearest, bilinear, linear; size or
scale factor), zero padding and spatial crops (pad edges), and milesial's and jvanvugt's U-Nets with both
decoders, also at sizes that need F.pad or crops. Execute equals the model, to_params and the fast path
are exact, permutations keep the function and move channels."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from nngraph.graph.augment import random_permutation_augment
from nngraph.graph.execute import execute
from nngraph.graph.fast import stacked_params
from nngraph.graph.graph import EDGE_CONV_T, EDGE_PAD, EDGE_UPSAMPLE_BILINEAR, EDGE_UPSAMPLE_NEAREST, GEOM_COLUMNS, edge_geometry
from nngraph.graph.permute import permute_graph
from tests.graph.helpers import assert_exact_params, assert_rel_close, assert_relabelled
from tests.graph.modern_cnns import UNet, UNetJvanvugt
from tests.graph.nets import randomise


class Decoder(nn.Module):
    """conv -> ReLU -> ``up`` -> ReLU -> conv -> mean: the up-sampling layer between two hidden layers."""

    def __init__(self, up: nn.Module, mid: int, out: int, spatial: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial == 2 else nn.Conv1d
        self.spatial = spatial
        self.enc, self.up, self.dec = conv(2, mid, 3, padding=1), up, conv(out, 3, 3)

    def forward(self, x):
        h = F.relu(self.up(F.relu(self.enc(x))))
        return self.dec(h).mean(tuple(range(2, 2 + self.spatial)))


class Interpolate(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return F.interpolate(x, **self.kwargs)


class _Crop(nn.Module):
    """x[:, :, 1:-1, 2:] and F.pad(x, [0, 1, 2, 0]): a crop, then zeros on two sides."""

    def forward(self, x):
        return F.pad(x[:, :, 1:-1, 2:], [0, 1, 2, 0])


T2, T1 = nn.ConvTranspose2d, nn.ConvTranspose1d
CASES = {
    "convT-k2s2": (lambda: Decoder(T2(4, 6, 2, stride=2), 4, 6), (2, 5, 5)),
    "convT-k3s2p1op1": (lambda: Decoder(T2(4, 5, 3, stride=2, padding=1, output_padding=1), 4, 5), (2, 5, 4)),
    "convT-k3s3-groups2-nobias": (lambda: Decoder(T2(4, 6, 3, stride=3, groups=2, bias=False), 4, 6), (2, 4, 4)),
    "convT-k3-dil2-pad2": (lambda: Decoder(T2(4, 4, 3, padding=2, dilation=2), 4, 4), (2, 5, 5)),
    "convT-depthwise": (lambda: Decoder(T2(4, 4, (2, 3), stride=(2, 1), groups=4), 4, 4), (2, 4, 5)),
    "convT1d-k4s2p1": (lambda: Decoder(T1(4, 5, 4, stride=2, padding=1), 4, 5, spatial=1), (2, 7)),
    "upsample-nearest-x2": (lambda: Decoder(nn.Upsample(scale_factor=2), 4, 4), (2, 4, 5)),
    "upsample-bilinear-x2": (lambda: Decoder(nn.Upsample(scale_factor=2, mode="bilinear"), 4, 4), (2, 4, 4)),
    "upsample-bilinear-align": (lambda: Decoder(nn.UpsamplingBilinear2d(scale_factor=2), 4, 4), (2, 3, 5)),
    "upsample-nearest2d-size": (lambda: Decoder(nn.UpsamplingNearest2d(size=(7, 9)), 4, 4), (2, 4, 4)),
    "interpolate-bilinear-x1.5": (lambda: Decoder(Interpolate(scale_factor=1.5, mode="bilinear"), 4, 4), (2, 4, 6)),
    "interpolate-size-down": (lambda: Decoder(Interpolate(size=(4, 3), mode="bilinear", align_corners=True), 4, 4),
                              (2, 6, 5)),
    "interpolate-linear-1d": (lambda: Decoder(Interpolate(scale_factor=3, mode="linear"), 4, 4, spatial=1), (2, 5)),
    "interpolate-nearest-1d": (lambda: Decoder(Interpolate(size=11), 4, 4, spatial=1), (2, 5)),
    "unet-transposed": (lambda: UNet(bilinear=False), (3, 8, 8)),
    "unet-bilinear": (lambda: UNet(bilinear=True), (3, 8, 8)),
    "unet-jvanvugt-upconv": (lambda: UNetJvanvugt(up_mode="upconv"), (3, 8, 8)),
    "unet-jvanvugt-upsample": (lambda: UNetJvanvugt(up_mode="upsample"), (3, 8, 8)),
    "unet-odd-size-pad": (lambda: UNet(bilinear=False), (3, 11, 13)),
    "unet-jvanvugt-crop": (lambda: UNetJvanvugt(depth=2, wf=1, padding=False), (3, 20, 20)),
    "pad-zeropad2d": (lambda: Decoder(nn.ZeroPad2d((1, 2, 0, 3)), 4, 4), (2, 4, 4)),
    "pad-constantpad1d": (lambda: Decoder(nn.ConstantPad1d((2, 1), 0.0), 4, 4, spatial=1), (2, 5)),
    "pad-functional-crop": (lambda: Decoder(_Crop(), 4, 4), (2, 7, 6)),
}
TRANSPOSED = ("unet-transposed", "unet-jvanvugt-upconv", "unet-odd-size-pad", "unet-jvanvugt-crop")


def _case(name: str, seed: int = 0):
    make, shape = CASES[name]
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed + 20))
    return randomise(make(), seed), x


@pytest.mark.parametrize("name", sorted(CASES))
def test_upsampling_executes_exactly_and_gives_back_parameters(name):
    model, x = _case(name)
    graph = nngraph.to_graph(model, x)
    kinds = (EDGE_CONV_T,) if "convT" in name or name in TRANSPOSED else \
        (EDGE_PAD,) if name.startswith("pad-") else (EDGE_UPSAMPLE_NEAREST, EDGE_UPSAMPLE_BILINEAR)
    assert torch.isin(graph.edge_kind, torch.tensor(kinds)).any()
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


@pytest.mark.parametrize("name", sorted(CASES))
def test_permutations_keep_the_function_and_move_channels(name):
    model, x = _case(name)
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        expected = model(x)
        moved = False
        for seed in (0, 1):
            permuted, perm = permute_graph(graph, seed)
            assert_relabelled(permuted, graph, perm)
            assert_rel_close(execute(permuted, x)[0], expected)
            moved |= bool((perm != torch.arange(len(perm))).any())
    assert moved


class _OutputSize(nn.Module):
    """``up(x, output_size=skip.size())``: the output size picks the output padding."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
        self.out = nn.Linear(2, 3)

    def forward(self, x):
        h = self.up(torch.relu(self.down(x)), output_size=x.size())
        return self.out((h + x).mean((2, 3)))


def test_transposed_conv_with_output_size_executes_exactly():
    model = randomise(_OutputSize(), 0)
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(5))
    graph = nngraph.to_graph(model, x)
    with torch.no_grad():
        assert_rel_close(execute(graph, x)[0], model(x))
    assert_exact_params(nngraph.to_params(graph), model.state_dict())


def test_transposed_conv_edges_hold_kernel_and_geometry():
    model, x = _case("convT-k3s2p1op1")
    graph = nngraph.to_graph(model, x)
    mine = graph.edge_kind == EDGE_CONV_T
    assert int(mine.sum()) == 4 * 5  # every input channel to every output channel
    geom = edge_geometry(graph)[mine][0].tolist()
    assert geom[:8] == [3, 3, 2, 2, 1, 1, 1, 1]  # kernel, stride, padding, dilation
    # edge (input i -> output j) carries W[i, j] (PyTorch's input-major weight), centred in the window
    src, dst = graph.edge_index[:, mine]
    first_in, first_out = int(src.min()), int(dst.min())
    k = graph.spec.k_max
    for e in (0, 7, 19):
        i, j = int(src[e]) - first_in, int(dst[e]) - first_out
        window = graph.edge_attr[mine][e, : k * k].reshape(k, k)
        top = (k - 3) // 2
        assert torch.equal(window[top:top + 3, top:top + 3], model.up.weight[i, j].detach())


def test_upsampling_edges_hold_output_size_and_mode():
    model, x = _case("upsample-bilinear-align")
    graph = nngraph.to_graph(model, x)
    geom = edge_geometry(graph)[graph.edge_kind == EDGE_UPSAMPLE_BILINEAR]
    out = [GEOM_COLUMNS.index(c) for c in ("out_h", "out_w", "align_corners")]
    assert len(geom) == 4 and (geom[:, out] == torch.tensor([6, 10, 1])).all()


def test_fast_path_round_trips_grouped_transposed_conv_weights():
    """graphs_from_params / stacked_params lay grouped ConvTranspose weights [in, out / g, kh, kw] out exactly."""
    models = [_case("convT-k3s3-groups2-nobias", seed)[0] for seed in range(3)]
    x = _case("convT-k3s3-groups2-nobias")[1]
    template = nngraph.to_graph(models[0], x)
    state = [m.state_dict() for m in models]
    stacked = {k: torch.stack([s[k] for s in state]) for k in state[0]}
    batch = nngraph.graphs_from_params(template, stacked)
    back = stacked_params(batch)
    for key in stacked:
        assert torch.equal(back[key], stacked[key]), key
    with torch.no_grad():
        y, _ = execute(batch, x)
        for i, m in enumerate(models):
            assert_rel_close(y[i], m(x))


@pytest.mark.parametrize("up,words", [
    (Interpolate(scale_factor=1.5), ["scale_factor=1.5", "size="]),
    (nn.Upsample(scale_factor=2, mode="bicubic"), ["'bicubic'"]),
    (Interpolate(scale_factor=2, mode="bilinear", antialias=True), ["antialias"]),
], ids=["fractional-size", "bicubic", "antialias"])
def test_unsupported_interpolations_are_refused_in_one_line(up, words):
    model = Decoder(up, 4, 4).eval()
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(model, torch.randn(1, 2, 5, 5))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


class _ReflectPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return F.pad(self.conv(x), [0, 1, 0, 1], mode="reflect").mean((2, 3))


def test_padding_other_than_zeros_is_refused_in_one_line():
    with pytest.raises(UnsupportedModelError) as info:
        nngraph.to_graph(_ReflectPad().eval(), torch.randn(1, 2, 4, 4))
    assert "\n" not in str(info.value) and "F.pad" in str(info.value) and "zeros" in str(info.value)


def test_unet_size_fixes_are_pad_edges_with_their_offsets():
    """milesial's F.pad of the up-sampled map to its skip's size (an 11 x 13 input: 4 x 6 -> 5 x 6) places it at
    offsets >= 0 of a larger map; jvanvugt's centre crop of the bridge (no padding) reads it at negative ones."""
    top_left = [GEOM_COLUMNS.index(c) for c in ("pad_h", "pad_w")]
    model, x = _case("unet-odd-size-pad")
    graph = nngraph.to_graph(model, x)
    pad = graph.edge_kind == EDGE_PAD
    src, dst = graph.edge_index[:, pad]
    assert pad.any() and (edge_geometry(graph)[pad][:, top_left] >= 0).all()
    assert (graph.node_hw[dst].prod(1) > graph.node_hw[src].prod(1)).all()
    model, x = _case("unet-jvanvugt-crop")
    graph = nngraph.to_graph(model, x)
    offsets = edge_geometry(graph)[graph.edge_kind == EDGE_PAD][:, top_left]
    assert len(offsets) and (offsets < 0).all()


def test_baselines_read_transposed_conv_weights():
    """StatNN summarises every kernel entry of a ConvTranspose (its layer gets weight statistics), and
    DeepSets' node features of its output channels see their incoming kernels: both change with them."""
    from nngraph.models.baselines.deepsets import node_set_features
    from nngraph.models.baselines.statnn import weight_values

    model, x = _case("convT-k3s3-groups2-nobias")
    graph = nngraph.to_graph(model, x)
    batch = nngraph.collate([graph])
    values, edge_id = weight_values(batch)
    upconv = batch.edge_kind[edge_id] == EDGE_CONV_T
    assert int(upconv.sum()) == model.up.weight.numel()  # each kernel entry once, no window padding
    assert torch.equal(values[upconv].sort().values, model.up.weight.detach().reshape(-1).sort().values)
    with torch.no_grad():
        model.up.weight.mul_(2.0)
    doubled = nngraph.collate([nngraph.to_graph(model, x)])
    targets = torch.unique(batch.edge_index[1, batch.edge_kind == EDGE_CONV_T])
    kernel = batch.spec[0].k_max
    before, after = node_set_features(batch, kernel)[targets], node_set_features(doubled, kernel)[targets]
    assert not torch.allclose(before, after)
