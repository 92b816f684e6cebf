"""The demo: convert the bundled example networks and check nngraph's three promises.

For each network: the graph's size, the largest deviation of ``execute(graph, x)`` from
``model(x)``, whether ``to_params`` gives the state_dict back bit for bit, and the
largest output change after ``permute_neurons``.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

import nngraph
from nngraph.examples import example_networks


def conversion_report(seed: int = 0) -> list[dict]:
    rows = []
    for name, model, x in example_networks(seed):
        start = time.perf_counter()
        graph = nngraph.to_graph(model, x)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            expected = model(x)
            y, _ = nngraph.execute(graph, x)
            permuted = nngraph.permute_neurons(model, seed=seed + 1, example_input=x)(x)
        params = nngraph.to_params(graph)
        exact = all(torch.equal(params[k], v) for k, v in model.state_dict().items())
        scale = max(float(expected.abs().max()), 1.0)
        rows.append({
            "network": name,
            "nodes": graph.num_nodes,
            "edges": graph.num_edges,
            "d_e": graph.edge_attr.shape[1],
            "execute_rel_err": float((y - expected).abs().max()) / scale,
            "params_exact": exact,
            "permuted_rel_err": float((permuted - expected).abs().max()) / scale,
            "convert_ms": 1000 * seconds,
        })
    return rows


def main() -> int:
    console = Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
        console = Console(width=120)
    torch.set_num_threads(2)
    rows = conversion_report()
    table = Table(title="nngraph: example networks as graphs")
    table.add_column("network", no_wrap=True)
    for column in ("nodes", "edges", "d_e", "execute err", "params exact", "permuted err", "convert"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["network"], str(r["nodes"]), str(r["edges"]), str(r["d_e"]), f"{r['execute_rel_err']:.1e}",
                      "yes" if r["params_exact"] else "NO", f"{r['permuted_rel_err']:.1e}", f"{r['convert_ms']:.0f} ms")
    console.print(table)
    ok = all(r["params_exact"] and r["execute_rel_err"] <= 1e-5 and r["permuted_rel_err"] <= 1e-4 for r in rows)
    console.print("errors are max |graph - model| / max(|model|, 1); all checks passed" if ok else "[red]a check failed[/red]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
