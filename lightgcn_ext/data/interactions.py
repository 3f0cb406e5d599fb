"""The data every source gives: `Interactions`, users and items with their
train, test and (optional) valid splits, and LightGCN's user-item graph of them
(`bipartite_edge_index`)."""
from dataclasses import dataclass
from typing import Optional

import torch

from .. import validation
from .ids import IdMap


@dataclass(frozen=True)
class Interactions:
    """A user-item data set: users 0..num_users-1, items 0..num_items-1, and the
    train, test and (optional) valid splits as [2, n] int64 tensors of (user, item)
    rows, item ids item-local (0-based, not graph node ids).

    Construction checks the splits: [2, n] integer tensors (converted to int64),
    user ids in [0, num_users), item ids in [0, num_items); anything else is a
    ValueError. Empty splits are allowed here (the trainer refuses an empty train).
    """

    name: str
    num_users: int
    num_items: int
    train: torch.Tensor
    test: torch.Tensor
    valid: Optional[torch.Tensor] = None
    # The raw ids of the users and items when they were renumbered densely
    # (read_dir's default), else None: the ids are the raw ids.
    id_map: Optional[IdMap] = None

    def __post_init__(self):
        for field in ("num_users", "num_items"):
            object.__setattr__(self, field, validation.non_negative_int(getattr(self, field),
                                                                        field))
        for split in ("train", "test", "valid"):
            pairs = getattr(self, split)
            if pairs is None and split == "valid":
                continue
            object.__setattr__(self, split, self._checked(split, pairs))

    def _checked(self, split, pairs):
        where = f"Interactions {self.name!r}: {split}"
        if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[0] != 2:
            shape = list(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs).__name__
            raise ValueError(f"{where} must be a [2, n] tensor of (user, item) rows, got {shape}")
        if pairs.dtype.is_floating_point or pairs.dtype.is_complex or pairs.dtype == torch.bool:
            raise ValueError(f"{where} must hold integer ids, got {pairs.dtype}")
        pairs = pairs.to(torch.int64)
        if pairs.numel():
            low, high = pairs.amin(dim=1).tolist(), pairs.amax(dim=1).tolist()
            for row, kind, count in ((0, "user", self.num_users), (1, "item", self.num_items)):
                if low[row] < 0:
                    raise ValueError(f"{where} has a negative {kind} id {low[row]}")
                if high[row] >= count:
                    hint = (" (item ids are item-local, 0..num_items-1, not graph node ids)"
                            if kind == "item" else "")
                    raise ValueError(f"{where} has {kind} id {high[row]}, but num_{kind}s is "
                                     f"{count}{hint}")
        return pairs

    @property
    def num_nodes(self):
        return self.num_users + self.num_items

    def edge_index(self):
        """The LightGCN graph of the training interactions: [2, 2n] int64, both
        directions; user u is node u and item i is node num_users + i."""
        return bipartite_edge_index(self.num_users, self.train)

    def state_dict(self):
        """Everything the data set is, for torch.save (and torch.load with
        weights_only=True): a run directory keeps its data this way, so that
        a later command sees the exact split the run trained on."""
        return dict(name=self.name, num_users=self.num_users, num_items=self.num_items,
                    train=self.train, test=self.test, valid=self.valid,
                    id_map=None if self.id_map is None else self.id_map.state_dict())

    @classmethod
    def from_state_dict(cls, state):
        id_map = state.get("id_map")
        return cls(name=state["name"], num_users=state["num_users"],
                   num_items=state["num_items"], train=state["train"], test=state["test"],
                   valid=state.get("valid"),
                   id_map=None if id_map is None else IdMap.from_state_dict(id_map))

    def __repr__(self):
        splits = ", ".join(f"{split} {getattr(self, split).shape[1]:,}"
                           for split in ("train", "test", "valid")
                           if getattr(self, split) is not None)
        return (f"Interactions({self.name!r}, {self.num_users:,} users, "
                f"{self.num_items:,} items, {splits})")


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
