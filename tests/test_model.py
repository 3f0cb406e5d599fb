"""lightgcn_ext.LightGCN as a drop-in for torch_geometric.nn.models.LightGCN:
the same signatures, defaults, state_dict and numbers as the real PyG model
built from the same seed, plus our extras (chunked recommend with exclude,
a trainable alpha, graph caching), bad input, and the benchmark's smoke run.

PyG's own test scenarios (test/nn/models/test_lightgcn.py and
test/nn/conv/test_lg_conv.py) come first, run on our model and compared
with PyG's.
"""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import lightgcn_ext
from lightgcn_ext import BPRLoss, Graph, LightGCN, prepare
from model_helpers import (REL_TOL, PygBPRLoss, PygLightGCN, assert_rel_close, assert_same_topk,
                           bipartite_graph, devices, directed_graph, edge_weights, make_models,
                           undirected_graph, unique_edges)

pyg_utils = pytest.importorskip("torch_geometric.utils")
import torch_geometric  # noqa: E402
import torch_geometric.typing  # noqa: E402
from torch_geometric.nn import LGConv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# torch.sparse's notices, raised inside PyG's conversions and products.
pytestmark = [pytest.mark.filterwarnings("ignore:Sparse .* (beta state|implicitly disabled)"),
              pytest.mark.filterwarnings("ignore:Converting sparse tensor to CSR")]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
GRAPHS = {"directed": directed_graph, "undirected": undirected_graph}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These graphs are tiny: one thread is fastest, and stays fast when the
    machine's cores are busy (two spinning threads on a loaded 2-core machine
    ran this module 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grad_or_zero(t):
    return torch.zeros_like(t) if t.grad is None else t.grad


# ====================================================================
# PyG's own scenarios (test/nn/models/test_lightgcn.py), on our model,
# with every result compared to PyG's model built from the same seed.
# ====================================================================
PYG_ALPHAS = [pytest.param(0, id="alpha0"), pytest.param(.25, id="alpha.25"),
              pytest.param(torch.tensor([0.4, 0.3, 0.2]), id="alpha_tensor")]


@pytest.mark.parametrize("alpha", PYG_ALPHAS)
@pytest.mark.parametrize("lambda_reg", [0, 1e-4])
@pytest.mark.parametrize("with_edge_weight", [False, True])
@pytest.mark.parametrize("embedding_dim", [32, 64])
def test_pyg_scenario_ranking(embedding_dim, with_edge_weight, lambda_reg, alpha):
    torch.manual_seed(embedding_dim + 7 * with_edge_weight)
    num_nodes, num_edges = 500, 400
    edge_index = torch.randint(0, num_nodes, (2, num_edges))
    edge_weight = torch.rand(num_edges) if with_edge_weight else None
    edge_label_index = torch.randint(0, num_nodes, (2, 100))

    model, ref = make_models(num_nodes, embedding_dim, 2, alpha=alpha)
    assert str(model) == f"LightGCN(500, {embedding_dim}, num_layers=2)"

    pred = model(edge_index, edge_label_index, edge_weight)
    assert pred.size() == (100, )
    ref_pred = ref(edge_index, edge_label_index, edge_weight)
    assert_rel_close(pred, ref_pred)

    loss = model.recommendation_loss(pos_edge_rank=pred[:50], neg_edge_rank=pred[50:],
                                     node_id=edge_index.unique(), lambda_reg=lambda_reg)
    assert loss.dim() == 0 and loss > 0
    ref_loss = ref.recommendation_loss(pos_edge_rank=ref_pred[:50], neg_edge_rank=ref_pred[50:],
                                       node_id=edge_index.unique(), lambda_reg=lambda_reg)
    assert_rel_close(loss, ref_loss)

    emb = ref.get_embedding(edge_index, edge_weight).detach()
    out = model.recommend(edge_index, edge_weight, k=2)
    assert out.size() == (500, 2)
    assert out.min() >= 0 and out.max() < 500
    assert_same_topk(out, ref.recommend(edge_index, edge_weight, k=2), emb @ emb.t())

    src_index = torch.arange(0, 250)
    dst_index = torch.arange(250, 500)
    out = model.recommend(edge_index, edge_weight, src_index, dst_index, k=2)
    assert out.size() == (250, 2)
    assert out.min() >= 250 and out.max() < 500
    assert_same_topk(out, ref.recommend(edge_index, edge_weight, src_index, dst_index, k=2),
                     emb[src_index] @ emb.t())


@pytest.mark.parametrize("alpha", PYG_ALPHAS)
@pytest.mark.parametrize("with_edge_weight", [False, True])
@pytest.mark.parametrize("embedding_dim", [32, 64])
def test_pyg_scenario_link_prediction(embedding_dim, with_edge_weight, alpha):
    torch.manual_seed(embedding_dim + 7 * with_edge_weight + 1)
    num_nodes, num_edges = 500, 400
    edge_index = torch.randint(0, num_nodes, (2, num_edges))
    edge_weight = torch.rand(num_edges) if with_edge_weight else None
    edge_label_index = torch.randint(0, num_nodes, (2, 100))
    edge_label = torch.randint(0, 2, (edge_label_index.size(1), ))

    model, ref = make_models(num_nodes, embedding_dim, 2, alpha=alpha)
    assert str(model) == f"LightGCN(500, {embedding_dim}, num_layers=2)"

    pred = model(edge_index, edge_label_index, edge_weight)
    assert pred.size() == (100, )
    ref_pred = ref(edge_index, edge_label_index, edge_weight)
    assert_rel_close(pred, ref_pred)

    loss = model.link_pred_loss(pred, edge_label)
    assert loss.dim() == 0 and loss > 0
    assert_rel_close(loss, ref.link_pred_loss(ref_pred, edge_label))

    prob = model.predict_link(edge_index, edge_label_index, edge_weight, prob=True)
    assert prob.size() == (100, )
    assert prob.min() > 0 and prob.max() < 1
    ref_prob = ref.predict_link(edge_index, edge_label_index, edge_weight, prob=True)
    assert_rel_close(prob, ref_prob)

    label = model.predict_link(edge_index, edge_label_index, edge_weight, prob=False)
    assert label.size() == (100, )
    assert ((label == 0) | (label == 1)).sum() == 100
    decided = (ref_prob - 0.5).abs() > 1e-5  # not a coin flip under float noise
    ref_label = ref.predict_link(edge_index, edge_label_index, edge_weight, prob=False)
    assert torch.equal(label[decided], ref_label[decided])


