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
from dataclasses import dataclass

import torch

# How a data directory's ids are read: "dense" (remapped, the default) or
# "given" (taken literally: id k is row k of the model).
ID_MODES = ("dense", "given")


@dataclass(frozen=True, eq=False)
class IdMap:
    """The raw id of each dense user and item: users[k] is the raw id of
    dense user k (int64, strictly increasing), items likewise."""

    users: torch.Tensor
    items: torch.Tensor

    @property
    def num_users(self):
        return self.users.numel()

    @property
    def num_items(self):
        return self.items.numel()

    @property
    def unused_users(self):
        """Ids from 0 to the largest raw user id that no pair uses."""
        return _unused(self.users)

    @property
    def unused_items(self):
        return _unused(self.items)

    @property
    def is_identity(self):
        """Whether the raw ids were already 0..n-1 (nothing was remapped)."""
        return self.unused_users == 0 and self.unused_items == 0

    def raw_users(self, dense):
        """The raw ids of dense user ids (a tensor of any shape)."""
        return self.users[torch.as_tensor(dense, dtype=torch.int64)]

    def raw_items(self, dense):
        return self.items[torch.as_tensor(dense, dtype=torch.int64)]

    def dense_users(self, raw):
        """The dense ids of raw user ids; ValueError for a raw id not in the data."""
        return _lookup(self.users, raw, "user")

    def dense_items(self, raw):
        return _lookup(self.items, raw, "item")

    def describe(self):
        """One line: how many ids are in use and how many were unused."""
        parts = []
        for kind, ids in (("user", self.users), ("item", self.items)):
            largest = int(ids[-1]) if ids.numel() else -1
            parts.append(f"{ids.numel():,} {kind}s (raw ids up to {largest:,}, "
                         f"{_unused(ids):,} unused)")
        action = "kept as they are" if self.is_identity else "renumbered 0..n-1"
        return f"ids: {' and '.join(parts)}, {action}"

    def state_dict(self):
        return {"users": self.users, "items": self.items}

    @classmethod
    def from_state_dict(cls, state):
        return cls(users=state["users"], items=state["items"])

    def __eq__(self, other):
        return (isinstance(other, IdMap) and torch.equal(self.users, other.users)
                and torch.equal(self.items, other.items))

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
    return int(ids[-1]) + 1 - ids.numel() if ids.numel() else 0


def _lookup(ids, raw, kind):
    raw = torch.as_tensor(raw, dtype=torch.int64)
    position = torch.searchsorted(ids, raw).clamp_(max=max(ids.numel() - 1, 0))
    found = ids[position] == raw if ids.numel() else torch.zeros_like(raw, dtype=torch.bool)
    if not bool(found.all()):
        missing = raw[~found].flatten()[0].item()
        raise ValueError(f"{kind} id {missing} does not occur in the data")
    return position
