"""nngraph: learning on neural networks as graphs.

    g = nngraph.to_graph(model, example_input)   # NeuralGraph
    y, acts = nngraph.execute(g, x)              # y == model(x); acts [N, P]
    params = nngraph.to_params(g)                # == model.state_dict()
    m2 = nngraph.permute_neurons(model, seed=0)  # same function, hidden units reordered
    batch = nngraph.collate([g1, g2])            # mixed architectures in one batch
    net = nngraph.create_model("ngt", example=batch, out_dim=10)   # metanetworks and baselines
    nngraph.draw_graph(g, "graph.png")           # the graph as a picture, layers left to right
"""

from nngraph.draw import draw_graph
from nngraph.errors import NNGraphError
from nngraph.graph.batch import collate, to_dense
from nngraph.graph.convert import to_graph, to_params
from nngraph.graph.execute import execute
from nngraph.graph.fast import graphs_from_params
from nngraph.graph.graph import NeuralGraph
from nngraph.graph.permute import permute_neurons
from nngraph.models import create_model

__all__ = [
    "NNGraphError",
    "NeuralGraph",
    "collate",
    "create_model",
    "draw_graph",
    "execute",
    "graphs_from_params",
    "permute_neurons",
    "to_dense",
    "to_graph",
    "to_params",
]
__version__ = "0.1.0"
