r"""Top-k evaluation metrics of LightGCN: recall@k, ndcg@k, precision@k, hit@k.

The definitions are those of the LightGCN paper's code (gusye1234/LightGCN-PyTorch,
``code/utils.py`` and ``code/Procedure.py``), over the full item ranking:

* the **test users** are the users with at least one test item; only they are counted, and
  every metric is the mean over them;
* each test user's items are ranked by ``score = <user_emb[u], item_emb[i]>``, the user's
  excluded items (training, validation) removed; ``top_k`` are the first ``k`` of them;
* with ``hits = |top_k ∩ test items of u|``:
  ``recall@k = hits / |test items of u|``, ``precision@k = hits / k``,
  ``hit@k = 1 if hits > 0 else 0``, and ``ndcg@k = DCG / IDCG`` with binary relevance,
  ``DCG = sum_{i < k} rel_i / log2(i + 2)`` over the ranked top-k (``i`` 0-based) and
  ``IDCG`` the same sum for ``min(|test items of u|, k)`` hits in the first places.

Details where the paper's code leaves things open, or would do something odd:

* **ties** are broken towards the lower item id, the same on every device and for every
  chunk size (``torch.topk`` alone leaves the order of equal scores unspecified). This
  matters for :func:`popularity_baseline`, where many items have equal counts.
* **fewer than k candidates**: a user whose excluded items leave fewer than ``k`` unseen
  items fills the remaining places with excluded items (lowest ids first), which can never
  be hits; recall and ndcg are then bounded below 1, and precision still divides by ``k``.
* **an excluded item that is also a test item** (the paper's data has none): excluded
  wins. It is never ranked, so it can never be a hit, but it still counts in
  ``|test items of u|`` (the denominators of recall and the IDCG), as in the paper's code,
  whose ground truth is the whole test list.
* **duplicate pairs** in ``test`` or ``exclude`` count once.
* scores are computed in ``float32`` for ``float16``/``bfloat16`` embeddings, and in the
  embeddings' dtype otherwise.

Memory stays bounded: the test users are taken in chunks of ``chunk_size`` users, and a
chunk is scored in blocks of at most about ``2**22`` scores (16 MB in float32), never the
whole ``num_users x num_items`` matrix. On CPU one op (``lightgcn_ext::score_topk_unseen``)
takes a chunk: its blocks are spread over torch's threads, each scored by one thread
(the same product as :func:`_scores`) and passed at once to a one-pass top-k (excluded
items skipped through their sorted list), so that at most a block's scores per thread
exist and nothing else of a block's size is made; on other devices the excluded scores
are set to ``-inf`` and the top-k is torch's. Either way the ranking is exactly the same. Everything runs on the embeddings' device; the
chunks need no host read at all (the sums stay on the device until the end), only the
checks of the inputs before them do.
"""
import torch
from torch import Tensor

from .. import validation

__all__ = ["ranking_metrics", "metric_sums", "metrics_of_sums", "popularity_baseline",
           "test_users"]

# A chunk's score matrix holds about this many entries when chunk_size is None.
_DEFAULT_CHUNK_ELEMENTS = 1 << 24
# The scores one thread makes at once: a block of a chunk's users (at least 2, see _scores).
_BLOCK_ELEMENTS = 1 << 22
_METRICS = ("recall", "ndcg", "precision", "hit")


