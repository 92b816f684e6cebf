"""GPT-2 small as a graph (issue 32 item 7): conversion time, execute time, peak RSS, exactness.

Builds GPT2LMHeadModel from GPT2Config() (random weights; 124 M parameters at the default vocabulary
of 50,257), converts it with nngraph.to_graph (torch.export capture), executes the graph on a few
sequences and compares with the model. --vocab / --layers shrink the model; the graph's size is
reported per part, with the bytes each edge costs, so the full model's size follows exactly
(edges are linear in layers and vocabulary). Each run is one process (peak RSS is the process's).

    .venv/bin/python benchmarks/bench_gpt2.py --vocab 2048 --layers 1 --out benchmarks/results/gpt2_small.json
"""

from __future__ import annotations

import argparse
import json
import resource
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(vocab_size=args.vocab, n_layer=args.layers)
    model = transformers.GPT2LMHeadModel(config).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, args.vocab, (2, args.tokens))
    start = time.perf_counter()
    graph = nngraph.to_graph(model, ids)
    convert_s = time.perf_counter() - start
    rss_convert = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    with torch.no_grad():
        y = nngraph.execute(graph, ids)[0]
        ref = model(ids, use_cache=False, return_dict=False)[0]
    execute_s = time.perf_counter() - start
    tensors = {k: graph[k] for k in ("x", "edge_index", "edge_attr", "edge_kind", "edge_geom", "node_layer")}
    graph_bytes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    per_edge = sum(graph_bytes[k] for k in ("edge_index", "edge_attr", "edge_kind", "edge_geom")) / graph.num_edges
    small = transformers.GPT2Config()
    full_edges = graph.num_edges + sum(edge_counts(small, args.tokens).values()) - sum(edge_counts(config, args.tokens).values())
    result = {
        "config": {"vocab": args.vocab, "layers": args.layers, "n_embd": config.n_embd, "heads": config.n_head,
                   "tokens": args.tokens},
        "parameters": params, "nodes": graph.num_nodes, "edges": graph.num_edges, "edge_width": graph.edge_attr.shape[1],
        "convert_s": round(convert_s, 2), "execute_and_model_s": round(execute_s, 2),
        "peak_rss_gib_after_convert": round(rss_convert, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "graph_gib": {k: round(b / 2**30, 3) for k, b in graph_bytes.items()},
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