# ====================================================================
# PyG's LGConv scenarios (test/nn/conv/test_lg_conv.py): one layer with
# alpha = [0, 1] is one LGConv, on every graph form that test uses.
# ====================================================================
def test_pyg_scenario_lg_conv():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    edge_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])
    value = torch.rand(edge_index.size(1))
    adj1 = pyg_utils.to_torch_csc_tensor(edge_index, size=(4, 4))
    adj2 = pyg_utils.to_torch_csc_tensor(edge_index, value, size=(4, 4))

    conv = LGConv()
    out1 = conv(x, edge_index)
    out2 = conv(x, edge_index, value)
    model = LightGCN(4, 8, num_layers=1, alpha=torch.tensor([0.0, 1.0]))
    with torch.no_grad():
        model.embedding.weight.copy_(x)

    assert model.get_embedding(edge_index).size() == (4, 8)
    assert_rel_close(model.get_embedding(edge_index), out1)
    assert_rel_close(model.get_embedding(adj1.t()), out1)
    assert_rel_close(model.get_embedding(edge_index, value), out2)
    assert_rel_close(model.get_embedding(adj2.t()), out2)

    if torch_geometric.typing.WITH_TORCH_SPARSE:
        SparseTensor = torch_geometric.typing.SparseTensor
        adj3 = SparseTensor.from_edge_index(edge_index, sparse_sizes=(4, 4))
        adj4 = SparseTensor.from_edge_index(edge_index, value, (4, 4))
        assert_rel_close(model.get_embedding(adj3.t()), out1)
        assert_rel_close(model.get_embedding(adj4.t()), out2)


# ====================================================================
# API: signatures, defaults, repr, initialization, alpha, state_dict
# ====================================================================
METHODS = ["__init__", "reset_parameters", "get_embedding", "forward", "predict_link",
           "recommend", "link_pred_loss", "recommendation_loss"]


def _parameters(fn, drop_keyword_only=False):
    """(name, kind, default) of fn's parameters; annotations are not compared."""
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.kind, p.default) for p in params
            if not (drop_keyword_only and p.kind == p.KEYWORD_ONLY)]


@pytest.mark.parametrize("method", METHODS)
def test_signature_matches_pyg(method):
    ours = getattr(LightGCN, method)
    # recommend's extras (exclude, chunk_size) are keyword-only, default None.
    assert _parameters(ours, drop_keyword_only=True) == _parameters(getattr(PygLightGCN, method))
    extras = [p for p in inspect.signature(ours).parameters.values() if p.kind == p.KEYWORD_ONLY]
    if method == "recommend":
        assert [(p.name, p.default) for p in extras] == [("exclude", None), ("chunk_size", None)]
    else:
        assert extras == []


def test_bpr_loss_signature_matches_pyg():
    assert _parameters(BPRLoss.__init__) == _parameters(PygBPRLoss.__init__)
    assert _parameters(BPRLoss.forward) == _parameters(PygBPRLoss.forward)
    assert BPRLoss().lambda_reg == PygBPRLoss().lambda_reg == 0


@pytest.mark.parametrize("num_nodes,dim,layers",
                         [(500, 64, 2), (7, 3, 0), (1, 1, 4), (1000, 32, 3)])
def test_same_seed_gives_bitwise_same_weights_and_repr(num_nodes, dim, layers):
    model, ref = make_models(num_nodes, dim, layers, seed=num_nodes)
    assert torch.equal(model.embedding.weight, ref.embedding.weight)
    assert repr(model) == repr(ref) == f"LightGCN({num_nodes}, {dim}, num_layers={layers})"
    assert (model.num_nodes, model.embedding_dim, model.num_layers) == (num_nodes, dim, layers)
    # reset_parameters draws the same numbers too.
    torch.manual_seed(1)
    model.reset_parameters()
    torch.manual_seed(1)
    ref.reset_parameters()
    assert torch.equal(model.embedding.weight, ref.embedding.weight)


ALPHA_FORMS = {
    "default": None, "float": 0.25, "int0": 0, "int1": 1,
    "tensor": torch.tensor([0.4, 0.3, 0.2, 0.1]),
    "tensor_float64": torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64),
}


@pytest.mark.parametrize("alpha", ALPHA_FORMS.values(), ids=ALPHA_FORMS.keys())
def test_alpha_is_a_buffer_as_in_pyg(alpha):
    model, ref = make_models(20, 4, 3, alpha=alpha)
    assert model.alpha.dtype == ref.alpha.dtype
    assert torch.equal(model.alpha, ref.alpha)
    if alpha is None:
        assert torch.equal(model.alpha, torch.full((4, ), 0.25))
    if isinstance(alpha, int):
        assert model.alpha.dtype == torch.int64
    assert [name for name, _ in model.named_buffers()] == ["alpha"]
    assert [name for name, _ in model.named_parameters()] == ["embedding.weight"]
    assert list(model.state_dict()) == list(ref.state_dict()) == ["alpha", "embedding.weight"]
    if isinstance(alpha, torch.Tensor):  # stored as given, as register_buffer does
        same = alpha.clone()
        assert LightGCN(20, 4, 3, alpha=same).alpha is same


@pytest.mark.parametrize("alpha", ALPHA_FORMS.values(), ids=ALPHA_FORMS.keys())
@pytest.mark.parametrize("direction", ["pyg_into_ours", "ours_into_pyg"])
def test_state_dict_loads_both_ways(direction, alpha):
    edge_index = undirected_graph(30, 80, seed=4)
    edge_weight = edge_weights(edge_index.shape[1], seed=5)
    edge_label_index = torch.randint(0, 30, (2, 40), generator=torch.Generator().manual_seed(6))
    ours_a, pyg_a = make_models(30, 8, 3, alpha=alpha, seed=1)  # the source of the weights
    ours_b, pyg_b = make_models(30, 8, 3, alpha=0.5, seed=2)  # other weights, other alpha
    if direction == "pyg_into_ours":
        source, target = pyg_a, ours_b
    else:
        source, target = ours_a, pyg_b
    target.load_state_dict(source.state_dict())  # strict: the same keys
    assert torch.equal(target.embedding.weight, source.embedding.weight)
    assert torch.equal(target.alpha, source.alpha.to(target.alpha.dtype))
    for args in [(edge_index, ), (edge_index, None, edge_weight),
                 (edge_index, edge_label_index, edge_weight)]:
        assert_rel_close(target(*args), source(*args))
    assert_rel_close(target.get_embedding(edge_index), source.get_embedding(edge_index))


