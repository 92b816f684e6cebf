"""nngraph train / eval / inspect from the command line, and their error paths."""

from __future__ import annotations

import pytest
import torch

from nngraph.cli import main
from nngraph.examples import ResidualCNN


def test_train_eval_inspect(tmp_path, inr_corpus, capsys):
    run = tmp_path / "run"
    code = main(["train", "--task", "classify", "--data", str(inr_corpus), "--model", "ngt", "--out", str(run),
                 "--epochs", "1", "--batch-size", "8", "--hidden", "16", "--layers", "1", "--probes", "2",
                 "--model-args", '{"heads": 2, "edge_hidden": 8}', "--no-progress"])
    assert code == 0 and (run / "metrics.json").exists()
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", str(run)]) == 0
    assert "test" in capsys.readouterr().out
    assert main(["inspect", str(run)]) == 0
    assert "best epoch" in capsys.readouterr().out
    assert main(["inspect", str(inr_corpus)]) == 0
    assert "nodes" in capsys.readouterr().out
    saved = tmp_path / "net.pt"
    torch.save(ResidualCNN().eval(), saved)
    assert main(["inspect", str(saved), "--trust"]) == 0
    assert "residual" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["train", "--task", "classify", "--data", "/nonexistent/corpus", "--model", "ngt"],
    ["eval", "/nonexistent/run"],
    ["inspect", "/nonexistent/path"],
])
def test_errors_are_one_line_with_exit_code_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_resume_without_checkpoint(tmp_path, inr_corpus, capsys):
    code = main(["train", "--task", "classify", "--data", str(inr_corpus), "--model", "mlp",
                 "--out", str(tmp_path / "r"), "--resume", "--no-progress"])
    assert code == 2 and "--resume" in capsys.readouterr().err
