"""lightgcn_ext.evaluation: recall@k, ndcg@k, precision@k, hit@k and the popularity baseline.

Checked against a brute-force reference written here in plain Python loops (every score,
every mask, a full sort per user), against hand-computed cases, and against
torch_geometric.metrics on the same top-k lists; plus the bounded memory of the chunks and
the errors on bad input.
"""
import math
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightgcn_ext.evaluation import metrics, popularity_baseline, ranking_metrics

NAMES = ("recall", "ndcg", "precision", "hit")


# ------------------------------------------------------------ the brute-force reference


def reference_rankings(scores, exclude_pairs, num_items):
    """{user: every item, unseen ones first by (score desc, id asc), then the excluded
    ones by id}, for every user (scores: a list of lists of Python numbers)."""
    excluded = defaultdict(set)
    for u, i in exclude_pairs:
        excluded[u].add(i)
    out = {}
    for u, row in enumerate(scores):
        unseen = [i for i in range(num_items) if i not in excluded[u]]
        unseen.sort(key=lambda i: (-row[i], i))
        out[u] = unseen + sorted(excluded[u])
    return out, excluded


def reference_metrics(scores, test_pairs, exclude_pairs, ks):
    """The paper's metrics, one user at a time, from a dense score matrix."""
    num_items = len(scores[0])
    rankings, excluded = reference_rankings(scores, exclude_pairs, num_items)
    test = defaultdict(set)
    for u, i in test_pairs:
        test[u].add(i)
    users = sorted(test)
    out = {f"{name}@{k}": 0.0 for k in ks for name in NAMES}
    for u in users:
        for k in ks:
            top = rankings[u][:k]
            rel = [1 if (i in test[u] and i not in excluded[u]) else 0 for i in top]
            hits = sum(rel)
            dcg = sum(r / math.log2(p + 2) for p, r in enumerate(rel))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(len(test[u]), k)))
            out[f"recall@{k}"] += hits / len(test[u])
            out[f"precision@{k}"] += hits / k
            out[f"ndcg@{k}"] += dcg / idcg
            out[f"hit@{k}"] += 1.0 if hits > 0 else 0.0
    out = {key: value / len(users) for key, value in out.items()}
    out["num_users"] = len(users)
    return out


def dense_scores(user_emb, item_emb):
    """user_emb @ item_emb.T as lists of Python numbers (exact for integer embeddings)."""
    u, v = user_emb.double().tolist(), item_emb.double().tolist()
    return [[sum(a * b for a, b in zip(x, y)) for y in v] for x in u]


def pairs_list(pairs):
    return list(zip(pairs[0].tolist(), pairs[1].tolist()))


def assert_metrics_equal(got, expected, rel=1e-9, abs=1e-12):
    assert set(got) == set(expected)
    assert got["num_users"] == expected["num_users"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=rel, abs=abs), key


