"""A hypothesis-driven fuzz test of every public entry point of LightGCN
against torch_geometric's: graph shapes (empty rows, self-loops, duplicates,
symmetric or not), dtypes, edge weights, alpha forms, flow, normalize and
graph input forms. Each case must match PyG, or both must raise; never a
crash, a hang or a silent mismatch."""
import copy

import pytest
import torch

from helpers import REL_TOL, assert_same_topk, dense_operator, make_models

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("torch_geometric")
st = hypothesis.strategies

import lightgcn_ext  # noqa: E402

INPUT_FORMS = ("edge_index", "edge_index_int32", "graph", "sparse_csr", "sparse_coo")


@st.composite
def cases(draw):
    num_nodes = draw(st.integers(1, 16))
    num_edges = draw(st.integers(0, 40))
    src = draw(st.lists(st.integers(0, num_nodes - 1), min_size=num_edges, max_size=num_edges))
    dst = draw(st.lists(st.integers(0, num_nodes - 1), min_size=num_edges, max_size=num_edges))
    edge_index = torch.tensor([src, dst], dtype=torch.long).view(2, num_edges)
    if draw(st.booleans()):  # both directions, as a user-item graph has
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    num_layers = draw(st.integers(0, 3))
    alpha = draw(st.sampled_from(["default", "number", "tensor"]))
    if alpha == "default":
        alpha = None
    elif alpha == "number":
        alpha = draw(st.floats(-2, 2, allow_nan=False))
    else:
        alpha = torch.tensor(draw(st.lists(st.floats(-2, 2, allow_nan=False),
                                           min_size=num_layers + 1, max_size=num_layers + 1)))
    weights = None
    if draw(st.booleans()):
        weights = torch.tensor(draw(st.lists(st.floats(0.1, 3.0), min_size=edge_index.shape[1],
                                             max_size=edge_index.shape[1])))
    form = draw(st.sampled_from(INPUT_FORMS))
    flow = draw(st.sampled_from(["source_to_target", "target_to_source"]))
    if form.startswith("sparse"):
        flow = "source_to_target"  # PyG rejects another flow with a sparse adj_t
    return dict(num_nodes=num_nodes, edge_index=edge_index, weights=weights,
                num_layers=num_layers, alpha=alpha, form=form, flow=flow,
                normalize=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])),
                seed=draw(st.integers(0, 2**16)))


def _graph_inputs(case):
    """(our graph input, PyG's graph input, our edge_weight, PyG's edge_weight)."""
    edge_index, weights, n = case["edge_index"], case["weights"], case["num_nodes"]
    if weights is not None:
        weights = weights.to(case["dtype"])
    form = case["form"]
    if form == "edge_index":
        return edge_index, edge_index, weights, weights
    if form == "edge_index_int32":  # PyG's int32 gradient is wrong (2.8): it gets int64
        return edge_index.int(), edge_index, weights, weights
    if form == "graph":
        graph = lightgcn_ext.Graph.from_edge_index(edge_index, n, weights,
                                                   normalize=case["normalize"], flow=case["flow"])
        return graph, edge_index, None, weights
    values = torch.ones(edge_index.shape[1], dtype=case["dtype"]) if weights is None else weights
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), values, (n, n)).coalesce()
    if form == "sparse_csr":
        adj_t = adj_t.to_sparse_csr()
    return adj_t, adj_t, None, None


def _both(fn_ours, fn_pyg):
    """Both results, or both exceptions (then None): one raising alone fails."""
    ours_error = pyg_error = None
    try:
        ours = fn_ours()
    except (ValueError, TypeError, RuntimeError) as error:
        ours_error = error
    try:
        ref = fn_pyg()
    except (ValueError, TypeError, RuntimeError, IndexError) as error:
        pyg_error = error
    assert (ours_error is None) == (pyg_error is None), (ours_error, pyg_error)
    return None if ours_error is not None else (ours, ref)


