"""The raw ops torch.ops.lightgcn_ext.{prepare_csr, propagate, layer_dots}:
opcheck, the prepared CSR, and numerics against a dense float64 reference."""
import pytest
import torch

from helpers import (FLOAT_DTYPES, LOW_PRECISION, OPS, assert_close_to_reference, csr_operands,
                     dense_layer_dots, dense_operator, dense_propagate, devices, empty_graph,
                     features, in_degree_zero, random_edges, random_weights, tiny_graph)

ACC = {torch.float64: torch.float64, torch.float32: torch.float32,
       torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _alpha(num_layers, dtype=torch.float64, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num_layers + 1, generator=gen, dtype=torch.float64) + 0.1).to(dtype).to(
        device)


def _graph(kind, index_dtype=torch.int64, device="cpu"):
    """(edge_index, num_nodes) of a few small test graphs."""
    if kind == "tiny":
        return tiny_graph(index_dtype).to(device), 6
    if kind == "random":
        return random_edges(20, 60, seed=3, num_isolated=2, index_dtype=index_dtype,
                            device=device), 20
    if kind == "empty":
        return empty_graph(index_dtype, device), 4
    raise ValueError(kind)


# ------------------------------------------------------------------ opcheck
OPCHECK_CASES = [
    # (graph, index dtype, weighted, x dtype, alpha dtype, num_layers, d)
    ("tiny", torch.int64, False, torch.float64, torch.float64, 2, 3),
    ("tiny", torch.int32, True, torch.float64, torch.float32, 3, 5),
    ("tiny", torch.int64, True, torch.float32, torch.float32, 1, 4),
    ("random", torch.int32, False, torch.float32, torch.float64, 3, 65),
    ("random", torch.int64, True, torch.float16, torch.float32, 2, 7),
    ("random", torch.int32, False, torch.bfloat16, torch.float32, 3, 2),
    ("tiny", torch.int64, False, torch.float32, torch.float32, 0, 3),
    ("empty", torch.int64, False, torch.float32, torch.float32, 2, 3),
    ("empty", torch.int32, True, torch.float64, torch.float64, 1, 1),
]


def _opcheck_id(case):
    graph, index_dtype, weighted, dtype, alpha_dtype, num_layers, d = case
    return (f"{graph}-{str(index_dtype)[6:]}-{'w' if weighted else 'unw'}-{str(dtype)[6:]}"
            f"-L{num_layers}-d{d}")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=_opcheck_id)