def random_data(seed, num_users=23, num_items=40, d=5, n_test=60, n_exclude=150,
                integer=False, dtype=torch.float64):
    """Embeddings, test pairs (with duplicates, users without any) and exclude pairs
    (overlapping test a little, one user left with 3 unseen items)."""
    g = torch.Generator().manual_seed(seed)
    if integer:  # exact scores in every dtype, and many ties
        user_emb = torch.randint(-2, 3, (num_users, d), generator=g).to(dtype)
        item_emb = torch.randint(-2, 3, (num_items, d), generator=g).to(dtype)
    else:
        user_emb = torch.randn(num_users, d, generator=g, dtype=torch.float64).to(dtype)
        item_emb = torch.randn(num_items, d, generator=g, dtype=torch.float64).to(dtype)
    test_users = torch.randperm(num_users, generator=g)[: num_users * 2 // 3]
    test = torch.stack([test_users[torch.randint(0, len(test_users), (n_test,), generator=g)],
                        torch.randint(0, num_items, (n_test,), generator=g)])
    train = torch.stack([torch.randint(0, num_users, (n_exclude,), generator=g),
                         torch.randint(0, num_items, (n_exclude,), generator=g)])
    crowded = int(test[0, 0])  # a test user with only 3 unseen items
    crowded_items = torch.arange(3, num_items)
    valid = torch.stack([torch.full_like(crowded_items, crowded), crowded_items])
    return user_emb, item_emb, test, [train, valid]


# ------------------------------------------------------------ against the reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("integer", [False, True], ids=["randn", "integer-ties"])
@pytest.mark.parametrize("with_exclude", [False, True], ids=["no-exclude", "exclude"])
def test_matches_brute_force(dtype, integer, with_exclude):
    user_emb, item_emb, test, exclude = random_data(1 + integer, integer=integer, dtype=dtype)
    exclude = exclude if with_exclude else []
    ks = (1, 3, 5, 20, 40)
    expected = reference_metrics(dense_scores(user_emb, item_emb), pairs_list(test),
                                 [p for e in exclude for p in pairs_list(e)], ks)
    for chunk_size in (1, 3, user_emb.size(0), None):
        got = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=ks,
                              chunk_size=chunk_size)
        assert_metrics_equal(got, expected)
    assert list(got) == [f"{n}@{k}" for k in ks for n in NAMES] + ["num_users"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_embeddings(dtype):
    """Small integer embeddings are exact in half precision; scores are float32."""
    user_emb, item_emb, test, exclude = random_data(3, integer=True, dtype=dtype)
    expected = reference_metrics(dense_scores(user_emb, item_emb), pairs_list(test),
                                 [p for e in exclude for p in pairs_list(e)], (2, 10))
    got = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=(2, 10), chunk_size=4)
    assert_metrics_equal(got, expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_matches_brute_force_property(data):
    """Tiny random cases, small integer scores (ties everywhere), any chunk size."""
    num_users = data.draw(st.integers(1, 6), "num_users")
    num_items = data.draw(st.integers(1, 8), "num_items")
    d = data.draw(st.integers(1, 3), "d")
    value = st.integers(-2, 2)
    user_emb = torch.tensor(data.draw(st.lists(st.lists(value, min_size=d, max_size=d),
                                               min_size=num_users, max_size=num_users)),
                            dtype=torch.float32)
    item_emb = torch.tensor(data.draw(st.lists(st.lists(value, min_size=d, max_size=d),
                                               min_size=num_items, max_size=num_items)),
                            dtype=torch.float32)
    pair = st.tuples(st.integers(0, num_users - 1), st.integers(0, num_items - 1))
    test = data.draw(st.lists(pair, min_size=1, max_size=20), "test")
    exclude = data.draw(st.lists(st.lists(pair, max_size=30), max_size=2), "exclude")
    ks = data.draw(st.lists(st.integers(1, num_items), min_size=1, max_size=3, unique=True))
    chunk_size = data.draw(st.one_of(st.none(), st.integers(1, 7)), "chunk_size")
    as_tensor = lambda pairs: torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).t()
    got = ranking_metrics(user_emb, item_emb, as_tensor(test),
                          exclude=[as_tensor(e) for e in exclude],
                          ks=ks, chunk_size=chunk_size)
    expected = reference_metrics(dense_scores(user_emb, item_emb), test,
                                 [p for e in exclude for p in e], ks)
    assert_metrics_equal(got, expected)


def test_topk_breaks_ties_towards_lower_id():
    """The ranking inside a chunk is exactly a stable descending sort's, -inf included."""
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(-3, 3, (50, 30), generator=g).float()
    scores[scores == -3] = float("-inf")
    for k in (1, 2, 7, 30):
        expected = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(metrics._topk_lowest_id(scores, k), expected)


# ------------------------------------------------------------ hand-computed cases


def test_hand_computed():
    # One score dimension: users 0, 1, 3 rank items 0 > 1 > 2 > 3 > 4, user 2 the reverse.
    user_emb = torch.tensor([[1.0], [1.0], [-1.0], [1.0]])
    item_emb = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    test = torch.tensor([[0, 0, 1, 2], [1, 3, 0, 0]])  # user 3 has no test item
    train = torch.tensor([[0, 2, 3], [0, 4, 1]])
    # user 0: ranks 1, 2, 3, 4 (0 excluded), test {1, 3}; user 1: ranks 0, 1, ..., test {0};
    # user 2: ranks 3, 2, 1, 0 (4 excluded), test {0}: never in the top 3.
    got = ranking_metrics(user_emb, item_emb, test, exclude=[train], ks=(1, 2, 3))
    i2 = 1 + 1 / math.log2(3)  # IDCG of two hits
    expected = {
        "recall@1": (0.5 + 1 + 0) / 3, "precision@1": (1 + 1 + 0) / 3,
        "ndcg@1": (1 + 1 + 0) / 3, "hit@1": 2 / 3,
        "recall@2": (0.5 + 1 + 0) / 3, "precision@2": (0.5 + 0.5 + 0) / 3,
        "ndcg@2": (1 / i2 + 1 + 0) / 3, "hit@2": 2 / 3,
        "recall@3": (1 + 1 + 0) / 3, "precision@3": (2 / 3 + 1 / 3 + 0) / 3,
        "ndcg@3": ((1 + 1 / math.log2(4)) / i2 + 1 + 0) / 3, "hit@3": 2 / 3,
        "num_users": 3,
    }
    assert_metrics_equal(got, expected, rel=1e-12)


