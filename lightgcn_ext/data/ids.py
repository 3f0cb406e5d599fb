"""Raw user and item ids mapped to dense ranges.

A model has one embedding row per id from 0 to the largest, so ids taken as
given cost memory for every id that is never used: users numbered from
2,000,000 make a 2M-row table for a handful of real users, and one id of 2e9
asks for hundreds of gigabytes. `densify` numbers the ids that occur
0, 1, ... in ascending order of their raw value (so ids that are already
0..n-1 keep their values) and returns the map back to the raw ids, which is
what a saved run prints its recommendations with.

Its memory is proportional to the number of pairs, never to the largest id.
"""
import bisect
from dataclasses import dataclass

import torch

# How a data directory's ids are read: "dense" (remapped, the default) or
# "given" (taken literally: id k is row k of the model).
ID_MODES = ("dense", "given")


@dataclass(frozen=True, eq=False)
class IdMap:
    """The raw id of each dense user and item: users[k] is the raw id of
    dense user k, items likewise. Each side is an int64 tensor, strictly
    increasing, when its raw ids are integers, and a tuple of str sorted by
    code point when they are strings (an interaction log's ids,
    `lightgcn_ext.data.read_log`)."""

    users: object  # torch.Tensor of int64, or a tuple of str
    items: object

    @property
    def num_users(self):
        return len(self.users)

    @property
    def num_items(self):
        return len(self.items)

    @property
    def unused(self):
        """(users, items): on each side, the ids from 0 to its largest raw id
        that no pair uses (0 for string ids: none is unused)."""
        return _unused(self.users), _unused(self.items)

    @property
    def is_identity(self):
        """Whether the raw ids were already 0..n-1 (nothing was remapped)."""
        return all(isinstance(ids, torch.Tensor) and _unused(ids) == 0
                   for ids in (self.users, self.items))

    def raw_users(self, dense):
        """The raw ids of dense user ids: a tensor of the same shape for
        integer ids, a list for string ids."""
        return _raw(self.users, dense)

    def raw_items(self, dense):
        return _raw(self.items, dense)

    def dense_users(self, raw):
        """The dense ids of raw user ids; ValueError for a raw id not in the data."""
        return _lookup(self.users, raw, "user")

    def dense_items(self, raw):
        return _lookup(self.items, raw, "item")

    def describe(self):
        """One line: how many ids are in use and how many were unused."""
        parts = []
        for kind, ids in (("user", self.users), ("item", self.items)):
            if not isinstance(ids, torch.Tensor):
                parts.append(f"{len(ids):,} {kind}s (string ids)")
                continue
            largest = int(ids[-1]) if ids.numel() else -1
            parts.append(f"{ids.numel():,} {kind}s (raw ids up to {largest:,}, "
                         f"{_unused(ids):,} unused)")
        action = "kept as they are" if self.is_identity else "renumbered 0..n-1"
        return f"ids: {' and '.join(parts)}, {action}"

    def state_dict(self):
        """{"users", "items"}: tensors, or lists of str (torch.save and
        torch.load(weights_only=True) take both)."""
        return {side: ids if isinstance(ids, torch.Tensor) else list(ids)
                for side, ids in (("users", self.users), ("items", self.items))}

    @classmethod
    def from_state_dict(cls, state):
        return cls(**{side: state[side] if isinstance(state[side], torch.Tensor)
                      else tuple(state[side]) for side in ("users", "items")})

    def __eq__(self, other):
        return isinstance(other, IdMap) and all(
            _same(mine, theirs) for mine, theirs in ((self.users, other.users),
                                                     (self.items, other.items)))

    def __repr__(self):
        return f"IdMap({self.num_users} users, {self.num_items} items)"


def densify(splits):
    """splits {name: [2, n] int64 (user, item) tensor of raw ids} ->
    ({name: the same pairs with dense ids}, IdMap).

    Dense ids number the raw ids that occur in any split, in ascending order;
    a user who occurs only in the test split keeps a row (it is evaluated
    like the others), a raw id that occurs nowhere gets none."""
    pairs = [p for p in splits.values() if p is not None]
    users = _occurring([p[0] for p in pairs])
    items = _occurring([p[1] for p in pairs])
    dense = {name: None if p is None else torch.stack([_renumber(users, p[0]),
                                                       _renumber(items, p[1])])
             for name, p in splits.items()}
    return dense, IdMap(users=users, items=items)


def _occurring(columns):
    """The distinct values of the columns, ascending (int64)."""
    if not columns:
        return torch.empty(0, dtype=torch.int64)
    return torch.unique(torch.cat(columns).to(torch.int64), sorted=True)


def _renumber(ids, raw):
    """The positions of raw in the sorted ids (every raw value is in ids)."""
    raw = raw.to(torch.int64)
    if ids.numel() and int(ids[-1]) == ids.numel() - 1:
        return raw.clone()  # already 0..n-1: the map is the identity
    return torch.searchsorted(ids, raw)


def _unused(ids):
    if not isinstance(ids, torch.Tensor):
        return 0
    return int(ids[-1]) + 1 - ids.numel() if ids.numel() else 0


def _same(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b


def _raw(ids, dense):
    dense = torch.as_tensor(dense, dtype=torch.int64)
    if isinstance(ids, torch.Tensor):
        return ids[dense]
    return [ids[k] for k in dense.flatten().tolist()]


def _lookup(ids, raw, kind):
    if not isinstance(ids, torch.Tensor):  # string ids: sorted, so a binary search
        raw = [raw] if isinstance(raw, str) else list(raw)
        position = [bisect.bisect_left(ids, r) for r in raw]
        for r, k in zip(raw, position):
            if k == len(ids) or ids[k] != r:
                raise ValueError(f"{kind} id {r!r} does not occur in the data")
        return torch.tensor(position, dtype=torch.int64)
    raw = torch.as_tensor(raw, dtype=torch.int64)
    position = torch.searchsorted(ids, raw).clamp_(max=max(ids.numel() - 1, 0))
    found = ids[position] == raw if ids.numel() else torch.zeros_like(raw, dtype=torch.bool)
    if not bool(found.all()):
        missing = raw[~found].flatten()[0].item()
        raise ValueError(f"{kind} id {missing} does not occur in the data")
    return position