# ====================================================================
# Numerical parity with PyG on random graphs: every method, both dtypes,
# every alpha form, both flows, normalize on and off, with and without
# edge weights (and their gradient).
# ====================================================================
PARITY_ALPHAS = {"default": None, "float": 0.25, "int0": 0, "int1": 1,
                 "tensor": torch.tensor([0.4, 0.3, 0.2, 0.1])}
CONV_KWARGS = {"default": {}, "target_to_source": {"flow": "target_to_source"},
               "no_normalize": {"normalize": False}, "aggr_add": {"aggr": "add"}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", PARITY_ALPHAS.values(), ids=PARITY_ALPHAS.keys())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("conv", CONV_KWARGS)
def test_matches_pyg(conv, graph, weighted, alpha, dtype):
    num_nodes = 40
    seed = len(conv) + 3 * len(graph) + weighted
    edge_index = GRAPHS[graph](num_nodes, 110, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    edge_label_index = torch.randint(0, num_nodes, (2, 64), generator=gen)
    edge_label = torch.randint(0, 2, (64, ), generator=gen)
    model, ref = make_models(num_nodes, 8, 3, alpha=alpha, dtype=dtype, seed=seed,
                             **CONV_KWARGS[conv])
    weight = edge_weights(edge_index.shape[1], seed=seed, dtype=dtype) if weighted else None
    w_ours = None if weight is None else weight.clone().requires_grad_()
    w_ref = None if weight is None else weight.clone().requires_grad_()

    assert_rel_close(model.get_embedding(edge_index, w_ours), ref.get_embedding(edge_index, w_ref))
    assert_rel_close(model(edge_index, None, w_ours), ref(edge_index, None, w_ref))
    assert_rel_close(model(edge_index, edge_weight=w_ours), ref(edge_index, edge_weight=w_ref))
    prob = model.predict_link(edge_index, edge_label_index, w_ours, prob=True)
    ref_prob = ref.predict_link(edge_index, edge_label_index, w_ref, prob=True)
    assert_rel_close(prob, ref_prob)
    label = model.predict_link(edge_index, edge_label_index, w_ours)  # prob=False by default
    decided = (ref_prob - 0.5).abs() > 1e-4
    assert torch.equal(label[decided],
                       ref.predict_link(edge_index, edge_label_index, w_ref)[decided])

    # Both losses and the gradients of the embedding and the edge weights.
    pred = model(edge_index, edge_label_index, w_ours)
    ref_pred = ref(edge_index, edge_label_index, w_ref)
    assert_rel_close(pred, ref_pred)
    node_id = edge_label_index.unique()
    losses = [model.link_pred_loss(pred, edge_label),
              model.recommendation_loss(pred[:32], pred[32:], node_id=node_id, lambda_reg=1e-2),
              model.recommendation_loss(pred[32:], pred[:32])]  # all nodes, lambda_reg=1e-4
    ref_losses = [ref.link_pred_loss(ref_pred, edge_label),
                  ref.recommendation_loss(ref_pred[:32], ref_pred[32:], node_id=node_id,
                                          lambda_reg=1e-2),
                  ref.recommendation_loss(ref_pred[32:], ref_pred[:32])]
    for loss, ref_loss in zip(losses, ref_losses):
        assert_rel_close(loss, ref_loss)
    sum(losses).backward()
    sum(ref_losses).backward()
    assert_rel_close(model.embedding.weight.grad, ref.embedding.weight.grad)
    if weighted:
        assert_rel_close(_grad_or_zero(w_ours), _grad_or_zero(w_ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["empty_graph", "num_layers_0", "one_node", "int32_index",
                                  "non_contiguous_index", "empty_edge_label_index",
                                  "all_isolated_but_one_edge"])
def test_matches_pyg_on_edge_cases(case, dtype):
    num_nodes, layers = 12, 2
    edge_index = directed_graph(num_nodes, 30, seed=8)
    gen = torch.Generator().manual_seed(0)
    edge_label_index = torch.randint(0, num_nodes, (2, 10), generator=gen)
    if case == "empty_graph":
        edge_index = torch.zeros(2, 0, dtype=torch.long)
    elif case == "num_layers_0":
        layers = 0
    elif case == "one_node":
        num_nodes, edge_index = 1, torch.tensor([[0, 0], [0, 0]])
        edge_label_index = torch.zeros(2, 3, dtype=torch.long)
    elif case == "int32_index":
        edge_index, edge_label_index = edge_index.int(), edge_label_index.int()
    elif case == "non_contiguous_index":
        edge_index = torch.cat([edge_index, edge_index.flip(0)]).t().contiguous().t()[:2, ::2]
        assert not edge_index.is_contiguous()
    elif case == "empty_edge_label_index":
        edge_label_index = torch.zeros(2, 0, dtype=torch.long)
    elif case == "all_isolated_but_one_edge":
        edge_index = torch.tensor([[3], [5]])
    # PyG's gradient is wrong with an int32 edge_index (torch_geometric 2.8.1:
    # LGConv's backward differs from its own int64 result and from a dense
    # computation), so PyG gets the same graph as int64.
    ref_edge_index, ref_label = edge_index.long(), edge_label_index.long()
    model, ref = make_models(num_nodes, 5, layers, dtype=dtype)
    assert_rel_close(model.get_embedding(edge_index), ref.get_embedding(ref_edge_index))
    pred, ref_pred = model(edge_index, edge_label_index), ref(ref_edge_index, ref_label)
    assert_rel_close(pred, ref_pred)
    (pred.sum() + model(edge_index).square().sum()).backward()
    (ref_pred.sum() + ref(ref_edge_index).square().sum()).backward()
    assert_rel_close(model.embedding.weight.grad, ref.embedding.weight.grad)
    k = min(2, num_nodes)
    emb = ref.get_embedding(ref_edge_index).detach()
    assert_same_topk(model.recommend(edge_index, k=k), ref.recommend(ref_edge_index, k=k),
                     emb @ emb.t())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("device", devices())
def test_matches_pyg_on_device(device, graph, dtype):
    """Everything at once on each device (CUDA where there is one): a larger
    graph, weighted with edge-weight and alpha gradients, recommend with chunks
    and exclude, and the state moved back to the CPU."""
    num_nodes = 700
    edge_index = GRAPHS[graph](num_nodes, 6000, seed=51, num_isolated=20).to(device)
    weight = edge_weights(edge_index.shape[1], seed=52, dtype=dtype).to(device)
    gen = torch.Generator().manual_seed(53)
    edge_label_index = torch.randint(0, num_nodes, (2, 512), generator=gen).to(device)
    results = []
    for cls in (LightGCN, PygLightGCN):
        torch.manual_seed(54)
        alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=dtype, device=device,
                             requires_grad=True)
        model = cls(num_nodes, 32, 3, alpha=alpha).to(device, dtype)
        w = weight.clone().requires_grad_()
        emb = model.get_embedding(edge_index, w)
        pred = model(edge_index, edge_label_index, w)
        plain = model(edge_index)  # unweighted: the fused path on this device
        loss = model.recommendation_loss(pred[:256], pred[256:]) + plain.square().mean()
        loss.backward()
        results.append((model, [emb, pred, plain, loss, alpha.grad, w.grad,
                                model.embedding.weight.grad]))
    (model, ours), (ref, expected) = results
    for got, want in zip(ours, expected):
        assert got.device.type == device
        assert_rel_close(got, want, dtype)

    with torch.no_grad():
        emb = ref.get_embedding(edge_index)
    users = torch.arange(0, 100, device=device)
    items = torch.arange(100, num_nodes, device=device)
    exclude = edge_index[:, (edge_index[0] < 100) & (edge_index[1] >= 100)]
    base = model.recommend(edge_index, src_index=users, dst_index=items, k=10, exclude=exclude)
    assert base.device.type == device
    for chunk_size in (1, 7, 100, 1000):
        assert torch.equal(model.recommend(edge_index, src_index=users, dst_index=items, k=10,
                                           exclude=exclude, chunk_size=chunk_size), base)
    values, _, full = _brute_force_recommend(emb.cpu(), users.cpu(), items.cpu(), 10,
                                             exclude.cpu())
    torch.testing.assert_close(full.gather(1, base.cpu()), values,
                               rtol=10 * REL_TOL[dtype], atol=10 * REL_TOL[dtype])
    assert_same_topk(model.recommend(edge_index, k=5).cpu(), ref.recommend(edge_index, k=5).cpu(),
                     (emb @ emb.t()).cpu(), rtol=10 * REL_TOL[dtype])

    cpu_model = LightGCN(num_nodes, 32, 3).to(dtype)
    cpu_model.load_state_dict(model.state_dict())
    assert_rel_close(cpu_model(edge_index.cpu(), edge_label_index.cpu(), weight.cpu()),
                     expected[1].detach().cpu(), dtype)


# ====================================================================
# recommend: parity with PyG, chunking, exclude
# ====================================================================
NUM_USERS, NUM_ITEMS = 30, 50


@pytest.fixture(scope="module")
def bipartite():
    edge_index, pairs = bipartite_graph(NUM_USERS, NUM_ITEMS, 300, seed=11)
    return edge_index, pairs, edge_weights(edge_index.shape[1], seed=12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("case", ["all", "src", "dst", "src_dst", "k_all_candidates"])
def test_recommend_matches_pyg(bipartite, case, weighted, sorted, dtype):
    edge_index, _, weight = bipartite
    weight = weight.to(dtype) if weighted else None
    num_nodes = NUM_USERS + NUM_ITEMS
    gen = torch.Generator().manual_seed(3)
    src_index = dst_index = None
    k = 5
    if case in ("src", "src_dst"):  # unsorted user ids, one repeated (PyG allows it)
        src_index = torch.tensor([7, 3, 29, 0, 3, 15, 22])
    if case in ("dst", "src_dst"):  # remapped ids: a shuffled subset of the items
        dst_index = NUM_USERS + torch.randperm(NUM_ITEMS, generator=gen)[:35]
    if case == "k_all_candidates":
        dst_index = NUM_USERS + torch.randperm(NUM_ITEMS, generator=gen)[:9]
        k = 9
    model, ref = make_models(num_nodes, 16, 3, dtype=dtype, seed=5)
    out = model.recommend(edge_index, weight, src_index, dst_index, k=k, sorted=sorted)
    ref_out = ref.recommend(edge_index, weight, src_index, dst_index, k=k, sorted=sorted)
    emb = ref.get_embedding(edge_index, weight).detach()
    scores = (emb if src_index is None else emb[src_index]) @ emb.t()  # columns: node ids
    assert out.shape == ref_out.shape
    assert_same_topk(out, ref_out, scores, sorted=sorted, rtol=10 * REL_TOL[dtype])
    allowed = torch.arange(num_nodes) if dst_index is None else dst_index
    assert torch.isin(out, allowed).all()
    if sorted:
        ranked = scores.gather(1, out)
        assert (ranked[:, :-1] >= ranked[:, 1:]).all()
    if case == "k_all_candidates":  # every candidate, once per row
        assert torch.equal(out.sort(dim=1).values,
                           dst_index.sort().values.expand(out.shape[0], -1))


def test_recommend_defaults_match_pyg(bipartite):
    edge_index, _, _ = bipartite
    model, ref = make_models(NUM_USERS + NUM_ITEMS, 16, 3, seed=9)
    out, ref_out = model.recommend(edge_index), ref.recommend(edge_index)  # k=1, sorted
    assert out.shape == (NUM_USERS + NUM_ITEMS, 1)
    emb = ref.get_embedding(edge_index).detach()
    assert_same_topk(out, ref_out, emb @ emb.t())
    assert not out.requires_grad


def _brute_force_recommend(emb, src_index, dst_index, k, exclude):
    """Top-k by a dense masked score matrix: (values, node ids, dense scores by node id)."""
    num_nodes = emb.shape[0]
    src_ids = torch.arange(num_nodes) if src_index is None else src_index
    dst_ids = torch.arange(num_nodes) if dst_index is None else dst_index
    full = emb[src_ids] @ emb.t()  # [num_src, num_nodes]
    masked = torch.zeros_like(full, dtype=torch.bool)
    if exclude is not None:
        for s, d in exclude.t().tolist():
            masked[src_ids == s, d] = True
    full = full.masked_fill(masked, float("-inf"))
    values, local = full[:, dst_ids].topk(k, dim=1)
    return values, dst_ids[local], full


@pytest.fixture(scope="module")
def trained_like_model(bipartite):
    edge_index, pairs, _ = bipartite
    torch.manual_seed(21)
    model = LightGCN(NUM_USERS + NUM_ITEMS, 16, 3)
    with torch.no_grad():  # spread the scores beyond xavier's narrow range
        model.embedding.weight.normal_()
    return model, edge_index, pairs


CHUNK_SIZES = [1, 2, 7, NUM_USERS - 1, NUM_USERS, NUM_USERS + 5, NUM_USERS + NUM_ITEMS + 1,
               10**6]


@pytest.mark.parametrize("case", ["all", "users_to_items", "users_to_items_exclude",
                                  "all_exclude"])
def test_recommend_chunk_size_does_not_change_the_result(trained_like_model, case):
    model, edge_index, pairs = trained_like_model
    src_index = dst_index = exclude = None
    if case.startswith("users_to_items"):
        src_index = torch.arange(NUM_USERS).flip(0)
        dst_index = torch.arange(NUM_USERS, NUM_USERS + NUM_ITEMS)
    if case.endswith("exclude"):
        exclude = pairs
    kwargs = dict(src_index=src_index, dst_index=dst_index, k=6, exclude=exclude)
    base = model.recommend(edge_index, **kwargs)
    for chunk_size in CHUNK_SIZES:
        assert torch.equal(model.recommend(edge_index, chunk_size=chunk_size, **kwargs), base), \
            chunk_size
    values, _, full = _brute_force_recommend(model.get_embedding(edge_index).detach(),
                                             src_index, dst_index, 6, exclude)
    torch.testing.assert_close(full.gather(1, base), values)


def test_recommend_exclude_masks_seen_pairs(trained_like_model):
    model, edge_index, pairs = trained_like_model
    users = torch.arange(NUM_USERS)
    items = torch.arange(NUM_USERS, NUM_USERS + NUM_ITEMS)
    k = 5
    out = model.recommend(edge_index, src_index=users, dst_index=items, k=k, exclude=pairs)
    seen = set(map(tuple, pairs.t().tolist()))
    counts = torch.bincount(pairs[0], minlength=NUM_USERS)
    for user, row in zip(users.tolist(), out.tolist()):
        if NUM_ITEMS - counts[user] >= k:  # enough unseen items: none of the seen ones
            assert not any((user, item) in seen for item in row)
    # Without exclude, seen items do come back (so the test above is not vacuous).
    plain = model.recommend(edge_index, src_index=users, dst_index=items, k=k)
    assert any((u, i) in seen for u, row in zip(users.tolist(), plain.tolist()) for i in row)
    values, ids, full = _brute_force_recommend(model.get_embedding(edge_index).detach(), users,
                                               items, k, pairs)
    torch.testing.assert_close(full.gather(1, out), values)
    assert torch.equal(out, ids)  # continuous random scores: no ties


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_recommend_exclude_matches_brute_force(trained_like_model, data):
        model, edge_index, _ = trained_like_model
        num_nodes = NUM_USERS + NUM_ITEMS
        node = st.integers(0, num_nodes - 1)
        src = data.draw(st.none() | st.lists(node, min_size=0, max_size=12, unique=True))
        dst = data.draw(st.none() | st.lists(node, min_size=1, max_size=20, unique=True))
        pairs = data.draw(st.lists(st.tuples(node, node), max_size=80))
        num_candidates = num_nodes if dst is None else len(dst)
        k = data.draw(st.integers(1, min(num_candidates, 6)))
        chunk_size = data.draw(st.none() | st.integers(1, num_nodes + 3))
        sorted_ = data.draw(st.booleans())
        src_index = None if src is None else torch.tensor(src, dtype=torch.long)
        dst_index = None if dst is None else torch.tensor(dst, dtype=torch.long)
        exclude = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).t()
        out = model.recommend(edge_index, src_index=src_index, dst_index=dst_index, k=k,
                              sorted=sorted_, exclude=exclude, chunk_size=chunk_size)
        values, ids, full = _brute_force_recommend(model.get_embedding(edge_index).detach(),
                                                   src_index, dst_index, k, exclude)
        num_src = num_nodes if src is None else len(src)
        assert out.shape == (num_src, k)
        got = full.gather(1, out)
        if not sorted_:
            got = got.sort(dim=1, descending=True).values
        torch.testing.assert_close(got, values)
        finite = torch.isfinite(values).all(dim=1)  # rows with k unexcluded candidates
        if sorted_:
            assert torch.equal(out[finite], ids[finite])
        allowed = torch.arange(num_nodes) if dst_index is None else dst_index
        assert torch.isin(out, allowed).all()


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op makes (or is given)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves((out, args)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("with_exclude", [False, True])
def test_recommend_chunks_never_build_the_dense_score_matrix(with_exclude):
    num_nodes, dim, chunk_size = 600, 8, 4
    edge_index = undirected_graph(num_nodes, 150, seed=40)
    gen = torch.Generator().manual_seed(41)
    exclude = torch.randint(0, num_nodes, (2, 300), generator=gen) if with_exclude else None
    model = LightGCN(num_nodes, dim, 3)
    expected = model.recommend(edge_index, k=3, exclude=exclude)  # also prepares the graph
    with _LargestTensor() as mode:
        out = model.recommend(edge_index, k=3, exclude=exclude, chunk_size=chunk_size)
    assert torch.equal(out, expected)
    # The embedding table is the largest thing; num_nodes**2 = 360000 would be the dense scores.
    assert mode.largest <= max(num_nodes * dim, chunk_size * num_nodes, 2 * 300), mode.largest


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


# ====================================================================
# A trainable alpha: its gradient vs PyG's autograd of its own computation
# ====================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted_with_grad"])
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("conv", ["default", "target_to_source", "no_normalize"])
def test_alpha_gradient_matches_pyg(conv, graph, weighted, dtype):
    num_nodes = 36
    edge_index = GRAPHS[graph](num_nodes, 100, seed=13)
    weight = edge_weights(edge_index.shape[1], seed=14, dtype=dtype) if weighted else None
    gen = torch.Generator().manual_seed(15)
    target = torch.randn(num_nodes, 8, generator=gen, dtype=torch.float64).to(dtype)
    edge_label_index = torch.randint(0, num_nodes, (2, 40), generator=gen)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=dtype)
    results = []
    for cls in (LightGCN, PygLightGCN):
        torch.manual_seed(16)
        a = alpha.clone().requires_grad_()
        model = cls(num_nodes, 8, 3, alpha=a, **CONV_KWARGS[conv]).to(dtype)
        assert model.alpha is a
        w = None if weight is None else weight.clone().requires_grad_()
        emb = model.get_embedding(edge_index, w)
        pred = model(edge_index, edge_label_index, w)
        loss = (emb * target).sum() + model.recommendation_loss(pred[:20], pred[20:])
        loss.backward()
        results.append((emb, loss, a.grad, model.embedding.weight.grad,
                        None if w is None else _grad_or_zero(w)))
    for ours, ref in zip(*results):
        if ref is not None:
            assert_rel_close(ours, ref, dtype)


def test_alpha_parameter_gets_a_gradient():
    edge_index = undirected_graph(20, 40, seed=2)
    alpha = torch.nn.Parameter(torch.tensor([0.5, 0.3, 0.2]))
    model, ref = make_models(20, 4, 2)
    ref.alpha = alpha.detach().clone().requires_grad_()
    model.alpha = alpha
    model.get_embedding(edge_index).pow(2).sum().backward()
    ref.get_embedding(edge_index).pow(2).sum().backward()
    assert_rel_close(alpha.grad, ref.alpha.grad)


# ====================================================================
# Graph inputs: torch.sparse COO/CSR adj_t, PyG EdgeIndex, torch_sparse
# SparseTensor, our prepared Graph
# ====================================================================
def _graph_input(form, edge_index, weight, num_nodes):
    """(our input, our edge_weight, a function giving PyG's input, PyG's edge_weight).
    PyG gets a fresh input per call: its to_edge_index flags a COO adj_t as
    coalesced in place, which breaks its own backward through an earlier call."""
    size = (num_nodes, num_nodes)
    if form == "csr_adj_t":
        def make():
            return pyg_utils.to_torch_csr_tensor(edge_index.flip(0), weight, size=size)
        return make(), None, make, None
    if form == "coo_adj_t":
        def make():
            return pyg_utils.to_torch_coo_tensor(edge_index.flip(0), weight, size=size)
        return make(), None, make, None
    if form == "csc_transposed":  # PyG's own LGConv test idiom
        def make():
            return pyg_utils.to_torch_csc_tensor(edge_index, weight, size=size).t()
        return make(), None, make, None
    if form == "edge_index_class":
        ei = torch_geometric.EdgeIndex(edge_index, sparse_size=size)
        return ei, weight, lambda: ei, weight
    if form == "sorted_edge_index_class":
        ei, perm = torch_geometric.EdgeIndex(edge_index, sparse_size=size).sort_by("col")
        w = None if weight is None else weight[perm]
        return ei, w, lambda: ei, w
    if form == "prepared_graph":
        graph = Graph.from_edge_index(edge_index, num_nodes, weight)
        return graph, None, lambda: edge_index, weight
    if form == "sparse_tensor":
        if not torch_geometric.typing.WITH_TORCH_SPARSE:
            pytest.skip("torch_sparse is not installed")
        SparseTensor = torch_geometric.typing.SparseTensor
        def make():
            return SparseTensor.from_edge_index(edge_index, weight, size).t()
        return make(), None, make, None
    raise ValueError(form)


GRAPH_FORMS = ["csr_adj_t", "coo_adj_t", "csc_transposed", "edge_index_class",
               "sorted_edge_index_class", "prepared_graph", "sparse_tensor"]


@pytest.mark.parametrize("symmetric", [False, True], ids=["directed", "undirected"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_graph_input_forms_match_pyg(form, weighted, symmetric):
    num_nodes = 30
    edge_index = unique_edges(num_nodes, 80, seed=17, symmetric=symmetric)
    weight = edge_weights(edge_index.shape[1], seed=18) if weighted else None
    ours_in, ours_w, ref_in, ref_w = _graph_input(form, edge_index, weight, num_nodes)
    model, ref = make_models(num_nodes, 6, 3, alpha=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert_rel_close(model.get_embedding(ours_in, ours_w), ref.get_embedding(ref_in(), ref_w))
    # And the same numbers as the plain edge_index.
    assert_rel_close(model.get_embedding(ours_in, ours_w),
                     ref.get_embedding(edge_index, weight))
    out = model(ours_in, edge_weight=ours_w)  # all edges of the input
    ref_out = ref(ref_in(), edge_weight=ref_w)
    assert_rel_close(out, ref_out)
    label = torch.randint(0, num_nodes, (2, 25), generator=torch.Generator().manual_seed(19))
    pred, ref_pred = model(ours_in, label, ours_w), ref(ref_in(), label, ref_w)
    assert_rel_close(pred, ref_pred)
    (pred.sum() + out.square().sum()).backward()
    (ref_pred.sum() + ref_out.square().sum()).backward()
    assert_rel_close(model.embedding.weight.grad, ref.embedding.weight.grad)
    emb = ref.get_embedding(ref_in(), ref_w).detach()
    assert_same_topk(model.recommend(ours_in, ours_w, k=3), ref.recommend(ref_in(), ref_w, k=3),
                     emb @ emb.t())


def test_csr_adj_t_values_get_the_gradient_pyg_gives():
    edge_index = unique_edges(20, 60, seed=1)
    weight = edge_weights(edge_index.shape[1], seed=2)
    grads = []
    for model in make_models(20, 4, 2):
        value = weight.clone().requires_grad_()
        adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), value, size=(20, 20))
        model.get_embedding(adj_t).square().sum().backward()
        grads.append((value.grad, model.embedding.weight.grad))
    for ours, ref in zip(*grads):
        assert_rel_close(ours, ref)


def test_model_copies_and_pickles(tmp_path):
    import copy

    edge_index = undirected_graph(20, 40, seed=3)
    model = LightGCN(20, 4, 2, alpha=torch.tensor([0.2, 0.3, 0.5]))
    expected = model(edge_index)
    assert torch.equal(copy.deepcopy(model)(edge_index), expected)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert repr(loaded) == repr(model) and torch.equal(loaded(edge_index), expected)


def test_sparse_adj_t_rejects_target_to_source_as_pyg():
    edge_index = unique_edges(10, 20, seed=1)
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(10, 10))
    model, ref = make_models(10, 4, 2, flow="target_to_source")
    with pytest.raises(ValueError):
        ref.get_embedding(adj_t)
    with pytest.raises(ValueError, match="flow"):
        model.get_embedding(adj_t)


def test_sparse_adj_t_rejects_a_separate_edge_weight():
    edge_index = unique_edges(10, 20, seed=1)
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(10, 10))
    with pytest.raises(ValueError, match="edge_weight"):
        LightGCN(10, 4, 2).get_embedding(adj_t, torch.ones(edge_index.shape[1]))


@pytest.mark.parametrize("normalize", [True, False])
def test_uncoalesced_coo_adj_t_counts_every_entry(normalize):
    """Duplicate entries of an uncoalesced COO adj_t add up, as the duplicate
    edges of the edge_index it came from. (PyG itself is not the reference
    here: its to_edge_index flags the tensor coalesced in place without
    coalescing it, and its later sparse products on it are wrong.)"""
    edge_index = directed_graph(15, 40, seed=5)  # with duplicates and self-loops
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(edge_index.shape[1]),
                                    (15, 15))
    assert not adj_t.is_coalesced()
    model, ref = make_models(15, 4, 2, normalize=normalize)
    assert_rel_close(model.get_embedding(adj_t), ref.get_embedding(edge_index))
    assert_rel_close(model(adj_t), ref(edge_index))  # the entries in their stored order
    assert_rel_close(model.get_embedding(adj_t.coalesce()), ref.get_embedding(edge_index))


