"""Inputs and modes where torch_geometric works and we used to fail:
inference mode, torch.compile on a prepared symmetric graph, empty graphs
and numpy node counts."""
import numpy as np
import pytest
import torch

from helpers import assert_rel_close, bipartite_graph, devices, make_models
from lightgcn_ext import Graph, LightGCN, prepare, propagate

pytest.importorskip("torch_geometric")

NUM_USERS, NUM_ITEMS = 10, 14
N = NUM_USERS + NUM_ITEMS


def _graph(device="cpu"):
    return bipartite_graph(NUM_USERS, NUM_ITEMS, 50, seed=8, device=device)


# ---------------------------------------------------------- inference mode
@pytest.mark.parametrize("device", devices())
def test_edge_index_made_in_inference_mode(device):
    ours, pyg = (m.to(device) for m in make_models(N, 8, 3))
    with torch.inference_mode():
        edge_index = _graph(device)[0].clone()
    assert edge_index.is_inference()
    with torch.no_grad():
        assert_rel_close(ours.get_embedding(edge_index), pyg.get_embedding(edge_index))
    # With grad PyG fails here (it saves the inference edge_index for its
    # backward); ours trains on it, as PyG does on a normal copy.
    ours.get_embedding(edge_index).sum().backward()
    pyg.get_embedding(edge_index.clone()).sum().backward()
    assert_rel_close(ours.embedding.weight.grad, pyg.embedding.weight.grad)


@pytest.mark.parametrize("device", devices())
def test_validation_in_inference_mode_then_a_training_step(device):
    edge_index, pairs = _graph(device)
    ours, pyg = (m.to(device) for m in make_models(N, 8, 3))
    with torch.inference_mode():  # the first call prepares the graph here
        assert_rel_close(ours(edge_index, pairs), pyg(edge_index, pairs))
    loss = ours(edge_index, pairs).sum()
    loss.backward()
    pyg(edge_index, pairs).sum().backward()
    assert_rel_close(ours.embedding.weight.grad, pyg.embedding.weight.grad)


# ---------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("form", ["graph", "edge_index"])
def test_compile_get_embedding_fullgraph_on_a_symmetric_graph(form, device):
    torch._dynamo.reset()
    edge_index, _ = _graph(device)
    graph = prepare(edge_index, N)
    assert graph.is_symmetric
    model = LightGCN(N, 8, 3).to(device)
    # A raw edge_index compiles once it has been prepared (here by prepare()).
    graph_input = graph if form == "graph" else edge_index
    expected = model.get_embedding(graph_input)
    compiled = torch.compile(model.get_embedding, fullgraph=True, backend="aot_eager")
    out = compiled(graph_input)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert model.embedding.weight.grad is not None


def test_compile_with_an_unprepared_edge_index_says_what_to_do():
    torch._dynamo.reset()
    edge_index = _graph()[0].clone()
    model = LightGCN(N, 8, 3)
    compiled = torch.compile(model.get_embedding, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="prepare the graph before compiling"):
        compiled(edge_index)


# ----------------------------------------------- empty and numpy node counts
def test_zero_nodes_give_empty_results_like_pyg():
    ours, pyg = make_models(0, 4, 2)
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    assert ours.get_embedding(edge_index).shape == pyg.get_embedding(edge_index).shape == (0, 4)
    assert ours(edge_index).shape == pyg(edge_index).shape == (0,)
    graph = Graph.from_edge_index(edge_index, 0)
    assert graph.num_nodes == 0 and propagate(graph, torch.zeros(0, 3), [1.0, 1.0]).shape == (0, 3)


@pytest.mark.parametrize("count", [np.int64(N), np.int32(N), torch.tensor(N)],
                         ids=["np.int64", "np.int32", "tensor"])
def test_integer_like_node_counts_accepted(count):
    edge_index, _ = _graph()
    assert Graph.from_edge_index(edge_index, count).num_nodes == N
    assert prepare(edge_index.clone(), count).num_nodes == N
    ours, pyg = make_models(count, 8, 2)
    assert_rel_close(ours.get_embedding(edge_index), pyg.get_embedding(edge_index))
