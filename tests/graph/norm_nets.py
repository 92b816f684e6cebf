"""Families with group / instance norms, channels-last layouts and layer scale, written as their
reference code writes them (small widths in the tests): ResNet-GN (torchvision's BasicBlock with
``norm_layer=GroupNorm``), ConvNeXt blocks (facebookresearch/ConvNeXt: its ``LayerNorm`` class,
channels-last branch), a DeiT-III block with timm's ``LayerScale``, the PyTorch MNIST example."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.graph.transformers import Attention

# ---- ResNet-GN (torchvision.models.resnet with norm_layer) ---------------------------------


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(2, channels)


class BasicBlockGN(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer=group_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetGN(nn.Module):
    def __init__(self, width: int = 4, classes: int = 3, norm_layer=group_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlockGN(width, width, norm_layer=norm_layer)
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, 2, bias=False), norm_layer(2 * width))
        self.layer2 = BasicBlockGN(width, 2 * width, 2, down, norm_layer=norm_layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- ConvNeXt (facebookresearch/ConvNeXt models/convnext.py) -------------------------------


class LayerNorm(nn.Module):
    """ConvNeXt's LayerNorm: F.layer_norm channels last (in its blocks), written by hand channels first
    (in its stem and down-sampling layers)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale_init_value: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return input + x


class ConvNeXtBlocks(nn.Module):
    """ConvNeXt as models/convnext.py builds it, two stages: stem (patchify conv, channels-first LayerNorm),
    two blocks (one without layer scale), down-sampling (channels-first LayerNorm, strided conv), one block;
    the head (global average pooling, LayerNorm, Linear)."""

    def __init__(self, dims=(4, 8), classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=2, stride=2),
                                  LayerNorm(dims[0], eps=1e-6, data_format="channels_first"))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]), ConvNeXtBlock(dims[0], 0.0))
        self.down = nn.Sequential(LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
                                  nn.Conv2d(dims[0], dims[1], kernel_size=2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(dims[1]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean([-2, -1])))


# ---- DeiT-III block with timm's LayerScale -------------------------------------------------


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False):
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class LayerScaleBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DeiT3(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, dim))
        self.blocks = nn.Sequential(LayerScaleBlock(dim, heads), LayerScaleBlock(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2) + self.pos_embed  # DeiT-III: position embedding before cls
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


# ---- the PyTorch MNIST example (pytorch/examples mnist/main.py) ------------------------------


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


# ---- small cases of each op ---------------------------------------------------------------


class ReshapedLayerScale(nn.Module):
    """timm's ConvNeXt block scales with ``x.mul(self.gamma.reshape(1, -1, 1, 1))`` on channels first."""

    def __init__(self):
        super().__init__()
        self.conv, self.gamma, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Parameter(torch.ones(4)), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.fc((h + h.mul(self.gamma.reshape(1, -1, 1, 1))).mean((2, 3)))


class Norms(nn.Module):
    """InstanceNorm2d (affine or not, running statistics or not), InstanceNorm1d, GroupNorm(1, C)."""

    def __init__(self, affine: bool, track: bool):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(6, affine=affine, track_running_stats=track)
        self.gn1 = nn.GroupNorm(1, 6)
        self.seq = nn.Conv1d(6, 4, 3)
        self.inorm1d = nn.InstanceNorm1d(4, affine=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.gn1(self.inorm(self.conv(x))))
        x = self.inorm1d(self.seq(x.flatten(2)))  # [B, 6, H*W] sequence
        return self.fc(x.mean(2))


class ChunkGLU(nn.Module):
    """x.chunk / x.split on channels: a GLU (a * sigmoid(b)) and uneven splits into two heads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.fa, self.fb = nn.Conv2d(3, 2, 1), nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        h = a * torch.sigmoid(b)  # [B, 4, H, W]
        p, q = torch.split(h, [3, 1], dim=1)
        y = torch.cat([self.fa(p), torch.tanh(self.fb(q))], 1).mean((2, 3))
        return torch.softmax(self.fc(y), dim=-1)


# ---- timm's Attention (packed qkv, unbind(0)) and DeiT-III block ------------------------------


class TimmAttention(nn.Module):
    """timm.models.vision_transformer.Attention (fused path): one qkv Linear, reshape, permute, unbind."""

    def __init__(self, dim, num_heads=2, qkv_bias=True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(0.0), nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TimmLayerScaleBlock(nn.Module):
    """timm's Block with init_values (DeiT-III): x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim, num_heads=2, mlp_ratio=2.0, init_values=1e-5):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), TimmAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TimmDeiT3(nn.Module):
    """Patch embedding, class token, position embedding, two timm LayerScale blocks, norm, class-token head."""

    def __init__(self, dim=8, classes=5):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.blocks = nn.Sequential(TimmLayerScaleBlock(dim), TimmLayerScaleBlock(dim))
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])
