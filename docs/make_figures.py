"""Regenerate the README's figures: `PYTHONPATH=src python docs/make_figures.py` from the repository root.

The PNGs are quantised to 256 colours (Pillow, which matplotlib depends on) to stay small.
"""

import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch import nn

import nngraph
from nngraph.examples import example_networks


class TinyAttention(nn.Module):
    """Token ids -> embedding (D = 4) -> one self-attention (2 heads of 2) -> mean over tokens -> 2 logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(3, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        x = self.embed(ids)
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def save(graph, name: str, title: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        drawing = nngraph.draw_graph(graph, Path(tmp) / "graph.png", title=title)
        image = Image.open(drawing.path).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            Path(__file__).parent / name, optimize=True)


_, net, x = next(n for n in example_networks() if type(n[1]).__name__ == "ResidualCNN")
save(nngraph.to_graph(net, x[:1]), "residual_cnn_graph.png")
torch.manual_seed(0)
save(nngraph.to_graph(TinyAttention().eval(), torch.zeros(1, 3, dtype=torch.long)), "attention_graph.png",
     title="Embedding(3, 4) -> MultiheadAttention(4, 2 heads) -> mean -> Linear: q, k, v | s_c | a_h | o_c | O")
