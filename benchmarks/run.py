"""Run the benchmark suite, then render RESULTS.md from the JSON results.

    python benchmarks/run.py            # the full protocol (about 2 hours on 2 cores)
    python benchmarks/run.py --quick    # the small protocol (9.4 minutes measured), quick_* results
    python benchmarks/run.py --render   # only render RESULTS.md from results/*.json
    python benchmarks/run.py --device cuda  # the model-speed and precision rows on a GPU
    python benchmarks/run.py --paper [--rows A,B] [--dry-run]  # the paper protocol, row by row (bench_paper.py)
    python benchmarks/run.py --paper --suite mnist     # the paper's own tables on MNIST INRs (section 8)

The task tables first (bench_tables.py: their jobs run two at a time), then the speed
and memory measurements one after another on the otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from nngraph.io import atomic_write_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def render(quick: bool = False) -> Path:
    """RESULTS.md (or RESULTS-quick.md from the quick_* files): one section per result file,
    its rows as a table, its summary paragraph, notes and figures, with machine, commit and wall time;
    a result file with a ``.md`` beside it (a section its benchmark writes) is that text instead."""
    name = "RESULTS-quick.md" if quick else "RESULTS.md"
    command = "python benchmarks/run.py --render"
    lines = [f"# Benchmark results{' (quick protocol)' if quick else ''}", "",
             f"Rendered by `{command}` from `results/*.json`.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        if path.name.startswith("quick_") != quick:
            continue
        data = json.loads(path.read_text())
        written = path.with_suffix(".md")  # a section written by its benchmark (its own heading), from this file
        if written.exists():
            lines += [written.read_text().rstrip(), ""]
            continue
        if not any(key in data for key in ("title", "rows", "summary", "notes")):
            continue  # a raw record that another file's section describes (gpt2_1block beside gpt2_small.md)
        lines += [f"## {data.get('title', path.stem)}", ""]
        meta = []
        if "command" in data:
            meta.append(f"command `{data['command']}`")
        if "commit" in data:
            meta.append(f"commit {data['commit']}")
        if "wall_s" in data:
            meta.append(f"wall time {data['wall_s']} s")
        if "machine" in data:
            m = data["machine"]
            meta.append(", ".join(f"{k} {v}" for k, v in m.items()))
        if meta:
            lines += ["; ".join(meta), ""]
        for figure in sorted(RESULTS.glob(f"{path.stem}*.png")):
            lines += [f"![{figure.stem}](results/{figure.name})", ""]
        rows = data.get("rows") or []
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
            lines.append("")
        if data.get("summary"):
            lines += [data["summary"], ""]
        lines += [f"- {note}" for note in data.get("notes", [])] + ([""] if data.get("notes") else [])
        for key in ("protocol", "phase_seconds"):
            if key in data:
                lines += [f"{key}: " + ", ".join(f"{k} {_cell(v)}" for k, v in data[key].items()), ""]
    out = HERE / name
    atomic_write_bytes(out, "\n".join(lines).encode())
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


# script: (arguments of the full run, arguments of the quick run)
SUITE = {
    "bench_tables.py": ([], ["--quick"]),
    "bench_convert.py": ([], ["--quick"]),
    "bench_arch.py": ([], ["--quick"]),
    "bench_inr_fit.py": ([], ["--quick"]),
    "bench_zoo.py": (["--count", "50"], ["--quick"]),
    "bench_models.py": ([], ["--quick"]),
    "bench_precision.py": ([], ["--quick"]),
}
DEVICE_AWARE = ("bench_models.py", "bench_precision.py")  # take --device; the others run on the CPU


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", action="store_true", help="only render RESULTS.md from existing results")
    parser.add_argument("--quick", action="store_true", help="the small protocol; writes quick_* results")
    parser.add_argument("--device", default="cpu",
                        help=f"device of {' and '.join(DEVICE_AWARE)} (default: cpu)")
    parser.add_argument("--paper", action="store_true",
                        help="the paper protocol (bench_paper.py): whole corpus, rows to their plateau, row by row")
    parser.add_argument("--suite", default=None, choices=["fashion-mnist", "mnist"],
                        help="with --paper: the suite (default fashion-mnist; mnist: the paper's own tables)")
    parser.add_argument("--rows", default=None, metavar="NAME[,NAME]", help="with --paper: only these rows")
    parser.add_argument("--dry-run", action="store_true", help="with --paper: list the rows and their state")
    args = parser.parse_args()
    if (args.rows or args.dry_run or args.suite) and not args.paper:
        parser.error("--suite, --rows and --dry-run go with --paper")
    if args.paper:
        flags = ((["--suite", args.suite] if args.suite else []) + (["--rows", args.rows] if args.rows else [])
                 + (["--dry-run"] if args.dry_run else []))
        return subprocess.call([sys.executable, str(HERE / "bench_paper.py"), *flags])
    if not args.render:
        for script, (full, quick) in SUITE.items():
            print(f"== {script}", flush=True)
            device = ["--device", args.device] if script in DEVICE_AWARE else []
            code = subprocess.call([sys.executable, str(HERE / script), *(quick if args.quick else full), *device])
            if code:
                print(f"{script} failed with exit code {code}")
                return code
    print(f"wrote {render(args.quick)}")
    if args.render:
        print(f"wrote {render(not args.quick)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
