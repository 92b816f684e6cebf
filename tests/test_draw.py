"""draw_graph and `nngraph inspect --draw`: PNGs that exist, layers left to right, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

import nngraph  # noqa: E402
from nngraph.cli import main  # noqa: E402
from nngraph.draw import draw_graph, needs_summary  # noqa: E402
from nngraph.errors import NNGraphError  # noqa: E402
from nngraph.examples import ResidualCNN, TwoBranchCNN  # noqa: E402
from nngraph.graph.graph import EDGE_KINDS, EDGE_RESIDUAL  # noqa: E402
from tests.graph.nets import MLP, randomise  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Square(nn.Module):
    """A cumulative sum over features: not a supported op (module level, so torch.save can pickle it)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        return torch.cumsum(h, 1)


def _check_png(path, folder):
    assert path.exists() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary file left behind


def _check_left_to_right(graph, drawing):
    xy, layer = drawing.node_xy, graph.node_layer.numpy()
    assert xy.shape == (graph.num_nodes, 2) and np.isfinite(xy).all()
    for l in range(graph.num_layers - 1):
        assert xy[layer == l, 0].max() < xy[layer == l + 1, 0].min()  # layer l left of layer l + 1
    src, dst = graph.edge_index.numpy()
    assert (xy[src, 0] < xy[dst, 0]).all()  # every edge points rightwards
    np.testing.assert_array_equal(drawing.layer_x[layer], xy[:, 0])


def test_small_mlp_one_marker_per_neuron(tmp_path):
    model = randomise(MLP([4, 8, 8, 3], act="relu", norm="bn"))
    graph = nngraph.to_graph(model, torch.randn(2, 4))
    drawing = draw_graph(graph, tmp_path / "mlp.png")
    _check_png(drawing.path, tmp_path)
    assert not drawing.summary
    _check_left_to_right(graph, drawing)
    for l in range(graph.num_layers):  # neurons of one layer are distinct markers, stacked one unit apart
        ys = np.sort(drawing.node_xy[graph.node_layer.numpy() == l, 1])
        np.testing.assert_allclose(np.diff(ys), 1.0)


@pytest.mark.parametrize("model", [ResidualCNN(), TwoBranchCNN()], ids=["residual", "cat-flatten"])
def test_small_cnn_one_marker_per_channel(tmp_path, model):
    graph = nngraph.to_graph(model.eval(), torch.rand(1, 1, 8, 8))
    drawing = draw_graph(graph, tmp_path / "cnn.png")
    _check_png(drawing.path, tmp_path)
    assert not drawing.summary and drawing.node_xy.shape[0] == graph.num_nodes  # a node per channel
    _check_left_to_right(graph, drawing)
    if isinstance(model, ResidualCNN):
        assert (graph.edge_kind == EDGE_RESIDUAL).any()


@pytest.mark.parametrize("widths", [[8, 80, 4], [50, 60, 60, 60, 5]], ids=["wide-layer", "many-edges"])
def test_large_network_is_summarised(tmp_path, widths):
    graph = nngraph.to_graph(MLP(widths).eval(), torch.zeros(1, widths[0]))
    assert needs_summary(graph)
    drawing = draw_graph(graph, tmp_path / "big.png")
    _check_png(drawing.path, tmp_path)
    assert drawing.summary
    _check_left_to_right(graph, drawing)
    assert drawing.path.stat().st_size < 200_000
    small = nngraph.to_graph(MLP([4, 8, 3]).eval(), torch.zeros(1, 4))
    assert not needs_summary(small) and draw_graph(small, tmp_path / "forced.png", summary=True).summary


def test_summary_of_a_residual_cnn(tmp_path):
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.a, self.b = nn.Conv2d(3, 72, 3, padding=1), nn.Conv2d(72, 72, 3), nn.Conv2d(72, 72, 3, padding=2)
            self.fc = nn.Linear(72, 5)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            h = h + self.b(torch.relu(self.a(h)))
            return self.fc(h.mean((2, 3)))

    graph = nngraph.to_graph(Wide().eval(), torch.zeros(1, 3, 6, 6))
    drawing = draw_graph(graph, tmp_path / "wide.png")
    _check_png(drawing.path, tmp_path)
    assert drawing.summary
    _check_left_to_right(graph, drawing)