# ====================================================================
# The prepared graph is built once per input and rebuilt when it changes
# ====================================================================
def test_prepare_returns_the_identical_graph():
    edge_index = undirected_graph(25, 60, seed=21)
    weight = edge_weights(edge_index.shape[1], seed=22)
    graph = prepare(edge_index, 25)
    assert isinstance(graph, Graph)
    assert prepare(edge_index, 25) is graph
    weighted = prepare(edge_index, 25, weight)
    assert weighted is not graph and prepare(edge_index, 25, weight) is weighted
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(25, 25))
    assert prepare(adj_t) is prepare(adj_t)
    assert prepare(graph) is graph


@pytest.fixture
def count_preparations(monkeypatch):
    """The number of graphs built from now on (each build goes through
    Graph.from_edge_index, adj_t inputs included)."""
    calls = []
    build = Graph.from_edge_index.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(Graph, "from_edge_index", classmethod(counting))
    return calls


@pytest.mark.parametrize("form", ["edge_index", "weighted", "csr_adj_t"])
def test_model_prepares_each_graph_once(count_preparations, form):
    edge_index = undirected_graph(25, 60, seed=23)
    weight = edge_weights(edge_index.shape[1], seed=24) if form == "weighted" else None
    graph = edge_index
    if form == "csr_adj_t":
        graph = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(25, 25))
    model = LightGCN(25, 4, 3)
    label = torch.randint(0, 25, (2, 10))
    model.get_embedding(graph, weight)
    model(graph, label, weight).sum().backward()
    model.predict_link(graph, label, weight, prob=True)
    model.recommend(graph, weight, k=3)
    model.double().get_embedding(graph, None if weight is None else weight)
    assert len(count_preparations) == 1


