"""Transformers written as their reference implementations write them (tiny sizes in the tests):
a ViT (patch conv, class token, position embedding, pre-norm encoder blocks with explicit
Q/K/V/O + SDPA or nn.MultiheadAttention, head) and a token classifier with an embedding."""

import torch
import torch.nn.functional as F
from torch import nn


from nngraph.architectures import MHA, Attention, Block, ViT  # noqa: E402,F401  (moved)


class TokenClassifier(nn.Module):
    def __init__(self, vocab=11, dim=8, heads=2, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = Block(dim, heads, "mha")
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.block(self.embed(ids)).mean(1))