def test_new_kinds_get_colours(tmp_path):
    """Kinds appended to EDGE_KINDS / ACTIVATIONS later are drawn without a change in draw.py."""
    graph = nngraph.to_graph(MLP([3, 5, 2]).eval(), torch.zeros(1, 3))
    graph.edge_kind = torch.full_like(graph.edge_kind, len(EDGE_KINDS) + 3)
    graph.node_act = torch.full_like(graph.node_act, 40)
    _check_png(draw_graph(graph, tmp_path / "new.png").path, tmp_path)


def test_bad_inputs(tmp_path):
    graph = nngraph.to_graph(MLP([3, 5, 2]).eval(), torch.zeros(1, 3))
    with pytest.raises(NNGraphError, match="NeuralGraph"):
        draw_graph({"x": 1}, tmp_path / "a.png")
    with pytest.raises(NNGraphError, match="batch of 2"):
        draw_graph(nngraph.collate([graph, graph]), tmp_path / "a.png")
    with pytest.raises(NNGraphError, match=r"\*\.png"):
        draw_graph(graph, tmp_path / "a.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NNGraphError, match="cannot write"):
        draw_graph(graph, blocker / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --------------------------------------------------------------------------- the command line


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err


def test_cli_draws_a_saved_module(tmp_path, capsys):
    saved = tmp_path / "net.pt"
    torch.save(ResidualCNN().eval(), saved)
    out = tmp_path / "figs" / "graph.png"
    assert main(["inspect", str(saved), "--draw", str(out)]) == 2  # a pickled module needs --trust
    _one_line_error(capsys, "--trust", "ResidualCNN")
    assert not out.exists()
    assert main(["inspect", str(saved), "--trust", "--draw", str(out), "--input-shape", "1,8,8"]) == 0
    printed = capsys.readouterr().out
    assert "51 nodes" in printed and "drawing" in printed
    assert out.exists() and out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert main(["inspect", str(saved), "--trust", "--draw", str(tmp_path / "guessed.png")]) == 0
    assert "guessed" in capsys.readouterr().out  # 1 x 32 x 32, read off the first Conv2d


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    module, state, square, text = (tmp_path / n for n in ("net.pt", "state.pt", "square.pt", "text.pt"))
    torch.save(ResidualCNN().eval(), module)
    torch.save(ResidualCNN().state_dict(), state)
    torch.save(Square(), square)
    text.write_text("not a checkpoint")
    blocker = tmp_path / "file"
    blocker.write_text("")
    png = str(tmp_path / "g.png")
    cases = [
        (["inspect", str(tmp_path / "missing.pt"), "--draw", png], ["does not exist"]),
        (["inspect", str(text), "--draw", png], ["torch.save"]),
        (["inspect", str(text), "--trust", "--draw", png], ["cannot unpickle"]),
        (["inspect", str(state), "--draw", png], ["torch.save(model)"]),
        (["inspect", str(square), "--trust", "--draw", png], ["not supported"]),
        (["inspect", str(module), "--trust", "--input-shape", "3,a"], ["--input-shape"]),
        (["inspect", str(module), "--trust", "--input-shape", "3,8,8"], ["--input-shape 3,8,8", "ResidualCNN"]),
        (["inspect", str(module), "--trust", "--draw", str(blocker / "g.png")], ["cannot write"]),
        (["inspect", str(module), "--trust", "--draw", str(tmp_path / "g.svg")], ["*.png"]),
        (["inspect", str(tmp_path), "--draw", png], ["folder"]),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        _one_line_error(capsys, *words)
    assert not (tmp_path / "g.png").exists()
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Square()), scripted)
    assert main(["inspect", str(scripted), "--draw", png]) == 2
    _one_line_error(capsys, "TorchScript")