def test_in_place_changes_of_the_graph_are_noticed():
    num_nodes = 25
    edge_index = directed_graph(num_nodes, 60, seed=25)
    weight = edge_weights(edge_index.shape[1], seed=26)
    model, ref = make_models(num_nodes, 4, 3)
    before = model.get_embedding(edge_index).detach()
    graph = prepare(edge_index, num_nodes)

    edge_index[1, :20] = (edge_index[1, :20] + 7) % num_nodes  # in place
    assert prepare(edge_index, num_nodes) is not graph
    after = model.get_embedding(edge_index)
    assert not torch.allclose(after, before)
    assert_rel_close(after, ref.get_embedding(edge_index))

    edge_index.copy_(directed_graph(num_nodes, 60, seed=27))
    assert_rel_close(model.get_embedding(edge_index), ref.get_embedding(edge_index))
    edge_index[0].fill_(3)
    assert_rel_close(model(edge_index), ref(edge_index))

    assert_rel_close(model.get_embedding(edge_index, weight), ref.get_embedding(edge_index, weight))
    weight[:10] *= 4  # in place: a new normalization
    assert_rel_close(model.get_embedding(edge_index, weight), ref.get_embedding(edge_index, weight))


def test_in_place_changes_of_a_sparse_adj_t_are_noticed():
    edge_index = unique_edges(20, 50, seed=28, symmetric=True)
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(20, 20))
    model, ref = make_models(20, 4, 2)
    assert_rel_close(model.get_embedding(adj_t), ref.get_embedding(adj_t))
    adj_t.values()[:15] = 3.0  # now weighted
    assert_rel_close(model.get_embedding(adj_t), ref.get_embedding(adj_t))
    coo = pyg_utils.to_torch_coo_tensor(edge_index.flip(0), size=(20, 20))
    assert_rel_close(model.get_embedding(coo), ref.get_embedding(coo))
    coo._values()[:15] = 0.25
    assert_rel_close(model.get_embedding(coo), ref.get_embedding(coo))