def _outputs(model, graph, weight, case):
    """Every entry point's result on one case: embeddings, scores, link
    probabilities, both losses, the embedding gradient, and top-k."""
    gen = torch.Generator().manual_seed(case["seed"])
    n = case["num_nodes"]
    pairs = torch.randint(0, n, (2, 7), generator=gen)
    negatives = torch.randint(0, n, (2, 7), generator=gen)
    label = torch.randint(0, 2, (7,), generator=gen)
    k = int(torch.randint(0, n + 1, (1,), generator=gen))
    out = dict(embedding=model.get_embedding(graph, weight))
    pos, neg = model(graph, pairs, weight), model(graph, negatives, weight)
    out.update(pos=pos, prob=model.predict_link(graph, pairs, weight, prob=True),
               link_loss=model.link_pred_loss(pos, label))
    node_id = torch.cat([pairs, negatives], dim=1).flatten()
    out["bpr_loss"] = model.recommendation_loss(pos, neg, node_id=node_id)
    (out["grad"],) = torch.autograd.grad(out["bpr_loss"], model.embedding.weight)
    out["top"] = model.recommend(graph, weight, k=k)
    return out


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(case=cases())
def test_every_entry_point_matches_pyg(case):
    """float64: ours and PyG agree to 1e-9 of the largest value. float32: our
    error against PyG in float64 is at most twice PyG's own float32 error plus
    1e-5 of the largest value (the suite's float32 tolerance), as float32 sums
    in another order cancel differently."""
    n, dtype = case["num_nodes"], case["dtype"]
    ours, pyg = make_models(n, 4, case["num_layers"], case["alpha"], dtype=dtype,
                            seed=case["seed"], normalize=case["normalize"], flow=case["flow"])
    graph_ours, graph_pyg, w_ours, w_pyg = _graph_inputs(case)
    got = _both(lambda: _outputs(ours, graph_ours, w_ours, case),
                lambda: _outputs(pyg, graph_pyg, w_pyg, case))
    if got is None:
        return
    mine, theirs = got
    exact = theirs
    if dtype == torch.float32:
        pyg64 = copy.deepcopy(pyg).double()
        w64 = None if w_pyg is None else w_pyg.double()
        graph64 = graph_pyg
        if isinstance(graph_pyg, torch.Tensor) and graph_pyg.is_sparse_csr:
            graph64 = graph_pyg.to(torch.float64)
        elif isinstance(graph_pyg, torch.Tensor) and graph_pyg.is_sparse:
            graph64 = graph_pyg.double()
        exact = _outputs(pyg64, graph64, w64, case)
    growth = _growth(case, ours.alpha)
    for name in mine:
        if name == "top":
            continue
        _assert_as_close_as_pyg(name, mine[name], theirs[name], exact[name], dtype, growth)
    scores = (exact["embedding"] @ exact["embedding"].t()).detach().to(dtype)
    assert_same_topk(mine["top"], theirs["top"], scores, rtol=1e-4 if dtype == torch.float32
                     else 1e-9)


def _growth(case, alpha):
    """How much larger than the result the terms summed for it can be:
    max(1, |M|_inf)^L * max(1, |alpha|), M the (normalized) operator. An
    unnormalized graph of 18 self-loops multiplies by 324 in two layers, and
    rounding errors of that size cancel to a far smaller result."""
    edge_index, weights = case["edge_index"], case["weights"]
    if case["flow"] == "target_to_source":
        edge_index = edge_index.flip(0)
    m = dense_operator(edge_index, case["num_nodes"], weights, case["normalize"])
    norm = m.abs().sum(dim=1).max().item() if m.numel() else 0.0
    return max(1.0, norm) ** case["num_layers"] * max(1.0, alpha.abs().max().item())


def _assert_as_close_as_pyg(name, ours, pyg, exact, dtype, growth):
    ours, pyg, exact = (t.detach().double() for t in (ours, pyg, exact))
    assert ours.shape == pyg.shape == exact.shape, name
    scale = growth * (exact.abs().max().item() if exact.numel() else 0.0)
    if dtype == torch.float64:
        torch.testing.assert_close(ours, pyg, rtol=0, atol=1e-9 * max(scale, 1e-30),
                                   equal_nan=True, msg=name)
        return
    error = (ours - exact).abs().max().item() if ours.numel() else 0.0
    pyg_error = (pyg - exact).abs().max().item() if pyg.numel() else 0.0
    assert error <= 2 * pyg_error + REL_TOL[dtype] * scale, (name, error, pyg_error)
