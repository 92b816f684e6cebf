"""The main job (``nngraph demo`` / ``make demo``): learn to classify digits from their INRs.

1. Check nngraph's promises on the bundled example networks (exact conversion,
   executor equals the model, permutations keep the function).
2. Build the digits INR corpus: one SIREN (dwsnet, 2 -> 32 -> 32 -> 1) per image of
   scikit-learn's 8x8 digits, embedded in scikit-learn, nothing downloaded; resumable.
3. Train NG-T with probe features and the NFN-HNP baseline on it, and print a table of
   their test accuracy with the paths of the runs' plots.

Everything lands in ``--out`` (default ``runs/demo``); rerunning reuses finished work.
Threads: torch's default (``OMP_NUM_THREADS`` when set), or ``nngraph --threads N demo``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import nngraph
from nngraph.examples import example_networks

DEMO_MODELS = {
    # name: (model, model kwargs, lr, epochs)
    "NG-T + 16 probes": ("ngt", {"hidden": 32, "edge_hidden": 16, "layers": 2, "heads": 4, "probes": 16}, 3e-3, 12),
    # The strongest of the five baselines on this corpus at this budget (test accuracy, seed 0:
    # nfn-hnp 0.29, nfn-np 0.23, deepsets 0.19, statnn 0.17, mlp 0.09).
    "NFN-HNP (baseline)": ("nfn-hnp", {}, 3e-3, 12),
}


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


def print_conversion(console: Console, rows: list[dict]) -> bool:
    table = Table(title="1. example networks as graphs")
    table.add_column("network", no_wrap=True)
    for column in ("nodes", "edges", "d_e", "execute err", "params exact", "permuted err", "convert"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["network"], str(r["nodes"]), str(r["edges"]), str(r["d_e"]), f"{r['execute_rel_err']:.1e}",
                      "yes" if r["params_exact"] else "NO", f"{r['permuted_rel_err']:.1e}", f"{r['convert_ms']:.0f} ms")
    console.print(table)
    ok = all(r["params_exact"] and r["execute_rel_err"] <= 1e-5 and r["permuted_rel_err"] <= 1e-4 for r in rows)
    console.print("errors are max |graph - model| / max(|model|, 1)" if ok else "[red]a conversion check failed[/red]")
    return ok


def run(out: str = "runs/demo", seed: int = 0, epochs: int | None = None, progress: bool = True) -> int:
    from nngraph.data.build import build_inr_corpus
    from nngraph.train import TrainConfig, train

    console = Console()
    if not console.is_terminal:  # logs and CI: do not squeeze tables into 80 columns
        console = Console(width=120)
    start = time.perf_counter()
    ok = print_conversion(console, conversion_report(seed))

    corpus = Path(out) / "digits-inrs"
    console.print(f"\n2. digits INR corpus in {corpus}")
    build_inr_corpus(corpus, "digits", "dwsnet", seed=seed, progress=progress, command=f"nngraph demo --out {out}")

    results = {}
    for label, (model, kwargs, lr, default_epochs) in DEMO_MODELS.items():
        console.print(f"\n3. training {label}")
        run_dir = Path(out) / model
        config = TrainConfig(task="classify", data=str(corpus), model=model, out=str(run_dir),
                             epochs=epochs or default_epochs, batch_size=32, lr=lr, seed=seed, model_kwargs=kwargs)
        resume = (run_dir / "config.json").exists()  # a rerun continues (or only re-evaluates) the run
        results[label] = train(config, resume=resume, progress=progress)

    table = Table(title="digits INRs (dwsnet SIRENs of 8x8 images): test accuracy")
    for column in ("model", "parameters", "epochs", "train time", "val acc", "test acc", "plots"):
        table.add_column(column, justify="left" if column in ("model", "plots") else "right")
    for label, r in results.items():
        table.add_row(label, f"{r['parameters']:,}", str(len(r["history"])), f"{r['train_seconds']:.0f} s",
                      f"{r['val']['accuracy']:.3f}", f"{r['test']['accuracy']:.3f}", "\n".join(r.get("plots", [])))
    console.print(table)
    console.print(f"total {time.perf_counter() - start:.0f} s. Next: the same on Fashion-MNIST INRs, see README.md")
    return 0 if ok else 1


def main() -> int:
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
