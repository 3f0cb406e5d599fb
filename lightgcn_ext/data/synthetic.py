"""A seeded synthetic data set with planted structure: the embedded default."""
import numpy as np
import torch

from .. import validation
from .interactions import Interactions


def synthetic(seed=0, *, num_users=6000, num_items=4000, num_interactions=120_000,
              communities=20, in_community=0.65, test_fraction=0.2, exponent=0.8,
              min_train=2):
    """A seeded synthetic data set with planted structure, so that a model has
    something to learn: the embedded default when no data is given.

    User u belongs to community u % communities and item i to community
    i % communities (the ids carry no other meaning: a model sees only the graph).
    Item popularity is Zipf-like within each community, (rank + n/1000)^-exponent
    over a random order of its n items. A user's degree is Zipf-like too, over a
    random order of the users, with a floor of min_train training items and at
    least one test item, and at most the size of the smallest community. Each of a
    user's items is from its own community with probability in_community and from
    the other communities otherwise, drawn by popularity without repeats. Each
    user's items are
    then split at random: about test_fraction of them (at least one) to test.

    num_interactions is the number of *training* pairs (the graph's size:
    num_users=29858, num_items=40981, num_interactions=810128, the benchmarks'
    stand-in for Gowalla, has Gowalla's graph size); the test split adds about
    test_fraction / (1 - test_fraction) of that.

    The default (6,000 users, 4,000 items, 120,000 training and about 30,000 test
    pairs) trains 20 epochs with 20 full evaluations in about 17 s on 2 idle CPU
    threads (`python -m lightgcn_ext train`, batches of 2048). LightGCN's recall@20
    climbs from about 0.11 after the first epoch to about 0.27 after 20, against
    0.07 for the popularity baseline and 0.29 for the generator's own rule (the
    user's community's items by popularity); untrained, it scores 0.006. With
    in_community=0.7 or more, training reaches the rule's level within a few
    epochs: 0.65 leaves a learning curve to watch.
    Deterministic for a seed (numpy's PCG64); vectorized: the Gowalla-sized one
    takes about a second. Returns Interactions named "synthetic", pairs sorted.
    """
    num_users, num_items, communities, min_train = (
        validation.positive_int(value, name) for value, name in (
            (num_users, "num_users"), (num_items, "num_items"), (communities, "communities"),
            (min_train, "min_train")))
    in_community = validation.fraction(in_community, "in_community")
    test_fraction = validation.fraction(test_fraction, "test_fraction", open_low=True,
                                        open_high=True)
    exponent = validation.non_negative_number(exponent, "exponent")
    if communities > num_items:
        raise ValueError(f"communities ({communities}) must be at most num_items ({num_items})")
    test_ratio = test_fraction / (1 - test_fraction)
    # A user's total degree is at most the size of the smallest community.
    cap_total = num_items // communities
    candidates = np.arange(cap_total + 1)
    fits = candidates + np.maximum(1, np.rint(candidates * test_ratio)) <= cap_total
    cap_train = int(candidates[fits].max()) if fits.any() else 0
    if cap_train < min_train or not min_train * num_users <= num_interactions <= \
            cap_train * num_users:
        raise ValueError(
            f"num_interactions (training pairs) must be in [min_train * num_users, "
            f"{cap_train} * num_users] = [{min_train * num_users}, {cap_train * num_users}] "
            f"for {num_items} items in {communities} communities (a user has at most "
            f"{cap_total} items, test included), got {num_interactions}")
    rng = np.random.default_rng(seed)

    # Items ordered by community, then at random: rank within the community.
    item_community = np.arange(num_items) % communities
    order = np.lexsort((rng.random(num_items), item_community))  # sorted position -> item
    sizes = np.bincount(item_community, minlength=communities)
    begin = np.concatenate([[0], np.cumsum(sizes)])
    rank = np.arange(num_items) - np.repeat(begin[:-1], sizes) + 1
    weight = (rank + np.repeat(sizes, sizes) / 1000.0) ** -exponent  # in sorted order
    cdf = np.cumsum(weight)
    low = np.concatenate([[0.0], cdf])[begin[:-1]]  # each community's cdf range
    high = cdf[begin[1:] - 1]

    train_degree = _degrees(num_interactions, min_train,
                            _zipf_weights(num_users, exponent, rng), cap_train, rng)
    degree = train_degree + np.maximum(1, np.rint(train_degree * test_ratio)).astype(np.int64)

    # How many of each user's items are from its own community: Binomial(degree,
    # in_community), as far as the other communities have enough items.
    own_size = sizes[np.arange(num_users) % communities]
    inside = np.clip(rng.binomial(degree, in_community), degree - (num_items - own_size), degree)

    def draw_inside(users):  # by popularity, from the user's community
        community = users % communities
        u = low[community] + rng.random(users.size) * (high[community] - low[community])
        position = np.searchsorted(cdf, u, side="right")
        return order[np.clip(position, begin[community], begin[community + 1] - 1)]

    def draw_outside(users):  # by popularity, from the other communities
        community = users % communities
        u = rng.random(users.size) * (cdf[-1] - (high[community] - low[community]))
        u = np.where(u >= low[community], u + high[community] - low[community], u)
        return order[np.minimum(np.searchsorted(cdf, u, side="right"), num_items - 1)]

    keys = np.sort(np.concatenate([
        _distinct(inside, draw_inside, lambda c: item_community == c, communities, rng),
        _distinct(degree - inside, draw_outside, lambda c: item_community != c, communities,
                  rng)]))

    # Split each user's items at random: its first train_degree in a random order train.
    users, items = keys // num_items, keys % num_items
    shuffled = np.lexsort((rng.random(keys.size), users))
    starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
    is_train = np.empty(keys.size, dtype=bool)
    is_train[shuffled] = np.arange(keys.size) - starts[users[shuffled]] < train_degree[
        users[shuffled]]
    pairs = torch.from_numpy(np.stack([users, items]))
    mask = torch.from_numpy(is_train)
    return Interactions("synthetic", num_users, num_items, pairs[:, mask].contiguous(),
                        pairs[:, ~mask].contiguous())