def test_opcheck_propagate_and_layer_dots(case, device):
    graph, index_dtype, weighted, dtype, alpha_dtype, num_layers, d = case
    edge_index, n = _graph(graph, index_dtype, device)
    w = random_weights(edge_index.shape[1], seed=5, device=device) if weighted else None
    operator = csr_operands(edge_index, n, w, dtype)
    x = features(n, d, dtype, device)
    alpha = _alpha(num_layers, alpha_dtype, device)
    grad = features(n, d, dtype, device, seed=7)
    # Without and with inputs that require grad: the latter runs the
    # registered autograd (test_autograd_registration, test_aot_dispatch_dynamic).
    torch.library.opcheck(OPS.propagate, (*operator, x, alpha))
    torch.library.opcheck(OPS.layer_dots, (*operator, x, grad, num_layers))
    x, grad = x.clone().requires_grad_(), grad.clone().requires_grad_()
    if alpha.dtype.is_floating_point:
        alpha = alpha.clone().requires_grad_()
    torch.library.opcheck(OPS.propagate, (*operator, x, alpha))
    torch.library.opcheck(OPS.layer_dots, (*operator, x, grad, num_layers))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("graph", ["tiny", "random", "empty"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_opcheck_prepare_csr(graph, index_dtype, device):
    edge_index, n = _graph(graph, index_dtype, device)
    torch.library.opcheck(OPS.prepare_csr, (edge_index, n))


# -------------------------------------------------------------- prepare_csr
def _check_csr(rowptr, col, perm, rows, cols, num_nodes):
    """(rowptr, col, perm) is the CSR of the edges (rows[e], cols[e])."""
    num_edges = rows.numel()
    assert rowptr.dtype == torch.int64 and rowptr.shape == (num_nodes + 1,)
    assert col.dtype == torch.int32  # num_nodes fits in int32
    assert perm.dtype == torch.int64 and perm.shape == (num_edges,)
    assert col.shape == (num_edges,)
    assert rowptr[0] == 0 and rowptr[-1] == num_edges
    assert torch.equal(rowptr.diff(), torch.bincount(rows, minlength=num_nodes))
    # perm is a permutation of the edge ids, and maps each slot to its edge.
    assert torch.equal(perm.sort().values, torch.arange(num_edges))
    assert torch.equal(col.long(), cols[perm])
    slot_row = torch.repeat_interleave(torch.arange(num_nodes), rowptr.diff())
    assert torch.equal(slot_row, rows[perm])
    # Within a row, the columns are sorted.
    key = slot_row * num_nodes + col.long()
    assert bool((key.diff() >= 0).all())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("graph", ["tiny", "random", "empty"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_prepare_csr_output(graph, index_dtype, device):
    edge_index, n = _graph(graph, index_dtype, device)
    rowptr, col, perm, rowptr_t, col_t, perm_t = (t.cpu() for t in OPS.prepare_csr(edge_index, n))
    src, dst = edge_index[0].long().cpu(), edge_index[1].long().cpu()
    _check_csr(rowptr, col, perm, dst, src, n)  # rows = destinations
    _check_csr(rowptr_t, col_t, perm_t, src, dst, n)  # the transpose: rows = sources


def test_prepare_csr_duplicates_and_self_loops_kept():
    edge_index = torch.tensor([[2, 2, 1, 1, 0], [1, 1, 1, 2, 1]])
    rowptr, col, perm, rowptr_t, col_t, perm_t = OPS.prepare_csr(edge_index, 4)
    assert rowptr.tolist() == [0, 0, 4, 5, 5]
    assert col.tolist() == [0, 1, 2, 2, 1]
    assert rowptr_t.tolist() == [0, 1, 3, 5, 5]
    assert col_t.tolist() == [1, 1, 2, 1, 1]
    assert sorted(perm[2:4].tolist()) == [0, 1] and sorted(perm_t[3:5].tolist()) == [0, 1]


# ---------------------------------------------------------------- propagate
def _propagate_vs_dense(edge_index, n, w, dtype, d, num_layers):
    """OPS.propagate of random [n, d] features vs the dense reference: (out, x)."""
    x = features(n, d, dtype, edge_index.device)
    alpha = _alpha(num_layers, torch.float32, edge_index.device)
    out = OPS.propagate(*csr_operands(edge_index, n, w, dtype), x, alpha)
    ref64 = dense_propagate(edge_index, n, x, alpha, w)
    ref_low = dense_propagate(edge_index, n, x, alpha.to(dtype), w, dtype=dtype) \
        if dtype in LOW_PRECISION else None
    assert_close_to_reference(out, ref64, dtype, ref_low)
    return out, x


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_propagate_matches_dense(num_layers, index_dtype, weighted, dtype, device):
    n = 30
    edge_index = random_edges(n, 120, seed=num_layers, num_isolated=3, index_dtype=index_dtype,
                              device=device)
    w = random_weights(edge_index.shape[1], seed=11, device=device) if weighted else None
    out, x = _propagate_vs_dense(edge_index, n, w, dtype, 17, num_layers)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("d", [1, 3, 65, 130])
def test_propagate_feature_dims_not_multiple_of_tile(d, dtype, device):
    n = 25
    edge_index = random_edges(n, 90, seed=d, num_isolated=1, device=device)
    _propagate_vs_dense(edge_index, n, None, dtype, d, 3)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda t: str(t)[6:])
def test_propagate_transposed_csr_is_adjoint(dtype, device):
    """The CSR by source gives Mᵀ: <M x, y> = <x, Mᵀ y>."""
    n = 20
    edge_index = random_edges(n, 70, seed=4, device=device)
    w = random_weights(edge_index.shape[1], seed=2, device=device)
    x, y = features(n, 6, dtype, device, seed=1), features(n, 6, dtype, device, seed=2)
    alpha = torch.tensor([0.25, 0.5, 0.125], device=device)  # exact in float32
    fwd = OPS.propagate(*csr_operands(edge_index, n, w, dtype), x, alpha)
    bwd = OPS.propagate(*csr_operands(edge_index, n, w, dtype, transpose=True), y, alpha)
    mat = dense_operator(edge_index, n, w)
    m = 0.25 * torch.eye(n, dtype=torch.float64) + 0.5 * mat + 0.125 * mat @ mat
    ref_fwd = m @ x.cpu().double()
    ref_bwd = m.T @ y.cpu().double()
    if dtype in LOW_PRECISION:
        low = m.to(dtype)
        assert_close_to_reference(fwd, ref_fwd, dtype, low @ x.cpu())
        assert_close_to_reference(bwd, ref_bwd, dtype, low.T @ y.cpu())
    else:
        assert_close_to_reference(fwd, ref_fwd, dtype)
        assert_close_to_reference(bwd, ref_bwd, dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda t: str(t)[6:])
def test_propagate_zero_layers_gives_alpha0_x(dtype, device):
    edge_index, n = _graph("random", device=device)
    x = features(n, 5, dtype, device)
    alpha = torch.tensor([0.75], device=device)
    out = OPS.propagate(*csr_operands(edge_index, n, None, dtype), x, alpha)
    torch.testing.assert_close(out, (x.to(ACC[dtype]) * 0.75).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_propagate_empty_graph_gives_alpha0_x(index_dtype, dtype, device):
    n = 4
    edge_index = empty_graph(index_dtype, device)
    x = features(n, 3, dtype, device)
    alpha = torch.tensor([0.5, 2.0, 3.0], device=device)
    out = OPS.propagate(*csr_operands(edge_index, n, None, dtype), x, alpha)
    torch.testing.assert_close(out, (x.to(ACC[dtype]) * 0.5).to(dtype), rtol=0, atol=0)
    dots = OPS.layer_dots(*csr_operands(edge_index, n, None, dtype), x, x, 2)
    assert dots.shape == (3,) and bool((dots[1:] == 0).all())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_nodes_without_in_edges_get_zero_beyond_layer0(weighted, dtype, device):
    n = 12
    edge_index = random_edges(n, 20, seed=8, num_isolated=3, device=device)
    # Also a node with out-edges only: drop every edge into node 0.
    edge_index = edge_index[:, edge_index[1] != 0]
    w = random_weights(edge_index.shape[1], seed=3, device=device) if weighted else None
    zero_in = in_degree_zero(edge_index, n)
    assert zero_in[0] and zero_in[-3:].all()
    x = features(n, 4, dtype, device)
    operands = csr_operands(edge_index, n, w, dtype)
    beyond = OPS.propagate(*operands, x, torch.tensor([0.0, 1.0, 1.0, 1.0], device=device))
    assert bool((beyond.cpu()[zero_in] == 0).all())
    out = OPS.propagate(*operands, x, torch.tensor([0.25, 1.0, 1.0], device=device))
    torch.testing.assert_close(out.cpu()[zero_in], 0.25 * x.cpu()[zero_in],
                               rtol=0, atol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["transposed", "column_slice", "row_slice"])
def test_propagate_non_contiguous_x(layout, dtype, device):
    n, d = 15, 6
    edge_index = random_edges(n, 50, seed=9, device=device)
    base = features(n, d, dtype, device)
    if layout == "transposed":
        x = base.t().contiguous().t()
    elif layout == "column_slice":
        x = features(n, 2 * d, dtype, device)[:, ::2]
    else:
        x = features(2 * n, d, dtype, device)[1::2]
    assert not x.is_contiguous()
    operands = csr_operands(edge_index, n, None, dtype)
    alpha = _alpha(2, torch.float32, device)
    out = OPS.propagate(*operands, x, alpha)
    expected = OPS.propagate(*operands, x.contiguous(), alpha)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = features(n, d, dtype, device, seed=5).t().contiguous().t()
    torch.testing.assert_close(OPS.layer_dots(*operands, x, grad, 2),
                               OPS.layer_dots(*operands, x.contiguous(), grad.contiguous(), 2),
                               rtol=0, atol=0)


@pytest.mark.parametrize("device", devices())
def test_propagate_alpha_dtype_does_not_matter(device):
    n = 10
    edge_index = random_edges(n, 30, seed=1, device=device)
    operands = csr_operands(edge_index, n, None, torch.float64)
    x = features(n, 3, torch.float64, device)
    a64 = torch.tensor([0.25, 0.5, 0.125], dtype=torch.float64, device=device)
    ref = OPS.propagate(*operands, x, a64)
    for alpha in (a64.float(), a64.half(), torch.tensor([1, 2, 3], device=device)):
        expected = dense_propagate(edge_index, n, x, alpha.double())
        assert_close_to_reference(OPS.propagate(*operands, x, alpha), expected, torch.float64)
    assert_close_to_reference(ref, dense_propagate(edge_index, n, x, a64), torch.float64)


# --------------------------------------------------------------- layer_dots
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_layers", [0, 1, 3])
@pytest.mark.parametrize("d", [1, 65])
def test_layer_dots_matches_dense(d, num_layers, weighted, dtype, device):
    n = 25
    edge_index = random_edges(n, 80, seed=d + num_layers, num_isolated=2, device=device)
    w = random_weights(edge_index.shape[1], seed=12, device=device) if weighted else None
    operands = csr_operands(edge_index, n, w, dtype)
    x, grad = features(n, d, dtype, device, seed=1), features(n, d, dtype, device, seed=2)
    dots = OPS.layer_dots(*operands, x, grad, num_layers)
    assert dots.shape == (num_layers + 1,) and dots.dtype == ACC[dtype]
    ref64 = dense_layer_dots(edge_index, n, x, grad, num_layers, w)
    # Scale of the sums: <|M^l x|, |grad|>.
    scale = dense_layer_dots(edge_index, n, x.abs(), grad.abs(), num_layers, w)
    dots64 = dots.cpu().double()
    if dtype in LOW_PRECISION:
        # Products of exact low-precision inputs, accumulated in float32.
        bound = 1e-5 * scale + 1e-6
        ref_low = dense_layer_dots(edge_index, n, x, grad, num_layers, w, dtype=dtype)
        bound = torch.maximum(bound, 2 * (ref_low.double() - ref64).abs())
    else:
        bound = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype] * (scale + 1)
    assert bool(((dots64 - ref64).abs() <= bound).all()), (dots64, ref64, bound)


def test_cpu_results_do_not_depend_on_thread_count():
    """The row chunking does not depend on the number of threads, so the
    reductions of layer_dots (and propagate) are bitwise reproducible."""
    n = 3000
    edge_index = random_edges(n, 40000, seed=13, num_isolated=10)
    operands = csr_operands(edge_index, n, None, torch.float32)
    x, grad = features(n, 16, torch.float32, seed=1), features(n, 16, torch.float32, seed=2)
    alpha = _alpha(3, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, dots1 = OPS.propagate(*operands, x, alpha), OPS.layer_dots(*operands, x, grad, 3)
        torch.set_num_threads(max(2, threads))
        out2, dots2 = OPS.propagate(*operands, x, alpha), OPS.layer_dots(*operands, x, grad, 3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out1, out2) and torch.equal(dots1, dots2)


# --------------------------------------------- the CPU check of a CSR's contents
def _count_aminmax(call):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    return sum(event.count for event in prof.key_averages() if event.key == "aten::aminmax")


def test_a_csr_found_valid_is_not_read_again_until_it_changes():
    edge_index, n = _graph("random")
    operator = csr_operands(edge_index, n, dtype=torch.float32)
    x, alpha = features(n, 4, torch.float32), _alpha(2)

    def propagate():
        return OPS.propagate(*operator, x, alpha)

    expected = propagate()
    assert _count_aminmax(propagate) == 0  # remembered from the first call
    good = operator.col[0].item()
    operator.col[0] = n + 5  # an in-place change: checked again, and refused
    with pytest.raises(RuntimeError, match="col must hold node ids in \\[0, num_nodes = 20\\)"):
        propagate()
    operator.col[0] = good
    assert _count_aminmax(propagate) == 1 and torch.equal(propagate(), expected)
    copy = operator.col.clone()  # the same values in another tensor: checked once
    assert _count_aminmax(lambda: OPS.propagate(operator.rowptr, copy, *operator[2:], x,
                                                alpha)) == 1


def test_a_csr_of_inference_tensors_is_checked_every_time():
    edge_index, n = _graph("random")
    with torch.inference_mode():
        operator = csr_operands(edge_index, n, dtype=torch.float32)
        x, alpha = features(n, 4, torch.float32), _alpha(2)
        OPS.propagate(*operator, x, alpha)
        assert _count_aminmax(lambda: OPS.propagate(*operator, x, alpha)) == 1
        operator.rowptr[3] = operator.rowptr[1] - 1
        with pytest.raises(RuntimeError, match="rowptr must be non-decreasing"):
            OPS.propagate(*operator, x, alpha)
