"""nn.LSTM / nn.GRU unrolled (recurrent.py): exact, weights tied across steps, hidden units permutable."""

import pytest
import torch
from torch import nn

import nngraph
from nngraph.errors import UnsupportedModelError
from tests.graph.helpers import assert_exact_params, assert_invariant_on_mixed_batch, assert_rel_close


class Classifier(nn.Module):
    """A recurrent layer on a [batch, T, 3] input and a head reading the last step, h_n[-1] or all steps."""

    def __init__(self, cls, batch_first: bool, layers: int, head: str, steps: int = 5):
        super().__init__()
        self.rnn = cls(3, 4, num_layers=layers, batch_first=batch_first)
        self.fc = nn.Linear(4 * (steps if head == "all" else 1), 2)
        self.batch_first, self.head, self.lstm = batch_first, head, cls is nn.LSTM

    def forward(self, x):
        out, state = self.rnn(x if self.batch_first else x.transpose(0, 1))
        h = state[0] if self.lstm else state
        if self.head == "last":
            z = out[:, -1] if self.batch_first else out[-1]
        elif self.head == "h":
            z = h[-1]
        else:
            z = out.flatten(1)
        return self.fc(z)


CASES = [(cls, bf, layers, head) for cls in (nn.LSTM, nn.GRU)
         for bf, layers, head in ((True, 1, "last"), (False, 2, "h"), (True, 2, "all"))]
IDS = [f"{c[0].__name__}-{'bf' if c[1] else 'tbd'}-{c[2]}-{c[3]}" for c in CASES]


def _model(case, seed=0):
    torch.manual_seed(seed)
    return Classifier(*case).eval()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unrolled_network_is_exact_and_reads_back_each_weight_once(case):
    model, x = _model(case), torch.randn(6, 5, 3)
    graph = nngraph.to_graph(model, x)
    y, _ = nngraph.execute(graph, x)
    with torch.no_grad():
        assert_rel_close(y, model(x), rel=1e-5)
    assert_exact_params(nngraph.to_params(graph), model.state_dict())
    assert len(graph.spec.params) == len(model.state_dict())  # one primary per tensor, the other steps are ties
    assert len(graph.spec.ties) > 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_permuting_hidden_units_keeps_the_function(case):
    model, x = _model(case, 1), torch.randn(4, 5, 3)
    moved = False
    for seed in range(2):
        permuted = nngraph.permute_neurons(model, seed=seed, example_input=x)
        with torch.no_grad():
            assert_rel_close(permuted(x), model(x), rel=1e-4)
        moved |= not torch.equal(permuted.rnn.weight_hh_l0, model.rnn.weight_hh_l0)
    assert moved, "the hidden units never moved"


def test_a_permutation_is_the_same_in_every_gate_block():
    model, x = _model((nn.LSTM, True, 1, "last"), 2), torch.randn(2, 5, 3)
    old = model.rnn.weight_ih_l0.detach()  # [4H, 3]: gate blocks i, f, g, o; the input columns never move
    moved = False
    for seed in range(3):
        new = nngraph.permute_neurons(model, seed=seed, example_input=x).rnn.weight_ih_l0.detach()
        sigma = [[next(k for k in range(4) if torch.equal(new[b * 4 + j], old[b * 4 + k])) for j in range(4)]
                 for b in range(4)]
        assert all(s == sigma[0] for s in sigma), sigma  # unit j takes unit sigma(j)'s rows in all four gates
        moved |= sigma[0] != [0, 1, 2, 3]
    assert moved


def test_nggnn_on_a_mixed_batch_of_rnns_is_invariant_and_batch_independent():
    x = torch.randn(2, 5, 3)
    graphs = [nngraph.to_graph(_model(c), x) for c in (CASES[0], CASES[3], CASES[4])]
    assert_invariant_on_mixed_batch(graphs, probes=2, permute_seed=5)


def test_unsupported_recurrent_layers_are_refused_in_one_line():
    model = Classifier(nn.GRU, True, 1, "last").eval()
    model.rnn = nn.GRU(3, 4, batch_first=True, bidirectional=True)
    model.fc = nn.Linear(8, 2)
    with pytest.raises(UnsupportedModelError, match="unidirectional"):
        nngraph.to_graph(model, torch.randn(2, 5, 3))
    with pytest.raises(UnsupportedModelError, match="at least 2 steps"):
        nngraph.to_graph(Classifier(nn.LSTM, True, 1, "last").eval(), torch.randn(2, 1, 3))
