"""Networks used by the graph tests: one per op family, and random MLP/CNN builders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nngraph.data.inr import Siren


from nngraph.architectures import randomise  # noqa: E402,F401  (moved)


class MLP(nn.Module):
    """Linear layers with a chosen activation, optional norms and residual blocks."""

    def __init__(self, widths, act="relu", norm=None, residual=False, out_act=None):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(
            (nn.BatchNorm1d(b) if norm == "bn" else nn.LayerNorm(b) if norm == "ln" else nn.Identity())
            for b in widths[1:-1]
        )
        self.acts = nn.ModuleList(make_act(act) for _ in widths[1:-1])
        self.skip = [residual and a == b for a, b in zip(widths[:-2], widths[1:-1])]
        self.out_act = make_act(out_act) if out_act else nn.Identity()

    def forward(self, x):
        h = x
        for layer, norm, act, skip in zip(self.layers[:-1], self.norms, self.acts, self.skip):
            z = act(norm(layer(h)))
            h = h + z if skip else z
        return self.out_act(self.layers[-1](h))


class CNN(nn.Module):
    """Conv layers (sizes, strides, paddings, dilations), optional BN and residuals; pool or flatten head."""

    def __init__(self, in_ch, convs, act="relu", bn=False, residual=False, head="pool", hw=8, classes=3):
        super().__init__()
        layers, norms, c = [], [], in_ch
        for out, k, stride, pad, dil in convs:
            layers.append(nn.Conv2d(c, out, k, stride=stride, padding=pad, dilation=dil))
            norms.append(nn.BatchNorm2d(out) if bn else nn.Identity())
            c = out
        self.convs, self.norms = nn.ModuleList(layers), nn.ModuleList(norms)
        self.acts = nn.ModuleList(make_act(act) for _ in convs)
        self.head = head
        self.skip = [False] * len(convs)
        with torch.no_grad():  # eager probe: which blocks keep their shape (a residual fits)
            h = torch.zeros(1, in_ch, hw, hw)
            for i, conv in enumerate(layers):
                z = conv(h)
                self.skip[i] = residual and z.shape == h.shape
                h = z
            size = h.shape
        self.fc = nn.Linear(c if head == "pool" else size[1] * size[2] * size[3], classes)

    def _features(self, x):
        h = x
        for conv, norm, act, skip in zip(self.convs, self.norms, self.acts, self.skip):
            z = act(norm(conv(h)))
            h = h + z if skip else z
        return h

    def forward(self, x):
        h = self._features(x)
        if self.head == "pool":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
        return self.fc(h.flatten(1))


def make_act(name):
    return {
        "relu": nn.ReLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(),
        "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "leaky_relu": nn.LeakyReLU(0.2), "none": nn.Identity(),
        "relu6": nn.ReLU6(), "hardtanh": nn.Hardtanh(-0.5, 0.7), "hardswish": nn.Hardswish(),
        "hardsigmoid": nn.Hardsigmoid(), "elu": nn.ELU(0.7), "selu": nn.SELU(), "softplus": nn.Softplus(2.0, 1.0),
        "mish": nn.Mish(), "prelu": nn.PReLU(),
    }[name]


NEW_ACTS = ("relu6", "hardtanh", "hardswish", "hardsigmoid", "elu", "selu", "softplus", "mish", "prelu")


class InplaceActs(nn.Module):
    """In-place activations: inplace=True modules and functions, relu_ as function and method (result unused)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 5), nn.Linear(5, 2)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        h = self.a(x)
        h.relu_()  # the result is not used: later reads of h see the activated values
        h = self.act(self.b(h))
        g = self.c(h)
        F.elu(g, 0.5, inplace=True)
        torch.sigmoid_(g)
        F.hardtanh_(g, -0.3, 0.4)
        return F.leaky_relu(self.d(g), 0.1, inplace=True)


