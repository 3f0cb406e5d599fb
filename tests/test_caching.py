"""The prepared graph is built once per input and rebuilt when the input
changes: `prepare`'s cache, seen through propagate and through the model."""
import gc
import weakref

import pytest
import torch

import lightgcn_ext
from lightgcn_ext import cache as cache_module
from lightgcn_ext import graph as graph_module
from helpers import (MODEL_MARKS, assert_close_to_reference, assert_rel_close, dense_propagate,
                     directed_graph, features, make_models, random_edges, random_weights,
                     undirected_graph, unique_edges)
from lightgcn_ext import Graph, LightGCN, prepare, propagate

pytestmark = MODEL_MARKS
ALPHA = [0.4, 0.3, 0.2, 0.1]


# ====================================================================
# prepare and propagate
# ====================================================================
def test_cache_returns_same_graph_for_same_tensor():
    edge_index = random_edges(10, 30, seed=1)
    weight = random_weights(30, seed=2)
    assert prepare(edge_index, 10) is prepare(edge_index, 10)
    assert prepare(edge_index, 10, weight) is prepare(edge_index, 10, weight)
    assert prepare(edge_index, 10, weight) is not prepare(edge_index, 10)
    # An equal edge_index in another tensor finds the same graph (by contents).
    assert prepare(edge_index.clone(), 10) is prepare(edge_index, 10)
    assert prepare(edge_index, 10, normalize=False) is not prepare(edge_index, 10)
    assert prepare(edge_index, 10, flow="target_to_source") is not prepare(edge_index, 10)
    graph = prepare(edge_index, 10)
    assert prepare(graph) is graph and prepare(graph, 10) is graph


def test_prepare_returns_the_identical_graph(pyg_utils):
    edge_index = undirected_graph(25, 60, seed=21)
    weight = random_weights(edge_index.shape[1], seed=22, dtype=torch.float32)
    graph = prepare(edge_index, 25)
    assert isinstance(graph, Graph)
    assert prepare(edge_index, 25) is graph
    weighted = prepare(edge_index, 25, weight)
    assert weighted is not graph and prepare(edge_index, 25, weight) is weighted
    adj_t = pyg_utils.to_torch_csr_tensor(edge_index.flip(0), size=(25, 25))
    assert prepare(adj_t) is prepare(adj_t)
    assert prepare(graph) is graph


def test_cache_notices_in_place_edge_index_change():
    n = 8
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])  # a ring
    x = features(n, 3)
    first = propagate(edge_index, x, ALPHA)
    graph = prepare(edge_index, n)
    edge_index[0, 2] = 7  # 2 -> 3 becomes 7 -> 3
    edge_index[1, 3] = 6  # 3 -> 4 becomes 3 -> 6
    assert prepare(edge_index, n) is not graph
    out = propagate(edge_index, x, ALPHA)
    assert not torch.allclose(out, first)
    assert_close_to_reference(out, dense_propagate(edge_index, n, x, ALPHA), torch.float64)


def test_cache_notices_in_place_edge_weight_change():
    n = 8
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 6], [1, 2, 3, 4, 5, 5]])
    weight = torch.ones(6, dtype=torch.float64)
    x = features(n, 3)
    propagate(edge_index, x, ALPHA, edge_weight=weight)
    weight[3] = 5.0
    out = propagate(edge_index, x, ALPHA, edge_weight=weight)
    assert_close_to_reference(out, dense_propagate(edge_index, n, x, ALPHA, weight),
                              torch.float64)


def test_cache_notices_in_place_sparse_adj_t_change():
    n = 8
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 6], [1, 2, 3, 4, 5, 5]])
    weight = torch.rand(6, dtype=torch.float64) + 0.5
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), weight, (n, n)).coalesce()
    x = features(n, 3)
    assert prepare(adj_t) is prepare(adj_t)
    propagate(adj_t, x, ALPHA)
    adj_t.values()[0] = 9.0
    expected = dense_propagate(adj_t.indices().flip(0), n, x, ALPHA, adj_t.values())
    assert_close_to_reference(propagate(adj_t, x, ALPHA), expected, torch.float64)


# ====================================================================
# Through the model
# ====================================================================
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
    weight = None
    if form == "weighted":
        weight = random_weights(edge_index.shape[1], seed=24, dtype=torch.float32)
    graph = edge_index
    if form == "csr_adj_t":
        pyg_utils = pytest.importorskip("torch_geometric.utils")
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
    weight = random_weights(edge_index.shape[1], seed=26, dtype=torch.float32)
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


def test_in_place_changes_of_a_sparse_adj_t_are_noticed(pyg_utils):
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


@pytest.mark.parametrize("change", ["edge_index_through_numpy", "edge_weight_through_data"])
def test_writes_that_bypass_the_version_counter_need_clear_cache(change):
    """The cache keys on (id, _version, data_ptr): writes through a numpy view
    or `.data` are not seen (documented); clear_cache() is the way out."""
    clear_cache = lightgcn_ext.clear_cache
    array = directed_graph(20, 50, seed=31).numpy().copy()
    edge_index = torch.from_numpy(array)
    weight = random_weights(edge_index.shape[1], seed=32, dtype=torch.float32)
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


