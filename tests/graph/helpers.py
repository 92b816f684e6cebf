import torch

import nngraph
from nngraph.graph.graph import ROLE_HIDDEN
from nngraph.graph.permute import permute_graph


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """max |a - e| <= rel * max(|e|, 1): float32 agreement relative to the output's scale."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(expected.abs().max()), 1.0)
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"max abs error {err:.3g} exceeds {rel:g} x {scale:.3g}"


def assert_exact_params(params: dict, state: dict) -> None:
    assert list(params) == list(state)
    for key in state:
        assert params[key].dtype == state[key].dtype, key
        assert params[key].shape == state[key].shape, key
        assert torch.equal(params[key].view(-1).view(torch.uint8) if params[key].is_floating_point() else params[key],
                           state[key].view(-1).view(torch.uint8) if state[key].is_floating_point() else state[key]), key


def assert_relabelled(new, old, perm: torch.Tensor) -> None:
    """``new`` is ``old`` with node k <- old node perm[k]: features, structure and edges agree."""
    n = old.num_nodes
    assert sorted(perm.tolist()) == list(range(n))
    assert torch.equal(old.node_layer[perm], old.node_layer), "perm leaves a layer"
    fixed = old.node_role != ROLE_HIDDEN
    assert torch.equal(perm[fixed], torch.arange(n)[fixed]), "an input or output node moved"
    for key in ("x", "node_act", "node_norm", "node_pos", "node_hw"):
        assert torch.equal(new[key], old[key][perm]), key
    assert torch.equal(new.edge_index, old.edge_index)
    old_edges = {
        (s, d): (a, k)
        for (s, d), a, k in zip(old.edge_index.t().tolist(), old.edge_attr.tolist(), old.edge_kind.tolist())
    }
    p = perm.tolist()
    for (s, d), a, k in zip(new.edge_index.t().tolist(), new.edge_attr.tolist(), new.edge_kind.tolist()):
        assert old_edges[(p[s], p[d])] == (a, k)


def assert_batch_independent(model, graphs: list, atol: float = 1e-5) -> torch.Tensor:
    """Each graph's prediction alone (in the mixed batch's kernel window and width) equals
    its row of the mixed batch's prediction; returns the mixed batch's prediction."""
    batch = nngraph.collate(graphs)
    k_max, width = batch[0].spec.k_max, batch.edge_attr.shape[1]
    together = model(batch)
    for i, graph in enumerate(graphs):
        alone = model(nngraph.collate([graph], k_max=k_max, width=width))
        assert (alone - together[i : i + 1]).abs().max() <= atol, f"graph {i} depends on its batch-mates"
    return together


def assert_invariant_on_mixed_batch(graphs: list, probes: int, permute_seed: int, kind: str = "nggnn",
                                    out_dim: int = 2, hidden: int = 8, atol: float = 1e-4) -> torch.Tensor:
    """A small metanetwork ``kind`` (seed 0) on one batch of different networks: each network's
    prediction does not depend on its batch-mates (``assert_batch_independent``), and relabelling
    every graph's hidden neurons (``permute_graph(g, seed=permute_seed)``, which moves some in
    every graph) leaves the batch's predictions unchanged: max |f(P G) - f(G)| <= atol.
    Returns the prediction [B, out_dim]."""
    from nngraph.models import create_model  # the graph tests' other helpers need only graph/

    torch.manual_seed(0)
    model = create_model(kind, example=nngraph.collate(graphs), out_dim=out_dim, probes=probes, hidden=hidden,
                         edge_hidden=8, layers=2).eval()
    with torch.no_grad():
        together = assert_batch_independent(model, graphs, atol=atol)
        pairs = [permute_graph(g, seed=permute_seed) for g in graphs]
        assert all(not torch.equal(perm, torch.arange(len(perm))) for _, perm in pairs), "a graph kept its order"
        permuted = nngraph.collate([g for g, _ in pairs])
        assert (model(permuted) - together).abs().max() <= atol, "a neuron permutation changed a prediction"
    return together