class PoolNet(nn.Module):
    """Local max / average pooling (padding, dilation, ceil_mode, count_include_pad) and adaptive pooling."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 4, 1)
        self.p1 = nn.MaxPool2d(3, stride=2, padding=1, dilation=1)
        self.p2 = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.p3 = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = self.p1(torch.relu(self.c1(x)))  # 9x9 -> 5x5
        h = self.p2(torch.tanh(self.c2(h)))
        h = F.max_pool2d(h, 2, ceil_mode=True)  # 5x5 -> 3x3
        h = F.avg_pool2d(self.c3(h), (2, 1), stride=1, padding=(1, 0), ceil_mode=True)
        h = F.adaptive_max_pool2d(self.p3(h), 2)
        return self.fc(h.flatten(1))


class GroupedConvNet(nn.Module):
    """Grouped convolutions: two groups, depthwise with channel multiplier 2, per-channel PReLU."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.act2 = nn.PReLU(8)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, groups=8)  # depthwise, multiplier 2
        self.c4 = nn.Conv2d(16, 6, 1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.act2(self.c2(F.relu6(self.c1(x))))
        h = F.hardswish(self.c3(h))
        return self.fc(self.c4(h).mean((2, 3)))


class FunctionalLayers(nn.Module):
    """F.conv2d / F.prelu / F.linear on raw parameters."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 3, 3, 3)), nn.Parameter(torch.randn(6))
        self.w2 = nn.Parameter(torch.randn(6, 2, 3, 3))
        self.slope = nn.Parameter(torch.randn(6))
        self.fc = nn.ParameterList([nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(4))])

    def forward(self, x):
        h = F.conv2d(x, self.w1, self.b1, stride=2, padding=1)
        h = F.prelu(h, self.slope)
        h = F.conv2d(h, self.w2, None, 1, "same", 1, 3)
        return F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), self.fc[0], self.fc[1])


class SequenceNet(nn.Module):
    """Sequences [batch, C, L]: Conv1d (module and F.conv1d on a parameter), global pooling by
    AdaptiveAvgPool1d(1) and by x.mean(-1), Softplus, Mish."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding=1)
        self.w2 = nn.Parameter(torch.randn(6, 6, 5))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        h = F.softplus(self.c1(x), 2.0, 1.0)
        g = F.mish(F.conv1d(h, self.w2, None, 2, 2))
        return self.fc(torch.cat([self.pool(h).flatten(1), g.mean(-1)], dim=1))


class SliceResidual(nn.Module):
    """``out.add_(identity)`` with its result unused, and ``out[:, a:b] += y`` in the middle of the channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 5, 3, padding=1), nn.Conv2d(5, 2, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = F.relu(self.c1(x))
        out = self.c2(h)
        out.add_(h)  # later reads of out see the sum
        out = F.relu(out)
        out[:, 1:3] += self.c3(out)
        return self.fc(out.mean((2, 3)))


class FunctionalActs(nn.Module):
    """Activations written as functions and tensor methods instead of modules."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 5), nn.Linear(5, 2))

    def forward(self, x):
        h = F.gelu(self.a(x), approximate="tanh")
        h = F.leaky_relu(self.b(h), 0.1)
        h = self.c(h).tanh()
        h = torch.sigmoid(F.silu(self.d(h)))  # two activations in a row: an identity layer
        return torch.relu(self.e(h))


class ConcatNet(nn.Module):
    """torch.cat of two branches on features, and of a conv map on channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 4, 1)
        self.c3 = nn.Conv2d(7, 5, 3)
        self.l1, self.l2 = nn.Linear(5, 4), nn.Linear(5, 3)
        self.out = nn.Linear(7, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.c1(x)), self.c2(x)], dim=1)
        p = self.c3(h).mean(dim=(2, 3))
        return self.out(torch.cat((torch.tanh(self.l1(p)), self.l2(p)), -1))


class ResidualProjection(nn.Module):
    """ResNet block: relu(bn(conv(relu(bn(conv(x))))) + proj(x)), then a global mean."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.proj = nn.Conv2d(3, 6, 1, stride=1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + self.proj(x))
        return self.fc(self.pool(h).flatten(1))


class PreActivationReuse(nn.Module):
    """A pre-activation value read twice: the activation cannot be folded into its nodes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        z = self.a(x)
        return self.b(torch.relu(z) + z - 0.25)


def op_family_cases():
    """(name, model, example input) for every supported op family."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn(4, 3, 9, 9, generator=g)
    vec = torch.randn(6, 5, generator=g)
    cases = [
        ("linear", MLP([5, 7, 3], act="none"), vec),
        *[(f"act_{a}", MLP([5, 6, 6, 2], act=a), vec) for a in
          ("relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "leaky_relu")],
        ("functional_acts", FunctionalActs(), torch.randn(6, 4, generator=g)),
        ("batchnorm1d", MLP([5, 6, 6, 2], act="relu", norm="bn"), vec),
        ("layernorm", MLP([5, 6, 6, 2], act="gelu", norm="ln"), vec),
        ("residual_mlp", MLP([5, 6, 6, 6, 2], act="tanh", residual=True), vec),
        ("conv_k1_k3_k5", CNN(3, [(4, 1, 1, 0, 1), (5, 3, 1, 1, 1), (4, 5, 1, 2, 1)]), img),
        ("conv_stride_dilation", CNN(3, [(4, 3, 2, 1, 1), (4, 3, 1, 2, 2), (3, 2, 1, 0, 1)], act="silu"), img),
        ("conv_rect_kernel", CNN(3, [(4, (3, 1), 1, (1, 0), 1), (4, (1, 5), (1, 2), (0, 2), 1)]), img),
        ("batchnorm2d_residual", CNN(3, [(4, 3, 1, 1, 1), (4, 3, 1, 1, 1), (4, 5, 1, 2, 1)], bn=True, residual=True), img),
        ("flatten_linear", CNN(3, [(4, 3, 1, 0, 1), (2, 3, 2, 1, 1)], head="flatten", hw=9), img),
        ("residual_projection", ResidualProjection(), img),
        ("concat", ConcatNet(), torch.randn(4, 2, 7, 7, generator=g)),
        ("preactivation_reuse", PreActivationReuse(), torch.randn(6, 3, generator=g)),
        *[(f"act_{a}", MLP([5, 6, 6, 2], act=a), vec) for a in NEW_ACTS],
        ("inplace_acts", InplaceActs(), torch.randn(6, 4, generator=g)),
        ("pooling", PoolNet(), img),
        ("grouped_conv", GroupedConvNet(), img),
        ("functional_layers", FunctionalLayers(), img),
        ("slice_residual", SliceResidual(), img),
        ("sequence", SequenceNet(), torch.randn(4, 3, 11, generator=g)),
        ("siren_dwsnet", Siren(variant="dwsnet"), torch.rand(10, 2, generator=g) * 2 - 1),
        ("siren_standard", Siren(hidden=16, depth=3, variant="standard", w0=20.0), torch.rand(10, 2, generator=g) * 2 - 1),
    ]
    return [(name, model if name.startswith("siren") else randomise(model, i), x) for i, (name, model, x) in enumerate(cases)]
