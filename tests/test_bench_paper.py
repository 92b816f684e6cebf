"""The paper protocol's machinery (benchmarks/bench_paper.py) on a toy digits corpus: the plan
keeps the 60-minute and 20-minute rules, rows run one at a time, results are written as rows
end, reruns skip finished rows, and rows not run show as "not run"."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_paper import LABEL, Paper  # noqa: E402
from nngraph.errors import NNGraphError  # noqa: E402


def test_the_real_plan_keeps_the_time_rules(tmp_path):
    paper = Paper(root=tmp_path, results=tmp_path, render=False)
    runs = {r.name: r for r in paper.rows}
    assert set(runs) >= {"corpus", "ngt-p64", "nggnn-p64", "ngt-p0", "nggnn-p0", "ngt-p0-nopos", "nggnn-p0-nopos",
                         "nfn-np", "nfn-hnp", "deepsets", "statnn", "cnn", "dilate-nfn-np", "dilate-nggnn-p64",
                         "dilate-ngt-p64", "floor"}
    for row in paper.rows:
        if row.budget_s is None:
            continue
        assert row.seeds * row.budget_s <= 3600 * 0.8  # every row within 60 minutes, evaluation reserve included
        assert row.seeds == (1 if row.budget_s > 1200 else 3)  # one seed for rows longer than 20 minutes
    config = runs["ngt-p64"].jobs[0]["config"]
    assert config["patience"] is None and config["time_budget"] == runs["ngt-p64"].budget_s  # to the cap
    assert config["rotate_augment"] == 45.0 and config["weight_dropout"] == 0.01  # the published augmentations
    assert config["model_kwargs"]["probes"] == 64 and runs["ngt-p0-nopos"].jobs[0]["config"]["model_kwargs"][
        "position_embeddings"] is False
    assert "rotate_augment" not in runs["dilate-ngt-p64"].jobs[0]["config"]  # label-preserving only
    assert config["compile"] and config["precision"] == "bf16"  # graph models: compiled, bf16
    assert "compile" not in runs["nfn-np"].jobs[0]["config"]
    assert runs["nfn-hnp"].seeds == runs["nfn-np"].seeds == 1 and runs["statnn"].seeds == 3  # NFNs: long rows
    assert runs["cnn"].seeds == 3 and runs["cnn"].budget_s == 3600 / 3 * 0.7  # its evaluations cost more
    assert runs["corpus"].jobs[0]["limit"] is None and runs["corpus"].jobs[0]["images"] == "fashion-mnist"
    # every row reads the INR corpus but the corpus build and the CNN on the images (it may run before the corpus)
    assert {r.name for r in paper.rows if not paper.needs_corpus(r)} == {"corpus", "cnn"}


def test_rows_run_one_by_one_write_results_and_skip_when_done(tmp_path):
    paper = Paper(root=tmp_path / "work", results=tmp_path / "results", images="digits", render=False,
                  settings={"inr_limit": 60, "row_limit_s": 2.0, "epoch_cap": 2, "patience": 1, "seeds": (0, 1),
                            "threads": 1},
                  corpus_options={"steps": 20, "hidden": 8},
                  model_kwargs={"hidden": 8, "edge_hidden": 4, "layers": 1})
    assert all(line.endswith("not run") for line in paper.listing()[1:])
    with pytest.raises(NNGraphError, match="--rows corpus"):
        paper.run(["statnn"], log=lambda *a: None)
    with pytest.raises(NNGraphError, match="no paper row 'nope'"):
        paper.run(["nope"])
    paper.run(["statnn", "corpus"], log=lambda *a: None)  # plan order: the corpus first
    states = {line.split()[0]: line.split()[-1] for line in paper.listing()[1:]}
    assert states["corpus"] == "done" and states["statnn"] == "done" and states["ngt-p64"] == "run"  # "not run"
    table = json.loads((tmp_path / "results" / "7_paper_classify.json").read_text())
    rows = {r["model"]: r for r in table["rows"]}
    statnn = rows["StatNN"]
    assert "±" in statnn["nngraph (this CPU)"] and statnn["seeds"] == 2 and statnn["stop"]
    assert all(float(m) >= 0 for m in statnn["min to plateau"].split("/"))
    assert rows["NG-T, 64 probes"]["nngraph (this CPU)"] == "not run" and rows["NG-T, 64 probes"][LABEL] == 74.8
    assert rows["ProbeGen-128"]["nngraph (this CPU)"] == "not in nngraph" and rows["ProbeGen-128"][LABEL] == 87.7
    assert any("ngt-p64 >= 85 %: not run" in note for note in table["notes"])
    dilate = json.loads((tmp_path / "results" / "7_paper_dilate.json").read_text())
    assert {r["model"]: r[LABEL + " (MNIST INRs)"] for r in dilate["rows"]}["NG-T, 64 probes"] == 1.75
    # a rerun skips the finished rows: nothing is trained again
    record = Path(paper.row("statnn").jobs[0]["out"]) / "job.json"
    before = record.stat().st_mtime_ns
    said = []
    paper.run(["corpus", "statnn"], log=said.append)
    assert record.stat().st_mtime_ns == before and said == ["== corpus: done, skipped", "== statnn: done, skipped"]
    # a row with a run that wrote something but did not finish is partial (it resumes from last.pt)
    out = Path(paper.row("deepsets").jobs[0]["out"])
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"")
    assert paper.state(paper.row("deepsets")) == "partial"
    cells = paper.cells(paper.row("deepsets"), "accuracy", 100, 1)
    assert cells["nngraph (this CPU)"] == "partial (0 of 2 runs)"
    # a new machine (no work folder): the finished row counts from its committed record
    record = json.loads((tmp_path / "results" / "paper_rows" / "statnn.json").read_text())
    assert [r["run"] for r in record["runs"]] == ["statnn-s0", "statnn-s1"] and record["wall_s"] > 0
    shutil.rmtree(tmp_path / "work")
    fresh = Paper(root=tmp_path / "work", results=tmp_path / "results", images="digits", render=False,
                  settings=paper.p)
    states = {line.split()[0]: line.split()[-1] for line in fresh.listing()[1:]}
    assert states["corpus"] == "run" and states["statnn"] == "done"  # the corpus is built again, statnn is not
    said = []
    fresh.run(["statnn"], log=said.append)
    assert said == ["== statnn: done, skipped"] and not (tmp_path / "work").exists()
    fresh.write_results()
    again = {r["model"]: r for r in json.loads((tmp_path / "results" / "7_paper_classify.json").read_text())["rows"]}
    assert again["StatNN"] == statnn
    # a damaged record is refused in one line naming it and the fix
    (tmp_path / "results" / "paper_rows" / "statnn.json").write_text('{"row": "statnn", "runs": [')
    with pytest.raises(NNGraphError, match=r"statnn.json is damaged .*git checkout"):
        fresh.write_results()


def test_claims_compare_rows_from_their_committed_records(tmp_path):
    paper = Paper(root=tmp_path / "work", results=tmp_path / "results", render=False)

    def record(name: str, values: list[float], metric: str = "accuracy") -> None:
        runs = [{"run": f"{name}-s{i}", "metrics": {"test": {metric: v}}} for i, v in enumerate(values)]
        path = tmp_path / "results" / "paper_rows" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"row": name, "title": name, "wall_s": 60.0, "runs": runs}))

    record("ngt-p64", [0.80])
    record("ngt-p0", [0.70])
    record("nfn-hnp", [0.69, 0.71])  # mean over seeds: 70 %
    record("nggnn-p64", [0.65])
    claims = paper.claims()
    assert ("claim: NG-T (64 probes) against NFN-HNP: 80.0 against 70.0 % (+10.0 points; published +5.9) -> holds"
            in claims)
    assert "claim: 64 probes against none, NG-T: 80.0 against 70.0 % (+10.0 points) -> holds" in claims
    assert ("claim: NG-GNN (64 probes) against NFN-HNP: 65.0 against 70.0 % (-5.0 points; published +5.3) "
            "-> does not hold" in claims)
    assert "claim: 64 probes against none, NG-GNN: not run" in claims
    assert len(claims) == 6
    summary = paper.summary()  # the paragraph under the tables says the same
    assert summary.startswith("Which of the paper's claims hold here: of its 7 comparisons, 3 are measured, "
                              "and 2 hold: 64 probes against none, NG-T (+10.0 points); NG-T (64 probes) against "
                              "NFN-HNP (+10.0 points). 1 does not: NG-GNN (64 probes) against NFN-HNP (-5.0 points).")
    assert "NG-T's dilation MSE against NFN-NP's" in summary.split("Still to run:")[1]
    assert "NG-T, 64 probes 80.0 against 74.8 (-5.2)" not in summary and "80.0 against 74.8 (+5.2)" in summary
    assert "ngt-p64 >= 85 %: 80.0 -> MISSED by 5.0 points" in summary and "ngt-p0 >= 70 %: 70.0 -> met" in summary
    assert "spread by at most 1.4 points" in summary  # NFN-HNP's two seeds, 69 and 71 %
    assert paper.aims(dilate=True) == ["aim: NG-T dilation MSE <= 0.7x NFN-NP's: not run"]
    record("dilate-ngt-p64", [0.012], "mse")
    record("dilate-nfn-np", [0.020], "mse")
    assert paper.aims(dilate=True) == ["aim: NG-T dilation MSE <= 0.7x NFN-NP's: 0.60x (published 0.69x) -> met"]
    assert "of its 7 comparisons, 4 are measured, and 3 hold" in paper.summary()
    assert "NG-T's dilation MSE against NFN-NP's (0.60x; published 0.69x)" in paper.summary()
    assert "74.2); NG-T dilation MSE <= 0.7x NFN-NP's: 0.60x (published 0.69x) -> met." in paper.summary()


def test_bench_flags(capfd):
    from nngraph.cli import main

    assert main(["bench", "--rows", "ngt-p64"]) == 2
    assert "--rows and --dry-run go with --paper" in capfd.readouterr().err
    assert main(["bench", "--paper", "--dry-run", "--rows", "ngt-p64"]) == 0  # lists, runs nothing
    listing = capfd.readouterr().out
    assert "ngt-p64" in listing and "48 min" in listing and "dilate-ngt-p64" in listing