def _distinct(need, draw, in_pool, communities, rng):
    """Sorted keys user * num_items + item, need[u] distinct items for each user u,
    drawn by draw(users) (one item each) and redrawn while they repeat; after 50
    rounds, the few users still short get the rest uniformly from their pool (the
    items where in_pool(community of u) is true) less the items they have."""
    num_items = in_pool(0).size
    owners = np.arange(need.size, dtype=np.int64)
    keys = np.empty(0, dtype=np.int64)
    for _ in range(50):
        missing = need - np.bincount(keys // num_items, minlength=need.size)
        if not missing.any():
            return keys
        users = np.repeat(owners, missing)
        keys = _sorted_unique(np.concatenate([keys, users * num_items + draw(users)]))
    missing = need - np.bincount(keys // num_items, minlength=need.size)
    extra = [keys]
    for user in np.flatnonzero(missing):
        have = keys[np.searchsorted(keys, user * num_items):
                    np.searchsorted(keys, (user + 1) * num_items)] % num_items
        free = np.setdiff1d(np.flatnonzero(in_pool(user % communities)), have)
        extra.append(user * num_items + rng.choice(free, missing[user], replace=False))
    return _sorted_unique(np.concatenate(extra))


def _sorted_unique(keys):
    # np.sort and a mask: several times faster than np.unique (hash-based in numpy 2.3+).
    keys = np.sort(keys)
    first = np.ones(keys.size, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first]


def _zipf_weights(n, exponent, rng):
    """Zipf-Mandelbrot weights (rank + n/1000)^-exponent in a random order."""
    return ((np.arange(1, n + 1) + n / 1000.0) ** -exponent)[rng.permutation(n)]


def _degrees(total, floor, weight, cap, rng):
    """floor + the rest shared in proportion to weight (rounded at random), each at
    most cap; the degrees sum to total (which must be <= cap * len(weight))."""
    degree = np.full(weight.size, floor, dtype=np.int64)
    rest = total - floor * weight.size
    while rest > 0:
        share = weight * (degree < cap)
        share *= rest / share.sum()
        whole = np.floor(share)
        degree += whole.astype(np.int64)
        left = rest - int(whole.sum())
        if left > 0:
            fraction = np.cumsum(share - whole)
            picks = np.searchsorted(fraction, rng.random(left) * fraction[-1], side="right")
            degree += np.bincount(np.minimum(picks, weight.size - 1), minlength=weight.size)
        excess = np.maximum(degree - cap, 0)
        degree -= excess
        rest = int(excess.sum())
    return degree
