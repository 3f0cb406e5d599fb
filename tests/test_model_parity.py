"""lightgcn_ext.LightGCN as a drop-in for torch_geometric.nn.models.LightGCN:
the same signatures, defaults, state_dict and numbers as the real PyG model
built from the same seed, on every graph input form, with a trainable alpha.

PyG's own test scenarios (test/nn/models/test_lightgcn.py and
test/nn/conv/test_lg_conv.py) come first, run on our model and compared
with PyG's. recommend, caching and bad input have their own modules.
"""
import copy
import inspect

import pytest
import torch

from helpers import (MODEL_DTYPES, MODEL_MARKS, REL_TOL, assert_rel_close, assert_same_topk,
                     brute_force_recommend, devices, directed_graph, make_models, random_weights,
                     undirected_graph, unique_edges)
from lightgcn_ext import BPRLoss, Graph, LightGCN

pyg_models = pytest.importorskip("torch_geometric.nn.models")
pyg_utils = pytest.importorskip("torch_geometric.utils")
import torch_geometric  # noqa: E402
import torch_geometric.typing  # noqa: E402
from torch_geometric.nn import LGConv  # noqa: E402

PygLightGCN, PygBPRLoss = pyg_models.LightGCN, pyg_models.lightgcn.BPRLoss
pytestmark = MODEL_MARKS
GRAPHS = {"directed": directed_graph, "undirected": undirected_graph}


def _grad_or_zero(t):
    return torch.zeros_like(t) if t.grad is None else t.grad


# ====================================================================
# PyG's own scenarios (test/nn/models/test_lightgcn.py), on our model,
# with every result compared to PyG's model built from the same seed.
# ====================================================================
PYG_ALPHAS = [pytest.param(0, id="alpha0"), pytest.param(.25, id="alpha.25"),
              pytest.param(torch.tensor([0.4, 0.3, 0.2]), id="alpha_tensor")]


def _pyg_scenario(seed, embedding_dim, with_edge_weight, alpha):
    """PyG's setup (500 nodes, 400 random edges, 100 label edges and labels)
    and its first checks, the repr and the forward, on both models:
    (model, ref, edge_index, edge_weight, edge_label_index, edge_label, pred, ref_pred)."""
    torch.manual_seed(seed)
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
    return model, ref, edge_index, edge_weight, edge_label_index, edge_label, pred, ref_pred


@pytest.mark.parametrize("alpha", PYG_ALPHAS)
@pytest.mark.parametrize("lambda_reg", [0, 1e-4])
@pytest.mark.parametrize("with_edge_weight", [False, True])
@pytest.mark.parametrize("embedding_dim", [32, 64])
def test_pyg_scenario_ranking(embedding_dim, with_edge_weight, lambda_reg, alpha):
    model, ref, edge_index, edge_weight, _, _, pred, ref_pred = _pyg_scenario(
        embedding_dim + 7 * with_edge_weight, embedding_dim, with_edge_weight, alpha)

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
    model, ref, edge_index, edge_weight, edge_label_index, edge_label, pred, ref_pred = \
        _pyg_scenario(embedding_dim + 7 * with_edge_weight + 1, embedding_dim, with_edge_weight,
                      alpha)

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
    # recommend's extras (exclude, chunk_size, return_scores) are keyword-only.
    assert _parameters(ours, drop_keyword_only=True) == _parameters(getattr(PygLightGCN, method))
    extras = [p for p in inspect.signature(ours).parameters.values() if p.kind == p.KEYWORD_ONLY]
    if method == "recommend":
        assert [(p.name, p.default) for p in extras] == [("exclude", None), ("chunk_size", None),
                                                         ("return_scores", False)]
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
    edge_weight = random_weights(edge_index.shape[1], seed=5, dtype=torch.float32)
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


@pytest.mark.parametrize("dtype", MODEL_DTYPES)
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
    weight = random_weights(edge_index.shape[1], seed=seed, dtype=dtype) if weighted else None
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


@pytest.mark.parametrize("dtype", MODEL_DTYPES)
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


@pytest.mark.parametrize("dtype", MODEL_DTYPES)
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("device", devices())
def test_matches_pyg_on_device(device, graph, dtype):
    """Everything at once on each device (CUDA where there is one): a larger
    graph, weighted with edge-weight and alpha gradients, recommend with chunks
    and exclude, and the state moved back to the CPU."""
    num_nodes = 700
    edge_index = GRAPHS[graph](num_nodes, 6000, seed=51, num_isolated=20).to(device)
    weight = random_weights(edge_index.shape[1], seed=52, dtype=dtype).to(device)
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
    values, _, full = brute_force_recommend(emb.cpu(), users.cpu(), items.cpu(), 10,
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
# A trainable alpha: its gradient vs PyG's autograd of its own computation
# ====================================================================
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted_with_grad"])
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("conv", ["default", "target_to_source", "no_normalize"])
def test_alpha_gradient_matches_pyg(conv, graph, weighted, dtype):
    num_nodes = 36
    edge_index = GRAPHS[graph](num_nodes, 100, seed=13)
    weight = random_weights(edge_index.shape[1], seed=14, dtype=dtype) if weighted else None
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
        # A Graph's edges are its CSR's: by destination, then source.
        order = (edge_index[1] * num_nodes + edge_index[0]).sort(stable=True).indices
        assert torch.equal(graph.edges(), edge_index[:, order])
        w = None if weight is None else weight[order]
        return graph, None, lambda: edge_index[:, order], w
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
    weight = (random_weights(edge_index.shape[1], seed=18, dtype=torch.float32) if weighted
              else None)
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
    weight = random_weights(edge_index.shape[1], seed=2, dtype=torch.float32)
    grads = []
    for model in make_models(20, 4, 2):
        value = weight.clone().requires_grad_()
        adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), value, size=(20, 20))
        model.get_embedding(adj_t).square().sum().backward()
        grads.append((value.grad, model.embedding.weight.grad))
    for ours, ref in zip(*grads):
        assert_rel_close(ours, ref)


def test_model_copies_and_pickles(tmp_path):
    edge_index = undirected_graph(20, 40, seed=3)
    model = LightGCN(20, 4, 2, alpha=torch.tensor([0.2, 0.3, 0.5]))
    expected = model(edge_index)
    assert torch.equal(copy.deepcopy(model)(edge_index), expected)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert repr(loaded) == repr(model) and torch.equal(loaded(edge_index), expected)


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


@pytest.mark.parametrize("aggr", ["add", "sum"])
def test_sum_aggregation_is_accepted(aggr):
    edge_index = directed_graph(10, 30, seed=1)
    model, ref = make_models(10, 4, 2, aggr=aggr)
    assert_rel_close(model.get_embedding(edge_index), ref.get_embedding(edge_index))


# ====================================================================
# Differences from PyG that these tests found, now fixed
# ====================================================================
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


def test_coo_adj_t_values_get_a_gradient():
    edge_index = unique_edges(20, 60, seed=1)
    weight = random_weights(edge_index.shape[1], seed=2, dtype=torch.float32)
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
