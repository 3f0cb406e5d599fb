"""Bad inputs give a clear Python exception that names the argument; raw ops
raise RuntimeError instead of crashing; odd-but-valid inputs are accepted."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import OPS, csr_operands, dense_propagate, devices, random_weights, tiny_graph
from lightgcn_ext import Graph, prepare, propagate

N = 6
ALPHA = [0.5, 0.3, 0.2]
ROOT = Path(__file__).resolve().parent.parent


def _edge_index():
    return tiny_graph()


def _x(n=N, d=3, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype).to(device)


def _raw(dtype=torch.float32, weighted=False):
    """(rowptr, col, weight, dinv, x, alpha) valid for the raw propagate op,
    which takes NO_TRANSPOSE between dinv and x (a forward needs no M^T)."""
    edge_index = _edge_index()
    w = random_weights(edge_index.shape[1], seed=1) if weighted else None
    rowptr, col, weight, dinv, *_ = csr_operands(edge_index, N, w, dtype)
    return rowptr, col, weight, dinv, _x(dtype=dtype), torch.tensor(ALPHA)


NO_TRANSPOSE = (None, None, None)


# -------------------------------------------------------------- edge_index
BUILDERS = {
    "Graph.from_edge_index": lambda ei, n=N: Graph.from_edge_index(ei, n),
    "prepare": lambda ei, n=N: prepare(ei, n),
    "propagate": lambda ei, n=N: propagate(ei, _x(n), ALPHA),
}


@pytest.mark.parametrize("build", list(BUILDERS), ids=list(BUILDERS))
@pytest.mark.parametrize("edge_index, error", [
    (torch.zeros(3, 4, dtype=torch.long), ValueError),
    (torch.zeros(4, dtype=torch.long), ValueError),
    (torch.zeros(2, 3, 1, dtype=torch.long), ValueError),
    (torch.zeros(2, 4, dtype=torch.float32), TypeError),
    (torch.zeros(2, 4, dtype=torch.bool), TypeError),
], ids=["shape_3xE", "1d", "3d", "float", "bool"])
def test_edge_index_wrong_shape_or_type(edge_index, error, build):
    with pytest.raises(error, match="edge_index"):
        BUILDERS[build](edge_index)


def test_edge_index_not_a_tensor_from_edge_index():
    with pytest.raises(TypeError, match="edge_index"):
        Graph.from_edge_index([[0, 1], [1, 0]], N)


@pytest.mark.parametrize("build", ["prepare", "propagate"])
def test_edge_index_not_a_tensor(build):
    with pytest.raises(TypeError, match="edge_index"):
        BUILDERS[build]([[0, 1], [1, 0]])


@pytest.mark.parametrize("build", list(BUILDERS), ids=list(BUILDERS))
@pytest.mark.parametrize("bad", [-1, N, N + 100], ids=["negative", "num_nodes", "beyond"])
@pytest.mark.parametrize("row", [0, 1], ids=["source", "target"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_edge_index_out_of_range(index_dtype, row, bad, build):
    edge_index = _edge_index().to(index_dtype)
    edge_index[row, 3] = bad
    with pytest.raises(ValueError, match="edge_index"):
        BUILDERS[build](edge_index)


@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
def test_edge_index_out_of_range_with_flow(flow):
    edge_index = _edge_index()
    edge_index[1, 0] = N
    with pytest.raises(ValueError, match="edge_index"):
        Graph.from_edge_index(edge_index, N, flow=flow)


def test_raw_prepare_csr_checks():
    with pytest.raises(RuntimeError, match="edge_index"):
        OPS.prepare_csr(torch.zeros(3, 4, dtype=torch.long), N)
    with pytest.raises(RuntimeError, match="edge_index"):
        OPS.prepare_csr(torch.zeros(2, 4, dtype=torch.float32), N)
    with pytest.raises(RuntimeError, match="edge_index"):
        OPS.prepare_csr(torch.zeros(2, 4, dtype=torch.int16), N)
    # Out-of-range ids are a ValueError: this is the one range check of the ids.
    with pytest.raises(ValueError, match="edge_index"):
        OPS.prepare_csr(torch.tensor([[0, -1], [1, 0]]), N)
    with pytest.raises(ValueError, match="edge_index"):
        OPS.prepare_csr(torch.tensor([[0, N], [1, 0]]), N)
    with pytest.raises(RuntimeError, match="num_nodes"):
        OPS.prepare_csr(torch.tensor([[0, 1], [1, 0]]), 0)
    with pytest.raises(RuntimeError, match="num_nodes"):
        OPS.prepare_csr(torch.zeros(2, 0, dtype=torch.long), -3)


def test_x_with_too_few_rows_for_raw_edge_index():
    # With a raw edge_index, x defines num_nodes: an edge beyond it is an error.
    with pytest.raises(ValueError, match="edge_index"):
        propagate(_edge_index(), _x(n=3), ALPHA)


# --------------------------------------------------------------- num_nodes
@pytest.mark.parametrize("num_nodes", [0, -1, 2.5, True, None, "6"])
def test_num_nodes_invalid(num_nodes):
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="num_nodes"):
        Graph.from_edge_index(edge_index, num_nodes)
    with pytest.raises(ValueError, match="num_nodes"):
        prepare(edge_index, num_nodes)


def test_num_nodes_as_tensor_accepted():
    graph = Graph.from_edge_index(_edge_index(), torch.tensor(N))
    assert graph.num_nodes == N


def test_num_nodes_mismatch_with_prepared_graph_or_adj_t():
    graph = Graph.from_edge_index(_edge_index(), N)
    with pytest.raises(ValueError, match="num_nodes"):
        prepare(graph, N + 1)
    adj_t = torch.sparse_coo_tensor(_edge_index().flip(0), torch.ones(8), (N, N))
    with pytest.raises(ValueError, match="num_nodes"):
        prepare(adj_t, N + 1)


# ----------------------------------------------------------------------- x
@pytest.mark.parametrize("graph_form", ["Graph", "adj_t"])
@pytest.mark.parametrize("rows", [N - 1, N + 1])
def test_x_rows_differ_from_num_nodes(rows, graph_form):
    if graph_form == "Graph":
        graph = Graph.from_edge_index(_edge_index(), N)
    else:
        graph = torch.sparse_coo_tensor(_edge_index().flip(0), torch.ones(8), (N, N))
    with pytest.raises(ValueError, match=r"\bx\b"):
        propagate(graph, _x(n=rows), ALPHA)


@pytest.mark.parametrize("graph_form", ["Graph", "adj_t"])
def test_x_rows_differ_from_num_nodes_raises_value_error(graph_form):
    if graph_form == "Graph":
        graph = Graph.from_edge_index(_edge_index(), N)
    else:
        graph = torch.sparse_coo_tensor(_edge_index().flip(0), torch.ones(8), (N, N))
    with pytest.raises(ValueError):
        propagate(graph, _x(n=N - 1), ALPHA)


@pytest.mark.parametrize("x, error", [
    (torch.zeros(N), ValueError),
    (torch.zeros(N, 2, 2), ValueError),
    (torch.zeros(N, 3, dtype=torch.int64), TypeError),
    (torch.zeros(N, 3, dtype=torch.complex64), TypeError),
    ([[0.0] * 3] * N, TypeError),
], ids=["1d", "3d", "int", "complex", "list"])
def test_x_bad(x, error):
    graph = Graph.from_edge_index(_edge_index(), N)
    with pytest.raises(error, match=r"\bx\b"):
        propagate(graph, x, ALPHA)


# ------------------------------------------------------------------- alpha
@pytest.mark.parametrize("alpha, error", [
    (torch.ones(2, 2), ValueError),
    (torch.ones(0), ValueError),
    ([], ValueError),
    (torch.tensor(0.5), ValueError),
    (torch.ones(3, dtype=torch.bool), TypeError),
    (torch.ones(3, dtype=torch.complex64), TypeError),
], ids=["2d", "empty", "empty_list", "0d", "bool", "complex"])
def test_alpha_bad(alpha, error):
    graph = Graph.from_edge_index(_edge_index(), N)
    with pytest.raises(error, match="alpha"):
        propagate(graph, _x(), alpha)


@pytest.mark.parametrize("alpha", [torch.ones(2, 2), torch.ones(0),
                                   torch.ones(3, dtype=torch.bool)],
                         ids=["2d", "empty", "bool"])
def test_raw_propagate_alpha_bad(alpha):
    rowptr, col, weight, dinv, x, _ = _raw()
    with pytest.raises(RuntimeError, match="alpha"):
        OPS.propagate(rowptr, col, weight, dinv, *NO_TRANSPOSE, x, alpha)


# ------------------------------------------------------------- edge_weight
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")],
                         ids=["nan", "inf", "-inf"])
def test_edge_weight_non_finite(value):
    weight = random_weights(8, seed=0)
    weight[2] = value
    with pytest.raises(ValueError, match="edge_weight"):
        Graph.from_edge_index(_edge_index(), N, weight)
    with pytest.raises(ValueError, match="edge_weight"):
        propagate(_edge_index(), _x(), ALPHA, edge_weight=weight)


def test_edge_weight_negative_degree():
    weight = random_weights(8, seed=0)
    weight[0] = -5.0  # the only edge into node 1
    with pytest.raises(ValueError, match="edge_weight"):
        Graph.from_edge_index(_edge_index(), N, weight)
    with pytest.raises(ValueError, match="edge_weight"):
        propagate(_edge_index(), _x(), ALPHA, edge_weight=weight)


def test_edge_weight_negative_but_degree_positive_is_accepted():
    edge_index = torch.tensor([[0, 1, 2], [2, 2, 0]])
    weight = torch.tensor([-0.5, 2.0, 1.0], dtype=torch.float64)
    x = _x(n=3)
    out = propagate(edge_index, x, ALPHA, edge_weight=weight)
    torch.testing.assert_close(out, dense_propagate(edge_index, 3, x, ALPHA, weight),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight, error", [
    (torch.ones(7, dtype=torch.float64), ValueError),
    (torch.ones(8, 1, dtype=torch.float64), ValueError),
    (torch.ones(8, dtype=torch.int64), TypeError),
    ([1.0] * 8, TypeError),
], ids=["wrong_length", "2d", "int", "list"])
def test_edge_weight_bad(weight, error):
    with pytest.raises(error, match="edge_weight"):
        Graph.from_edge_index(_edge_index(), N, weight)


def test_edge_weight_with_graph_or_adj_t_rejected():
    graph = Graph.from_edge_index(_edge_index(), N)
    with pytest.raises(ValueError, match="edge_weight"):
        propagate(graph, _x(), ALPHA, edge_weight=torch.ones(8, dtype=torch.float64))
    adj_t = torch.sparse_coo_tensor(_edge_index().flip(0), torch.ones(8), (N, N))
    with pytest.raises(ValueError, match="edge_weight"):
        propagate(adj_t, _x(), ALPHA, edge_weight=torch.ones(8, dtype=torch.float64))


# ------------------------------------------------------------ other options
def test_flow_invalid():
    with pytest.raises(ValueError, match="flow"):
        propagate(_edge_index(), _x(), ALPHA, flow="both")


def test_prepare_edge_index_without_num_nodes():
    with pytest.raises(ValueError, match="num_nodes"):
        prepare(_edge_index())


def test_adj_t_not_square():
    adj_t = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 2]]), torch.ones(2), (2, 3))
    with pytest.raises(ValueError, match="adj_t"):
        prepare(adj_t)


# ----------------------------------------------------------------- devices
def test_x_on_another_device():
    graph = Graph.from_edge_index(_edge_index(), N)
    with pytest.raises(ValueError, match=r"\bx\b"):
        propagate(graph, _x(device="meta"), ALPHA)
    with pytest.raises(ValueError, match=r"\bx\b"):
        propagate(_edge_index(), _x(device="meta"), ALPHA)


def test_alpha_on_another_device():
    with pytest.raises(ValueError, match="alpha"):
        propagate(_edge_index(), _x(), torch.tensor(ALPHA, device="meta"))


def test_edge_weight_on_another_device():
    with pytest.raises(ValueError, match="edge_weight"):
        Graph.from_edge_index(_edge_index(), N, torch.ones(8, device="meta"))


@pytest.mark.parametrize("which", ["rowptr", "col", "dinv", "alpha"])
def test_raw_propagate_mixed_with_meta_tensor(which):
    rowptr, col, weight, dinv, x, alpha = _raw()
    args = dict(rowptr=rowptr, col=col, weight=weight, dinv=dinv, rowptr_t=None, col_t=None,
                weight_t=None, x=x, alpha=alpha)
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError, match=which):
        OPS.propagate(*args.values())


CUDA_PARAMS = [param for param in devices() if param.values[0] == "cuda"]


@pytest.mark.skipif(not CUDA_PARAMS, reason="no CUDA device or no CUDA kernels")
@pytest.mark.cuda
def test_cuda_mixed_devices():
    device = "cuda"
    graph = Graph.from_edge_index(_edge_index(), N)
    with pytest.raises(ValueError, match=r"\bx\b"):
        propagate(graph, _x(device=device), ALPHA)
    with pytest.raises(ValueError, match="alpha"):
        propagate(graph.to(device), _x(device=device), torch.tensor(ALPHA))
    rowptr, col, weight, dinv, x, alpha = _raw()
    for name in ("rowptr", "col", "dinv"):
        args = dict(rowptr=rowptr.to(device), col=col.to(device), weight=None,
                    dinv=dinv.to(device), rowptr_t=None, col_t=None, weight_t=None,
                    x=x.to(device), alpha=alpha.to(device))
        args[name] = args[name].cpu()
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            OPS.propagate(*args.values())


# --------------------------------------------------------- raw op dtypes
def test_raw_propagate_dtype_mismatches():
    rowptr, col, weight, dinv, x, alpha = _raw(torch.float32)
    with pytest.raises(RuntimeError, match="dinv"):
        OPS.propagate(rowptr, col, None, dinv.double(), *NO_TRANSPOSE, x, alpha)
    with pytest.raises(RuntimeError, match="weight"):
        OPS.propagate(rowptr, col, torch.ones(col.numel(), dtype=torch.float64), dinv,
                      *NO_TRANSPOSE, x, alpha)
    with pytest.raises(RuntimeError, match="rowptr"):
        OPS.propagate(rowptr.int(), col, None, dinv, *NO_TRANSPOSE, x, alpha)
    with pytest.raises(RuntimeError, match="col"):
        OPS.propagate(rowptr, col.float(), None, dinv, *NO_TRANSPOSE, x, alpha)
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        OPS.propagate(rowptr, col, None, dinv, *NO_TRANSPOSE, x.long(), alpha)
    # float16 features take float32 dinv and weights (their accumulation type).
    with pytest.raises(RuntimeError, match="dinv"):
        OPS.propagate(rowptr, col, None, dinv.half(), *NO_TRANSPOSE, x.half(), alpha)
    OPS.propagate(rowptr, col, None, dinv, *NO_TRANSPOSE, x.half(), alpha)


def test_raw_layer_dots_mismatches():
    rowptr, col, weight, dinv, x, alpha = _raw(torch.float32)
    with pytest.raises(RuntimeError, match="grad"):
        OPS.layer_dots(rowptr, col, None, dinv, *NO_TRANSPOSE, x, x.double(), 2)
    with pytest.raises(RuntimeError, match="grad"):
        OPS.layer_dots(rowptr, col, None, dinv, *NO_TRANSPOSE, x, x[:, :2], 2)
    with pytest.raises(RuntimeError, match="num_layers"):
        OPS.layer_dots(rowptr, col, None, dinv, *NO_TRANSPOSE, x, x, -1)
    with pytest.raises(RuntimeError, match="dinv"):
        OPS.layer_dots(rowptr, col, None, dinv.double(), *NO_TRANSPOSE, x, x, 2)


# --------------------------------------------------------- raw op shapes
@pytest.mark.parametrize("case", ["rowptr_short", "rowptr_long", "rowptr_2d", "col_2d",
                                  "weight_short", "weight_long", "dinv_short", "x_1d"])
def test_raw_propagate_wrong_shapes(case):
    rowptr, col, weight, dinv, x, alpha = _raw(torch.float32, weighted=True)
    name = case.split("_")[0]
    if case == "rowptr_short":
        rowptr = rowptr[:-1]
    elif case == "rowptr_long":
        rowptr = torch.cat([rowptr, rowptr[-1:]])
    elif case == "rowptr_2d":
        rowptr = rowptr.unsqueeze(0)
    elif case == "col_2d":
        col = col.unsqueeze(0)
    elif case == "weight_short":
        weight = weight[:-1]
    elif case == "weight_long":
        weight = torch.cat([weight, weight[:1]])
    elif case == "dinv_short":
        dinv = dinv[:-1]
    elif case == "x_1d":
        x = x[:, 0]
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        OPS.propagate(rowptr, col, weight, dinv, *NO_TRANSPOSE, x, alpha)
    if name != "x":
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            OPS.layer_dots(rowptr, col, weight, dinv, *NO_TRANSPOSE, x, x, 2)


def _run_isolated(code):
    """Runs code in a fresh interpreter: a crash there does not take pytest down."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    prelude = "import torch, lightgcn_ext\nops = torch.ops.lightgcn_ext\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


