"""User-item interaction data and the LightGCN graph built from it.

    data = load_gowalla("path/to/gowalla")     # the LightGCN paper's split (train.txt, test.txt)
    data = load_gowalla()                      # the same, from the user's data directory
    data = synthetic_interactions(seed=0)      # embedded default: Gowalla-sized, no files
    edge_index = bipartite_edge_index(data.num_users, data.train)

Users are nodes 0..U-1 and items nodes U..U+I-1 of the graph.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "LIGHTGCN_EXT_DATA"
GOWALLA_FILES = ("train.txt", "test.txt")


@dataclass(frozen=True)
class Interactions:
    """Users 0..num_users-1, items 0..num_items-1; pairs are [2, n] int64
    tensors of (user, item) rows."""

    num_users: int
    num_items: int
    train: torch.Tensor
    test: torch.Tensor

    @property
    def num_nodes(self):
        return self.num_users + self.num_items


# ------------------------------------------------------------------ Gowalla
def data_dir():
    """The user's data directory: $LIGHTGCN_EXT_DATA, else
    $XDG_CACHE_HOME/lightgcn_ext (~/.cache/lightgcn_ext). It need not exist."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lightgcn_ext"


def find_gowalla_root():
    """The directory holding Gowalla's train.txt and test.txt, or None.

    Looks only in the user's data directory (`data_dir()`): the directory
    itself, then its gowalla/ subdirectory. Nothing relative to the package
    or the current directory is searched.
    """
    root = data_dir()
    for candidate in (root, root / "gowalla"):
        if all((candidate / name).is_file() for name in GOWALLA_FILES):
            return candidate
    return None


def load_gowalla(root=None):
    """Gowalla as split by NGCF/LightGCN: one line per user, `user item item ...`.

    root: a directory with train.txt and test.txt; by default `find_gowalla_root()`,
    which looks in the user's data directory.
    Raises FileNotFoundError when the files are not there.
    """
    if root is None:
        root = find_gowalla_root()
        if root is None:
            where = data_dir()
            raise FileNotFoundError(
                f"Gowalla data not found in {where} or {where / 'gowalla'}: pass "
                f"load_gowalla(root) a directory with {' and '.join(GOWALLA_FILES)}, set "
                f"{DATA_ENV} to one, or use synthetic_interactions() instead"
            )
    root = Path(root).expanduser()
    missing = [name for name in GOWALLA_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Gowalla data not found: {root} lacks {', '.join(missing)}")
    train, train_users = _read_user_item_lists(root / "train.txt")
    test, test_users = _read_user_item_lists(root / "test.txt")
    num_items = int(torch.cat([train[1], test[1]]).max()) + 1 if train.numel() + test.numel() else 0
    return Interactions(max(train_users, test_users), num_items, train, test)


def _read_user_item_lists(path):
    """([2, n] (user, item) pairs, 1 + the largest user id of any line)."""
    users, items, num_users = [], [], 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                ids = [int(token) for token in line.split()]
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expected integer ids, got {line.strip()!r}") from None
            if not ids:
                continue
            if min(ids) < 0:
                raise ValueError(f"{path}:{lineno}: ids must be non-negative, got {min(ids)}")
            num_users = max(num_users, ids[0] + 1)
            users += [ids[0]] * (len(ids) - 1)
            items += ids[1:]
    return torch.tensor([users, items], dtype=torch.int64).view(2, -1), num_users


# ---------------------------------------------------------------- synthetic
def synthetic_interactions(num_users=29858, num_items=40981, num_interactions=810128, seed=0,
                           *, exponent=0.8, min_user_degree=6, min_item_degree=2):
    """A seeded power-law user-item graph, Gowalla-sized by default.

    User activity and item popularity follow Zipf-like weights
    (rank + n/1000)^-exponent over shuffled ids, on top of a floor of
    min_user_degree items per user and min_item_degree users per item (as far
    as num_interactions allows). User degrees are exact; no (user, item) pair
    repeats. With the defaults the degree quantiles are close to Gowalla's.
    Returns Interactions with an empty test split.
    """
    if num_users <= 0 or num_items <= 0:
        raise ValueError(f"num_users and num_items must be positive, got {num_users}, {num_items}")
    if not 0 <= num_interactions <= num_users * num_items:
        raise ValueError(f"num_interactions must be in [0, num_users * num_items = "
                         f"{num_users * num_items}], got {num_interactions}")
    gen = torch.Generator().manual_seed(seed)
    item_weight = _zipf_weights(num_items, exponent, gen)
    user_degree = _degrees(num_interactions, min(min_user_degree, num_interactions // num_users),
                           _zipf_weights(num_users, exponent, gen), num_items, gen)
    item_degree = _degrees(num_interactions, min(min_item_degree, num_interactions // num_items),
                           item_weight, num_users, gen)

    # Pair user slots with shuffled item slots; then, while pairs repeat,
    # keep one of each and give their users new items drawn by popularity.
    users = torch.repeat_interleave(torch.arange(num_users), user_degree)
    items = torch.repeat_interleave(torch.arange(num_items), item_degree)
    keys = users * num_items + items[torch.randperm(num_interactions, generator=gen)]
    while True:
        keys = _sorted_unique(keys)
        missing = user_degree - torch.bincount(keys // num_items, minlength=num_users)
        count = int(missing.sum())
        if count == 0:
            break
        users = torch.repeat_interleave(torch.arange(num_users), missing)
        keys = torch.cat([keys, users * num_items + _draw(item_weight, count, gen)])
    train = torch.stack([keys // num_items, keys % num_items])
    return Interactions(num_users, num_items, train, torch.empty(2, 0, dtype=torch.int64))


def _zipf_weights(n, exponent, gen):
    """Zipf-Mandelbrot weights (rank + n/1000)^-exponent in a random order."""
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return (ranks + n / 1000).pow(-exponent)[torch.randperm(n, generator=gen)]


def _degrees(total, floor, weight, cap, gen):
    """floor + the rest shared in proportion to weight (rounded at random), each at most cap."""
    degree = torch.full((weight.numel(),), floor, dtype=torch.int64)
    rest = total - floor * weight.numel()
    while rest > 0:
        share = weight * (degree < cap)
        share *= rest / share.sum()
        whole = share.floor()
        degree += whole.long()
        left = rest - int(whole.sum())
        if left > 0:
            degree += torch.bincount(_draw(share - whole, left, gen), minlength=weight.numel())
        excess = (degree - cap).clamp_(min=0)
        degree -= excess
        rest = int(excess.sum())
    return degree


def _draw(weight, count, gen):
    """count indices drawn with replacement, with probability proportional to weight."""
    cdf = torch.cumsum(weight, 0)
    u = torch.rand(count, dtype=cdf.dtype, generator=gen) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=weight.numel() - 1)


def _sorted_unique(keys):
    # numpy's sort of int64 is several times faster than torch.sort/unique on CPU.
    sorted_keys = torch.from_numpy(np.sort(keys.numpy()))
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return sorted_keys[first]


# -------------------------------------------------------------------- graph
def bipartite_edge_index(num_users, pairs):
    """LightGCN's symmetric graph on N = U + I nodes: each (user, item) pair
    becomes the edges user -> U + item and U + item -> user. Returns [2, 2n] int64."""
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[0] != 2:
        raise ValueError(f"pairs must be a [2, n] tensor of (user, item) rows, got "
                         f"{list(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs)}")
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool:
        raise TypeError(f"pairs must be an integer tensor, got {pairs.dtype}")
    users = pairs[0].long()
    items = pairs[1].long() + num_users
    return torch.stack([torch.cat([users, items]), torch.cat([items, users])])
