"""The paper protocol's machinery (benchmarks/bench_paper.py) on a toy digits corpus: the plan
keeps the 60-minute and 20-minute rules, rows run one at a time, results are written as rows
end, reruns skip finished rows, and rows not run show as "not run"; the MNIST suite's plan
(epoch caps within the row limit and the machine-hours), its records and its rendering."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_paper import LABEL, MNIST, Paper  # noqa: E402
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
    assert runs["corpus"].jobs[0]["options"] == {"recipe": "default"} and paper.corpus.name == "inrs-dwsnet"
    for name in ("probe-128", "probegen-128", "nggnn-gen128", "ngt-gen128"):  # epoch-capped, ProbeGen's recipe
        row = runs[name]
        assert row.budget_s is None and row.seeds == 1 and paper.estimate_minutes(row) <= 55, name
        config = row.jobs[0]["config"]
        assert config["epochs"] == row.epochs and "rotate_augment" not in config, name
    # every row reads the INR corpus but the corpus build and the CNN on the images (it may run before the corpus)
    assert {r.name for r in paper.rows if not paper.needs_corpus(r)} == {"corpus", "cnn"}


def test_rows_run_one_by_one_write_results_and_skip_when_done(tmp_path):
    paper = Paper(root=tmp_path / "work", results=tmp_path / "results", images="digits", render=False,
                  settings={"inr_limit": 60, "row_limit_s": 2.0, "epoch_cap": 2, "patience": 1, "seeds": (0, 1),
                            "threads": 1},
                  corpus_options={"steps": 20, "hidden": 8},
                  model_kwargs={"hidden": 8, "edge_hidden": 4, "layers": 1})
    listing = paper.listing()
    assert all(line.split("(about")[0].rstrip().endswith("not run") for line in listing[1:])
    assert "(about" in listing[[line.split()[0] for line in listing].index("probegen-128")]  # epoch-capped
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
    probegen = rows["ProbeGen, 128 probes"]
    assert probegen["nngraph (this CPU)"] == "not run" and probegen[LABEL] == 87.7
    assert rows["ScaleGMN-B"]["nngraph (this CPU)"] == "not in nngraph" and rows["DWSNet"][LABEL] == 67.06
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
    assert main(["bench", "--suite", "mnist"]) == 2
    assert main(["bench", "--paper", "--suite", "mnist", "--dry-run"]) == 0  # the MNIST plan
    listing = capfd.readouterr().out
    assert "ngt-p0-nopos" in listing and "dilate-dwsnet" in listing


MNIST_ROWS = {"mlp", "deepsets", "dwsnet", "nfn-np", "nfn-hnp", "nggnn-p0", "nggnn-p4", "nggnn-p16", "nggnn-p64",
              "ngt-p0", "ngt-p4", "ngt-p16", "ngt-p64", "nggnn-p0-nopos", "ngt-p0-nopos", "probe-128", "probegen-128",
              "nggnn-gen128", "ngt-gen128", "dilate-dwsnet", "dilate-nfn-np", "dilate-nggnn-p0", "dilate-nggnn-p4",
              "dilate-nggnn-p16", "dilate-nggnn-p64", "dilate-ngt-p0", "dilate-ngt-p4", "dilate-ngt-p16",
              "dilate-ngt-p64", "floor", "corpus"}


def test_the_mnist_plan_fits_the_machine(tmp_path):
    from protocol import MNIST_CAPS, PROBING_RECIPE

    default = Paper(suite=MNIST, render=False)
    # the corpus row is the build under way in benchmarks/work/mnist: done once its manifest says complete
    assert default.corpus == ROOT / "benchmarks" / "work" / "mnist" / "inrs-dwsnet-published"
    assert default.records == ROOT / "benchmarks" / "results" / "mnist_rows"
    paper = Paper(root=tmp_path, results=tmp_path, suite=MNIST, render=False)
    runs = {r.name: r for r in paper.rows}
    assert set(runs) == MNIST_ROWS and set(MNIST_CAPS) == MNIST_ROWS - {"floor", "corpus"}
    corpus = runs["corpus"]
    assert corpus.jobs[0]["images"] == "mnist" and corpus.jobs[0]["limit"] is None
    assert corpus.jobs[0]["options"] == {"recipe": "published"}  # the published corpora's fit, not nngraph's
    assert paper.state(corpus) == "not run"
    (tmp_path / "inrs-dwsnet-published").mkdir()
    (tmp_path / "inrs-dwsnet-published" / "manifest.json").write_text(json.dumps({"complete": False}))
    assert paper.state(corpus) == "partial"
    (tmp_path / "inrs-dwsnet-published" / "manifest.json").write_text(json.dumps({"complete": True}))
    assert paper.state(corpus) == "done"
    total = 0.0
    for row in paper.rows:
        if not row.capped:
            continue
        minutes = paper.estimate_minutes(row)
        assert minutes <= 55 and row.budget_s is None, row.name  # every row within 60 minutes, with room
        total += minutes
        for job in row.jobs:
            config = job["config"]
            assert config["epochs"] == row.epochs and config["time_budget"] is None and config["patience"] is None
            unaugmented = row.name.startswith(("probe", "nggnn-gen", "ngt-gen"))  # ProbeGen's recipe
            assert ("rotate_augment" in config) == (row.table == "classify" and not unaugmented), row.name
    assert total / 60 <= 15.5  # with the corpus build, about 16 machine-hours
    epochs = {name: row.epochs for name, row in runs.items()}
    for prefix in ("", "dilate-"):
        for model in ("nggnn", "ngt"):
            long, short = (epochs[f"{prefix}{model}-p{k}"] for k in (0, 64)), (
                epochs[f"{prefix}{model}-p{k}"] for k in (4, 16))
            assert min(long) > max(short)  # the 0- and 64-probe rows train longest
            assert epochs[f"{prefix}{model}-p0"] == epochs[f"{prefix}{model}-p64"]  # compared at equal epochs
    assert epochs["ngt-p0-nopos"] == epochs["ngt-p0"] and epochs["nggnn-p0-nopos"] == epochs["nggnn-p0"]
    ngt = runs["ngt-gen128"].jobs[0]["config"]
    assert ngt["model_kwargs"]["probe_generator"] == "deep-linear" and ngt["model_kwargs"]["probes"] == 128
    assert ngt["compile"] and ngt["lr"] == 3e-3
    assert ngt["model_kwargs"]["head_width"] == 256 and ngt["model_kwargs"]["head_layers"] == 6  # ProbeGen's head
    probe = runs["probegen-128"].jobs[0]["config"]
    assert probe["model"] == "probegen" and probe["model_kwargs"] == {"probes": 128}
    assert all(probe[k] == v for k, v in PROBING_RECIPE.items())
    assert runs["mlp"].seeds == 3 and runs["dwsnet"].jobs[0]["config"]["model"] == "dwsnet"
    assert runs["dilate-dwsnet"].jobs[0]["out"].endswith("runs/dilate/dwsnet-s0")
    listing = paper.listing()
    assert "16 ep" in listing[[line.split()[0] for line in listing].index("nggnn-p0")]
    assert listing[-1].startswith("training rows: about ")


def test_the_mnist_suite_records_and_renders_its_rows(tmp_path):
    """DWSNet's classifier and editor through the suite on a toy digits corpus: records in mnist_rows/,
    the section-8 tables with the paper's numbers beside them, rows not run shown as such."""
    paper = Paper(root=tmp_path / "work", results=tmp_path / "results", images="digits", render=False, suite=MNIST,
                  settings={"inr_limit": 60, "threads": 1}, corpus_options={"steps": 20, "hidden": 8})
    paper.run(["corpus", "dwsnet", "dilate-dwsnet"], log=lambda *a: None)
    record = json.loads((tmp_path / "results" / "mnist_rows" / "dwsnet.json").read_text())
    assert record["runs"][0]["metrics"]["epochs_run"] == MNIST.classify[2].epochs == paper.row("dwsnet").epochs
    assert (tmp_path / "results" / "mnist_rows" / "dilate-dwsnet.json").exists()
    assert not (tmp_path / "results" / "paper_rows").exists()
    table = json.loads((tmp_path / "results" / "8_mnist_classify.json").read_text())
    rows = {r["model"]: r for r in table["rows"]}
    dws = rows["DWSNet"]
    assert dws[LABEL] == "85.7 ± 0.6" and dws["seeds"] == 1 and dws["stop"] == "epochs"
    assert dws["epochs"] == str(paper.row("dwsnet").epochs) and "min to 90 % (val)" in dws and dws["row wall min"] > 0
    assert rows["NG-T, 64 probes"]["nngraph (this CPU)"] == "not run" and rows["NG-T, 64 probes"][LABEL] == 97.3
    assert table["command"] == "python benchmarks/bench_paper.py --suite mnist"
    assert "aim: dwsnet >= 83.7 %: " in "\n".join(table["notes"])
    assert "aim: ngt-p64 >= 97.3 %: not run" in table["notes"]
    dilate = json.loads((tmp_path / "results" / "8_mnist_dilate.json").read_text())
    rows = {r["model"]: r for r in dilate["rows"]}
    assert float(rows["DWSNet"]["nngraph (this CPU)"]) > 0 and rows["NG-T, 4 probes"][LABEL + " (MNIST INRs)"] == 1.88
    assert rows["NG-T, 4 probes"]["nngraph (this CPU)"] == "not run"
    said = []
    paper.run(["dwsnet"], log=said.append)
    assert said == ["== dwsnet: done, skipped"]


