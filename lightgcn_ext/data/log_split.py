"""What happens to an interaction log between reading and training, on numpy
arrays of integer codes: one interaction per (user, item) pair, the k-core,
dense renumbering and the per-user split. `lightgcn_ext.data.logs` reads the
files and calls these in that order; `lightgcn_ext.data.from_pyg` splits with
`split_per_user` too."""
import numpy as np

from .. import validation

SPLITS = ("random", "temporal")


def one_per_pair(users, items, times):
    """One interaction per (user, item) pair: (users, items, times) of the
    pairs, sorted by (user, item), each pair with its earliest time (times
    may be None). The codes are non-negative ints below 2^31."""
    pair = users.astype(np.int64) << 31 | items.astype(np.int64)
    order = np.argsort(pair, kind="stable")
    pair = pair[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    first = order[starts]
    earliest = None if times is None else np.minimum.reduceat(times[order], starts)
    return users[first], items[first], earliest


def k_core(users, items, min_user, min_item):
    """The mask of the interactions in the k-core: every kept user has at least
    min_user kept interactions and every kept item at least min_item. Each
    round drops the interactions of the users and items below their bound,
    which can leave others below theirs, so rounds repeat until one drops
    nothing (a fixed point)."""
    keep = np.ones(users.size, dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        user_degree = np.bincount(users[keep])
        item_degree = np.bincount(items[keep])
        rare = keep.copy()
        rare[keep] = ((user_degree[users[keep]] < min_user)
                      | (item_degree[items[keep]] < min_item))
        if not rare.any():
            return keep
        keep &= ~rare


def dense(codes):
    """(dense ids 0..n-1 in the order of the codes, the distinct codes sorted);
    the codes are non-negative ints."""
    present = np.zeros(int(codes.max()) + 1, dtype=bool)
    present[codes] = True
    return (np.cumsum(present) - 1)[codes], np.flatnonzero(present)


def checked_ratios(ratios):
    """(train, valid, test) fractions: three numbers in [0, 1] that sum to 1."""
    expected = "three numbers in [0, 1] (train, valid, test) that sum to 1"
    try:
        values = tuple(validation.fraction(r, "ratios") for r in ratios)
    except (validation.ArgumentError, TypeError):
        raise validation.ArgumentError("ratios", expected, ratios) from None
    if len(values) != 3 or abs(sum(values) - 1) > 1e-6:
        raise validation.ArgumentError("ratios", expected, ratios)
    return values


def split_counts(counts, ratios):
    """(valid, test) interactions of users with `counts` interactions each.
    test: round(n * test ratio), but at least one when the ratio is not 0;
    valid: round(n * (valid + test ratio)) minus test; train the rest, and
    always at least one (a user without a training interaction could not be
    learned, so a user with one interaction has only that)."""
    _, valid_ratio, test_ratio = ratios
    held_out = np.maximum(counts - 1, 0)
    test = np.rint(counts * test_ratio).astype(np.int64)
    if test_ratio > 0:
        test = np.maximum(test, 1)
    test = np.minimum(test, held_out)
    valid = np.rint(counts * (valid_ratio + test_ratio)).astype(np.int64) - test
    return np.clip(valid, 0, held_out - test), test


def split_per_user(users, times, ratios, split, seed):
    """0 (train), 1 (valid) or 2 (test) for each interaction. Each user's
    interactions are ordered (temporal: by time, ties in the order given;
    random: by a seeded shuffle) and the last ones go to test, the ones
    before them to valid (`split_counts`)."""
    key = times if split == "temporal" else np.random.default_rng(seed).random(users.size)
    # One sort by (user, rank of the key), the key's ties in the order given.
    rank = np.empty(users.size, dtype=np.int64)
    rank[np.argsort(key, kind="stable")] = np.arange(users.size)
    order = np.argsort(users.astype(np.int64) * users.size + rank)
    counts = np.bincount(users)
    valid, test = split_counts(counts, ratios)
    start = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=start[1:])
    sorted_users = users[order]
    from_end = counts[sorted_users] - (np.arange(order.size) - start[sorted_users])  # 1 = last
    part = np.zeros(users.size, dtype=np.int8)
    part[order] = np.where(from_end <= test[sorted_users], 2,
                           np.where(from_end <= test[sorted_users] + valid[sorted_users], 1, 0))
    return part