def test_a_new_tensor_with_equal_contents_gives_equal_results():
    edge_index = undirected_graph(20, 40, seed=29)
    model = LightGCN(20, 4, 2)
    first = model.get_embedding(edge_index)
    for _ in range(3):  # fresh tensors, possibly at recycled addresses
        again = model.get_embedding(edge_index.clone())
        assert torch.equal(again, first)
    other = undirected_graph(20, 40, seed=30)
    _, ref = make_models(20, 4, 2)
    ref.load_state_dict(model.state_dict())
    assert_rel_close(model.get_embedding(other.clone()), ref.get_embedding(other))


# ====================================================================
# Bad input: everything PyG rejects, we reject, with a clear message that
# names the argument; plus what we reject beyond PyG
# ====================================================================
N_BAD = 20
BAD_EDGE_INDEX = directed_graph(N_BAD, 50, seed=3)


def _model(cls, **kwargs):
    torch.manual_seed(0)
    return cls(N_BAD, 4, 2, **kwargs)


def _bpr(cls):
    return PygBPRLoss if cls is PygLightGCN else BPRLoss


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
        call(PygLightGCN)
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


@pytest.mark.parametrize("aggr", ["add", "sum"])
def test_sum_aggregation_is_accepted(aggr):
    edge_index = directed_graph(10, 30, seed=1)
    model, ref = make_models(10, 4, 2, aggr=aggr)
    assert_rel_close(model.get_embedding(edge_index), ref.get_embedding(edge_index))


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


