"""Transformers written as their reference implementations write them (tiny sizes in the tests):
a ViT (patch conv, class token, position embedding, pre-norm encoder blocks with explicit
Q/K/V/O + SDPA or nn.MultiheadAttention, head) and a token classifier with an embedding."""

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Explicit Q/K/V/O projections and F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = self.k(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = self.v(x).reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class MHA(nn.Module):
    """nn.MultiheadAttention (packed in-projection), batch_first or [T, B, D]."""

    def __init__(self, dim: int, heads: int, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)

    def forward(self, x):
        if self.batch_first:
            return self.attn(x, x, x, need_weights=False)[0]
        x = x.transpose(0, 1)
        return self.attn(x, x, x, need_weights=False)[0].transpose(0, 1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads) if attention == "sdpa" else MHA(dim, heads, attention == "mha")
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image=8, patch=4, dim=8, heads=2, depth=2, classes=3, attention="sdpa", pool="cls"):
        super().__init__()
        self.pool = pool
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2 + (pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)  # [B, T, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))


class TokenClassifier(nn.Module):
    def __init__(self, vocab=11, dim=8, heads=2, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = Block(dim, heads, "mha")
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.block(self.embed(ids)).mean(1))