def test_hand_computed_ties_go_to_lower_ids():
    user_emb, item_emb = torch.zeros(2, 3), torch.zeros(4, 3)  # every score 0: ids 0, 1, 2, 3
    test = torch.tensor([[0, 1], [2, 2]])
    exclude = torch.tensor([[1], [0]])  # user 1 ranks 1, 2, 3
    got = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=(2, 3))
    assert got["hit@2"] == 0.5 and got["recall@2"] == 0.5 and got["precision@2"] == 0.25
    assert got["ndcg@2"] == pytest.approx((0 + 1 / math.log2(3)) / 2)
    assert got["recall@3"] == 1 and got["precision@3"] == pytest.approx(1 / 3)
    assert got["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 2)


def test_hand_computed_fewer_candidates_than_k_and_excluded_test_items():
    user_emb, item_emb = torch.ones(1, 1), torch.tensor([[3.0], [2.0], [1.0]])
    exclude = [torch.tensor([[0, 0], [0, 1]])]  # only item 2 is left to rank
    # The two places item 2 cannot fill are never hits.
    got = ranking_metrics(user_emb, item_emb, torch.tensor([[0], [2]]), exclude=exclude, ks=(3,))
    assert got == {"recall@3": 1.0, "ndcg@3": 1.0, "precision@3": 1 / 3, "hit@3": 1.0,
                   "num_users": 1}
    # Test item 1 is excluded: never a hit, but it counts in the denominators.
    got = ranking_metrics(user_emb, item_emb, torch.tensor([[0, 0], [1, 2]]), exclude=exclude,
                          ks=(3,))
    assert got == pytest.approx({"recall@3": 0.5, "ndcg@3": 1 / (1 + 1 / math.log2(3)),
                                 "precision@3": 1 / 3, "hit@3": 1.0, "num_users": 1})


def test_duplicate_pairs_count_once_and_input_forms():
    user_emb, item_emb = torch.ones(2, 1), torch.tensor([[2.0], [1.0], [0.0]])
    test = torch.tensor([[0, 0, 0], [0, 0, 2]])
    got = ranking_metrics(user_emb, item_emb, test, ks=1)  # an int k
    assert got == {"recall@1": 0.5, "ndcg@1": 1.0, "precision@1": 1.0, "hit@1": 1.0,
                   "num_users": 1}
    exclude = torch.tensor([[0, 0], [0, 0]])
    one = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=[2])  # one tensor
    assert one == ranking_metrics(user_emb, item_emb, test.int(), exclude=[exclude, exclude],
                                  ks=(2, 2))
    assert (ranking_metrics(user_emb, item_emb, test, exclude=None, ks=(2,))
            == ranking_metrics(user_emb, item_emb, test, ks=(2,)))


def test_embeddings_that_require_grad():
    user_emb = torch.randn(4, 3, requires_grad=True)
    item_emb = torch.randn(6, 3, requires_grad=True)
    got = ranking_metrics(user_emb, item_emb, torch.tensor([[0, 3], [1, 5]]), ks=(2,))
    assert got["num_users"] == 2 and user_emb.grad is None


# ------------------------------------------------------------ torch_geometric


