"""Bad inputs give a clear Python exception that names the argument; raw ops
raise RuntimeError instead of crashing; odd-but-valid inputs are accepted.
First propagate, Graph, prepare and the raw ops, then the LightGCN model
(everything PyG rejects, we reject too). Mixed CUDA/CPU devices: test_cuda.py."""
import textwrap

import pytest
import torch

from helpers import (MODEL_MARKS, NUM_ITEMS, NUM_USERS, OPS, csr_operands, dense_propagate,
                     directed_graph, features, make_models, pyg_models, random_weights,
                     run_python, tiny_graph, unique_edges)
from lightgcn_ext import BPRLoss, Graph, LightGCN, prepare, propagate

pytestmark = MODEL_MARKS
N = 6
ALPHA = [0.5, 0.3, 0.2]


def _edge_index():
    return tiny_graph()


def _prepared(form):
    """The tiny graph as a prepared Graph or as an (uncoalesced) adj_t."""
    if form == "Graph":
        return Graph.from_edge_index(_edge_index(), N)
    return torch.sparse_coo_tensor(_edge_index().flip(0), torch.ones(8), (N, N))


def _x(n=N, d=3, dtype=torch.float64, device="cpu"):
    return features(n, d, dtype, device)


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
    # 0 nodes is a valid count (an empty graph), but not with edges.
    with pytest.raises(ValueError, match="num_nodes"):
        OPS.prepare_csr(torch.tensor([[0, 1], [1, 0]]), 0)
    with pytest.raises(ValueError, match="num_nodes"):
        OPS.prepare_csr(torch.zeros(2, 0, dtype=torch.long), -3)


def test_x_with_too_few_rows_for_raw_edge_index():
    # With a raw edge_index, x defines num_nodes: an edge beyond it is an error.
    with pytest.raises(ValueError, match="edge_index"):
        propagate(_edge_index(), _x(n=3), ALPHA)


# --------------------------------------------------------------- num_nodes
@pytest.mark.parametrize("num_nodes", [-1, 2.5, True, None, "6"])
def test_num_nodes_invalid(num_nodes):  # 0 is valid, as in PyG
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match="num_nodes"):
        Graph.from_edge_index(edge_index, num_nodes)
    with pytest.raises(ValueError, match="num_nodes"):
        prepare(edge_index, num_nodes)


def test_num_nodes_as_tensor_accepted():
    graph = Graph.from_edge_index(_edge_index(), torch.tensor(N))
    assert graph.num_nodes == N


def test_num_nodes_mismatch_with_prepared_graph_or_adj_t():
    for graph in (_prepared("Graph"), _prepared("adj_t")):
        with pytest.raises(ValueError, match="num_nodes"):
            prepare(graph, N + 1)


# ----------------------------------------------------------------------- x
@pytest.mark.parametrize("graph_form", ["Graph", "adj_t"])
@pytest.mark.parametrize("rows", [N - 1, N + 1])
def test_x_rows_differ_from_num_nodes(rows, graph_form):
    with pytest.raises(ValueError, match=r"\bx\b"):
        propagate(_prepared(graph_form), _x(n=rows), ALPHA)


@pytest.mark.parametrize("graph_form", ["Graph", "adj_t"])
def test_x_rows_differ_from_num_nodes_raises_value_error(graph_form):
    with pytest.raises(ValueError):
        propagate(_prepared(graph_form), _x(n=N - 1), ALPHA)


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
    _assert_edge_weight_rejected(2, value)


def test_edge_weight_negative_degree():
    _assert_edge_weight_rejected(0, -5.0)  # the only edge into node 1


def _assert_edge_weight_rejected(edge, value):
    """Weights with weight[edge] = value are rejected by Graph and propagate."""
    weight = random_weights(8, seed=0)
    weight[edge] = value
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
    for graph in (_prepared("Graph"), _prepared("adj_t")):
        with pytest.raises(ValueError, match="edge_weight"):
            propagate(graph, _x(), ALPHA, edge_weight=torch.ones(8, dtype=torch.float64))


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
    # In a fresh interpreter: a crash there does not take pytest down.
    result = run_python("import torch, lightgcn_ext\nops = torch.ops.lightgcn_ext\n"
                        + textwrap.dedent(RAW_CONTENT_CASES[case]) + "\nprint('returned')\n")
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


