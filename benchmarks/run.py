"""Run every benchmark script, then render RESULTS.md from the JSON results.

    python benchmarks/run.py            # run all bench_*.py, then render
    python benchmarks/run.py --render   # only render RESULTS.md from results/*.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def render() -> Path:
    """RESULTS.md: one section per result file, its rows as a table, with machine and commit."""
    lines = ["# Benchmark results", "", "Rendered by `python benchmarks/run.py --render` from `results/*.json`.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
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
        rows = data.get("rows") or []
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
            lines.append("")
        else:
            lines += ["```json", json.dumps({k: v for k, v in data.items() if k not in ("title", "machine")}, indent=1)[:4000], "```", ""]
    out = HERE / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", action="store_true", help="only render RESULTS.md from existing results")
    args = parser.parse_args()
    if not args.render:
        for script in sorted(HERE.glob("bench_*.py")):
            print(f"== {script.name}", flush=True)
            code = subprocess.call([sys.executable, str(script)])
            if code:
                print(f"{script.name} failed with exit code {code}")
                return code
    print(f"wrote {render()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
