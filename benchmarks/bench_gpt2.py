"""GPT-2 small as a graph (issue 32 item 7): conversion time, execute time, peak RSS, exactness.

Builds GPT2LMHeadModel from GPT2Config() (random weights; 124 M parameters at the default vocabulary
of 50,257), converts it with nngraph.to_graph (torch.export capture), executes the graph on a few
sequences and compares with the model. The default is GPT-2 small itself (12 blocks, 768 wide, 12
heads, vocabulary 50,257, 1,024 positions); --vocab / --layers shrink it. The graph's size is reported
per field, with the bytes each edge costs, so a full model's size follows exactly (edges are linear
in layers and vocabulary); the resident memory is sampled after each phase (model, conversion,
execution) besides the process's peak. A watchdog ends the run (exit 3) if the resident memory
passes --rss-limit GiB. Each run is one process (peak RSS is the process's).

    .venv/bin/python benchmarks/bench_gpt2.py --vocab 2048 --layers 1 --out benchmarks/results/gpt2_1block.json
    .venv/bin/python benchmarks/bench_gpt2.py --out benchmarks/results/gpt2_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from pathlib import Path

import torch
import transformers

import nngraph


def edge_counts(config: transformers.GPT2Config, t: int) -> dict[str, int]:
    """Edges of the graph by part, from the converter's layout: linear edges = weight entries,
    row-node edges of each embedding table, residual/identity/attention edges per block."""
    d, v, p, inner = config.n_embd, config.vocab_size, config.n_positions, 4 * config.n_embd
    block = d * 3 * d + d * d + d * inner + inner * d
    return {"token_embedding": v * d, "lm_head": d * v, "position_embedding": p * d + p,
            "block_weights": block * config.n_layer}


def rss_gib() -> float:
    """The process's resident memory now, GiB (/proc/self/statm: pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def watchdog(limit_gib: float) -> None:
    """End the process (exit 3) once its resident memory passes ``limit_gib``, checked every 0.2 s."""
    def watch() -> None:
        while True:
            if rss_gib() > limit_gib:
                print(f"bench_gpt2: resident memory passed {limit_gib} GiB; stopped", flush=True)
                os._exit(3)
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rss-limit", type=float, default=20.0, help="GiB of resident memory that stop the run")
    args = parser.parse_args()
    watchdog(args.rss_limit)
    rss = {"start": rss_gib()}
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(vocab_size=args.vocab, n_layer=args.layers)
    model = transformers.GPT2LMHeadModel(config).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, args.vocab, (2, args.tokens))
    rss["model"] = rss_gib()
    start = time.perf_counter()
    graph = nngraph.to_graph(model, ids)
    convert_s = time.perf_counter() - start
    rss["graph"], rss_convert = rss_gib(), peak_gib()
    start = time.perf_counter()
    with torch.no_grad():
        y = nngraph.execute(graph, ids)[0]
    execute_s = time.perf_counter() - start
    rss["after_execute"], rss_execute = rss_gib(), peak_gib()
    with torch.no_grad():
        ref = model(ids, use_cache=False, return_dict=False)[0]
    fields = [k for k in graph.keys() if isinstance(graph[k], torch.Tensor)]
    graph_bytes = {k: graph[k].numel() * graph[k].element_size() for k in sorted(fields)}
    per_edge = sum(b for k, b in graph_bytes.items() if k.startswith("edge_")) / graph.num_edges
    small = transformers.GPT2Config()
    full_edges = graph.num_edges + sum(edge_counts(small, args.tokens).values()) - sum(edge_counts(config, args.tokens).values())
    result = {
        "config": {"vocab": args.vocab, "layers": args.layers, "n_embd": config.n_embd, "heads": config.n_head,
                   "tokens": args.tokens},
        "parameters": params, "nodes": graph.num_nodes, "edges": graph.num_edges, "edge_width": graph.edge_attr.shape[1],
        "convert_s": round(convert_s, 2), "execute_s": round(execute_s, 2),
        "rss_gib": {k: round(v, 2) for k, v in rss.items()},
        "peak_rss_gib_after_convert": round(rss_convert, 2), "peak_rss_gib_after_execute": round(rss_execute, 2),
        "peak_rss_gib": round(peak_gib(), 2),
        "graph_gib": {k: round(b / 2**30, 3) for k, b in graph_bytes.items()},
        "graph_gib_total": round(sum(graph_bytes.values()) / 2**30, 2),
        "bytes_per_edge": round(per_edge, 1),
        "max_rel_error": float((y - ref).abs().max() / ref.abs().max()),
        "params_exact": all(torch.equal(a, b) for a, b in zip(nngraph.to_params(graph).values(), model.state_dict().values())),
        "gpt2_small_edges": full_edges,
        "gpt2_small_graph_gib_estimate": round(full_edges * per_edge / 2**30, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