def _env_with_repo_on_path():
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)
    return dict(os.environ, PYTHONPATH=path)


def test_odd_inputs_do_not_crash_the_process():
    env = _env_with_repo_on_path()
    result = subprocess.run([sys.executable, "-c", SEGFAULT_PROBE], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "survived" in result.stdout


# ====================================================================
# Differences from PyG that these tests found, now fixed
# ====================================================================
@pytest.mark.parametrize("k", [pytest.param("numpy", id="numpy_int64"),
                               pytest.param("tensor", id="tensor_0d")])
def test_recommend_accepts_integer_like_k(bipartite, k):
    np = pytest.importorskip("numpy")
    edge_index = bipartite[0]
    k = np.int64(3) if k == "numpy" else torch.tensor(3)
    model, ref = make_models(NUM_USERS + NUM_ITEMS, 8, 2)
    emb = ref.get_embedding(edge_index).detach()
    assert_same_topk(model.recommend(edge_index, k=k), ref.recommend(edge_index, k=k),
                     emb @ emb.t())


def test_recommend_k_zero_like_pyg(bipartite):
    edge_index = bipartite[0]
    model, ref = make_models(NUM_USERS + NUM_ITEMS, 8, 2)
    assert torch.equal(model.recommend(edge_index, k=0), ref.recommend(edge_index, k=0))


def test_index_arguments_accept_lists_like_pyg(bipartite):
    edge_index = bipartite[0]
    model, ref = make_models(NUM_USERS + NUM_ITEMS, 8, 2)
    assert_rel_close(model(edge_index, [[0, 1], [31, 40]]), ref(edge_index, [[0, 1], [31, 40]]))
    emb = ref.get_embedding(edge_index).detach()
    assert_same_topk(model.recommend(edge_index, src_index=[0, 4], k=2),
                     ref.recommend(edge_index, src_index=[0, 4], k=2), emb[[0, 4]] @ emb.t())


def test_bpr_loss_broadcasts_like_pyg():
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(8, 1, generator=gen), torch.randn(8, 5, generator=gen)
    params = torch.randn(6, 4, generator=gen)
    assert_rel_close(BPRLoss(1e-2)(pos, neg, params), PygBPRLoss(1e-2)(pos, neg, params))
    model, ref = make_models(10, 4, 2)
    assert_rel_close(model.recommendation_loss(pos, neg), ref.recommendation_loss(pos, neg))


def test_recommendation_loss_accepts_a_node_mask_like_pyg():
    model, ref = make_models(10, 4, 2)
    mask = torch.arange(10) % 3 == 0
    pos, neg = torch.randn(4), torch.randn(4)
    assert_rel_close(model.recommendation_loss(pos, neg, node_id=mask),
                     ref.recommendation_loss(pos, neg, node_id=mask))


def test_parameter_alpha_is_a_buffer_like_pyg():
    alpha = torch.tensor([0.5, 0.3, 0.2])
    model = LightGCN(10, 4, 2, alpha=torch.nn.Parameter(alpha.clone()))
    ref = PygLightGCN(10, 4, 2, alpha=torch.nn.Parameter(alpha.clone()))
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in ref.named_buffers()]


