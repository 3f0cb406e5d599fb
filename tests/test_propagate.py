"""The public API: lightgcn_ext.propagate, Graph and prepare.

Gradients (gradcheck, gradgradcheck, edge weights), torch.compile, parity with
torch_geometric's LGConv, the accepted graph inputs and symmetry (the cache:
test_caching.py)."""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, assert_close_to_reference, dense_operator, dense_propagate, devices,
                     directed_graph, features, pyg_propagate, random_edges, random_undirected,
                     random_weights, symmetrize, tiny_graph, undirected_graph)
from lightgcn_ext import Graph, LightGCN, prepare, propagate

# A directed tiny graph (duplicate edge, self-loop, empty rows, an isolated
# node) and a symmetric one (the same features, both directions).
TINY_N = 6
DIRECTED = tiny_graph()
SYMMETRIC, _ = symmetrize(torch.tensor([[0, 1, 1, 3, 4], [1, 2, 2, 3, 2]]))


def _tiny(kind, weighted, device="cpu"):
    edge_index = (DIRECTED if kind == "directed" else SYMMETRIC).to(device)
    weight = None
    if weighted:
        half = random_weights(edge_index.shape[1] // 2 if kind == "symmetric"
                              else edge_index.shape[1], seed=4, device=device)
        weight = torch.cat([half, half]) if kind == "symmetric" else half
    return edge_index, weight


ALPHA = [0.4, 0.3, 0.2, 0.1]


def _compare_with_pyg(edge_index, x, alpha, weight, *, grad_seed, tol=1e-10, **kwargs):
    """propagate and PyG's stacked LGConv (on copies of x and of the weight,
    which may require grad) give the same output and, after a backward of one
    random gradient, the same x-gradient, within tol. (out, PyG's weight)."""
    x_pyg = x.detach().clone().requires_grad_()
    w_pyg = None if weight is None else weight.detach().clone().requires_grad_(
        weight.requires_grad)
    out = propagate(edge_index, x, alpha, edge_weight=weight, **kwargs)
    ref = pyg_propagate(edge_index, x_pyg, alpha, w_pyg, **kwargs)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    grad = features(*x.shape, x.dtype, x.device, seed=grad_seed)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_pyg.grad, rtol=tol, atol=tol)
    return out, w_pyg


# ---------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_gradcheck_x_and_alpha(num_layers, weighted, kind, device):
    edge_index, weight = _tiny(kind, weighted, device)
    graph = Graph.from_edge_index(edge_index, TINY_N, weight)
    assert graph.is_symmetric == (kind == "symmetric")
    x = features(TINY_N, 3, device=device, requires_grad=True)
    alpha = torch.tensor(ALPHA[:num_layers + 1], dtype=torch.float64, device=device,
                         requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: propagate(graph, x, a), (x, alpha))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_gradgradcheck_x(weighted, kind, device):
    edge_index, weight = _tiny(kind, weighted, device)
    graph = Graph.from_edge_index(edge_index, TINY_N, weight)
    x = features(TINY_N, 2, device=device, requires_grad=True)
    alpha = torch.tensor(ALPHA, dtype=torch.float64, device=device)
    assert torch.autograd.gradgradcheck(lambda x: propagate(graph, x, alpha), (x,))