def test_matches_torch_geometric():
    """PyG's LinkPred* metrics on the same top-k lists and the same ground truth.

    Where PyG's definitions differ (read in torch_geometric/metrics/link_pred.py), the data
    avoids the difference:
    * PyG counts a row only if it has a label (`total += (label_count > 0).sum()`) and sums
      the metric over all rows; a row without labels has no hits, so feeding every user
      gives the same mean over test users as ours (checked: all users are fed here).
    * PyG knows nothing of excluded items: a place that only excluded items could fill
      would be a hit for PyG if that item were also a test item; we never count it. So
      test and exclude are disjoint here (the crowded user's fillers are never hits).
    * PyG counts a duplicated label pair twice (label_count: the recall denominator and
      the IDCG); we count it once. The labels given to PyG are deduplicated.
    * NDCG's IDCG (idcg[min(label_count, k)]), recall (hits / label_count), precision
      (hits / k) and the hit ratio (any hit) are then ours; PyG computes them in float32.
    """
    tgm = pytest.importorskip("torch_geometric.metrics")
    user_emb, item_emb, test, exclude = random_data(7, num_users=31, num_items=60, n_test=90)
    exclude = torch.cat(exclude, dim=1)
    test_keys = test[0] * 60 + test[1]
    exclude = exclude[:, ~torch.isin(exclude[0] * 60 + exclude[1], test_keys)]
    labels = torch.unique(test_keys)
    labels = torch.stack([labels // 60, labels % 60])
    ks = (1, 5, 20)
    rankings, _ = reference_rankings(dense_scores(user_emb, item_emb), pairs_list(exclude), 60)
    top = torch.tensor([rankings[u][:max(ks)] for u in range(user_emb.size(0))])
    # ranking_metrics() ranks exactly so (test_topk_breaks_ties_towards_lower_id, the references).
    scores = user_emb @ item_emb.t()
    scores[exclude[0], exclude[1]] = float("-inf")
    assert torch.equal(metrics._topk_lowest_id(scores, max(ks)), top)

    got = ranking_metrics(user_emb, item_emb, test, exclude=[exclude], ks=ks, chunk_size=4)
    classes = {"recall": tgm.LinkPredRecall, "ndcg": tgm.LinkPredNDCG,
               "precision": tgm.LinkPredPrecision,
               "hit": getattr(tgm, "LinkPredHitRatio", None)}
    compared = 0
    for k in ks:
        for name, cls in classes.items():
            if cls is None:
                continue
            metric = cls(k=k)
            for rows in torch.arange(user_emb.size(0)).split(8):  # PyG accumulates batches
                batch = labels[:, torch.isin(labels[0], rows)]
                local = torch.stack([batch[0] - rows[0], batch[1]])
                metric.update(top[rows][:, :k], local)
            assert got[f"{name}@{k}"] == pytest.approx(float(metric.compute()), abs=1e-6)
            compared += 1
    assert compared >= 9


# ------------------------------------------------------------ bounded memory, host reads


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest tensor made by any op called from Python, the shapes of the matrix
    products, and the (users, block_rows) of each score_topk_unseen call (whose blocks'
    products, made inside the op, it does not see)."""

    def __init__(self):
        super().__init__()
        self.max_numel, self.products, self.fused_calls = 0, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.matmul,
                                   torch.ops.aten.addmm, torch.ops.aten.bmm,
                                   torch.ops.mkldnn._linear_pointwise):
            self.products.append(tuple(out.shape))
        if func.overloadpacket is torch.ops.lightgcn_ext.score_topk_unseen:
            self.fused_calls.append((args[0].size(0), args[5]))
        return out


@pytest.mark.parametrize("fused", [True, False], ids=["score_topk_unseen", "torch-topk"])
@pytest.mark.parametrize("default", [False, True], ids=["chunk_size=2", "default-chunk"])
def test_chunks_never_build_the_whole_matrix(monkeypatch, default, fused):
    monkeypatch.setattr(metrics, "_fused_topk", lambda device: fused)
    num_users, num_items = 40, 3000
    g = torch.Generator().manual_seed(3)
    # d = 2: the item embedding (and its transposed view) is no larger than 2 users' scores.
    user_emb = torch.randn(num_users, 2, generator=g)
    item_emb = torch.randn(num_items, 2, generator=g)
    test = torch.stack([torch.arange(num_users).repeat(3),
                        torch.randint(0, num_items, (120,), generator=g)])
    train = torch.stack([torch.arange(num_users).repeat(50),
                         torch.randint(0, num_items, (2000,), generator=g)])
    if default:  # the default chunk: about _DEFAULT_CHUNK_ELEMENTS scores, 2 users here
        monkeypatch.setattr(metrics, "_DEFAULT_CHUNK_ELEMENTS", 2 * num_items + 5)
    kwargs = dict(exclude=[train], ks=(10, 50), chunk_size=None if default else 2)
    with _Recorder() as rec:
        got = ranking_metrics(user_emb, item_emb, test, **kwargs)
    # Each chunk, and so each product, scores 2 users; nothing as large as 3 users'
    # scores is ever made.
    if fused:
        assert not rec.products and rec.fused_calls
        assert all(rows == 2 and block_rows >= 2 for rows, block_rows in rec.fused_calls)
        assert len(rec.fused_calls) == num_users // 2
    else:
        assert not rec.fused_calls and rec.products
        assert all(shape == (2, num_items) for shape in rec.products)
        assert len(rec.products) == num_users // 2
    assert rec.max_numel <= 2 * num_items < num_users * num_items
    whole = ranking_metrics(user_emb, item_emb, test, exclude=[train], ks=(10, 50), chunk_size=40)
    assert_metrics_equal(got, whole)


@pytest.mark.parametrize("fused", [True, False], ids=["score_topk_unseen", "torch-topk"])
def test_blocks_of_a_chunk(monkeypatch, fused):
    """A chunk scored in blocks of users ranks as the whole chunk at once, with either
    top-k (the torch path scores a chunk at once; the op, in blocks of block_rows)."""
    monkeypatch.setattr(metrics, "_fused_topk", lambda device: fused)
    user_emb, item_emb, test, exclude = random_data(11, num_users=23, num_items=40,
                                                    integer=True)
    whole = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=(3, 20))
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 3 * 40)  # blocks of 3 users
    with _Recorder() as rec:
        got = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=(3, 20),
                              chunk_size=7)
    count = test[0].unique().numel()
    chunks = [min(7, count - start) for start in range(0, count, 7)]
    if fused:
        assert rec.fused_calls == [(rows, 3) for rows in chunks] and not rec.products
    else:
        assert rec.products == [(rows, 40) for rows in chunks] and not rec.fused_calls
    assert_metrics_equal(got, whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_topk_unseen_op_ranks_as_the_scores_of_the_whole_chunk(dtype):
    """The op's blocks (every block size, a lone last user joining the block before it,
    the blocks on any thread) give the top-k of the chunk's scores made at once, with
    oneDNN's product and with torch's; ties included (integer embeddings)."""
    op = torch.ops.lightgcn_ext.score_topk_unseen
    for integer in (False, True):
        g = torch.Generator().manual_seed(7 + integer)
        users, items = torch.randn(61, 16, generator=g), torch.randn(300, 16, generator=g)
        if integer:
            users, items = users.round(), items.round()
        users, items = users.to(dtype), items.to(dtype)
        mask = torch.rand(61, 300, generator=g) < 0.1
        row, col = mask.nonzero(as_tuple=True)
        rowptr = torch.cat([torch.zeros(1, dtype=torch.long),
                            torch.bincount(row, minlength=61).cumsum(0)])
        expected = torch.ops.lightgcn_ext.topk_unseen(metrics._scores(users, items), rowptr,
                                                      col, 25)
        onednn = metrics._onednn_linear(items)
        for block_rows in (2, 3, 4, 5, 30, 60, 61, 100):
            assert torch.equal(op(users, items, rowptr, col, 25, block_rows, onednn),
                               expected), (integer, block_rows)
        if not integer and dtype == torch.float32:  # torch's product: the same ranking here
            assert torch.equal(op(users, items, rowptr, col, 25, 4, False), expected)
        assert op(users[:0], items, rowptr[:1], col, 25, 4, onednn).shape == (0, 25)


def test_topk_unseen_and_torch_topk_give_the_same_sums(monkeypatch):
    """The op and the torch path (masked scores, _topk_lowest_id) give the same metric
    sums to the last bit, on data with many ties (integer scores) and on random floats."""
    for integer in (True, False):
        user_emb, item_emb, test, exclude = random_data(12 + integer, num_users=60,
                                                        num_items=80, integer=integer)
        sums = {}
        for fused in (True, False):
            monkeypatch.setattr(metrics, "_fused_topk", lambda device, fused=fused: fused)
            sums[fused] = metrics.metric_sums(user_emb, item_emb, test, exclude=exclude,
                                              ks=(1, 5, 20, 80), chunk_size=16)[0]
        assert torch.equal(sums[True], sums[False])


def test_topk_unseen_op_is_a_stable_sort_of_the_unseen_items():
    """The op's order: score descending, then lower id, excluded items as -inf (so they
    come last, lowest ids first, when fewer than k items are unseen); -inf scores,
    -0.0 against 0.0, float64, offsets that do not start at 0."""
    op = torch.ops.lightgcn_ext.topk_unseen
    g = torch.Generator().manual_seed(6)
    for trial in range(300):
        rows = int(torch.randint(1, 6, (1,), generator=g))
        n = int(torch.randint(1, 50, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        dtype = (torch.float32, torch.float64)[trial % 2]
        scores = torch.randint(-3, 3, (rows, n), generator=g).to(dtype)
        scores[scores == -3] = float("-inf")
        scores[scores == 0] = torch.where(torch.rand(int((scores == 0).sum()), generator=g)
                                          < 0.5, -0.0, 0.0).to(dtype)
        mask = torch.rand(rows, n, generator=g) < 0.4
        row, col = mask.nonzero(as_tuple=True)
        offset = int(torch.randint(0, 4, (1,), generator=g))
        col = torch.cat([torch.zeros(offset, dtype=torch.long), col])
        rowptr = offset + torch.cat([torch.zeros(1, dtype=torch.long),
                                     torch.bincount(row, minlength=rows).cumsum(0)])
        masked = scores.masked_fill(mask, float("-inf"))
        expected = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(op(scores, rowptr, col, k), expected), trial


@pytest.mark.parametrize("args, match", [
    (lambda s, p, c: (s.long(), p, c, 2), "scores must be a 2-D float32 or float64"),
    (lambda s, p, c: (s, p, c, 0), "k must satisfy 1 <= k"),
    (lambda s, p, c: (s, p, c, 6), "k must satisfy 1 <= k"),
    (lambda s, p, c: (s, p[:-1], c, 2), "exclude_rowptr must be a 1-D int64 tensor of"),
    (lambda s, p, c: (s, p + 1, c, 2), "exclude_rowptr must lie within"),
    (lambda s, p, c: (s, p.flip(0), c, 2), "must be non-decreasing"),
    (lambda s, p, c: (s, torch.tensor([0, 2, 1, 3]), c, 2), "must be non-decreasing"),
    (lambda s, p, c: (s, p, c.flip(0), 2), "strictly ascending within a row"),
    (lambda s, p, c: (s, p, c.int(), 2), "exclude_col must be a 1-D int64"),
])
def test_topk_unseen_op_bad_input(args, match):
    scores = torch.zeros(3, 5)
    rowptr, col = torch.tensor([0, 0, 3, 3]), torch.tensor([0, 2, 4])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.lightgcn_ext.topk_unseen(*args(scores, rowptr, col))


@pytest.mark.parametrize("args, match", [
    (lambda u, i, p, c: (u.long(), i, p, c, 2, 2, False), "users and items must be 2-D"),
    (lambda u, i, p, c: (u, i.double(), p, c, 2, 2, False), "users and items must be 2-D"),
    (lambda u, i, p, c: (u, i[:, :2], p, c, 2, 2, False), "users and items must be 2-D"),
    (lambda u, i, p, c: (u, i, p, c, 6, 2, False), "k must satisfy 1 <= k <= items.size"),
    (lambda u, i, p, c: (u, i, p, c, 2, 1, False), "block_rows must be at least 2"),
    (lambda u, i, p, c: (u, i, p[:-1], c, 2, 2, False), "tensor of users.size"),
    (lambda u, i, p, c: (u, i, p, c.flip(0), 2, 2, False), "strictly ascending within a row"),
])
def test_score_topk_unseen_op_bad_input(args, match):
    users, items = torch.zeros(3, 4), torch.zeros(5, 4)
    rowptr, col = torch.tensor([0, 0, 3, 3]), torch.tensor([0, 2, 4])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.lightgcn_ext.score_topk_unseen(*args(users, items, rowptr, col))


def test_topk_unseen_ops_opcheck():
    scores = torch.randn(4, 9, dtype=torch.float64)
    rowptr, col = torch.tensor([0, 1, 1, 3, 4]), torch.tensor([3, 0, 8, 2])
    torch.library.opcheck(torch.ops.lightgcn_ext.topk_unseen.default, (scores, rowptr, col, 3))
    users, items = torch.randn(4, 3), torch.randn(9, 3)
    torch.library.opcheck(torch.ops.lightgcn_ext.score_topk_unseen.default,
                          (users, items, rowptr, col, 3, 2, metrics._onednn_linear(items)))


@pytest.mark.parametrize("rows", [2, 3, 4, 5, 7, 9, 64, 409])
def test_block_scores_do_not_depend_on_the_block(rows):
    """A user's scores are the same bits in a block of any number of rows (>= 2) as in
    the whole chunk: the blocks cannot change the ranking, so every metric is that of
    the chunk scored at once."""
    g = torch.Generator().manual_seed(rows)
    users = torch.randn(409, 64, generator=g)
    items = torch.randn(3001, 64, generator=g)
    whole = metrics._scores(users, items)
    assert torch.allclose(whole, users @ items.t(), rtol=1e-5, atol=1e-4)
    for start in (0, 409 - rows):
        assert torch.equal(metrics._scores(users[start:start + rows], items),
                           whole[start:start + rows])


def test_host_reads_do_not_grow_with_the_number_of_chunks(monkeypatch):
    """The chunks read nothing back from the device: the number of reads (.tolist(),
    .item(), bool(), and the ops that sync a GPU) is the same for 1 chunk and for 20."""
    counts = defaultdict(int)
    for method in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__",
                   "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            counts["reads"] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, method, counted)

    class SyncingOps(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.nonzero, torch.ops.aten._local_scalar_dense,
                                       torch.ops.aten.masked_select):
                counts["syncs"] += 1
            return func(*args, **(kwargs or {}))

    user_emb, item_emb, test, exclude = random_data(9, num_users=40, num_items=50)
    reads = []
    for chunk_size in (40, 2):
        counts.clear()
        with SyncingOps():
            ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=(5,),
                            chunk_size=chunk_size)
        reads.append(dict(counts))
    assert reads[0] == reads[1]
    assert reads[0]["reads"] <= 10


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    user_emb, item_emb, test, exclude = random_data(4, integer=True, dtype=torch.float32)
    cpu = ranking_metrics(user_emb, item_emb, test, exclude=exclude, ks=(3, 10), chunk_size=3)
    cuda = ranking_metrics(user_emb.cuda(), item_emb.cuda(), test, exclude=exclude, ks=(3, 10),
                           chunk_size=3)
    assert_metrics_equal(cuda, cpu)


# ------------------------------------------------------------ popularity baseline


def reference_popularity(train_pairs, num_items, test_pairs, exclude_pairs, ks):
    users_of = defaultdict(set)
    for u, i in train_pairs:
        users_of[i].add(u)
    popularity = [len(users_of[i]) for i in range(num_items)]
    num_users = 1 + max(u for u, _ in train_pairs + test_pairs)
    scores = [popularity for _ in range(num_users)]  # the same ranking for every user
    return reference_metrics(scores, test_pairs, train_pairs + exclude_pairs, ks)


def test_popularity_baseline_matches_brute_force():
    g = torch.Generator().manual_seed(8)
    num_users, num_items = 30, 25
    # Skewed popularity, with duplicated training pairs and many equal counts.
    items = (torch.rand(200, generator=g) ** 3 * num_items).long()
    train = torch.stack([torch.randint(0, num_users, (200,), generator=g), items])
    test = torch.stack([torch.randint(0, num_users - 5, (50,), generator=g),
                        torch.randint(0, num_items, (50,), generator=g)])
    valid = torch.stack([torch.randint(0, num_users, (30,), generator=g),
                         torch.randint(0, num_items, (30,), generator=g)])
    ks = (1, 5, 10)
    got = popularity_baseline(train, num_users, num_items, test, exclude=[valid], ks=ks)
    expected = reference_popularity(pairs_list(train), num_items, pairs_list(test),
                                    pairs_list(valid), ks)
    assert_metrics_equal(got, expected)
    # Without valid, and valid given as one tensor.
    assert_metrics_equal(popularity_baseline(train, num_users, num_items, test, ks=ks),
                         reference_popularity(pairs_list(train), num_items, pairs_list(test),
                                              [], ks))
    assert popularity_baseline(train, num_users, num_items, test, exclude=valid, ks=ks) == got


def test_popularity_baseline_hand_computed():
    # Item counts 3, 1, 2, 0 (user 0's duplicated pair counts once): the order 0, 2, 1, 3.
    train = torch.tensor([[0, 1, 2, 0, 0, 1, 2], [0, 0, 0, 1, 1, 2, 2]])
    test = torch.tensor([[0, 1, 2], [2, 1, 3]])
    got = popularity_baseline(train, 3, 4, test, ks=(1, 2))
    # user 0 (0, 1 seen) ranks 2, 3: a hit at 1; user 1 (0, 2 seen) ranks 1, 3: a hit at 1;
    # user 2 (0, 2 seen) ranks 1, 3: a hit at 2.
    assert got == pytest.approx({
        "recall@1": 2 / 3, "ndcg@1": 2 / 3, "precision@1": 2 / 3, "hit@1": 2 / 3,
        "recall@2": 1.0, "ndcg@2": (2 + 1 / math.log2(3)) / 3, "precision@2": 0.5,
        "hit@2": 1.0, "num_users": 3})
    # Equal counts go to the lower id: with item 2 seen by one user, items 1 and 2 tie.
    got = popularity_baseline(train[:, :-1], 3, 4, torch.tensor([[2], [2]]), ks=(2,))
    assert got["ndcg@2"] == pytest.approx(1 / math.log2(3))  # user 2 ranks 1, 2, 3


# ------------------------------------------------------------ bad input


def _good():
    return torch.randn(4, 3), torch.randn(5, 3), torch.tensor([[0, 1], [2, 4]])


@pytest.mark.parametrize("change, error, match", [
    (dict(ks=(0,)), ValueError, r"k=0 .*num_items=5"),
    (dict(ks=(6,)), ValueError, r"k=6 .*num_items=5"),
    (dict(ks=(5, -1)), ValueError, r"k=-1 .*num_items=5"),
    (dict(ks=()), ValueError, r"ks is empty"),
    (dict(ks=(2.5,)), TypeError, r"k of ks must be an int"),
    (dict(test=torch.tensor([[0.0], [1.0]])), TypeError, r"test must be an integer"),
    (dict(test=torch.tensor([[True], [False]])), TypeError, r"test must be an integer"),
    (dict(test=torch.tensor([0, 1])), ValueError, r"test must have shape \[2, m\]"),
    (dict(test=torch.zeros(3, 2, dtype=torch.long)), ValueError, r"test must have shape"),
    (dict(test=[[0], [1]]), TypeError, r"test must be a \[2, m\] integer tensor"),
    (dict(test=torch.tensor([[4], [0]])), ValueError, r"test has user id 4 >= num_users=4"),
    (dict(test=torch.tensor([[0], [9]])), ValueError,
     r"test has item id 9 >= num_items=5.*item-local"),
    (dict(test=torch.tensor([[0], [-1]])), ValueError, r"test has a negative item id"),
    (dict(test=torch.zeros(2, 0, dtype=torch.long)), ValueError, r"nothing to evaluate"),
    (dict(exclude=[torch.tensor([[0], [1]]), torch.tensor([[0, 1, 2]])]), ValueError,
     r"exclude\[1\] must have shape \[2, m\]"),
    (dict(exclude=[torch.tensor([[0.5], [1.0]])]), TypeError, r"exclude\[0\] must be an integer"),
    (dict(exclude=[torch.tensor([[0], [5]])]), ValueError,
     r"exclude\[0\] has item id 5 >= num_items=5"),
    (dict(exclude=[torch.tensor([[7], [0]])]), ValueError,
     r"exclude\[0\] has user id 7 >= num_users=4"),
    (dict(exclude=3), TypeError, r"exclude must be a sequence"),
    (dict(item_emb=torch.randn(5, 2)), ValueError, r"same embedding size"),
    (dict(item_emb=torch.randn(5, 3, device="meta")), ValueError, r"same device"),
    (dict(user_emb=torch.randn(12)), ValueError, r"user_emb must be 2-D"),
    (dict(user_emb=torch.ones(4, 3, dtype=torch.long)), TypeError, r"user_emb must be a float"),
    (dict(item_emb="items"), TypeError, r"item_emb must be a 2-D float tensor"),
    (dict(item_emb=torch.full((5, 3), float("nan"))), ValueError, r"item_emb has non-finite"),
    (dict(chunk_size=0), ValueError, r"chunk_size must be a positive int"),
])
def test_bad_input(change, error, match):
    user_emb, item_emb, test = _good()
    kwargs = dict(user_emb=user_emb, item_emb=item_emb, test=test, ks=(2,))
    kwargs.update(change)
    with pytest.raises(error, match=match):
        ranking_metrics(kwargs.pop("user_emb"), kwargs.pop("item_emb"), kwargs.pop("test"),
                        **kwargs)


@pytest.mark.parametrize("args, error, match", [
    ((torch.tensor([[0], [5]]), 4, 5), ValueError, r"train has item id 5 >= num_items=5"),
    ((torch.tensor([[0], [1]]), 0, 5), ValueError, r"num_users must be a positive int"),
    ((torch.tensor([[0], [1]]), 4, 2.0), TypeError, r"num_items must be a positive int"),
    ((torch.tensor([0, 1]), 4, 5), ValueError, r"train must have shape"),
])
def test_popularity_baseline_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        popularity_baseline(*args, torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match=r"k=6 .*num_items=5"):
        popularity_baseline(torch.tensor([[0], [1]]), 4, 5, torch.tensor([[0], [2]]), ks=(6,))