def test_csc_adj_t_is_rejected_with_a_clear_message():
    edge_index = unique_edges(10, 20, seed=1)
    csc = pyg_utils.to_torch_csc_tensor(edge_index, size=(10, 10))  # not transposed
    with pytest.raises(NotImplementedError):
        PygLightGCN(10, 4, 2).get_embedding(csc)
    with pytest.raises((TypeError, ValueError, NotImplementedError), match="adj_t"):
        LightGCN(10, 4, 2).get_embedding(csc)


@pytest.mark.parametrize("change", ["edge_index_through_numpy", "edge_weight_through_data"])
def test_writes_that_bypass_the_version_counter_need_clear_cache(change):
    """The cache keys on (id, _version, data_ptr): writes through a numpy view
    or `.data` are not seen (documented); clear_cache() is the way out."""
    clear_cache = getattr(lightgcn_ext.graph, "clear_cache", None)
    if clear_cache is None:
        pytest.skip("lightgcn_ext.graph.clear_cache does not exist yet")
    array = directed_graph(20, 50, seed=31).numpy().copy()
    edge_index = torch.from_numpy(array)
    weight = edge_weights(edge_index.shape[1], seed=32)
    model, ref = make_models(20, 4, 2)
    with torch.no_grad():
        model.get_embedding(edge_index, weight)
        if change == "edge_index_through_numpy":
            array[1, :25] = (array[1, :25] + 5) % 20
        else:
            weight.data[:25] *= 4
        stale = model.get_embedding(edge_index, weight)
        clear_cache()
        fresh = model.get_embedding(edge_index, weight)
        expected = ref.get_embedding(edge_index, weight)
    assert not torch.allclose(stale, expected)  # the documented limitation
    assert_rel_close(fresh, expected)


def test_coo_adj_t_values_get_a_gradient():
    edge_index = unique_edges(20, 60, seed=1)
    weight = edge_weights(edge_index.shape[1], seed=2)
    value = weight.clone().requires_grad_()
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), value, (20, 20)).coalesce()
    model, ref = make_models(20, 4, 2)
    model.get_embedding(adj_t).square().sum().backward()
    # The reference: the same graph as edge_index + edge_weight (same entry order).
    ref_weight = adj_t.values().detach().clone().requires_grad_()
    ref.get_embedding(adj_t.indices().flip(0), ref_weight).square().sum().backward()
    assert value.grad is not None
    coalesced_grad = torch.sparse_coo_tensor(edge_index.flip(0), value.grad,
                                             (20, 20)).coalesce().values()
    assert_rel_close(coalesced_grad, ref_weight.grad)


# ====================================================================
# The benchmark's smoke run
# ====================================================================
def test_bench_model_quick_runs():
    env = _env_with_repo_on_path()
    command = [sys.executable, "-m", "bench.bench_model", "--quick", "--threads", "1"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "| implementation | get_embedding ms | BPR step ms |" in out
    for label in ("(ours)", "torch_geometric LightGCN, edge_index",
                  "torch_geometric LightGCN, torch.sparse CSR adj_t"):
        assert label in out
    assert out.count("PASS:") + out.count("FAIL:") == 4
    assert "MISMATCH" not in out