# ====================================================================
# The LightGCN model. Everything PyG rejects, we reject, with a clear
# message that names the argument; plus what we reject beyond PyG
# ====================================================================
N_BAD = 20
BAD_EDGE_INDEX = directed_graph(N_BAD, 50, seed=3)


def _model(cls, **kwargs):
    torch.manual_seed(0)
    return cls(N_BAD, 4, 2, **kwargs)


def _bpr(cls):
    return BPRLoss if cls is LightGCN else pyg_models().lightgcn.BPRLoss


BAD_INPUT = {
    # name: (call on a model class, our exception type, a regex the message must match)
    "k_larger_than_num_nodes": (
        lambda cls: _model(cls).recommend(BAD_EDGE_INDEX, k=N_BAD + 1), ValueError, r"\bk\b"),
    "k_larger_than_dst_index": (
        lambda cls: _model(cls).recommend(BAD_EDGE_INDEX, dst_index=torch.arange(4), k=5),
        ValueError, r"\bk\b.*dst_index"),
    "k_larger_than_dst_index_with_src_index": (
        lambda cls: _model(cls).recommend(BAD_EDGE_INDEX, src_index=torch.arange(3),
                                          dst_index=torch.tensor([5, 6]), k=3),
        ValueError, r"\bk\b"),
    "bpr_lambda_reg_without_parameters": (
        lambda cls: _bpr(cls)(lambda_reg=1e-4)(torch.randn(4), torch.randn(4)),
        ValueError, "parameters.*lambda_reg"),
    "alpha_too_long": (
        lambda cls: _model(cls, alpha=torch.tensor([0.2, 0.2, 0.2, 0.4])), ValueError, "alpha"),
    "alpha_too_short": (
        lambda cls: _model(cls, alpha=torch.tensor([0.5, 0.5])), ValueError, "alpha"),
    "edge_label_index_out_of_range": (
        lambda cls: _model(cls)(BAD_EDGE_INDEX, torch.tensor([[0, 1], [2, N_BAD]])),
        ValueError, "edge_label_index"),
    "edge_label_index_out_of_range_predict_link": (
        lambda cls: _model(cls).predict_link(BAD_EDGE_INDEX, torch.tensor([[N_BAD + 5], [0]]),
                                             prob=True),
        ValueError, "edge_label_index"),
    "edge_label_index_out_of_range_int32": (
        lambda cls: _model(cls)(BAD_EDGE_INDEX,
                                torch.tensor([[0], [2**31 - 1]], dtype=torch.int32)),
        ValueError, "edge_label_index"),
    "src_index_out_of_range": (
        lambda cls: _model(cls).recommend(BAD_EDGE_INDEX, src_index=torch.tensor([0, N_BAD])),
        ValueError, "src_index"),
    "dst_index_out_of_range": (
        lambda cls: _model(cls).recommend(BAD_EDGE_INDEX, dst_index=torch.tensor([N_BAD, 1]),
                                          k=1),
        ValueError, "dst_index"),
    "src_index_far_out_of_range": (
        lambda cls: _model(cls).recommend(BAD_EDGE_INDEX, src_index=torch.tensor([2**40])),
        ValueError, "src_index"),
    "edge_index_out_of_range": (
        lambda cls: _model(cls).get_embedding(torch.tensor([[0, N_BAD], [1, 2]])),
        ValueError, "edge_index"),
    "edge_index_out_of_range_with_edge_label_index": (
        lambda cls: _model(cls)(torch.tensor([[0, 1], [N_BAD + 3, 2]]), torch.tensor([[0], [1]])),
        ValueError, "edge_index"),
    "edge_index_float": (
        lambda cls: _model(cls).get_embedding(BAD_EDGE_INDEX.float()), TypeError, "edge_index"),
    "edge_weight_wrong_length": (
        lambda cls: _model(cls).get_embedding(BAD_EDGE_INDEX, torch.ones(7)),
        ValueError, "edge_weight"),
    "edge_weight_integer": (
        lambda cls: _model(cls).get_embedding(
            BAD_EDGE_INDEX, torch.ones(BAD_EDGE_INDEX.shape[1], dtype=torch.long)),
        TypeError, "edge_weight"),
    "node_id_out_of_range": (
        lambda cls: _model(cls).recommendation_loss(torch.randn(3), torch.randn(3),
                                                    node_id=torch.tensor([0, N_BAD])),
        ValueError, "node_id"),
    "flow_invalid": (lambda cls: _model(cls, flow="both_ways"), ValueError, "flow"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_rejected_like_pyg(case):
    call, error, message = BAD_INPUT[case]
    with pytest.raises(Exception):  # noqa: B017  (PyG rejects it, each in its own way)
        call(pyg_models().LightGCN)
    with pytest.raises(error, match=message):
        call(LightGCN)


@pytest.mark.parametrize("kwargs,name", [
    ({"aggr": "max"}, "aggr"), ({"aggr": "mean"}, "aggr"), ({"aggr": "min"}, "aggr"),
    ({"node_dim": 1}, "node_dim"), ({"add_self_loops": True}, "add_self_loops"),
    ({"normalise": True}, "normalise"),
])
def test_unsupported_conv_kwargs_raise_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LightGCN(10, 4, 2, **kwargs)


def test_rejected_beyond_pyg_with_clear_messages():
    model = _model(LightGCN)
    with pytest.raises(ValueError, match="edge_weight"):  # PyG gives NaN
        model.get_embedding(BAD_EDGE_INDEX, -torch.ones(BAD_EDGE_INDEX.shape[1]))
    with pytest.raises(ValueError, match="edge_weight"):
        model.get_embedding(BAD_EDGE_INDEX, torch.full((BAD_EDGE_INDEX.shape[1], ), float("nan")))
    with pytest.raises(ValueError, match="src_index"):  # PyG wraps around
        model.recommend(BAD_EDGE_INDEX, src_index=torch.tensor([-1]))
    with pytest.raises(ValueError, match="edge_label_index"):
        model(BAD_EDGE_INDEX, torch.tensor([[-1], [0]]))
    with pytest.raises(ValueError, match="positives and negatives"):
        BPRLoss()(torch.randn(3), torch.randn(4))


SEGFAULT_PROBE = r"""
import torch
from lightgcn_ext import LightGCN, BPRLoss
torch.manual_seed(0)
ei = torch.randint(0, 10, (2, 30))
calls = {
    "empty graph": lambda: LightGCN(5, 3, 2).recommend(torch.zeros(2, 0, dtype=torch.long), k=5),
    "dim 0": lambda: LightGCN(10, 0, 2)(ei).sum().backward(),
    "dim 1": lambda: LightGCN(10, 1, 3)(ei).sum().backward(),
    "huge id": lambda: LightGCN(10, 3, 2).get_embedding(torch.tensor([[0], [2**62]])),
    "negative id": lambda: LightGCN(10, 3, 2).get_embedding(torch.tensor([[-5], [0]])),
    "int16 index": lambda: LightGCN(10, 3, 2).get_embedding(ei.short()),
    "uint8 index": lambda: LightGCN(10, 3, 2).get_embedding(ei.to(torch.uint8)),
    "3 rows": lambda: LightGCN(10, 3, 2).get_embedding(torch.zeros(3, 4, dtype=torch.long)),
    "1-D": lambda: LightGCN(10, 3, 2).get_embedding(torch.zeros(4, dtype=torch.long)),
    "label 3 rows": lambda: LightGCN(10, 3, 2)(ei, torch.zeros(3, 4, dtype=torch.long)),
    "half": lambda: LightGCN(10, 3, 2).half()(ei).float().sum().backward(),
    "bfloat16": lambda: LightGCN(10, 3, 2).bfloat16()(ei).float().sum().backward(),
    "empty src": lambda: LightGCN(10, 3, 2).recommend(ei, src_index=torch.zeros(0, dtype=torch.long), k=2),
    "empty exclude": lambda: LightGCN(10, 3, 2).recommend(ei, k=2, exclude=torch.zeros(2, 0, dtype=torch.long)),
    "exclude everything": lambda: LightGCN(10, 3, 2).recommend(ei, k=10, exclude=torch.cartesian_prod(torch.arange(10), torch.arange(10)).t()),
    "inf weight": lambda: LightGCN(10, 3, 2).get_embedding(ei, torch.full((30,), float("inf"))),
    "zero weights": lambda: LightGCN(10, 3, 2).get_embedding(ei, torch.zeros(30)).sum().backward(),
    "weights 2-D": lambda: LightGCN(10, 3, 2).get_embedding(ei, torch.ones(30, 1)),
    "num_nodes mismatch": lambda: LightGCN(4, 3, 2).get_embedding(ei),
    "bpr empty": lambda: BPRLoss(1e-4)(torch.zeros(0), torch.zeros(0), torch.zeros(0)),
    "alpha 0-d": lambda: LightGCN(10, 3, 2, alpha=torch.tensor(0.5)),
    "L=0 recommend": lambda: LightGCN(10, 3, 0).recommend(ei, k=3),
}
for name, call in calls.items():
    try:
        call()
        print(name, "ok")
    except Exception as error:
        print(name, type(error).__name__, str(error).splitlines()[0][:100])
print("survived")
"""


def test_odd_inputs_do_not_crash_the_process():
    result = run_python(SEGFAULT_PROBE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "survived" in result.stdout


def test_recommend_exclude_rejects_repeated_src_index(trained_like_model):
    model, edge_index, pairs = trained_like_model
    with pytest.raises(ValueError, match="src_index"):
        model.recommend(edge_index, src_index=torch.tensor([1, 2, 1]), exclude=pairs)
    with pytest.raises(ValueError, match="dst_index"):
        model.recommend(edge_index, dst_index=torch.tensor([31, 31, 40]), exclude=pairs)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "8"])
def test_recommend_rejects_bad_chunk_size(trained_like_model, chunk_size):
    model, edge_index, _ = trained_like_model
    with pytest.raises(ValueError, match="chunk_size"):
        model.recommend(edge_index, k=2, chunk_size=chunk_size)


def test_recommend_exclude_rejects_bad_pairs(trained_like_model):
    model, edge_index, _ = trained_like_model
    with pytest.raises(ValueError, match="exclude"):
        model.recommend(edge_index, exclude=torch.tensor([[0], [NUM_USERS + NUM_ITEMS]]))
    with pytest.raises(ValueError, match="exclude"):
        model.recommend(edge_index, exclude=torch.tensor([0, 1, 2]))


def test_sparse_adj_t_rejects_target_to_source_as_pyg(pyg_utils):
    edge_index = unique_edges(10, 20, seed=1)
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(10, 10))
    model, ref = make_models(10, 4, 2, flow="target_to_source")
    with pytest.raises(ValueError):
        ref.get_embedding(adj_t)
    with pytest.raises(ValueError, match="flow"):
        model.get_embedding(adj_t)


def test_sparse_adj_t_rejects_a_separate_edge_weight(pyg_utils):
    edge_index = unique_edges(10, 20, seed=1)
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(10, 10))
    with pytest.raises(ValueError, match="edge_weight"):
        LightGCN(10, 4, 2).get_embedding(adj_t, torch.ones(edge_index.shape[1]))


def test_csc_adj_t_is_rejected_with_a_clear_message(pyg_utils):
    edge_index = unique_edges(10, 20, seed=1)
    csc = pyg_utils.to_torch_csc_tensor(edge_index, size=(10, 10))  # not transposed
    with pytest.raises(NotImplementedError):
        pyg_models().LightGCN(10, 4, 2).get_embedding(csc)
    with pytest.raises((TypeError, ValueError, NotImplementedError), match="adj_t"):
        LightGCN(10, 4, 2).get_embedding(csc)