# ------------------------------------------ equal contents, weak references
def test_a_fresh_tensor_with_equal_contents_finds_the_cached_graph(monkeypatch):
    edge_index = random_edges(40, 200, seed=30)
    weight = random_weights(200, seed=31)
    graph = prepare(edge_index, 40, weight)
    prepared = []
    original = graph_module.Graph.from_edge_index.__func__
    monkeypatch.setattr(graph_module.Graph, "from_edge_index", classmethod(
        lambda cls, *a, **k: prepared.append(1) or original(cls, *a, **k)))
    # The model(edge_index.to(device), ...) pattern: a new tensor every call.
    for _ in range(3):
        assert prepare(edge_index.clone(), 40, weight.clone()) is graph
    assert prepare(edge_index.int(), 40, weight) is graph
    assert prepared == []
    # Different contents, settings or weights are prepared anew.
    changed = edge_index.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 40
    assert prepare(changed, 40, weight) is not graph
    assert prepare(edge_index.clone(), 40, weight * 2) is not graph
    assert prepare(edge_index.clone(), 40, weight, normalize=False) is not graph
    assert prepare(edge_index.clone(), 40) is not graph
    assert len(prepared) == 4


def test_the_cache_does_not_keep_its_inputs_alive():
    edge_index = random_edges(30, 100, seed=32)
    weight = random_weights(100, seed=33)
    prepare(edge_index, 30, weight)
    refs = weakref.ref(edge_index), weakref.ref(weight)
    del edge_index, weight
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


def test_the_cache_memory_is_bounded(monkeypatch):
    lightgcn_ext.clear_cache()
    graphs = [prepare(random_edges(50, 300, seed=s), 50) for s in range(3)]
    assert len({id(g) for g in cache_module._cache_graphs()}) == 3
    monkeypatch.setattr(cache_module, "_CACHE_MAX_BYTES", graphs[0].nbytes + 1)
    prepare(random_edges(50, 300, seed=99), 50)
    assert len(cache_module._cache_graphs()) == 1  # only the newest fits


def test_clear_cache_at_the_top_level():
    edge_index = random_edges(20, 50, seed=34)
    graph = prepare(edge_index, 20)
    lightgcn_ext.clear_cache()
    assert not cache_module._cache
    assert prepare(edge_index, 20) is not graph


def test_training_an_edge_weight_does_not_prepare_the_graph_again(monkeypatch):
    edge_index = random_edges(20, 80, seed=35)
    weight = torch.nn.Parameter(random_weights(80, seed=36, dtype=torch.float32) + 0.5)
    model = LightGCN(20, 8, 2)
    optimizer = torch.optim.SGD([weight, model.embedding.weight], lr=0.01)
    prepared = []
    original = graph_module.Graph.from_edge_index.__func__
    monkeypatch.setattr(graph_module.Graph, "from_edge_index", classmethod(
        lambda cls, *a, **k: prepared.append(1) or original(cls, *a, **k)))
    for _ in range(4):
        optimizer.zero_grad()
        model.get_embedding(edge_index, weight).pow(2).sum().backward()
        optimizer.step()
    assert len(prepared) == 1  # the graph follows the weight's values instead
    with torch.no_grad():
        tracked = model.get_embedding(edge_index, weight)
    assert_rel_close(tracked, model.get_embedding(edge_index, weight.detach().clone()))


def test_an_equal_edge_index_is_found_after_the_first_input_is_gone(monkeypatch):
    """The graph keeps no copy of its input: once that tensor is gone, an
    equal one is found by the graph's CSR (the edges in any order, duplicates
    counted), and a different one, even of the same in-degrees, is not."""
    edge_index = random_edges(40, 200, seed=37)
    weight = random_weights(200, seed=38)
    graph = prepare(edge_index.clone(), 40)  # the input dies here
    weighted = prepare(edge_index.clone(), 40, weight.clone())
    prepared = []
    original = graph_module.Graph.from_edge_index.__func__
    monkeypatch.setattr(graph_module.Graph, "from_edge_index", classmethod(
        lambda cls, *a, **k: prepared.append(1) or original(cls, *a, **k)))
    assert prepare(edge_index.clone(), 40) is graph
    shuffled = torch.randperm(200, generator=torch.Generator().manual_seed(39))
    assert prepare(edge_index[:, shuffled], 40) is graph
    assert prepare(edge_index.clone(), 40, weight.clone()) is weighted
    assert prepared == []
    # The same in-degrees, another source: prepared anew.
    changed = edge_index.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 40
    assert prepare(changed, 40) is not graph
    # One duplicate more, one edge less.
    duplicated = edge_index.clone()
    duplicated[:, 1] = duplicated[:, 0]
    assert prepare(duplicated, 40) is not graph
    assert prepare(edge_index.clone(), 40, weight * 2) is not weighted
    assert len(prepared) == 3