RAW_CONTENT_CASES = {
    # rowptr[-1] = 10**6 but col has 2 entries: reads past the end of col.
    "rowptr_beyond_col": """
        ops.propagate(torch.tensor([0, 1, 10**6]), torch.tensor([0, 1], dtype=torch.int32), None,
                      torch.ones(2), None, None, None, torch.ones(2, 4), torch.ones(3))
    """,
    # A column id far beyond num_nodes: reads past the end of x.
    "col_out_of_range": """
        ops.propagate(torch.tensor([0, 1, 2]), torch.tensor([0, 10**9], dtype=torch.int32), None,
                      torch.ones(2), None, None, None, torch.ones(2, 4), torch.ones(3))
    """,
}


@pytest.mark.parametrize("case", list(RAW_CONTENT_CASES))
def test_raw_propagate_bad_csr_contents_raise_not_crash(case):
    result = _run_isolated(textwrap.dedent(RAW_CONTENT_CASES[case]) + "\nprint('returned')\n")
    assert result.returncode == 1 and "RuntimeError" in result.stderr, (
        f"returncode {result.returncode}, stderr: {result.stderr[-500:]}")


# ------------------------------------------- odd but valid: accepted, right
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_empty_graph_gives_alpha0_x(index_dtype):
    x = _x()
    edge_index = torch.zeros(2, 0, dtype=index_dtype)
    torch.testing.assert_close(propagate(edge_index, x, ALPHA), 0.5 * x, rtol=0, atol=0)
    graph = Graph.from_edge_index(edge_index, N, torch.zeros(0, dtype=torch.float64))
    torch.testing.assert_close(propagate(graph, x, ALPHA), 0.5 * x, rtol=0, atol=0)
    x.requires_grad_()
    propagate(graph, x, ALPHA).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5), rtol=0, atol=0)


def test_non_contiguous_inputs_accepted():
    edge_index = _edge_index().t().contiguous().t()  # a transposed view
    assert not edge_index.is_contiguous()
    weight = random_weights(16, seed=2)[::2]
    assert not weight.is_contiguous()
    x = _x(d=6)[:, ::2]
    assert not x.is_contiguous()
    alpha = torch.tensor(ALPHA * 2, dtype=torch.float64)[::2]
    out = propagate(edge_index, x, alpha, edge_weight=weight)
    expected = dense_propagate(edge_index, N, x, alpha, weight)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # The raw ops too.
    rowptr, col, _, dinv, *_ = csr_operands(edge_index.contiguous(), N, None, torch.float64)
    out = OPS.propagate(rowptr[::1], col, None, dinv.expand(1, N)[0], *NO_TRANSPOSE,
                        x.t().contiguous().t(), alpha)
    torch.testing.assert_close(out, dense_propagate(edge_index, N, x, alpha),
                               rtol=1e-12, atol=1e-12)