def test_mnist_claims_and_summary_from_records(tmp_path):
    paper = Paper(root=tmp_path / "work", results=tmp_path / "results", render=False, suite=MNIST)

    def record(name: str, values: list[float], metric: str = "accuracy") -> None:
        runs = [{"run": f"{name}-s{i}", "metrics": {"test": {metric: v}}} for i, v in enumerate(values)]
        path = tmp_path / "results" / "mnist_rows" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"row": name, "title": name, "wall_s": 60.0, "runs": runs}))

    record("ngt-p0", [0.93])
    record("ngt-p0-nopos", [0.80])
    record("dwsnet", [0.86, 0.84])
    record("dilate-ngt-p64", [0.0180], "mse")
    record("dilate-nfn-np", [0.0200], "mse")
    claims = paper.claims()
    assert "claim: NG-T without probes against DWSNet: 93.0 against 85.0 % (+8.0 points; published +6.7) -> holds" \
        in claims
    assert ("claim: position embeddings, NG-T without probes: 93.0 against 80.0 % (+13.0 points; published +14.5) "
            "-> holds") in claims
    assert ("claim: dilation: NG-T (64 probes) against NFN-NP: MSE 1.800 against 2.000 x 1e-2 (0.90x; published "
            "0.69x) -> holds") in claims
    assert "claim: 64 probes against none, NG-T: not run" in claims
    summary = paper.summary()
    assert summary.startswith("Which of the paper's claims hold here: of its 15 comparisons, 3 are measured, and 3 "
                              "hold")
    assert "NG-T's dilation MSE is 0.90x NFN-NP's (published 0.69x" in summary
    assert "DWSNet 85.0 against 85.7 (-0.7)" in summary and "ngt-p0 >= 91.4 %: 93.0 -> met" in summary
    assert "dilate-ngt-p64 MSE <= 1.75 x 1e-2: 1.800 -> MISSED by 0.050" in summary
    assert "NG-T dilation MSE <= 0.69x NFN-NP's: 0.90x (published 0.69x) -> MISSED" in summary


def test_step_times_of_suite_rows_are_interleaved_and_compared_with_deepsets():
    """``bench_paper.py --step-times``: each row's model on a batch of SIRENs, a classifier and an editor."""
    from bench_paper import step_time_lines

    paper = Paper(suite=MNIST, render=False)
    lines = step_time_lines(paper, ["deepsets", "mlp", "dilate-dwsnet"], rounds=1)
    assert [line.split()[0] for line in lines] == ["deepsets", "mlp", "dilate-dwsnet"]
    assert lines[0].endswith("1.00x DeepSets") and all(float(line.split()[1]) > 0 for line in lines)
