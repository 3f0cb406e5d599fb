"""Where our LightGCN and torch_geometric's part ways on their edges, checked
against torch_geometric: paths that used to return a wrong number without a
word (each is now right or a clear error), and inputs and modes where
torch_geometric works and we used to fail (inference mode, torch.compile on a
prepared symmetric graph, empty graphs and numpy node counts)."""
import numpy as np
import pytest
import torch

from helpers import assert_rel_close, bipartite_graph, devices, make_models, random_weights
from lightgcn_ext import Graph, LightGCN, prepare, propagate

pytest.importorskip("torch_geometric")

NUM_USERS, NUM_ITEMS = 12, 20
N = NUM_USERS + NUM_ITEMS


def _user_item_graph(device="cpu"):
    return bipartite_graph(NUM_USERS, NUM_ITEMS, 60, seed=3, device=device)


# ------------------------------------------- a learnable edge weight, trained
@pytest.mark.parametrize("device", devices())
def test_graph_tracks_a_trained_edge_weight(device):
    edge_index, _ = _user_item_graph(device)
    weight = torch.nn.Parameter(random_weights(edge_index.shape[1], seed=4,
                                               dtype=torch.float32, device=device))
    ours, pyg = (m.to(device) for m in make_models(N, 8, 2))
    graph = Graph.from_edge_index(edge_index, N, weight)
    optimizer = torch.optim.SGD([weight], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        ours.get_embedding(graph).pow(2).sum().backward()
        optimizer.step()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    current = weight.detach().clone()
    expected = pyg.get_embedding(edge_index, current)
    with torch.no_grad():  # the fused path: it must see the trained weights too
        assert_rel_close(ours.get_embedding(graph), expected)
    assert_rel_close(ours.get_embedding(graph), expected)  # the differentiable path
    with torch.no_grad():
        scores = expected @ expected.t()
        top = ours.recommend(graph, k=5, return_scores=True)[1]
        torch.testing.assert_close(top, scores.topk(5, dim=1).values, rtol=1e-5, atol=1e-5)


# ----------------------------------------------- a Graph does not change
@pytest.mark.parametrize("which", ["edge_index", "edge_weight"])
def test_graph_is_immutable_after_its_input_changes(which):
    edge_index, _ = _user_item_graph()
    weight = random_weights(edge_index.shape[1], seed=5, dtype=torch.float32)
    ours, pyg = make_models(N, 8, 3)
    graph = Graph.from_edge_index(edge_index, N, weight)
    expected = pyg.get_embedding(edge_index.clone(), weight.clone())
    if which == "edge_index":
        edge_index[1, :10] = edge_index[1, 10:20]
    else:
        weight.mul_(3.0).add_(1.0)
    with torch.no_grad():
        assert_rel_close(ours.get_embedding(graph), expected)
    assert_rel_close(ours.get_embedding(graph), expected)


# ------------------------------- module settings against a prepared graph
@pytest.mark.parametrize("setting", [dict(normalize=False), dict(flow="target_to_source")],
                         ids=["normalize", "flow"])
def test_module_settings_that_conflict_with_the_graph_raise(setting):
    edge_index, _ = _user_item_graph()
    model = LightGCN(N, 8, 2, **setting)
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name):
        model.get_embedding(Graph.from_edge_index(edge_index, N))
    # Built with the module's settings, the graph gives PyG's result.
    ours, pyg = make_models(N, 8, 2, **setting)
    directed = edge_index[:, :70]  # flow matters only on a directed graph
    graph = Graph.from_edge_index(directed, N, **setting)
    assert_rel_close(ours.get_embedding(graph), pyg.get_embedding(directed))


# ------------------------------------------------------ recommend, exclude
def _recommend_case():
    edge_index, pairs = _user_item_graph()
    ours, pyg = make_models(N, 8, 2)
    with torch.no_grad():
        ours.embedding.weight.normal_()
    users = torch.arange(NUM_USERS)
    items = torch.arange(NUM_USERS, N)
    return ours, edge_index, pairs, users, items


def test_recommend_marks_what_only_excluded_items_could_fill():
    ours, edge_index, pairs, users, items = _recommend_case()
    # User 0 has seen every item but 3: the other k - 3 places are -1 / -inf.
    seen = torch.stack([torch.zeros(NUM_ITEMS - 3, dtype=torch.long), items[3:]])
    k = 6
    index, scores = ours.recommend(edge_index, src_index=users, dst_index=items, k=k,
                                   exclude=seen, return_scores=True)
    assert index.shape == scores.shape == (NUM_USERS, k)
    assert sorted(index[0, :3].tolist()) == items[:3].tolist()
    assert index[0, 3:].tolist() == [-1] * (k - 3)
    assert torch.isinf(scores[0, 3:]).all() and (scores[0, 3:] < 0).all()
    assert (index[1:] >= NUM_USERS).all() and torch.isfinite(scores[1:]).all()
    # The scores are the dot products of the recommended pairs.
    emb = ours.get_embedding(edge_index)
    valid = index >= 0
    rows = users.unsqueeze(1).expand_as(index)[valid]
    expected = (emb[rows] * emb[index[valid]]).sum(-1)
    torch.testing.assert_close(scores[valid], expected, rtol=1e-5, atol=1e-6)


def test_recommend_without_exclude_returns_scores_too():
    ours, edge_index, _, users, items = _recommend_case()
    index = ours.recommend(edge_index, src_index=users, dst_index=items, k=4)
    index2, scores = ours.recommend(edge_index, src_index=users, dst_index=items, k=4,
                                    return_scores=True)
    assert torch.equal(index, index2) and (index >= NUM_USERS).all()
    assert torch.isfinite(scores).all()


def test_recommend_exclude_with_item_local_ids_raises():
    ours, edge_index, pairs, users, items = _recommend_case()
    local = torch.stack([pairs[0], pairs[1] - NUM_USERS])  # item ids not offset
    with pytest.raises(ValueError, match="global node ids"):
        ours.recommend(edge_index, src_index=users, dst_index=items, k=3, exclude=local)
    # Global ids are accepted.
    ours.recommend(edge_index, src_index=users, dst_index=items, k=3, exclude=pairs)


# ------------------------------------------------------------ alpha = inf
@pytest.mark.parametrize("alpha", [[0.5, float("inf"), 0.25], [float("-inf"), 1.0, 1.0],
                                   [0.5, 0.5, float("nan")]], ids=["inf", "-inf", "nan"])
def test_non_finite_alpha_gives_what_pyg_gives(alpha):
    edge_index, _ = _user_item_graph()
    ours, pyg = make_models(N, 8, 2, alpha=torch.tensor(alpha))
    out, expected = ours.get_embedding(edge_index), pyg.get_embedding(edge_index)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=1e-5, atol=1e-6)
    assert torch.isinf(out).any() or torch.isnan(out).any()



# ---------------------------------------------------------- inference mode
@pytest.mark.parametrize("device", devices())
def test_edge_index_made_in_inference_mode(device):
    ours, pyg = (m.to(device) for m in make_models(N, 8, 3))
    with torch.inference_mode():
        edge_index = _user_item_graph(device)[0].clone()
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
    edge_index, pairs = _user_item_graph(device)
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
    edge_index, _ = _user_item_graph(device)
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
    edge_index = _user_item_graph()[0].clone()
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
    edge_index, _ = _user_item_graph()
    assert Graph.from_edge_index(edge_index, count).num_nodes == N
    assert prepare(edge_index.clone(), count).num_nodes == N
    ours, pyg = make_models(count, 8, 2)
    assert_rel_close(ours.get_embedding(edge_index), pyg.get_embedding(edge_index))