@pytest.mark.filterwarnings("ignore:.*autograd kernel was not registered")
def test_gradgradcheck_x_and_alpha():
    graph = Graph.from_edge_index(DIRECTED, TINY_N)
    x = features(TINY_N, 2, requires_grad=True)
    alpha = torch.tensor(ALPHA[:3], dtype=torch.float64, requires_grad=True)
    # Either correct second derivatives or a clear error; never wrong numbers.
    try:
        ok = torch.autograd.gradgradcheck(lambda x, a: propagate(graph, x, a), (x, alpha),
                                          raise_exception=False)
    except RuntimeError:
        ok = True
    assert ok


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["directed", "symmetric"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_edge_weight(normalize, kind, device):
    edge_index, weight = _tiny(kind, True, device)
    weight.requires_grad_()
    x = features(TINY_N, 2, device=device, requires_grad=True)
    alpha = torch.tensor(ALPHA, dtype=torch.float64, device=device, requires_grad=True)

    def fn(w, x, a):
        return propagate(edge_index, x, a, edge_weight=w, normalize=normalize)

    assert torch.autograd.gradcheck(fn, (weight, x, alpha))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
def test_edge_weight_gradient_matches_pyg(flow, normalize, device):
    n = 30
    edge_index = random_edges(n, 100, seed=2, num_isolated=2, device=device)
    w_ours = random_weights(edge_index.shape[1], seed=3, device=device).requires_grad_()
    x_ours = features(n, 5, device=device, requires_grad=True)
    alpha = torch.tensor(ALPHA, dtype=torch.float64, device=device)
    _, w_pyg = _compare_with_pyg(edge_index, x_ours, alpha, w_ours, grad_seed=9,
                                 normalize=normalize, flow=flow)
    torch.testing.assert_close(w_ours.grad, w_pyg.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", devices())
def test_edge_weight_requiring_grad_under_no_grad_uses_fused_path(device):
    edge_index, weight = _tiny("directed", True, device)
    weight.requires_grad_()
    x = features(TINY_N, 3, device=device)
    with torch.no_grad():
        out = propagate(edge_index, x, ALPHA, edge_weight=weight)
    expected = dense_propagate(edge_index, TINY_N, x, ALPHA, weight.detach())
    assert_close_to_reference(out, expected, torch.float64)


# ------------------------------------------------------------ torch.compile
def _compile_case(device):
    n = 20
    edge_index = random_edges(n, 60, seed=1, device=device)
    graph = prepare(edge_index, n)
    x = features(n, 4, device=device, requires_grad=True)
    alpha = torch.tensor(ALPHA, dtype=torch.float64, device=device, requires_grad=True)
    grad = features(n, 4, device=device, seed=5)
    return graph, x, alpha, grad


def compiled_on_every_device(test):
    """A slow test of torch.compile, run on every device with both backends,
    from a fresh torch._dynamo."""
    @pytest.mark.slow
    @pytest.mark.parametrize("device", devices())
    @pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
    @functools.wraps(test)
    def run(backend, device):
        torch._dynamo.reset()
        test(backend, device)
    return run


@compiled_on_every_device
def test_torch_compile_fullgraph(backend, device):
    graph, x, alpha, grad = _compile_case(device)

    def fn(x, alpha):
        return propagate(graph, x * 2.0, alpha).sin()

    eager = fn(x, alpha)
    gx, ga = torch.autograd.grad(eager, (x, alpha), grad)
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    out = compiled(x, alpha)
    cgx, cga = torch.autograd.grad(out, (x, alpha), grad)
    torch.testing.assert_close(out, eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cgx, gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cga, ga, rtol=1e-12, atol=1e-12)


# ------------------------------------------------- a whole BPR step, compiled
def _bpr_case(device):
    """A prepared symmetric user-item graph (the main use), a model, and one
    batch of positive and negative (user, item) pairs."""
    num_users, num_items = 30, 40
    gen = torch.Generator().manual_seed(3)
    users = torch.randint(0, num_users, (300,), generator=gen)
    items = torch.randint(num_users, num_users + num_items, (300,), generator=gen)
    edge_index = torch.cat([torch.stack([users, items]), torch.stack([items, users])], 1)
    graph = Graph.from_edge_index(edge_index.to(device), num_users + num_items)
    assert graph.is_symmetric
    torch.manual_seed(0)
    model = LightGCN(num_users + num_items, 16, num_layers=3).to(device)
    negatives = torch.randint(num_users, num_users + num_items, (64,), generator=gen)
    pos = torch.stack([users[:64], items[:64]]).to(device)
    neg = torch.stack([users[:64], negatives]).to(device)
    return graph, model, pos, neg


@compiled_on_every_device
def test_torch_compile_fullgraph_bpr_step(backend, device):
    graph, model, pos, neg = _bpr_case(device)

    def loss_of(pos, neg):
        return model.recommendation_loss(model(graph, pos), model(graph, neg),
                                         node_id=torch.cat([pos, neg]).flatten())

    def step(loss_fn):
        """The loss and the embedding gradient of one step (backward outside:
        that is how a compiled step runs it, through AOT autograd)."""
        model.zero_grad()
        loss = loss_fn(pos, neg)
        loss.backward()
        return loss.detach(), model.embedding.weight.grad.clone()

    eager_loss, eager_grad = step(loss_of)
    loss, grad = step(torch.compile(loss_of, fullgraph=True, backend=backend))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_bpr_step_still_checks_node_ids():
    torch._dynamo.reset()
    graph, model, pos, neg = _bpr_case("cpu")
    compiled = torch.compile(lambda pairs: model(graph, pairs), fullgraph=True,
                             backend="aot_eager")
    compiled(pos)
    with pytest.raises(RuntimeError, match="edge_label_index"):
        compiled(pos + 1000)


# --------------------------------------------------------- parity with PyG
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["directed", "undirected"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_parity_with_pyg_lgconv(weighted, kind, dtype, device):
    n = 50
    if kind == "directed":
        edge_index = random_edges(n, 200, seed=7, num_isolated=3, device=device)
        weight = random_weights(edge_index.shape[1], seed=8, device=device) if weighted else None
    else:
        edge_index, weight = random_undirected(n, 100, seed=7, weighted=weighted, num_isolated=3)
        edge_index = edge_index.to(device)
        weight = None if weight is None else weight.to(device)
        assert prepare(edge_index, n, weight).is_symmetric
    weight = None if weight is None else weight.to(dtype)
    tol = {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    x = features(n, 8, dtype, device, requires_grad=True)
    alpha = torch.tensor(ALPHA, dtype=dtype, device=device)
    out, _ = _compare_with_pyg(edge_index, x, alpha, weight, grad_seed=3, tol=tol)
    assert out.dtype == dtype
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_flow_and_normalize_match_pyg(weighted, normalize, flow, device):
    n = 25
    edge_index = random_edges(n, 80, seed=5, num_isolated=2, device=device)
    weight = random_weights(edge_index.shape[1], seed=6, device=device) if weighted else None
    x = features(n, 3, device=device, requires_grad=True)
    alpha = torch.tensor(ALPHA, dtype=torch.float64, device=device)
    _compare_with_pyg(edge_index, x, alpha, weight, grad_seed=1, normalize=normalize, flow=flow)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_forward_and_backward(dtype, device):
    n = 30
    edge_index = random_edges(n, 100, seed=4, num_isolated=2, device=device)
    x = features(n, 9, dtype, device, requires_grad=True)
    alpha = torch.tensor(ALPHA, device=device, requires_grad=True)
    out = propagate(edge_index, x, alpha)
    assert out.dtype == dtype
    ref64 = dense_propagate(edge_index, n, x.detach(), alpha.detach())
    ref_low = dense_propagate(edge_index, n, x.detach(), alpha.detach().to(dtype), dtype=dtype)
    assert_close_to_reference(out, ref64, dtype, ref_low)
    grad = features(n, 9, dtype, device, seed=2)
    out.backward(grad)
    assert x.grad.dtype == dtype and alpha.grad.dtype == torch.float32
    # dx = sum_l alpha_l (Mᵀ)^l grad.
    m, grad = dense_operator(edge_index, n), grad.cpu()
    h, ref = grad.double(), alpha[0].item() * grad.double()
    for a in alpha.tolist()[1:]:
        h = m.T @ h
        ref = ref + a * h
    m_low = m.to(dtype)
    h, ref_low = grad, alpha[0].to(dtype).cpu() * grad
    for a in alpha.detach().to(dtype).cpu()[1:]:
        h = m_low.T @ h
        ref_low = ref_low + a * h
    assert_close_to_reference(x.grad, ref, dtype, ref_low)


# --------------------------------------------------- the accepted inputs
def _input_forms(edge_index, n, weight):
    """The same graph as every input `prepare` accepts, by name."""
    edge_index_cls = pytest.importorskip("torch_geometric").EdgeIndex
    src, dst = edge_index
    values = torch.ones(edge_index.shape[1], dtype=torch.float64) if weight is None else weight
    coo = torch.sparse_coo_tensor(torch.stack([dst, src]), values, (n, n))  # adj_t, uncoalesced
    forms = {
        "edge_index": (edge_index, weight),
        "edge_index_int32": (edge_index.int(), weight),
        "edge_index_transposed_view": (edge_index.t().contiguous().t(), weight),
        "sparse_coo": (coo, None),
        "sparse_coo_coalesced": (coo.coalesce(), None),
        "sparse_csr": (coo.to_sparse_csr(), None),
        "EdgeIndex": (edge_index_cls(edge_index, sparse_size=(n, n)), weight),
        "graph": (Graph.from_edge_index(edge_index, n, weight), None),
    }
    return forms


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kind", ["directed", "undirected"])
def test_all_input_forms_agree(kind, weighted):
    n = 20
    if kind == "directed":
        edge_index = random_edges(n, 70, seed=3, num_isolated=2)
        weight = random_weights(edge_index.shape[1], seed=1) if weighted else None
    else:
        edge_index, weight = random_undirected(n, 35, seed=3, weighted=weighted, num_isolated=2)
    x = features(n, 4)
    expected = dense_propagate(edge_index, n, x, ALPHA, weight)
    for name, (graph_input, w) in _input_forms(edge_index, n, weight).items():
        out = propagate(graph_input, x, ALPHA, edge_weight=w)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, msg=name)
        graph = prepare(graph_input, n, w)
        assert graph.num_nodes == n and graph.num_edges <= edge_index.shape[1], name
        if kind == "undirected" and name not in ("sparse_coo",):
            assert graph.is_symmetric, name


@pytest.mark.parametrize("normalize", [True, False])
def test_sparse_adj_t_matches_pyg(normalize):
    n = 20
    edge_index = random_edges(n, 70, seed=3, num_isolated=2)
    weight = random_weights(edge_index.shape[1], seed=1)
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), weight, (n, n)).coalesce()
    x = features(n, 4)
    ref = pyg_propagate(adj_t, x, ALPHA, normalize=normalize)
    for form in (adj_t, adj_t.to_sparse_csr()):
        torch.testing.assert_close(propagate(form, x, ALPHA, normalize=normalize), ref,
                                   rtol=1e-10, atol=1e-10)


def test_torch_sparse_sparse_tensor():
    torch_sparse = pytest.importorskip("torch_sparse")
    n = 20
    edge_index = random_edges(n, 70, seed=3, num_isolated=2)
    weight = random_weights(edge_index.shape[1], seed=1)
    x = features(n, 4)
    for w in (None, weight):
        adj_t = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], value=w,
                                          sparse_sizes=(n, n))
        torch.testing.assert_close(propagate(adj_t, x, ALPHA),
                                   dense_propagate(edge_index, n, x, ALPHA, w),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", devices())
def test_alpha_as_sequence_or_tensor(device):
    edge_index = DIRECTED.to(device)
    x = features(TINY_N, 3, device=device)
    expected = dense_propagate(edge_index, TINY_N, x, ALPHA)
    for alpha in (ALPHA, tuple(ALPHA), torch.tensor(ALPHA, device=device),
                  torch.tensor(ALPHA, dtype=torch.float64, device=device)):
        assert_close_to_reference(propagate(edge_index, x, alpha), expected, torch.float64,
                                  rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_x_public(device):
    n = 15
    edge_index = random_edges(n, 40, seed=2, device=device)
    for x in (features(4, n, device=device).t(), features(n, 8, device=device)[:, 1::2]):
        x = x.detach().requires_grad_()
        assert not x.is_contiguous()
        out = propagate(edge_index, x, ALPHA)
        assert_close_to_reference(out, dense_propagate(edge_index, n, x.detach(), ALPHA),
                                  torch.float64)
        grad = features(n, x.shape[1], device=device, seed=4)
        out.backward(grad)
        x_contiguous = x.detach().contiguous().requires_grad_()
        propagate(edge_index, x_contiguous, ALPHA).backward(grad)
        torch.testing.assert_close(x.grad, x_contiguous.grad, rtol=0, atol=0)


# ----------------------------------------------------------------- symmetry
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_symmetric_detection(weighted, device):
    edge_index, weight = random_undirected(30, 60, seed=1, weighted=weighted)
    edge_index = edge_index.to(device)
    weight = None if weight is None else weight.to(device)
    graph = Graph.from_edge_index(edge_index, 30, weight)
    assert graph.is_symmetric
    assert graph.rowptr_t is graph.rowptr and graph.col_t is graph.col
    directed = random_edges(30, 60, seed=1, device=device)
    w = random_weights(60, seed=3, device=device) if weighted else None
    assert not Graph.from_edge_index(directed, 30, w).is_symmetric
    if weighted:
        # Same structure, asymmetric weights: not symmetric.
        w_asym = weight.clone()
        w_asym[0] += 1.0
        assert not Graph.from_edge_index(edge_index, 30, w_asym).is_symmetric


def test_symmetric_tiny_graph_with_self_loop_and_duplicates():
    assert Graph.from_edge_index(SYMMETRIC, TINY_N).is_symmetric
    assert not Graph.from_edge_index(DIRECTED, TINY_N).is_symmetric


@pytest.mark.parametrize("device", devices())
def test_graph_to_device_roundtrip(device):
    weight = random_weights(DIRECTED.shape[1], seed=1)
    graph = Graph.from_edge_index(DIRECTED, TINY_N, weight)
    moved = graph.to(device)
    assert moved.device.type == device and moved.is_symmetric == graph.is_symmetric
    x = features(TINY_N, 3, device=device)
    assert_close_to_reference(propagate(moved, x, ALPHA),
                              dense_propagate(DIRECTED, TINY_N, x, ALPHA, weight),
                              torch.float64)


# ------------------------------------------------- what a prepared graph holds
def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


@pytest.mark.parametrize("kind", ["undirected", "directed"])
def test_an_unweighted_graph_holds_its_csr_and_dinv_only(kind):
    make = undirected_graph if kind == "undirected" else directed_graph
    edge_index = make(40, 300, seed=41)
    graph = Graph.from_edge_index(edge_index, 40)
    assert graph.edge_index is None and graph.edge_weight is None
    assert graph._perm is None and graph._perm_t is None and graph.weight is None
    held = _nbytes(graph.rowptr, graph.col, graph.rowptr_t, graph.col_t, graph.dinv)
    assert graph.nbytes == held
    if kind == "undirected":  # one CSR serves both directions
        assert held == _nbytes(graph.rowptr, graph.col, graph.dinv)


def test_only_a_tracked_weight_keeps_the_edges_and_permutations():
    edge_index = directed_graph(30, 200, seed=42)
    weight = random_weights(edge_index.shape[1], seed=43, dtype=torch.float64)
    constant = Graph.from_edge_index(edge_index, 30, weight)
    assert constant.edge_index is None and constant._perm is None
    assert constant.edge_weight is None and constant.weight is not None
    tracked = Graph.from_edge_index(edge_index, 30, weight.clone().requires_grad_())
    assert torch.equal(tracked.edge_index, edge_index) and tracked._perm is not None
    x = torch.randn(30, 4, dtype=torch.float64)
    expected = dense_propagate(edge_index, 30, x, ALPHA, weight)
    for graph in (constant, tracked):
        assert_close_to_reference(propagate(graph, x, ALPHA), expected, torch.float64)
    # A later change of the constant weight's tensor does not reach its graph.
    out = propagate(constant, x, ALPHA)
    weight.mul_(3)
    assert torch.equal(propagate(constant, x, ALPHA), out)


PREPARE_PEAK = """
import ctypes, json, torch
from lightgcn_ext import Graph
from lightgcn_ext.data import synthetic

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

torch.set_num_threads(1)
edge_index = synthetic(0, num_users=20000, num_items=20000, num_interactions=400000).edge_index()
Graph.from_edge_index(edge_index[:, :1000], 40000)  # load what the first call touches
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kb("VmRSS")
graph = Graph.from_edge_index(edge_index, 40000)
print(json.dumps(dict(peak=(kb("VmHWM") - before) * 1024, held=graph.nbytes,
                      input=edge_index.numel() * edge_index.element_size())))
"""


def test_preparing_a_graph_peaks_below_twice_its_input():
    """The peak memory of preparing an unweighted graph on the CPU (a fresh
    process, glibc mapping every large tensor so that the peak RSS follows
    the live tensors): its CSR and dinv, and the CSR kernels' outputs, under
    twice the int64 edge_index. Sorting the edges' keys with torch.sort and
    keeping a copy of edge_index and both permutations peaked at 4x."""
    result = subprocess.run([sys.executable, "-c", PREPARE_PEAK], cwd=REPO, text=True,
                            capture_output=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_":
                                                      str(64 * 1024)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    num_edges = measured["input"] // 16
    assert measured["held"] == 40001 * 8 + num_edges * 4 + 40000 * 8  # rowptr, col, dinv
    assert measured["peak"] < 2 * measured["input"], measured