def ranking_metrics(user_emb, item_emb, test, *, exclude=(), ks=(20,), chunk_size=None) -> dict:
    r"""recall@k, ndcg@k, precision@k and hit@k of ranking every item for each test user.

    Args:
        user_emb: ``[num_users, d]`` float tensor, any float dtype, any device.
        item_emb: ``[num_items, d]`` float tensor on the same device; the scores are
            ``user_emb @ item_emb.T``.
        test: ``[2, m]`` integer tensor of (user, item) pairs, item ids **item-local**
            (``0 <= item < num_items``, not offset by ``num_users`` as node ids are).
            A user with no test pair is not counted.
        exclude: a sequence of ``[2, *]`` tensors of (user, item) pairs (e.g. train, valid)
            whose items are never ranked for that user (a single ``[2, *]`` tensor is also
            accepted). An excluded pair that is also a test pair can never be a hit, but
            counts in the user's number of test items.
        ks: the cut-offs, each ``1 <= k <= num_items`` (an int is also accepted). A user
            left with fewer than ``k`` unseen items fills the remaining places with
            excluded items, which are never hits.
        chunk_size: the number of users scored at once (default: about
            ``2**24 / num_items``, a score matrix of about ``2**24`` entries). Memory is
            ``O(chunk_size * num_items)``.

    Returns:
        ``{"recall@k": float, "ndcg@k": float, "precision@k": float, "hit@k": float}`` for
        each ``k`` of ``ks``, and ``"num_users"``: the number of test users averaged over.

    Ties are broken towards the lower item id. See the module's docstring for the exact
    definitions (those of the LightGCN paper's code).
    """
    sums, count, ks = metric_sums(user_emb, item_emb, test, exclude=exclude, ks=ks,
                                  chunk_size=chunk_size)
    if count == 0:
        raise ValueError("test is empty (shape [2, 0]): nothing to evaluate")
    return metrics_of_sums(sums, count, ks)


def metric_sums(user_emb, item_emb, test, *, exclude=(), ks=(20,), chunk_size=None):
    """What :func:`ranking_metrics` averages, before the average: ``(sums, count, ks)``,
    ``sums`` a ``[len(ks), 4]`` float64 tensor of the per-user recall, ndcg,
    precision and hit summed over the ``count`` test users, and the checked
    ``ks``. The sums of disjoint sets of users add up (the distributed
    evaluation adds those of its ranks); an empty ``test`` gives zeros."""
    user_emb, item_emb = _check_embeddings(user_emb, item_emb)
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    ks = _check_ks(ks, num_items)
    chunk_size = _check_chunk_size(chunk_size, num_items)
    device = user_emb.device
    test = _check_pairs(test, "test", num_users, num_items, device)
    excluded = [_check_pairs(e, f"exclude[{i}]", num_users, num_items, device)
                for i, e in enumerate(_exclude_list(exclude))]
    with torch.no_grad():
        sums, count = _evaluate(user_emb, item_emb, test, excluded, ks, chunk_size)
    return sums, count, ks


def metrics_of_sums(sums, count, ks):
    """The metrics dict of :func:`ranking_metrics` from :func:`metric_sums`' output."""
    sums = sums.tolist()  # the one host read of the metrics
    out = {}
    for j, k in enumerate(ks):
        for m, name in enumerate(_METRICS):
            out[f"{name}@{k}"] = sums[j][m] / count
    out["num_users"] = count
    return out


def test_users(test, num_items, exclude=()):
    """(the test users, the test users with a test item that is not excluded):
    how many users an evaluation averages over, and how many of them can
    score above 0 at all. A test item that is also a training item is never
    ranked (see the module's docstring), so a user whose test items all are
    scores 0 on every metric, whatever the model."""
    test = test.to(torch.int64)
    keys = test[0] * num_items + test[1]
    excluded = [pairs.to(torch.int64) for pairs in _exclude_list(exclude)]
    rankable = torch.ones_like(keys, dtype=torch.bool)
    if excluded:
        both = torch.cat(excluded, dim=1).to(keys.device)
        rankable = ~torch.isin(keys, both[0] * num_items + both[1])
    return test[0].unique().numel(), test[0][rankable].unique().numel()


def popularity_baseline(train, num_users, num_items, test, *, exclude=(), ks=(20,)) -> dict:
    r"""The metrics of :func:`ranking_metrics` for the popularity ranking: every user's unseen
    items ranked by their number of training interactions (ties: lower item id first).

    Args:
        train: ``[2, n]`` integer tensor of (user, item) training pairs, item-local ids.
            An item's count is its number of distinct training users (a duplicated pair
            counts once). The training pairs are always excluded from the ranking.
        num_users, num_items: the sizes of the id spaces.
        test, exclude, ks: as in :func:`ranking_metrics` (``exclude`` adds to ``train``, e.g.
            the validation pairs).

    Runs on ``train``'s device, through :func:`ranking_metrics` with a user embedding of ones
    and the item counts as a 1-dimensional item embedding (scores in float64, exact).
    """
    num_users = validation.positive_int(num_users, "num_users")
    num_items = validation.positive_int(num_items, "num_items")
    if not isinstance(train, Tensor):
        raise TypeError(f"train must be a [2, n] integer tensor, got {type(train).__name__}")
    device = train.device
    train = _check_pairs(train, "train", num_users, num_items, device)
    train = _unique_pairs(train, num_items)
    counts = torch.bincount(train[1], minlength=num_items).to(torch.float64)
    user_emb = torch.ones(num_users, 1, dtype=torch.float64, device=device)
    return ranking_metrics(user_emb, counts.view(-1, 1), test,
                           exclude=[train, *_exclude_list(exclude)], ks=ks)


