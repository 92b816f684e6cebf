"""Regenerate the README's figures: `PYTHONPATH=src python docs/make_figures.py` from the repository root.

The PNG is quantised to 256 colours (Pillow, which matplotlib depends on) to stay small.
"""

import tempfile
from pathlib import Path

from PIL import Image

import nngraph
from nngraph.examples import example_networks

_, net, x = next(n for n in example_networks() if type(n[1]).__name__ == "ResidualCNN")
with tempfile.TemporaryDirectory() as tmp:
    drawing = nngraph.draw_graph(nngraph.to_graph(net, x[:1]), Path(tmp) / "graph.png")
    image = Image.open(drawing.path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        Path(__file__).parent / "residual_cnn_graph.png", optimize=True)
