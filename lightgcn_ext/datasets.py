"""User-item interaction data sets (stub: being replaced by the datasets work)."""
from dataclasses import dataclass
from typing import Optional

import torch

from . import data as _data


@dataclass(frozen=True)
class Interactions:
    """Users 0..num_users-1, items 0..num_items-1 (item-local ids); pairs are
    [2, n] int64 tensors of (user, item) rows."""

    name: str
    num_users: int
    num_items: int
    train: torch.Tensor
    test: torch.Tensor
    valid: Optional[torch.Tensor] = None

    @property
    def num_nodes(self):
        return self.num_users + self.num_items

    def edge_index(self):
        """The LightGCN graph of the training interactions: [2, 2n], both
        directions, user u is node u and item i is node num_users + i."""
        return _data.bipartite_edge_index(self.num_users, self.train)


def synthetic(seed=0, **sizes):
    d = _data.synthetic_interactions(seed=seed, **sizes)
    return Interactions("synthetic", d.num_users, d.num_items, d.train, d.test)


def load(name_or_path, root=None):
    d = _data.load_gowalla(name_or_path if name_or_path != "gowalla" else root)
    return Interactions("gowalla", d.num_users, d.num_items, d.train, d.test)