# ----------------------------------------------------------------------------- internals


def _evaluate(user_emb, item_emb, test, excluded, ks, chunk_size):
    """(sums [len(ks), 4] float64 on the device, the number of test users)."""
    device = user_emb.device
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    max_k = max(ks)

    test = _unique_pairs(test, num_items)  # sorted by (user, item)
    test_users, num_test = torch.unique_consecutive(test[0], return_counts=True)
    count = test_users.numel()
    if excluded:
        excl = _unique_pairs(torch.cat(excluded, dim=1), num_items)
    else:
        excl = test.new_empty((2, 0))

    # The test pairs that can be hits (excluded wins), as sorted keys user * num_items + item,
    # with a -1 in front so that searchsorted always has something to land on.
    test_keys = test[0] * num_items + test[1]
    excl_keys = excl[0] * num_items + excl[1]
    hit_keys = test_keys[~torch.isin(test_keys, excl_keys)]
    hit_keys = torch.cat([hit_keys.new_full((1,), -1), hit_keys])

    # The excluded pairs of test users, as (row in test_users, item), sorted by row then
    # item, and each row's offsets into them: the CSR the top-k skips. The chunks' bounds
    # come from one host read here, none per chunk.
    row_of_user = torch.full((num_users,), -1, dtype=torch.long, device=device)
    row_of_user[test_users] = torch.arange(count, device=device)
    excl_rows = row_of_user[excl[0]]
    keep = excl_rows >= 0
    excl_rows, excl_items = excl_rows[keep], excl[1][keep]
    excl_rowptr = torch.searchsorted(excl_rows, torch.arange(count + 1, device=device))
    starts = list(range(0, count, chunk_size))
    bounds = excl_rowptr[starts + [count]].tolist()

    # Discounts 1 / log2(i + 2), i = 0..max_k-1, and the IDCG of n ideal hits at idcg[n - 1].
    discount = 1.0 / torch.arange(2, max_k + 2, dtype=torch.float64, device=device).log2()
    idcg = discount.cumsum(0)

    score_dtype = torch.promote_types(user_emb.dtype, torch.float32)
    items = item_emb.to(score_dtype).contiguous()
    fused = _fused_topk(device)
    block_rows = max(2, _BLOCK_ELEMENTS // num_items)
    sums = torch.zeros(len(ks), len(_METRICS), dtype=torch.float64, device=device)
    for c, start in enumerate(starts):
        stop = min(start + chunk_size, count)
        users = test_users[start:stop]
        if fused:
            top = torch.ops.lightgcn_ext.score_topk_unseen(
                user_emb[users].to(score_dtype), items, excl_rowptr[start:stop + 1], excl_items,
                max_k, block_rows, _onednn_linear(items))
        else:
            scores = _scores(user_emb[users].to(score_dtype), items)  # [B, num_items]
            lo, hi = bounds[c], bounds[c + 1]
            scores[excl_rows[lo:hi] - start, excl_items[lo:hi]] = float("-inf")
            top = _topk_lowest_id(scores, max_k)  # [B, max_k] item ids
            del scores
        keys = (users * num_items).unsqueeze(1) + top
        pos = torch.searchsorted(hit_keys, keys).clamp_(max=hit_keys.numel() - 1)
        rel = (hit_keys[pos] == keys).to(torch.float64)  # [B, max_k]
        n = num_test[start:stop].to(torch.float64)
        cum_hits = rel.cumsum(1)
        cum_dcg = (rel * discount).cumsum(1)
        for j, k in enumerate(ks):
            hits = cum_hits[:, k - 1]
            ideal = idcg[num_test[start:stop].clamp(max=k) - 1]
            sums[j, 0] += (hits / n).sum()
            sums[j, 1] += (cum_dcg[:, k - 1] / ideal).sum()
            sums[j, 2] += hits.sum() / k
            sums[j, 3] += (hits > 0).sum()
    return sums, count


def _fused_topk(device):
    """Whether a chunk is scored and ranked by the score_topk_unseen op (a CPU kernel)
    rather than by _scores and torch's top-k."""
    return device.type == "cpu"


def _scores(users, items):
    """users @ items.T, [B, num_items]. Float32 on CPU goes to oneDNN when torch has it
    (about 1.6x the speed of the default BLAS call on the AMD EPYC measured) for B >= 2
    rows: its scores of a user are then the same bits in a block of any size (tested),
    so the blocks do not change the ranking; on that machine they are also the bits of
    the default call on a whole chunk (bench/bench_evaluate.py checks the metrics).
    A single row keeps the default call (a matrix-vector product, rounded otherwise).
    The score_topk_unseen op makes the same calls in C++, one block per thread."""
    if users.size(0) >= 2 and _onednn_linear(users):
        return torch.ops.mkldnn._linear_pointwise(users, items, None, "none", [], "")
    return users @ items.t()


def _onednn_linear(users):
    return (users.device.type == "cpu" and users.dtype == torch.float32
            and _HAS_ONEDNN_LINEAR)


def _has_onednn_linear():
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 3)
        return torch.equal(torch.ops.mkldnn._linear_pointwise(x, x, None, "none", [], ""),
                           x @ x.t())
    except (AttributeError, RuntimeError):
        return False


