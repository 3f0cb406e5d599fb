"""LightGCN.recommend: the same top-k as torch_geometric's, and our extras:
chunked scoring (never the dense score matrix) and `exclude` (seen pairs),
against a dense brute force. The arguments it rejects: test_bad_input.py."""
import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import (MODEL_DTYPES, MODEL_MARKS, NUM_ITEMS, NUM_USERS, REL_TOL, assert_rel_close,
                     assert_same_topk, brute_force_recommend, make_models, undirected_graph)
from lightgcn_ext import LightGCN

pytestmark = MODEL_MARKS


# ====================================================================
# Parity with PyG
# ====================================================================
@pytest.mark.parametrize("dtype", MODEL_DTYPES)
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


# ====================================================================
# Chunking and exclude, against a dense brute force
# ====================================================================
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
    values, _, full = brute_force_recommend(model.get_embedding(edge_index).detach(),
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
    values, ids, full = brute_force_recommend(model.get_embedding(edge_index).detach(), users,
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
        if dst_index is not None:  # excluded dst ids must be candidates
            exclude = exclude[:, torch.isin(exclude[1], dst_index)]
        out = model.recommend(edge_index, src_index=src_index, dst_index=dst_index, k=k,
                              sorted=sorted_, exclude=exclude, chunk_size=chunk_size)
        values, ids, full = brute_force_recommend(model.get_embedding(edge_index).detach(),
                                                  src_index, dst_index, k, exclude)
        num_src = num_nodes if src is None else len(src)
        assert out.shape == (num_src, k)
        # Places only excluded candidates could fill are -1 (their score -inf).
        filled = out >= 0
        assert torch.equal(filled.sum(dim=1), torch.isfinite(values).sum(dim=1))
        got = full.gather(1, out.clamp(min=0)).masked_fill(~filled, float("-inf"))
        if not sorted_:
            got = got.sort(dim=1, descending=True).values
        torch.testing.assert_close(got, values)
        finite = torch.isfinite(values).all(dim=1)  # rows with k unexcluded candidates
        if sorted_:
            assert torch.equal(out[finite], ids[finite])
        allowed = torch.arange(num_nodes) if dst_index is None else dst_index
        assert torch.isin(out[filled], allowed).all()


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
