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


def test_version(capsys):
    import nngraph

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"nngraph {nngraph.__version__}"


def test_import_and_help_load_neither_torch_nor_plotting():
    """`import nngraph` and `nngraph --help` import no torch, PyG or matplotlib (start-up well under 1 s)."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "import nngraph\n"
            "from nngraph.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\n"
            "assert 'migrate-run' in out.getvalue() and 'train' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'torch_geometric', 'matplotlib') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_threads_option_sets_torch_threads(tmp_path, inr_corpus, capsys, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    try:
        assert main(["--threads", "1", "inspect", str(inr_corpus)]) == 0
        assert torch.get_num_threads() == 1
        assert main(["inspect", str(inr_corpus), "--threads", "0"]) == 2
        assert "--threads must be" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_demo_keeps_the_thread_count_it_is_given(tmp_path, monkeypatch):
    """`nngraph demo` follows OMP_NUM_THREADS / --threads instead of forcing its own count."""
    from nngraph import demo

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    seen = []
    result = {"parameters": 1, "history": [], "train_seconds": 0.0, "val": {"accuracy": 0.5},
              "test": {"accuracy": 0.5}}
    monkeypatch.setattr(demo, "conversion_report", lambda seed: [])
    monkeypatch.setattr("nngraph.data.build.build_inr_corpus", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr("nngraph.train.train", lambda *a, **k: seen.append(torch.get_num_threads()) or result)
    try:
        assert demo.run(str(tmp_path / "demo"), progress=False) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1]


def test_warmup_options_conflict_in_one_line(tmp_path, capsys):
    argv = ["train", "--task", "classify", "--data", str(tmp_path / "none"), "--model", "mlp",
            "--out", str(tmp_path / "r"), "--warmup-steps", "5", "--warmup-ratio", "0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--warmup-steps and --warmup-ratio" in err and err.count("\n") == 1
    assert main(argv[:-4] + ["--warmup-ratio", "2"]) == 2
    assert "--warmup-ratio must be" in capsys.readouterr().err


def test_an_interrupted_train_names_resume(tmp_path, inr_corpus, capsys, monkeypatch):
    from nngraph.train import Trainer

    def interrupted(self, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    argv = ["train", "--task", "classify", "--data", str(inr_corpus), "--model", "mlp", "--out", str(tmp_path / "r"),
            "--epochs", "1", "--batch-size", "8", "--hidden", "8", "--no-progress"]
    assert main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 130  # killed in its first epoch: --resume starts it
    assert "rerun the same command" in capsys.readouterr().err


def test_train_settings_are_declared_once_on_train_config():
    """Every TrainConfig field has help and one `nngraph train` option; only the options given
    reach the config (the field's default does the rest); each declared range is enforced."""
    import argparse
    import dataclasses

    from nngraph.cli_options import add_config_options, config_values
    from nngraph.errors import NNGraphError
    from nngraph.training.config import TrainConfig, option_name

    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig)
    options = {a.dest: a for a in parser._actions}
    base = {"task": "classify", "data": "d", "model": "mlp", "out": "o"}
    ranged = 0
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and option_name(f) in options[f.name].option_strings
        if f.metadata["range"] is not None:
            ranged += 1
            for bad in (-1, float("nan")):
                with pytest.raises(NNGraphError, match=option_name(f)):
                    TrainConfig(**{**base, f.name: bad}).validate()
    assert ranged >= 12
    args = parser.parse_args(["--task", "classify", "--data", "d", "--model", "mlp", "--epochs", "3",
                              "--permute-augment", "--model-args", '{"hidden": 4}'])
    given = config_values(args, TrainConfig)
    assert given == {"task": "classify", "data": "d", "model": "mlp", "epochs": 3, "permute_augment": True,
                     "model_kwargs": {"hidden": 4}}
    config = TrainConfig(**given, out="o")
    assert (config.batch_size, config.lr) == (64, 1e-3)  # the fields' defaults
    config.validate()