_HAS_ONEDNN_LINEAR = _has_onednn_linear()


@torch.library.register_fake("lightgcn_ext::topk_unseen")
def _topk_unseen_fake(scores, exclude_rowptr, exclude_col, k):
    return scores.new_empty((scores.shape[0], k), dtype=torch.int64)


@torch.library.register_fake("lightgcn_ext::score_topk_unseen")
def _score_topk_unseen_fake(users, items, exclude_rowptr, exclude_col, k, block_rows, onednn):
    return users.new_empty((users.shape[0], k), dtype=torch.int64)


def _topk_lowest_id(scores: Tensor, k: int) -> Tensor:
    """The ids of the k largest entries of each row of scores (no NaN), sorted by score,
    ties broken towards the lower id: exactly the first k of a stable descending sort."""
    num_rows, num_cols = scores.shape
    values, index = torch.topk(scores, k, dim=1)  # sorted, descending
    t = values[:, -1:]  # the k-th largest value of each row
    n_gt = (values > t).sum(1, keepdim=True)  # all entries > t are in the top k
    # The lowest ids among the entries equal to t fill the places n_gt..k-1; there are at
    # least k - n_gt of them, which a top-k of -id over the ties finds (keys distinct).
    neg_id = -torch.arange(num_cols, dtype=torch.int32, device=scores.device)
    tie_key = torch.where(scores == t, neg_id, torch.iinfo(torch.int32).min)
    tie_index = torch.topk(tie_key, k, dim=1).indices
    place = torch.arange(k, device=scores.device).expand(num_rows, k)
    from_ties = place >= n_gt
    tie_index = tie_index.gather(1, (place - n_gt).clamp(min=0))
    index = torch.where(from_ties, tie_index, index)
    values = torch.where(from_ties, t, values)
    # Order by (value descending, id ascending): by id, then stably by value.
    index, order = index.sort(dim=1)
    values = values.gather(1, order)
    order = values.sort(dim=1, descending=True, stable=True).indices
    return index.gather(1, order)


