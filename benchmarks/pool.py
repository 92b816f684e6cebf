"""Run benchmark jobs (corpus builds, training runs) in parallel worker processes.

A job is a JSON-able dict with a ``kind`` ("inrs", "zoo", "train", "cnn", "floor") and an ``out``
folder. Each job runs in a fresh process with ``threads`` torch threads (default 1), at
most ``workers`` at a time, so two one-thread jobs share the 2-core machine. A finished
job leaves ``out/metrics.json`` (training) or a complete manifest (corpora) and is not
run again; an interrupted one resumes from its last checkpoint or finished shard. Job
output goes to ``out.log`` beside the folder; a finished job's wall time, thread count
and commit (taken when it starts) go to ``out/job.json``.

Fixed-epoch training results do not depend on timing, so they are the same whether jobs
run alone or side by side; only their wall time changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import commit
from nngraph.io import atomic_write_json


def is_done(job: dict) -> bool:
    out = Path(job["out"])
    if job["kind"] in ("train", "cnn", "floor"):
        return (out / "metrics.json").exists()
    manifest = out / "manifest.json"
    return manifest.exists() and json.loads(manifest.read_text()).get("complete", False)


def run_jobs(jobs: list[dict], workers: int = 2, log=print) -> None:
    """Run every job not yet done; raises if any failed (after the others finished)."""
    todo = [job for job in jobs if not is_done(job)]
    if not todo:
        return
    log(f"  {len(todo)} of {len(jobs)} jobs to run, {workers} at a time")
    failures = []

    def run_one(job: dict) -> None:
        out = Path(job["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        code_version = commit()  # the code the job runs: commits made while it runs are not its code
        start = time.perf_counter()
        with open(out.with_name(out.name + ".log"), "a") as logfile:
            code = subprocess.call([sys.executable, __file__, json.dumps(job)], stdout=logfile, stderr=logfile)
        seconds = time.perf_counter() - start
        if code:
            failures.append(f"{out} (exit {code}, see {out.name}.log)")
        else:
            record = {"wall_s": round(seconds, 1), "threads": job.get("threads", 1), "commit": code_version}
            atomic_write_json(out / "job.json", record, indent=None)
        log(f"  {'FAILED' if code else 'done'} {out.name} in {seconds:.0f} s")

    with ThreadPoolExecutor(workers) as executor:
        list(executor.map(run_one, todo))
    if failures:
        raise RuntimeError("jobs failed: " + "; ".join(failures))


def _run_here(job: dict) -> None:
    """Run one job in this process."""
    import torch

    torch.set_num_threads(job.get("threads", 1))
    kind = job["kind"]
    if kind == "inrs":
        from nngraph.data.build import build_inr_corpus

        # one fitting thread per core the job was given (the fits do not depend on how chunks are shared)
        build_inr_corpus(job["out"], job["images"], job["variant"], limit=job["limit"],
                         workers=job.get("threads", 1), progress=False,
                         command="benchmarks/pool.py", **job.get("options", {}))
    elif kind == "zoo":
        from nngraph.data.build import build_zoo_corpus

        build_zoo_corpus(job["out"], job["count"], job["images"], fixed_arch=job["fixed_arch"], workers=1,
                         progress=False, command="benchmarks/pool.py")
    elif kind == "train":
        from nngraph.train import TrainConfig, train

        config = TrainConfig(out=job["out"], **job["config"])
        train(config, resume=(Path(job["out"]) / "config.json").exists(), progress=True)
    elif kind == "floor":  # the dilation floor of a corpus's test split (computed once, kept in the corpus)
        from nngraph.io import atomic_write_json
        from nngraph.tasks.dilate import corpus_dilation_floor

        atomic_write_json(Path(job["out"]) / "metrics.json", {"test": {"mse": corpus_dilation_floor(job["corpus"])}})
    elif kind == "cnn":
        from ceiling import train_image_cnn

        train_image_cnn(job["out"], **job["config"])
    else:
        raise ValueError(f"unknown job kind {kind!r}")


if __name__ == "__main__":
    _run_here(json.loads(sys.argv[1]))
