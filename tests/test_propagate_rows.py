"""propagate_rows: the propagation read at a batch's rows, and its one-array
backward, against the full propagation and a dense float64 reference."""
import pytest
import torch

import lightgcn_ext
from helpers import (OPS, csr_operands, dense_propagate, devices, directed_graph, features,
                     random_edges, random_undirected, random_weights, undirected_graph)
from lightgcn_ext import LightGCN
from lightgcn_ext._ops import propagate_rows
from lightgcn_ext.training import bpr_step

NUM_NODES = 40


def _alpha(num_layers, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num_layers + 1, generator=gen, dtype=torch.float64) + 0.1).to(dtype)


def _rows(kind, num_nodes=NUM_NODES, seed=5):
    """Row lists: with repeats (nodes without in-edges included), empty, every node."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "repeats":
        rows = torch.randint(0, num_nodes, (25,), generator=gen)
        return torch.cat([rows, rows[:7], torch.tensor([num_nodes - 1, num_nodes - 1])])
    if kind == "empty":
        return torch.zeros(0, dtype=torch.long)
    return torch.randperm(num_nodes, generator=gen)


def _operator(graph_kind, weighted, dtype):
    """(the raw ops' operator, edge_index, edge weight or None): a directed
    graph (with its transposed CSR) or a symmetric one (one CSR, M^T = M)."""
    if graph_kind == "directed":
        edge_index = directed_graph(NUM_NODES, 120, seed=2)
        w = random_weights(edge_index.shape[1], seed=3) if weighted else None
        return csr_operands(edge_index, NUM_NODES, w, dtype), edge_index, w
    if weighted:  # the same weight on both directions: a symmetric M
        edge_index, w = random_undirected(NUM_NODES, 60, seed=4, weighted=True, num_isolated=3)
    else:  # duplicate edges and self-loops too
        edge_index, w = undirected_graph(NUM_NODES, 60, seed=4), None
    graph = lightgcn_ext.prepare(edge_index, NUM_NODES, w)
    assert graph.is_symmetric
    return graph.operator(dtype), edge_index, w


def _both_paths(operator, x, alpha, rows, seed=7):
    """(out, x_rows, grad of x) of propagate_rows and of propagate + indexing,
    for one loss on both outputs."""
    gen = torch.Generator().manual_seed(seed)
    g_out = torch.randn(rows.numel(), x.shape[1], generator=gen, dtype=torch.float64).to(x.dtype)
    g_x0 = torch.randn(rows.numel(), x.shape[1], generator=gen, dtype=torch.float64).to(x.dtype)
    results = []
    for fused in (True, False):
        x_ = x.detach().clone().requires_grad_(True)
        if fused:
            out, x_rows = propagate_rows(operator, x_, alpha, rows)
        else:
            out, x_rows = OPS.propagate(*operator, x_, alpha)[rows], x_[rows]
        ((out * g_out).sum() + (x_rows * g_x0).sum()).backward()
        results.append((out.detach(), x_rows.detach(), x_.grad))
    return results


@pytest.mark.parametrize("graph_kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_layers", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("rows_kind", ["repeats", "empty", "all"])
def test_float64_matches_dense_reference_and_full_path(graph_kind, weighted, num_layers,
                                                       rows_kind):
    operator, edge_index, w = _operator(graph_kind, weighted, torch.float64)
    x = features(NUM_NODES, 8, torch.float64, seed=1)
    alpha = _alpha(num_layers)
    rows = _rows(rows_kind)
    (out, x_rows, grad), (out_full, x_rows_full, grad_full) = _both_paths(operator, x, alpha, rows)
    ref = dense_propagate(edge_index, NUM_NODES, x, alpha, w)[rows]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, out_full, rtol=1e-12, atol=1e-12)
    assert torch.equal(x_rows, x[rows]) and torch.equal(x_rows_full, x[rows])
    torch.testing.assert_close(grad, grad_full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("graph_kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
@pytest.mark.parametrize("d", [8, 70], ids=["d8", "d70"])  # 70: a full tile and a partial one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_the_full_path_to_the_last_bit(graph_kind, weighted, num_layers, d, dtype):
    """The restricted sweeps add the same terms in the same order as the full
    ones: the forward is bitwise equal. In float32 so is the gradient, but
    where a node is repeated in rows (its rows' gradients are summed before
    the sweeps: a few ulps). In bfloat16 the gradient differs by the
    roundings the full path makes and the fused one does not (the repeats'
    sum and the sum of the two outputs' gradients, rounded to bfloat16 there,
    are float32 here)."""
    operator, _, _ = _operator(graph_kind, weighted, dtype)
    x = features(NUM_NODES, d, dtype, seed=2)
    alpha = _alpha(num_layers, torch.float32)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    for rows_kind in ("all", "repeats"):
        rows = _rows(rows_kind)
        (out, _, grad), (out_full, _, grad_full) = _both_paths(operator, x, alpha, rows)
        assert torch.equal(out, out_full)
        if rows_kind == "all" and dtype == torch.float32:
            assert torch.equal(grad, grad_full)
        torch.testing.assert_close(grad, grad_full, rtol=tol, atol=tol)


@pytest.mark.parametrize("graph_kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_gradcheck(graph_kind, weighted):
    operator, _, _ = _operator(graph_kind, weighted, torch.float64)
    x = features(NUM_NODES, 3, torch.float64, seed=3, requires_grad=True)
    alpha = _alpha(3).requires_grad_(True)
    rows = _rows("repeats")
    assert torch.autograd.gradcheck(lambda x, a: propagate_rows(operator, x, a, rows), (x, alpha))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("graph_kind", ["directed", "symmetric"])
def test_opcheck(graph_kind, device):
    operator, _, _ = _operator(graph_kind, True, torch.float64)
    operator = type(operator)(*(None if t is None else t.to(device) for t in operator))
    x = features(NUM_NODES, 5, torch.float64, device=device, seed=4, requires_grad=True)
    alpha = _alpha(2).to(device)
    rows = _rows("repeats").to(device)
    torch.library.opcheck(OPS.propagate_rows, (*operator, x, alpha, rows))
    grad = torch.randn(rows.numel(), 5, dtype=torch.float64, device=device)
    torch.library.opcheck(OPS.propagate_rows_backward,
                          (*operator, grad, grad.flip(0), alpha.detach(), rows))
    torch.library.opcheck(OPS.propagate_rows_backward,
                          (*operator, grad, None, alpha.detach(), rows))


def test_rows_out_of_range_or_of_another_type_are_refused():
    operator, _, _ = _operator("directed", False, torch.float64)
    x = features(NUM_NODES, 4, torch.float64)
    alpha = _alpha(2)
    with pytest.raises(RuntimeError, match=r"rows must hold node ids in \[0, num_nodes = 40\)"):
        propagate_rows(operator, x, alpha, torch.tensor([0, NUM_NODES]))
    with pytest.raises(RuntimeError, match="rows must be int64, got Int"):
        propagate_rows(operator, x, alpha, torch.tensor([0, 1], dtype=torch.int32))
    model = LightGCN(NUM_NODES, 4, 2)
    with pytest.raises(ValueError, match=r"rows must hold node ids in \[0, num_nodes=40\)"):
        model.get_embedding_rows(directed_graph(NUM_NODES, 50), torch.tensor([-1]))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_model_forward_scores_as_before(weighted):
    """forward(edge_index, edge_label_index) reads the pairs' rows only: the
    scores and the gradient of the indexing of get_embedding."""
    edge_index = undirected_graph(NUM_NODES, 60, seed=6)
    w = random_weights(edge_index.shape[1], seed=7, dtype=torch.float32) if weighted else None
    pairs = torch.randint(0, NUM_NODES, (2, 30), generator=torch.Generator().manual_seed(8))
    torch.manual_seed(0)
    model = LightGCN(NUM_NODES, 16, 3)
    scores = model(edge_index, pairs, w)
    scores.square().sum().backward()
    grad = model.embedding.weight.grad.clone()
    model.embedding.weight.grad = None
    out = model.get_embedding(edge_index, w)
    expected = (out[pairs[0]] * out[pairs[1]]).sum(dim=-1)
    expected.square().sum().backward()
    assert torch.equal(scores, expected)
    torch.testing.assert_close(grad, model.embedding.weight.grad, rtol=1e-6, atol=1e-7)


def _bpr_step_indexing_the_whole_propagation(model, graph, optimizer, num_users, users,
                                             positives, negatives, lambda_reg):
    """bpr_step as it was written before propagate_rows: the whole
    propagation, three row gathers and recommendation_loss."""
    optimizer.zero_grad(set_to_none=True)
    embedding = model.get_embedding(graph)
    pos_nodes, neg_nodes = positives + num_users, negatives + num_users
    user_emb, pos_emb, neg_emb = embedding[users], embedding[pos_nodes], embedding[neg_nodes]
    loss = model.recommendation_loss((user_emb * pos_emb).sum(-1), (user_emb * neg_emb).sum(-1),
                                     node_id=torch.cat([users, pos_nodes, neg_nodes]),
                                     lambda_reg=lambda_reg)
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_bpr_step_matches_the_step_on_the_whole_propagation(dtype):
    num_users, num_items = 15, 25
    gen = torch.Generator().manual_seed(9)
    users = torch.randint(0, num_users, (200,), generator=gen)
    items = torch.randint(0, num_items, (200,), generator=gen)
    edge_index = torch.stack([users, items + num_users])
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    graph = lightgcn_ext.prepare(edge_index, num_users + num_items)
    models, optimizers = [], []
    for _ in range(2):
        torch.manual_seed(1)
        model = LightGCN(num_users + num_items, 16, 3).to(dtype)
        models.append(model)
        optimizers.append(torch.optim.Adam(model.parameters(), lr=0.01))
    for step in range(5):
        batch = [torch.randint(0, n, (32,), generator=gen) for n in (num_users, num_items,
                                                                     num_items)]
        loss = bpr_step(models[0], graph, optimizers[0], num_users, *batch, 1e-2)
        loss_ref = _bpr_step_indexing_the_whole_propagation(models[1], graph, optimizers[1],
                                                            num_users, *batch, 1e-2)
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(loss, loss_ref, rtol=rtol, atol=0)
        torch.testing.assert_close(models[0].embedding.weight, models[1].embedding.weight,
                                   rtol=rtol, atol=rtol * 1e-2)


def test_one_gradient_array_per_step():
    """The step's backward zero-fills no [N, d] array: the gradient of the
    embedding is the one array propagate_rows' backward writes."""
    num_users, num_items = 300, 500
    gen = torch.Generator().manual_seed(10)
    users = torch.randint(0, num_users, (3000,), generator=gen)
    items = torch.randint(0, num_items, (3000,), generator=gen)
    edge_index = torch.stack([users, items + num_users])
    graph = lightgcn_ext.prepare(torch.cat([edge_index, edge_index.flip(0)], dim=1),
                                 num_users + num_items)
    model = LightGCN(num_users + num_items, 16, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = [torch.randint(0, n, (64,), generator=gen) for n in (num_users, num_items, num_items)]
    with torch.profiler.profile(record_shapes=True) as profile:
        bpr_step(model, graph, optimizer, num_users, *batch, 1e-4)
    events = profile.events()
    assert "lightgcn_ext::propagate_rows_backward" in [event.name for event in events]
    num_nodes = num_users + num_items
    full_fills = [(event.name, event.input_shapes) for event in events
                  if event.name in ("aten::fill_", "aten::zero_", "aten::zeros")
                  and any(shape[:1] == [num_nodes] for shape in event.input_shapes)]
    assert full_fills == []


def test_cpu_results_do_not_depend_on_thread_count():
    """Several chunks per sweep (E + N > 2 x 8192), and the same numbers
    whatever the number of threads: no atomics, sums in a fixed order."""
    n = 3000
    edge_index = random_edges(n, 40000, seed=13, num_isolated=10)
    operator = csr_operands(edge_index, n, None, torch.float32)
    x = features(n, 16, torch.float32, seed=1)
    alpha = _alpha(3, torch.float32)
    rows = torch.randint(0, n, (900,), generator=torch.Generator().manual_seed(2))
    grad = features(rows.numel(), 16, torch.float32, seed=3)
    threads = torch.get_num_threads()
    results = []
    try:
        for num_threads in (1, max(2, threads)):
            torch.set_num_threads(num_threads)
            out, _ = OPS.propagate_rows(*operator, x, alpha, rows)
            results.append((out, OPS.propagate_rows_backward(*operator, grad, grad, alpha, rows)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