def _unique_pairs(pairs: Tensor, num_items: int) -> Tensor:
    """The distinct (user, item) pairs, sorted by user then item, int64."""
    keys = torch.unique(pairs[0] * num_items + pairs[1])  # sorted
    return torch.stack([keys // num_items, keys % num_items])


def _exclude_list(exclude):
    if exclude is None:
        return []
    if isinstance(exclude, Tensor):  # a single [2, n] tensor
        return [exclude]
    try:
        return list(exclude)
    except TypeError:
        raise TypeError(f"exclude must be a sequence of [2, n] integer tensors, got "
                        f"{type(exclude).__name__}") from None


def _check_embeddings(user_emb, item_emb):
    for name, emb in (("user_emb", user_emb), ("item_emb", item_emb)):
        if not isinstance(emb, Tensor):
            raise TypeError(f"{name} must be a 2-D float tensor, got {type(emb).__name__}")
        if not emb.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {emb.dtype}")
        if emb.dim() != 2:
            raise ValueError(f"{name} must be 2-D ([num, d]), got shape {list(emb.shape)}")
    if user_emb.device != item_emb.device:
        raise ValueError(f"user_emb and item_emb must be on the same device, got "
                         f"{user_emb.device} and {item_emb.device}")
    if user_emb.size(1) != item_emb.size(1):
        raise ValueError(f"user_emb and item_emb must have the same embedding size d, got "
                         f"user_emb {list(user_emb.shape)} and item_emb {list(item_emb.shape)}")
    if item_emb.size(0) == 0:
        raise ValueError("item_emb has no items (num_items = 0): nothing to rank")
    if user_emb.dtype != item_emb.dtype:  # score in the wider of the two
        dtype = torch.promote_types(user_emb.dtype, item_emb.dtype)
        user_emb, item_emb = user_emb.to(dtype), item_emb.to(dtype)
    for name, emb in (("user_emb", user_emb), ("item_emb", item_emb)):
        if not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name} has non-finite values (NaN or inf): scores could "
                             f"not be ranked")
    return user_emb.detach(), item_emb.detach()


def _check_ks(ks, num_items):
    if isinstance(ks, Tensor):
        ks = ks.reshape(-1).tolist()
    elif isinstance(ks, int) and not isinstance(ks, bool):
        ks = [ks]
    try:
        ks = list(ks)
    except TypeError:
        raise TypeError(f"ks must be a sequence of ints, got {type(ks).__name__}") from None
    if not ks:
        raise ValueError("ks is empty: give at least one k")
    out = []
    for k in ks:
        k = validation.as_int(k, "each k of ks")
        if not 1 <= k <= num_items:
            raise ValueError(f"k={k} is out of range: each k of ks must satisfy "
                             f"1 <= k <= num_items={num_items}")
        if k not in out:
            out.append(k)
    if num_items >= 2**31:
        raise ValueError(f"num_items={num_items} is too large (at most 2**31 - 1)")
    return out


def _check_chunk_size(chunk_size, num_items):
    if chunk_size is None:
        return max(1, _DEFAULT_CHUNK_ELEMENTS // num_items)
    return validation.positive_int(chunk_size, "chunk_size")


def _check_pairs(pairs, name, num_users, num_items, device):
    """pairs as a [2, m] int64 tensor on device, after checking shape, dtype and ids."""
    if not isinstance(pairs, Tensor):
        raise TypeError(f"{name} must be a [2, m] integer tensor of (user, item) pairs, got "
                        f"{type(pairs).__name__}")
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64) of (user, item) pairs, "
                        f"got dtype {pairs.dtype}")
    if pairs.dim() != 2 or pairs.size(0) != 2:
        raise ValueError(f"{name} must have shape [2, m] (row 0 users, row 1 items), got "
                         f"shape {list(pairs.shape)}")
    pairs = pairs.to(device=device, dtype=torch.long)
    if pairs.size(1) == 0:
        return pairs
    lo, hi = torch.stack([pairs.min(1).values, pairs.max(1).values]).tolist()
    if lo[0] < 0 or lo[1] < 0:
        what, low = ("user", lo[0]) if lo[0] < 0 else ("item", lo[1])
        raise ValueError(f"{name} has a negative {what} id ({low})")
    if hi[0] >= num_users:
        raise ValueError(f"{name} has user id {hi[0]} >= num_users={num_users}")
    if hi[1] >= num_items:
        raise ValueError(
            f"{name} has item id {hi[1]} >= num_items={num_items}; item ids must be "
            f"item-local (0-based), not node ids offset by num_users")
    return pairs
