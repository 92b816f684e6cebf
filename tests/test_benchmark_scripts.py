"""The GPU check and the bf16 benchmark run, in their quick modes, on the CPU.

They are meant for a GPU visit and a quiet machine respectively; these runs (a few
minutes together, most of it compiling) make sure neither fails when its time comes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_gpu_check_quick_on_the_cpu(tmp_path):
    result = tmp_path / "gpu_check.json"
    stdout = _run("benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(result))
    assert "CUDA tests skipped: the device is not a GPU" in stdout
    data = json.loads(result.read_text())
    models = [r for r in data["rows"] if "model" in r]
    assert {(r["model"], r["precision"]) for r in models} == {(m, p) for m in ("ngt", "nggnn") for p in ("fp32", "bf16")}
    assert all(r["graphs_per_s"] > 0 and r["finite_loss"] for r in models)
    assert data["rows"][-1]["inr_steps_per_s"] > 0 and "cpu" in data["machine"]["device"]


def test_bench_precision_quick(tmp_path):
    _run("benchmarks/bench_precision.py", "--quick", "--work", str(tmp_path / "work"), "--results", str(tmp_path))
    data = json.loads((tmp_path / "quick_5_precision.json").read_text())
    modes = [("eager", "fp32"), ("eager", "bf16"), ("compiled", "bf16")]  # quick: the modes with an accuracy
    assert [(r["model"], r["layers"], r["precision"]) for r in data["rows"]] == [
        (model, *mode) for model in ("ngt", "nggnn") for mode in modes]
    assert all(r["graphs/s"] > 0 and 0 <= r["mean test accuracy"] <= 1 for r in data["rows"])
    assert any(note.startswith("ngt: compiled bf16 trains") for note in data["notes"])


def test_render_writes_table_summary_and_notes_in_order(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run

    (tmp_path / "results").mkdir()
    result = {"title": "7. A table", "command": "python x.py", "wall_s": 1.0,
              "rows": [{"model": "A", "accuracy": 0.5}], "summary": "Two of three claims hold.",
              "notes": ["aim: met"], "protocol": {"seeds": [0, 1]}}
    (tmp_path / "results" / "7_table.json").write_text(json.dumps(result))
    (tmp_path / "results" / "quick_7_table.json").write_text(json.dumps({**result, "title": "quick"}))
    monkeypatch.setattr(run, "HERE", tmp_path)
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    lines = run.render().read_text().splitlines()
    assert "## quick" not in lines  # the quick protocol renders into RESULTS-quick.md
    start = lines.index("## 7. A table")
    body = [line for line in lines[start + 1:] if line]
    assert body[0].startswith("command `python x.py`")
    assert body[1:4] == ["| model | accuracy |", "|---|---|", "| A | 0.5 |"]
    assert body[4:] == ["Two of three claims hold.", "- aim: met", "protocol: seeds [0, 1]"]


def test_run_passes_the_paper_suite_on(monkeypatch, capsys):
    """``run.py --paper --suite mnist`` hands the suite to bench_paper.py; ``--suite`` alone is refused."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run

    calls = []
    monkeypatch.setattr(run.subprocess, "call", lambda command: calls.append(command) or 0)
    monkeypatch.setattr(sys, "argv", ["run.py", "--paper", "--suite", "mnist", "--dry-run"])
    assert run.main() == 0
    assert calls[0][1].endswith("bench_paper.py") and calls[0][2:] == ["--suite", "mnist", "--dry-run"]
    monkeypatch.setattr(sys, "argv", ["run.py", "--suite", "mnist"])
    with pytest.raises(SystemExit) as exit_:
        run.main()
    assert exit_.value.code == 2 and "--suite, --rows and --dry-run go with --paper" in capsys.readouterr().err
